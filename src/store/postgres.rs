//! The PostgreSQL store: production, several replicas on one database.
//!
//! CreateSnapshot is four round trips: `BEGIN`; one statement that locks the disk rows
//! (`FOR UPDATE OF d SKIP LOCKED`) and reads everything the engine needs; one statement that
//! inserts the snapshots, their tags and token bindings and updates the disks' bookkeeping;
//! `COMMIT`. Both statements take arrays, so under load one transaction writes a batch of calls
//! ([`GroupCommit`]). A call the batch cannot settle runs alone with
//! [`LOCK_AND_READ`](super::shared_sql::LOCK_AND_READ) and a plain `FOR UPDATE OF d`, which
//! waits for the lock. (sqlx adds a ping when the connection goes back to the pool, after the
//! call's answer is decided; `tests/api/round_trips.rs` counts them on the wire.) Requests for
//! different disks never wait for each other.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{FromRow, PgPool, Postgres, Row, Transaction};

use super::create_flow::{BatchRead, CreateBatchReads, InsertSnapshots, decide_and_write};
use super::group_commit::GroupCommit;
use super::inventory_flow::{self, InventoryTx, impl_shared_tx};
use super::lifecycle_flow::{self, Dialect, describe_on, impl_lifecycle_tx};
use super::rows::LockedDiskRow;
use super::shared_sql::{create_state_columns, create_state_joins};
use super::store_impl::impl_store;
use super::{
    CONFLICT_ATTEMPTS, CreateOutcome, PoolOptions, SnapshotPage, SnapshotQuery, StoreError,
    WorkDone,
};
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

/// Locks the disks of a batch of CreateSnapshot calls that no other transaction holds, in disk
/// order, and reads what the engine needs for each: arrays of disk ids `$1`, callers `$2` and
/// tokens `$3`, one element per call. One row per call (`requested`, 1-based): with the
/// engine's columns when its disk was locked; without them (`request_index` is NULL) when the
/// disk is locked elsewhere (`disk_exists`) or is not the caller's.
pub const LOCK_FREE_DISKS_AND_READ: &str = concat!(
    "WITH req AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY
        AS r (disk_id, account_id, client_token, n)
), locked AS MATERIALIZED (
    SELECT req.n AS request_index, ",
    create_state_columns!(),
    "
    FROM req
    JOIN disks d ON d.disk_id = req.disk_id AND d.account_id = req.account_id",
    create_state_joins!("req.client_token"),
    "
    ORDER BY d.disk_id
    FOR UPDATE OF d SKIP LOCKED
)
SELECT req.n AS requested,
       EXISTS (SELECT 1 FROM disks x WHERE x.disk_id = req.disk_id AND x.account_id = req.account_id)
           AS disk_exists,
       locked.*
FROM req LEFT JOIN locked ON locked.request_index = req.n"
);

/// Snapshots with their tags and token bindings, and their disks' bookkeeping, in one
/// statement: arrays with one element per snapshot (`$1`–`$15`), and the tags flattened
/// (`$16` snapshot ids, `$17` keys, `$18` values).
pub const INSERT_SNAPSHOTS_SQL: &str = "\
WITH new AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::int4[], $7::text[], $8::text[], $9::timestamptz[],
                         $10::timestamptz[], $11::text[], $12::text[], $13::timestamptz[],
                         $14::int4[], $15::timestamptz[])
        AS s (snapshot_id, account_id, source_disk_id, snapshot_name, description,
              source_disk_size_gib, source_disk_type, status, created_at, started_at,
              client_token, fingerprint, copy_due_at, retention_days, release_at)
), new_snapshots AS (
    INSERT INTO snapshots (snapshot_id, account_id, source_disk_id, snapshot_name, description,
                           source_disk_size_gib, source_disk_type, status, created_at, started_at,
                           last_modified_at, copy_due_at, retention_days, release_at)
    SELECT snapshot_id, account_id, source_disk_id, snapshot_name, description,
           source_disk_size_gib, source_disk_type, status, created_at, started_at,
           created_at, copy_due_at, retention_days, release_at
    FROM new
), bindings AS (
    INSERT INTO client_tokens (account_id, client_token, fingerprint, snapshot_id, created_at)
    SELECT account_id, client_token, fingerprint, snapshot_id, created_at
    FROM new WHERE client_token IS NOT NULL
), tags AS (
    INSERT INTO snapshot_tags (snapshot_id, key, value)
    SELECT * FROM UNNEST($16::text[], $17::text[], $18::text[])
)
UPDATE disks d
SET snapshot_count = d.snapshot_count + 1, progressing_snapshot_id = new.snapshot_id,
    progressing_since = new.started_at
FROM new
WHERE d.disk_id = new.source_disk_id";

/// Create transactions at once, one per lane (see [`GroupCommit`]). The database's commit rate
/// peaks with few transactions in flight (pgbench here: at 8 clients already), and batches form
/// only while a lane is busy. Measured side by side on 2 cores (`bench/README.md`): 2 lanes beat
/// 4 at every load tried (16 and 64 in flight, 1 to 3 replicas), and 4 beat 8.
const CREATE_LANES: usize = 2;

/// Calls written in one create transaction at most.
const CREATE_BATCH: usize = 64;

