//! The database going away under a running server: requests fail fast as UNAVAILABLE with
//! RetryInfo (not INTERNAL, not a hang), nothing half-written, and the same process recovers.

use std::time::{Duration, Instant};

use sqlx::Connection;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::assertions::{Detail, assert_error};
use crate::fault_proxy::FaultProxy;
use crate::helpers::{
    Backend, Options, TestDatabase, assert_health_becomes, finish_copies, postgres_server_addr,
    spawn_app, spawn_app_with, spawn_on, world,
};

/// How soon a call fails while the database is gone: `--db-acquire-timeout` (2 s by default) and
/// a second of headroom for a loaded machine. A call that waited on a dead connection instead
/// (TCP timeouts, minutes) would not come close.
const FAILS_FAST: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_postgres_connection_is_unavailable_with_retry_info_and_the_server_recovers() {
    let proxy = FaultProxy::start(postgres_server_addr().await).await;
    let proxy_addr = proxy.addr;
    let app = spawn_app_with(
        Backend::Postgres,
        Options {
            configure: Box::new(move |c| {
                c.database_url = crate::helpers::replace_host(&c.database_url, proxy_addr);
            }),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 2)).await;
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the database is there");

    proxy.cut();
    let started = Instant::now();
    let status = app.create_on("acct-a", "d-acct-a-1").await.unwrap_err();
    assert!(
        started.elapsed() < FAILS_FAST,
        "fails fast: {:?}",
        started.elapsed()
    );
    assert_error(
        &status,
        Code::Unavailable,
        "ServiceUnavailable",
        "503",
        Detail::RetryInfo,
    );
    assert!(
        !status.message().to_lowercase().contains("connection"),
        "{}",
        status.message()
    );

    assert_health_becomes(&app, ServingStatus::NotServing).await;

    proxy.restore();
    assert_health_becomes(&app, ServingStatus::Serving).await;
    let mut recovered = None;
    for _ in 0..20 {
        match app.create_on("acct-a", "d-acct-a-1").await {
            Ok(response) => {
                recovered = Some(response);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    recovered.expect("the same process recovers when the database returns");
    assert_eq!(app.count_rows("snapshots").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sqlite_database_locked_by_another_process_is_unavailable_and_nothing_is_written() {
    let app = spawn_app(Backend::Sqlite).await;
    app.seed(&world("acct-a", 1)).await;

    // Another process holds the write lock for longer than the busy timeout.
    let mut other = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let status = app.create_on("acct-a", "d-acct-a-0").await.unwrap_err();
    assert_error(
        &status,
        Code::Unavailable,
        "ServiceUnavailable",
        "503",
        Detail::RetryInfo,
    );
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();

    assert_eq!(app.count_rows("snapshots").await, 0);
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("works once the lock is gone");
    finish_copies(&app).await;
}

/// Holds disk `disk_id`'s row lock in another session, as a slow transaction would; the
/// server's CreateSnapshot on that disk then waits inside its own transaction.
async fn hold_disk_lock(app: &crate::helpers::TestApp, disk_id: &str) -> sqlx::PgConnection {
    let mut holder = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT 1 FROM disks WHERE disk_id = $1 FOR UPDATE")
        .bind(disk_id)
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}

/// The server's session that waits for a lock, once it is waiting.
async fn waiting_server_backend(app: &crate::helpers::TestApp) -> i32 {
    let mut admin = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'snapshotd' \
             AND wait_event_type = 'Lock' AND datname = current_database()",
        )
        .fetch_optional(&mut admin)
        .await
        .unwrap();
        if let Some(pid) = waiting {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the server's transaction never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn with_token(disk_id: &str, token: &str) -> snapshotd::pb::CreateSnapshotRequest {
    snapshotd::pb::CreateSnapshotRequest {
        disk_id: disk_id.into(),
        client_token: token.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_killed_mid_transaction_fails_cleanly_and_a_retry_succeeds_once() {
    let app = std::sync::Arc::new(spawn_app(Backend::Postgres).await);
    app.seed(&world("acct-a", 1)).await;
    let mut holder = hold_disk_lock(&app, "d-acct-a-0").await;

    let request = tokio::spawn({
        let app = app.clone();
        async move {
            app.create("acct-a", with_token("d-acct-a-0", "killed-1"))
                .await
        }
    });
    let pid = waiting_server_backend(&app).await;
    let mut admin = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(terminated);

    let status = request.await.unwrap().unwrap_err();
    assert_error(
        &status,
        Code::Unavailable,
        "ServiceUnavailable",
        "503",
        Detail::RetryInfo,
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    assert_eq!(app.count_rows("snapshots").await, 0, "nothing half-written");
    assert_eq!(
        app.count_rows("client_tokens").await,
        0,
        "the token is not bound"
    );

    let first = app
        .create("acct-a", with_token("d-acct-a-0", "killed-1"))
        .await
        .unwrap();
    let again = app
        .create("acct-a", with_token("d-acct-a-0", "killed-1"))
        .await
        .unwrap();
    assert_eq!(first.snapshot_id, again.snapshot_id);
    assert_eq!(
        app.count_rows("snapshots").await,
        1,
        "the retry succeeded exactly once"
    );
    app.assert_invariants().await;
}

/// The client's deadline passes while the server's create waits on the disk lock: the server
/// drops the call and its session, so nothing is written once the lock is free, and a retry
/// with the same token is a fresh create.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_gives_up_mid_request_leaves_nothing_half_written() {
    // PostgreSQL notices a closed client socket within 20 ms even while the session waits on a
    // lock: the server's session ending is then the sign that the server let go of the call.
    let db = TestDatabase::create(Backend::Postgres).await;
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "ALTER DATABASE \"{name}\" SET client_connection_check_interval = '20ms'"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let app = std::sync::Arc::new(spawn_on(Backend::Postgres, db, Options::default()).await);
    app.seed(&world("acct-a", 1)).await;
    let mut holder = hold_disk_lock(&app, "d-acct-a-0").await;

    let call = tokio::spawn({
        let app = app.clone();
        async move {
            let mut request =
                crate::helpers::as_account("acct-a", with_token("d-acct-a-0", "impatient"));
            request.set_timeout(Duration::from_millis(300));
            app.snapshots().create_snapshot(request).await
        }
    });
    let server_session = waiting_server_backend(&app).await;
    let status = call.await.unwrap().unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );

    // The server dropped the call and closed its session: the session that waited is gone
    // while the lock is still held, so its transaction can never write.
    let deadline = Instant::now() + crate::helpers::PATIENCE;
    loop {
        let still_there: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(server_session)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        if !still_there {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server's session {server_session} still waits on the lock after its client \
             gave up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    assert_eq!(app.count_rows("snapshots").await, 0);
    assert_eq!(app.count_rows("client_tokens").await, 0);
    let created = app
        .create("acct-a", with_token("d-acct-a-0", "impatient"))
        .await
        .unwrap();
    let replay = app
        .create("acct-a", with_token("d-acct-a-0", "impatient"))
        .await
        .unwrap();
    assert_eq!(created.snapshot_id, replay.snapshot_id);
    assert_eq!(app.count_rows("snapshots").await, 1);
    app.assert_invariants().await;
}

/// PostgreSQL itself stopped for a few seconds under load: calls fail fast as UNAVAILABLE with
/// RetryInfo, health reports NOT_SERVING while it is gone, and the same process recovers when it
/// returns, with every acknowledged snapshot still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgresql_stopped_under_load_fails_fast_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = crate::helpers::Cluster::new(dir.path().join("pg")).expect("a private cluster");
    cluster.start().expect("starting the private cluster");
    let db = crate::helpers::TestDatabase::create_on(&cluster.admin_url()).await;
    let app = std::sync::Arc::new(
        crate::helpers::spawn_on(
            Backend::Postgres,
            db,
            crate::helpers::Options {
                real_time: true,
                configure: Box::new(|c| c.copy_rate_mibps = 204_800),
                snapshot_backend: std::sync::Arc::new(snapshotd::backend::SimulatedBackend::new(
                    204_800,
                )),
            },
        )
        .await,
    );
    app.seed(&world("acct-a", 16)).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Set once PostgreSQL runs again: an acknowledgement sent after it shows the process
    // recovered (those before the outage show nothing of the kind).
    let restarted_at = std::sync::Arc::new(std::sync::OnceLock::<Instant>::new());
    let load = crate::helpers::concurrently(16, |n| {
        let (app, stop, restarted_at) = (app.clone(), stop.clone(), restarted_at.clone());
        async move {
            // (id, when the call was sent)
            let mut acknowledged: Vec<(String, Instant)> = Vec::new();
            let mut slowest_failure = Duration::ZERO;
            let mut unavailable = 0;
            let acknowledged_since_restart = |acknowledged: &[(String, Instant)]| {
                restarted_at
                    .get()
                    .is_some_and(|at| acknowledged.iter().any(|(_, sent)| sent > at))
            };
            // Each client goes on past `stop` until it has had a call acknowledged after the
            // restart, for at most 20 s more (the test then fails on it).
            let mut give_up = None;
            loop {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let give_up =
                        *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
                    if acknowledged_since_restart(&acknowledged) || Instant::now() > give_up {
                        break;
                    }
                }
                let started = Instant::now();
                match app.create_on("acct-a", &format!("d-acct-a-{n}")).await {
                    Ok(response) => acknowledged.push((response.snapshot_id, started)),
                    Err(status) => {
                        match status.code() {
                            Code::FailedPrecondition => {}
                            Code::Unavailable => {
                                unavailable += 1;
                                slowest_failure = slowest_failure.max(started.elapsed());
                                assert!(
                                    tonic_types::StatusExt::get_details_retry_info(&status)
                                        .is_some(),
                                    "RetryInfo on {status:?}"
                                );
                            }
                            other => {
                                panic!("only refusals and UNAVAILABLE, got {other:?}: {status:?}")
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (acknowledged, unavailable, slowest_failure)
        }
    });
    let outage = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::spawn_blocking({
            let cluster_dir = dir.path().join("pg");
            move || {
                crate::helpers::Cluster::new(cluster_dir)
                    .unwrap()
                    .stop()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert_health_becomes(&app, ServingStatus::NotServing).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.start().expect("PostgreSQL returns");
        restarted_at.set(Instant::now()).unwrap();
        assert_health_becomes(&app, ServingStatus::Serving).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (results, ()) = tokio::join!(load, outage);

    let unavailable: usize = results.iter().map(|r| r.1).sum();
    let slowest = results.iter().map(|r| r.2).max().unwrap();
    assert!(unavailable > 0, "the outage was seen");
    assert!(slowest < FAILS_FAST, "failed fast: slowest {slowest:?}");
    let restarted_at = *restarted_at.get().unwrap();
    let after: Vec<usize> = results
        .iter()
        .map(|(acknowledged, _, _)| {
            acknowledged
                .iter()
                .filter(|(_, sent)| *sent > restarted_at)
                .count()
        })
        .collect();
    eprintln!(
        "PostgreSQL stopped for 3 s: {unavailable} UNAVAILABLE answers, slowest {slowest:?}; \
         acknowledged after the restart, per client: {after:?}"
    );
    assert!(
        after.iter().all(|&count| count > 0),
        "every client had a create acknowledged after PostgreSQL returned: {after:?}"
    );
    // After it returns: the same process serves, and nothing acknowledged is missing.
    for (acknowledged, _, _) in &results {
        for (id, _) in acknowledged {
            let listed = app
                .snapshots()
                .describe_snapshots(crate::helpers::as_account(
                    "acct-a",
                    snapshotd::pb::DescribeSnapshotsRequest {
                        snapshot_ids: vec![id.clone()],
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(listed.snapshots.len(), 1, "acknowledged {id} is there");
        }
    }
    app.assert_invariants().await;
    let _ = cluster.stop();
}
