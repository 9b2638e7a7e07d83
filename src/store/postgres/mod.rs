//! The PostgreSQL store: production, several replicas on one database.
//!
//! CreateSnapshot is four round trips: `BEGIN`; one statement that locks the disk rows and
//! reads everything the engine needs; one statement that inserts the snapshots, their tags and
//! token bindings and updates the disks' bookkeeping; `COMMIT`. Both statements take arrays, so
//! under load one transaction writes a batch of calls (`service::group_commit`), and a batch's
//! read skips disks another transaction holds (`FOR UPDATE OF d SKIP LOCKED`). A call the
//! batch cannot settle runs alone with a plain `FOR UPDATE OF d`, which waits for the lock.
//! Requests for different disks never wait for each other. (sqlx pings a connection when it
//! goes back to the pool, so a write transaction's or a read's connection is kept for the next
//! session instead, `super::kept`; `tests/api/round_trips.rs` counts the round trips on the
//! wire.)
//!
//! Only a primary that takes writes is used. A new connection whose server is a standby in
//! recovery or a read-only primary is refused (after a failover, a proxy can route to the old
//! primary still in recovery, and it may lag the new one: not even reads are served from it),
//! and the pool's [`Fence`] closes the connections opened before a sign that the server behind
//! the address changed (`super::fence`).

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Column, Connection, PgConnection, Postgres, Row};

use super::fence::Fence;
use super::pooler::SessionConnection;
use super::rows::{LockedDiskRow, column};
use super::shared::{CREATE_STATE_COLUMNS, Dialect, SqlSession, SqlStore, create_state_joins};
use sqlx::postgres::PgListener;
use tokio::sync::mpsc;

use super::{
    BatchRead, ChangeFeed, FEED_BUFFER, FeedControl, FeedEvent, NonceSpend, PoolOptions, Setting,
    SnapshotChange, StoreError,
};
use crate::domain::{AccessKey, CreateSnapshotCommand, Snapshot, Timestamp};

pub type PgStore = SqlStore<Postgres>;

pub use super::shared::{Param, Statement};

/// DescribeSnapshots' one statement for `query` on PostgreSQL, as the store runs it. (The
/// bench's pgbench script runs this text.)
pub fn describe_snapshots_statement(query: &crate::domain::SnapshotQuery) -> Statement {
    super::shared::describe_snapshots_statement::<Postgres>(query)
}

/// A pooled connection idle longer than this is pinged before it is used.
const PING_IDLE_CONNECTIONS_AFTER: Duration = Duration::from_secs(10);

/// Opens a pool on the database of a `postgres://` URL.
pub async fn connect(database_url: &str, pool: PoolOptions) -> Result<PgStore, StoreError> {
    let mut options = PgConnectOptions::from_str(database_url)
        .map_err(StoreError::Database)?
        .application_name("snapshotd");
    let transaction_pooler = pool.transaction_pooler;
    if transaction_pooler {
        // No statement is prepared by name (`super::pooler`), so none is cached; and pgbouncer
        // refuses the `extra_float_digits` startup parameter unless told to ignore it (the
        // server's default serves: no value crosses the wire as float text).
        options = options.statement_cache_capacity(0).extra_float_digits(None);
    }
    let fence = Arc::new(Fence::default());
    let pool = PgPoolOptions::new()
        .max_connections(pool.max_connections)
        .acquire_timeout(pool.acquire_timeout)
        // One round trip per new connection, none per call. Refused, sqlx tries to connect
        // again until the acquire timeout: a call that arrives in a failover waits that long for
        // the new primary before it answers UNAVAILABLE.
        .after_connect(|connection, _| Box::pin(takes_writes(connection)))
        // sqlx pings every connection it hands out: one more round trip in front of every
        // transaction. It already pings each connection given back (off the call's path; a
        // session's is mostly kept instead, `super::kept`), so only a connection idle
        // for a while, which the server or a proxy may have dropped, is pinged before use.
        .test_before_acquire(false)
        .before_acquire({
            let fence = Arc::clone(&fence);
            move |connection, meta| {
                let fenced_off = fence.predates(meta.age);
                Box::pin(async move {
                    if fenced_off {
                        return Ok(false);
                    }
                    if meta.idle_for > PING_IDLE_CONNECTIONS_AFTER {
                        sqlx::Connection::ping(connection).await?;
                    }
                    Ok(true)
                })
            }
        })
        .after_release({
            let fence = Arc::clone(&fence);
            move |_, meta| {
                let keep = !fence.predates(meta.age);
                Box::pin(async move { Ok(keep) })
            }
        })
        .connect_with(options)
        .await?;
    let mut settings = Vec::new();
    for name in DURABILITY_SETTINGS {
        // The simple protocol: one exchange, which a transaction pooler keeps on one server.
        let value: String = sqlx::raw_sql(&format!("SHOW {name}"))
            .fetch_one(&pool)
            .await?
            .try_get(0)?;
        settings.push(Setting { name, value });
    }
    Ok(SqlStore::new(pool, settings, None)
        .behind_transaction_pooler(transaction_pooler)
        .fenced_by(fence))
}

