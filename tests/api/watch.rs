//! WatchSnapshots against the real server, over a real socket with the generated client: the
//! current state first, then each change (attributes, tags, progress without a write, status,
//! deletion); a disk's new snapshots; only the caller's account; the request checked as
//! DescribeSnapshots checks it; the per-account limit; a watcher that does not read; shutdown;
//! a change made on one PostgreSQL replica seen by a watcher on another; the change feed
//! running only while someone watches, and no change lost while the first watcher starts it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use snapshotd::pb;
use snapshotd::pb::snapshot_service_client::SnapshotServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, Options, PATIENCE, TestApp, a_snapshot_each_of_acct_a_and_acct_b, as_account,
    create_request, finish_copies, spawn_app, spawn_app_with, spawn_replica, world,
};
use crate::on_both_backends;
use crate::tag_resources::tags_client;

on_both_backends!(
    a_watch_by_ids_sends_the_current_state_then_each_change,
    a_watch_by_disk_reports_the_disks_snapshots_created_after_it_started,
    another_accounts_snapshots_never_appear,
    a_watch_request_is_checked_as_describe_checks_it,
    past_the_per_account_limit_a_watch_is_refused_with_quota_failure,
    past_the_per_peer_limit_a_watch_is_refused_whatever_account_it_names,
    a_watcher_that_does_not_read_is_ended_resource_exhausted,
    shutdown_ends_open_watches_unavailable,
    a_watch_opened_while_changes_commit_sees_the_last_of_them,
);

type Watch = Streaming<pb::WatchSnapshotsResponse>;

fn watch_request(ids: &[&str], disk_id: &str) -> pb::WatchSnapshotsRequest {
    pb::WatchSnapshotsRequest {
        snapshot_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        disk_id: disk_id.to_owned(),
    }
}

async fn watch_on(
    mut client: SnapshotServiceClient<Channel>,
    account: &str,
    request: pb::WatchSnapshotsRequest,
) -> Result<Watch, Status> {
    client
        .watch_snapshots(as_account(account, request))
        .await
        .map(tonic::Response::into_inner)
}

async fn watch(app: &TestApp, account: &str, ids: &[&str], disk_id: &str) -> Watch {
    watch_on(app.snapshots(), account, watch_request(ids, disk_id))
        .await
        .expect("WatchSnapshots")
}

/// The next message, which must come within [`PATIENCE`].
async fn next(stream: &mut Watch, what: &str) -> pb::WatchSnapshotsResponse {
    match tokio::time::timeout(PATIENCE, stream.message()).await {
        Ok(Ok(Some(message))) => message,
        Ok(other) => panic!("{what}: the watch ended: {other:?}"),
        Err(_) => panic!("{PATIENCE:?} on, still no message: {what}"),
    }
}

/// Reads messages until one is `wanted` (the ones before are progress or states on the way).
async fn next_where(
    stream: &mut Watch,
    what: &str,
    wanted: impl Fn(&pb::WatchSnapshotsResponse) -> bool,
) -> pb::WatchSnapshotsResponse {
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(message))) if wanted(&message) => return message,
            Ok(Ok(Some(message))) => seen.push(message),
            Ok(other) => panic!("{what}: the watch ended: {other:?} after {seen:?}"),
            Err(_) => panic!("{PATIENCE:?} on, still not {what}; seen: {seen:?}"),
        }
    }
}

/// The status the watch ends with, within [`PATIENCE`], and the messages before it.
async fn end_of(stream: &mut Watch) -> (Status, usize) {
    let deadline = Instant::now() + PATIENCE;
    let mut before = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(_))) => before += 1,
            Ok(Ok(None)) => panic!("the watch ended without a status after {before} messages"),
            Ok(Err(status)) => return (status, before),
            Err(_) => panic!("{PATIENCE:?} on, the watch has not ended ({before} messages)"),
        }
    }
}

/// A server with one disk of `acct-a` and a snapshot of it (still copying): the app and the id.
async fn app_with_a_snapshot(backend: Backend) -> (TestApp, String) {
    with_a_snapshot(spawn_app(backend).await).await
}

/// `app` with one disk of `acct-a` and a snapshot of it (still copying): the app and the id.
async fn with_a_snapshot(app: TestApp) -> (TestApp, String) {
    app.seed(&world("acct-a", 1)).await;
    let id = app
        .create_on("acct-a", "d-acct-a-0")
        .await
        .unwrap()
        .snapshot_id;
    (app, id)
}

