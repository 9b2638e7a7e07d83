//! The embedded SQLite store: the zero-setup default, one process per database file.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`, which takes the database's write lock
//! before the first read, so one request's lock-check-insert is serialized exactly as PostgreSQL
//! serializes it per disk (here: per database). WAL keeps readers off the writer's back.

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::create_flow::{CreateTx, decide_and_write};
use super::lifecycle_flow::{self, Dialect, describe_on, impl_lifecycle_tx};
use super::lifecycle_sql;
use super::rows::{
    AccountRow, CallerRow, DiskRow, InstanceRow, LockedDiskRow, OptionalTokenColumns,
    join_lock_reasons,
};
use super::{CreateOutcome, SnapshotPage, SnapshotQuery, Store, StoreError, WorkDone};
use crate::backend::SnapshotBackend;
use crate::domain::{
    Account, CreateImageCommand, CreateSnapshotCommand, Disk, Instance, Snapshot, Timestamp,
};
use crate::engine::{
    CreateState, Policy, RuleError, TokenBinding, check_account_exists, check_disk_attachment,
    check_disk_reassignment, check_instance_reassignment,
};

const LOCK_AND_READ_SQL: &str = "\
SELECT d.disk_id, d.account_id, d.category, d.disk_type, d.status, d.instance_id, d.size_gib,
       d.created_at, d.expires_at, d.ever_attached,
       d.snapshot_count, d.progressing_snapshot_id, d.progressing_since,
       a.account_id AS acct_id, a.snapshot_service_activated AS acct_snapshot_service_activated,
       a.insufficient_balance AS acct_insufficient_balance,
       i.instance_id AS inst_id, i.account_id AS inst_account_id, i.status AS inst_status,
       i.created_at AS inst_created_at, i.last_started_at AS inst_last_started_at,
       i.lock_reasons AS inst_lock_reasons,
       t.fingerprint AS token_fingerprint, t.snapshot_id AS token_snapshot_id
FROM disks d
LEFT JOIN accounts a ON a.account_id = d.account_id
LEFT JOIN instances i ON i.instance_id = d.instance_id
LEFT JOIN client_tokens t ON t.account_id = d.account_id AND t.client_token = ?3
WHERE d.disk_id = ?1 AND d.account_id = ?2";

const READ_CALLER_SQL: &str = "\
SELECT a.account_id AS acct_id, a.snapshot_service_activated AS acct_snapshot_service_activated,
       a.insufficient_balance AS acct_insufficient_balance,
       t.fingerprint AS token_fingerprint, t.snapshot_id AS token_snapshot_id
FROM (SELECT ?1 AS account_id) caller
LEFT JOIN accounts a ON a.account_id = caller.account_id
LEFT JOIN client_tokens t ON t.account_id = caller.account_id AND t.client_token = ?2";

const READ_TOKEN_SQL: &str = "\
SELECT fingerprint AS token_fingerprint, snapshot_id AS token_snapshot_id
FROM client_tokens WHERE account_id = ?1 AND client_token = ?2";

const INSERT_SNAPSHOT_SQL: &str = "\
INSERT INTO snapshots (snapshot_id, account_id, source_disk_id, snapshot_name, description,
                       source_disk_size_gib, source_disk_type, status, created_at, started_at,
                       last_modified_at, copy_due_at, retention_days, release_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?9, ?11, ?12, ?13)";

const INSERT_TOKEN_SQL: &str = "\
INSERT INTO client_tokens (account_id, client_token, fingerprint, snapshot_id, created_at)
VALUES (?1, ?2, ?3, ?4, ?5)";

const COUNT_SNAPSHOT_SQL: &str = "\
UPDATE disks
SET snapshot_count = snapshot_count + 1, progressing_snapshot_id = ?2, progressing_since = ?3
WHERE disk_id = ?1";

