//! The engine's error type: one variant per rule, named after the seed's error code.

use std::time::Duration;

/// A rule that refused the request, given what is stored. The variant name is the ECS code with
/// its dots removed; `grpc/error.rs` maps each to its code, message and details. (Inputs that are
/// wrong whatever is stored are the domain's `ParseError`s.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("IdempotentParameterMismatch: token {client_token:?} was used with other parameters")]
    IdempotentParameterMismatch { client_token: String },

    #[error("InvalidAccountStatus.SnapshotServiceUnavailable: account {account_id}")]
    InvalidAccountStatusSnapshotServiceUnavailable { account_id: String },

    #[error("InvalidAccountStatus.NotEnoughBalance: account {account_id}")]
    InvalidAccountStatusNotEnoughBalance { account_id: String },

    #[error("InvalidDiskId.NotFound: {disk_id}")]
    InvalidDiskIdNotFound { disk_id: String },

    #[error("DiskCategory.OperationNotSupported: {disk_id} is {category}")]
    DiskCategoryOperationNotSupported {
        disk_id: String,
        category: &'static str,
    },

    #[error("DiskInArrears: {disk_id}")]
    DiskInArrears { disk_id: String },

    #[error("IncorrectDiskStatus.NeverAttached: {disk_id}")]
    IncorrectDiskStatusNeverAttached { disk_id: String },

    #[error("IncorrectDiskStatus: {disk_id} is {status}")]
    IncorrectDiskStatus {
        disk_id: String,
        status: &'static str,
    },

    #[error("IncorrectInstanceStatus: {instance_id} is {status}")]
    IncorrectInstanceStatus {
        disk_id: String,
        instance_id: String,
        status: &'static str,
    },

    #[error("InstanceLockedForSecurity: {instance_id}")]
    InstanceLockedForSecurity {
        disk_id: String,
        instance_id: String,
    },

    #[error("IncorrectDiskStatus.NeverUsed: {instance_id} never started")]
    IncorrectDiskStatusNeverUsed {
        disk_id: String,
        instance_id: String,
    },

    #[error("IncorrectDiskStatus.Initializing: {disk_id} ready in {retry_after:?}")]
    IncorrectDiskStatusInitializing {
        disk_id: String,
        retry_after: Duration,
    },

    #[error("IncorrectDiskStatus.CreatingSnapshot: {snapshot_id} on {disk_id}")]
    IncorrectDiskStatusCreatingSnapshot {
        disk_id: String,
        snapshot_id: String,
        retry_after: Duration,
    },

    #[error("QuotaExceed.Snapshot: {disk_id} has {quota}")]
    QuotaExceedSnapshot { disk_id: String, quota: u32 },

    // Lifecycle: DescribeSnapshots, DeleteSnapshot, CreateImage, retention and tags.
    #[error("InvalidSnapshotId.NotFound: {snapshot_id}")]
    InvalidSnapshotIdNotFound { snapshot_id: String },

    #[error("SnapshotCreatedImage: {snapshot_id}")]
    SnapshotCreatedImage { snapshot_id: String },

    #[error("InvalidSnapshotId.NotReady: {snapshot_id} is {status}")]
    InvalidSnapshotIdNotReady {
        snapshot_id: String,
        status: &'static str,
    },

    /// ModifySnapshotAttribute: ECS extends a retention, never shortens it (0 is forever, the
    /// longest).
    #[error(
        "InvalidRetentionDays.ShortenNotSupported: {snapshot_id} keeps {retention_days}, asked {requested}"
    )]
    InvalidRetentionDaysShortenNotSupported {
        snapshot_id: String,
        retention_days: i32,
        requested: i32,
    },

    // Tags after creation (TagResources, UntagResources, ListTagResources).
    #[error("InvalidResourceId.NotFound: {resource_id}")]
    InvalidResourceIdNotFound { resource_id: String },

    #[error("OperationDenied.QuotaExceed: {snapshot_id} would hold {would_hold} tags")]
    OperationDeniedQuotaExceed {
        snapshot_id: String,
        would_hold: usize,
    },

    #[error("InvalidImageId.NotFound: {image_id}")]
    InvalidImageIdNotFound { image_id: String },

    // Inventory (admin API) input rules.
    #[error("InvalidParameter: {field}: {why}")]
    InvalidParameter { field: &'static str, why: String },

    #[error("InvalidAccountId.NotFound: {account_id}")]
    InvalidAccountIdNotFound { account_id: String },

    #[error("InvalidInstanceId.NotFound: {instance_id}")]
    InvalidInstanceIdNotFound { instance_id: String },
}