fn snapshot(message: &pb::WatchSnapshotsResponse) -> &pb::Snapshot {
    message
        .snapshot
        .as_ref()
        .expect("every message names its snapshot")
}

async fn rename(app: &TestApp, account: &str, snapshot_id: &str, name: &str) {
    app.snapshots()
        .modify_snapshot_attribute(as_account(
            account,
            pb::ModifySnapshotAttributeRequest {
                snapshot_id: snapshot_id.to_owned(),
                snapshot_name: Some(name.to_owned()),
                ..Default::default()
            },
        ))
        .await
        .expect("ModifySnapshotAttribute");
}

async fn a_watch_by_ids_sends_the_current_state_then_each_change(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let kept_five_days = pb::CreateSnapshotRequest {
        retention_days: 5,
        ..create_request("d-acct-a-0")
    };
    let id = app
        .create("acct-a", kept_five_days)
        .await
        .unwrap()
        .snapshot_id;

    let mut stream = watch(&app, "acct-a", &[&id], "").await;
    let first = next(&mut stream, "the current state").await;
    assert!(!first.deleted);
    let first = snapshot(&first);
    assert_eq!(first.snapshot_id, id);
    assert_eq!(first.status(), pb::SnapshotStatus::Progressing);
    assert_eq!((first.progress, first.remain_time_seconds), (0, 160));

    rename(&app, "acct-a", &id, "renamed").await;
    let renamed = next(&mut stream, "the new name").await;
    assert_eq!(snapshot(&renamed).snapshot_name, "renamed");

    app.snapshots()
        .modify_snapshot_attribute(as_account(
            "acct-a",
            pb::ModifySnapshotAttributeRequest {
                snapshot_id: id.clone(),
                retention_days: Some(9),
                ..Default::default()
            },
        ))
        .await
        .expect("a retention");
    assert_eq!(
        snapshot(&next(&mut stream, "the retention").await).retention_days,
        9
    );

    tags_client(&app)
        .tag_resources(as_account(
            "acct-a",
            pb::TagResourcesRequest {
                resource_type: "snapshot".into(),
                resource_ids: vec![id.clone()],
                tags: vec![pb::Tag {
                    key: "team".into(),
                    value: "storage".into(),
                }],
            },
        ))
        .await
        .expect("TagResources");
    let tagged = next(&mut stream, "the tag").await;
    assert_eq!(
        snapshot(&tagged).tags,
        vec![pb::Tag {
            key: "team".into(),
            value: "storage".into()
        }]
    );

    // Half the copy time passes: the progress is sent with nothing written anywhere.
    app.advance(Duration::from_secs(80));
    let halfway = next(&mut stream, "the progress").await;
    assert_eq!(
        (
            snapshot(&halfway).progress,
            snapshot(&halfway).remain_time_seconds
        ),
        (50, 80)
    );

    finish_copies(&app).await;
    let done = next_where(&mut stream, "accomplished", |m| {
        snapshot(m).status() == pb::SnapshotStatus::Accomplished
    })
    .await;
    assert_eq!(snapshot(&done).progress, 100);
    assert!(snapshot(&done).available);

    app.snapshots()
        .delete_snapshot(as_account(
            "acct-a",
            pb::DeleteSnapshotRequest {
                snapshot_id: id.clone(),
                force: false,
            },
        ))
        .await
        .expect("DeleteSnapshot");
    let deleted = next(&mut stream, "the deletion").await;
    assert!(deleted.deleted, "{deleted:?}");
    assert_eq!(
        (
            &snapshot(&deleted).snapshot_id[..],
            &snapshot(&deleted).source_disk_id[..]
        ),
        (&id[..], "d-acct-a-0")
    );
}

