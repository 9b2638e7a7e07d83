//! The simulation controls' runtime (`--simulation-controls`): a clock that SimulationService
//! can move forward and a data plane whose copies it can slow, stall or fail.
//!
//! The state is in the database (`simulation_clock`, `simulated_disks`), so every replica on it
//! steers alike; each replica keeps a copy in memory ([`Steering`]), because the clock and the
//! backend answer without a round trip. The replica that serves a SimulationService call applies
//! it at once; the others read it within [`REFRESH_EVERY`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use crate::backend::{BackendError, CopyState, SnapshotBackend};
use crate::clock::Clock;
use crate::domain::{DiskSteering, Snapshot, Timestamp, later};
use crate::store::Store;

/// How often a replica reads the steering other replicas wrote.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// What SimulationService set, as this replica knows it.
pub struct Steering {
    /// How far the clock has been moved forward, in microseconds.
    offset_micros: AtomicI64,
    disks: RwLock<HashMap<String, DiskSteering>>,
    /// The server's `--copy-rate-mibps`: a disk's rate until SetCopyRate sets one.
    default_mibps: u32,
    /// FailNextCopy picks this replica made, for the refresher to record (`pick_doomed`).
    picks: mpsc::UnboundedSender<Pick>,
    picks_to_record: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Pick>>>,
}

/// A snapshot FailNextCopy picked on this replica.
#[derive(Debug)]
struct Pick {
    disk_id: String,
    snapshot_id: String,
    fail_from: Timestamp,
    /// When the doomed copy fails: the worker must look at it by then.
    fails_at: Timestamp,
}

impl Steering {
    pub fn new(default_mibps: u32) -> Arc<Self> {
        let (picks, picks_to_record) = mpsc::unbounded_channel();
        Arc::new(Self {
            offset_micros: AtomicI64::new(0),
            disks: RwLock::new(HashMap::new()),
            default_mibps: default_mibps.max(1),
            picks,
            picks_to_record: std::sync::Mutex::new(Some(picks_to_record)),
        })
    }

    pub fn default_mibps(&self) -> u32 {
        self.default_mibps
    }

    /// The clock's offset is now at least `offset_micros` (it only moves forward).
    pub fn clock_moved(&self, offset_micros: i64) {
        self.offset_micros
            .fetch_max(offset_micros, Ordering::Relaxed);
    }

    /// The disk's steering, as a SimulationService call just committed it.
    pub fn disk_steered(&self, steering: DiskSteering) {
        self.disks
            .write()
            .expect("steering lock")
            .insert(steering.disk_id.clone(), steering);
    }

    /// The disk's steering as this replica knows it.
    pub fn disk(&self, disk_id: &str) -> Option<DiskSteering> {
        self.disks
            .read()
            .expect("steering lock")
            .get(disk_id)
            .cloned()
    }

    /// Takes what the database holds, keeping this replica's picks not recorded yet.
    fn refreshed(&self, offset_micros: i64, disks: Vec<DiskSteering>) {
        self.clock_moved(offset_micros);
        let mut known = self.disks.write().expect("steering lock");
        let fresh = disks.into_iter().map(|mut disk| {
            if let Some(local) = known.get(&disk.disk_id)
                && disk.doomed_snapshot_id.is_none()
                && local.fail_from == disk.fail_from
            {
                disk.doomed_snapshot_id
                    .clone_from(&local.doomed_snapshot_id);
            }
            (disk.disk_id.clone(), disk)
        });
        *known = fresh.collect();
    }

