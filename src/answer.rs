//! What each failure answers, whatever the edge: the ECS code (the seed's, verbatim), its
//! message and HTTP status, the canonical class, and the detail that names the field, the
//! precondition or the quota. The gRPC edge renders an [`Answer`] as a `google.rpc.Status`
//! (`grpc/error.rs`), the ECS edge as ECS's `{"Code","Message",…}` body with the HTTP status
//! (`ecs/error.rs`): both edges give one failure the same code because both read it here.

use std::time::Duration;

use crate::config::RateLimit;
use crate::domain::{MAX_RESOURCE_IDS, MAX_TAGS, ParseError};
use crate::engine::RuleError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// The canonical class of a failure (google.rpc.Code's names): the gRPC status code, and what
/// metrics and logs group by on every edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    ResourceExhausted,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    DeadlineExceeded,
    Unimplemented,
    Internal,
}

use Class::{
    DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, NotFound, PermissionDenied,
    ResourceExhausted, Unavailable,
};

/// The detail that accompanies `ErrorInfo` and `RequestInfo`.
pub enum Detail {
    None,
    BadRequest {
        field: &'static str,
        description: String,
    },
    Precondition {
        subject: String,
        description: String,
    },
    Quota {
        subject: String,
        description: String,
    },
    Resource {
        resource_type: &'static str,
        name: String,
        owner: String,
    },
}

