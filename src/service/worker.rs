//! The lifecycle worker's step: finish copies whose time has come, release snapshots past
//! their retention, forget spent signature nonces. Each queue is claimed with `SKIP LOCKED` (PostgreSQL), so replicas share it.

use super::{Service, ServiceError, cancel_copy};
use crate::backend::{CopyState, SnapshotBackend};
use crate::domain::{Snapshot, SnapshotStatus, Timestamp, later};
use crate::store::{Transaction, WorkQueue};

/// Rows claimed per step and queue: a step records them in a few statements, so a large batch
/// lets the worker keep up with a high create rate.
const BATCH: u32 = 256;

/// What one worker step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkDone {
    pub accomplished: usize,
    pub failed: usize,
    pub released: usize,
    /// A queue gave a whole batch: more rows may be due already.
    pub more_due: bool,
}

impl WorkDone {
    pub fn is_idle(&self) -> bool {
        self.accomplished + self.failed + self.released == 0
    }
}

impl Service {
    /// One step: finish due copies, then release expired snapshots, each in a transaction.
    pub async fn worker_step(&self) -> Result<WorkDone, ServiceError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let copies = advance_copies(tx.as_mut(), now, self.backend.as_ref()).await;
        let copies = self.finish(tx, copies).await?;
        let mut tx = self.store.begin().await?;
        let released =
            release_expired(tx.as_mut(), now, self.clock.wall(), self.backend.as_ref()).await;
        let released = self.finish(tx, released).await?;
        Ok(WorkDone {
            released,
            more_due: copies.more_due || released == BATCH as usize,
            ..copies
        })
    }
}

/// Asks the data plane about the copies due by `now`, and records those that ended.
async fn advance_copies(
    tx: &mut dyn Transaction,
    now: Timestamp,
    backend: &dyn SnapshotBackend,
) -> Result<WorkDone, ServiceError> {
    let mut done = WorkDone::default();
    let claimed = tx.claim_due(WorkQueue::Copies, now, BATCH).await?;
    done.more_due = claimed.len() == BATCH as usize;
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
                tx.postpone_copy(snapshot, later(now, remaining)).await?;
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

/// Deletes the snapshots past their retention by `now` that no image uses (how many), and
/// the signature nonces whose window has passed by `wall`, the real time they are dated by
/// (see `Service::signing_time`).
async fn release_expired(
    tx: &mut dyn Transaction,
    now: Timestamp,
    wall: Timestamp,
    backend: &dyn SnapshotBackend,
) -> Result<usize, ServiceError> {
    let due = tx.claim_due(WorkQueue::Releases, now, BATCH).await?;
    for snapshot in &due {
        if snapshot.status == SnapshotStatus::Progressing {
            cancel_copy(backend, snapshot).await;
        }
    }
    tx.delete_and_uncount(&due).await?;
    tx.forget_expired_nonces(wall).await?;
    Ok(due.len())
}
