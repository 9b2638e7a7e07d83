//! Why a caller's input is not a valid domain value: one variant per ECS code, named after it
//! with its dots removed. Each edge maps these to its own wire format (`grpc/error.rs`).

/// An input the seed's (or ECS's) rules refuse before anything is read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("MissingParameter: {field} is required")]
    MissingParameter { field: &'static str },

    #[error("DiskId.ValueNotSupported: {disk_id:?}")]
    DiskIdValueNotSupported { disk_id: String },

    #[error("InvalidSnapshotName.Malformed: {why}")]
    InvalidSnapshotNameMalformed { why: &'static str },

    #[error("InvalidDescription.Malformed: {why}")]
    InvalidDescriptionMalformed { why: &'static str },

    #[error("InvalidClientToken.Malformed: {why}")]
    InvalidClientTokenMalformed { why: &'static str },

    #[error("InvalidSnapshotId.Malformed: {snapshot_id:?}")]
    InvalidSnapshotIdMalformed { snapshot_id: String },

    #[error("InvalidSnapshotIds.Malformed: {why}")]
    InvalidSnapshotIdsMalformed { why: &'static str },

    #[error("InvalidNextToken.Malformed")]
    InvalidNextTokenMalformed,

    #[error("InvalidRetentionDays.Malformed: {retention_days}")]
    InvalidRetentionDaysMalformed { retention_days: i32 },

    #[error("InvalidTagKey.Malformed: {why}")]
    InvalidTagKeyMalformed { why: &'static str },

    #[error("InvalidTagValue.Malformed: {why}")]
    InvalidTagValueMalformed { why: &'static str },

    #[error("Duplicate.TagKey: {key}")]
    DuplicateTagKey { key: String },

    #[error("InvalidImageId.Malformed: {field}: {image_id:?}")]
    InvalidImageIdMalformed {
        field: &'static str,
        image_id: String,
    },

    #[error("InvalidImageName.Malformed: {why}")]
    InvalidImageNameMalformed { why: &'static str },

    // The tag calls (TagResources, UntagResources, ListTagResources).
    #[error("InvalidResourceType.NotFound: {resource_type:?}")]
    InvalidResourceTypeNotFound { resource_type: String },

    #[error("NumberExceed.ResourceIds: {count} resource ids")]
    NumberExceedResourceIds { count: usize },

    #[error("BothEmpty.TagsAndResources")]
    BothEmptyTagsAndResources,

    /// Any other field out of its range (inventory records, page sizes, request bodies).
    #[error("InvalidParameter: {field}: {why}")]
    InvalidParameter { field: &'static str, why: String },
}
