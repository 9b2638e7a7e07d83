//! The inventory (admin) API against the real server: each Put is a whole-record upsert that
//! answers with the record as stored, bad records are refused before anything is written, and
//! only the exact admin bearer token gets in.

use snapshotd::pb;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    ADMIN_TOKEN, Backend, Options, TestApp, as_admin, attached_disk, healthy_account,
    put_account_request, put_disk_request, put_instance_request, running_instance, spawn_app,
    spawn_app_with, world,
};
use crate::on_both_backends;

on_both_backends!(
    put_account_returns_the_account_as_stored_and_a_second_put_updates_it,
    put_instance_returns_the_instance_as_stored_and_a_second_put_updates_it,
    put_disk_returns_the_disk_as_stored_and_a_second_put_updates_it,
    what_put_disk_returns_is_what_get_disk_reads_back,
    get_disk_of_an_unknown_disk_is_not_found,
    get_disk_with_a_malformed_id_is_not_supported,
    put_instance_for_an_unknown_account_is_not_found_and_stores_nothing,
    put_disk_for_an_unknown_account_is_not_found_and_stores_nothing,
    put_disk_on_an_unknown_instance_is_not_found_and_stores_nothing,
    put_disk_on_another_accounts_instance_is_refused_and_stores_nothing,
    put_disk_refuses_every_malformed_field_and_stores_nothing,
    a_put_without_its_record_is_a_missing_parameter_and_stores_nothing,
    the_inventory_api_refuses_anything_but_the_exact_admin_token,
    a_server_without_an_admin_token_refuses_even_the_right_token,
    the_bearer_scheme_is_case_insensitive,
    an_instance_cannot_move_account_with_another_accounts_disk_attached,
    a_disk_with_snapshots_cannot_move_to_another_account,
);

/// A timestamp both backends keep exactly (PostgreSQL stores microseconds).
fn at(seconds: i64, micros: i32) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds,
        nanos: micros * 1_000,
    }
}

async fn get_disk(app: &TestApp, disk_id: &str) -> Result<pb::Disk, Status> {
    let answer = app
        .inventory()
        .get_disk(as_admin(pb::GetDiskRequest {
            disk_id: disk_id.to_owned(),
        }))
        .await?;
    Ok(answer
        .into_inner()
        .disk
        .expect("GetDisk answers with the disk"))
}

async fn try_put_instance(app: &TestApp, instance: pb::Instance) -> Result<pb::Instance, Status> {
    let answer = app
        .inventory()
        .put_instance(as_admin(put_instance_request(instance)))
        .await?;
    Ok(answer
        .into_inner()
        .instance
        .expect("PutInstance answers with the instance"))
}

async fn put_account_returns_the_account_as_stored_and_a_second_put_updates_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let w = world("acct-a", 1);
    app.seed(&w).await;
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("a healthy account");
    crate::helpers::finish_copies(&app).await;

    let broke = pb::Account {
        account_id: "acct-a".into(),
        snapshot_service_activated: true,
        insufficient_balance: true,
    };
    let stored = app.put_account(broke.clone()).await;

    assert_eq!(stored, broke);
    assert_eq!(app.count_rows("accounts").await, 1, "an upsert, not a copy");
    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::PermissionDenied,
        "InvalidAccountStatus.NotEnoughBalance",
        "403",
        Detail::None,
    );

    let closed = pb::Account {
        account_id: "acct-a".into(),
        snapshot_service_activated: false,
        insufficient_balance: false,
    };
    assert_eq!(app.put_account(closed.clone()).await, closed);
    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::PermissionDenied,
        "InvalidAccountStatus.SnapshotServiceUnavailable",
        "403",
        Detail::None,
    );
}

