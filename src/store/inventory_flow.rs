//! The inventory transactions and the reads of CreateSnapshot, written once for both backends:
//! the rules are here, the statements in [`super::shared_sql`], and [`impl_shared_tx!`] binds
//! them on each backend's transaction type.

use super::StoreError;
use crate::domain::{Account, Disk, Instance};
use crate::engine::{
    check_account_exists, check_disk_attachment, check_disk_reassignment,
    check_instance_reassignment,
};

/// The inventory statements, on a transaction already begun.
pub(crate) trait InventoryTx {
    async fn account_exists(&mut self, account_id: &str) -> Result<bool, StoreError>;
    async fn any_account(&mut self) -> Result<bool, StoreError>;
    /// A disk of another account than `account_id` attached to `instance_id`.
    async fn foreign_disk_on(
        &mut self,
        instance_id: &str,
        account_id: &str,
    ) -> Result<Option<String>, StoreError>;
    /// The stored account and snapshot count of `disk_id`.
    async fn disk_owner(&mut self, disk_id: &str) -> Result<Option<(String, i32)>, StoreError>;
    async fn instance_owner(&mut self, instance_id: &str) -> Result<Option<String>, StoreError>;
    async fn upsert_account(&mut self, account: &Account) -> Result<Account, StoreError>;
    async fn upsert_instance(&mut self, instance: &Instance) -> Result<Instance, StoreError>;
    async fn upsert_disk(&mut self, disk: &Disk) -> Result<Disk, StoreError>;
    async fn select_disk(&mut self, disk_id: &str) -> Result<Option<Disk>, StoreError>;
}

/// PutInstance: the account must exist, and another account's disk must not be attached.
pub(crate) async fn put_instance(
    tx: &mut impl InventoryTx,
    instance: &Instance,
) -> Result<Instance, StoreError> {
    let account_known = tx.account_exists(&instance.account_id).await?;
    check_account_exists(&instance.account_id, account_known)?;
    let foreign = tx
        .foreign_disk_on(&instance.instance_id, &instance.account_id)
        .await?;
    check_instance_reassignment(&instance.instance_id, foreign.as_deref())?;
    tx.upsert_instance(instance).await
}

/// PutDisk: the account must exist, a disk with snapshots keeps its account, and the instance
/// it is attached to must be the same account's.
pub(crate) async fn put_disk(tx: &mut impl InventoryTx, disk: &Disk) -> Result<Disk, StoreError> {
    let account_known = tx.account_exists(&disk.account_id).await?;
    check_account_exists(&disk.account_id, account_known)?;
    let (stored_owner, snapshot_count) = tx.disk_owner(&disk.disk_id).await?.unzip();
    check_disk_reassignment(
        disk,
        stored_owner.as_deref(),
        snapshot_count.map_or(0, i64::from),
    )?;
    if let Some(instance_id) = &disk.instance_id {
        let owner = tx.instance_owner(instance_id).await?;
        check_disk_attachment(disk, instance_id, owner.as_deref())?;
    }
    tx.upsert_disk(disk).await
}

