//! Test harness of the api tests: the real server on a random port with a fresh database, real
//! tonic clients, and inventory fixtures.
//!
//! The database half (finding PostgreSQL, `Backend`, `TestDatabase`, the throwaway `Cluster`) is
//! the shared harness in `tests/harness`, used by the property tests too; it is re-exported here
//! so an api test imports from one module.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use snapshotd::backend::{SimulatedBackend, SnapshotBackend};
use snapshotd::clock::{Clock, ManualClock, SystemClock};
use snapshotd::pb;
use snapshotd::pb::inventory_service_client::InventoryServiceClient;
use snapshotd::pb::snapshot_service_client::SnapshotServiceClient;
use snapshotd::worker::{Outcome, Worker};
use snapshotd::{App, Config};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool, Postgres, Transaction};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

pub use crate::harness::postgres::{Cluster, postgres_bin_dir, postgres_server_addr, replace_host};
pub use crate::harness::{Backend, TestDatabase};

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Generates `mod NAME { fn postgres(); fn sqlite(); }` running the async test `NAME(backend)`
/// on each backend.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    super::$name($crate::harness::Backend::Postgres).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name($crate::harness::Backend::Sqlite).await
                }
            }
        )+
    };
}

// ---------------------------------------------------------------------------------------------
// The server.

pub struct TestApp {
    pub addr: SocketAddr,
    /// The ECS-compatible HTTP edge, when the test turned it on (`config.ecs_listen`).
    pub ecs_addr: Option<SocketAddr>,
    pub backend: Backend,
    pub db: TestDatabase,
    /// The server's clock; `None` when the test asked for real time.
    pub clock: Option<Arc<ManualClock>>,
    pub worker: Worker,
    pub store: Arc<dyn snapshotd::store::Store>,
    /// The server's use cases, for what only they can tell (the group-commit backlog) and to
    /// seed the demo inventory.
    pub service: Arc<snapshotd::service::Service>,
    /// The server's snapshot quota, for the invariant checker.
    pub snapshot_quota: u32,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    channel: Channel,
}

/// How a test's server differs from the default one: a manual clock that only moves when the
/// test says so, and no background worker (the test steps it with [`TestApp::tick`]).
pub struct Options {
    pub configure: Box<dyn FnOnce(&mut Config) + Send>,
    pub snapshot_backend: Arc<dyn SnapshotBackend>,
    /// Wall-clock time and the background worker, as in production.
    pub real_time: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            configure: Box::new(|_| {}),
            snapshot_backend: Arc::new(SimulatedBackend::new(256)),
            real_time: false,
        }
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, Options::default()).await
}

pub async fn spawn_app_with(backend: Backend, options: Options) -> TestApp {
    let db = TestDatabase::create(backend).await;
    spawn_on(backend, db, options).await
}

/// Another server on `app`'s database, as a second replica would run (the database stays
/// `app`'s to drop).
pub async fn spawn_replica(app: &TestApp, options: Options) -> TestApp {
    let db = TestDatabase::borrowed(&app.db.url);
    spawn_on(app.backend, db, options).await
}

/// A server on a database the test made itself.
pub async fn spawn_on(backend: Backend, db: TestDatabase, options: Options) -> TestApp {
    let mut config = Config::for_database(db.url.clone());
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.db_max_connections = 16;
    if !options.real_time {
        config.worker_interval = Duration::from_secs(24 * 3600);
    }
    (options.configure)(&mut config);
    let snapshot_quota = config.snapshot_quota;
    // SimulationService steers the production clock and backend: `App::build`'s own.
    let simulated = config.simulation_controls;
    let manual_clock =
        (!options.real_time && !simulated).then(|| Arc::new(ManualClock::new(Utc::now())));
    let clock: Arc<dyn Clock> = match &manual_clock {
        Some(manual) => manual.clone(),
        None => Arc::new(SystemClock),
    };
    let app = if simulated {
        App::build(config).await
    } else {
        App::build_with(config, options.snapshot_backend, clock).await
    }
    .expect("building the app");
    let worker = app.worker();
    let store = app.store();
    let service = app.service();
    let addr = app.local_addr();
    let ecs_addr = app.ecs_addr();
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = stop.await;
        })
        .await
        .expect("the server runs");
    });
    // Lazy: a TLS server (tests/api/tls.rs) is reached with the test's own channel instead.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    TestApp {
        addr,
        ecs_addr,
        service,
        backend,
        db,
        clock: manual_clock,
        worker,
        store,
        snapshot_quota,
        shutdown: Some(shutdown),
        server: Some(server),
        channel,
    }
}

