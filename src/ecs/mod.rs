//! The ECS-compatible HTTP edge: Alibaba Cloud's own RPC protocol (API version 2014-05-26),
//! so the official SDKs, the CLI and existing scripts can call snapshotd.
//!
//! A request is read (parameters from the query string and a form body), its signature checked
//! (ACS3-HMAC-SHA256 or signature v1; the key names the caller's account), its nonce spent,
//! the account throttled, and then one action calls the same service use case the gRPC edge
//! calls. Answers are ECS's JSON or XML; errors carry the same code the gRPC edge gives.

mod actions;
mod error;
mod images;
mod params;
mod render;
mod signature;
mod tag_actions;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use actions::Action;
use error::EcsError;
use params::Params;
use render::Format;

use crate::admission::{Shares, default_share, peer_of};
use crate::answer::{Answer, Detail};
use crate::domain::AccessKey;
use crate::domain::ParseError;
use crate::service::{NONCE_WINDOW, NonceSpend, Service};
use crate::telemetry::metric;
use crate::throttle::Throttle;

/// The API version the actions implement.
pub const API_VERSION: &str = "2014-05-26";

/// Headers must arrive within this time of the connection's first byte (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The body must arrive within this time of the headers.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
// The edge's own limits on a request's head, answered with ECS's error body. hyper writes
// its own refusals (414, 431, 400 on a head it cannot parse) itself, with an empty body and
// no hook to change it, so its limits are set above these: it refuses alone only a head over
// MAX_READ_BUFFER or with more than HYPER_MAX_HEADERS lines (docs/ecs.md).