    /// Where `snapshot`'s copy stands at `now`; picks it for FailNextCopy when it is the
    /// disk's first snapshot since the call.
    fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        let mut steering = self
            .disk(&snapshot.source_disk_id)
            .unwrap_or_else(|| DiskSteering::untouched(&snapshot.source_disk_id));
        let copy = steering.copy_at(snapshot, now, self.default_mibps);
        if steering.doomed_snapshot_id.is_none()
            && let Some(fail_from) = steering.fail_from
            && copy.doomed
        {
            steering.doomed_snapshot_id = Some(snapshot.snapshot_id.clone());
            // The copy may be due later than it now fails (started before this replica read
            // the FailNextCopy call): the pick makes it due by then.
            let fails_at = if copy.has_ended() {
                now
            } else {
                later(now, copy.remaining())
            };
            let _ = self.picks.send(Pick {
                disk_id: steering.disk_id.clone(),
                snapshot_id: snapshot.snapshot_id.clone(),
                fail_from,
                fails_at,
            });
            self.disk_steered(steering);
        }
        match (copy.has_ended(), copy.doomed) {
            (true, true) => CopyState::Failed("the copy failed halfway (FailNextCopy)".into()),
            (true, false) => CopyState::Done,
            (false, _) => CopyState::Copying {
                progress_percent: copy.progress_percent(),
                remaining: copy.remaining(),
            },
        }
    }
}

/// The system clock, moved forward by AdvanceClock.
pub struct SteeredClock {
    steering: Arc<Steering>,
}

impl SteeredClock {
    pub fn new(steering: Arc<Steering>) -> Self {
        Self { steering }
    }
}

impl Clock for SteeredClock {
    fn now(&self) -> Timestamp {
        let offset = self.steering.offset_micros.load(Ordering::Relaxed);
        crate::clock::SystemClock.now() + chrono::TimeDelta::microseconds(offset)
    }
}

/// The simulated data plane, with each disk's rate and failures as SimulationService set them.
pub struct SteeredBackend {
    steering: Arc<Steering>,
}

impl SteeredBackend {
    pub fn new(steering: Arc<Steering>) -> Self {
        Self { steering }
    }
}

#[async_trait]
impl SnapshotBackend for SteeredBackend {
    /// An estimate: the worker asks [`SnapshotBackend::copy_state`] when it is due, and
    /// SetCopyRate re-dues a running copy.
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError> {
        Ok(
            match self.steering.copy_state(snapshot, snapshot.started_at) {
                CopyState::Copying { remaining, .. } => remaining,
                CopyState::Done | CopyState::Failed(_) => Duration::ZERO,
            },
        )
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        self.steering.copy_state(snapshot, now)
    }

    async fn cancel_copy(&self, _snapshot: &Snapshot) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Keeps `steering` in step with the database until `stop` turns true: reads what other
/// replicas set every [`REFRESH_EVERY`], and records this replica's FailNextCopy picks.
pub async fn keep_in_step(
    steering: Arc<Steering>,
    store: Arc<dyn Store>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(mut picks) = steering
        .picks_to_record
        .lock()
        .expect("steering lock")
        .take()
    else {
        return; // another task keeps it in step
    };
    let mut pending: Vec<Pick> = Vec::new();
    loop {
        while let Ok(pick) = picks.try_recv() {
            pending.push(pick);
        }
        if let Err(err) = record_picks(store.as_ref(), &pending).await {
            tracing::warn!(error = %err, "recording FailNextCopy's picks; retrying");
        } else {
            pending.clear();
        }
        match read(store.as_ref()).await {
            Ok((offset, disks)) => steering.refreshed(offset, disks),
            Err(err) => tracing::warn!(error = %err, "reading the simulation controls' state"),
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_EVERY) => {}
            Some(pick) = picks.recv() => pending.push(pick),
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
}

async fn record_picks(store: &dyn Store, picks: &[Pick]) -> Result<(), crate::store::StoreError> {
    if picks.is_empty() {
        return Ok(());
    }
    let mut tx = store.begin().await?;
    for pick in picks {
        tx.pick_doomed(
            &pick.disk_id,
            &pick.snapshot_id,
            pick.fail_from,
            pick.fails_at,
        )
        .await?;
    }
    tx.commit().await
}

async fn read(store: &dyn Store) -> Result<(i64, Vec<DiskSteering>), crate::store::StoreError> {
    let mut read = store.read().await?;
    let state = read.read_simulation().await?;
    read.commit().await?;
    Ok(state)
}
