//! The server behind a real pgbouncer in transaction pooling mode (PostgreSQL only: the pooler
//! speaks PostgreSQL's protocol). The test starts its own pgbouncer (Debian package `pgbouncer`)
//! with fewer server connections than the server has clients, so a client's transactions land
//! on different server connections; `DATABASE_URL` goes through it with
//! `--database-transaction-pooler`, the migrations go straight to PostgreSQL
//! (`--migration-database-url`). Under 32-way load of every call, with the worker running in
//! real time, no call may answer INTERNAL and every acknowledged snapshot must be there.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use snapshotd::backend::SimulatedBackend;
use snapshotd::config::ListenOrOff;
use snapshotd::demo::{DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET};
use snapshotd::pb;
use snapshotd::pb::image_service_client::ImageServiceClient;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tonic::Status;
use tonic::transport::Channel;

use crate::ecs_client::EcsClient;
use crate::helpers::{
    Backend, Options, TestApp, TestDatabase, as_account, concurrently, postgres_server_addr,
    replace_host, spawn_on, world,
};

const CLIENTS: usize = 32;
const ROUNDS: usize = 6;
/// Server connections pgbouncer keeps per database: fewer than the server's pool, which is
/// fewer than the clients.
const SERVER_CONNECTIONS: usize = 8;
const ACCOUNT: &str = "acct-pooled";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_api_and_the_worker_work_through_pgbouncer_in_transaction_mode() {
    let db = TestDatabase::create(Backend::Postgres).await;
    let pgbouncer = Pgbouncer::start(&db.url).await;
    let pooled_url = replace_host(&db.url, pgbouncer.addr);
    let direct_url = db.url.clone();
    let app = spawn_on(
        Backend::Postgres,
        db,
        Options {
            configure: Box::new(move |config| {
                config.database_url = pooled_url;
                config.migration_database_url = Some(direct_url);
                config.database_transaction_pooler = true;
                config.db_max_connections = 16;
                // Copies finish within a tenth of a second; the worker looks often.
                config.copy_rate_mibps = 400_000;
                config.worker_interval = Duration::from_millis(50);
                config.ecs_listen = ListenOrOff::At(SocketAddr::from(([127, 0, 0, 1], 0)));
            }),
            snapshot_backend: Arc::new(SimulatedBackend::new(400_000)),
            real_time: true,
        },
    )
    .await;
    snapshotd::demo::seed_demo(&app.service, Utc::now())
        .await
        .expect("seeding the demo inventory (its access key) through pgbouncer");
    app.seed(&world(ACCOUNT, CLIENTS)).await;

    let app = Arc::new(app);
    let outcomes = concurrently(CLIENTS, |n| {
        let app = Arc::clone(&app);
        async move { client(&app, n).await }
    })
    .await;

    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let (mut kept, mut deleted) = (BTreeSet::new(), BTreeSet::new());
    for outcome in outcomes {
        for failure in outcome.failures {
            *failures.entry(failure).or_default() += 1;
        }
        kept.extend(outcome.kept);
        deleted.extend(outcome.deleted);
    }
    let internal: Vec<_> = failures
        .iter()
        .filter(|(failure, _)| failure.starts_with("Internal") || failure.contains(": HTTP 5"))
        .collect();
    assert!(
        internal.is_empty(),
        "calls answered INTERNAL through pgbouncer: {internal:#?} (all failures: {failures:#?})"
    );
    assert!(
        kept.len() >= CLIENTS * ROUNDS / 4,
        "too few snapshots acknowledged and kept ({}): {failures:#?}",
        kept.len()
    );

    // Every acknowledged snapshot not deleted is there, read straight from PostgreSQL.
    let mut direct = sqlx::PgConnection::connect(&app.db.url)
        .await
        .expect("a direct connection");
    let stored: BTreeSet<String> =
        sqlx::query_scalar("SELECT snapshot_id FROM snapshots WHERE account_id = $1")
            .bind(ACCOUNT)
            .fetch_all(&mut direct)
            .await
            .expect("reading the snapshots")
            .into_iter()
            .collect();
    let missing: Vec<_> = kept.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "acknowledged snapshots missing: {missing:?}"
    );
    let resurrected: Vec<_> = deleted.intersection(&stored).collect();
    assert!(
        resurrected.is_empty(),
        "acknowledged deletes undone: {resurrected:?}"
    );
    app.assert_invariants().await;
    // Migrations ran once, over the direct URL, and left no advisory lock behind in this
    // database (other tests' servers migrate their own databases at the same time).
    let locks: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut direct)
    .await
    .expect("reading pg_locks");
    assert_eq!(locks, 0, "an advisory lock outlived the migrations");
    drop(direct);

    Arc::into_inner(app)
        .expect("the clients are done")
        .stop()
        .await;
    drop(pgbouncer);
}

