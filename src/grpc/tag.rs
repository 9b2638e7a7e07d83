//! `ecs.snapshot.v1.TagService`: tags after creation (ECS's TagResources, UntagResources and
//! ListTagResources) on the caller's snapshots.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiError;
use super::call::{Caller, handle};
use super::convert::{tag_pairs, tag_resource_to_proto};
use crate::domain::{
    ListTagResourcesParams, TagCursor, TagQuery, TagResourcesCommand, TagResourcesParams,
    UntagResourcesCommand, UntagResourcesParams,
};
use crate::pb;
use crate::service::Service;

pub struct TagApi {
    service: Arc<Service>,
}

impl TagApi {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }

    async fn tag(
        &self,
        caller: Caller,
        request: pb::TagResourcesRequest,
    ) -> Result<pb::TagResourcesResponse, ApiError> {
        let ids: Vec<&str> = request.resource_ids.iter().map(String::as_str).collect();
        let tags = tag_pairs(&request.tags);
        let params = TagResourcesParams {
            resource_type: &request.resource_type,
            resource_ids: &ids,
            tags: &tags,
        };
        let command = TagResourcesCommand::parse(caller.account_id, &params)?;
        self.service.tag_resources(&command).await?;
        Ok(pb::TagResourcesResponse {
            request_id: caller.request_id,
        })
    }

    async fn untag(
        &self,
        caller: Caller,
        request: pb::UntagResourcesRequest,
    ) -> Result<pb::UntagResourcesResponse, ApiError> {
        let ids: Vec<&str> = request.resource_ids.iter().map(String::as_str).collect();
        let keys: Vec<&str> = request.tag_keys.iter().map(String::as_str).collect();
        let params = UntagResourcesParams {
            resource_type: &request.resource_type,
            resource_ids: &ids,
            tag_keys: &keys,
            all: request.all,
        };
        let command = UntagResourcesCommand::parse(caller.account_id, &params)?;
        self.service.untag_resources(&command).await?;
        Ok(pb::UntagResourcesResponse {
            request_id: caller.request_id,
        })
    }

    async fn list(
        &self,
        caller: Caller,
        request: pb::ListTagResourcesRequest,
    ) -> Result<pb::ListTagResourcesResponse, ApiError> {
        let ids: Vec<&str> = request.resource_ids.iter().map(String::as_str).collect();
        let tags = tag_pairs(&request.tags);
        let params = ListTagResourcesParams {
            resource_type: &request.resource_type,
            resource_ids: &ids,
            tags: &tags,
            next_token: &request.next_token,
        };
        let query = TagQuery::parse(caller.account_id, &params)?;
        let page = self.service.list_tag_resources(&query).await?;
        Ok(pb::ListTagResourcesResponse {
            request_id: caller.request_id,
            tag_resources: page.tags.into_iter().map(tag_resource_to_proto).collect(),
            next_token: page
                .next
                .as_ref()
                .map(TagCursor::to_token)
                .unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl pb::tag_service_server::TagService for TagApi {
    async fn tag_resources(
        &self,
        request: Request<pb::TagResourcesRequest>,
    ) -> Result<Response<pb::TagResourcesResponse>, Status> {
        handle(request, |caller, request| self.tag(caller, request)).await
    }

    async fn untag_resources(
        &self,
        request: Request<pb::UntagResourcesRequest>,
    ) -> Result<Response<pb::UntagResourcesResponse>, Status> {
        handle(request, |caller, request| self.untag(caller, request)).await
    }

    async fn list_tag_resources(
        &self,
        request: Request<pb::ListTagResourcesRequest>,
    ) -> Result<Response<pb::ListTagResourcesResponse>, Status> {
        handle(request, |caller, request| self.list(caller, request)).await
    }
}
