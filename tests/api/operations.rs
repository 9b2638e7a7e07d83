//! Operating the real binary: a draining shutdown, the shutdown grace, a second signal, the
//! Prometheus metrics, the per-call log line, and the configuration reference
//! (`docs/configuration.md`) checked against `snapshotd --help`.
//!
//! A CreateSnapshot is kept in flight on purpose by holding what it must wait for from the
//! test's own connection ([`Hold`]): the disk's row lock (`FOR UPDATE`) on PostgreSQL, the
//! database's write lock (`BEGIN IMMEDIATE`) on SQLite.
//!
//! Each test that runs the server on a database runs on both backends, with two kinds of
//! exception: the tests whose server runs with no `DATABASE_URL` (the embedded default, and
//! the demo disks), and the drain tests that hold a call in flight across several steps of
//! their own. SQLite's busy timeout (5 s, fixed) answers a call that waited that long for the
//! write lock, so such a hold only fits on PostgreSQL, whose lock waits have no timeout.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value as PromValue};
use snapshotd::pb;
use snapshotd::pb::inventory_service_client::InventoryServiceClient;
use snapshotd::pb::snapshot_service_client::SnapshotServiceClient;
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

use crate::helpers::{
    ADMIN_TOKEN, Backend, DiskLock, TestDatabase, World, as_account, as_admin, put_account_request,
    put_disk_request, put_instance_request, world,
};
use crate::on_both_backends;
use crate::process::{BINARY, Server, listening_ports, port_of};

on_both_backends!(
    a_call_still_running_when_the_grace_ends_is_cut_off_and_rolled_back,
    a_second_sigterm_exits_at_once_with_status_1,
    metrics_count_calls_by_code_and_reason_and_read_the_store_at_scrape_time,
    json_logs_have_one_line_per_call_with_the_request_ids_the_client_saw,
    an_internal_error_is_logged_at_error_with_its_cause_chain,
    text_logs_are_plain_text_lines,
);

const ACCOUNT: &str = "acct-ops";
const DISK: &str = "d-acct-ops-0";
const MISSING_DISK: &str = "d-acct-ops-missing";

// ---------------------------------------------------------------------------------------------
// Fixtures.

fn the_world() -> World {
    world(ACCOUNT, 1)
}

/// A server on `db` with the admin token set, metrics on a port of its own choosing, the test's
/// account seeded, and `env` on top; returns it with a channel to it and the directory it runs
/// in.
async fn start_seeded(
    db: &TestDatabase,
    env: &[(&str, &str)],
) -> (Server, Channel, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut all = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("SNAPSHOTD_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SNAPSHOTD_DEMO", "false"),
        // The tests hold a disk lock for a few seconds: no request timeout may end that first.
        ("SNAPSHOTD_REQUEST_TIMEOUT", "60s"),
        // Port 0: the server binds, then says where (see `Server::ready`).
        ("SNAPSHOTD_METRICS_LISTEN", "127.0.0.1:0"),
    ];
    all.extend_from_slice(env);
    let mut server = Server::start(dir.path(), &[], &all);
    let channel = server.ready().await;
    seed(&channel, &the_world()).await;
    (server, channel, dir)
}

async fn seed(channel: &Channel, world: &World) {
    let mut inventory = InventoryServiceClient::new(channel.clone());
    inventory
        .put_account(as_admin(put_account_request(world.account.clone())))
        .await
        .expect("PutAccount");
    inventory
        .put_instance(as_admin(put_instance_request(world.instance.clone())))
        .await
        .expect("PutInstance");
    for disk in &world.disks {
        inventory
            .put_disk(as_admin(put_disk_request(disk.clone())))
            .await
            .expect("PutDisk");
    }
}

fn create_request(
    disk_id: &str,
    client_request_id: Option<&str>,
) -> tonic::Request<pb::CreateSnapshotRequest> {
    let mut request = as_account(
        ACCOUNT,
        pb::CreateSnapshotRequest {
            disk_id: disk_id.to_owned(),
            ..Default::default()
        },
    );
    if let Some(id) = client_request_id {
        request
            .metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
    }
    request
}

async fn create(
    channel: &Channel,
    disk_id: &str,
) -> Result<pb::CreateSnapshotResponse, tonic::Status> {
    SnapshotServiceClient::new(channel.clone())
        .create_snapshot(create_request(disk_id, None))
        .await
        .map(tonic::Response::into_inner)
}

/// A CreateSnapshot of [`DISK`] running in the background.
fn create_in_background(
    channel: &Channel,
) -> JoinHandle<Result<pb::CreateSnapshotResponse, tonic::Status>> {
    let channel = channel.clone();
    tokio::spawn(async move { create(&channel, DISK).await })
}

/// The one number `sql` answers on the test database (PostgreSQL or SQLite, by its URL).
async fn count(url: &str, sql: &str) -> i64 {
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .expect("the file");
        sqlx::query_scalar(sql).fetch_one(&mut conn).await
    } else {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("the database");
        sqlx::query_scalar(sql).fetch_one(&mut conn).await
    }
    .expect("counting")
}

