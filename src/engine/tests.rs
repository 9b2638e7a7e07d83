//! Table tests for the rules engine: one test per rule, each case changes one thing in a state
//! that passes every rule and names the exact [`RuleError`] it expects.
//!
//! Times are fixed (`now()`), never read from the clock, so every boundary is exact.

use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};

use super::*;
use crate::domain::{
    Account, Disk, DiskCategory, DiskStatus, DiskType, InProgressSnapshot, Instance,
    InstanceStatus, Timestamp,
};

const ACCOUNT: &str = "acc-1";
const OTHER_ACCOUNT: &str = "acc-2";
const DISK: &str = "d-disk1";
const INSTANCE: &str = "i-inst1";
const SNAPSHOT: &str = "s-inprogress";

/// The fixed instant every test decides at.
fn now() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn mins(n: i64) -> TimeDelta {
    TimeDelta::minutes(n)
}

/// A disk that passes every rule, with the default policy and `now()`.
fn healthy() -> (CreateState, Policy, Timestamp) {
    let now = now();
    let state = CreateState {
        account: Some(Account {
            account_id: ACCOUNT.to_owned(),
            snapshot_service_activated: true,
            insufficient_balance: false,
        }),
        disk: Some(Disk {
            disk_id: DISK.to_owned(),
            account_id: ACCOUNT.to_owned(),
            category: DiskCategory::CloudEssd,
            disk_type: DiskType::Data,
            status: DiskStatus::InUse,
            instance_id: Some(INSTANCE.to_owned()),
            size_gib: 40,
            created_at: now - TimeDelta::hours(2),
            expires_at: None,
            ever_attached: true,
        }),
        instance: Some(Instance {
            instance_id: INSTANCE.to_owned(),
            account_id: ACCOUNT.to_owned(),
            status: InstanceStatus::Running,
            created_at: now - TimeDelta::hours(3),
            last_started_at: Some(now - TimeDelta::hours(2)),
            lock_reasons: Vec::new(),
        }),
        snapshot_count: 0,
        in_progress: None,
    };
    (state, Policy::default(), now)
}

/// The healthy state with one change applied.
fn healthy_with(change: impl FnOnce(&mut CreateState)) -> CreateState {
    let (mut state, _, _) = healthy();
    change(&mut state);
    state
}

fn disk(state: &mut CreateState) -> &mut Disk {
    state.disk.as_mut().expect("the healthy state has a disk")
}

fn instance(state: &mut CreateState) -> &mut Instance {
    state
        .instance
        .as_mut()
        .expect("the healthy state has an instance")
}

fn account(state: &mut CreateState) -> &mut Account {
    state
        .account
        .as_mut()
        .expect("the healthy state has an account")
}

/// `decide_create` for the caller `ACCOUNT` asking about `DISK` under the default policy.
fn decide(state: &CreateState) -> Result<(), RuleError> {
    decide_with(state, &Policy::default())
}

fn decide_with(state: &CreateState, policy: &Policy) -> Result<(), RuleError> {
    decide_create(ACCOUNT, DISK, state, policy, now())
}

fn in_progress(started_at: Timestamp, size_gib: i32) -> Option<InProgressSnapshot> {
    Some(InProgressSnapshot {
        snapshot_id: SNAPSHOT.to_owned(),
        started_at,
        source_disk_size_gib: size_gib,
        due_at: None,
    })
}

fn service_unavailable() -> Result<(), RuleError> {
    Err(RuleError::InvalidAccountStatusSnapshotServiceUnavailable {
        account_id: ACCOUNT.to_owned(),
    })
}

fn disk_not_found() -> Result<(), RuleError> {
    Err(RuleError::InvalidDiskIdNotFound {
        disk_id: DISK.to_owned(),
    })
}

fn incorrect_disk_status(status: &'static str) -> Result<(), RuleError> {
    Err(RuleError::IncorrectDiskStatus {
        disk_id: DISK.to_owned(),
        status,
    })
}

fn incorrect_instance_status(status: &'static str) -> Result<(), RuleError> {
    Err(RuleError::IncorrectInstanceStatus {
        disk_id: DISK.to_owned(),
        instance_id: INSTANCE.to_owned(),
        status,
    })
}