async fn a_watch_by_disk_reports_the_disks_snapshots_created_after_it_started(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    let before = app
        .create_on("acct-a", "d-acct-a-0")
        .await
        .unwrap()
        .snapshot_id;
    finish_copies(&app).await;

    let mut stream = watch(&app, "acct-a", &[], "d-acct-a-0").await;
    let first = next(&mut stream, "the disk's snapshot").await;
    assert_eq!(snapshot(&first).snapshot_id, before);
    assert_eq!(snapshot(&first).status(), pb::SnapshotStatus::Accomplished);

    // Another disk's snapshot is not this watch's; the next message is the new one of the disk.
    app.create_on("acct-a", "d-acct-a-1").await.unwrap();
    let created = app
        .create_on("acct-a", "d-acct-a-0")
        .await
        .unwrap()
        .snapshot_id;
    let message = next(&mut stream, "the new snapshot").await;
    assert_eq!(snapshot(&message).snapshot_id, created);
    assert_eq!(snapshot(&message).source_disk_id, "d-acct-a-0");
    assert_eq!(snapshot(&message).status(), pb::SnapshotStatus::Progressing);
}

async fn another_accounts_snapshots_never_appear(backend: Backend) {
    let app = spawn_app(backend).await;
    let (of_a, of_b) = a_snapshot_each_of_acct_a_and_acct_b(&app).await;

    // B names A's snapshot beside its own, and watches A's disk: as if nobody had them.
    let mut by_ids = watch(&app, "acct-b", &[&of_a, &of_b], "").await;
    let mut by_disk = watch(&app, "acct-b", &[], "d-acct-a-0").await;
    let first = next(&mut by_ids, "B's own snapshot").await;
    assert_eq!(snapshot(&first).snapshot_id, of_b);

    // A's changes come first; B is told of its own only.
    rename(&app, "acct-a", &of_a, "secret").await;
    finish_copies(&app).await;
    app.create_on("acct-a", "d-acct-a-0").await.unwrap();
    rename(&app, "acct-b", &of_b, "mine").await;
    let message = next_where(&mut by_ids, "B's rename", |m| {
        assert_eq!(snapshot(m).snapshot_id, of_b, "only B's snapshot: {m:?}");
        snapshot(m).snapshot_name == "mine"
    })
    .await;
    assert!(!message.deleted);

    // The hub met A's changes before B's rename, and sent any to a watcher then: a window for
    // one that would have been sent to B's watch of A's disk to arrive.
    let seen_by_disk = tokio::time::timeout(Duration::from_millis(500), by_disk.message()).await;
    assert!(
        seen_by_disk.is_err(),
        "B's watch of A's disk saw {seen_by_disk:?}"
    );
}

async fn a_watch_request_is_checked_as_describe_checks_it(backend: Backend) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 1)).await;
    let many: Vec<String> = (0..101).map(|n| format!("s-{n:020}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let rows: [(&str, &[&str], &str); 5] = [
        ("a malformed id", &["s-short"], ""),
        ("an id of another shape", &["d-acct-a-0"], ""),
        ("101 ids", &many, ""),
        ("a malformed disk", &[], "disk-0"),
        (
            "a malformed disk beside an id",
            &["s-00000000000000000000"],
            "x",
        ),
    ];
    for (what, ids, disk) in rows {
        let watched = watch_on(app.snapshots(), "acct-a", watch_request(ids, disk))
            .await
            .expect_err(what);
        let described = app
            .snapshots()
            .describe_snapshots(as_account(
                "acct-a",
                pb::DescribeSnapshotsRequest {
                    snapshot_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
                    disk_id: disk.to_owned(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err(what);
        assert_eq!(watched.code(), described.code(), "{what}: {watched:?}");
        assert_eq!(watched.message(), described.message(), "{what}");
        assert_ne!(watched.code(), Code::Internal, "{what}");
    }
    let nothing = watch_on(app.snapshots(), "acct-a", watch_request(&[], ""))
        .await
        .expect_err("neither ids nor a disk");
    let metadata = assert_error(
        &nothing,
        Code::InvalidArgument,
        "InvalidParameter",
        "400",
        Detail::BadRequest("snapshot_ids"),
    );
    assert_eq!(metadata["httpStatus"], "400");
}

async fn past_the_per_account_limit_a_watch_is_refused_with_quota_failure(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| config.max_watches_per_account = 2),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    app.seed(&world("acct-b", 1)).await;
    let first = watch(&app, "acct-a", &[], "d-acct-a-0").await;
    let _second = watch(&app, "acct-a", &[], "d-acct-a-0").await;

    let refused = watch_on(app.snapshots(), "acct-a", watch_request(&[], "d-acct-a-0"))
        .await
        .expect_err("a third watch");
    assert_eq!(watch_quota_exceeded(&refused, 2), "account/acct-a");
    // Another account has watches of its own.
    let _other = watch(&app, "acct-b", &[], "d-acct-b-0").await;

    // A watch the client drops gives its place back.
    drop(first);
    opens_again(&app, "acct-a", "d-acct-a-0").await;
}

/// A client that names a new account per watch still holds at most `--max-watches-per-peer`
/// watches (the peer's share is checked before the account's); another address has its own,
/// and a dropped watch gives its place back.
async fn past_the_per_peer_limit_a_watch_is_refused_whatever_account_it_names(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| config.max_watches_per_peer = 2),
            ..Options::default()
        },
    )
    .await;
    for account in ["acct-a", "acct-b", "acct-c"] {
        app.seed(&world(account, 1)).await;
    }
    let first = watch(&app, "acct-a", &[], "d-acct-a-0").await;
    let _second = watch(&app, "acct-b", &[], "d-acct-b-0").await;

    let refused = watch_on(app.snapshots(), "acct-c", watch_request(&[], "d-acct-c-0"))
        .await
        .expect_err("a third watch from the same address, as a third account");
    assert_eq!(watch_quota_exceeded(&refused, 2), "peer/127.0.0.1");

    // Another address has watches of its own.
    let other_peer = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .local_address(Some([127, 0, 0, 2].into()))
        .connect()
        .await
        .expect("the server answers 127.0.0.2");
    let _other = watch_on(
        SnapshotServiceClient::new(other_peer),
        "acct-c",
        watch_request(&[], "d-acct-c-0"),
    )
    .await
    .expect("a watch from 127.0.0.2");

    // A watch the client drops gives its place back.
    drop(first);
    opens_again(&app, "acct-c", "d-acct-c-0").await;
}

