//! The snapshot backend: the data plane that copies a disk's blocks into a snapshot.
//!
//! The service decides *whether* a snapshot may be taken; a backend does the copying and says
//! how far it got. The default [`SimulatedBackend`] copies at a fixed rate and derives progress
//! from the snapshot's stored start time alone, so progress survives restarts and is the same on
//! every replica. A real data plane plugs in behind the same trait.

use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;

use crate::domain::{Snapshot, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// Where a copy stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    Copying {
        /// 0..=99 while copying.
        progress_percent: u8,
        remaining: Duration,
    },
    Done,
    Failed(String),
}

#[async_trait]
pub trait SnapshotBackend: Send + Sync + 'static {
    /// Starts copying `snapshot`'s source disk and says how long it expects the copy to take.
    /// Called inside the CreateSnapshot transaction, before it commits: an error answers
    /// `CreateSnapshot.Failed` and nothing is stored.
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError>;

    /// Where the copy of `snapshot` stands at `now`.
    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState;

    /// Stops copying `snapshot` (it is being deleted). Best effort: the row goes either way.
    async fn cancel_copy(&self, snapshot: &Snapshot) -> Result<(), BackendError>;
}

/// Copies `source_disk_size_gib` at a fixed rate, starting at the snapshot's `started_at`.
#[derive(Debug, Clone, Copy)]
pub struct SimulatedBackend {
    rate_mibps: u32,
}

impl SimulatedBackend {
    pub fn new(rate_mibps: u32) -> Self {
        Self {
            rate_mibps: rate_mibps.max(1),
        }
    }

    /// How long copying `size_gib` takes.
    pub fn copy_time(&self, size_gib: i32) -> Duration {
        let mib = f64::from(size_gib.max(0)) * 1024.0;
        Duration::from_secs_f64(mib / f64::from(self.rate_mibps))
    }
}

#[async_trait]
impl SnapshotBackend for SimulatedBackend {
    async fn start_copy(&self, snapshot: &Snapshot) -> Result<Duration, BackendError> {
        Ok(self.copy_time(snapshot.source_disk_size_gib))
    }

    async fn copy_state(&self, snapshot: &Snapshot, now: Timestamp) -> CopyState {
        let total = self.copy_time(snapshot.source_disk_size_gib);
        let elapsed = (now - snapshot.started_at)
            .max(TimeDelta::zero())
            .to_std()
            .unwrap_or_default();
        if elapsed >= total {
            return CopyState::Done;
        }
        let fraction = elapsed.as_secs_f64() / total.as_secs_f64();
        CopyState::Copying {
            // Truncated, and never 100 while copying.
            progress_percent: ((fraction * 100.0) as u8).min(99),
            remaining: total - elapsed,
        }
    }

    async fn cancel_copy(&self, _snapshot: &Snapshot) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(size_gib: i32, started_at: Timestamp) -> Snapshot {
        Snapshot::copying("s-00000000000000000000", size_gib, started_at)
    }

    #[tokio::test]
    async fn the_simulated_copy_progresses_with_elapsed_time_and_finishes() {
        let backend = SimulatedBackend::new(256);
        let start = chrono::Utc::now();
        let snap = snapshot(40, start); // 40 GiB at 256 MiB/s: 160 s
        assert_eq!(
            backend.start_copy(&snap).await.unwrap(),
            Duration::from_secs(160)
        );
        let cases = [
            (
                0,
                CopyState::Copying {
                    progress_percent: 0,
                    remaining: Duration::from_secs(160),
                },
            ),
            (
                40,
                CopyState::Copying {
                    progress_percent: 25,
                    remaining: Duration::from_secs(120),
                },
            ),
            (
                159,
                CopyState::Copying {
                    progress_percent: 99,
                    remaining: Duration::from_secs(1),
                },
            ),
            (160, CopyState::Done),
            (1000, CopyState::Done),
        ];
        for (seconds, expected) in cases {
            let now = start + TimeDelta::seconds(seconds);
            assert_eq!(backend.copy_state(&snap, now).await, expected, "{seconds}s");
        }
    }
}
