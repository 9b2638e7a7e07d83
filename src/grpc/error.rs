//! The one place errors become `tonic::Status`.
//!
//! Every error is a `google.rpc.Status` whose message is the seed's error message, with exactly one
//! `ErrorInfo` (reason = the ECS code, verbatim; metadata in lowerCamelCase, always with
//! `httpStatus`), one `RequestInfo`, and the detail the error tables of `docs/errors.md` name.
//! Internal errors are logged here with their cause chain and reach the client without SQL or
//! internals.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::ERROR_DOMAIN;
use crate::backend::BackendError;
use crate::config::RateLimit;
use crate::domain::ParseError;
use crate::engine::RuleError;
use crate::service::ServiceError;
use crate::store::StoreError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no caller identity in x-account-id")]
    MissingIdentity,
    #[error("x-account-id is not a valid account id")]
    MalformedIdentity,
    #[error("x-account-id names {header} but the client certificate is account {certificate}")]
    IdentityMismatch { certificate: String, header: String },
    #[error("the inventory API is disabled: SNAPSHOTD_ADMIN_TOKEN is not set")]
    AdminApiDisabled,
    #[error("missing or wrong admin bearer token")]
    InvalidAdminToken,
    #[error(transparent)]
    Invalid(#[from] ParseError),
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("the snapshot backend could not start the copy")]
    CopyNotStarted(#[source] BackendError),
    /// Any store failure other than a refusal.
    #[error(transparent)]
    Store(StoreError),
    /// The account used up its token bucket (`SNAPSHOTD_RATE_LIMIT`).
    #[error("account {account_id} is over its rate limit")]
    Throttled {
        account_id: String,
        limit: RateLimit,
        retry_after: Duration,
    },
    /// The caller (an account, the admin, a peer) already holds its share of the slots.
    #[error("{caller} already has {limit} calls in progress")]
    CallerBusy { caller: String, limit: u32 },
    /// The request's body did not start within the header-to-body timeout.
    #[error("the request body did not start within {timeout:?} of its headers")]
    BodyTimeout { timeout: Duration },
    /// Every slot of `SNAPSHOTD_MAX_CONCURRENT_REQUESTS` is taken: shed at once.
    #[error("{limit} calls are already in progress")]
    Overloaded { limit: u32 },
    /// The call's `grpc-encoding` is none the server takes (it takes `gzip` and `identity`).
    #[error("the request is compressed with {encoding:?}, which the server does not take")]
    UnsupportedEncoding { encoding: String },
    /// The request message is over `SNAPSHOTD_MAX_MESSAGE_SIZE` (tonic refused to decode it).
    #[error("the request message is over {limit} bytes")]
    RequestTooLarge { limit: usize },
    /// The shutdown grace period ended before the call did.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The call ran past `SNAPSHOTD_REQUEST_TIMEOUT`.
    #[error("the call did not finish within {timeout:?}")]
    DeadlineExceeded { timeout: Duration },
    /// The handler panicked; the message is logged, never sent.
    #[error("the handler panicked: {message}")]
    Panicked { message: String },
    /// The routing layer failed (not expected: tonic's routes do not fail).
    #[error("the server's routing failed")]
    Routing(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Refused(rule) => Self::Rule(rule),
            ServiceError::CopyNotStarted(cause) => Self::CopyNotStarted(cause),
            ServiceError::Store(store) => Self::Store(store),
        }
    }
}

