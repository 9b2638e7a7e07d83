//! The demo inventory: one account, instance and disk per rule of the seed, so that every
//! CreateSnapshot answer can be seen from grpcurl on a fresh `cargo run`.
//!
//! Seeded automatically only into an empty embedded (SQLite) store, unless disabled; into
//! PostgreSQL only on request (`snapshotd seed-demo`).

use chrono::TimeDelta;

use crate::domain::{
    AccessKey, Account, Disk, DiskCategory, DiskStatus, DiskType, Instance, InstanceStatus,
    SECURITY_LOCK, Timestamp,
};
use crate::service::{Service, ServiceError};

/// The demo tenant; call the snapshot API with `x-account-id: acct-demo`.
pub const DEMO_ACCOUNT: &str = "acct-demo";

/// The demo access key of `acct-demo` for the ECS-compatible HTTP edge (and the SDKs): not a
/// secret, as the demo inventory is not.
pub const DEMO_ACCESS_KEY_ID: &str = "LTAIdemo";
pub const DEMO_ACCESS_KEY_SECRET: &str = "demo-secret-of-acct-demo";

/// Every demo key pair: `acct-demo`'s, and one for each account a seed error row needs.
pub const DEMO_ACCESS_KEYS: &[(&str, &str, &str)] = &[
    (DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET, DEMO_ACCOUNT),
    (
        "LTAIdemoInactive",
        "demo-secret-of-acct-demo-inactive",
        "acct-demo-inactive",
    ),
    (
        "LTAIdemoBroke",
        "demo-secret-of-acct-demo-broke",
        "acct-demo-broke",
    ),
];

/// Each demo disk and the answer CreateSnapshot gives for it (under `acct-demo` unless noted).
pub const DEMO_DISKS: &[(&str, &str)] = &[
    (
        "d-demo-ok",
        "a snapshot id (a second call: IncorrectDiskStatus.CreatingSnapshot)",
    ),
    ("d-demo-ok-2", "a snapshot id"),
    ("d-demo-local", "DiskCategory.OperationNotSupported"),
    ("d-demo-expired", "DiskInArrears"),
    ("d-demo-never-attached", "IncorrectDiskStatus.NeverAttached"),
    ("d-demo-detached", "IncorrectDiskStatus"),
    ("d-demo-instance-starting", "IncorrectInstanceStatus"),
    ("d-demo-instance-locked", "InstanceLockedForSecurity"),
    ("d-demo-never-used", "IncorrectDiskStatus.NeverUsed"),
    (
        "d-demo-new",
        "IncorrectDiskStatus.Initializing (for an hour after seeding)",
    ),
    (
        "d-demo-inactive",
        "InvalidAccountStatus.SnapshotServiceUnavailable (as acct-demo-inactive)",
    ),
    (
        "d-demo-broke",
        "InvalidAccountStatus.NotEnoughBalance (as acct-demo-broke)",
    ),
];

fn instance(id: &str, account: &str, status: InstanceStatus, now: Timestamp) -> Instance {
    Instance {
        instance_id: id.to_owned(),
        account_id: account.to_owned(),
        status,
        created_at: now - TimeDelta::days(30),
        last_started_at: Some(now - TimeDelta::days(29)),
        lock_reasons: Vec::new(),
    }
}

fn disk(id: &str, account: &str, instance: Option<&str>, now: Timestamp) -> Disk {
    Disk {
        disk_id: id.to_owned(),
        account_id: account.to_owned(),
        category: DiskCategory::CloudEssd,
        disk_type: DiskType::Data,
        status: if instance.is_some() {
            DiskStatus::InUse
        } else {
            DiskStatus::Available
        },
        instance_id: instance.map(str::to_owned),
        size_gib: 40,
        created_at: now - TimeDelta::days(30),
        expires_at: None,
        ever_attached: true,
    }
}

