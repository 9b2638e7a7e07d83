//! Inventory rules: what the admin API refuses to store, given what is stored already.

use super::RuleError;
use crate::domain::Disk;

/// Instances and disks belong to an account that must exist first.
pub fn check_account_exists(account_id: &str, exists: bool) -> Result<(), RuleError> {
    if exists {
        Ok(())
    } else {
        Err(RuleError::InvalidAccountIdNotFound {
            account_id: account_id.to_owned(),
        })
    }
}

/// An access key names exactly one account for its whole life: a put may change its secret
/// (rotation), never its account, so a signature made for one account never acts for another.
pub fn check_access_key_owner(
    access_key_id: &str,
    stored_owner: Option<&str>,
    account_id: &str,
) -> Result<(), RuleError> {
    match stored_owner {
        Some(owner) if owner != account_id => Err(RuleError::InvalidParameter {
            field: "access_key.account_id",
            why: format!(
                "access key {access_key_id} belongs to account {owner}; a key names one account \
                 for good, so put a new key id for {account_id}"
            ),
        }),
        _ => Ok(()),
    }
}

/// An instance cannot move to another account while another account's disks are attached to it.
pub fn check_instance_reassignment(
    instance_id: &str,
    foreign_disk_attached: Option<&str>,
) -> Result<(), RuleError> {
    match foreign_disk_attached {
        None => Ok(()),
        Some(disk_id) => Err(RuleError::InvalidParameter {
            field: "account_id",
            why: format!(
                "disk {disk_id} of another account is attached to instance {instance_id}; \
                 detach it first"
            ),
        }),
    }
}

/// A disk that has snapshots keeps its account: they are that account's data.
pub fn check_disk_reassignment(
    disk: &Disk,
    stored_owner: Option<&str>,
    snapshot_count: i64,
) -> Result<(), RuleError> {
    match stored_owner {
        Some(owner) if owner != disk.account_id && snapshot_count > 0 => {
            Err(RuleError::InvalidParameter {
                field: "account_id",
                why: format!(
                    "disk {} has snapshots of account {owner} and cannot change account",
                    disk.disk_id
                ),
            })
        }
        _ => Ok(()),
    }
}

/// A disk may be attached only to an existing instance of its own account.
/// `instance_owner` is the account of `instance_id`, `None` when there is no such instance.
pub fn check_disk_attachment(
    disk: &Disk,
    instance_id: &str,
    instance_owner: Option<&str>,
) -> Result<(), RuleError> {
    match instance_owner {
        None => Err(RuleError::InvalidInstanceIdNotFound {
            instance_id: instance_id.to_owned(),
        }),
        Some(owner) if owner != disk.account_id => Err(RuleError::InvalidParameter {
            field: "instance_id",
            why: format!(
                "instance {instance_id} belongs to another account than disk {}",
                disk.disk_id
            ),
        }),
        Some(_) => Ok(()),
    }
}
