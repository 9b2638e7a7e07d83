//! `ecs.snapshot.v1.ImageService`: custom images from accomplished snapshots.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiError;
use super::call::{Caller, handle};
use super::layer::note_snapshot;
use crate::domain::{CreateImageCommand, CreateImageParams};
use crate::pb;
use crate::service::Service;

pub struct ImageApi {
    service: Arc<Service>,
}

impl ImageApi {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }

    async fn create(
        &self,
        caller: Caller,
        request: pb::CreateImageRequest,
    ) -> Result<pb::CreateImageResponse, ApiError> {
        let params = CreateImageParams {
            snapshot_id: &request.snapshot_id,
            image_name: &request.image_name,
            client_token: &request.client_token,
        };
        let command = CreateImageCommand::parse(caller.account_id, &params)?;
        let outcome = self.service.create_image(&command).await?;
        note_snapshot(command.snapshot_id.as_str());
        tracing::debug!(image_id = %outcome.id(), "image created");
        Ok(pb::CreateImageResponse {
            request_id: caller.request_id,
            image_id: outcome.id().to_owned(),
        })
    }
}

#[tonic::async_trait]
impl pb::image_service_server::ImageService for ImageApi {
    async fn create_image(
        &self,
        request: Request<pb::CreateImageRequest>,
    ) -> Result<Response<pb::CreateImageResponse>, Status> {
        handle(request, |caller, request| self.create(caller, request)).await
    }
}