/// Implements [`InventoryTx`] and the shared reads of [`super::create_flow::CreateReads`] for a
/// backend's transactions; `$lock_disk` is appended to the locking read of CreateSnapshot.
macro_rules! impl_shared_tx {
    ($db:ty, $sql:expr, $lock_disk:expr) => {
        impl $crate::store::inventory_flow::InventoryTx for sqlx::Transaction<'_, $db> {
            async fn account_exists(
                &mut self,
                account_id: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                let found: Option<(String,)> =
                    sqlx::query_as(&$sql($crate::store::shared_sql::ACCOUNT_EXISTS))
                        .bind(account_id)
                        .fetch_optional(&mut **self)
                        .await?;
                Ok(found.is_some())
            }

            async fn any_account(&mut self) -> Result<bool, $crate::store::StoreError> {
                let found: Option<(String,)> =
                    sqlx::query_as(&$sql($crate::store::shared_sql::ANY_ACCOUNT))
                        .fetch_optional(&mut **self)
                        .await?;
                Ok(found.is_some())
            }

            async fn foreign_disk_on(
                &mut self,
                instance_id: &str,
                account_id: &str,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                let found: Option<(String,)> =
                    sqlx::query_as(&$sql($crate::store::shared_sql::FOREIGN_DISK_ON_INSTANCE))
                        .bind(instance_id)
                        .bind(account_id)
                        .fetch_optional(&mut **self)
                        .await?;
                Ok(found.map(|(disk_id,)| disk_id))
            }

            async fn disk_owner(
                &mut self,
                disk_id: &str,
            ) -> Result<Option<(String, i32)>, $crate::store::StoreError> {
                Ok(sqlx::query_as(&$sql($crate::store::shared_sql::DISK_OWNER))
                    .bind(disk_id)
                    .fetch_optional(&mut **self)
                    .await?)
            }

            async fn instance_owner(
                &mut self,
                instance_id: &str,
            ) -> Result<Option<String>, $crate::store::StoreError> {
                let found: Option<(String,)> =
                    sqlx::query_as(&$sql($crate::store::shared_sql::INSTANCE_OWNER))
                        .bind(instance_id)
                        .fetch_optional(&mut **self)
                        .await?;
                Ok(found.map(|(owner,)| owner))
            }

            async fn upsert_account(
                &mut self,
                account: &$crate::domain::Account,
            ) -> Result<$crate::domain::Account, $crate::store::StoreError> {
                let row: $crate::store::rows::AccountRow =
                    sqlx::query_as(&$sql($crate::store::shared_sql::UPSERT_ACCOUNT))
                        .bind(&account.account_id)
                        .bind(account.snapshot_service_activated)
                        .bind(account.insufficient_balance)
                        .fetch_one(&mut **self)
                        .await?;
                Ok(row.into())
            }

            async fn upsert_instance(
                &mut self,
                instance: &$crate::domain::Instance,
            ) -> Result<$crate::domain::Instance, $crate::store::StoreError> {
                let row: $crate::store::rows::InstanceRow =
                    sqlx::query_as(&$sql($crate::store::shared_sql::UPSERT_INSTANCE))
                        .bind(&instance.instance_id)
                        .bind(&instance.account_id)
                        .bind(instance.status.as_str())
                        .bind(instance.created_at)
                        .bind(instance.last_started_at)
                        .bind($crate::store::rows::join_lock_reasons(
                            &instance.lock_reasons,
                        ))
                        .fetch_one(&mut **self)
                        .await?;
                row.try_into()
            }

            async fn upsert_disk(
                &mut self,
                disk: &$crate::domain::Disk,
            ) -> Result<$crate::domain::Disk, $crate::store::StoreError> {
                let row: $crate::store::rows::DiskRow =
                    sqlx::query_as(&$sql($crate::store::shared_sql::UPSERT_DISK))
                        .bind(&disk.disk_id)
                        .bind(&disk.account_id)
                        .bind(disk.category.as_str())
                        .bind(disk.disk_type.as_str())
                        .bind(disk.status.as_str())
                        .bind(disk.instance_id.as_deref())
                        .bind(disk.size_gib)
                        .bind(disk.created_at)
                        .bind(disk.expires_at)
                        .bind(disk.ever_attached)
                        .fetch_one(&mut **self)
                        .await?;
                row.try_into()
            }

            async fn select_disk(
                &mut self,
                disk_id: &str,
            ) -> Result<Option<$crate::domain::Disk>, $crate::store::StoreError> {
                let row: Option<$crate::store::rows::DiskRow> =
                    sqlx::query_as(&$sql($crate::store::shared_sql::SELECT_DISK))
                        .bind(disk_id)
                        .fetch_optional(&mut **self)
                        .await?;
                row.map($crate::domain::Disk::try_from).transpose()
            }
        }

        impl $crate::store::create_flow::CreateReads for sqlx::Transaction<'_, $db> {
            async fn lock_and_read(
                &mut self,
                command: &$crate::domain::CreateSnapshotCommand,
            ) -> Result<
                Option<(
                    $crate::engine::CreateState,
                    Option<$crate::engine::TokenBinding>,
                )>,
                $crate::store::StoreError,
            > {
                let statement = format!(
                    "{}{}",
                    $sql($crate::store::shared_sql::LOCK_AND_READ),
                    $lock_disk
                );
                let row: Option<$crate::store::rows::LockedDiskRow> = sqlx::query_as(&statement)
                    .bind(command.disk_id.as_str())
                    .bind(&command.account_id)
                    .bind(command.client_token.as_ref().map(|t| t.as_str()))
                    .fetch_optional(&mut **self)
                    .await?;
                row.map($crate::store::rows::LockedDiskRow::into_parts)
                    .transpose()
            }

            async fn read_caller(
                &mut self,
                command: &$crate::domain::CreateSnapshotCommand,
            ) -> Result<
                (
                    $crate::engine::CreateState,
                    Option<$crate::engine::TokenBinding>,
                ),
                $crate::store::StoreError,
            > {
                let row: $crate::store::rows::CallerRow =
                    sqlx::query_as(&$sql($crate::store::shared_sql::READ_CALLER))
                        .bind(&command.account_id)
                        .bind(command.client_token.as_ref().map(|t| t.as_str()))
                        .fetch_one(&mut **self)
                        .await?;
                Ok(row.into_parts())
            }

            async fn read_token(
                &mut self,
                command: &$crate::domain::CreateSnapshotCommand,
            ) -> Result<Option<$crate::engine::TokenBinding>, $crate::store::StoreError> {
                let row: Option<$crate::store::rows::OptionalTokenColumns> =
                    sqlx::query_as(&$sql($crate::store::shared_sql::READ_TOKEN))
                        .bind(&command.account_id)
                        .bind(command.client_token.as_ref().map(|t| t.as_str()))
                        .fetch_optional(&mut **self)
                        .await?;
                Ok(row.and_then($crate::store::rows::OptionalTokenColumns::into_binding))
            }
        }
    };
}
pub(crate) use impl_shared_tx;