/// Waits until no session of a server that has exited is left on the database: from then on
/// nothing of it can commit, so a count shows its last word. A PostgreSQL session of a dead
/// client may still be waiting on a lock, and ends once it gets it; a SQLite writer dies with
/// its process (its journal rolls back at the next open).
async fn the_exited_server_left_the_database(url: &str) {
    if url.starts_with("sqlite:") {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sessions = count(
            url,
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
        if sessions == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sessions} sessions of the exited server still open 15 s on"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `sql` on the test database (to arrange what the API cannot).
async fn execute(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .expect("the file");
        sqlx::raw_sql(sql).execute(&mut conn).await.map(drop)
    } else {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("the database");
        sqlx::raw_sql(sql).execute(&mut conn).await.map(drop)
    }
    .unwrap_or_else(|err| panic!("{sql}: {err}"));
}

/// What keeps a CreateSnapshot of [`DISK`] waiting inside the server, held from the test's own
/// connection until [`Hold::release`].
enum Hold {
    /// The disk's row lock: the server's locking read waits for as long as it is held.
    Postgres(DiskLock),
    /// The write lock: the server's `BEGIN IMMEDIATE` waits, for its busy timeout (5 s) at most.
    Sqlite(sqlx::SqliteConnection),
}

impl Hold {
    async fn take(backend: Backend, db: &TestDatabase) -> Self {
        match backend {
            Backend::Postgres => Self::Postgres(DiskLock::hold(&db.url, DISK).await),
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&db.url)
                    .await
                    .expect("the database file");
                sqlx::raw_sql("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .expect("taking the write lock");
                Self::Sqlite(conn)
            }
        }
    }

    async fn release(self) {
        match self {
            Self::Postgres(lock) => lock.release().await,
            Self::Sqlite(mut conn) => {
                sqlx::raw_sql("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .expect("ROLLBACK");
                conn.close().await.expect("closing the connection");
            }
        }
    }
}

/// Takes the [`Hold`], sends a CreateSnapshot of [`DISK`], and returns once the server is inside
/// the call.
async fn a_create_held_in_flight(
    backend: Backend,
    db: &TestDatabase,
    server: &Server,
    channel: &Channel,
) -> (
    Hold,
    JoinHandle<Result<pb::CreateSnapshotResponse, tonic::Status>>,
) {
    let hold = Hold::take(backend, db).await;
    let in_flight = create_in_background(channel);
    match &hold {
        Hold::Postgres(lock) => lock.wait_for_a_waiter().await,
        // SQLite shows no other session's wait: the server's own count of calls in flight does.
        Hold::Sqlite(_) => wait_for_calls_in_flight(server.metrics_port(), 1).await,
    }
    (hold, in_flight)
}

/// Snapshots of [`DISK`], plus 1 if the disk's own bookkeeping says it has any (a count or a
/// copy in progress): 0 when nothing of a create is left.
async fn snapshots_of_the_disk(url: &str) -> i64 {
    count(
        url,
        &format!(
            "SELECT (SELECT COUNT(*) FROM snapshots WHERE source_disk_id = '{DISK}') \
             + (SELECT COUNT(*) FROM disks WHERE disk_id = '{DISK}' \
                AND (snapshot_count <> 0 OR progressing_snapshot_id IS NOT NULL))"
        ),
    )
    .await
}

/// Waits until `/metrics` counts `calls` API calls in flight.
async fn wait_for_calls_in_flight(metrics_port: u16, calls: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, body) = http_get(metrics_port, "/metrics").await;
        let in_flight = value(&parse_samples(&body), &body, "snapshotd_rpc_in_flight", &[]);
        if in_flight == calls as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{in_flight} calls in flight 5 s on, not {calls}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `snapshotd check` on `url`: (success, stdout).
fn check_subcommand(url: &str) -> (bool, String) {
    let output = Command::new(BINARY)
        .arg("check")
        .env_clear()
        .env("DATABASE_URL", url)
        .output()
        .expect("running snapshotd check");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), report)
}

// ---------------------------------------------------------------------------------------------
// Shutdown.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_call_in_flight_refuses_new_ones_and_exits_0() {
    let db = TestDatabase::create(Backend::Postgres).await;
    // A grace far longer than the test: the exit must come from the drain, not the cut-off.
    let (mut server, channel, _dir) =
        start_seeded(&db, &[("SNAPSHOTD_SHUTDOWN_GRACE", "60s")]).await;

    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .expect("Health/Watch")
        .into_inner();
    let first = timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a first Watch message within 5 s")
        .expect("the Watch stream")
        .expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let (hold, in_flight) =
        a_create_held_in_flight(Backend::Postgres, &db, &server, &channel).await;

    server.signal("TERM");

    // 1. The watcher hears NOT_SERVING.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = timeout(left, watch.message())
            .await
            .expect("NOT_SERVING on the Watch stream within 5 s of SIGTERM")
            .expect("the Watch stream stays open while the server drains")
            .expect("the Watch stream ended without reporting NOT_SERVING");
        if message.status() == ServingStatus::NotServing {
            break;
        }
        assert_eq!(message.status(), ServingStatus::Serving, "{message:?}");
    }

    // 2. New connections are refused: the listening socket is closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(&server.addr).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => break,
            outcome => assert!(
                Instant::now() < deadline,
                "a new TCP connection is still accepted 5 s after SIGTERM: {outcome:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // …and a call on a new channel fails UNAVAILABLE.
    let fresh = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    let refused = timeout(
        Duration::from_secs(5),
        HealthClient::new(fresh).check(HealthCheckRequest::default()),
    )
    .await
    .expect("a new call is refused within 5 s, not left hanging")
    .expect_err("a new call after SIGTERM must not be served");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // 3. The call in flight is still waiting, and holds the process up.
    assert!(!in_flight.is_finished(), "the in-flight create was cut off");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited with a call in flight: {}",
        server.stderr()
    );

    // The watcher goes away, as a client does once the server says GOAWAY and NOT_SERVING.
    drop(watch);
    hold.release().await;
    let created = timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight create answers within 10 s of the lock's release")
        .expect("the create task")
        .expect("the in-flight create completes OK");
    assert!(
        created.snapshot_id.starts_with("s-"),
        "a snapshot id: {created:?}"
    );

    // 4. With nothing left in flight, the process exits 0 long before the 60 s grace.
    let status = server
        .exited_within(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 10 s after its last call answered: {}",
                server.stderr()
            )
        });
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    let log = server.stderr();
    assert!(
        !log.contains("grace period is over"),
        "nothing was in flight at the end of the grace: {log}"
    );

    // 5. The acknowledged snapshot is stored.
    let stored = count(
        &db.url,
        &format!(
            "SELECT COUNT(*) FROM snapshots WHERE snapshot_id = '{}'",
            created.snapshot_id
        ),
    )
    .await;
    assert_eq!(
        stored, 1,
        "the snapshot acknowledged while draining is stored"
    );
    let (sound, report) = check_subcommand(&db.url);
    assert!(sound, "{report}");
}