async fn put_instance_returns_the_instance_as_stored_and_a_second_put_updates_it(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_account(healthy_account("acct-a")).await;
    let locked = pb::Instance {
        instance_id: "i-acct-a".into(),
        account_id: "acct-a".into(),
        status: pb::InstanceStatus::Running.into(),
        created_at: Some(at(1_700_000_000, 123_456)),
        last_started_at: Some(at(1_700_000_600, 654_321)),
        lock_reasons: vec!["financial".into(), "security".into()],
    };

    let stored = app.put_instance(locked.clone()).await;

    assert_eq!(stored, locked);
    app.put_disk(attached_disk("acct-a", "i-acct-a", "d-acct-a-0"))
        .await
        .expect("PutDisk");
    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "InstanceLockedForSecurity",
        "403",
        Detail::PreconditionFailure,
    );

    // The second Put replaces every field: the locks are gone, the status and times changed.
    let unlocked = pb::Instance {
        status: pb::InstanceStatus::Stopped.into(),
        created_at: Some(at(1_700_100_000, 1)),
        last_started_at: Some(at(1_700_100_060, 999_999)),
        lock_reasons: vec![],
        ..locked.clone()
    };
    assert_eq!(app.put_instance(unlocked.clone()).await, unlocked);
    assert_eq!(
        app.count_rows("instances").await,
        1,
        "an upsert, not a copy"
    );
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the locks were replaced");

    // An unset last_started_at clears the previous one.
    let never_started = pb::Instance {
        last_started_at: None,
        ..unlocked
    };
    assert_eq!(app.put_instance(never_started.clone()).await, never_started);
}

async fn put_disk_returns_the_disk_as_stored_and_a_second_put_updates_it(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_account(healthy_account("acct-a")).await;
    app.put_instance(running_instance("acct-a", "i-acct-a"))
        .await;
    let detached = pb::Disk {
        disk_id: "d-acct-a-0".into(),
        account_id: "acct-a".into(),
        category: "cloud_efficiency".into(),
        r#type: pb::DiskType::System.into(),
        status: pb::DiskStatus::Available.into(),
        instance_id: String::new(),
        size_gib: 20,
        created_at: Some(at(1_700_000_000, 250_000)),
        expires_at: Some(at(2_000_000_000, 500_000)),
        ever_attached: false,
    };

    let stored = app.put_disk(detached.clone()).await.expect("PutDisk");

    assert_eq!(stored, detached);
    assert_eq!(get_disk(&app, "d-acct-a-0").await.unwrap(), detached);

    let attached = pb::Disk {
        disk_id: "d-acct-a-0".into(),
        account_id: "acct-a".into(),
        category: "cloud_essd".into(),
        r#type: pb::DiskType::Data.into(),
        status: pb::DiskStatus::InUse.into(),
        instance_id: "i-acct-a".into(),
        size_gib: 2048,
        created_at: Some(at(1_700_000_123, 7)),
        expires_at: None,
        ever_attached: true,
    };
    let stored = app.put_disk(attached.clone()).await.expect("PutDisk");

    assert_eq!(stored, attached);
    assert_eq!(
        get_disk(&app, "d-acct-a-0").await.unwrap(),
        attached,
        "GetDisk shows the second Put, with expires_at cleared"
    );
    assert_eq!(app.count_rows("disks").await, 1, "an upsert, not a copy");
}

async fn what_put_disk_returns_is_what_get_disk_reads_back(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_account(healthy_account("acct-a")).await;
    app.put_instance(running_instance("acct-a", "i-acct-a"))
        .await;
    for status in [
        pb::DiskStatus::InUse,
        pb::DiskStatus::Available,
        pb::DiskStatus::Attaching,
        pb::DiskStatus::Detaching,
        pb::DiskStatus::Creating,
        pb::DiskStatus::Reiniting,
    ] {
        // Nanosecond timestamps: whatever precision a backend keeps, the answer is the stored row.
        let disk = pb::Disk {
            status: status.into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_789,
            }),
            expires_at: Some(prost_types::Timestamp {
                seconds: 2_000_000_000,
                nanos: 987_654_321,
            }),
            ..attached_disk("acct-a", "i-acct-a", "d-acct-a-0")
        };

        let stored = app.put_disk(disk.clone()).await.expect("PutDisk");

        assert_eq!(get_disk(&app, "d-acct-a-0").await.unwrap(), stored);
        assert_eq!(stored.status, disk.status);
        let created_at = stored.created_at.unwrap();
        assert_eq!(created_at.seconds, 1_700_000_000);
        assert!(
            (123_456_000..=123_457_000).contains(&created_at.nanos),
            "microseconds kept: {created_at:?}"
        );
    }
    for category in [
        "cloud",
        "cloud_efficiency",
        "cloud_ssd",
        "cloud_essd",
        "cloud_auto",
        "cloud_essd_entry",
        "local_ssd_pro",
        "local_hdd_pro",
        "ephemeral",
        "ephemeral_ssd",
        "elastic_ephemeral_disk_standard",
        "elastic_ephemeral_disk_premium",
    ] {
        let disk = pb::Disk {
            category: category.into(),
            ..attached_disk("acct-a", "i-acct-a", "d-acct-a-0")
        };
        let stored = app.put_disk(disk).await.expect("PutDisk");
        assert_eq!(stored.category, category);
        assert_eq!(get_disk(&app, "d-acct-a-0").await.unwrap(), stored);
    }
}

