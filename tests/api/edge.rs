//! The edge every call passes through (`src/grpc/layer.rs`, `call.rs`, `throttle.rs`), against
//! the real server over a real socket with a real tonic client:
//!
//! - request ids: `x-request-id` metadata equals the body's `request_id` or the error's
//!   `RequestInfo`, is the service's own (never the client's), and is new for every call;
//! - the request timeout: DEADLINE_EXCEEDED `RequestTimeout`, and the transaction it cut short
//!   leaves no lock and no row;
//! - load shedding: past `max_concurrent_requests`, UNAVAILABLE `ServiceUnavailable` (cause
//!   `overloaded`) with RetryInfo at once, while health checks still answer;
//! - panic catching: INTERNAL `InternalError` without the panic's text, nothing written, and the
//!   server keeps serving;
//! - per-account throttling: RESOURCE_EXHAUSTED `Throttling` with RetryInfo past an account's
//!   burst, other accounts and the admin API untouched, identity checked first; off by default.
//!
//! Timeout, shedding and panic run on both backends: each cuts a CreateSnapshot short inside
//! its database transaction, and what that leaves behind (locks, rows) is the store's business.
//! Request ids and throttling are decided before any database work, so one backend (SQLite, the
//! quickest to set up) is enough for them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use snapshotd::backend::{BackendError, CopyState, SimulatedBackend, SnapshotBackend};
use snapshotd::config::RateLimit;
use snapshotd::domain::{Snapshot, Timestamp};
use snapshotd::pb;
use snapshotd::pb::snapshot_service_client::SnapshotServiceClient;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

use crate::assertions::{Detail, assert_error, assert_internal_error_hiding};
use crate::helpers::{
    Backend, Options, TestApp, as_account, as_admin, create_request, healthy_account,
    put_account_request, spawn_app, spawn_app_with, world,
};
use crate::on_both_backends;

on_both_backends!(
    request_ids_are_the_services_own_new_per_call_and_in_metadata_and_body_or_details,
    an_account_past_its_burst_is_throttled_alone_until_its_retry_delay_has_passed,
    without_a_rate_limit_no_call_is_throttled,
    a_call_past_the_request_timeout_is_deadline_exceeded_and_leaves_no_lock_nor_row,
    past_the_concurrency_limit_calls_are_shed_at_once_while_health_still_answers,
    a_panic_is_internal_without_its_text_and_the_server_keeps_serving,
);

const REQUEST_ID: &str = "x-request-id";

// ---------------------------------------------------------------------------------------------
// Test backends: the simulated backend, with a way to make `start_copy` slow, block or panic.

/// `start_copy` sleeps `delay` while `slow` is set.
struct SlowBackend {
    inner: SimulatedBackend,
    delay: Duration,
    slow: AtomicBool,
    /// Slow `start_copy` calls entered.
    entered: AtomicUsize,
}

