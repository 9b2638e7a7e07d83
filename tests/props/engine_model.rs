//! `decide_create` against an independent reference model of the CreateSnapshot rules.
//!
//! The model below is written from the specification (the seed, the rule table of issue 2 and the
//! error table of `docs/errors.md` with `docs/decisions.md`), not from `src/engine`: it reads the
//! generated world in its own terms (names, ages, deadlines) and never calls engine code. The
//! property generates random accounts, instances, disks and snapshot histories, with times
//! clustered around the boundaries (the init window, the subscription end, a copy's end), and
//! asserts that the engine answers exactly what the model says: the same rule, with the same ids,
//! states and retry delays, or Ok.

use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use snapshotd::domain::{
    Account, Disk, DiskCategory, DiskStatus, DiskType, InProgressSnapshot, Instance,
    InstanceStatus, Timestamp,
};
use snapshotd::engine::{CreateState, Policy, RuleError, decide_create};

use crate::support::config;

const CALLER: &str = "acct-caller";
const OTHER: &str = "acct-other";
const DISK: &str = "d-model-1";
const INSTANCE: &str = "i-model-1";
const IN_PROGRESS: &str = "s-inprogress00000000000";

// ---------------------------------------------------------------------------------------------
// The world, in the model's own terms.

/// The seed's spellings, which the errors must name.
const CATEGORIES: [(DiskCategory, &str); 12] = [
    (DiskCategory::Cloud, "cloud"),
    (DiskCategory::CloudEfficiency, "cloud_efficiency"),
    (DiskCategory::CloudSsd, "cloud_ssd"),
    (DiskCategory::CloudEssd, "cloud_essd"),
    (DiskCategory::CloudAuto, "cloud_auto"),
    (DiskCategory::CloudEssdEntry, "cloud_essd_entry"),
    (DiskCategory::LocalSsdPro, "local_ssd_pro"),
    (DiskCategory::LocalHddPro, "local_hdd_pro"),
    (DiskCategory::Ephemeral, "ephemeral"),
    (DiskCategory::EphemeralSsd, "ephemeral_ssd"),
    (
        DiskCategory::ElasticEphemeralDiskStandard,
        "elastic_ephemeral_disk_standard",
    ),
    (
        DiskCategory::ElasticEphemeralDiskPremium,
        "elastic_ephemeral_disk_premium",
    ),
];

const DISK_STATUSES: [(DiskStatus, &str); 6] = [
    (DiskStatus::InUse, "In_use"),
    (DiskStatus::Available, "Available"),
    (DiskStatus::Attaching, "Attaching"),
    (DiskStatus::Detaching, "Detaching"),
    (DiskStatus::Creating, "Creating"),
    (DiskStatus::ReIniting, "ReIniting"),
];

const INSTANCE_STATUSES: [(InstanceStatus, &str); 5] = [
    (InstanceStatus::Pending, "Pending"),
    (InstanceStatus::Starting, "Starting"),
    (InstanceStatus::Running, "Running"),
    (InstanceStatus::Stopping, "Stopping"),
    (InstanceStatus::Stopped, "Stopped"),
];