/// `refused` is `QuotaExceed.Watch` for a quota of `limit`: the QuotaFailure's subject (whose
/// quota it was).
fn watch_quota_exceeded(refused: &Status, limit: u32) -> String {
    let metadata = assert_error(
        refused,
        Code::ResourceExhausted,
        "QuotaExceed.Watch",
        "403",
        Detail::QuotaFailure,
    );
    assert_eq!(metadata["quota"], limit.to_string());
    tonic_types::StatusExt::get_details_quota_failure(refused)
        .expect("QuotaFailure")
        .violations[0]
        .subject
        .clone()
}

/// A watch of `disk_id` as `account` opens within [`PATIENCE`] (refused RESOURCE_EXHAUSTED until
/// a dropped watch's place is given back).
async fn opens_again(app: &TestApp, account: &str, disk_id: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match watch_on(app.snapshots(), account, watch_request(&[], disk_id)).await {
            Ok(_) => return,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    Instant::now() < deadline,
                    "{PATIENCE:?} after a watch was dropped, its place is still taken"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

async fn a_watcher_that_does_not_read_is_ended_resource_exhausted(backend: Backend) {
    let (app, id) = app_with_a_snapshot(backend).await;
    // A client that takes a kilobyte at a time, and reads nothing until the end.
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut slow = watch_on(
        SnapshotServiceClient::new(channel),
        "acct-a",
        watch_request(&[&id], ""),
    )
    .await
    .expect("WatchSnapshots");
    let mut reader = watch(&app, "acct-a", &[&id], "").await;
    next(&mut reader, "the current state").await;

    // Each rename is sent once the one before was read by the reading watcher, so none of
    // them is merged with the next: the slow watcher's buffer gets every one.
    let renames = 3 * snapshotd::service::WATCH_BUFFER;
    for n in 0..renames {
        let name = format!("name-{n}");
        rename(&app, "acct-a", &id, &name).await;
        next_where(&mut reader, &name, |m| snapshot(m).snapshot_name == name).await;
    }

    let (status, before) = end_of(&mut slow).await;
    let metadata = assert_error(
        &status,
        Code::ResourceExhausted,
        "Watch.TooSlow",
        "403",
        Detail::QuotaFailure,
    );
    assert_eq!(
        metadata["buffer"],
        snapshotd::service::WATCH_BUFFER.to_string()
    );
    assert!(before < renames, "{before} messages before the end");
    // The reading watcher goes on.
    rename(&app, "acct-a", &id, "after").await;
    next_where(&mut reader, "after", |m| {
        snapshot(m).snapshot_name == "after"
    })
    .await;
}

async fn shutdown_ends_open_watches_unavailable(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            // Longer than the test waits: only the drain's end of the watches can answer it.
            configure: Box::new(|config| config.shutdown_grace = Duration::from_secs(120)),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    let mut stream = watch(&app, "acct-a", &[], "d-acct-a-0").await;

    let stopped = tokio::spawn(app.stop());
    let (status, _) = end_of(&mut stream).await;
    let metadata = assert_error(
        &status,
        Code::Unavailable,
        "ServiceUnavailable",
        "503",
        Detail::RetryInfo,
    );
    assert_eq!(metadata["cause"], "shutting_down");
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("the server stops once its watches ended")
        .expect("the server stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_on_one_replica_reaches_a_watcher_on_another_on_postgres() {
    let first = spawn_app(Backend::Postgres).await;
    let second = spawn_replica(&first, Options::default()).await;
    first.seed(&world("acct-a", 1)).await;
    let mut by_disk = watch(&second, "acct-a", &[], "d-acct-a-0").await;

    let id = first
        .create_on("acct-a", "d-acct-a-0")
        .await
        .unwrap()
        .snapshot_id;
    let created = next(&mut by_disk, "the snapshot created on the other replica").await;
    assert_eq!(snapshot(&created).snapshot_id, id);
    let mut by_id = watch(&second, "acct-a", &[&id], "").await;
    next(&mut by_id, "the current state").await;

    rename(&first, "acct-a", &id, "renamed-there").await;
    for stream in [&mut by_disk, &mut by_id] {
        let renamed = next(stream, "the rename on the other replica").await;
        assert_eq!(snapshot(&renamed).snapshot_name, "renamed-there");
    }
    // The copy is finished by the other replica's worker.
    finish_copies(&first).await;
    for stream in [&mut by_disk, &mut by_id] {
        next_where(stream, "accomplished on the other replica", |m| {
            snapshot(m).status() == pb::SnapshotStatus::Accomplished
        })
        .await;
    }
}

/// The listener's session is killed and may not reconnect while a change commits: the
/// notification is lost, and the watch still sees the change once the listener is back (the hub
/// reads everything watched again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_made_while_the_listener_was_cut_off_is_seen_once_it_is_back_on_postgres() {
    use sqlx::Connection;
    let (app, id) = app_with_a_snapshot(Backend::Postgres).await;
    let mut stream = watch(&app, "acct-a", &[&id], "").await;
    next(&mut stream, "the current state").await;

    let mut test = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    // A database cannot refuse connections from a session of its own: the admin's does.
    let admin_url = crate::harness::postgres::postgres_admin_url().await;
    let mut admin = sqlx::PgConnection::connect(admin_url).await.unwrap();
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut test)
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar(LISTENER_PID)
        .bind(snapshotd::store::postgres::LISTENER_APPLICATION_NAME)
        .fetch_one(&mut test)
        .await
        .expect("the server's change listener");
    sqlx::query(&format!(
        "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS false"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&mut test)
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let alive: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&mut test)
            .await
            .unwrap();
        if alive == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the listener's session lives on");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Nobody listens while this commits.
    sqlx::query("UPDATE snapshots SET snapshot_name = 'while-away' WHERE snapshot_id = $1")
        .bind(&id)
        .execute(&mut test)
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS true"
    ))
    .execute(&mut admin)
    .await
    .unwrap();

    let renamed = next(&mut stream, "the change made while the listener was away").await;
    assert_eq!(snapshot(&renamed).snapshot_name, "while-away");
}

