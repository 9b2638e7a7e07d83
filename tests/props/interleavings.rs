//! Random interleavings of create, delete, complete (time passes and the worker steps), image
//! and retention on a few disks, against the real store on PostgreSQL and on SQLite.
//!
//! A small model follows the sequence: which snapshots each disk holds, which are still copying,
//! which an image pins, which tokens are bound. After every step the property checks that
//! - the store answered what the model expects (created, replayed, or the rule that refuses),
//! - the store's own invariant checker (`snapshotd check`) finds nothing,
//! - no disk holds more than its quota (counted from DescribeSnapshots, not from bookkeeping),
//! - every acknowledged (Created) snapshot id is still listed, with the model's status, unless
//!   a step of the sequence deleted it or the worker released it past its retention.
//!
//! A second property runs the same operations in concurrent batches (worker steps racing the
//! requests), where no model can say who wins; it checks what must hold whoever wins: the
//! checker finds nothing, no disk exceeds its quota or copies twice at once, a token never
//! yields two snapshots and replays only its own, nothing listed was never acknowledged, and
//! nothing acknowledged is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use snapshotd::backend::{SimulatedBackend, SnapshotBackend};
use snapshotd::clock::{Clock, ManualClock};
use snapshotd::domain::{
    Account, ClientToken, CreateImageCommand, CreateSnapshotCommand, Description, Disk,
    DiskCategory, DiskId, DiskStatus, DiskType, Instance, InstanceStatus, RetentionDays,
    SnapshotId, SnapshotName, SnapshotQuery, SnapshotStatus, Timestamp,
};
use snapshotd::engine::Policy;
use snapshotd::service::{CreateOutcome, Service, ServiceError};
use snapshotd::store::{PoolOptions, Store};
use snapshotd::worker::{Outcome, Worker};

use crate::support::{Backend, TestDatabase, config, runtime};

const QUOTA: u32 = 2;
const RATE_MIBPS: u32 = 256;
/// Disk sizes in GiB: copies of 4 s, 8 s and 160 s at 256 MiB/s.
const SIZES_GIB: [i32; 3] = [1, 2, 40];
const ACCOUNT: &str = "acct-prop";
const INSTANCE: &str = "i-prop";
const NAMES: [&str; 3] = ["", "nightly", "weekly"];
/// A well-formed id the store never issued.
const UNKNOWN_SNAPSHOT: &str = "s-00000000000000000000";

fn disk_id(disk: usize) -> String {
    format!("d-prop-{disk}")
}

fn copy_time(disk: usize) -> TimeDelta {
    TimeDelta::seconds(i64::from(SIZES_GIB[disk]) * 1024 / i64::from(RATE_MIBPS))
}

#[derive(Debug, Clone)]
enum Step {
    Create {
        disk: usize,
        token: Option<usize>,
        name: usize,
        retention_days: i32,
    },
    /// The last Create again, as a client retries (a replay when it had a token).
    RetryLastCreate,
    /// `pick` chooses among the snapshots acknowledged so far (deleted ones included).
    Delete {
        pick: usize,
        force: bool,
    },
    Image {
        pick: usize,
        token: Option<usize>,
    },
    /// Time passes; the worker steps until it finds nothing to do.
    Advance {
        seconds: i64,
    },
}

fn step(disks: usize) -> impl Strategy<Value = Step> {
    let token = proptest::option::weighted(0.4, 0usize..3);
    prop_oneof![
        5 => (0..disks, token.clone(), 0..NAMES.len(), prop_oneof![3 => Just(0), 1 => 1i32..=2])
            .prop_map(|(disk, token, name, retention_days)| Step::Create {
                disk,
                token,
                name,
                retention_days,
            }),
        2 => Just(Step::RetryLastCreate),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, force)| Step::Delete { pick, force }),
        2 => (any::<usize>(), token).prop_map(|(pick, token)| Step::Image { pick, token }),
        3 => prop_oneof![
            1i64..=10,
            Just(4),
            Just(8),
            Just(160),
            150i64..=170,
            Just(86_400),
            86_000i64..=87_000,
        ]
        .prop_map(|seconds| Step::Advance { seconds }),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (1usize..=3)
        .prop_flat_map(|disks| (Just(disks), proptest::collection::vec(step(disks), 1..=30)))
}

