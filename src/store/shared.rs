//! The statements both backends run as written, once, generic over the two sqlx drivers: the
//! store ([`SqlStore`]) and its sessions ([`SqlSession`]). SQLite reads PostgreSQL's `$1`
//! placeholders as they are, so one text serves both.
//!
//! What differs between the databases is a [`Dialect`], implemented in `postgres/` and `sqlite/`:
//! how a write transaction begins, the row-lock clauses, and the statements PostgreSQL writes
//! with arrays (a batch's locking read and its insert).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Notify;

use sqlx::migrate::{Migrate, Migrator};
use sqlx::pool::PoolConnection;
use sqlx::{Arguments, Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::fence::Fence;
use super::kept::KeptConnections;
use super::pooler::SessionConnection;
use super::rows::{
    AccessKeyRow, AccountRow, CallerRow, DescribedRow, DiskRow, ImageRow, InstanceRow,
    LockedDiskRow, OptionalTokenColumns, SnapshotRow, SteeringRow, TagRow, decode_queue,
    into_described_page, into_image_page, join_lock_reasons,
};
use super::turn::{Turn, WriteTurn};
use super::{
    BatchRead, ChangeFeed, LockedRead, NonceSpend, PoolStats, Setting, Store, StoreError,
    Transaction, Violation, WorkQueue,
};
use crate::domain::{
    AccessKey, Account, CreateImageCommand, CreateSnapshotCommand, Disk, DiskSteering, ImageCursor,
    ImagePage, ImageQuery, Instance, Snapshot, SnapshotPage, SnapshotQuery, SnapshotStatus, Tag,
    TagCursor, TagKeys, TagPage, TagQuery, TagResource, Timestamp,
};
use crate::engine::TokenBinding;

/// What one database does its own way.
pub trait Dialect: Database + Sized {
    /// `"postgres"` or `"sqlite"`.
    const KIND: &'static str;
    /// Create transactions at once: the database's sweet spot (see `service::group_commit`).
    const CREATE_LANES: usize;
    /// Connections kept between sessions (writes and reads) instead of going back to the pool
    /// (`super::kept`).
    const KEEP_CONNECTIONS: usize;
    /// One writer at a time: write transactions take turns in the process (`super::turn`).
    const ONE_WRITER: bool;
    /// Appended to CreateSnapshot's locking read of the disk `d`: holds the disk until commit.
    const LOCK_DISK: &'static str;
    /// Appended to a read whose rows the transaction holds until it ends.
    const LOCK_ROWS: &'static str;
    /// Appended to a worker queue's read: holds its rows, skipping those another replica holds.
    const CLAIM_ROWS: &'static str;

    /// The statement that begins a write transaction.
    const BEGIN_WRITE: &'static str;
    /// The statement that begins CreateSnapshot's batch transaction ([`Store::begin_batch`]):
    /// its statements planned once when `planned_once`, its snapshots counted in the slot
    /// `count_slot` of their accounts' counts (any number: the dialect takes it modulo its
    /// slots).
    fn begin_batch(planned_once: bool, count_slot: usize) -> &'static str;
    /// This database's schema, one numbered migration per change.
    const MIGRATOR: Migrator;
    /// The names of the tables the store's statements would see.
    const TABLE_NAMES: &'static str;
    /// A snapshot `s`'s tags as JSON text `[[key, value], …]` in key order (NULL or `[]`
    /// without any): DescribeSnapshots reads a page's tags in the page's statement.
    const SNAPSHOT_TAGS_JSON: &'static str;

    /// `column` is one of the text list bound at `placeholder` (see [`Dialect::text_list`]):
    /// the statement's text does not change with the list's length, so one prepared statement
    /// serves every length.
    fn in_text_list(column: &str, placeholder: &str) -> String;

    /// How a list of texts is bound as the one parameter [`Dialect::in_text_list`] reads.
    type TextList: for<'q> Encode<'q, Self> + Type<Self> + Send;

    /// `list` as that one parameter.
    fn text_list(list: Vec<String>) -> Self::TextList;

    /// Adds the tags `(keys[i], values[i])` to each snapshot of `snapshot_ids` (a key a
    /// snapshot has takes the new value), in one statement: `$1` the ids, `$2` the keys and
    /// `$3` the values, each a [`Dialect::text_list`].
    const PUT_TAGS: &'static str;

    /// What in these settings weakens the durability of an acknowledged write.
    fn durability_warnings(settings: &[Setting]) -> Vec<String>;

    /// Runs a statement without parameters (`BEGIN`, `COMMIT`, `ROLLBACK`) as it is.
    fn execute(
        connection: &mut Self::Connection,
        statement: &'static str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Readiness's round trip: fails unless the database answers and takes writes.
    fn ping(
        connection: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// See [`Transaction::lock_free_disks_and_read`].
    fn lock_free_disks_and_read(
        session: &mut SqlSession<Self>,
        commands: &[&CreateSnapshotCommand],
    ) -> impl Future<Output = Result<Vec<BatchRead>, StoreError>> + Send;

    /// See [`Transaction::insert_snapshots`].
    fn insert_snapshots(
        connection: SessionConnection<'_, Self>,
        snapshots: &[(&Snapshot, &CreateSnapshotCommand)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// See [`Transaction::spend_nonces`].
    fn spend_nonces(
        connection: SessionConnection<'_, Self>,
        nonces: &[(&AccessKey, &str)],
        now: Timestamp,
        expires_at: Timestamp,
    ) -> impl Future<Output = Result<Vec<NonceSpend>, StoreError>> + Send;
    /// See [`Store::listen_changes`].
    fn listen_changes(
        store: &SqlStore<Self>,
        direct_url: &str,
    ) -> impl Future<Output = Result<ChangeFeed, StoreError>> + Send;
}

/// A store on one database: its pool, and for SQLite the lock that keeps other processes off
/// the file.
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    settings: Vec<Setting>,
    _process_lock: Option<std::fs::File>,
    /// The pool's connections go through a transaction pooler (see `super::pooler`).
    transaction_pooler: bool,
    /// Told after each COMMIT of a session: SQLite's change feed reads its log then.
    committed: Arc<Notify>,
    /// Raised by a sign that the server behind the address is gone or takes no writes; the
    /// pool's hooks close the connections opened before it (see `super::fence`).
    fence: Arc<Fence>,
    /// Connections between two write transactions (`super::kept`).
    kept: Arc<KeptConnections<DB>>,
    /// Write transactions take turns ([`Dialect::ONE_WRITER`]).
    turn: WriteTurn,
    /// Lane `n`'s batches count their snapshots in the slot after this one plus `n`, so that
    /// this process's lanes never share a slot, and another replica's lanes seldom do.
    first_count_slot: usize,
}

impl<DB: Dialect> SqlStore<DB> {
    pub(super) fn new(
        pool: Pool<DB>,
        settings: Vec<Setting>,
        process_lock: Option<std::fs::File>,
    ) -> Self {
        Self {
            pool,
            settings,
            _process_lock: process_lock,
            transaction_pooler: false,
            committed: Arc::new(Notify::new()),
            fence: Arc::default(),
            kept: KeptConnections::new(DB::KEEP_CONNECTIONS),
            turn: WriteTurn::new(DB::ONE_WRITER),
            first_count_slot: usize::from(rand::random::<u16>()),
        }
    }

    /// Told after each COMMIT of one of this store's sessions.
    pub(super) fn committed(&self) -> Arc<Notify> {
        Arc::clone(&self.committed)
    }

    /// The writers' turn, for a write outside the store's sessions that must wait its turn
    /// too (SQLite's change feed switching its log on and off).
    pub(super) fn write_turn(&self) -> WriteTurn {
        self.turn.clone()
    }

    /// The fence the pool's hooks look at (PostgreSQL's: `super::postgres::connect`).
    pub(super) fn fenced_by(mut self, fence: Arc<Fence>) -> Self {
        self.fence = fence;
        self
    }

    /// The pool's connections go through a transaction pooler: every session runs in a
    /// transaction, its statements unnamed (see `super::pooler`).
    pub(super) fn behind_transaction_pooler(mut self, transaction_pooler: bool) -> Self {
        self.transaction_pooler = transaction_pooler;
        self
    }

    /// The pool, for tests and tools that run their own SQL.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }
}

#[async_trait::async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Dialect,
    DB::Connection: Migrate,
    SqlSession<DB>: Transaction,
{
    fn kind(&self) -> &'static str {
        DB::KIND
    }

    fn create_lanes(&self) -> usize {
        DB::CREATE_LANES
    }

    fn settings(&self) -> &[Setting] {
        &self.settings
    }

    fn durability_warnings(&self) -> Vec<String> {
        DB::durability_warnings(&self.settings)
    }

    /// Refuses a database that holds another application's tables (no migration table of
    /// ours): adding snapshotd's tables and demo data to it would be a surprise, not a start.
    ///
    /// Over `migration_database_url` when given, on a connection of its own: the migrator holds
    /// an advisory lock (session state) while it runs, which a transaction pooler would lose.
    async fn migrate(&self, migration_database_url: Option<&str>) -> Result<(), StoreError> {
        let direct = match migration_database_url {
            Some(_) if DB::KIND != "postgres" => {
                return Err(StoreError::Unsupported(
                    "SNAPSHOTD_MIGRATION_DATABASE_URL is for PostgreSQL only: the embedded store \
                     migrates its own file"
                        .into(),
                ));
            }
            Some(url) => Some(
                sqlx::pool::PoolOptions::<DB>::new()
                    .max_connections(1)
                    .connect(url)
                    .await?,
            ),
            None if self.transaction_pooler => {
                return Err(StoreError::Unsupported(
                    "behind a transaction pooler, migrations need a direct connection to \
                     PostgreSQL: set SNAPSHOTD_MIGRATION_DATABASE_URL"
                        .into(),
                ));
            }
            None => None,
        };
        let migrated = migrate_on::<DB>(direct.as_ref().unwrap_or(&self.pool)).await;
        if let Some(direct) = direct {
            direct.close().await;
        }
        migrated
    }

    /// Also closes the idle connections a fence raised since the last round condemned: nobody
    /// may ask for them, and each holds a session on the old server.
    async fn ping(&self) -> Result<(), StoreError> {
        if self.fence.take_drain() {
            // Back to the pool, whose `after_release` closes those the fence condemns.
            self.kept.release_all(false);
            for _ in 0..self.pool.num_idle() {
                let Some(mut idle) = self.pool.try_acquire() else {
                    break;
                };
                idle.close_on_drop();
            }
        }
        let mut connection = self.acquire().await?;
        let answered = DB::ping(&mut connection).await;
        if let Err(err) = &answered {
            self.fence.note(err);
        }
        Ok(answered?)
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>, StoreError> {
        Ok(Box::new(self.begin_with(DB::BEGIN_WRITE).await?))
    }

    async fn begin_batch(
        &self,
        calls: usize,
        lane: usize,
    ) -> Result<Box<dyn Transaction>, StoreError> {
        let begin = DB::begin_batch(
            calls <= PLANNED_ONCE_UP_TO,
            self.first_count_slot.wrapping_add(lane),
        );
        Ok(Box::new(self.begin_with(begin).await?))
    }

    async fn read(&self) -> Result<Box<dyn Transaction>, StoreError> {
        let mut session = self.session().await?;
        if self.transaction_pooler {
            // Each statement's two exchanges must reach one server connection (`super::pooler`).
            session.in_transaction = true;
            if let Err(err) = session.execute("BEGIN").await {
                session.raw().close_on_drop();
                session.in_transaction = false;
                return Err(err.into());
            }
        }
        Ok(Box::new(session))
    }

    async fn listen_changes(&self, direct_url: &str) -> Result<ChangeFeed, StoreError> {
        DB::listen_changes(self, direct_url).await
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            connections: self.pool.size(),
            idle: self.pool.num_idle(),
            max_connections: self.pool.options().get_max_connections(),
        }
    }

    async fn close(&self) {
        self.kept.release_all(true);
        self.pool.close().await;
    }
}

impl<DB: Dialect> SqlStore<DB> {
    /// A write transaction begun by `begin` ([`Dialect::BEGIN_WRITE`] or `BEGIN_BATCH`).
    async fn begin_with(&self, begin: &'static str) -> Result<SqlSession<DB>, StoreError> {
        let waiting = std::time::Instant::now();
        // The turn before the connection: a writer in the queue holds no connection a read
        // could use.
        let turn = self
            .turn
            .take(
                self.pool.options().get_acquire_timeout(),
                self.pool.close_event(),
            )
            .await?;
        let mut session = self.session().await?;
        session.turn = turn;
        session.in_transaction = true;
        if let Err(err) = session.execute(begin).await {
            session.raw().close_on_drop();
            session.in_transaction = false;
            return Err(err.into());
        }
        crate::telemetry::metric::db_begin_wait(waiting.elapsed());
        Ok(session)
    }

    /// A session outside any transaction, on a kept connection (`super::kept`) or a pooled one.
    async fn session(&self) -> Result<SqlSession<DB>, sqlx::Error> {
        let (connection, acquired_at) = match self.kept.take(&self.fence) {
            Some(kept) => (kept.connection, kept.acquired_at),
            None => (self.acquire().await?, std::time::Instant::now()),
        };
        Ok(SqlSession {
            connection: Some(connection),
            in_transaction: false,
            unnamed: self.transaction_pooler,
            committed: Some(self.committed()),
            fence: Arc::clone(&self.fence),
            turn: None,
            keep: Some(Keep {
                kept: Arc::clone(&self.kept),
                pool: self.pool.clone(),
                acquired_at,
                ended_cleanly: false,
            }),
        })
    }

    /// A pooled connection. Failing to get one can be a sign for the fence too: the address
    /// resets connections, or the server refuses them while it starts or stops.
    async fn acquire(&self) -> Result<PoolConnection<DB>, sqlx::Error> {
        self.pool
            .acquire()
            .await
            .inspect_err(|err| self.fence.note(err))
    }
}

/// One pooled connection: in a write transaction ([`Store::begin`]) or not ([`Store::read`]).
///
/// The transaction is the session's own (`BEGIN`, `COMMIT`, `ROLLBACK`), so that a connection
/// whose transaction did not end cleanly — a COMMIT that failed (a full disk), a ROLLBACK that
/// failed, a call dropped halfway — is closed, never handed to the next call still inside it.
pub struct SqlSession<DB: Database> {
    /// `None` only once dropped.
    connection: Option<PoolConnection<DB>>,
    in_transaction: bool,
    /// Statements run unnamed (behind a transaction pooler).
    unnamed: bool,
    /// Told when a COMMIT succeeds ([`SqlStore::committed`]).
    committed: Option<Arc<Notify>>,
    /// The store's fence, raised by a statement that finds the server gone or read-only.
    fence: Arc<Fence>,
    /// The writer's turn (SQLite), held until the transaction has ended (`super::turn`).
    turn: Option<Turn>,
    /// Where the connection goes after a transaction that ended cleanly (`None`: the pool).
    keep: Option<Keep<DB>>,
}

/// Where a session's connection is kept after its transaction ended cleanly.
struct Keep<DB: Database> {
    kept: Arc<KeptConnections<DB>>,
    pool: Pool<DB>,
    acquired_at: std::time::Instant,
    /// The session's COMMIT or ROLLBACK answered.
    ended_cleanly: bool,
}

impl<DB: Database> SqlSession<DB> {
    /// The executor of the session's statements.
    pub(super) fn connection(&mut self) -> SessionConnection<'_, DB> {
        let connection = self
            .connection
            .as_mut()
            .expect("a live session's connection");
        SessionConnection::new(&mut **connection, self.unnamed, &self.fence)
    }

    fn raw(&mut self) -> &mut PoolConnection<DB> {
        self.connection
            .as_mut()
            .expect("a live session's connection")
    }
}

impl<DB: Dialect> SqlSession<DB> {
    /// Runs `BEGIN`, `COMMIT` or `ROLLBACK`, its error shown to the fence.
    async fn execute(&mut self, statement: &'static str) -> Result<(), sqlx::Error> {
        let fence = Arc::clone(&self.fence);
        DB::execute(self.raw(), statement)
            .await
            .inspect_err(|err| fence.note(err))
    }
}

/// The migrations, after refusing a database that holds another application's tables.
async fn migrate_on<DB>(pool: &Pool<DB>) -> Result<(), StoreError>
where
    DB: Dialect,
    DB::Connection: Migrate,
    SqlSession<DB>: Transaction,
{
    let tables = SqlSession {
        connection: Some(pool.acquire().await?),
        in_transaction: false,
        unnamed: false,
        committed: None,
        fence: Arc::default(),
        turn: None,
        keep: None,
    }
    .table_names()
    .await?;
    if !tables.is_empty() && !tables.iter().any(|table| table == "_sqlx_migrations") {
        let mut shown: Vec<&str> = tables.iter().map(String::as_str).take(5).collect();
        if tables.len() > shown.len() {
            shown.push("…");
        }
        return Err(StoreError::Unsupported(format!(
            "the database holds tables of another application ({}); snapshotd keeps its \
             data in a database of its own: point DATABASE_URL at a new SQLite file or an \
             empty PostgreSQL database",
            shown.join(", ")
        )));
    }
    DB::MIGRATOR.run(pool).await?;
    Ok(())
}

impl<DB: Database> Drop for SqlSession<DB> {
    fn drop(&mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        if self.in_transaction {
            // Dropped halfway (a cancelled call): closing the connection rolls it back.
            connection.close_on_drop();
        } else if let Some(keep) = self.keep.as_ref().filter(|keep| keep.ended_cleanly) {
            keep.kept.keep(connection, keep.acquired_at, &keep.pool);
        }
    }
}

impl<DB: Dialect> SqlSession<DB> {
    /// Ends the transaction with `statement` (COMMIT or ROLLBACK). A COMMIT that fails is
    /// followed by a ROLLBACK; a connection whose transaction still did not end cleanly is
    /// closed instead of going back to the pool.
    async fn end(&mut self, statement: &'static str) -> Result<(), StoreError> {
        if !self.in_transaction {
            // A read outside a transaction ([`Store::read`]) that its caller ends with COMMIT:
            // each of its statements answered, so its connection is kept like a write's,
            // without sqlx's ping on release (one round trip in two of a describe page).
            if statement == "COMMIT"
                && let Some(keep) = &mut self.keep
            {
                keep.ended_cleanly = true;
            }
            return Ok(());
        }
        self.in_transaction = false;
        let ended = self.execute(statement).await;
        if ended.is_ok()
            && statement == "COMMIT"
            && let Some(committed) = &self.committed
        {
            committed.notify_one();
        }
        if ended.is_ok()
            && let Some(keep) = &mut self.keep
        {
            keep.ended_cleanly = true;
        }
        if ended.is_err() {
            let committing = statement == "COMMIT";
            if !committing || self.execute("ROLLBACK").await.is_err() {
                self.raw().close_on_drop();
            }
        }
        // The next writer's turn. (A transaction that did not end cleanly leaves a connection
        // closing with it: the next writer's BEGIN waits for that in the busy handler.)
        self.turn = None;
        Ok(ended?)
    }
}

/// CreateSnapshot batches of up to this many calls begin with [`Dialect::BEGIN_BATCH`] (generic
/// plans on PostgreSQL). A bigger batch's planning is spread over its calls, and at 64 in flight
/// (batches of about 30) generic plans measured 6–20 % fewer calls/s than planning each batch,
/// in a sitting where the cause was not settled (bench/README.md, "Planned once").
const PLANNED_ONCE_UP_TO: usize = 8;

/// The columns CreateSnapshot's engine needs about a disk `d`, with its account `a`, instance
/// `i`, progressing snapshot `p` and the caller's token binding `t`; PostgreSQL's batch read
/// (`postgres/`) selects them too.
pub(super) const CREATE_STATE_COLUMNS: &str = "\
d.disk_id, d.account_id, d.category, d.disk_type, d.status, d.instance_id, d.size_gib,
       d.created_at, d.expires_at, d.ever_attached,
       d.snapshot_count, d.progressing_snapshot_id, d.progressing_since,
       a.account_id AS acct_id, a.snapshot_service_activated AS acct_snapshot_service_activated,
       a.insufficient_balance AS acct_insufficient_balance,
       i.instance_id AS inst_id, i.account_id AS inst_account_id, i.status AS inst_status,
       i.created_at AS inst_created_at, i.last_started_at AS inst_last_started_at,
       i.lock_reasons AS inst_lock_reasons,
       t.fingerprint AS token_fingerprint, t.snapshot_id AS token_snapshot_id,
       p.copy_due_at AS progressing_due_at";

/// The joins behind [`CREATE_STATE_COLUMNS`], from the disk `d`; the caller's token is `{token}`.
pub(super) fn create_state_joins(token: &str) -> String {
    format!(
        "
LEFT JOIN accounts a ON a.account_id = d.account_id
LEFT JOIN instances i ON i.instance_id = d.instance_id
LEFT JOIN client_tokens t ON t.account_id = d.account_id AND t.client_token = {token}
LEFT JOIN snapshots p ON p.snapshot_id = d.progressing_snapshot_id"
    )
}

/// One call's CreateSnapshot read: the disk `$1` of the account `$2`, locked with `lock_disk`
/// (the dialect's [`Dialect::LOCK_DISK`]), with what the engine needs and the token `$3`'s
/// binding. (The SQLite database limit in bench/ runs it too.)
pub(super) fn lock_disk_and_read_sql(lock_disk: &str) -> String {
    format!(
        "SELECT {CREATE_STATE_COLUMNS}\nFROM disks d{}\nWHERE d.disk_id = $1 AND d.account_id = $2{lock_disk}",
        create_state_joins("$3"),
    )
}

/// Columns of a snapshot row `s`, as [`SnapshotRow`] reads them.
const SNAPSHOT_COLUMNS: &str = "s.snapshot_id, s.account_id, s.source_disk_id, \
    s.snapshot_name, s.description, s.source_disk_size_gib, s.source_disk_type, s.status, \
    s.created_at, s.started_at, s.copy_due_at, s.last_modified_at, s.retention_days, s.usage";

/// Columns of a `simulated_disks` row, as [`SteeringRow`] reads them.
const STEERING_COLUMNS: &str = "disk_id, rate_mibps, rate_since, checkpoint_snapshot, \
    checkpoint_kib, fail_from, doomed_snapshot_id";

#[async_trait::async_trait]
impl<DB> Transaction for SqlSession<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Timestamp: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Timestamp>: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (String, i32): FromRow<'r, DB::Row>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'r> (String, String, String): FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> AccountRow: FromRow<'r, DB::Row>,
    for<'r> AccessKeyRow: FromRow<'r, DB::Row>,
    for<'r> InstanceRow: FromRow<'r, DB::Row>,
    for<'r> DiskRow: FromRow<'r, DB::Row>,
    for<'r> LockedDiskRow: FromRow<'r, DB::Row>,
    for<'r> CallerRow: FromRow<'r, DB::Row>,
    for<'r> OptionalTokenColumns: FromRow<'r, DB::Row>,
    for<'r> SnapshotRow: FromRow<'r, DB::Row>,
    for<'r> TagRow: FromRow<'r, DB::Row>,
    for<'r> DescribedRow: FromRow<'r, DB::Row>,
    for<'r> ImageRow: FromRow<'r, DB::Row>,
    for<'r> SteeringRow: FromRow<'r, DB::Row>,
{
    async fn table_names(&mut self) -> Result<Vec<String>, StoreError> {
        let names: Vec<(String,)> = sqlx::query_as(DB::TABLE_NAMES)
            .fetch_all(self.connection())
            .await?;
        Ok(names.into_iter().map(|(name,)| name).collect())
    }

    async fn any_account(&mut self) -> Result<bool, StoreError> {
        let found: Option<(String,)> = sqlx::query_as("SELECT account_id FROM accounts LIMIT 1")
            .fetch_optional(self.connection())
            .await?;
        Ok(found.is_some())
    }

    async fn select_disk(&mut self, disk_id: &str) -> Result<Option<Disk>, StoreError> {
        let row: Option<DiskRow> = sqlx::query_as(
            "SELECT disk_id, account_id, category, disk_type, status, instance_id, size_gib,
                    created_at, expires_at, ever_attached
             FROM disks WHERE disk_id = $1",
        )
        .bind(disk_id)
        .fetch_optional(self.connection())
        .await?;
        row.map(Disk::try_from).transpose()
    }

    /// One statement ([`describe_snapshots_statement`]): the page, its tags and the total
    /// count. Only a page past the end, which has no row to carry the count, asks again.
    async fn describe_snapshots(
        &mut self,
        query: &SnapshotQuery,
    ) -> Result<SnapshotPage, StoreError> {
        let rows: Vec<DescribedRow> = describe_snapshots_statement::<DB>(query)
            .fetch_all(self.connection())
            .await?;
        if let Some(page) = into_described_page(rows, query.limit) {
            return Ok(page);
        }
        let first_page = query.after.is_none() && query.skip == 0;
        let total = if first_page {
            0
        } else if let Some(total) = carried_total(query) {
            u64::try_from(total).unwrap_or(0)
        } else {
            let counted: Vec<(i64,)> = count_matching_snapshots::<DB>(query)
                .fetch_all(self.connection())
                .await?;
            counted
                .first()
                .map_or(0, |(n,)| u64::try_from(*n).unwrap_or(0))
        };
        Ok(SnapshotPage {
            snapshots: Vec::new(),
            next: None,
            total,
        })
    }

    async fn check_invariants(
        &mut self,
        snapshot_quota: u32,
    ) -> Result<Vec<Violation>, StoreError> {
        let mut violations = Vec::new();
        for check in INVARIANTS {
            let mut query = sqlx::query_as::<_, (String, String)>(check.sql);
            if check.takes_quota {
                query = query.bind(i64::from(snapshot_quota));
            }
            for (subject, detail) in query.fetch_all(self.connection()).await? {
                violations.push(Violation {
                    promise: check.promise,
                    subject,
                    detail,
                });
            }
        }
        Ok(violations)
    }

    /// Without reading the table: the progressing and the failed (few) from their partial
    /// indexes, the accomplished as the rest of the disks' bookkeeping (`snapshot_count`, kept
    /// equal to the disk's snapshot rows in every transaction that changes them), all in one
    /// statement, so one snapshot of the database. Linear in the disks, not the snapshots.
    async fn count_snapshots_by_status(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT 'stored', COALESCE(SUM(snapshot_count), 0) FROM disks
             UNION ALL SELECT 'progressing', COUNT(*) FROM snapshots WHERE status = 'progressing'
             UNION ALL SELECT 'failed', COUNT(*) FROM snapshots WHERE status = 'failed'",
        )
        .fetch_all(self.connection())
        .await?;
        let count = |what: &str| {
            counts
                .iter()
                .find(|(name, _)| name == what)
                .map_or(0, |(_, count)| *count)
        };
        let (stored, progressing, failed) =
            (count("stored"), count("progressing"), count("failed"));
        Ok(vec![
            ("accomplished".to_owned(), stored - progressing - failed),
            ("failed".to_owned(), failed),
            ("progressing".to_owned(), progressing),
        ])
    }

    async fn lock_disk_and_read(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<Option<LockedRead>, StoreError> {
        let statement = lock_disk_and_read_sql(DB::LOCK_DISK);
        let row: Option<LockedDiskRow> = sqlx::query_as(&statement)
            .bind(command.disk_id.as_str())
            .bind(command.account_id.as_str())
            .bind(command.client_token.as_ref().map(|t| t.as_str()))
            .fetch_optional(self.connection())
            .await?;
        row.map(LockedDiskRow::into_parts).transpose()
    }

    async fn lock_free_disks_and_read(
        &mut self,
        commands: &[&CreateSnapshotCommand],
    ) -> Result<Vec<BatchRead>, StoreError> {
        DB::lock_free_disks_and_read(self, commands).await
    }

    async fn read_caller(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<LockedRead, StoreError> {
        let row: CallerRow = sqlx::query_as(
            "SELECT a.account_id AS acct_id,
                    a.snapshot_service_activated AS acct_snapshot_service_activated,
                    a.insufficient_balance AS acct_insufficient_balance,
                    t.fingerprint AS token_fingerprint, t.snapshot_id AS token_snapshot_id
             FROM (SELECT CAST($1 AS TEXT) AS account_id) caller
             LEFT JOIN accounts a ON a.account_id = caller.account_id
             LEFT JOIN client_tokens t
                    ON t.account_id = caller.account_id AND t.client_token = $2",
        )
        .bind(command.account_id.as_str())
        .bind(command.client_token.as_ref().map(|t| t.as_str()))
        .fetch_one(self.connection())
        .await?;
        Ok(row.into_parts())
    }

    async fn read_token(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<Option<TokenBinding>, StoreError> {
        let row: Option<OptionalTokenColumns> = sqlx::query_as(
            "SELECT fingerprint AS token_fingerprint, snapshot_id AS token_snapshot_id
             FROM client_tokens WHERE account_id = $1 AND client_token = $2",
        )
        .bind(command.account_id.as_str())
        .bind(command.client_token.as_ref().map(|t| t.as_str()))
        .fetch_optional(self.connection())
        .await?;
        Ok(row.and_then(OptionalTokenColumns::into_binding))
    }

    async fn insert_snapshots(
        &mut self,
        snapshots: &[(&Snapshot, &CreateSnapshotCommand)],
    ) -> Result<(), StoreError> {
        DB::insert_snapshots(self.connection(), snapshots).await
    }

    async fn account_exists(&mut self, account_id: &str) -> Result<bool, StoreError> {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT account_id FROM accounts WHERE account_id = $1")
                .bind(account_id)
                .fetch_optional(self.connection())
                .await?;
        Ok(found.is_some())
    }

    async fn foreign_disk_on(
        &mut self,
        instance_id: &str,
        account_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let found: Option<(String,)> = sqlx::query_as(
            "SELECT disk_id FROM disks WHERE instance_id = $1 AND account_id <> $2 LIMIT 1",
        )
        .bind(instance_id)
        .bind(account_id)
        .fetch_optional(self.connection())
        .await?;
        Ok(found.map(|(disk_id,)| disk_id))
    }

    async fn lock_disk_owner(
        &mut self,
        disk_id: &str,
    ) -> Result<Option<(String, i32)>, StoreError> {
        let statement = format!(
            "SELECT account_id, snapshot_count FROM disks WHERE disk_id = $1{}",
            DB::LOCK_ROWS
        );
        Ok(sqlx::query_as(&statement)
            .bind(disk_id)
            .fetch_optional(self.connection())
            .await?)
    }

    async fn lock_instance_owner(
        &mut self,
        instance_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let statement = format!(
            "SELECT account_id FROM instances WHERE instance_id = $1{}",
            DB::LOCK_ROWS
        );
        let found: Option<(String,)> = sqlx::query_as(&statement)
            .bind(instance_id)
            .fetch_optional(self.connection())
            .await?;
        Ok(found.map(|(owner,)| owner))
    }

    async fn upsert_account(&mut self, account: &Account) -> Result<Account, StoreError> {
        let row: AccountRow = sqlx::query_as(
            "INSERT INTO accounts (account_id, snapshot_service_activated, insufficient_balance)
             VALUES ($1, $2, $3)
             ON CONFLICT (account_id) DO UPDATE
             SET snapshot_service_activated = EXCLUDED.snapshot_service_activated,
                 insufficient_balance = EXCLUDED.insufficient_balance
             RETURNING account_id, snapshot_service_activated, insufficient_balance",
        )
        .bind(account.account_id.as_str())
        .bind(account.snapshot_service_activated)
        .bind(account.insufficient_balance)
        .fetch_one(self.connection())
        .await?;
        Ok(row.into())
    }

    async fn upsert_instance(&mut self, instance: &Instance) -> Result<Instance, StoreError> {
        let row: InstanceRow = sqlx::query_as(
            "INSERT INTO instances (instance_id, account_id, status, created_at, last_started_at,
                                    lock_reasons)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (instance_id) DO UPDATE
             SET account_id = EXCLUDED.account_id, status = EXCLUDED.status,
                 created_at = EXCLUDED.created_at, last_started_at = EXCLUDED.last_started_at,
                 lock_reasons = EXCLUDED.lock_reasons
             RETURNING instance_id, account_id, status, created_at, last_started_at, lock_reasons",
        )
        .bind(instance.instance_id.as_str())
        .bind(instance.account_id.as_str())
        .bind(instance.status.as_str())
        .bind(instance.created_at)
        .bind(instance.last_started_at)
        .bind(join_lock_reasons(&instance.lock_reasons))
        .fetch_one(self.connection())
        .await?;
        row.try_into()
    }

    async fn upsert_disk(&mut self, disk: &Disk) -> Result<Disk, StoreError> {
        let row: DiskRow = sqlx::query_as(
            "INSERT INTO disks (disk_id, account_id, category, disk_type, status, instance_id,
                                size_gib, created_at, expires_at, ever_attached)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (disk_id) DO UPDATE
             SET account_id = EXCLUDED.account_id, category = EXCLUDED.category,
                 disk_type = EXCLUDED.disk_type, status = EXCLUDED.status,
                 instance_id = EXCLUDED.instance_id, size_gib = EXCLUDED.size_gib,
                 created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
                 ever_attached = EXCLUDED.ever_attached
             RETURNING disk_id, account_id, category, disk_type, status, instance_id, size_gib,
                       created_at, expires_at, ever_attached",
        )
        .bind(disk.disk_id.as_str())
        .bind(disk.account_id.as_str())
        .bind(disk.category.as_str())
        .bind(disk.disk_type.as_str())
        .bind(disk.status.as_str())
        .bind(disk.instance_id.as_deref())
        .bind(disk.size_gib)
        .bind(disk.created_at)
        .bind(disk.expires_at)
        .bind(disk.ever_attached)
        .fetch_one(self.connection())
        .await?;
        row.try_into()
    }

    async fn lock_access_key_owner(
        &mut self,
        access_key_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let statement = format!(
            "SELECT account_id FROM access_keys WHERE access_key_id = $1{}",
            DB::LOCK_ROWS
        );
        let found: Option<(String,)> = sqlx::query_as(&statement)
            .bind(access_key_id)
            .fetch_optional(self.connection())
            .await?;
        Ok(found.map(|(owner,)| owner))
    }

    async fn upsert_access_key(&mut self, key: &AccessKey) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO access_keys (access_key_id, account_id, access_key_secret)
             VALUES ($1, $2, $3)
             ON CONFLICT (access_key_id) DO UPDATE
             SET account_id = EXCLUDED.account_id,
                 access_key_secret = EXCLUDED.access_key_secret",
        )
        .bind(key.access_key_id.as_str())
        .bind(key.account_id.as_str())
        .bind(key.access_key_secret.as_str())
        .execute(self.connection())
        .await?;
        Ok(())
    }

    async fn select_access_key(
        &mut self,
        access_key_id: &str,
    ) -> Result<Option<AccessKey>, StoreError> {
        let found: Option<AccessKeyRow> = sqlx::query_as(
            "SELECT access_key_id, access_key_secret, account_id
             FROM access_keys WHERE access_key_id = $1",
        )
        .bind(access_key_id)
        .fetch_optional(self.connection())
        .await?;
        Ok(found.map(AccessKey::from))
    }

    async fn spend_nonces(
        &mut self,
        nonces: &[(&AccessKey, &str)],
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<Vec<NonceSpend>, StoreError> {
        DB::spend_nonces(self.connection(), nonces, now, expires_at).await
    }

    async fn forget_expired_nonces(&mut self, now: Timestamp) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM signature_nonces WHERE expires_at <= $1")
            .bind(now)
            .execute(self.connection())
            .await?;
        Ok(())
    }

    /// 64 KiB of random bytes (which no page compression shrinks): a write that fits only where
    /// the disk has room again, not in what a log had already allocated.
    async fn probe_write(&mut self, now: Timestamp) -> Result<(), StoreError> {
        let mut padding = vec![0u8; 64 * 1024];
        rand::Rng::fill(&mut rand::rng(), padding.as_mut_slice());
        sqlx::query("UPDATE write_probe SET probed_at = $1, padding = $2 WHERE id = 1")
            .bind(now)
            .bind(padding)
            .execute(self.connection())
            .await?;
        Ok(())
    }

    async fn lock_own_snapshot(
        &mut self,
        account_id: &str,
        snapshot_id: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        let statement = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots s \
             WHERE s.snapshot_id = $1 AND s.account_id = $2{}",
            DB::LOCK_ROWS
        );
        let row: Option<SnapshotRow> = sqlx::query_as(&statement)
            .bind(snapshot_id)
            .bind(account_id)
            .fetch_optional(self.connection())
            .await?;
        row.map(Snapshot::try_from).transpose()
    }

    /// Every disk first, then the rows: deleting a row takes its account's count (the trigger
    /// of migration 0011), which a transaction must not hold while it waits for a disk.
    async fn delete_and_uncount(&mut self, snapshots: &[Snapshot]) -> Result<(), StoreError> {
        // In disk order, so that two replicas' sweeps lock shared disks in one order.
        let mut by_disk: Vec<&Snapshot> = snapshots.iter().collect();
        by_disk.sort_by(|a, b| a.source_disk_id.cmp(&b.source_disk_id));
        for snapshot in by_disk {
            // Every SET expression sees the row as it was, so both CASEs test the old id.
            sqlx::query(
                "UPDATE disks SET snapshot_count = snapshot_count - 1,
                     progressing_snapshot_id = CASE WHEN progressing_snapshot_id = $2 THEN NULL
                                                    ELSE progressing_snapshot_id END,
                     progressing_since = CASE WHEN progressing_snapshot_id = $2 THEN NULL
                                              ELSE progressing_since END
                 WHERE disk_id = $1",
            )
            .bind(snapshot.source_disk_id.as_str())
            .bind(snapshot.snapshot_id.as_str())
            .execute(self.connection())
            .await?;
        }
        for snapshot in snapshots {
            sqlx::query("DELETE FROM snapshots WHERE snapshot_id = $1")
                .bind(snapshot.snapshot_id.as_str())
                .execute(self.connection())
                .await?;
        }
        Ok(())
    }

    async fn update_snapshot_attributes(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE snapshots SET snapshot_name = $2, description = $3, retention_days = $4,
                                  release_at = $5, last_modified_at = $6
             WHERE snapshot_id = $1",
        )
        .bind(snapshot.snapshot_id.as_str())
        .bind(snapshot.snapshot_name.as_deref())
        .bind(snapshot.description.as_str())
        .bind(snapshot.retention.as_i32())
        .bind(snapshot.retention.release_at(snapshot.created_at))
        .bind(snapshot.last_modified_at)
        .execute(self.connection())
        .await?;
        Ok(())
    }

    async fn read_image_token(
        &mut self,
        account_id: &str,
        client_token: &str,
    ) -> Result<Option<TokenBinding>, StoreError> {
        let row: Option<OptionalTokenColumns> = sqlx::query_as(
            "SELECT fingerprint AS token_fingerprint, image_id AS token_snapshot_id
             FROM image_client_tokens WHERE account_id = $1 AND client_token = $2",
        )
        .bind(account_id)
        .bind(client_token)
        .fetch_optional(self.connection())
        .await?;
        Ok(row.and_then(OptionalTokenColumns::into_binding))
    }

    async fn insert_image(
        &mut self,
        image_id: &str,
        command: &CreateImageCommand,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO images (image_id, account_id, snapshot_id, image_name, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(image_id)
        .bind(command.account_id.as_str())
        .bind(command.snapshot_id.as_str())
        .bind(command.image_name.as_ref().map(|n| n.as_str()))
        .bind(now)
        .execute(self.connection())
        .await?;
        sqlx::query(
            "UPDATE snapshots SET usage = 'image', last_modified_at = $2 WHERE snapshot_id = $1",
        )
        .bind(command.snapshot_id.as_str())
        .bind(now)
        .execute(self.connection())
        .await?;
        if let Some(token) = &command.client_token {
            sqlx::query(
                "INSERT INTO image_client_tokens (account_id, client_token, fingerprint, image_id,
                                                  created_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(command.account_id.as_str())
            .bind(token.as_str())
            .bind(command.fingerprint())
            .bind(image_id)
            .bind(now)
            .execute(self.connection())
            .await?;
        }
        Ok(())
    }

    async fn lock_own_image(
        &mut self,
        account_id: &str,
        image_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let statement = format!(
            "SELECT snapshot_id FROM images WHERE image_id = $1 AND account_id = $2{}",
            DB::LOCK_ROWS
        );
        let row: Option<(String,)> = sqlx::query_as(&statement)
            .bind(image_id)
            .bind(account_id)
            .fetch_optional(self.connection())
            .await?;
        Ok(row.map(|(snapshot_id,)| snapshot_id))
    }

    /// Two statements after the snapshot's lock was taken: on PostgreSQL the count of the
    /// snapshot's images then sees every CreateImage that committed while this call waited.
    async fn delete_image(
        &mut self,
        image_id: &str,
        snapshot_id: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM images WHERE image_id = $1")
            .bind(image_id)
            .execute(self.connection())
            .await?;
        sqlx::query(
            "UPDATE snapshots SET usage = 'none', last_modified_at = $2
             WHERE snapshot_id = $1 AND usage = 'image'
               AND NOT EXISTS (SELECT 1 FROM images WHERE snapshot_id = $1)",
        )
        .bind(snapshot_id)
        .bind(now)
        .execute(self.connection())
        .await?;
        Ok(())
    }

    /// Newest first, keyed on `(created_at, image_id)` as DescribeSnapshots is keyed; one row
    /// more than the page tells whether another follows. Then the count with the same filters,
    /// unless the token carries the listing's total (counted on its first page).
    async fn describe_images(&mut self, query: &ImageQuery) -> Result<ImagePage, StoreError> {
        let mut statement = matching_images(
            "SELECT i.image_id, i.account_id, i.snapshot_id, i.image_name, i.created_at, \
                    s.source_disk_size_gib AS size_gib, s.source_disk_type AS disk_type \
             FROM images i JOIN snapshots s ON s.snapshot_id = i.snapshot_id"
                .to_owned(),
            query,
        );
        let after = query.after.as_ref().map(
            |ImageCursor {
                 created_at,
                 image_id,
                 ..
             }| (*created_at, image_id.as_str()),
        );
        push_newest_first_page(
            &mut statement,
            "i.created_at",
            "i.image_id",
            after,
            query.limit,
            query.skip,
        );
        let rows: Vec<ImageRow> = statement.fetch_all(self.connection()).await?;
        let (images, next) = into_image_page(rows, query.limit)?;
        let carried = query.after.as_ref().and_then(|after| after.total);
        let total = match carried {
            Some(total) => total,
            // A first page with nothing after it holds every match: no count to ask for.
            None if query.after.is_none() && query.skip == 0 && next.is_none() => {
                images.len() as u64
            }
            None => {
                let counted: Vec<(i64,)> =
                    matching_images("SELECT count(*) FROM images i".to_owned(), query)
                        .fetch_all(self.connection())
                        .await?;
                counted
                    .first()
                    .map_or(0, |(n,)| u64::try_from(*n).unwrap_or(0))
            }
        };
        Ok(ImagePage {
            images,
            next: next.map(|next| ImageCursor {
                total: Some(total),
                ..next
            }),
            total,
        })
    }

    async fn claim_due(
        &mut self,
        queue: WorkQueue,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Snapshot>, StoreError> {
        let due = match queue {
            WorkQueue::Copies => {
                "s.status = 'progressing' AND s.copy_due_at <= $1 ORDER BY s.copy_due_at"
            }
            WorkQueue::Releases => "s.release_at <= $1 AND s.usage = 'none' ORDER BY s.release_at",
        };
        let statement = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots s WHERE {due} LIMIT $2{}",
            DB::CLAIM_ROWS
        );
        let rows: Vec<SnapshotRow> = sqlx::query_as(&statement)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(self.connection())
            .await?;
        Ok(decode_queue(rows))
    }

    async fn postpone_copy(
        &mut self,
        snapshot: &Snapshot,
        due: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE snapshots SET copy_due_at = $2 WHERE snapshot_id = $1")
            .bind(snapshot.snapshot_id.as_str())
            .bind(due)
            .execute(self.connection())
            .await?;
        Ok(())
    }

    /// One statement per status and one for the disks, however many copies ended.
    async fn finish_copies(
        &mut self,
        finished: &[(&Snapshot, SnapshotStatus)],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if finished.is_empty() {
            return Ok(());
        }
        for status in [SnapshotStatus::Accomplished, SnapshotStatus::Failed] {
            let ids: Vec<&str> = finished
                .iter()
                .filter(|(_, finished_as)| *finished_as == status)
                .map(|(snapshot, _)| snapshot.snapshot_id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let statement = format!(
                "UPDATE snapshots SET status = $1, last_modified_at = $2 WHERE snapshot_id IN ({})",
                placeholders(3, ids.len())
            );
            let mut query = sqlx::query(&statement).bind(status.as_str()).bind(now);
            for id in ids {
                query = query.bind(id);
            }
            query.execute(self.connection()).await?;
        }
        // Disks in id order, so that concurrent steps lock them in one order; a disk is freed
        // only by its own copy in progress.
        let mut disks: Vec<(&str, &str)> = finished
            .iter()
            .map(|(s, _)| (s.source_disk_id.as_str(), s.snapshot_id.as_str()))
            .collect();
        disks.sort_unstable();
        let statement = format!(
            "UPDATE disks SET progressing_snapshot_id = NULL, progressing_since = NULL \
             WHERE disk_id IN ({}) AND progressing_snapshot_id IN ({})",
            placeholders(1, disks.len()),
            placeholders(1 + disks.len(), disks.len())
        );
        let mut query = sqlx::query(&statement);
        for (disk_id, _) in &disks {
            query = query.bind(*disk_id);
        }
        for (_, snapshot_id) in &disks {
            query = query.bind(*snapshot_id);
        }
        query.execute(self.connection()).await?;
        Ok(())
    }

    async fn lock_own_snapshots_and_tags(
        &mut self,
        account_id: &str,
        snapshot_ids: &[String],
    ) -> Result<Vec<(String, Vec<Tag>)>, StoreError> {
        if snapshot_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut lock = Statement::new(format!(
            "SELECT snapshot_id FROM snapshots WHERE account_id = $1 AND {} \
             ORDER BY snapshot_id{}",
            DB::in_text_list("snapshot_id", "$2"),
            DB::LOCK_ROWS
        ));
        lock.params = vec![
            Param::Text(account_id.to_owned()),
            Param::TextList(snapshot_ids.to_vec()),
        ];
        let locked: Vec<(String,)> = lock.fetch_all(self.connection()).await?;
        if locked.is_empty() {
            return Ok(Vec::new());
        }
        let locked: Vec<String> = locked.into_iter().map(|(id,)| id).collect();
        let mut read = Statement::new(format!(
            "SELECT snapshot_id, key, value FROM snapshot_tags WHERE {} ORDER BY snapshot_id, key",
            DB::in_text_list("snapshot_id", "$1")
        ));
        read.params = vec![Param::TextList(locked.clone())];
        let rows: Vec<(String, String, String)> = read.fetch_all(self.connection()).await?;
        let mut tags_of: Vec<(String, Vec<Tag>)> =
            locked.into_iter().map(|id| (id, Vec::new())).collect();
        for (snapshot_id, key, value) in rows {
            // Both in id order.
            if let Some((_, tags)) = tags_of.iter_mut().find(|(id, _)| *id == snapshot_id) {
                tags.push(Tag { key, value });
            }
        }
        Ok(tags_of)
    }

    async fn put_tags(
        &mut self,
        snapshot_ids: &[String],
        tags: &[Tag],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if snapshot_ids.is_empty() {
            return Ok(());
        }
        let mut put = Statement::new(DB::PUT_TAGS.to_owned());
        put.params = vec![
            Param::TextList(snapshot_ids.to_vec()),
            Param::TextList(tags.iter().map(|tag| tag.key.clone()).collect()),
            Param::TextList(tags.iter().map(|tag| tag.value.clone()).collect()),
        ];
        put.execute(self.connection()).await?;
        self.touch_snapshots(snapshot_ids, now).await
    }

    async fn remove_tags(
        &mut self,
        snapshot_ids: &[String],
        keys: &TagKeys,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if snapshot_ids.is_empty() {
            return Ok(());
        }
        let of_snapshots = DB::in_text_list("snapshot_id", "$1");
        let mut remove = match keys {
            TagKeys::All => {
                Statement::new(format!("DELETE FROM snapshot_tags WHERE {of_snapshots}"))
            }
            TagKeys::Only(keys) => {
                let mut remove = Statement::new(format!(
                    "DELETE FROM snapshot_tags WHERE {of_snapshots} AND {}",
                    DB::in_text_list("key", "$2")
                ));
                remove.params.push(Param::TextList(keys.clone()));
                remove
            }
        };
        remove
            .params
            .insert(0, Param::TextList(snapshot_ids.to_vec()));
        remove.execute(self.connection()).await?;
        self.touch_snapshots(snapshot_ids, now).await
    }

    async fn own_snapshot_ids(
        &mut self,
        account_id: &str,
        snapshot_ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        if snapshot_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut statement =
            Statement::new("SELECT snapshot_id FROM snapshots WHERE account_id = ".to_owned());
        statement.push_param(Param::Text(account_id.to_owned()));
        statement.push(" AND snapshot_id IN ");
        statement.push_list(snapshot_ids);
        let rows: Vec<(String,)> = statement.fetch_all(self.connection()).await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// Keyed on `(snapshot_id, key)`, the table's primary key, so pages neither repeat nor skip
    /// rows; one row more than the page tells whether another follows.
    async fn list_tags(&mut self, query: &TagQuery) -> Result<TagPage, StoreError> {
        let mut statement = Statement::new(
            "SELECT t.snapshot_id, t.key, t.value FROM snapshot_tags t \
             JOIN snapshots s ON s.snapshot_id = t.snapshot_id WHERE s.account_id = "
                .to_owned(),
        );
        statement.push_param(Param::Text(query.account_id.clone()));
        if !query.snapshot_ids.is_empty() {
            statement.push(" AND t.snapshot_id IN ");
            statement.push_list(&query.snapshot_ids);
        }
        for tag in &query.tags {
            statement.push(
                " AND EXISTS (SELECT 1 FROM snapshot_tags f \
                 WHERE f.snapshot_id = t.snapshot_id AND f.key = ",
            );
            statement.push_param(Param::Text(tag.key.clone()));
            // An empty value matches any value of the key, as in DescribeSnapshots.
            if !tag.value.is_empty() {
                statement.push(" AND f.value = ");
                statement.push_param(Param::Text(tag.value.clone()));
            }
            statement.push(")");
        }
        if let Some(after) = &query.after {
            let id = statement.param(Param::Text(after.snapshot_id.clone()));
            let key = statement.param(Param::Text(after.key.clone()));
            statement.push(&format!(
                " AND (t.snapshot_id > {id} OR (t.snapshot_id = {id} AND t.key > {key}))"
            ));
        }
        statement.push(" ORDER BY t.snapshot_id, t.key LIMIT ");
        statement.push_param(Param::Int(i64::from(query.limit) + 1));
        let mut rows: Vec<TagRow> = statement.fetch_all(self.connection()).await?;
        let limit = usize::try_from(query.limit).unwrap_or(usize::MAX);
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| TagCursor {
                snapshot_id: last.snapshot_id.clone(),
                key: last.key.clone(),
            })
        } else {
            None
        };
        Ok(TagPage {
            tags: rows
                .into_iter()
                .map(|row| TagResource {
                    snapshot_id: row.snapshot_id,
                    key: row.key,
                    value: row.value,
                })
                .collect(),
            next,
        })
    }

    async fn read_simulation(&mut self) -> Result<(i64, Vec<DiskSteering>), StoreError> {
        let offset: Option<(i64,)> =
            sqlx::query_as("SELECT offset_us FROM simulation_clock WHERE id = 1")
                .fetch_optional(self.connection())
                .await?;
        let disks: Vec<SteeringRow> = sqlx::query_as(&format!(
            "SELECT {STEERING_COLUMNS} FROM simulated_disks ORDER BY disk_id"
        ))
        .fetch_all(self.connection())
        .await?;
        Ok((
            offset.map_or(0, |(offset,)| offset),
            disks.into_iter().map(DiskSteering::from).collect(),
        ))
    }

    async fn advance_clock(
        &mut self,
        by_micros: i64,
        max_micros: i64,
    ) -> Result<Option<i64>, StoreError> {
        let moved: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO simulation_clock (id, offset_us) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET offset_us = simulation_clock.offset_us + $1
             WHERE simulation_clock.offset_us <= $2 - $1
             RETURNING offset_us",
        )
        .bind(by_micros)
        .bind(max_micros)
        .fetch_optional(self.connection())
        .await?;
        Ok(moved.map(|(offset,)| offset))
    }

    async fn lock_steering(&mut self, disk_id: &str) -> Result<DiskSteering, StoreError> {
        sqlx::query("INSERT INTO simulated_disks (disk_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(disk_id)
            .execute(self.connection())
            .await?;
        let statement = format!(
            "SELECT {STEERING_COLUMNS} FROM simulated_disks WHERE disk_id = $1{}",
            DB::LOCK_ROWS
        );
        let row: SteeringRow = sqlx::query_as(&statement)
            .bind(disk_id)
            .fetch_one(self.connection())
            .await?;
        Ok(row.into())
    }

    async fn put_steering(&mut self, steering: &DiskSteering) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE simulated_disks SET rate_mibps = $2, rate_since = $3,
                 checkpoint_snapshot = $4, checkpoint_kib = $5, fail_from = $6,
                 doomed_snapshot_id = $7
             WHERE disk_id = $1",
        )
        .bind(steering.disk_id.as_str())
        .bind(steering.rate.map(|rate| rate.mibps))
        .bind(steering.rate.map(|rate| rate.since))
        .bind(steering.checkpoint.as_ref().map(|c| c.snapshot_id.as_str()))
        .bind(steering.checkpoint.as_ref().map(|c| c.copied_kib))
        .bind(steering.fail_from)
        .bind(steering.doomed_snapshot_id.as_deref())
        .execute(self.connection())
        .await?;
        Ok(())
    }

    async fn pick_doomed(
        &mut self,
        disk_id: &str,
        snapshot_id: &str,
        fail_from: Timestamp,
        fails_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let picked: Option<(String,)> = sqlx::query_as(
            "UPDATE simulated_disks SET doomed_snapshot_id = $2, fail_from = NULL
             WHERE disk_id = $1 AND fail_from = $3
               AND EXISTS (SELECT 1 FROM snapshots WHERE snapshot_id = $2)
             RETURNING disk_id",
        )
        .bind(disk_id)
        .bind(snapshot_id)
        .bind(fail_from)
        .fetch_optional(self.connection())
        .await?;
        if picked.is_some() {
            self.hasten_copy(disk_id, fails_at).await?;
        }
        Ok(picked.is_some())
    }

    async fn hasten_copy(&mut self, disk_id: &str, due: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE snapshots SET copy_due_at = $2
             WHERE source_disk_id = $1 AND status = 'progressing' AND copy_due_at > $2",
        )
        .bind(disk_id)
        .bind(due)
        .execute(self.connection())
        .await?;
        Ok(())
    }

    async fn lock_progressing_snapshot(
        &mut self,
        disk_id: &str,
    ) -> Result<Option<Snapshot>, StoreError> {
        let statement = format!(
            "SELECT {SNAPSHOT_COLUMNS} FROM snapshots s \
             WHERE s.source_disk_id = $1 AND s.status = 'progressing'{}",
            DB::LOCK_ROWS
        );
        let row: Option<SnapshotRow> = sqlx::query_as(&statement)
            .bind(disk_id)
            .fetch_optional(self.connection())
            .await?;
        row.map(Snapshot::try_from).transpose()
    }

    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.end("COMMIT").await
    }

    async fn rollback(mut self: Box<Self>) {
        // Now, not when the connection is next used: until then it would keep its locks.
        let _ = self.end("ROLLBACK").await;
    }
}

