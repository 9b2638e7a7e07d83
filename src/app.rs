//! Startup and shutdown, owned by the library so `main.rs` and the tests build the same server.
//!
//! [`App::build`] connects the store, runs migrations, reads the TLS files and binds the
//! listeners (port 0 in tests); [`App::run_until`] serves until the shutdown future resolves,
//! then flips health to NOT_SERVING for every service, stops accepting, gives in-flight calls
//! `SNAPSHOTD_SHUTDOWN_GRACE` to finish, stops the worker after its step and closes the pool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::backend::{SimulatedBackend, SnapshotBackend};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ListenOrOff, redact_password};
use crate::ecs::{self, EcsEdge};
use crate::grpc::{Gate, ImageApi, InventoryApi, RpcLayer, SimulationApi, SnapshotApi, TagApi};
use crate::pb::image_service_server::ImageServiceServer;
use crate::pb::inventory_service_server::InventoryServiceServer;
use crate::pb::simulation_service_server::SimulationServiceServer;
use crate::pb::snapshot_service_server::SnapshotServiceServer;
use crate::pb::tag_service_server::TagServiceServer;
use crate::service::{Service, ServiceError, Simulation};
use crate::simulation::{SteeredBackend, SteeredClock, Steering};
use crate::store::{self, Store, StoreError};
use crate::telemetry::{self, metric};
use crate::throttle::Throttle;
use crate::worker::Worker;

/// Fully-qualified names of the services whose health is reported.
const SERVICE_NAMES: [&str; 5] = [
    "",
    "ecs.snapshot.v1.SnapshotService",
    "ecs.snapshot.v1.ImageService",
    "ecs.snapshot.v1.TagService",
    "ecs.snapshot.v1.InventoryService",
];