impl TestApp {
    pub fn snapshots(&self) -> SnapshotServiceClient<Channel> {
        SnapshotServiceClient::new(self.channel.clone())
    }

    pub fn inventory(&self) -> InventoryServiceClient<Channel> {
        InventoryServiceClient::new(self.channel.clone())
    }

    /// CreateSnapshot as `account`.
    pub async fn create(
        &self,
        account: &str,
        request: pb::CreateSnapshotRequest,
    ) -> Result<pb::CreateSnapshotResponse, Status> {
        self.snapshots()
            .create_snapshot(as_account(account, request))
            .await
            .map(tonic::Response::into_inner)
    }

    /// CreateSnapshot of `disk_id` with no other parameters.
    pub async fn create_on(
        &self,
        account: &str,
        disk_id: &str,
    ) -> Result<pb::CreateSnapshotResponse, Status> {
        self.create(account, create_request(disk_id)).await
    }

    pub async fn put_account(&self, account: pb::Account) -> pb::Account {
        self.inventory()
            .put_account(as_admin(put_account_request(account)))
            .await
            .expect("PutAccount")
            .into_inner()
            .account
            .expect("PutAccount answers with the account")
    }

    pub async fn put_instance(&self, instance: pb::Instance) -> pb::Instance {
        self.inventory()
            .put_instance(as_admin(put_instance_request(instance)))
            .await
            .expect("PutInstance")
            .into_inner()
            .instance
            .expect("PutInstance answers with the instance")
    }

    pub async fn put_disk(&self, disk: pb::Disk) -> Result<pb::Disk, Status> {
        let answer = self
            .inventory()
            .put_disk(as_admin(put_disk_request(disk)))
            .await?;
        Ok(answer
            .into_inner()
            .disk
            .expect("PutDisk answers with the disk"))
    }

    /// Puts `world`'s account, instance and disks.
    pub async fn seed(&self, world: &World) {
        self.put_account(world.account.clone()).await;
        self.put_instance(world.instance.clone()).await;
        for disk in &world.disks {
            self.put_disk(disk.clone()).await.expect("PutDisk");
        }
    }

