//! Who is calling: the tenant account for the snapshot API, and the admin bearer token for the
//! inventory API.
//!
//! The account comes from a client certificate that names one (mTLS, a URI SAN
//! `spiffe://<trust domain>/account/<account id>`), else from `x-account-id`, which the mesh or
//! gateway sets. When both are there they must agree.

use subtle::ConstantTimeEq;
use tonic::codegen::http::Extensions;
use tonic::metadata::MetadataMap;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::extensions::GeneralName;

use super::ApiError;
use crate::domain::is_plain_id;

pub const ACCOUNT_HEADER: &str = "x-account-id";

/// The caller's account: from the client certificate when it names one, else from
/// `x-account-id`.
pub fn caller_account(metadata: &MetadataMap, extensions: &Extensions) -> Result<String, ApiError> {
    let Some(certificate) = certificate_account(extensions) else {
        return header_account(metadata);
    };
    match header_account(metadata) {
        Err(ApiError::MissingIdentity) => Ok(certificate),
        Ok(header) if header != certificate => Err(ApiError::IdentityMismatch {
            certificate,
            header,
        }),
        Ok(_) => Ok(certificate),
        Err(malformed) => Err(malformed),
    }
}

/// The account a verified client certificate names, if any (the connection's TLS facts are in
/// the request's extensions).
fn certificate_account(extensions: &Extensions) -> Option<String> {
    let certificates = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    account_from_certificate(certificates.first()?.as_ref())
}

/// The account in a DER certificate's `spiffe://<trust domain>/account/<id>` URI SAN.
pub fn account_from_certificate(der: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let names = certificate.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => spiffe_account(uri),
            _ => None,
        })
}

fn spiffe_account(uri: &str) -> Option<String> {
    let (_trust_domain, path) = uri.strip_prefix("spiffe://")?.split_once('/')?;
    let account = path.strip_prefix("account/")?;
    is_plain_id(account).then(|| account.to_owned())
}

/// `x-account-id`: required, and an account id the inventory accepts (1..=64 of
/// `[A-Za-z0-9._:-]`). Surrounding white space is not part of it.
fn header_account(metadata: &MetadataMap) -> Result<String, ApiError> {
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

    fn caller_account(metadata: &MetadataMap) -> Result<String, ApiError> {
        super::caller_account(metadata, &Extensions::new())
    }

    #[test]
    fn only_spiffe_account_uris_name_an_account() {
        assert_eq!(
            spiffe_account("spiffe://example.org/account/acct-1").as_deref(),
            Some("acct-1")
        );
        for other in [
            "spiffe://example.org/ns/default/sa/web",
            "spiffe://example.org/account/",
            "spiffe://example.org/account/a b",
            "spiffe://example.org/account/a/b",
            "https://example.org/account/acct-1",
        ] {
            assert_eq!(spiffe_account(other), None, "{other}");
        }
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
