//! Group commit for CreateSnapshot: calls that arrive while others are being written share one
//! transaction.
//!
//! A transaction's cost on the database is mostly per transaction (four round trips, a WAL
//! flush at commit), not per row. So the calls are spread by disk over a few *lanes*, and each
//! lane writes one transaction at a time: a call that arrives while its lane is busy waits in
//! the lane's queue, and whichever call gets the lane's next turn (the *leader*) takes up to
//! `max_batch` queued calls and writes them in one transaction: one locking read for all their
//! disks, the engine's decision for each, one write for all that were admitted, one commit.
//! Under light load every call leads a batch of one. A disk's calls always take the same lane,
//! so the batches of one process never contend for a disk's lock.
//!
//! Each call is decided on what the batch's locking read found for it, so only while no earlier
//! call of the batch wrote its disk or its client token; a later call on such a disk or token
//! is queued again ([`Verdict::Retry`]) and sees the write in a later batch. A batch never
//! waits for a row lock (`SKIP LOCKED`): a call whose disk another transaction holds is queued
//! again too. A call queued [`RETRIES`] times, and every unusual case, is told to
//! [`Verdict::RunAlone`]: it runs the one-call transaction in its own task, as if there were no
//! batching, and waits for its disk's lock there. A call that went away (its client cancelled,
//! its deadline passed) before its batch wrote is left out of the write. A batch runs in a task
//! of its own, so its leader's going away never cuts it short.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, oneshot};

use super::{CreateOutcome, StoreError};
use crate::domain::{CreateSnapshotCommand, Timestamp};
use crate::engine::Policy;

/// One queued CreateSnapshot call.
#[derive(Debug)]
pub(crate) struct Queued {
    pub command: CreateSnapshotCommand,
    pub policy: Policy,
    pub now: Timestamp,
    reply: oneshot::Sender<Verdict>,
}

impl Queued {
    /// Whether the caller still waits for the answer.
    pub fn is_awaited(&self) -> bool {
        !self.reply.is_closed()
    }

    /// Gives the caller its answer (a caller that went away just doesn't get it).
    pub fn answer(self, verdict: Verdict) {
        let _ = self.reply.send(verdict);
    }
}

/// What a batch tells each of its calls.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The call's answer; when `Ok`, written and committed.
    Answer(Result<CreateOutcome, StoreError>),
    /// The batch could not settle this call yet (its disk was locked elsewhere, or written
    /// by an earlier call of the batch): queue it again for a later batch.
    Retry,
    /// The batch could not settle this call: run it in a transaction of its own.
    RunAlone,
}

/// How often a call is queued again before it runs alone (and waits for its disk's lock).
const RETRIES: usize = 3;

pub(crate) struct GroupCommit {
    lanes: Vec<Arc<Lane>>,
    pick_lane: RandomState,
    max_batch: usize,
}

/// The calls of some disks, written one batch at a time: a disk's calls always take the same
/// lane, so two batches of one process never contend for one disk.
struct Lane {
    queue: Mutex<Vec<Queued>>,
    turn: Arc<Semaphore>,
}

impl GroupCommit {
    /// `lanes` batches at once at most, of at most `max_batch` calls each.
    pub fn new(lanes: usize, max_batch: usize) -> Self {
        Self {
            lanes: (0..lanes.max(1))
                .map(|_| {
                    Arc::new(Lane {
                        queue: Mutex::new(Vec::new()),
                        turn: Arc::new(Semaphore::new(1)),
                    })
                })
                .collect(),
            pick_lane: RandomState::new(),
            max_batch: max_batch.max(1),
        }
    }

    /// Queues the call and waits for its answer, writing batches (the caller's and others')
    /// with `write_batch` whenever it gets a turn. `None`: the caller must run the call alone.
    /// `write_batch` must answer every call it is given, and returns the cause when it found
    /// the database unreachable.
    pub async fn submit<W, F>(
        &self,
        command: &CreateSnapshotCommand,
        policy: &Policy,
        now: Timestamp,
        write_batch: W,
    ) -> Option<Result<CreateOutcome, StoreError>>
    where
        W: Fn(Vec<Queued>) -> F,
        F: Future<Output = Option<Arc<sqlx::Error>>> + Send + 'static,
    {
        for _ in 0..=RETRIES {
            match self
                .queue_and_wait(command, policy, now, &write_batch)
                .await
            {
                Verdict::Answer(answer) => return Some(answer),
                Verdict::Retry => continue,
                Verdict::RunAlone => return None,
            }
        }
        None
    }

    async fn queue_and_wait<W, F>(
        &self,
        command: &CreateSnapshotCommand,
        policy: &Policy,
        now: Timestamp,
        write_batch: &W,
    ) -> Verdict
    where
        W: Fn(Vec<Queued>) -> F,
        F: Future<Output = Option<Arc<sqlx::Error>>> + Send + 'static,
    {
        let lane = &self.lanes
            [self.pick_lane.hash_one(command.disk_id.as_str()) as usize % self.lanes.len()];
        let (reply, mut verdict) = oneshot::channel();
        lane.lock_queue().push(Queued {
            command: command.clone(),
            policy: *policy,
            now,
            reply,
        });
        loop {
            tokio::select! {
                biased;
                // A batch that broke off (a panic) dropped our reply: run alone.
                answer = &mut verdict => return answer.unwrap_or(Verdict::RunAlone),
                turn = Arc::clone(&lane.turn).acquire_owned() => {
                    let turn = turn.expect("the semaphore is never closed");
                    let batch = lane.take_batch(self.max_batch);
                    if batch.is_empty() {
                        // Another leader took this call; its answer is on the way.
                        return verdict.await.unwrap_or(Verdict::RunAlone);
                    }
                    // In a task of its own, holding the lane's turn: if this call goes away
                    // (cancelled, past its deadline), the batch still ends and answers the
                    // others. Dropped halfway, it could commit with nobody told.
                    let write = write_batch(batch);
                    let lane = Arc::clone(lane);
                    let writing = tokio::spawn(async move {
                        let _turn = turn;
                        if let Some(cause) = write.await {
                            // The calls queued meanwhile share the answer rather than each
                            // waiting for the database again, one batch after another.
                            lane.answer_all(&cause);
                        }
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
}

/// Answers each of `calls` that the database is unreachable, for `cause`.
pub(crate) fn answer_unreachable(calls: Vec<Queued>, cause: &Arc<sqlx::Error>) {
    for queued in calls {
        let unreachable = StoreError::Unavailable(Arc::clone(cause));
        queued.answer(Verdict::Answer(Err(unreachable)));
    }
}

/// Resolves once no caller of `batch` waits for its answer any more.
pub(crate) async fn all_gone(batch: &[Queued]) {
    // Polled: a caller's going away is seen within this delay.
    const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
    while batch.iter().any(Queued::is_awaited) {
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

impl Lane {
    /// Answers every queued call: the database is unreachable.
    fn answer_all(&self, cause: &Arc<sqlx::Error>) {
        answer_unreachable(self.take_batch(usize::MAX), cause);
    }

    /// The oldest queued calls, up to `max_batch`.
    fn take_batch(&self, max_batch: usize) -> Vec<Queued> {
        let mut queue = self.lock_queue();
        let taken = queue.len().min(max_batch);
        queue.drain(..taken).collect()
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        // The queue is a plain list, consistent between statements: a panic elsewhere cannot
        // leave it half-changed, so a poisoned lock is still good.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
