//! CreateImage: a custom image from the caller's accomplished snapshot, which it pins.

use super::snapshots::facts;
use super::{CreateOutcome, Service, ServiceError, retry_conflicts};
use crate::domain::{CreateImageCommand, Timestamp, new_image_id};
use crate::engine::{check_token_binding, decide_create_image};
use crate::store::Transaction;

impl Service {
    /// Makes an image of the caller's accomplished snapshot; idempotent by client token.
    pub async fn create_image(
        &self,
        command: &CreateImageCommand,
    ) -> Result<CreateOutcome, ServiceError> {
        let now = self.clock.now();
        retry_conflicts(|| async {
            let mut tx = self.store.begin().await?;
            let result = create_image(tx.as_mut(), command, now).await;
            self.finish(tx, result).await
        })
        .await
    }
}

async fn create_image(
    tx: &mut dyn Transaction,
    command: &CreateImageCommand,
    now: Timestamp,
) -> Result<CreateOutcome, ServiceError> {
    let snapshot = tx
        .lock_own_snapshot(&command.account_id, command.snapshot_id.as_str())
        .await?;
    // Read after the lock: a concurrent request with this token on this snapshot has committed.
    if let Some(token) = &command.client_token {
        let binding = tx
            .read_image_token(&command.account_id, token.as_str())
            .await?;
        if let Some(id) =
            check_token_binding(token.as_str(), binding.as_ref(), &command.fingerprint())?
        {
            return Ok(CreateOutcome::Replayed { id });
        }
    }
    decide_create_image(command.snapshot_id.as_str(), snapshot.as_ref().map(facts))?;
    let image_id = new_image_id();
    tx.insert_image(&image_id, command, now).await?;
    Ok(CreateOutcome::Created { id: image_id })
}
