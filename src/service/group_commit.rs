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
//! its deadline passed) before its batch wrote is left out of the write. A batch that holds
//! other calls than its leader's runs in a task of its own, so its leader's going away never
//! cuts it short; a batch of the leader's call alone (every call, under light load) is written
//! in the leader's task, as the call's own transaction would be, without a hand-off.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Semaphore, oneshot};

use super::snapshots::{Judgement, judge, start_copy};
use super::{
    CONFLICT_ATTEMPTS, CallQueue, CreateOutcome, ServiceError, StorageHealth, cancel_copy,
};
use crate::backend::SnapshotBackend;
use crate::domain::{CreateSnapshotCommand, Snapshot, Timestamp};
use crate::engine::Policy;
use crate::store::{BatchRead, Store, StoreError, Transaction, Unreachable};

/// One queued CreateSnapshot call.
#[derive(Debug)]
struct Queued {
    /// Tells this call from the others queued ([`GroupCommit::tickets`]).
    ticket: u64,
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
enum Verdict {
    /// The call's answer; when `Ok`, written and committed.
    Answer(Result<CreateOutcome, ServiceError>),
    /// The batch could not settle this call yet (its disk was locked elsewhere, or written
    /// by an earlier call of the batch): queue it again for a later batch.
    Retry,
    /// The batch could not settle this call: run it in a transaction of its own.
    RunAlone,
}

/// How often a call is queued again before it runs alone (and waits for its disk's lock).
const RETRIES: usize = 3;

pub(super) struct GroupCommit {
    store: Arc<dyn Store>,
    backend: Arc<dyn SnapshotBackend>,
    storage: StorageHealth,
    lanes: Vec<Arc<Lane>>,
    pick_lane: RandomState,
    max_batch: usize,
    callers: Callers,
    /// The next queued call's [`Queued::ticket`].
    tickets: AtomicU64,
}

/// What the lanes hold at one instant: the only way to see from outside that a call is queued
/// (tests wait on it instead of sleeping; an operator reads a backlog from it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Calls in a lane's queue, not yet taken into a batch.
    pub queued: usize,
    /// Lanes writing a batch now.
    pub busy_lanes: usize,
    /// Callers waiting for their answer: queued, or in a batch being written.
    pub waiting_callers: usize,
    /// Callers that went away (cancelled, past their deadline) before their answer, since the
    /// service started. Counted once the batch can see it: their reply channel is closed.
    pub gone_callers: u64,
}

/// The callers inside [`GroupCommit::submit`], counted for [`Backlog`].
#[derive(Default)]
struct Callers {
    waiting: AtomicUsize,
    gone: AtomicU64,
}

/// One caller counted as waiting; dropped unanswered, it counts as gone.
struct Waiting<'a> {
    callers: &'a Callers,
    answered: bool,
}