impl<DB> SqlSession<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Timestamp: Encode<'q, DB> + Type<DB>,
{
    /// A change to a snapshot's tags is a change to the snapshot: its `LastModifiedTime`.
    async fn touch_snapshots(
        &mut self,
        snapshot_ids: &[String],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut touch = Statement::new(format!(
            "UPDATE snapshots SET last_modified_at = $1 WHERE {}",
            DB::in_text_list("snapshot_id", "$2")
        ));
        touch.params = vec![Param::Time(now), Param::TextList(snapshot_ids.to_vec())];
        touch.execute(self.connection()).await?;
        Ok(())
    }
}

/// The number of the caller's snapshots that match the query's filters, in a statement of its
/// own.
fn count_matching_snapshots<DB: Dialect>(query: &SnapshotQuery) -> Statement {
    if query.filters_only_by_account() {
        let mut statement = Statement::new("SELECT ".to_owned());
        let total = account_total(&mut statement, &query.account_id);
        statement.push(&total);
        return statement;
    }
    let mut statement = Statement::new("SELECT count(*) FROM snapshots s".to_owned());
    push_snapshot_filters::<DB>(&mut statement, query);
    statement
}

/// An expression of the number of snapshots the account holds, its parameter added to
/// `statement`: the sum of the account's kept counts (migration 0011), a few rows however many
/// snapshots it holds.
fn account_total(statement: &mut Statement, account_id: &str) -> String {
    let account = statement.param(Param::Text(account_id.to_owned()));
    format!(
        "(SELECT CAST(COALESCE(SUM(c.snapshot_count), 0) AS BIGINT) \
         FROM account_snapshot_counts c WHERE c.account_id = {account})"
    )
}

