//! Configuration: every flag also reads an environment variable; `snapshotd --help` lists them.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::store::SqliteSynchronous;

use crate::engine::Policy;

/// The file the embedded store uses when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://snapshotd.db";

const MILLISECOND: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Parses a duration (`90s`, `1h`) and refuses one outside `min..=max`: every configured time is
/// checked at startup, and clap's error names the flag.
fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |raw| {
        let value = humantime::parse_duration(raw).map_err(|err| err.to_string())?;
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(format!(
                "must be from {} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ))
        }
    }
}

#[derive(Clone, Parser)]
#[command(
    name = "snapshotd",
    version,
    about = "The ECS CreateSnapshot API as a gRPC service"
)]
pub struct Config {
    /// Database: postgres://… (production) or sqlite://PATH (embedded; created if missing).
    #[arg(long, global = true, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// PostgreSQL URL the migrations run over, on a connection of their own: a direct one, never
    /// a transaction pooler (they hold an advisory lock). Unset: DATABASE_URL.
    #[arg(
        long,
        global = true,
        env = "SNAPSHOTD_MIGRATION_DATABASE_URL",
        hide_env_values = true
    )]
    pub migration_database_url: Option<String>,

    /// DATABASE_URL is a transaction pooler (pgbouncer `pool_mode = transaction`, a managed
    /// pooler): no named prepared statements, every session in a transaction. Needs
    /// SNAPSHOTD_MIGRATION_DATABASE_URL.
    #[arg(long, global = true, env = "SNAPSHOTD_DATABASE_TRANSACTION_POOLER", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub database_transaction_pooler: bool,

    /// Address the gRPC server listens on.
    #[arg(
        long,
        global = true,
        env = "SNAPSHOTD_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// Bearer token the InventoryService requires; unset disables that API.
    #[arg(
        long,
        global = true,
        env = "SNAPSHOTD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// How long after creation a disk is still initializing (e.g. 1h, 90m).
    #[arg(long, global = true, env = "SNAPSHOTD_INIT_WINDOW", default_value = "1h", value_parser = duration_in(Duration::ZERO, DAY * 7))]
    pub init_window: Duration,

    /// Snapshots one disk may hold.
    #[arg(long, global = true, env = "SNAPSHOTD_SNAPSHOT_QUOTA", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub snapshot_quota: u32,

    /// Copy rate of the simulated snapshot backend (MiB/s): a snapshot of N GiB takes N×1024/rate s.
    #[arg(long, global = true, env = "SNAPSHOTD_COPY_RATE_MIBPS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub copy_rate_mibps: u32,

    /// Whether a disk in the Available status (detached, but attached to an instance before) may be
    /// snapshotted, as the newest ECS documentation allows; the seed requires In_use.
    #[arg(long, global = true, env = "SNAPSHOTD_SNAPSHOT_AVAILABLE_DISKS", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub snapshot_available_disks: bool,

    /// Serve SimulationService (admin token required): move the clock forward, fail a disk's
    /// next copy, set a disk's copy rate. For testing against snapshotd; never in production.
    #[arg(long, global = true, env = "SNAPSHOTD_SIMULATION_CONTROLS", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub simulation_controls: bool,

    /// How often the worker looks for finished copies and expired snapshots when idle.
    #[arg(long, global = true, env = "SNAPSHOTD_WORKER_INTERVAL", default_value = "250ms", value_parser = duration_in(MILLISECOND, HOUR))]
    pub worker_interval: Duration,

    /// Largest number of database connections (PostgreSQL).
    #[arg(long, global = true, env = "SNAPSHOTD_DB_MAX_CONNECTIONS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub db_max_connections: u32,

    /// How long a call waits for a database connection before it is answered UNAVAILABLE (with
    /// RetryInfo): the bound on a call's wait while the database is gone or saturated. On SQLite
    /// it also bounds a write's wait for its turn.
    #[arg(long, global = true, env = "SNAPSHOTD_DB_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = duration_in(MILLISECOND, HOUR))]
    pub db_acquire_timeout: Duration,

    /// How long in-flight calls may take to finish after SIGTERM before they are cut off.
    #[arg(long, global = true, env = "SNAPSHOTD_SHUTDOWN_GRACE", default_value = "20s", value_parser = duration_in(Duration::ZERO, HOUR))]
    pub shutdown_grace: Duration,

    /// Longest a call may run; a slower one is answered DEADLINE_EXCEEDED (a client's shorter
    /// grpc-timeout also applies).
    #[arg(long, global = true, env = "SNAPSHOTD_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration_in(MILLISECOND, HOUR))]
    pub request_timeout: Duration,

    /// Calls served at once; beyond it a call is shed at once with UNAVAILABLE and RetryInfo.
    #[arg(long, global = true, env = "SNAPSHOTD_MAX_CONCURRENT_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,

    /// Calls one peer (a client IP address; an IPv6 /64) may have in progress at once on each
    /// edge, whatever accounts it names; beyond it a call is answered RESOURCE_EXHAUSTED
    /// `Throttling` (403 on the ECS edge). Unset:
    /// three quarters of --max-concurrent-requests. Behind a sidecar or gateway every call comes
    /// from its address: set it to --max-concurrent-requests there.
    #[arg(long, global = true, env = "SNAPSHOTD_MAX_CONCURRENT_REQUESTS_PER_PEER", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests_per_peer: Option<u32>,

    /// WatchSnapshots streams one account may have open at once on this server; past it a
    /// watch is refused RESOURCE_EXHAUSTED `QuotaExceed.Watch` (QuotaFailure).
    #[arg(long, global = true, env = "SNAPSHOTD_MAX_WATCHES_PER_ACCOUNT", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watches_per_account: u32,

    /// WatchSnapshots streams one peer (a client IP address; an IPv6 /64) may have open at once
    /// on this server, whatever accounts they name; past it a watch is refused
    /// RESOURCE_EXHAUSTED `QuotaExceed.Watch` (QuotaFailure). Behind a sidecar or gateway every
    /// watch comes from its address: raise it there to what the server should hold in all.
    #[arg(long, global = true, env = "SNAPSHOTD_MAX_WATCHES_PER_PEER", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watches_per_peer: u32,

    /// Per-account token bucket, `PER_SECOND[,BURST]` (e.g. `50,100`; the burst defaults to the
    /// rate); a call beyond it is answered RESOURCE_EXHAUSTED `Throttling`. Off when unset.
    #[arg(
        long,
        global = true,
        env = "SNAPSHOTD_RATE_LIMIT",
        value_name = "PER_SECOND[,BURST]"
    )]
    pub rate_limit: Option<RateLimit>,

    /// Largest request message, in bytes; a larger one is answered RESOURCE_EXHAUSTED.
    #[arg(long, global = true, env = "SNAPSHOTD_MAX_MESSAGE_SIZE", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_message_size: u32,

    /// HTTP/2 PING interval on idle connections (a peer that does not answer is dropped).
    #[arg(long, global = true, env = "SNAPSHOTD_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = duration_in(MILLISECOND, DAY))]
    pub keepalive_interval: Duration,

    /// How long to wait for a PING's answer before dropping the connection.
    #[arg(long, global = true, env = "SNAPSHOTD_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = duration_in(MILLISECOND, HOUR))]
    pub keepalive_timeout: Duration,

    /// Connections are closed gracefully (GOAWAY) after this age, so clients rebalance across
    /// replicas; calls in flight on them finish first.
    #[arg(long, global = true, env = "SNAPSHOTD_MAX_CONNECTION_AGE", default_value = "10m", value_parser = duration_in(SECOND, DAY * 7))]
    pub max_connection_age: Duration,

    /// Where Prometheus metrics are served (`/metrics`), or `off`.
    #[arg(
        long,
        global = true,
        env = "SNAPSHOTD_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_listen: ListenOrOff,

    /// Where the ECS-compatible HTTP API is served (Alibaba Cloud's RPC protocol, signed with an
    /// access key from InventoryService.PutAccessKey), or `off`.
    #[arg(
        long,
        global = true,
        env = "SNAPSHOTD_ECS_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub ecs_listen: ListenOrOff,

    /// PEM certificate chain for TLS; with SNAPSHOTD_TLS_KEY, the server speaks only TLS.
    #[arg(long, global = true, env = "SNAPSHOTD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for SNAPSHOTD_TLS_CERT.
    #[arg(long, global = true, env = "SNAPSHOTD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: when set, clients must present a certificate it signed (mTLS).
    #[arg(
        long,
        global = true,
        env = "SNAPSHOTD_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// When the embedded SQLite store's commits reach the disk: `full` waits for each (an
    /// acknowledged snapshot survives a power loss); `normal` is faster but an OS crash or power
    /// loss can roll back the last acknowledged snapshots.
    #[arg(long, global = true, env = "SNAPSHOTD_SQLITE_SYNCHRONOUS", default_value = "full", value_parser = clap::builder::TypedValueParser::try_map(clap::builder::PossibleValuesParser::new(["full", "normal"]), |raw| raw.parse::<SqliteSynchronous>()))]
    pub sqlite_synchronous: SqliteSynchronous,

    /// Log format; `auto` is text on a terminal and JSON otherwise.
    #[arg(long, global = true, env = "SNAPSHOTD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Seed the demo inventory (acct-demo) into an empty embedded store at startup.
    #[arg(long, global = true, env = "SNAPSHOTD_DEMO", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub demo: bool,

    /// Same as `--demo false`.
    #[arg(long, global = true)]
    pub no_demo: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
}