/// Whether the server takes writes: `transaction_read_only` is on in a standby (in recovery) and
/// on a primary set `default_transaction_read_only`. One exchange of the simple protocol, which
/// a transaction pooler keeps on one server connection.
async fn takes_writes(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    // No parameters: sqlx sends it as a simple query.
    let read_only: String = sqlx::Executor::fetch_one(connection, "SHOW transaction_read_only")
        .await?
        .try_get(0)?;
    if read_only == "on" {
        return Err(sqlx::Error::Database(Box::new(TakesNoWrites)));
    }
    Ok(())
}

/// The server answered that it takes no writes ([`takes_writes`]): reported as the SQLSTATE a
/// write would have met there (25006 read_only_sql_transaction), so that it is classified and
/// fenced as that write's error would be.
#[derive(Debug)]
struct TakesNoWrites;

impl std::fmt::Display for TakesNoWrites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(sqlx::error::DatabaseError::message(self))
    }
}

impl std::error::Error for TakesNoWrites {}

impl sqlx::error::DatabaseError for TakesNoWrites {
    fn message(&self) -> &str {
        "the server takes no writes (transaction_read_only = on): a standby in recovery, or a \
         primary set read-only"
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed("25006"))
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
        sqlx::error::ErrorKind::Other
    }
}

/// What an acknowledged write's survival rests on, on the server: commits wait for the WAL's
/// flush (`synchronous_commit`), flushes reach the disk (`fsync`), and a torn page can be
/// repaired (`full_page_writes`).
const DURABILITY_SETTINGS: [&str; 3] = ["synchronous_commit", "fsync", "full_page_writes"];

/// A setting in `settings` that is `off` weakens the promise.
fn durability_warnings(settings: &[Setting]) -> Vec<String> {
    settings
        .iter()
        .filter(|setting| setting.value == "off")
        .map(|setting| {
            format!(
                "PostgreSQL has {} = off: an acknowledged snapshot can be lost in a crash of \
                 the database server's machine",
                setting.name
            )
        })
        .collect()
}

/// Locks the disks of a batch of CreateSnapshot calls that no other transaction holds, in disk
/// order, and reads what the engine needs for each: arrays of disk ids `$1`, callers `$2` and
/// tokens `$3`, one element per call. One row per call (`requested`, 1-based): with the
/// engine's columns when its disk was locked; without them (`request_index` is NULL) when the
/// disk is locked elsewhere (`disk_exists`) or is not the caller's. (The bench's pgbench script
/// runs this very text.)
pub fn lock_free_disks_and_read_sql() -> &'static str {
    // Built once: the text is the same for every batch.
    static TEXT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH req AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY
        AS r (disk_id, account_id, client_token, n)
), locked AS MATERIALIZED (
    SELECT req.n AS request_index, {CREATE_STATE_COLUMNS}
    FROM req
    JOIN disks d ON d.disk_id = req.disk_id AND d.account_id = req.account_id{joins}
    ORDER BY d.disk_id
    FOR UPDATE OF d SKIP LOCKED
)
SELECT req.n AS requested,
       EXISTS (SELECT 1 FROM disks x WHERE x.disk_id = req.disk_id AND x.account_id = req.account_id)
           AS disk_exists,
       locked.*
