//! The lifecycle transactions (delete, image, the worker's steps), written once for both
//! backends: the decisions are here, the statements come from [`super::lifecycle_sql`], and
//! [`impl_lifecycle_tx!`] binds them on each backend's transaction type.

use super::lifecycle_sql;
use super::rows::SnapshotRow;
use super::{CreateOutcome, StoreError, WorkDone};
use crate::backend::{CopyState, SnapshotBackend};
use crate::domain::{CreateImageCommand, Snapshot, SnapshotStatus, Timestamp, new_image_id};
use crate::engine::{
    DeletePlan, SnapshotFacts, TokenBinding, check_token_binding, decide_create_image,
    decide_delete,
};

/// How a backend spells what the shared SQL leaves out.
pub(crate) struct Dialect {
    /// Appended to a read that must lock its rows until commit.
    pub lock: &'static str,
    /// Appended to a queue read that must skip rows another replica holds.
    pub lock_skip_locked: &'static str,
    pub sqlite_placeholders: bool,
}

impl Dialect {
    pub const POSTGRES: Self = Self {
        lock: " FOR UPDATE",
        lock_skip_locked: " FOR UPDATE SKIP LOCKED",
        sqlite_placeholders: false,
    };
    // One process per file and `BEGIN IMMEDIATE`: the transaction already holds everything.
    pub const SQLITE: Self = Self {
        lock: "",
        lock_skip_locked: "",
        sqlite_placeholders: true,
    };

    pub fn sql(&self, postgres_sql: &str) -> String {
        if self.sqlite_placeholders {
            lifecycle_sql::for_sqlite(postgres_sql)
        } else {
            postgres_sql.to_owned()
        }
    }
}

