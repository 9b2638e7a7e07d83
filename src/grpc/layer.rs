//! The tower layer every gRPC call passes through. In order:
//!
//! 1. a request id (returned in `x-request-id`, in the body or `RequestInfo`, and on the call's
//!    log line (its `rpc` span) beside the client's own `x-request-id`, kept as
//!    `client_request_id`);
//! 2. admission, on the headers alone (`call.rs`): a tenant call is identified and throttled,
//!    an admin call must bear the admin token. A call refused here never takes a slot;
//! 3. load shedding: one caller (an account, the admin) holds at most three quarters of the
//!    `SNAPSHOTD_MAX_CONCURRENT_REQUESTS` slots, and one peer (its IP address) at most
//!    `SNAPSHOTD_MAX_CONCURRENT_REQUESTS_PER_PEER` (by default three quarters too) whatever
//!    callers it names; past them all a call is answered UNAVAILABLE with RetryInfo at once
//!    instead of queueing;
//! 4. the request body (of our methods and the health service's, all with one request
//!    message), read whole before the handler runs: it must start within
//!    [`BODY_START_TIMEOUT`] of the headers, or the call is answered and its slot freed. It must
//!    be one well-formed gRPC message of at most `SNAPSHOTD_MAX_MESSAGE_SIZE` bytes, inflated
//!    here when gzip-compressed (so within the limit too): framing faults are the client's,
//!    answered INVALID_ARGUMENT or RESOURCE_EXHAUSTED `RequestTooLarge` with the usual details,
//!    and tonic decodes a plain message it cannot refuse. Reflection's messages (a stream both
//!    ways) are checked alike as they pass, and a fault ends the stream with its status in the
//!    trailers. A `grpc-encoding` other than gzip or identity is UNIMPLEMENTED
//!    `UnsupportedEncoding`, on every service;
//! 5. the deadline: `SNAPSHOTD_REQUEST_TIMEOUT`, or the client's shorter `grpc-timeout`,
//!    answered DEADLINE_EXCEEDED `RequestTimeout`;
//! 6. panic catching, answered INTERNAL;
//!
//! and, when the answer is known (for a reflection stream, at its end), one log line and the
//! metrics for the call. Health checks and reflection are never shed nor timed out (a probe must
//! see an overloaded server as alive, and `Health/Watch` is a long stream); their lines are
//! logged at DEBUG when they succeed or the client hangs up.
//!
//! At shutdown the layer ends what would otherwise hold the drain open: [`RpcLayer::end_streams`]
//! closes open `Health/Watch` and reflection streams (after the NOT_SERVING they carry) with
//! UNAVAILABLE, and [`RpcLayer::cut_off`], at the end of the grace period, answers the calls still
//! running UNAVAILABLE (their transactions roll back), so every client gets an answer it may retry
//! elsewhere.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::body::Body;
use tonic::codegen::http::{Extensions, HeaderMap, HeaderValue, Request, Response};
use tonic::metadata::MetadataMap;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tower::{Layer, Service, ServiceExt};

use super::ApiError;
use super::call::{Admitted, Gate};
use crate::admission::{Busy, Share, Shares, default_share, peer_of};
use crate::domain::ParseError;
use crate::telemetry::{error_chain, metric};

/// The metadata key carrying request ids, both ways.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client `x-request-id` kept for the logs; a longer one is ignored.
const MAX_CLIENT_REQUEST_ID: usize = 128;

/// Services whose methods are named in logs and metrics; any other path is `unknown`, so a
/// client cannot grow the metrics' label sets.
const SERVICES: [(&str, Kind); 8] = [
    ("ecs.snapshot.v1.SnapshotService", Kind::Tenant),
    ("ecs.snapshot.v1.ImageService", Kind::Tenant),
    ("ecs.snapshot.v1.TagService", Kind::Tenant),
    ("ecs.snapshot.v1.InventoryService", Kind::Admin),
    ("ecs.snapshot.v1.SimulationService", Kind::Admin),
    ("grpc.health.v1.Health", Kind::Infrastructure),
    ("grpc.reflection.v1.ServerReflection", Kind::Infrastructure),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        Kind::Infrastructure,
    ),
];

/// How long a call's body may take to start after its headers: long enough for any client
/// (tonic sends the two back to back), short enough that a peer sending headers alone holds
/// its slot briefly.
pub const BODY_START_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// SnapshotService, ImageService and TagService: an account calls.
    Tenant,
    /// InventoryService and SimulationService: the admin calls.
    Admin,
    /// A path of no service of ours: tonic answers UNIMPLEMENTED without reading the body.
    Unknown,
    /// Health and reflection.
    Infrastructure,
}

impl Kind {
    /// Whether calls of this kind are shed, timed out and cut off at shutdown.
    fn is_api(self) -> bool {
        self != Kind::Infrastructure
    }
}

