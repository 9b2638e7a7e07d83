//! Logs and metrics.
//!
//! Logs: `tracing` with `RUST_LOG` filtering, as text on a terminal or JSON lines otherwise.
//! Metrics: the `metrics` facade, recorded where things happen (see [`metric`]), rendered by
//! `metrics-exporter-prometheus` on `SNAPSHOTD_METRICS_LISTEN` at `/metrics`, beside plain-HTTP
//! probes (`/livez`, `/readyz`) for orchestrators that cannot speak gRPC health over TLS.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _already_set = if json {
        builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// A new request id: a v4 UUID, hyphenated and upper case like the seed's sample. Its random
/// bytes come from the thread's generator (`rand`), not a `getrandom` system call per call as
/// `Uuid::new_v4` does: the id needs to be unique, not secret.
pub fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .hyphenated()
        .encode_upper(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// `err: cause: cause…`, so a log line or a startup failure says why.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// Latency buckets (seconds) for every histogram: 1 ms to 10 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process's Prometheus recorder, installed as the global `metrics` recorder on first use.
/// One per process: servers built in one process (tests) share it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .expect("the bucket list is not empty")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        metric::CREATE_BATCH_CALLS.to_owned(),
                    ),
                    &metric::BATCH_BUCKETS,
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics stays empty");
            }
            metric::describe();
            handle
        })
        .clone()
}

/// Serves `GET /metrics`, `/livez` and `/readyz` on `listener` until `shutdown` resolves.
/// `refresh` runs before each scrape, to set the gauges that are read rather than recorded (pool,
/// stored snapshots); `ready` is the server's readiness, as the gRPC health service reports it.
pub async fn serve_admin<R, F>(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    refresh: R,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    R: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send,
{
    use axum::http::StatusCode;
    use axum::routing::get;

    let metrics = move || {
        let handle = handle.clone();
        let refresh = refresh.clone();
        async move {
            refresh().await;
            handle.run_upkeep();
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
        }
    };
    let readyz = move || {
        let serving = ready.load(Ordering::Relaxed);
        async move {
            if serving {
                (StatusCode::OK, "SERVING\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
            }
        }
    };
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "SERVING\n" }))
        .route("/readyz", get(readyz));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Every metric the service records: its name, what it means, and the one function that
/// records it.
pub mod metric {
    use std::time::Duration;