/// OperationLocks reasons; only the exact `security` forbids snapshots.
const LOCK_REASONS: [&str; 5] = [
    "security",
    "financial",
    "recycling",
    "Security",
    "dedicated",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PastSnapshot {
    Progressing,
    Accomplished,
    Failed,
}

#[derive(Debug, Clone)]
struct World {
    /// `None`: the account was never pushed.
    account: Option<(bool, bool)>, // (snapshot service activated, insufficient balance)
    disk: Option<DiskFacts>,
    instance: Option<InstanceFacts>,
    /// Every snapshot the disk holds now, oldest first; at most one is progressing.
    history: Vec<PastSnapshot>,
    /// When the progressing one (if any) started, before `now`, and its source size.
    copy_started_ago: TimeDelta,
    copy_size_gib: i32,
    quota: u32,
    init_window: Duration,
    copy_rate_mibps: u32,
    now: Timestamp,
}

#[derive(Debug, Clone)]
struct DiskFacts {
    owner: &'static str,
    category: usize,
    status: usize,
    /// `now - created_at` (negative: created "in the future", e.g. clock skew).
    age: TimeDelta,
    /// `expires_at - now`; `None` for pay-as-you-go.
    expires_in: Option<TimeDelta>,
    ever_attached: bool,
    size_gib: i32,
}

#[derive(Debug, Clone)]
struct InstanceFacts {
    owner: &'static str,
    status: usize,
    ever_started: bool,
    lock_reasons: Vec<&'static str>,
}

// ---------------------------------------------------------------------------------------------
// The reference model.

/// Whole seconds from `now` until `deadline`, rounded up, at least one second.
fn seconds_until(now: Timestamp, deadline: Timestamp) -> Duration {
    let nanos = (deadline - now)
        .num_nanoseconds()
        .expect("a small span")
        .max(0);
    let seconds = (nanos + 999_999_999) / 1_000_000_000;
    Duration::from_secs(u64::try_from(seconds.max(1)).expect("positive"))
}

/// Seconds left of a copy of `size_gib` at `rate_mibps` that started at `started_at`
/// (a copy of N GiB takes N×1024/rate seconds), rounded up, at least one second.
fn copy_seconds_left(now: Timestamp, started_at: Timestamp, size_gib: i32, rate: u32) -> Duration {
    // left = size×1024/rate − elapsed, in exact rational arithmetic over nanoseconds.
    let elapsed_ns = i128::from((now - started_at).num_nanoseconds().expect("a small span"));
    let rate = i128::from(rate);
    let numerator = i128::from(size_gib) * 1024 * 1_000_000_000 - rate * elapsed_ns;
    let denominator = rate * 1_000_000_000;
    let seconds = if numerator <= 0 {
        0
    } else {
        (numerator + denominator - 1) / denominator
    };
    Duration::from_secs(u64::try_from(seconds.max(1)).expect("positive"))
}

/// What the seed (and `docs/decisions.md`) say CreateSnapshot answers, first rule first.
fn model(world: &World) -> Result<(), RuleError> {
    let now = world.now;
    let disk_id = DISK.to_owned();
    let instance_id = INSTANCE.to_owned();

    // "Snapshot service has not been opened yet"; an unknown account is treated the same.
    let activated = world.account.is_some_and(|(activated, _)| activated);
    if !activated {
        return Err(RuleError::InvalidAccountStatusSnapshotServiceUnavailable {
            account_id: CALLER.to_owned(),
        });
    }
    if world.account.is_some_and(|(_, broke)| broke) {
        return Err(RuleError::InvalidAccountStatusNotEnoughBalance {
            account_id: CALLER.to_owned(),
        });
    }
    // Another tenant's disk is indistinguishable from a missing one.
    let Some(disk) = world.disk.as_ref().filter(|d| d.owner == CALLER) else {
        return Err(RuleError::InvalidDiskIdNotFound { disk_id });
    };
    let category = CATEGORIES[disk.category].1;
    let local_or_ephemeral = category.starts_with("local_")
        || category.starts_with("ephemeral")
        || category.starts_with("elastic_ephemeral_disk_");
    if local_or_ephemeral {
        return Err(RuleError::DiskCategoryOperationNotSupported { disk_id, category });
    }
    // A subscription that ends exactly now has ended.
    if disk
        .expires_in
        .is_some_and(|left| left <= TimeDelta::zero())
    {
        return Err(RuleError::DiskInArrears { disk_id });
    }
    if !disk.ever_attached {
        return Err(RuleError::IncorrectDiskStatusNeverAttached { disk_id });
    }
    let status = DISK_STATUSES[disk.status].1;
    // The disk must be In_use on an instance of the caller's that can be seen.
    let instance = match &world.instance {
        Some(instance) if status == "In_use" && instance.owner == CALLER => instance,
        _ => return Err(RuleError::IncorrectDiskStatus { disk_id, status }),
    };
    let instance_status = INSTANCE_STATUSES[instance.status].1;
    if instance_status != "Running" && instance_status != "Stopped" {
        return Err(RuleError::IncorrectInstanceStatus {
            disk_id,
            instance_id,
            status: instance_status,
        });
    }
    if instance.lock_reasons.contains(&"security") {
        return Err(RuleError::InstanceLockedForSecurity {
            disk_id,
            instance_id,
        });
    }
    if !instance.ever_started {
        return Err(RuleError::IncorrectDiskStatusNeverUsed {
            disk_id,
            instance_id,
        });
    }
    // "After creating instances or replacing the system disk, you can create a snapshot one
    // hour later": still initializing while less than the window has passed.
    let window = TimeDelta::from_std(world.init_window).expect("a small window");
    if disk.age < window {
        let created_at = now - disk.age;
        return Err(RuleError::IncorrectDiskStatusInitializing {
            disk_id,
            retry_after: seconds_until(now, created_at + window),
        });
    }
    if world.history.contains(&PastSnapshot::Progressing) {
        return Err(RuleError::IncorrectDiskStatusCreatingSnapshot {
            disk_id,
            snapshot_id: IN_PROGRESS.to_owned(),
            retry_after: copy_seconds_left(
                now,
                now - world.copy_started_ago,
                world.copy_size_gib,
                world.copy_rate_mibps,
            ),
        });
    }
    // Every snapshot the disk holds counts, whatever its status.
    if world.history.len() >= world.quota as usize {
        return Err(RuleError::QuotaExceedSnapshot {
            disk_id,
            quota: world.quota,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The engine's view of the same world: what the store reads under the disk lock.

fn engine_input(world: &World) -> (CreateState, Policy) {
    let now = world.now;
    let state = CreateState {
        account: world.account.map(|(activated, broke)| Account {
            account_id: CALLER.to_owned(),
            snapshot_service_activated: activated,
            insufficient_balance: broke,
        }),
        disk: world.disk.as_ref().map(|disk| Disk {
            disk_id: DISK.to_owned(),
            account_id: disk.owner.to_owned(),
            category: CATEGORIES[disk.category].0,
            disk_type: DiskType::Data,
            status: DISK_STATUSES[disk.status].0,
            instance_id: world.instance.as_ref().map(|_| INSTANCE.to_owned()),
            size_gib: disk.size_gib,
            created_at: now - disk.age,
            expires_at: disk.expires_in.map(|left| now + left),
            ever_attached: disk.ever_attached,
        }),
        instance: world.instance.as_ref().map(|instance| Instance {
            instance_id: INSTANCE.to_owned(),
            account_id: instance.owner.to_owned(),
            status: INSTANCE_STATUSES[instance.status].0,
            created_at: now - TimeDelta::days(30),
            last_started_at: instance.ever_started.then(|| now - TimeDelta::days(29)),
            lock_reasons: instance
                .lock_reasons
                .iter()
                .map(|r| (*r).to_owned())
                .collect(),
        }),
        snapshot_count: i64::try_from(world.history.len()).expect("a short history"),
        in_progress: world.history.contains(&PastSnapshot::Progressing).then(|| {
            InProgressSnapshot {
                snapshot_id: IN_PROGRESS.to_owned(),
                started_at: now - world.copy_started_ago,
                source_disk_size_gib: world.copy_size_gib,
                due_at: None,
            }
        }),
    };
    let policy = Policy {
        snapshot_quota: world.quota,
        init_window: world.init_window,
        copy_rate_mibps: world.copy_rate_mibps,
        // The seed's rule, which the model writes.
        snapshot_available_disks: false,
    };
    (state, policy)
}

// ---------------------------------------------------------------------------------------------
// Generators: mostly-valid worlds, so that every rule (not only the first few) gets exercised.

/// `base` plus or minus a small offset (none, a nanosecond, a microsecond, a millisecond, a
/// second, or anything up to two minutes).
fn around(base: TimeDelta) -> impl Strategy<Value = TimeDelta> {
    let offset = prop_oneof![
        Just(0i64),
        Just(1),
        Just(1_000),
        Just(1_000_000),
        Just(999_999_999),
        Just(1_000_000_000),
        Just(1_000_000_001),
        0i64..120_000_000_000,
    ];
    (offset, any::<bool>()).prop_map(move |(nanos, later)| {
        let offset = TimeDelta::nanoseconds(nanos);
        if later { base + offset } else { base - offset }
    })
}

fn mostly<T: Clone + std::fmt::Debug + 'static>(
    usual: T,
    other: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![4 => Just(usual), 1 => other].boxed()
}

fn account() -> impl Strategy<Value = Option<(bool, bool)>> {
    mostly(
        Some((true, false)),
        proptest::option::of((any::<bool>(), any::<bool>())),
    )
}

fn disk(init_window: Duration) -> impl Strategy<Value = Option<DiskFacts>> {
    let window = TimeDelta::from_std(init_window).expect("a small window");
    let age = prop_oneof![
        2 => around(window),
        1 => around(TimeDelta::zero()),
        2 => (1i64..400).prop_map(TimeDelta::days),
    ];
    let expires_in = prop_oneof![
        3 => Just(None),
        2 => around(TimeDelta::zero()).prop_map(Some),
        1 => (-400i64..400).prop_map(|d| Some(TimeDelta::days(d))),
    ];
    let facts = (
        mostly(CALLER, Just(OTHER)),
        mostly(3usize, 0..CATEGORIES.len()),
        mostly(0usize, 0..DISK_STATUSES.len()),
        age,
        expires_in,
        mostly(true, any::<bool>()),
        1i32..2048,
    )
        .prop_map(
            |(owner, category, status, age, expires_in, ever_attached, size_gib)| DiskFacts {
                owner,
                category,
                status,
                age,
                expires_in,
                ever_attached,
                size_gib,
            },
        );
    prop_oneof![9 => facts.prop_map(Some), 1 => Just(None)]
}

fn instance() -> impl Strategy<Value = Option<InstanceFacts>> {
    let facts = (
        mostly(CALLER, Just(OTHER)),
        prop_oneof![Just(2usize), Just(4), 0..INSTANCE_STATUSES.len()],
        mostly(true, any::<bool>()),
        mostly(
            Vec::new(),
            proptest::sample::subsequence(LOCK_REASONS.to_vec(), 0..=3),
        ),
    )
        .prop_map(
            |(owner, status, ever_started, lock_reasons)| InstanceFacts {
                owner,
                status,
                ever_started,
                lock_reasons,
            },
        );
    prop_oneof![9 => facts.prop_map(Some), 1 => Just(None)]
}

/// A disk's snapshots: counts around the quota, the newest possibly still progressing.
fn history(quota: u32) -> impl Strategy<Value = Vec<PastSnapshot>> {
    let quota = quota as usize;
    let length = prop_oneof![
        Just(0usize),
        quota.saturating_sub(1)..=quota + 1,
        0..=quota + 2,
    ];
    let done = prop_oneof![Just(PastSnapshot::Accomplished), Just(PastSnapshot::Failed)];
    (
        length.prop_flat_map(move |n| proptest::collection::vec(done.clone(), n)),
        any::<bool>(),
    )
        .prop_map(|(mut history, last_progressing)| {
            if last_progressing && let Some(last) = history.last_mut() {
                *last = PastSnapshot::Progressing;
            }
            history
        })
}

fn world() -> impl Strategy<Value = World> {
    let policy = (
        prop_oneof![Just(1u32), Just(2), Just(3), Just(64)],
        prop_oneof![
            Just(Duration::from_secs(3600)),
            Just(Duration::from_secs(90 * 60)),
            Just(Duration::ZERO),
            (1u64..7200).prop_map(Duration::from_secs),
        ],
        prop_oneof![Just(256u32), Just(1), Just(4096), 1u32..100_000],
    );
    policy.prop_flat_map(|(quota, init_window, copy_rate_mibps)| {
        (
            account(),
            disk(init_window),
            instance(),
            history(quota),
            prop_oneof![
                around(TimeDelta::zero()).prop_map(|d| d.abs()),
                (0i64..10_000_000_000_000).prop_map(TimeDelta::nanoseconds),
            ],
            prop_oneof![Just(40i32), 1i32..65_536],
            0i64..1_000_000_000,
        )
            .prop_map(
                move |(account, disk, instance, history, started_ago, size, nanos)| World {
                    account,
                    disk,
                    instance,
                    history,
                    copy_started_ago: started_ago,
                    copy_size_gib: size,
                    quota,
                    init_window,
                    copy_rate_mibps,
                    now: Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
                        + TimeDelta::nanoseconds(nanos),
                },
            )
    })
}

/// The retry delay a refusal carries, if any.
fn retry_after(result: &Result<(), RuleError>) -> Option<Duration> {
    match result {
        Err(
            RuleError::IncorrectDiskStatusInitializing { retry_after, .. }
            | RuleError::IncorrectDiskStatusCreatingSnapshot { retry_after, .. },
        ) => Some(*retry_after),
        _ => None,
    }
}

/// The answer with its retry delay blanked out: the rule, ids and states alone.
fn without_retry_delay(result: Result<(), RuleError>) -> Result<(), RuleError> {
    result.map_err(|err| match err {
        RuleError::IncorrectDiskStatusInitializing { disk_id, .. } => {
            RuleError::IncorrectDiskStatusInitializing {
                disk_id,
                retry_after: Duration::ZERO,
            }
        }
        RuleError::IncorrectDiskStatusCreatingSnapshot {
            disk_id,
            snapshot_id,
            ..
        } => RuleError::IncorrectDiskStatusCreatingSnapshot {
            disk_id,
            snapshot_id,
            retry_after: Duration::ZERO,
        },
        other => other,
    })
}

proptest! {
    #![proptest_config(config(2048))]

    /// The rule that answers, with its ids and states, is the model's; the retry delay is
    /// within a second of the model's exact one (the engine estimates a copy in whole
    /// seconds, which may add up to one).
    #[test]
    fn the_engine_answers_what_the_reference_model_of_the_seed_rules_says(world in world()) {
        let (state, policy) = engine_input(&world);
        let decided = decide_create(CALLER, DISK, &state, &policy, world.now);
        let expected = model(&world);
        if let (Some(got), Some(want)) = (retry_after(&decided), retry_after(&expected)) {
            prop_assert!(
                got.abs_diff(want) <= Duration::from_secs(1),
                "retry delay {:?}, the model says {:?}; world: {:#?}", got, want, world
            );
        }
        prop_assert_eq!(
            without_retry_delay(decided),
            without_retry_delay(expected),
            "world: {:#?}",
            world
        );
    }

    /// RetryInfo promises the time left, rounded up: a client that waits that long must not
    /// be refused again for the same reason.
    #[test]
        fn a_retry_delay_is_never_shorter_than_the_time_left(world in world()) {
        let (state, policy) = engine_input(&world);
        let decided = decide_create(CALLER, DISK, &state, &policy, world.now);
        if let (Some(got), Some(want)) = (retry_after(&decided), retry_after(&model(&world))) {
            prop_assert!(got >= want, "retry delay {:?} < time left {:?}; world: {:#?}", got, want, world);
        }
    }
}

/// The generator reaches every rule (a property that only ever saw the first rule fail would
/// prove little).
#[test]
fn the_generated_worlds_reach_every_rule_and_ok() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = world();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4000 {
        let world = strategy.new_tree(&mut runner).expect("a world").current();
        let rule = match model(&world) {
            Ok(()) => "Ok".to_owned(),
            Err(err) => err
                .to_string()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        seen.insert(rule);
    }
    let expected = [
        "Ok",
        "InvalidAccountStatus.SnapshotServiceUnavailable",
        "InvalidAccountStatus.NotEnoughBalance",
        "InvalidDiskId.NotFound",
        "DiskCategory.OperationNotSupported",
        "DiskInArrears",
        "IncorrectDiskStatus.NeverAttached",
        "IncorrectDiskStatus",
        "IncorrectInstanceStatus",
        "InstanceLockedForSecurity",
        "IncorrectDiskStatus.NeverUsed",
        "IncorrectDiskStatus.Initializing",
        "IncorrectDiskStatus.CreatingSnapshot",
        "QuotaExceed.Snapshot",
    ];
    for rule in expected {
        assert!(
            seen.contains(rule),
            "no generated world ends at {rule}: {seen:?}"
        );
    }
}

/// A world in which every rule passes.
fn healthy_world() -> World {
    World {
        account: Some((true, false)),
        disk: Some(DiskFacts {
            owner: CALLER,
            category: 3,
            status: 0,
            age: TimeDelta::days(2),
            expires_in: None,
            ever_attached: true,
            size_gib: 40,
        }),
        instance: Some(InstanceFacts {
            owner: CALLER,
            status: 2,
            ever_started: true,
            lock_reasons: Vec::new(),
        }),
        history: Vec::new(),
        copy_started_ago: TimeDelta::zero(),
        copy_size_gib: 40,
        quota: 64,
        init_window: Duration::from_secs(3600),
        copy_rate_mibps: 256,
        now: Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap(),
    }
}

/// The two counterexamples the property above found, as fixed cases.
#[test]
fn the_time_left_is_rounded_up_not_truncated_to_milliseconds() {
    // 1.0005 s of the init window left: the answer must be 2 s, not 1 s.
    let mut initializing = healthy_world();
    initializing.disk.as_mut().unwrap().age =
        TimeDelta::seconds(3600) - TimeDelta::microseconds(1_000_500);
    // A 40 GiB copy at 1 MiB/s (40960 s) that started 0.999999999 s ago: 40959.000000001 s
    // left, so 40960 s, not 40959 s.
    let mut copying = healthy_world();
    copying.history = vec![PastSnapshot::Progressing];
    copying.copy_rate_mibps = 1;
    copying.copy_started_ago = TimeDelta::nanoseconds(999_999_999);
    for (label, world, want) in [
        ("initializing", initializing, 2),
        ("copying", copying, 40_960),
    ] {
        let (state, policy) = engine_input(&world);
        let decided = decide_create(CALLER, DISK, &state, &policy, world.now);
        assert_eq!(
            retry_after(&model(&world)),
            Some(Duration::from_secs(want)),
            "{label}"
        );
        assert_eq!(
            retry_after(&decided),
            Some(Duration::from_secs(want)),
            "{label}"
        );
    }
}