tokio::task_local! {
    /// The facts of the call being handled, for its log line.
    static FACTS: Arc<CallFacts>;
}

/// What a handler learns about its call (who, which disk, which snapshot), for the call's one
/// log line. Kept beside the span rather than recorded on it: recording a field on a span makes
/// the JSON formatter rewrite all of the span's fields, once per field.
pub struct CallFacts {
    /// The call's id, for what answers without the request's extensions at hand (the codec).
    request_id: RequestId,
    account: OnceLock<String>,
    disk: OnceLock<String>,
    snapshot: OnceLock<String>,
}

impl CallFacts {
    fn new(request_id: RequestId) -> Self {
        Self {
            request_id,
            account: OnceLock::new(),
            disk: OnceLock::new(),
            snapshot: OnceLock::new(),
        }
    }

    fn get(slot: &OnceLock<String>) -> &str {
        slot.get().map_or("", String::as_str)
    }
}

/// The id of the call being handled: the one in its `x-request-id` and on its log line. A fresh
/// one only outside a call (a service used without the layer).
pub fn call_request_id() -> String {
    FACTS
        .try_with(|facts| facts.request_id.as_str().to_owned())
        .unwrap_or_else(|_| new_request_id())
}

fn note(fact: impl FnOnce(&CallFacts) -> &OnceLock<String>, value: &str) {
    // Outside a call (a handler used without the layer) there is nothing to note.
    let _ = FACTS.try_with(|facts| fact(facts).set(value.to_owned()));
}

/// Notes the disk the call is about.
pub fn note_disk(disk_id: &str) {
    note(|facts| &facts.disk, disk_id);
}

/// Notes the snapshot the call made or is about.
pub fn note_snapshot(snapshot_id: &str) {
    note(|facts| &facts.snapshot, snapshot_id);
}

/// A request id: a v4 UUID, hyphenated and upper case like the seed's sample (both edges').
pub use crate::telemetry::new_request_id;

/// The request id the layer gave a call, in the request's extensions for the handlers.
#[derive(Clone, Debug)]
pub struct RequestId(Arc<str>);

impl RequestId {
    fn new() -> Self {
        Self(new_request_id().into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone)]
pub struct RpcLayer {
    limits: Arc<Limits>,
}

struct Limits {
    gate: Arc<Gate>,
    slots: Arc<Semaphore>,
    max_concurrent: u32,
    /// The slots one caller may hold at once.
    per_caller: u32,
    /// The slots one peer may hold at once, whatever callers it names.
    per_peer: u32,
    /// The slots each caller and each peer holds now.
    shares: Arc<Shares>,
    timeout: Duration,
    max_message_size: usize,
    /// Cancelled when the drain starts: long infrastructure streams end.
    streams_end: CancellationToken,
    /// Cancelled when the grace period ends: API calls still running are answered.
    cut_off: CancellationToken,
}

impl RpcLayer {
    /// `per_peer`: the slots one peer may hold; `None` is the same share as a caller's.
    pub fn new(
        gate: Arc<Gate>,
        max_concurrent: u32,
        per_peer: Option<u32>,
        timeout: Duration,
        max_message_size: usize,
    ) -> Self {
        let per_caller = default_share(max_concurrent);
        Self {
            limits: Arc::new(Limits {
                gate,
                slots: Arc::new(Semaphore::new(max_concurrent as usize)),
                max_concurrent,
                per_caller,
                per_peer: per_peer.unwrap_or(per_caller),
                shares: Arc::new(Shares::default()),
                timeout,
                max_message_size,
                streams_end: CancellationToken::new(),
                cut_off: CancellationToken::new(),
            }),
        }
    }

    /// Ends open `Health/Watch` and reflection streams with UNAVAILABLE, after what they have
    /// to send (the NOT_SERVING set just before).
    pub fn end_streams(&self) {
        self.limits.streams_end.cancel();
    }

    /// Answers every API call still running UNAVAILABLE at once; their work is dropped.
    pub fn cut_off(&self) {
        self.limits.cut_off.cancel();
    }

    /// API calls in progress now (for the metrics).
    pub fn in_flight(&self) -> usize {
        (self.limits.max_concurrent as usize).saturating_sub(self.limits.slots.available_permits())
    }
}

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcService {
            inner,
            limits: Arc::clone(&self.limits),
        }
    }
}

#[derive(Clone)]
pub struct RpcService<S> {
    inner: S,
    limits: Arc<Limits>,
}

