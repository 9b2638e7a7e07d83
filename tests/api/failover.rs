//! A PostgreSQL failover under the running server, with real parts: a primary and its
//! synchronous streaming standby (two clusters of the test's own, `initdb` and
//! `pg_basebackup`), and a TCP proxy in front that stands for HAProxy and is re-pointed as
//! HAProxy would be. While the database takes no writes, calls answer UNAVAILABLE with RetryInfo
//! (never INTERNAL) and readiness is NOT_SERVING; once a writable primary answers at the address,
//! the same process serves again, with no connection left on the old server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use snapshotd::config::ListenOrOff;
use sqlx::Connection;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::assertions::{Detail, assert_error};
use crate::ecs_client::EcsClient;
use crate::fault_proxy::FaultProxy;
use crate::helpers::{
    Backend, Cluster, Options, PATIENCE, TestApp, TestDatabase, as_account, assert_health_becomes,
    concurrently, readiness, spawn_on, world,
};

const ACCOUNT: &str = "acct-a";
const DISKS: usize = 32;

/// A cluster of the test's own, stopped when the test ends, even when it fails.
struct Stopped(Cluster);

impl Stopped {
    fn start(made: Result<Cluster, String>) -> Self {
        let cluster = Self(made.expect("a cluster of the test's own"));
        cluster.0.start().expect("starting the cluster");
        cluster
    }
}

impl std::ops::Deref for Stopped {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.stop();
    }
}

/// Runs `sql` (simple protocol, one statement) on `url`.
async fn run_sql(url: &str, sql: &str) {
    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|err| panic!("connecting to {url}: {err}"));
    sqlx::raw_sql(sql)
        .execute(&mut connection)
        .await
        .unwrap_or_else(|err| panic!("{sql} on {url}: {err}"));
}

async fn read_only_for_new_sessions(url: &str) -> bool {
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let value: String = sqlx::query_scalar("SHOW default_transaction_read_only")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    value == "on"
}

/// Sessions of the server (`application_name` snapshotd) the cluster at `url` holds.
async fn server_sessions(url: &str) -> i64 {
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'snapshotd'")
        .fetch_one(&mut connection)
        .await
        .unwrap()
}

fn with_token(disk: usize, token: &str) -> snapshotd::pb::CreateSnapshotRequest {
    snapshotd::pb::CreateSnapshotRequest {
        disk_id: format!("d-{ACCOUNT}-{disk}"),
        client_token: token.to_owned(),
        ..Default::default()
    }
}

/// The status of a call that met the failover: UNAVAILABLE `ServiceUnavailable` with RetryInfo.
#[track_caller]
fn assert_unavailable(status: &tonic::Status) {
    assert_error(
        status,
        Code::Unavailable,
        "ServiceUnavailable",
        "503",
        Detail::RetryInfo,
    );
}

