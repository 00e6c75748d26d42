//! A few just-used connections kept aside for the inbound hot path, so that they skip the
//! round trip sqlx spends on every connection given back to its pool.
//!
//! sqlx pings each connection when it returns to the pool (a `Sync` and its answer) to
//! flush what a cancelled statement may have left behind. For a statement that completed,
//! that is one more round trip per message, and at queue speed it cost about a fifth of the
//! accepted messages per second. A connection whose statement completed is kept here
//! instead and handed to the next message; anything else (an error, a request cancelled
//! mid-statement) drops it back into the pool, ping and all.
//!
//! At most half the pool is kept here, so the other paths always have the rest, and a
//! connection kept longer than [`PING_IDLE`] goes back through the pool, where it is pinged
//! before its next use (a server restart or a pooler's timeout may have cut it).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

use crate::database::PING_IDLE;

/// A connection kept aside, with when it was kept.
type Kept = (Instant, PoolConnection<Postgres>);

/// Connections kept aside, newest last.
#[derive(Debug, Clone, Default)]
pub struct Warm {
    kept: Arc<Mutex<Stash>>,
}

/// The kept connections. Dropped inside a runtime they go back to their pool; dropped
/// outside one (the runtime already gone) they are closed, as the pool's return needs a
/// runtime to run on.
#[derive(Debug, Default)]
struct Stash(Vec<Kept>);

impl Drop for Stash {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            self.0.drain(..).for_each(|(_, conn)| drop(conn.detach()));
        }
    }
}

impl Warm {
    /// A fresh kept connection, or one from `pool`.
    pub async fn acquire(&self, pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        if let Some(conn) = self.take_fresh(Instant::now()) {
            return Ok(conn);
        }
        pool.acquire().await
    }

    /// Keeps `conn`, whose last statement completed, for the next message; past the cap
    /// (half of `pool`'s size) it goes back to the pool.
    pub fn keep(&self, pool: &PgPool, conn: PoolConnection<Postgres>) {
        let cap = usize::try_from(pool.options().get_max_connections() / 2).unwrap_or(0);
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        if kept.0.len() < cap {
            kept.0.push((Instant::now(), conn));
        }
    }

    /// Gives every kept connection back to the pool: closing a pool waits for all of its
    /// connections to come back.
    pub fn give_back(&self) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.0.clear();
        }
    }

    /// The newest kept connection if it is fresh.
    fn take_fresh(&self, now: Instant) -> Option<PoolConnection<Postgres>> {
        let mut kept = self.kept.lock().ok()?;
        let (at, conn) = kept.0.pop()?;
        if now.duration_since(at) < PING_IDLE {
            return Some(conn);
        }
        // Newest last: once the newest is stale, all are; they go back to the pool, which
        // pings them before their next use.
        kept.0.clear();
        None
    }
}
