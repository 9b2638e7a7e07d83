//! Group commit of CreateSnapshot (`src/service/group_commit.rs`), seen from a client over a real
//! socket on a real database:
//!
//! - calls that queue behind a busy lane are written together, in one transaction (PostgreSQL's
//!   `xmin` says which transaction wrote a row);
//! - a caller that goes away before its batch commits gets nothing written;
//! - a batch never waits for a disk another transaction has locked (`SKIP LOCKED`): that call
//!   runs alone later, the rest of the batch is answered at once;
//! - many calls on one disk, or with one client token, in one batch are answered as if they had
//!   run one by one (one snapshot, the others refused or replayed);
//! - callers whose batch's leader goes away during COMMIT are told the
//!   truth about their snapshot.
//!
//! The test decides when batches finish with a gate backend: `start_copy`, which a batch calls
//! inside its transaction before it writes, waits while the gate of its disk is closed. A lane
//! whose leader waits there is busy, so calls that arrive meanwhile queue; once the gate opens,
//! the next leader writes them as one batch. The test never sleeps to let calls arrive: it
//! waits until the server's group-commit backlog (`Service::create_backlog`) and the gates
//! account for every call it sent.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use snapshotd::backend::{BackendError, CopyState, SimulatedBackend, SnapshotBackend};
use snapshotd::domain::{Snapshot, Timestamp};
use snapshotd::pb;
use sqlx::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Code, Status};

use crate::assertions::{Detail, assert_error};
use crate::helpers::{
    Backend, DiskLock, Options, PATIENCE, TestApp, create_request, spawn_app_with, wait_until,
    world,
};
use crate::on_both_backends;

on_both_backends!(
    many_calls_on_one_disk_or_one_token_in_one_batch_are_answered_one_by_one,
    a_caller_that_goes_away_before_its_batch_commits_gets_nothing_written,
);

const ACCOUNT: &str = "acct-gc";

// ---------------------------------------------------------------------------------------------
// The gate backend.

/// Where the copies of some disks wait while it is closed.
struct Gate {
    open: watch::Sender<bool>,
    /// `start_copy` calls waiting here now (a call cancelled while waiting no longer counts).
    waiting: AtomicUsize,
}

impl Gate {
    fn closed() -> Arc<Self> {
        Arc::new(Self {
            open: watch::Sender::new(false),
            waiting: AtomicUsize::new(0),
        })
    }

    fn open(&self) {
        self.open.send_replace(true);
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    async fn pass(&self) {
        let mut open = self.open.subscribe();
        if *open.borrow() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _counted = Waiting(&self.waiting);
        let _ = open.wait_for(|open| *open).await;
    }
}

/// One call counted as waiting at a gate, until it stops waiting or is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The simulated backend, whose `start_copy` first passes its disk's gate (if it has one).
struct GateBackend {
    inner: SimulatedBackend,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    /// `start_copy` calls per disk: a batch written again starts its copies again.
    copies_started: Mutex<HashMap<String, usize>>,
    /// `cancel_copy` calls per disk: a batch rolled back cancels the copies it started.
    copies_cancelled: Mutex<HashMap<String, usize>>,
}

impl GateBackend {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: SimulatedBackend::new(256),
            gates: Mutex::new(HashMap::new()),
            copies_started: Mutex::new(HashMap::new()),
            copies_cancelled: Mutex::new(HashMap::new()),
        })
    }

    /// The copies of `disks` wait at `gate` from now on.
    fn guard(&self, disks: &[String], gate: &Arc<Gate>) {
        let mut gates = self.gates.lock().unwrap();
        for disk in disks {
            gates.insert(disk.clone(), gate.clone());
        }
    }

    fn copies_started(&self, disk: &str) -> usize {
        count_of(&self.copies_started, disk)
    }

    /// Copies started and not cancelled.
    fn copies_live(&self, disk: &str) -> usize {
        self.copies_started(disk) - count_of(&self.copies_cancelled, disk)
    }
}

fn count_of(counts: &Mutex<HashMap<String, usize>>, disk: &str) -> usize {
    counts.lock().unwrap().get(disk).copied().unwrap_or(0)
}