/// DescribeSnapshots in one statement: the page of the caller's snapshots `s` that match the
/// query's filters, newest first, keyed on `(created_at, snapshot_id)` so pages neither repeat
/// nor skip rows, one row more than the page to tell whether another follows; each row with
/// its tags (`tags`, see [`Dialect::SNAPSHOT_TAGS_JSON`]) and the count of every match
/// (`total`, the same on every row): on a listing's first page read from the account's kept
/// count when nothing but the account filters it, else counted; carried by its token after
/// that (a parameter, no count: a page deep in a big account costs what one in a small
/// account does). Its text depends only on which filters are present and whether it counts,
/// never on how many ids or on the page's size, so the driver's prepared statement is reused.
/// (The bench's pgbench script runs this text.)
pub fn describe_snapshots_statement<DB: Dialect>(query: &SnapshotQuery) -> Statement {
    let mut statement = Statement::new(format!(
        "WITH page AS (\n    SELECT {SNAPSHOT_COLUMNS}\n    FROM snapshots s"
    ));
    let filters_at = statement.sql.len();
    push_snapshot_filters::<DB>(&mut statement, query);
    // The count reads the same filters, with the same parameters.
    let filters = statement.sql[filters_at..].to_owned();
    let after = query
        .after
        .as_ref()
        .map(|cursor| (cursor.created_at, cursor.snapshot_id.as_str()));
    // Without an offset, the page's size bounds the outer query, and a constant the inner one:
    // see `PAGE_ROWS_BOUND` (a bigger page than a caller may ask for, which only code can build,
    // is never cut short by it).
    let bounded = query.skip == 0 && query.limit < PAGE_ROWS_BOUND;
    if bounded {
        push_after_cursor(&mut statement, "s.created_at", "s.snapshot_id", after);
        statement.push(&format!(
            "\n    ORDER BY s.created_at DESC, s.snapshot_id DESC LIMIT {PAGE_ROWS_BOUND}"
        ));
    } else {
        push_newest_first_page(
            &mut statement,
            "s.created_at",
            "s.snapshot_id",
            after,
            query.limit,
            query.skip,
        );
    }
    let total = match carried_total(query) {
        Some(total) => statement.param(Param::Int(total)),
        None if query.filters_only_by_account() => account_total(&mut statement, &query.account_id),
        None => format!("(SELECT count(*) FROM snapshots s{filters})"),
    };
    statement.push(&format!(
        ")\nSELECT {SNAPSHOT_COLUMNS},\n       {tags} AS tags,\n       \
         {total} AS total\nFROM page s\n\
         ORDER BY s.created_at DESC, s.snapshot_id DESC",
        tags = DB::SNAPSHOT_TAGS_JSON
    ));
    if bounded {
        statement.push(" LIMIT ");
        statement.push_param(Param::Int(i64::from(query.limit) + 1));
    }
    statement
}