async fn get_disk_of_an_unknown_disk_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;

    let status = get_disk(&app, "d-nowhere").await.unwrap_err();

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

async fn get_disk_with_a_malformed_id_is_not_supported(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;

    for disk_id in ["disk-1", "d-", "d-ABC", "D-acct-a-0"] {
        let status = get_disk(&app, disk_id).await.unwrap_err();

        let metadata = assert_error(
            &status,
            Code::InvalidArgument,
            "DiskId.ValueNotSupported",
            "403",
            Detail::BadRequest("disk_id"),
        );
        assert_eq!(metadata.get("diskId").map(String::as_str), Some(disk_id));
    }
}

async fn put_instance_for_an_unknown_account_is_not_found_and_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_account(healthy_account("acct-a")).await;

    let status = try_put_instance(&app, running_instance("acct-nobody", "i-1"))
        .await
        .unwrap_err();

    let metadata = assert_error(
        &status,
        Code::NotFound,
        "InvalidAccountId.NotFound",
        "404",
        Detail::ResourceInfo("account"),
    );
    assert_eq!(
        metadata.get("accountId").map(String::as_str),
        Some("acct-nobody")
    );
    assert_eq!(app.count_rows("instances").await, 0);
    assert_eq!(app.count_rows("accounts").await, 1, "no account made up");
}

async fn put_disk_for_an_unknown_account_is_not_found_and_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 0)).await;
    let disk = pb::Disk {
        account_id: "acct-nobody".into(),
        status: pb::DiskStatus::Available.into(),
        instance_id: String::new(),
        ..attached_disk("acct-a", "i-acct-a", "d-1")
    };

    let status = app.put_disk(disk).await.unwrap_err();

    let metadata = assert_error(
        &status,
        Code::NotFound,
        "InvalidAccountId.NotFound",
        "404",
        Detail::ResourceInfo("account"),
    );
    assert_eq!(
        metadata.get("accountId").map(String::as_str),
        Some("acct-nobody")
    );
    assert_eq!(app.count_rows("disks").await, 0);
}

async fn put_disk_on_an_unknown_instance_is_not_found_and_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 0)).await;

    let status = app
        .put_disk(attached_disk("acct-a", "i-nowhere", "d-1"))
        .await
        .unwrap_err();

    let metadata = assert_error(
        &status,
        Code::NotFound,
        "InvalidInstanceId.NotFound",
        "404",
        Detail::ResourceInfo("instance"),
    );
    assert_eq!(
        metadata.get("instanceId").map(String::as_str),
        Some("i-nowhere")
    );
    assert_eq!(app.count_rows("disks").await, 0);
}

async fn put_disk_on_another_accounts_instance_is_refused_and_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 0)).await;
    app.seed(&world("acct-b", 0)).await;

    let status = app
        .put_disk(attached_disk("acct-a", "i-acct-b", "d-1"))
        .await
        .unwrap_err();

    assert_error(
        &status,
        Code::InvalidArgument,
        "InvalidParameter",
        "400",
        Detail::BadRequest("instance_id"),
    );
    assert_eq!(app.count_rows("disks").await, 0);

    // Moving an existing disk onto the other account's instance is refused the same way and
    // leaves the disk as it was.
    let own = attached_disk("acct-a", "i-acct-a", "d-1");
    let own = app.put_disk(own).await.expect("PutDisk");
    let status = app
        .put_disk(attached_disk("acct-a", "i-acct-b", "d-1"))
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "InvalidParameter",
        "400",
        Detail::BadRequest("instance_id"),
    );
    assert_eq!(get_disk(&app, "d-1").await.unwrap(), own);
}