/// The pid of the server's session that LISTENs for changes (PostgreSQL).
const LISTENER_PID: &str = "SELECT pid FROM pg_stat_activity
                            WHERE datname = current_database() AND application_name = $1";

/// The server's sessions that LISTEN for changes, and how many are registered for the trigger
/// to notify (PostgreSQL): `(sessions, registered)`.
async fn listeners(app: &TestApp) -> (i64, i64) {
    use sqlx::Connection;
    let mut test = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = $1),
                (SELECT count(*) FROM snapshot_change_listeners)",
    )
    .bind(snapshotd::store::postgres::LISTENER_APPLICATION_NAME)
    .fetch_one(&mut test)
    .await
    .unwrap()
}

/// The server's sessions that LISTEN for changes (PostgreSQL).
async fn listening_sessions(app: &TestApp) -> i64 {
    listeners(app).await.0
}

/// Waits until the server has stopped its change feed (nobody watches): PostgreSQL, until no
/// session of it LISTENs; SQLite shows nothing outside, so two of the hub's ticks.
async fn wait_until_the_feed_stops(app: &TestApp) {
    match app.backend {
        Backend::Postgres => {
            let deadline = Instant::now() + PATIENCE;
            while listening_sessions(app).await > 0 {
                assert!(Instant::now() < deadline, "a session still LISTENs");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Backend::Sqlite => tokio::time::sleep(2 * snapshotd::service::PROGRESS_EVERY).await,
    }
}

/// The first watcher starts the change feed; a change that commits while it starts is never
/// lost. Each round waits until the feed has stopped (nobody watches), then opens a watch while
/// renames commit back to back, and stops the renames at a point that moves through the time a
/// watch takes to open (from its start to twice the last one's time, over the rounds), so that
/// the last rename lands before, during and after the feed starts. The watch must come to the
/// last name committed: a server that read first and started the feed after would leave the
/// watch on an older name whenever the last rename committed in between.
async fn a_watch_opened_while_changes_commit_sees_the_last_of_them(backend: Backend) {
    const ROUNDS: u32 = 8;
    let (app, id) = app_with_a_snapshot(backend).await;
    let mut opening = Duration::from_millis(20);
    for round in 0..ROUNDS {
        wait_until_the_feed_stops(&app).await;
        let stop = Arc::new(AtomicBool::new(false));
        let (first_done, first_renamed) = tokio::sync::oneshot::channel();
        let renamer = tokio::spawn({
            let mut client = app.snapshots();
            let (stop, id) = (Arc::clone(&stop), id.clone());
            async move {
                let mut first_done = Some(first_done);
                let mut last = String::new();
                for rename in 0.. {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let name = format!("round-{round}-{rename}");
                    client
                        .modify_snapshot_attribute(as_account(
                            "acct-a",
                            pb::ModifySnapshotAttributeRequest {
                                snapshot_id: id.clone(),
                                snapshot_name: Some(name.clone()),
                                ..Default::default()
                            },
                        ))
                        .await
                        .expect("ModifySnapshotAttribute");
                    last = name;
                    if let Some(done) = first_done.take() {
                        let _ = done.send(());
                    }
                }
                last
            }
        });
        first_renamed.await.expect("a first rename");
        let stop_after = opening * 2 * round / ROUNDS;
        let stopper = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                tokio::time::sleep(stop_after).await;
                stop.store(true, Ordering::Release);
            }
        });
        let started = Instant::now();
        let mut stream = watch(&app, "acct-a", &[&id], "").await;
        opening = started.elapsed();
        stopper.await.expect("the stopper");
        let last = renamer.await.expect("the renamer");
        next_where(&mut stream, &format!("the last rename, {last}"), |m| {
            snapshot(m).snapshot_name == last
        })
        .await;
    }
}

