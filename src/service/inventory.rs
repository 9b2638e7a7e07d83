//! The inventory the control plane pushes (accounts, instances, disks), checked against what is
//! stored: the admin API's use cases.

use super::{Service, ServiceError};
use crate::domain::{Account, Disk, DiskId, Instance};
use crate::engine::{
    RuleError, check_account_exists, check_disk_attachment, check_disk_reassignment,
    check_instance_reassignment,
};
use crate::store::Transaction;

impl Service {
    pub async fn put_account(&self, account: &Account) -> Result<Account, ServiceError> {
        let mut tx = self.store.begin().await?;
        let result = tx.upsert_account(account).await.map_err(ServiceError::from);
        self.finish(tx, result).await
    }

    /// Refuses an unknown account, and another account's disk still attached.
    pub async fn put_instance(&self, instance: &Instance) -> Result<Instance, ServiceError> {
        let mut tx = self.store.begin().await?;
        let result = put_instance(tx.as_mut(), instance).await;
        self.finish(tx, result).await
    }

    /// Refuses an unknown account or instance, an instance of another account, and moving a
    /// disk with snapshots to another account.
    pub async fn put_disk(&self, disk: &Disk) -> Result<Disk, ServiceError> {
        let mut tx = self.store.begin().await?;
        let result = put_disk(tx.as_mut(), disk).await;
        self.finish(tx, result).await
    }

    /// Any account's disk (the admin view).
    pub async fn get_disk(&self, disk_id: &DiskId) -> Result<Disk, ServiceError> {
        let mut read = self.store.read().await?;
        let disk = read.select_disk(disk_id.as_str()).await?;
        read.commit().await?;
        disk.ok_or_else(|| {
            RuleError::InvalidDiskIdNotFound {
                disk_id: disk_id.as_str().to_owned(),
            }
            .into()
        })
    }

    /// True when no account has been stored yet (a store never used).
    pub async fn is_empty(&self) -> Result<bool, ServiceError> {
        let mut read = self.store.read().await?;
        let any = read.any_account().await?;
        read.commit().await?;
        Ok(!any)
    }
}

async fn put_instance(
    tx: &mut dyn Transaction,
    instance: &Instance,
) -> Result<Instance, ServiceError> {
    let account_known = tx.account_exists(&instance.account_id).await?;
    check_account_exists(&instance.account_id, account_known)?;
    // Held until commit: a disk being attached to this instance meanwhile waits, then sees
    // the instance's new account; one attached before shows up in the read below.
    tx.lock_instance_owner(&instance.instance_id).await?;
    let foreign = tx
        .foreign_disk_on(&instance.instance_id, &instance.account_id)
        .await?;
    check_instance_reassignment(&instance.instance_id, foreign.as_deref())?;
    Ok(tx.upsert_instance(instance).await?)
}

async fn put_disk(tx: &mut dyn Transaction, disk: &Disk) -> Result<Disk, ServiceError> {
    let account_known = tx.account_exists(&disk.account_id).await?;
    check_account_exists(&disk.account_id, account_known)?;
    // Held until commit: a CreateSnapshot on this disk waits, then sees its new owner.
    let (stored_owner, snapshot_count) = tx.lock_disk_owner(&disk.disk_id).await?.unzip();
    check_disk_reassignment(
        disk,
        stored_owner.as_deref(),
        snapshot_count.map_or(0, i64::from),
    )?;
    if let Some(instance_id) = &disk.instance_id {
        let owner = tx.lock_instance_owner(instance_id).await?;
        check_disk_attachment(disk, instance_id, owner.as_deref())?;
    }
    Ok(tx.upsert_disk(disk).await?)
}
