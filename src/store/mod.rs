//! Storage: the [`Store`] and [`Transaction`] traits the service runs its use cases on, their
//! errors, and [`connect`], which picks the backend from the `DATABASE_URL` scheme.
//!
//! The store decides nothing: it runs statements. The service (`crate::service`) begins a
//! write transaction, reads under its locks, asks the engine, and writes. Every statement both
//! backends run alike is written once, in [`shared`], generic over the two sqlx drivers (SQLite
//! reads PostgreSQL's `$1` placeholders as they are); what differs (row locks, array statements,
//! how a write transaction begins, pool set-up) is in `postgres/` and `sqlite/`, behind
//! [`shared::Dialect`]; SQLite's writers take turns in the process (`turn`). Database facts become typed errors here; SQL never leaves this module.

mod fence;
mod kept;
mod pooler;
pub mod postgres;
mod rows;
mod shared;
pub mod sqlite;
mod stored_time;
mod turn;

use std::sync::Arc;

use async_trait::async_trait;

pub use postgres::PgStore;
pub use shared::bind_placeholders;
pub use sqlite::SqliteStore;

use crate::domain::{
    AccessKey, Account, CreateImageCommand, CreateSnapshotCommand, Disk, DiskSteering, ImagePage,
    ImageQuery, Instance, Snapshot, SnapshotPage, SnapshotQuery, SnapshotStatus, Tag, TagKeys,
    TagPage, TagQuery, Timestamp,
};
use crate::engine::{CreateState, TokenBinding};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (connection refused or lost, pool exhausted or closed), or
    /// the server at its address takes no writes (a standby in recovery, a read-only primary):
    /// see [`Diagnosis`]. Cloneable, so that every call of a batch that met it can be told.
    #[error("the database is unavailable")]
    Unavailable(#[source] Unreachable),
    /// The database's disk is full: nothing was written, and writes fail until there is space.
    #[error("the database's storage is full")]
    StorageFull(#[source] sqlx::Error),
    /// A row the database holds does not decode into the domain (a bug or a hand edit).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A unique key another transaction took first; the transaction is worth retrying.
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

/// Why the database could not be reached, shared by every call that met it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct Unreachable(Arc<sqlx::Error>);

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match diagnose(&err) {
            Diagnosis::ServerLost | Diagnosis::Unreachable => {
                Self::Unavailable(Unreachable(Arc::new(err)))
            }
            Diagnosis::StorageFull => Self::StorageFull(err),
            Diagnosis::Conflict => Self::Conflict(err),
            Diagnosis::Other => Self::Database(err),
        }
    }
}

/// What a driver's error says about the database: the one place that reads SQLSTATEs, for the
/// [`StoreError`] it becomes and for the pool ([`fence::Fence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Diagnosis {
    /// The server behind the address is gone or going (the connection lost, a shutdown, a
    /// crash, still starting up) or takes no writes (a standby in recovery, a primary set
    /// read-only): the operator's failover window. Unavailable; and no connection opened before
    /// it is used again, so the next call reaches whatever answers at the address now.
    ServerLost,
    /// Out of reach for now, the pool's connections are not in doubt: no connection free in
    /// time, the pool closed, SQLite busy or locked, a statement canceled.
    Unreachable,
    StorageFull,
    /// A unique key another transaction took first.
    Conflict,
    /// Anything else: a bug of ours, or a database we do not understand. INTERNAL.
    Other,
}

