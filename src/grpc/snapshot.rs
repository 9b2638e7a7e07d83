//! `ecs.snapshot.v1.SnapshotService`: the tenant-facing snapshot API.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::ApiError;
use super::call::{Gate, handle};
use super::convert::{
    decode_next_token, encode_next_token, snapshot_status_filter, snapshot_to_proto,
    tags_from_proto,
};
use super::layer::{note_disk, note_snapshot};
use crate::domain::{
    ClientToken, CreateSnapshotCommand, Description, DiskId, RetentionDays, SnapshotId,
    SnapshotName, SnapshotQuery,
};
use crate::engine::{MAX_SNAPSHOT_IDS, RuleError, page_size};
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
        // Input rules in the table's order: the first failing one answers.
        let command = CreateSnapshotCommand {
            disk_id: DiskId::parse(&request.disk_id)?,
            snapshot_name: SnapshotName::parse_optional(&request.snapshot_name)?,
            description: Description::parse(&request.description)?,
            client_token: ClientToken::parse_optional(&request.client_token)?,
            retention: RetentionDays::parse(request.retention_days)?,
            tags: tags_from_proto(&request.tags)?,
            account_id,
        };
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
        if request.snapshot_ids.len() > MAX_SNAPSHOT_IDS {
            return Err(RuleError::InvalidSnapshotIdsMalformed {
                why: "at most 100 snapshot ids",
            }
            .into());
        }
        let snapshot_ids = request
            .snapshot_ids
            .iter()
            .map(|id| SnapshotId::parse(id).map(|id| id.as_str().to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| RuleError::InvalidSnapshotIdsMalformed {
                why: "each must be `s-` followed by 20 of [0-9a-z]",
            })?;
        let disk_id = match request.disk_id.as_str() {
            "" => None,
            raw => Some(DiskId::parse(raw)?.as_str().to_owned()),
        };
        let query = SnapshotQuery {
            account_id,
            disk_id,
            snapshot_ids,
            status: snapshot_status_filter(request.status)?,
            // Only a valid name can match: refuse anything else as CreateSnapshot would.
            snapshot_name: SnapshotName::parse_optional(&request.snapshot_name)?
                .map(|name| name.as_str().to_owned()),
            tags: tags_from_proto(&request.tags)?,
            after: match request.next_token.as_str() {
                "" => None,
                token => Some(decode_next_token(token)?),
            },
            limit: page_size(request.max_results)?,
        };
        let page = self.service.describe_snapshots(&query).await?;
        let snapshots = page.snapshots.into_iter().map(snapshot_to_proto).collect();
        let next_token = page
            .next
            .as_ref()
            .map(encode_next_token)
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
