//! The two signature schemes Alibaba Cloud's SDKs send, computed again on the server: the
//! string to sign from the request as received, then the HMAC with the key's secret.
//!
//! - ACS3-HMAC-SHA256 (current SDKs): a canonical request (method, path, sorted query, the
//!   signed headers, the body's SHA-256), hashed into `ACS3-HMAC-SHA256\n<hex>`, signed with
//!   HMAC-SHA256 and sent hex-encoded in `Authorization`.
//! - Signature v1, HMAC-SHA1 (older SDKs, the CLI): `METHOD&%2F&<encoded sorted parameters>`,
//!   signed with HMAC-SHA1 under `secret&` and sent base64-encoded as the `Signature` parameter.
//!
//! Both percent-encode as RFC 3986 does: everything but `A-Z a-z 0-9 - _ . ~`.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What RFC 3986 leaves unencoded, besides letters and digits.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub const ACS3_ALGORITHM: &str = "ACS3-HMAC-SHA256";

fn encode(raw: &str) -> String {
    utf8_percent_encode(raw, UNRESERVED).to_string()
}

/// `key=value` pairs, encoded and sorted by key, joined with `&`.
fn canonical_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut encoded: Vec<(String, String)> = pairs.map(|(k, v)| (encode(k), encode(v))).collect();
    encoded.sort();
    let joined: Vec<String> = encoded
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    joined.join("&")
}

/// The parts of an ACS3 request the signature covers.
pub struct Acs3Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The query string's parameters (not the body's: the body is covered by its hash).
    pub query: Vec<(&'a str, &'a str)>,
    /// Each signed header (lower-case name, in `SignedHeaders` order) with its values.
    pub signed_headers: Vec<(String, Vec<&'a str>)>,
    pub body: &'a [u8],
}

impl Acs3Request<'_> {
    /// `ACS3-HMAC-SHA256\n` and the hex SHA-256 of the canonical request.
    pub fn string_to_sign(&self) -> String {
        let mut canonical_headers = String::new();
        let mut names = Vec::with_capacity(self.signed_headers.len());
        let mut headers: Vec<&(String, Vec<&str>)> = self.signed_headers.iter().collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, values) in headers {
            let mut values: Vec<&str> = values.iter().map(|v| v.trim()).collect();
            values.sort_unstable();
            canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
            names.push(name.as_str());
        }
        let canonical_request = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            self.path,
            canonical_pairs(self.query.iter().copied()),
            canonical_headers,
            names.join(";"),
            hex::encode(Sha256::digest(self.body)),
        );
        format!(
            "{ACS3_ALGORITHM}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        )
    }
}

/// Whether `signature` (hex) is the HMAC-SHA256 of `string_to_sign` under `secret`.
pub fn acs3_matches(secret: &str, string_to_sign: &str, signature: &str) -> bool {
    let Ok(given) = hex::decode(signature) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// Signature v1's string to sign: every parameter but `Signature`, query and body alike.
pub fn v1_string_to_sign<'a>(
    method: &str,
    params: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let canonical = canonical_pairs(params.filter(|(key, _)| *key != "Signature"));
    format!("{method}&%2F&{}", encode(&canonical))
}

/// Whether `signature` (base64) is the HMAC-SHA1 of `string_to_sign` under `secret&`.
pub fn v1_matches(secret: &str, string_to_sign: &str, signature: &str) -> bool {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{secret}&").as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    expected.as_bytes().ct_eq(signature.as_bytes()).into()
}

/// `Authorization: ACS3-HMAC-SHA256 Credential=…,SignedHeaders=…,Signature=…`, split.
#[derive(Debug, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub credential: &'a str,
    pub signed_headers: Vec<String>,
    pub signature: &'a str,
}

