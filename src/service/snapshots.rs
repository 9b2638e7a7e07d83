//! CreateSnapshot, DescribeSnapshots and DeleteSnapshot.
//!
//! CreateSnapshot is "lock the disk, read what the rules need, let the engine decide, start the
//! copy, write". Under load, calls that arrive together share that transaction
//! ([`super::group_commit`]); this file holds the one-call transaction every unusual call falls
//! back to, and the judgement both share.

use std::time::Duration;

use super::{CreateOutcome, Service, ServiceError, cancel_copy, retry_conflicts};
use crate::backend::{CopyState, SnapshotBackend};
use crate::domain::{
    CreateSnapshotCommand, PageCursor, Snapshot, SnapshotId, SnapshotQuery, SnapshotStatus,
    SnapshotUsage, Timestamp, later, new_snapshot_id,
};
use crate::engine::{
    CreateState, DeletePlan, Policy, RuleError, SnapshotFacts, TokenBinding, check_token_binding,
    decide_create, decide_delete,
};
use crate::store::Transaction;

/// A snapshot as DescribeSnapshots shows it: with its copy's progress now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotView {
    pub snapshot: Snapshot,
    pub progress_percent: u8,
    /// Time left until the copy is done (zero once it is).
    pub remaining: Duration,
}

/// One page of DescribeSnapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedPage {
    pub snapshots: Vec<SnapshotView>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<PageCursor>,
    /// Every snapshot the filters match (not only this page).
    pub total: u64,
}

impl Service {
    /// Creates a snapshot of the caller's disk, or answers why not; idempotent by client token.
    pub async fn create_snapshot(
        &self,
        command: &CreateSnapshotCommand,
    ) -> Result<CreateOutcome, ServiceError> {
        let now = self.clock.now();
        let batched = self.group_commit.submit(command, &self.policy, now).await;
        if let Some(answer) = batched {
            return answer;
        }
        crate::telemetry::metric::create_run_alone();
        retry_conflicts(|| async {
            let mut tx = self.store.begin().await?;
            let result = create_alone(
                tx.as_mut(),
                command,
                &self.policy,
                now,
                self.backend.as_ref(),
            )
            .await;
            self.finish(tx, result).await
        })
        .await
    }

    /// One page of the caller's snapshots, each with its copy's progress now.
    pub async fn describe_snapshots(
        &self,
        query: &SnapshotQuery,
    ) -> Result<DescribedPage, ServiceError> {
        let page = {
            let mut read = self.store.read().await?;
            let page = read.describe_snapshots(query).await?;
            read.commit().await?;
            page
        };
        let now = self.clock.now();
        let mut snapshots = Vec::with_capacity(page.snapshots.len());
        for snapshot in page.snapshots {
            snapshots.push(view_of(self.backend.as_ref(), snapshot, now).await);
        }
        Ok(DescribedPage {
            snapshots,
            next: page.next,
            total: page.total,
        })
    }

    /// Deletes the caller's snapshot, cancelling its copy if it is still in progress.
    pub async fn delete_snapshot(
        &self,
        account_id: &str,
        snapshot_id: &SnapshotId,
        force: bool,
    ) -> Result<(), ServiceError> {
        let mut tx = self.store.begin().await?;
        let result = delete(
            tx.as_mut(),
            account_id,
            snapshot_id.as_str(),
            force,
            self.backend.as_ref(),
        )
        .await;
        self.finish(tx, result).await
    }
}

/// `snapshot` with its copy's progress at `now`: DescribeSnapshots' view, and WatchSnapshots'.
pub(super) async fn view_of(
    backend: &dyn SnapshotBackend,
    snapshot: Snapshot,
    now: Timestamp,
) -> SnapshotView {
    let (progress_percent, remaining) = match snapshot.status {
        SnapshotStatus::Accomplished => (100, Duration::ZERO),
        SnapshotStatus::Failed => (0, Duration::ZERO),
        SnapshotStatus::Progressing => match backend.copy_state(&snapshot, now).await {
            CopyState::Copying {
                progress_percent,
                remaining,
            } => (progress_percent, remaining),
            // Done or failed, and the worker is about to record it: shown as it will be.
            CopyState::Done => (100, Duration::ZERO),
            CopyState::Failed(_) => (0, Duration::ZERO),
        },
    };
    SnapshotView {
        snapshot,
        progress_percent,
        // Whole seconds, as both edges show it: a watcher is sent a new state only when what it
        // sees changes.
        remaining: Duration::from_secs(remaining.as_secs_f64().ceil() as u64),
    }
}

/// What the engine made of one call, given what its locking read found.
pub(super) enum Judgement {
    /// The token is bound to identical parameters: the original answer.
    Replayed(String),
    Refused(RuleError),
    /// A new snapshot, not yet written, its copy not yet started.
    Admitted(Snapshot),
}

/// Applies the token rules and the engine to `command` over the state its locking read found.
pub(super) fn judge(
    command: &CreateSnapshotCommand,
    state: &CreateState,
    binding: Option<&TokenBinding>,
    policy: &Policy,
    now: Timestamp,
) -> Result<Judgement, ServiceError> {
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
        snapshot_id: new_snapshot_id(now),
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
pub(super) async fn start_copy(
    snapshot: &mut Snapshot,
    backend: &dyn SnapshotBackend,
) -> Result<(), ServiceError> {
    let copy_time = backend
        .start_copy(snapshot)
        .await
        .map_err(ServiceError::CopyNotStarted)?;
    snapshot.copy_due_at = later(snapshot.started_at, copy_time);
    Ok(())
}

/// One call's decision inside `tx`, waiting for its disk's lock. On `Ok` the caller commits.
async fn create_alone(
    tx: &mut dyn Transaction,
    command: &CreateSnapshotCommand,
    policy: &Policy,
    now: Timestamp,
    backend: &dyn SnapshotBackend,
) -> Result<CreateOutcome, ServiceError> {
    let (state, binding) = match tx.lock_disk_and_read(command).await? {
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
        return Err(err.into());
    }
    Ok(CreateOutcome::Created {
        id: snapshot.snapshot_id,
    })
}

pub(super) fn facts(snapshot: &Snapshot) -> SnapshotFacts {
    SnapshotFacts {
        status: snapshot.status,
        usage: snapshot.usage,
    }
}

/// DeleteSnapshot inside `tx`; the caller commits on `Ok`.
async fn delete(
    tx: &mut dyn Transaction,
    account_id: &str,
    snapshot_id: &str,
    force: bool,
    backend: &dyn SnapshotBackend,
) -> Result<(), ServiceError> {
    let snapshot = tx.lock_own_snapshot(account_id, snapshot_id).await?;
    let plan = decide_delete(snapshot_id, snapshot.as_ref().map(facts), force)?;
    let snapshot = snapshot.expect("the engine deletes only an existing snapshot");
    if plan == DeletePlan::CancelCopyAndDelete {
        cancel_copy(backend, &snapshot).await;
    }
    Ok(tx
        .delete_and_uncount(std::slice::from_ref(&snapshot))
        .await?)
}
