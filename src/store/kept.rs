//! Connections kept between sessions (write transactions and reads), out of the pool.
//!
//! sqlx pings every connection given back to its pool (a Sync and its ReadyForQuery: one more
//! round trip per transaction, in a task of its own), and the next call most often takes
//! another idle connection meanwhile. So a session whose transaction ended cleanly (its COMMIT
//! or ROLLBACK answered), or a read its caller committed after every statement answered, leaves
//! its connection here instead, and the next session takes it from here first: nothing crosses
//! the wire between the two. At one call in flight that was one round trip in five on the
//! database for a create, one in two for a describe page, and a task and a wake-up on the
//! server each time (bench/README.md, issue 19).
//!
//! What the pool's hooks checked still holds: a connection leaves the pool only through
//! `before_acquire` (the fence, the ping of a long-idle one), and a kept one is used again only
//! if the fence was not raised since (`Fence::predates`) and it was idle here a short while. A
//! connection whose session was dropped halfway, or whose end failed, never comes here.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::Database;
use sqlx::pool::{Pool, PoolConnection};

use super::fence::Fence;

/// Kept longer than this, a connection goes back to the pool (whose ping and `before_acquire`
/// then look after it).
const KEEP_AT_MOST: Duration = Duration::from_secs(1);

/// Connections kept between sessions, at most `capacity`, the last kept first out.
pub struct KeptConnections<DB: Database> {
    capacity: usize,
    held: Mutex<Held<DB>>,
}

struct Held<DB: Database> {
    connections: Vec<Kept<DB>>,
    /// The pool is closing: nothing is kept any more.
    closed: bool,
}

/// A connection out of the pool between two sessions.
pub struct Kept<DB: Database> {
    pub connection: PoolConnection<DB>,
    /// When it left the pool, through `before_acquire`: the fence was not raised before then.
    pub acquired_at: Instant,
    kept_at: Instant,
}

impl<DB: Database> KeptConnections<DB> {
    /// Keeps up to `capacity` connections (0: none, every connection goes back to the pool).
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            held: Mutex::new(Held {
                connections: Vec::new(),
                closed: false,
            }),
        })
    }

    /// A kept connection that may be used now: the fence was not raised since it left the
    /// pool. The others are closed, or given back to the pool when kept too long.
    pub fn take(&self, fence: &Fence) -> Option<Kept<DB>> {
        loop {
            let mut kept = self.lock().connections.pop()?;
            if fence.predates(kept.acquired_at.elapsed()) {
                kept.connection.close_on_drop();
                continue;
            }
            if kept.kept_at.elapsed() > KEEP_AT_MOST {
                continue;
            }
            return Some(kept);
        }
    }

    /// Keeps `connection`, whose transaction ended cleanly, unless enough are kept or the
    /// pool may have callers waiting for a connection (then it goes back to the pool, to them).
    pub fn keep(&self, connection: PoolConnection<DB>, acquired_at: Instant, pool: &Pool<DB>) {
        let exhausted = pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections();
        let mut held = self.lock();
        if held.closed || exhausted || held.connections.len() >= self.capacity {
            return;
        }
        held.connections.push(Kept {
            connection,
            acquired_at,
            kept_at: Instant::now(),
        });
    }

    /// Gives every kept connection back to the pool; with `closing`, keeps none from now on
    /// (the pool waits for all its connections when it closes).
    pub fn release_all(&self, closing: bool) {
        let released = {
            let mut held = self.lock();
            held.closed |= closing;
            std::mem::take(&mut held.connections)
        };
        drop(released);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held<DB>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