impl<S> Service<Request<Body>> for RpcService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is decided per call: `call` sheds instead of making the connection wait.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let (method, kind) = route(request.uri().path());
        let request_id = RequestId::new();
        let client_id = client_request_id(request.headers()).map(str::to_owned);
        request.extensions_mut().insert(request_id.clone());

        let inner = self.inner.clone();
        let limits = Arc::clone(&self.limits);
        let facts = Arc::new(CallFacts::new(request_id.clone()));
        // Admitted and given a slot here, not in the future, so a burst is counted in arrival
        // order.
        let admitted = admit(&limits, kind, &mut request, &facts);
        let deadline = Deadline::of(request.headers(), limits.timeout);
        let streams = reading(kind, request.uri().path()) == Reading::Stream;
        let mut record = Some(CallRecord::new(method, kind, client_id, Arc::clone(&facts)));
        Box::pin(async move {
            let fault = StreamFault::default();
            let outcome = match admitted {
                Err(refused) => Err(refused),
                Ok(slot) => {
                    let run = run(inner, request, kind, &limits, deadline, fault.clone());
                    let call = FACTS.scope(facts, run);
                    let outcome = tokio::select! {
                        outcome = call => outcome,
                        () = limits.cut_off.cancelled(), if kind.is_api() => {
                            Err(ApiError::ShuttingDown)
                        }
                    };
                    drop(slot);
                    outcome
                }
            };
            let mut response = match outcome {
                Err(err) => err.into_status(request_id.as_str()).into_http(),
                Ok(response) if kind == Kind::Infrastructure => {
                    let ended = limits.streams_end.clone().cancelled_owned();
                    // A stream's outcome is known at its end: its log line is written then.
                    let record = record.take_if(|_| streams);
                    response.map(|body| {
                        Body::new(InfraStream {
                            inner: body,
                            ended: Box::pin(ended),
                            fault,
                            request_id: request_id.clone(),
                            record,
                            done: false,
                        })
                    })
                }
                Ok(response) => response,
            };
            if let Ok(mut value) = HeaderValue::from_str(request_id.as_str()) {
                // Never indexed by HPACK: each id is sent once, and indexing it would churn
                // the connection's header table, evicting what repeats (content-type,
                // grpc-status) to be sent in full again, on both ends.
                value.set_sensitive(true);
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            if let Some(mut record) = record {
                record.finish(response.headers(), response.extensions().get::<Status>());
            }
            Ok(response)
        })
    }
}

/// Admits a call on its headers and gives it a slot: checks who calls (noting the outcome in
/// the request's extensions for the handler), then takes one of the server's slots, one of its
/// peer's share and one of the caller's. Health and reflection need none of them.
///
/// The peer's share is there because a caller is who the call *says* it is: a client that sets
/// `x-account-id` itself could name a new account for each call and so have every slot; its
/// address it cannot choose so freely.
fn admit(
    limits: &Arc<Limits>,
    kind: Kind,
    request: &mut Request<Body>,
    facts: &CallFacts,
) -> Result<Option<Slot>, ApiError> {
    let caller = match kind {
        Kind::Infrastructure => return Ok(None),
        Kind::Tenant => {
            let admitted = with_metadata(request, |metadata, extensions| {
                limits
                    .gate
                    .admit_tenant(metadata, extensions, |account_id| {
                        let _ = facts.account.set(account_id.to_owned());
                    })
            })?;
            let Admitted::Account(account_id) = &admitted else {
                unreachable!("a tenant call is admitted as its account");
            };
            let caller = format!("account/{account_id}");
            request.extensions_mut().insert(admitted);
            Some(caller)
        }
        Kind::Admin => {
            let admitted = with_metadata(request, |metadata, _| limits.gate.admit_admin(metadata))?;
            request.extensions_mut().insert(admitted);
            Some("admin".to_owned())
        }
        // A path of no service of ours names no caller: its peer's share is all it takes.
        Kind::Unknown => None,
    };
    // The server's slot first: a full server is overloaded whoever calls.
    let slot = Arc::clone(&limits.slots)
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded {
            limit: limits.max_concurrent,
        })?;
    let busy = |busy: Busy| ApiError::CallerBusy {
        caller: busy.holder,
        limit: busy.limit,
    };
    let peer = limits
        .shares
        .take(peer_key(request.extensions()), limits.per_peer)
        .map_err(busy)?;
    let caller = match caller {
        Some(caller) => Some(
            limits
                .shares
                .take(caller, limits.per_caller)
                .map_err(busy)?,
        ),
        None => None,
    };
    Ok(Some(Slot {
        _slot: slot,
        _peer: peer,
        _caller: caller,
    }))
}

/// `check` on the request's headers as gRPC metadata, and its extensions. The headers are lent,
/// not copied (a copy was an allocation per header, every call), and put back after.
fn with_metadata<T>(
    request: &mut Request<Body>,
    check: impl FnOnce(&MetadataMap, &Extensions) -> T,
) -> T {
    let metadata = MetadataMap::from_headers(std::mem::take(request.headers_mut()));
    let checked = check(&metadata, request.extensions());
    *request.headers_mut() = metadata.into_headers();
    checked
}

