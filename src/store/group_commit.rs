//! Group commit for CreateSnapshot: calls that arrive while others are being written share one
//! transaction.
//!
//! A transaction's cost on the database is mostly per transaction (four round trips, a WAL
//! flush at commit), not per row. So only a few create transactions run at
//! once (`writers`); a call that arrives while they are all busy waits in a queue, and whichever call gets
//! the next turn (the *leader*) takes up to `max_batch` queued calls and writes them in one
//! transaction: one locking read for all their disks, the engine's decision for each, one write
//! for all that were admitted, one commit. Under light load every call leads a batch of one.
//!
//! Each call is decided on what the batch's locking read found for it, so only while no earlier
//! call of the batch wrote its disk or its client token; a later call on such a disk or token
//! is queued again ([`Verdict::Retry`]) and sees the write in a later batch. A batch never
//! waits for a row lock (`SKIP LOCKED`): a call whose disk another transaction holds is queued
//! again too. A call queued [`RETRIES`] times, and every unusual case, is told to
//! [`Verdict::RunAlone`]: it runs the one-call transaction in its own task, as if there were no
//! batching, and waits for its disk's lock there. A call that went away (its client cancelled,
//! its deadline passed) before its batch wrote is left out of the write.

use std::future::Future;
use std::sync::Mutex;

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
    queue: Mutex<Vec<Queued>>,
    turns: Semaphore,
    max_batch: usize,
}

impl GroupCommit {
    /// At most `writers` batches at once, of at most `max_batch` calls each.
    pub fn new(writers: usize, max_batch: usize) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            turns: Semaphore::new(writers),
            max_batch: max_batch.max(1),
        }
    }

    /// Queues the call and waits for its answer, writing batches (the caller's and others')
    /// with `write_batch` whenever it gets a turn. `None`: the caller must run the call alone.
    /// `write_batch` must answer every call it is given.
    pub async fn submit<W, F>(
        &self,
        command: &CreateSnapshotCommand,
        policy: &Policy,
        now: Timestamp,
        write_batch: W,
    ) -> Option<Result<CreateOutcome, StoreError>>
    where
        W: Fn(Vec<Queued>) -> F,
        F: Future<Output = ()>,
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
        F: Future<Output = ()>,
    {
        let (reply, mut verdict) = oneshot::channel();
        self.lock_queue().push(Queued {
            command: command.clone(),
            policy: *policy,
            now,
            reply,
        });
        loop {
            tokio::select! {
                biased;
                // A leader that was cancelled mid-batch dropped our reply: run alone.
                answer = &mut verdict => return answer.unwrap_or(Verdict::RunAlone),
                turn = self.turns.acquire() => {
                    let _turn = turn.expect("the semaphore is never closed");
                    let batch = self.take_batch();
                    if batch.is_empty() {
                        // Another leader took this call; its answer is on the way.
                        return verdict.await.unwrap_or(Verdict::RunAlone);
                    }
                    write_batch(batch).await;
                }
            }
        }
    }

    /// The oldest queued calls, up to `max_batch`.
    fn take_batch(&self) -> Vec<Queued> {
        let mut queue = self.lock_queue();
        let taken = queue.len().min(self.max_batch);
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