/// With nobody watching no session LISTENs or is registered, so a commit wakes no listener;
/// the first watch opens and registers one, a second shares it, and it is unregistered and
/// closed once the last watch has gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_listens_only_while_someone_watches_on_postgres() {
    let app = spawn_app(Backend::Postgres).await;
    app.seed(&world("acct-a", 2)).await;
    app.create_on("acct-a", "d-acct-a-0").await.unwrap();
    assert_eq!(listeners(&app).await, (0, 0), "nobody watches yet");

    let first = watch(&app, "acct-a", &[], "d-acct-a-0").await;
    assert_eq!(listeners(&app).await, (1, 1), "one watch");
    let mut second = watch(&app, "acct-a", &[], "d-acct-a-1").await;
    assert_eq!(listeners(&app).await, (1, 1), "two watches, one session");

    drop(first);
    let created = app
        .create_on("acct-a", "d-acct-a-1")
        .await
        .unwrap()
        .snapshot_id;
    let message = next(&mut second, "the second watch goes on").await;
    assert_eq!(snapshot(&message).snapshot_id, created);
    assert_eq!(listening_sessions(&app).await, 1, "one watch left");

    drop(second);
    wait_until_the_feed_stops(&app).await;
    assert_eq!(listeners(&app).await, (0, 0), "the last watch has gone");
}

