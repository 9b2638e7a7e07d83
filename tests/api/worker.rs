//! The lifecycle worker: copies finish when their time has come, failures free the disk, two
//! replicas share the queue without doing any snapshot twice, and in real time a snapshot is
//! shown accomplished within a second of its copy time elapsing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use snapshotd::backend::{BackendError, CopyState, SimulatedBackend, SnapshotBackend};
use snapshotd::domain::{Snapshot, Timestamp};
use snapshotd::pb;

use crate::helpers::{
    Backend, Options, TestApp, as_account, concurrently, spawn_app, spawn_app_with, spawn_replica,
    world,
};
use crate::on_both_backends;

on_both_backends!(
    a_copy_finishes_when_its_time_has_come_and_frees_the_disk,
    in_real_time_a_snapshot_is_accomplished_within_a_second_of_its_copy_time,
);

async fn describe_one(app: &TestApp, snapshot_id: &str) -> pb::Snapshot {
    let request = pb::DescribeSnapshotsRequest {
        snapshot_ids: vec![snapshot_id.to_owned()],
        ..Default::default()
    };
    let mut response = app
        .snapshots()
        .describe_snapshots(as_account("acct-a", request))
        .await
        .expect("DescribeSnapshots")
        .into_inner();
    assert_eq!(response.snapshots.len(), 1);
    response.snapshots.remove(0)
}

async fn a_copy_finishes_when_its_time_has_come_and_frees_the_disk(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let created = app.create_on("acct-a", "d-acct-a-0").await.unwrap();

    // 40 GiB at 256 MiB/s: 160 s.
    app.advance(Duration::from_secs(159));
    assert!(
        app.tick_until_idle().await.is_idle(),
        "not due before 160 s"
    );
    let snapshot = describe_one(&app, &created.snapshot_id).await;
    assert_eq!(snapshot.status(), pb::SnapshotStatus::Progressing);
    assert_eq!(snapshot.progress, 99);
    assert_eq!(snapshot.remain_time_seconds, 1);
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect_err("the disk is still busy");

    app.advance(Duration::from_secs(1));
    let done = app.tick_until_idle().await;
    assert_eq!(done.accomplished, 1);
    let snapshot = describe_one(&app, &created.snapshot_id).await;
    assert_eq!(snapshot.status(), pb::SnapshotStatus::Accomplished);
    assert_eq!((snapshot.progress, snapshot.remain_time_seconds), (100, 0));
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the finished copy freed the disk");
    assert!(
        app.tick_until_idle().await.is_idle(),
        "nothing is done twice"
    );
}

