//! `ecs.snapshot.v1.SimulationService`: steering the simulated data plane and the clock, for
//! people testing their own code against snapshotd. Mounted only with `--simulation-controls`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::call::handle_admin;
use super::convert::timestamp_to_proto;
use crate::domain::{ClockAdvance, CopyRateMibps, DiskId};
use crate::pb;
use crate::service::Simulation;

pub struct SimulationApi {
    simulation: Arc<Simulation>,
}

impl SimulationApi {
    pub fn new(simulation: Arc<Simulation>) -> Self {
        Self { simulation }
    }
}

#[tonic::async_trait]
impl pb::simulation_service_server::SimulationService for SimulationApi {
    async fn advance_clock(
        &self,
        request: Request<pb::AdvanceClockRequest>,
    ) -> Result<Response<pb::AdvanceClockResponse>, Status> {
        handle_admin(request, |advance| async move {
            let by = ClockAdvance::parse(advance.seconds)?;
            let now = self.simulation.advance_clock(by).await?;
            Ok(pb::AdvanceClockResponse {
                now: Some(timestamp_to_proto(now)),
            })
        })
        .await
    }

    async fn fail_next_copy(
        &self,
        request: Request<pb::FailNextCopyRequest>,
    ) -> Result<Response<pb::FailNextCopyResponse>, Status> {
        handle_admin(request, |fail| async move {
            let disk_id = DiskId::parse(&fail.disk_id)?;
            self.simulation.fail_next_copy(&disk_id).await?;
            Ok(pb::FailNextCopyResponse {})
        })
        .await
    }

    async fn set_copy_rate(
        &self,
        request: Request<pb::SetCopyRateRequest>,
    ) -> Result<Response<pb::SetCopyRateResponse>, Status> {
        handle_admin(request, |set| async move {
            let disk_id = DiskId::parse(&set.disk_id)?;
            let mibps = CopyRateMibps::parse(set.mibps)?;
            self.simulation.set_copy_rate(&disk_id, mibps).await?;
            Ok(pb::SetCopyRateResponse {})
        })
        .await
    }
}