/// What one error answers with, on any edge.
pub struct Answer {
    pub class: Class,
    pub reason: &'static str,
    pub message: String,
    pub http_status: u16,
    pub metadata: Vec<(&'static str, String)>,
    pub detail: Detail,
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub fn new(
        class: Class,
        reason: &'static str,
        http_status: u16,
        message: impl Into<String>,
    ) -> Self {
        Self {
            class,
            reason,
            message: message.into(),
            http_status,
            metadata: Vec::new(),
            detail: Detail::None,
            retry_after: None,
        }
    }

    pub fn meta(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.metadata.push((key, value.into()));
        self
    }

    pub fn detail(mut self, detail: Detail) -> Self {
        self.detail = detail;
        self
    }

    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    pub fn bad_request(self, field: &'static str, description: impl Into<String>) -> Self {
        self.detail(Detail::BadRequest {
            field,
            description: description.into(),
        })
    }

    pub fn precondition(self, subject: String, description: impl Into<String>) -> Self {
        self.detail(Detail::Precondition {
            subject,
            description: description.into(),
        })
    }
}

fn disk_subject(disk_id: &str) -> String {
    format!("disk/{disk_id}")
}

fn instance_subject(instance_id: &str) -> String {
    format!("instance/{instance_id}")
}

/// How long a call refused for a full disk is told to wait: space comes back by an operator's
/// hand, not in milliseconds.
const STORAGE_FULL_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long a shed call is told to wait: long enough for a burst to pass, short enough that a
/// client does not notice.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_millis(200);

/// What a use case's failure answers.
pub fn service_answer(err: &ServiceError) -> Answer {
    match err {
        ServiceError::Refused(rule) => rule_answer(rule),
        ServiceError::CopyNotStarted(_) => copy_not_started(),
        ServiceError::Store(store) => store_answer(store),
        ServiceError::TooManyWatches { account_id, limit } => too_many_watches(account_id, *limit),
        ServiceError::WatchTooSlow { buffer } => watch_too_slow(*buffer),
        ServiceError::WatchesClosed => shutting_down(),
    }
}

/// The seed's answer for any failure of the server's own (never sent with its cause).
pub fn internal() -> Answer {
    Answer::new(
        Internal,
        "InternalError",
        500,
        "The request processing has failed due to some unknown error, exception or failure.",
    )
}

/// A store failure that is not a refusal: unreachable, full, or anything else.
pub fn store_answer(err: &StoreError) -> Answer {
    match err {
        StoreError::Unavailable(_) => Answer::new(
            Unavailable,
            "ServiceUnavailable",
            503,
            "The request has failed due to a temporary failure of the server.",
        )
        .retry_after(Duration::from_secs(1)),
        StoreError::StorageFull(_) => Answer::new(
            Unavailable,
            "StorageFull",
            503,
            "The request has failed because the service's storage is full. Try again later.",
        )
        .retry_after(STORAGE_FULL_RETRY_AFTER),
        _ => internal(),
    }
}

/// The data plane would not start the copy (the seed's `CreateSnapshot.Failed`).
pub fn copy_not_started() -> Answer {
    Answer::new(
        Internal,
        "CreateSnapshot.Failed",
        403,
        "The process of creating snapshot failed.",
    )
}

/// The account used up its token bucket.
pub fn throttled(account_id: &str, limit: &RateLimit, retry_after: Duration) -> Answer {
    Answer::new(
        ResourceExhausted,
        "Throttling",
        403,
        "Request was denied due to user flow control.",
    )
    .meta("accountId", account_id)
    .meta("ratePerSecond", limit.per_second.to_string())
    .meta("burst", limit.burst.to_string())
    .detail(Detail::Quota {
        subject: format!("account/{account_id}"),
        description: format!(
            "at most {} calls per second (bursts of {})",
            limit.per_second, limit.burst
        ),
    })
    .retry_after(retry_after)
}

/// Every slot is taken: shed at once.
pub fn overloaded(limit: u32) -> Answer {
    Answer::new(
        Unavailable,
        "ServiceUnavailable",
        503,
        "The request has failed due to a temporary failure of the server.",
    )
    .meta("cause", "overloaded")
    .meta("concurrencyLimit", limit.to_string())
    .retry_after(OVERLOADED_RETRY_AFTER)
}

/// The caller already holds its share of the slots.
pub fn caller_busy(caller: &str, limit: u32) -> Answer {
    Answer::new(
        ResourceExhausted,
        "Throttling",
        403,
        "Request was denied due to user flow control.",
    )
    .meta("cause", "concurrency")
    .meta("concurrencyLimit", limit.to_string())
    .detail(Detail::Quota {
        subject: caller.to_owned(),
        description: format!("at most {limit} calls in progress at once"),
    })
    .retry_after(OVERLOADED_RETRY_AFTER)
}

/// The account holds as many watches as `--max-watches-per-account` allows.
pub fn too_many_watches(account_id: &str, limit: u32) -> Answer {
    watch_quota_exceeded(format!("account/{account_id}"), "an account", limit)
        .meta("accountId", account_id)
}

/// The peer (`peer/<address>`) holds as many watches as `--max-watches-per-peer` allows.
pub fn too_many_watches_from_peer(peer: &str, limit: u32) -> Answer {
    watch_quota_exceeded(peer.to_owned(), "a peer", limit)
}

/// `holder` (the QuotaFailure's `subject`) may have `limit` watches open, and has.
fn watch_quota_exceeded(subject: String, holder: &str, limit: u32) -> Answer {
    Answer::new(
        ResourceExhausted,
        "QuotaExceed.Watch",
        403,
        "The maximum number of open watches is exceeded.",
    )
    .meta("quota", limit.to_string())
    .detail(Detail::Quota {
        subject,
        description: format!("{holder} may have at most {limit} watches open at once"),
    })
}

/// A watcher read its messages slower than they came, and its buffer overflowed.
pub fn watch_too_slow(buffer: usize) -> Answer {
    Answer::new(
        ResourceExhausted,
        "Watch.TooSlow",
        403,
        "The watch was ended because its messages were not read in time.",
    )
    .meta("buffer", buffer.to_string())
    .detail(Detail::Quota {
        subject: "watch/buffer".to_owned(),
        description: format!(
            "at most {buffer} messages wait for a watcher; watch again to get the current state"
        ),
    })
}

/// The request is over the size limit.
pub fn request_too_large(limit: usize) -> Answer {
    Answer::new(
        ResourceExhausted,
        "RequestTooLarge",
        413,
        "The request message is too large.",
    )
    .meta("maxMessageBytes", limit.to_string())
    .bad_request(
        "request",
        format!("the encoded message must be at most {limit} bytes"),
    )
}

/// The shutdown grace period ended before the call did.
pub fn shutting_down() -> Answer {
    Answer::new(
        Unavailable,
        "ServiceUnavailable",
        503,
        "The request has failed due to a temporary failure of the server.",
    )
    .meta("cause", "shutting_down")
    .retry_after(OVERLOADED_RETRY_AFTER)
}

/// The call ran past the request timeout.
pub fn deadline_exceeded(timeout: Duration) -> Answer {
    Answer::new(
        DeadlineExceeded,
        "RequestTimeout",
        504,
        "The request processing has timed out.",
    )
    .meta("timeoutMs", timeout.as_millis().to_string())
}

pub fn parse_answer(invalid: &ParseError) -> Answer {
    match invalid {
        ParseError::MissingParameter { field } => Answer::new(
            InvalidArgument,
            "MissingParameter",
            400,
            format!("The input parameter \"{field}\" that is mandatory for processing this request is not supplied."),
        )
        .bad_request(field, format!("{field} is required")),
        ParseError::DiskIdValueNotSupported { disk_id } => Answer::new(
            InvalidArgument,
            "DiskId.ValueNotSupported",
            403,
            "The specified parameter diskid is not supported.",
        )
        .meta("diskId", disk_id)
        .bad_request("disk_id", "must be `d-` followed by 1 to 62 of [0-9a-z-]"),
        ParseError::InvalidSnapshotNameMalformed { why } => Answer::new(
            InvalidArgument,
            "InvalidSnapshotName.Malformed",
            400,
            "The specified SnapshotName is wrongly formed.",
        )
        .bad_request("snapshot_name", *why),
        ParseError::InvalidDescriptionMalformed { why } => Answer::new(
            InvalidArgument,
            "InvalidDescription.Malformed",
            404,
            "The specified description is wrongly formed.",
        )
        .bad_request("description", *why),
        ParseError::InvalidClientTokenMalformed { why } => Answer::new(
            InvalidArgument,
            "InvalidClientToken.Malformed",
            403,
            "The specified parameter ClientToken is not valid.",
        )
        .bad_request("client_token", *why),
        ParseError::InvalidSnapshotIdMalformed { snapshot_id } => Answer::new(
            InvalidArgument,
            "InvalidSnapshotId.Malformed",
            400,
            "The specified parameter SnapshotId is not valid.",
        )
        .meta("snapshotId", snapshot_id)
        .bad_request("snapshot_id", "must be `s-` followed by 20 of [0-9a-z]"),
        ParseError::InvalidSnapshotIdsMalformed { why } => Answer::new(
            InvalidArgument,
            "InvalidSnapshotIds.Malformed",
            403,
            "The specified parameter SnapshotIds is not valid.",
        )
        .bad_request("snapshot_ids", *why),
        ParseError::InvalidNextTokenMalformed => Answer::new(
            InvalidArgument,
            "InvalidNextToken.Malformed",
            400,
            "The specified parameter NextToken is not valid.",
        )
        .bad_request("next_token", "pass back the next_token of the previous page unchanged"),
        ParseError::InvalidRetentionDaysMalformed { retention_days } => Answer::new(
            InvalidArgument,
            "InvalidRetentionDays.Malformed",
            400,
            "The specified parameter RetentionDays is not valid.",
        )
        .bad_request(
            "retention_days",
            format!("{retention_days} is not 0 (keep forever) or 1 to 65536 days"),
        ),
        ParseError::InvalidTagKeyMalformed { why } => Answer::new(
            InvalidArgument,
            "InvalidTagKey.Malformed",
            400,
            "The specified Tag.n.Key is not valid.",
        )
        .bad_request("tags", *why),
        ParseError::InvalidTagValueMalformed { why } => Answer::new(
            InvalidArgument,
            "InvalidTagValue.Malformed",
            400,
            "The specified Tag.n.Value is not valid.",
        )
        .bad_request("tags", *why),
        ParseError::DuplicateTagKey { key } => Answer::new(
            InvalidArgument,
            "Duplicate.TagKey",
            400,
            "The Tag.N.Key contain duplicate key.",
        )
        .bad_request("tags", format!("the key {key:?} appears more than once")),
        ParseError::InvalidImageIdMalformed { field, image_id } => Answer::new(
            InvalidArgument,
            "InvalidImageId.Malformed",
            400,
            "The specified parameter ImageId is not valid.",
        )
        .meta("imageId", image_id)
        .bad_request(field, "each image id must be `m-` followed by 20 of [0-9a-z]"),
        ParseError::InvalidImageNameMalformed { why } => Answer::new(
            InvalidArgument,
            "InvalidImageName.Malformed",
            400,
            "The specified parameter ImageName is not valid.",
        )
        .bad_request("image_name", *why),
        ParseError::InvalidParameter { field, why } => Answer::new(
            InvalidArgument,
            "InvalidParameter",
            400,
            format!("The specified parameter \"{field}\" is not valid."),
        )
        .bad_request(field, why.clone()),
        ParseError::InvalidResourceTypeNotFound { resource_type } => Answer::new(
            InvalidArgument,
            "InvalidResourceType.NotFound",
            404,
            "The ResourceType provided does not exist in our records.",
        )
        .meta("resourceType", resource_type)
        .bad_request("resource_type", "snapshot is the only resource type here"),
        ParseError::NumberExceedResourceIds { count } => Answer::new(
            InvalidArgument,
            "NumberExceed.ResourceIds",
            400,
            "The ResourceIds parameter's number is exceed , Valid : 50",
        )
        .bad_request(
            "resource_ids",
            format!("{count} resource ids; at most {MAX_RESOURCE_IDS} in one call"),
        ),
        ParseError::BothEmptyTagsAndResources => Answer::new(
            InvalidArgument,
            "BothEmpty.TagsAndResources",
            403,
            "The specified Tags and ResourcesIds are not allow to both empty.",
        )
        .bad_request("resource_ids", "name resource ids, tags, or both"),
    }
}

pub fn rule_answer(rule: &RuleError) -> Answer {
    match rule {
        RuleError::IdempotentParameterMismatch { client_token } => Answer::new(
            FailedPrecondition,
            "IdempotentParameterMismatch",
            403,
            "The request uses the same client token as a previous, but non-identical request.",
        )
        .meta("clientToken", client_token)
        .precondition(
            format!("clientToken/{client_token}"),
            "the token was used before with other parameters; use a new token",
        ),
        RuleError::InvalidAccountStatusSnapshotServiceUnavailable { account_id } => Answer::new(
            PermissionDenied,
            "InvalidAccountStatus.SnapshotServiceUnavailable",
            403,
            "Snapshot service has not been opened yet.",
        )
        .meta("accountId", account_id),
        RuleError::InvalidAccountStatusNotEnoughBalance { account_id } => Answer::new(
            PermissionDenied,
            "InvalidAccountStatus.NotEnoughBalance",
            403,
            "Your account does not have enough balance.",
        )
        .meta("accountId", account_id),
        RuleError::InvalidDiskIdNotFound { disk_id } => Answer::new(
            NotFound,
            "InvalidDiskId.NotFound",
            404,
            "The specified DiskId does not exist.",
        )
        .meta("diskId", disk_id)
        .detail(Detail::Resource {
            resource_type: "disk",
            name: disk_id.clone(),
            owner: String::new(),
        }),
        RuleError::DiskCategoryOperationNotSupported { disk_id, category } => Answer::new(
            FailedPrecondition,
            "DiskCategory.OperationNotSupported",
            400,
            "The operation is not supported to the specified disk due to its disk Category",
        )
        .meta("diskId", disk_id)
        .meta("category", *category)
        .precondition(
            disk_subject(disk_id),
            format!("{category} disks cannot be snapshotted"),
        ),
        RuleError::DiskInArrears { disk_id } => Answer::new(
            FailedPrecondition,
            "DiskInArrears",
            403,
            "The specified operation is denied as your disk has expired.",
        )
        .meta("diskId", disk_id)
        .precondition(disk_subject(disk_id), "the disk's subscription has expired"),
        RuleError::IncorrectDiskStatusNeverAttached { disk_id } => Answer::new(
            FailedPrecondition,
            "IncorrectDiskStatus.NeverAttached",
            403,
            "The specified disk has never been attached to any instance.",
        )
        .meta("diskId", disk_id)
        .precondition(
            disk_subject(disk_id),
            "the disk must have been attached to an instance",
        ),
        RuleError::IncorrectDiskStatus { disk_id, status } => Answer::new(
            FailedPrecondition,
            "IncorrectDiskStatus",
            403,
            "The current disk status does not support this operation.",
        )
        .meta("diskId", disk_id)
        .meta("diskStatus", *status)
        .precondition(
            disk_subject(disk_id),
            format!("the disk is {status}; it must be In_use"),
        ),
        RuleError::IncorrectInstanceStatus {
            disk_id,
            instance_id,
            status,
        } => Answer::new(
            FailedPrecondition,
            "IncorrectInstanceStatus",
            400,
            "The current status of the resource does not support this operation.",
        )
        .meta("diskId", disk_id)
        .meta("instanceId", instance_id)
        .meta("instanceStatus", *status)
        .precondition(
            instance_subject(instance_id),
            format!("the instance is {status}; it must be Running or Stopped"),
        ),
        RuleError::InstanceLockedForSecurity {
            disk_id,
            instance_id,
        } => Answer::new(
            FailedPrecondition,
            "InstanceLockedForSecurity",
            403,
            "The disk attached instance is locked due to security.",
        )
        .meta("diskId", disk_id)
        .meta("instanceId", instance_id)
        .precondition(
            instance_subject(instance_id),
            "the instance has an OperationLock with LockReason security",
        ),
        RuleError::IncorrectDiskStatusNeverUsed {
            disk_id,
            instance_id,
        } => Answer::new(
            FailedPrecondition,
            "IncorrectDiskStatus.NeverUsed",
            403,
            "The specified disk has never been used after creating.",
        )
        .meta("diskId", disk_id)
        .meta("instanceId", instance_id)
        .precondition(
            instance_subject(instance_id),
            "the instance has never been started since it was created",
        ),
        RuleError::IncorrectDiskStatusInitializing {
            disk_id,
            retry_after,
        } => Answer::new(
            FailedPrecondition,
            "IncorrectDiskStatus.Initializing",
            403,
            "The specified disk is still initializing. Please try again later.",
        )
        .meta("diskId", disk_id)
        .precondition(
            disk_subject(disk_id),
            "a new or re-created disk can be snapshotted once its data is initialized",
        )
        .retry_after(*retry_after),
        RuleError::IncorrectDiskStatusCreatingSnapshot {
            disk_id,
            snapshot_id,
            retry_after,
        } => Answer::new(
            FailedPrecondition,
            "IncorrectDiskStatus.CreatingSnapshot",
            403,
            "A previous snapshot creation is in process.",
        )
        .meta("diskId", disk_id)
        .meta("snapshotId", snapshot_id)
        .precondition(
            disk_subject(disk_id),
            format!("snapshot {snapshot_id} of this disk is still being created"),
        )
        .retry_after(*retry_after),
        RuleError::QuotaExceedSnapshot { disk_id, quota } => Answer::new(
            ResourceExhausted,
            "QuotaExceed.Snapshot",
            403,
            "The maximum number of snapshots is exceeded.",
        )
        .meta("diskId", disk_id)
        .meta("quota", quota.to_string())
        .detail(Detail::Quota {
            subject: disk_subject(disk_id),
            description: format!("a disk can hold at most {quota} snapshots"),
        }),
        RuleError::InvalidSnapshotIdNotFound { snapshot_id } => Answer::new(
            NotFound,
            "InvalidSnapshotId.NotFound",
            404,
            "The specified SnapshotId does not exist.",
        )
        .meta("snapshotId", snapshot_id)
        .detail(Detail::Resource {
            resource_type: "snapshot",
            name: snapshot_id.clone(),
            owner: String::new(),
        }),
        RuleError::SnapshotCreatedImage { snapshot_id } => Answer::new(
            FailedPrecondition,
            "SnapshotCreatedImage",
            403,
            "The snapshot has been used to create user defined image.",
        )
        .meta("snapshotId", snapshot_id)
        .precondition(
            format!("snapshot/{snapshot_id}"),
            "an image was made from this snapshot; it cannot be deleted",
        ),
        RuleError::InvalidSnapshotIdNotReady {
            snapshot_id,
            status,
        } => Answer::new(
            FailedPrecondition,
            "InvalidSnapshotId.NotReady",
            403,
            "The specified snapshot has not completed yet.",
        )
        .meta("snapshotId", snapshot_id)
        .meta("snapshotStatus", *status)
        .precondition(
            format!("snapshot/{snapshot_id}"),
            format!("the snapshot is {status}; an image needs an accomplished snapshot"),
        ),
        RuleError::InvalidRetentionDaysShortenNotSupported {
            snapshot_id,
            retention_days,
            requested,
        } => Answer::new(
            FailedPrecondition,
            "InvalidRetentionDays.ShortenNotSupported",
            403,
            "The retention period of a snapshot can be extended but not shortened.",
        )
        .meta("snapshotId", snapshot_id)
        .meta("retentionDays", retention_days.to_string())
        .meta("requestedRetentionDays", requested.to_string())
        .precondition(
            format!("snapshot/{snapshot_id}"),
            match retention_days {
                0 => "the snapshot is kept forever; its retention cannot be shortened".to_owned(),
                days => format!(
                    "the snapshot is kept {days} days; ask for {days} or more, or 0 (forever)"
                ),
            },
        ),
        RuleError::InvalidResourceIdNotFound { resource_id } => Answer::new(
            NotFound,
            "InvalidResourceId.NotFound",
            404,
            "The specified ResourceIds are not found in our records.",
        )
        .meta("resourceId", resource_id)
        .detail(Detail::Resource {
            resource_type: "snapshot",
            name: resource_id.clone(),
            owner: String::new(),
        }),
        RuleError::OperationDeniedQuotaExceed {
            snapshot_id,
            would_hold,
        } => Answer::new(
            ResourceExhausted,
            "OperationDenied.QuotaExceed",
            400,
            "The quota of tags on resource is beyond permitted range.",
        )
        .meta("resourceId", snapshot_id)
        .meta("quota", MAX_TAGS.to_string())
        .detail(Detail::Quota {
            subject: format!("snapshot/{snapshot_id}"),
            description: format!(
                "a snapshot can hold at most {MAX_TAGS} tags; this call would leave it {would_hold}"
            ),
        }),
        RuleError::InvalidImageIdNotFound { image_id } => Answer::new(
            NotFound,
            "InvalidImageId.NotFound",
            404,
            "The specified ImageId does not exist.",
        )
        .meta("imageId", image_id)
        .detail(Detail::Resource {
            resource_type: "image",
            name: image_id.clone(),
            owner: String::new(),
        }),
        RuleError::InvalidParameter { field, why } => Answer::new(
            InvalidArgument,
            "InvalidParameter",
            400,
            format!("The specified parameter \"{field}\" is not valid."),
        )
        .bad_request(field, why.clone()),
        RuleError::InvalidAccountIdNotFound { account_id } => Answer::new(
            NotFound,
            "InvalidAccountId.NotFound",
            404,
            "The specified AccountId does not exist.",
        )
        .meta("accountId", account_id)
        .detail(Detail::Resource {
            resource_type: "account",
            name: account_id.clone(),
            owner: String::new(),
        }),
        RuleError::InvalidInstanceIdNotFound { instance_id } => Answer::new(
            NotFound,
            "InvalidInstanceId.NotFound",
            404,
            "The specified InstanceId does not exist.",
        )
        .meta("instanceId", instance_id)
        .detail(Detail::Resource {
            resource_type: "instance",
            name: instance_id.clone(),
            owner: String::new(),
        }),
    }
}
