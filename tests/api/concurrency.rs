//! The per-disk lock under real concurrency: many tasks, one disk; many disks at once.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, DiskLock, Options, concurrently, finish_copies, spawn_app, spawn_app_with,
    spawn_replica, world,
};
use crate::on_both_backends;

on_both_backends!(
    sixty_four_concurrent_creates_on_one_disk_yield_exactly_one_snapshot,
    concurrent_creates_never_exceed_the_quota,
    concurrent_creates_on_different_disks_all_succeed,
);

async fn sixty_four_concurrent_creates_on_one_disk_yield_exactly_one_snapshot(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 1)).await;

    let results = concurrently(64, |_| {
        let app = app.clone();
        async move { app.create_on("acct-a", "d-acct-a-0").await }
    })
    .await;

    let (created, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    assert_eq!(created.len(), 1, "exactly one create wins");
    for status in refused.into_iter().map(Result::unwrap_err) {
        assert_error(
            &status,
            Code::FailedPrecondition,
            "IncorrectDiskStatus.CreatingSnapshot",
            "403",
            Detail::PreconditionFailureAndRetry,
        );
    }
    assert_eq!(app.count_rows("snapshots").await, 1);
    app.assert_invariants().await;
}

async fn concurrent_creates_never_exceed_the_quota(backend: Backend) {
    let app = Arc::new(
        spawn_app_with(
            backend,
            Options {
                configure: Box::new(|c| c.snapshot_quota = 4),
                ..Options::default()
            },
        )
        .await,
    );
    app.seed(&world("acct-a", 1)).await;

    // Rounds of 16 racers; between rounds the copy in progress finishes. Until the quota of 4
    // is reached one racer per round wins and the others find its copy in progress; after it,
    // every racer is over the quota.
    for round in 1..=6 {
        let results = concurrently(16, |_| {
            let app = app.clone();
            async move { app.create_on("acct-a", "d-acct-a-0").await }
        })
        .await;

        let (created, refused): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        let under_quota = round <= 4;
        assert_eq!(
            created.len(),
            usize::from(under_quota),
            "winners in round {round}"
        );
        for status in refused.into_iter().map(Result::unwrap_err) {
            if under_quota {
                assert_error(
                    &status,
                    Code::FailedPrecondition,
                    "IncorrectDiskStatus.CreatingSnapshot",
                    "403",
                    Detail::PreconditionFailureAndRetry,
                );
            } else {
                assert_error(
                    &status,
                    Code::ResourceExhausted,
                    "QuotaExceed.Snapshot",
                    "403",
                    Detail::QuotaFailure,
                );
            }
        }
        finish_copies(&app).await;
    }
    assert_eq!(app.count_rows("snapshots").await, 4);
    app.assert_invariants().await;
}

async fn concurrent_creates_on_different_disks_all_succeed(backend: Backend) {
    let app = Arc::new(spawn_app(backend).await);
    app.seed(&world("acct-a", 32)).await;

    let results = concurrently(32, |n| {
        let app = app.clone();
        async move { app.create_on("acct-a", &format!("d-acct-a-{n}")).await }
    })
    .await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(app.count_rows("snapshots").await, 32);
    app.assert_invariants().await;
}

/// PostgreSQL locks per disk: a create on one disk does not wait for a lock held on another.
/// (SQLite serializes all writes on its one database lock, so this is PostgreSQL's alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_on_different_disks_do_not_wait_for_each_other_on_postgres() {
    let app = Arc::new(spawn_app(Backend::Postgres).await);
    app.seed(&world("acct-a", 2)).await;

    // Hold disk 0's row lock in another session, as a slow CreateSnapshot would.
    let lock = DiskLock::hold(&app.db.url, "d-acct-a-0").await;

    let blocked = tokio::spawn({
        let app = app.clone();
        async move { app.create_on("acct-a", "d-acct-a-0").await }
    });
    let other_disk = tokio::time::timeout(
        Duration::from_secs(5),
        app.create_on("acct-a", "d-acct-a-1"),
    )
    .await
    .expect("disk 1 does not wait for disk 0's lock");
    other_disk.expect("disk 1 is snapshotted");

    // Not a fixed sleep: PostgreSQL shows the server's create waiting on the row lock.
    lock.wait_for_a_waiter().await;
    assert!(
        !blocked.is_finished(),
        "disk 0's create waits for its row lock"
    );
    lock.release().await;
    blocked
        .await
        .unwrap()
        .expect("disk 0's create proceeds once the lock is released");
    assert_eq!(app.count_rows("snapshots").await, 2);
    app.assert_invariants().await;
}

/// Two replicas on one PostgreSQL race creates on one disk: the disk's row lock, not either
/// replica's own bookkeeping, lets exactly one start a copy. The test holds the row while both
/// calls arrive, so both have read the disk before either can write: without the lock each
/// would read it free and write a snapshot of its own (the mutation in docs/testing.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_racing_on_one_disk_start_exactly_one_copy_on_postgres() {
    let first = Arc::new(spawn_app(Backend::Postgres).await);
    let second = Arc::new(spawn_replica(&first, Options::default()).await);
    first.seed(&world("acct-a", 1)).await;

    let lock = DiskLock::hold(&first.db.url, "d-acct-a-0").await;
    let calls: Vec<_> = [first.clone(), second.clone()]
        .into_iter()
        .map(|app| tokio::spawn(async move { app.create_on("acct-a", "d-acct-a-0").await }))
        .collect();
    // Both replicas' creates are inside their transactions, stopped by the held row.
    lock.wait_for_waiters(2).await;
    lock.release().await;

    let mut created = Vec::new();
    for call in calls {
        match call.await.expect("a create task") {
            Ok(response) => created.push(response.snapshot_id),
            Err(status) => {
                assert_error(
                    &status,
                    Code::FailedPrecondition,
                    "IncorrectDiskStatus.CreatingSnapshot",
                    "403",
                    Detail::PreconditionFailureAndRetry,
                );
            }
        }
    }
    assert_eq!(
        created.len(),
        1,
        "exactly one replica starts a copy: {created:?}"
    );
    assert_eq!(first.count_rows("snapshots").await, 1);
    first.assert_invariants().await;
}