/// The statements of the lifecycle transactions, on a transaction already begun.
pub(crate) trait LifecycleTx {
    async fn lock_own_snapshot(
        &mut self,
        account_id: &str,
        snapshot_id: &str,
    ) -> Result<Option<Snapshot>, StoreError>;
    async fn read_image_token(
        &mut self,
        account_id: &str,
        client_token: &str,
    ) -> Result<Option<TokenBinding>, StoreError>;
    /// Deletes the snapshot and frees its quota (and its disk, if it was being copied).
    async fn delete_and_uncount(&mut self, snapshot: &Snapshot) -> Result<(), StoreError>;
    /// Records the end of a copy and frees the disk.
    /// Records the end of these copies and frees their disks, in one statement per status and
    /// one for the disks.
    async fn finish_copies(
        &mut self,
        finished: &[(&Snapshot, SnapshotStatus)],
        now: Timestamp,
    ) -> Result<(), StoreError>;
    async fn postpone_copy(
        &mut self,
        snapshot: &Snapshot,
        due: Timestamp,
    ) -> Result<(), StoreError>;
    async fn insert_image(
        &mut self,
        image_id: &str,
        command: &CreateImageCommand,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Claims up to `limit` rows of a worker queue (`queue_sql`, in the shared dialect, takes
    /// `now` as `$1` and `limit` as `$2`), skipping rows another replica holds.
    async fn claim(
        &mut self,
        queue_sql: &str,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Snapshot>, StoreError>;
}

fn facts(snapshot: &Snapshot) -> SnapshotFacts {
    SnapshotFacts {
        status: snapshot.status,
        usage: snapshot.usage,
    }
}

/// DeleteSnapshot inside `tx`; the caller commits on `Ok`.
pub(crate) async fn delete(
    tx: &mut impl LifecycleTx,
    account_id: &str,
    snapshot_id: &str,
    force: bool,
    backend: &dyn SnapshotBackend,
) -> Result<(), StoreError> {
    let snapshot = tx.lock_own_snapshot(account_id, snapshot_id).await?;
    let plan = decide_delete(snapshot_id, snapshot.as_ref().map(facts), force)?;
    let snapshot = snapshot.expect("the engine deletes only an existing snapshot");
    if plan == DeletePlan::CancelCopyAndDelete {
        cancel_copy(backend, &snapshot).await;
    }
    tx.delete_and_uncount(&snapshot).await
}

pub(crate) async fn cancel_copy(backend: &dyn SnapshotBackend, snapshot: &Snapshot) {
    if let Err(err) = backend.cancel_copy(snapshot).await {
        // The row goes regardless: a copy nobody references is the backend's to clean up.
        tracing::warn!(snapshot_id = %snapshot.snapshot_id, error = %err, "cancelling a copy failed");
    }
}

/// CreateImage inside `tx`; the caller commits on `Ok(Created)`.
pub(crate) async fn create_image(
    tx: &mut impl LifecycleTx,
    command: &CreateImageCommand,
    now: Timestamp,
) -> Result<CreateOutcome, StoreError> {
    let snapshot = tx
        .lock_own_snapshot(&command.account_id, command.snapshot_id.as_str())
        .await?;
    // Read after the lock: a concurrent request with this token on this snapshot has committed.
    if let Some(token) = &command.client_token {
        let binding = tx
            .read_image_token(&command.account_id, token.as_str())
            .await?;
        if let Some(id) =
            check_token_binding(token.as_str(), binding.as_ref(), &command.fingerprint())?
        {
            return Ok(CreateOutcome::Replayed { id });
        }
    }
    decide_create_image(command.snapshot_id.as_str(), snapshot.as_ref().map(facts))?;
    let image_id = new_image_id();
    tx.insert_image(&image_id, command, now).await?;
    Ok(CreateOutcome::Created { id: image_id })
}

/// One worker step over due copies inside `tx`; the caller commits.
pub(crate) async fn advance_copies(
    tx: &mut impl LifecycleTx,
    now: Timestamp,
    limit: u32,
    backend: &dyn SnapshotBackend,
) -> Result<WorkDone, StoreError> {
    let mut done = WorkDone::default();
    let claimed = tx.claim(&lifecycle_sql::due_copies(), now, limit).await?;
    let mut finished = Vec::with_capacity(claimed.len());
    for snapshot in &claimed {
        match backend.copy_state(snapshot, now).await {
            CopyState::Done => {
                record_lag(snapshot, now);
                finished.push((snapshot, SnapshotStatus::Accomplished));
                done.accomplished += 1;
            }
            CopyState::Failed(reason) => {
                tracing::warn!(snapshot_id = %snapshot.snapshot_id, %reason, "copy failed");
                record_lag(snapshot, now);
                finished.push((snapshot, SnapshotStatus::Failed));
                done.failed += 1;
            }
            CopyState::Copying { remaining, .. } => {
                tx.postpone_copy(snapshot, now + remaining).await?;
            }
        }
    }
    tx.finish_copies(&finished, now).await?;
    Ok(done)
}

/// How late the worker is: the time from when the copy was due to now.
fn record_lag(snapshot: &Snapshot, now: Timestamp) {
    let lag = (now - snapshot.copy_due_at).to_std().unwrap_or_default();
    crate::telemetry::metric::worker_lag(lag);
}

/// One worker step over snapshots past their retention inside `tx`; the caller commits.
pub(crate) async fn release_expired(
    tx: &mut impl LifecycleTx,
    now: Timestamp,
    limit: u32,
    backend: &dyn SnapshotBackend,
) -> Result<WorkDone, StoreError> {
    let mut done = WorkDone::default();
    for snapshot in tx.claim(&lifecycle_sql::due_releases(), now, limit).await? {
        if snapshot.status == SnapshotStatus::Progressing {
            cancel_copy(backend, &snapshot).await;
        }
        tx.delete_and_uncount(&snapshot).await?;
        done.released += 1;
    }
    Ok(done)
}

/// Rows of a queue, skipping (and logging) any that do not decode, so that one bad row cannot
/// stop the queue behind it.
pub(crate) fn decode_queue(rows: Vec<SnapshotRow>) -> Vec<Snapshot> {
    rows.into_iter()
        .filter_map(|row| {
            let id = row.snapshot_id.clone();
            Snapshot::try_from(row)
                .map_err(|err| tracing::error!(snapshot_id = %id, error = %err, "skipping an unreadable snapshot"))
                .ok()
        })
        .collect()
}

/// Binds generated parameters in order.
macro_rules! bind_params {
    ($query:expr, $params:expr) => {{
        let mut query = $query;
        for param in $params {
            query = match param {
                $crate::store::lifecycle_sql::Param::Text(text) => query.bind(text),
                $crate::store::lifecycle_sql::Param::Time(at) => query.bind(at),
                $crate::store::lifecycle_sql::Param::Int(n) => query.bind(n),
            };
        }
        query
    }};
}
pub(crate) use bind_params;

/// Implements [`LifecycleTx`] for a backend's transactions with its [`Dialect`].
macro_rules! impl_lifecycle_tx {
    ($db:ty, $dialect:expr) => {
        impl $crate::store::lifecycle_flow::LifecycleTx for sqlx::Transaction<'_, $db> {
            async fn lock_own_snapshot(
                &mut self,
                account_id: &str,
                snapshot_id: &str,
            ) -> Result<Option<$crate::domain::Snapshot>, $crate::store::StoreError> {
                use $crate::store::lifecycle_sql as sql;
                let statement = format!("{}{}", $dialect.sql(&sql::own_snapshot()), $dialect.lock);
                let row: Option<$crate::store::rows::SnapshotRow> = sqlx::query_as(&statement)
                    .bind(snapshot_id)
                    .bind(account_id)
                    .fetch_optional(&mut **self)
                    .await?;
                row.map($crate::domain::Snapshot::try_from).transpose()
            }

            async fn read_image_token(
                &mut self,
                account_id: &str,
                client_token: &str,
            ) -> Result<Option<$crate::engine::TokenBinding>, $crate::store::StoreError> {
                let statement = $dialect.sql($crate::store::lifecycle_sql::READ_IMAGE_TOKEN);
                let row: Option<$crate::store::rows::OptionalTokenColumns> =
                    sqlx::query_as(&statement)
                        .bind(account_id)
                        .bind(client_token)
                        .fetch_optional(&mut **self)
                        .await?;
                Ok(row.and_then($crate::store::rows::OptionalTokenColumns::into_binding))
            }

            async fn delete_and_uncount(
                &mut self,
                snapshot: &$crate::domain::Snapshot,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::lifecycle_sql as sql;
                sqlx::query(&$dialect.sql(sql::DELETE_SNAPSHOT))
                    .bind(&snapshot.snapshot_id)
                    .execute(&mut **self)
                    .await?;
                sqlx::query(&$dialect.sql(sql::UNCOUNT_SNAPSHOT))
                    .bind(&snapshot.source_disk_id)
                    .bind(&snapshot.snapshot_id)
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn finish_copies(
                &mut self,
                finished: &[(&$crate::domain::Snapshot, $crate::domain::SnapshotStatus)],
                now: $crate::domain::Timestamp,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::domain::SnapshotStatus;
                use $crate::store::lifecycle_sql as sql;
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
                    let statement = $dialect.sql(&sql::set_status_of(ids.len()));
                    let mut query = sqlx::query(&statement).bind(status.as_str()).bind(now);
                    for id in ids {
                        query = query.bind(id);
                    }
                    query.execute(&mut **self).await?;
                }
                // Disks in id order, so concurrent steps lock them in one order.
                let mut disks: Vec<(&str, &str)> = finished
                    .iter()
                    .map(|(s, _)| (s.source_disk_id.as_str(), s.snapshot_id.as_str()))
                    .collect();
                disks.sort_unstable();
                let statement = $dialect.sql(&sql::free_disks_of(disks.len()));
                let mut query = sqlx::query(&statement);
                for (disk_id, _) in &disks {
                    query = query.bind(*disk_id);
                }
                for (_, snapshot_id) in &disks {
                    query = query.bind(*snapshot_id);
                }
                query.execute(&mut **self).await?;
                Ok(())
            }

            async fn postpone_copy(
                &mut self,
                snapshot: &$crate::domain::Snapshot,
                due: $crate::domain::Timestamp,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(&$dialect.sql($crate::store::lifecycle_sql::POSTPONE_COPY))
                    .bind(&snapshot.snapshot_id)
                    .bind(due)
                    .execute(&mut **self)
                    .await?;
                Ok(())
            }

            async fn insert_image(
                &mut self,
                image_id: &str,
                command: &$crate::domain::CreateImageCommand,
                now: $crate::domain::Timestamp,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::lifecycle_sql as sql;
                sqlx::query(&$dialect.sql(sql::INSERT_IMAGE))
                    .bind(image_id)
                    .bind(&command.account_id)
                    .bind(command.snapshot_id.as_str())
                    .bind(command.image_name.as_ref().map(|n| n.as_str()))
                    .bind(now)
                    .execute(&mut **self)
                    .await?;
                sqlx::query(&$dialect.sql(sql::PIN_FOR_IMAGE))
                    .bind(command.snapshot_id.as_str())
                    .bind(now)
                    .execute(&mut **self)
                    .await?;
                if let Some(token) = &command.client_token {
                    sqlx::query(&$dialect.sql(sql::INSERT_IMAGE_TOKEN))
                        .bind(&command.account_id)
                        .bind(token.as_str())
                        .bind(command.fingerprint())
                        .bind(image_id)
                        .bind(now)
                        .execute(&mut **self)
                        .await?;
                }
                Ok(())
            }

            async fn claim(
                &mut self,
                queue_sql: &str,
                now: $crate::domain::Timestamp,
                limit: u32,
            ) -> Result<Vec<$crate::domain::Snapshot>, $crate::store::StoreError> {
                let statement = format!("{}{}", $dialect.sql(queue_sql), $dialect.lock_skip_locked);
                let rows: Vec<$crate::store::rows::SnapshotRow> = sqlx::query_as(&statement)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&mut **self)
                    .await?;
                Ok($crate::store::lifecycle_flow::decode_queue(rows))
            }
        }
    };
}
pub(crate) use impl_lifecycle_tx;

/// Describe, shared: the page, then the tags of its snapshots.
macro_rules! describe_on {
    ($pool:expr, $dialect:expr, $query:expr) => {{
        use $crate::store::{lifecycle_sql, rows};
        let query = $query;
        let (statement, params) = lifecycle_sql::describe(query);
        let statement = $dialect.sql(&statement);
        let page: Vec<rows::SnapshotRow> =
            $crate::store::lifecycle_flow::bind_params!(sqlx::query_as(&statement), params)
                .fetch_all($pool)
                .await?;
        let (mut snapshots, next) = rows::into_page(page, query.limit)?;
        if !snapshots.is_empty() {
            let ids: Vec<String> = snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
            let (statement, params) = lifecycle_sql::tags_of(&ids);
            let statement = $dialect.sql(&statement);
            let tags: Vec<rows::TagRow> =
                $crate::store::lifecycle_flow::bind_params!(sqlx::query_as(&statement), params)
                    .fetch_all($pool)
                    .await?;
            rows::attach_tags(&mut snapshots, tags);
        }
        Ok($crate::store::SnapshotPage { snapshots, next })
    }};
}
pub(crate) use describe_on;