// ---------------------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
struct Held {
    disk: usize,
    status: SnapshotStatus,
    copy_done_at: Timestamp,
    release_at: Option<Timestamp>,
    pinned_by_image: bool,
}

#[derive(Debug, Default)]
struct Model {
    /// Snapshots the disks hold now.
    held: BTreeMap<String, Held>,
    /// Every acknowledged snapshot id, in order.
    acknowledged: Vec<String>,
    /// Ids a step deleted or the worker released.
    gone: BTreeSet<String>,
    /// Snapshot token → ((disk, name, retention), snapshot id).
    snapshot_tokens: BTreeMap<usize, ((usize, usize, i32), String)>,
    /// Image token → (snapshot id, image id).
    image_tokens: BTreeMap<usize, (String, String)>,
}

/// What the model expects a create (snapshot or image) to answer.
#[derive(Debug, PartialEq, Eq)]
enum Expected {
    Created,
    Replayed(String),
    Refused(&'static str),
}

impl Model {
    fn on_disk(&self, disk: usize) -> impl Iterator<Item = &Held> {
        self.held.values().filter(move |h| h.disk == disk)
    }

    fn pick(&self, pick: usize) -> String {
        if self.acknowledged.is_empty() {
            UNKNOWN_SNAPSHOT.to_owned()
        } else {
            self.acknowledged[pick % self.acknowledged.len()].clone()
        }
    }

    fn expect_create(&self, token: Option<usize>, params: (usize, usize, i32)) -> Expected {
        if let Some((bound, id)) = token.and_then(|t| self.snapshot_tokens.get(&t)) {
            return if *bound == params {
                Expected::Replayed(id.clone())
            } else {
                Expected::Refused("IdempotentParameterMismatch")
            };
        }
        let disk = params.0;
        if self
            .on_disk(disk)
            .any(|h| h.status == SnapshotStatus::Progressing)
        {
            Expected::Refused("IncorrectDiskStatus.CreatingSnapshot")
        } else if self.on_disk(disk).count() >= QUOTA as usize {
            Expected::Refused("QuotaExceed.Snapshot")
        } else {
            Expected::Created
        }
    }

    fn expect_delete(&self, id: &str) -> Result<(), &'static str> {
        match self.held.get(id) {
            None => Err("InvalidSnapshotId.NotFound"),
            Some(held) if held.pinned_by_image => Err("SnapshotCreatedImage"),
            Some(_) => Ok(()),
        }
    }

    fn expect_image(&self, token: Option<usize>, id: &str) -> Expected {
        if let Some((bound, image)) = token.and_then(|t| self.image_tokens.get(&t)) {
            return if bound == id {
                Expected::Replayed(image.clone())
            } else {
                Expected::Refused("IdempotentParameterMismatch")
            };
        }
        match self.held.get(id) {
            None => Expected::Refused("InvalidSnapshotId.NotFound"),
            Some(held) if held.status != SnapshotStatus::Accomplished => {
                Expected::Refused("InvalidSnapshotId.NotReady")
            }
            Some(_) => Expected::Created,
        }
    }