#[async_trait]
impl SnapshotBackend for GateBackend {
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError> {
        *self
            .copies_started
            .lock()
            .unwrap()
            .entry(snapshot.source_disk_id.clone())
            .or_default() += 1;
        let gate = self
            .gates
            .lock()
            .unwrap()
            .get(&snapshot.source_disk_id)
            .cloned();
        if let Some(gate) = gate {
            gate.pass().await;
        }
        self.inner.start_copy(snapshot).await
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        self.inner.copy_state(snapshot, now).await
    }

    async fn cancel_copy(&self, snapshot: &Snapshot) -> Result<(), BackendError> {
        *self
            .copies_cancelled
            .lock()
            .unwrap()
            .entry(snapshot.source_disk_id.clone())
            .or_default() += 1;
        self.inner.cancel_copy(snapshot).await
    }
}

/// Waits until each of the `sent` calls either waits at `gate` or is queued in a lane, and
/// returns how many wait at the gate. The gate is read before the queues: a call moving from a
/// queue to the gate in between is counted in neither, never twice, so the sum is `sent` only
/// when every call is in one of the two places. Every lane then has a batch at the gate, so
/// nothing moves until the gate opens.
async fn wait_until_held(app: &TestApp, gate: &Gate, sent: usize) -> usize {
    wait_until("every call held at the gate or queued", || {
        let at_gate = gate.waiting();
        let backlog = app.service.create_backlog();
        if at_gate + backlog.queued == sent {
            Ok(at_gate)
        } else {
            Err(format!(
                "{at_gate} of {sent} calls at the gate, {backlog:?} (a lane without a gated \
                 call writes the others at once)"
            ))
        }
    })
    .await
}

