//! DeleteSnapshot and CreateImage against the real server: deleting frees quota and disks,
//! never reaches another account, and an image pins its snapshot; an image needs an accomplished
//! snapshot and is idempotent by client token; a failed copy frees the disk.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use snapshotd::backend::{BackendError, CopyState, SimulatedBackend, SnapshotBackend};
use snapshotd::clock::Clock;
use snapshotd::domain::{Snapshot, Timestamp};
use snapshotd::pb;
use snapshotd::pb::image_service_client::ImageServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, Options, TestApp, as_account, concurrently, finish_copies, spawn_app, spawn_app_with,
    world,
};
use crate::on_both_backends;

on_both_backends!(
    deleting_an_accomplished_snapshot_removes_it_and_frees_its_quota,
    the_65th_snapshot_of_a_disk_is_refused_and_deleting_one_admits_a_new_one,
    deleting_a_progressing_snapshot_cancels_the_copy_and_frees_the_disk_at_once,
    deleting_another_accounts_or_a_nonexistent_snapshot_is_not_found,
    each_malformed_delete_or_image_request_is_refused_and_changes_nothing,
    a_delete_without_an_account_is_unauthenticated,
    an_image_of_an_accomplished_snapshot_pins_it_against_deletion,
    an_image_of_a_progressing_snapshot_is_not_ready,
    an_image_of_a_failed_snapshot_is_not_ready,
    an_image_of_another_accounts_or_a_nonexistent_snapshot_is_not_found,
    the_edges_of_an_image_name_are_accepted,
    an_image_replay_with_identical_parameters_returns_the_original_image,
    an_image_token_reused_with_other_parameters_is_a_mismatch,
    a_refused_image_request_does_not_bind_its_token,
    one_image_token_raced_by_thirty_tasks_yields_one_image,
    one_image_token_raced_over_several_snapshots_yields_one_image_and_mismatches,
    concurrent_deletes_of_one_snapshot_free_its_quota_once,
    a_delete_racing_an_image_never_loses_the_images_snapshot,
    a_failed_copy_marks_the_snapshot_failed_and_frees_the_disk,
);

// ---------------------------------------------------------------------------------------------
// Local helpers.

fn images(app: &TestApp) -> ImageServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .expect("a valid address")
        .connect_lazy();
    ImageServiceClient::new(channel)
}

async fn create_image(
    app: &TestApp,
    account: &str,
    request: pb::CreateImageRequest,
) -> Result<pb::CreateImageResponse, Status> {
    images(app)
        .create_image(as_account(account, request))
        .await
        .map(tonic::Response::into_inner)
}

fn image_of(snapshot_id: &str) -> pb::CreateImageRequest {
    pb::CreateImageRequest {
        snapshot_id: snapshot_id.to_owned(),
        ..Default::default()
    }
}