FROM req LEFT JOIN locked ON locked.request_index = req.n",
            joins = create_state_joins("req.client_token")
        )
    });
    &TEXT
}

/// One array parameter of [`INSERT_SNAPSHOTS_SQL`]: `field` of each snapshot and its command.
fn each<'s, T>(
    snapshots: &[(&'s Snapshot, &'s CreateSnapshotCommand)],
    field: impl Fn(&'s Snapshot, &'s CreateSnapshotCommand) -> T,
) -> Vec<T> {
    snapshots
        .iter()
        .map(|(snapshot, command)| field(snapshot, command))
        .collect()
}

/// Snapshots with their tags and token bindings, and their disks' bookkeeping, in one
/// statement: arrays with one element per snapshot (`$1`–`$15`), and the tags flattened
/// (`$16` snapshot ids, `$17` keys, `$18` values). (The bench's pgbench script runs this text.)
/// The accounts' counts follow by trigger at the statement's end (migration 0011).
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

/// Spends signature nonces, each with the key its request's signature was verified with: `$1`
/// key ids, `$2` nonces, `$3` accounts, `$4` secrets, one element per nonce (distinct pairs),
/// `$5` the new expiry and `$6` now. A nonce is recorded only while its key still holds that
/// secret and account (`key_current`), and only when it was never used or has expired
/// (`spent`). One row per nonce (`n`, 1-based); inserted in key order, so that two replicas'
/// batches wait for each other's nonces in one order and never deadlock.
pub const SPEND_NONCES_SQL: &str = "\
WITH asked AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
        AS a (access_key_id, nonce, account_id, access_key_secret, n)
), current_keys AS (
    SELECT asked.n, asked.access_key_id, asked.nonce
    FROM asked
    JOIN access_keys k ON k.access_key_id = asked.access_key_id
        AND k.account_id = asked.account_id
        AND k.access_key_secret = asked.access_key_secret
), spent AS (
    INSERT INTO signature_nonces (access_key_id, nonce, expires_at)
    SELECT access_key_id, nonce, $5 FROM current_keys ORDER BY access_key_id, nonce
    ON CONFLICT (access_key_id, nonce) DO UPDATE
    SET expires_at = EXCLUDED.expires_at
    WHERE signature_nonces.expires_at <= $6
    RETURNING access_key_id, nonce
)
SELECT asked.n, current_keys.n IS NOT NULL AS key_current, spent.nonce IS NOT NULL AS spent
FROM asked
LEFT JOIN current_keys ON current_keys.n = asked.n
LEFT JOIN spent ON spent.access_key_id = asked.access_key_id AND spent.nonce = asked.nonce
ORDER BY asked.n";

