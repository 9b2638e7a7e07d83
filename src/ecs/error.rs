//! The one place errors become ECS error answers: the HTTP status and the body's `Code` and
//! `Message`. Failures the two edges share take their facts from [`crate::answer`], so one
//! failure answers the same code on both; the rest are this protocol's own (signatures,
//! parameters, actions). Internal errors are logged by the caller with their cause and never
//! reach the client.

use std::time::Duration;

use super::params::ParamsError;
use crate::answer::{self, Answer, Class};
use crate::domain::ParseError;
use crate::service::ServiceError;
use crate::throttle::Throttled;

/// Everything a request on the ECS edge can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EcsError {
    #[error("malformed parameters: {0}")]
    Params(#[from] ParamsError),
    #[error("Version {0:?} is not 2014-05-26")]
    InvalidVersion(String),
    #[error("no action {0:?}")]
    UnknownAction(String),
    #[error("HTTP method {0} is not GET or POST")]
    UnsupportedMethod(String),
    #[error("the body's content type is not application/x-www-form-urlencoded")]
    UnsupportedBody,
    #[error("the request's headers are over {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the request has more than {limit} headers")]
    TooManyHeaders { limit: usize },
    #[error("the request's URI is over {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("the request body is over {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// The connection broke off in the middle of the body.
    #[error("the request body could not be read: {0}")]
    BodyBroken(String),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("the signature does not follow the scheme: {0}")]
    IncompleteSignature(String),
    #[error("the timestamp {0:?} is not yyyy-MM-ddTHH:mm:ssZ")]
    TimestampFormat(String),
    #[error("the timestamp {0:?} is more than 15 minutes from the server's clock")]
    TimestampExpired(String),
    #[error("no access key {0:?}")]
    UnknownAccessKey(String),
    /// The server's string to sign goes back to the client, as ECS sends it.
    #[error("the signature does not match")]
    SignatureMismatch { string_to_sign: String },
    #[error("the signature nonce was used before")]
    NonceUsed,
    #[error(transparent)]
    Invalid(#[from] ParseError),
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A parameter this edge reads itself (a number, a flag, an option not offered).
    #[error("{parameter}: {why}")]
    InvalidValue {
        parameter: &'static str,
        why: String,
    },
    #[error("{action} does not take the parameter {parameter}")]
    UnknownParameter {
        parameter: String,
        action: &'static str,
    },
    #[error("{limit} requests are already in progress")]
    Overloaded { limit: u32 },
    #[error("{peer} already has {limit} requests in progress")]
    PeerBusy { peer: String, limit: u32 },
    #[error("the request ran past the request timeout of {0:?}")]
    Timeout(Duration),
}

use Class::{InvalidArgument, NotFound};

