//! The simulation controls' use cases (SimulationService): each writes the shared state in the
//! database, then this replica's copy of it ([`Steering`]); other replicas read it within
//! `simulation::REFRESH_EVERY`.

use std::sync::Arc;

use super::{Service, ServiceError};
use tokio::sync::watch;

use crate::domain::{
    Checkpoint, ClockAdvance, CopyRateMibps, DiskId, DiskSteering, LATEST_TIMESTAMP_SECONDS,
    Snapshot, SteeredRate, Timestamp,
};
use crate::engine::RuleError;
use crate::simulation::{Pick, REFRESH_EVERY, Steering};
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

    /// Moves the clock forward: the service's time after. Refused past 9999.
    pub async fn advance_clock(&self, by: ClockAdvance) -> Result<Timestamp, ServiceError> {
        let service = &self.service;
        let wall = service.clock.wall();
        let max_micros = (LATEST_TIMESTAMP_SECONDS - wall.timestamp()).saturating_mul(1_000_000);
        let mut tx = service.store.begin().await?;
        let offset = async {
            tx.advance_clock(by.as_micros(), max_micros)
                .await?
                .ok_or_else(|| {
                    RuleError::InvalidParameter {
                        field: "seconds",
                        why: "the service's clock would pass the end of year 9999".to_owned(),
                    }
                    .into()
                })
        }
        .await;
        let offset = service.finish(tx, offset).await?;
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
            // The disk's lock, as CreateSnapshot takes it: no snapshot of it starts meanwhile.
            if tx.lock_disk_owner(disk_id.as_str()).await?.is_none() {
                return Err(RuleError::InvalidDiskIdNotFound {
                    disk_id: disk_id.as_str().to_owned(),
                }
                .into());
            }
            let mut steering = tx.lock_steering(disk_id.as_str()).await?;
            let running = tx.lock_progressing_snapshot(disk_id.as_str()).await?;
            if let Some(running) = &running {
                settle_pick(tx.as_mut(), &mut steering, running, now, default_mibps).await?;
            }
            match change {
                // A snapshot picked by an earlier call stays doomed.
                Change::FailNextCopy => steering.fail_from = Some(now),
                Change::CopyRate(mibps) => {
                    let rate = SteeredRate {
                        mibps: mibps.get(),
                        since: now,
                    };
                    set_rate(tx.as_mut(), &mut steering, running, rate, default_mibps).await?;
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

impl Simulation {
    /// Takes what the database holds: the clock's offset, every steered disk. Before serving
    /// (a restarted replica's clock must not go back), then every [`REFRESH_EVERY`].
    pub async fn refresh(&self) -> Result<(), ServiceError> {
        let version = self.steering.version();
        let mut read = self.service.store.read().await?;
        let (offset, disks) = read.read_simulation().await?;
        read.commit().await?;
        let Some(refreshed) = self.steering.refreshed(version, offset, disks) else {
            return Ok(()); // this replica changed something meanwhile: read again next time
        };
        if refreshed.rates_changed.is_empty() {
            return Ok(());
        }
        // This replica's workers may have dated those copies by the old rate: let the worker
        // look at them now, with the new one.
        let now = self.service.clock.now();
        let mut tx = self.service.store.begin().await?;
        let hastened = async {
            for disk_id in &refreshed.rates_changed {
                tx.hasten_copy(disk_id, now).await?;
            }
            Ok(())
        }
        .await;
        self.service.finish(tx, hastened).await
    }

    /// Records this replica's FailNextCopy picks; a pick another replica's or call's beat is
    /// dropped (the next read brings the winner).
    async fn record(&self, picks: &[Pick]) -> Result<(), ServiceError> {
        let mut tx = self.service.store.begin().await?;
        let recorded = async {
            for pick in picks {
                tx.pick_doomed(
                    &pick.disk_id,
                    &pick.snapshot_id,
                    pick.fail_from,
                    pick.fails_at,
                )
                .await?;
            }
            Ok(())
        }
        .await;
        self.service.finish(tx, recorded).await
    }

    /// Keeps this replica's steering in step with the database until `stop` turns true:
    /// records its picks as they come, reads what other replicas set every
    /// [`REFRESH_EVERY`]. The picks still to record are recorded before it returns.
    pub async fn keep_in_step(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut picks) = self.steering.take_picks() else {
            return; // another task keeps it in step
        };
        let mut pending: Vec<Pick> = Vec::new();
        loop {
            while let Ok(pick) = picks.try_recv() {
                pending.push(pick);
            }
            if !pending.is_empty() {
                match self.record(&pending).await {
                    Ok(()) => pending.clear(),
                    Err(err) => tracing::warn!(error = %err, "recording FailNextCopy's picks"),
                }
            }
            if let Err(err) = self.refresh().await {
                tracing::warn!(error = %err, "reading the simulation controls' state");
            }
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                Some(pick) = picks.recv() => pending.push(pick),
                changed = stop.changed() => {
                    if changed.is_err() {
                        break; // the owner is gone
                    }
                }
            }
        }
    }
}

enum Change {
    FailNextCopy,
    CopyRate(CopyRateMibps),
}

/// Records the pick of an armed FailNextCopy, if the running copy is the one it dooms (a
/// replica picks at first sight, and records it in the background: the call being made here
/// must not arm it again over a pick not recorded yet), and makes the copy due when it fails.
async fn settle_pick(
    tx: &mut dyn Transaction,
    steering: &mut DiskSteering,
    running: &Snapshot,
    now: Timestamp,
    default_mibps: u32,
) -> Result<(), ServiceError> {
    let Some(fail_from) = steering.fail_from else {
        return Ok(());
    };
    if running.started_at < fail_from {
        return Ok(());
    }
    steering.doomed_snapshot_id = Some(running.snapshot_id.clone());
    steering.fail_from = None;
    let copy = steering.copy_at(running, now, default_mibps);
    tx.postpone_copy(running, copy.due_at(now)).await?;
    Ok(())
}

/// Sets the disk's rate: the running copy keeps what it copied so far (a checkpoint) and is
/// due again when it will end at the new rate.
async fn set_rate(
    tx: &mut dyn Transaction,
    steering: &mut DiskSteering,
    running: Option<Snapshot>,
    rate: SteeredRate,
    default_mibps: u32,
) -> Result<(), ServiceError> {
    let now = rate.since;
    let before = running
        .as_ref()
        .map(|running| steering.copy_at(running, now, default_mibps));
    steering.rate = Some(rate);
    let (Some(running), Some(before)) = (running, before) else {
        return Ok(());
    };
    steering.checkpoint = Some(Checkpoint {
        snapshot_id: running.snapshot_id.clone(),
        copied_kib: before.copied_kib as i64,
    });
    let after = steering.copy_at(&running, now, default_mibps);
    tx.postpone_copy(&running, after.due_at(now)).await?;
    Ok(())
}