/// The trigger notifies only while some replica's feed is registered (PostgreSQL serializes
/// notifying commits cluster-wide, listener or not): a session of the test that LISTENs without
/// registering hears nothing of a commit while nobody watches, and hears each one while a
/// watch is open. A row left by a session that is gone is deleted when a feed starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trigger_notifies_only_while_a_feed_is_registered_on_postgres() {
    let app = spawn_app(Backend::Postgres).await;
    app.seed(&world("acct-a", 3)).await;
    let mut eavesdropper = sqlx::postgres::PgListener::connect(&app.db.url)
        .await
        .unwrap();
    eavesdropper.listen("snapshot_changes").await.unwrap();

    app.create_on("acct-a", "d-acct-a-0").await.unwrap();
    // A notification committed before the one below would arrive first.
    let marker = "SELECT pg_notify('snapshot_changes', 'marker')";
    let mut test = {
        use sqlx::Connection;
        sqlx::PgConnection::connect(&app.db.url).await.unwrap()
    };
    sqlx::query(marker).execute(&mut test).await.unwrap();
    let first = tokio::time::timeout(PATIENCE, eavesdropper.recv())
        .await
        .expect("the marker notification")
        .unwrap();
    assert_eq!(
        first.payload(),
        "marker",
        "a commit notified with nobody watching"
    );

    // A replica that died left its row (a pid no session has): the next start deletes it.
    sqlx::query("INSERT INTO snapshot_change_listeners (pid) VALUES (-1)")
        .execute(&mut test)
        .await
        .unwrap();
    let _watching = watch(&app, "acct-a", &[], "d-acct-a-1").await;
    assert_eq!(listeners(&app).await, (1, 1), "the stale row is gone");
    let created = app
        .create_on("acct-a", "d-acct-a-1")
        .await
        .unwrap()
        .snapshot_id;
    // (The first snapshot's copy may finish and notify first.)
    let expected = format!("{created} d-acct-a-1 acct-a");
    tokio::time::timeout(PATIENCE, async {
        while eavesdropper.recv().await.unwrap().payload() != expected {}
    })
    .await
    .expect("the create notified while someone watches");
}

/// The start's race, made certain: a transaction writes a snapshot row while no feed is
/// registered (so its trigger does not notify) and commits only after a watch has begun to
/// open. The watch must still come to the committed name: its start waits for that writer
/// (`LOCK TABLE snapshots IN SHARE MODE`) before it reads. A start that read at once would
/// show the old name, and no notification would ever bring the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_missed_the_registration_is_seen_by_the_first_watch_on_postgres() {
    use sqlx::Connection;
    let (app, id) = app_with_a_snapshot(Backend::Postgres).await;
    let mut writer = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let mut held = writer.begin().await.unwrap();
    sqlx::query("UPDATE snapshots SET snapshot_name = 'held' WHERE snapshot_id = $1")
        .bind(&id)
        .execute(&mut *held)
        .await
        .unwrap();

    let watcher = tokio::spawn({
        let (client, id) = (app.snapshots(), id.clone());
        async move {
            let mut stream = watch_on(client, "acct-a", watch_request(&[&id], ""))
                .await
                .expect("WatchSnapshots");
            next_where(
                &mut stream,
                "the name committed while the watch opened",
                |m| snapshot(m).snapshot_name == "held",
            )
            .await;
        }
    });
    // Commit once the start waits for the writer's lock, or (a start that does not wait) once
    // the watch has read.
    let mut test = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                            WHERE relation = 'snapshots'::regclass AND NOT granted)",
        )
        .fetch_one(&mut test)
        .await
        .unwrap();
        if waiting || watcher.is_finished() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // (A start that does not wait: give its read time to happen before the commit.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.commit().await.unwrap();
    watcher
        .await
        .expect("the watch comes to the committed name");
}

