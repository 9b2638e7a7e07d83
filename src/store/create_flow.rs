//! The CreateSnapshot transaction, written once for both backends.
//!
//! A backend supplies the statements ([`CreateReads`], [`InsertSnapshot`]); this file supplies the order: read under the
//! lock, settle the client token, let the engine decide, start the copy, write.

use super::{CreateOutcome, StoreError};
use crate::backend::SnapshotBackend;
use crate::domain::{
    CreateSnapshotCommand, Snapshot, SnapshotStatus, SnapshotUsage, Timestamp, new_snapshot_id,
};
use crate::engine::{CreateState, Policy, TokenBinding, check_token_binding, decide_create};

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

/// The write of one CreateSnapshot transaction, backend by backend (one statement on
/// PostgreSQL).
pub(crate) trait InsertSnapshot {
    /// Inserts the snapshot, its tags and the token binding and updates the disk's bookkeeping.
    async fn insert_snapshot(
        &mut self,
        snapshot: &Snapshot,
        command: &CreateSnapshotCommand,
    ) -> Result<(), StoreError>;
}

/// Runs the decision inside `tx`. On `Ok` the caller commits; on an error it rolls back
/// (dropping the transaction does).
pub(crate) async fn decide_and_write(
    tx: &mut (impl CreateReads + InsertSnapshot),
    command: &CreateSnapshotCommand,
    policy: &Policy,
    now: Timestamp,
    backend: &dyn SnapshotBackend,
) -> Result<CreateOutcome, StoreError> {
    let (state, binding) = match tx.lock_and_read(command).await? {
        Some(locked) => locked,
        None => tx.read_caller(command).await?,
    };
    let fingerprint = command.fingerprint();
    if let Some(token) = &command.client_token
        && let Some(snapshot_id) =
            check_token_binding(token.as_str(), binding.as_ref(), &fingerprint)?
    {
        return Ok(CreateOutcome::Replayed { id: snapshot_id });
    }

    if let Err(refusal) = decide_create(
        &command.account_id,
        command.disk_id.as_str(),
        &state,
        policy,
        now,
    ) {
        // On PostgreSQL the locking statement reads other tables as of its start, before it
        // waited for the lock: a request with the same token that held the lock may have bound
        // it meanwhile. Look again before refusing, so that retry gets its original answer.
        if let Some(token) = &command.client_token {
            let fresh = tx.read_token(command).await?;
            if let Some(snapshot_id) =
                check_token_binding(token.as_str(), fresh.as_ref(), &fingerprint)?
            {
                return Ok(CreateOutcome::Replayed { id: snapshot_id });
            }
        }
        return Err(refusal.into());
    }

    let disk = state
        .disk
        .as_ref()
        .expect("the engine admits only an existing disk");
    let mut snapshot = Snapshot {
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
    };
    let copy_time = backend
        .start_copy(&snapshot)
        .await
        .map_err(StoreError::CopyNotStarted)?;
    snapshot.copy_due_at = now + copy_time;
    tx.insert_snapshot(&snapshot, command).await?;
    Ok(CreateOutcome::Created {
        id: snapshot.snapshot_id,
    })
}