async fn put_disk_refuses_every_malformed_field_and_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 0)).await;
    let good = attached_disk("acct-a", "i-acct-a", "d-1");
    let cases: Vec<(&str, pb::Disk, &str, &str, Detail)> = vec![
        (
            "malformed disk id",
            pb::Disk {
                disk_id: "disk-1".into(),
                ..good.clone()
            },
            "DiskId.ValueNotSupported",
            "403",
            Detail::BadRequest("disk_id"),
        ),
        (
            "unknown category",
            pb::Disk {
                category: "floppy".into(),
                ..good.clone()
            },
            "InvalidParameter",
            "400",
            Detail::BadRequest("category"),
        ),
        (
            "unspecified type",
            pb::Disk {
                r#type: pb::DiskType::Unspecified.into(),
                ..good.clone()
            },
            "InvalidParameter",
            "400",
            Detail::BadRequest("type"),
        ),
        (
            "unknown type number",
            pb::Disk {
                r#type: 99,
                ..good.clone()
            },
            "InvalidParameter",
            "400",
            Detail::BadRequest("type"),
        ),
        (
            "unspecified status",
            pb::Disk {
                status: pb::DiskStatus::Unspecified.into(),
                ..good.clone()
            },
            "InvalidParameter",
            "400",
            Detail::BadRequest("status"),
        ),
        (
            "In_use without an instance",
            pb::Disk {
                instance_id: String::new(),
                ..good.clone()
            },
            "InvalidParameter",
            "400",
            Detail::BadRequest("instance_id"),
        ),
        (
            "zero size",
            pb::Disk {
                size_gib: 0,
                ..good.clone()
            },
            "InvalidParameter",
            "400",
            Detail::BadRequest("size_gib"),
        ),
        (
            "negative size",
            pb::Disk {
                size_gib: -40,
                ..good.clone()
            },
            "InvalidParameter",
            "400",
            Detail::BadRequest("size_gib"),
        ),
        (
            "no created_at",
            pb::Disk {
                created_at: None,
                ..good.clone()
            },
            "InvalidParameter",
            "400",
            Detail::BadRequest("created_at"),
        ),
        (
            "empty account id",
            pb::Disk {
                account_id: String::new(),
                ..good.clone()
            },
            "MissingParameter",
            "400",
            Detail::BadRequest("account_id"),
        ),
    ];

    for (case, disk, reason, http_status, detail) in cases {
        let status = app.put_disk(disk).await.unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_error(&status, Code::InvalidArgument, reason, http_status, detail);
        assert_eq!(app.count_rows("disks").await, 0, "{case} writes nothing");
    }

    // The same record without the fault is fine.
    app.put_disk(good).await.expect("the good record");
    assert_eq!(app.count_rows("disks").await, 1);
}

/// `message` with `authorization` set to `value`, or without it.
fn with_authorization<T>(value: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = value {
        let value: MetadataValue<_> = value.parse().expect("an ASCII header value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Every inventory call made with `authorization` = `value`: each must be refused with `reason`.
async fn assert_every_call_refused(app: &TestApp, value: Option<&str>, reason: &str) {
    let mut inventory = app.inventory();
    let account = healthy_account("acct-b");
    let instance = running_instance("acct-a", "i-acct-a-2");
    let disk = attached_disk("acct-a", "i-acct-a", "d-acct-a-0");
    let get = pb::GetDiskRequest {
        disk_id: "d-acct-a-0".into(),
    };
    let refusals = [
        (
            "PutAccount",
            inventory
                .put_account(with_authorization(value, put_account_request(account)))
                .await
                .unwrap_err(),
        ),
        (
            "PutInstance",
            inventory
                .put_instance(with_authorization(value, put_instance_request(instance)))
                .await
                .unwrap_err(),
        ),
        (
            "PutDisk",
            inventory
                .put_disk(with_authorization(value, put_disk_request(disk)))
                .await
                .unwrap_err(),
        ),
        (
            "GetDisk",
            inventory
                .get_disk(with_authorization(value, get))
                .await
                .unwrap_err(),
        ),
    ];
    for (method, status) in refusals {
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{method} with authorization {value:?}: {status:?}"
        );
        assert_error(&status, Code::Unauthenticated, reason, "401", Detail::None);
    }
}

async fn the_inventory_api_refuses_anything_but_the_exact_admin_token(backend: Backend) {
    let app = spawn_app(backend).await;
    app.put_account(healthy_account("acct-a")).await;
    app.put_instance(running_instance("acct-a", "i-acct-a"))
        .await;
    let prefix = format!("Bearer {}", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
    let longer = format!("Bearer {ADMIN_TOKEN}x");
    let wrong_values = [
        None,
        Some("Bearer wrong-token"),
        Some(prefix.as_str()),
        Some(longer.as_str()),
        Some(ADMIN_TOKEN),
        Some("Bearer "),
    ];

    for value in wrong_values {
        assert_every_call_refused(&app, value, "InvalidAdminToken").await;
    }

    assert_eq!(app.count_rows("accounts").await, 1, "nothing written");
    assert_eq!(app.count_rows("instances").await, 1, "nothing written");
    assert_eq!(app.count_rows("disks").await, 0, "nothing written");
    // The same calls with the right token go through.
    let right = format!("Bearer {ADMIN_TOKEN}");
    app.inventory()
        .put_disk(with_authorization(
            Some(&right),
            put_disk_request(attached_disk("acct-a", "i-acct-a", "d-acct-a-0")),
        ))
        .await
        .expect("the exact token");
}

async fn a_server_without_an_admin_token_refuses_even_the_right_token(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|c| c.admin_token = None),
            ..Default::default()
        },
    )
    .await;
    let right = format!("Bearer {ADMIN_TOKEN}");

    for value in [Some(right.as_str()), None, Some("Bearer ")] {
        assert_every_call_refused(&app, value, "InventoryApi.Disabled").await;
    }

    assert_eq!(app.count_rows("accounts").await, 0);
    assert_eq!(app.count_rows("instances").await, 0);
    assert_eq!(app.count_rows("disks").await, 0);
}

