//! The embedded SQLite store: the zero-setup default, one process per database file.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, which takes the database's write lock
//! before the first read, so one request's lock-check-insert is serialized exactly as PostgreSQL
//! serializes it per disk (here: per database). WAL keeps readers off the writer's back.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::create_flow::{
    BatchRead, CreateBatchReads, CreateReads, InsertSnapshots, decide_and_write,
};
use super::group_commit::GroupCommit;
use super::inventory_flow::{self, InventoryTx, impl_shared_tx};
use super::lifecycle_flow::{self, Dialect, describe_on, impl_lifecycle_tx};
use super::shared_sql::for_sqlite;
use super::store_impl::impl_store;
use super::{CreateOutcome, PoolOptions, SnapshotPage, SnapshotQuery, StoreError, WorkDone};
use crate::backend::SnapshotBackend;
use crate::domain::{
    Account, CreateImageCommand, CreateSnapshotCommand, Disk, Instance, Snapshot, Timestamp,
};
use crate::engine::{Policy, RuleError};

const DIALECT: Dialect = Dialect::SQLITE;

// No row locks: `BEGIN IMMEDIATE` holds the database for the whole transaction.
impl_shared_tx!(Sqlite, for_sqlite, "");
impl_lifecycle_tx!(Sqlite, DIALECT);

const INSERT_SNAPSHOT_SQL: &str = "\
INSERT INTO snapshots (snapshot_id, account_id, source_disk_id, snapshot_name, description,
                       source_disk_size_gib, source_disk_type, status, created_at, started_at,
                       last_modified_at, copy_due_at, retention_days, release_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9, ?11, ?12, ?13)";

const INSERT_TAG_SQL: &str =
    "INSERT INTO snapshot_tags (snapshot_id, key, value) VALUES (?1, ?2, ?3)";

const INSERT_TOKEN_SQL: &str = "\
INSERT INTO client_tokens (account_id, client_token, fingerprint, snapshot_id, created_at)
VALUES (?1, ?2, ?3, ?4, ?5)";

const COUNT_SNAPSHOT_SQL: &str = "\
UPDATE disks
SET snapshot_count = snapshot_count + 1, progressing_snapshot_id = ?2, progressing_since = ?3
WHERE disk_id = ?1";

/// Takes the write lock at the start, so reads inside the transaction are the state it writes on.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// One lane: SQLite has one writer. Batching still pays, with one commit for many calls.
const CREATE_LANES: usize = 1;

/// Calls written in one create transaction at most.
const CREATE_BATCH: usize = 64;