/// On SQLite the call waits in SQLite's busy handler, on a thread of its own: the exit must not
/// wait for that either.
async fn a_call_still_running_when_the_grace_ends_is_cut_off_and_rolled_back(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let (mut server, channel, _dir) =
        start_seeded(&db, &[("SNAPSHOTD_SHUTDOWN_GRACE", "1s")]).await;
    let (hold, in_flight) = a_create_held_in_flight(backend, &db, &server, &channel).await;

    let signalled = Instant::now();
    server.signal("TERM");
    // The process must exit by itself while the lock is still held.
    let exited = server.exited_within(Duration::from_secs(6)).await;
    let took = signalled.elapsed();
    let Some(status) = exited else {
        panic!(
            "with SNAPSHOTD_SHUTDOWN_GRACE=1s the server is still running {took:?} after SIGTERM \
             while a call waits on a lock; log: {}",
            server.stderr()
        );
    };
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(
        took >= Duration::from_millis(900),
        "the call got its 1 s grace before the exit ({took:?})"
    );
    let log = server.stderr();
    assert!(
        log.contains("grace period is over"),
        "the log says calls were cut off: {log}"
    );

    let answer = timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the cut-off call ends within 5 s of the exit")
        .expect("the create task");
    // Answered, not dropped: UNAVAILABLE, which a client may retry on another replica.
    let status = answer.expect_err("a call cut off by the shutdown must not succeed");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let info = tonic_types::StatusExt::get_error_details(&status)
        .error_info()
        .cloned()
        .expect("an ErrorInfo");
    assert_eq!(info.reason, "ServiceUnavailable");
    assert_eq!(
        info.metadata.get("cause").map(String::as_str),
        Some("shutting_down")
    );

    hold.release().await;
    the_exited_server_left_the_database(&db.url).await;
    assert_eq!(
        snapshots_of_the_disk(&db.url).await,
        0,
        "the cut-off create's transaction rolled back"
    );
    let (sound, report) = check_subcommand(&db.url);
    assert!(sound, "snapshotd check after the cut-off: {report}");
    assert!(report.contains("every promise holds"), "{report}");
}

async fn a_second_sigterm_exits_at_once_with_status_1(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let (mut server, channel, _dir) =
        start_seeded(&db, &[("SNAPSHOTD_SHUTDOWN_GRACE", "60s")]).await;
    let (hold, in_flight) = a_create_held_in_flight(backend, &db, &server, &channel).await;

    server.signal("TERM");
    server
        .wait_for_log("shutting down", Duration::from_secs(5))
        .await;
    // The first signal only drains: the call in flight keeps the process up. A window, not a
    // wait for a condition: an exit, the thing that must not happen, would come within it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the first SIGTERM must drain, not exit, with a call in flight: {}",
        server.stderr()
    );

    // Else an open connection, not the call, kept the process up.
    assert!(
        !in_flight.is_finished(),
        "the call was answered before the second signal; nothing held it"
    );
    let second = Instant::now();
    server.signal("TERM");
    let status = server
        .exited_within(Duration::from_secs(2))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 2 s after the second SIGTERM: {}",
                server.stderr()
            )
        });
    let took = second.elapsed();
    assert_eq!(
        status.code(),
        Some(1),
        "a second signal exits with status 1 ({took:?}): {}",
        server.stderr()
    );
    assert!(
        server.stderr().contains("second signal"),
        "{}",
        server.stderr()
    );

    let answer = timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the abandoned call ends within 5 s")
        .expect("the create task");
    assert!(answer.is_err(), "an abandoned call: {answer:?}");
    hold.release().await;
    the_exited_server_left_the_database(&db.url).await;
    assert_eq!(snapshots_of_the_disk(&db.url).await, 0, "rolled back");
}