/// What every error answers, in one exhaustive match.
pub fn answer(err: &EcsError) -> Answer {
    match err {
        EcsError::Params(ParamsError::TooMany) => Answer::new(
            InvalidArgument,
            "InvalidParameter",
            400,
            format!(
                "The request has more than {} parameters.",
                super::params::MAX_PARAMETERS
            ),
        ),
        EcsError::Params(invalid) => Answer::new(
            InvalidArgument,
            "InvalidParameter",
            400,
            format!("The request's parameters are not valid: {invalid}."),
        ),
        EcsError::InvalidVersion(_) => Answer::new(
            InvalidArgument,
            "InvalidVersion",
            400,
            "Specified parameter Version is not valid.",
        ),
        EcsError::UnknownAction(_) => Answer::new(
            NotFound,
            "InvalidAction.NotFound",
            404,
            "Specified api is not found, please check your url and method.",
        ),
        EcsError::UnsupportedMethod(_) => Answer::new(
            InvalidArgument,
            "UnsupportedHTTPMethod",
            405,
            "This http method is not supported: use GET or POST.",
        ),
        EcsError::UnsupportedBody => Answer::new(
            InvalidArgument,
            "InvalidParameter",
            415,
            "The request body must be application/x-www-form-urlencoded.",
        ),
        EcsError::HeadersTooLarge { limit } => Answer::new(
            InvalidArgument,
            "RequestHeaderFieldsTooLarge",
            431,
            format!("The request's headers are over {limit} bytes."),
        ),
        EcsError::TooManyHeaders { limit } => Answer::new(
            InvalidArgument,
            "RequestHeaderFieldsTooLarge",
            431,
            format!("The request has more than {limit} headers."),
        ),
        EcsError::UriTooLong { limit } => Answer::new(
            InvalidArgument,
            "RequestURITooLong",
            414,
            format!(
                "The request's URI is over {limit} bytes: send the parameters in an \
                 application/x-www-form-urlencoded body (POST)."
            ),
        ),
        EcsError::BodyTooLarge { limit } => answer::request_too_large(*limit),
        EcsError::BodyBroken(_) => Answer::new(
            InvalidArgument,
            "InvalidParameter",
            400,
            "The request body could not be read.",
        ),
        EcsError::BodyTimeout(_) => Answer::new(
            Class::DeadlineExceeded,
            "RequestBodyTimeout",
            408,
            "The request body did not arrive in time.",
        ),
        EcsError::IncompleteSignature(why) => Answer::new(
            InvalidArgument,
            "IncompleteSignature",
            400,
            format!("The request signature does not conform to Aliyun standards: {why}."),
        ),
        EcsError::TimestampFormat(_) => Answer::new(
            InvalidArgument,
            "InvalidTimeStamp.Format",
            400,
            "Specified time stamp or date value is not well formatted.",
        ),
        EcsError::TimestampExpired(_) => Answer::new(
            InvalidArgument,
            "InvalidTimeStamp.Expired",
            400,
            "Specified time stamp or date value is expired.",
        ),
        EcsError::UnknownAccessKey(_) => Answer::new(
            NotFound,
            "InvalidAccessKeyId.NotFound",
            404,
            "Specified access key is not found.",
        ),
        EcsError::SignatureMismatch { string_to_sign } => Answer::new(
            InvalidArgument,
            "SignatureDoesNotMatch",
            400,
            format!(
                "Specified signature is not matched with our calculation. server string to sign is:{string_to_sign}"
            ),
        ),
        EcsError::NonceUsed => Answer::new(
            InvalidArgument,
            "SignatureNonceUsed",
            400,
            "Specified signature nonce was used already.",
        ),
        EcsError::Invalid(invalid) => ecs_names(answer::parse_answer(invalid), invalid),
        EcsError::Throttled(throttled) => answer::throttled(
            &throttled.account_id,
            &throttled.limit,
            throttled.retry_after,
        ),
        EcsError::Service(ServiceError::Refused(crate::engine::RuleError::InvalidParameter {
            field,
            why,
        })) => Answer::new(
            InvalidArgument,
            "InvalidParameter",
            400,
            format!(
                "The specified parameter \"{}\" is not valid.",
                ecs_name(field)
            ),
        )
        .bad_request(field, why.clone()),
        EcsError::Service(failure) => answer::service_answer(failure),
        EcsError::InvalidValue { parameter, why } => Answer::new(
            InvalidArgument,
            "InvalidParameter",
            400,
            format!("The specified parameter \"{parameter}\" is not valid."),
        )
        .bad_request(parameter, why.clone()),
        EcsError::UnknownParameter { parameter, action } => Answer::new(
            InvalidArgument,
            "InvalidParameter",
            400,
            format!("The specified parameter \"{parameter}\" is not valid."),
        )
        .bad_request(
            "request",
            format!("{action} does not take {parameter} here: it is not offered"),
        ),
        EcsError::Overloaded { limit } => answer::overloaded(*limit),
        EcsError::PeerBusy { peer, limit } => answer::caller_busy(peer, *limit),
        EcsError::Timeout(timeout) => answer::deadline_exceeded(*timeout),
    }
}

/// The domain names fields as gRPC does (`disk_id`); this edge's messages name them as ECS
/// does (`DiskId`).
fn ecs_names(answer: Answer, invalid: &ParseError) -> Answer {
    match invalid {
        ParseError::MissingParameter { field } => Answer {
            message: format!(
                "The input parameter \"{}\" that is mandatory for processing this request is not supplied.",
                ecs_name(field)
            ),
            ..answer
        },
        ParseError::InvalidParameter { field, .. } => Answer {
            message: format!(
                "The specified parameter \"{}\" is not valid.",
                ecs_name(field)
            ),
            ..answer
        },
        _ => answer,
    }
}

/// `snapshot_ids` → `SnapshotIds`; a name that is already ECS's (`Action`, `x-acs-date`)
/// stays.
pub fn ecs_name(field: &str) -> String {
    if field.contains('-') {
        return field.to_owned();
    }
    // The creation-time range arrives as `Filter.N` pairs here.
    if matches!(field, "created_after" | "created_before") {
        return "Filter.N.Value".to_owned();
    }
    field
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_read_as_ecs_parameters() {
        for (field, ecs) in [
            ("disk_id", "DiskId"),
            ("snapshot_ids", "SnapshotIds"),
            ("max_results", "MaxResults"),
            ("Action", "Action"),
            ("Tag.N.Key", "Tag.N.Key"),
            ("x-acs-date", "x-acs-date"),
        ] {
            assert_eq!(ecs_name(field), ecs);
        }
    }
}