/// The health "service" a liveness probe asks about (readiness asks about `""`).
pub const LIVENESS_SERVICE: &str = "liveness";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    // Messages name the step; the cause follows in the error's source chain (main prints it).
    #[error("database {database}")]
    Database {
        /// The `DATABASE_URL`, password redacted.
        database: String,
        source: StoreError,
    },
    #[error("store")]
    Store(#[from] StoreError),
    #[error("store")]
    Service(#[from] ServiceError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    TlsFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("TLS configuration")]
    Tls(#[source] tonic::transport::Error),
    #[error("TLS configuration of the ECS edge: {0}")]
    EcsTls(String),
    #[error("cannot install the signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server")]
    Transport(#[from] tonic::transport::Error),
}

pub struct App {
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    ecs_listener: Option<TcpListener>,
    ecs_tls: Option<tokio_rustls::TlsAcceptor>,
    tls: Option<ServerTlsConfig>,
    service: Arc<Service>,
    /// SimulationService's use cases, when `--simulation-controls` serves it.
    simulation: Option<Arc<Simulation>>,
}

impl App {
    /// Builds the server with the simulated backend and the system clock, both steered by
    /// SimulationService with `--simulation-controls`.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        if !config.simulation_controls {
            let backend = Arc::new(SimulatedBackend::new(config.copy_rate_mibps));
            return Self::build_with(config, backend, Arc::new(SystemClock)).await;
        }
        let steering = Steering::new(config.copy_rate_mibps);
        let backend = Arc::new(SteeredBackend::new(Arc::clone(&steering)));
        let clock = Arc::new(SteeredClock::new(Arc::clone(&steering)));
        let mut app = Self::build_with(config, backend, clock).await?;
        let simulation = Arc::new(Simulation::new(app.service(), steering));
        // The clock where the controls left it, before anything reads it.
        simulation.refresh().await?;
        app.simulation = Some(simulation);
        Ok(app)
    }

    /// Builds the server with a given snapshot backend and clock.
    pub async fn build_with(
        config: Config,
        backend: Arc<dyn SnapshotBackend>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AppError> {
        let store = open_store(&config).await?;
        let settings: Vec<String> = store
            .settings()
            .iter()
            .map(|setting| format!("{}={}", setting.name, setting.value))
            .collect();
        tracing::info!(
            store = store.kind(),
            database = %redact_password(&config.database_url),
            settings = %settings.join(" "),
            "store ready, migrations applied"
        );
        for warning in store.durability_warnings() {
            tracing::warn!("{warning}");
        }
        let now = clock.now();
        let service = Arc::new(Service::new(store, backend, clock, config.policy()));
        if config.seeds_demo() && service.store().kind() == "sqlite" && service.is_empty().await? {
            crate::demo::seed_demo(&service, now).await?;
            tracing::info!(
                account = crate::demo::DEMO_ACCOUNT,
                "seeded the demo inventory into the new embedded store (disable with --no-demo)"
            );
        }
        let tls = tls_config(&config)?;
        let ecs_tls = ecs_tls(&config)?;
        let listener = bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            ListenOrOff::Off => None,
            ListenOrOff::At(addr) => Some(bind(addr).await?),
        };
        let ecs_listener = match config.ecs_listen {
            ListenOrOff::Off => None,
            ListenOrOff::At(addr) => Some(bind(addr).await?),
        };
        Ok(Self {
            config,
            listener,
            metrics_listener,
            ecs_listener,
            ecs_tls,
            tls,
            service,
            simulation: None,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
        })
    }

    /// Where the ECS-compatible HTTP API is served, when it is.
    pub fn ecs_addr(&self) -> Option<SocketAddr> {
        self.ecs_listener.as_ref().map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
        })
    }

    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(self.service.store())
    }

    /// The use cases, as the edges call them.
    pub fn service(&self) -> Arc<Service> {
        Arc::clone(&self.service)
    }

    /// The lifecycle worker over this app's service (for stepping in tests; [`App::run_until`]
    /// runs its own every `worker_interval`).
    pub fn worker(&self) -> Worker {
        Worker::new(Arc::clone(&self.service))
    }

    /// Serves until `shutdown` resolves, then drains in-flight calls and closes the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let local_addr = self.local_addr();
        let (reporter, health_service) = tonic_health::server::health_reporter();
        // Liveness: SERVING as long as the process answers, whatever the database does, so an
        // orchestrator restarts a stuck process but not one waiting for its database.
        reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let health = Readiness {
            reporter,
            ready: Arc::new(AtomicBool::new(false)),
        };
        health.set(ServingStatus::Serving).await;

        let simulated = self.simulation.is_some();
        let reflection_v1 = reflection(simulated).build_v1()?;
        let reflection_v1alpha = reflection(simulated).build_v1alpha()?;

        if self.config.admin_token.is_none() {
            tracing::warn!(
                "SNAPSHOTD_ADMIN_TOKEN is not set: the InventoryService refuses every call"
            );
        }
        // One throttle for both edges: an account has one budget whichever protocol it uses.
        let throttle = self
            .config
            .rate_limit
            .map(|limit| Arc::new(Throttle::new(limit)));
        let gate = Arc::new(Gate::new(throttle.clone(), self.config.admin_token.clone()));
        let snapshots =
            SnapshotApi::new(Arc::clone(&self.service), self.config.max_watches_per_peer);
        let inventory = InventoryApi::new(Arc::clone(&self.service));
        let images = ImageApi::new(Arc::clone(&self.service));
        let tags = TagApi::new(Arc::clone(&self.service));
        let simulation = self.simulation.as_ref().map(|simulation| {
            tracing::warn!(
                "SimulationService is served (--simulation-controls): the admin can move the \
                 clock and fail copies; never run production like this"
            );
            SimulationServiceServer::new(SimulationApi::new(Arc::clone(simulation)))
                .max_decoding_message_size(self.config.max_message_size as usize)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
        });
        let layer = RpcLayer::new(
            Arc::clone(&gate),
            self.config.max_concurrent_requests,
            self.config.max_concurrent_requests_per_peer,
            self.config.request_timeout,
            self.config.max_message_size as usize,
        );
        // Changes reach the watchers of every replica: PostgreSQL LISTENs on a session of its
        // own, over the direct URL the migrations use when there is one (a transaction pooler
        // does not deliver notifications).
        let listen_url = self
            .config
            .migration_database_url
            .as_deref()
            .unwrap_or(&self.config.database_url);
        let feed = self
            .service
            .store()
            .listen_changes(listen_url)
            .await
            .map_err(|source| AppError::Database {
                database: redact_password(listen_url),
                source,
            })?;
        self.service
            .start_watches(feed, self.config.max_watches_per_account);
        let (stop_worker, worker_stop) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(self.worker().run(self.config.worker_interval, worker_stop));

        // Everything that runs beside the server stops when this turns true.
        let (stop_side_tasks, side_stop) = tokio::sync::watch::channel(false);
        let database_watch = tokio::spawn(watch_database(
            self.service(),
            health.clone(),
            side_stop.clone(),
        ));
        let housekeeping = tokio::spawn(forget_idle_accounts(Arc::clone(&gate), side_stop.clone()));
        let steering_kept = self
            .simulation
            .as_ref()
            .map(|simulation| tokio::spawn(Arc::clone(simulation).keep_in_step(side_stop.clone())));
        let store = self.store();
        let service = self.service();
        let watch_service = self.service();
        let metrics_server = self.metrics_listener.map(|listener| {
            let addr = listener
                .local_addr()
                .expect("a bound listener has an address");
            // The bound address, so a port 0 in the configuration can be read back here.
            tracing::info!(%addr, "metrics at /metrics, probes at /livez and /readyz");
            let handle = telemetry::metrics_handle();
            metric::store_info(store.kind(), store.settings());
            let layer = layer.clone();
            let refresh = move || read_gauges(Arc::clone(&service), layer.clone());
            tokio::spawn(telemetry::serve_admin(
                listener,
                handle,
                refresh,
                Arc::clone(&health.ready),
                // Up until the very end, so scrapes and `/readyz` see the drain; aborted below.
                std::future::pending(),
            ))
        });

        let ecs_server = self.ecs_listener.map(|listener| {
            let addr = listener
                .local_addr()
                .expect("a bound listener has an address");
            // The bound address, as the metrics line gives its own (port 0 read back).
            tracing::info!(
                %addr,
                tls = self.ecs_tls.is_some(),
                "ECS-compatible HTTP API (version {})",
                ecs::API_VERSION
            );
            let edge = Arc::new(EcsEdge::new(
                Arc::clone(&self.service),
                throttle.clone(),
                self.config.request_timeout,
                self.config.max_message_size as usize,
                self.config.max_concurrent_requests,
                self.config.max_concurrent_requests_per_peer,
            ));
            tokio::spawn(ecs::serve(
                listener,
                edge,
                self.ecs_tls.clone(),
                side_stop.clone(),
                self.config.shutdown_grace,
            ))
        });
        tracing::info!(%local_addr, tls = self.tls.is_some(), "snapshotd serving");
        let (signalled, shutdown_started) = tokio::sync::oneshot::channel::<()>();
        let draining = {
            let health = health.clone();
            let stream_layer = layer.clone();
            let watches = Arc::clone(&watch_service);
            async move {
                shutdown.await;
                tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
                // Stop the database watch first, so it cannot report SERVING again.
                let _ = stop_side_tasks.send(true);
                let _ = database_watch.await;
                health.set(ServingStatus::NotServing).await;
                // Open Health/Watch streams would hold their connections, and so the drain,
                // open until the grace ends: they end now, after sending NOT_SERVING.
                stream_layer.end_streams();
                // WatchSnapshots streams too: UNAVAILABLE, to be watched again elsewhere.
                watches.end_watches();
                let _ = signalled.send(());
            }
        };

        // Requests only: the limit protects the server; a client bounds what it accepts.
        let limit = self.config.max_message_size as usize;
        let mut server = Server::builder()
            .http2_keepalive_interval(Some(self.config.keepalive_interval))
            .http2_keepalive_timeout(Some(self.config.keepalive_timeout))
            // No `max_connection_age_grace`: with one, tonic 0.14 drops the connection at
            // age + grace without a GOAWAY; without, it sends GOAWAY at the age and lets the
            // calls in flight (bounded by the request timeout) finish.
            .max_connection_age(self.config.max_connection_age)
            // A bound on one connection's streams (hyper sets none): with the slots of
            // `--max-concurrent-requests` shared out per caller, one connection cannot queue
            // an unbounded number of calls either.
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION);
        if let Some(tls) = self.tls {
            server = server.tls_config(tls).map_err(AppError::Tls)?;
        }
        // Nagle off on every accepted socket. The builder's `tcp_nodelay` covers only a listener
        // tonic binds itself: on ours a response's last segment waited for the client's delayed
        // ACK, about 40 ms a DescribeSnapshots page at one call in flight.
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let cut_off_layer = layer.clone();
        let serving = server
            .layer(layer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                SnapshotServiceServer::new(snapshots)
                    .max_decoding_message_size(limit)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                ImageServiceServer::new(images)
                    .max_decoding_message_size(limit)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                TagServiceServer::new(tags)
                    .max_decoding_message_size(limit)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip),
            )
            .add_service(
                InventoryServiceServer::new(inventory)
                    .max_decoding_message_size(limit)
                    .accept_compressed(CompressionEncoding::Gzip)
                    .send_compressed(CompressionEncoding::Gzip),
            )
            .add_optional_service(simulation)
            .serve_with_incoming_shutdown(incoming, draining);

        // The grace period starts when the shutdown signal arrives; calls still running when it
        // ends are cut off (their transactions roll back).
        let grace = self.config.shutdown_grace;
        let grace_over = async move {
            if shutdown_started.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(serving);
        let mut cut_off = false;
        tokio::select! {
            served = &mut serving => served?,
            () = grace_over => {
                cut_off = true;
                tracing::warn!(
                    ?grace,
                    "the shutdown grace period is over: calls still running are answered \
                     UNAVAILABLE and their work is dropped"
                );
                cut_off_layer.cut_off();
                // The grace is over for the database too: what waits to begin a transaction
                // (a writer queued for SQLite's turn, the worker's next step) is answered
                // unavailable now, as the pool closes. Else each writer queued behind a cut-off
                // call would take its turn and wait SQLite's busy timeout after it.
                let _ = stop_worker.send(true);
                tokio::spawn({
                    let store = Arc::clone(&store);
                    async move { store.close().await }
                });
                if tokio::time::timeout(CUT_OFF_FLUSH, &mut serving).await.is_err() {
                    tracing::warn!("connections still open after the cut-off are dropped");
                }
            }
        }
        let _ = housekeeping.await;
        if let Some(steering_kept) = steering_kept {
            // Its last picks recorded.
            let _ = steering_kept.await;
        }
        if let Some(ecs_server) = ecs_server {
            // It stopped accepting when the shutdown began and drains within the grace.
            let _ = ecs_server.await;
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        // The worker finishes the step it is in; then the pool can close.
        let _ = stop_worker.send(true);
        let closing = async {
            if let Err(err) = worker.await {
                tracing::error!(error = %err, "the worker task failed");
            }
            store.close().await;
        };
        if !cut_off {
            closing.await;
        } else if tokio::time::timeout(CUT_OFF_FLUSH, closing).await.is_err() {
            // A cut-off call's connection (or the worker's) may still wait in SQLite's busy
            // handler, for its busy timeout, on a lock another process holds: it has written
            // nothing, and its transaction ends with the process.
            tracing::warn!("database connections still busy after the cut-off are dropped");
        }
        tracing::info!("snapshotd stopped");
        Ok(())
    }
}