/// A client that keeps `Health/Watch` open (as a tonic client does, and as gRPC client-side
/// health checking does on every subchannel) is told NOT_SERVING; its stream must then end, not
/// hold the shutdown until the grace is over. With nothing else in flight, SIGTERM means a
/// prompt exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_health_watch_does_not_hold_the_shutdown_until_the_grace_ends() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &[],
        &[
            ("SNAPSHOTD_DEMO", "false"),
            ("SNAPSHOTD_SHUTDOWN_GRACE", "30s"),
        ],
    );
    let channel = server.ready().await;
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .expect("Health/Watch")
        .into_inner();
    let first = timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a first Watch message within 5 s")
        .expect("the Watch stream")
        .expect("a status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let signalled = Instant::now();
    server.signal("TERM");
    let mut saw_not_serving = false;
    // The stream reports NOT_SERVING, then ends (cleanly or with an error) within 5 s.
    let ended = timeout(Duration::from_secs(5), async {
        loop {
            match watch.message().await {
                Ok(Some(message)) => {
                    saw_not_serving |= message.status() == ServingStatus::NotServing;
                }
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(saw_not_serving, "the watcher was told NOT_SERVING");
    let exited = server.exited_within(Duration::from_secs(5)).await;
    assert!(
        ended.is_ok() && exited.is_some(),
        "{:?} after SIGTERM, with nothing in flight but a health watcher, the Watch stream \
         {} and the server {}: an open Watch holds the shutdown for the whole \
         SNAPSHOTD_SHUTDOWN_GRACE (30 s here); log: {}",
        signalled.elapsed(),
        if ended.is_ok() {
            "ended"
        } else {
            "is still open"
        },
        if exited.is_some() {
            "exited"
        } else {
            "is still running"
        },
        server.stderr()
    );
    assert_eq!(exited.unwrap().code(), Some(0));
    let log = server.stderr();
    assert!(
        !log.contains("grace period is over"),
        "a health watcher is not a call that was cut off: {log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics.

/// `GET path` on the metrics port: (status, headers, body).
async fn http_get(port: u16, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client");
    let response = client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .expect("an HTTP answer within 10 s");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.expect("a UTF-8 body");
    (status, headers, body)
}

/// The samples of `/metrics`, read by `prometheus-parse`. It folds a histogram's `_bucket` lines
/// into one sample named after the family, and splits labels on `,` and `=` without unescaping:
/// enough for this service's label values (method names, gRPC codes, reasons, the version).
fn parse_samples(text: &str) -> Vec<Sample> {
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .expect("the Prometheus text format")
        .samples
}

/// The number a counter, gauge or untyped sample carries.
fn number(sample: &Sample) -> f64 {
    match &sample.value {
        PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
        other => panic!("{} is not a single number: {other:?}", sample.metric),
    }
}

/// The samples named `name` whose labels include every pair of `labels`.
fn samples<'a>(all: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The one sample named `name` with exactly `labels`.
fn value(all: &[Sample], body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let found: Vec<_> = all
        .iter()
        .filter(|s| s.metric == name && *s.labels == wanted)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one sample {name}{wanted:?} in /metrics:\n{body}"
    );
    number(found[0])
}

/// What `/metrics` says of each store: its pool's limit with `SNAPSHOTD_DB_MAX_CONNECTIONS=7`
/// (SQLite's pool takes 4 at most), and the durability settings read back at startup.
fn expected_store_metrics(backend: Backend) -> (f64, &'static [(&'static str, &'static str)]) {
    match backend {
        Backend::Postgres => (
            7.0,
            &[
                ("store", "postgres"),
                ("synchronous_commit", "on"),
                ("fsync", "on"),
                ("full_page_writes", "on"),
            ],
        ),
        Backend::Sqlite => (
            4.0,
            &[
                ("store", "sqlite"),
                ("journal_mode", "wal"),
                ("synchronous", "full"),
            ],
        ),
    }
}

async fn metrics_count_calls_by_code_and_reason_and_read_the_store_at_scrape_time(
    backend: Backend,
) {
    let db = TestDatabase::create(backend).await;
    let (server, channel, _dir) = start_seeded(&db, &[("SNAPSHOTD_DB_MAX_CONNECTIONS", "7")]).await;
    let metrics_port = server.metrics_port();
    let (pool_limit, store_labels) = expected_store_metrics(backend);

    create(&channel, DISK).await.expect("a snapshot");
    let refused = create(&channel, MISSING_DISK).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    assert_eq!(
        refused.get_details_error_info().expect("ErrorInfo").reason,
        "InvalidDiskId.NotFound"
    );

    let (status, headers, body) = http_get(metrics_port, "/metrics").await;
    assert_eq!(status, 200);
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text: {content_type:?}"
    );
    let all = parse_samples(&body);

    // Calls by method, code and reason.
    let requests = "snapshotd_rpc_requests_total";
    assert_eq!(
        value(
            &all,
            &body,
            requests,
            &[("method", "CreateSnapshot"), ("code", "OK"), ("reason", "")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &all,
            &body,
            requests,
            &[
                ("method", "CreateSnapshot"),
                ("code", "NOT_FOUND"),
                ("reason", "InvalidDiskId.NotFound")
            ]
        ),
        1.0
    );
    assert_eq!(
        samples(&all, requests, &[("method", "CreateSnapshot")]).len(),
        2,
        "no other CreateSnapshot answers:\n{body}"
    );
    assert!(
        body.contains(
            "snapshotd_rpc_requests_total{method=\"CreateSnapshot\",code=\"OK\",reason=\"\"} 1\n"
        ),
        "the documented line, verbatim:\n{body}"
    );
    assert_eq!(
        value(
            &all,
            &body,
            requests,
            &[("method", "PutDisk"), ("code", "OK"), ("reason", "")]
        ),
        1.0,
        "the inventory calls are counted too"
    );

    // Latency, by method: every bucket, cumulative, up to both calls.
    let histograms = samples(
        &all,
        "snapshotd_rpc_duration_seconds",
        &[("method", "CreateSnapshot")],
    );
    assert_eq!(histograms.len(), 1, "one CreateSnapshot histogram:\n{body}");
    let PromValue::Histogram(buckets) = &histograms[0].value else {
        panic!("a histogram: {:?}", histograms[0]);
    };
    assert!(
        buckets.len() >= 14,
        "the 1 ms…30 s buckets of CreateSnapshot:\n{body}"
    );
    let inf = buckets
        .iter()
        .find(|b| b.less_than == f64::INFINITY)
        .unwrap_or_else(|| panic!("a +Inf bucket:\n{body}"));
    assert_eq!(inf.count, 2.0);
    assert!(buckets.iter().all(|b| b.count <= 2.0));
    assert_eq!(
        value(
            &all,
            &body,
            "snapshotd_rpc_duration_seconds_count",
            &[("method", "CreateSnapshot")]
        ),
        2.0
    );

    // Stored snapshots, counted at scrape time: the one snapshot, whatever its copy's progress.
    let snapshots = |status| value(&all, &body, "snapshotd_snapshots", &[("status", status)]);
    assert_eq!(
        snapshots("progressing") + snapshots("accomplished"),
        1.0,
        "{body}"
    );
    assert_eq!(snapshots("failed"), 0.0);

    // The pool, the build, and the descriptions.
    assert_eq!(
        value(&all, &body, "snapshotd_db_pool_max_connections", &[]),
        pool_limit
    );
    assert_eq!(
        value(
            &all,
            &body,
            "snapshotd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // The durability settings read back from the store at startup, as labels.
    assert_eq!(
        value(&all, &body, "snapshotd_store_info", store_labels),
        1.0,
        "{body}"
    );
    // Group commit: the created call was written by a committed create transaction; the call
    // on a disk the caller doesn't have was sent to run alone (to find its refusal).
    assert!(
        value(&all, &body, "snapshotd_create_batch_calls_count", &[]) >= 1.0,
        "{body}"
    );
    assert_eq!(
        value(&all, &body, "snapshotd_create_run_alone_total", &[]),
        1.0,
        "{body}"
    );
    // Both calls were answered: nothing waits for a batch.
    assert_eq!(
        value(&all, &body, "snapshotd_create_queued_calls", &[]),
        0.0,
        "{body}"
    );
    assert_eq!(
        value(&all, &body, "snapshotd_watches_open", &[]),
        0.0,
        "{body}"
    );
    for family in [
        "# TYPE snapshotd_watches_open gauge",
        "# TYPE snapshotd_create_queued_calls gauge",
        "# TYPE snapshotd_rpc_requests_total counter",
        "# TYPE snapshotd_rpc_duration_seconds histogram",
        "# TYPE snapshotd_snapshots gauge",
        "# TYPE snapshotd_create_batch_calls histogram",
        "# TYPE snapshotd_create_run_alone_total counter",
    ] {
        assert!(body.contains(family), "{family}:\n{body}");
    }

    // The process listens on the gRPC port and the metrics port, nothing else.
    assert_eq!(
        listening_ports(server.pid()),
        BTreeSet::from([port_of(&server.addr), metrics_port])
    );
    let (status, _, _) = http_get(metrics_port, "/nothing-here").await;
    assert_eq!(status, 404);
    assert!(server.terminate().success());
}

/// The plain-HTTP probes beside the metrics: `/livez` always, `/readyz` until the drain starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probes_report_ready_until_the_drain_and_live_throughout() {
    let db = TestDatabase::create(Backend::Postgres).await;
    let (mut server, channel, _dir) =
        start_seeded(&db, &[("SNAPSHOTD_SHUTDOWN_GRACE", "60s")]).await;
    let metrics_port = server.metrics_port();
    let (status, _, body) = http_get(metrics_port, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "SERVING");

    // Keep a call in flight so the drain lasts, then ask again.
    let (hold, in_flight) =
        a_create_held_in_flight(Backend::Postgres, &db, &server, &channel).await;
    server.signal("TERM");
    server
        .wait_for_log("shutting down", Duration::from_secs(5))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = http_get(metrics_port, "/readyz").await;
        if status == 503 {
            assert_eq!(body.trim(), "NOT_SERVING");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {status} {body} 5 s into the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, body) = http_get(metrics_port, "/livez").await;
    assert_eq!(status, 200, "live while draining: {body}");

    hold.release().await;
    in_flight
        .await
        .expect("the create task")
        .expect("the call in flight completes");
    let status = server
        .exited_within(Duration::from_secs(10))
        .await
        .expect("exits once the call is answered");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_off_serves_no_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &[],
        &[
            ("SNAPSHOTD_METRICS_LISTEN", "off"),
            ("SNAPSHOTD_DEMO", "false"),
        ],
    );
    server.ready().await;
    assert_eq!(
        listening_ports(server.pid()),
        BTreeSet::from([port_of(&server.addr)]),
        "only the gRPC port is open"
    );
    assert!(
        !server.stderr().contains("/metrics"),
        "no metrics listener is announced: {}",
        server.stderr()
    );
    assert!(server.terminate().success());
}

// ---------------------------------------------------------------------------------------------
// Logs.

/// Every line of a JSON log, parsed; fails on any line that is not a JSON object.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("a log line that is not JSON ({err}): {line}"));
            assert!(
                value.is_object(),
                "a log line that is not an object: {line}"
            );
            value
        })
        .collect()
}

fn text_field<'a>(line: &'a serde_json::Value, pointer: &str) -> &'a str {
    line.pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .unwrap_or_else(|| panic!("a string at {pointer} in {line}"))
}

