//! Hostile clients at the edge, speaking raw HTTP/2 (the `h2` crate) where a tonic client would
//! never misbehave: streams that send headers and no body, callers that try to take every slot.
//!
//! The slots of `--max-concurrent-requests` go only to a caller the server knows (an account,
//! the admin) once its rate limit admits it; one caller holds at most three quarters of them; a
//! body that does not start within the header-to-body timeout frees its slot; and the server
//! advertises a bound on the streams of one connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use snapshotd::pb;
use tonic::{Code, Status};

use crate::assertions::{Detail, assert_error};
use crate::helpers::{Backend, Options, TestApp, as_account, spawn_app_with, world};
use crate::on_both_backends;

on_both_backends!(
    headers_only_streams_without_identity_take_no_slot_and_a_real_account_is_served,
    one_account_cannot_take_every_slot,
    the_rate_limit_applies_before_a_call_takes_a_slot,
    a_stream_whose_body_never_starts_is_answered_and_frees_its_slot,
);

const CREATE: &str = "/ecs.snapshot.v1.SnapshotService/CreateSnapshot";

async fn app_with(
    backend: Backend,
    configure: impl FnOnce(&mut snapshotd::Config) + Send + 'static,
) -> TestApp {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(configure),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 2)).await;
    app
}

// ---------------------------------------------------------------------------------------------
// A raw gRPC peer over h2

/// One HTTP/2 connection on which the test opens gRPC streams by hand.
struct RawGrpc {
    addr: SocketAddr,
    client: SendRequest<Bytes>,
}

