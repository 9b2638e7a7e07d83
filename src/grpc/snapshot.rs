//! `ecs.snapshot.v1.SnapshotService`: the tenant-facing snapshot API.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::ApiError;
use super::identity::caller_account;
use crate::backend::SnapshotBackend;
use crate::clock::Clock;
use crate::domain::{
    ClientToken, CreateSnapshotCommand, Description, DiskId, SnapshotName, new_request_id,
};
use crate::engine::Policy;
use crate::pb;
use crate::store::{CreateOutcome, Store};

pub struct SnapshotApi {
    store: Arc<dyn Store>,
    backend: Arc<dyn SnapshotBackend>,
    clock: Arc<dyn Clock>,
    policy: Policy,
}

impl SnapshotApi {
    pub fn new(
        store: Arc<dyn Store>,
        backend: Arc<dyn SnapshotBackend>,
        clock: Arc<dyn Clock>,
        policy: Policy,
    ) -> Self {
        Self {
            store,
            backend,
            clock,
            policy,
        }
    }

    async fn create(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<(CreateOutcome, String), ApiError> {
        let account_id = caller_account(request.metadata())?;
        tracing::Span::current().record("account", account_id.as_str());
        let request = request.into_inner();
        // Input rules in the table's order (#2..#6): the first failing one answers.
        let command = CreateSnapshotCommand {
            disk_id: DiskId::parse(&request.disk_id)?,
            snapshot_name: SnapshotName::parse_optional(&request.snapshot_name)?,
            description: Description::parse(&request.description)?,
            client_token: ClientToken::parse_optional(&request.client_token)?,
            account_id,
        };
        let outcome = self
            .store
            .create_snapshot(
                &command,
                &self.policy,
                self.clock.now(),
                self.backend.as_ref(),
            )
            .await?;
        let snapshot_id = match &outcome {
            CreateOutcome::Created { snapshot_id } | CreateOutcome::Replayed { snapshot_id } => {
                snapshot_id.clone()
            }
        };
        Ok((outcome, snapshot_id))
    }
}

#[tonic::async_trait]
impl pb::snapshot_service_server::SnapshotService for SnapshotApi {
    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let request_id = new_request_id();
        let span = tracing::info_span!(
            "CreateSnapshot",
            request_id = %request_id,
            account = tracing::field::Empty,
            disk = %request.get_ref().disk_id,
        );
        async {
            match self.create(request).await {
                Ok((outcome, snapshot_id)) => {
                    let replayed = matches!(outcome, CreateOutcome::Replayed { .. });
                    tracing::info!(snapshot_id = %snapshot_id, replayed, "snapshot created");
                    Ok(Response::new(pb::CreateSnapshotResponse {
                        request_id: request_id.clone(),
                        snapshot_id,
                    }))
                }
                Err(err) => Err(err.into_status(&request_id)),
            }
        }
        .instrument(span)
        .await
    }
}