impl Dialect for Postgres {
    const KIND: &'static str = "postgres";
    /// The database's commit rate peaks with few transactions in flight (pgbench here: at 8
    /// clients already), and batches form only while a lane is busy. Measured side by side on
    /// 2 cores (`bench/README.md`): 2 lanes beat 4 at every load tried, and 4 beat 8.
    const CREATE_LANES: usize = 2;
    /// One per lane, the worker's and one more (`super::kept`).
    const KEEP_CONNECTIONS: usize = Self::CREATE_LANES + 2;
    /// Writers wait for the rows they lock, not for each other.
    const ONE_WRITER: bool = false;
    const LOCK_DISK: &'static str = "\nFOR UPDATE OF d";
    const LOCK_ROWS: &'static str = " FOR UPDATE";
    const CLAIM_ROWS: &'static str = " FOR UPDATE SKIP LOCKED";
    const BEGIN_WRITE: &'static str = "BEGIN";
    fn begin_batch(planned_once: bool, count_slot: usize) -> &'static str {
        begin_batch_sql(planned_once, count_slot)
    }
    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");
    const TABLE_NAMES: &'static str = "SELECT CAST(table_name AS text) FROM information_schema.tables \
         WHERE table_schema = current_schema() ORDER BY table_name";
    const SNAPSHOT_TAGS_JSON: &'static str = "(SELECT CAST(json_agg(json_build_array(t.key, t.value) \
         ORDER BY t.key) AS text) FROM snapshot_tags t WHERE t.snapshot_id = s.snapshot_id)";

    /// A `text[]` parameter.
    fn in_text_list(column: &str, placeholder: &str) -> String {
        format!("{column} = ANY(CAST({placeholder} AS text[]))")
    }

    type TextList = Vec<String>;

    fn text_list(list: Vec<String>) -> Vec<String> {
        list
    }

    /// Every id with every pair: the keys and values unnested side by side.
    const PUT_TAGS: &'static str = "INSERT INTO snapshot_tags (snapshot_id, key, value)
         SELECT i.id, t.key, t.value
         FROM unnest(CAST($1 AS text[])) AS i(id)
         CROSS JOIN unnest(CAST($2 AS text[]), CAST($3 AS text[])) AS t(key, value)
         ON CONFLICT (snapshot_id, key) DO UPDATE SET value = excluded.value";

    fn durability_warnings(settings: &[Setting]) -> Vec<String> {
        durability_warnings(settings)
    }

    async fn execute(
        connection: &mut PgConnection,
        statement: &'static str,
    ) -> Result<(), sqlx::Error> {
        sqlx::Executor::execute(connection, statement).await?;
        Ok(())
    }

    async fn ping(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
        takes_writes(connection).await
    }

    async fn lock_free_disks_and_read(
        session: &mut SqlSession<Postgres>,
        commands: &[&CreateSnapshotCommand],
    ) -> Result<Vec<BatchRead>, StoreError> {
        let disks: Vec<&str> = commands.iter().map(|c| c.disk_id.as_str()).collect();
        let callers: Vec<&str> = commands.iter().map(|c| c.account_id.as_str()).collect();
        let tokens: Vec<Option<&str>> = commands
            .iter()
            .map(|c| c.client_token.as_ref().map(|t| t.as_str()))
            .collect();
        let rows = sqlx::query(lock_free_disks_and_read_sql())
            .bind(disks)
            .bind(callers)
            .bind(tokens)
            .fetch_all(session.connection())
            .await?;
        let mut reads: Vec<Option<BatchRead>> = commands.iter().map(|_| None).collect();
        // By position: `requested`, `disk_exists`, `request_index`, then the locked row's.
        for row in rows {
            debug_assert!(row.columns().iter().take(3).map(Column::name).eq([
                "requested",
                "disk_exists",
                "request_index"
            ]));
            let requested: i64 = column(&row, 0)?;
            let locked: Option<i64> = column(&row, 2)?;
            let read = match locked {
                Some(_) => BatchRead::Locked(Box::new(
                    LockedDiskRow::from_columns(&row, 3)
                        .map_err(StoreError::from)
                        .and_then(LockedDiskRow::into_parts),
                )),
                None if column(&row, 1)? => BatchRead::Busy,
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

    async fn insert_snapshots(
        connection: SessionConnection<'_, Postgres>,
        snapshots: &[(&Snapshot, &CreateSnapshotCommand)],
    ) -> Result<(), StoreError> {
        let (mut tag_snapshots, mut tag_keys, mut tag_values) = (vec![], vec![], vec![]);
        for (snapshot, _) in snapshots {
            for tag in &snapshot.tags {
                tag_snapshots.push(snapshot.snapshot_id.as_str());
                tag_keys.push(tag.key.as_str());
                tag_values.push(tag.value.as_str());
            }
        }
        // Each array borrows its values from the snapshots: nothing is copied to be bound.
        sqlx::query(INSERT_SNAPSHOTS_SQL)
            .bind(each(snapshots, |s, _| s.snapshot_id.as_str()))
            .bind(each(snapshots, |s, _| s.account_id.as_str()))
            .bind(each(snapshots, |s, _| s.source_disk_id.as_str()))
            .bind(each(snapshots, |s, _| s.snapshot_name.as_deref()))
            .bind(each(snapshots, |s, _| s.description.as_str()))
            .bind(each(snapshots, |s, _| s.source_disk_size_gib))
            .bind(each(snapshots, |s, _| s.source_disk_type.as_str()))
            .bind(each(snapshots, |s, _| s.status.as_str()))
            .bind(each(snapshots, |s, _| s.created_at))
            .bind(each(snapshots, |s, _| s.started_at))
            .bind(each(snapshots, |_, c| {
                c.client_token.as_ref().map(|t| t.as_str())
            }))
            .bind(each(snapshots, |_, c| {
                c.client_token.as_ref().map(|_| c.fingerprint())
            }))
            .bind(each(snapshots, |s, _| s.copy_due_at))
            .bind(each(snapshots, |s, _| s.retention.as_i32()))
            .bind(each(snapshots, |s, _| s.retention.release_at(s.created_at)))
            .bind(tag_snapshots)
            .bind(tag_keys)
            .bind(tag_values)
            .execute(connection)
            .await?;
        Ok(())
    }

    async fn spend_nonces(
        connection: SessionConnection<'_, Postgres>,
        nonces: &[(&AccessKey, &str)],
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Vec<NonceSpend>, StoreError> {
        let key_ids: Vec<&str> = nonces
            .iter()
            .map(|(key, _)| key.access_key_id.as_str())
            .collect();
        let spent: Vec<&str> = nonces.iter().map(|(_, nonce)| *nonce).collect();
        let accounts: Vec<&str> = nonces
            .iter()
            .map(|(key, _)| key.account_id.as_str())
            .collect();
        let secrets: Vec<&str> = nonces
            .iter()
            .map(|(key, _)| key.access_key_secret.as_str())
            .collect();
        let rows: Vec<(i64, bool, bool)> = sqlx::query_as(SPEND_NONCES_SQL)
            .bind(key_ids)
            .bind(spent)
            .bind(accounts)
            .bind(secrets)
            .bind(expires_at)
            .bind(now)
            .fetch_all(connection)
            .await?;
        if rows.len() != nonces.len() {
            return Err(StoreError::Corrupt(format!(
                "{} nonces spent, {} answered",
                nonces.len(),
                rows.len()
            )));
        }
        Ok(rows
            .into_iter()
            .map(|(_, key_current, spent)| match (key_current, spent) {
                (false, _) => NonceSpend::KeyChanged,
                (true, true) => NonceSpend::Spent,
                (true, false) => NonceSpend::Replayed,
            })
            .collect())
    }
    /// LISTEN on a session of its own over `direct_url` (the trigger of migration 0005
    /// notifies each committed change to a snapshot row, whichever replica wrote it), only
    /// while the feed is started: the session is opened, LISTENs and registers in
    /// `snapshot_change_listeners` at each start, and unregisters and closes at each stop. With
    /// nobody watching on any replica, no notification wakes a session or this server, and the
    /// trigger does not notify at all (migration 0010: notifying commits are serialized).
    async fn listen_changes(store: &PgStore, direct_url: &str) -> Result<ChangeFeed, StoreError> {
        // The URL is checked now, so that a bad one stops the server at startup.
        PgConnection::connect(direct_url).await?.close().await?;
        // The session waits for the database no longer than a call does: the hub waits for
        // each start, and the next start waits for a stop's unregistering.
        let patience = store.pool().options().get_acquire_timeout();
        let (sender, events) = mpsc::channel(FEED_BUFFER);
        let (control, commands) = mpsc::unbounded_channel();
        tokio::spawn(run_feed(direct_url.to_owned(), patience, commands, sender));
        Ok(ChangeFeed { events, control })
    }
}

/// The change feed's task: idle until started, then a listening session whose notifications
/// it forwards, until stopped. Every wait on the database is bounded by `patience` and a
/// command is read while the session is being got back, so the hub, which waits for each
/// start, is never held for longer than a call would be.
async fn run_feed(
    direct_url: String,
    patience: Duration,
    mut commands: mpsc::UnboundedReceiver<FeedControl>,
    sender: mpsc::Sender<FeedEvent>,
) {
    let mut listening: Option<PgListener> = None;
    loop {
        let Some(listener) = listening.as_mut() else {
            match commands.recv().await {
                Some(FeedControl::Start(started)) => {
                    let answer = listen(&direct_url, patience)
                        .await
                        .map(|listener| listening = Some(listener));
                    let _ = started.send(answer);
                }
                Some(FeedControl::Stop) => {}
                None => return,
            }
            continue;
        };
        let received = tokio::select! {
            command = commands.recv() => Err(command),
            received = listener.try_recv() => Ok(received),
        };
        let event = match received {
            Err(Some(FeedControl::Start(started))) => {
                let _ = started.send(Ok(()));
                continue;
            }
            Err(command) => {
                if let Some(listener) = listening.take() {
                    unregister(listener, patience).await;
                }
                if command.is_none() {
                    return;
                }
                continue;
            }
            Ok(Ok(Some(notification))) => match parse_change(notification.payload()) {
                Some(change) => FeedEvent::Changed(vec![change]),
                None => {
                    tracing::warn!(
                        payload = notification.payload(),
                        "an unreadable snapshot change notification"
                    );
                    continue;
                }
            },
            // Notifications sent while the session was down are lost: once a new one listens,
            // whoever follows the feed reads again.
            Ok(Ok(None) | Err(_)) => {
                listening = None;
                match relisten(&direct_url, patience, &sender, &mut commands).await {
                    Relistened::Listening(listener) => {
                        listening = Some(listener);
                        FeedEvent::Resumed
                    }
                    Relistened::Stopped => continue,
                    Relistened::Ended => return,
                }
            }
        };
        if sender.send(event).await.is_err() {
            return;
        }
    }
}

/// A session of its own that LISTENs to the change channel and is registered as listening;
/// once this returns, every change committed afterwards is notified to it. Gives up after
/// `patience` (a connection that is never answered would otherwise hold it for good).
async fn listen(direct_url: &str, patience: Duration) -> Result<PgListener, StoreError> {
    let listening = async {
        let options = PgConnectOptions::from_str(direct_url)
            .map_err(StoreError::Database)?
            .application_name(LISTENER_APPLICATION_NAME);
        // A pool of one, as `PgListener::connect` makes.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(patience)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(options)
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.ignore_pool_close_event(true);
        listener.listen(CHANGES_CHANNEL).await?;
        register(&mut listener).await?;
        Ok(listener)
    };
    tokio::time::timeout(patience, listening)
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut.into()))
}

/// CreateSnapshot's batch transaction starts with this ([`Dialect::BEGIN_BATCH`]), in one
/// simple query.
///
/// Generic plans: the batch's statements take their rows by key from arrays of parameters
/// (`UNNEST($1::text[], …)`), and PostgreSQL's default (`auto`) estimates a generic plan over
/// arrays of unknown length at ten rows, finds it dearer than the custom plan of a one-element
/// array, and so plans the statement again at every execution: 0.86 ms of a create's
/// locking read's bind at 1 in flight, more than its execution and pgbench's whole transaction
/// (bench/README.md, "Planned once"). The generic plan is the custom one's shape (index
/// lookups by key, nested loops), for one disk or a batch of 256. `SET LOCAL` ends with the
/// transaction, so a transaction pooler's next client does not inherit it. Other transactions,
/// and batches of more than a few calls (`PLANNED_ONCE_UP_TO` in `shared.rs`), keep `auto` (bench/README.md,
/// "Planned once").
///
/// No sequential scans: a plan made once is kept for the connection's life, or until the
/// tables' statistics change, and made while a table was analyzed empty (a new database,
/// autovacuum's first pass) a sequential scan of it costs nothing: the plan kept it while
/// the creates filled the table, each lookup by key reading every row so far (spread at 64 in
/// flight made 845–919 calls/s against 3,095–3,161 without sequential scans; bench/README.md,
/// "Statistics"). Every statement of the batch reads by key, where an index is always right.
pub const BEGIN_BATCH_SQL: &str =
    "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off";

/// The slots of an account's count: migration 0011's triggers take `snapshotd.count_slot`, set
/// for the transaction, else a random one of the same 16 (the sum is right whatever the slots).
const COUNT_SLOTS: usize = 16;

/// A batch's `BEGIN`, planned once ([`BEGIN_BATCH_SQL`]) or not, setting the slot of the
/// accounts' counts its snapshots are added to (`count_slot` modulo [`COUNT_SLOTS`]): in the
/// same simple query, so no round trip more. Built once, one text per slot.
fn begin_batch_sql(planned_once: bool, count_slot: usize) -> &'static str {
    static TEXTS: LazyLock<Vec<String>> = LazyLock::new(|| {
        [false, true]
            .into_iter()
            .flat_map(|planned_once| {
                (0..COUNT_SLOTS).map(move |slot| {
                    let begin = if planned_once {
                        BEGIN_BATCH_SQL
                    } else {
                        "BEGIN"
                    };
                    format!("{begin}; SET LOCAL snapshotd.count_slot = {slot}")
                })
            })
            .collect()
    });
    &TEXTS[usize::from(planned_once) * COUNT_SLOTS + count_slot % COUNT_SLOTS]
}

