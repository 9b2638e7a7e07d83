//! Snapshots as the store keeps them.

use super::{DiskType, RetentionDays, Tag, Timestamp};

text_enum!(SnapshotStatus {
    Progressing => "progressing",
    Accomplished => "accomplished",
    Failed => "failed",
});

/// What a snapshot is used by: nothing, or a custom image (which pins it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotUsage {
    None,
    Image,
}

impl SnapshotUsage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Image => "image",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "none" => Some(Self::None),
            "image" => Some(Self::Image),
            _ => None,
        }
    }
}

/// A snapshot row as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub snapshot_id: String,
    pub account_id: String,
    pub source_disk_id: String,
    pub snapshot_name: Option<String>,
    pub description: String,
    pub source_disk_size_gib: i32,
    pub source_disk_type: DiskType,
    pub status: SnapshotStatus,
    pub created_at: Timestamp,
    /// When the copy started; progress is derived from it, so it survives restarts.
    pub started_at: Timestamp,
    /// When the backend expects the copy to be done; the worker looks at it from then on.
    pub copy_due_at: Timestamp,
    pub last_modified_at: Timestamp,
    pub retention: RetentionDays,
    pub tags: Vec<Tag>,
    pub usage: SnapshotUsage,
}

impl Snapshot {
    /// ECS's `Available`: the snapshot can be used (an image made from it) once its copy is
    /// accomplished; this service offers no instant access that would make it usable sooner.
    pub fn is_available(&self) -> bool {
        self.status == SnapshotStatus::Accomplished
    }
}

/// The snapshot currently being copied from a disk, as far as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProgressSnapshot {
    pub snapshot_id: String,
    pub started_at: Timestamp,
    pub source_disk_size_gib: i32,
    /// When the backend said the copy would be done, when the store could read it; else the
    /// engine estimates it from the size and the copy rate.
    pub due_at: Option<Timestamp>,
}

#[cfg(test)]
impl Snapshot {
    /// A snapshot of disk `d-1` being copied since `started_at`: the unit tests' copy.
    pub(crate) fn copying(snapshot_id: &str, size_gib: i32, started_at: Timestamp) -> Self {
        Self {
            snapshot_id: snapshot_id.into(),
            account_id: "a".into(),
            source_disk_id: "d-1".into(),
            snapshot_name: None,
            description: String::new(),
            source_disk_size_gib: size_gib,
            source_disk_type: DiskType::Data,
            status: SnapshotStatus::Progressing,
            created_at: started_at,
            started_at,
            copy_due_at: started_at,
            last_modified_at: started_at,
            retention: RetentionDays::default(),
            tags: Vec::new(),
            usage: SnapshotUsage::None,
        }
    }
}
