//! `ecs.snapshot.v1.SnapshotService`: the tenant-facing snapshot API.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::ApiError;
use super::call::{Caller, handle};
use super::convert::{
    disk_type_filter, snapshot_status_filter, snapshot_to_proto, tag_pairs, timestamp_from_proto,
    watch_event_to_proto,
};
use super::layer::{note_disk, note_snapshot, peer_key};
use crate::admission::{Busy, Shares};
use crate::domain::{
    CreateSnapshotCommand, CreateSnapshotParams, DescribeSnapshotsParams,
    ModifySnapshotAttributeCommand, ModifySnapshotAttributeParams, PageCursor, SnapshotId,
    SnapshotQuery, WatchQuery,
};
use crate::pb;
use crate::service::{CreateOutcome, Service};

pub struct SnapshotApi {
    service: Arc<Service>,
    /// The watches each peer holds open, at most `max_watches_per_peer` (the service counts
    /// each account's; without this, a client naming a new account per watch had no bound).
    watching_peers: Arc<Shares>,
    max_watches_per_peer: u32,
}

impl SnapshotApi {
    pub fn new(service: Arc<Service>, max_watches_per_peer: u32) -> Self {
        Self {
            service,
            watching_peers: Arc::default(),
            max_watches_per_peer,
        }
    }

    async fn create(
        &self,
        caller: Caller,
        request: pb::CreateSnapshotRequest,
    ) -> Result<pb::CreateSnapshotResponse, ApiError> {
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
        let command = CreateSnapshotCommand::parse(caller.account_id, &params)?;
        let outcome = self.service.create_snapshot(&command).await?;
        note_snapshot(outcome.id());
        match outcome {
            CreateOutcome::Created { .. } => tracing::debug!("snapshot created"),
            CreateOutcome::Replayed { .. } => {
                tracing::debug!("client token replayed: the original snapshot")
            }
        }
        Ok(pb::CreateSnapshotResponse {
            request_id: caller.request_id,
            snapshot_id: outcome.id().to_owned(),
        })
    }

    async fn describe(
        &self,
        caller: Caller,
        request: pb::DescribeSnapshotsRequest,
    ) -> Result<pb::DescribeSnapshotsResponse, ApiError> {
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
            page_number: 0,
            instance_id: &request.instance_id,
            source_disk_type: disk_type_filter(request.source_disk_type)?,
            usage: &request.usage,
            created_after: timestamp_from_proto("created_after", request.created_after)?,
            created_before: timestamp_from_proto("created_before", request.created_before)?,
        };
        let query = SnapshotQuery::parse(caller.account_id, &params)?;
        let page = self.service.describe_snapshots(&query).await?;
        Ok(pb::DescribeSnapshotsResponse {
            request_id: caller.request_id,
            snapshots: page.snapshots.into_iter().map(snapshot_to_proto).collect(),
            next_token: page
                .next
                .as_ref()
                .map(PageCursor::to_token)
                .unwrap_or_default(),
            total_count: i32::try_from(page.total).unwrap_or(i32::MAX),
        })
    }

    async fn delete(
        &self,
        caller: Caller,
        request: pb::DeleteSnapshotRequest,
    ) -> Result<pb::DeleteSnapshotResponse, ApiError> {
        let snapshot_id = SnapshotId::parse(&request.snapshot_id)?;
        self.service
            .delete_snapshot(&caller.account_id, &snapshot_id, request.force)
            .await?;
        note_snapshot(snapshot_id.as_str());
        Ok(pb::DeleteSnapshotResponse {
            request_id: caller.request_id,
        })
    }

    /// proto3 `optional`: a field not set keeps its attribute; set to "" it is emptied.
    async fn modify(
        &self,
        caller: Caller,
        request: pb::ModifySnapshotAttributeRequest,
    ) -> Result<pb::ModifySnapshotAttributeResponse, ApiError> {
        let params = ModifySnapshotAttributeParams {
            snapshot_id: &request.snapshot_id,
            snapshot_name: request.snapshot_name.as_deref(),
            description: request.description.as_deref(),
            retention_days: request.retention_days,
        };
        let command = ModifySnapshotAttributeCommand::parse(caller.account_id, &params)?;
        self.service.modify_snapshot_attribute(&command).await?;
        note_snapshot(command.snapshot_id.as_str());
        Ok(pb::ModifySnapshotAttributeResponse {
            request_id: caller.request_id,
        })
    }
}

/// A WatchSnapshots answer: its messages, then the status that ended it, if any.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchSnapshotsResponse, Status>> + Send + 'static>>;

impl SnapshotApi {
    /// The peer's share is checked before the account's (as the edge's slots are), and held
    /// for as long as the stream is open.
    async fn watch(
        &self,
        caller: Caller,
        peer: String,
        request: pb::WatchSnapshotsRequest,
    ) -> Result<WatchStream, ApiError> {
        note_disk(&request.disk_id);
        let snapshot_ids: Vec<&str> = request.snapshot_ids.iter().map(String::as_str).collect();
        let query = WatchQuery::parse(caller.account_id, &snapshot_ids, &request.disk_id)?;
        let peer_share = self
            .watching_peers
            .take(peer, self.max_watches_per_peer)
            .map_err(|Busy { holder, limit }| ApiError::TooManyWatchesFromPeer {
                peer: holder,
                limit,
            })?;
        let watch = self.service.watch_snapshots(query).await?;
        let request_id = caller.request_id;
        Ok(Box::pin(futures_util::stream::unfold(
            (watch, request_id, peer_share),
            |(mut watch, request_id, peer_share)| async move {
                let message = watch
                    .next()
                    .await?
                    .map(watch_event_to_proto)
                    .map_err(|err| ApiError::from(err).into_status(&request_id));
                Some((message, (watch, request_id, peer_share)))
            },
        )))
    }
}

#[tonic::async_trait]
impl pb::snapshot_service_server::SnapshotService for SnapshotApi {
    type WatchSnapshotsStream = WatchStream;

    async fn watch_snapshots(
        &self,
        request: Request<pb::WatchSnapshotsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let peer = peer_key(request.extensions());
        handle(request, |caller, request| self.watch(caller, peer, request)).await
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        handle(request, |caller, request| self.create(caller, request)).await
    }

    async fn describe_snapshots(
        &self,
        request: Request<pb::DescribeSnapshotsRequest>,
    ) -> Result<Response<pb::DescribeSnapshotsResponse>, Status> {
        handle(request, |caller, request| self.describe(caller, request)).await
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        handle(request, |caller, request| self.delete(caller, request)).await
    }

    async fn modify_snapshot_attribute(
        &self,
        request: Request<pb::ModifySnapshotAttributeRequest>,
    ) -> Result<Response<pb::ModifySnapshotAttributeResponse>, Status> {
        handle(request, |caller, request| self.modify(caller, request)).await
    }
}