/// The `application_name` of the session that LISTENs (the pool's are `snapshotd`).
pub const LISTENER_APPLICATION_NAME: &str = "snapshotd-changes";

/// Registers the listener's session (after its LISTEN), so that writers notify: one
/// transaction that inserts its row and then waits, `LOCK TABLE snapshots IN SHARE MODE`, for
/// every transaction that wrote a snapshot row and so may have found no listener before this
/// row commits. A writer that locks the table later runs its trigger after the commit and
/// notifies (migration 0010). Rows of sessions that are gone are deleted first, in a statement
/// of its own.
async fn register(listener: &mut PgListener) -> Result<(), StoreError> {
    // On its own: two replicas starting at once could otherwise deadlock on each other's rows.
    if let Err(err) = sqlx::query(
        "DELETE FROM snapshot_change_listeners
         WHERE pid NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)",
    )
    .execute(&mut *listener)
    .await
    {
        tracing::warn!(error = %err, "deleting the rows of change listeners that are gone failed");
    }
    let registered = sqlx::Executor::execute(
        &mut *listener,
        sqlx::raw_sql(
            "BEGIN;
         INSERT INTO snapshot_change_listeners (pid) VALUES (pg_backend_pid())
         ON CONFLICT (pid) DO UPDATE SET started_at = now();
         LOCK TABLE snapshots IN SHARE MODE;
         COMMIT;",
        ),
    )
    .await;
    if let Err(err) = registered {
        // A statement that failed leaves the explicit transaction open and aborted, and a
        // session in a transaction is delivered no notification: end it before trying again.
        let _ = sqlx::query("ROLLBACK").execute(&mut *listener).await;
        return Err(err.into());
    }
    Ok(())
}