fn initializing(retry_after_secs: u64) -> Result<(), RuleError> {
    Err(RuleError::IncorrectDiskStatusInitializing {
        disk_id: DISK.to_owned(),
        retry_after: Duration::from_secs(retry_after_secs),
    })
}

fn creating_snapshot(retry_after_secs: u64) -> Result<(), RuleError> {
    Err(RuleError::IncorrectDiskStatusCreatingSnapshot {
        disk_id: DISK.to_owned(),
        snapshot_id: SNAPSHOT.to_owned(),
        retry_after: Duration::from_secs(retry_after_secs),
    })
}

fn quota_exceeded(quota: u32) -> Result<(), RuleError> {
    Err(RuleError::QuotaExceedSnapshot {
        disk_id: DISK.to_owned(),
        quota,
    })
}

#[test]
fn a_healthy_disk_may_be_snapshotted() {
    let (state, policy, now) = healthy();
    assert_eq!(decide_create(ACCOUNT, DISK, &state, &policy, now), Ok(()));
}

#[test]
fn the_account_must_exist_and_have_the_snapshot_service_activated() {
    let cases = [
        ("activated account", healthy_with(|_| {}), Ok(())),
        (
            "unknown account",
            healthy_with(|s| s.account = None),
            service_unavailable(),
        ),
        (
            "service not activated",
            healthy_with(|s| account(s).snapshot_service_activated = false),
            service_unavailable(),
        ),
    ];
    for (label, state, expected) in cases {
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn an_account_with_insufficient_balance_is_refused() {
    let cases = [
        ("balance ok", healthy_with(|_| {}), Ok(())),
        (
            "insufficient balance",
            healthy_with(|s| account(s).insufficient_balance = true),
            Err(RuleError::InvalidAccountStatusNotEnoughBalance {
                account_id: ACCOUNT.to_owned(),
            }),
        ),
    ];
    for (label, state, expected) in cases {
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn a_disk_that_is_missing_or_belongs_to_another_account_is_not_found() {
    let cases = [
        ("own disk", healthy_with(|_| {}), Ok(())),
        (
            "no such disk",
            healthy_with(|s| s.disk = None),
            disk_not_found(),
        ),
        (
            "disk of another account",
            healthy_with(|s| disk(s).account_id = OTHER_ACCOUNT.to_owned()),
            disk_not_found(),
        ),
    ];
    for (label, state, expected) in cases {
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn only_cloud_disk_categories_support_snapshots() {
    let not_supported = |category: &'static str| {
        Err(RuleError::DiskCategoryOperationNotSupported {
            disk_id: DISK.to_owned(),
            category,
        })
    };
    let cases = [
        ("cloud", DiskCategory::Cloud, Ok(())),
        ("cloud_efficiency", DiskCategory::CloudEfficiency, Ok(())),
        ("cloud_ssd", DiskCategory::CloudSsd, Ok(())),
        ("cloud_essd", DiskCategory::CloudEssd, Ok(())),
        ("cloud_auto", DiskCategory::CloudAuto, Ok(())),
        ("cloud_essd_entry", DiskCategory::CloudEssdEntry, Ok(())),
        (
            "local_ssd_pro",
            DiskCategory::LocalSsdPro,
            not_supported("local_ssd_pro"),
        ),
        (
            "local_hdd_pro",
            DiskCategory::LocalHddPro,
            not_supported("local_hdd_pro"),
        ),
        (
            "ephemeral",
            DiskCategory::Ephemeral,
            not_supported("ephemeral"),
        ),
        (
            "ephemeral_ssd",
            DiskCategory::EphemeralSsd,
            not_supported("ephemeral_ssd"),
        ),
        (
            "elastic_ephemeral_disk_standard",
            DiskCategory::ElasticEphemeralDiskStandard,
            not_supported("elastic_ephemeral_disk_standard"),
        ),
        (
            "elastic_ephemeral_disk_premium",
            DiskCategory::ElasticEphemeralDiskPremium,
            not_supported("elastic_ephemeral_disk_premium"),
        ),
    ];
    assert_eq!(
        cases.len(),
        DiskCategory::ALL.len(),
        "every category is covered"
    );
    for (label, category, expected) in cases {
        let state = healthy_with(|s| disk(s).category = category);
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn a_disk_whose_subscription_has_ended_is_in_arrears() {
    let in_arrears = || {
        Err(RuleError::DiskInArrears {
            disk_id: DISK.to_owned(),
        })
    };
    let cases = [
        ("pay-as-you-go (no expiry)", None, Ok(())),
        ("expires in one second", Some(now() + secs(1)), Ok(())),
        ("expires exactly now", Some(now()), in_arrears()),
        (
            "expired one second ago",
            Some(now() - secs(1)),
            in_arrears(),
        ),
        (
            "expired a year ago",
            Some(now() - TimeDelta::days(365)),
            in_arrears(),
        ),
    ];
    for (label, expires_at, expected) in cases {
        let state = healthy_with(|s| disk(s).expires_at = expires_at);
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn a_disk_never_attached_to_an_instance_is_refused() {
    let cases = [
        ("attached at some point", true, Ok(())),
        (
            "never attached",
            false,
            Err(RuleError::IncorrectDiskStatusNeverAttached {
                disk_id: DISK.to_owned(),
            }),
        ),
    ];
    for (label, ever_attached, expected) in cases {
        let state = healthy_with(|s| disk(s).ever_attached = ever_attached);
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn only_an_in_use_disk_with_a_visible_instance_may_be_snapshotted() {
    let cases = [
        ("In_use", healthy_with(|_| {}), Ok(())),
        (
            "Available",
            healthy_with(|s| disk(s).status = DiskStatus::Available),
            incorrect_disk_status("Available"),
        ),
        (
            "Attaching",
            healthy_with(|s| disk(s).status = DiskStatus::Attaching),
            incorrect_disk_status("Attaching"),
        ),
        (
            "Detaching",
            healthy_with(|s| disk(s).status = DiskStatus::Detaching),
            incorrect_disk_status("Detaching"),
        ),
        (
            "Creating",
            healthy_with(|s| disk(s).status = DiskStatus::Creating),
            incorrect_disk_status("Creating"),
        ),
        (
            "ReIniting",
            healthy_with(|s| disk(s).status = DiskStatus::ReIniting),
            incorrect_disk_status("ReIniting"),
        ),
        (
            "In_use without an instance",
            healthy_with(|s| s.instance = None),
            incorrect_disk_status("In_use"),
        ),
        (
            "In_use on an instance of another account",
            healthy_with(|s| instance(s).account_id = OTHER_ACCOUNT.to_owned()),
            incorrect_disk_status("In_use"),
        ),
        (
            "Available and detached",
            healthy_with(|s| {
                disk(s).status = DiskStatus::Available;
                disk(s).instance_id = None;
                s.instance = None;
            }),
            incorrect_disk_status("Available"),
        ),
    ];
    for (label, state, expected) in cases {
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn an_available_disk_attached_before_may_be_snapshotted_only_under_the_newer_ecs_policy() {
    let newer = Policy {
        snapshot_available_disks: true,
        ..Policy::default()
    };
    let available = |change: fn(&mut CreateState)| {
        healthy_with(|s| {
            disk(s).status = DiskStatus::Available;
            disk(s).instance_id = None;
            s.instance = None;
            change(s);
        })
    };
    let never_attached = Err(RuleError::IncorrectDiskStatusNeverAttached {
        disk_id: DISK.to_owned(),
    });
    // (case, state, the seed's verdict, the newer policy's verdict)
    let cases = [
        (
            "Available, attached before",
            available(|_| {}),
            incorrect_disk_status("Available"),
            Ok(()),
        ),
        (
            "Available, never attached",
            available(|s| disk(s).ever_attached = false),
            never_attached.clone(),
            never_attached,
        ),
        (
            "Available, still initializing",
            available(|s| disk(s).created_at = now() - mins(5)),
            incorrect_disk_status("Available"),
            initializing(55 * 60),
        ),
        (
            "Available, a copy in progress",
            available(|s| s.in_progress = in_progress(now() - secs(10), 40)),
            incorrect_disk_status("Available"),
            creating_snapshot(150),
        ),
        (
            "Available, at its quota",
            available(|s| s.snapshot_count = 64),
            incorrect_disk_status("Available"),
            quota_exceeded(64),
        ),
        (
            "Detaching",
            healthy_with(|s| disk(s).status = DiskStatus::Detaching),
            incorrect_disk_status("Detaching"),
            incorrect_disk_status("Detaching"),
        ),
        ("In_use", healthy_with(|_| {}), Ok(()), Ok(())),
        (
            "In_use, the instance never started",
            healthy_with(|s| instance(s).last_started_at = None),
            Err(RuleError::IncorrectDiskStatusNeverUsed {
                disk_id: DISK.to_owned(),
                instance_id: INSTANCE.to_owned(),
            }),
            Err(RuleError::IncorrectDiskStatusNeverUsed {
                disk_id: DISK.to_owned(),
                instance_id: INSTANCE.to_owned(),
            }),
        ),
    ];
    for (label, state, seed, newest) in cases {
        assert_eq!(decide(&state), seed, "the seed: {label}");
        assert_eq!(decide_with(&state, &newer), newest, "newer ECS: {label}");
    }
}

#[test]
fn the_instance_must_be_running_or_stopped() {
    let cases = [
        ("Running", InstanceStatus::Running, Ok(())),
        ("Stopped", InstanceStatus::Stopped, Ok(())),
        (
            "Pending",
            InstanceStatus::Pending,
            incorrect_instance_status("Pending"),
        ),
        (
            "Starting",
            InstanceStatus::Starting,
            incorrect_instance_status("Starting"),
        ),
        (
            "Stopping",
            InstanceStatus::Stopping,
            incorrect_instance_status("Stopping"),
        ),
    ];
    for (label, status, expected) in cases {
        let state = healthy_with(|s| instance(s).status = status);
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn an_instance_locked_for_security_is_refused() {
    let locked = || {
        Err(RuleError::InstanceLockedForSecurity {
            disk_id: DISK.to_owned(),
            instance_id: INSTANCE.to_owned(),
        })
    };
    let cases: [(&str, &[&str], _); 4] = [
        ("no locks", &[], Ok(())),
        ("financial lock only", &["financial"], Ok(())),
        ("security lock", &["security"], locked()),
        (
            "financial and security locks",
            &["financial", "security"],
            locked(),
        ),
    ];
    for (label, reasons, expected) in cases {
        let reasons = reasons.iter().map(|r| (*r).to_owned()).collect();
        let state = healthy_with(|s| instance(s).lock_reasons = reasons);
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn a_disk_whose_instance_never_started_was_never_used() {
    let cases = [
        (
            "started two hours ago",
            Some(now() - TimeDelta::hours(2)),
            Ok(()),
        ),
        (
            "never started",
            None,
            Err(RuleError::IncorrectDiskStatusNeverUsed {
                disk_id: DISK.to_owned(),
                instance_id: INSTANCE.to_owned(),
            }),
        ),
    ];
    for (label, last_started_at, expected) in cases {
        let state = healthy_with(|s| instance(s).last_started_at = last_started_at);
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn a_disk_created_less_than_the_init_window_ago_is_still_initializing() {
    let cases = [
        ("created just now", TimeDelta::zero(), initializing(3600)),
        ("created 59 minutes ago", mins(59), initializing(60)),
        (
            "created 59 min 59.5 s ago rounds up to 1 s",
            mins(60) - TimeDelta::milliseconds(500),
            initializing(1),
        ),
        ("created exactly 60 minutes ago", mins(60), Ok(())),
        ("created 61 minutes ago", mins(61), Ok(())),
    ];
    for (label, age, expected) in cases {
        let state = healthy_with(|s| disk(s).created_at = now() - age);
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn the_init_window_follows_the_policy() {
    let policy = Policy {
        init_window: Duration::from_secs(600),
        ..Policy::default()
    };
    let cases = [
        ("created 5 minutes ago", mins(5), initializing(300)),
        ("created 10 minutes ago", mins(10), Ok(())),
    ];
    for (label, age, expected) in cases {
        let state = healthy_with(|s| disk(s).created_at = now() - age);
        assert_eq!(decide_with(&state, &policy), expected, "{label}");
    }
}

#[test]
fn a_second_snapshot_is_refused_while_one_is_in_progress() {
    // 40 GiB at the default 256 MiB/s takes 160 s.
    let cases = [
        ("none in progress", None, Ok(())),
        (
            "started just now",
            in_progress(now(), 40),
            creating_snapshot(160),
        ),
        (
            "started 60 s ago",
            in_progress(now() - secs(60), 40),
            creating_snapshot(100),
        ),
        (
            "159.5 s elapsed rounds up to 1 s",
            in_progress(now() - TimeDelta::milliseconds(159_500), 40),
            creating_snapshot(1),
        ),
        (
            "due exactly now still waits 1 s",
            in_progress(now() - secs(160), 40),
            creating_snapshot(1),
        ),
        (
            "overdue still waits 1 s",
            in_progress(now() - mins(10), 40),
            creating_snapshot(1),
        ),
        (
            "empty source disk is estimated at 1 s",
            in_progress(now(), 0),
            creating_snapshot(1),
        ),
    ];
    for (label, in_progress, expected) in cases {
        let state = healthy_with(|s| s.in_progress = in_progress);
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn a_disk_holding_its_quota_of_snapshots_is_refused() {
    let custom = Policy {
        snapshot_quota: 3,
        ..Policy::default()
    };
    let cases = [
        ("0 of 64", 0, Policy::default(), Ok(())),
        ("63 of 64", 63, Policy::default(), Ok(())),
        ("64 of 64", 64, Policy::default(), quota_exceeded(64)),
        ("65 of 64", 65, Policy::default(), quota_exceeded(64)),
        ("2 of 3", 2, custom, Ok(())),
        ("3 of 3", 3, custom, quota_exceeded(3)),
    ];
    for (label, snapshot_count, policy, expected) in cases {
        let state = healthy_with(|s| s.snapshot_count = snapshot_count);
        assert_eq!(decide_with(&state, &policy), expected, "{label}");
    }
}

#[test]
fn a_state_breaking_several_rules_reports_the_earliest_in_the_seed_order() {
    let cases = [
        (
            "not activated + disk missing",
            healthy_with(|s| {
                account(s).snapshot_service_activated = false;
                s.disk = None;
            }),
            service_unavailable(),
        ),
        (
            "not activated + insufficient balance",
            healthy_with(|s| {
                account(s).snapshot_service_activated = false;
                account(s).insufficient_balance = true;
            }),
            service_unavailable(),
        ),
        (
            "insufficient balance + disk missing",
            healthy_with(|s| {
                account(s).insufficient_balance = true;
                s.disk = None;
            }),
            Err(RuleError::InvalidAccountStatusNotEnoughBalance {
                account_id: ACCOUNT.to_owned(),
            }),
        ),
        (
            "disk of another account + local category",
            healthy_with(|s| {
                disk(s).account_id = OTHER_ACCOUNT.to_owned();
                disk(s).category = DiskCategory::LocalSsdPro;
            }),
            disk_not_found(),
        ),
        (
            "local category + in arrears",
            healthy_with(|s| {
                disk(s).category = DiskCategory::Ephemeral;
                disk(s).expires_at = Some(now() - secs(1));
            }),
            Err(RuleError::DiskCategoryOperationNotSupported {
                disk_id: DISK.to_owned(),
                category: "ephemeral",
            }),
        ),
        (
            "in arrears + never attached",
            healthy_with(|s| {
                disk(s).expires_at = Some(now());
                disk(s).ever_attached = false;
            }),
            Err(RuleError::DiskInArrears {
                disk_id: DISK.to_owned(),
            }),
        ),
        (
            "never attached + instance stopping",
            healthy_with(|s| {
                disk(s).ever_attached = false;
                instance(s).status = InstanceStatus::Stopping;
            }),
            Err(RuleError::IncorrectDiskStatusNeverAttached {
                disk_id: DISK.to_owned(),
            }),
        ),
        (
            "disk detaching + instance stopping",
            healthy_with(|s| {
                disk(s).status = DiskStatus::Detaching;
                instance(s).status = InstanceStatus::Stopping;
            }),
            incorrect_disk_status("Detaching"),
        ),
        (
            "instance starting + security lock",
            healthy_with(|s| {
                instance(s).status = InstanceStatus::Starting;
                instance(s).lock_reasons = vec!["security".to_owned()];
            }),
            incorrect_instance_status("Starting"),
        ),
        (
            "security lock + never started",
            healthy_with(|s| {
                instance(s).lock_reasons = vec!["security".to_owned()];
                instance(s).last_started_at = None;
            }),
            Err(RuleError::InstanceLockedForSecurity {
                disk_id: DISK.to_owned(),
                instance_id: INSTANCE.to_owned(),
            }),
        ),
        (
            "never started + initializing",
            healthy_with(|s| {
                instance(s).last_started_at = None;
                disk(s).created_at = now() - mins(1);
            }),
            Err(RuleError::IncorrectDiskStatusNeverUsed {
                disk_id: DISK.to_owned(),
                instance_id: INSTANCE.to_owned(),
            }),
        ),
        (
            "initializing + in progress",
            healthy_with(|s| {
                disk(s).created_at = now() - mins(59);
                s.in_progress = in_progress(now(), 40);
            }),
            initializing(60),
        ),
        (
            "in progress + quota full",
            healthy_with(|s| {
                s.in_progress = in_progress(now() - secs(60), 40);
                s.snapshot_count = 64;
            }),
            creating_snapshot(100),
        ),
    ];
    for (label, state, expected) in cases {
        assert_eq!(decide(&state), expected, "{label}");
    }
}

#[test]
fn the_copy_time_estimate_rounds_up_to_whole_seconds_and_is_at_least_one() {
    let cases = [
        ("0 GiB is at least 1 s", 0, 256, 1),
        ("negative size is treated as empty", -5, 256, 1),
        ("1 GiB at 1024 MiB/s", 1, 1024, 1),
        ("40 GiB at 256 MiB/s", 40, 256, 160),
        ("1 GiB at 1000 MiB/s rounds 1.024 s up", 1, 1000, 2),
        ("1 GiB at 3 MiB/s rounds 341.3 s up", 1, 3, 342),
        ("a zero rate is treated as 1 MiB/s", 1, 0, 1024),
    ];
    for (label, size_gib, rate_mibps, expected_secs) in cases {
        assert_eq!(
            estimated_copy_time(size_gib, rate_mibps),
            Duration::from_secs(expected_secs),
            "{label}"
        );
    }
}

#[test]
fn a_client_token_replays_only_with_the_same_parameters() {
    let binding = TokenBinding {
        fingerprint: "4:d-a1|0:|0:".to_owned(),
        snapshot_id: "s-first".to_owned(),
    };
    let cases = [
        ("fresh token", None, "4:d-a1|0:|0:", Ok(None)),
        (
            "same parameters",
            Some(&binding),
            "4:d-a1|0:|0:",
            Ok(Some("s-first".to_owned())),
        ),
        (
            "different parameters",
            Some(&binding),
            "4:d-a2|0:|0:",
            Err(RuleError::IdempotentParameterMismatch {
                client_token: "tok".to_owned(),
            }),
        ),
    ];
    for (label, bound, fingerprint, expected) in cases {
        assert_eq!(
            check_token_binding("tok", bound, fingerprint),
            expected,
            "{label}"
        );
    }
}

#[test]
fn inventory_belongs_to_an_existing_account() {
    let cases = [
        ("existing account", true, Ok(())),
        (
            "unknown account",
            false,
            Err(RuleError::InvalidAccountIdNotFound {
                account_id: ACCOUNT.to_owned(),
            }),
        ),
    ];
    for (label, exists, expected) in cases {
        assert_eq!(check_account_exists(ACCOUNT, exists), expected, "{label}");
    }
}

#[test]
fn a_disk_attaches_only_to_an_existing_instance_of_its_own_account() {
    let (state, _, _) = healthy();
    let disk = state.disk.expect("the healthy state has a disk");
    let cases = [
        ("instance of the same account", Some(ACCOUNT), Ok(())),
        (
            "no such instance",
            None,
            Err(RuleError::InvalidInstanceIdNotFound {
                instance_id: INSTANCE.to_owned(),
            }),
        ),
        (
            "instance of another account",
            Some(OTHER_ACCOUNT),
            Err(RuleError::InvalidParameter {
                field: "instance_id",
                why: format!("instance {INSTANCE} belongs to another account than disk {DISK}"),
            }),
        ),
    ];
    for (label, owner, expected) in cases {
        assert_eq!(
            check_disk_attachment(&disk, INSTANCE, owner),
            expected,
            "{label}"
        );
    }
}

#[test]
fn the_retry_hint_uses_the_backends_due_time_when_the_store_read_it() {
    let (mut state, policy, _) = healthy();
    let started_at = now() - TimeDelta::seconds(60);
    state.in_progress = Some(InProgressSnapshot {
        snapshot_id: SNAPSHOT.to_owned(),
        started_at,
        source_disk_size_gib: 40,
        due_at: Some(now() + TimeDelta::seconds(1000)),
    });
    match decide_with(&state, &policy) {
        Err(RuleError::IncorrectDiskStatusCreatingSnapshot { retry_after, .. }) => {
            assert_eq!(retry_after, Duration::from_secs(1000));
        }
        other => panic!("expected CreatingSnapshot, got {other:?}"),
    }
}

mod whatever_the_configuration {
    //! The rules take the policy from the command line and times from the inventory: no value
    //! of either may make them panic (issue 16 #7: `--init-window 300000y` once did).

    use proptest::prelude::*;

    use super::*;

    /// An instant anywhere from the earliest to the latest chrono can hold.
    fn any_instant() -> impl Strategy<Value = Timestamp> {
        let (earliest, latest) = (
            chrono::DateTime::<Utc>::MIN_UTC.timestamp(),
            chrono::DateTime::<Utc>::MAX_UTC.timestamp(),
        );
        prop_oneof![
            (earliest..=latest).prop_map(|s| Utc.timestamp_opt(s, 0).unwrap()),
            Just(chrono::DateTime::<Utc>::MAX_UTC),
            Just(now()),
        ]
    }

    proptest! {
        #[test]
        fn the_rules_never_panic(
            init_window_secs in prop_oneof![any::<u64>(), Just(300_000 * 365 * 86_400)],
            copy_rate_mibps in any::<u32>(),
            snapshot_available_disks in any::<bool>(),
            snapshot_quota in any::<u32>(),
            size_gib in any::<i32>(),
            created_at in any_instant(),
            started_at in any_instant(),
            now in any_instant(),
            in_progress in any::<bool>(),
        ) {
            let policy = Policy {
                snapshot_quota,
                init_window: Duration::from_secs(init_window_secs),
                copy_rate_mibps,
                snapshot_available_disks,
            };
            let state = healthy_with(|state| {
                disk(state).created_at = created_at;
                disk(state).size_gib = size_gib;
                state.in_progress = in_progress.then(|| InProgressSnapshot {
                    snapshot_id: SNAPSHOT.to_owned(),
                    started_at,
                    source_disk_size_gib: size_gib,
                    due_at: None,
                });
            });
            let _ = decide_create(ACCOUNT, DISK, &state, &policy, now);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ModifySnapshotAttribute.

mod modify {
    use super::*;
    use crate::domain::{
        ModifySnapshotAttributeCommand, ModifySnapshotAttributeParams, RetentionDays, Snapshot,
        SnapshotStatus, SnapshotUsage,
    };

    const ID: &str = "s-0123456789abcdefghij";

    /// A stored snapshot kept `retention_days` (0: forever), named `old`, modified long ago.
    fn stored(retention_days: i32) -> Snapshot {
        Snapshot {
            snapshot_id: ID.to_owned(),
            account_id: ACCOUNT.to_owned(),
            source_disk_id: DISK.to_owned(),
            snapshot_name: Some("old".to_owned()),
            description: "old description".to_owned(),
            source_disk_size_gib: 40,
            source_disk_type: DiskType::Data,
            status: SnapshotStatus::Accomplished,
            created_at: now() - TimeDelta::days(3),
            started_at: now() - TimeDelta::days(3),
            copy_due_at: now() - TimeDelta::days(3),
            last_modified_at: now() - TimeDelta::days(3),
            retention: RetentionDays::parse(retention_days).unwrap(),
            tags: Vec::new(),
            usage: SnapshotUsage::None,
        }
    }

    fn command(
        snapshot_name: Option<&str>,
        description: Option<&str>,
        retention_days: Option<i32>,
    ) -> ModifySnapshotAttributeCommand {
        let params = ModifySnapshotAttributeParams {
            snapshot_id: ID,
            snapshot_name,
            description,
            retention_days,
        };
        ModifySnapshotAttributeCommand::parse(ACCOUNT.to_owned(), &params).unwrap()
    }

    fn shorten(retention_days: i32, requested: i32) -> Result<(), RuleError> {
        Err(RuleError::InvalidRetentionDaysShortenNotSupported {
            snapshot_id: ID.to_owned(),
            retention_days,
            requested,
        })
    }

    #[test]
    fn a_retention_may_be_kept_or_extended_but_never_shortened() {
        // (stored, requested, verdict): 0 is forever, the longest.
        let cases = [
            (10, 10, Ok(())),
            (10, 11, Ok(())),
            (10, 65_536, Ok(())),
            (10, 0, Ok(())),
            (0, 0, Ok(())),
            (10, 9, shorten(10, 9)),
            (10, 1, shorten(10, 1)),
            (0, 1, shorten(0, 1)),
            (0, 65_536, shorten(0, 65_536)),
        ];
        for (retention, requested, verdict) in cases {
            let decided = decide_modify(
                &command(None, None, Some(requested)),
                Some(&stored(retention)),
                now(),
            );
            assert_eq!(decided.map(|_| ()), verdict, "{retention} -> {requested}");
        }
    }

    #[test]
    fn a_missing_snapshot_is_not_found_before_any_other_rule() {
        let decided = decide_modify(&command(None, None, Some(1)), None, now());
        assert_eq!(
            decided,
            Err(RuleError::InvalidSnapshotIdNotFound {
                snapshot_id: ID.to_owned()
            })
        );
    }

    #[test]
    fn only_the_attributes_given_change_and_last_modified_moves() {
        let snapshot = stored(10);
        let modified = |cmd| {
            decide_modify(&cmd, Some(&snapshot), now())
                .unwrap()
                .expect("something to write")
        };

        let renamed = modified(command(Some("new"), None, None));
        assert_eq!(renamed.snapshot_name.as_deref(), Some("new"));
        assert_eq!(renamed.description, snapshot.description);
        assert_eq!(renamed.retention, snapshot.retention);
        assert_eq!(renamed.last_modified_at, now());

        let unnamed = modified(command(Some(""), Some(""), None));
        assert_eq!(unnamed.snapshot_name, None);
        assert_eq!(unnamed.description, "");

        let extended = modified(command(None, None, Some(30)));
        assert_eq!(extended.retention.as_i32(), 30);
        assert_eq!(
            extended.retention.release_at(extended.created_at),
            Some(snapshot.created_at + TimeDelta::days(30)),
            "the release time counts from the creation"
        );
        assert_eq!(extended.snapshot_name, snapshot.snapshot_name);

        assert_eq!(
            decide_modify(&command(None, None, None), Some(&snapshot), now()),
            Ok(None),
            "a request naming no attribute writes nothing"
        );
    }
}

#[test]
fn deleting_an_image_the_caller_does_not_have_is_not_found() {
    let image_id = "m-0123456789abcdefghij";
    assert_eq!(decide_delete_image(image_id, true), Ok(()));
    assert_eq!(
        decide_delete_image(image_id, false),
        Err(RuleError::InvalidImageIdNotFound {
            image_id: image_id.to_owned()
        })
    );
}