    /// Rows in a table, read straight from the database.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.db.url).await.unwrap();
                sqlx::query_scalar(&sql).fetch_one(&mut conn).await.unwrap()
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.db.url).await.unwrap();
                sqlx::query_scalar(&sql).fetch_one(&mut conn).await.unwrap()
            }
        }
    }

    /// Runs `sql` straight on the test database (to arrange states the API cannot make).
    pub async fn execute(&self, sql: &str) {
        match self.backend {
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.db.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.db.url).await.unwrap();
                sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
            }
        }
    }

    /// Fails the test if the stored data breaks any promise (`snapshotd check`).
    pub async fn assert_invariants(&self) {
        let violations = self.check_invariants(self.snapshot_quota).await;
        assert!(violations.is_empty(), "broken promises: {violations:#?}");
    }

    /// What the invariant checker finds with this quota.
    pub async fn check_invariants(&self, snapshot_quota: u32) -> Vec<snapshotd::store::Violation> {
        let mut read = self.store.read().await.expect("a connection");
        let violations = read
            .check_invariants(snapshot_quota)
            .await
            .expect("running the invariant checker");
        read.commit().await.expect("ending the read");
        violations
    }

    /// Moves the server's manual clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock
            .as_ref()
            .expect("a manual clock (the default)")
            .advance(by);
    }

    /// Steps the worker until it finds nothing to do; returns what it did in all.
    pub async fn tick_until_idle(&self) -> snapshotd::service::WorkDone {
        let mut total = snapshotd::service::WorkDone::default();
        while let Outcome::Worked(done) = self.worker.tick().await.expect("a worker step") {
            total.accomplished += done.accomplished;
            total.failed += done.failed;
            total.released += done.released;
        }
        total
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("the server stops cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

pub fn as_account<T>(account: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-account-id", account.parse().unwrap());
    request
}

pub fn as_admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

pub fn create_request(disk_id: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        disk_id: disk_id.to_owned(),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Inventory fixtures.

/// An account with one running instance and disks attached to it, every rule satisfied.
#[derive(Clone)]
pub struct World {
    pub account: pb::Account,
    pub instance: pb::Instance,
    pub disks: Vec<pb::Disk>,
}

pub fn put_account_request(account: pb::Account) -> pb::PutAccountRequest {
    pb::PutAccountRequest {
        account: Some(account),
    }
}

pub fn put_instance_request(instance: pb::Instance) -> pb::PutInstanceRequest {
    pb::PutInstanceRequest {
        instance: Some(instance),
    }
}

pub fn put_disk_request(disk: pb::Disk) -> pb::PutDiskRequest {
    pb::PutDiskRequest { disk: Some(disk) }
}

pub fn hours_ago(hours: i64) -> prost_types::Timestamp {
    proto_time(Utc::now() - TimeDelta::hours(hours))
}

pub fn minutes_ago(minutes: i64) -> prost_types::Timestamp {
    proto_time(Utc::now() - TimeDelta::minutes(minutes))
}

pub fn healthy_account(account_id: &str) -> pb::Account {
    pb::Account {
        account_id: account_id.to_owned(),
        snapshot_service_activated: true,
        insufficient_balance: false,
    }
}

pub fn running_instance(account_id: &str, instance_id: &str) -> pb::Instance {
    pb::Instance {
        instance_id: instance_id.to_owned(),
        account_id: account_id.to_owned(),
        status: pb::InstanceStatus::Running.into(),
        created_at: Some(hours_ago(48)),
        last_started_at: Some(hours_ago(47)),
        lock_reasons: vec![],
    }
}

pub fn attached_disk(account_id: &str, instance_id: &str, disk_id: &str) -> pb::Disk {
    pb::Disk {
        disk_id: disk_id.to_owned(),
        account_id: account_id.to_owned(),
        category: "cloud_essd".to_owned(),
        r#type: pb::DiskType::Data.into(),
        status: pb::DiskStatus::InUse.into(),
        instance_id: instance_id.to_owned(),
        size_gib: 40,
        created_at: Some(hours_ago(24)),
        expires_at: None,
        ever_attached: true,
    }
}

/// `account_id` with instance `i-<account_id>` and `disks` healthy disks `d-<account_id>-<n>`.
pub fn world(account_id: &str, disks: usize) -> World {
    let instance_id = format!("i-{account_id}");
    World {
        account: healthy_account(account_id),
        instance: running_instance(account_id, &instance_id),
        disks: (0..disks)
            .map(|n| attached_disk(account_id, &instance_id, &format!("d-{account_id}-{n}")))
            .collect(),
    }
}

/// The test holding a disk's row lock from its own PostgreSQL session, as a concurrent
/// transaction would.
pub struct DiskLock {
    pool: PgPool,
    tx: Transaction<'static, Postgres>,
}

impl DiskLock {
    pub async fn hold(url: &str, disk_id: &str) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .expect("connecting to the test database");
        let mut tx = pool.begin().await.expect("BEGIN");
        let locked: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM disks WHERE disk_id = $1 FOR UPDATE")
                .bind(disk_id)
                .fetch_optional(&mut *tx)
                .await
                .expect("locking the disk row");
        assert!(locked.is_some(), "the disk {disk_id} is stored");
        Self { pool, tx }
    }

    /// Waits until some other session of the database waits on a lock: the server's create.
    pub async fn wait_for_a_waiter(&self) {
        self.wait_for_waiters(1).await;
    }

    /// Waits until `sessions` other sessions of the database wait on a lock.
    pub async fn wait_for_waiters(&self, sessions: i64) {
        wait_for_lock_waiters(
            &self.pool,
            sessions,
            "the server's CreateSnapshot, on the disk lock",
        )
        .await;
    }

    pub async fn release(self) {
        self.tx.rollback().await.expect("ROLLBACK");
        self.pool.close().await;
    }
}

/// Waits until `sessions` sessions of `pool`'s database other than the caller's wait on a lock
/// (`who`: what should be waiting, for the failure's message).
pub async fn wait_for_lock_waiters(pool: &PgPool, sessions: i64, who: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .expect("reading pg_stat_activity");
        if waiting >= sessions {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} sessions wait on a lock {PATIENCE:?} on, not {sessions}: {who} never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A walk of `next_token` pages longer than this has a token that never ends (a token page
/// that repeats rows): the walk fails instead of going on forever.
pub const MAX_WALK_PAGES: usize = 200;

/// Counts one more page of a `next_token` walk (`what` names it for the failure's message).
pub fn count_walk_page(pages: &mut usize, what: &str) {
    *pages += 1;
    assert!(
        *pages <= MAX_WALK_PAGES,
        "{what}: next_token still not empty after {MAX_WALK_PAGES} pages (a token page repeats rows)"
    );
}

/// How long a wait "until something happens" may take before the test fails: the CI machine
/// is a noisy 2-core VM, and nothing here should take more than a fraction of this.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Polls `state` until it says the test may go on (`Ok`); fails the test with the last state
/// it described (`Err`) after [`PATIENCE`]. For conditions the test cannot await directly (a
/// gauge, another session's wait), instead of a sleep "long enough".
pub async fn wait_until<T>(what: &str, mut state: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match state() {
            Ok(done) => return done,
            Err(now) => assert!(
                Instant::now() < deadline,
                "{PATIENCE:?} on, still not {what}: {now}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The server's readiness now (the overall service, `""`).
pub async fn readiness(app: &TestApp) -> ServingStatus {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("the health service answers")
        .into_inner()
        .status()
}

/// Polls the server's readiness until it reports `expected`, for up to [`PATIENCE`].
pub async fn assert_health_becomes(app: &TestApp, expected: ServingStatus) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = readiness(app).await;
        if status == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "readiness stayed {status:?} for {PATIENCE:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `count` copies of `task` at once and collects their results in order.
pub async fn concurrently<F, Fut, T>(count: usize, task: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..count).map(|n| tokio::spawn(task(n))).collect();
    let mut results = Vec::with_capacity(count);
    for handle in handles {
        results.push(handle.await.expect("task panicked"));
    }
    results
}

/// Runs `sql` on `app`'s database.
pub async fn execute_sql(app: &TestApp, sql: &str) {
    app.execute(sql).await;
}

/// Lets every copy in progress finish: an hour passes on the server's clock and the worker runs.
/// One disk each for `acct-a` and `acct-b`, and a snapshot of each: the two snapshots' ids.
pub async fn a_snapshot_each_of_acct_a_and_acct_b(app: &TestApp) -> (String, String) {
    app.seed(&world("acct-a", 1)).await;
    app.seed(&world("acct-b", 1)).await;
    let of_a = app.create_on("acct-a", "d-acct-a-0").await;
    let of_b = app.create_on("acct-b", "d-acct-b-0").await;
    (
        of_a.expect("acct-a's snapshot").snapshot_id,
        of_b.expect("acct-b's snapshot").snapshot_id,
    )
}

pub async fn finish_copies(app: &TestApp) {
    app.advance(Duration::from_secs(3600));
    app.tick_until_idle().await;
}

/// `at` as a protobuf timestamp (for inventory records dated on the server's clock).
pub fn proto_time(at: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).expect("under a second"),
    }
}