/// SQLite's triggers log a change only while the feed runs: with nobody watching a create leaves
/// no log row; a watch switches the log on (its row in `snapshot_change_listeners`) and sees a
/// create; once the last watch has gone the log is off and empty again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_change_log_is_written_only_while_someone_watches_on_sqlite() {
    let app = spawn_app(Backend::Sqlite).await;
    app.seed(&world("acct-a", 2)).await;
    app.create_on("acct-a", "d-acct-a-0").await.unwrap();
    assert_eq!(
        change_log(&app).await,
        (0, 0),
        "nobody watches: nothing logged"
    );

    let mut watching = watch(&app, "acct-a", &[], "d-acct-a-1").await;
    assert_eq!(change_log(&app).await.0, 1, "a watch switched the log on");
    let created = app
        .create_on("acct-a", "d-acct-a-1")
        .await
        .unwrap()
        .snapshot_id;
    let message = next(&mut watching, "the create").await;
    assert_eq!(snapshot(&message).snapshot_id, created);

    drop(watching);
    wait_until_the_feed_stops(&app).await;
    let deadline = Instant::now() + PATIENCE;
    while change_log(&app).await != (0, 0) {
        assert!(
            Instant::now() < deadline,
            "the log is still on or not empty"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rename(&app, "acct-a", &created, "unwatched").await;
    assert_eq!(
        change_log(&app).await,
        (0, 0),
        "the last watch has gone: nothing logged"
    );
}

/// SQLite's change log: `(rows of snapshot_change_listeners, rows of snapshot_changes)`.
async fn change_log(app: &TestApp) -> (i64, i64) {
    (
        app.count_rows("snapshot_change_listeners").await,
        app.count_rows("snapshot_changes").await,
    )
}

/// The change feed's path to the database going away (connections taken and never answered,
/// as a host that is gone) under a watch while calls still reach it: the feed loses its
/// session and tries to get it back; the watcher leaves, and a new watch fails fast as
/// UNAVAILABLE (a stop is not held by the reconnecting, nor a start by the stop, and the
/// feed's session waits no longer than a call does); once the path is back a watch works again
/// and sees changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_while_the_database_is_gone_fails_fast_and_the_next_one_works_on_postgres() {
    use crate::fault_proxy::FaultProxy;
    // Stop's unregistering and start's connecting, each bounded by `--db-acquire-timeout` (2 s),
    // and headroom for a loaded machine; sqlx's own acquire timeout (30 s) would not come close.
    const FAILS_FAST: Duration = Duration::from_secs(8);
    let proxy = FaultProxy::start(crate::helpers::postgres_server_addr().await).await;
    let proxy_addr = proxy.addr;
    let app = spawn_app_with(
        Backend::Postgres,
        Options {
            configure: Box::new(move |c| {
                // Only the feed's path (the direct URL, as behind a transaction pooler) goes
                // away: calls still reach the database, so the server stays ready.
                let direct = crate::helpers::replace_host(&c.database_url, proxy_addr);
                c.migration_database_url = Some(direct);
            }),
            ..Options::default()
        },
    )
    .await;
    let (app, id) = with_a_snapshot(app).await;
    let mut first = watch(&app, "acct-a", &[&id], "").await;
    next(&mut first, "the current state").await;

    proxy.black_hole();
    // The feed has lost its session and reconnects; then the last watcher goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(first);
    // The hub sees the watcher gone at its next tick, and stops the feed.
    tokio::time::sleep(2 * snapshotd::service::PROGRESS_EVERY + Duration::from_millis(500)).await;
    let started = Instant::now();
    let status = first_message(&app, &id)
        .await
        .expect_err("no watch without the feed");
    assert!(
        started.elapsed() < FAILS_FAST,
        "a watch fails fast while the feed cannot start: {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    proxy.restore();
    let deadline = Instant::now() + PATIENCE;
    let mut again = loop {
        match first_message(&app, &id).await {
            Ok((stream, _)) => break stream,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "no watch since the path came back"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    rename(&app, "acct-a", &id, "after-the-outage").await;
    let renamed = next_where(&mut again, "the rename", |m| {
        snapshot(m).snapshot_name == "after-the-outage"
    })
    .await;
    assert_eq!(snapshot(&renamed).snapshot_id, id);
}

/// A watch of `acct-a`'s `snapshot_id` and its first message, or the status it ended with
/// (within [`PATIENCE`]).
async fn first_message(
    app: &TestApp,
    snapshot_id: &str,
) -> Result<(Watch, pb::WatchSnapshotsResponse), Status> {
    let watching = async {
        let mut stream =
            watch_on(app.snapshots(), "acct-a", watch_request(&[snapshot_id], "")).await?;
        match stream.message().await? {
            Some(message) => Ok((stream, message)),
            None => Err(Status::unknown("the watch ended without a status")),
        }
    };
    tokio::time::timeout(PATIENCE, watching)
        .await
        .unwrap_or_else(|_| panic!("{PATIENCE:?} on, the watch neither answered nor ended"))
}
