//! The simulation controls' use cases (SimulationService): each writes the shared state in the
//! database, then this replica's copy of it ([`Steering`]); other replicas read it within
//! `simulation::REFRESH_EVERY`.

use std::sync::Arc;

use super::{Service, ServiceError};
use crate::domain::{
    Checkpoint, ClockAdvance, CopyRateMibps, DiskId, DiskSteering, SteeredRate, Timestamp, later,
};
use crate::engine::RuleError;
use crate::simulation::Steering;
use crate::store::Transaction;

/// The controls over one service's clock and simulated data plane.
pub struct Simulation {
    service: Arc<Service>,
    steering: Arc<Steering>,
}

impl Simulation {
    /// `service` must run on `steering`'s clock and backend (`simulation::SteeredClock`,
    /// `simulation::SteeredBackend`).
    pub fn new(service: Arc<Service>, steering: Arc<Steering>) -> Self {
        Self { service, steering }
    }

    /// Moves the clock forward: the service's time after.
    pub async fn advance_clock(&self, by: ClockAdvance) -> Result<Timestamp, ServiceError> {
        let service = &self.service;
        let mut tx = service.store.begin().await?;
        let offset = tx.advance_clock(by.as_micros()).await;
        let offset = service
            .finish(tx, offset.map_err(ServiceError::from))
            .await?;
        self.steering.clock_moved(offset);
        Ok(service.clock.now())
    }

    /// The disk's first snapshot started from now on fails halfway.
    pub async fn fail_next_copy(&self, disk_id: &DiskId) -> Result<(), ServiceError> {
        self.steer(disk_id, Change::FailNextCopy).await
    }

    /// The disk's copy rate from now on, the running copy's too (it is due again accordingly).
    pub async fn set_copy_rate(
        &self,
        disk_id: &DiskId,
        mibps: CopyRateMibps,
    ) -> Result<(), ServiceError> {
        self.steer(disk_id, Change::CopyRate(mibps)).await
    }

    /// Makes `change` to the disk's steering in a transaction that holds it, then takes the
    /// result on this replica. An unknown disk is `InvalidDiskId.NotFound`.
    async fn steer(&self, disk_id: &DiskId, change: Change) -> Result<(), ServiceError> {
        let service = &self.service;
        let now = service.clock.now();
        let default_mibps = self.steering.default_mibps();
        let mut tx = service.store.begin().await?;
        let steered = async {
            if tx.select_disk(disk_id.as_str()).await?.is_none() {
                return Err(RuleError::InvalidDiskIdNotFound {
                    disk_id: disk_id.as_str().to_owned(),
                }
                .into());
            }
            let mut steering = tx.lock_steering(disk_id.as_str()).await?;
            match change {
                Change::FailNextCopy => {
                    steering.fail_from = Some(now);
                    steering.doomed_snapshot_id = None;
                }
                Change::CopyRate(mibps) => {
                    set_rate(tx.as_mut(), &mut steering, mibps, now, default_mibps).await?;
                }
            }
            tx.put_steering(&steering).await?;
            Ok(steering)
        }
        .await;
        let steering = service.finish(tx, steered).await?;
        self.steering.disk_steered(steering);
        Ok(())
    }
}

enum Change {
    FailNextCopy,
    CopyRate(CopyRateMibps),
}

/// Sets the disk's rate from `now`: the running copy keeps what it copied so far (a
/// checkpoint) and is due again when it will end at the new rate.
async fn set_rate(
    tx: &mut dyn Transaction,
    steering: &mut DiskSteering,
    mibps: CopyRateMibps,
    now: Timestamp,
    default_mibps: u32,
) -> Result<(), ServiceError> {
    let running = tx.lock_progressing_snapshot(&steering.disk_id).await?;
    let before = running
        .as_ref()
        .map(|running| steering.copy_at(running, now, default_mibps));
    steering.rate = Some(SteeredRate {
        mibps: mibps.get(),
        since: now,
    });
    let (Some(running), Some(before)) = (running, before) else {
        return Ok(());
    };
    if before.doomed {
        // FailNextCopy's pick, had no one looked at the copy yet.
        steering.doomed_snapshot_id = Some(running.snapshot_id.clone());
    }
    steering.checkpoint = Some(Checkpoint {
        snapshot_id: running.snapshot_id.clone(),
        copied_kib: before.copied_kib as i64,
    });
    let after = steering.copy_at(&running, now, default_mibps);
    let due = if after.has_ended() {
        now
    } else {
        later(now, after.remaining())
    };
    tx.postpone_copy(&running, due).await?;
    Ok(())
}
