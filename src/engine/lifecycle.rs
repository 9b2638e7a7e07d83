//! Lifecycle rules: deleting a snapshot, making an image of one, and paging a listing.

use super::RuleError;
use crate::domain::{SnapshotStatus, SnapshotUsage};

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

/// Page size of DescribeSnapshots: 1..=100, 0 meaning the default of 10.
pub fn page_size(max_results: i32) -> Result<u32, RuleError> {
    match max_results {
        0 => Ok(10),
        1..=100 => Ok(u32::try_from(max_results).unwrap_or(10)),
        _ => Err(RuleError::InvalidParameter {
            field: "max_results",
            why: "must be 1 to 100".to_owned(),
        }),
    }
}

/// At most this many ids in one DescribeSnapshots.
pub const MAX_SNAPSHOT_IDS: usize = 100;
