//! Tags after creation: TagResources, UntagResources and ListTagResources on the caller's
//! snapshots.
//!
//! A change is "lock every snapshot named, read their tags, let the engine decide, write": the
//! snapshots are locked in id order (two calls naming the same snapshots never deadlock), and
//! their tags are read after the lock, so two calls adding tags to one snapshot serialize on its
//! row and the second counts the first's tags (never more than 20). The answer is all or
//! nothing: one snapshot refused, none is changed.

use super::{Service, ServiceError};
use crate::domain::{
    SnapshotId, Tag, TagPage, TagQuery, TagResourcesCommand, Timestamp, UntagResourcesCommand,
};
use crate::engine::{decide_tag, decide_untag, require_own_resource};
use crate::store::Transaction;

impl Service {
    /// Adds the tags to each of the caller's snapshots named, or changes none.
    pub async fn tag_resources(&self, command: &TagResourcesCommand) -> Result<(), ServiceError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let result = tag(tx.as_mut(), command, now).await;
        self.finish(tx, result).await
    }

    /// Removes the tags from each of the caller's snapshots named, or changes none.
    pub async fn untag_resources(
        &self,
        command: &UntagResourcesCommand,
    ) -> Result<(), ServiceError> {
        let now = self.clock.now();
        let mut tx = self.store.begin().await?;
        let result = untag(tx.as_mut(), command, now).await;
        self.finish(tx, result).await
    }

    /// One page of the tags of the caller's snapshots the query names.
    pub async fn list_tag_resources(&self, query: &TagQuery) -> Result<TagPage, ServiceError> {
        let mut read = self.store.read().await?;
        let shaped: Vec<String> = query
            .snapshot_ids
            .iter()
            .filter(|id| could_be_a_snapshot(id))
            .cloned()
            .collect();
        let own = read.own_snapshot_ids(&query.account_id, &shaped).await?;
        let owned = query
            .snapshot_ids
            .iter()
            .try_for_each(|id| require_own_resource(id, own.contains(id)));
        // Ended either way: behind a transaction pooler a read runs in a transaction.
        let page = match owned {
            Ok(()) => read.list_tags(query).await?,
            Err(refused) => {
                read.commit().await?;
                return Err(refused.into());
            }
        };
        read.commit().await?;
        Ok(page)
    }
}

/// Locks the caller's snapshots of `ids` (in id order, in the store) and reads their tags; for
/// each id in the order given, its tags (`None`: not the caller's snapshot).
async fn lock_and_read_tags(
    tx: &mut dyn Transaction,
    account_id: &str,
    ids: &[String],
) -> Result<Vec<Option<Vec<Tag>>>, ServiceError> {
    let shaped: Vec<String> = ids
        .iter()
        .filter(|id| could_be_a_snapshot(id))
        .cloned()
        .collect();
    let mut held = tx.lock_own_snapshots_and_tags(account_id, &shaped).await?;
    Ok(ids
        .iter()
        .map(|id| {
            held.iter_mut()
                .find(|(locked, _)| locked == id)
                .map(|(_, tags)| std::mem::take(tags))
        })
        .collect())
}

/// Whether `id` has the shape of a snapshot id: one that has not (text PostgreSQL cannot even
/// store, such as NUL) is not found without asking the database.
fn could_be_a_snapshot(id: &str) -> bool {
    SnapshotId::parse(id).is_ok()
}

async fn tag(
    tx: &mut dyn Transaction,
    command: &TagResourcesCommand,
    now: Timestamp,
) -> Result<(), ServiceError> {
    let held = lock_and_read_tags(tx, &command.account_id, &command.snapshot_ids).await?;
    let mut changed = Vec::new();
    for (id, existing) in command.snapshot_ids.iter().zip(&held) {
        if decide_tag(id, existing.as_deref(), &command.tags)? {
            changed.push(id.clone());
        }
    }
    tx.put_tags(&changed, &command.tags, now).await?;
    Ok(())
}

async fn untag(
    tx: &mut dyn Transaction,
    command: &UntagResourcesCommand,
    now: Timestamp,
) -> Result<(), ServiceError> {
    let held = lock_and_read_tags(tx, &command.account_id, &command.snapshot_ids).await?;
    let mut changed = Vec::new();
    for (id, existing) in command.snapshot_ids.iter().zip(&held) {
        if decide_untag(id, existing.as_deref(), &command.keys)? {
            changed.push(id.clone());
        }
    }
    tx.remove_tags(&changed, &command.keys, now).await?;
    Ok(())
}