/// Server reflection over our contract, health and the error details; SimulationService's
/// file only when it is served.
fn reflection(simulated: bool) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    if simulated {
        builder.register_encoded_file_descriptor_set(crate::pb::SIMULATION_FILE_DESCRIPTOR_SET)
    } else {
        builder
    }
}

/// Connects to `DATABASE_URL` and applies the migrations (over
/// `SNAPSHOTD_MIGRATION_DATABASE_URL` when set); an error names the database.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, AppError> {
    let opened = async {
        let store = store::connect(&config.database_url, config.pool_options()).await?;
        store
            .migrate(config.migration_database_url.as_deref())
            .await?;
        Ok(store)
    };
    opened.await.map_err(|source| AppError::Database {
        database: redact_password(&config.database_url),
        source,
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AppError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })
}

/// The server's TLS settings from `SNAPSHOTD_TLS_*`: none, TLS, or mTLS with a client CA.
fn tls_config(config: &Config) -> Result<Option<ServerTlsConfig>, AppError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        read_tls_file(cert)?,
        read_tls_file(key)?,
    ));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read_tls_file(ca)?));
    }
    Ok(Some(tls))
}

/// A PEM file of the TLS flags; an error names it.
fn read_tls_file(path: &std::path::PathBuf) -> Result<Vec<u8>, AppError> {
    std::fs::read(path).map_err(|source| AppError::TlsFile {
        path: path.clone(),
        source,
    })
}