async fn in_real_time_a_snapshot_is_accomplished_within_a_second_of_its_copy_time(
    backend: Backend,
) {
    // 40 GiB at 40960 MiB/s: one second.
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|c| c.copy_rate_mibps = 40_960),
            snapshot_backend: Arc::new(SimulatedBackend::new(40_960)),
            real_time: true,
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    let created_at = Instant::now();
    let created = app.create_on("acct-a", "d-acct-a-0").await.unwrap();

    // The bound is on the server's own record (when the worker marked the snapshot, by its
    // clock), not on when this test's polling happened to look: on a loaded machine the
    // describe calls alone can eat the second. The test only waits, generously, to see it.
    let copy_time = Duration::from_secs(1);
    let patience = Duration::from_secs(15);
    let snapshot = loop {
        let snapshot = describe_one(&app, &created.snapshot_id).await;
        let elapsed = created_at.elapsed();
        if snapshot.status() == pb::SnapshotStatus::Accomplished {
            assert!(
                elapsed >= copy_time,
                "not before the copy time: {elapsed:?}"
            );
            break snapshot;
        }
        assert!(
            elapsed <= patience,
            "never accomplished: still {:?} after {elapsed:?}",
            snapshot.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let marked_after = between(
        snapshot.created_at.as_ref().expect("created_at"),
        snapshot
            .last_modified_at
            .as_ref()
            .expect("last_modified_at"),
    );
    assert!(
        marked_after >= copy_time && marked_after <= copy_time + Duration::from_secs(1),
        "accomplished within a second of the copy time, by the server's clock: {marked_after:?} \
         after its creation"
    );
}

/// The time from `from` to `to` (zero if `to` is earlier).
fn between(from: &prost_types::Timestamp, to: &prost_types::Timestamp) -> Duration {
    let nanos =
        |t: &prost_types::Timestamp| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    Duration::from_nanos(u64::try_from(nanos(to) - nanos(from)).unwrap_or(0))
}

/// A backend whose `copy_state` waits while its gate is closed: the worker step that calls it
/// has claimed its rows and holds them, inside its transaction, until the test opens the gate.
struct HeldStep {
    inner: SimulatedBackend,
    open: tokio::sync::watch::Sender<bool>,
    waiting: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl SnapshotBackend for HeldStep {
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError> {
        self.inner.start_copy(snapshot).await
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        let mut open = self.open.subscribe();
        if !*open.borrow() {
            self.waiting
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = open.wait_for(|open| *open).await;
        }
        self.inner.copy_state(snapshot, now).await
    }

    async fn cancel_copy(&self, snapshot: &Snapshot) -> Result<(), BackendError> {
        self.inner.cancel_copy(snapshot).await
    }
}

/// Two servers on one PostgreSQL database share the copy queue: while the first is held inside
/// its worker step, with the rows it claimed locked, the second completes the rest; each
/// snapshot is completed once, by one of them. Without `SKIP LOCKED` the second would wait for
/// the first (plain `FOR UPDATE`) or complete the first's rows too (no lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_complete_every_snapshot_exactly_once_on_postgres() {
    const PATIENCE: Duration = Duration::from_secs(15);
    let held = Arc::new(HeldStep {
        inner: SimulatedBackend::new(256),
        open: tokio::sync::watch::Sender::new(false),
        waiting: std::sync::atomic::AtomicUsize::new(0),
    });
    let first = Arc::new(
        spawn_app_with(
            Backend::Postgres,
            Options {
                snapshot_backend: held.clone(),
                ..Options::default()
            },
        )
        .await,
    );
    let second = Arc::new(spawn_replica(&first, Options::default()).await);
    const DISKS: usize = 300;
    first.seed(&world("acct-a", DISKS)).await;
    let created = concurrently(DISKS, |n| {
        let app = if n % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        async move { app.create_on("acct-a", &format!("d-acct-a-{n}")).await }
    })
    .await;
    assert!(created.iter().all(Result::is_ok));
    first.advance(Duration::from_secs(3600));
    second.advance(Duration::from_secs(3600));

    // The first replica claims a batch and stops inside its step, holding the rows.
    let first_steps = tokio::spawn({
        let first = first.clone();
        async move { first.tick_until_idle().await }
    });
    let deadline = Instant::now() + PATIENCE;
    while held.waiting.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the first replica never reached its copies"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Meanwhile the second completes what the first did not claim, without waiting for it.
    let by_second = tokio::time::timeout(PATIENCE, second.tick_until_idle())
        .await
        .expect("the second replica waited for the rows the first holds");
    assert!(
        by_second.accomplished > 0 && by_second.accomplished < DISKS,
        "the second completed only the rows the first had not claimed: {by_second:?}"
    );

    held.open.send_replace(true);
    let by_first = first_steps.await.expect("the first replica's steps");
    assert_eq!(
        by_first.accomplished + by_second.accomplished,
        DISKS,
        "each snapshot completed once: first {by_first:?}, second {by_second:?}"
    );
    first.assert_invariants().await;
    first
        .execute("DO $$ BEGIN IF EXISTS (SELECT 1 FROM snapshots WHERE status <> 'accomplished') THEN RAISE EXCEPTION 'unfinished'; END IF; END $$")
        .await;
}

/// The embedded store refuses a second server on its file, in one process as across processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_server_on_one_sqlite_file_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let config = snapshotd::Config::for_database(app.db.url.clone());
    let refused = snapshotd::App::build(config).await;
    let err = refused
        .err()
        .expect("a second server on the same file is refused");
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        chain.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(
        chain.contains("one server process per database file"),
        "{chain}"
    );
}

on_both_backends!(the_invariant_checker_reports_each_broken_promise);

on_both_backends!(the_metrics_status_counts_match_the_rows_through_copies_failures_and_deletes);

/// Copies of `d-acct-a-0` and `d-acct-a-1` fail; every other copy is simulated at 256 MiB/s.
struct FailsTwoDisks(SimulatedBackend);

#[async_trait::async_trait]
impl SnapshotBackend for FailsTwoDisks {
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError> {
        self.0.start_copy(snapshot).await
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        match snapshot.source_disk_id.as_str() {
            "d-acct-a-0" | "d-acct-a-1" => CopyState::Failed("bad sector".into()),
            _ => self.0.copy_state(snapshot, now).await,
        }
    }

    async fn cancel_copy(&self, snapshot: &Snapshot) -> Result<(), BackendError> {
        self.0.cancel_copy(snapshot).await
    }
}