/// The account's snapshot ids, in one page.
async fn describe(app: &TestApp) -> Result<Vec<String>, tonic::Status> {
    let listed = app
        .snapshots()
        .describe_snapshots(as_account(
            ACCOUNT,
            snapshotd::pb::DescribeSnapshotsRequest {
                max_results: 100,
                ..Default::default()
            },
        ))
        .await?
        .into_inner();
    assert!(listed.next_token.is_empty(), "one page holds them all");
    Ok(listed
        .snapshots
        .into_iter()
        .map(|s| s.snapshot_id)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_a_failover_calls_are_unavailable_never_internal_and_the_server_recovers_alone() {
    // Arrange: the primary and its standby; commits wait for the standby (as under Patroni's
    // synchronous_mode), so every acknowledged snapshot is on it. The server reaches the
    // primary through the proxy.
    let dir = tempfile::tempdir().unwrap();
    let (primary, standby) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            let primary = Stopped::start(Cluster::new(dir.join("primary")));
            let standby = Stopped::start(Cluster::standby_of(&primary, dir.join("standby")));
            (primary, Arc::new(standby))
        }
    })
    .await
    .unwrap();
    run_sql(
        &primary.admin_url(),
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
    )
    .await;
    run_sql(&primary.admin_url(), "SELECT pg_reload_conf()").await;
    let db = TestDatabase::create_on(&primary.admin_url()).await;
    let db_name = db.url.rsplit_once('/').unwrap().1.to_owned();
    let proxy = FaultProxy::start(primary.addr()).await;
    let proxy_addr = proxy.addr;
    let app = spawn_on(
        Backend::Postgres,
        db,
        Options {
            configure: Box::new(move |config| {
                config.database_url =
                    crate::helpers::replace_host(&config.database_url, proxy_addr);
                config.ecs_listen = ListenOrOff::At(([127, 0, 0, 1], 0).into());
            }),
            ..Options::default()
        },
    )
    .await;
    snapshotd::demo::seed_demo(&app.service, Utc::now())
        .await
        .expect("the demo's access key, for the ECS edge");
    app.seed(&world(ACCOUNT, DISKS)).await;
    let ecs = EcsClient::new(
        app.ecs_addr.expect("the ECS edge"),
        snapshotd::demo::DEMO_ACCESS_KEY_ID,
        snapshotd::demo::DEMO_ACCESS_KEY_SECRET,
    );
    // (token, snapshot id) of every acknowledged create.
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    let mut disks = 0..DISKS;
    for disk in disks.by_ref().take(4) {
        let token = format!("token-{disk}");
        let created = app.create(ACCOUNT, with_token(disk, &token)).await.unwrap();
        acknowledged.push((token, created.snapshot_id));
    }
    // Under load the pool holds many connections to the primary, as in the field (16-way).
    let app = Arc::new(app);
    concurrently(16, |_| {
        let app = Arc::clone(&app);
        async move {
            for _ in 0..10 {
                describe(&app).await.expect("describing on the primary");
            }
        }
    })
    .await;
    let opened = server_sessions(&primary.url(&db_name)).await;
    assert!(
        opened >= 4,
        "the pool holds {opened} connections, not several"
    );
    assert_eq!(readiness(&app).await, ServingStatus::Serving);

    // The primary turns read-only under the running server, as a primary set read-only or a
    // node still in recovery answers: the server's pooled connections stay open, and their
    // writes meet "cannot execute SELECT FOR UPDATE in a read-only transaction" (25006).
    run_sql(
        &primary.admin_url(),
        "ALTER SYSTEM SET default_transaction_read_only = on",
    )
    .await;
    run_sql(&primary.admin_url(), "SELECT pg_reload_conf()").await;
    // The postmaster signals its sessions once it has read the setting itself, which a new
    // session shows; each session reads it before its next statement.
    let deadline = Instant::now() + PATIENCE;
    while !read_only_for_new_sessions(&primary.admin_url()).await {
        assert!(
            Instant::now() < deadline,
            "the primary never turned read-only"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A create may still be acknowledged, by a session the signal has not reached yet.
    let (pending_disk, pending_token) = loop {
        let disk = disks
            .next()
            .expect("the database turned read-only before the disks ran out");
        let token = format!("token-{disk}");
        match app.create(ACCOUNT, with_token(disk, &token)).await {
            Ok(created) => acknowledged.push((token, created.snapshot_id)),
            Err(status) => {
                assert_unavailable(&status);
                break (disk, token);
            }
        }
    };
    eprintln!(
        "acknowledged before the primary turned read-only: {}",
        acknowledged.len()
    );
    assert_health_becomes(&app, ServingStatus::NotServing).await;
    let retried = app
        .create(ACCOUNT, with_token(pending_disk, &pending_token))
        .await
        .unwrap_err();
    assert_unavailable(&retried);

    // The failover: the address now reaches the standby, still in recovery (as HAProxy may while
    // Patroni promotes). Nothing is served from it, not even reads: it may lag the primary.
    proxy.point_to(standby.addr());
    let retried = app
        .create(ACCOUNT, with_token(pending_disk, &pending_token))
        .await
        .unwrap_err();
    assert_unavailable(&retried);
    assert_unavailable(&describe(&app).await.unwrap_err());
    let answer = ecs
        .call(
            "DescribeSnapshots",
            &[("RegionId", "cn-hangzhou")],
            Utc::now(),
        )
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (503, "ServiceUnavailable"),
        "the ECS edge: {}",
        answer.text
    );
    assert_eq!(readiness(&app).await, ServingStatus::NotServing);

    // The standby is promoted: a writable primary answers at the same address. The same
    // process serves again by itself; the client's retry with its token is acknowledged.
    tokio::task::spawn_blocking({
        let standby = Arc::clone(&standby);
        move || standby.promote()
    })
    .await
    .unwrap()
    .expect("promoting the standby");
    let deadline = Instant::now() + PATIENCE;
    let created = loop {
        match app
            .create(ACCOUNT, with_token(pending_disk, &pending_token))
            .await
        {
            Ok(created) => break created,
            Err(status) => {
                assert_unavailable(&status);
                assert!(
                    Instant::now() < deadline,
                    "no create acknowledged {PATIENCE:?} after the promotion: {status:?}"
                );
                // The delay the answer's RetryInfo asks for.
                tokio::time::sleep(Duration::from_secs(crate::assertions::retry_delay_secs(
                    &status,
                )))
                .await;
            }
        }
    };
    acknowledged.push((pending_token, created.snapshot_id));
    assert_health_becomes(&app, ServingStatus::Serving).await;
    for disk in disks.take(2) {
        let token = format!("token-{disk}");
        let created = app.create(ACCOUNT, with_token(disk, &token)).await.unwrap();
        acknowledged.push((token, created.snapshot_id));
    }

    // Nothing acknowledged is lost, and each token stands for exactly one snapshot.
    let mut stored = describe(&app).await.expect("describing on the new primary");
    stored.sort();
    let mut expected: Vec<String> = acknowledged.iter().map(|(_, id)| id.clone()).collect();
    expected.sort();
    assert_eq!(stored, expected, "the snapshots are the acknowledged ones");
    for (token, id) in &acknowledged {
        let disk: usize = token.trim_start_matches("token-").parse().unwrap();
        let replay = app.create(ACCOUNT, with_token(disk, token)).await.unwrap();
        assert_eq!(&replay.snapshot_id, id, "{token} replays its one snapshot");
    }
    app.assert_invariants().await;

    // No connection is left on the old primary: the server's sessions are all on the new one.
    let old = primary.url(&db_name);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = server_sessions(&old).await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} sessions of the server still on the old primary {PATIENCE:?} after the \
             failover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        server_sessions(&standby.url(&db_name)).await > 0,
        "the server's connections are on the new primary"
    );

    Arc::into_inner(app)
        .expect("the clients are done")
        .stop()
        .await;
    drop(proxy);
}