async fn delete(
    app: &TestApp,
    account: &str,
    snapshot_id: &str,
    force: bool,
) -> Result<pb::DeleteSnapshotResponse, Status> {
    app.snapshots()
        .delete_snapshot(as_account(
            account,
            pb::DeleteSnapshotRequest {
                snapshot_id: snapshot_id.to_owned(),
                force,
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// `status` is the NotFound every caller gets for a snapshot it does not own or nobody has,
/// naming `snapshot_id`.
#[track_caller]
fn assert_not_found(status: &Status, snapshot_id: &str) {
    let metadata = assert_error(
        status,
        Code::NotFound,
        "InvalidSnapshotId.NotFound",
        "404",
        Detail::ResourceInfo("snapshot"),
    );
    assert_eq!(
        metadata.get("snapshotId").map(String::as_str),
        Some(snapshot_id)
    );
}

/// The caller's snapshots, newest first (one page of up to 100).
async fn listed(app: &TestApp, account: &str) -> Vec<pb::Snapshot> {
    app.snapshots()
        .describe_snapshots(as_account(
            account,
            pb::DescribeSnapshotsRequest {
                max_results: 100,
                ..Default::default()
            },
        ))
        .await
        .expect("DescribeSnapshots")
        .into_inner()
        .snapshots
}

async fn listed_ids(app: &TestApp, account: &str) -> Vec<String> {
    listed(app, account)
        .await
        .into_iter()
        .map(|s| s.snapshot_id)
        .collect()
}

/// The caller's snapshot `snapshot_id`, if Describe shows it.
async fn find(app: &TestApp, account: &str, snapshot_id: &str) -> Option<pb::Snapshot> {
    let mut snapshots = app
        .snapshots()
        .describe_snapshots(as_account(
            account,
            pb::DescribeSnapshotsRequest {
                snapshot_ids: vec![snapshot_id.to_owned()],
                ..Default::default()
            },
        ))
        .await
        .expect("DescribeSnapshots")
        .into_inner()
        .snapshots;
    assert!(snapshots.len() <= 1);
    snapshots.pop()
}

/// A snapshot of `disk_id` whose copy has finished.
async fn accomplished_snapshot(app: &TestApp, account: &str, disk_id: &str) -> String {
    let id = app
        .create_on(account, disk_id)
        .await
        .expect("CreateSnapshot")
        .snapshot_id;
    finish_copies(app).await;
    id
}

#[track_caller]
fn assert_request_id(request_id: &str) {
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
    assert_eq!(request_id, request_id.to_uppercase());
}

#[track_caller]
fn assert_image_id(image_id: &str) {
    assert_eq!(image_id.len(), 22, "{image_id}");
    assert!(image_id.starts_with("m-"), "{image_id}");
    assert!(
        image_id[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "{image_id}"
    );
}

/// Simulates copies at 256 MiB/s, remembers which it was asked to cancel, and fails the copy of
/// the first snapshot it starts when `fail_first` is set.
#[derive(Default)]
struct TestBackend {
    fail_first: bool,
    first: Mutex<Option<String>>,
    cancelled: Mutex<Vec<String>>,
}

impl TestBackend {
    fn failing_first_copy() -> Self {
        Self {
            fail_first: true,
            ..Self::default()
        }
    }

    fn cancelled(&self) -> Vec<String> {
        self.cancelled.lock().unwrap().clone()
    }
}

#[async_trait]
impl SnapshotBackend for TestBackend {
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError> {
        self.first
            .lock()
            .unwrap()
            .get_or_insert_with(|| snapshot.snapshot_id.clone());
        SimulatedBackend::new(256).start_copy(snapshot).await
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        let is_first = self.first.lock().unwrap().as_deref() == Some(&snapshot.snapshot_id);
        if self.fail_first && is_first {
            CopyState::Failed("the source disk went away".into())
        } else {
            SimulatedBackend::new(256).copy_state(snapshot, now).await
        }
    }

    async fn cancel_copy(&self, snapshot: &Snapshot) -> Result<(), BackendError> {
        self.cancelled
            .lock()
            .unwrap()
            .push(snapshot.snapshot_id.clone());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// DeleteSnapshot.

async fn deleting_an_accomplished_snapshot_removes_it_and_frees_its_quota(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|c| c.snapshot_quota = 2),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    let first = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let second = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::ResourceExhausted,
        "QuotaExceed.Snapshot",
        "403",
        Detail::QuotaFailure,
    );

    let response = delete(&app, "acct-a", &first, false)
        .await
        .expect("DeleteSnapshot");

    assert_request_id(&response.request_id);
    assert_eq!(
        listed_ids(&app, "acct-a").await,
        std::slice::from_ref(&second)
    );
    assert!(find(&app, "acct-a", &first).await.is_none());
    assert_eq!(app.count_rows("snapshots").await, 1);
    let third = app
        .create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the deleted snapshot's quota is free again");
    assert_eq!(
        listed_ids(&app, "acct-a").await,
        [third.snapshot_id, second]
    );
    // Deleting it again: it is gone.
    let status = delete(&app, "acct-a", &first, false).await.unwrap_err();
    assert_not_found(&status, &first);
}

async fn the_65th_snapshot_of_a_disk_is_refused_and_deleting_one_admits_a_new_one(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let mut ids = Vec::new();
    for _ in 0..64 {
        ids.push(accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await);
    }

    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    let metadata = assert_error(
        &status,
        Code::ResourceExhausted,
        "QuotaExceed.Snapshot",
        "403",
        Detail::QuotaFailure,
    );
    assert_eq!(metadata.get("quota").map(String::as_str), Some("64"));
    assert_eq!(app.count_rows("snapshots").await, 64);

    delete(&app, "acct-a", &ids[10], false)
        .await
        .expect("DeleteSnapshot");
    let admitted = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    assert_eq!(app.count_rows("snapshots").await, 64);
    assert!(find(&app, "acct-a", &admitted).await.is_some());
    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::ResourceExhausted,
        "QuotaExceed.Snapshot",
        "403",
        Detail::QuotaFailure,
    );
}

async fn deleting_a_progressing_snapshot_cancels_the_copy_and_frees_the_disk_at_once(
    backend: Backend,
) {
    let recorder = Arc::new(TestBackend::default());
    let app = spawn_app_with(
        backend,
        Options {
            snapshot_backend: recorder.clone(),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    let copying = app.create_on("acct-a", "d-acct-a-0").await.unwrap();
    app.advance(Duration::from_secs(40));
    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_eq!(
        tonic_types::StatusExt::get_details_error_info(&status)
            .unwrap()
            .reason,
        "IncorrectDiskStatus.CreatingSnapshot"
    );

    delete(&app, "acct-a", &copying.snapshot_id, false)
        .await
        .expect("DeleteSnapshot of a progressing snapshot");

    assert_eq!(
        recorder.cancelled(),
        std::slice::from_ref(&copying.snapshot_id)
    );
    assert!(find(&app, "acct-a", &copying.snapshot_id).await.is_none());
    // No time passes and the worker does not run: the disk is free at once.
    let next = app
        .create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the disk is free");
    assert_eq!(
        listed_ids(&app, "acct-a").await,
        std::slice::from_ref(&next.snapshot_id)
    );
    assert_eq!(app.count_rows("snapshots").await, 1);

    // The cancelled copy is never finished by the worker.
    app.advance(Duration::from_secs(3600));
    let done = app.tick_until_idle().await;
    assert_eq!((done.accomplished, done.failed), (1, 0));
    let next = find(&app, "acct-a", &next.snapshot_id).await.unwrap();
    assert_eq!(next.status(), pb::SnapshotStatus::Accomplished);
}

async fn deleting_another_accounts_or_a_nonexistent_snapshot_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    app.seed(&world("acct-b", 2)).await;
    let mine = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let theirs_done = accomplished_snapshot(&app, "acct-b", "d-acct-b-0").await;
    let theirs_copying = app
        .create_on("acct-b", "d-acct-b-1")
        .await
        .unwrap()
        .snapshot_id;

    for (snapshot_id, force) in [
        (theirs_done.as_str(), false),
        (theirs_done.as_str(), true),
        (theirs_copying.as_str(), false),
        ("s-00000000000000000000", false),
        ("s-zzzzzzzzzzzzzzzzzzzz", true),
    ] {
        let status = delete(&app, "acct-a", snapshot_id, force)
            .await
            .unwrap_err();
        assert_not_found(&status, snapshot_id);
    }
    // acct-b cannot delete acct-a's either.
    let status = delete(&app, "acct-b", &mine, false).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Nothing changed.
    assert_eq!(app.count_rows("snapshots").await, 3);
    assert_eq!(listed_ids(&app, "acct-a").await, [mine]);
    let theirs: HashSet<String> = listed_ids(&app, "acct-b").await.into_iter().collect();
    assert_eq!(theirs, HashSet::from([theirs_done, theirs_copying.clone()]));
    let copying = find(&app, "acct-b", &theirs_copying).await.unwrap();
    assert_eq!(copying.status(), pb::SnapshotStatus::Progressing);
    app.create_on("acct-b", "d-acct-b-1")
        .await
        .expect_err("acct-b's disk is still busy with its copy");
}

async fn a_delete_without_an_account_is_unauthenticated(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;

    let status = app
        .snapshots()
        .delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot_id: id.clone(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidIdentity.Missing",
        "401",
        Detail::None,
    );
    let status = images(&app).create_image(image_of(&id)).await.unwrap_err();
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidIdentity.Missing",
        "401",
        Detail::None,
    );
    assert_eq!(app.count_rows("snapshots").await, 1);
    assert_eq!(app.count_rows("images").await, 0);
}

// ---------------------------------------------------------------------------------------------
// CreateImage.

async fn an_image_of_an_accomplished_snapshot_pins_it_against_deletion(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let before = find(&app, "acct-a", &snapshot_id).await.unwrap();
    assert_eq!(before.usage, "none");
    app.advance(Duration::from_secs(60));

    let response = create_image(
        &app,
        "acct-a",
        pb::CreateImageRequest {
            image_name: "web-base.v1".into(),
            ..image_of(&snapshot_id)
        },
    )
    .await
    .expect("CreateImage");

    assert_image_id(&response.image_id);
    assert_request_id(&response.request_id);
    assert_eq!(app.count_rows("images").await, 1);
    let pinned = find(&app, "acct-a", &snapshot_id).await.unwrap();
    assert_eq!(pinned.usage, "image");
    assert_eq!(pinned.status(), pb::SnapshotStatus::Accomplished);

    for force in [false, true] {
        let status = delete(&app, "acct-a", &snapshot_id, force)
            .await
            .unwrap_err();
        let metadata = assert_error(
            &status,
            Code::FailedPrecondition,
            "SnapshotCreatedImage",
            "403",
            Detail::PreconditionFailure,
        );
        assert_eq!(
            metadata.get("snapshotId").map(String::as_str),
            Some(snapshot_id.as_str())
        );
    }
    assert!(find(&app, "acct-a", &snapshot_id).await.is_some());
    assert_eq!(app.count_rows("snapshots").await, 1);

    // A second image of the same snapshot is another image.
    let second = create_image(&app, "acct-a", image_of(&snapshot_id))
        .await
        .expect("a second image");
    assert_image_id(&second.image_id);
    assert_ne!(second.image_id, response.image_id);
    assert_eq!(app.count_rows("images").await, 2);
}

async fn an_image_of_a_progressing_snapshot_is_not_ready(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let copying = app.create_on("acct-a", "d-acct-a-0").await.unwrap();
    app.advance(Duration::from_secs(159));

    let status = create_image(&app, "acct-a", image_of(&copying.snapshot_id))
        .await
        .unwrap_err();

    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "InvalidSnapshotId.NotReady",
        "403",
        Detail::PreconditionFailure,
    );
    assert_eq!(
        metadata.get("snapshotId"),
        Some(&copying.snapshot_id),
        "{metadata:?}"
    );
    assert_eq!(app.count_rows("images").await, 0);
    let snapshot = find(&app, "acct-a", &copying.snapshot_id).await.unwrap();
    assert_eq!(snapshot.usage, "none");

    // Once accomplished, it can.
    finish_copies(&app).await;
    create_image(&app, "acct-a", image_of(&copying.snapshot_id))
        .await
        .expect("CreateImage of the accomplished snapshot");
}

async fn an_image_of_a_failed_snapshot_is_not_ready(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            snapshot_backend: Arc::new(TestBackend::failing_first_copy()),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    let failed = app.create_on("acct-a", "d-acct-a-0").await.unwrap();
    finish_copies(&app).await;
    let snapshot = find(&app, "acct-a", &failed.snapshot_id).await.unwrap();
    assert_eq!(snapshot.status(), pb::SnapshotStatus::Failed);

    let status = create_image(&app, "acct-a", image_of(&failed.snapshot_id))
        .await
        .unwrap_err();

    assert_error(
        &status,
        Code::FailedPrecondition,
        "InvalidSnapshotId.NotReady",
        "403",
        Detail::PreconditionFailure,
    );
    assert_eq!(app.count_rows("images").await, 0);
}

async fn an_image_of_another_accounts_or_a_nonexistent_snapshot_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    app.seed(&world("acct-b", 2)).await;
    let theirs = accomplished_snapshot(&app, "acct-b", "d-acct-b-0").await;
    // Not NotReady: that would reveal that the snapshot exists.
    let theirs_copying = app
        .create_on("acct-b", "d-acct-b-1")
        .await
        .unwrap()
        .snapshot_id;

    for snapshot_id in [
        theirs.as_str(),
        theirs_copying.as_str(),
        "s-00000000000000000000",
    ] {
        let status = create_image(
            &app,
            "acct-a",
            pb::CreateImageRequest {
                client_token: "tok-1".into(),
                ..image_of(snapshot_id)
            },
        )
        .await
        .unwrap_err();
        assert_not_found(&status, snapshot_id);
    }
    assert_eq!(app.count_rows("images").await, 0);
    assert_eq!(app.count_rows("image_client_tokens").await, 0);
    let snapshot = find(&app, "acct-b", &theirs).await.unwrap();
    assert_eq!(snapshot.usage, "none", "acct-b's snapshot is untouched");
}

/// A DeleteSnapshot or CreateImage call with one malformed input.
enum Call {
    Delete { snapshot_id: String, force: bool },
    Image(pb::CreateImageRequest),
}

/// One malformed input and the refusal it must get.
struct Malformed {
    call: Call,
    reason: &'static str,
    http_status: &'static str,
    /// The field its BadRequest names.
    field: &'static str,
    /// Whether ErrorInfo echoes the snapshot id back as `snapshotId`.
    echoes_snapshot_id: bool,
}

fn refused(
    call: Call,
    reason: &'static str,
    http_status: &'static str,
    field: &'static str,
    echoes_snapshot_id: bool,
) -> Malformed {
    Malformed {
        call,
        reason,
        http_status,
        field,
        echoes_snapshot_id,
    }
}

/// Every malformed input of DeleteSnapshot and CreateImage, one row each; `snapshot_id` is an
/// accomplished snapshot the image rows would otherwise be valid for.
fn malformed_delete_and_image_calls(snapshot_id: &str) -> Vec<Malformed> {
    let mut rows = Vec::new();
    for bad in [
        "s-abc",
        "snap-1",
        "S-00000000000000000000",
        "s-0000000000000000000A",
        "s-000000000000000000000",
        "m-00000000000000000000",
        "s-0000000000000000000_",
    ] {
        let call = Call::Delete {
            snapshot_id: bad.to_owned(),
            force: false,
        };
        rows.push(refused(
            call,
            "InvalidSnapshotId.Malformed",
            "400",
            "snapshot_id",
            true,
        ));
    }
    let call = Call::Delete {
        snapshot_id: String::new(),
        force: true,
    };
    rows.push(refused(
        call,
        "MissingParameter",
        "400",
        "snapshot_id",
        false,
    ));

    let name_too_long = format!("a{}", "b".repeat(128));
    for image_name in [
        "a",
        "1abc",
        "_abc",
        ".abc",
        "http://x",
        "https://x",
        "aliyun-x",
        "acs:x",
        "a b",
        "a/b",
        name_too_long.as_str(),
    ] {
        let call = Call::Image(pb::CreateImageRequest {
            image_name: image_name.into(),
            ..image_of(snapshot_id)
        });
        rows.push(refused(
            call,
            "InvalidImageName.Malformed",
            "400",
            "image_name",
            false,
        ));
    }
    let token_too_long = "t".repeat(65);
    for client_token in [token_too_long.as_str(), "tök", "tab\there"] {
        let call = Call::Image(pb::CreateImageRequest {
            client_token: client_token.into(),
            ..image_of(snapshot_id)
        });
        rows.push(refused(
            call,
            "InvalidClientToken.Malformed",
            "403",
            "client_token",
            false,
        ));
    }
    for bad in ["s-abc", "m-00000000000000000000"] {
        rows.push(refused(
            Call::Image(image_of(bad)),
            "InvalidSnapshotId.Malformed",
            "400",
            "snapshot_id",
            false,
        ));
    }
    rows.push(refused(
        Call::Image(image_of("")),
        "MissingParameter",
        "400",
        "snapshot_id",
        false,
    ));
    rows
}

async fn each_malformed_delete_or_image_request_is_refused_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let table = malformed_delete_and_image_calls(&snapshot_id);
    assert_eq!(table.len(), 25, "every case of the table is still there");

    for row in table {
        let (input, answer) = match &row.call {
            Call::Delete { snapshot_id, force } => (
                snapshot_id.clone(),
                delete(&app, "acct-a", snapshot_id, *force).await.map(drop),
            ),
            Call::Image(request) => (
                format!("{request:?}"),
                create_image(&app, "acct-a", request.clone())
                    .await
                    .map(drop),
            ),
        };
        let status = answer.expect_err(&input);

        let metadata = assert_error(
            &status,
            Code::InvalidArgument,
            row.reason,
            row.http_status,
            Detail::BadRequest(row.field),
        );
        if row.echoes_snapshot_id {
            assert_eq!(metadata.get("snapshotId"), Some(&input));
        }
    }
    assert_eq!(app.count_rows("snapshots").await, 1);
    assert_eq!(app.count_rows("images").await, 0);
    assert_eq!(
        find(&app, "acct-a", &snapshot_id).await.unwrap().usage,
        "none"
    );
}

async fn the_edges_of_an_image_name_are_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;

    let longest = format!("A{}", "b".repeat(127));
    for image_name in ["ab", "Web.base_1:2-3", "镜像", longest.as_str()] {
        create_image(
            &app,
            "acct-a",
            pb::CreateImageRequest {
                image_name: image_name.into(),
                ..image_of(&snapshot_id)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{image_name:?}: {e:?}"));
    }
}

fn with_token(snapshot_id: &str, image_name: &str, token: &str) -> pb::CreateImageRequest {
    pb::CreateImageRequest {
        snapshot_id: snapshot_id.to_owned(),
        image_name: image_name.to_owned(),
        client_token: token.to_owned(),
    }
}

async fn an_image_replay_with_identical_parameters_returns_the_original_image(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;

    let first = create_image(&app, "acct-a", with_token(&snapshot_id, "web", "tok-1"))
        .await
        .unwrap();
    let replay = create_image(&app, "acct-a", with_token(&snapshot_id, "web", "tok-1"))
        .await
        .unwrap();

    assert_eq!(replay.image_id, first.image_id);
    assert_ne!(replay.request_id, first.request_id);
    assert_eq!(app.count_rows("images").await, 1);
    assert_eq!(app.count_rows("image_client_tokens").await, 1);

    // The token belongs to acct-a: acct-b's request with it is its own (and not found here).
    app.seed(&world("acct-b", 1)).await;
    let status = create_image(&app, "acct-b", with_token(&snapshot_id, "web", "tok-1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

async fn an_image_token_reused_with_other_parameters_is_a_mismatch(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;
    let other_snapshot = accomplished_snapshot(&app, "acct-a", "d-acct-a-1").await;
    create_image(&app, "acct-a", with_token(&snapshot_id, "web", "tok-1"))
        .await
        .unwrap();

    for request in [
        with_token(&snapshot_id, "db", "tok-1"),
        with_token(&snapshot_id, "", "tok-1"),
        with_token(&other_snapshot, "web", "tok-1"),
    ] {
        let status = create_image(&app, "acct-a", request).await.unwrap_err();
        let metadata = assert_error(
            &status,
            Code::FailedPrecondition,
            "IdempotentParameterMismatch",
            "403",
            Detail::PreconditionFailure,
        );
        assert_eq!(
            metadata.get("clientToken").map(String::as_str),
            Some("tok-1")
        );
    }
    assert_eq!(app.count_rows("images").await, 1);
    assert_eq!(
        find(&app, "acct-a", &other_snapshot).await.unwrap().usage,
        "none"
    );
}

async fn a_refused_image_request_does_not_bind_its_token(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let copying = app.create_on("acct-a", "d-acct-a-0").await.unwrap();

    let status = create_image(
        &app,
        "acct-a",
        with_token(&copying.snapshot_id, "web", "tok-1"),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(app.count_rows("image_client_tokens").await, 0);

    finish_copies(&app).await;
    let created = create_image(
        &app,
        "acct-a",
        with_token(&copying.snapshot_id, "web", "tok-1"),
    )
    .await
    .expect("the same token, now that the snapshot is accomplished");
    let replay = create_image(
        &app,
        "acct-a",
        with_token(&copying.snapshot_id, "web", "tok-1"),
    )
    .await
    .unwrap();
    assert_eq!(created.image_id, replay.image_id);
    assert_eq!(app.count_rows("images").await, 1);
}

async fn one_image_token_raced_by_thirty_tasks_yields_one_image(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 1)).await;
    let snapshot_id = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;

    let results = concurrently(30, |_| {
        let app = app.clone();
        let request = with_token(&snapshot_id, "web", "raced");
        async move { create_image(&app, "acct-a", request).await }
    })
    .await;

    let ids: HashSet<String> = results
        .into_iter()
        .map(|r| r.expect("every racer gets the image id").image_id)
        .collect();
    assert_eq!(ids.len(), 1, "one image id for all: {ids:?}");
    assert_eq!(app.count_rows("images").await, 1);
    assert_eq!(app.count_rows("image_client_tokens").await, 1);
    app.assert_invariants().await;
}

async fn one_image_token_raced_over_several_snapshots_yields_one_image_and_mismatches(
    backend: Backend,
) {
    let app = Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 5)).await;
    for n in 0..5 {
        app.create_on("acct-a", &format!("d-acct-a-{n}"))
            .await
            .unwrap();
    }
    finish_copies(&app).await;
    let snapshots = Arc::new(listed_ids(&app, "acct-a").await);
    assert_eq!(snapshots.len(), 5);

    let results = concurrently(30, |n| {
        let app = app.clone();
        let request = with_token(&snapshots[n % 5], "web", "raced");
        async move { create_image(&app, "acct-a", request).await }
    })
    .await;

    let mut ids = HashSet::new();
    for result in results {
        match result {
            Ok(response) => {
                ids.insert(response.image_id);
            }
            Err(status) => {
                assert_error(
                    &status,
                    Code::FailedPrecondition,
                    "IdempotentParameterMismatch",
                    "403",
                    Detail::PreconditionFailure,
                );
            }
        }
    }
    assert_eq!(ids.len(), 1, "exactly one image id was handed out: {ids:?}");
    assert_eq!(app.count_rows("images").await, 1);
    assert_eq!(app.count_rows("image_client_tokens").await, 1);
    let pinned = listed(&app, "acct-a")
        .await
        .into_iter()
        .filter(|s| s.usage == "image")
        .count();
    assert_eq!(pinned, 1, "only the winner's snapshot is pinned");
    app.assert_invariants().await;
}

async fn concurrent_deletes_of_one_snapshot_free_its_quota_once(backend: Backend) {
    let app = Arc::new(
        spawn_app_with(
            backend,
            Options {
                configure: Box::new(|c| c.snapshot_quota = 2),
                ..Options::default()
            },
        )
        .await,
    );
    app.seed(&world("acct-a", 1)).await;
    let doomed = Arc::new(accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await);
    let kept = accomplished_snapshot(&app, "acct-a", "d-acct-a-0").await;

    let results = concurrently(20, |_| {
        let app = app.clone();
        let doomed = doomed.clone();
        async move { delete(&app, "acct-a", &doomed, false).await }
    })
    .await;

    let mut deleted = 0;
    for result in results {
        match result {
            Ok(_) => deleted += 1,
            Err(status) => {
                assert_not_found(&status, &doomed);
            }
        }
    }
    assert_eq!(deleted, 1, "one delete wins");
    // Checked before the quota is used again, so a miscounted delete shows as itself.
    app.assert_invariants().await;
    assert_eq!(listed_ids(&app, "acct-a").await, [kept]);
    // One slot was freed, not twenty.
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("one slot is free");
    finish_copies(&app).await;
    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::ResourceExhausted,
        "QuotaExceed.Snapshot",
        "403",
        Detail::QuotaFailure,
    );
    app.assert_invariants().await;
}

async fn a_delete_racing_an_image_never_loses_the_images_snapshot(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 8)).await;
    for n in 0..8 {
        app.create_on("acct-a", &format!("d-acct-a-{n}"))
            .await
            .unwrap();
    }
    finish_copies(&app).await;
    let snapshots = Arc::new(listed_ids(&app, "acct-a").await);

    // For each snapshot, a delete and a CreateImage at once.
    let results = concurrently(16, |n| {
        let app = app.clone();
        let snapshot_id = snapshots[n / 2].clone();
        async move {
            if n % 2 == 0 {
                delete(&app, "acct-a", &snapshot_id, true)
                    .await
                    .map(|_| String::new())
            } else {
                create_image(&app, "acct-a", image_of(&snapshot_id))
                    .await
                    .map(|r| r.image_id)
            }
        }
    })
    .await;

    let mut imaged = 0;
    for (n, pair) in results.chunks(2).enumerate() {
        let snapshot_id = &snapshots[n];
        match (&pair[0], &pair[1]) {
            (Ok(_), Err(image)) => {
                assert_eq!(image.code(), Code::NotFound, "{image:?}");
                assert!(find(&app, "acct-a", snapshot_id).await.is_none());
            }
            (Err(delete), Ok(_)) => {
                assert_eq!(delete.code(), Code::FailedPrecondition, "{delete:?}");
                let kept = find(&app, "acct-a", snapshot_id)
                    .await
                    .expect("the image's snapshot is kept");
                assert_eq!(kept.usage, "image");
                imaged += 1;
            }
            other => panic!("exactly one of delete and image must win: {other:?}"),
        }
    }
    assert_eq!(app.count_rows("images").await, imaged);
    app.assert_invariants().await;
}