/// The most rows a page without an offset reads: the largest page and the row that tells
/// whether another follows. Written into the statement as a constant, it bounds PostgreSQL's
/// estimate of the page's rows for the plan it keeps for every page size (the generic plan),
/// which reads the size from a parameter and so guesses a tenth of the matching rows: for an
/// account holding 2,048 snapshots, 205 rows and their tags, ten times what a custom plan for a
/// page of 20 costs, so PostgreSQL planned the statement again at every page (0.3 ms, more than
/// its execution; bench/README.md, "Statistics"). Bounded, a tenth is 10 rows, and the generic
/// plan is kept. The page's own size, a parameter, limits the outer query.
const PAGE_ROWS_BOUND: u32 = crate::domain::MAX_PAGE_SIZE + 1;

/// The total a page's token carries from the listing's first page (a `v1` token carries none).
fn carried_total(query: &SnapshotQuery) -> Option<i64> {
    let total = query.after.as_ref()?.total?;
    // The token's parse keeps a total within a count's range.
    i64::try_from(total).ok()
}

/// Appends the `WHERE` clause over the caller's snapshots `s` that match the query's filters
/// (not its page).
fn push_snapshot_filters<DB: Dialect>(statement: &mut Statement, query: &SnapshotQuery) {
    statement.push(" WHERE s.account_id = ");
    statement.push_param(Param::Text(query.account_id.clone()));
    if let Some(disk_id) = &query.disk_id {
        statement.push(" AND s.source_disk_id = ");
        statement.push_param(Param::Text(disk_id.clone()));
    }
    if !query.snapshot_ids.is_empty() {
        let ids = statement.param(Param::TextList(query.snapshot_ids.clone()));
        statement.push(&format!(" AND {}", DB::in_text_list("s.snapshot_id", &ids)));
    }
    if let Some(status) = query.status {
        statement.push(" AND s.status = ");
        statement.push_param(Param::Text(status.as_str().to_owned()));
    }
    if let Some(name) = &query.snapshot_name {
        statement.push(" AND s.snapshot_name = ");
        statement.push_param(Param::Text(name.clone()));
    }
    if let Some(instance_id) = &query.instance_id {
        // The disks attached to it now, of the caller's own account.
        statement.push(
            " AND s.source_disk_id IN (SELECT d.disk_id FROM disks d WHERE d.account_id = s.account_id AND d.instance_id = ",
        );
        statement.push_param(Param::Text(instance_id.clone()));
        statement.push(")");
    }
    if let Some(disk_type) = query.source_disk_type {
        statement.push(" AND s.source_disk_type = ");
        statement.push_param(Param::Text(disk_type.as_str().to_owned()));
    }
    if let Some(usage) = query.usage {
        statement.push(" AND s.usage = ");
        statement.push_param(Param::Text(usage.as_str().to_owned()));
    }
    if let Some(after) = query.created_after {
        statement.push(" AND s.created_at >= ");
        statement.push_param(Param::Time(after));
    }
    if let Some(before) = query.created_before {
        statement.push(" AND s.created_at < ");
        statement.push_param(Param::Time(before));
    }
    for tag in &query.tags {
        statement.push(" AND EXISTS (SELECT 1 FROM snapshot_tags t WHERE t.snapshot_id = s.snapshot_id AND t.key = ");
        statement.push_param(Param::Text(tag.key.clone()));
        // An empty value matches any value of the key.
        if !tag.value.is_empty() {
            statement.push(" AND t.value = ");
            statement.push_param(Param::Text(tag.value.clone()));
        }
        statement.push(")");
    }
}

