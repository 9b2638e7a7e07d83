//! The writers' turn: on a database with one writer at a time (SQLite), write transactions
//! take turns in the order they asked, in the process, before `BEGIN IMMEDIATE`.
//!
//! Without it they met only in SQLite's busy handler, which sleeps and retries and keeps no
//! order: under 64 creates in flight the create lane took the file's write lock again and
//! again while the worker's transaction slept, and copies were recorded seconds late
//! (bench/README.md, "SQLite: a fair turn for the writers"). In turn, a writer waits behind
//! the writers that asked before it, so the worker is behind at most the create batches
//! queued when it asked. The busy handler is left only the writers out of turn: another
//! process on the file, and this one's autocommit statements outside any session.
//!
//! Waiting for the turn is waiting for a write connection: it ends as waiting for a
//! connection ends, at the pool's acquire timeout ([`sqlx::Error::PoolTimedOut`]) or when the
//! pool closes ([`sqlx::Error::PoolClosed`]), so that a shutdown's cut-off ends the writers
//! still queued instead of letting each wait its busy timeout after the one before. Reads never
//! take the turn.

use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::CloseEvent;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The turn, or nothing for a database whose writers wait on row locks (PostgreSQL).
#[derive(Clone, Default)]
pub struct WriteTurn(Option<Arc<Mutex<()>>>);

/// A writer's turn, held until its transaction ended (or its session was dropped).
pub type Turn = OwnedMutexGuard<()>;

impl WriteTurn {
    /// A turn for each writer when `one_writer`, else none.
    pub fn new(one_writer: bool) -> Self {
        Self(one_writer.then(|| Arc::new(Mutex::new(()))))
    }

    /// Waits for this writer's turn (FIFO), at most `timeout` and not past `closed`.
    /// `Ok(None)`: the database needs no turn.
    pub async fn take(
        &self,
        timeout: Duration,
        closed: CloseEvent,
    ) -> Result<Option<Turn>, sqlx::Error> {
        let Some(turn) = &self.0 else {
            return Ok(None);
        };
        // The common case under light load: free, nothing to wait for or set up.
        if let Ok(taken) = Arc::clone(turn).try_lock_owned() {
            return Ok(Some(taken));
        }
        tokio::select! {
            taken = Arc::clone(turn).lock_owned() => Ok(Some(taken)),
            () = tokio::time::sleep(timeout) => Err(sqlx::Error::PoolTimedOut),
            () = closed => Err(sqlx::Error::PoolClosed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_pool() -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect_lazy("sqlite::memory:").expect("a lazy pool")
    }

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn writers_take_turns_in_the_order_they_asked() {
        let pool = a_pool();
        let turn = WriteTurn::new(true);
        let first = turn.take(LONG, pool.close_event()).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for writer in 0..8 {
            let (turn, order, closed) = (turn.clone(), Arc::clone(&order), pool.close_event());
            writers.push(tokio::spawn(async move {
                let held = turn.take(LONG, closed).await.unwrap();
                order.lock().unwrap().push(writer);
                drop(held);
            }));
            // One thread: the writer runs until it waits for the turn, before the next spawns.
            tokio::task::yield_now().await;
        }
        drop(first);
        for writer in writers {
            writer.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn waiting_for_the_turn_ends_as_waiting_for_a_connection_does() {
        let pool = a_pool();
        let turn = WriteTurn::new(true);
        let _held = turn.take(LONG, pool.close_event()).await.unwrap();

        let timed_out = turn
            .take(Duration::from_millis(10), pool.close_event())
            .await;
        assert!(
            matches!(timed_out, Err(sqlx::Error::PoolTimedOut)),
            "{timed_out:?}"
        );

        let waiting = tokio::spawn({
            let (turn, closed) = (turn.clone(), pool.close_event());
            async move { turn.take(LONG, closed).await }
        });
        tokio::task::yield_now().await;
        pool.close().await;
        let closed = waiting.await.unwrap();
        assert!(matches!(closed, Err(sqlx::Error::PoolClosed)), "{closed:?}");
    }

    #[tokio::test]
    async fn a_database_of_many_writers_has_no_turn() {
        let pool = a_pool();
        let turn = WriteTurn::new(false);
        let first = turn.take(LONG, pool.close_event()).await.unwrap();
        let second = turn.take(LONG, pool.close_event()).await.unwrap();
        assert!(first.is_none() && second.is_none());
    }
}
