//! The pool's fence against a server that is no longer the primary.
//!
//! A failover changes the server behind the database's address (a proxy such as HAProxy moves
//! to the new primary), but a pooled connection stays with the server it was opened to: the old
//! primary, dead or back as a read-only node in recovery. So once any connection shows that the
//! server it reached is gone or takes no writes ([`Diagnosis::ServerLost`]: the connection lost,
//! a shutdown, a read-only transaction), every connection opened before that moment is closed
//! instead of used again: idle ones as they would be handed out (`before_acquire`), those in use
//! as they come back (`after_release`), and the idle ones nobody asks for at readiness's next
//! round ([`Fence::take_drain`]). Connections opened after it are the new server's.
//!
//! The cost on a call's path is an atomic load when a connection is handed out and one when it
//! comes back; nothing crosses the wire.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Diagnosis, diagnose};

/// When the last sign of a lost server was seen (see the module).
#[derive(Debug)]
pub struct Fence {
    origin: Instant,
    /// Nanoseconds from `origin` to the last sign; 0 while there was none.
    raised_at: AtomicU64,
    /// A sign came since idle connections were last closed.
    undrained: AtomicBool,
}

impl Default for Fence {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            raised_at: AtomicU64::new(0),
            undrained: AtomicBool::new(false),
        }
    }
}

impl Fence {
    /// Raises the fence when `err` says the server behind the connection is gone or takes no
    /// writes.
    pub fn note(&self, err: &sqlx::Error) {
        if diagnose(err) == Diagnosis::ServerLost {
            self.raise();
        }
    }

    /// Every connection opened until now is not to be used again.
    pub fn raise(&self) {
        let now = nanos(self.origin.elapsed()).max(1);
        self.raised_at.fetch_max(now, Ordering::Relaxed);
        self.undrained.store(true, Ordering::Release);
    }

    /// Whether a connection opened `age` ago was opened before the last sign.
    pub fn predates(&self, age: Duration) -> bool {
        let raised_at = self.raised_at.load(Ordering::Relaxed);
        raised_at != 0 && nanos(self.origin.elapsed().saturating_sub(age)) <= raised_at
    }

    /// True once after each sign: the pool's idle connections are to be closed now.
    pub fn take_drain(&self) -> bool {
        self.undrained.load(Ordering::Acquire) && self.undrained.swap(false, Ordering::AcqRel)
    }
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connections_opened_before_a_sign_are_fenced_off() {
        let fence = Fence::default();
        let opened_before = Duration::from_secs(3600);
        assert!(!fence.predates(opened_before), "no sign yet");
        assert!(!fence.take_drain());

        fence.note(&sqlx::Error::PoolTimedOut);
        assert!(!fence.predates(opened_before), "a busy pool is no sign");

        fence.note(&sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()));
        assert!(fence.predates(opened_before));
        std::thread::sleep(Duration::from_millis(2));
        assert!(!fence.predates(Duration::ZERO), "opened after the sign");
        assert!(fence.take_drain());
        assert!(!fence.take_drain(), "once per sign");
    }
}
