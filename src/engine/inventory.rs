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
