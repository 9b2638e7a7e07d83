//! CreateSnapshot against the real server: the happy path and every row of the error table.

use std::sync::Arc;

use async_trait::async_trait;
use std::time::Duration;

use chrono::TimeDelta;
use snapshotd::backend::{BackendError, CopyState, SnapshotBackend};
use snapshotd::clock::Clock;
use snapshotd::domain::{Snapshot, Timestamp};
use snapshotd::pb;
use tonic::Code;

use crate::assertions::{Detail, assert_error, assert_internal_error_hiding, retry_delay_secs};
use crate::helpers::{
    Backend, Options, World, as_account, create_request, minutes_ago, proto_time, spawn_app,
    spawn_app_with, world,
};
use crate::on_both_backends;

on_both_backends!(
    a_healthy_disk_gets_a_snapshot_id_and_a_request_id,
    a_call_without_an_account_is_unauthenticated,
    each_malformed_input_is_refused_with_its_reason_and_nothing_is_stored,
    a_name_of_128_chinese_characters_is_accepted,
    an_account_without_the_snapshot_service_is_refused,
    an_account_without_balance_is_refused,
    a_missing_disk_is_not_found,
    each_disk_or_instance_the_rules_forbid_is_refused_with_its_reason,
    a_stopped_instance_is_not_refused,
    a_disk_younger_than_the_init_window_is_initializing,
    a_second_snapshot_is_refused_while_one_is_in_progress,
    the_retry_hint_follows_the_backends_own_estimate_of_the_copy,
    a_disk_at_its_quota_is_refused,
    a_backend_that_cannot_start_the_copy_fails_the_request_and_stores_nothing,
    an_unreadable_row_is_an_internal_error_without_internals,
    input_errors_are_checked_in_the_table_order,
);

async fn a_healthy_disk_gets_a_snapshot_id_and_a_request_id(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;

    let response = app
        .create(
            "acct-a",
            pb::CreateSnapshotRequest {
                disk_id: "d-acct-a-0".into(),
                snapshot_name: "nightly-2026:11".into(),
                description: "before the upgrade".into(),
                ..Default::default()
            },
        )
        .await
        .expect("CreateSnapshot");

    let id = &response.snapshot_id;
    assert_eq!(id.len(), 22, "{id}");
    assert!(id.starts_with("s-"));
    assert!(
        id[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    );
    let request_id = &response.request_id;
    assert!(uuid::Uuid::parse_str(request_id).is_ok());
    assert_eq!(*request_id, request_id.to_uppercase());
    assert_eq!(app.count_rows("snapshots").await, 1);
}

async fn a_call_without_an_account_is_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;

    let status = app
        .snapshots()
        .create_snapshot(create_request("d-acct-a-0"))
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidIdentity.Missing",
        "401",
        Detail::None,
    );

    let status = app
        .create("", create_request("d-acct-a-0"))
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidIdentity.Missing",
        "401",
        Detail::None,
    );
    assert_eq!(app.count_rows("snapshots").await, 0);
}

/// One malformed field of a CreateSnapshot request and the refusal it must get.
struct Malformed {
    /// The request field, also the field its BadRequest names.
    field: &'static str,
    value: String,
    code: Code,
    reason: &'static str,
    http_status: &'static str,
    /// The ErrorInfo metadata key that must echo the value back, if any.
    echoed_as: Option<&'static str>,
}

/// Rows for `values` of `field`, all refused alike.
fn malformed(
    field: &'static str,
    reason: &'static str,
    http_status: &'static str,
    echoed_as: Option<&'static str>,
    values: &[&str],
) -> Vec<Malformed> {
    values
        .iter()
        .map(|value| Malformed {
            field,
            value: (*value).to_owned(),
            code: Code::InvalidArgument,
            reason,
            http_status,
            echoed_as,
        })
        .collect()
}