/// `SNAPSHOTD_RATE_LIMIT`: a token bucket of `burst` tokens refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let number = |part: &str| match part.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "`{raw}` is not PER_SECOND[,BURST] with positive whole numbers (e.g. 50,100)"
            )),
        };
        let (per_second, burst) = match raw.split_once(',') {
            Some((rate, burst)) => (number(rate)?, number(burst)?),
            None => (number(raw)?, number(raw)?),
        };
        Ok(Self { per_second, burst })
    }
}

/// `SNAPSHOTD_METRICS_LISTEN` and `SNAPSHOTD_ECS_LISTEN`: an address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenOrOff {
    Off,
    At(SocketAddr),
}

impl FromStr for ListenOrOff {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        raw.parse()
            .map(Self::At)
            .map_err(|_| format!("`{raw}` is not an address like 127.0.0.1:9464, nor `off`"))
    }
}

impl fmt::Display for ListenOrOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::At(addr) => addr.fmt(f),
        }
    }
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Put the demo inventory (acct-demo) into DATABASE_URL, then exit. Safe to repeat.
    SeedDemo,
    /// Check the stored data against the service's promises (quota, one copy in progress per
    /// disk, tokens, ownership); print each breach and exit 1 if there is any.
    Check,
    /// Ask the server at SNAPSHOTD_LISTEN for its gRPC health; exit 0 when SERVING
    /// (for container health checks).
    Health,
}