/// Headers together (names and values); more is answered 431. SDKs send under 2 KiB.
const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Header lines at most (hyper's own default); more is answered 431.
const MAX_HEADERS: usize = 100;
/// The request target (path and query) at most; more is answered 414. Parameters that do not
/// fit go in a form body.
const MAX_URI_BYTES: usize = 16 * 1024;
/// What hyper buffers of one connection while it reads a request's head: room for a head at
/// the edge's limits (16 + 32 KiB and the lines' framing); beyond it, hyper answers 431.
/// Below hyper's fixed 65,534-byte URI limit, so hyper never answers 414 itself.
const MAX_READ_BUFFER: usize = 64 * 1024;
/// Header lines hyper parses at most, beyond which it answers 431 itself.
const HYPER_MAX_HEADERS: usize = 1024;

/// The edge's settings and the core it calls.
pub struct EcsEdge {
    service: Arc<Service>,
    throttle: Option<Arc<Throttle>>,
    request_timeout: Duration,
    max_body_bytes: usize,
    /// Requests in progress at once, from their first byte: past it a request is shed before
    /// its body is read, so held bodies cannot pile up in memory.
    slots: Arc<tokio::sync::Semaphore>,
    max_in_flight: u32,
    /// The slots each peer holds, and how many one may hold: so that one client cannot take
    /// them all (the account is known only once the body is read and the signature checked).
    peers: Arc<Shares>,
    per_peer: u32,
}

impl EcsEdge {
    /// `throttle` is the one the gRPC edge uses: an account has one budget.
    pub fn new(
        service: Arc<Service>,
        throttle: Option<Arc<Throttle>>,
        request_timeout: Duration,
        max_body_bytes: usize,
        max_in_flight: u32,
        per_peer: Option<u32>,
    ) -> Self {
        Self {
            service,
            throttle,
            request_timeout,
            max_body_bytes,
            slots: Arc::new(tokio::sync::Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            peers: Arc::new(Shares::default()),
            per_peer: per_peer.unwrap_or_else(|| default_share(max_in_flight)),
        }
    }
}

/// Serves HTTP/1.1 on `listener` (over TLS when `tls` is given) until `stop` turns true, then
/// lets the requests in flight finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    edge: Arc<EcsEdge>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let stopped = async move {
        // The guard `wait_for` returns is not `Send`: dropped here, not held by the select.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of descriptors, usually: wait rather than spin.
                        tracing::warn!(error = %err, "ECS edge: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let edge = Arc::clone(&edge);
                let watcher = graceful.watcher();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(stream, edge, peer, watcher).await,
                        Some(acceptor) => {
                            // The handshake counts against the header timeout (slowloris).
                            match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => serve_connection(stream, edge, peer, watcher).await,
                                Ok(Err(err)) => tracing::debug!(%peer, error = %err, "ECS edge: TLS handshake failed"),
                                Err(_) => tracing::debug!(%peer, "ECS edge: TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            () = &mut stopped => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "ECS edge: connections still open after the grace are dropped"
        );
    }
}

/// One connection's requests, until it closes or the shutdown's grace ends.
async fn serve_connection<IO>(
    io: IO,
    edge: Arc<EcsEdge>,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let edge = Arc::clone(&edge);
        async move { Ok::<_, Infallible>(edge.handle(request, peer).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_READ_BUFFER)
        .max_headers(HYPER_MAX_HEADERS)
        .serve_connection(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!(%peer, error = %err, "ECS edge: connection ended");
    }
}

/// The TLS settings of the ECS edge from the gRPC edge's PEM files: the certificate chain and
/// key, and when a client CA is given, client certificates it signed are required (mTLS).
pub fn tls_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto, server::WebPkiClientVerifier};

    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("the certificate chain: {err}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| format!("the key: {err}"))?;
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert = cert.map_err(|err| format!("the client CA: {err}"))?;
                roots
                    .add(cert)
                    .map_err(|err| format!("the client CA: {err}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| format!("the client CA: {err}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| format!("the certificate and key: {err}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What the log line and the metrics say of one request, filled in as it is read.
#[derive(Default)]
struct CallNotes {
    format: Option<Format>,
    action: Option<Action>,
    account_id: Option<String>,
}

impl EcsEdge {
    async fn handle(
        &self,
        request: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let request_id = crate::telemetry::new_request_id();
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or("snapshotd")
            .to_owned();
        let mut notes = CallNotes::default();
        let admitted = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| EcsError::Overloaded {
                limit: self.max_in_flight,
            })
            .and_then(|slot| {
                let share = self
                    .peers
                    .take(peer_of(peer.ip()), self.per_peer)
                    .map_err(|busy| EcsError::PeerBusy {
                        peer: busy.holder,
                        limit: busy.limit,
                    })?;
                Ok((slot, share))
            });
        let result = match admitted {
            Err(refused) => Err(refused),
            Ok(_held) => {
                match tokio::time::timeout(self.request_timeout, self.call(request, &mut notes))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err(EcsError::Timeout(self.request_timeout)),
                }
            }
        };
        let format = notes.format.unwrap_or(Format::Json);
        let action = notes.action.map_or("", Action::name);
        let latency = started.elapsed();
        let account = notes.account_id.as_deref().unwrap_or("");
        match result {
            Ok(mut body) => {
                body["RequestId"] = Value::from(request_id.as_str());
                tracing::info!(
                    edge = "ecs", action, code = "OK", http_status = 200, %request_id,
                    account_id = account, %peer, latency_ms = latency.as_secs_f64() * 1e3,
                    "call"
                );
                metric::http_request(action, 200, "OK", latency);
                let root = format!("{action}Response");
                respond(
                    StatusCode::OK,
                    format,
                    &request_id,
                    None,
                    false,
                    format.render(&root, &body),
                )
            }
            Err(err) => {
                let answer = error::answer(&err);
                let chain = crate::telemetry::error_chain(&err);
                if answer.http_status >= 500 {
                    tracing::error!(
                        edge = "ecs", action, code = answer.reason, http_status = answer.http_status,
                        %request_id, account_id = account, %peer,
                        latency_ms = latency.as_secs_f64() * 1e3, cause = ?chain, "call"
                    );
                } else {
                    tracing::info!(
                        edge = "ecs", action, code = answer.reason, http_status = answer.http_status,
                        %request_id, account_id = account, %peer,
                        latency_ms = latency.as_secs_f64() * 1e3, why = ?chain, "call"
                    );
                }
                metric::http_request(action, answer.http_status, answer.reason, latency);
                let body = error_body(&answer, &request_id, &host);
                let status = StatusCode::from_u16(answer.http_status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                respond(
                    status,
                    format,
                    &request_id,
                    answer.retry_after,
                    answer.reason == "Throttling",
                    format.render("Error", &body),
                )
            }
        }
    }

    /// Reads, authenticates and runs one request; the action's body without `RequestId`.
    async fn call(
        &self,
        request: http::Request<Incoming>,
        notes: &mut CallNotes,
    ) -> Result<Value, EcsError> {
        let (parts, body) = request.into_parts();
        let header_bytes: usize = parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(EcsError::HeadersTooLarge {
                limit: MAX_HEADER_BYTES,
            });
        }
        if parts.headers.len() > MAX_HEADERS {
            return Err(EcsError::TooManyHeaders { limit: MAX_HEADERS });
        }
        let target = parts
            .uri
            .path_and_query()
            .map_or(0, |target| target.as_str().len());
        if target > MAX_URI_BYTES {
            return Err(EcsError::UriTooLong {
                limit: MAX_URI_BYTES,
            });
        }
        if parts.method != Method::GET && parts.method != Method::POST {
            return Err(EcsError::UnsupportedMethod(parts.method.to_string()));
        }
        let body = self.read_body(body).await?;
        if !body.is_empty() && !is_form(&parts.headers) {
            return Err(EcsError::UnsupportedBody);
        }
        let params = Params::decode(parts.uri.query().unwrap_or(""), &body)?;
        notes.format =
            Some(
                Format::parse(params.get("Format")).ok_or_else(|| EcsError::InvalidValue {
                    parameter: "Format",
                    why: "must be JSON or XML".to_owned(),
                })?,
            );

        // What is asked comes before who asks: an unknown action or version is answered as
        // such whoever sends it.
        let (action, version) = action_and_version(&parts.headers, &params)?;
        if version != API_VERSION {
            return Err(EcsError::InvalidVersion(version.to_owned()));
        }
        let action =
            Action::parse(action).ok_or_else(|| EcsError::UnknownAction(action.to_owned()))?;
        notes.action = Some(action);
        let signed = Signed::read(&parts.headers, &params)?;

        let key = self
            .service
            .access_key(signed.access_key_id)
            .await?
            .ok_or_else(|| EcsError::UnknownAccessKey(signed.access_key_id.to_owned()))?;
        notes.account_id = Some(key.account_id.clone());
        self.check_timestamp(signed.timestamp)?;
        let string_to_sign = signed.string_to_sign(parts.method.as_str(), &parts, &params, &body);
        let key = self.authenticate(&signed, key, string_to_sign).await?;
        actions::run(&self.service, action, &key.account_id, &params).await
    }

    /// Verifies the signature with `key` (as cached), throttles its account and spends the
    /// nonce; the key the request was verified with.
    ///
    /// A cached key can be older than the stored one (its secret rotated since, maybe on
    /// another replica): a signature it does not verify, or a nonce the database would not
    /// spend with it ([`NonceSpend::KeyChanged`]), is tried once more with the stored key.
    async fn authenticate(
        &self,
        signed: &Signed<'_>,
        mut key: Arc<AccessKey>,
        string_to_sign: String,
    ) -> Result<Arc<AccessKey>, EcsError> {
        let mut stored = false;
        let mut throttled = false;
        loop {
            if !signed.matches(&key.access_key_secret, &string_to_sign) {
                if stored {
                    return Err(EcsError::SignatureMismatch { string_to_sign });
                }
                key = self.stored_key(signed).await?;
                stored = true;
                continue;
            }
            // After the signature, so nobody can spend another account's budget with its key
            // id alone; before the nonce, so a throttled request writes nothing.
            if !throttled && let Some(throttle) = &self.throttle {
                throttle.admit(&key.account_id)?;
            }
            throttled = true;
            match self.service.spend_nonce(&key, signed.nonce).await? {
                NonceSpend::Spent => return Ok(key),
                NonceSpend::Replayed => return Err(EcsError::NonceUsed),
                NonceSpend::KeyChanged if !stored => {
                    key = self.stored_key(signed).await?;
                    stored = true;
                }
                // Rotated again meanwhile: the secret signed with is not the key's.
                NonceSpend::KeyChanged => {
                    return Err(EcsError::SignatureMismatch { string_to_sign });
                }
            }
        }
    }

    async fn stored_key(&self, signed: &Signed<'_>) -> Result<Arc<AccessKey>, EcsError> {
        self.service
            .stored_access_key(signed.access_key_id)
            .await?
            .ok_or_else(|| EcsError::UnknownAccessKey(signed.access_key_id.to_owned()))
    }

    async fn read_body(&self, body: Incoming) -> Result<Bytes, EcsError> {
        let limit = self.max_body_bytes;
        let collected =
            tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect())
                .await
                .map_err(|_| EcsError::BodyTimeout(BODY_READ_TIMEOUT))?;
        match collected {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                Err(EcsError::BodyTooLarge { limit })
            }
            Err(err) => Err(EcsError::BodyBroken(err.to_string())),
        }
    }

    /// A request signed more than the nonce window away from the service's clock is refused:
    /// its nonce may have been forgotten.
    fn check_timestamp(&self, raw: &str) -> Result<(), EcsError> {
        let at = chrono::DateTime::parse_from_rfc3339(raw)
            .map_err(|_| EcsError::TimestampFormat(raw.to_owned()))?;
        let off = (self.service.signing_time() - at.to_utc()).abs();
        if off.to_std().unwrap_or(Duration::MAX) > NONCE_WINDOW {
            return Err(EcsError::TimestampExpired(raw.to_owned()));
        }
        Ok(())
    }
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

fn missing(field: &'static str) -> EcsError {
    EcsError::Invalid(ParseError::MissingParameter { field })
}

/// The action and version: ACS3 sends them as `x-acs-action` and `x-acs-version`, signature
/// v1 as the `Action` and `Version` parameters.
fn action_and_version<'a>(
    headers: &'a HeaderMap,
    params: &'a Params,
) -> Result<(&'a str, &'a str), EcsError> {
    // Each scheme reads them where it signs them: ACS3 signs its headers, v1 only the
    // parameters. A v1 request's `x-acs-*` headers (the SDK sends some) are not signed, so
    // they must not decide anything.
    if headers.contains_key(header::AUTHORIZATION) {
        check_acs_headers(headers)?;
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let action = header("x-acs-action").ok_or_else(|| missing("x-acs-action"))?;
        let version = header("x-acs-version").ok_or_else(|| missing("x-acs-version"))?;
        Ok((action, version))
    } else {
        let param = |name: &str| params.get(name).filter(|value| !value.is_empty());
        let action = param("Action").ok_or_else(|| missing("Action"))?;
        let version = param("Version").ok_or_else(|| missing("Version"))?;
        Ok((action, version))
    }
}

/// Under ACS3 every `x-acs-*` header is signed and read as one value: one that is sent twice
/// or is not visible ASCII is refused, so what is signed is exactly what is read.
fn check_acs_headers(headers: &HeaderMap) -> Result<(), EcsError> {
    for name in headers.keys() {
        if !name.as_str().starts_with("x-acs-") {
            continue;
        }
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(EcsError::IncompleteSignature(format!(
                "the header {name} is sent more than once"
            )));
        }
        if !first.is_some_and(|value| value.as_bytes().iter().all(|b| (0x20..0x7f).contains(b))) {
            return Err(EcsError::IncompleteSignature(format!(
                "the header {name} is not printable ASCII"
            )));
        }
    }
    Ok(())
}

/// The longest signature nonce taken: SDKs send a UUID or a 32-digit hex string.
const MAX_NONCE_LEN: usize = 128;

/// A nonce is 1 to [`MAX_NONCE_LEN`] visible ASCII characters: it is stored for 30 minutes.
fn check_nonce(nonce: &str) -> Result<(), EcsError> {
    if nonce.len() <= MAX_NONCE_LEN && nonce.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(EcsError::InvalidValue {
            parameter: "SignatureNonce",
            why: format!("must be 1 to {MAX_NONCE_LEN} visible ASCII characters"),
        })
    }
}

