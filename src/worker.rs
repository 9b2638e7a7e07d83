//! The lifecycle worker: finishes copies whose time has come and releases snapshots past their
//! retention.
//!
//! Crash-safe: it keeps no state of its own; everything it needs (`copy_due_at`, `release_at`)
//! is in the database, so a restarted or another replica's worker picks up where one stopped.
//! Replica-safe: each step claims its rows with `FOR UPDATE SKIP LOCKED` (PostgreSQL), so two
//! workers never process one snapshot. Steppable: tests call [`Worker::tick`] directly.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::service::{Service, ServiceError, WorkDone};
use crate::telemetry::metric;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Worked(WorkDone),
    Idle,
}

#[derive(Clone)]
pub struct Worker {
    service: Arc<Service>,
}

impl Worker {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }

    /// One step: finish due copies, then release expired snapshots.
    pub async fn tick(&self) -> Result<Outcome, ServiceError> {
        let done = self.service.worker_step().await?;
        if done.is_idle() {
            Ok(Outcome::Idle)
        } else {
            tracing::info!(
                accomplished = done.accomplished,
                failed = done.failed,
                released = done.released,
                "worker step"
            );
            Ok(Outcome::Worked(done))
        }
    }

    /// Steps until `stop` turns true: at once again after a step that found a whole batch due
    /// (it is behind), else after `interval`. A step in progress when `stop` turns true is
    /// finished first.
    ///
    /// Not at once after any work: under a steady trickle of creates every step found a copy or
    /// two, and the worker stepped back to back, two transactions per finished copy (at 1 call
    /// in flight it ran as many transactions as the creates; bench/README.md, issue 19).
    pub async fn run(self, interval: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            let step = self.tick().await;
            metric::worker_step(match &step {
                Ok(Outcome::Worked(_)) => "worked",
                Ok(Outcome::Idle) => "idle",
                Err(_) => "failed",
            });
            let pause = match step {
                Ok(Outcome::Worked(done)) if done.more_due => Duration::ZERO,
                Ok(_) => interval,
                // Cut off by the shutdown (the store closed): not a failure to report.
                Err(err) if *stop.borrow() => {
                    tracing::info!(error = %err, "worker step cut off by the shutdown");
                    interval
                }
                Err(err) => {
                    tracing::error!(error = %err, "worker step failed; retrying");
                    interval
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        break; // the owner is gone
                    }
                }
            }
        }
        tracing::info!("worker stopped");
    }
}