/// Whose share of the slots a call's peer counts against ([`peer_of`]); `peer/unknown` never
/// happens in the server (tonic notes every connection's address).
pub(super) fn peer_key(extensions: &Extensions) -> String {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
        .map_or_else(|| "peer/unknown".to_owned(), |addr| peer_of(addr.ip()))
}

/// A call's slot and its places in its peer's and its caller's shares, all given back when
/// dropped.
struct Slot {
    _slot: OwnedSemaphorePermit,
    _peer: Share,
    _caller: Option<Share>,
}

/// When a call must be answered by: `--request-timeout` after it arrived, or the client's
/// `grpc-timeout` when that is shorter.
///
/// Taken in `call`, as the call arrives. tonic starts its own timer for a client's `grpc-timeout`
/// just after `call` returns and, when it fires, drops the call and answers CANCELLED "Timeout
/// expired"; ours is never later, and tonic polls the call before its timer, so the call answers
/// DEADLINE_EXCEEDED `RequestTimeout` first.
#[derive(Clone, Copy)]
struct Deadline {
    at: tokio::time::Instant,
    timeout: Duration,
}

impl Deadline {
    fn of(headers: &HeaderMap, server_timeout: Duration) -> Self {
        let timeout =
            client_timeout(headers).map_or(server_timeout, |client| client.min(server_timeout));
        Self {
            at: tokio::time::Instant::now() + timeout,
            timeout,
        }
    }
}

/// The client's `grpc-timeout`: 1 to 8 digits and a unit (H, M, S, m, u, n). A value that does
/// not parse is ignored, as tonic ignores it.
fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Runs the call by its deadline (API calls only), turning a panic into an error. The body of a
/// call of ours or of the health service is read whole first ([`read_body`]) and must be one
/// message ([`one_message`]); reflection's stream is checked message by message as it passes
/// ([`CheckedFrames`], which notes a fault in `fault`). Either way tonic then reads plain
/// messages and no `grpc-encoding`.
async fn run<S>(
    inner: S,
    request: Request<Body>,
    kind: Kind,
    limits: &Limits,
    deadline: Deadline,
    fault: StreamFault,
) -> Result<Response<Body>, ApiError>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let call = async {
        let limit = limits.max_message_size;
        let reading = reading(kind, request.uri().path());
        let request = match reading {
            Reading::Untouched => request,
            Reading::OneMessage | Reading::Stream => {
                let (mut parts, body) = request.into_parts();
                let gzip = match request_encoding(&parts.headers) {
                    Ok(gzip) => gzip,
                    Err(err) => return Ok(Err(err)),
                };
                parts.headers.remove(GRPC_ENCODING);
                let body = if reading == Reading::Stream {
                    Body::new(CheckedFrames {
                        inner: body,
                        read: BytesMut::new(),
                        gzip,
                        limit,
                        fault,
                        done: false,
                    })
                } else {
                    let read = match read_body(body, limit).await {
                        Ok(read) => read,
                        Err(BodyError::Refused(err)) => return Ok(Err(err)),
                        Err(BodyError::Gone(status)) => return Ok(Ok(status.into_http())),
                    };
                    match one_message(read, gzip, limit) {
                        Ok(message) => Body::new(Full::new(message)),
                        Err(err) => return Ok(Err(err)),
                    }
                };
                Request::from_parts(parts, body)
            }
        };
        AssertUnwindSafe(inner.oneshot(request))
            .catch_unwind()
            .await
            .map(|answered| answered.map_err(|err| ApiError::Routing(err.into())))
    };
    let ran = if kind.is_api() {
        tokio::time::timeout_at(deadline.at, call).await
    } else {
        Ok(call.await)
    };
    match ran {
        Err(_elapsed) => Err(ApiError::DeadlineExceeded {
            timeout: deadline.timeout,
        }),
        Ok(Err(panic)) => Err(ApiError::Panicked {
            message: panic_message(panic.as_ref()),
        }),
        Ok(Ok(answered)) => answered,
    }
}

/// How the layer reads a call's request body before tonic does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Every method of ours (all unary) and the health service's (one request message each,
    /// and the service anyone may call): the one message is read whole before the handler runs.
    OneMessage,
    /// Reflection, a stream both ways: each message is checked as it passes ([`CheckedFrames`]).
    Stream,
    /// An unknown path: tonic answers it without reading.
    Untouched,
}

fn reading(kind: Kind, path: &str) -> Reading {
    match kind {
        Kind::Tenant | Kind::Admin => Reading::OneMessage,
        Kind::Infrastructure if path.starts_with("/grpc.health.v1.Health/") => Reading::OneMessage,
        Kind::Infrastructure => Reading::Stream,
        Kind::Unknown => Reading::Untouched,
    }
}

const GRPC_ENCODING: &str = "grpc-encoding";

