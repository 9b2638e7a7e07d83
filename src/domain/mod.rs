//! Domain values: ids, names, the inventory records, snapshots and validated requests.
//!
//! Parse, don't validate: every value that crosses an edge is built through a `parse`
//! constructor that enforces the seed's rules, so code holding a `SnapshotName` never re-checks
//! it. A parse failure is a [`ParseError`] named after its ECS code. This module imports nothing
//! else of the crate: the engine, the service, the store and the edges build on it.

/// Generates `as_str`/`parse` for a plain enum stored as text.
macro_rules! text_enum {
    ($name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            pub fn parse(raw: &str) -> Option<Self> {
                match raw { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

mod commands;
mod error;
mod ids;
mod images;
mod inventory;
mod names;
mod simulation;
mod snapshot;
mod tags;

pub use commands::{
    CreateImageCommand, CreateImageParams, CreateSnapshotCommand, CreateSnapshotParams,
    DescribeSnapshotsParams, MAX_PAGE_SIZE, MAX_SNAPSHOT_IDS, PageCursor, SnapshotPage,
    SnapshotQuery, WatchQuery,
};
pub use commands::{ModifySnapshotAttributeCommand, ModifySnapshotAttributeParams};
pub use error::ParseError;
pub use ids::{
    DiskId, ImageId, MAX_PLAIN_ID_LEN, SnapshotId, is_plain_id, new_image_id, new_snapshot_id,
};
pub use images::{DescribeImagesParams, Image, ImageCursor, ImagePage, ImageQuery, MAX_IMAGE_IDS};
pub use inventory::{
    AccessKey, Account, Disk, DiskCategory, DiskStatus, DiskType, Instance, InstanceStatus,
    SECURITY_LOCK,
};
pub use names::{ClientToken, Description, ImageName, MAX_TAGS, RetentionDays, SnapshotName, Tag};
pub use simulation::{
    Checkpoint, ClockAdvance, CopyRateMibps, DiskSteering, MAX_CLOCK_ADVANCE_SECONDS,
    STALLED_REMAINING, SteeredCopy, SteeredRate,
};
pub use snapshot::{InProgressSnapshot, Snapshot, SnapshotStatus, SnapshotUsage};
pub use tags::{
    ListTagResourcesParams, MAX_RESOURCE_IDS, SNAPSHOT_RESOURCE_TYPE, TAG_PAGE_SIZE, TagCursor,
    TagKeys, TagPage, TagQuery, TagResource, TagResourcesCommand, TagResourcesParams,
    UntagResourcesCommand, UntagResourcesParams,
};

/// Timestamps are UTC instants throughout.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// The last second a timestamp given as input may name: 9999-12-31T23:59:59Z.
pub const LATEST_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// Whether a caller's instant lies in 1970..=9999, what every store keeps alike (PostgreSQL's
/// range stops in 4713 BC) and a cloud API can mean; a leap second (`…:60`) is not one.
pub fn is_storable_time(at: &Timestamp) -> bool {
    (0..=LATEST_TIMESTAMP_SECONDS).contains(&at.timestamp())
        && at.timestamp_subsec_nanos() < 1_000_000_000
}

/// `at + by`, or the last representable instant if that is past it: configured windows and
/// copy times come from outside, and time arithmetic must never panic on them.
pub fn later(at: Timestamp, by: std::time::Duration) -> Timestamp {
    chrono::TimeDelta::from_std(by)
        .ok()
        .and_then(|by| at.checked_add_signed(by))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}