impl Config {
    /// The store's pool, as `--db-max-connections` and `--db-acquire-timeout` say.
    pub fn pool_options(&self) -> crate::store::PoolOptions {
        crate::store::PoolOptions {
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_acquire_timeout,
            sqlite_synchronous: self.sqlite_synchronous,
            transaction_pooler: self.database_transaction_pooler,
        }
    }

    pub fn policy(&self) -> Policy {
        Policy {
            snapshot_quota: self.snapshot_quota,
            init_window: self.init_window,
            copy_rate_mibps: self.copy_rate_mibps,
            snapshot_available_disks: self.snapshot_available_disks,
        }
    }

    /// Whether to seed the demo inventory into an empty embedded store.
    pub fn seeds_demo(&self) -> bool {
        self.demo && !self.no_demo
    }

    /// A configuration for tests and embedding: the defaults (and any `SNAPSHOTD_*` variables set),
    /// with `database_url`, no admin token, no demo, and an ephemeral loopback port.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        let mut config = Self::parse_from(["snapshotd"]);
        config.database_url = database_url.into();
        config.admin_token = None;
        config.demo = false;
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.metrics_listen = ListenOrOff::Off;
        config.ecs_listen = ListenOrOff::Off;
        config.tls_cert = None;
        config.tls_key = None;
        config.tls_client_ca = None;
        config
    }
}