/// Whether the call's messages may be gzip-compressed (`grpc-encoding: gzip`). An encoding the
/// server does not take is refused here, with the list it does, for every service alike:
/// tonic would answer a bare UNIMPLEMENTED.
fn request_encoding(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers.get(GRPC_ENCODING).map(HeaderValue::as_bytes) {
        None | Some(b"identity") => Ok(false),
        Some(b"gzip") => Ok(true),
        Some(other) => Err(ApiError::UnsupportedEncoding {
            encoding: String::from_utf8_lossy(other).into_owned(),
        }),
    }
}

fn invalid_request(why: String) -> ApiError {
    ApiError::Invalid(ParseError::InvalidParameter {
        field: "request",
        why,
    })
}

/// Checks a message's five-byte header as soon as it is in: a length within the limit, and a
/// compressed flag of 0, or 1 on a gzip call.
fn check_header(flag: u8, length: usize, gzip: bool, limit: usize) -> Result<(), ApiError> {
    if length > limit {
        return Err(ApiError::RequestTooLarge { limit });
    }
    match (flag, gzip) {
        (0, _) | (1, true) => Ok(()),
        (1, false) => Err(invalid_request(
            "the message is flagged compressed but the call names no grpc-encoding".to_owned(),
        )),
        (flag, _) => Err(invalid_request(format!(
            "the compressed flag is {flag}; it must be 0 or 1"
        ))),
    }
}

/// A message whose header passed [`check_header`], framed as tonic is to read it: uncompressed
/// (gzip inflated, at most `limit` bytes), flag 0.
fn plain_frame(flag: u8, message: &[u8], limit: usize) -> Result<Bytes, ApiError> {
    let inflated;
    let message = if flag == 1 {
        inflated = gunzip(message, limit)
            .map_err(|err| invalid_request(format!("the gzip message does not inflate: {err}")))?
            .ok_or(ApiError::RequestTooLarge { limit })?;
        &inflated[..]
    } else {
        message
    };
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(message.len() as u32);
    framed.put_slice(message);
    Ok(framed.freeze())
}

/// A unary call's body as tonic is to read it: exactly one gRPC message (a flag byte, a
/// four-byte length, the bytes), uncompressed, at most `max_message_size` bytes inflated. What
/// tonic would answer INTERNAL without details (a length past the body, no message, a flag of
/// 2 or 255, a compressed flag without `grpc-encoding`, gzip that does not inflate) is the
/// client's fault, and a message over the limit, compressed or not, is `RequestTooLarge`.
fn one_message(body: Bytes, gzip: bool, max_message_size: usize) -> Result<Bytes, ApiError> {
    if body.is_empty() {
        return Err(invalid_request(
            "the call has no request message".to_owned(),
        ));
    }
    let Some((&flag, rest)) = body.split_first() else {
        unreachable!("the body is not empty");
    };
    let Some((length, message)) = rest.split_first_chunk::<4>() else {
        return Err(invalid_request(format!(
            "the body has {} bytes, fewer than the 5 of a message's header",
            body.len()
        )));
    };
    let length = u32::from_be_bytes(*length) as usize;
    check_header(flag, length, gzip, max_message_size)?;
    if message.len() < length {
        return Err(invalid_request(format!(
            "the message header announces {length} bytes but {} follow",
            message.len()
        )));
    }
    if message.len() > length {
        return Err(invalid_request(
            "the body holds more than the one message of a unary call".to_owned(),
        ));
    }
    plain_frame(flag, message, max_message_size)
}

/// The first fault found in a streaming call's request messages, for its answer.
type StreamFault = Arc<Mutex<Option<ApiError>>>;

/// A streaming request body (reflection's) checked message by message as tonic reads it, with
/// the rules of [`one_message`]: each message it passes on is whole, uncompressed and within the
/// limit. At the first fault it notes the fault and ends the stream there, so the handler
/// answers what came before and [`InfraStream`] ends the answer with the fault's status.
struct CheckedFrames {
    inner: Body,
    read: BytesMut,
    gzip: bool,
    limit: usize,
    fault: StreamFault,
    done: bool,
}

impl CheckedFrames {
    /// The next whole message in `read`, once its bytes are all in.
    fn next_message(&mut self) -> Result<Option<Bytes>, ApiError> {
        let Some((&flag, rest)) = self.read.split_first() else {
            return Ok(None);
        };
        let Some(length) = rest.first_chunk::<4>() else {
            return Ok(None);
        };
        let length = u32::from_be_bytes(*length) as usize;
        // The header is checked before the message is waited for (a flood is refused early).
        check_header(flag, length, self.gzip, self.limit)?;
        if self.read.len() < 5 + length {
            return Ok(None);
        }
        let message = self.read.split_to(5 + length);
        plain_frame(flag, &message[5..], self.limit).map(Some)
    }

