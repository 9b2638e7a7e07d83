//! `ecs.snapshot.v1.ImageService`: custom images from accomplished snapshots.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiError;
use super::call::{Gate, handle};
use super::layer::note_snapshot;
use crate::domain::{ClientToken, CreateImageCommand, ImageName, SnapshotId};
use crate::pb;
use crate::service::Service;

pub struct ImageApi {
    service: Arc<Service>,
    gate: Arc<Gate>,
}

impl ImageApi {
    pub fn new(service: Arc<Service>, gate: Arc<Gate>) -> Self {
        Self { service, gate }
    }

    async fn create(
        &self,
        account_id: String,
        request: pb::CreateImageRequest,
    ) -> Result<String, ApiError> {
        let command = CreateImageCommand {
            snapshot_id: SnapshotId::parse(&request.snapshot_id)?,
            image_name: ImageName::parse_optional(&request.image_name)?,
            client_token: ClientToken::parse_optional(&request.client_token)?,
            account_id,
        };
        let outcome = self.service.create_image(&command).await?;
        note_snapshot(command.snapshot_id.as_str());
        tracing::debug!(image_id = %outcome.id(), "image created");
        Ok(outcome.id().to_owned())
    }
}

#[tonic::async_trait]
impl pb::image_service_server::ImageService for ImageApi {
    async fn create_image(
        &self,
        request: Request<pb::CreateImageRequest>,
    ) -> Result<Response<pb::CreateImageResponse>, Status> {
        handle(
            &self.gate,
            request,
            |account_id, request_id, request| async move {
                let image_id = self.create(account_id, request).await?;
                Ok(pb::CreateImageResponse {
                    request_id,
                    image_id,
                })
            },
        )
        .await
    }
}