/// `select` over the caller's images `i` that match the query's filters (not its page).
fn matching_images(select: String, query: &ImageQuery) -> Statement {
    let mut statement = Statement::new(format!("{select} WHERE i.account_id = "));
    statement.push_param(Param::Text(query.account_id.clone()));
    if !query.image_ids.is_empty() {
        statement.push(" AND i.image_id IN ");
        statement.push_list(&query.image_ids);
    }
    if let Some(snapshot_id) = &query.snapshot_id {
        statement.push(" AND i.snapshot_id = ");
        statement.push_param(Param::Text(snapshot_id.clone()));
    }
    statement
}

/// Appends a page of rows newest first, keyed on `(created, id)`: the rows after the cursor
/// `after`, one more than `limit` (it tells whether another page follows), `skip` rows in.
/// The cursor is a row comparison, which an index on `(…, created, id)` seeks to: a deep page
/// costs what the first does (written as `<` OR `=` AND `<`, the scan began at the newest row
/// and filtered every row before the cursor).
fn push_newest_first_page(
    statement: &mut Statement,
    created: &str,
    id: &str,
    after: Option<(Timestamp, &str)>,
    limit: u32,
    skip: u32,
) {
    push_after_cursor(statement, created, id, after);
    statement.push(&format!("\n    ORDER BY {created} DESC, {id} DESC LIMIT "));
    statement.push_param(Param::Int(i64::from(limit) + 1));
    if skip > 0 {
        statement.push(" OFFSET ");
        statement.push_param(Param::Int(i64::from(skip)));
    }
}