impl<'a> Waiting<'a> {
    fn enter(callers: &'a Callers) -> Self {
        callers.waiting.fetch_add(1, Ordering::SeqCst);
        Self {
            callers,
            answered: false,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.callers.gone.fetch_add(1, Ordering::SeqCst);
        }
        self.callers.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The calls of some disks, written one batch at a time: a disk's calls always take the same
/// lane, so two batches of one process never contend for one disk.
struct Lane {
    queue: CallQueue<Queued>,
    turn: Arc<Semaphore>,
}

impl GroupCommit {
    /// Writes on `store`, starting copies on `backend` and noting full disks in `storage`:
    /// `lanes` batches at once at most (the store's [`Store::create_lanes`]), of at most
    /// `max_batch` calls each.
    pub fn new(
        store: Arc<dyn Store>,
        backend: Arc<dyn SnapshotBackend>,
        storage: StorageHealth,
        max_batch: usize,
    ) -> Self {
        let lanes = store.create_lanes();
        Self {
            store,
            backend,
            storage,
            lanes: (0..lanes.max(1))
                .map(|_| {
                    Arc::new(Lane {
                        queue: CallQueue::default(),
                        turn: Arc::new(Semaphore::new(1)),
                    })
                })
                .collect(),
            pick_lane: RandomState::new(),
            max_batch: max_batch.max(1),
            callers: Callers::default(),
            tickets: AtomicU64::new(0),
        }
    }

    /// What the lanes hold now. Each number is read on its own, not all at one instant.
    pub fn backlog(&self) -> Backlog {
        Backlog {
            queued: self.lanes.iter().map(|lane| lane.queue.len()).sum(),
            busy_lanes: self
                .lanes
                .iter()
                .filter(|lane| lane.turn.available_permits() == 0)
                .count(),
            waiting_callers: self.callers.waiting.load(Ordering::SeqCst),
            gone_callers: self.callers.gone.load(Ordering::SeqCst),
        }
    }

    /// Queues the call and waits for its answer, writing batches (the caller's and others')
    /// whenever it gets a turn. `None`: the caller must run the call alone.
    pub async fn submit(
        &self,
        command: &CreateSnapshotCommand,
        policy: &Policy,
        now: Timestamp,
    ) -> Option<Result<CreateOutcome, ServiceError>> {
        for _ in 0..=RETRIES {
            match self.queue_and_wait(command, policy, now).await {
                Verdict::Answer(answer) => return Some(answer),
                Verdict::Retry => continue,
                Verdict::RunAlone => return None,
            }
        }
        None
    }

    async fn queue_and_wait(
        &self,
        command: &CreateSnapshotCommand,
        policy: &Policy,
        now: Timestamp,
    ) -> Verdict {
        let lane_index =
            self.pick_lane.hash_one(command.disk_id.as_str()) as usize % self.lanes.len();
        let lane = &self.lanes[lane_index];
        // Before the channel, so it is dropped after it: once a caller counts as gone, its
        // batch sees the reply channel closed.
        let mut waiting = Waiting::enter(&self.callers);
        let (reply, mut verdict) = oneshot::channel();
        let ticket = self.tickets.fetch_add(1, Ordering::Relaxed);
        lane.queue.push(Queued {
            ticket,
            command: command.clone(),
            policy: *policy,
            now,
            reply,
        });
        loop {
            tokio::select! {
                biased;
                // A batch that broke off (a panic) dropped our reply: run alone.
                answer = &mut verdict => {
                    waiting.answered = true;
                    return answer.unwrap_or(Verdict::RunAlone);
                }
                turn = Arc::clone(&lane.turn).acquire_owned() => {
                    let turn = turn.expect("the semaphore is never closed");
                    let batch = lane.queue.take(self.max_batch);
                    let alone = matches!(batch.as_slice(), [only] if only.ticket == ticket);
                    if batch.is_empty() {
                        // Another leader took this call; its answer is on the way.
                        let answer = verdict.await;
                        waiting.answered = true;
                        return answer.unwrap_or(Verdict::RunAlone);
                    }
                    let write = write_batch(
                        Arc::clone(&self.store),
                        lane_index,
                        batch,
                        Arc::clone(&self.backend),
                        self.storage.clone(),
                    );
                    if alone {
                        // Only this call is in the batch, so only this call can be cut short
                        // with it, as its own transaction would be: written here, without the
                        // task switch to a writer and back (most calls at low load).
                        if let Some(cause) = write.await {
                            lane.answer_all(&cause);
                        }
                        drop(turn);
                        continue;
                    }
                    // In a task of its own, holding the lane's turn: if this call goes away
                    // (cancelled, past its deadline), the batch still ends and answers the
                    // others. Dropped halfway, it could commit with nobody told.
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
fn answer_unreachable(calls: Vec<Queued>, cause: &Unreachable) {
    for queued in calls {
        let unreachable = StoreError::Unavailable(cause.clone());
        queued.answer(Verdict::Answer(Err(unreachable.into())));
    }
}

/// Resolves once no caller of `batch` waits for its answer any more.
async fn all_gone(batch: &[Queued]) {
    // Polled: a caller's going away is seen within this delay.
    const LOOK_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
    while batch.iter().any(Queued::is_awaited) {
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

impl Lane {
    /// Answers every queued call: the database is unreachable.
    fn answer_all(&self, cause: &Unreachable) {
        answer_unreachable(self.queue.take(usize::MAX), cause);
    }
}

/// Writes one batch of queued calls in one transaction and answers each; returns the cause
/// when the database was unreachable. It owns all it uses: it runs in a task of its own, so
/// that no caller's going away can drop it halfway and leave the others' answers unknown.
async fn write_batch(
    store: Arc<dyn Store>,
    lane: usize,
    batch: Vec<Queued>,
    backend: Arc<dyn SnapshotBackend>,
    storage: StorageHealth,
) -> Option<Unreachable> {
    let written = async {
        let mut attempt = 1;
        loop {
            let mut tx = store.begin_batch(batch.len(), lane).await?;
            let decision = match decide_batch(tx.as_mut(), &batch, backend.as_ref()).await {
                Ok(decision) => decision,
                Err(err) => {
                    tx.rollback().await;
                    if err.is_conflict() && attempt < CONFLICT_ATTEMPTS {
                        attempt += 1;
                        continue;
                    }
                    return Err(err);
                }
            };
            // A caller whose snapshot was about to be committed went away: write the batch
            // again without it, as its own transaction would have been rolled back.
            if decision.abandoned_writes(&batch) {
                tx.rollback().await;
                decision.cancel_copies(backend.as_ref()).await;
                continue;
            }
            tx.commit().await?;
            return Ok::<_, ServiceError>(decision);
        }
    };
    let written = tokio::select! {
        biased;
        written = written => written,
        // Nobody waits for this batch any more (say a slow copy outlasted every caller's
        // deadline): stop, which rolls it back, and free the lane.
        () = all_gone(&batch) => return None,
    };
    storage.note(&written);
    // A batch that failed as a whole: an unreachable database is every call's answer (each
    // would wait for it again alone); otherwise a lone call gets the error, and the calls of a
    // larger batch each find their own answer alone.
    match written {
        Ok(decision) => {
            crate::telemetry::metric::create_batch(batch.len());
            decision.answer(batch);
            None
        }
        Err(ServiceError::Store(StoreError::Unavailable(cause))) => {
            answer_unreachable(batch, &cause);
            Some(cause)
        }
        Err(failure) if batch.len() == 1 => {
            let lone = batch.into_iter().next().expect("one call");
            lone.answer(Verdict::Answer(Err(failure)));
            None
        }
        Err(_) => {
            for queued in batch {
                queued.answer(Verdict::RunAlone);
            }
            None
        }
    }
}

/// What a batch decided before it writes: each call's verdict, and the snapshots to write (by
/// index into the batch).
struct BatchDecision {
    verdicts: Vec<Option<Verdict>>,
    writes: Vec<(usize, Snapshot)>,
}

/// Decides a batch of calls inside `tx`, without waiting for any row lock. A call left without a verdict is written if the batch commits: its
/// snapshot is in `writes`. Calls whose callers went away get `RunAlone` (which nobody reads)
/// and are not written.
async fn decide_batch(
    tx: &mut dyn Transaction,
    batch: &[Queued],
    backend: &dyn SnapshotBackend,
) -> Result<BatchDecision, ServiceError> {
    let commands: Vec<&CreateSnapshotCommand> = batch.iter().map(|q| &q.command).collect();
    let reads = tx.lock_free_disks_and_read(&commands).await?;
    let mut verdicts = Vec::with_capacity(batch.len());
    let mut admitted = Vec::new();
    // What earlier calls of this batch write: a later call's read is stale there.
    let mut written_disks = HashSet::new();
    let mut written_tokens = HashSet::new();
    for (index, (queued, read)) in batch.iter().zip(reads).enumerate() {
        let command = &queued.command;
        let token = command
            .client_token
            .as_ref()
            .map(|token| (command.account_id.as_str(), token.as_str()));
        let stale = written_disks.contains(command.disk_id.as_str())
            || token.is_some_and(|token| written_tokens.contains(&token));
        let verdict = match read {
            _ if !queued.is_awaited() => Some(Verdict::RunAlone),
            _ if stale => Some(Verdict::Retry),
            // A later batch may find it free.
            BatchRead::Busy => Some(Verdict::Retry),
            // The one-call path finds the right refusal.
            BatchRead::Missing => Some(Verdict::RunAlone),
            BatchRead::Locked(locked) => match *locked {
                Err(corrupt) => Some(Verdict::Answer(Err(corrupt.into()))),
                Ok((state, binding)) => match judge(
                    command,
                    &state,
                    binding.as_ref(),
                    &queued.policy,
                    queued.now,
                ) {
                    Ok(Judgement::Replayed(id)) => {
                        Some(Verdict::Answer(Ok(CreateOutcome::Replayed { id })))
                    }
                    // A token's binding must be read afresh before a refusal (see
                    // `decide_and_write`); the one-call path does that.
                    Ok(Judgement::Refused(_)) if token.is_some() => Some(Verdict::RunAlone),
                    Ok(Judgement::Refused(refusal)) => Some(Verdict::Answer(Err(refusal.into()))),
                    Ok(Judgement::Admitted(snapshot)) => {
                        written_disks.insert(command.disk_id.as_str());
                        written_tokens.extend(token);
                        admitted.push((index, snapshot));
                        None
                    }
                    Err(err) => Some(Verdict::Answer(Err(err))),
                },
            },
        };
        verdicts.push(verdict);
    }
    let started = futures_util::future::join_all(
        admitted
            .iter_mut()
            .map(|(_, snapshot)| start_copy(snapshot, backend)),
    )
    .await;
    let mut writes = Vec::with_capacity(admitted.len());
    for ((index, snapshot), started) in admitted.into_iter().zip(started) {
        match started {
            Ok(()) => writes.push((index, snapshot)),
            Err(err) => verdicts[index] = Some(Verdict::Answer(Err(err))),
        }
    }
    let rows: Vec<(&Snapshot, &CreateSnapshotCommand)> = writes
        .iter()
        .map(|(index, snapshot)| (snapshot, &batch[*index].command))
        .collect();
    if !rows.is_empty()
        && let Err(err) = tx.insert_snapshots(&rows).await
    {
        let decision = BatchDecision { verdicts, writes };
        decision.cancel_copies(backend).await;
        return Err(err.into());
    }
    Ok(BatchDecision { verdicts, writes })
}

impl BatchDecision {
    /// Answers every call of the committed batch.
    fn answer(self, batch: Vec<Queued>) {
        let mut verdicts = self.verdicts;
        for (index, snapshot) in self.writes {
            verdicts[index] = Some(Verdict::Answer(Ok(CreateOutcome::Created {
                id: snapshot.snapshot_id,
            })));
        }
        for (queued, verdict) in batch.into_iter().zip(verdicts) {
            queued.answer(verdict.unwrap_or(Verdict::RunAlone));
        }
    }

    /// Cancels the copies started for the snapshots this decision would have written (it is
    /// being rolled back).
    async fn cancel_copies(&self, backend: &dyn SnapshotBackend) {
        for (_, snapshot) in &self.writes {
            cancel_copy(backend, snapshot).await;
        }
    }

    /// Whether a caller whose snapshot is about to be committed has gone away.
    fn abandoned_writes(&self, batch: &[Queued]) -> bool {
        self.writes
            .iter()
            .any(|(index, _)| !batch[*index].is_awaited())
    }
}
