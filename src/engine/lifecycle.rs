//! Lifecycle rules: deleting a snapshot, making an image of one, changing its attributes, and
//! deleting an image.

use super::RuleError;
use crate::domain::{
    ModifySnapshotAttributeCommand, RetentionDays, Snapshot, SnapshotStatus, SnapshotUsage,
    Timestamp,
};

/// The part of a stored snapshot the lifecycle rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotFacts {
    pub status: SnapshotStatus,
    pub usage: SnapshotUsage,
}

/// What deleting a snapshot involves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletePlan {
    /// Remove the row and free its quota.
    Delete,
    /// Also cancel the copy and free the disk for a new snapshot.
    CancelCopyAndDelete,
}

/// DeleteSnapshot. `snapshot` is `None` when the caller has no such snapshot. `force` is
/// accepted for ECS compatibility and never overrides an image's claim.
pub fn decide_delete(
    snapshot_id: &str,
    snapshot: Option<SnapshotFacts>,
    _force: bool,
) -> Result<DeletePlan, RuleError> {
    let Some(snapshot) = snapshot else {
        return Err(RuleError::InvalidSnapshotIdNotFound {
            snapshot_id: snapshot_id.to_owned(),
        });
    };
    if snapshot.usage == SnapshotUsage::Image {
        return Err(RuleError::SnapshotCreatedImage {
            snapshot_id: snapshot_id.to_owned(),
        });
    }
    Ok(match snapshot.status {
        SnapshotStatus::Progressing => DeletePlan::CancelCopyAndDelete,
        SnapshotStatus::Accomplished | SnapshotStatus::Failed => DeletePlan::Delete,
    })
}

/// CreateImage: only an accomplished snapshot of the caller's can become an image.
pub fn decide_create_image(
    snapshot_id: &str,
    snapshot: Option<SnapshotFacts>,
) -> Result<(), RuleError> {
    let Some(snapshot) = snapshot else {
        return Err(RuleError::InvalidSnapshotIdNotFound {
            snapshot_id: snapshot_id.to_owned(),
        });
    };
    if snapshot.status != SnapshotStatus::Accomplished {
        return Err(RuleError::InvalidSnapshotIdNotReady {
            snapshot_id: snapshot_id.to_owned(),
            status: snapshot.status.as_str(),
        });
    }
    Ok(())
}

/// Whether `requested` keeps a snapshot for less time than `current` does (forever, `None`, is
/// the longest of all).
fn shortens(current: RetentionDays, requested: RetentionDays) -> bool {
    match (current.days(), requested.days()) {
        (None, Some(_)) => true,
        (Some(current), Some(requested)) => requested < current,
        (_, None) => false,
    }
}

/// ModifySnapshotAttribute. `snapshot` is the caller's stored snapshot (`None` when the caller
/// has none by that id). Answers the snapshot as it is to be stored, its `last_modified_at`
/// now, or `None` when the request names no attribute and nothing is to be written.
pub fn decide_modify(
    command: &ModifySnapshotAttributeCommand,
    snapshot: Option<&Snapshot>,
    now: Timestamp,
) -> Result<Option<Snapshot>, RuleError> {
    let Some(snapshot) = snapshot else {
        return Err(RuleError::InvalidSnapshotIdNotFound {
            snapshot_id: command.snapshot_id.as_str().to_owned(),
        });
    };
    if let Some(requested) = command.retention
        && shortens(snapshot.retention, requested)
    {
        return Err(RuleError::InvalidRetentionDaysShortenNotSupported {
            snapshot_id: snapshot.snapshot_id.clone(),
            retention_days: snapshot.retention.as_i32(),
            requested: requested.as_i32(),
        });
    }
    if command.changes_nothing() {
        return Ok(None);
    }
    let mut modified = snapshot.clone();
    if let Some(name) = &command.snapshot_name {
        modified.snapshot_name = name.as_ref().map(|n| n.as_str().to_owned());
    }
    if let Some(description) = &command.description {
        modified.description = description.as_str().to_owned();
    }
    if let Some(retention) = command.retention {
        modified.retention = retention;
    }
    modified.last_modified_at = now;
    Ok(Some(modified))
}

/// DeleteImage: `found` is whether the caller has the image. Another account's image, an unknown
/// one and one already deleted are the same answer, so an id tells nothing about its owner.
pub fn decide_delete_image(image_id: &str, found: bool) -> Result<(), RuleError> {
    if found {
        Ok(())
    } else {
        Err(RuleError::InvalidImageIdNotFound {
            image_id: image_id.to_owned(),
        })
    }
}