impl SlowBackend {
    fn new(delay: Duration) -> Self {
        Self {
            inner: SimulatedBackend::new(256),
            delay,
            slow: AtomicBool::new(false),
            entered: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl SnapshotBackend for SlowBackend {
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError> {
        if self.slow.load(Ordering::SeqCst) {
            self.entered.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
        }
        self.inner.start_copy(snapshot).await
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        self.inner.copy_state(snapshot, now).await
    }

    async fn cancel_copy(&self, snapshot: &Snapshot) -> Result<(), BackendError> {
        self.inner.cancel_copy(snapshot).await
    }
}

/// Once armed, `start_copy` and `copy_state` wait until the test releases them.
struct BlockingBackend {
    inner: SimulatedBackend,
    armed: AtomicBool,
    /// Calls waiting (or that waited) for the release.
    entered: AtomicUsize,
    released: watch::Sender<bool>,
}

impl BlockingBackend {
    fn new() -> Self {
        Self {
            inner: SimulatedBackend::new(256),
            armed: AtomicBool::new(false),
            entered: AtomicUsize::new(0),
            released: watch::Sender::new(false),
        }
    }

    async fn hold(&self) {
        if !self.armed.load(Ordering::SeqCst) {
            return;
        }
        let mut released = self.released.subscribe();
        self.entered.fetch_add(1, Ordering::SeqCst);
        let _ = released.wait_for(|released| *released).await;
    }

    fn release(&self) {
        self.released.send_replace(true);
    }

    /// Waits (at most ten seconds) until `count` calls are held.
    async fn wait_until_holding(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.entered.load(Ordering::SeqCst) < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {count} calls reached the backend",
                self.entered.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[async_trait]
impl SnapshotBackend for BlockingBackend {
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError> {
        self.hold().await;
        self.inner.start_copy(snapshot).await
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        self.hold().await;
        self.inner.copy_state(snapshot, now).await
    }

    async fn cancel_copy(&self, snapshot: &Snapshot) -> Result<(), BackendError> {
        self.inner.cancel_copy(snapshot).await
    }
}

/// What the panicking backend panics with; it must never reach a client.
const PANIC_TEXT: &str = "start_copy exploded: secret-internal-detail-7f3a";

/// `start_copy` panics while `armed` is set.
struct PanickingBackend {
    inner: SimulatedBackend,
    armed: AtomicBool,
    panics: AtomicUsize,
}

#[async_trait]
impl SnapshotBackend for PanickingBackend {
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError> {
        if self.armed.load(Ordering::SeqCst) {
            self.panics.fetch_add(1, Ordering::SeqCst);
            panic!("{PANIC_TEXT}");
        }
        self.inner.start_copy(snapshot).await
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        self.inner.copy_state(snapshot, now).await
    }

    async fn cancel_copy(&self, snapshot: &Snapshot) -> Result<(), BackendError> {
        self.inner.cancel_copy(snapshot).await
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The one `x-request-id` in `metadata`.
#[track_caller]
fn request_id_in(metadata: &MetadataMap) -> String {
    let ids: Vec<_> = metadata
        .get_all(REQUEST_ID)
        .iter()
        .map(|value| value.to_str().expect("an ASCII request id").to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "exactly one x-request-id in {metadata:?}");
    ids.into_iter().next().unwrap()
}

/// The request id of an error's `RequestInfo`.
#[track_caller]
fn request_info_id(status: &Status) -> String {
    status
        .get_error_details()
        .request_info()
        .expect("RequestInfo")
        .request_id
        .clone()
}

#[track_caller]
fn retry_delay(status: &Status) -> Duration {
    status
        .get_error_details()
        .retry_info()
        .and_then(|retry| retry.retry_delay)
        .expect("RetryInfo with a delay")
}

fn describe_request(account: &str) -> Request<pb::DescribeSnapshotsRequest> {
    as_account(account, pb::DescribeSnapshotsRequest::default())
}

async fn describe(
    client: &mut SnapshotServiceClient<Channel>,
    account: &str,
) -> Result<pb::DescribeSnapshotsResponse, Status> {
    client
        .describe_snapshots(describe_request(account))
        .await
        .map(tonic::Response::into_inner)
}

/// The overall health (`""`), asked on a connection of its own.
async fn health(app: &TestApp) -> ServingStatus {
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .expect("connecting for the health check");
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("Health/Check")
        .into_inner()
        .status()
}

// ---------------------------------------------------------------------------------------------
// 1. Request ids. Assigned by the layer before any database work: one backend is enough.

async fn request_ids_are_the_services_own_new_per_call_and_in_metadata_and_body_or_details(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    app.seed(&world("acct-a", 2)).await;
    let mut client = app.snapshots();

    // A success: the metadata carries the body's id.
    let created = client
        .create_snapshot(as_account("acct-a", create_request("d-acct-a-0")))
        .await
        .expect("CreateSnapshot");
    let created_header = request_id_in(created.metadata());
    let created_body = created.into_inner().request_id;
    assert_eq!(created_header, created_body, "x-request-id is the body's");
    assert!(
        uuid::Uuid::parse_str(&created_body).is_ok(),
        "{created_body}"
    );
    assert_eq!(created_body, created_body.to_uppercase());

    // A refusal: the status metadata carries the RequestInfo's id.
    let refused = client
        .create_snapshot(as_account("acct-a", create_request("d-no-such-disk")))
        .await
        .expect_err("an unknown disk is refused");
    assert_error(
        &refused,
        Code::NotFound,
        "InvalidDiskId.NotFound",
        "404",
        Detail::ResourceInfo("disk"),
    );
    let refused_id = request_info_id(&refused);
    assert_eq!(request_id_in(refused.metadata()), refused_id);

    // A client's own x-request-id is kept for the logs, never returned in place of ours.
    let mut request = describe_request("acct-a");
    request
        .metadata_mut()
        .insert(REQUEST_ID, "corr-123".parse().unwrap());
    let described = client
        .describe_snapshots(request)
        .await
        .expect("DescribeSnapshots");
    let described_header = request_id_in(described.metadata());
    let described = described.into_inner();
    assert_ne!(described_header, "corr-123");
    assert_eq!(described_header, described.request_id);
    assert_eq!(described.snapshots.len(), 1);

    // The same on a refusal.
    let mut request = as_account("acct-a", create_request("d-no-such-disk"));
    request
        .metadata_mut()
        .insert(REQUEST_ID, "corr-123".parse().unwrap());
    let refused_again = client.create_snapshot(request).await.unwrap_err();
    let refused_again_id = request_info_id(&refused_again);
    assert_ne!(refused_again_id, "corr-123");
    assert_eq!(request_id_in(refused_again.metadata()), refused_again_id);

    // Every call got an id of its own, the same request twice included.
    let second = client
        .create_snapshot(as_account("acct-a", create_request("d-acct-a-1")))
        .await
        .expect("CreateSnapshot");
    let second_header = request_id_in(second.metadata());
    assert_eq!(second_header, second.into_inner().request_id);
    let ids: HashSet<_> = [
        &created_body,
        &refused_id,
        &described_header,
        &refused_again_id,
        &second_header,
    ]
    .into_iter()
    .collect();
    assert_eq!(ids.len(), 5, "five calls, five ids: {ids:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. The request timeout.

const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

async fn a_call_past_the_request_timeout_is_deadline_exceeded_and_leaves_no_lock_nor_row(
    backend: Backend,
) {
    // The copy would take ten times the timeout.
    let slow = Arc::new(SlowBackend::new(REQUEST_TIMEOUT * 10));
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| config.request_timeout = REQUEST_TIMEOUT),
            snapshot_backend: slow.clone(),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;

    slow.slow.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let status = app
        .create_on("acct-a", "d-acct-a-0")
        .await
        .expect_err("a call slower than the request timeout");
    let elapsed = started.elapsed();
    let metadata = assert_error(
        &status,
        Code::DeadlineExceeded,
        "RequestTimeout",
        "504",
        Detail::None,
    );
    assert_eq!(
        metadata.get("timeoutMs").map(String::as_str),
        Some("500"),
        "{metadata:?}"
    );
    assert_eq!(status.message(), "The request processing has timed out.");
    assert_eq!(request_id_in(status.metadata()), request_info_id(&status));
    assert_eq!(
        slow.entered.load(Ordering::SeqCst),
        1,
        "the call was cut short inside start_copy, in its transaction"
    );
    assert!(
        elapsed >= REQUEST_TIMEOUT && elapsed < Duration::from_millis(2500),
        "answered at the timeout, not when the copy ended: {elapsed:?}"
    );
    assert_eq!(app.count_rows("snapshots").await, 0, "nothing was written");

    // The cut transaction held the disk (PostgreSQL) or the database (SQLite); a leftover lock
    // would make this call wait past the timeout.
    slow.slow.store(false, Ordering::SeqCst);
    let started = Instant::now();
    let created = app
        .create_on("acct-a", "d-acct-a-0")
        .await
        .expect("the timed-out call left no lock on the disk");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "promptly: {:?}",
        started.elapsed()
    );
    assert_eq!(
        app.count_rows("snapshots").await,
        1,
        "only the second call's snapshot"
    );
    let listed = describe(&mut app.snapshots(), "acct-a").await.unwrap();
    let ids: Vec<_> = listed.snapshots.iter().map(|s| &s.snapshot_id).collect();
    assert_eq!(ids, [&created.snapshot_id]);
    app.assert_invariants().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Load shedding.

async fn past_the_concurrency_limit_calls_are_shed_at_once_while_health_still_answers(
    backend: Backend,
) {
    let blocking = Arc::new(BlockingBackend::new());
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| {
                config.max_concurrent_requests = 2;
                // Not under test: the held calls must outlive the checks on a slow machine.
                config.request_timeout = Duration::from_secs(60);
            }),
            snapshot_backend: blocking.clone(),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 2)).await;

    // Two calls take both slots and wait in the backend: a create in start_copy, and a
    // DescribeSnapshots in copy_state for a snapshot made beforehand. (Not two creates: SQLite's
    // BEGIN IMMEDIATE, and on PostgreSQL a create lane's batch, may hold the second create back
    // before it reaches the backend.)
    app.create_on("acct-a", "d-acct-a-1")
        .await
        .expect("CreateSnapshot");
    blocking.armed.store(true, Ordering::SeqCst);
    let first = tokio::spawn({
        let mut client = app.snapshots();
        async move {
            client
                .create_snapshot(as_account("acct-a", create_request("d-acct-a-0")))
                .await
                .map(|_| ())
        }
    });
    let second = tokio::spawn({
        let mut client = app.snapshots();
        async move {
            client
                .describe_snapshots(describe_request("acct-a"))
                .await
                .map(|_| ())
        }
    });
    blocking.wait_until_holding(2).await;

    let mut client = app.snapshots();
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), describe(&mut client, "acct-a"))
        .await
        .expect("a third call is answered, not queued")
        .expect_err("a third call is shed");
    let elapsed = started.elapsed();
    let metadata = assert_error(
        &status,
        Code::Unavailable,
        "ServiceUnavailable",
        "503",
        Detail::RetryInfo,
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "shed at once: {elapsed:?}"
    );
    assert_eq!(
        metadata.get("cause").map(String::as_str),
        Some("overloaded"),
        "{metadata:?}"
    );
    assert_eq!(
        metadata.get("concurrencyLimit").map(String::as_str),
        Some("2"),
        "{metadata:?}"
    );
    let delay = retry_delay(&status);
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    assert_eq!(request_id_in(status.metadata()), request_info_id(&status));

    // A write is shed the same way (it does not queue behind the held calls).
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        app.create_on("acct-a", "d-acct-a-0"),
    )
    .await
    .expect("a create is answered, not queued")
    .expect_err("a create is shed too");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // A probe sees an overloaded server as alive.
    let probe = tokio::time::timeout(Duration::from_secs(5), health(&app));
    assert_eq!(
        probe.await.expect("the health check is answered"),
        ServingStatus::Serving
    );
    assert_eq!(
        blocking.entered.load(Ordering::SeqCst),
        2,
        "the shed calls never reached the backend"
    );

    blocking.release();
    first
        .await
        .unwrap()
        .expect("the first held call succeeds once released");
    second
        .await
        .unwrap()
        .expect("the second held call succeeds once released");

    // Their slots are free again.
    let listed = describe(&mut client, "acct-a")
        .await
        .expect("admitted once the slots are free");
    assert_eq!(listed.snapshots.len(), 2);
    assert_eq!(app.count_rows("snapshots").await, 2);
    app.assert_invariants().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Panic catching.

async fn a_panic_is_internal_without_its_text_and_the_server_keeps_serving(backend: Backend) {
    let panicking = Arc::new(PanickingBackend {
        inner: SimulatedBackend::new(256),
        armed: AtomicBool::new(false),
        panics: AtomicUsize::new(0),
    });
    let app = spawn_app_with(
        backend,
        Options {
            snapshot_backend: panicking.clone(),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    let mut client = app.snapshots();

    panicking.armed.store(true, Ordering::SeqCst);
    let status = client
        .create_snapshot(as_account("acct-a", create_request("d-acct-a-0")))
        .await
        .expect_err("the handler panicked");
    assert_eq!(
        panicking.panics.load(Ordering::SeqCst),
        1,
        "the call reached start_copy and panicked there"
    );
    assert_internal_error_hiding(&status, &[]);
    assert_eq!(
        status.message(),
        "The request processing has failed due to some unknown error, exception or failure."
    );
    let everything_sent = format!("{status:?} {:?}", status.get_error_details());
    for secret in ["secret-internal-detail", "exploded", "panicked"] {
        assert!(
            !everything_sent.contains(secret),
            "{secret:?} reached the client: {everything_sent}"
        );
    }
    assert_eq!(request_id_in(status.metadata()), request_info_id(&status));
    assert_eq!(app.count_rows("snapshots").await, 0, "nothing was written");

    // The same channel still serves.
    let listed = describe(&mut client, "acct-a")
        .await
        .expect("the server still serves after a panic");
    assert!(listed.snapshots.is_empty());

    // And the panicked transaction left no lock behind.
    panicking.armed.store(false, Ordering::SeqCst);
    tokio::time::timeout(
        Duration::from_secs(5),
        client.create_snapshot(as_account("acct-a", create_request("d-acct-a-0"))),
    )
    .await
    .expect("no lock left by the panicked transaction")
    .expect("CreateSnapshot on the same disk");
    assert_eq!(app.count_rows("snapshots").await, 1);
    app.assert_invariants().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Throttling. The buckets are in memory and checked before any database work; the tests run
// on both backends all the same, as the rest of the suite does.

async fn an_account_past_its_burst_is_throttled_alone_until_its_retry_delay_has_passed(
    backend: Backend,
) {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| {
                config.rate_limit = Some(RateLimit {
                    per_second: 1,
                    burst: 3,
                });
            }),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    app.seed(&world("acct-b", 1)).await;

    // The admin API is not throttled.
    let mut inventory = app.inventory();
    for n in 0..10 {
        inventory
            .put_account(as_admin(put_account_request(healthy_account("acct-a"))))
            .await
            .unwrap_or_else(|status| panic!("PutAccount {n} of 10: {status:?}"));
    }

    // The identity comes first: a call without one (or with a malformed one) is refused for
    // that, however many are made, and drains nobody's bucket.
    let mut client = app.snapshots();
    for _ in 0..5 {
        let status = client
            .describe_snapshots(Request::new(pb::DescribeSnapshotsRequest::default()))
            .await
            .expect_err("no identity");
        assert_error(
            &status,
            Code::Unauthenticated,
            "InvalidIdentity.Missing",
            "401",
            Detail::None,
        );
        let status = client
            .describe_snapshots(describe_request("not an id!"))
            .await
            .expect_err("a malformed identity");
        assert_error(
            &status,
            Code::Unauthenticated,
            "InvalidIdentity.Malformed",
            "401",
            Detail::None,
        );
    }

    // The burst, then the account waits.
    let burst_started = Instant::now();
    for n in 0..3 {
        describe(&mut client, "acct-a")
            .await
            .unwrap_or_else(|status| panic!("call {n} of the burst: {status:?}"));
    }
    let after_burst = describe(&mut client, "acct-a").await;
    // The guard before the assertion: past a second, the bucket has refilled a token and the
    // fourth call is rightly admitted; that says the machine is slow, not that throttling broke.
    let burst_took = burst_started.elapsed();
    assert!(
        burst_took < Duration::from_secs(1),
        "the machine is too slow for this test: four calls took {burst_took:?}"
    );
    let status = after_burst.expect_err("the call after the burst is throttled");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "Request was denied due to user flow control."
    );
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "Throttling");
    assert_eq!(info.domain, "snapshotd.ecs");
    let meta = |key: &str| info.metadata.get(key).map(String::as_str);
    assert_eq!(meta("httpStatus"), Some("403"), "{:?}", info.metadata);
    assert_eq!(meta("accountId"), Some("acct-a"), "{:?}", info.metadata);
    assert_eq!(meta("ratePerSecond"), Some("1"), "{:?}", info.metadata);
    assert_eq!(meta("burst"), Some("3"), "{:?}", info.metadata);
    let quota = details.quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations.len(), 1);
    assert_eq!(quota.violations[0].subject, "account/acct-a");
    let delay = retry_delay(&status);
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    assert_eq!(request_id_in(status.metadata()), request_info_id(&status));

    // Another account has a bucket of its own.
    for n in 0..3 {
        describe(&mut client, "acct-b")
            .await
            .unwrap_or_else(|status| panic!("acct-b call {n}: {status:?}"));
    }

    // Waiting as told is enough (the sleep is what is tested: exactly the RetryInfo delay).
    tokio::time::sleep(delay).await;
    describe(&mut client, "acct-a")
        .await
        .expect("admitted after waiting the RetryInfo delay");
}

async fn without_a_rate_limit_no_call_is_throttled(backend: Backend) {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| {
                assert_eq!(config.rate_limit, None, "throttling is off by default");
            }),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world("acct-a", 1)).await;
    let mut client = app.snapshots();
    for n in 0..20 {
        describe(&mut client, "acct-a")
            .await
            .unwrap_or_else(|status| panic!("call {n} of 20: {status:?}"));
    }
}
