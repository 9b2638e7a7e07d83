//! The settings where the seed and the newest ECS documentation differ (`docs/decisions.md`):
//! each one's default is the seed's rule, and its other value the newer behaviour.

use snapshotd::pb;
use tonic::Code;

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, Options, TestApp, finish_copies, healthy_account, spawn_app, spawn_app_with,
};
use crate::on_both_backends;

on_both_backends!(
    an_available_disk_is_refused_by_default_as_the_seed_says,
    an_available_disk_attached_before_is_snapshotted_when_the_setting_allows_it,
);

const ACCOUNT: &str = "acct-a";

/// `acct-a` with an Available disk `d-available` (attached before, detached now) and one never
/// attached, `d-never`.
async fn detached_disks(app: &TestApp) {
    app.put_account(healthy_account(ACCOUNT)).await;
    for (disk_id, ever_attached) in [("d-available", true), ("d-never", false)] {
        let mut disk = crate::helpers::attached_disk(ACCOUNT, "i-gone", disk_id);
        disk.status = pb::DiskStatus::Available.into();
        disk.instance_id = String::new();
        disk.ever_attached = ever_attached;
        app.put_disk(disk).await.expect("PutDisk");
    }
}

async fn an_available_disk_is_refused_by_default_as_the_seed_says(backend: Backend) {
    let app = spawn_app(backend).await;
    detached_disks(&app).await;
    let status = app.create_on(ACCOUNT, "d-available").await.unwrap_err();
    let metadata = assert_error(
        &status,
        Code::FailedPrecondition,
        "IncorrectDiskStatus",
        "403",
        Detail::PreconditionFailure,
    );
    assert_eq!(metadata["diskStatus"], "Available");
    assert_eq!(app.count_rows("snapshots").await, 0);
}

async fn an_available_disk_attached_before_is_snapshotted_when_the_setting_allows_it(
    backend: Backend,
) {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| config.snapshot_available_disks = true),
            ..Options::default()
        },
    )
    .await;
    detached_disks(&app).await;
    let created = app
        .create_on(ACCOUNT, "d-available")
        .await
        .expect("an Available disk attached before");
    let status = app.create_on(ACCOUNT, "d-never").await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "IncorrectDiskStatus.NeverAttached",
        "403",
        Detail::PreconditionFailure,
    );
    finish_copies(&app).await;
    let listed = app
        .snapshots()
        .describe_snapshots(crate::helpers::as_account(
            ACCOUNT,
            pb::DescribeSnapshotsRequest::default(),
        ))
        .await
        .expect("DescribeSnapshots")
        .into_inner()
        .snapshots;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].snapshot_id, created.snapshot_id);
    assert_eq!(
        listed[0].status,
        i32::from(pb::SnapshotStatus::Accomplished)
    );
    app.assert_invariants().await;
}