/// The `snapshotd_snapshots{status}` gauge's counts (read without the table: partial indexes
/// and the disks' bookkeeping) against the rows themselves, at each step.
async fn the_metrics_status_counts_match_the_rows_through_copies_failures_and_deletes(
    backend: Backend,
) {
    let app = spawn_app_with(
        backend,
        Options {
            snapshot_backend: Arc::new(FailsTwoDisks(SimulatedBackend::new(256))),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 8)).await;
    let counted = || async {
        let mut read = app.store.read().await.expect("a connection");
        let mut counts = read.count_snapshots_by_status().await.expect("the counts");
        read.commit().await.expect("ending the read");
        counts.sort();
        counts
    };
    let stored = || async {
        let mut counts = Vec::new();
        for status in ["accomplished", "failed", "progressing"] {
            let rows = app
                .count_rows(&format!("snapshots WHERE status = '{status}'"))
                .await;
            counts.push((status.to_owned(), rows));
        }
        counts
    };
    let delete = |snapshot_id: String| {
        let mut client = app.snapshots();
        async move {
            client
                .delete_snapshot(as_account(
                    "acct-a",
                    pb::DeleteSnapshotRequest {
                        snapshot_id,
                        force: true,
                    },
                ))
                .await
                .expect("DeleteSnapshot");
        }
    };

    let expected = |accomplished: i64, failed: i64, progressing: i64| {
        vec![
            ("accomplished".to_owned(), accomplished),
            ("failed".to_owned(), failed),
            ("progressing".to_owned(), progressing),
        ]
    };
    assert_eq!(counted().await, expected(0, 0, 0), "an empty store");
    let mut first = Vec::new();
    for n in 0..8 {
        let created = app.create_on("acct-a", &format!("d-acct-a-{n}")).await;
        first.push(created.expect("CreateSnapshot").snapshot_id);
    }
    assert_eq!(counted().await, expected(0, 0, 8));

    app.advance(Duration::from_secs(3600));
    let done = app.tick_until_idle().await;
    assert_eq!((done.accomplished, done.failed), (6, 2));
    assert_eq!(counted().await, expected(6, 2, 0));

    for n in 2..6 {
        app.create_on("acct-a", &format!("d-acct-a-{n}"))
            .await
            .expect("CreateSnapshot");
    }
    // One failed, one accomplished and one progressing snapshot fewer.
    delete(first[0].clone()).await;
    delete(first[7].clone()).await;
    let progressing = app
        .create_on("acct-a", "d-acct-a-6")
        .await
        .expect("CreateSnapshot");
    delete(progressing.snapshot_id).await;
    let now = counted().await;
    assert_eq!(now, expected(5, 1, 4));
    assert_eq!(now, stored().await, "the rows themselves");
    app.assert_invariants().await;
}

/// The checker the race tests rely on can fail: break each promise by hand and see it reported.
async fn the_invariant_checker_reports_each_broken_promise(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    app.seed(&world("acct-b", 0)).await;
    let token_request = pb::CreateSnapshotRequest {
        disk_id: "d-acct-a-0".into(),
        client_token: "tok".into(),
        ..Default::default()
    };
    let imaged = app
        .create("acct-a", token_request)
        .await
        .unwrap()
        .snapshot_id;
    crate::helpers::finish_copies(&app).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("a valid address")
        .connect_lazy();
    snapshotd::pb::image_service_client::ImageServiceClient::new(channel)
        .create_image(crate::helpers::as_account(
            "acct-a",
            pb::CreateImageRequest {
                snapshot_id: imaged,
                ..Default::default()
            },
        ))
        .await
        .expect("CreateImage");
    app.create_on("acct-a", "d-acct-a-0").await.unwrap();
    app.assert_invariants().await;

    let promises = |violations: Vec<snapshotd::store::Violation>| {
        let mut promises: Vec<_> = violations.iter().map(|v| v.promise).collect();
        promises.sort_unstable();
        promises.dedup();
        promises
    };
    // Two snapshots on a disk are over a quota of one.
    assert_eq!(
        promises(app.check_invariants(1).await),
        ["a disk holds at most its quota of snapshots"]
    );

    let breaches = [
        (
            "UPDATE disks SET snapshot_count = 7 WHERE disk_id = 'd-acct-a-0'",
            "a disk's snapshot count is the number of its snapshots",
        ),
        (
            "UPDATE account_snapshot_counts SET snapshot_count = snapshot_count + 1",
            "an account's snapshot count is the number of its snapshots",
        ),
        (
            "UPDATE disks SET progressing_snapshot_id = NULL, progressing_since = NULL",
            "a disk's copy in progress is its progressing snapshot",
        ),
        (
            "UPDATE client_tokens SET account_id = 'acct-b'",
            "a client token names a snapshot of its own account",
        ),
        (
            "UPDATE snapshots SET usage = 'none' WHERE usage = 'image'",
            "a snapshot's usage is image exactly while an image uses it",
        ),
        (
            "UPDATE images SET account_id = 'acct-b'",
            "an image's snapshot exists and belongs to the image's account",
        ),
        (
            "UPDATE snapshots SET account_id = 'acct-b' WHERE status = 'accomplished'",
            "a snapshot belongs to its disk's account",
        ),
    ];
    for (sql, promise) in breaches {
        app.execute(sql).await;
        let found = promises(app.check_invariants(64).await);
        assert!(found.contains(&promise), "{promise} after {sql}: {found:?}");
    }
}