pub(crate) fn diagnose(err: &sqlx::Error) -> Diagnosis {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => Diagnosis::ServerLost,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => {
            Diagnosis::Unreachable
        }
        sqlx::Error::Database(db) if db.is_unique_violation() => Diagnosis::Conflict,
        sqlx::Error::Database(db) => match db.code().as_deref().unwrap_or_default() {
            // PostgreSQL: connection_exception (class 08); admin_shutdown, crash_shutdown,
            // cannot_connect_now, database_dropped; read_only_sql_transaction (a write on a
            // standby or a read-only primary: "cannot execute INSERT in a read-only
            // transaction"). Not 40001/40P01: a conflict with recovery or a deadlock is the
            // call's to retry, on a server that is fine.
            code if code.starts_with("08") => Diagnosis::ServerLost,
            "57P01" | "57P02" | "57P03" | "57P04" | "25006" => Diagnosis::ServerLost,
            // The rest of operator_intervention (class 57: query_canceled, an idle session's
            // timeout); SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6).
            code if code.starts_with("57") => Diagnosis::Unreachable,
            "5" | "6" => Diagnosis::Unreachable,
            // PostgreSQL: disk_full; SQLite: SQLITE_FULL.
            "53100" | "13" => Diagnosis::StorageFull,
            _ => Diagnosis::Other,
        },
        _ => Diagnosis::Other,
    }
}

/// A broken promise found by [`Store::check_invariants`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub promise: &'static str,
    /// The disk, snapshot or token concerned.
    pub subject: String,
    pub detail: String,
}

/// A committed change to one snapshot row (created, changed or deleted), whichever replica
/// made it: the row's keys only, the reader reads the row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnapshotChange {
    pub snapshot_id: String,
    pub disk_id: String,
    pub account_id: String,
}

/// What [`Store::listen_changes`] reports, in commit order per replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    Changed(Vec<SnapshotChange>),
    /// The feed was cut off and is back (PostgreSQL: the listening connection was lost):
    /// changes may have been missed, so whoever follows it reads again what it follows.
    Resumed,
}

/// How many feed events wait for their reader before the feed waits too.
pub const FEED_BUFFER: usize = 1024;

/// The change feed of [`Store::listen_changes`]: it reports nothing until started, so a server
/// nobody watches pays nothing for it (PostgreSQL: no `LISTEN` and no registered listener, so
/// the trigger sends no notification; SQLite: the triggers log nothing and nothing is read).
pub struct ChangeFeed {
    pub events: tokio::sync::mpsc::Receiver<FeedEvent>,
    pub control: tokio::sync::mpsc::UnboundedSender<FeedControl>,
}

/// What the reader of a [`ChangeFeed`] asks of it.
#[derive(Debug)]
pub enum FeedControl {
    /// Report changes; answered once every change committed after the answer is sure to be
    /// reported (PostgreSQL: the `LISTEN` has returned). Changes committed before it may or may
    /// not be: whoever starts the feed reads what it follows after the answer.
    Start(tokio::sync::oneshot::Sender<Result<(), StoreError>>),
    /// Report nothing more (nobody follows the feed).
    Stop,
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
    /// When the embedded SQLite store's commits reach the disk.
    pub sqlite_synchronous: SqliteSynchronous,
    /// PostgreSQL: the URL is a transaction pooler (pgbouncer `pool_mode = transaction`), so no
    /// session state and no named prepared statement may outlive a transaction (`pooler`).
    pub transaction_pooler: bool,
}

/// SQLite's `synchronous` setting (in WAL mode): what an acknowledged write survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSynchronous {
    /// Each commit waits for the WAL's fsync: it survives a power loss or an OS crash.
    #[default]
    Full,
    /// Commits are not fsynced: they survive the process dying, not an OS crash or power loss.
    Normal,
}

impl SqliteSynchronous {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Normal => "normal",
        }
    }
}

impl std::str::FromStr for SqliteSynchronous {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        match raw {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            _ => Err(format!("`{raw}` is not full or normal")),
        }
    }
}

/// A durability setting the database has in force, read back at startup (`PRAGMA synchronous`,
/// `SHOW fsync`, …), for the startup log, a metric label and warnings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub value: String,
}

/// What one call's locking read found: the state the engine needs, and the caller's binding
/// of the call's client token.
pub type LockedRead = (CreateState, Option<TokenBinding>);

/// The worker's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkQueue {
    /// Progressing snapshots whose copy is due (`copy_due_at`).
    Copies,
    /// Snapshots past their retention (`release_at`) that no image uses.
    Releases,
}