/// Unregisters and closes the listener's session, waiting no longer than `patience` (its row
/// would only cost notifications, and is deleted by the next registration once the session is
/// gone).
async fn unregister(mut listener: PgListener, patience: Duration) {
    let unregistering =
        sqlx::query("DELETE FROM snapshot_change_listeners WHERE pid = pg_backend_pid()")
            .execute(&mut listener);
    match tokio::time::timeout(patience, unregistering).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "unregistering the change listener failed"),
        Err(_) => tracing::warn!("unregistering the change listener timed out"),
    }
}

/// The channel the trigger of migration 0005 notifies.
const CHANGES_CHANNEL: &str = "snapshot_changes";

/// How long the listener waits between attempts to reconnect.
const RELISTEN_BACKOFF: Duration = Duration::from_millis(500);

/// How [`relisten`] ended.
enum Relistened {
    Listening(PgListener),
    /// The feed was stopped meanwhile.
    Stopped,
    /// Nobody reads the feed or controls it any more.
    Ended,
}

/// Opens a new listening session (LISTEN and registration) until one answers, reading the
/// feed's commands meanwhile: a stop ends the attempts.
async fn relisten(
    direct_url: &str,
    patience: Duration,
    sender: &mpsc::Sender<FeedEvent>,
    commands: &mut mpsc::UnboundedReceiver<FeedControl>,
) -> Relistened {
    // A start cannot come while the feed runs; were one sent, the `Resumed` that follows the
    // reconnection tells its sender to read again.
    let stopped = |command: Option<FeedControl>| match command {
        Some(FeedControl::Start(started)) => {
            let _ = started.send(Ok(()));
            None
        }
        Some(FeedControl::Stop) => Some(Relistened::Stopped),
        None => Some(Relistened::Ended),
    };
    loop {
        let attempt = listen(direct_url, patience);
        tokio::pin!(attempt);
        let answered = loop {
            tokio::select! {
                answered = &mut attempt => break answered,
                () = sender.closed() => return Relistened::Ended,
                command = commands.recv() => if let Some(end) = stopped(command) { return end },
            }
        };
        let err = match answered {
            Ok(listener) => return Relistened::Listening(listener),
            Err(err) => err,
        };
        tracing::warn!(error = %err, "the snapshot change listener cannot reconnect");
        let backoff = tokio::time::sleep(RELISTEN_BACKOFF);
        tokio::pin!(backoff);
        loop {
            tokio::select! {
                () = &mut backoff => break,
                () = sender.closed() => return Relistened::Ended,
                command = commands.recv() => if let Some(end) = stopped(command) { return end },
            }
        }
    }
}

