//! The PostgreSQL store: production, several replicas on one database.
//!
//! CreateSnapshot is four round trips: `BEGIN`; one statement that locks the disk row
//! (`FOR UPDATE OF d`) and reads everything the engine needs; one statement that inserts the
//! snapshot, its tags and the token binding and updates the disk's bookkeeping; `COMMIT`.
//! (sqlx adds a ping when the connection goes back to the pool, after the call's answer is
//! decided; `tests/api/round_trips.rs` counts them on the wire.)
//! Requests for different disks never wait for each other.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use super::create_flow::{InsertSnapshot, decide_and_write};
use super::inventory_flow::{self, InventoryTx, impl_shared_tx};
use super::lifecycle_flow::{self, Dialect, describe_on, impl_lifecycle_tx};
use super::store_impl::impl_store;
use super::{CreateOutcome, PoolOptions, SnapshotPage, SnapshotQuery, StoreError, WorkDone};
use crate::backend::SnapshotBackend;
use crate::domain::{
    Account, CreateImageCommand, CreateSnapshotCommand, Disk, Instance, Snapshot, Timestamp,
};
use crate::engine::{Policy, RuleError};

const DIALECT: Dialect = Dialect::POSTGRES;

/// What PostgreSQL appends to [`LOCK_AND_READ`](super::shared_sql::LOCK_AND_READ): the disk row
/// lock that serializes CreateSnapshot per disk.
pub(crate) const LOCK_DISK: &str = " FOR UPDATE OF d";

impl_shared_tx!(Postgres, str::to_owned, LOCK_DISK);
impl_lifecycle_tx!(Postgres, DIALECT);

/// A pooled connection idle longer than this is pinged before it is used.
const PING_IDLE_CONNECTIONS_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a transaction is retried after losing a unique-key race (a client token taken by a
/// concurrent request); the retry then sees the winner's binding.
const CONFLICT_ATTEMPTS: usize = 3;

/// The snapshot, its tags and its token binding, and the disk's bookkeeping, in one statement.
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

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(database_url: &str, pool: PoolOptions) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(database_url)
            .map_err(StoreError::Database)?
            .application_name("snapshotd");
        let pool = PgPoolOptions::new()
            .max_connections(pool.max_connections)
            .acquire_timeout(pool.acquire_timeout)
            // sqlx pings every connection it hands out: one more round trip in front of every
            // transaction. It already pings each connection given back (off the call's path),
            // so only a connection idle for a while, which the server or a proxy may have
            // dropped, is pinged before use.
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IDLE_CONNECTIONS_AFTER {
                        sqlx::Connection::ping(connection).await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Runs `$body` (which uses the transaction `$tx`) and commits, or rolls back on an error;
/// retries a lost unique-key race.
macro_rules! in_write_tx {
    ($store:expr, $tx:ident, $body:expr) => {{
        let mut attempt = 1;
        loop {
            let waiting = std::time::Instant::now();
            let mut $tx = $store.pool.begin().await?;
            $crate::telemetry::metric::db_begin_wait(waiting.elapsed());
            let result = match $body.await {
                Ok(value) => $tx.commit().await.map(|()| value).map_err(StoreError::from),
                // Roll back now: a dropped transaction's ROLLBACK waits for the connection's
                // next use, and until then it keeps its row locks.
                Err(err) => {
                    let _ = $tx.rollback().await;
                    Err(err)
                }
            };
            match result {
                Err(StoreError::Conflict(_)) if attempt < CONFLICT_ATTEMPTS => attempt += 1,
                result => break result,
            }
        }
    }};
}

impl InsertSnapshot for Transaction<'_, Postgres> {
    async fn insert_snapshot(
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
            .execute(&mut **self)
            .await?;
        Ok(())
    }
}

impl_store!(PgStore, "postgres", "./migrations/postgres", str::to_owned);
