//! `ecs.snapshot.v1.InventoryService`: the admin API the control plane pushes state through.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiError;
use super::call::request_id;
use super::identity::require_admin;
use crate::domain::{Account, Disk, DiskId, Instance};
use crate::pb;
use crate::service::Service;

pub struct InventoryApi {
    service: Arc<Service>,
    admin_token: Option<String>,
}

impl InventoryApi {
    pub fn new(service: Arc<Service>, admin_token: Option<String>) -> Self {
        Self {
            service,
            admin_token,
        }
    }

    /// Authenticates, runs `call(message)`, and maps its error with the call's request id.
    async fn handle<M, T, F, Fut>(
        &self,
        request: Request<M>,
        call: F,
    ) -> Result<Response<T>, Status>
    where
        F: FnOnce(M) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let (metadata, extensions, message) = request.into_parts();
        let request_id = request_id(&extensions);
        async {
            require_admin(&metadata, self.admin_token.as_deref())?;
            call(message).await
        }
        .await
        .map(Response::new)
        .map_err(|err| err.into_status(&request_id))
    }
}

#[tonic::async_trait]
impl pb::inventory_service_server::InventoryService for InventoryApi {
    async fn put_account(
        &self,
        request: Request<pb::Account>,
    ) -> Result<Response<pb::Account>, Status> {
        self.handle(request, |account| async move {
            let account = Account::try_from(account)?;
            Ok(self.service.put_account(&account).await?.into())
        })
        .await
    }

    async fn put_instance(
        &self,
        request: Request<pb::Instance>,
    ) -> Result<Response<pb::Instance>, Status> {
        self.handle(request, |instance| async move {
            let instance = Instance::try_from(instance)?;
            Ok(self.service.put_instance(&instance).await?.into())
        })
        .await
    }

    async fn put_disk(&self, request: Request<pb::Disk>) -> Result<Response<pb::Disk>, Status> {
        self.handle(request, |disk| async move {
            let disk = Disk::try_from(disk)?;
            Ok(self.service.put_disk(&disk).await?.into())
        })
        .await
    }

    async fn get_disk(
        &self,
        request: Request<pb::GetDiskRequest>,
    ) -> Result<Response<pb::Disk>, Status> {
        self.handle(request, |get| async move {
            let disk_id = DiskId::parse(&get.disk_id)?;
            Ok(self.service.get_disk(&disk_id).await?.into())
        })
        .await
    }
}
