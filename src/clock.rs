//! The clock, behind a trait so tests can move time; the engine never reads it itself.

use crate::domain::Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;

    /// The real time, where the service's own may run ahead of it (the simulation controls'
    /// clock): what clients date their signed requests by.
    fn wall(&self) -> Timestamp {
        self.now()
    }
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // Microseconds: what PostgreSQL keeps, so both backends store the same instants.
        chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6)
    }
}

/// A clock that moves only when told: for tests of time-driven behaviour (progress, retention).
#[derive(Debug)]
pub struct ManualClock {
    now: std::sync::Mutex<Timestamp>,
}

impl ManualClock {
    /// Starts at `start`, kept to the microsecond as [`SystemClock`] keeps time.
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: std::sync::Mutex::new(chrono::SubsecRound::trunc_subsecs(start, 6)),
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.now.lock().expect("clock lock");
        *now = chrono::SubsecRound::trunc_subsecs(*now + by, 6);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().expect("clock lock")
    }
}