async fn a_put_without_its_record_is_a_missing_parameter_and_stores_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut inventory = app.inventory();

    let refusals = [
        (
            "account",
            inventory
                .put_account(as_admin(pb::PutAccountRequest::default()))
                .await
                .unwrap_err(),
        ),
        (
            "instance",
            inventory
                .put_instance(as_admin(pb::PutInstanceRequest::default()))
                .await
                .unwrap_err(),
        ),
        (
            "disk",
            inventory
                .put_disk(as_admin(pb::PutDiskRequest::default()))
                .await
                .unwrap_err(),
        ),
    ];

    for (field, status) in refusals {
        assert_error(
            &status,
            Code::InvalidArgument,
            "MissingParameter",
            "400",
            Detail::BadRequest(field),
        );
    }
    for table in ["accounts", "instances", "disks"] {
        assert_eq!(app.count_rows(table).await, 0, "nothing written to {table}");
    }
}

async fn the_bearer_scheme_is_case_insensitive(backend: Backend) {
    let app = spawn_app(backend).await;
    let lower = format!("bearer {ADMIN_TOKEN}");
    app.inventory()
        .put_account(with_authorization(
            Some(&lower),
            put_account_request(healthy_account("acct-a")),
        ))
        .await
        .expect("RFC 9110: the scheme name is case-insensitive");
}

async fn an_instance_cannot_move_account_with_another_accounts_disk_attached(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    app.put_account(healthy_account("acct-b")).await;

    let mut moved = running_instance("acct-b", "i-acct-a");
    moved.created_at = world("acct-a", 0).instance.created_at;
    let status = app
        .inventory()
        .put_instance(as_admin(put_instance_request(moved)))
        .await
        .unwrap_err();

    assert_error(
        &status,
        Code::InvalidArgument,
        "InvalidParameter",
        "400",
        Detail::BadRequest("account_id"),
    );
    // The instance still belongs to acct-a, whose disk can still be snapshotted.
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("unchanged");
}

async fn a_disk_with_snapshots_cannot_move_to_another_account(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    app.seed(&world("acct-b", 0)).await;
    app.create_on("acct-a", "d-acct-a-0").await.unwrap();

    let moved = attached_disk("acct-b", "i-acct-b", "d-acct-a-0");
    let status = app.put_disk(moved).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "InvalidParameter",
        "400",
        Detail::BadRequest("account_id"),
    );

    // A disk without snapshots may move (the control plane is authoritative).
    let moved = attached_disk("acct-b", "i-acct-b", "d-acct-a-1");
    let stored = app.put_disk(moved).await.expect("no snapshots: may move");
    assert_eq!(stored.account_id, "acct-b");
}
