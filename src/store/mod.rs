//! Storage: the [`Store`] trait, its errors, and [`connect`], which picks the backend from the
//! `DATABASE_URL` scheme.
//!
//! Each backend runs CreateSnapshot as one transaction: lock the disk, read the state the engine
//! needs, let the engine decide, write. PostgreSQL locks the disk row (`SELECT … FOR UPDATE`);
//! SQLite takes the database write lock up front (`BEGIN IMMEDIATE`). Under load, calls that
//! arrive together share such a transaction ([`group_commit`]). Database facts become
//! typed errors here, at the store's edge; SQL never leaves this module.

mod create_flow;
mod group_commit;
mod invariants_sql;
mod inventory_flow;
mod lifecycle_flow;
mod lifecycle_sql;
pub mod postgres;
mod rows;
mod shared_sql;
mod sqlite;
mod store_impl;

use std::sync::Arc;

use async_trait::async_trait;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::backend::{BackendError, SnapshotBackend};
use crate::domain::{
    Account, CreateImageCommand, CreateSnapshotCommand, Disk, Instance, Snapshot, SnapshotStatus,
    Tag, Timestamp,
};
use crate::engine::{Policy, RuleError};

/// How often a write transaction is retried after losing a unique-key race (a client token
/// taken by a concurrent request); the retry then sees the winner's binding.
const CONFLICT_ATTEMPTS: usize = 3;

/// What a create transaction (snapshot or image) ended with, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// A new resource was stored (for CreateSnapshot: and its copy started).
    Created { id: String },
    /// The client token was already bound to identical parameters: the original answer.
    Replayed { id: String },
}

/// Where a page of DescribeSnapshots ends: the last row's sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCursor {
    pub created_at: Timestamp,
    pub snapshot_id: String,
}

/// A validated DescribeSnapshots request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotQuery {
    pub account_id: String,
    pub disk_id: Option<String>,
    pub snapshot_ids: Vec<String>,
    pub status: Option<SnapshotStatus>,
    pub snapshot_name: Option<String>,
    /// Every tag must match; an empty value matches any value of the key.
    pub tags: Vec<Tag>,
    pub after: Option<PageCursor>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPage {
    pub snapshots: Vec<Snapshot>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<PageCursor>,
}

/// A broken promise found by [`Store::check_invariants`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub promise: &'static str,
    /// The disk, snapshot or token concerned.
    pub subject: String,
    pub detail: String,
}

/// What one worker step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkDone {
    pub accomplished: usize,
    pub failed: usize,
    pub released: usize,
}

impl WorkDone {
    pub fn is_idle(&self) -> bool {
        self.accomplished + self.failed + self.released == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine (or an inventory rule checked against stored state) refused; nothing written.
    #[error(transparent)]
    Refused(#[from] RuleError),
    /// The snapshot backend would not start the copy; nothing written.
    #[error("the snapshot backend could not start the copy")]
    CopyNotStarted(#[source] BackendError),
    /// The database cannot be reached (connection refused or lost, pool exhausted or closed).
    /// Shared: every call of a batch that met it gets it.
    #[error("the database is unavailable")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// A row the database holds does not decode into the domain (a bug or a hand edit).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A unique key another transaction took first; the transaction is retried.
    #[error("write conflict")]
    Conflict(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The configuration asks for something this backend cannot do.
    #[error("unsupported configuration: {0}")]
    Unsupported(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        let unreachable = match &err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            // PostgreSQL: the server is shutting down or dropped us (class 57, 08); SQLite: busy.
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("57") || code.starts_with("08") || code == "5" || code == "6"
            }),
            _ => false,
        };
        if matches!(&err, sqlx::Error::Database(db) if db.is_unique_violation()) {
            Self::Conflict(err)
        } else if unreachable {
            Self::Unavailable(Arc::new(err))
        } else {
            Self::Database(err)
        }
    }
}

/// The persistence the service needs. One implementation per database.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"postgres"` or `"sqlite"`, for logs.
    fn kind(&self) -> &'static str;

    /// Applies this backend's embedded migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// A cheap round trip, for readiness.
    async fn ping(&self) -> Result<(), StoreError>;