pub struct SqliteStore {
    pool: SqlitePool,
    group_commit: GroupCommit,
    /// Held for the life of the store: a second server on the same file would break the
    /// serialization `BEGIN IMMEDIATE` gives within one process's pool.
    _process_lock: File,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file named by a `sqlite://PATH` URL.
    pub async fn connect(database_url: &str, pool: PoolOptions) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(database_url).map_err(StoreError::Database)?;
        let path = options.get_filename().to_path_buf();
        if database_url.contains(":memory:") || database_url.contains("mode=memory") {
            return Err(StoreError::Unsupported(
                "an in-memory SQLite database would lose every snapshot on restart; \
                 give DATABASE_URL a file, e.g. sqlite://snapshotd.db"
                    .into(),
            ));
        }
        let process_lock = lock_for_one_process(&path)?;
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(pool.max_connections.clamp(1, 4))
            .acquire_timeout(pool.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            group_commit: GroupCommit::new(CREATE_LANES, CREATE_BATCH),
            _process_lock: process_lock,
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Begins a write transaction, holding the database's write lock.
async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, StoreError> {
    let waiting = std::time::Instant::now();
    let tx = pool.begin_with(BEGIN_WRITE).await?;
    crate::telemetry::metric::db_begin_wait(waiting.elapsed());
    Ok(tx)
}

/// Runs `$body` (which uses the transaction `$tx`) in a `BEGIN IMMEDIATE` transaction and
/// commits, or rolls back on an error. Writers are serialized, so no unique-key race is left to
/// retry.
macro_rules! in_write_tx {
    ($store:expr, $tx:ident, $body:expr) => {{
        let mut $tx = begin_write(&$store.pool).await?;
        match $body.await {
            Ok(value) => {
                $tx.commit().await?;
                Ok(value)
            }
            // Roll back now: a dropped transaction's ROLLBACK waits for the connection's next
            // use, and until then it holds the database's write lock.
            Err(err) => {
                let _ = $tx.rollback().await;
                Err(err)
            }
        }
    }};
}

impl InsertSnapshots for Transaction<'_, Sqlite> {
    async fn insert_snapshots(
        &mut self,
        snapshots: &[(&Snapshot, &CreateSnapshotCommand)],
    ) -> Result<(), StoreError> {
        for (snapshot, command) in snapshots {
            insert_snapshot(self, snapshot, command).await?;
        }
        Ok(())
    }
}

// The whole database is held from `BEGIN IMMEDIATE`: the batch's reads are the one-call reads,
// in an order that cannot wait on anyone.
impl CreateBatchReads for Transaction<'_, Sqlite> {
    async fn lock_free_and_read(
        &mut self,
        commands: &[&CreateSnapshotCommand],
    ) -> Result<Vec<BatchRead>, StoreError> {
        let mut reads = Vec::with_capacity(commands.len());
        for command in commands {
            reads.push(match self.lock_and_read(command).await {
                Ok(Some(read)) => BatchRead::Locked(Box::new(Ok(read))),
                Ok(None) => BatchRead::Missing,
                Err(StoreError::Corrupt(detail)) => {
                    BatchRead::Locked(Box::new(Err(StoreError::Corrupt(detail))))
                }
                Err(err) => return Err(err),
            });
        }
        Ok(reads)
    }
}

async fn insert_snapshot(
    tx: &mut Transaction<'_, Sqlite>,
    snapshot: &Snapshot,
    command: &CreateSnapshotCommand,
) -> Result<(), StoreError> {
    sqlx::query(INSERT_SNAPSHOT_SQL)
        .bind(&snapshot.snapshot_id)
        .bind(&snapshot.account_id)
        .bind(&snapshot.source_disk_id)
        .bind(snapshot.snapshot_name.as_deref())
        .bind(&snapshot.description)
        .bind(snapshot.source_disk_size_gib)
        .bind(snapshot.source_disk_type.as_str())
        .bind(snapshot.status.as_str())
        .bind(snapshot.created_at)
        .bind(snapshot.started_at)
        .bind(snapshot.copy_due_at)
        .bind(snapshot.retention.as_i32())
        .bind(snapshot.retention.release_at(snapshot.created_at))
        .execute(&mut **tx)
        .await?;
    for tag in &snapshot.tags {
        sqlx::query(INSERT_TAG_SQL)
            .bind(&snapshot.snapshot_id)
            .bind(&tag.key)
            .bind(&tag.value)
            .execute(&mut **tx)
            .await?;
    }
    if let Some(token) = &command.client_token {
        sqlx::query(INSERT_TOKEN_SQL)
            .bind(&snapshot.account_id)
            .bind(token.as_str())
            .bind(command.fingerprint())
            .bind(&snapshot.snapshot_id)
            .bind(snapshot.created_at)
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query(COUNT_SNAPSHOT_SQL)
        .bind(&snapshot.source_disk_id)
        .bind(&snapshot.snapshot_id)
        .bind(snapshot.started_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl_store!(
    SqliteStore,
    Sqlite,
    "sqlite",
    "./migrations/sqlite",
    for_sqlite
);

/// Takes an exclusive lock on `<database>.lock`, refusing a second server on the same file.
fn lock_for_one_process(database: &Path) -> Result<File, StoreError> {
    let mut lock_path = database.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| {
            StoreError::Unsupported(format!("cannot open {}: {e}", lock_path.display()))
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Unsupported(format!(
            "another snapshotd is already serving {}; the embedded SQLite store allows one \
             server process per database file: run replicas on PostgreSQL",
            database.display()
        ))),
        Err(TryLockError::Error(e)) => Err(StoreError::Unsupported(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}
