//! The bench's client of the ECS-compatible HTTP edge (`--edge http`): Alibaba Cloud's RPC
//! protocol as the CLI sends it, signature v1 (HMAC-SHA1 under `secret&`), over one pool of
//! HTTP/1.1 keep-alive connections that all workers share.
//!
//! Every request is signed at the current time with a fresh nonce: the edge refuses a
//! timestamp more than 15 minutes from its clock and a nonce it has seen.

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

/// What RFC 3986 leaves unencoded besides letters and digits; signature v1 encodes the rest.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The API version of the actions the bench calls.
const API_VERSION: &str = "2014-05-26";

fn encode(raw: &str) -> String {
    utf8_percent_encode(raw, UNRESERVED).to_string()
}

/// One account's access key, as put through `InventoryService.PutAccessKey`.
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

/// The common parameters and `params`, encoded, sorted and signed: a whole query string.
pub fn signed_query(
    key: &AccessKey,
    action: &str,
    params: &[(&str, &str)],
    timestamp: &str,
    nonce: &str,
) -> String {
    let common = [
        ("Action", action),
        ("Version", API_VERSION),
        ("Format", "JSON"),
        ("AccessKeyId", key.id.as_str()),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce),
        ("Timestamp", timestamp),
    ];
    let mut pairs: Vec<(String, String)> = common
        .iter()
        .chain(params)
        .map(|(name, value)| (encode(name), encode(value)))
        .collect();
    pairs.sort();
    let canonical = pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{}&", key.secret).as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("GET&%2F&{}", encode(&canonical)).as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("{canonical}&Signature={}", encode(&signature))
}

/// The fields of ECS's answers the bench reads; the rest is skipped.
#[derive(Deserialize, Default)]
pub struct EcsBody {
    #[serde(rename = "SnapshotId")]
    pub snapshot_id: Option<String>,
    #[serde(rename = "NextToken")]
    pub next_token: Option<String>,
    #[serde(rename = "Code")]
    code: Option<String>,
}

/// A worker's handle on the edge: the shared pool, its server, every account's key.
#[derive(Clone)]
pub struct EcsClient {
    http: reqwest::Client,
    /// `http://host:port/`, the one path of the RPC protocol.
    endpoint: Arc<str>,
    /// Indexed by account (see `Naming::account`).
    keys: Arc<[AccessKey]>,
}

/// One pool for all workers: at most one request is in flight on an HTTP/1.1 connection, so
/// the pool grows to the concurrency and keeps those connections alive between calls.
pub fn pool() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .no_proxy()
        .build()
}

impl EcsClient {
    pub fn new(http: reqwest::Client, target: &str, keys: Arc<[AccessKey]>) -> Self {
        Self {
            http,
            endpoint: format!("{}/", target.trim_end_matches('/')).into(),
            keys,
        }
    }

    /// Calls `action` as `account`; the body of a 200, else the answer as "STATUS Code"
    /// (`403 IncorrectDiskStatus.CreatingSnapshot`), the shape the gRPC path's "CODE reason"
    /// has, so a scenario's expected reasons match both.
    pub async fn call(
        &self,
        account: usize,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<EcsBody, String> {
        let timestamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let nonce = format!("{:032x}", rand::random::<u128>());
        let query = signed_query(&self.keys[account], action, params, &timestamp, &nonce);
        let response = self
            .http
            .get(format!("{}?{query}", self.endpoint))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(transport)?;
        let body: EcsBody = serde_json::from_slice(&bytes).unwrap_or_default();
        match (status.is_success(), body.code.as_deref()) {
            (true, _) => Ok(body),
            (false, Some(code)) => Err(format!("{} {code}", status.as_u16())),
            (false, None) => Err(format!("{} (no ECS error body)", status.as_u16())),
        }
    }
}

/// A failure below HTTP, by kind (the message would make every answer its own row).
fn transport(err: reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else if err.is_body() || err.is_decode() {
        "body"
    } else {
        "request"
    };
    format!("transport {kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known answer the server's own verifier is tested with (src/ecs/signature.rs),
    /// computed by the official Python SDK for the same parameters.
    #[test]
    fn signatures_match_the_official_sdk() {
        let demo = AccessKey {
            id: "LTAIdemo".to_owned(),
            secret: "demo-secret-of-acct-demo".to_owned(),
        };
        let other = AccessKey {
            id: "LTAIdemo".to_owned(),
            secret: "another-secret-entirely".to_owned(),
        };
        let params = [("DiskId", "d-demo-ok"), ("SnapshotName", "a b*~")];
        let cases = [
            (&demo, "nonce-2", true),
            (&demo, "nonce-3", false),
            (&other, "nonce-2", false),
        ];
        for (key, nonce, matches) in cases {
            let query = signed_query(
                key,
                "DescribeSnapshots",
                &params,
                "2026-11-30T01:00:00Z",
                nonce,
            );
            assert_eq!(
                query.ends_with("&Signature=A0Ob5DBIOwjrXlS3Jk9PK7E3Pes%3D"),
                matches,
                "{} {nonce}: {query}",
                key.secret
            );
        }
    }

    #[test]
    fn parameters_are_encoded_as_rfc_3986_and_sorted() {
        let key = AccessKey {
            id: "k".to_owned(),
            secret: "s".to_owned(),
        };
        let query = signed_query(
            &key,
            "CreateSnapshot",
            &[("SnapshotName", "a b*~/é"), ("DiskId", "d-1")],
            "2026-11-30T01:00:00Z",
            "n",
        );
        let names: Vec<&str> = query
            .split('&')
            .map(|pair| pair.split_once('=').expect("name=value").0)
            .collect();
        assert_eq!(
            names,
            [
                "AccessKeyId",
                "Action",
                "DiskId",
                "Format",
                "SignatureMethod",
                "SignatureNonce",
                "SignatureVersion",
                "SnapshotName",
                "Timestamp",
                "Version",
                "Signature"
            ]
        );
        for encoded in [
            "SnapshotName=a%20b%2A~%2F%C3%A9",
            "Timestamp=2026-11-30T01%3A00%3A00Z",
        ] {
            assert!(query.contains(encoded), "{encoded} in {query}");
        }
    }
}