    /// True when no account has been stored yet (a store never used).
    async fn is_empty(&self) -> Result<bool, StoreError>;

    async fn put_account(&self, account: &Account) -> Result<Account, StoreError>;

    /// Refuses an unknown account (`InvalidAccountId.NotFound`).
    async fn put_instance(&self, instance: &Instance) -> Result<Instance, StoreError>;

    /// Refuses an unknown account or instance, and an instance of another account.
    async fn put_disk(&self, disk: &Disk) -> Result<Disk, StoreError>;

    /// Any account's disk (the admin view).
    async fn get_disk(&self, disk_id: &str) -> Result<Disk, StoreError>;

    /// Runs the whole CreateSnapshot decision as one transaction serialized per disk (possibly
    /// shared with other calls: `group_commit`).
    async fn create_snapshot(
        &self,
        command: &CreateSnapshotCommand,
        policy: &Policy,
        now: Timestamp,
        backend: &Arc<dyn SnapshotBackend>,
    ) -> Result<CreateOutcome, StoreError>;

    /// One page of the caller's snapshots.
    async fn describe_snapshots(&self, query: &SnapshotQuery) -> Result<SnapshotPage, StoreError>;

    /// Deletes the caller's snapshot, cancelling its copy if it is still in progress.
    async fn delete_snapshot(
        &self,
        account_id: &str,
        snapshot_id: &str,
        force: bool,
        now: Timestamp,
        backend: &dyn SnapshotBackend,
    ) -> Result<(), StoreError>;

    /// Makes an image of the caller's accomplished snapshot, pinning it; idempotent by token.
    async fn create_image(
        &self,
        command: &CreateImageCommand,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError>;

    /// Asks the backend about up to `limit` copies due by `now`, and records those that
    /// finished or failed. Claimed with `SKIP LOCKED`, so replicas share the queue.
    async fn advance_copies(
        &self,
        now: Timestamp,
        limit: u32,
        backend: &dyn SnapshotBackend,
    ) -> Result<WorkDone, StoreError>;

    /// Releases up to `limit` snapshots past their retention that no image uses.
    async fn release_expired(
        &self,
        now: Timestamp,
        limit: u32,
        backend: &dyn SnapshotBackend,
    ) -> Result<WorkDone, StoreError>;

    /// Every stored breach of the service's promises (quota, one copy in progress per disk,
    /// tokens, ownership, bookkeeping); empty when all hold.
    async fn check_invariants(&self, snapshot_quota: u32) -> Result<Vec<Violation>, StoreError>;

    /// How many snapshots are stored in each status (for the metrics).
    async fn count_snapshots_by_status(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// The connection pool's state now (for the metrics).
    fn pool_stats(&self) -> PoolStats;

    /// Closes the pool, waiting for connections in use to be returned.
    async fn close(&self);
}

/// A connection pool's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub connections: u32,
    pub idle: usize,
    pub max_connections: u32,
}

/// How a store's pool behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    /// Connections at most (PostgreSQL; SQLite uses a few, its writers being serialized).
    pub max_connections: u32,
    /// How long a call waits for a connection before failing as unavailable.
    pub acquire_timeout: std::time::Duration,
}

impl PoolOptions {
    /// `max_connections` connections, waiting at most five seconds for one.
    pub fn with_max_connections(max_connections: u32) -> Self {
        Self {
            max_connections,
            acquire_timeout: std::time::Duration::from_secs(5),
        }
    }
}

/// Opens the store named by `database_url` (`postgres://…` or `sqlite://…`) with at most
/// `max_connections` connections.
pub async fn connect(
    database_url: &str,
    max_connections: u32,
) -> Result<Arc<dyn Store>, StoreError> {
    connect_with(
        database_url,
        PoolOptions::with_max_connections(max_connections),
    )
    .await
}

/// Opens the store named by `database_url` with these pool options.
pub async fn connect_with(
    database_url: &str,
    pool: PoolOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(database_url, pool).await?))
    } else if database_url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(database_url, pool).await?))
    } else {
        Err(StoreError::Unsupported(format!(
            "DATABASE_URL must start with postgres:// or sqlite:// (got {:?})",
            database_url.split(':').next().unwrap_or_default()
        )))
    }
}