// ---------------------------------------------------------------------------------------------
// A failed copy.

async fn a_failed_copy_marks_the_snapshot_failed_and_frees_the_disk(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            snapshot_backend: Arc::new(TestBackend::failing_first_copy()),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    let failing = app.create_on("acct-a", "d-acct-a-0").await.unwrap();
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect_err("busy while the copy runs");

    // 40 GiB takes 160 s: the worker looks at the copy when it is due.
    app.advance(Duration::from_secs(160));
    let done = app.tick_until_idle().await;
    assert_eq!((done.accomplished, done.failed), (0, 1));
    let failed_at = app.clock.as_ref().unwrap().now();

    let snapshot = find(&app, "acct-a", &failing.snapshot_id).await.unwrap();
    assert_eq!(snapshot.status(), pb::SnapshotStatus::Failed);
    assert_eq!(snapshot.remain_time_seconds, 0);
    let modified = snapshot.last_modified_at.unwrap();
    assert_eq!(modified.seconds, failed_at.timestamp(), "last_modified_at");
    let failed = app
        .snapshots()
        .describe_snapshots(as_account(
            "acct-a",
            pb::DescribeSnapshotsRequest {
                status: pb::SnapshotStatus::Failed.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(failed.len(), 1);

    let next = app
        .create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the failed copy freed the disk");
    finish_copies(&app).await;
    let next = find(&app, "acct-a", &next.snapshot_id).await.unwrap();
    assert_eq!(next.status(), pb::SnapshotStatus::Accomplished);

    // A failed snapshot can be deleted.
    delete(&app, "acct-a", &failing.snapshot_id, false)
        .await
        .expect("DeleteSnapshot of a failed snapshot");
    assert_eq!(listed_ids(&app, "acct-a").await, [next.snapshot_id]);
}