const UPSERT_ACCOUNT_SQL: &str = "\
INSERT INTO accounts (account_id, snapshot_service_activated, insufficient_balance)
VALUES (?1, ?2, ?3)
ON CONFLICT (account_id) DO UPDATE
SET snapshot_service_activated = excluded.snapshot_service_activated,
    insufficient_balance = excluded.insufficient_balance
RETURNING account_id, snapshot_service_activated, insufficient_balance";

const UPSERT_INSTANCE_SQL: &str = "\
INSERT INTO instances (instance_id, account_id, status, created_at, last_started_at, lock_reasons)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)
ON CONFLICT (instance_id) DO UPDATE
SET account_id = excluded.account_id, status = excluded.status, created_at = excluded.created_at,
    last_started_at = excluded.last_started_at, lock_reasons = excluded.lock_reasons
RETURNING instance_id, account_id, status, created_at, last_started_at, lock_reasons";

const UPSERT_DISK_SQL: &str = "\
INSERT INTO disks (disk_id, account_id, category, disk_type, status, instance_id, size_gib,
                   created_at, expires_at, ever_attached)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (disk_id) DO UPDATE
SET account_id = excluded.account_id, category = excluded.category,
    disk_type = excluded.disk_type, status = excluded.status, instance_id = excluded.instance_id,
    size_gib = excluded.size_gib, created_at = excluded.created_at,
    expires_at = excluded.expires_at, ever_attached = excluded.ever_attached
RETURNING disk_id, account_id, category, disk_type, status, instance_id, size_gib, created_at,
          expires_at, ever_attached";

const SELECT_DISK_SQL: &str = "\
SELECT disk_id, account_id, category, disk_type, status, instance_id, size_gib, created_at,
       expires_at, ever_attached
FROM disks WHERE disk_id = ?1";

const FOREIGN_DISK_ON_INSTANCE_SQL: &str =
    "SELECT disk_id FROM disks WHERE instance_id = ?1 AND account_id <> ?2 LIMIT 1";

const DISK_OWNER_SQL: &str = "SELECT account_id, snapshot_count FROM disks WHERE disk_id = ?1";

const ANY_ACCOUNT_SQL: &str = "SELECT account_id FROM accounts LIMIT 1";

const SELECT_ACCOUNT_EXISTS_SQL: &str = "SELECT account_id FROM accounts WHERE account_id = ?1";

const SELECT_INSTANCE_ACCOUNT_SQL: &str = "SELECT account_id FROM instances WHERE instance_id = ?1";

const DIALECT: Dialect = Dialect::SQLITE;

/// Transactions on SQLite never lose a unique-key race (writers are serialized), but CreateImage
/// shares its retry loop with PostgreSQL's.
const CONFLICT_ATTEMPTS: usize = 1;

impl_lifecycle_tx!(Sqlite, DIALECT);

/// Takes the write lock at the start, so reads inside the transaction are the state it writes on.
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

pub struct SqliteStore {
    pool: SqlitePool,
    /// Held for the life of the store: a second server on the same file would break the
    /// serialization `BEGIN IMMEDIATE` gives within one process's pool.
    _process_lock: File,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file named by a `sqlite://PATH` URL.
    pub async fn connect(database_url: &str) -> Result<Self, StoreError> {
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
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            _process_lock: process_lock,
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with(BEGIN_WRITE).await?)
    }
}

/// One CreateSnapshot transaction on SQLite.
struct SqliteCreateTx<'t>(&'t mut Transaction<'static, Sqlite>);

impl SqliteCreateTx<'_> {
    fn conn(&mut self) -> &mut SqliteConnection {
        &mut *self.0
    }
}