/// The "call finished" lines of the call whose request id is `request_id`.
fn call_lines<'a>(lines: &'a [serde_json::Value], request_id: &str) -> Vec<&'a serde_json::Value> {
    lines
        .iter()
        .filter(|line| {
            line.pointer("/message").and_then(serde_json::Value::as_str) == Some("call finished")
                && line
                    .pointer("/span/request_id")
                    .and_then(serde_json::Value::as_str)
                    == Some(request_id)
        })
        .collect()
}

/// Waits until the log has a "call finished" line for `request_id`.
async fn wait_for_call_line(server: &mut Server, request_id: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = json_lines(&server.stderr());
        if !call_lines(&lines, request_id).is_empty() {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no \"call finished\" line for {request_id} within 5 s: {}",
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn json_logs_have_one_line_per_call_with_the_request_ids_the_client_saw(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let (mut server, channel, _dir) = start_seeded(&db, &[("SNAPSHOTD_LOG_FORMAT", "json")]).await;
    let mut snapshots = SnapshotServiceClient::new(channel.clone());

    // A snapshot, with the client's own request id.
    let response = snapshots
        .create_snapshot(create_request(DISK, Some("corr-123")))
        .await
        .expect("a snapshot");
    let header_id = response
        .metadata()
        .get("x-request-id")
        .expect("x-request-id in the response metadata")
        .to_str()
        .unwrap()
        .to_owned();
    let created = response.into_inner();
    assert_eq!(header_id, created.request_id, "one request id, two places");
    assert_ne!(
        header_id, "corr-123",
        "the client's id never replaces the service's"
    );

    // A refusal, with another client request id.
    let refused = snapshots
        .create_snapshot(create_request(MISSING_DISK, Some("corr-456")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    let refused_id = refused
        .get_details_request_info()
        .expect("RequestInfo")
        .request_id;
    assert_eq!(
        refused
            .metadata()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap()),
        Some(refused_id.as_str())
    );

    wait_for_call_line(&mut server, &created.request_id).await;
    let lines = wait_for_call_line(&mut server, &refused_id).await;
    assert!(
        !server.stderr().contains(ADMIN_TOKEN),
        "the admin token is never logged"
    );

    let ok = call_lines(&lines, &created.request_id);
    assert_eq!(ok.len(), 1, "exactly one line for the call: {ok:#?}");
    let ok = ok[0];
    assert_eq!(text_field(ok, "/level"), "INFO", "{ok}");
    assert_eq!(text_field(ok, "/code"), "OK", "{ok}");
    assert_eq!(text_field(ok, "/reason"), "", "{ok}");
    assert_eq!(text_field(ok, "/cause"), "", "{ok}");
    assert_eq!(text_field(ok, "/span/method"), "CreateSnapshot", "{ok}");
    assert_eq!(text_field(ok, "/client_request_id"), "corr-123", "{ok}");
    assert_eq!(text_field(ok, "/account"), ACCOUNT, "{ok}");
    assert_eq!(text_field(ok, "/disk"), DISK, "{ok}");
    assert_eq!(text_field(ok, "/snapshot"), created.snapshot_id, "{ok}");
    let latency = ok
        .pointer("/latency_ms")
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("a numeric latency_ms: {ok}"));
    assert!(
        latency > 0.0 && latency < 10_000.0,
        "a latency in ms: {latency}"
    );
    assert!(
        ok.pointer("/timestamp")
            .and_then(serde_json::Value::as_str)
            .is_some(),
        "{ok}"
    );
    let correlated = lines
        .iter()
        .filter(|line| {
            line.pointer("/client_request_id")
                .and_then(serde_json::Value::as_str)
                == Some("corr-123")
        })
        .count();
    assert_eq!(correlated, 1, "one line carries the client's id");

    let no = call_lines(&lines, &refused_id);
    assert_eq!(no.len(), 1, "exactly one line for the refusal: {no:#?}");
    let no = no[0];
    assert_eq!(
        text_field(no, "/level"),
        "INFO",
        "a client error is INFO: {no}"
    );
    assert_eq!(text_field(no, "/code"), "NOT_FOUND", "{no}");
    assert_eq!(text_field(no, "/reason"), "InvalidDiskId.NotFound", "{no}");
    assert_eq!(text_field(no, "/span/method"), "CreateSnapshot", "{no}");
    assert_eq!(text_field(no, "/client_request_id"), "corr-456", "{no}");
    assert_eq!(text_field(no, "/account"), ACCOUNT, "{no}");
    assert_eq!(text_field(no, "/disk"), MISSING_DISK, "{no}");
    assert!(
        no.pointer("/latency_ms")
            .and_then(serde_json::Value::as_f64)
            .is_some(),
        "{no}"
    );

    // Only API calls log at INFO: the readiness probes (Health/Check) stay below it.
    let health_lines = lines
        .iter()
        .filter(|line| {
            line.pointer("/span/method")
                .and_then(serde_json::Value::as_str)
                == Some("Check")
        })
        .count();
    assert_eq!(health_lines, 0, "health checks log at DEBUG");

    server.signal("TERM");
    let status = server.exited_within(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // Every line, to the last one of the shutdown, is JSON.
    let log = server.stderr();
    let lines = json_lines(&log);
    assert!(log.contains("snapshotd stopped"), "{log}");
    assert_eq!(
        lines
            .iter()
            .filter(|line| text_field(line, "/message") == "call finished")
            .filter(|line| text_field(line, "/span/method") == "CreateSnapshot")
            .count(),
        2,
        "one line per CreateSnapshot: {log}"
    );
}

/// An internal error is logged at ERROR with its whole cause chain, while the client gets the
/// generic INTERNAL answer with none of it.
async fn an_internal_error_is_logged_at_error_with_its_cause_chain(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let (mut server, channel, _dir) = start_seeded(&db, &[("SNAPSHOTD_LOG_FORMAT", "json")]).await;
    // A hand edit the domain cannot read: the row no longer decodes.
    execute(
        &db.url,
        &format!("UPDATE disks SET status = 'Melted' WHERE disk_id = '{DISK}'"),
    )
    .await;

    let status = SnapshotServiceClient::new(channel.clone())
        .create_snapshot(create_request(DISK, None))
        .await
        .expect_err("a row that does not decode");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        !status.message().contains("Melted") && !status.message().contains("corrupt"),
        "no internals reach the client: {status:?}"
    );
    let request_id = status
        .get_details_request_info()
        .expect("RequestInfo")
        .request_id;

    server.signal("TERM");
    server.exited_within(Duration::from_secs(20)).await;
    let lines = json_lines(&server.stderr());
    let failed = call_lines(&lines, &request_id);
    assert_eq!(failed.len(), 1, "one line for the call: {failed:#?}");
    let line = failed[0];
    assert_eq!(text_field(line, "/level"), "ERROR", "{line}");
    assert_eq!(text_field(line, "/code"), "INTERNAL", "{line}");
    assert_eq!(text_field(line, "/reason"), "InternalError", "{line}");
    let cause = text_field(line, "/cause");
    assert!(
        cause.contains("corrupt row") && cause.contains("Melted"),
        "the cause chain, down to the bad value: {cause}"
    );
}

async fn text_logs_are_plain_text_lines(backend: Backend) {
    let db = TestDatabase::create(backend).await;
    let (mut server, channel, _dir) = start_seeded(&db, &[("SNAPSHOTD_LOG_FORMAT", "text")]).await;
    let created = create(&channel, DISK).await.expect("a snapshot");
    let log = server
        .wait_for_log(&created.request_id, Duration::from_secs(5))
        .await;
    let line = log
        .lines()
        .find(|line| line.contains("call finished") && line.contains(&created.request_id))
        .unwrap_or_else(|| panic!("a text line for the call: {log}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains("CreateSnapshot"), "{line}");
    assert!(line.contains("OK"), "{line}");
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "SNAPSHOTD_LOG_FORMAT=text wrote JSON: {line}"
        );
        assert!(!line.contains('\u{1b}'), "no colours into a file: {line:?}");
    }
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_warn_keeps_warnings_and_drops_the_info_lines() {
    // The embedded demo store and no admin token: a warning at startup, and a disk to snapshot.
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[], &[("RUST_LOG", "warn")]);
    let channel = server.ready().await;
    let created = SnapshotServiceClient::new(channel)
        .create_snapshot(as_account(
            "acct-demo",
            pb::CreateSnapshotRequest {
                disk_id: "d-demo-ok".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("a snapshot of the demo disk")
        .into_inner();
    server
        .wait_for_log("SNAPSHOTD_ADMIN_TOKEN is not set", Duration::from_secs(5))
        .await;
    // Read the log once the process has exited: every line it would ever write, the call's
    // (which must not come) included, is written by then. No sleep "long enough".
    server.signal("TERM");
    let exit = server
        .exited_within(Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("still running 15 s after SIGTERM: {}", server.stderr()));
    let log = server.stderr();
    let lines = json_lines(&log);
    assert!(!lines.is_empty());
    for line in &lines {
        let level = text_field(line, "/level");
        assert!(
            level == "WARN" || level == "ERROR",
            "RUST_LOG=warn let a {level} line through: {line}"
        );
    }
    assert!(!log.contains("call finished"), "{log}");
    assert!(!log.contains(&created.request_id), "{log}");
    assert!(exit.success(), "{exit:?}");
}

// ---------------------------------------------------------------------------------------------
// The configuration reference.

/// An option of `snapshotd --help`.
#[derive(Debug)]
struct HelpOption {
    /// `--flag`, with ` <VALUE>` when the value's name is not the flag's own in capitals.
    flag: String,
    takes_value: bool,
    env: Option<String>,
    default: Option<String>,
    possible_values: Vec<String>,
}

/// The options of `help` (the `Options:` section), except -h and -V.
fn parse_help(help: &str) -> Vec<HelpOption> {
    let section = help
        .split_once("\nOptions:\n")
        .map(|(_, rest)| rest)
        .expect("an Options: section in --help");
    // Each option starts on a line whose first non-blank characters are `-`; the lines after it
    // (more indented) are its help.
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in section.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if trimmed.starts_with('-') && indent <= 6 {
            // `--flag <V>  help on the same line` or `--flag <V>` alone.
            let (head, inline_help) = match trimmed.split_once("  ") {
                Some((head, help)) => (head.trim().to_owned(), help.trim().to_owned()),
                None => (trimmed.trim().to_owned(), String::new()),
            };
            entries.push((head, inline_help));
        } else if let Some((_, help)) = entries.last_mut() {
            help.push(' ');
            help.push_str(trimmed);
        } else {
            break;
        }
    }
    let bracketed = |help: &str, key: &str| -> Option<String> {
        let start = help.find(&format!("[{key}: "))? + key.len() + 3;
        let end = start + help[start..].find(']')?;
        Some(help[start..end].to_owned())
    };
    entries
        .into_iter()
        .filter(|(head, _)| !(head.starts_with("-h,") || head.starts_with("-V,")))
        .map(|(head, help)| {
            let long = head
                .split(", ")
                .find(|part| part.starts_with("--"))
                .unwrap_or_else(|| panic!("a long flag in {head:?}"));
            let (name, value) = match long.split_once(' ') {
                Some((name, value)) => (name, Some(value.trim())),
                None => (long, None),
            };
            let own_value = format!(
                "<{}>",
                name.trim_start_matches("--")
                    .replace('-', "_")
                    .to_uppercase()
            );
            let flag = match value {
                Some(value) if value != own_value => format!("{name} {value}"),
                _ => name.to_owned(),
            };
            HelpOption {
                flag,
                takes_value: value.is_some(),
                // `[env: NAME=]` (or `[env: NAME]` with hidden values).
                env: bracketed(&help, "env")
                    .map(|env| env.split('=').next().unwrap_or_default().to_owned()),
                default: bracketed(&help, "default"),
                possible_values: bracketed(&help, "possible values")
                    .map(|values| values.split(", ").map(str::to_owned).collect())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// The configuration reference, whose table `snapshotd --help` must match.
const CONFIGURATION_DOC: &str = "docs/configuration.md";

/// A row of the configuration table of `docs/configuration.md`.
#[derive(Debug)]
struct ReferenceRow {
    line: usize,
    flag: String,
    env: String,
    default: String,
    meaning: String,
}

/// The rows of the `| flag | environment | default | meaning |` table: the first table under
/// the `# Configuration` title of `docs/configuration.md`, before any other heading.
fn parse_reference(doc: &str) -> Vec<ReferenceRow> {
    let start = doc
        .lines()
        .position(|line| line.trim() == "# Configuration")
        .unwrap_or_else(|| panic!("a `# Configuration` title in {CONFIGURATION_DOC}"));
    let mut rows = Vec::new();
    let mut in_table = false;
    for (n, line) in doc.lines().enumerate().skip(start + 1) {
        if line.starts_with('#') {
            break;
        }
        let trimmed = line.trim();
        if !trimmed.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        let cells: Vec<String> = trimmed
            .trim_matches('|')
            .split(" | ")
            .map(|cell| cell.trim().to_owned())
            .collect();
        if !in_table {
            assert_eq!(
                cells,
                ["flag", "environment", "default", "meaning"],
                "{CONFIGURATION_DOC} line {}: the configuration table's header",
                n + 1
            );
            in_table = true;
            continue;
        }
        if cells
            .iter()
            .all(|cell| cell.chars().all(|c| c == '-' || c == ' '))
        {
            continue;
        }
        assert_eq!(
            cells.len(),
            4,
            "{CONFIGURATION_DOC} line {}: four cells (a `|` inside a cell?): {line}",
            n + 1
        );
        let unquote = |cell: &str| cell.trim_matches('`').to_owned();
        rows.push(ReferenceRow {
            line: n + 1,
            flag: unquote(&cells[0]),
            env: unquote(&cells[1]),
            default: unquote(&cells[2]),
            meaning: cells[3].clone(),
        });
    }
    assert!(
        !rows.is_empty(),
        "the configuration table of {CONFIGURATION_DOC} has rows"
    );
    rows
}

/// `snapshotd --help`, with no environment (an `[env: X=value]` would show the value).
fn help_text() -> String {
    let output = Command::new(BINARY)
        .arg("--help")
        .env_clear()
        .output()
        .expect("snapshotd --help");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn configuration_doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CONFIGURATION_DOC);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every difference, both ways, between the options of `help` and the table of
/// `docs/configuration.md`, one message per row or flag.
fn configuration_differences(help: &str, doc: &str) -> Vec<String> {
    let options = parse_help(help);
    assert!(
        options.len() > 20,
        "parsed the options of --help: {options:#?}"
    );
    let rows = parse_reference(doc);

    let mut problems = Vec::new();
    for option in &options {
        let Some(row) = rows.iter().find(|row| row.flag == option.flag) else {
            let near = rows
                .iter()
                .find(|row| row.flag.split(' ').next() == option.flag.split(' ').next());
            problems.push(match near {
                Some(row) => format!(
                    "--help has `{}` but {CONFIGURATION_DOC} line {} writes it `{}`",
                    option.flag, row.line, row.flag
                ),
                None => format!(
                    "--help has `{}`, the table of {CONFIGURATION_DOC} has no row for it",
                    option.flag
                ),
            });
            continue;
        };
        let env = option.env.as_deref().unwrap_or("–");
        if row.env != env {
            problems.push(format!(
                "{CONFIGURATION_DOC} line {} (`{}`): environment `{}`, --help says `{env}`",
                row.line, row.flag, row.env
            ));
        }
        match &option.default {
            Some(default) if row.default != *default => problems.push(format!(
                "{CONFIGURATION_DOC} line {} (`{}`): default `{}`, --help says `{default}`",
                row.line, row.flag, row.default
            )),
            Some(_) => {}
            // No default: a switch says `–`; an option that takes a value says why, `– (…)`.
            None if option.takes_value => {
                let explained = row
                    .default
                    .strip_prefix("– (")
                    .is_some_and(|rest| rest.ends_with(')') && rest.len() > 1);
                if !explained {
                    problems.push(format!(
                        "{CONFIGURATION_DOC} line {} (`{}`): no default in --help, so the default \
                         must be `– (…)`, not `{}`",
                        row.line, row.flag, row.default
                    ));
                }
            }
            None => {
                if row.default != "–" {
                    problems.push(format!(
                        "{CONFIGURATION_DOC} line {} (`{}`): a switch without a default must say \
                         `–`, not `{}`",
                        row.line, row.flag, row.default
                    ));
                }
            }
        }
        for possible in &option.possible_values {
            if !row.meaning.contains(&format!("`{possible}`")) {
                problems.push(format!(
                    "{CONFIGURATION_DOC} line {} (`{}`): the meaning does not list the possible \
                     value `{possible}`",
                    row.line, row.flag
                ));
            }
        }
    }
    for row in &rows {
        if !options.iter().any(|option| option.flag == row.flag) {
            problems.push(format!(
                "{CONFIGURATION_DOC} line {}: `{}` is not an option of `snapshotd --help`",
                row.line, row.flag
            ));
        }
        if rows.iter().filter(|other| other.flag == row.flag).count() > 1 {
            problems.push(format!(
                "{CONFIGURATION_DOC} line {}: `{}` has two rows",
                row.line, row.flag
            ));
        }
    }
    problems
}

#[test]
fn the_documented_configuration_table_is_snapshotd_help() {
    let problems = configuration_differences(&help_text(), &configuration_doc());
    assert!(
        problems.is_empty(),
        "the table of {CONFIGURATION_DOC} differs from `snapshotd --help`:\n  {}",
        problems.join("\n  ")
    );
}

/// The check above can fail: each kind of drift, made in a copy of `docs/configuration.md`, is
/// named.
#[test]
fn the_configuration_check_names_each_row_that_drifts() {
    let help = help_text();
    let doc = configuration_doc();
    let drifted = doc
        .replace(
            "| `--shutdown-grace` | `SNAPSHOTD_SHUTDOWN_GRACE` | `20s` |",
            "| `--shutdown-grace` | `SNAPSHOTD_SHUTDOWN_GRACE` | `30s` |",
        )
        .replace(
            "| `--tls-key` | `SNAPSHOTD_TLS_KEY` | – (unset) |",
            "| `--tls-key` | `SNAPSHOTD_TLS_PRIVATE_KEY` | – (unset) |",
        )
        .replace(
            "| `--admin-token` | `SNAPSHOTD_ADMIN_TOKEN` | – (unset) |",
            "| `--admin-token` | `SNAPSHOTD_ADMIN_TOKEN` | – |",
        )
        .replace(
            "| `--rate-limit <PER_SECOND[,BURST]>` |",
            "| `--rate-limit` |",
        )
        .replace(
            "| `--listen` | `SNAPSHOTD_LISTEN` | `127.0.0.1:50051` | Address the gRPC server listens on. |\n",
            "| `--listen-address` | `SNAPSHOTD_LISTEN` | `127.0.0.1:50051` | Address the gRPC server listens on. |\n",
        )
        .replace("Possible values: `auto`, `text`, `json`.", "Possible values: `auto`, `json`.");
    assert_ne!(drifted, doc);
    let problems = configuration_differences(&help, &drifted).join("\n");
    for expected in [
        "(`--shutdown-grace`): default `30s`, --help says `20s`",
        "(`--tls-key`): environment `SNAPSHOTD_TLS_PRIVATE_KEY`, --help says `SNAPSHOTD_TLS_KEY`",
        "(`--admin-token`): no default in --help, so the default must be `– (…)`, not `–`",
        "--help has `--rate-limit <PER_SECOND[,BURST]>` but docs/configuration.md line",
        "writes it `--rate-limit`",
        "--help has `--listen`, the table of docs/configuration.md has no row for it",
        "`--listen-address` is not an option of `snapshotd --help`",
        "`--rate-limit` is not an option of `snapshotd --help`",
        "(`--log-format`): the meaning does not list the possible value `text`",
    ] {
        assert!(
            problems.contains(expected),
            "expected {expected:?} among:\n{problems}"
        );
    }
    assert_eq!(problems.lines().count(), 8, "{problems}");
}
