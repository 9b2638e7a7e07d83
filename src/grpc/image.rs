//! `ecs.snapshot.v1.ImageService`: custom images from accomplished snapshots: create, describe
//! and delete.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiError;
use super::call::{Caller, handle};
use super::convert::image_to_proto;
use super::layer::note_snapshot;
use crate::domain::{
    CreateImageCommand, CreateImageParams, DescribeImagesParams, ImageCursor, ImageId, ImageQuery,
};
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

    async fn describe(
        &self,
        caller: Caller,
        request: pb::DescribeImagesRequest,
    ) -> Result<pb::DescribeImagesResponse, ApiError> {
        let image_ids: Vec<&str> = request.image_ids.iter().map(String::as_str).collect();
        let params = DescribeImagesParams {
            image_ids: &image_ids,
            snapshot_id: &request.snapshot_id,
            next_token: &request.next_token,
            max_results: request.max_results,
            page_number: 0,
        };
        let query = ImageQuery::parse(caller.account_id, &params)?;
        let page = self.service.describe_images(&query).await?;
        Ok(pb::DescribeImagesResponse {
            request_id: caller.request_id,
            images: page.images.into_iter().map(image_to_proto).collect(),
            next_token: page
                .next
                .as_ref()
                .map(ImageCursor::to_token)
                .unwrap_or_default(),
            total_count: i32::try_from(page.total).unwrap_or(i32::MAX),
        })
    }

    async fn delete(
        &self,
        caller: Caller,
        request: pb::DeleteImageRequest,
    ) -> Result<pb::DeleteImageResponse, ApiError> {
        let image_id = ImageId::parse(&request.image_id)?;
        self.service
            .delete_image(&caller.account_id, &image_id)
            .await?;
        tracing::debug!(image_id = %image_id.as_str(), "image deleted");
        Ok(pb::DeleteImageResponse {
            request_id: caller.request_id,
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

    async fn describe_images(
        &self,
        request: Request<pb::DescribeImagesRequest>,
    ) -> Result<Response<pb::DescribeImagesResponse>, Status> {
        handle(request, |caller, request| self.describe(caller, request)).await
    }

    async fn delete_image(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        handle(request, |caller, request| self.delete(caller, request)).await
    }
}