/// The ECS edge's TLS, from the same PEM files as the gRPC edge's.
fn ecs_tls(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, AppError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    if config.ecs_listen == ListenOrOff::Off {
        return Ok(None);
    }
    let client_ca = config
        .tls_client_ca
        .as_ref()
        .map(read_tls_file)
        .transpose()?;
    ecs::tls_acceptor(
        &read_tls_file(cert)?,
        &read_tls_file(key)?,
        client_ca.as_deref(),
    )
    .map(Some)
    .map_err(AppError::EcsTls)
}

/// Readiness, told alike to the gRPC health service (every name in [`SERVICE_NAMES`]) and to
/// the plain-HTTP `/readyz` probe beside the metrics.
#[derive(Clone)]
struct Readiness {
    reporter: HealthReporter,
    ready: Arc<AtomicBool>,
}

impl Readiness {
    async fn set(&self, status: ServingStatus) {
        self.ready
            .store(status == ServingStatus::Serving, Ordering::Relaxed);
        for name in SERVICE_NAMES {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// SETTINGS_MAX_CONCURRENT_STREAMS: the smallest value RFC 9113 recommends, as nginx and Envoy
/// at an edge use; a client with more calls waits for a stream or opens another connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// How long, after the grace period, the answers to cut-off calls have to reach their clients.
const CUT_OFF_FLUSH: Duration = Duration::from_secs(1);

/// How often idle accounts' rate-limit buckets are forgotten.
const THROTTLE_HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(60);

/// Keeps the rate limiter's memory bounded by the accounts active in the last minute or so.
async fn forget_idle_accounts(gate: Arc<Gate>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(THROTTLE_HOUSEKEEPING_INTERVAL) => gate.forget_idle_accounts(),
            _ = stop.changed() => return,
        }
    }
}

/// Sets the gauges that are read at scrape time: the pool, calls in flight and queued for group
/// commit, stored snapshots.
async fn read_gauges(service: Arc<Service>, layer: RpcLayer) {
    let store = service.store();
    let pool = store.pool_stats();
    metric::db_pool(pool.connections, pool.idle, pool.max_connections);
    metric::rpc_in_flight(layer.in_flight());
    metric::create_queued(service.create_backlog().queued);
    metric::watches_open(service.open_watches());
    // Bounded, so a scrape answers (with the last counts) while the database is away.
    let counted = async {
        let mut read = store.read().await?;
        let counts = read.count_snapshots_by_status().await?;
        read.commit().await?;
        Ok::<_, store::StoreError>(counts)
    };
    match tokio::time::timeout(Duration::from_secs(2), counted).await {
        Ok(Ok(counts)) => {
            for status in ["progressing", "accomplished", "failed"] {
                let count = counts
                    .iter()
                    .find(|(name, _)| name == status)
                    .map_or(0, |(_, count)| *count);
                metric::snapshots(status, count);
            }
        }
        Ok(Err(err)) => tracing::debug!(error = %err, "counting snapshots for the metrics"),
        Err(_) => tracing::debug!("counting snapshots for the metrics took over 2 s"),
    }
}

/// How often readiness asks the database whether it is there.
const DATABASE_PING_INTERVAL: Duration = Duration::from_millis(500);

/// Reports NOT_SERVING for every service while the database does not answer, takes no writes (a
/// standby in recovery, a primary set read-only: a failover under way) or has a full disk, and
/// SERVING again once it answers and takes writes, whatever server answers at its address then:
/// a balancer sends calls to a replica that can serve them.
async fn watch_database(
    service: Arc<Service>,
    health: Readiness,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DATABASE_PING_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let answers =
            async { service.store().ping().await.is_ok() && service.storage_writable().await };
        let reachable = tokio::time::timeout(DATABASE_PING_INTERVAL * 4, answers)
            .await
            .unwrap_or(false);
        if reachable != serving {
            serving = reachable;
            if serving {
                tracing::info!("the database answers and takes writes again: SERVING");
                health.set(ServingStatus::Serving).await;
            } else {
                tracing::error!(
                    "the database does not answer, takes no writes (read-only, in recovery) or \
                     its disk is full: NOT_SERVING"
                );
                health.set(ServingStatus::NotServing).await;
            }
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C), installed once so that a second signal is never missed.
pub struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
