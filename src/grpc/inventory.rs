//! `ecs.snapshot.v1.InventoryService`: the admin API the control plane pushes state through.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::call::handle_admin;
use crate::domain::{AccessKey, Account, Disk, DiskId, Instance, ParseError};
use crate::pb;
use crate::service::Service;

pub struct InventoryApi {
    service: Arc<Service>,
}

impl InventoryApi {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

/// The record a request must carry: unset is `MissingParameter`, as for a required field.
fn required<T>(field: &'static str, record: Option<T>) -> Result<T, ParseError> {
    record.ok_or(ParseError::MissingParameter { field })
}

#[tonic::async_trait]
impl pb::inventory_service_server::InventoryService for InventoryApi {
    async fn put_account(
        &self,
        request: Request<pb::PutAccountRequest>,
    ) -> Result<Response<pb::PutAccountResponse>, Status> {
        handle_admin(request, |put| async move {
            let account = Account::try_from(required("account", put.account)?)?;
            Ok(pb::PutAccountResponse {
                account: Some(self.service.put_account(&account).await?.into()),
            })
        })
        .await
    }

    async fn put_instance(
        &self,
        request: Request<pb::PutInstanceRequest>,
    ) -> Result<Response<pb::PutInstanceResponse>, Status> {
        handle_admin(request, |put| async move {
            let instance = Instance::try_from(required("instance", put.instance)?)?;
            Ok(pb::PutInstanceResponse {
                instance: Some(self.service.put_instance(&instance).await?.into()),
            })
        })
        .await
    }

    async fn put_disk(
        &self,
        request: Request<pb::PutDiskRequest>,
    ) -> Result<Response<pb::PutDiskResponse>, Status> {
        handle_admin(request, |put| async move {
            let disk = Disk::try_from(required("disk", put.disk)?)?;
            Ok(pb::PutDiskResponse {
                disk: Some(self.service.put_disk(&disk).await?.into()),
            })
        })
        .await
    }

    async fn put_access_key(
        &self,
        request: Request<pb::PutAccessKeyRequest>,
    ) -> Result<Response<pb::PutAccessKeyResponse>, Status> {
        handle_admin(request, |put| async move {
            let key = required("access_key", put.access_key)?;
            let key =
                AccessKey::parse(&key.access_key_id, &key.access_key_secret, &key.account_id)?;
            let stored = self.service.put_access_key(&key).await?;
            Ok(pb::PutAccessKeyResponse {
                access_key: Some(pb::AccessKey {
                    access_key_id: stored.access_key_id,
                    access_key_secret: String::new(),
                    account_id: stored.account_id,
                }),
            })
        })
        .await
    }

    async fn get_disk(
        &self,
        request: Request<pb::GetDiskRequest>,
    ) -> Result<Response<pb::GetDiskResponse>, Status> {
        handle_admin(request, |get| async move {
            let disk_id = DiskId::parse(&get.disk_id)?;
            Ok(pb::GetDiskResponse {
                disk: Some(self.service.get_disk(&disk_id).await?.into()),
            })
        })
        .await
    }
}
