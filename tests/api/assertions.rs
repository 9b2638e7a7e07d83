//! Assertions on the rich error model: code, ErrorInfo reason and httpStatus, RequestInfo, and
//! the detail the error table names.

use tonic::{Code, Status};
use tonic_types::{ErrorDetail, StatusExt};

/// The detail an error must carry beside ErrorInfo and RequestInfo.
#[derive(Debug, Clone, Copy)]
pub enum Detail {
    /// Nothing else.
    None,
    /// BadRequest naming this field.
    BadRequest(&'static str),
    PreconditionFailure,
    /// PreconditionFailure and RetryInfo.
    PreconditionFailureAndRetry,
    QuotaFailure,
    /// ResourceInfo of this resource type.
    ResourceInfo(&'static str),
    /// RetryInfo only.
    RetryInfo,
}

/// Checks the whole error model of `status` and returns its ErrorInfo metadata.
#[track_caller]
pub fn assert_error(
    status: &Status,
    code: Code,
    reason: &str,
    http_status: &str,
    detail: Detail,
) -> std::collections::HashMap<String, String> {
    assert_eq!(status.code(), code, "code of {status:?}");
    let details = status.get_error_details_vec();
    let infos: Vec<_> = details
        .iter()
        .filter_map(|d| match d {
            ErrorDetail::ErrorInfo(info) => Some(info),
            _ => None,
        })
        .collect();
    assert_eq!(infos.len(), 1, "exactly one ErrorInfo in {status:?}");
    let info = infos[0];
    assert_eq!(info.reason, reason, "reason of {status:?}");
    assert_eq!(info.domain, "snapshotd.ecs");
    assert_eq!(
        info.metadata.get("httpStatus").map(String::as_str),
        Some(http_status),
        "httpStatus of {status:?}"
    );
    assert!(
        info.metadata
            .keys()
            .all(|k| k.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && !k.contains('_')),
        "metadata keys are lowerCamelCase: {:?}",
        info.metadata
    );

    let request_infos: Vec<_> = details
        .iter()
        .filter_map(|d| match d {
            ErrorDetail::RequestInfo(info) => Some(info),
            _ => None,
        })
        .collect();
    assert_eq!(request_infos.len(), 1, "exactly one RequestInfo");
    let request_id = &request_infos[0].request_id;
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "{request_id}");
    assert_eq!(*request_id, request_id.to_uppercase());

    let has = |pred: fn(&ErrorDetail) -> bool| details.iter().any(pred);
    let bad_request = has(|d| matches!(d, ErrorDetail::BadRequest(_)));
    let precondition = has(|d| matches!(d, ErrorDetail::PreconditionFailure(_)));
    let quota = has(|d| matches!(d, ErrorDetail::QuotaFailure(_)));
    let resource = has(|d| matches!(d, ErrorDetail::ResourceInfo(_)));
    let retry = has(|d| matches!(d, ErrorDetail::RetryInfo(_)));
    let extra_count = [bad_request, precondition, quota, resource, retry]
        .iter()
        .filter(|x| **x)
        .count();
    match detail {
        Detail::None => assert_eq!(extra_count, 0, "no other detail in {status:?}"),
        Detail::BadRequest(field) => {
            let violations = status
                .get_details_bad_request()
                .expect("BadRequest")
                .field_violations;
            assert_eq!(violations.len(), 1);
            assert_eq!(violations[0].field, field);
            assert_eq!(extra_count, 1, "only BadRequest in {status:?}");
        }
        Detail::PreconditionFailure => {
            assert!(precondition, "PreconditionFailure in {status:?}");
            assert_eq!(extra_count, 1, "only PreconditionFailure in {status:?}");
        }
        Detail::PreconditionFailureAndRetry => {
            assert!(
                precondition && retry,
                "PreconditionFailure + RetryInfo in {status:?}"
            );
            assert_eq!(extra_count, 2);
        }
        Detail::QuotaFailure => {
            assert!(quota, "QuotaFailure in {status:?}");
            assert_eq!(extra_count, 1);
        }
        Detail::ResourceInfo(kind) => {
            let resource = status.get_details_resource_info().expect("ResourceInfo");
            assert_eq!(resource.resource_type, kind);
            assert_eq!(extra_count, 1);
        }
        Detail::RetryInfo => {
            assert!(retry, "RetryInfo in {status:?}");
            assert_eq!(extra_count, 1);
        }
    }
    info.metadata.clone()
}

/// The seed's `InternalError` (INTERNAL, 500, nothing beside ErrorInfo and RequestInfo), its
/// message naming none of `hidden` (case-insensitive): what broke stays in the server's log.
#[track_caller]
pub fn assert_internal_error_hiding(status: &Status, hidden: &[&str]) {
    assert_error(status, Code::Internal, "InternalError", "500", Detail::None);
    let message = status.message().to_lowercase();
    for word in hidden {
        assert!(
            !message.contains(&word.to_lowercase()),
            "{word:?} leaked: {message}"
        );
    }
}

/// The RetryInfo delay of `status`, in whole seconds.
pub fn retry_delay_secs(status: &Status) -> u64 {
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("RetryInfo with a delay")
        .as_secs()
}