/// What a batch's locking read found for one call.
pub enum BatchRead {
    /// The disk, now locked, and what the engine needs (or why the row does not decode).
    Locked(Box<Result<LockedRead, StoreError>>),
    /// Another transaction holds the disk's lock.
    Busy,
    /// The caller has no such disk.
    Missing,
}

/// What spending a signed request's nonce found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceSpend {
    /// Recorded: the request was not sent before.
    Spent,
    /// Used before and not expired yet: the request is a replay.
    Replayed,
    /// The key no longer holds the secret and account the request's signature was verified
    /// with (its secret was rotated since they were read): nothing was recorded.
    KeyChanged,
}

/// The persistence the service needs. One implementation per database.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"postgres"` or `"sqlite"`, for logs.
    fn kind(&self) -> &'static str;

    /// How many create transactions should run at once: the database's sweet spot.
    fn create_lanes(&self) -> usize;

    /// The durability settings in force, as read back from the database when it was opened.
    fn settings(&self) -> &[Setting];

    /// What in [`Store::settings`] weakens the promise that an acknowledged write survives a
    /// crash of the machine, one sentence each (empty when nothing does).
    fn durability_warnings(&self) -> Vec<String>;

    /// Applies this backend's embedded migrations, over `migration_database_url` (a direct
    /// connection to PostgreSQL, never through a pooler) when given, else over the store's pool.
    async fn migrate(&self, migration_database_url: Option<&str>) -> Result<(), StoreError>;

    /// A cheap round trip, for readiness: fails unless the database answers and takes writes
    /// (PostgreSQL: not a standby in recovery, not set read-only).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Begins a write transaction, in which reads lock what they read until it ends (PostgreSQL:
    /// row locks; SQLite: the database's write lock, taken up front, after the writers that
    /// asked before this one had theirs: `turn`).
    async fn begin(&self) -> Result<Box<dyn Transaction>, StoreError>;

    /// [`begin`](Self::begin) for a CreateSnapshot batch of `calls` calls, whose statements take
    /// their rows by key from arrays of parameters: for a small batch PostgreSQL plans them once
    /// per connection (generic plans, `BEGIN_BATCH_SQL` in `postgres/`), where its default
    /// would plan them again at every call. `lane` numbers the process's batch writers that
    /// may write at once: two of them never wait for each other on an account's count
    /// (PostgreSQL: each adds to a slot of its own, named in its `BEGIN`: `begin_batch_sql` in
    /// `postgres/`).
    async fn begin_batch(
        &self,
        calls: usize,
        lane: usize,
    ) -> Result<Box<dyn Transaction>, StoreError>;

    /// A connection outside any transaction, for reads that lock nothing: each statement sees
    /// what was committed when it started, and a write commits on its own (autocommit: for a
    /// write that is one atomic statement, such as spending a nonce). Behind a transaction
    /// pooler it is a transaction (`BEGIN`) with the same view: end it with
    /// [`Transaction::commit`] (which does nothing otherwise), or a write in it is lost and its
    /// connection closed.
    async fn read(&self) -> Result<Box<dyn Transaction>, StoreError>;

    /// The connection pool's state now (for the metrics).
    fn pool_stats(&self) -> PoolStats;

    /// Every committed change to a snapshot row while the feed is started ([`FeedControl`]),
    /// until its receiver is dropped. PostgreSQL: LISTEN on `direct_url`, a session of its own
    /// (a transaction pooler would not deliver notifications), so every replica's changes
    /// arrive; SQLite: the one process's own commits, read from the change log after each.
    async fn listen_changes(&self, direct_url: &str) -> Result<ChangeFeed, StoreError>;

    /// Closes the pool, waiting for connections in use to be returned.
    async fn close(&self);
}

