//! `ecs.snapshot.v1.SnapshotService`: the tenant-facing snapshot API.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiError;
use super::call::{Gate, handle};
use super::convert::{snapshot_status_filter, snapshot_to_proto, tag_pairs};
use super::layer::{note_disk, note_snapshot};
use crate::domain::{
    CreateSnapshotCommand, CreateSnapshotParams, DescribeSnapshotsParams, PageCursor, SnapshotId,
    SnapshotQuery,
};
use crate::pb;
use crate::service::{CreateOutcome, Service};

pub struct SnapshotApi {
    service: Arc<Service>,
    gate: Arc<Gate>,
}

impl SnapshotApi {
    pub fn new(service: Arc<Service>, gate: Arc<Gate>) -> Self {
        Self { service, gate }
    }

    async fn create(
        &self,
        account_id: String,
        request: pb::CreateSnapshotRequest,
    ) -> Result<String, ApiError> {
        note_disk(&request.disk_id);
        let tags = tag_pairs(&request.tags);
        let params = CreateSnapshotParams {
            disk_id: &request.disk_id,
            snapshot_name: &request.snapshot_name,
            description: &request.description,
            client_token: &request.client_token,
            retention_days: request.retention_days,
            tags: &tags,
        };
        let command = CreateSnapshotCommand::parse(account_id, &params)?;
        let outcome = self.service.create_snapshot(&command).await?;
        note_snapshot(outcome.id());
        match outcome {
            CreateOutcome::Created { .. } => tracing::debug!("snapshot created"),
            CreateOutcome::Replayed { .. } => {
                tracing::debug!("client token replayed: the original snapshot")
            }
        }
        Ok(outcome.id().to_owned())
    }

    async fn describe(
        &self,
        account_id: String,
        request: pb::DescribeSnapshotsRequest,
    ) -> Result<(Vec<pb::Snapshot>, String), ApiError> {
        let snapshot_ids: Vec<&str> = request.snapshot_ids.iter().map(String::as_str).collect();
        let tags = tag_pairs(&request.tags);
        let params = DescribeSnapshotsParams {
            disk_id: &request.disk_id,
            snapshot_ids: &snapshot_ids,
            status: snapshot_status_filter(request.status)?,
            snapshot_name: &request.snapshot_name,
            tags: &tags,
            next_token: &request.next_token,
            max_results: request.max_results,
        };
        let query = SnapshotQuery::parse(account_id, &params)?;
        let page = self.service.describe_snapshots(&query).await?;
        let snapshots = page.snapshots.into_iter().map(snapshot_to_proto).collect();
        let next_token = page
            .next
            .as_ref()
            .map(PageCursor::to_token)
            .unwrap_or_default();
        Ok((snapshots, next_token))
    }

    async fn delete(
        &self,
        account_id: String,
        request: pb::DeleteSnapshotRequest,
    ) -> Result<(), ApiError> {
        let snapshot_id = SnapshotId::parse(&request.snapshot_id)?;
        self.service
            .delete_snapshot(&account_id, &snapshot_id, request.force)
            .await?;
        note_snapshot(snapshot_id.as_str());
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::snapshot_service_server::SnapshotService for SnapshotApi {
    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        handle(
            &self.gate,
            request,
            |account_id, request_id, request| async move {
                let snapshot_id = self.create(account_id, request).await?;
                Ok(pb::CreateSnapshotResponse {
                    request_id,
                    snapshot_id,
                })
            },
        )
        .await
    }

    async fn describe_snapshots(
        &self,
        request: Request<pb::DescribeSnapshotsRequest>,
    ) -> Result<Response<pb::DescribeSnapshotsResponse>, Status> {
        handle(
            &self.gate,
            request,
            |account_id, request_id, request| async move {
                let (snapshots, next_token) = self.describe(account_id, request).await?;
                Ok(pb::DescribeSnapshotsResponse {
                    request_id,
                    snapshots,
                    next_token,
                })
            },
        )
        .await
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        handle(
            &self.gate,
            request,
            |account_id, request_id, request| async move {
                self.delete(account_id, request).await?;
                Ok(pb::DeleteSnapshotResponse { request_id })
            },
        )
        .await
    }
}
