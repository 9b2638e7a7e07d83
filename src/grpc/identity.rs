//! Who is calling: the tenant account (`x-account-id`, set by the mesh or gateway) for the
//! snapshot API, and the admin bearer token for the inventory API.

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use super::ApiError;
use crate::domain::is_plain_id;

pub const ACCOUNT_HEADER: &str = "x-account-id";

/// The caller's account: required, and an account id the inventory accepts
/// (1..=64 of `[A-Za-z0-9._:-]`). Surrounding white space is not part of it.
pub fn caller_account(metadata: &MetadataMap) -> Result<String, ApiError> {
    let Some(raw) = metadata.get(ACCOUNT_HEADER) else {
        return Err(ApiError::MissingIdentity);
    };
    let value = raw
        .to_str()
        .map_err(|_| ApiError::MalformedIdentity)?
        .trim();
    if value.is_empty() {
        Err(ApiError::MissingIdentity)
    } else if is_plain_id(value) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::MalformedIdentity)
    }
}

/// Checks `authorization: Bearer <token>` against the configured admin token in constant time.
pub fn require_admin(metadata: &MetadataMap, admin_token: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = admin_token else {
        return Err(ApiError::AdminApiDisabled);
    };
    let presented = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::InvalidAdminToken)
    }
}

/// The credentials of `Bearer <token>`; the scheme name is case-insensitive (RFC 9110).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn the_account_header_is_required_and_well_formed() {
        assert!(caller_account(&metadata(&[])).is_err());
        assert!(caller_account(&metadata(&[(ACCOUNT_HEADER, "")])).is_err());
        assert!(caller_account(&metadata(&[(ACCOUNT_HEADER, "a b")])).is_err());
        let longest = "a".repeat(64);
        assert!(caller_account(&metadata(&[(ACCOUNT_HEADER, &longest)])).is_ok());
        let long = "a".repeat(65);
        assert!(caller_account(&metadata(&[(ACCOUNT_HEADER, &long)])).is_err());
        assert_eq!(
            caller_account(&metadata(&[(ACCOUNT_HEADER, "acct-1")])).unwrap(),
            "acct-1"
        );
    }

    #[test]
    fn only_the_exact_admin_token_is_accepted() {
        let ok = metadata(&[("authorization", "Bearer s3cret")]);
        assert!(require_admin(&ok, Some("s3cret")).is_ok());
        let lower = metadata(&[("authorization", "bearer s3cret")]);
        assert!(require_admin(&lower, Some("s3cret")).is_ok());
        assert!(require_admin(&ok, None).is_err());
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "s3cret", "Bearer "] {
            let md = metadata(&[("authorization", wrong)]);
            assert!(require_admin(&md, Some("s3cret")).is_err(), "{wrong}");
        }
        assert!(require_admin(&metadata(&[]), Some("s3cret")).is_err());
    }
}