/// The statements the service runs, on one connection: a write transaction ([`Store::begin`])
/// or, for reads alone, a connection outside any ([`Store::read`], where `commit` and `rollback`
/// do nothing unless the store is behind a transaction pooler). Dropping a transaction without [`Transaction::commit`] rolls it back, but only
/// when its connection is next used: end it with [`Transaction::rollback`].
#[async_trait]
pub trait Transaction: Send {
    // Reads.

    /// The tables of the database (of the current schema on PostgreSQL).
    async fn table_names(&mut self) -> Result<Vec<String>, StoreError>;

    /// Whether any account is stored (a store never used has none).
    async fn any_account(&mut self) -> Result<bool, StoreError>;

    /// Any account's disk (the admin view).
    async fn select_disk(&mut self, disk_id: &str) -> Result<Option<Disk>, StoreError>;

    /// One page of the query's snapshots, with their tags.
    async fn describe_snapshots(
        &mut self,
        query: &SnapshotQuery,
    ) -> Result<SnapshotPage, StoreError>;

    /// Every stored breach of the service's promises (quota, one copy in progress per disk,
    /// tokens, ownership, bookkeeping); empty when all hold.
    async fn check_invariants(&mut self, snapshot_quota: u32)
    -> Result<Vec<Violation>, StoreError>;

    /// How many snapshots are stored in each status (for the metrics).
    async fn count_snapshots_by_status(&mut self) -> Result<Vec<(String, i64)>, StoreError>;

    // CreateSnapshot.