/// What one client saw: the snapshots it was told it created and did not delete, those it
/// deleted, and each failed call as `Code: message`.
#[derive(Default)]
struct Outcome {
    kept: Vec<String>,
    deleted: Vec<String>,
    failures: Vec<String>,
}

/// Client `n` on disk `n`: each round a CreateSnapshot with a token, DescribeSnapshots (gRPC
/// and signed ECS) until the worker has finished the copy, then an image of it or its delete.
async fn client(app: &TestApp, n: usize) -> Outcome {
    let disk_id = format!("d-{ACCOUNT}-{n}");
    let ecs = EcsClient::new(
        app.ecs_addr.expect("the ECS edge"),
        DEMO_ACCESS_KEY_ID,
        DEMO_ACCESS_KEY_SECRET,
    );
    let images = ImageServiceClient::new(
        Channel::from_shared(format!("http://{}", app.addr))
            .expect("a valid address")
            .connect_lazy(),
    );
    let mut outcome = Outcome::default();
    let note = |outcome: &mut Outcome, call: &str, status: Status| {
        outcome
            .failures
            .push(format!("{:?}: {call}: {}", status.code(), status.message()));
    };
    for round in 0..ROUNDS {
        let request = pb::CreateSnapshotRequest {
            disk_id: disk_id.clone(),
            client_token: format!("token-{n}-{round}"),
            ..Default::default()
        };
        let snapshot_id = match app.create(ACCOUNT, request).await {
            Ok(answer) => answer.snapshot_id,
            Err(status) => {
                note(&mut outcome, "CreateSnapshot", status);
                continue;
            }
        };
        outcome.kept.push(snapshot_id.clone());

        // Signed by the demo account's key: the access-key read and the nonce's write.
        let answer = ecs
            .call(
                "DescribeSnapshots",
                &[("RegionId", "cn-hangzhou")],
                Utc::now(),
            )
            .await;
        if answer.status >= 500 {
            outcome.failures.push(format!(
                "ECS DescribeSnapshots: HTTP {} {}",
                answer.status,
                answer.code()
            ));
        }

        let deadline = Instant::now() + Duration::from_secs(30);
        let accomplished = loop {
            match describe(app, &snapshot_id).await {
                Ok(Some(s)) if s.status() == pb::SnapshotStatus::Accomplished => break true,
                Ok(_) => {}
                Err(status) => note(&mut outcome, "DescribeSnapshots", status),
            }
            if Instant::now() > deadline {
                outcome
                    .failures
                    .push(format!("Timeout: the copy of {snapshot_id} never finished"));
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if !accomplished {
            continue;
        }
        if round % 2 == 0 {
            let request = pb::CreateImageRequest {
                snapshot_id: snapshot_id.clone(),
                client_token: format!("image-{n}-{round}"),
                ..Default::default()
            };
            if let Err(status) = images
                .clone()
                .create_image(as_account(ACCOUNT, request))
                .await
            {
                note(&mut outcome, "CreateImage", status);
            }
        } else {
            let request = pb::DeleteSnapshotRequest {
                snapshot_id: snapshot_id.clone(),
                force: false,
            };
            match app
                .snapshots()
                .delete_snapshot(as_account(ACCOUNT, request))
                .await
            {
                Ok(_) => {
                    outcome.kept.retain(|id| *id != snapshot_id);
                    outcome.deleted.push(snapshot_id);
                }
                Err(status) => note(&mut outcome, "DeleteSnapshot", status),
            }
        }
    }
    outcome
}

async fn describe(app: &TestApp, snapshot_id: &str) -> Result<Option<pb::Snapshot>, Status> {
    let request = pb::DescribeSnapshotsRequest {
        snapshot_ids: vec![snapshot_id.to_owned()],
        ..Default::default()
    };
    Ok(app
        .snapshots()
        .describe_snapshots(as_account(ACCOUNT, request))
        .await?
        .into_inner()
        .snapshots
        .pop())
}

// ---------------------------------------------------------------------------------------------
// pgbouncer.

/// A pgbouncer of the test's own, in transaction pooling mode, in front of the test's
/// PostgreSQL; stopped when dropped.
struct Pgbouncer {
    addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Pgbouncer {
    /// Starts one for the database of `database_url` on a free port (another one if a process
    /// takes the port first), and waits until it answers.
    async fn start(database_url: &str) -> Self {
        let binary = pgbouncer_binary();
        let server = postgres_server_addr().await;
        let database = database_url.rsplit('/').next().expect("a database name");
        let user = database_url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split(['@', ':']).next())
            .expect("a user in the URL");
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let dir = tempfile::tempdir().expect("a temp dir");
            let ini = dir.path().join("pgbouncer.ini");
            std::fs::write(
                dir.path().join("userlist.txt"),
                format!("\"{user}\" \"\"\n"),
            )
            .expect("writing the auth file");
            std::fs::write(
                &ini,
                format!(
                    "[databases]\n\
                     {database} = host={host} port={server_port} dbname={database}\n\
                     [pgbouncer]\n\
                     listen_addr = 127.0.0.1\n\
                     listen_port = {port}\n\
                     unix_socket_dir =\n\
                     auth_type = trust\n\
                     auth_file = {auth}\n\
                     pool_mode = transaction\n\
                     default_pool_size = {SERVER_CONNECTIONS}\n\
                     max_client_conn = 500\n\
                     server_login_retry = 1\n",
                    host = server.ip(),
                    server_port = server.port(),
                    auth = dir.path().join("userlist.txt").display(),
                ),
            )
            .expect("writing pgbouncer.ini");
            // pgbouncer refuses to run as root: it drops to the postgres user, which must read
            // its files.
            let as_root = Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
            let mut command = Command::new(&binary);
            if as_root {
                for path in [dir.path().to_path_buf(), ini.clone()] {
                    let _ = Command::new("chmod").arg("a+rX").arg(&path).status();
                }
                let _ = Command::new("chmod")
                    .arg("a+r")
                    .arg(dir.path().join("userlist.txt"))
                    .status();
                command.args(["-u", "postgres"]);
            }
            let mut child = command
                .arg(&ini)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|err| panic!("starting {}: {err}", binary.display()));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let url = replace_host(database_url, addr);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: most likely the port was taken; try another
                }
                // As the server connects: without the startup parameter pgbouncer refuses.
                let options = url
                    .parse::<PgConnectOptions>()
                    .expect("a URL")
                    .extra_float_digits(None);
                if options.connect().await.is_ok() {
                    return Self {
                        addr,
                        child,
                        _dir: dir,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "pgbouncer at {addr} did not accept a connection in 10 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("pgbouncer exited at start five times (ports taken?)");
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pgbouncer on the PATH or where Debian puts it; a clear failure when it is missing.
fn pgbouncer_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("pgbouncer"));
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "this test needs pgbouncer and none is installed: apt-get install pgbouncer \
         (Debian's package; .ci/run installs it)"
    );
}
