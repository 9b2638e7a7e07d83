//! A minimal client of the ECS-compatible edge for tests: signature v1 (HMAC-SHA1), written
//! here from the public description of the scheme, so the server's verifier is checked against
//! a second implementation (the official SDK checks it in `ecs_edge.rs` too). It can also send
//! what no SDK would: bad signatures, reused nonces, odd bodies.

use std::net::SocketAddr;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn encode(raw: &str) -> String {
    utf8_percent_encode(raw, UNRESERVED).to_string()
}

/// One answer: the HTTP status, the body as JSON (or `Null` when it is not JSON), the raw text.
#[derive(Debug)]
pub struct EcsAnswer {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub content_type: String,
    /// Every header, by lower-case name (the last value of a repeated one).
    pub headers: std::collections::HashMap<String, String>,
}

impl EcsAnswer {
    pub fn code(&self) -> &str {
        self.body["Code"].as_str().unwrap_or("")
    }
}

pub struct EcsClient {
    pub addr: SocketAddr,
    pub key_id: String,
    pub secret: String,
    http: reqwest::Client,
}

impl EcsClient {
    pub fn new(addr: SocketAddr, key_id: &str, secret: &str) -> Self {
        Self {
            addr,
            key_id: key_id.to_owned(),
            secret: secret.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// The common parameters and `params`, signed at `now` with a fresh nonce.
    pub fn signed_query(
        &self,
        action: &str,
        params: &[(&str, &str)],
        now: DateTime<Utc>,
    ) -> String {
        let nonce = uuid::Uuid::new_v4().to_string();
        self.signed_query_with(action, params, now, &nonce)
    }

    pub fn signed_query_with(
        &self,
        action: &str,
        params: &[(&str, &str)],
        now: DateTime<Utc>,
        nonce: &str,
    ) -> String {
        let timestamp = now.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut all: Vec<(String, String)> = vec![
            ("Action".into(), action.into()),
            ("Version".into(), "2014-05-26".into()),
            ("Format".into(), "JSON".into()),
            ("AccessKeyId".into(), self.key_id.clone()),
            ("SignatureMethod".into(), "HMAC-SHA1".into()),
            ("SignatureVersion".into(), "1.0".into()),
            ("SignatureNonce".into(), nonce.into()),
            ("Timestamp".into(), timestamp),
        ];
        for (key, value) in params {
            all.retain(|(k, _)| k != key);
            all.push(((*key).into(), (*value).into()));
        }
        let mut encoded: Vec<(String, String)> =
            all.iter().map(|(k, v)| (encode(k), encode(v))).collect();
        encoded.sort();
        let canonical: Vec<String> = encoded.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let canonical = canonical.join("&");
        let to_sign = format!("GET&%2F&{}", encode(&canonical));
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(format!("{}&", self.secret).as_bytes())
            .expect("any key length");
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!("{canonical}&Signature={}", encode(&signature))
    }

    /// A signed GET of `action`.
    pub async fn call(
        &self,
        action: &str,
        params: &[(&str, &str)],
        now: DateTime<Utc>,
    ) -> EcsAnswer {
        let query = self.signed_query(action, params, now);
        self.get(&query).await
    }

    /// A GET with this query string as it is.
    pub async fn get(&self, query: &str) -> EcsAnswer {
        let response = self
            .http
            .get(format!("http://{}/?{query}", self.addr))
            .send()
            .await
            .expect("the ECS edge answers");
        answer(response).await
    }

    /// A request built by the test (method, body, headers).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> EcsAnswer {
        answer(request.send().await.expect("the ECS edge answers")).await
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

async fn answer(response: reqwest::Response) -> EcsAnswer {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    EcsAnswer {
        status,
        body,
        text,
        content_type,
        headers,
    }
}