pub struct PgStore {
    pool: PgPool,
    group_commit: GroupCommit,
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
        Ok(Self {
            pool,
            group_commit: GroupCommit::new(CREATE_LANES, CREATE_BATCH),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Begins a write transaction.
async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
    let waiting = std::time::Instant::now();
    let tx = pool.begin().await?;
    crate::telemetry::metric::db_begin_wait(waiting.elapsed());
    Ok(tx)
}

/// Runs `$body` (which uses the transaction `$tx`) and commits, or rolls back on an error;
/// retries a lost unique-key race.
macro_rules! in_write_tx {
    ($store:expr, $tx:ident, $body:expr) => {{
        let mut attempt = 1;
        loop {
            let mut $tx = begin_write(&$store.pool).await?;
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

impl InsertSnapshots for Transaction<'_, Postgres> {
    async fn insert_snapshots(
        &mut self,
        snapshots: &[(&Snapshot, &CreateSnapshotCommand)],
    ) -> Result<(), StoreError> {
        let column = |field: fn(&Snapshot, &CreateSnapshotCommand) -> Option<String>| {
            snapshots
                .iter()
                .map(|(snapshot, command)| field(snapshot, command))
                .collect::<Vec<_>>()
        };
        let timestamps = |field: fn(&Snapshot) -> Option<Timestamp>| {
            snapshots
                .iter()
                .map(|(snapshot, _)| field(snapshot))
                .collect::<Vec<_>>()
        };
        let integers = |field: fn(&Snapshot) -> i32| {
            snapshots
                .iter()
                .map(|(snapshot, _)| field(snapshot))
                .collect::<Vec<_>>()
        };
        let tags = snapshots.iter().flat_map(|(snapshot, _)| {
            snapshot
                .tags
                .iter()
                .map(|tag| (&snapshot.snapshot_id, &tag.key, &tag.value))
        });
        let (mut tag_snapshots, mut tag_keys, mut tag_values) = (vec![], vec![], vec![]);
        for (snapshot_id, key, value) in tags {
            tag_snapshots.push(snapshot_id.as_str());
            tag_keys.push(key.as_str());
            tag_values.push(value.as_str());
        }
        sqlx::query(INSERT_SNAPSHOTS_SQL)
            .bind(column(|s, _| Some(s.snapshot_id.clone())))
            .bind(column(|s, _| Some(s.account_id.clone())))
            .bind(column(|s, _| Some(s.source_disk_id.clone())))
            .bind(column(|s, _| s.snapshot_name.clone()))
            .bind(column(|s, _| Some(s.description.clone())))
            .bind(integers(|s| s.source_disk_size_gib))
            .bind(column(|s, _| Some(s.source_disk_type.as_str().to_owned())))
            .bind(column(|s, _| Some(s.status.as_str().to_owned())))
            .bind(timestamps(|s| Some(s.created_at)))
            .bind(timestamps(|s| Some(s.started_at)))
            .bind(column(|_, c| {
                c.client_token.as_ref().map(|t| t.as_str().to_owned())
            }))
            .bind(column(|_, c| {
                c.client_token.as_ref().map(|_| c.fingerprint())
            }))
            .bind(timestamps(|s| Some(s.copy_due_at)))
            .bind(integers(|s| s.retention.as_i32()))
            .bind(timestamps(|s| s.retention.release_at(s.created_at)))
            .bind(tag_snapshots)
            .bind(tag_keys)
            .bind(tag_values)
            .execute(&mut **self)
            .await?;
        Ok(())
    }
}

impl CreateBatchReads for Transaction<'_, Postgres> {
    async fn lock_free_and_read(
        &mut self,
        commands: &[&CreateSnapshotCommand],
    ) -> Result<Vec<BatchRead>, StoreError> {
        let disks: Vec<&str> = commands.iter().map(|c| c.disk_id.as_str()).collect();
        let callers: Vec<&str> = commands.iter().map(|c| c.account_id.as_str()).collect();
        let tokens: Vec<Option<&str>> = commands
            .iter()
            .map(|c| c.client_token.as_ref().map(|t| t.as_str()))
            .collect();
        let rows = sqlx::query(LOCK_FREE_DISKS_AND_READ)
            .bind(disks)
            .bind(callers)
            .bind(tokens)
            .fetch_all(&mut **self)
            .await?;
        let mut reads: Vec<Option<BatchRead>> = commands.iter().map(|_| None).collect();
        for row in rows {
            let requested: i64 = row.try_get("requested")?;
            let locked: Option<i64> = row.try_get("request_index")?;
            let read = match locked {
                Some(_) => BatchRead::Locked(Box::new(
                    LockedDiskRow::from_row(&row)
                        .map_err(StoreError::from)
                        .and_then(LockedDiskRow::into_parts),
                )),
                None if row.try_get("disk_exists")? => BatchRead::Busy,
                None => BatchRead::Missing,
            };
            let slot = usize::try_from(requested - 1)
                .ok()
                .and_then(|index| reads.get_mut(index))
                .ok_or_else(|| StoreError::Corrupt(format!("batch read row {requested}")))?;
            *slot = Some(read);
        }
        reads
            .into_iter()
            .map(|read| read.ok_or_else(|| StoreError::Corrupt("a call without its row".into())))
            .collect()
    }
}

impl_store!(
    PgStore,
    Postgres,
    "postgres",
    "./migrations/postgres",
    str::to_owned
);
