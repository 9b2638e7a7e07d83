//! The CreateSnapshot transaction, written once for both backends.
//!
//! A backend supplies the statements ([`CreateReads`], [`CreateBatchReads`], [`InsertSnapshots`]);
//! this file supplies the order: read under the lock, settle the client token, let the engine
//! decide, start the copy, write. [`decide_and_write`] is one call's transaction;
//! [`decide_batch`] is a batch's (see [`super::group_commit`]), which settles the usual cases
//! and sends every other call to the one-call path.

use std::collections::HashSet;

use super::group_commit::{Queued, Verdict};
use super::lifecycle_flow::cancel_copy;
use super::{CreateOutcome, StoreError};
use crate::backend::SnapshotBackend;
use crate::domain::{
    CreateSnapshotCommand, Snapshot, SnapshotStatus, SnapshotUsage, Timestamp, new_snapshot_id,
};
use crate::engine::{
    CreateState, Policy, RuleError, TokenBinding, check_token_binding, decide_create,
};

/// The reads of one CreateSnapshot transaction, already begun; the same SQL on both backends
/// (see `inventory_flow::impl_shared_tx!`).
pub(crate) trait CreateReads {
    /// Locks the caller's disk and reads the state the engine needs and the caller's token
    /// binding, in one statement. `None` when the caller has no such disk.
    async fn lock_and_read(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<Option<(CreateState, Option<TokenBinding>)>, StoreError>;

    /// Reads the caller's account and token binding (when there is no disk to lock).
    async fn read_caller(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<(CreateState, Option<TokenBinding>), StoreError>;

    /// Reads the caller's token binding afresh.
    async fn read_token(
        &mut self,
        command: &CreateSnapshotCommand,
    ) -> Result<Option<TokenBinding>, StoreError>;
}

/// The write of a CreateSnapshot transaction, backend by backend (one statement on
/// PostgreSQL, however many snapshots).
pub(crate) trait InsertSnapshots {
    /// Inserts the snapshots, their tags and token bindings, and updates their disks'
    /// bookkeeping.
    async fn insert_snapshots(
        &mut self,
        snapshots: &[(&Snapshot, &CreateSnapshotCommand)],
    ) -> Result<(), StoreError>;
}

/// The locking read of a batch: what the engine needs for each call, on a transaction already
/// begun.
pub(crate) trait CreateBatchReads: InsertSnapshots {
    /// For each command, in order, what its locking read found; a lock held by another
    /// transaction is never waited for.
    async fn lock_free_and_read(
        &mut self,
        commands: &[&CreateSnapshotCommand],
    ) -> Result<Vec<BatchRead>, StoreError>;
}

/// What a batch's locking read found for one call.
pub(crate) enum BatchRead {
    /// The disk, now locked, and what the engine needs (or why the row does not decode).
    Locked(Box<Result<LockedRead, StoreError>>),
    /// Another transaction holds the disk's lock.
    Busy,
    /// The caller has no such disk.
    Missing,
}

/// What one call's locking read found.
pub(crate) type LockedRead = (CreateState, Option<TokenBinding>);

/// What the engine made of one call, given what its locking read found.
enum Judgement {
    /// The token is bound to identical parameters: the original answer.
    Replayed(String),
    Refused(RuleError),
    /// A new snapshot, not yet written, its copy not yet started.
    Admitted(Snapshot),
}

/// Applies the token rules and the engine to `command` over the state its locking read found.
fn judge(
    command: &CreateSnapshotCommand,
    state: &CreateState,
    binding: Option<&TokenBinding>,
    policy: &Policy,
    now: Timestamp,
) -> Result<Judgement, StoreError> {
    if let Some(token) = &command.client_token
        && let Some(snapshot_id) =
            check_token_binding(token.as_str(), binding, &command.fingerprint())?
    {
        return Ok(Judgement::Replayed(snapshot_id));
    }
    if let Err(refusal) = decide_create(
        &command.account_id,
        command.disk_id.as_str(),
        state,
        policy,
        now,
    ) {
        return Ok(Judgement::Refused(refusal));
    }
    let disk = state
        .disk
        .as_ref()
        .expect("the engine admits only an existing disk");
    Ok(Judgement::Admitted(Snapshot {
        snapshot_id: new_snapshot_id(),
        account_id: command.account_id.clone(),
        source_disk_id: disk.disk_id.clone(),
        snapshot_name: command
            .snapshot_name
            .as_ref()
            .map(|n| n.as_str().to_owned()),
        description: command.description.as_str().to_owned(),
        source_disk_size_gib: disk.size_gib,
        source_disk_type: disk.disk_type,
        status: SnapshotStatus::Progressing,
        created_at: now,
        started_at: now,
        copy_due_at: now,
        last_modified_at: now,
        retention: command.retention,
        tags: command.tags.clone(),
        usage: SnapshotUsage::None,
    }))
}

/// Starts the admitted snapshot's copy and records when it is due.
async fn start_copy(
    snapshot: &mut Snapshot,
    backend: &dyn SnapshotBackend,
) -> Result<(), StoreError> {
    let copy_time = backend
        .start_copy(snapshot)
        .await
        .map_err(StoreError::CopyNotStarted)?;
    snapshot.copy_due_at = snapshot.started_at + copy_time;
    Ok(())
}

/// Runs one call's decision inside `tx`, waiting for its disk's lock. On `Ok` the caller
/// commits; on an error it rolls back (dropping the transaction does).
pub(crate) async fn decide_and_write(
    tx: &mut (impl CreateReads + InsertSnapshots),
    command: &CreateSnapshotCommand,
    policy: &Policy,
    now: Timestamp,
    backend: &dyn SnapshotBackend,
) -> Result<CreateOutcome, StoreError> {
    let (state, binding) = match tx.lock_and_read(command).await? {
        Some(locked) => locked,
        None => tx.read_caller(command).await?,
    };
    let mut snapshot = match judge(command, &state, binding.as_ref(), policy, now)? {
        Judgement::Replayed(id) => return Ok(CreateOutcome::Replayed { id }),
        Judgement::Refused(refusal) => {
            // On PostgreSQL the locking statement reads other tables as of its start, before
            // it waited for the lock: a request with the same token that held the lock may
            // have bound it meanwhile. Look again before refusing, so that retry gets its
            // original answer.
            if let Some(token) = &command.client_token {
                let fresh = tx.read_token(command).await?;
                if let Some(id) =
                    check_token_binding(token.as_str(), fresh.as_ref(), &command.fingerprint())?
                {
                    return Ok(CreateOutcome::Replayed { id });
                }
            }
            return Err(refusal.into());
        }
        Judgement::Admitted(snapshot) => snapshot,
    };
    start_copy(&mut snapshot, backend).await?;
    if let Err(err) = tx.insert_snapshots(&[(&snapshot, command)]).await {
        cancel_copy(backend, &snapshot).await;
        return Err(err);
    }
    Ok(CreateOutcome::Created {
        id: snapshot.snapshot_id,
    })
}

/// What a batch decided before it writes: each call's verdict, and the snapshots to write (by
/// index into the batch).
pub(crate) struct BatchDecision {
    pub verdicts: Vec<Option<Verdict>>,
    pub writes: Vec<(usize, Snapshot)>,
}

/// Decides a batch of calls inside `tx`, without waiting for any row lock. A call left without a verdict is written if the batch commits: its
/// snapshot is in `writes`. Calls whose callers went away get `RunAlone` (which nobody reads)
/// and are not written.
pub(crate) async fn decide_batch(
    tx: &mut impl CreateBatchReads,
    batch: &[Queued],
    backend: &dyn SnapshotBackend,
) -> Result<BatchDecision, StoreError> {
    let commands: Vec<&CreateSnapshotCommand> = batch.iter().map(|q| &q.command).collect();
    let reads = tx.lock_free_and_read(&commands).await?;
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
                Err(corrupt) => Some(Verdict::Answer(Err(corrupt))),
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
        return Err(err);
    }
    Ok(BatchDecision { verdicts, writes })
}

impl BatchDecision {
    /// Answers every call of the committed batch.
    pub fn answer(self, batch: Vec<Queued>) {
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
    pub async fn cancel_copies(&self, backend: &dyn SnapshotBackend) {
        for (_, snapshot) in &self.writes {
            cancel_copy(backend, snapshot).await;
        }
    }

    /// Whether a caller whose snapshot is about to be committed has gone away.
    pub fn abandoned_writes(&self, batch: &[Queued]) -> bool {
        self.writes
            .iter()
            .any(|(index, _)| !batch[*index].is_awaited())
    }
}
