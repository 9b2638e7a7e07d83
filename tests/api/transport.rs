//! The HTTP/2 transport as configured in `src/app.rs`: gzip both ways, the message size limit,
//! keepalive PINGs that drop dead peers, and `max_connection_age` (GOAWAY, clients reconnect).
//!
//! These are transport behaviours, the same whatever the store: every test runs on SQLite only.
//! Clients are real tonic channels; where a client must misbehave (never answer a PING, watch for
//! GOAWAY), the test speaks raw HTTP/2 frames over a TCP socket. A small counting TCP proxy shows
//! whether a tonic channel kept its connection or had to open another one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use snapshotd::pb;
use snapshotd::pb::snapshot_service_client::SnapshotServiceClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use crate::helpers::{
    Backend, Options, TestApp, as_account, create_request, finish_copies, spawn_app,
    spawn_app_with, world,
};

const ACCOUNT: &str = "acct-a";
const DISK: &str = "d-acct-a-0";

async fn app_with(configure: impl FnOnce(&mut snapshotd::Config) + Send + 'static) -> TestApp {
    let app = spawn_app_with(
        Backend::Sqlite,
        Options {
            configure: Box::new(configure),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world(ACCOUNT, 2)).await;
    app
}

async fn channel_to(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connecting to the server")
}

fn describe_disk(disk_id: &str) -> pb::DescribeSnapshotsRequest {
    pb::DescribeSnapshotsRequest {
        disk_id: disk_id.to_owned(),
        max_results: 100,
        ..Default::default()
    }
}

fn grpc_encoding<T>(response: &tonic::Response<T>) -> Option<String> {
    response
        .metadata()
        .get("grpc-encoding")
        .map(|v| v.to_str().unwrap().to_owned())
}

// ---------------------------------------------------------------------------------------------
// gzip

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gzip_client_creates_and_describes_and_gets_gzip_answers() {
    let app = app_with(|_| {}).await;
    let channel = channel_to(app.addr).await;
    let mut gzip = SnapshotServiceClient::new(channel.clone())
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);

    // Compressible enough that gzip really has something to do.
    let request = pb::CreateSnapshotRequest {
        description: "compressed ".repeat(20),
        tags: vec![pb::Tag {
            key: "team".into(),
            value: "storage".repeat(10),
        }],
        ..create_request(DISK)
    };
    let created = gzip
        .create_snapshot(as_account(ACCOUNT, request.clone()))
        .await
        .expect("a gzip-compressed CreateSnapshot");
    assert_eq!(
        grpc_encoding(&created).as_deref(),
        Some("gzip"),
        "the answer to a client that accepts gzip is compressed: {:?}",
        created.metadata()
    );
    let snapshot_id = created.into_inner().snapshot_id;

    let described = gzip
        .describe_snapshots(as_account(ACCOUNT, describe_disk(DISK)))
        .await
        .expect("a gzip-compressed DescribeSnapshots");
    assert_eq!(grpc_encoding(&described).as_deref(), Some("gzip"));
    let snapshots = described.into_inner().snapshots;
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(snapshots[0].snapshot_id, snapshot_id);
    assert_eq!(
        snapshots[0].description, request.description,
        "the compressed request arrived intact"
    );
    assert_eq!(snapshots[0].tags, request.tags);

    // A client that neither sends nor accepts gzip, on the same connection, still works and is
    // answered uncompressed.
    let mut plain = SnapshotServiceClient::new(channel);
    let created = plain
        .create_snapshot(as_account(ACCOUNT, create_request("d-acct-a-1")))
        .await
        .expect("a plain CreateSnapshot");
    assert_ne!(
        grpc_encoding(&created).as_deref(),
        Some("gzip"),
        "a client that does not accept gzip gets an uncompressed answer"
    );
    let described = plain
        .describe_snapshots(as_account(ACCOUNT, describe_disk(DISK)))
        .await
        .expect("a plain DescribeSnapshots");
    assert_ne!(grpc_encoding(&described).as_deref(), Some("gzip"));
    assert_eq!(described.into_inner().snapshots.len(), 1);
    assert_eq!(app.count_rows("snapshots").await, 2);
}

// ---------------------------------------------------------------------------------------------
// The message size limit

