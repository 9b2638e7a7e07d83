//! `ecs.snapshot.v1.InventoryService`: the admin API the control plane pushes state through.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiError;
use super::call::{Admitted, request_id};
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

    /// Runs `call(message)` for a call the layer admitted as the admin (it checked the bearer
    /// token before the call took a slot), and maps its error with the call's request id.
    async fn handle<M, T, F, Fut>(
        &self,
        request: Request<M>,
        call: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(M) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let (_metadata, extensions, message) = request.into_parts();
        let request_id = request_id(&extensions);
        async {
            if extensions.get::<Admitted>() != Some(&Admitted::Admin) {
                // Only without the layer, which checks the token of every admin call: fail
                // closed.
                return Err(ApiError::InvalidAdminToken);
            }
            call(message).await
        }
        .await
        .map(Response::new)
        .map_err(|err| err.into_status(&request_id))
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
        self.handle(request, |put| async move {
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
        self.handle(request, |put| async move {
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
        self.handle(request, |put| async move {
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
        self.handle(request, |put| async move {
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
        self.handle(request, |get| async move {
            let disk_id = DiskId::parse(&get.disk_id)?;
            Ok(pb::GetDiskResponse {
                disk: Some(self.service.get_disk(&disk_id).await?.into()),
            })
        })
        .await
    }
}