    /// Locks the caller's disk and reads the state the engine needs and the caller's token
    /// binding, in one statement, waiting for the lock. `None` when the caller has no such disk.
    async fn lock_disk_and_read(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<Option<LockedRead>, StoreError>;

    /// For each command, in order, what its locking read found; a disk another transaction
    /// holds is never waited for ([`BatchRead::Busy`]).
    async fn lock_free_disks_and_read(
        &mut self,
        commands: &[&CreateSnapshotCommand],
    ) -> Result<Vec<BatchRead>, StoreError>;

    /// The caller's account and token binding (when there is no disk to lock).
    async fn read_caller(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<LockedRead, StoreError>;

    /// The caller's binding of the command's client token, read afresh.
    async fn read_token(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<Option<TokenBinding>, StoreError>;

    /// Inserts the snapshots with their tags and token bindings, and counts each on its disk
    /// as its copy in progress.
    async fn insert_snapshots(
        &mut self,
        snapshots: &[(&Snapshot, &CreateSnapshotCommand)],
    ) -> Result<(), StoreError>;

    // Inventory.

    async fn account_exists(&mut self, account_id: &str) -> Result<bool, StoreError>;

    /// A disk of another account than `account_id` attached to `instance_id`.
    async fn foreign_disk_on(
        &mut self,
        instance_id: &str,
        account_id: &str,
    ) -> Result<Option<String>, StoreError>;

    /// The stored account and snapshot count of `disk_id`, its row locked until the transaction
    /// ends (a CreateSnapshot on it waits, and then sees the write).
    async fn lock_disk_owner(&mut self, disk_id: &str)
    -> Result<Option<(String, i32)>, StoreError>;

    /// The stored account of `instance_id`, its row locked until the transaction ends (a disk
    /// attached to it, or its move to another account, waits for this write).
    async fn lock_instance_owner(
        &mut self,
        instance_id: &str,
    ) -> Result<Option<String>, StoreError>;

    async fn upsert_account(&mut self, account: &Account) -> Result<Account, StoreError>;

    async fn upsert_instance(&mut self, instance: &Instance) -> Result<Instance, StoreError>;

    async fn upsert_disk(&mut self, disk: &Disk) -> Result<Disk, StoreError>;

    /// The stored account of access key `access_key_id`, its row locked until the transaction
    /// ends (a concurrent put of the same key waits, then sees this one's owner).
    async fn lock_access_key_owner(
        &mut self,
        access_key_id: &str,
    ) -> Result<Option<String>, StoreError>;

    async fn upsert_access_key(&mut self, key: &AccessKey) -> Result<(), StoreError>;

    /// The key pair of `access_key_id`, if any (the ECS edge verifies signatures with it).
    async fn select_access_key(
        &mut self,
        access_key_id: &str,
    ) -> Result<Option<AccessKey>, StoreError>;

    /// Spends each nonce with the key its request's signature was verified with, until
    /// `expires_at`: one outcome per nonce, in order. The `(key id, nonce)` pairs are distinct.
    async fn spend_nonces(
        &mut self,
        nonces: &[(&AccessKey, &str)],
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Vec<NonceSpend>, StoreError>;

    /// Drops the nonces whose window has passed.
    async fn forget_expired_nonces(&mut self, now: Timestamp) -> Result<(), StoreError>;

    /// Writes the one row of `write_probe`: whether a write can be committed now (readiness,
    /// while the disk was full).
    async fn probe_write(&mut self, now: Timestamp) -> Result<(), StoreError>;

    // The snapshot lifecycle.

    /// The caller's snapshot, locked until the transaction ends.
    async fn lock_own_snapshot(
        &mut self,
        account_id: &str,
        snapshot_id: &str,
    ) -> Result<Option<Snapshot>, StoreError>;

    /// Deletes the snapshots and frees their quota (and their disks, where they were being
    /// copied).
    async fn delete_and_uncount(&mut self, snapshots: &[Snapshot]) -> Result<(), StoreError>;

    /// Writes the snapshot's attributes a caller may change (name, description, retention and
    /// the release time it implies) and its `last_modified_at`; the caller holds its lock.
    async fn update_snapshot_attributes(&mut self, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// The caller's binding of an image client token.
    async fn read_image_token(
        &mut self,
        account_id: &str,
        client_token: &str,
    ) -> Result<Option<TokenBinding>, StoreError>;

    /// Inserts the image (and its token binding) and pins its snapshot.
    async fn insert_image(
        &mut self,
        image_id: &str,
        command: &CreateImageCommand,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// The snapshot the caller's image `image_id` pins, the image's row locked until the
    /// transaction ends (a concurrent DeleteImage of it waits, then finds it gone). `None` when
    /// the caller has no such image.
    async fn lock_own_image(
        &mut self,
        account_id: &str,
        image_id: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Deletes the image and, when it was its snapshot's last, sets the snapshot's usage back
    /// to none. The caller holds the snapshot's lock ([`Transaction::lock_own_snapshot`]), so no
    /// image of it can be added or counted meanwhile.
    async fn delete_image(
        &mut self,
        image_id: &str,
        snapshot_id: &str,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// One page of the query's images, newest first, and how many match.
    async fn describe_images(&mut self, query: &ImageQuery) -> Result<ImagePage, StoreError>;

    /// Up to `limit` snapshots of the worker's `queue` due by `now`, oldest due first, held
    /// until the transaction ends; rows another transaction holds are skipped, not waited for.
    async fn claim_due(
        &mut self,
        queue: WorkQueue,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Snapshot>, StoreError>;

    /// Looks at the snapshot's copy again at `due`.
    async fn postpone_copy(
        &mut self,
        snapshot: &Snapshot,
        due: Timestamp,
    ) -> Result<(), StoreError>;

    /// Records the end of these copies and frees their disks.
    async fn finish_copies(
        &mut self,
        finished: &[(&Snapshot, SnapshotStatus)],
        now: Timestamp,
    ) -> Result<(), StoreError>;

    // Tags after creation: a few statements per call, however many snapshots and tags.

    /// The caller's snapshots among `snapshot_ids`, locked in id order until the transaction
    /// ends (two tag calls never wait on each other in a circle), each with its tags by key,
    /// read after the locks (a change that held one has committed and is seen). An id that is
    /// not a snapshot of the caller's is left out.
    async fn lock_own_snapshots_and_tags(
        &mut self,
        account_id: &str,
        snapshot_ids: &[String],
    ) -> Result<Vec<(String, Vec<Tag>)>, StoreError>;

    /// Adds the tags to each of the snapshots (a key one has takes the new value) and moves
    /// their `last_modified_at` to `now`; the caller holds their locks.
    async fn put_tags(
        &mut self,
        snapshot_ids: &[String],
        tags: &[Tag],
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Removes these tags from each of the snapshots and moves their `last_modified_at` to
    /// `now`; the caller holds their locks.
    async fn remove_tags(
        &mut self,
        snapshot_ids: &[String],
        keys: &TagKeys,
        now: Timestamp,
    ) -> Result<(), StoreError>;

    /// Those of `snapshot_ids` that are snapshots of `account_id`.
    async fn own_snapshot_ids(
        &mut self,
        account_id: &str,
        snapshot_ids: &[String],
    ) -> Result<Vec<String>, StoreError>;

    /// One page of the tags of the query's snapshots, by snapshot id then key.
    async fn list_tags(&mut self, query: &TagQuery) -> Result<TagPage, StoreError>;

    // The simulation controls (`SimulationService`): empty tables in production.

    /// How far the service's clock has been moved forward (µs), and every steered disk.
    async fn read_simulation(&mut self) -> Result<(i64, Vec<DiskSteering>), StoreError>;

    /// Moves the shared clock forward by `by_micros`, unless the offset would pass
    /// `max_micros`: the offset after (µs), `None` when refused.
    async fn advance_clock(
        &mut self,
        by_micros: i64,
        max_micros: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// The disk's steering, locked until the transaction ends (untouched when it has none).
    async fn lock_steering(&mut self, disk_id: &str) -> Result<DiskSteering, StoreError>;

    /// Writes the disk's steering; the caller holds its lock ([`Transaction::lock_steering`]).
    async fn put_steering(&mut self, steering: &DiskSteering) -> Result<(), StoreError>;

    /// Records that FailNextCopy, armed at `fail_from`, picked the stored `snapshot_id` (and
    /// is disarmed), unless another pick or call came first; then makes that copy due by
    /// `fails_at`. Whether it was recorded.
    async fn pick_doomed(
        &mut self,
        disk_id: &str,
        snapshot_id: &str,
        fail_from: Timestamp,
        fails_at: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Makes the disk's running copy due by `due` (the worker looks at it again then).
    async fn hasten_copy(&mut self, disk_id: &str, due: Timestamp) -> Result<(), StoreError>;

    /// The disk's snapshot being copied, locked until the transaction ends.
    async fn lock_progressing_snapshot(
        &mut self,
        disk_id: &str,
    ) -> Result<Option<Snapshot>, StoreError>;

    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    async fn rollback(self: Box<Self>);
}

/// Opens the store named by `database_url` (`postgres://…` or `sqlite://…`).
pub async fn connect(database_url: &str, pool: PoolOptions) -> Result<Arc<dyn Store>, StoreError> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::connect(database_url, pool).await?))
    } else if database_url.starts_with("sqlite:") {
        if pool.transaction_pooler {
            return Err(StoreError::Unsupported(
                "SNAPSHOTD_DATABASE_TRANSACTION_POOLER is for PostgreSQL only".into(),
            ));
        }
        Ok(Arc::new(sqlite::connect(database_url, pool).await?))
    } else {
        Err(StoreError::Unsupported(format!(
            "DATABASE_URL must start with postgres:// or sqlite:// (got {:?})",
            database_url.split(':').next().unwrap_or_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A database's answer with this SQLSTATE (PostgreSQL) or result code (SQLite).
    #[derive(Debug)]
    struct Answered(&'static str);

    impl std::fmt::Display for Answered {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "the database answered {}", self.0)
        }
    }

    impl std::error::Error for Answered {}

    impl sqlx::error::DatabaseError for Answered {
        fn message(&self) -> &str {
            "the database answered"
        }

        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }

        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> sqlx::error::ErrorKind {
            match self.0 {
                "23505" | "2067" => sqlx::error::ErrorKind::UniqueViolation,
                _ => sqlx::error::ErrorKind::Other,
            }
        }
    }

    fn answered(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Answered(code)))
    }

    fn variant(err: &StoreError) -> &'static str {
        match err {
            StoreError::Unavailable(_) => "Unavailable",
            StoreError::StorageFull(_) => "StorageFull",
            StoreError::Corrupt(_) => "Corrupt",
            StoreError::Conflict(_) => "Conflict",
            StoreError::Database(_) => "Database",
            StoreError::Migrate(_) => "Migrate",
            StoreError::Unsupported(_) => "Unsupported",
        }
    }

    #[test]
    fn each_database_answer_becomes_its_store_error_and_a_lost_server_fences_the_pool() {
        use Diagnosis::{Conflict, Other, ServerLost, StorageFull, Unreachable};
        let cases: Vec<(&str, sqlx::Error, Diagnosis, &str)> = vec![
            // A failover: the server behind the address is gone, going, or no primary.
            (
                "read_only_sql_transaction (a standby, a read-only primary)",
                answered("25006"),
                ServerLost,
                "Unavailable",
            ),
            (
                "cannot_connect_now (starting up, in recovery)",
                answered("57P03"),
                ServerLost,
                "Unavailable",
            ),
            (
                "admin_shutdown",
                answered("57P01"),
                ServerLost,
                "Unavailable",
            ),
            (
                "crash_shutdown",
                answered("57P02"),
                ServerLost,
                "Unavailable",
            ),
            (
                "database_dropped",
                answered("57P04"),
                ServerLost,
                "Unavailable",
            ),
            (
                "connection_failure",
                answered("08006"),
                ServerLost,
                "Unavailable",
            ),
            (
                "connection_does_not_exist",
                answered("08003"),
                ServerLost,
                "Unavailable",
            ),
            (
                "the connection reset",
                sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
                ServerLost,
                "Unavailable",
            ),
            // Out of reach for now; the pool's connections are fine.
            (
                "query_canceled",
                answered("57014"),
                Unreachable,
                "Unavailable",
            ),
            (
                "idle_session_timeout",
                answered("57P05"),
                Unreachable,
                "Unavailable",
            ),
            (
                "no connection free in time",
                sqlx::Error::PoolTimedOut,
                Unreachable,
                "Unavailable",
            ),
            (
                "the pool closed",
                sqlx::Error::PoolClosed,
                Unreachable,
                "Unavailable",
            ),
            ("SQLITE_BUSY", answered("5"), Unreachable, "Unavailable"),
            ("SQLITE_LOCKED", answered("6"), Unreachable, "Unavailable"),
            // The rest keeps its own answer.
            ("disk_full", answered("53100"), StorageFull, "StorageFull"),
            ("SQLITE_FULL", answered("13"), StorageFull, "StorageFull"),
            ("unique_violation", answered("23505"), Conflict, "Conflict"),
            (
                "SQLITE_CONSTRAINT_UNIQUE",
                answered("2067"),
                Conflict,
                "Conflict",
            ),
            (
                "serialization_failure (also a conflict with recovery)",
                answered("40001"),
                Other,
                "Database",
            ),
            ("deadlock_detected", answered("40P01"), Other, "Database"),
            (
                "object_not_in_prerequisite_state",
                answered("55000"),
                Other,
                "Database",
            ),
            ("undefined_table", answered("42P01"), Other, "Database"),
            ("no row", sqlx::Error::RowNotFound, Other, "Database"),
        ];
        for (what, err, diagnosis, store_error) in cases {
            assert_eq!(diagnose(&err), diagnosis, "{what}");
            let fence = fence::Fence::default();
            fence.note(&err);
            assert_eq!(
                fence.predates(std::time::Duration::from_secs(1)),
                diagnosis == ServerLost,
                "{what}: fences off the connections opened before it"
            );
            assert_eq!(variant(&StoreError::from(err)), store_error, "{what}");
        }
    }
}