    fn fail(&mut self, fault: ApiError) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        let mut noted = self.fault.lock().unwrap_or_else(PoisonError::into_inner);
        noted.get_or_insert(fault);
        Poll::Ready(None)
    }
}

impl http_body::Body for CheckedFrames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(Frame::data(message)))),
                Ok(None) => {}
                Err(fault) => return this.fail(fault),
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                // A reset stream is passed on: nobody is listening for an answer.
                Some(Err(status)) => return Poll::Ready(Some(Err(status))),
                // A request's trailers carry nothing gRPC uses.
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.read.extend_from_slice(&data);
                    }
                }
                None if this.read.is_empty() => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                None => {
                    let why = match this.read.len() {
                        short @ 1..5 => format!(
                            "the stream ends {short} bytes into the 5 of a message's header"
                        ),
                        read => format!(
                            "the message header announces {} bytes but {} follow",
                            u32::from_be_bytes(this.read[1..5].try_into().expect("4 bytes")),
                            read - 5
                        ),
                    };
                    return this.fail(invalid_request(why));
                }
            }
        }
    }
}

/// Inflates a gzip message, stopping one byte past `limit`: `None` when it inflates past it.
fn gunzip(compressed: &[u8], limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut inflated)?;
    Ok((inflated.len() <= limit).then_some(inflated))
}

/// Why a request body was not read.
enum BodyError {
    /// The call is answered with this error.
    Refused(ApiError),
    /// The client reset the stream: nobody is listening; this status is for the log line.
    Gone(Status),
}

/// Reads a unary call's whole request body: its first bytes within [`BODY_START_TIMEOUT`] of the
/// headers (the rest within the call's own deadline), at most one framed message of
/// `max_message_size`.
async fn read_body(mut body: Body, max_message_size: usize) -> Result<Bytes, BodyError> {
    // The gRPC frame: a flag byte and a four-byte length before the message.
    let limit = max_message_size.saturating_add(5);
    let mut read = BytesMut::new();
    let started = tokio::time::Instant::now();
    loop {
        let frame = if read.is_empty() {
            let deadline = started + BODY_START_TIMEOUT;
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(frame) => frame,
                Err(_elapsed) => {
                    return Err(BodyError::Refused(ApiError::BodyTimeout {
                        timeout: BODY_START_TIMEOUT,
                    }));
                }
            }
        } else {
            body.frame().await
        };
        match frame {
            None => return Ok(read.freeze()),
            Some(Err(_reset)) => {
                return Err(BodyError::Gone(Status::cancelled(
                    "the client reset the stream before its request arrived",
                )));
            }
            Some(Ok(frame)) => {
                // A request's trailers carry nothing gRPC uses.
                if let Ok(data) = frame.into_data() {
                    if read.len() + data.len() > limit {
                        return Err(BodyError::Refused(ApiError::RequestTooLarge {
                            limit: max_message_size,
                        }));
                    }
                    read.extend_from_slice(&data);
                }
            }
        }
    }
}

/// The method's name for logs and metrics, and what kind of service it belongs to.
fn route(path: &str) -> (String, Kind) {
    let known = path
        .strip_prefix('/')
        .and_then(|path| path.split_once('/'))
        .and_then(|(service, method)| {
            let (_, kind) = SERVICES.iter().find(|(name, _)| *name == service)?;
            let plain = !method.is_empty()
                && method.len() <= 64
                && method.bytes().all(|b| b.is_ascii_alphanumeric());
            plain.then(|| (method.to_owned(), *kind))
        });
    known.unwrap_or_else(|| ("unknown".to_owned(), Kind::Unknown))
}