/// Every malformed input of CreateSnapshot the error table names, one row each.
fn malformed_create_inputs() -> Vec<Malformed> {
    let disk_id_too_long = format!("d-{}", "a".repeat(63));
    let name_too_long = format!("a{}", "b".repeat(128));
    let description_too_long = "x".repeat(257);
    let token_too_long = "t".repeat(65);
    [
        malformed("disk_id", "MissingParameter", "400", None, &[""]),
        malformed(
            "disk_id",
            "DiskId.ValueNotSupported",
            "403",
            Some("diskId"),
            &[
                "disk-1",
                "d-",
                "d-ABC",
                "d-a_b",
                "D-1",
                &disk_id_too_long,
                "d-é",
            ],
        ),
        malformed(
            "snapshot_name",
            "InvalidSnapshotName.Malformed",
            "400",
            None,
            &[
                "a",
                "1abc",
                "_abc",
                "auto-nightly",
                "http://x",
                "https://x",
                "a b",
                "a.b",
                &name_too_long,
            ],
        ),
        malformed(
            "description",
            "InvalidDescription.Malformed",
            "404",
            None,
            &[
                "x",
                "http://example.com",
                "https://example.com",
                &description_too_long,
            ],
        ),
        malformed(
            "client_token",
            "InvalidClientToken.Malformed",
            "403",
            None,
            &[&token_too_long, "tök", "tab\there", "bell\u{7}"],
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

async fn each_malformed_input_is_refused_with_its_reason_and_nothing_is_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let table = malformed_create_inputs();
    assert_eq!(table.len(), 25, "every case of the table is still there");

    for row in &table {
        let mut request = create_request("d-acct-a-0");
        let value = row.value.clone();
        match row.field {
            "disk_id" => request.disk_id = value,
            "snapshot_name" => request.snapshot_name = value,
            "description" => request.description = value,
            "client_token" => request.client_token = value,
            other => unreachable!("no field {other} in the table"),
        }

        let status = app.create("acct-a", request).await.unwrap_err();

        let metadata = assert_error(
            &status,
            row.code,
            row.reason,
            row.http_status,
            Detail::BadRequest(row.field),
        );
        if let Some(key) = row.echoed_as {
            assert_eq!(
                metadata.get(key),
                Some(&row.value),
                "{} {:?}",
                row.field,
                row.value
            );
        }
    }
    assert_eq!(app.count_rows("snapshots").await, 0);
    assert_eq!(app.count_rows("client_tokens").await, 0);
}

async fn a_name_of_128_chinese_characters_is_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    // 128 Chinese characters are 384 bytes but 128 characters: allowed.
    let request = pb::CreateSnapshotRequest {
        snapshot_name: "快".repeat(128),
        ..create_request("d-acct-a-0")
    };
    app.create("acct-a", request)
        .await
        .expect("a 128-character Chinese name");
}

async fn an_account_without_the_snapshot_service_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut inactive = world("acct-a", 1);
    inactive.account.snapshot_service_activated = false;
    app.seed(&inactive).await;

    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::PermissionDenied,
        "InvalidAccountStatus.SnapshotServiceUnavailable",
        "403",
        Detail::None,
    );
    // An account the inventory never heard of has not opened the service either.
    let status = app
        .create_on("acct-unknown", "d-acct-a-0")
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::PermissionDenied,
        "InvalidAccountStatus.SnapshotServiceUnavailable",
        "403",
        Detail::None,
    );
    assert_eq!(app.count_rows("snapshots").await, 0);
}

async fn an_account_without_balance_is_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut broke = world("acct-a", 1);
    broke.account.insufficient_balance = true;
    app.seed(&broke).await;

    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::PermissionDenied,
        "InvalidAccountStatus.NotEnoughBalance",
        "403",
        Detail::None,
    );
    assert_eq!(app.count_rows("snapshots").await, 0);
}

async fn a_missing_disk_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;

    let status = app.create_on("acct-a", "d-nowhere").await.unwrap_err();
    let metadata = assert_error(
        &status,
        Code::NotFound,
        "InvalidDiskId.NotFound",
        "404",
        Detail::ResourceInfo("disk"),
    );
    assert_eq!(
        metadata.get("diskId").map(String::as_str),
        Some("d-nowhere")
    );
}

/// A disk or instance one of the rules forbids to snapshot, and the refusal it must get.
struct Forbidden {
    label: String,
    change: Box<dyn FnOnce(&mut World)>,
    reason: &'static str,
    http_status: &'static str,
    /// Whether ErrorInfo names the instance too (`instanceId`).
    names_instance: bool,
}

fn forbidden(
    label: impl Into<String>,
    change: impl FnOnce(&mut World) + 'static,
    reason: &'static str,
    http_status: &'static str,
) -> Forbidden {
    Forbidden {
        label: label.into(),
        change: Box::new(change),
        reason,
        http_status,
        names_instance: false,
    }
}

