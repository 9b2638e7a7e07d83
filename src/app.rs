//! Startup and shutdown, owned by the library so `main.rs` and the tests build the same server.
//!
//! [`App::build`] connects the store, runs migrations and binds the listener (port 0 in tests);
//! [`App::run_until`] serves until the shutdown future resolves, then flips health to
//! NOT_SERVING, drains in-flight calls and closes the pool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::backend::{SimulatedBackend, SnapshotBackend};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, redact_password};
use crate::grpc::{ImageApi, InventoryApi, SnapshotApi};
use crate::pb::image_service_server::ImageServiceServer;
use crate::pb::inventory_service_server::InventoryServiceServer;
use crate::pb::snapshot_service_server::SnapshotServiceServer;
use crate::store::{self, Store, StoreError};
use crate::worker::Worker;

/// Fully-qualified names of the services whose health is reported.
const SERVICE_NAMES: [&str; 4] = [
    "",
    "ecs.snapshot.v1.SnapshotService",
    "ecs.snapshot.v1.ImageService",
    "ecs.snapshot.v1.InventoryService",
];

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    // Messages name the step; the cause follows in the error's source chain (main prints it).
    #[error("store")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server")]
    Transport(#[from] tonic::transport::Error),
}

pub struct App {
    config: Config,
    listener: TcpListener,
    store: Arc<dyn Store>,
    backend: Arc<dyn SnapshotBackend>,
    clock: Arc<dyn Clock>,
}

impl App {
    /// Builds the server with the simulated backend and the system clock.
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let backend = Arc::new(SimulatedBackend::new(config.copy_rate_mibps));
        Self::build_with(config, backend, Arc::new(SystemClock)).await
    }

    /// Builds the server with a given snapshot backend and clock.
    pub async fn build_with(
        config: Config,
        backend: Arc<dyn SnapshotBackend>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AppError> {
        let pool = store::PoolOptions {
            max_connections: config.db_max_connections,
            acquire_timeout: config.db_acquire_timeout,
        };
        let store = store::connect_with(&config.database_url, pool).await?;
        store.migrate().await?;
        tracing::info!(
            store = store.kind(),
            database = %redact_password(&config.database_url),
            "store ready, migrations applied"
        );
        if config.seeds_demo() && store.kind() == "sqlite" && store.is_empty().await? {
            crate::demo::seed_demo(store.as_ref(), clock.now()).await?;
            tracing::info!(
                account = crate::demo::DEMO_ACCOUNT,
                "seeded the demo inventory into the new embedded store (disable with --no-demo)"
            );
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: config.listen,
                source,
            })?;
        Ok(Self {
            config,
            listener,
            store,
            backend,
            clock,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// The lifecycle worker over this app's store, backend and clock (for stepping in tests;
    /// [`App::run_until`] runs its own every `worker_interval`).
    pub fn worker(&self) -> Worker {
        Worker::new(
            Arc::clone(&self.store),
            Arc::clone(&self.backend),
            Arc::clone(&self.clock),
        )
    }

    /// Serves until `shutdown` resolves, then drains in-flight calls and closes the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let local_addr = self.local_addr();
        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        if self.config.admin_token.is_none() {
            tracing::warn!(
                "SNAPSHOTD_ADMIN_TOKEN is not set: the InventoryService refuses every call"
            );
        }
        let snapshots = SnapshotApi::new(
            Arc::clone(&self.store),
            Arc::clone(&self.backend),
            Arc::clone(&self.clock),
            self.config.policy(),
        );
        let inventory = InventoryApi::new(Arc::clone(&self.store), self.config.admin_token.clone());
        let images = ImageApi::new(Arc::clone(&self.store), Arc::clone(&self.clock));
        let (stop_worker, worker_stop) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(self.worker().run(self.config.worker_interval, worker_stop));

        let (stop_watch, watch_stop) = tokio::sync::watch::channel(false);
        let database_watch = tokio::spawn(watch_database(
            Arc::clone(&self.store),
            health.clone(),
            watch_stop,
        ));

        tracing::info!(%local_addr, "snapshotd serving");
        let draining = {
            let health = health.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: draining in-flight calls");
                // Stop the database watch first, so it cannot report SERVING again.
                let _ = stop_watch.send(true);
                let _ = database_watch.await;
                set_health(&health, ServingStatus::NotServing).await;
            }
        };
        Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(SnapshotServiceServer::new(snapshots))
            .add_service(ImageServiceServer::new(images))
            .add_service(InventoryServiceServer::new(inventory))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.listener), draining)
            .await?;
        // The worker finishes the step it is in; then the pool can close.
        let _ = stop_worker.send(true);
        if let Err(err) = worker.await {
            tracing::error!(error = %err, "the worker task failed");
        }
        self.store.close().await;
        tracing::info!("snapshotd stopped");
        Ok(())
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    for name in SERVICE_NAMES {
        health.set_service_status(name, status).await;
    }
}

/// How often readiness asks the database whether it is there.
const DATABASE_PING_INTERVAL: Duration = Duration::from_millis(500);

/// Reports NOT_SERVING for every service while the database does not answer, SERVING again once
/// it does: a balancer then sends calls to a replica that can serve them.
async fn watch_database(
    store: Arc<dyn Store>,
    health: HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DATABASE_PING_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let reachable = tokio::time::timeout(DATABASE_PING_INTERVAL * 4, store.ping())
            .await
            .is_ok_and(|ping| ping.is_ok());
        if reachable != serving {
            serving = reachable;
            if serving {
                tracing::info!("the database answers again: SERVING");
                set_health(&health, ServingStatus::Serving).await;
            } else {
                tracing::error!("the database does not answer: NOT_SERVING");
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