/// Parses the ACS3 `Authorization` header; the name of the part that is missing, if one is.
pub fn parse_authorization(header: &str) -> Result<Authorization<'_>, &'static str> {
    let Some(parts) = header.strip_prefix(ACS3_ALGORITHM) else {
        return Err("Authorization");
    };
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in parts.trim().split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", value)) => credential = Some(value),
            Some(("SignedHeaders", value)) => signed_headers = Some(value),
            Some(("Signature", value)) => signature = Some(value),
            _ => {}
        }
    }
    let credential = credential.filter(|c| !c.is_empty()).ok_or("Credential")?;
    let signed_headers = signed_headers
        .filter(|s| !s.is_empty())
        .ok_or("SignedHeaders")?;
    let signature = signature.filter(|s| !s.is_empty()).ok_or("Signature")?;
    Ok(Authorization {
        credential,
        signed_headers: signed_headers
            .split(';')
            .map(str::to_ascii_lowercase)
            .collect(),
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "demo-secret-of-acct-demo";

    // Known answers computed with the official Python SDK (alibabacloud-tea-openapi 0.4.6,
    // `Utils.get_authorization` and `Utils.get_rpcsignature`) for the same requests.

    #[test]
    fn acs3_matches_the_official_sdk() {
        let empty_hash = hex::encode(Sha256::digest(b""));
        let header = |name: &str, value: &'static str| (name.to_owned(), vec![value]);
        let request = Acs3Request {
            method: "POST",
            path: "/",
            query: vec![
                ("DiskId", "d-demo-ok"),
                ("SnapshotName", "nightly backup"),
                ("Tag.1.Key", "env"),
                ("Tag.1.Value", "prod/é"),
            ],
            signed_headers: vec![
                header("host", "127.0.0.1:8080"),
                header("x-acs-action", "CreateSnapshot"),
                ("x-acs-content-sha256".to_owned(), vec![empty_hash.as_str()]),
                header("x-acs-date", "2026-11-30T01:00:00Z"),
                header("x-acs-signature-nonce", "nonce-1"),
                header("x-acs-version", "2014-05-26"),
            ],
            body: b"",
        };
        let to_sign = request.string_to_sign();
        assert!(acs3_matches(
            SECRET,
            &to_sign,
            "4a9215b1823bf3eeaee557363f083d687e3fe0ed9e2c171676546b3a36f4e38d"
        ));
        assert!(!acs3_matches(
            "another-secret-entirely",
            &to_sign,
            "4a9215b1823bf3eeaee557363f083d687e3fe0ed9e2c171676546b3a36f4e38d"
        ));
        assert!(!acs3_matches(SECRET, &to_sign, "not hex"));
    }

    #[test]
    fn v1_matches_the_official_sdk() {
        let params = [
            ("Action", "DescribeSnapshots"),
            ("Version", "2014-05-26"),
            ("Format", "JSON"),
            ("Timestamp", "2026-11-30T01:00:00Z"),
            ("SignatureNonce", "nonce-2"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("AccessKeyId", "LTAIdemo"),
            ("DiskId", "d-demo-ok"),
            ("SnapshotName", "a b*~"),
            ("Signature", "left out of what is signed"),
        ];
        let to_sign = v1_string_to_sign("GET", params.iter().copied());
        assert!(to_sign.starts_with("GET&%2F&AccessKeyId%3DLTAIdemo%26Action%3D"));
        assert!(v1_matches(SECRET, &to_sign, "A0Ob5DBIOwjrXlS3Jk9PK7E3Pes="));
        assert!(!v1_matches(
            SECRET,
            &to_sign,
            "B0Ob5DBIOwjrXlS3Jk9PK7E3Pes="
        ));
    }

    #[test]
    fn authorization_headers_parse_or_name_their_missing_part() {
        let parsed = parse_authorization(
            "ACS3-HMAC-SHA256 Credential=LTAIdemo,SignedHeaders=host;X-Acs-Date,Signature=ab12",
        );
        assert_eq!(
            parsed,
            Ok(Authorization {
                credential: "LTAIdemo",
                signed_headers: vec!["host".to_owned(), "x-acs-date".to_owned()],
                signature: "ab12",
            })
        );
        let cases = [
            ("Bearer abc", "Authorization"),
            (
                "ACS3-HMAC-SHA256 SignedHeaders=host,Signature=ab",
                "Credential",
            ),
            (
                "ACS3-HMAC-SHA256 Credential=k,Signature=ab",
                "SignedHeaders",
            ),
            (
                "ACS3-HMAC-SHA256 Credential=k,SignedHeaders=host",
                "Signature",
            ),
            (
                "ACS3-HMAC-SHA256 Credential=,SignedHeaders=host,Signature=ab",
                "Credential",
            ),
        ];
        for (header, missing) in cases {
            assert_eq!(parse_authorization(header), Err(missing), "{header}");
        }
    }
}