/// Every disk or instance state the rules refuse with a PreconditionFailure, one row each.
fn forbidden_disks_and_instances() -> Vec<Forbidden> {
    let mut rows = Vec::new();
    for category in [
        "local_ssd_pro",
        "local_hdd_pro",
        "ephemeral",
        "ephemeral_ssd",
        "elastic_ephemeral_disk_standard",
        "elastic_ephemeral_disk_premium",
    ] {
        rows.push(forbidden(
            format!("a {category} disk"),
            move |w| w.disks[0].category = category.into(),
            "DiskCategory.OperationNotSupported",
            "400",
        ));
    }
    rows.push(forbidden(
        "an expired disk",
        |w| w.disks[0].expires_at = Some(minutes_ago(1)),
        "DiskInArrears",
        "403",
    ));
    rows.push(forbidden(
        "a disk never attached",
        |w| {
            let disk = &mut w.disks[0];
            disk.ever_attached = false;
            disk.status = pb::DiskStatus::Available.into();
            disk.instance_id.clear();
        },
        "IncorrectDiskStatus.NeverAttached",
        "403",
    ));
    for status in [
        pb::DiskStatus::Available,
        pb::DiskStatus::Attaching,
        pb::DiskStatus::Detaching,
        pb::DiskStatus::Creating,
        pb::DiskStatus::Reiniting,
    ] {
        rows.push(forbidden(
            format!("a disk {status:?}"),
            move |w| w.disks[0].status = status.into(),
            "IncorrectDiskStatus",
            "403",
        ));
    }
    for status in [
        pb::InstanceStatus::Pending,
        pb::InstanceStatus::Starting,
        pb::InstanceStatus::Stopping,
    ] {
        rows.push(Forbidden {
            names_instance: true,
            ..forbidden(
                format!("an instance {status:?}"),
                move |w| w.instance.status = status.into(),
                "IncorrectInstanceStatus",
                "400",
            )
        });
    }
    rows.push(forbidden(
        "an instance locked for security",
        |w| w.instance.lock_reasons = vec!["financial".into(), "security".into()],
        "InstanceLockedForSecurity",
        "403",
    ));
    rows.push(forbidden(
        "an instance never started",
        |w| w.instance.last_started_at = None,
        "IncorrectDiskStatus.NeverUsed",
        "403",
    ));
    rows
}

async fn each_disk_or_instance_the_rules_forbid_is_refused_with_its_reason(backend: Backend) {
    // One server; each row is an account of its own whose only disk or instance it changes.
    let app = spawn_app(backend).await;
    let table = forbidden_disks_and_instances();
    assert_eq!(table.len(), 18, "every case of the table is still there");

    for (n, row) in table.into_iter().enumerate() {
        let account = format!("acct-{n}");
        let mut w = world(&account, 1);
        (row.change)(&mut w);
        app.seed(&w).await;
        let disk_id = w.disks[0].disk_id.clone();

        let status = app.create_on(&account, &disk_id).await.unwrap_err();

        let metadata = assert_error(
            &status,
            Code::FailedPrecondition,
            row.reason,
            row.http_status,
            Detail::PreconditionFailure,
        );
        assert_eq!(metadata.get("diskId"), Some(&disk_id), "{}", row.label);
        if row.names_instance {
            assert_eq!(
                metadata.get("instanceId"),
                Some(&w.instance.instance_id),
                "{}",
                row.label
            );
        }
    }
    assert_eq!(
        app.count_rows("snapshots").await,
        0,
        "a refusal writes nothing"
    );
}

async fn a_stopped_instance_is_not_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut w = world("acct-a", 1);
    w.instance.status = pb::InstanceStatus::Stopped.into();
    app.seed(&w).await;
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("stopped instance");
}

async fn a_disk_younger_than_the_init_window_is_initializing(backend: Backend) {
    // Ages are counted on the server's (frozen) clock, not the test's: however long the server
    // took to start, the disk is exactly 59 minutes old to it.
    let app = spawn_app(backend).await;
    let now = app.clock.as_ref().expect("a manual clock").now();
    let mut w = world("acct-a", 2);
    w.disks[0].created_at = Some(proto_time(now - TimeDelta::minutes(59)));
    w.disks[1].created_at = Some(proto_time(now - TimeDelta::minutes(61)));
    app.seed(&w).await;

    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();

    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "IncorrectDiskStatus.Initializing",
        "403",
        Detail::PreconditionFailureAndRetry,
    );
    assert_eq!(
        metadata.get("diskId").map(String::as_str),
        Some("d-acct-a-0")
    );
    assert_eq!(retry_delay_secs(&status), 60, "one minute left");
    assert_eq!(app.count_rows("snapshots").await, 0);
    app.create_on("acct-a", "d-acct-a-1")
        .await
        .expect("61 minutes is past the window");

    // The window is configurable.
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|c| c.init_window = std::time::Duration::from_secs(10 * 60)),
            ..Options::default()
        },
    )
    .await;
    let now = app.clock.as_ref().expect("a manual clock").now();
    let mut w = world("acct-a", 1);
    w.disks[0].created_at = Some(proto_time(now - TimeDelta::minutes(11)));
    app.seed(&w).await;
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("a 10-minute window");
}

