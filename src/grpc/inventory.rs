//! `ecs.snapshot.v1.InventoryService`: the admin API the control plane pushes state through.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiError;
use super::call::request_id;
use super::identity::require_admin;
use crate::domain::{Account, Disk, DiskId, Instance};
use crate::pb;
use crate::store::Store;

pub struct InventoryApi {
    store: Arc<dyn Store>,
    admin_token: Option<String>,
}

impl InventoryApi {
    pub fn new(store: Arc<dyn Store>, admin_token: Option<String>) -> Self {
        Self { store, admin_token }
    }

    /// Authenticates, runs `call`, and maps its error with the call's request id.
    async fn handle<T, F>(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &tonic::Extensions,
        call: F,
    ) -> Result<Response<T>, Status>
    where
        F: Future<Output = Result<T, ApiError>>,
    {
        let request_id = request_id(extensions);
        async {
            require_admin(metadata, self.admin_token.as_deref())?;
            call.await
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
        let (metadata, extensions, account) = request.into_parts();
        self.handle(&metadata, &extensions, async {
            let account = Account::try_from(account)?;
            Ok(self.store.put_account(&account).await?.into())
        })
        .await
    }

    async fn put_instance(
        &self,
        request: Request<pb::Instance>,
    ) -> Result<Response<pb::Instance>, Status> {
        let (metadata, extensions, instance) = request.into_parts();
        self.handle(&metadata, &extensions, async {
            let instance = Instance::try_from(instance)?;
            Ok(self.store.put_instance(&instance).await?.into())
        })
        .await
    }

    async fn put_disk(&self, request: Request<pb::Disk>) -> Result<Response<pb::Disk>, Status> {
        let (metadata, extensions, disk) = request.into_parts();
        self.handle(&metadata, &extensions, async {
            let disk = Disk::try_from(disk)?;
            Ok(self.store.put_disk(&disk).await?.into())
        })
        .await
    }

    async fn get_disk(
        &self,
        request: Request<pb::GetDiskRequest>,
    ) -> Result<Response<pb::Disk>, Status> {
        let (metadata, extensions, get) = request.into_parts();
        self.handle(&metadata, &extensions, async {
            let disk_id = DiskId::parse(&get.disk_id)?;
            Ok(self.store.get_disk(disk_id.as_str()).await?.into())
        })
        .await
    }
}