    use metrics::histogram;
    use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};

    pub const RPC_REQUESTS: &str = "snapshotd_rpc_requests_total";
    pub const RPC_DURATION: &str = "snapshotd_rpc_duration_seconds";
    pub const RPC_IN_FLIGHT: &str = "snapshotd_rpc_in_flight";
    pub const HTTP_REQUESTS: &str = "snapshotd_http_requests_total";
    pub const HTTP_DURATION: &str = "snapshotd_http_duration_seconds";
    pub const SNAPSHOTS: &str = "snapshotd_snapshots";
    pub const WORKER_LAG: &str = "snapshotd_worker_lag_seconds";
    pub const WORKER_STEPS: &str = "snapshotd_worker_steps_total";
    pub const DB_POOL_CONNECTIONS: &str = "snapshotd_db_pool_connections";
    pub const DB_POOL_IDLE: &str = "snapshotd_db_pool_idle_connections";
    pub const DB_POOL_MAX: &str = "snapshotd_db_pool_max_connections";
    pub const DB_BEGIN_WAIT: &str = "snapshotd_db_begin_wait_seconds";
    pub const CREATE_BATCH_CALLS: &str = "snapshotd_create_batch_calls";
    pub const CREATE_RUN_ALONE: &str = "snapshotd_create_run_alone_total";
    pub const CREATE_QUEUED: &str = "snapshotd_create_queued_calls";
    pub const WATCHES_OPEN: &str = "snapshotd_watches_open";
    pub const BUILD_INFO: &str = "snapshotd_build_info";
    pub const STORE_INFO: &str = "snapshotd_store_info";

    /// Buckets of [`CREATE_BATCH_CALLS`]: calls, not seconds (a batch holds at most 64).
    pub(super) const BATCH_BUCKETS: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

    pub(super) fn describe() {
        describe_counter!(
            RPC_REQUESTS,
            "gRPC calls answered, by method, code and reason"
        );
        describe_histogram!(RPC_DURATION, Unit::Seconds, "gRPC call latency, by method");
        describe_counter!(
            HTTP_REQUESTS,
            "ECS-compatible HTTP requests answered, by edge, action, HTTP status and ECS code"
        );
        describe_histogram!(
            HTTP_DURATION,
            Unit::Seconds,
            "ECS-compatible HTTP request latency, by edge and action"
        );
        describe_gauge!(
            RPC_IN_FLIGHT,
            "API calls in progress (load shedding starts at the limit)"
        );
        describe_gauge!(SNAPSHOTS, "stored snapshots, by status");
        describe_histogram!(
            WORKER_LAG,
            Unit::Seconds,
            "how long after its copy was due the worker recorded a snapshot's end"
        );
        describe_counter!(WORKER_STEPS, "lifecycle worker steps, by outcome");
        describe_gauge!(DB_POOL_CONNECTIONS, "open database connections");
        describe_gauge!(DB_POOL_IDLE, "idle database connections");
        describe_gauge!(DB_POOL_MAX, "the database pool's connection limit");
        describe_histogram!(
            DB_BEGIN_WAIT,
            Unit::Seconds,
            "time to get a database connection and begin a write transaction"
        );
        describe_histogram!(
            CREATE_BATCH_CALLS,
            "CreateSnapshot calls decided by one committed create transaction (group commit)"
        );
        describe_counter!(
            CREATE_RUN_ALONE,
            "CreateSnapshot calls a batch could not settle, run in a transaction of their own"
        );
        describe_gauge!(
            CREATE_QUEUED,
            "CreateSnapshot calls queued for a group-commit batch, not yet in one"
        );
        describe_gauge!(
            WATCHES_OPEN,
            "WatchSnapshots streams open, over all accounts"
        );
        describe_gauge!(BUILD_INFO, "always 1; the version is a label");
        describe_gauge!(
            STORE_INFO,
            "always 1; the store and its durability settings in force are labels"
        );
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    }

    pub fn rpc(method: &str, code: &'static str, reason: &str, latency: Duration) {
        counter!(
            RPC_REQUESTS,
            "method" => method.to_owned(),
            "code" => code,
            "reason" => reason.to_owned()
        )
        .increment(1);
        histogram!(RPC_DURATION, "method" => method.to_owned()).record(latency.as_secs_f64());
    }

    /// One request of the ECS-compatible edge (`action` is empty when none was read).
    pub fn http_request(action: &'static str, status: u16, code: &str, latency: Duration) {
        counter!(
            HTTP_REQUESTS,
            "edge" => "ecs",
            "action" => action,
            "status" => status.to_string(),
            "code" => code.to_owned()
        )
        .increment(1);
        histogram!(HTTP_DURATION, "edge" => "ecs", "action" => action)
            .record(latency.as_secs_f64());
    }

    /// The store's kind and the durability settings read back from it, as labels.
    pub fn store_info(kind: &'static str, settings: &[crate::store::Setting]) {
        let mut labels = vec![metrics::Label::new("store", kind)];
        labels.extend(
            settings
                .iter()
                .map(|setting| metrics::Label::new(setting.name, setting.value.clone())),
        );
        gauge!(STORE_INFO, labels).set(1.0);
    }

    pub fn rpc_in_flight(calls: usize) {
        gauge!(RPC_IN_FLIGHT).set(calls as f64);
    }

    pub fn snapshots(status: &str, count: i64) {
        gauge!(SNAPSHOTS, "status" => status.to_owned()).set(count as f64);
    }

    pub fn worker_lag(lag: Duration) {
        histogram!(WORKER_LAG).record(lag.as_secs_f64());
    }

    pub fn worker_step(outcome: &'static str) {
        counter!(WORKER_STEPS, "outcome" => outcome).increment(1);
    }

    pub fn db_pool(connections: u32, idle: usize, max: u32) {
        gauge!(DB_POOL_CONNECTIONS).set(f64::from(connections));
        gauge!(DB_POOL_IDLE).set(idle as f64);
        gauge!(DB_POOL_MAX).set(f64::from(max));
    }

    pub fn db_begin_wait(wait: Duration) {
        histogram!(DB_BEGIN_WAIT).record(wait.as_secs_f64());
    }

    pub fn create_batch(calls: usize) {
        histogram!(CREATE_BATCH_CALLS).record(calls as f64);
    }

    pub fn create_run_alone() {
        counter!(CREATE_RUN_ALONE).increment(1);
    }

    pub fn create_queued(calls: usize) {
        gauge!(CREATE_QUEUED).set(calls as f64);
    }

    pub fn watches_open(watches: u32) {
        gauge!(WATCHES_OPEN).set(f64::from(watches));
    }
}