impl CreateTx for SqliteCreateTx<'_> {
    async fn lock_and_read(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<Option<(CreateState, Option<TokenBinding>)>, StoreError> {
        let row: Option<LockedDiskRow> = sqlx::query_as(LOCK_AND_READ_SQL)
            .bind(command.disk_id.as_str())
            .bind(&command.account_id)
            .bind(command.client_token.as_ref().map(|t| t.as_str()))
            .fetch_optional(self.conn())
            .await?;
        row.map(LockedDiskRow::into_parts).transpose()
    }

    async fn read_caller(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<(CreateState, Option<TokenBinding>), StoreError> {
        let row: CallerRow = sqlx::query_as(READ_CALLER_SQL)
            .bind(&command.account_id)
            .bind(command.client_token.as_ref().map(|t| t.as_str()))
            .fetch_one(self.conn())
            .await?;
        Ok(row.into_parts())
    }

    async fn read_token(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<Option<TokenBinding>, StoreError> {
        let row: Option<OptionalTokenColumns> = sqlx::query_as(READ_TOKEN_SQL)
            .bind(&command.account_id)
            .bind(command.client_token.as_ref().map(|t| t.as_str()))
            .fetch_optional(self.conn())
            .await?;
        Ok(row.and_then(OptionalTokenColumns::into_binding))
    }

    async fn insert(
        &mut self,
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
            .execute(self.conn())
            .await?;
        let insert_tag = lifecycle_sql::for_sqlite(lifecycle_sql::INSERT_TAG);
        for tag in &snapshot.tags {
            sqlx::query(&insert_tag)
                .bind(&snapshot.snapshot_id)
                .bind(&tag.key)
                .bind(&tag.value)
                .execute(self.conn())
                .await?;
        }
        if let Some(token) = &command.client_token {
            sqlx::query(INSERT_TOKEN_SQL)
                .bind(&snapshot.account_id)
                .bind(token.as_str())
                .bind(command.fingerprint())
                .bind(&snapshot.snapshot_id)
                .bind(snapshot.created_at)
                .execute(self.conn())
                .await?;
        }
        sqlx::query(COUNT_SNAPSHOT_SQL)
            .bind(&snapshot.source_disk_id)
            .bind(&snapshot.snapshot_id)
            .bind(snapshot.started_at)
            .execute(self.conn())
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        let any: Option<(String,)> = sqlx::query_as(ANY_ACCOUNT_SQL)
            .fetch_optional(&self.pool)
            .await?;
        Ok(any.is_none())
    }

    async fn put_account(&self, account: &Account) -> Result<Account, StoreError> {
        let row: AccountRow = sqlx::query_as(UPSERT_ACCOUNT_SQL)
            .bind(&account.account_id)
            .bind(account.snapshot_service_activated)
            .bind(account.insufficient_balance)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.into())
    }

    async fn put_instance(&self, instance: &Instance) -> Result<Instance, StoreError> {
        let mut tx = self.begin_write().await?;
        require_account(&mut tx, &instance.account_id).await?;
        let foreign: Option<(String,)> = sqlx::query_as(FOREIGN_DISK_ON_INSTANCE_SQL)
            .bind(&instance.instance_id)
            .bind(&instance.account_id)
            .fetch_optional(&mut *tx)
            .await?;
        check_instance_reassignment(
            &instance.instance_id,
            foreign.as_ref().map(|(disk_id,)| disk_id.as_str()),
        )?;
        let row: InstanceRow = sqlx::query_as(UPSERT_INSTANCE_SQL)
            .bind(&instance.instance_id)
            .bind(&instance.account_id)
            .bind(instance.status.as_str())
            .bind(instance.created_at)
            .bind(instance.last_started_at)
            .bind(join_lock_reasons(&instance.lock_reasons))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        row.try_into()
    }

    async fn put_disk(&self, disk: &Disk) -> Result<Disk, StoreError> {
        let mut tx = self.begin_write().await?;
        require_account(&mut tx, &disk.account_id).await?;
        let stored: Option<(String, i32)> = sqlx::query_as(DISK_OWNER_SQL)
            .bind(&disk.disk_id)
            .fetch_optional(&mut *tx)
            .await?;
        let (stored_owner, snapshot_count) = stored.unzip();
        check_disk_reassignment(
            disk,
            stored_owner.as_deref(),
            snapshot_count.map_or(0, i64::from),
        )?;
        if let Some(instance_id) = &disk.instance_id {
            let owner: Option<(String,)> = sqlx::query_as(SELECT_INSTANCE_ACCOUNT_SQL)
                .bind(instance_id)
                .fetch_optional(&mut *tx)
                .await?;
            check_disk_attachment(disk, instance_id, owner.map(|(owner,)| owner).as_deref())?;
        }
        let row: DiskRow = sqlx::query_as(UPSERT_DISK_SQL)
            .bind(&disk.disk_id)
            .bind(&disk.account_id)
            .bind(disk.category.as_str())
            .bind(disk.disk_type.as_str())
            .bind(disk.status.as_str())
            .bind(disk.instance_id.as_deref())
            .bind(disk.size_gib)
            .bind(disk.created_at)
            .bind(disk.expires_at)
            .bind(disk.ever_attached)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        row.try_into()
    }

    async fn get_disk(&self, disk_id: &str) -> Result<Disk, StoreError> {
        let row: Option<DiskRow> = sqlx::query_as(SELECT_DISK_SQL)
            .bind(disk_id)
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or_else(|| {
            RuleError::InvalidDiskIdNotFound {
                disk_id: disk_id.to_owned(),
            }
            .into()
        })
        .and_then(Disk::try_from)
    }

    async fn create_snapshot(
        &self,
        command: &CreateSnapshotCommand,
        policy: &Policy,
        now: Timestamp,
        backend: &dyn SnapshotBackend,
    ) -> Result<CreateOutcome, StoreError> {
        // BEGIN IMMEDIATE serializes writers, so no unique-key race is left to retry.
        let mut tx = self.begin_write().await?;
        let outcome =
            decide_and_write(&mut SqliteCreateTx(&mut tx), command, policy, now, backend).await?;
        if matches!(outcome, CreateOutcome::Created { .. }) {
            tx.commit().await?;
        }
        Ok(outcome)
    }

    async fn describe_snapshots(&self, query: &SnapshotQuery) -> Result<SnapshotPage, StoreError> {
        describe_on!(&self.pool, DIALECT, query)
    }

    async fn delete_snapshot(
        &self,
        account_id: &str,
        snapshot_id: &str,
        force: bool,
        _now: Timestamp,
        backend: &dyn SnapshotBackend,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        lifecycle_flow::delete(&mut tx, account_id, snapshot_id, force, backend).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_image(
        &self,
        command: &CreateImageCommand,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        let mut attempt = 1;
        loop {
            let mut tx = self.begin_write().await?;
            let result = match lifecycle_flow::create_image(&mut tx, command, now).await {
                Ok(created @ CreateOutcome::Created { .. }) => tx
                    .commit()
                    .await
                    .map(|()| created)
                    .map_err(StoreError::from),
                other => other,
            };
            match result {
                Err(StoreError::Conflict(_)) if attempt < CONFLICT_ATTEMPTS => attempt += 1,
                result => return result,
            }
        }
    }

    async fn advance_copies(
        &self,
        now: Timestamp,
        limit: u32,
        backend: &dyn SnapshotBackend,
    ) -> Result<WorkDone, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = lifecycle_flow::advance_copies(&mut tx, now, limit, backend).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn release_expired(
        &self,
        now: Timestamp,
        limit: u32,
        backend: &dyn SnapshotBackend,
    ) -> Result<WorkDone, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = lifecycle_flow::release_expired(&mut tx, now, limit, backend).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

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

async fn require_account(
    tx: &mut Transaction<'static, Sqlite>,
    account_id: &str,
) -> Result<(), StoreError> {
    let found: Option<(String,)> = sqlx::query_as(SELECT_ACCOUNT_EXISTS_SQL)
        .bind(account_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(check_account_exists(account_id, found.is_some())?)
}