/// A notification's payload, `snapshot_id disk_id account_id`.
fn parse_change(payload: &str) -> Option<SnapshotChange> {
    let mut parts = payload.splitn(3, ' ');
    Some(SnapshotChange {
        snapshot_id: parts.next()?.to_owned(),
        disk_id: parts.next()?.to_owned(),
        account_id: parts.next()?.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's lanes, numbered from any first slot, never share a slot of the accounts'
    /// counts: one lane's batch never waits for another's commit there.
    #[test]
    fn the_lanes_of_a_server_count_in_slots_of_their_own() {
        for first in [0, 7, 15, 1023, usize::MAX - 1] {
            for planned_once in [false, true] {
                let begins: Vec<&str> = (0..Postgres::CREATE_LANES)
                    .map(|lane| begin_batch_sql(planned_once, first.wrapping_add(lane)))
                    .collect();
                let mut distinct = begins.clone();
                distinct.sort_unstable();
                distinct.dedup();
                assert_eq!(distinct.len(), begins.len(), "{begins:?}");
                for begin in begins {
                    assert!(
                        begin.contains("SET LOCAL snapshotd.count_slot = "),
                        "{begin}"
                    );
                    assert_eq!(
                        begin.contains("force_generic_plan"),
                        planned_once,
                        "{begin}"
                    );
                }
            }
        }
    }

    #[test]
    fn each_durability_setting_that_is_off_is_warned_about() {
        let settings = |values: [&str; 3]| -> Vec<Setting> {
            DURABILITY_SETTINGS
                .into_iter()
                .zip(values)
                .map(|(name, value)| Setting {
                    name,
                    value: value.to_owned(),
                })
                .collect()
        };
        let cases = [
            (["on", "on", "on"], vec![]),
            (["local", "on", "on"], vec![]),
            (["off", "on", "on"], vec!["synchronous_commit"]),
            (["on", "off", "off"], vec!["fsync", "full_page_writes"]),
        ];
        for (values, warned) in cases {
            let warnings = durability_warnings(&settings(values));
            assert_eq!(warnings.len(), warned.len(), "{values:?}: {warnings:?}");
            for (warning, name) in warnings.iter().zip(warned) {
                assert!(warning.contains(&format!("{name} = off")), "{warning}");
            }
        }
    }
}