/// The detail that accompanies `ErrorInfo` and `RequestInfo`.
enum Detail {
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

/// What one error answers with.
struct Answer {
    code: Code,
    reason: &'static str,
    message: String,
    http_status: u16,
    metadata: Vec<(&'static str, String)>,
    detail: Detail,
    retry_after: Option<Duration>,
    /// gRPC metadata the answer carries besides the details (response headers or trailers).
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn new(code: Code, reason: &'static str, http_status: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            http_status,
            metadata: Vec::new(),
            detail: Detail::None,
            retry_after: None,
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn meta(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.metadata.push((key, value.into()));
        self
    }

    fn detail(mut self, detail: Detail) -> Self {
        self.detail = detail;
        self
    }

    fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    fn bad_request(self, field: &'static str, description: impl Into<String>) -> Self {
        self.detail(Detail::BadRequest {
            field,
            description: description.into(),
        })
    }

    fn precondition(self, subject: String, description: impl Into<String>) -> Self {
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
const OVERLOADED_RETRY_AFTER: Duration = Duration::from_millis(200);

/// The request encodings the server takes, as `grpc-accept-encoding` lists them: every service
/// inflates gzip in the layer (`layer.rs`), so the list is the same for all of them.
pub const ACCEPTED_ENCODINGS: &str = "gzip,identity";

/// The longest unsupported encoding name echoed back in an answer's metadata.
const MAX_ECHOED_ENCODING: usize = 64;

use Code::{
    DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, NotFound, PermissionDenied,
    ResourceExhausted, Unauthenticated, Unavailable, Unimplemented,
};

/// The answer for every error, in one exhaustive match.
fn answer(err: &ApiError) -> Answer {
    match err {
        ApiError::MissingIdentity => Answer::new(
            Unauthenticated,
            "InvalidIdentity.Missing",
            401,
            "The caller identity is missing: set the x-account-id metadata.",
        ),
        ApiError::MalformedIdentity => Answer::new(
            Unauthenticated,
            "InvalidIdentity.Malformed",
            401,
            "The caller identity in x-account-id is not a valid account id.",
        ),
        ApiError::IdentityMismatch {
            certificate,
            header,
        } => Answer::new(
            PermissionDenied,
            "InvalidIdentity.Mismatch",
            403,
            "The x-account-id metadata names another account than the client certificate.",
        )
        .meta("certificateAccountId", certificate)
        .meta("headerAccountId", header),
        ApiError::AdminApiDisabled => Answer::new(
            Unauthenticated,
            "InventoryApi.Disabled",
            401,
            "The inventory API is disabled because no admin token is configured.",
        ),
        ApiError::InvalidAdminToken => Answer::new(
            Unauthenticated,
            "InvalidAdminToken",
            401,
            "The admin bearer token is missing or wrong.",
        ),
        ApiError::CopyNotStarted(_) => Answer::new(
            Internal,
            "CreateSnapshot.Failed",
            403,
            "The process of creating snapshot failed.",
        ),
        ApiError::Store(StoreError::Unavailable(_)) => Answer::new(
            Unavailable,
            "ServiceUnavailable",
            503,
            "The request has failed due to a temporary failure of the server.",
        )
        .retry_after(Duration::from_secs(1)),
        ApiError::Store(StoreError::StorageFull(_)) => Answer::new(
            Unavailable,
            "StorageFull",
            503,
            "The request has failed because the service's storage is full. Try again later.",
        )
        .retry_after(STORAGE_FULL_RETRY_AFTER),
        ApiError::Store(_) | ApiError::Panicked { .. } | ApiError::Routing(_) => Answer::new(
            Internal,
            "InternalError",
            500,
            "The request processing has failed due to some unknown error, exception or failure.",
        ),
        ApiError::Throttled {
            account_id,
            limit,
            retry_after,
        } => Answer::new(
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
        .retry_after(*retry_after),
        ApiError::Overloaded { limit } => Answer::new(
            Unavailable,
            "ServiceUnavailable",
            503,
            "The request has failed due to a temporary failure of the server.",
        )
        .meta("cause", "overloaded")
        .meta("concurrencyLimit", limit.to_string())
        .retry_after(OVERLOADED_RETRY_AFTER),
        ApiError::CallerBusy { caller, limit } => Answer::new(
            ResourceExhausted,
            "Throttling",
            403,
            "Request was denied due to user flow control.",
        )
        .meta("cause", "concurrency")
        .meta("concurrencyLimit", limit.to_string())
        .detail(Detail::Quota {
            subject: caller.clone(),
            description: format!("at most {limit} calls in progress at once"),
        })
        .retry_after(OVERLOADED_RETRY_AFTER),
        ApiError::BodyTimeout { timeout } => Answer::new(
            DeadlineExceeded,
            "RequestBodyTimeout",
            408,
            "The request body did not arrive in time.",
        )
        .meta("timeoutMs", timeout.as_millis().to_string()),
        // UNIMPLEMENTED, as the gRPC spec has it, with the list a client can pick from.
        ApiError::UnsupportedEncoding { encoding } => Answer::new(
            Unimplemented,
            "UnsupportedEncoding",
            415,
            "The request is compressed with an encoding the server does not support.",
        )
        .meta(
            "encoding",
            encoding
                .chars()
                .take(MAX_ECHOED_ENCODING)
                .collect::<String>(),
        )
        .meta("acceptedEncodings", ACCEPTED_ENCODINGS)
        .header("grpc-accept-encoding", ACCEPTED_ENCODINGS),
        ApiError::RequestTooLarge { limit } => Answer::new(
            ResourceExhausted,
            "RequestTooLarge",
            413,
            "The request message is too large.",
        )
        .meta("maxMessageBytes", limit.to_string())
        .bad_request(
            "request",
            format!("the encoded message must be at most {limit} bytes"),
        ),
        ApiError::ShuttingDown => Answer::new(
            Unavailable,
            "ServiceUnavailable",
            503,
            "The request has failed due to a temporary failure of the server.",
        )
        .meta("cause", "shutting_down")
        .retry_after(OVERLOADED_RETRY_AFTER),
        ApiError::DeadlineExceeded { timeout } => Answer::new(
            DeadlineExceeded,
            "RequestTimeout",
            504,
            "The request processing has timed out.",
        )
        .meta("timeoutMs", timeout.as_millis().to_string()),
        ApiError::Invalid(invalid) => parse_answer(invalid),
        ApiError::Rule(rule) => rule_answer(rule),
    }
}

fn parse_answer(invalid: &ParseError) -> Answer {
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
    }
}

fn rule_answer(rule: &RuleError) -> Answer {
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

impl ApiError {
    /// The status for this error. A server-side failure keeps the error as the status's source,
    /// so the call's log line (`layer.rs`) can give the cause chain; it is never sent.
    pub fn into_status(self, request_id: &str) -> Status {
        let answer = answer(&self);
        let mut metadata: HashMap<String, String> = answer
            .metadata
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
        metadata.insert("httpStatus".to_owned(), answer.http_status.to_string());

        let mut details = ErrorDetails::new();
        details
            .set_error_info(answer.reason, ERROR_DOMAIN, metadata)
            .set_request_info(request_id, "");
        match answer.detail {
            Detail::None => {}
            Detail::BadRequest { field, description } => {
                details.add_bad_request_violation(field, description);
            }
            Detail::Precondition {
                subject,
                description,
            } => {
                details.add_precondition_failure_violation(answer.reason, subject, description);
            }
            Detail::Quota {
                subject,
                description,
            } => {
                details.add_quota_failure_violation(subject, description);
            }
            Detail::Resource {
                resource_type,
                name,
                owner,
            } => {
                details.set_resource_info(resource_type, name, owner, answer.message.clone());
            }
        }
        if let Some(delay) = answer.retry_after {
            details.set_retry_info(Some(delay));
        }
        let mut status = Status::with_error_details(answer.code, answer.message, details);
        for (name, value) in answer.headers {
            if let Ok(value) = value.parse() {
                status.metadata_mut().insert(name, value);
            }
        }
        if matches!(answer.code, Internal | Unavailable) {
            status.set_source(std::sync::Arc::new(self));
        }
        status
    }
}
