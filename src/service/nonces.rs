//! Signature nonces spent in batches: the nonces of signed requests that arrive while a batch
//! is being written share the next one (one transaction; one statement on PostgreSQL), as
//! creates share theirs (`group_commit.rs`). A commit of its own for every request made the
//! database, not the edge, the ceiling of the ECS edge (`bench/README.md`).
//!
//! Nothing is weakened: each nonce is committed to the database before its request runs, so a
//! replay is refused by every replica; and each is spent only while its key still holds the
//! secret and account its request's signature was verified with (see
//! [`crate::store::NonceSpend::KeyChanged`]), which makes the edge's cached keys safe.
//!
//! One batch is written at a time: a request that arrives meanwhile queues, and whichever queued
//! request gets the next turn writes every queued nonce (up to [`MAX_BATCH`]) in a task of its
//! own, so its own request's going away never cuts the others' batch short. Under light load
//! each request writes its own.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, oneshot};

use super::{CallQueue, NONCE_WINDOW, ServiceError, StorageHealth};
use crate::clock::Clock;
use crate::domain::{AccessKey, later};
use crate::store::{NonceSpend, Store, StoreError};

/// Nonces written in one statement at most.
const MAX_BATCH: usize = 256;

/// What a batch tells one of its requests: the outcome, or `None` when the batch failed as a
/// whole and the request should spend its nonce alone (to learn its own error).
type Reply = oneshot::Sender<Option<Result<NonceSpend, ServiceError>>>;

struct Queued {
    key: AccessKey,
    nonce: String,
    reply: Reply,
}

pub(super) struct NonceBatches {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    storage: StorageHealth,
    queue: CallQueue<Queued>,
    turn: Arc<Semaphore>,
}

impl NonceBatches {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, storage: StorageHealth) -> Self {
        Self {
            store,
            clock,
            storage,
            queue: CallQueue::default(),
            turn: Arc::new(Semaphore::new(1)),
        }
    }

    /// Spends `nonce` for `key` (as its request's signature was verified with it), in the next
    /// batch.
    pub async fn spend(&self, key: &AccessKey, nonce: &str) -> Result<NonceSpend, ServiceError> {
        match self.queue_and_wait(key, nonce).await {
            Some(answer) => answer,
            None => {
                let spent = spend_all(&*self.store, &*self.clock, &[(key, nonce)]).await;
                self.storage.note(&spent);
                spent.map(|outcomes| outcomes[0])
            }
        }
    }

    async fn queue_and_wait(
        &self,
        key: &AccessKey,
        nonce: &str,
    ) -> Option<Result<NonceSpend, ServiceError>> {
        let (reply, mut answer) = oneshot::channel();
        self.queue.push(Queued {
            key: key.clone(),
            nonce: nonce.to_owned(),
            reply,
        });
        loop {
            tokio::select! {
                biased;
                // A batch that broke off (a panic) dropped our reply: spend alone.
                answer = &mut answer => return answer.ok().flatten(),
                turn = Arc::clone(&self.turn).acquire_owned() => {
                    let turn = turn.expect("the semaphore is never closed");
                    let batch = self.queue.take(MAX_BATCH);
                    if batch.is_empty() {
                        // Another request's turn took ours; its answer is on the way.
                        return answer.await.ok().flatten();
                    }
                    let (store, clock, storage) =
                        (Arc::clone(&self.store), Arc::clone(&self.clock), self.storage.clone());
                    let writing = tokio::spawn(async move {
                        let _turn = turn;
                        write_batch(&*store, &*clock, &storage, batch).await;
                    });
                    if let Err(failed) = writing.await
                        && failed.is_panic()
                    {
                        std::panic::resume_unwind(failed.into_panic());
                    }
                }
            }
        }
    }

    /// Requests queued for the next batch now.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// Spends the batch's nonces and answers each request.
async fn write_batch(
    store: &dyn Store,
    clock: &dyn Clock,
    storage: &StorageHealth,
    batch: Vec<Queued>,
) {
    // A nonce twice in one batch is written once: the copies after the first are replays of
    // it (and one statement may not take the same row twice).
    let mut rows: Vec<(&AccessKey, &str)> = Vec::with_capacity(batch.len());
    let mut first_row = HashMap::with_capacity(batch.len());
    let row_of: Vec<(usize, bool)> = batch
        .iter()
        .map(|queued| {
            let id = (queued.key.access_key_id.as_str(), queued.nonce.as_str());
            match first_row.get(&id) {
                Some(&row) => (row, true),
                None => {
                    first_row.insert(id, rows.len());
                    rows.push((&queued.key, queued.nonce.as_str()));
                    (rows.len() - 1, false)
                }
            }
        })
        .collect();
    let spent = spend_all(store, clock, &rows).await;
    storage.note(&spent);
    drop(rows);
    match spent {
        Ok(outcomes) => {
            for (queued, (row, copy)) in batch.into_iter().zip(row_of) {
                let outcome = match outcomes[row] {
                    NonceSpend::Spent if copy => NonceSpend::Replayed,
                    outcome => outcome,
                };
                let _ = queued.reply.send(Some(Ok(outcome)));
            }
        }
        // An unreachable database is every request's answer (each would wait for it again).
        Err(ServiceError::Store(StoreError::Unavailable(cause))) => {
            for queued in batch {
                let unreachable = StoreError::Unavailable(cause.clone());
                let _ = queued.reply.send(Some(Err(unreachable.into())));
            }
        }
        Err(failure) if batch.len() == 1 => {
            let lone = batch.into_iter().next().expect("one request");
            let _ = lone.reply.send(Some(Err(failure)));
        }
        // Each request learns its own error alone (errors are not shared values).
        Err(_) => {
            for queued in batch {
                let _ = queued.reply.send(None);
            }
        }
    }
}

/// Spends distinct `nonces` in one transaction: one outcome each, in order.
async fn spend_all(
    store: &dyn Store,
    clock: &dyn Clock,
    nonces: &[(&AccessKey, &str)],
) -> Result<Vec<NonceSpend>, ServiceError> {
    // Real time, as the requests' timestamps (see `Service::signing_time`).
    let now = clock.wall();
    let mut tx = store.begin().await?;
    match tx
        .spend_nonces(nonces, now, later(now, 2 * NONCE_WINDOW))
        .await
    {
        Ok(outcomes) => {
            tx.commit().await?;
            Ok(outcomes)
        }
        Err(err) => {
            tx.rollback().await;
            Err(err.into())
        }
    }
}
