//! CreateImage: a custom image from the caller's accomplished snapshot, which it pins;
//! DescribeImages; and DeleteImage, which unpins the snapshot with its last image.
//!
//! Locks are taken image first, then snapshot (CreateImage and DeleteSnapshot lock only the
//! snapshot, and the worker claims only unpinned snapshots), so no two of these calls wait for
//! each other in opposite orders.

use super::snapshots::facts;
use super::{CreateOutcome, Service, ServiceError, retry_conflicts};
use crate::domain::{CreateImageCommand, ImageId, ImagePage, ImageQuery, Timestamp, new_image_id};
use crate::engine::{check_token_binding, decide_create_image, decide_delete_image};
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

    /// One page of the caller's images, newest first, and how many match the filters.
    pub async fn describe_images(&self, query: &ImageQuery) -> Result<ImagePage, ServiceError> {
        let mut read = self.store.read().await?;
        let page = read.describe_images(query).await?;
        read.commit().await?;
        Ok(page)
    }

    /// Deletes the caller's image; the snapshot it pinned is unpinned with its last image.
    pub async fn delete_image(
        &self,
        account_id: &str,
        image_id: &ImageId,
    ) -> Result<(), ServiceError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let result = delete_image(tx.as_mut(), account_id, image_id.as_str(), now).await;
        self.finish(tx, result).await
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
    let image_id = new_image_id(now);
    tx.insert_image(&image_id, command, now).await?;
    Ok(CreateOutcome::Created { id: image_id })
}

/// DeleteImage inside `tx`; the caller commits on `Ok`.
async fn delete_image(
    tx: &mut dyn Transaction,
    account_id: &str,
    image_id: &str,
    now: Timestamp,
) -> Result<(), ServiceError> {
    let pinned = tx.lock_own_image(account_id, image_id).await?;
    decide_delete_image(image_id, pinned.is_some())?;
    let snapshot_id = pinned.expect("the engine deletes only an existing image");
    // The snapshot's lock, before its images are counted: a CreateImage of it, a DeleteSnapshot
    // and the worker's release wait for this call (or it for them), and never see the image
    // gone with the snapshot still pinned, or the snapshot unpinned with an image left.
    tx.lock_own_snapshot(account_id, &snapshot_id).await?;
    Ok(tx.delete_image(image_id, &snapshot_id, now).await?)
}
