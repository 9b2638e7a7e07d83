//! The CreateSnapshot rules (#11..#23 of the CreateSnapshot table in `docs/errors.md`), in the
//! seed's precedence.
//!
//! Input-shape rules (#2..#8) live in the `parse` constructors of `src/domain/`; idempotence
//! (#9, #10) in `idempotence.rs`. This file decides on state the store read under the disk lock.

use std::time::Duration;

use chrono::TimeDelta;

use super::RuleError;
use crate::domain::{
    Account, Disk, DiskStatus, InProgressSnapshot, Instance, InstanceStatus, SECURITY_LOCK,
    Timestamp, later,
};

/// The tunable limits the rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Snapshots a disk may hold (every existing snapshot counts). The seed's limit is 64.
    pub snapshot_quota: u32,
    /// How long after creation a disk is still initializing (the seed says one hour).
    pub init_window: Duration,
    /// Copy rate used to estimate when a snapshot in progress will finish.
    pub copy_rate_mibps: u32,
    /// Whether an `Available` disk (detached, attached before) may be snapshotted, as the newest
    /// ECS documentation allows. The seed requires `In_use`: false.
    pub snapshot_available_disks: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            snapshot_quota: 64,
            init_window: Duration::from_secs(3600),
            copy_rate_mibps: 256,
            snapshot_available_disks: false,
        }
    }
}

/// Everything the rules need, read by the store in one statement under the disk's row lock.
#[derive(Debug, Clone, Default)]
pub struct CreateState {
    /// The caller's account; `None` when unknown.
    pub account: Option<Account>,
    /// The disk, only if it belongs to the caller's account.
    pub disk: Option<Disk>,
    /// The instance the disk is attached to, if any.
    pub instance: Option<Instance>,
    /// Snapshots the disk holds now, in any status.
    pub snapshot_count: i64,
    /// The snapshot of this disk still being copied, if any.
    pub in_progress: Option<InProgressSnapshot>,
}

/// How long copying `size_gib` takes at `rate_mibps` (at least one second).
pub fn estimated_copy_time(size_gib: i32, rate_mibps: u32) -> Duration {
    let mib = u64::try_from(size_gib.max(0)).unwrap_or(0) * 1024;
    let rate = u64::from(rate_mibps.max(1));
    Duration::from_secs(mib.div_ceil(rate).max(1))
}

/// Time left until `deadline`, never negative, rounded up to whole seconds (a retry hint must
/// never be early), at least one second.
fn time_left(now: Timestamp, deadline: Timestamp) -> Duration {
    let left = (deadline - now).max(TimeDelta::zero());
    let whole_seconds = left.num_seconds() + i64::from(left.subsec_nanos() > 0);
    Duration::from_secs(u64::try_from(whole_seconds).unwrap_or(0).max(1))
}

/// Decides whether a snapshot of `state.disk` may be created now. The first failing rule answers.
pub fn decide_create(
    account_id: &str,
    disk_id: &str,
    state: &CreateState,
    policy: &Policy,
    now: Timestamp,
) -> Result<(), RuleError> {
    let account = match &state.account {
        Some(account) if account.snapshot_service_activated => account,
        _ => {
            return Err(RuleError::InvalidAccountStatusSnapshotServiceUnavailable {
                account_id: account_id.to_owned(),
            });
        }
    };
    if account.insufficient_balance {
        return Err(RuleError::InvalidAccountStatusNotEnoughBalance {
            account_id: account_id.to_owned(),
        });
    }

    let Some(disk) = state.disk.as_ref().filter(|d| d.account_id == account_id) else {
        return Err(RuleError::InvalidDiskIdNotFound {
            disk_id: disk_id.to_owned(),
        });
    };
    let disk_id = disk.disk_id.clone();
    if !disk.category.supports_snapshots() {
        return Err(RuleError::DiskCategoryOperationNotSupported {
            disk_id,
            category: disk.category.as_str(),
        });
    }
    if disk.expires_at.is_some_and(|expires_at| expires_at <= now) {
        return Err(RuleError::DiskInArrears { disk_id });
    }
    if !disk.ever_attached {
        return Err(RuleError::IncorrectDiskStatusNeverAttached { disk_id });
    }
    // In_use without a (visible) instance is inconsistent inventory: the disk is not usable.
    // An Available disk (attached before, checked above) has no instance whose rules apply.
    let instance = match (&disk.status, &state.instance) {
        (DiskStatus::InUse, Some(instance)) if instance.account_id == account_id => Some(instance),
        (DiskStatus::Available, _) if policy.snapshot_available_disks => None,
        (status, _) => {
            return Err(RuleError::IncorrectDiskStatus {
                disk_id,
                status: status.as_str(),
            });
        }
    };
    if let Some(instance) = instance {
        check_instance(&disk_id, instance)?;
    }
    let initialized_at = later(disk.created_at, policy.init_window);
    if now < initialized_at {
        return Err(RuleError::IncorrectDiskStatusInitializing {
            disk_id,
            retry_after: time_left(now, initialized_at),
        });
    }
    if let Some(in_progress) = &state.in_progress {
        let done_at = in_progress.due_at.unwrap_or_else(|| {
            later(
                in_progress.started_at,
                estimated_copy_time(in_progress.source_disk_size_gib, policy.copy_rate_mibps),
            )
        });
        return Err(RuleError::IncorrectDiskStatusCreatingSnapshot {
            disk_id,
            snapshot_id: in_progress.snapshot_id.clone(),
            retry_after: time_left(now, done_at),
        });
    }
    if state.snapshot_count >= i64::from(policy.snapshot_quota) {
        return Err(RuleError::QuotaExceedSnapshot {
            disk_id,
            quota: policy.snapshot_quota,
        });
    }
    Ok(())
}

/// The rules of the instance an `In_use` disk is attached to (#18..#20), in the seed's order.
fn check_instance(disk_id: &str, instance: &Instance) -> Result<(), RuleError> {
    // The ids are copied only into a refusal: an accepted create allocates nothing here.
    let ids = || (disk_id.to_owned(), instance.instance_id.clone());
    if !matches!(
        instance.status,
        InstanceStatus::Running | InstanceStatus::Stopped
    ) {
        let (disk_id, instance_id) = ids();
        return Err(RuleError::IncorrectInstanceStatus {
            disk_id,
            instance_id,
            status: instance.status.as_str(),
        });
    }
    if instance.lock_reasons.iter().any(|r| r == SECURITY_LOCK) {
        let (disk_id, instance_id) = ids();
        return Err(RuleError::InstanceLockedForSecurity {
            disk_id,
            instance_id,
        });
    }
    if instance.last_started_at.is_none() {
        let (disk_id, instance_id) = ids();
        return Err(RuleError::IncorrectDiskStatusNeverUsed {
            disk_id,
            instance_id,
        });
    }
    Ok(())
}
