//! The PostgreSQL store: production, several replicas on one database.
//!
//! CreateSnapshot is four round trips: `BEGIN`; one statement that locks the disk row
//! (`FOR UPDATE OF d`) and reads everything the engine needs; one statement that inserts the
//! snapshot and the token binding and updates the disk's bookkeeping; `COMMIT`. Requests for
//! different disks never wait for each other.

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::str::FromStr;
use std::time::Duration;

use super::create_flow::{CreateTx, decide_and_write};
use super::lifecycle_flow::{self, Dialect, describe_on, impl_lifecycle_tx};
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

const DIALECT: Dialect = Dialect::POSTGRES;

impl_lifecycle_tx!(Postgres, DIALECT);

/// How often a CreateSnapshot transaction is retried after losing a unique-key race.
const CONFLICT_ATTEMPTS: usize = 3;

pub(crate) const LOCK_AND_READ_SQL: &str = "\
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
LEFT JOIN client_tokens t ON t.account_id = d.account_id AND t.client_token = $3
WHERE d.disk_id = $1 AND d.account_id = $2
FOR UPDATE OF d";

const READ_CALLER_SQL: &str = "\
SELECT a.account_id AS acct_id, a.snapshot_service_activated AS acct_snapshot_service_activated,
       a.insufficient_balance AS acct_insufficient_balance,
       t.fingerprint AS token_fingerprint, t.snapshot_id AS token_snapshot_id
FROM (SELECT $1::text AS account_id) caller
LEFT JOIN accounts a ON a.account_id = caller.account_id
LEFT JOIN client_tokens t ON t.account_id = caller.account_id AND t.client_token = $2";

const READ_TOKEN_SQL: &str = "\
SELECT fingerprint AS token_fingerprint, snapshot_id AS token_snapshot_id
FROM client_tokens WHERE account_id = $1 AND client_token = $2";

pub(crate) const INSERT_SNAPSHOT_SQL: &str = "\
WITH new_snapshot AS (
    INSERT INTO snapshots (snapshot_id, account_id, source_disk_id, snapshot_name, description,
                           source_disk_size_gib, source_disk_type, status, created_at, started_at,
                           last_modified_at, copy_due_at, retention_days, release_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9, $13, $14, $15)
), binding AS (
    INSERT INTO client_tokens (account_id, client_token, fingerprint, snapshot_id, created_at)
    SELECT $2, $11, $12, $1, $9 WHERE $11::text IS NOT NULL
), tags AS (
    INSERT INTO snapshot_tags (snapshot_id, key, value)
    SELECT $1, tag.key, tag.value FROM UNNEST($16::text[], $17::text[]) AS tag (key, value)
)
UPDATE disks
SET snapshot_count = snapshot_count + 1, progressing_snapshot_id = $1, progressing_since = $10
WHERE disk_id = $3";

const UPSERT_ACCOUNT_SQL: &str = "\
INSERT INTO accounts (account_id, snapshot_service_activated, insufficient_balance)
VALUES ($1, $2, $3)
ON CONFLICT (account_id) DO UPDATE
SET snapshot_service_activated = EXCLUDED.snapshot_service_activated,
    insufficient_balance = EXCLUDED.insufficient_balance
RETURNING account_id, snapshot_service_activated, insufficient_balance";

const UPSERT_INSTANCE_SQL: &str = "\
INSERT INTO instances (instance_id, account_id, status, created_at, last_started_at, lock_reasons)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (instance_id) DO UPDATE
SET account_id = EXCLUDED.account_id, status = EXCLUDED.status, created_at = EXCLUDED.created_at,
    last_started_at = EXCLUDED.last_started_at, lock_reasons = EXCLUDED.lock_reasons
RETURNING instance_id, account_id, status, created_at, last_started_at, lock_reasons";

const UPSERT_DISK_SQL: &str = "\
INSERT INTO disks (disk_id, account_id, category, disk_type, status, instance_id, size_gib,
                   created_at, expires_at, ever_attached)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (disk_id) DO UPDATE
SET account_id = EXCLUDED.account_id, category = EXCLUDED.category,
    disk_type = EXCLUDED.disk_type, status = EXCLUDED.status, instance_id = EXCLUDED.instance_id,
    size_gib = EXCLUDED.size_gib, created_at = EXCLUDED.created_at,
    expires_at = EXCLUDED.expires_at, ever_attached = EXCLUDED.ever_attached
RETURNING disk_id, account_id, category, disk_type, status, instance_id, size_gib, created_at,
          expires_at, ever_attached";

const SELECT_DISK_SQL: &str = "\
SELECT disk_id, account_id, category, disk_type, status, instance_id, size_gib, created_at,
       expires_at, ever_attached
FROM disks WHERE disk_id = $1";

const FOREIGN_DISK_ON_INSTANCE_SQL: &str =
    "SELECT disk_id FROM disks WHERE instance_id = $1 AND account_id <> $2 LIMIT 1";

const DISK_OWNER_SQL: &str = "SELECT account_id, snapshot_count FROM disks WHERE disk_id = $1";

const ANY_ACCOUNT_SQL: &str = "SELECT account_id FROM accounts LIMIT 1";

const SELECT_ACCOUNT_EXISTS_SQL: &str = "SELECT account_id FROM accounts WHERE account_id = $1";

const SELECT_INSTANCE_ACCOUNT_SQL: &str = "SELECT account_id FROM instances WHERE instance_id = $1";

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(database_url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(database_url)
            .map_err(StoreError::Database)?
            .application_name("snapshotd");
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// One CreateSnapshot transaction on PostgreSQL.
struct PgCreateTx<'t>(&'t mut Transaction<'static, Postgres>);

impl PgCreateTx<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        &mut *self.0
    }
}

impl CreateTx for PgCreateTx<'_> {
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
            .bind(command.client_token.as_ref().map(|t| t.as_str()))
            .bind(command.fingerprint())
            .bind(snapshot.copy_due_at)
            .bind(snapshot.retention.as_i32())
            .bind(snapshot.retention.release_at(snapshot.created_at))
            .bind(
                snapshot
                    .tags
                    .iter()
                    .map(|t| t.key.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                snapshot
                    .tags
                    .iter()
                    .map(|t| t.value.clone())
                    .collect::<Vec<_>>(),
            )
            .execute(self.conn())
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut attempt = 1;
        loop {
            let mut tx = self.pool.begin().await?;
            let result =
                decide_and_write(&mut PgCreateTx(&mut tx), command, policy, now, backend).await;
            let result = match result {
                Ok(created @ CreateOutcome::Created { .. }) => tx
                    .commit()
                    .await
                    .map(|()| created)
                    .map_err(StoreError::from),
                other => other, // refusals and replays wrote nothing: drop rolls back
            };
            match result {
                Err(StoreError::Conflict(_)) if attempt < CONFLICT_ATTEMPTS => attempt += 1,
                result => return result,
            }
        }
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
        let mut tx = self.pool.begin().await?;
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
            let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
        let done = lifecycle_flow::release_expired(&mut tx, now, limit, backend).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

async fn require_account(
    tx: &mut Transaction<'static, Postgres>,
    account_id: &str,
) -> Result<(), StoreError> {
    let found: Option<(String,)> = sqlx::query_as(SELECT_ACCOUNT_EXISTS_SQL)
        .bind(account_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(check_account_exists(account_id, found.is_some())?)
}