    /// Time is `now`: copies that are due finish; snapshots past their retention that no image
    /// pins are released.
    fn advance_to(&mut self, now: Timestamp) {
        for held in self.held.values_mut() {
            if held.status == SnapshotStatus::Progressing && held.copy_done_at <= now {
                held.status = SnapshotStatus::Accomplished;
            }
        }
        let released: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| !h.pinned_by_image && h.release_at.is_some_and(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in released {
            self.held.remove(&id);
            self.gone.insert(id);
        }
    }
}

/// The rule a refusal names (its ECS code), or a description of an unexpected store error.
fn refusal_code(err: &ServiceError) -> String {
    match err {
        ServiceError::Refused(rule) => rule
            .to_string()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned(),
        other => format!("unexpected store error: {other:?}"),
    }
}

fn answered(result: &Result<CreateOutcome, ServiceError>) -> Result<Expected, String> {
    match result {
        Ok(CreateOutcome::Created { .. }) => Ok(Expected::Created),
        Ok(CreateOutcome::Replayed { id }) => Ok(Expected::Replayed(id.clone())),
        Err(err) => Err(refusal_code(err)),
    }
}

fn matches(got: &Result<Expected, String>, want: &Expected) -> bool {
    match (got, want) {
        (Ok(got), want) => got == want,
        (Err(code), Expected::Refused(want)) => code == want,
        (Err(_), _) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Running a scenario.

struct Harness {
    store: Arc<dyn Store>,
    service: Arc<Service>,
    clock: Arc<ManualClock>,
    worker: Worker,
    /// When the clock started (a whole second, so both backends store every instant exactly).
    start: Timestamp,
}

impl Harness {
    async fn new(db: &TestDatabase, disks: usize) -> Self {
        let pool = PoolOptions {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            sqlite_synchronous: Default::default(),
            transaction_pooler: false,
        };
        let store = snapshotd::store::connect(&db.url, pool)
            .await
            .expect("connecting the store");
        store.migrate(None).await.expect("migrating");
        let start = Utc
            .timestamp_opt(Utc::now().timestamp(), 0)
            .single()
            .expect("a valid instant");
        let clock = Arc::new(ManualClock::new(start));
        let backend: Arc<dyn SnapshotBackend> = Arc::new(SimulatedBackend::new(RATE_MIBPS));
        let policy = Policy {
            snapshot_quota: QUOTA,
            init_window: Duration::from_secs(3600),
            copy_rate_mibps: RATE_MIBPS,
            snapshot_available_disks: false,
        };
        let service = Arc::new(Service::new(
            Arc::clone(&store),
            backend,
            clock.clone(),
            policy,
        ));
        let worker = Worker::new(Arc::clone(&service));
        service
            .put_account(&Account {
                account_id: ACCOUNT.to_owned(),
                snapshot_service_activated: true,
                insufficient_balance: false,
            })
            .await
            .expect("PutAccount");
        service
            .put_instance(&Instance {
                instance_id: INSTANCE.to_owned(),
                account_id: ACCOUNT.to_owned(),
                status: InstanceStatus::Running,
                created_at: start - TimeDelta::days(3),
                last_started_at: Some(start - TimeDelta::days(3)),
                lock_reasons: Vec::new(),
            })
            .await
            .expect("PutInstance");
        for (disk, size_gib) in SIZES_GIB.into_iter().enumerate().take(disks) {
            service
                .put_disk(&Disk {
                    disk_id: disk_id(disk),
                    account_id: ACCOUNT.to_owned(),
                    category: DiskCategory::CloudEssd,
                    disk_type: DiskType::Data,
                    status: DiskStatus::InUse,
                    instance_id: Some(INSTANCE.to_owned()),
                    size_gib,
                    created_at: start - TimeDelta::days(2),
                    expires_at: None,
                    ever_attached: true,
                })
                .await
                .expect("PutDisk");
        }
        Self {
            store,
            service,
            clock,
            worker,
            start,
        }
    }

    /// Every snapshot of the account, as DescribeSnapshots pages through them.
    async fn listed(&self) -> BTreeMap<String, (String, SnapshotStatus)> {
        let mut listed = BTreeMap::new();
        let mut after = None;
        loop {
            let page = self
                .service
                .describe_snapshots(&SnapshotQuery {
                    after,
                    ..SnapshotQuery::all_of(ACCOUNT, 4)
                })
                .await
                .expect("DescribeSnapshots");
            let total = page.total;
            for snapshot in page.snapshots.into_iter().map(|view| view.snapshot) {
                listed.insert(
                    snapshot.snapshot_id,
                    (snapshot.source_disk_id, snapshot.status),
                );
            }
            match page.next {
                Some(next) => after = Some(next),
                None => {
                    // Nothing changes while it pages: the count is what the pages listed.
                    assert_eq!(total, listed.len() as u64, "TotalCount against the pages");
                    return listed;
                }
            }
        }
    }

    async fn run(&self, steps: &[Step], seen: &Seen) -> Result<(), TestCaseError> {
        let mut model = Model::default();
        let mut last_create = None;
        for (n, step) in steps.iter().enumerate() {
            let step = match step {
                Step::RetryLastCreate => last_create.as_ref().unwrap_or(step),
                Step::Create { .. } => {
                    last_create = Some(step.clone());
                    step
                }
                other => other,
            };
            let now = self.clock.now();
            let context = format!(
                "step {n} ({step:?}) at +{}s",
                (now - self.start).num_seconds()
            );
            match step {
                Step::Create {
                    disk,
                    token,
                    name,
                    retention_days,
                } => {
                    let command = CreateSnapshotCommand {
                        account_id: ACCOUNT.to_owned(),
                        disk_id: DiskId::parse(&disk_id(*disk)).expect("a disk id"),
                        snapshot_name: SnapshotName::parse_optional(NAMES[*name]).expect("a name"),
                        description: Description::default(),
                        client_token: token.map(|t| {
                            ClientToken::parse_optional(&format!("token-{t}"))
                                .expect("a token")
                                .expect("not empty")
                        }),
                        retention: RetentionDays::parse(*retention_days).expect("retention"),
                        tags: Vec::new(),
                    };
                    let params = (*disk, *name, *retention_days);
                    let expected = model.expect_create(*token, params);
                    let result = self.service.create_snapshot(&command).await;
                    let got = answered(&result);
                    seen.record("CreateSnapshot", &got);
                    prop_assert!(
                        matches(&got, &expected),
                        "{}: got {:?}, expected {:?}",
                        context,
                        got,
                        expected
                    );
                    if let Ok(CreateOutcome::Created { id }) = result {
                        prop_assert!(
                            !model.acknowledged.contains(&id),
                            "{}: id {} issued twice",
                            context,
                            id
                        );
                        model.acknowledged.push(id.clone());
                        model.held.insert(
                            id.clone(),
                            Held {
                                disk: *disk,
                                status: SnapshotStatus::Progressing,
                                copy_done_at: now + copy_time(*disk),
                                release_at: (*retention_days > 0)
                                    .then(|| now + TimeDelta::days(i64::from(*retention_days))),
                                pinned_by_image: false,
                            },
                        );
                        if let Some(token) = token {
                            model.snapshot_tokens.insert(*token, (params, id));
                        }
                    }
                }
                Step::Delete { pick, force } => {
                    let id = model.pick(*pick);
                    let expected = model.expect_delete(&id);
                    let result = self
                        .service
                        .delete_snapshot(
                            ACCOUNT,
                            &SnapshotId::parse(&id).expect("a snapshot id"),
                            *force,
                        )
                        .await
                        .map_err(|err| refusal_code(&err));
                    seen.record(
                        "DeleteSnapshot",
                        &result.clone().map(|()| Expected::Created),
                    );
                    prop_assert_eq!(
                        &result,
                        &expected.map_err(str::to_owned),
                        "{}: deleting {}",
                        context,
                        id
                    );
                    if result.is_ok() {
                        model.held.remove(&id);
                        model.gone.insert(id);
                    }
                }
                Step::Image { pick, token } => {
                    let id = model.pick(*pick);
                    let command = CreateImageCommand {
                        account_id: ACCOUNT.to_owned(),
                        snapshot_id: SnapshotId::parse(&id).expect("a snapshot id"),
                        image_name: None,
                        client_token: token.map(|t| {
                            ClientToken::parse_optional(&format!("image-token-{t}"))
                                .expect("a token")
                                .expect("not empty")
                        }),
                    };
                    let expected = model.expect_image(*token, &id);
                    let result = self.service.create_image(&command).await;
                    let got = answered(&result);
                    seen.record("CreateImage", &got);
                    prop_assert!(
                        matches(&got, &expected),
                        "{}: image of {}: got {:?}, expected {:?}",
                        context,
                        id,
                        got,
                        expected
                    );
                    if let Ok(CreateOutcome::Created { id: image }) = result {
                        model
                            .held
                            .get_mut(&id)
                            .expect("an image of a held snapshot")
                            .pinned_by_image = true;
                        if let Some(token) = token {
                            model.image_tokens.insert(*token, (id, image));
                        }
                    }
                }
                Step::RetryLastCreate => {} // nothing to retry yet
                Step::Advance { seconds } => {
                    self.clock.advance(Duration::from_secs(
                        u64::try_from(*seconds).expect("positive"),
                    ));
                    let mut steps = 0;
                    while let Outcome::Worked(done) = self.worker.tick().await.map_err(|err| {
                        TestCaseError::fail(format!("{context}: a worker step failed: {err:?}"))
                    })? {
                        seen.count("worker accomplished", done.accomplished);
                        seen.count("worker released", done.released);
                        steps += 1;
                        prop_assert!(steps < 100, "{}: the worker never goes idle", context);
                    }
                    model.advance_to(self.clock.now());
                }
            }
            self.check(&model, &context).await?;
        }
        Ok(())
    }

    async fn check(&self, model: &Model, context: &str) -> Result<(), TestCaseError> {
        let violations = self.service.check_invariants().await.map_err(|err| {
            TestCaseError::fail(format!("{context}: the checker failed: {err:?}"))
        })?;
        prop_assert!(
            violations.is_empty(),
            "{}: broken promises: {:#?}",
            context,
            violations
        );

        let listed = self.listed().await;
        let mut per_disk: BTreeMap<&str, u32> = BTreeMap::new();
        for (disk, _) in listed.values() {
            *per_disk.entry(disk.as_str()).or_default() += 1;
        }
        for (disk, count) in &per_disk {
            prop_assert!(
                *count <= QUOTA,
                "{}: {} holds {} snapshots",
                context,
                disk,
                count
            );
        }
        for id in &model.acknowledged {
            prop_assert!(
                listed.contains_key(id) || model.gone.contains(id),
                "{}: acknowledged snapshot {} is lost",
                context,
                id
            );
        }
        let expected: BTreeMap<String, (String, SnapshotStatus)> = model
            .held
            .iter()
            .map(|(id, held)| (id.clone(), (disk_id(held.disk), held.status)))
            .collect();
        prop_assert_eq!(
            listed,
            expected,
            "{}: the listing differs from the model",
            context
        );
        Ok(())
    }
}

/// How often each kind of answer came up, to show the sequences reach every path.
#[derive(Default)]
struct Seen(Mutex<BTreeMap<String, usize>>);

impl Seen {
    fn count(&self, what: &str, n: usize) {
        *self
            .0
            .lock()
            .expect("the tally")
            .entry(what.to_owned())
            .or_default() += n;
    }

    fn record(&self, call: &str, answer: &Result<Expected, String>) {
        let answer = match answer {
            Ok(Expected::Created) => "OK".to_owned(),
            Ok(Expected::Replayed(_)) => "replayed".to_owned(),
            Ok(Expected::Refused(code)) => (*code).to_owned(),
            Err(code) if code.starts_with("unexpected") => "unexpected store error".to_owned(),
            Err(code) => code.clone(),
        };
        self.count(&format!("{call} {answer}"), 1);
    }
}

fn random_interleavings_never_break_the_invariants(backend: Backend) {
    const CASES: u32 = 24;
    let runtime = runtime("interleavings");
    let seen = Seen::default();
    let config = config(CASES);
    // With fewer cases (PROPTEST_CASES), rare paths may go unvisited: report, don't insist.
    let insist_on_coverage = config.cases >= CASES;
    let mut runner = TestRunner::new(config);
    let result = runner.run(&scenario(), |(disks, steps)| {
        runtime.block_on(async {
            let db = TestDatabase::create(backend).await;
            let harness = Harness::new(&db, disks).await;
            let outcome = harness.run(&steps, &seen).await;
            harness.store.close().await;
            outcome
        })
    });
    if let Err(err) = result {
        panic!("{backend:?}: {err}");
    }
    let seen = seen.0.into_inner().expect("the tally");
    eprintln!("{backend:?}: {seen:#?}");
    for path in [
        "CreateSnapshot OK",
        "CreateSnapshot replayed",
        "CreateSnapshot IncorrectDiskStatus.CreatingSnapshot",
        "CreateSnapshot QuotaExceed.Snapshot",
        "DeleteSnapshot OK",
        "CreateImage OK",
        "worker accomplished",
    ] {
        assert!(
            !insist_on_coverage || seen.get(path).is_some_and(|n| *n > 0),
            "{backend:?}: no step reached {path:?}: {seen:#?}"
        );
    }
}

#[test]
fn random_create_delete_complete_image_and_retention_interleavings_keep_every_promise_postgres() {
    random_interleavings_never_break_the_invariants(Backend::Postgres);
}

#[test]
fn random_create_delete_complete_image_and_retention_interleavings_keep_every_promise_sqlite() {
    random_interleavings_never_break_the_invariants(Backend::Sqlite);
}

// ---------------------------------------------------------------------------------------------
// The same operations, several at once.

/// One operation of a concurrent batch.
#[derive(Debug, Clone)]
enum Op {
    Create {
        disk: usize,
        token: Option<usize>,
        name: usize,
        retention_days: i32,
    },
    Delete {
        pick: usize,
    },
    Image {
        pick: usize,
    },
    /// One worker step, racing the requests.
    Tick,
}

/// Time passes (maybe), then the operations run at once.
#[derive(Debug, Clone)]
struct Batch {
    advance_seconds: u64,
    ops: Vec<Op>,
}

fn op(disks: usize) -> impl Strategy<Value = Op> {
    let retention = prop_oneof![3 => Just(0), 1 => Just(1)];
    prop_oneof![
        // A token always comes with the same parameters: concurrent retries of one request.
        3 => (0usize..3, retention.clone()).prop_map(move |(token, retention_days)| Op::Create {
            disk: token % disks,
            token: Some(token),
            name: 0,
            retention_days,
        }),
        3 => (0..disks, 0..NAMES.len(), retention).prop_map(|(disk, name, retention_days)| {
            Op::Create {
                disk,
                token: None,
                name,
                retention_days,
            }
        }),
        2 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Image { pick }),
        2 => Just(Op::Tick),
    ]
}

fn concurrent_scenario() -> impl Strategy<Value = (usize, Vec<Batch>)> {
    (1usize..=2).prop_flat_map(|disks| {
        let batch = (
            prop_oneof![2 => Just(0u64), 2 => 1u64..=10, 1 => Just(160), 1 => Just(86_400)],
            proptest::collection::vec(op(disks), 1..=5),
        )
            .prop_map(|(advance_seconds, ops)| Batch {
                advance_seconds,
                ops,
            });
        (Just(disks), proptest::collection::vec(batch, 1..=12))
    })
}

/// What a concurrent operation answered.
#[derive(Debug)]
enum Answer {
    Created(String),
    Replayed(String),
    Deleted(String),
    Imaged(String),
    Refused(String),
    Ticked,
}

/// What the concurrent run knows: every acknowledged snapshot (and when it may be released),
/// the ones a step deleted or an image pins, and what each token was answered with.
#[derive(Debug, Default)]
struct Ledger {
    acknowledged: BTreeMap<String, Option<Timestamp>>,
    deleted: BTreeSet<String>,
    pinned: BTreeSet<String>,
    tokens: BTreeMap<usize, String>,
}

impl Harness {
    async fn apply(&self, op: &Op, candidates: &[String]) -> Answer {
        let pick = |n: usize| {
            candidates
                .get(n % candidates.len().max(1))
                .cloned()
                .unwrap_or_else(|| UNKNOWN_SNAPSHOT.to_owned())
        };
        let refused = |err: ServiceError| Answer::Refused(refusal_code(&err));
        match op {
            Op::Create {
                disk,
                token,
                name,
                retention_days,
            } => {
                let command = CreateSnapshotCommand {
                    account_id: ACCOUNT.to_owned(),
                    disk_id: DiskId::parse(&disk_id(*disk)).expect("a disk id"),
                    snapshot_name: SnapshotName::parse_optional(NAMES[*name]).expect("a name"),
                    description: Description::default(),
                    client_token: token.map(|t| {
                        ClientToken::parse_optional(&format!("token-{t}"))
                            .expect("a token")
                            .expect("not empty")
                    }),
                    retention: RetentionDays::parse(*retention_days).expect("retention"),
                    tags: Vec::new(),
                };
                match self.service.create_snapshot(&command).await {
                    Ok(CreateOutcome::Created { id }) => Answer::Created(id),
                    Ok(CreateOutcome::Replayed { id }) => Answer::Replayed(id),
                    Err(err) => refused(err),
                }
            }
            Op::Delete { pick: n } => {
                let id = pick(*n);
                match self
                    .service
                    .delete_snapshot(
                        ACCOUNT,
                        &SnapshotId::parse(&id).expect("a snapshot id"),
                        false,
                    )
                    .await
                {
                    Ok(()) => Answer::Deleted(id),
                    Err(err) => refused(err),
                }
            }
            Op::Image { pick: n } => {
                let id = pick(*n);
                let command = CreateImageCommand {
                    account_id: ACCOUNT.to_owned(),
                    snapshot_id: SnapshotId::parse(&id).expect("a snapshot id"),
                    image_name: None,
                    client_token: None,
                };
                match self.service.create_image(&command).await {
                    Ok(_) => Answer::Imaged(id),
                    Err(err) => refused(err),
                }
            }
            Op::Tick => match self.worker.tick().await {
                Ok(_) => Answer::Ticked,
                Err(err) => Answer::Refused(format!("unexpected worker error: {err:?}")),
            },
        }
    }

    async fn run_concurrently(&self, batches: &[Batch], seen: &Seen) -> Result<(), TestCaseError> {
        const REFUSALS: [&str; 6] = [
            "IncorrectDiskStatus.CreatingSnapshot",
            "QuotaExceed.Snapshot",
            "InvalidSnapshotId.NotFound",
            "InvalidSnapshotId.NotReady",
            "SnapshotCreatedImage",
            "IdempotentParameterMismatch",
        ];
        let mut ledger = Ledger::default();
        for (n, batch) in batches.iter().enumerate() {
            self.clock
                .advance(Duration::from_secs(batch.advance_seconds));
            let now = self.clock.now();
            let context = format!(
                "batch {n} ({batch:?}) at +{}s",
                (now - self.start).num_seconds()
            );
            let candidates: Vec<String> = ledger.acknowledged.keys().cloned().collect();
            let answers =
                futures::future::join_all(batch.ops.iter().map(|op| self.apply(op, &candidates)))
                    .await;
            // Creations first: a replay listed before its creation in the batch ran after it.
            let mut answers: Vec<(&Op, Answer)> = batch.ops.iter().zip(answers).collect();
            answers.sort_by_key(|(_, answer)| !matches!(answer, Answer::Created(_)));
            for (op, answer) in answers {
                let label = match &answer {
                    Answer::Refused(code) => code.clone(),
                    other => format!("{other:?}")
                        .split('(')
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                };
                seen.count(&format!("concurrent {label}"), 1);
                match answer {
                    Answer::Created(id) => {
                        prop_assert!(
                            !ledger.acknowledged.contains_key(&id),
                            "{}: id {} issued twice",
                            context,
                            id
                        );
                        let Op::Create {
                            token,
                            retention_days,
                            ..
                        } = op
                        else {
                            unreachable!("only a create creates")
                        };
                        if let Some(token) = token {
                            let earlier = ledger.tokens.insert(*token, id.clone());
                            prop_assert!(
                                earlier.is_none(),
                                "{}: token {} created {} after {:?}",
                                context,
                                token,
                                id,
                                earlier
                            );
                        }
                        let release_at = (*retention_days > 0)
                            .then(|| now + TimeDelta::days(i64::from(*retention_days)));
                        ledger.acknowledged.insert(id, release_at);
                    }
                    Answer::Replayed(id) => {
                        let Op::Create {
                            token: Some(token), ..
                        } = op
                        else {
                            unreachable!("only a create with a token replays")
                        };
                        prop_assert_eq!(
                            ledger.tokens.get(token),
                            Some(&id),
                            "{}: token {} replayed another snapshot",
                            context,
                            token
                        );
                    }
                    Answer::Deleted(id) => {
                        prop_assert!(
                            !ledger.pinned.contains(&id),
                            "{}: deleted pinned {}",
                            context,
                            id
                        );
                        ledger.deleted.insert(id);
                    }
                    Answer::Imaged(id) => {
                        ledger.pinned.insert(id);
                    }
                    Answer::Refused(code) => {
                        prop_assert!(
                            REFUSALS.contains(&code.as_str()),
                            "{}: {:?} answered {}",
                            context,
                            op,
                            code
                        );
                    }
                    Answer::Ticked => {}
                }
            }

            let violations = self.service.check_invariants().await.map_err(|err| {
                TestCaseError::fail(format!("{context}: the checker failed: {err:?}"))
            })?;
            prop_assert!(
                violations.is_empty(),
                "{}: broken promises: {:#?}",
                context,
                violations
            );
            let listed = self.listed().await;
            for disk in listed.values().map(|(disk, _)| disk) {
                let held = listed.values().filter(|(d, _)| d == disk).count();
                prop_assert!(
                    held <= QUOTA as usize,
                    "{}: {} holds {}",
                    context,
                    disk,
                    held
                );
                let copying = listed
                    .values()
                    .filter(|(d, s)| d == disk && *s == SnapshotStatus::Progressing)
                    .count();
                prop_assert!(
                    copying <= 1,
                    "{}: {} copies {} at once",
                    context,
                    disk,
                    copying
                );
            }
            for id in listed.keys() {
                prop_assert!(
                    ledger.acknowledged.contains_key(id),
                    "{}: {} is listed but was never acknowledged",
                    context,
                    id
                );
            }
            for (id, release_at) in &ledger.acknowledged {
                let released =
                    !ledger.pinned.contains(id) && release_at.is_some_and(|at| at <= now);
                prop_assert!(
                    listed.contains_key(id) || ledger.deleted.contains(id) || released,
                    "{}: acknowledged snapshot {} is lost",
                    context,
                    id
                );
            }
        }
        Ok(())
    }
}

fn concurrent_interleavings_never_break_the_invariants(backend: Backend) {
    let runtime = runtime("interleavings");
    let seen = Seen::default();
    let mut runner = TestRunner::new(config(16));
    let result = runner.run(&concurrent_scenario(), |(disks, batches)| {
        runtime.block_on(async {
            let db = TestDatabase::create(backend).await;
            let harness = Harness::new(&db, disks).await;
            let outcome = harness.run_concurrently(&batches, &seen).await;
            harness.store.close().await;
            outcome
        })
    });
    let seen = seen.0.into_inner().expect("the tally");
    eprintln!("{backend:?}: {seen:#?}");
    if let Err(err) = result {
        panic!("{backend:?}: {err}");
    }
}

#[test]
fn concurrent_batches_of_create_delete_complete_and_image_keep_every_promise_postgres() {
    concurrent_interleavings_never_break_the_invariants(Backend::Postgres);
}

#[test]
fn concurrent_batches_of_create_delete_complete_and_image_keep_every_promise_sqlite() {
    concurrent_interleavings_never_break_the_invariants(Backend::Sqlite);
}