/// Appends the condition that keeps the rows after the cursor `after`, newest first.
fn push_after_cursor(
    statement: &mut Statement,
    created: &str,
    id: &str,
    after: Option<(Timestamp, &str)>,
) {
    if let Some((created_at, last_id)) = after {
        let at = statement.param(Param::Time(created_at));
        let last = statement.param(Param::Text(last_id.to_owned()));
        statement.push(&format!(" AND ({created}, {id}) < ({at}, {last})"));
    }
}

/// `$first, …` for `count` placeholders.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sql` with each `$N` placeholder replaced by `values[N - 1]`, in one pass by whole number
/// (`$1` is not the start of `$10`, and a value's own text is never read again). A `$` that
/// names no value is left as written. For tools that run the store's statements with literals
/// (the SQLite limit, the bench's pgbench scripts).
pub fn bind_placeholders(sql: &str, values: &[&str]) -> String {
    let mut bound = String::with_capacity(sql.len() * 2);
    let mut rest = sql;
    while let Some(dollar) = rest.find('$') {
        bound.push_str(&rest[..dollar]);
        let digits = rest[dollar + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        let value = rest[dollar + 1..dollar + 1 + digits]
            .parse::<usize>()
            .ok()
            .and_then(|number| values.get(number.wrapping_sub(1)));
        match value {
            Some(value) => bound.push_str(value),
            None => bound.push_str(&rest[dollar..dollar + 1 + digits]),
        }
        rest = &rest[dollar + 1 + digits..];
    }
    bound.push_str(rest);
    bound
}

/// A value bound to a statement built at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    Time(Timestamp),
    Int(i64),
    /// One parameter holding a list (see [`Dialect::in_text_list`]).
    TextList(Vec<String>),
}