/// A client's `x-request-id`, if it is one we can log as is.
fn client_request_id(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(REQUEST_ID_HEADER)?.to_str().ok()?;
    let printable = value.bytes().all(|b| b.is_ascii_graphic());
    (!value.is_empty() && value.len() <= MAX_CLIENT_REQUEST_ID && printable).then_some(value)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// One call's log line and metrics, written when the answer is known, or when the call is
/// dropped unanswered (the client cancelled, or its own deadline passed).
struct CallRecord {
    method: String,
    kind: Kind,
    client_request_id: Option<String>,
    facts: Arc<CallFacts>,
    started: Instant,
    finished: bool,
}

impl CallRecord {
    fn new(
        method: String,
        kind: Kind,
        client_request_id: Option<String>,
        facts: Arc<CallFacts>,
    ) -> Self {
        Self {
            method,
            kind,
            client_request_id,
            facts,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Writes the line of a call answered with `headers` (a response's, or a stream's trailers)
    /// and, when the layer made the answer, its `status`.
    fn finish(&mut self, headers: &HeaderMap, status: Option<&Status>) {
        self.finished = true;
        // A trailers-only answer (every error) carries grpc-status in its headers; a success
        // sends its status in trailers, after the body.
        let code = headers
            .get(Status::GRPC_STATUS)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<i32>().ok())
            .map_or(Code::Ok, Code::from);
        let reason = status
            .and_then(|status| status.get_error_details().error_info().cloned())
            .map(|info| info.reason)
            .unwrap_or_default();
        let cause = status
            .and_then(|status| std::error::Error::source(status))
            .map(error_chain);
        self.write(code, &reason, cause.as_deref());
    }

    fn write(&self, code: Code, reason: &str, cause: Option<&str>) {
        let latency = self.started.elapsed();
        let code_name = code_name(code);
        metric::rpc(&self.method, code_name, reason, latency);
        let latency_ms = latency.as_secs_f64() * 1e3;
        let cause = cause.unwrap_or("");
        let client_request_id = self.client_request_id.as_deref().unwrap_or("");
        let account = CallFacts::get(&self.facts.account);
        let disk = CallFacts::get(&self.facts.disk);
        let snapshot = CallFacts::get(&self.facts.snapshot);
        // The `rpc` span exists for this line alone, entered once: a span entered around the
        // whole call was entered at every poll of the call and of sqlx's futures inside it,
        // which take the current span (41 times a create; bench/README.md).
        let span = tracing::info_span!(
            "rpc",
            method = %self.method,
            request_id = self.facts.request_id.as_str()
        );
        let _entered = span.enter();
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    code = code_name,
                    reason,
                    latency_ms,
                    client_request_id,
                    account,
                    disk,
                    snapshot,
                    cause,
                    "call finished"
                )
            };
        }
        match (code, self.kind) {
            // A probe or a reflection client hanging up mid-stream (grpcurl does) is routine.
            (Code::Ok | Code::Cancelled, Kind::Infrastructure) => line!(debug),
            (Code::Ok, _) => line!(info),
            (Code::Internal | Code::Unknown | Code::DataLoss, _) => line!(error),
            (Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted, _) => {
                line!(warn)
            }
            _ => line!(info),
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if !self.finished {
            self.write(
                Code::Cancelled,
                "",
                Some("dropped before its answer: the client went away or its deadline passed"),
            );
        }
    }
}

/// The answer body of a health or reflection call. It ends with UNAVAILABLE once the drain
/// starts: the inner body is polled first, so whatever it already has (the NOT_SERVING update)
/// is sent before the end. When [`CheckedFrames`] found a fault in the request stream, the
/// stream's trailers are the fault's status instead of the handler's. A reflection stream's log
/// line (`record`) is written with the trailers that end it.
struct InfraStream {
    inner: Body,
    ended: Pin<Box<WaitForCancellationFutureOwned>>,
    fault: StreamFault,
    request_id: RequestId,
    record: Option<CallRecord>,
    done: bool,
}