impl std::fmt::Debug for Config {
    // Hand-written so the admin token never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_password(&self.database_url))
            .field(
                "migration_database_url",
                &self.migration_database_url.as_deref().map(redact_password),
            )
            .field(
                "database_transaction_pooler",
                &self.database_transaction_pooler,
            )
            .field("listen", &self.listen)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("init_window", &self.init_window)
            .field("snapshot_quota", &self.snapshot_quota)
            .field("copy_rate_mibps", &self.copy_rate_mibps)
            .field("snapshot_available_disks", &self.snapshot_available_disks)
            .field("simulation_controls", &self.simulation_controls)
            .field("worker_interval", &self.worker_interval)
            .field("db_max_connections", &self.db_max_connections)
            .field("db_acquire_timeout", &self.db_acquire_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("request_timeout", &self.request_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field(
                "max_concurrent_requests_per_peer",
                &self.max_concurrent_requests_per_peer,
            )
            .field("max_watches_per_account", &self.max_watches_per_account)
            .field("max_watches_per_peer", &self.max_watches_per_peer)
            .field("rate_limit", &self.rate_limit)
            .field("max_message_size", &self.max_message_size)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("max_connection_age", &self.max_connection_age)
            .field("metrics_listen", &self.metrics_listen)
            .field("ecs_listen", &self.ecs_listen)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_client_ca", &self.tls_client_ca)
            .field("log_format", &self.log_format)
            .field("demo", &self.seeds_demo())
            .finish()
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_duration_and_count_is_checked_at_startup_and_the_error_names_the_flag() {
        let refused = [
            ("--init-window", "300000y"),
            ("--init-window", "8days"),
            ("--request-timeout", "0s"),
            ("--request-timeout", "2h"),
            ("--worker-interval", "0s"),
            ("--db-acquire-timeout", "0ms"),
            ("--shutdown-grace", "2h"),
            ("--keepalive-interval", "0s"),
            ("--keepalive-timeout", "0s"),
            ("--max-connection-age", "500ms"),
            ("--db-max-connections", "0"),
            ("--snapshot-quota", "0"),
            ("--copy-rate-mibps", "0"),
            ("--max-concurrent-requests", "0"),
            ("--max-concurrent-requests-per-peer", "0"),
            ("--max-message-size", "1023"),
        ];
        for (flag, value) in refused {
            let error = Config::try_parse_from(["snapshotd", flag, value])
                .expect_err(&format!("{flag} {value}"))
                .to_string();
            assert!(error.contains(flag), "{flag} {value}: {error}");
        }
        let accepted = [
            ("--init-window", "0s"),
            ("--init-window", "7days"),
            ("--request-timeout", "1ms"),
            ("--request-timeout", "1h"),
            ("--shutdown-grace", "0s"),
            ("--max-connection-age", "1s"),
            ("--db-max-connections", "1"),
        ];
        for (flag, value) in accepted {
            assert!(
                Config::try_parse_from(["snapshotd", flag, value]).is_ok(),
                "{flag} {value}"
            );
        }
    }

    #[test]
    fn the_seed_is_the_default_and_the_newer_ecs_behaviour_a_setting() {
        let parsed = |args: &[&str]| {
            Config::try_parse_from(std::iter::once("snapshotd").chain(args.iter().copied()))
                .map(|config| config.policy().snapshot_available_disks)
                .map_err(|err| err.to_string())
        };
        assert_eq!(parsed(&[]), Ok(false), "the seed: In_use only");
        assert_eq!(parsed(&["--snapshot-available-disks", "true"]), Ok(true));
        assert_eq!(parsed(&["--snapshot-available-disks", "false"]), Ok(false));
        assert!(parsed(&["--snapshot-available-disks", "yes"]).is_err());
    }

    #[test]
    fn passwords_are_redacted_from_database_urls() {
        assert_eq!(
            redact_password("postgres://app:s3cret@db:5432/snap"),
            "postgres://app:***@db:5432/snap"
        );
        assert_eq!(
            redact_password("sqlite://snapshotd.db"),
            "sqlite://snapshotd.db"
        );
        assert_eq!(
            redact_password("postgres://app@db/snap"),
            "postgres://app@db/snap"
        );
    }

    #[test]
    fn rate_limits_parse_with_and_without_a_burst() {
        assert_eq!(
            "50".parse::<RateLimit>(),
            Ok(RateLimit {
                per_second: 50,
                burst: 50
            })
        );
        assert_eq!(
            "5, 20".parse::<RateLimit>(),
            Ok(RateLimit {
                per_second: 5,
                burst: 20
            })
        );
        for bad in ["", "0", "5,0", "-1", "a,b", "1.5", "5,10,15"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_metrics_listener_can_be_turned_off() {
        assert_eq!("off".parse::<ListenOrOff>(), Ok(ListenOrOff::Off));
        assert_eq!(
            "0.0.0.0:9464".parse::<ListenOrOff>(),
            Ok(ListenOrOff::At(SocketAddr::from(([0, 0, 0, 0], 9464))))
        );
        assert!("9464".parse::<ListenOrOff>().is_err());
    }

    #[test]
    fn the_admin_token_never_appears_in_debug_output() {
        let mut config = Config::for_database("sqlite://x.db");
        config.admin_token = Some("very-secret".into());
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