/// A CreateSnapshot that is valid (20 tags of 128-character keys and values, a 256-character
/// description) but encodes to more than 4096 bytes.
fn large_but_valid_request(disk_id: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        description: "d".repeat(256),
        tags: (0..20)
            .map(|n| pb::Tag {
                key: format!("key{n:02}{}", "k".repeat(123)),
                value: "v".repeat(128),
            })
            .collect(),
        ..create_request(disk_id)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_over_max_message_size_is_resource_exhausted_and_nothing_is_written() {
    let app = app_with(|config| config.max_message_size = 4096).await;
    let large = large_but_valid_request(DISK);
    assert!(large.encoded_len() > 4096, "{}", large.encoded_len());

    let status = app
        .create(ACCOUNT, large.clone())
        .await
        .expect_err("a request over the limit is refused");

    assert_eq!(
        app.count_rows("snapshots").await,
        0,
        "nothing is written for a refused request"
    );
    assert!(
        status.message().contains("too large"),
        "the answer says why: {status:?}"
    );
    // A small request on the same server works.
    let small = create_request(DISK);
    assert!(small.encoded_len() < 4096);
    app.create(ACCOUNT, small)
        .await
        .expect("a request under the limit is served");
    assert_eq!(app.count_rows("snapshots").await, 1);
    // The large request itself is valid: a server with the default limit takes it.
    let roomy = app_with(|_| {}).await;
    roomy
        .create(ACCOUNT, large)
        .await
        .expect("the same request under the default 4 MiB limit");

    // docs/operations.md ("Limits that protect the server") and docs/errors.md (the edge table): a
    // message larger than --max-message-size is answered RESOURCE_EXHAUSTED, as the gRPC
    // status-code spec says.
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "a request over --max-message-size: {status:?}"
    );
    let info = tonic_types::StatusExt::get_error_details(&status)
        .error_info()
        .cloned()
        .expect("an ErrorInfo like every other refusal");
    assert_eq!(info.reason, "RequestTooLarge");
    assert_eq!(
        info.metadata.get("maxMessageBytes").map(String::as_str),
        Some("4096")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_message_size_limit_is_for_requests_and_a_large_answer_is_sent_whole() {
    let app = app_with(|config| config.max_message_size = 4096).await;
    // Each request is under the limit; two snapshots together describe to more than it.
    let request = |n: usize| pb::CreateSnapshotRequest {
        tags: (0..10)
            .map(|t| pb::Tag {
                key: format!("key{n}-{t:02}{}", "k".repeat(120)),
                value: "v".repeat(128),
            })
            .collect(),
        ..create_request(DISK)
    };
    assert!(request(0).encoded_len() < 4096);
    app.create(ACCOUNT, request(0)).await.expect("first");
    finish_copies(&app).await;
    app.create(ACCOUNT, request(1)).await.expect("second");

    // The limit protects the server from what it reads; what it answers is the client's to
    // bound, so a page larger than the request limit arrives whole.
    let both = app
        .snapshots()
        .describe_snapshots(as_account(ACCOUNT, describe_disk(DISK)))
        .await
        .expect("an answer over the request limit is still sent")
        .into_inner();
    assert_eq!(both.snapshots.len(), 2);
    assert!(both.encoded_len() > 4096, "{}", both.encoded_len());
    assert!(both.snapshots.iter().all(|s| s.tags.len() == 10));
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/2

const FRAME_DATA: u8 = 0x0;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// What reading the next frame found.
#[derive(Debug)]
enum Read {
    Frame(Frame),
    /// The server closed the connection (EOF, or a reset).
    Closed(String),
    /// Nothing arrived before the deadline.
    TimedOut,
}

fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut bytes = Vec::with_capacity(9 + payload.len());
    bytes.extend_from_slice(&len.to_be_bytes()[1..]);
    bytes.push(kind);
    bytes.push(flags);
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// A client connection speaking HTTP/2 frames by hand.
struct RawH2 {
    socket: TcpStream,
}

impl RawH2 {
    /// Connects, sends the client preface and an empty SETTINGS frame.
    async fn connect(addr: SocketAddr) -> Self {
        let mut socket = TcpStream::connect(addr).await.expect("connecting");
        socket.set_nodelay(true).unwrap();
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame_bytes(FRAME_SETTINGS, 0, 0, &[]));
        socket.write_all(&hello).await.expect("sending the preface");
        Self { socket }
    }

    async fn send(&mut self, kind: u8, flags: u8, payload: &[u8]) {
        self.socket
            .write_all(&frame_bytes(kind, flags, 0, payload))
            .await
            .expect("sending a frame");
    }

    /// The next frame, unless the server closes the connection or `deadline` passes first.
    async fn read(&mut self, deadline: Instant) -> Read {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.read_frame()).await {
            Err(_) => Read::TimedOut,
            Ok(Err(closed)) => Read::Closed(closed),
            Ok(Ok(frame)) => Read::Frame(frame),
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, String> {
        let mut header = [0u8; 9];
        self.socket
            .read_exact(&mut header)
            .await
            .map_err(|e| format!("{:?}: {e}", e.kind()))?;
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.socket
            .read_exact(&mut payload)
            .await
            .map_err(|e| format!("{:?}: {e}", e.kind()))?;
        Ok(Frame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// ACKs the server's SETTINGS; answers PINGs only when `answer_pings`.
    async fn handle_housekeeping(&mut self, frame: &Frame, answer_pings: bool) {
        if frame.kind == FRAME_SETTINGS && frame.flags & FLAG_ACK == 0 {
            self.send(FRAME_SETTINGS, FLAG_ACK, &[]).await;
        }
        if answer_pings && frame.kind == FRAME_PING && frame.flags & FLAG_ACK == 0 {
            self.send(FRAME_PING, FLAG_ACK, &frame.payload).await;
        }
    }
}

fn is_ping(frame: &Frame) -> bool {
    frame.kind == FRAME_PING && frame.flags & FLAG_ACK == 0 && frame.stream == 0
}

/// A TCP proxy in front of the server that counts the connections made through it.
struct CountingProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let accept_loop = tokio::spawn({
            let connections = connections.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Self {
            addr,
            connections,
            accept_loop,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Keepalive

/// PINGs every 500 ms, answered within 1 s: short enough for a test, long enough that a tonic
/// client on a loaded 2-core machine answers in time (at 300 ms, one PING answer delayed by a
/// busy scheduler drops the connection).
const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(1);

fn fast_keepalive(config: &mut snapshotd::Config) {
    config.keepalive_interval = KEEPALIVE_INTERVAL;
    config.keepalive_timeout = KEEPALIVE_TIMEOUT;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_never_answers_pings_is_dropped() {
    let app = app_with(fast_keepalive).await;
    let mut raw = RawH2::connect(app.addr).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    let mut first_ping: Option<Instant> = None;
    let mut seen = Vec::new();

    let closed = loop {
        match raw.read(deadline).await {
            Read::Frame(frame) => {
                raw.handle_housekeeping(&frame, false).await;
                if is_ping(&frame) && first_ping.is_none() {
                    first_ping = Some(Instant::now());
                }
                seen.push((frame.kind, frame.flags));
            }
            Read::Closed(how) => break Some((Instant::now(), how)),
            Read::TimedOut => break None,
        }
    };

    let first_ping = first_ping.unwrap_or_else(|| {
        panic!("the server sent no PING (frames seen as (type, flags): {seen:?})")
    });
    let (closed_at, how) = closed.unwrap_or_else(|| {
        panic!(
            "the server kept a peer that never answers PINGs for {:?} (frames: {seen:?})",
            deadline - started
        )
    });
    assert!(
        closed_at.duration_since(first_ping) >= KEEPALIVE_TIMEOUT * 3 / 4,
        "the server waited for the PING's answer before closing ({how}; frames: {seen:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_answers_pings_is_kept() {
    let app = app_with(fast_keepalive).await;
    let mut raw = RawH2::connect(app.addr).await;
    // Long enough for several PING rounds, each well past the timeout.
    let deadline = Instant::now() + KEEPALIVE_INTERVAL * 2 + KEEPALIVE_TIMEOUT * 2;
    let mut pings = 0;
    loop {
        match raw.read(deadline).await {
            Read::Frame(frame) => {
                raw.handle_housekeeping(&frame, true).await;
                pings += usize::from(is_ping(&frame));
                assert_ne!(frame.kind, FRAME_GOAWAY, "{frame:?}");
            }
            Read::Closed(how) => {
                panic!("the server dropped a peer that answers its PINGs ({how}) after {pings}")
            }
            Read::TimedOut => break,
        }
    }
    assert!(
        pings >= 2,
        "PINGs every {KEEPALIVE_INTERVAL:?} while idle, got {pings}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tonic_channel_left_idle_answers_pings_and_keeps_its_connection() {
    let app = app_with(fast_keepalive).await;
    let proxy = CountingProxy::start(app.addr).await;
    let mut client = SnapshotServiceClient::new(channel_to(proxy.addr).await);
    client
        .describe_snapshots(as_account(ACCOUNT, describe_disk(DISK)))
        .await
        .expect("before the idle time");

    // The sleep is what is tested: idle through several PING rounds, each past the timeout.
    tokio::time::sleep(KEEPALIVE_INTERVAL * 4 + KEEPALIVE_TIMEOUT).await;

    client
        .create_snapshot(as_account(ACCOUNT, create_request(DISK)))
        .await
        .expect("after several PING rounds idle");
    assert_eq!(
        proxy.connections(),
        1,
        "the idle connection survived the keepalive (no reconnect was needed)"
    );
}

// ---------------------------------------------------------------------------------------------
// max_connection_age

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_older_than_max_connection_age_gets_a_goaway() {
    let app = app_with(|config| config.max_connection_age = Duration::from_millis(500)).await;
    let mut raw = RawH2::connect(app.addr).await;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    let mut seen = Vec::new();

    let goaway = loop {
        match raw.read(deadline).await {
            Read::Frame(frame) if frame.kind == FRAME_GOAWAY => break frame,
            Read::Frame(frame) => {
                raw.handle_housekeeping(&frame, true).await;
                assert_ne!(frame.kind, FRAME_DATA, "no stream was opened: {frame:?}");
                seen.push((frame.kind, frame.flags));
            }
            Read::Closed(how) => panic!(
                "the connection was closed after {:?} without a GOAWAY ({how}; frames: {seen:?})",
                started.elapsed()
            ),
            Read::TimedOut => panic!(
                "no GOAWAY within {:?} of a 500 ms max_connection_age (frames: {seen:?})",
                deadline - started
            ),
        }
    };

    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "GOAWAY only once the connection is old: {:?}",
        started.elapsed()
    );
    assert_eq!(goaway.stream, 0);
    assert!(goaway.payload.len() >= 8, "{goaway:?}");
    let error_code = u32::from_be_bytes(goaway.payload[4..8].try_into().unwrap());
    assert_eq!(error_code, 0, "a graceful GOAWAY (NO_ERROR): {goaway:?}");
}

/// Calls every 200 ms for 3 s through connections retired after 500 ms: each retirement is a
/// GOAWAY the client follows by opening a new connection, and no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tonic_channel_reconnects_past_max_connection_age_without_errors() {
    let app = app_with(|config| config.max_connection_age = Duration::from_millis(500)).await;
    let proxy = CountingProxy::start(app.addr).await;
    let mut client = SnapshotServiceClient::new(channel_to(proxy.addr).await);
    let started = Instant::now();
    let mut calls = 0;
    let mut failures = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        if let Err(status) = client
            .describe_snapshots(as_account(ACCOUNT, describe_disk(DISK)))
            .await
        {
            failures.push(format!(
                "call {calls} at {:?}: {status:?}",
                started.elapsed()
            ));
        }
        calls += 1;
        // Pacing, not a wait: calls spread over several connection lifetimes.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(calls >= 5, "{calls}");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed across connection retirements (connections: {}):\n{}",
        failures.len(),
        proxy.connections(),
        failures.join("\n")
    );
    assert!(
        proxy.connections() >= 2,
        "connections are retired after 500 ms, so the client reconnected: {} connection(s) \
         in 3 s",
        proxy.connections()
    );
}

/// The default server (no fast keepalive, no short age) is what the tests above compare with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn by_default_a_raw_connection_sees_neither_ping_nor_goaway_in_a_second() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut raw = RawH2::connect(app.addr).await;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match raw.read(deadline).await {
            Read::Frame(frame) => {
                raw.handle_housekeeping(&frame, false).await;
                assert!(
                    !is_ping(&frame) && frame.kind != FRAME_GOAWAY,
                    "with the 30 s / 10 min defaults: {frame:?}"
                );
            }
            Read::Closed(how) => panic!("closed: {how}"),
            Read::TimedOut => break,
        }
    }
}
