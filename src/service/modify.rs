//! ModifySnapshotAttribute: the caller's snapshot's name, description and retention.
//!
//! "Lock the snapshot, let the engine decide, write": the snapshot row is locked before it is
//! read, so a DeleteSnapshot or the worker's release (which lock it too) either finishes first,
//! and the change answers `InvalidSnapshotId.NotFound`, or waits for the change and sees it (a
//! release then finds the snapshot's new `release_at` not yet due).

use super::{Service, ServiceError};
use crate::domain::{ModifySnapshotAttributeCommand, Timestamp};
use crate::engine::decide_modify;
use crate::store::Transaction;

impl Service {
    /// Changes the attributes the command names on the caller's snapshot; a change of retention
    /// moves its release time (from its creation, as on create).
    pub async fn modify_snapshot_attribute(
        &self,
        command: &ModifySnapshotAttributeCommand,
    ) -> Result<(), ServiceError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let result = modify(tx.as_mut(), command, now).await;
        self.finish(tx, result).await
    }
}

/// ModifySnapshotAttribute inside `tx`; the caller commits on `Ok`.
async fn modify(
    tx: &mut dyn Transaction,
    command: &ModifySnapshotAttributeCommand,
    now: Timestamp,
) -> Result<(), ServiceError> {
    let snapshot = tx
        .lock_own_snapshot(&command.account_id, command.snapshot_id.as_str())
        .await?;
    if let Some(modified) = decide_modify(command, snapshot.as_ref(), now)? {
        tx.update_snapshot_attributes(&modified).await?;
    }
    Ok(())
}