/// Readiness asks whether the database takes writes, not only whether it answers: with no call
/// to meet it, a primary set read-only under the server's open connections turns readiness
/// NOT_SERVING, and SERVING again once it takes writes, in the same process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_is_not_serving_while_the_primary_takes_no_writes_and_serving_after() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::spawn_blocking({
        let dir = dir.path().join("primary");
        move || Stopped::start(Cluster::new(dir))
    })
    .await
    .unwrap();
    let admin_url = cluster.admin_url();
    let db = TestDatabase::create_on(&admin_url).await;
    let app = spawn_on(Backend::Postgres, db, Options::default()).await;
    app.seed(&world(ACCOUNT, 2)).await;
    app.create(ACCOUNT, with_token(0, "before")).await.unwrap();
    assert_eq!(readiness(&app).await, ServingStatus::Serving);

    run_sql(
        &admin_url,
        "ALTER SYSTEM SET default_transaction_read_only = on",
    )
    .await;
    run_sql(&admin_url, "SELECT pg_reload_conf()").await;
    assert_health_becomes(&app, ServingStatus::NotServing).await;

    run_sql(
        &admin_url,
        "ALTER SYSTEM RESET default_transaction_read_only",
    )
    .await;
    run_sql(&admin_url, "SELECT pg_reload_conf()").await;
    assert_health_becomes(&app, ServingStatus::Serving).await;
    app.create(ACCOUNT, with_token(1, "after"))
        .await
        .expect("writes are taken again");

    app.stop().await;
    drop(cluster);
}