async fn a_second_snapshot_is_refused_while_one_is_in_progress(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let first = app.create_on("acct-a", "d-acct-a-0").await.unwrap();

    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "IncorrectDiskStatus.CreatingSnapshot",
        "403",
        Detail::PreconditionFailureAndRetry,
    );
    assert_eq!(metadata.get("snapshotId"), Some(&first.snapshot_id));
    // 40 GiB at 256 MiB/s is 160 s.
    let delay = retry_delay_secs(&status);
    assert!(
        (150..=160).contains(&delay),
        "about 160 s left, got {delay}s"
    );
    assert_eq!(app.count_rows("snapshots").await, 1);
}

async fn a_disk_at_its_quota_is_refused(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|c| c.snapshot_quota = 3),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    for _ in 0..3 {
        app.create_on("acct-a", "d-acct-a-0")
            .await
            .expect("under quota");
        crate::helpers::finish_copies(&app).await;
    }

    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::ResourceExhausted,
        "QuotaExceed.Snapshot",
        "403",
        Detail::QuotaFailure,
    );
    let quota = tonic_types::StatusExt::get_details_quota_failure(&status).unwrap();
    assert_eq!(quota.violations[0].subject, "disk/d-acct-a-0");
    assert_eq!(app.count_rows("snapshots").await, 3);
}

/// A data plane that refuses every copy (the ECS edge's tests use it too).
pub struct RefusingBackend;

#[async_trait]
impl SnapshotBackend for RefusingBackend {
    async fn start_copy(&self, _snapshot: &Snapshot) -> Result<Duration, BackendError> {
        Err(BackendError("no capacity in this zone".into()))
    }

    async fn copy_state(&self, _snapshot: &Snapshot, _now: Timestamp) -> CopyState {
        CopyState::Failed("never started".into())
    }

    async fn cancel_copy(&self, _snapshot: &Snapshot) -> Result<(), BackendError> {
        Ok(())
    }
}

async fn a_backend_that_cannot_start_the_copy_fails_the_request_and_stores_nothing(
    backend: Backend,
) {
    let app = spawn_app_with(
        backend,
        Options {
            snapshot_backend: Arc::new(RefusingBackend),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    let request = pb::CreateSnapshotRequest {
        client_token: "tok-1".into(),
        ..create_request("d-acct-a-0")
    };
    let status = app.create("acct-a", request).await.unwrap_err();
    assert_error(
        &status,
        Code::Internal,
        "CreateSnapshot.Failed",
        "403",
        Detail::None,
    );
    assert!(
        !status.message().contains("capacity"),
        "no internals: {}",
        status.message()
    );
    assert_eq!(app.count_rows("snapshots").await, 0);
    assert_eq!(
        app.count_rows("client_tokens").await,
        0,
        "a failed request binds no token"
    );
}

async fn an_unreadable_row_is_an_internal_error_without_internals(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    crate::helpers::execute_sql(&app, "UPDATE disks SET category = 'floppy'").await;

    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_internal_error_hiding(&status, &["floppy", "select", "sql", "disks"]);
}

async fn input_errors_are_checked_in_the_table_order(backend: Backend) {
    let app = spawn_app(backend).await;
    // Everything is wrong: the identity check answers first, then disk id, name, description, token.
    let all_wrong = pb::CreateSnapshotRequest {
        disk_id: "bad".into(),
        snapshot_name: "1".into(),
        description: "x".into(),
        client_token: "t".repeat(65),
        ..Default::default()
    };
    let status = app
        .snapshots()
        .create_snapshot(all_wrong.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let expected = [
        "DiskId.ValueNotSupported",
        "InvalidSnapshotName.Malformed",
        "InvalidDescription.Malformed",
        "InvalidClientToken.Malformed",
    ];
    let mut request = all_wrong;
    for (step, reason) in expected.iter().enumerate() {
        let status = app
            .snapshots()
            .create_snapshot(as_account("acct-a", request.clone()))
            .await
            .unwrap_err();
        let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
        assert_eq!(info.reason, *reason, "step {step}");
        match step {
            0 => request.disk_id = "d-1".into(),
            1 => request.snapshot_name = "ok-name".into(),
            2 => request.description = String::new(),
            _ => {}
        }
    }
}

async fn the_retry_hint_follows_the_backends_own_estimate_of_the_copy(backend: Backend) {
    // The data plane copies at 1 MiB/s (40 GiB: 40960 s) while the configured rate says 256.
    let app = spawn_app_with(
        backend,
        Options {
            snapshot_backend: Arc::new(snapshotd::backend::SimulatedBackend::new(1)),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    app.create_on("acct-a", "d-acct-a-0").await.unwrap();

    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();

    let delay = retry_delay_secs(&status);
    assert!(
        (40_950..=40_960).contains(&delay),
        "the backend's 40960 s, got {delay}s"
    );
}