/// Which scheme signed a request, and the parts every scheme has.
struct Signed<'a> {
    scheme: Scheme<'a>,
    access_key_id: &'a str,
    timestamp: &'a str,
    nonce: &'a str,
}

enum Scheme<'a> {
    Acs3(signature::Authorization<'a>),
    V1 { signature: &'a str },
}

impl<'a> Signed<'a> {
    /// ACS3 when an `Authorization` header is sent, else signature v1; a missing part is
    /// `MissingParameter` naming it.
    fn read(headers: &'a HeaderMap, params: &'a Params) -> Result<Self, EcsError> {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        let param = |name: &str| params.get(name).filter(|value| !value.is_empty());
        if let Some(authorization) = headers.get(header::AUTHORIZATION) {
            let authorization = authorization
                .to_str()
                .map_err(|_| EcsError::IncompleteSignature("Authorization is not ASCII".into()))?;
            let authorization = signature::parse_authorization(authorization).map_err(|part| {
                EcsError::IncompleteSignature(match part {
                    "Authorization" => format!(
                        "the Authorization header must start with {}",
                        signature::ACS3_ALGORITHM
                    ),
                    part => format!("the Authorization header has no {part}"),
                })
            })?;
            let timestamp = header("x-acs-date").ok_or_else(|| missing("x-acs-date"))?;
            let nonce = header("x-acs-signature-nonce")
                .filter(|nonce| !nonce.is_empty())
                .ok_or_else(|| missing("x-acs-signature-nonce"))?;
            check_nonce(nonce)?;
            // What the signature must cover: the host and every x-acs-* header, so none of
            // them (the action, the date, the nonce, the body's hash) can be changed in transit.
            for name in headers.keys() {
                let name = name.as_str();
                let required = name == "host" || name.starts_with("x-acs-");
                if required
                    && !authorization
                        .signed_headers
                        .iter()
                        .any(|signed| signed == name)
                {
                    return Err(EcsError::IncompleteSignature(format!(
                        "SignedHeaders must include {name}"
                    )));
                }
            }
            Ok(Self {
                access_key_id: authorization.credential,
                timestamp,
                nonce,
                scheme: Scheme::Acs3(authorization),
            })
        } else {
            let access_key_id = param("AccessKeyId").ok_or_else(|| missing("AccessKeyId"))?;
            let signature = param("Signature").ok_or_else(|| missing("Signature"))?;
            let timestamp = param("Timestamp").ok_or_else(|| missing("Timestamp"))?;
            let nonce = param("SignatureNonce").ok_or_else(|| missing("SignatureNonce"))?;
            check_nonce(nonce)?;
            match param("SignatureMethod") {
                Some("HMAC-SHA1") => {}
                Some(other) => {
                    return Err(EcsError::IncompleteSignature(format!(
                        "SignatureMethod {other} is not offered; use HMAC-SHA1"
                    )));
                }
                None => return Err(missing("SignatureMethod")),
            }
            if let Some(version) = param("SignatureVersion")
                && version != "1.0"
            {
                return Err(EcsError::IncompleteSignature(format!(
                    "SignatureVersion {version} is not offered; use 1.0"
                )));
            }
            Ok(Self {
                access_key_id,
                timestamp,
                nonce,
                scheme: Scheme::V1 { signature },
            })
        }
    }

    fn string_to_sign(
        &self,
        method: &str,
        parts: &'a http::request::Parts,
        params: &'a Params,
        body: &'a [u8],
    ) -> String {
        match &self.scheme {
            Scheme::Acs3(authorization) => signature::Acs3Request {
                method,
                path: parts.uri.path(),
                query: params.query().collect(),
                signed_headers: authorization
                    .signed_headers
                    .iter()
                    .map(|name| {
                        let values = parts
                            .headers
                            .get_all(name.as_str())
                            .iter()
                            .filter_map(|value| value.to_str().ok())
                            .collect();
                        (name.clone(), values)
                    })
                    .collect(),
                body,
            }
            .string_to_sign(),
            Scheme::V1 { .. } => signature::v1_string_to_sign(method, params.all()),
        }
    }

    fn matches(&self, secret: &str, string_to_sign: &str) -> bool {
        match &self.scheme {
            Scheme::Acs3(authorization) => {
                signature::acs3_matches(secret, string_to_sign, authorization.signature)
            }
            Scheme::V1 { signature } => signature::v1_matches(secret, string_to_sign, signature),
        }
    }
}

/// ECS's error body; `Recommend` says what to change, when the answer knows.
fn error_body(answer: &Answer, request_id: &str, host: &str) -> Value {
    let recommend = match &answer.detail {
        Detail::BadRequest { description, .. }
        | Detail::Precondition { description, .. }
        | Detail::Quota { description, .. } => description.clone(),
        Detail::Resource { .. } | Detail::None => String::new(),
    };
    json!({
        "RequestId": request_id,
        "HostId": host,
        "Code": answer.reason,
        "Message": answer.message,
        "Recommend": recommend,
    })
}

fn respond(
    status: StatusCode,
    format: Format,
    request_id: &str,
    retry_after: Option<Duration>,
    throttled: bool,
    body: Vec<u8>,
) -> Response<Full<Bytes>> {
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, format.content_type())
        .header("x-acs-request-id", request_id);
    if let Some(delay) = retry_after {
        let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        response = response.header(header::RETRY_AFTER, seconds.to_string());
        if throttled {
            // What the official SDKs read to raise a ThrottlingException and wait (ms).
            let millis = delay.as_millis().max(1);
            response = response.header("x-acs-retry-after", millis.to_string());
        }
    }
    response
        .body(Full::new(Bytes::from(body)))
        .expect("static status and headers always build a response")
}
