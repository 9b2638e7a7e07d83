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
use crate::answer::{self, Answer, Class, Detail};
use crate::backend::BackendError;
use crate::config::RateLimit;
use crate::domain::ParseError;
use crate::engine::RuleError;
use crate::service::ServiceError;
use crate::store::StoreError;
use crate::throttle::Throttled;

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
    /// The account already holds `--max-watches-per-account` watches.
    #[error("account {account_id} already has {limit} watches open")]
    TooManyWatches { account_id: String, limit: u32 },
    /// The peer already holds `--max-watches-per-peer` watches, whatever accounts they name.
    #[error("{peer} already has {limit} watches open")]
    TooManyWatchesFromPeer { peer: String, limit: u32 },
    /// A watcher fell behind by its whole buffer.
    #[error("the watcher fell {buffer} messages behind")]
    WatchTooSlow { buffer: usize },
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

impl From<Throttled> for ApiError {
    fn from(throttled: Throttled) -> Self {
        Self::Throttled {
            account_id: throttled.account_id,
            limit: throttled.limit,
            retry_after: throttled.retry_after,
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Refused(rule) => Self::Rule(rule),
            ServiceError::CopyNotStarted(cause) => Self::CopyNotStarted(cause),
            ServiceError::Store(store) => Self::Store(store),
            ServiceError::TooManyWatches { account_id, limit } => {
                Self::TooManyWatches { account_id, limit }
            }
            ServiceError::WatchTooSlow { buffer } => Self::WatchTooSlow { buffer },
            // Watches end when the server drains: the call's answer as at its cut-off.
            ServiceError::WatchesClosed => Self::ShuttingDown,
        }
    }
}

use Class::{PermissionDenied, Unauthenticated};

/// The request encodings the server takes, as `grpc-accept-encoding` lists them: every service
/// inflates gzip in the layer (`layer.rs`), so the list is the same for all of them.
pub const ACCEPTED_ENCODINGS: &str = "gzip,identity";

/// The longest unsupported encoding name echoed back in an answer's metadata.
const MAX_ECHOED_ENCODING: usize = 64;

/// The answer for every error, in one exhaustive match; the ECS facts come from
/// [`crate::answer`], which the ECS edge reads too.
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
        ApiError::CopyNotStarted(_) => answer::copy_not_started(),
        ApiError::Store(store) => answer::store_answer(store),
        ApiError::Panicked { .. } | ApiError::Routing(_) => answer::internal(),
        ApiError::Throttled {
            account_id,
            limit,
            retry_after,
        } => answer::throttled(account_id, limit, *retry_after),
        ApiError::Overloaded { limit } => answer::overloaded(*limit),
        ApiError::CallerBusy { caller, limit } => answer::caller_busy(caller, *limit),
        ApiError::BodyTimeout { timeout } => Answer::new(
            Class::DeadlineExceeded,
            "RequestBodyTimeout",
            408,
            "The request body did not arrive in time.",
        )
        .meta("timeoutMs", timeout.as_millis().to_string()),
        // UNIMPLEMENTED, as the gRPC spec has it, with the list a client can pick from (the
        // `grpc-accept-encoding` header is added in `into_status`).
        ApiError::UnsupportedEncoding { encoding } => Answer::new(
            Class::Unimplemented,
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
        .meta("acceptedEncodings", ACCEPTED_ENCODINGS),
        ApiError::RequestTooLarge { limit } => answer::request_too_large(*limit),
        ApiError::ShuttingDown => answer::shutting_down(),
        ApiError::TooManyWatches { account_id, limit } => {
            answer::too_many_watches(account_id, *limit)
        }
        ApiError::TooManyWatchesFromPeer { peer, limit } => {
            answer::too_many_watches_from_peer(peer, *limit)
        }
        ApiError::WatchTooSlow { buffer } => answer::watch_too_slow(*buffer),
        ApiError::DeadlineExceeded { timeout } => answer::deadline_exceeded(*timeout),
        ApiError::Invalid(invalid) => answer::parse_answer(invalid),
        ApiError::Rule(rule) => answer::rule_answer(rule),
    }
}

/// The gRPC status code of each class.
fn grpc_code(class: Class) -> Code {
    match class {
        Class::InvalidArgument => Code::InvalidArgument,
        Class::NotFound => Code::NotFound,
        Class::FailedPrecondition => Code::FailedPrecondition,
        Class::ResourceExhausted => Code::ResourceExhausted,
        Class::PermissionDenied => Code::PermissionDenied,
        Class::Unauthenticated => Code::Unauthenticated,
        Class::Unavailable => Code::Unavailable,
        Class::DeadlineExceeded => Code::DeadlineExceeded,
        Class::Unimplemented => Code::Unimplemented,
        Class::Internal => Code::Internal,
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
        let code = grpc_code(answer.class);
        let mut status = Status::with_error_details(code, answer.message, details);
        if matches!(self, ApiError::UnsupportedEncoding { .. }) {
            status.metadata_mut().insert(
                "grpc-accept-encoding",
                tonic::metadata::MetadataValue::from_static(ACCEPTED_ENCODINGS),
            );
        }
        if matches!(code, Code::Internal | Code::Unavailable) {
            status.set_source(std::sync::Arc::new(self));
        }
        status
    }
}
