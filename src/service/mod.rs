//! The use cases: what each call does, once, for every edge.
//!
//! One method per use case on [`Service`]: CreateSnapshot (with group commit), DescribeSnapshots,
//! DeleteSnapshot, CreateImage, the inventory puts, the worker's step and the invariant check.
//! Each write runs as "begin, read under the lock, let the engine decide, write, commit" on the
//! store's [`Transaction`]; the service owns the clock, the data plane and the policy, so an
//! edge only converts its request into domain values, calls one method and converts the answer.

mod access_keys;
mod group_commit;
mod images;
mod inventory;
mod modify;
mod nonces;
mod simulation;
mod snapshots;
mod tags;
mod watch;
mod worker;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use access_keys::{KEY_CACHE_TTL, NONCE_WINDOW, NonceSpend};
pub use group_commit::Backlog;
pub use simulation::Simulation;
pub use snapshots::{DescribedPage, SnapshotView};
pub use watch::{PROGRESS_EVERY, WATCH_BUFFER, Watch, WatchEvent};
pub use worker::WorkDone;

use crate::backend::{BackendError, SnapshotBackend};
use crate::clock::Clock;
use crate::domain::Snapshot;
use crate::engine::{Policy, RuleError};
use crate::store::{Store, StoreError, Transaction, Violation};
use access_keys::KeyCache;
use group_commit::GroupCommit;
use nonces::NonceBatches;

/// How often a write is tried when it loses a unique-key race (a client token taken by a
/// concurrent request); the next try sees the winner's binding.
const CONFLICT_ATTEMPTS: usize = 3;

/// What a use case can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A rule refused the request; nothing was written.
    #[error(transparent)]
    Refused(#[from] RuleError),
    /// The data plane would not start the copy; nothing was written.
    #[error("the snapshot backend could not start the copy")]
    CopyNotStarted(#[source] BackendError),
    /// The store failed (unreachable, corrupt, …); nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The account already holds `--max-watches-per-account` watches.
    #[error("account {account_id} already has {limit} watches open")]
    TooManyWatches { account_id: String, limit: u32 },
    /// The watcher did not read its messages as fast as they came: its buffer overflowed.
    #[error("the watcher fell {buffer} messages behind")]
    WatchTooSlow { buffer: usize },
    /// The server is not serving watches (it is shutting down).
    #[error("the server is not serving watches")]
    WatchesClosed,
}

impl ServiceError {
    /// A lost unique-key race: the whole transaction is worth another try.
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Store(StoreError::Conflict(_)))
    }
}

/// What a create (snapshot or image) ended with, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// A new resource was stored (for CreateSnapshot: and its copy started).
    Created { id: String },
    /// The client token was already bound to identical parameters: the original answer.
    Replayed { id: String },
}

impl CreateOutcome {
    pub fn id(&self) -> &str {
        let (Self::Created { id } | Self::Replayed { id }) = self;
        id
    }
}

/// The use cases, over one store, data plane, clock and policy.
pub struct Service {
    store: Arc<dyn Store>,
    backend: Arc<dyn SnapshotBackend>,
    clock: Arc<dyn Clock>,
    policy: Policy,
    group_commit: GroupCommit,
    storage: StorageHealth,
    /// The ECS edge's access keys, read lately.
    keys: KeyCache,
    /// The ECS edge's signature nonces, spent in batches.
    nonces: NonceBatches,
    watches: watch::Watches,
}

