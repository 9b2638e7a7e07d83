//! The simulation controls' runtime (`--simulation-controls`): a clock that SimulationService
//! can move forward and a data plane whose copies it can slow, stall or fail.
//!
//! The state is in the database (`simulation_clock`, `simulated_disks`), so every replica on it
//! steers alike; each replica keeps a copy in memory ([`Steering`]), because the clock and the
//! backend answer without a round trip. The replica that serves a SimulationService call applies
//! it at once; the others read it within [`REFRESH_EVERY`] (`service::Simulation::keep_in_step`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::backend::{BackendError, CopyState, SnapshotBackend};
use crate::clock::{Clock, SystemClock};
use crate::domain::{DiskSteering, Snapshot, Timestamp};

/// How often a replica reads the steering other replicas wrote.
pub const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// What SimulationService set, as this replica knows it.
pub struct Steering {
    /// How far the clock has been moved forward, in microseconds.
    offset_micros: AtomicI64,
    disks: RwLock<HashMap<String, DiskSteering>>,
    /// Counts this replica's own changes, so a read of the database that began before one
    /// does not undo it ([`Steering::refreshed`]).
    version: AtomicU64,
    /// The server's `--copy-rate-mibps`: a disk's rate until SetCopyRate sets one.
    default_mibps: u32,
    /// FailNextCopy picks this replica made, for the refresher to record.
    picks: mpsc::UnboundedSender<Pick>,
    picks_to_record: Mutex<Option<mpsc::UnboundedReceiver<Pick>>>,
}

/// A snapshot FailNextCopy picked on this replica.
#[derive(Debug)]
pub struct Pick {
    pub disk_id: String,
    pub snapshot_id: String,
    pub fail_from: Timestamp,
    /// When the doomed copy fails: the worker must look at it by then.
    pub fails_at: Timestamp,
}

/// What [`Steering::refreshed`] did with a read of the database.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Refreshed {
    /// The disks whose rate this replica learnt from another: their running copies may be due
    /// at another time than this replica's workers thought.
    pub rates_changed: Vec<String>,
}

impl Steering {
    pub fn new(default_mibps: u32) -> Arc<Self> {
        let (picks, picks_to_record) = mpsc::unbounded_channel();
        Arc::new(Self {
            offset_micros: AtomicI64::new(0),
            disks: RwLock::new(HashMap::new()),
            version: AtomicU64::new(0),
            default_mibps: default_mibps.max(1),
            picks,
            picks_to_record: Mutex::new(Some(picks_to_record)),
        })
    }

    pub fn default_mibps(&self) -> u32 {
        self.default_mibps
    }

    /// The clock's offset is now at least `offset_micros` (it only moves forward).
    pub fn clock_moved(&self, offset_micros: i64) {
        self.offset_micros
            .fetch_max(offset_micros, Ordering::SeqCst);
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// The disk's steering, as a SimulationService call (or a pick) just made it.
    pub fn disk_steered(&self, steering: DiskSteering) {
        self.disks
            .write()
            .expect("steering lock")
            .insert(steering.disk_id.clone(), steering);
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// The disk's steering as this replica knows it.
    pub fn disk(&self, disk_id: &str) -> Option<DiskSteering> {
        self.disks
            .read()
            .expect("steering lock")
            .get(disk_id)
            .cloned()
    }

    /// Where this replica's own changes stand: pass it to [`Steering::refreshed`] with a read
    /// of the database begun after this.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Takes what the database held, unless this replica changed something since `version`
    /// (the read may predate that change: the next read will see it). `None` when skipped.
    pub fn refreshed(
        &self,
        version: u64,
        offset_micros: i64,
        disks: Vec<DiskSteering>,
    ) -> Option<Refreshed> {
        let mut known = self.disks.write().expect("steering lock");
        if self.version.load(Ordering::SeqCst) != version {
            return None;
        }
        self.offset_micros
            .fetch_max(offset_micros, Ordering::SeqCst);
        let rates_changed = disks
            .iter()
            .filter(|disk| {
                known
                    .get(&disk.disk_id)
                    .map(|old| (old.rate, &old.checkpoint))
                    != Some((disk.rate, &disk.checkpoint))
                    && disk.rate.is_some()
            })
            .map(|disk| disk.disk_id.clone())
            .collect();
        *known = disks
            .into_iter()
            .map(|disk| (disk.disk_id.clone(), disk))
            .collect();
        Some(Refreshed { rates_changed })
    }

    /// The picks made since the last call (`None` once another task took the receiver).
    pub fn take_picks(&self) -> Option<mpsc::UnboundedReceiver<Pick>> {
        self.picks_to_record.lock().expect("steering lock").take()
    }

    /// Where `snapshot`'s copy stands at `now`. With `pick`, a copy FailNextCopy armed for
    /// (the disk's first started after the call) becomes the doomed one; `start_copy` does
    /// not pick, its snapshot not being stored yet.
    fn copy_state(&self, snapshot: &Snapshot, now: Timestamp, pick: bool) -> CopyState {
        let steering = self
            .disk(&snapshot.source_disk_id)
            .unwrap_or_else(|| DiskSteering::untouched(&snapshot.source_disk_id));
        let copy = steering.copy_at(snapshot, now, self.default_mibps);
        if pick
            && let Some(fail_from) = steering.fail_from
            && snapshot.started_at >= fail_from
        {
            // The copy may be due later than it now fails (started before this replica read
            // the FailNextCopy call): the pick makes it due by then.
            let _ = self.picks.send(Pick {
                disk_id: steering.disk_id.clone(),
                snapshot_id: snapshot.snapshot_id.clone(),
                fail_from,
                fails_at: copy.due_at(now),
            });
            self.disk_steered(DiskSteering {
                fail_from: None,
                doomed_snapshot_id: Some(snapshot.snapshot_id.clone()),
                ..steering
            });
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
        let offset = self.steering.offset_micros.load(Ordering::SeqCst);
        // The offset is bounded so that the service's time stays within 9999 (AdvanceClock).
        SystemClock.now() + chrono::TimeDelta::microseconds(offset)
    }

    /// Signed requests are dated by their clients' real clocks.
    fn wall(&self) -> Timestamp {
        SystemClock.now()
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
            match self
                .steering
                .copy_state(snapshot, snapshot.started_at, false)
            {
                CopyState::Copying { remaining, .. } => remaining,
                CopyState::Done | CopyState::Failed(_) => Duration::ZERO,
            },
        )
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        self.steering.copy_state(snapshot, now, true)
    }

    async fn cancel_copy(&self, _snapshot: &Snapshot) -> Result<(), BackendError> {
        Ok(())
    }
}
