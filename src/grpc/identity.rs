//! Who is calling: the tenant account (`x-account-id`, set by the mesh or gateway) for the
//! snapshot API, and the admin bearer token for the inventory API.

use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use super::ApiError;

pub const ACCOUNT_HEADER: &str = "x-account-id";

/// The longest account id accepted from the header.
const MAX_ACCOUNT_ID_LEN: usize = 128;

/// The caller's account: required, non-empty, visible ASCII, at most 128 characters.
pub fn caller_account(metadata: &MetadataMap) -> Result<String, ApiError> {
    let value = metadata
        .get(ACCOUNT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    let well_formed = !value.is_empty()
        && value.len() <= MAX_ACCOUNT_ID_LEN
        && value.bytes().all(|b| b.is_ascii_graphic());
    if well_formed {
        Ok(value.to_owned())
    } else {
        Err(ApiError::MissingIdentity)
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
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::InvalidAdminToken)
    }
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
        let long = "a".repeat(MAX_ACCOUNT_ID_LEN + 1);
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
        assert!(require_admin(&ok, None).is_err());
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "s3cret", "Bearer "] {
            let md = metadata(&[("authorization", wrong)]);
            assert!(require_admin(&md, Some("s3cret")).is_err(), "{wrong}");
        }
        assert!(require_admin(&metadata(&[]), Some("s3cret")).is_err());
    }
}