/// A statement built at run time (DescribeSnapshots' filters), with its parameters in
/// placeholder order: `params[0]` is `$1`.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Statement {
    fn new(sql: String) -> Self {
        Self {
            sql,
            params: Vec::new(),
        }
    }

    fn push(&mut self, sql: &str) {
        self.sql.push_str(sql);
    }

    /// Adds a parameter and returns its placeholder.
    fn param(&mut self, param: Param) -> String {
        self.params.push(param);
        format!("${}", self.params.len())
    }

    fn push_param(&mut self, param: Param) {
        let placeholder = self.param(param);
        self.sql.push_str(&placeholder);
    }

    /// The statement with each parameter written in as an SQL literal, as SQLite reads it (a
    /// time as sqlx encodes it for SQLite: RFC 3339 text; a list as JSON text).
    pub(super) fn with_literals(&self) -> String {
        let literal = |param: &Param| match param {
            Param::Text(text) => format!("'{}'", text.replace('\'', "''")),
            Param::Time(time) => format!(
                "'{}'",
                time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
            ),
            Param::Int(int) => int.to_string(),
            // As the SQLite store binds a list: JSON text (`Dialect::bind_text_list`).
            Param::TextList(list) => format!(
                "'{}'",
                serde_json::to_string(list)
                    .expect("a list of strings is JSON")
                    .replace('\'', "''")
            ),
        };
        let literals: Vec<String> = self.params.iter().map(literal).collect();
        let literals: Vec<&str> = literals.iter().map(String::as_str).collect();
        bind_placeholders(&self.sql, &literals)
    }

    /// `($n, $n+1, …)`, one text parameter per item.
    fn push_list(&mut self, items: &[String]) {
        let list: Vec<String> = items
            .iter()
            .map(|item| self.param(Param::Text(item.clone())))
            .collect();
        self.sql.push_str(&format!("({})", list.join(", ")));
    }

    async fn fetch_all<DB, R>(
        self,
        connection: SessionConnection<'_, DB>,
    ) -> Result<Vec<R>, sqlx::Error>
    where
        DB: Dialect,
        R: for<'r> FromRow<'r, DB::Row> + Send + Unpin,
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
        for<'q> String: Encode<'q, DB> + Type<DB>,
        for<'q> i64: Encode<'q, DB> + Type<DB>,
        for<'q> Timestamp: Encode<'q, DB> + Type<DB>,
    {
        let arguments = arguments::<DB>(self.params)?;
        sqlx::query_as_with::<DB, R, _>(&self.sql, arguments)
            .fetch_all(connection)
            .await
    }

    /// Runs a statement that returns no rows.
    async fn execute<DB>(self, connection: SessionConnection<'_, DB>) -> Result<(), sqlx::Error>
    where
        DB: Dialect,
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
        for<'q> String: Encode<'q, DB> + Type<DB>,
        for<'q> i64: Encode<'q, DB> + Type<DB>,
        for<'q> Timestamp: Encode<'q, DB> + Type<DB>,
    {
        let arguments = arguments::<DB>(self.params)?;
        sqlx::query_with::<DB, _>(&self.sql, arguments)
            .execute(connection)
            .await?;
        Ok(())
    }
}