impl InfraStream {
    /// The stream's last frame: `trailers`, or the fault's status when there is one.
    fn end(&mut self, trailers: HeaderMap) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        let fault = self
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let (trailers, status) = match fault {
            None => (trailers, None),
            Some(fault) => {
                let status = fault.into_status(self.request_id.as_str());
                (status_trailers(&status)?, Some(status))
            }
        };
        if let Some(mut record) = self.record.take() {
            record.finish(&trailers, status.as_ref());
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

fn status_trailers(status: &Status) -> Result<HeaderMap, Status> {
    let mut trailers = HeaderMap::new();
    status
        .add_header(&mut trailers)
        .map_err(|_| Status::internal("building a stream's trailers"))?;
    Ok(trailers)
}

impl http_body::Body for InfraStream {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                // tonic always ends with trailers; a body without them still gets a status.
                this.end(status_trailers(&Status::ok(""))?)
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(trailers) => this.end(trailers),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(Some(Err(status))) => {
                this.done = true;
                if let Some(mut record) = this.record.take() {
                    record.finish(&status_trailers(&status)?, Some(&status));
                }
                Poll::Ready(Some(Err(status)))
            }
            Poll::Pending => match this.ended.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    let shutting_down = Status::unavailable("the server is shutting down");
                    this.end(status_trailers(&shutting_down)?)
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// The canonical upper-case name of a gRPC code, as grpc-go and Envoy print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_request_id_is_an_upper_case_v4_uuid() {
        let request_id = new_request_id();
        assert_eq!(request_id.len(), 36);
        assert_eq!(request_id, request_id.to_uppercase());
        assert!(uuid::Uuid::parse_str(&request_id).is_ok());
        assert_ne!(new_request_id(), request_id);
    }

    use super::*;

    #[test]
    fn only_known_services_name_their_methods() {
        let (method, kind) = route("/ecs.snapshot.v1.SnapshotService/CreateSnapshot");
        assert_eq!(method, "CreateSnapshot");
        assert!(kind == Kind::Tenant);
        let (method, kind) = route("/grpc.health.v1.Health/Watch");
        assert_eq!(method, "Watch");
        assert!(kind == Kind::Infrastructure);
        for hostile in [
            "/",
            "/x.Y/Z",
            "/ecs.snapshot.v1.SnapshotService/",
            "/ecs.snapshot.v1.SnapshotService/a/b",
            "/ecs.snapshot.v1.SnapshotService/ünï",
        ] {
            assert_eq!(route(hostile).0, "unknown", "{hostile}");
        }
    }

    /// (what is sent, in the chunks the transport delivers, with or without gzip)
    type FramesCase = (&'static str, Vec<Vec<u8>>, bool);

    fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut frame = vec![flag];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        frame
    }

    /// Runs `chunks` through [`CheckedFrames`]: the messages it passes on, and its fault.
    async fn checked(chunks: Vec<Vec<u8>>, gzip: bool) -> (Vec<Bytes>, Option<String>) {
        let chunks = chunks
            .into_iter()
            .map(|chunk| Ok::<_, Status>(Frame::data(Bytes::from(chunk))));
        let fault = StreamFault::default();
        let body = CheckedFrames {
            inner: Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
                chunks,
            ))),
            read: BytesMut::new(),
            gzip,
            limit: 64,
            fault: fault.clone(),
            done: false,
        };
        let passed = body.collect().await.expect("no reset").to_bytes();
        let mut messages = Vec::new();
        let mut rest = &passed[..];
        while let Some((header, tail)) = rest.split_first_chunk::<5>() {
            assert_eq!(header[0], 0, "passed on uncompressed");
            let length = u32::from_be_bytes(header[1..].try_into().unwrap()) as usize;
            messages.push(Bytes::copy_from_slice(&tail[..length]));
            rest = &tail[length..];
        }
        let fault = fault.lock().unwrap().take().map(|fault| fault.to_string());
        (messages, fault)
    }

    #[tokio::test]
    async fn a_stream_passes_on_whole_plain_messages_however_they_are_cut() {
        let two = [frame(0, b"first"), frame(0, b"second")].concat();
        let gzipped = {
            use std::io::Write;
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), Default::default());
            encoder.write_all(b"inflated").unwrap();
            frame(1, &encoder.finish().unwrap())
        };
        let cases: [FramesCase; 5] = [
            ("two messages in one chunk", vec![two.clone()], false),
            (
                "a byte at a time",
                two.iter().map(|byte| vec![*byte]).collect(),
                false,
            ),
            (
                "cut inside a header",
                vec![two[..3].to_vec(), two[3..].to_vec()],
                false,
            ),
            ("nothing at all", vec![], false),
            ("gzip", vec![gzipped], true),
        ];
        for (case, chunks, gzip) in cases {
            let (messages, fault) = checked(chunks, gzip).await;
            assert_eq!(fault, None, "{case}");
            let expected: &[&[u8]] = match case {
                "nothing at all" => &[],
                "gzip" => &[b"inflated"],
                _ => &[b"first", b"second"],
            };
            assert_eq!(messages, expected, "{case}");
        }
    }

    #[tokio::test]
    async fn a_stream_ends_at_its_first_faulty_message_and_notes_why() {
        let good = frame(0, b"ok");
        let cases: [(FramesCase, &str); 6] = [
            (
                ("flag 2", vec![good.clone(), frame(2, b"x")], false),
                "compressed flag is 2",
            ),
            (
                ("flag 1 without gzip", vec![frame(1, b"x")], false),
                "names no grpc-encoding",
            ),
            (
                ("corrupt gzip", vec![frame(1, b"not gzip")], true),
                "does not inflate",
            ),
            (
                ("over the limit", vec![frame(0, &[0; 65])], false),
                "over 64 bytes",
            ),
            (
                ("ends in a header", vec![good.clone(), vec![0, 0]], false),
                "2 bytes into",
            ),
            (
                (
                    "ends in a message",
                    vec![frame(0, b"cut")[..6].to_vec()],
                    false,
                ),
                "announces 3 bytes but 1 follow",
            ),
        ];
        for ((case, chunks, gzip), why) in cases {
            let (messages, fault) = checked(chunks, gzip).await;
            let fault = fault.unwrap_or_else(|| panic!("{case}: a fault"));
            assert!(fault.contains(why), "{case}: {fault}");
            let before: &[&[u8]] = match case {
                "flag 2" | "ends in a header" => &[b"ok"],
                _ => &[],
            };
            assert_eq!(messages, before, "{case}: what came before the fault");
        }
    }

    #[test]
    fn client_request_ids_are_kept_only_when_printable_and_short() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("trace-42"));
        assert_eq!(client_request_id(&headers), Some("trace-42"));
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("a b"));
        assert_eq!(client_request_id(&headers), None);
        let long = "x".repeat(MAX_CLIENT_REQUEST_ID + 1);
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_str(&long).unwrap());
        assert_eq!(client_request_id(&headers), None);
    }
}