/// The demo records, as of `now`.
pub fn demo_inventory(now: Timestamp) -> (Vec<Account>, Vec<Instance>, Vec<Disk>) {
    let account = |id: &str, activated: bool, broke: bool| Account {
        account_id: id.to_owned(),
        snapshot_service_activated: activated,
        insufficient_balance: broke,
    };
    let accounts = vec![
        account(DEMO_ACCOUNT, true, false),
        account("acct-demo-inactive", false, false),
        account("acct-demo-broke", true, true),
    ];

    let running = instance("i-demo-running", DEMO_ACCOUNT, InstanceStatus::Running, now);
    let starting = instance(
        "i-demo-starting",
        DEMO_ACCOUNT,
        InstanceStatus::Starting,
        now,
    );
    let locked = Instance {
        lock_reasons: vec![SECURITY_LOCK.to_owned()],
        ..instance("i-demo-locked", DEMO_ACCOUNT, InstanceStatus::Stopped, now)
    };
    let fresh = Instance {
        last_started_at: None,
        ..instance("i-demo-fresh", DEMO_ACCOUNT, InstanceStatus::Stopped, now)
    };
    let inactive = instance(
        "i-demo-inactive",
        "acct-demo-inactive",
        InstanceStatus::Running,
        now,
    );
    let broke = instance(
        "i-demo-broke",
        "acct-demo-broke",
        InstanceStatus::Running,
        now,
    );

    let on_running = Some("i-demo-running");
    let disks = vec![
        disk("d-demo-ok", DEMO_ACCOUNT, on_running, now),
        Disk {
            size_gib: 20,
            disk_type: DiskType::System,
            ..disk("d-demo-ok-2", DEMO_ACCOUNT, on_running, now)
        },
        Disk {
            category: DiskCategory::LocalSsdPro,
            ..disk("d-demo-local", DEMO_ACCOUNT, on_running, now)
        },
        Disk {
            expires_at: Some(now - TimeDelta::days(1)),
            ..disk("d-demo-expired", DEMO_ACCOUNT, on_running, now)
        },
        Disk {
            ever_attached: false,
            ..disk("d-demo-never-attached", DEMO_ACCOUNT, None, now)
        },
        disk("d-demo-detached", DEMO_ACCOUNT, None, now),
        disk(
            "d-demo-instance-starting",
            DEMO_ACCOUNT,
            Some("i-demo-starting"),
            now,
        ),
        disk(
            "d-demo-instance-locked",
            DEMO_ACCOUNT,
            Some("i-demo-locked"),
            now,
        ),
        disk("d-demo-never-used", DEMO_ACCOUNT, Some("i-demo-fresh"), now),
        Disk {
            created_at: now,
            ..disk("d-demo-new", DEMO_ACCOUNT, on_running, now)
        },
        disk(
            "d-demo-inactive",
            "acct-demo-inactive",
            Some("i-demo-inactive"),
            now,
        ),
        disk("d-demo-broke", "acct-demo-broke", Some("i-demo-broke"), now),
    ];
    let instances = vec![running, starting, locked, fresh, inactive, broke];
    (accounts, instances, disks)
}

/// Puts the demo inventory into `store` (an upsert: safe to repeat).
pub async fn seed_demo(service: &Service, now: Timestamp) -> Result<(), ServiceError> {
    let (accounts, instances, disks) = demo_inventory(now);
    for account in &accounts {
        service.put_account(account).await?;
    }
    for instance in &instances {
        service.put_instance(instance).await?;
    }
    for disk in &disks {
        service.put_disk(disk).await?;
    }
    for (id, secret, account) in DEMO_ACCESS_KEYS {
        let key = AccessKey::parse(id, secret, account)
            .expect("the demo key pairs are valid: a unit test parses them");
        service.put_access_key(&key).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_demo_disk_is_documented_and_every_documented_disk_exists() {
        let (_, _, disks) = demo_inventory(chrono::Utc::now());
        let seeded: Vec<_> = disks.iter().map(|d| d.disk_id.as_str()).collect();
        let documented: Vec<_> = DEMO_DISKS.iter().map(|(id, _)| *id).collect();
        assert_eq!(seeded, documented);
    }

    #[test]
    fn every_demo_key_pair_parses_for_a_demo_account() {
        let (accounts, _, _) = demo_inventory(chrono::Utc::now());
        for (id, secret, account) in DEMO_ACCESS_KEYS {
            AccessKey::parse(id, secret, account).expect("a valid key pair");
            assert!(
                accounts.iter().any(|a| a.account_id == *account),
                "{account}"
            );
        }
    }
}