/// The parameters in placeholder order, as the database binds them.
fn arguments<'q, DB>(params: Vec<Param>) -> Result<DB::Arguments<'q>, sqlx::Error>
where
    DB: Dialect,
    for<'a> String: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
    for<'a> Timestamp: Encode<'a, DB> + Type<DB>,
{
    let mut arguments = DB::Arguments::<'q>::default();
    for param in params {
        match param {
            Param::Text(text) => arguments.add(text),
            Param::Time(at) => arguments.add(at),
            Param::Int(n) => arguments.add(n),
            Param::TextList(list) => arguments.add(DB::text_list(list)),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(arguments)
}

/// One promise of the service, as a query returning `(subject, detail)` for each breach.
struct Invariant {
    promise: &'static str,
    sql: &'static str,
    /// Binds the quota as `$1`.
    takes_quota: bool,
}

// The tag promise below writes the limit into its SQL: a change of the limit must change it.
const _: () = assert!(crate::domain::MAX_TAGS == 20);

const INVARIANTS: &[Invariant] = &[
    Invariant {
        promise: "a disk holds at most its quota of snapshots",
        sql: "SELECT source_disk_id, CAST(COUNT(*) AS TEXT) FROM snapshots \
              GROUP BY source_disk_id HAVING COUNT(*) > $1",
        takes_quota: true,
    },
    Invariant {
        promise: "a disk has at most one snapshot in progress",
        sql: "SELECT source_disk_id, CAST(COUNT(*) AS TEXT) FROM snapshots \
              WHERE status = 'progressing' GROUP BY source_disk_id HAVING COUNT(*) > 1",
        takes_quota: false,
    },
    Invariant {
        promise: "a client token names a snapshot of its own account",
        sql: "SELECT t.account_id || '/' || t.client_token, s.account_id FROM client_tokens t \
              JOIN snapshots s ON s.snapshot_id = t.snapshot_id \
              WHERE s.account_id <> t.account_id",
        takes_quota: false,
    },
    Invariant {
        promise: "every snapshot's disk and account exist",
        sql: "SELECT s.snapshot_id, s.source_disk_id FROM snapshots s \
              LEFT JOIN disks d ON d.disk_id = s.source_disk_id \
              LEFT JOIN accounts a ON a.account_id = s.account_id \
              WHERE (d.disk_id IS NULL OR a.account_id IS NULL)",
        takes_quota: false,
    },
    Invariant {
        promise: "a snapshot belongs to its disk's account",
        sql: "SELECT s.snapshot_id, s.account_id || ' <> ' || d.account_id FROM snapshots s \
              JOIN disks d ON d.disk_id = s.source_disk_id \
              WHERE d.account_id <> s.account_id",
        takes_quota: false,
    },
    Invariant {
        promise: "a disk is attached only to an instance of its own account",
        sql: "SELECT d.disk_id, d.account_id || ' <> ' || i.account_id FROM disks d \
              JOIN instances i ON i.instance_id = d.instance_id \
              WHERE i.account_id <> d.account_id",
        takes_quota: false,
    },
    Invariant {
        promise: "a disk's snapshot count is the number of its snapshots",
        sql: "SELECT d.disk_id, \
                     CAST(d.snapshot_count AS TEXT) || ' <> ' || CAST(COUNT(s.snapshot_id) AS TEXT) \
              FROM disks d LEFT JOIN snapshots s ON s.source_disk_id = d.disk_id \
              GROUP BY d.disk_id, d.snapshot_count \
              HAVING d.snapshot_count <> COUNT(s.snapshot_id)",
        takes_quota: false,
    },
    Invariant {
        promise: "an account's snapshot count is the number of its snapshots",
        sql: "SELECT a.account_id, \
                     CAST(COALESCE(c.counted, 0) AS TEXT) || ' <> ' || CAST(COALESCE(s.held, 0) AS TEXT) \
              FROM accounts a \
              LEFT JOIN (SELECT account_id, SUM(snapshot_count) AS counted \
                         FROM account_snapshot_counts GROUP BY account_id) c \
                ON c.account_id = a.account_id \
              LEFT JOIN (SELECT account_id, COUNT(*) AS held FROM snapshots GROUP BY account_id) s \
                ON s.account_id = a.account_id \
              WHERE COALESCE(c.counted, 0) <> COALESCE(s.held, 0)",
        takes_quota: false,
    },
    Invariant {
        promise: "a snapshot holds at most 20 tags",
        sql: "SELECT snapshot_id, CAST(COUNT(*) AS TEXT) FROM snapshot_tags \
              GROUP BY snapshot_id HAVING COUNT(*) > 20",
        takes_quota: false,
    },
    Invariant {
        promise: "a disk's copy in progress is its progressing snapshot",
        sql: "SELECT d.disk_id, COALESCE(d.progressing_snapshot_id, '(none)') FROM disks d \
              LEFT JOIN snapshots s ON s.source_disk_id = d.disk_id AND s.status = 'progressing' \
              WHERE (d.progressing_snapshot_id IS NULL) <> (s.snapshot_id IS NULL) \
                 OR d.progressing_snapshot_id <> s.snapshot_id",
        takes_quota: false,
    },
    Invariant {
        promise: "a snapshot's usage is image exactly while an image uses it",
        // Images grouped first and joined to the snapshots: grouping every snapshot instead
        // took 199 s of `snapshotd check`'s 301 s on bench/bigdata.sh's 10 M snapshots (now 6 s).
        sql: "SELECT s.snapshot_id, \
                     s.usage || ' with ' || CAST(COALESCE(i.images, 0) AS TEXT) || ' images' \
              FROM snapshots s \
              LEFT JOIN (SELECT snapshot_id, COUNT(*) AS images FROM images GROUP BY snapshot_id) i \
                ON i.snapshot_id = s.snapshot_id \
              WHERE (s.usage = 'image') <> (i.images IS NOT NULL)",
        takes_quota: false,
    },
    Invariant {
        promise: "an image's snapshot exists and belongs to the image's account",
        sql: "SELECT i.image_id, i.snapshot_id || ' of ' || COALESCE(s.account_id, '(none)') \
              FROM images i LEFT JOIN snapshots s ON s.snapshot_id = i.snapshot_id \
              WHERE s.snapshot_id IS NULL OR s.account_id <> i.account_id",
        takes_quota: false,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MAX_PAGE_SIZE, PageCursor};

    #[test]
    fn a_built_statement_numbers_its_placeholders_in_binding_order() {
        let mut statement = Statement::new("SELECT 1 WHERE a = ".to_owned());
        statement.push_param(Param::Text("a".into()));
        statement.push(" AND b IN ");
        statement.push_list(&["x".into(), "y".into()]);
        let at = statement.param(Param::Time(Timestamp::default()));
        statement.push(&format!(" AND (c < {at} OR c = {at}) LIMIT "));
        statement.push_param(Param::Int(11));
        assert_eq!(
            statement.sql,
            "SELECT 1 WHERE a = $1 AND b IN ($2, $3) AND (c < $4 OR c = $4) LIMIT $5"
        );
        assert_eq!(statement.params.len(), 5);
        assert!(matches!(statement.params.last(), Some(Param::Int(11))));
    }

    #[test]
    fn literals_replace_placeholders_by_whole_number_and_are_not_read_again() {
        let mut statement = Statement::new("SELECT ".to_owned());
        let params: Vec<String> = (1..=10).map(|n| format!("v{n}")).collect();
        statement.push_list(&params);
        statement.push(" WHERE a = ");
        statement.push_param(Param::Text("it's $1".into()));
        statement.push(" LIMIT ");
        statement.push_param(Param::Int(21));
        statement.push(" AND t < ");
        statement.push_param(Param::Time(Timestamp::default()));
        assert_eq!(
            statement.with_literals(),
            "SELECT ('v1', 'v2', 'v3', 'v4', 'v5', 'v6', 'v7', 'v8', 'v9', 'v10') \
             WHERE a = 'it''s $1' LIMIT 21 AND t < '1970-01-01T00:00:00+00:00'"
        );
    }

    /// [`DescribedRow`] reads the describe statement's columns by position: the statement must
    /// select [`DESCRIBED_COLUMNS`](super::super::rows::DESCRIBED_COLUMNS), in that order, with
    /// or without a cursor and filters.
    #[tokio::test]
    async fn the_describe_statement_selects_the_columns_its_rows_are_read_by() {
        use sqlx::{Column, Sqlite};
        let pool = sqlx::SqlitePool::connect("sqlite::memory:")
            .await
            .expect("an in-memory database");
        <Sqlite as Dialect>::MIGRATOR
            .run(&pool)
            .await
            .expect("the migrations");
        let first_page = SnapshotQuery::all_of("acct-a", 20);
        let filtered = SnapshotQuery {
            disk_id: Some("d-a".to_owned()),
            snapshot_ids: vec!["s-a".to_owned()],
            status: Some(SnapshotStatus::Accomplished),
            tags: vec![Tag {
                key: "team".to_owned(),
                value: "a".to_owned(),
            }],
            after: Some(PageCursor {
                created_at: Timestamp::default(),
                snapshot_id: "s-b".to_owned(),
                total: None,
            }),
            skip: 20,
            ..first_page.clone()
        };
        // A token page carrying its listing's total: the count is a parameter then.
        let carried = SnapshotQuery {
            after: Some(PageCursor {
                created_at: Timestamp::default(),
                snapshot_id: "s-b".to_owned(),
                total: Some(7),
            }),
            ..first_page.clone()
        };
        for query in [first_page, filtered, carried] {
            let sql = describe_snapshots_statement::<Sqlite>(&query).sql;
            let described = pool.describe(&sql).await.expect("the statement prepares");
            let names: Vec<&str> = described.columns().iter().map(Column::name).collect();
            assert_eq!(names, super::super::rows::DESCRIBED_COLUMNS, "{sql}");
        }
    }

    /// A page without an offset reads at most `PAGE_ROWS_BOUND` rows inside and its own size
    /// outside; one with an offset, or bigger than any caller may ask for, is not bounded.
    #[test]
    fn a_page_is_bounded_by_a_constant_only_where_it_cannot_cut_the_page_short() {
        let bound = format!("LIMIT {PAGE_ROWS_BOUND}");
        let cases = [
            (20, 0, true),
            (MAX_PAGE_SIZE, 0, true),
            (20, 40, false),
            (MAX_PAGE_SIZE + 1, 0, false),
        ];
        for (limit, skip, bounded) in cases {
            let query = SnapshotQuery {
                skip,
                ..SnapshotQuery::all_of("acct-a", limit)
            };
            let statement = describe_snapshots_statement::<sqlx::Postgres>(&query);
            assert_eq!(statement.sql.contains(&bound), bounded, "{statement:?}");
            // The page's own size, one more to tell whether another follows, is a parameter.
            let size = Param::Int(i64::from(limit) + 1);
            assert!(statement.params.contains(&size), "{statement:?}");
        }
    }

    /// A listing of the whole account reads its total from the account's kept count (a few
    /// rows); a filter makes it count the matching rows; a token's carried total needs neither.
    #[test]
    fn only_a_listing_of_the_whole_account_reads_the_kept_count() {
        #[derive(Debug, PartialEq)]
        enum Total {
            Kept,
            Counted,
            Carried,
        }
        let total_of = |sql: &str| match (
            sql.contains("account_snapshot_counts"),
            sql.contains("count(*)"),
        ) {
            (true, false) => Total::Kept,
            (false, true) => Total::Counted,
            (false, false) => Total::Carried,
            (true, true) => panic!("both: {sql}"),
        };
        let whole = SnapshotQuery::all_of("acct-a", 20);
        let token = |total| PageCursor {
            created_at: Timestamp::default(),
            snapshot_id: "s-b".to_owned(),
            total,
        };
        let with = |change: fn(&mut SnapshotQuery)| {
            let mut query = whole.clone();
            change(&mut query);
            query
        };
        // (what, query, its page's total, the total asked alone after a page past the end)
        let cases = [
            ("first page", with(|_| {}), Total::Kept, Total::Kept),
            (
                "numbered page",
                with(|q| q.skip = 40),
                Total::Kept,
                Total::Kept,
            ),
            (
                "v1 token",
                SnapshotQuery {
                    after: Some(token(None)),
                    ..whole.clone()
                },
                Total::Kept,
                Total::Kept,
            ),
            (
                "carried",
                SnapshotQuery {
                    after: Some(token(Some(7))),
                    ..whole.clone()
                },
                Total::Carried,
                Total::Kept,
            ),
            (
                "disk",
                with(|q| q.disk_id = Some("d-a".into())),
                Total::Counted,
                Total::Counted,
            ),
            (
                "ids",
                with(|q| q.snapshot_ids = vec!["s-a".into()]),
                Total::Counted,
                Total::Counted,
            ),
            (
                "status",
                with(|q| q.status = Some(SnapshotStatus::Failed)),
                Total::Counted,
                Total::Counted,
            ),
            (
                "name",
                with(|q| q.snapshot_name = Some("n".into())),
                Total::Counted,
                Total::Counted,
            ),
            (
                "tag",
                with(|q| {
                    q.tags = vec![Tag {
                        key: "k".into(),
                        value: String::new(),
                    }]
                }),
                Total::Counted,
                Total::Counted,
            ),
            (
                "instance",
                with(|q| q.instance_id = Some("i-a".into())),
                Total::Counted,
                Total::Counted,
            ),
            (
                "type",
                with(|q| q.source_disk_type = Some(crate::domain::DiskType::Data)),
                Total::Counted,
                Total::Counted,
            ),
            (
                "usage",
                with(|q| q.usage = Some(crate::domain::SnapshotUsage::Image)),
                Total::Counted,
                Total::Counted,
            ),
            (
                "after",
                with(|q| q.created_after = Some(Timestamp::default())),
                Total::Counted,
                Total::Counted,
            ),
            (
                "before",
                with(|q| q.created_before = Some(Timestamp::default())),
                Total::Counted,
                Total::Counted,
            ),
        ];
        for (what, query, page, alone) in cases {
            let page_sql = describe_snapshots_statement::<sqlx::Postgres>(&query).sql;
            assert_eq!(total_of(&page_sql), page, "{what}, the page: {page_sql}");
            let alone_sql = count_matching_snapshots::<sqlx::Postgres>(&query).sql;
            assert_eq!(total_of(&alone_sql), alone, "{what}, alone: {alone_sql}");
        }
    }

    #[test]
    fn placeholders_are_bound_by_whole_number() {
        let ten = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        for (sql, values, bound) in [
            ("$1, $10, $1::text, $2", &ten[..], "a, j, a::text, b"),
            // A value's own `$` is not read again.
            ("$1 $2", &["'$2'", "x"][..], "'$2' x"),
            // A `$` naming no value stays as written.
            ("$0 $3 $ $$", &["a", "b"][..], "$0 $3 $ $$"),
            ("no placeholder", &[][..], "no placeholder"),
        ] {
            assert_eq!(bind_placeholders(sql, values), bound, "{sql}");
        }
    }

    #[test]
    fn placeholders_count_from_the_first_number() {
        assert_eq!(placeholders(3, 2), "$3, $4");
        assert_eq!(placeholders(1, 1), "$1");
    }
}