impl RawGrpc {
    async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connecting");
        Self::handshake(addr, tcp).await
    }

    /// Connects from another loopback address (all of 127.0.0.0/8 is local on Linux), so the
    /// server sees another peer.
    async fn connect_from(addr: SocketAddr, local: std::net::Ipv4Addr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from((local, 0)))
            .unwrap_or_else(|err| panic!("binding {local}: {err}"));
        let tcp = socket.connect(addr).await.expect("connecting");
        Self::handshake(addr, tcp).await
    }

    async fn handshake(addr: SocketAddr, tcp: tokio::net::TcpStream) -> Self {
        tcp.set_nodelay(true).unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.expect("the h2 handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { addr, client }
    }

    fn request(&self, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", self.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    /// Opens a stream that sends its headers and nothing else: no body, no end of stream. The
    /// sender must be kept, or the stream is reset.
    async fn open_headers_only(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (ResponseFuture, h2::SendStream<Bytes>) {
        let request = self.request(path, headers);
        let mut client = self.client.clone().ready().await.expect("a stream");
        client
            .send_request(request, false)
            .expect("opening a stream")
    }

    /// A whole call: headers, then `body` (none at all when `None`), and the server's answer.
    async fn call(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Status {
        let request = self.request(path, headers);
        let mut client = self.client.clone().ready().await.expect("a stream");
        let (response, mut send) = client
            .send_request(request, body.is_none())
            .expect("opening a stream");
        if let Some(body) = body {
            // The server may answer on the headers alone (no identity) and close the stream
            // before the body goes out: its answer is what counts.
            let _ = send.send_data(Bytes::from(body), true);
        }
        tokio::time::timeout(Duration::from_secs(15), answer(response))
            .await
            .expect("the call is answered")
    }
}

/// The gRPC status a stream was answered with (trailers-only, or after the body).
async fn answer(response: ResponseFuture) -> Status {
    status_of(response.await.expect("a response")).await
}

/// The gRPC status of a response (trailers-only, or after the body).
async fn status_of(response: http::Response<h2::RecvStream>) -> Status {
    if let Some(status) = Status::from_header_map(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the response body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body
        .trailers()
        .await
        .expect("the trailers")
        .expect("trailers with a grpc-status");
    Status::from_header_map(&trailers).expect("a grpc-status in the trailers")
}

/// How long a wait "until the server has answered" may take before the test fails: the CI
/// machine is a noisy 2-core VM, and nothing here should take more than a fraction of this.
const PATIENCE: Duration = Duration::from_secs(15);

/// How long the server waits for a body to start (`grpc::layer::BODY_START_TIMEOUT`, the
/// `timeoutMs` of `RequestBodyTimeout`): a headers-only stream that was admitted holds its slot
/// this long, then is answered and its slot freed.
const BODY_START_TIMEOUT: Duration = Duration::from_secs(2);

/// Headers-only streams the test watches: which of them the server has answered so far. The
/// tests wait on these answers instead of sleeping "long enough for the server to see them".
struct Watched {
    streams: Vec<(ResponseFuture, h2::SendStream<Bytes>)>,
    answers: Vec<Option<http::Response<h2::RecvStream>>>,
}

impl Watched {
    fn new(streams: Vec<(ResponseFuture, h2::SendStream<Bytes>)>) -> Self {
        let answers = streams.iter().map(|_| None).collect();
        Self { streams, answers }
    }

    /// Takes every answer that has come, without waiting; returns how many have come in all.
    fn collect(&mut self) -> usize {
        use futures::FutureExt;
        for ((response, _send), answer) in self.streams.iter_mut().zip(&mut self.answers) {
            if answer.is_none() {
                *answer = response
                    .now_or_never()
                    .map(|response| response.expect("a response"));
            }
        }
        self.answers
            .iter()
            .filter(|answer| answer.is_some())
            .count()
    }

    /// Polls until at least `count` streams are answered; fails naming `what` at `deadline`.
    /// The deadline is the header-to-body timeout after the streams opened: past it, the
    /// streams that wait for their bodies are answered too, and counting answers tells nothing.
    async fn until_answered(&mut self, count: usize, deadline: Instant, what: &str) {
        loop {
            let answered = self.collect();
            if answered >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {answered} of {} streams answered within the header-to-body timeout \
                 ({BODY_START_TIMEOUT:?}), {count} expected",
                self.streams.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Which streams have been answered so far (after [`Self::collect`]).
    fn answered(&self) -> Vec<bool> {
        self.answers.iter().map(Option::is_some).collect()
    }

    /// Every stream's final status, waiting (up to [`PATIENCE`]) for those not answered yet.
    async fn statuses(self) -> Vec<Status> {
        // The senders stay open until every answer is in, so no stream is reset meanwhile.
        let (responses, _sends): (Vec<_>, Vec<_>) = self.streams.into_iter().unzip();
        let mut statuses = Vec::new();
        for (response, answered) in responses.into_iter().zip(self.answers) {
            let status = match answered {
                Some(response) => status_of(response).await,
                None => tokio::time::timeout(PATIENCE, answer(response))
                    .await
                    .expect("every stream is answered in the end"),
            };
            statuses.push(status);
        }
        statuses
    }
}

/// Sends each case on `raw`; every answer must be INVALID_ARGUMENT `InvalidParameter` with
/// BadRequest(`request`). The cases that are not are named together.
async fn assert_each_is_an_invalid_request(raw: &mut RawGrpc, cases: Vec<Case<'_>>) {
    let mut answers = Vec::new();
    for (case, path, headers, body) in cases {
        answers.push((case, raw.call(path, headers, body).await));
    }
    let wrong: Vec<_> = answers
        .iter()
        .filter(|(_, status)| status.code() != Code::InvalidArgument)
        .map(|(case, status)| format!("{case}: {:?} {:?}", status.code(), status.message()))
        .collect();
    assert!(
        wrong.is_empty(),
        "not INVALID_ARGUMENT:\n{}",
        wrong.join("\n")
    );
    for (_, status) in &answers {
        assert_error(
            status,
            Code::InvalidArgument,
            "InvalidParameter",
            "400",
            Detail::BadRequest("request"),
        );
    }
}

/// A gRPC message frame: the compressed flag, the length, the bytes.
fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// `Throttling`: RESOURCE_EXHAUSTED with ErrorInfo, RequestInfo, QuotaFailure and RetryInfo.
#[track_caller]
fn assert_throttled(status: &Status) -> std::collections::HashMap<String, String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "Throttling", "{status:?}");
    assert_eq!(
        info.metadata.get("httpStatus").map(String::as_str),
        Some("403")
    );
    assert!(
        details.request_info().is_some(),
        "RequestInfo in {status:?}"
    );
    assert!(
        details.quota_failure().is_some(),
        "QuotaFailure in {status:?}"
    );
    assert!(details.retry_info().is_some(), "RetryInfo in {status:?}");
    info.metadata.clone()
}

async fn describe_as(
    app: &TestApp,
    account: &str,
) -> Result<pb::DescribeSnapshotsResponse, Status> {
    let request = pb::DescribeSnapshotsRequest {
        max_results: 10,
        ..Default::default()
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        app.snapshots()
            .describe_snapshots(as_account(account, request)),
    )
    .await
    .expect("the call is answered")
    .map(tonic::Response::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Slots go to known callers only

/// The review's repro: `--max-concurrent-requests 32 --rate-limit 5,5`, 40 streams with headers
/// only and no `x-account-id` on one connection, then a real account calls.
async fn headers_only_streams_without_identity_take_no_slot_and_a_real_account_is_served(
    backend: Backend,
) {
    let app = app_with(backend, |config| {
        config.max_concurrent_requests = 32;
        config.rate_limit = Some("5,5".parse().unwrap());
        config.request_timeout = Duration::from_secs(30);
    })
    .await;
    let mut raw = RawGrpc::connect(app.addr).await;
    let opened = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..40 {
        streams.push(raw.open_headers_only(CREATE, &[]).await);
    }
    // The server has seen every stream once it has answered each: no sleep "long enough".
    // Their bodies never come, so an anonymous stream that waited for one would not be
    // answered before the header-to-body timeout.
    let mut streams = Watched::new(streams);
    streams
        .until_answered(
            40,
            opened + BODY_START_TIMEOUT,
            "an anonymous stream is answered at once, before its body",
        )
        .await;

    let served = describe_as(&app, "acct-a").await;

    served.expect("a real account is served while 40 anonymous streams wait for their bodies");
    for status in streams.statuses().await {
        assert_error(
            &status,
            Code::Unauthenticated,
            "InvalidIdentity.Missing",
            "401",
            Detail::None,
        );
    }
}

/// An account that opens more streams than there are slots gets at most three quarters of them;
/// another account is still served. Both come from one address, as behind a sidecar, with the
/// peer's share lifted as docs/operations.md says to there.
async fn one_account_cannot_take_every_slot(backend: Backend) {
    let app = app_with(backend, |config| {
        config.max_concurrent_requests = 32;
        config.max_concurrent_requests_per_peer = Some(32);
        config.request_timeout = Duration::from_secs(30);
    })
    .await;
    let mut raw = RawGrpc::connect(app.addr).await;
    let opened = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..40 {
        streams.push(
            raw.open_headers_only(CREATE, &[("x-account-id", "acct-a")])
                .await,
        );
    }
    // No sleep for the server to see the streams: the ones beyond acct-a's share are refused
    // at once, and each refusal means acct-a held its whole share at that moment.
    let mut streams = Watched::new(streams);
    streams
        .until_answered(
            40 - 24,
            opened + BODY_START_TIMEOUT,
            "acct-a's streams beyond its share are refused at once",
        )
        .await;

    let served = describe_as(&app, "acct-b").await;

    // The guard before the assertions: an admitted stream holds its slot until the
    // header-to-body timeout; past it the slots are free and the call above proves nothing.
    let took = opened.elapsed();
    assert!(
        took < BODY_START_TIMEOUT,
        "the machine is too slow for this test: acct-b was answered {took:?} after acct-a's \
         streams opened, when their slots may already be free"
    );
    served.expect("another account is served while acct-a holds what it may");
    // acct-a's streams beyond its share were refused at once; the others wait for their bodies
    // (still unanswered when acct-b was served), then are answered for the missing body.
    streams.collect();
    let answered_when_served = streams.answered();
    let mut refused = 0;
    let mut waiting = 0;
    for (status, answered) in streams.statuses().await.iter().zip(answered_when_served) {
        if answered {
            let metadata = assert_throttled(status);
            assert_eq!(
                metadata.get("cause").map(String::as_str),
                Some("concurrency"),
                "{metadata:?}"
            );
            assert_eq!(
                metadata.get("concurrencyLimit").map(String::as_str),
                Some("24"),
                "{metadata:?}"
            );
            refused += 1;
        } else {
            assert_waited_for_its_body(status);
            waiting += 1;
        }
    }
    assert_eq!(refused, 40 - 24, "acct-a holds 24 of the 32 slots");
    assert_eq!(waiting, 24);
}

/// A stream that held its slot and never sent its body: answered `RequestBodyTimeout` once the
/// header-to-body timeout passed.
#[track_caller]
fn assert_waited_for_its_body(status: &Status) {
    let metadata = assert_error(
        status,
        Code::DeadlineExceeded,
        "RequestBodyTimeout",
        "408",
        Detail::None,
    );
    assert_eq!(
        metadata.get("timeoutMs").map(String::as_str),
        Some("2000"),
        "{metadata:?}"
    );
}

/// With `--rate-limit 5,5`, an account's sixth call in a burst is throttled before it takes a
/// slot, whether or not its body ever comes.
async fn the_rate_limit_applies_before_a_call_takes_a_slot(backend: Backend) {
    let app = app_with(backend, |config| {
        config.max_concurrent_requests = 32;
        config.rate_limit = Some("5,5".parse().unwrap());
        config.request_timeout = Duration::from_secs(30);
    })
    .await;
    let mut raw = RawGrpc::connect(app.addr).await;
    let mut streams = Vec::new();
    for _ in 0..40 {
        streams.push(
            raw.open_headers_only(CREATE, &[("x-account-id", "acct-a")])
                .await,
        );
    }

    let mut throttled = 0;
    for (mut response, _send) in streams {
        if let Ok(response) = tokio::time::timeout(Duration::from_millis(100), &mut response).await
        {
            let response = response.expect("a response");
            let status = Status::from_header_map(response.headers()).expect("trailers-only");
            if status.code() == Code::ResourceExhausted {
                assert_throttled(&status);
                throttled += 1;
            }
        }
    }
    assert!(
        throttled >= 40 - 5 - 1,
        "the burst of 5 (and perhaps one token more) is admitted, the rest is throttled at \
         once: {throttled} throttled"
    );
}

/// A call whose headers came but whose body does not start within the header-to-body timeout is
/// answered DEADLINE_EXCEEDED long before `--request-timeout`, and its slot is free again.
async fn a_stream_whose_body_never_starts_is_answered_and_frees_its_slot(backend: Backend) {
    let app = app_with(backend, |config| {
        config.max_concurrent_requests = 1;
        config.request_timeout = Duration::from_secs(30);
    })
    .await;
    let mut raw = RawGrpc::connect(app.addr).await;
    let started = Instant::now();
    let (response, _send) = raw
        .open_headers_only(CREATE, &[("x-account-id", "acct-a")])
        .await;

    let status = tokio::time::timeout(Duration::from_secs(6), answer(response))
        .await
        .expect("answered within the header-to-body timeout, not the 30 s request timeout");

    let elapsed = started.elapsed();
    let metadata = assert_error(
        &status,
        Code::DeadlineExceeded,
        "RequestBodyTimeout",
        "408",
        Detail::None,
    );
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(
        metadata.get("timeoutMs").map(String::as_str),
        Some("2000"),
        "{metadata:?}"
    );
    describe_as(&app, "acct-a")
        .await
        .expect("the only slot is free again");
    // A whole call on the same raw connection is served as usual.
    let request = prost::Message::encode_to_vec(&pb::DescribeSnapshotsRequest::default());
    let status = raw
        .call(
            "/ecs.snapshot.v1.SnapshotService/DescribeSnapshots",
            &[("x-account-id", "acct-a")],
            Some(framed(0, &request)),
        )
        .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
}

/// The server bounds the streams of one connection (SETTINGS_MAX_CONCURRENT_STREAMS).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_advertises_a_bound_on_the_streams_of_a_connection() {
    let app = app_with(Backend::Sqlite, |_| {}).await;
    let mut raw = RawGrpc::connect(app.addr).await;
    // One round trip, so the server's SETTINGS have been read.
    let request = prost::Message::encode_to_vec(&pb::DescribeSnapshotsRequest::default());
    let status = raw
        .call(
            "/ecs.snapshot.v1.SnapshotService/DescribeSnapshots",
            &[("x-account-id", "acct-a")],
            Some(framed(0, &request)),
        )
        .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");

    let bound = raw.client.current_max_send_streams();

    assert_eq!(bound, 100, "SETTINGS_MAX_CONCURRENT_STREAMS");
}

// ---------------------------------------------------------------------------------------------
// Malformed gRPC frames, the client's deadline, a gzip bomb

/// A valid CreateSnapshot message for acct-a's first disk.
fn create_message() -> Vec<u8> {
    prost::Message::encode_to_vec(&crate::helpers::create_request("d-acct-a-0"))
}

/// A call of the table: what it is, its path, its headers, its body (none: END_STREAM at once).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<Vec<u8>>);

/// Frames that are not one well-formed gRPC message are the client's fault: INVALID_ARGUMENT
/// `InvalidParameter` with BadRequest(`request`), ErrorInfo and RequestInfo, like a message that
/// does not decode; nothing is written, and the server goes on.
async fn malformed_grpc_frames_are_invalid_argument_with_details(backend: Backend) {
    let app = app_with(backend, |_| {}).await;
    let tenant = [("x-account-id", "acct-a")];
    let gzip_tenant = [("x-account-id", "acct-a"), ("grpc-encoding", "gzip")];
    let bearer = format!("Bearer {}", crate::helpers::ADMIN_TOKEN);
    let admin = [("authorization", bearer.as_str())];
    let mut longer_prefix = framed(0, &create_message());
    longer_prefix.truncate(longer_prefix.len() - 3);
    let mut two_messages = framed(0, &create_message());
    two_messages.extend(framed(0, &create_message()));
    let cases: Vec<Case> = vec![
        (
            "a length prefix longer than the body",
            CREATE,
            &tenant,
            Some(longer_prefix),
        ),
        (
            "no message at all (headers with END_STREAM)",
            CREATE,
            &tenant,
            None,
        ),
        ("an empty body", CREATE, &tenant, Some(Vec::new())),
        (
            "a body shorter than the frame header",
            CREATE,
            &tenant,
            Some(vec![0, 0, 0]),
        ),
        (
            "two messages in a unary call",
            CREATE,
            &tenant,
            Some(two_messages),
        ),
        (
            "the compressed flag without grpc-encoding",
            CREATE,
            &tenant,
            Some(framed(1, &create_message())),
        ),
        (
            "corrupt gzip",
            CREATE,
            &gzip_tenant,
            Some(framed(1, b"\x1f\x8b\x08\x00not gzip at all")),
        ),
        (
            "compressed flag 2",
            CREATE,
            &tenant,
            Some(framed(2, &create_message())),
        ),
        (
            "compressed flag 255",
            CREATE,
            &tenant,
            Some(framed(255, &create_message())),
        ),
        (
            "an admin call with the compressed flag 255",
            "/ecs.snapshot.v1.InventoryService/GetDisk",
            &admin,
            Some(framed(255, b"")),
        ),
        (
            "an admin call with no message",
            "/ecs.snapshot.v1.InventoryService/GetDisk",
            &admin,
            None,
        ),
    ];
    let mut raw = RawGrpc::connect(app.addr).await;
    assert_each_is_an_invalid_request(&mut raw, cases).await;
    assert_eq!(app.count_rows("snapshots").await, 0);

    // Without an identity or the admin token, the same frames are refused for that first.
    let status = raw.call(CREATE, &[], Some(framed(255, b""))).await;
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidIdentity.Missing",
        "401",
        Detail::None,
    );
    let status = raw
        .call("/ecs.snapshot.v1.InventoryService/GetDisk", &[], None)
        .await;
    assert_error(
        &status,
        Code::Unauthenticated,
        "InvalidAdminToken",
        "401",
        Detail::None,
    );
    // A well-formed gzip message is served as before.
    let status = raw
        .call(
            CREATE,
            &gzip_tenant,
            Some(framed(1, &gzip(&create_message()))),
        )
        .await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(app.count_rows("snapshots").await, 1);
}

/// A client's `grpc-timeout` shorter than the call is the call's deadline: DEADLINE_EXCEEDED
/// `RequestTimeout` with the client's timeout, as for `--request-timeout`.
async fn a_clients_grpc_timeout_is_deadline_exceeded_request_timeout(backend: Backend) {
    let app = app_with(backend, |config| {
        config.request_timeout = Duration::from_secs(30);
    })
    .await;
    let mut raw = RawGrpc::connect(app.addr).await;
    let started = Instant::now();
    // Headers only: the call cannot finish before the client's 300 ms are over.
    let (response, _send) = raw
        .open_headers_only(
            CREATE,
            &[("x-account-id", "acct-a"), ("grpc-timeout", "300m")],
        )
        .await;

    let status = tokio::time::timeout(Duration::from_secs(5), answer(response))
        .await
        .expect("answered when the client's deadline passes");

    let metadata = assert_error(
        &status,
        Code::DeadlineExceeded,
        "RequestTimeout",
        "504",
        Detail::None,
    );
    assert_eq!(
        metadata.get("timeoutMs").map(String::as_str),
        Some("300"),
        "{metadata:?}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

/// A gzip message that inflates past `--max-message-size` (here 1 GiB of zeros, 6.5 MB
/// compressed, against an 8 MiB limit) is `RequestTooLarge` with its details; the server stops
/// inflating at the limit and goes on serving.
async fn a_gzip_bomb_is_request_too_large_with_details(backend: Backend) {
    let limit = 8 * 1024 * 1024;
    let app = app_with(backend, move |config| config.max_message_size = limit).await;
    let bomb = gzip_bomb(1 << 30);
    assert!(bomb.len() < limit as usize, "{}", bomb.len());
    let mut raw = RawGrpc::connect(app.addr).await;

    let status = raw
        .call(
            CREATE,
            &[("x-account-id", "acct-a"), ("grpc-encoding", "gzip")],
            Some(framed(1, &bomb)),
        )
        .await;

    let metadata = assert_error(
        &status,
        Code::ResourceExhausted,
        "RequestTooLarge",
        "413",
        Detail::BadRequest("request"),
    );
    assert_eq!(
        metadata.get("maxMessageBytes").map(String::as_str),
        Some(limit.to_string().as_str())
    );
    app.create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the server keeps serving");
}

/// A message's gzip encoding, as a client would send it.
fn gzip(message: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(message).unwrap();
    encoder.finish().unwrap()
}

/// A gzip member that inflates to at least `size` zero bytes, written by hand (one fixed-Huffman
/// deflate block: a literal 0, then matches of 258 bytes at distance 1, 13 bits each) because
/// compressing a gigabyte in a debug build takes minutes. The CRC is left 0: a reader that
/// honours its limit stops long before it.
fn gzip_bomb(size: usize) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        used: u32,
    }
    impl Bits {
        /// Deflate packs bits from the least significant; Huffman codes go most significant
        /// bit first.
        fn code(&mut self, code: u32, len: u32) {
            let reversed = code.reverse_bits() >> (32 - len);
            self.acc |= u64::from(reversed) << self.used;
            self.used += len;
            while self.used >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.used -= 8;
            }
        }
    }
    let matches = size.div_ceil(258);
    let mut bits = Bits {
        out: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
        acc: 0,
        used: 0,
    };
    bits.code(1, 1); // BFINAL
    bits.code(0b10, 2); // BTYPE 01 (fixed Huffman), written least significant bit first
    bits.code(0x30, 8); // literal 0
    for _ in 0..matches {
        bits.code(0xc5, 8); // length 258 (symbol 285)
        bits.code(0, 5); // distance 1
    }
    bits.code(0, 7); // end of block
    if bits.used > 0 {
        bits.out.push(bits.acc as u8);
    }
    let inflated = (1 + 258 * matches) as u32;
    bits.out.extend_from_slice(&0u32.to_le_bytes());
    bits.out.extend_from_slice(&inflated.to_le_bytes());
    bits.out
}

/// The health service needs no identity, so its frames are checked alike: a malformed one is
/// INVALID_ARGUMENT with details, not an INTERNAL logged at ERROR.
async fn malformed_frames_to_the_health_service_are_invalid_argument_too(backend: Backend) {
    let app = app_with(backend, |_| {}).await;
    let mut raw = RawGrpc::connect(app.addr).await;
    let check = "/grpc.health.v1.Health/Check";
    let mut longer_prefix = framed(0, b"");
    longer_prefix[4] = 9;
    let cases: Vec<Case> = vec![
        ("compressed flag 255", check, &[], Some(framed(255, b""))),
        ("no message at all", check, &[], None),
        (
            "a length prefix longer than the body",
            check,
            &[],
            Some(longer_prefix),
        ),
        (
            "the compressed flag without grpc-encoding",
            check,
            &[],
            Some(framed(1, b"")),
        ),
    ];
    assert_each_is_an_invalid_request(&mut raw, cases).await;
    // A well-formed check (the empty HealthCheckRequest: readiness) is answered as before.
    let status = raw.call(check, &[], Some(framed(0, b""))).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
}

on_both_backends!(
    malformed_frames_to_the_health_service_are_invalid_argument_too,
    malformed_grpc_frames_are_invalid_argument_with_details,
    a_clients_grpc_timeout_is_deadline_exceeded_request_timeout,
    a_gzip_bomb_is_request_too_large_with_details,
);

// ---------------------------------------------------------------------------------------------
// The edge's own answers, whatever the store: these run on SQLite only, since no store is
// touched before the edge answers (or only to show that another call is still served).

/// A client that sets `x-account-id` itself and names a new account per call still holds at
/// most its peer's share: three quarters of the slots by default, or
/// `--max-concurrent-requests-per-peer`; a call from another address is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_peer_cannot_take_every_slot_whatever_accounts_it_names() {
    // (the per-peer setting, the slots the flooding peer holds)
    let rows: [(Option<u32>, usize); 2] = [(None, 24), (Some(10), 10)];
    for (per_peer, held) in rows {
        let app = app_with(Backend::Sqlite, move |config| {
            config.max_concurrent_requests = 32;
            config.max_concurrent_requests_per_peer = per_peer;
            config.request_timeout = Duration::from_secs(30);
        })
        .await;
        let mut flood = RawGrpc::connect(app.addr).await;
        let accounts: Vec<String> = (0..40).map(|n| format!("acct-rotating-{n}")).collect();
        let opened = Instant::now();
        let mut streams = Vec::new();
        for account in &accounts {
            streams.push(
                flood
                    .open_headers_only(CREATE, &[("x-account-id", account)])
                    .await,
            );
        }
        // No sleep for the server to see the streams: the ones beyond the peer's share are
        // refused at once, and each refusal means the peer held its whole share at that moment.
        let mut streams = Watched::new(streams);
        streams
            .until_answered(
                40 - held,
                opened + BODY_START_TIMEOUT,
                &format!("{per_peer:?}: the peer's streams beyond its share are refused at once"),
            )
            .await;

        let mut other_peer = RawGrpc::connect_from(app.addr, [127, 0, 0, 2].into()).await;
        let request = prost::Message::encode_to_vec(&pb::DescribeSnapshotsRequest::default());
        let served = other_peer
            .call(
                "/ecs.snapshot.v1.SnapshotService/DescribeSnapshots",
                &[("x-account-id", "acct-a")],
                Some(framed(0, &request)),
            )
            .await;

        // The guard before the assertions: an admitted stream holds its slot until the
        // header-to-body timeout; past it the slots are free and the call above proves nothing.
        let took = opened.elapsed();
        assert!(
            took < BODY_START_TIMEOUT,
            "the machine is too slow for this test: 127.0.0.2 was answered {took:?} after the \
             flood opened, when its slots may already be free"
        );
        assert_eq!(served.code(), Code::Ok, "{per_peer:?}: {served:?}");
        // Answered by then: refused; still unanswered: holding a slot, until the missing body
        // is answered.
        streams.collect();
        let answered_when_served = streams.answered();
        let mut refused = 0;
        let mut waiting = 0;
        for (status, answered) in streams.statuses().await.iter().zip(answered_when_served) {
            if !answered {
                assert_waited_for_its_body(status);
                waiting += 1;
                continue;
            }
            let metadata = assert_throttled(status);
            assert_eq!(
                metadata.get("concurrencyLimit"),
                Some(&held.to_string()),
                "{per_peer:?}: {metadata:?}"
            );
            let subject = tonic_types::StatusExt::get_details_quota_failure(status)
                .expect("QuotaFailure")
                .violations[0]
                .subject
                .clone();
            assert_eq!(subject, "peer/127.0.0.1", "{per_peer:?}");
            refused += 1;
        }
        assert_eq!(
            (waiting, refused),
            (held, 40 - held),
            "{per_peer:?}: the peer holds {held} of the 32 slots"
        );
    }
}

/// `grpc.reflection.v1.ServerReflection/ServerReflectionInfo` (or v1alpha's).
fn reflection(version: &str) -> String {
    format!("/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo")
}

/// A ServerReflectionRequest asking for the list of services (field 7, `list_services`).
const LIST_SERVICES: &[u8] = &[0x3a, 0x01, b'*'];

/// Reflection needs no identity and is a stream both ways: its frames are checked as they pass,
/// with the rules of the unary calls. A malformed one is INVALID_ARGUMENT with details (before:
/// INTERNAL, logged at ERROR), and a gzip request is inflated like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_frames_on_the_reflection_stream_are_invalid_argument_too() {
    let app = app_with(Backend::Sqlite, |_| {}).await;
    let mut raw = RawGrpc::connect(app.addr).await;
    let gzip_headers = [("grpc-encoding", "gzip")];
    for version in ["v1", "v1alpha"] {
        let path = reflection(version);
        let mut longer_prefix = framed(0, LIST_SERVICES);
        longer_prefix.truncate(longer_prefix.len() - 1);
        let mut good_then_flag_2 = framed(0, LIST_SERVICES);
        good_then_flag_2.extend(framed(2, LIST_SERVICES));
        let cases: Vec<Case> = vec![
            (
                "a length prefix longer than the body",
                path.as_str(),
                &[],
                Some(longer_prefix),
            ),
            (
                "the compressed flag without grpc-encoding",
                path.as_str(),
                &[],
                Some(framed(1, LIST_SERVICES)),
            ),
            (
                "compressed flag 2",
                path.as_str(),
                &[],
                Some(framed(2, LIST_SERVICES)),
            ),
            (
                "compressed flag 255",
                path.as_str(),
                &[],
                Some(framed(255, LIST_SERVICES)),
            ),
            (
                "corrupt gzip",
                path.as_str(),
                &gzip_headers,
                Some(framed(1, b"\x1f\x8b\x08\x00not gzip at all")),
            ),
            (
                "a good request, then compressed flag 2",
                path.as_str(),
                &[],
                Some(good_then_flag_2),
            ),
        ];
        assert_each_is_an_invalid_request(&mut raw, cases).await;

        // Well-formed requests, plain and gzip, are answered as before.
        for (headers, body) in [
            (&[][..], framed(0, LIST_SERVICES)),
            (&gzip_headers[..], framed(1, &gzip(LIST_SERVICES))),
        ] {
            let status = raw.call(&path, headers, Some(body)).await;
            assert_eq!(status.code(), Code::Ok, "{version} {headers:?}: {status:?}");
        }
    }
}

/// An encoding the server does not take is UNIMPLEMENTED (the gRPC code) with the usual details
/// and `grpc-accept-encoding` naming what it does take, for every service (before: tonic's bare
/// UNIMPLEMENTED, with no ErrorInfo nor RequestInfo).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsupported_grpc_encoding_is_unimplemented_with_details() {
    let app = app_with(Backend::Sqlite, |_| {}).await;
    let mut raw = RawGrpc::connect(app.addr).await;
    let bearer = format!("Bearer {}", crate::helpers::ADMIN_TOKEN);
    let tenant = [("x-account-id", "acct-a")];
    let admin = [("authorization", bearer.as_str())];
    let v1 = reflection("v1");
    // Headers besides grpc-encoding; every body is flagged compressed.
    let cases: Vec<Case> = vec![
        (
            "CreateSnapshot",
            CREATE,
            &tenant,
            Some(framed(1, &create_message())),
        ),
        (
            "GetDisk",
            "/ecs.snapshot.v1.InventoryService/GetDisk",
            &admin,
            Some(framed(1, b"")),
        ),
        (
            "Health/Check",
            "/grpc.health.v1.Health/Check",
            &[],
            Some(framed(1, b"")),
        ),
        (
            "Health/Watch",
            "/grpc.health.v1.Health/Watch",
            &[],
            Some(framed(1, b"")),
        ),
        ("reflection", &v1, &[], Some(framed(1, LIST_SERVICES))),
    ];
    for encoding in ["br", "zstd", "x-\u{fc}nknown"] {
        for (case, path, headers, body) in &cases {
            let mut headers = headers.to_vec();
            headers.push(("grpc-encoding", encoding));

            let status = raw.call(path, &headers, body.clone()).await;

            let context = format!("{case} with {encoding}");
            assert_eq!(status.code(), Code::Unimplemented, "{context}: {status:?}");
            let metadata = assert_error(
                &status,
                Code::Unimplemented,
                "UnsupportedEncoding",
                "415",
                Detail::None,
            );
            assert_eq!(
                metadata.get("encoding").map(String::as_str),
                Some(encoding),
                "{context}"
            );
            assert_eq!(
                metadata.get("acceptedEncodings").map(String::as_str),
                Some("gzip,identity"),
                "{context}"
            );
            let accepted = status.metadata().get("grpc-accept-encoding");
            assert_eq!(
                accepted.and_then(|value| value.to_str().ok()),
                Some("gzip,identity"),
                "{context}: {:?}",
                status.metadata()
            );
        }
    }
    assert_eq!(app.count_rows("snapshots").await, 0);
}