/// Calls written in one create transaction at most.
const CREATE_BATCH: usize = 64;

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        backend: Arc<dyn SnapshotBackend>,
        clock: Arc<dyn Clock>,
        policy: Policy,
    ) -> Self {
        let storage = StorageHealth::default();
        let group_commit = GroupCommit::new(
            Arc::clone(&store),
            Arc::clone(&backend),
            storage.clone(),
            CREATE_BATCH,
        );
        let nonces = NonceBatches::new(Arc::clone(&store), Arc::clone(&clock), storage.clone());
        Self {
            store,
            backend,
            clock,
            policy,
            group_commit,
            storage,
            keys: KeyCache::default(),
            nonces,
            watches: watch::Watches::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// CreateSnapshot calls queued for group commit, and their callers, right now.
    pub fn create_backlog(&self) -> Backlog {
        self.group_commit.backlog()
    }

    /// Every stored breach of the service's promises (`snapshotd check`); empty when all hold.
    pub async fn check_invariants(&self) -> Result<Vec<Violation>, ServiceError> {
        let mut read = self.store.read().await?;
        let violations = read.check_invariants(self.policy.snapshot_quota).await?;
        read.commit().await?;
        Ok(violations)
    }
}

impl Service {
    /// Commits `tx` when `result` is `Ok`, else rolls it back; the result either way, noted in
    /// the storage's health.
    async fn finish<T>(
        &self,
        tx: Box<dyn Transaction>,
        result: Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let result = match result {
            Ok(value) => tx
                .commit()
                .await
                .map(|()| value)
                .map_err(ServiceError::from),
            Err(err) => {
                tx.rollback().await;
                Err(err)
            }
        };
        self.storage.note(&result);
        result
    }

    /// Whether writes can be committed. After one met a full disk, this tries one (a row of
    /// its own) until it commits: readiness asks, so a replica with a full disk is taken out
    /// of rotation and comes back by itself once there is space.
    pub async fn storage_writable(&self) -> bool {
        if !self.storage.is_full() {
            return true;
        }
        if self.storage.met_recently() {
            return false;
        }
        let probed = async {
            let mut tx = self.store.begin().await?;
            let result = tx
                .probe_write(self.clock.now())
                .await
                .map_err(ServiceError::from);
            self.finish(tx, result).await
        };
        if probed.await.is_ok() {
            self.storage.clear();
        }
        !self.storage.is_full()
    }
}

/// Whether the database's disk is full: set by any write that met a full disk, cleared only by
/// the write probe of [`Service::storage_writable`] (a transaction that happened to write
/// nothing, such as an idle worker step, commits on a full disk too), and not probed for
/// [`STORAGE_FULL_HOLD`] after a write last met it: a probe can fit where a real write did not
/// (SQLite reuses a log it has checkpointed), and readiness must not flap while writes fail.
#[derive(Debug, Clone, Default)]
struct StorageHealth(Arc<Mutex<Option<Instant>>>);

/// How long after a write met a full disk readiness stays NOT_SERVING before a probe may say
/// otherwise (the RetryInfo `StorageFull` answers with, too).
const STORAGE_FULL_HOLD: Duration = Duration::from_secs(5);

impl StorageHealth {
    fn note<T>(&self, result: &Result<T, ServiceError>) {
        if let Err(ServiceError::Store(StoreError::StorageFull(_))) = result {
            *self.lock() = Some(Instant::now());
        }
    }

    fn is_full(&self) -> bool {
        self.lock().is_some()
    }

    /// A write met a full disk less than [`STORAGE_FULL_HOLD`] ago.
    fn met_recently(&self) -> bool {
        self.lock()
            .is_some_and(|met| met.elapsed() < STORAGE_FULL_HOLD)
    }

    fn clear(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A plain value, consistent between statements: a poisoned lock is still good.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Calls waiting for the next batch (group commit's lanes, the nonce batches), oldest first.
struct CallQueue<T>(Mutex<Vec<T>>);

impl<T> Default for CallQueue<T> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<T> CallQueue<T> {
    fn push(&self, call: T) {
        self.lock().push(call);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// The oldest queued calls, up to `max`.
    fn take(&self, max: usize) -> Vec<T> {
        let mut queue = self.lock();
        let taken = queue.len().min(max);
        queue.drain(..taken).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        // A plain list, consistent between statements: a panic elsewhere cannot leave it
        // half-changed, so a poisoned lock is still good.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs `attempt` again while it loses a unique-key race, at most [`CONFLICT_ATTEMPTS`] times.
async fn retry_conflicts<T, F, Fut>(mut attempt: F) -> Result<T, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ServiceError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(err) if err.is_conflict() && tries < CONFLICT_ATTEMPTS => tries += 1,
            result => return result,
        }
    }
}

/// Asks the data plane to stop copying `snapshot`. Best effort: the row goes regardless, and a
/// copy nobody references is the data plane's to clean up.
async fn cancel_copy(backend: &dyn SnapshotBackend, snapshot: &Snapshot) {
    if let Err(err) = backend.cancel_copy(snapshot).await {
        tracing::warn!(snapshot_id = %snapshot.snapshot_id, error = %err, "cancelling a copy failed");
    }
}