/// Waits until `want` calls wait at `gate`.
async fn wait_at_gate(gate: &Gate, want: usize) {
    wait_until("every call at the gate", || {
        let at_gate = gate.waiting();
        if at_gate >= want {
            Ok(())
        } else {
            Err(format!("{at_gate} of {want} calls at the gate"))
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// A server whose copies start through `gates`, seeded with [`ACCOUNT`] and `disks` disks.
async fn spawn_gated(backend: Backend, gates: &Arc<GateBackend>, disks: usize) -> Arc<TestApp> {
    let app = spawn_app_with(
        backend,
        Options {
            configure: Box::new(|config| {
                // Calls are held at a gate for seconds: neither the request timeout nor the wait
                // for a pooled connection (calls that run alone each hold one) may end them.
                config.request_timeout = Duration::from_secs(120);
                config.db_acquire_timeout = Duration::from_secs(60);
            }),
            snapshot_backend: gates.clone(),
            ..Options::default()
        },
    )
    .await;
    app.seed(&world(ACCOUNT, disks)).await;
    Arc::new(app)
}

fn disk(n: usize) -> String {
    format!("d-{ACCOUNT}-{n}")
}

fn disks(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(disk).collect()
}

type Call = JoinHandle<Result<pb::CreateSnapshotResponse, Status>>;

/// CreateSnapshot in a task of its own; aborting the task drops the call, which resets its
/// HTTP/2 stream, as a client that cancels does.
fn send(app: &Arc<TestApp>, request: pb::CreateSnapshotRequest) -> Call {
    let app = app.clone();
    tokio::spawn(async move { app.create(ACCOUNT, request).await })
}

fn send_each(app: &Arc<TestApp>, disks: &[String]) -> Vec<Call> {
    disks
        .iter()
        .map(|disk| send(app, create_request(disk)))
        .collect()
}

/// The call's answer; fails the test if there is none within [`PATIENCE`].
async fn answer(call: Call, what: &str) -> Result<pb::CreateSnapshotResponse, Status> {
    tokio::time::timeout(PATIENCE, call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
        .unwrap_or_else(|err| panic!("{what}: the task failed: {err}"))
}

/// Fails the test unless every call answers OK.
async fn all_created(calls: Vec<Call>, what: &str) {
    for (n, call) in calls.into_iter().enumerate() {
        if let Err(status) = answer(call, what).await {
            panic!("{what} #{n} is refused: {status:?}");
        }
    }
}

/// Snapshots per source disk, read straight from the database.
async fn snapshots_per_disk(app: &TestApp) -> HashMap<String, i64> {
    const SQL: &str = "SELECT source_disk_id, COUNT(*) FROM snapshots GROUP BY source_disk_id";
    let rows: Vec<(String, i64)> = match app.backend {
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query_as(SQL).fetch_all(&mut conn).await.unwrap()
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
            sqlx::query_as(SQL).fetch_all(&mut conn).await.unwrap()
        }
    };
    rows.into_iter().collect()
}

/// Fails the test unless each of `disks` has exactly `want` snapshots.
#[track_caller]
fn assert_snapshots(per_disk: &HashMap<String, i64>, disks: &[String], want: i64) {
    for disk in disks {
        let have = per_disk.get(disk).copied().unwrap_or(0);
        assert_eq!(have, want, "snapshots of {disk}");
    }
}

/// How many transactions wrote the snapshots of `disks` (PostgreSQL: a row's `xmin` is the
/// transaction that inserted it).
async fn writing_transactions(app: &TestApp, disks: &[String]) -> i64 {
    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query_scalar(
        "SELECT COUNT(DISTINCT xmin::text) FROM snapshots WHERE source_disk_id = ANY($1)",
    )
    .bind(disks)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_queued_behind_busy_lanes_are_written_together_in_few_transactions() {
    let gates = GateBackend::new();
    let app = spawn_gated(Backend::Postgres, &gates, 64).await;
    let (blockers, queued) = (disks(0..32), disks(32..64));
    let gate = Gate::closed();
    gates.guard(&blockers, &gate);

    // The blockers' leaders wait at the gate, inside their transactions: every lane is busy.
    let blocking = send_each(&app, &blockers);
    let held = wait_until_held(&app, &gate, blockers.len()).await;
    let queueing = send_each(&app, &queued);
    wait_until_held(&app, &gate, blockers.len() + queued.len()).await;
    gate.open();

    all_created(blocking, "a blocker").await;
    all_created(queueing, "a queued call").await;
    let per_disk = snapshots_per_disk(&app).await;
    assert_snapshots(&per_disk, &blockers, 1);
    assert_snapshots(&per_disk, &queued, 1);
    let transactions = writing_transactions(&app, &queued).await;
    println!(
        "{held} blocker calls held at the gate; the {} queued calls were written by \
         {transactions} transactions",
        queued.len()
    );
    assert!(
        transactions <= 16,
        "{} calls queued behind busy lanes took {transactions} transactions: they were not \
         batched",
        queued.len()
    );
    app.assert_invariants().await;
}

async fn a_caller_that_goes_away_before_its_batch_commits_gets_nothing_written(backend: Backend) {
    let gates = GateBackend::new();
    let app = spawn_gated(backend, &gates, 64).await;
    let (blockers, queued) = (disks(0..32), disks(32..64));
    let (first_gate, second_gate) = (Gate::closed(), Gate::closed());
    gates.guard(&blockers, &first_gate);
    gates.guard(&queued, &second_gate);

    // The blockers make the lanes busy; the queued calls wait behind them. Once the blockers'
    // batches commit, the next leaders take the queued calls and wait at the second gate.
    let blocking = send_each(&app, &blockers);
    wait_until_held(&app, &first_gate, blockers.len()).await;
    let mut queueing = send_each(&app, &queued);
    wait_until_held(&app, &first_gate, blockers.len() + queued.len()).await;
    first_gate.open();
    // Each lane's next batch takes its whole queue (64 calls at most), queued calls included.
    wait_at_gate(&second_gate, queued.len()).await;

    // The odd ones' clients cancel while their batches are still open.
    let (mut staying, mut leaving) = (Vec::new(), Vec::new());
    for (n, (disk, call)) in queued.iter().zip(queueing.drain(..)).enumerate() {
        if n % 2 == 1 {
            call.abort();
            leaving.push(disk.clone());
        } else {
            staying.push((disk.clone(), call));
        }
    }
    // Until the server has seen each stream reset and dropped its call, the batch would still
    // write it.
    wait_until("every cancelled caller gone", || {
        let backlog = app.service.create_backlog();
        if backlog.gone_callers == leaving.len() as u64 {
            Ok(())
        } else {
            Err(format!("{} cancelled, {backlog:?}", leaving.len()))
        }
    })
    .await;
    second_gate.open();

    all_created(blocking, "a blocker").await;
    let (stayed, staying_calls): (Vec<String>, Vec<Call>) = staying.into_iter().unzip();
    all_created(staying_calls, "a call whose client stayed").await;
    // Nothing of the calls that went away may show up, not even late.
    let watch_until = Instant::now() + Duration::from_secs(2);
    loop {
        let per_disk = snapshots_per_disk(&app).await;
        assert_snapshots(&per_disk, &leaving, 0);
        assert_snapshots(&per_disk, &stayed, 1);
        if Instant::now() >= watch_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A batch written again without the callers who left starts the others' copies again, and
    // cancels those of the attempt it rolled back: one live copy per snapshot, none for the
    // calls that went away.
    let copies: usize = stayed.iter().map(|d| gates.copies_started(d)).sum();
    println!(
        "copies started for the {} calls that stayed: {copies}",
        stayed.len()
    );
    for disk in &stayed {
        assert_eq!(gates.copies_live(disk), 1, "live copies of {disk}");
    }
    for disk in &leaving {
        assert_eq!(gates.copies_live(disk), 0, "live copies of {disk}");
    }
    app.assert_invariants().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_never_waits_for_a_disk_locked_elsewhere() {
    let gates = GateBackend::new();
    let app = spawn_gated(Backend::Postgres, &gates, 16 + 21).await;
    let (blockers, locked, others) = (disks(0..16), disk(16), disks(17..37));
    let gate = Gate::closed();
    gates.guard(&blockers, &gate);
    let lock = DiskLock::hold(&app.db.url, &locked).await;

    // All lanes busy, so the locked disk's call and the others are taken in batches together.
    let blocking = send_each(&app, &blockers);
    wait_until_held(&app, &gate, blockers.len()).await;
    let on_locked = send(&app, create_request(&locked));
    let on_others = send_each(&app, &others);
    wait_until_held(&app, &gate, blockers.len() + 1 + others.len()).await;
    gate.open();

    all_created(blocking, "a blocker").await;
    all_created(on_others, "a call on a disk nobody else holds").await;
    assert!(
        !on_locked.is_finished(),
        "the call on the locked disk was answered while another transaction holds the disk"
    );
    // Skipped by its batches, it ran alone and waits for the lock there.
    lock.wait_for_a_waiter().await;
    assert!(!on_locked.is_finished(), "the lock is still held");
    lock.release().await;
    answer(on_locked, "the call on the once locked disk")
        .await
        .expect("the call on the locked disk succeeds once the lock is released");

    let per_disk = snapshots_per_disk(&app).await;
    assert_snapshots(&per_disk, &[locked], 1);
    assert_snapshots(&per_disk, &others, 1);
    app.assert_invariants().await;
}

/// Holds every COMMIT that wrote a snapshot, for as long as the test says: a deferred trigger
/// on `snapshots` runs at COMMIT and waits for an advisory lock the test holds.
struct CommitHold {
    holder: sqlx::PgConnection,
}

impl CommitHold {
    const KEY: i64 = 4242;

    async fn install(app: &TestApp) {
        app.execute(&format!(
            "CREATE FUNCTION wait_for_the_test() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_advisory_xact_lock_shared({}); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER wait_for_the_test AFTER INSERT ON snapshots \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wait_for_the_test();",
            Self::KEY
        ))
        .await;
    }

    async fn hold(app: &TestApp) -> Self {
        let mut holder = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(Self::KEY)
            .execute(&mut holder)
            .await
            .unwrap();
        Self { holder }
    }

    /// Waits until every batch being written waits for the test in its COMMIT.
    async fn wait_for_every_batch_in_commit(&mut self, app: &TestApp) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let held: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event = 'advisory'",
            )
            .fetch_one(&mut self.holder)
            .await
            .unwrap();
            // No batch starts while these are held: every call is in one of them.
            let writing = app.service.create_backlog().busy_lanes;
            if held > 0 && usize::try_from(held) == Ok(writing) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{held} COMMITs reached the trigger within {PATIENCE:?}, {writing} batches \
                 are being written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn release(mut self) {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(Self::KEY)
            .execute(&mut self.holder)
            .await
            .unwrap();
    }
}

/// A batch's leader is whichever queued call gets the lane's turn; if its client goes away while
/// the batch's COMMIT is in flight, the batch still commits, and the other callers of the batch
/// must be told so. (When the batch ran inside the leader's call, it was dropped with it: the
/// others were told to run alone, and their one-call transaction found the snapshot their own
/// batch had just written, so a caller still waiting was refused
/// `IncorrectDiskStatus.CreatingSnapshot` while its snapshot existed. A batch now runs in a task
/// of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_whose_leader_goes_away_during_commit_are_told_their_snapshot_was_written() {
    let gates = GateBackend::new();
    let app = spawn_gated(Backend::Postgres, &gates, 64).await;
    CommitHold::install(&app).await;
    let (blockers, stayers) = (disks(0..32), disks(32..64));
    let (first_gate, second_gate) = (Gate::closed(), Gate::closed());
    gates.guard(&blockers, &first_gate);
    gates.guard(&stayers, &second_gate);

    // Blockers queued first lead each lane's second batch; the stayers are in those batches.
    let blocking = send_each(&app, &blockers);
    wait_until_held(&app, &first_gate, blockers.len()).await;
    let staying = send_each(&app, &stayers);
    wait_until_held(&app, &first_gate, blockers.len() + stayers.len()).await;
    first_gate.open();
    wait_at_gate(&second_gate, stayers.len()).await;

    // The second batches write, then wait in COMMIT; the blockers' clients go away meanwhile.
    let mut hold = CommitHold::hold(&app).await;
    second_gate.open();
    hold.wait_for_every_batch_in_commit(&app).await;
    for call in blocking.iter().filter(|call| !call.is_finished()) {
        call.abort();
    }
    // Every blocker answered or gone, as the server sees it: only the stayers still wait (fewer
    // if a batch lost its callers, which the answers below show).
    wait_until("only the stayers waiting", || {
        let backlog = app.service.create_backlog();
        if backlog.waiting_callers <= stayers.len() {
            Ok(backlog)
        } else {
            Err(format!("{} stayers, {backlog:?}", stayers.len()))
        }
    })
    .await;
    let backlog = app.service.create_backlog();
    assert!(
        backlog.gone_callers > 0,
        "no caller went away while its batch was in COMMIT, so the test tried nothing: \
         {backlog:?}"
    );
    hold.release().await;

    let mut misled = Vec::new();
    for (disk, call) in stayers.iter().zip(staying) {
        if let Err(status) = answer(call, "a call whose client stayed").await {
            misled.push((disk.clone(), status));
        }
    }
    let per_disk = snapshots_per_disk(&app).await;
    assert!(
        misled.is_empty(),
        "{} of {} callers were refused; their disks' snapshots: {:?}; first refusal: {:?}",
        misled.len(),
        stayers.len(),
        misled
            .iter()
            .map(|(disk, _)| per_disk.get(disk).copied().unwrap_or(0))
            .collect::<Vec<_>>(),
        misled
            .first()
            .map(|(_, status)| (status.code(), status.message().to_owned()))
    );
    assert_snapshots(&per_disk, &stayers, 1);
    app.assert_invariants().await;
}

/// What a call of the one-disk, one-token test asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// A snapshot of the contended disk, without a token.
    SameDisk,
    /// The same token with the same parameters each time.
    SameToken,
    /// Another token, with this description.
    MixedToken(&'static str),
}

async fn many_calls_on_one_disk_or_one_token_in_one_batch_are_answered_one_by_one(
    backend: Backend,
) {
    let gates = GateBackend::new();
    let app = spawn_gated(backend, &gates, 16 + 3).await;
    let (blockers, same_disk, same_token_disk, mixed_token_disk) =
        (disks(0..16), disk(16), disk(17), disk(18));
    let gate = Gate::closed();
    gates.guard(&blockers, &gate);
    let blocking = send_each(&app, &blockers);
    wait_until_held(&app, &gate, blockers.len()).await;

    // Interleaved, so the calls on one disk or token are spread over the queue.
    let mixed_descriptions = ["first", "second", "first", "third", "second"];
    let mut asked = Vec::new();
    for n in 0..20 {
        asked.push(Asked::SameDisk);
        if n < 10 {
            asked.push(Asked::SameToken);
        }
        if let Some(description) = mixed_descriptions.get(n) {
            asked.push(Asked::MixedToken(description));
        }
    }
    let calls: Vec<(Asked, Call)> = asked
        .iter()
        .map(|&what| {
            let request = match what {
                Asked::SameDisk => create_request(&same_disk),
                Asked::SameToken => pb::CreateSnapshotRequest {
                    client_token: "tok-same".into(),
                    description: "nightly".into(),
                    ..create_request(&same_token_disk)
                },
                Asked::MixedToken(description) => pb::CreateSnapshotRequest {
                    client_token: "tok-mixed".into(),
                    description: description.into(),
                    ..create_request(&mixed_token_disk)
                },
            };
            (what, send(&app, request))
        })
        .collect();
    wait_until_held(&app, &gate, blockers.len() + calls.len()).await;
    gate.open();
    all_created(blocking, "a blocker").await;

    let mut answers: Vec<(Asked, Result<String, Status>)> = Vec::new();
    for (what, call) in calls {
        let answered = answer(call, &format!("{what:?}")).await;
        answers.push((what, answered.map(|created| created.snapshot_id)));
    }

    // One disk: one snapshot, every other call refused as the disk is busy.
    let on_same_disk: Vec<_> = answers
        .iter()
        .filter(|(what, _)| *what == Asked::SameDisk)
        .map(|(_, answer)| answer)
        .collect();
    let created = on_same_disk.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(
        created, 1,
        "exactly one create on one disk wins: {on_same_disk:?}"
    );
    for status in on_same_disk
        .iter()
        .filter_map(|answer| answer.as_ref().err())
    {
        assert_error(
            status,
            Code::FailedPrecondition,
            "IncorrectDiskStatus.CreatingSnapshot",
            "403",
            Detail::PreconditionFailureAndRetry,
        );
    }

    // One token, one set of parameters: every call gets the one snapshot.
    let same_token_ids: HashSet<_> = answers
        .iter()
        .filter(|(what, _)| *what == Asked::SameToken)
        .map(|(_, answer)| {
            answer
                .clone()
                .expect("a replay of an identical call succeeds")
        })
        .collect();
    assert_eq!(
        same_token_ids.len(),
        1,
        "one snapshot id: {same_token_ids:?}"
    );

    // One token, several sets of parameters: the first written wins, the calls with its
    // parameters are replayed, the others are mismatches.
    let mut winners = HashSet::new();
    let mut ids = HashSet::new();
    for (what, answer) in &answers {
        let Asked::MixedToken(description) = what else {
            continue;
        };
        if let Ok(id) = answer {
            winners.insert(*description);
            ids.insert(id.clone());
        }
    }
    assert_eq!(
        ids.len(),
        1,
        "one snapshot for the mixed token: {answers:?}"
    );
    assert_eq!(winners.len(), 1, "one set of parameters wins: {winners:?}");
    for (what, answer) in &answers {
        let Asked::MixedToken(description) = what else {
            continue;
        };
        match answer {
            Ok(_) => {}
            Err(status) => {
                assert!(
                    !winners.contains(description),
                    "a call identical to the winner is refused: {status:?}"
                );
                let metadata = assert_error(
                    status,
                    Code::FailedPrecondition,
                    "IdempotentParameterMismatch",
                    "403",
                    Detail::PreconditionFailure,
                );
                assert_eq!(
                    metadata.get("clientToken").map(String::as_str),
                    Some("tok-mixed")
                );
            }
        }
    }

    let contended = [same_disk, same_token_disk, mixed_token_disk];
    // The database's unique indexes would refuse a second snapshot written in one batch (and
    // the calls would then be answered alone), so the sign that the batch itself admitted one
    // call per disk and token is the data plane: one copy started each, none thrown away.
    for disk in &contended {
        assert_eq!(
            gates.copies_started(disk),
            1,
            "copies started for {disk}, one per call admitted"
        );
    }
    let per_disk = snapshots_per_disk(&app).await;
    assert_snapshots(&per_disk, &contended, 1);
    assert_eq!(app.count_rows("client_tokens").await, 2);
    app.assert_invariants().await;
}
