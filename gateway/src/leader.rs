//! Leader election across every gateway on one database, and the scheduler it drives.
//!
//! ```text
//!            ┌──────────── follower ─────────────┐
//!   start ──►│ connect a dedicated connection,   │
//!            │ wait in pg_advisory_lock's queue  │
//!            │ (reconnect after a tick on error) │
//!            └───────┬───────────────────────────┘
//!           got lock │            ▲ connection check failed: step down at once
//!                    ▼            │ (dropping the connection ends the session and its lock)
//!            ┌──────────── leader ───────────────┐
//!            │ each tick: check the connection,  │
//!            │ then run the jobs that are due    │
//!            └───────┬───────────────────────────┘
//!               stop │ unlock (checked), close: the next waiter holds the lock at once
//!                    ▼
//!                  done
//! ```
//!
//! A session advisory lock dies with its connection. Locally a killed leader's socket is
//! closed by the kernel and the lock is gone at once; across a network the server only
//! notices a vanished peer through TCP keepalive, so the leader's session sets short
//! server-side keepalives. The leader itself notices a dead connection within one check.
//! Scheduled work is fenced in the database as well (see [`crate::scheduler`]), so even
//! two leaders in a partition cannot run one slot twice.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;

use crate::scheduler::Scheduler;
use crate::state::Shared;

/// Advisory lock key for leadership ("aihmlead" in ASCII).
pub const LOCK_KEY: i64 = 0x6169_686d_6c65_6164;
/// How often the leader checks its connection, and how long a follower waits before
/// replacing a failed connection.
pub const TICK: Duration = Duration::from_millis(500);
/// How long a connection check or lock attempt may take before it counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a term of leadership ended.
enum TermEnd {
    Resigned,
    Lost(String),
}

/// Runs the election for this gateway until `stop`.
pub struct Elector {
    options: PgConnectOptions,
    shared: Arc<Shared>,
    scheduler: Scheduler,
}

impl Elector {
    /// An elector connecting with the owner `options`, reporting into `shared`.
    pub fn new(options: PgConnectOptions, shared: Arc<Shared>, scheduler: Scheduler) -> Self {
        Self {
            options: options.application_name("aihummer-gateway leader"),
            shared,
            scheduler,
        }
    }

    /// Follows and leads in turn until `stop` turns true; a leader then resigns at once.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let Some(conn) = self.follow(&mut stop).await else {
                return;
            };
            self.shared.set_leader(true);
            tracing::info!(instance = %self.shared.instance, "gained leadership");
            let end = self.lead(conn, &mut stop).await;
            self.shared.set_leader(false);
            match end {
                TermEnd::Resigned => {
                    tracing::info!("resigned leadership");
                    return;
                }
                TermEnd::Lost(why) => {
                    tracing::warn!(reason = %why, "lost leadership; stepping down")
                }
            }
        }
    }

    /// Waits in the server's queue for the lock on a dedicated connection, so it is ours
    /// the moment the leader's session releases it; returns that connection, or `None` on
    /// stop. A failed connection is replaced after a tick.
    async fn follow(&self, stop: &mut watch::Receiver<bool>) -> Option<PgConnection> {
        let mut retry = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = retry.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return None;
            }
            let Some(mut conn) = connect(&self.options).await else {
                continue;
            };
            // On stop the wait is abandoned by dropping the connection, which leaves the queue.
            let waited = tokio::select! {
                locked = lock(&mut conn) => Some(locked),
                _ = stop.changed() => None,
            };
            match waited {
                Some(Ok(())) => return Some(conn),
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "leader election: waiting for the lock failed")
                }
                None => return None,
            }
        }
    }

    /// Holds the lock: checks the connection and runs due jobs each tick.
    async fn lead(&mut self, mut conn: PgConnection, stop: &mut watch::Receiver<bool>) -> TermEnd {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                resign(conn).await;
                return TermEnd::Resigned;
            }
            match tokio::time::timeout(CHECK_TIMEOUT, ping(&mut conn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return TermEnd::Lost(err.to_string()),
                Err(_) => return TermEnd::Lost(format!("no answer within {CHECK_TIMEOUT:?}")),
            }
            self.scheduler.run_due(SystemTime::now()).await;
        }
    }
}

/// Unlocks on the session that locked, then ends the session, which releases the lock
/// even if the unlock did not.
async fn resign(mut conn: PgConnection) {
    match tokio::time::timeout(CHECK_TIMEOUT, unlock(&mut conn)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::warn!("leadership lock was not held at unlock"),
        Ok(Err(err)) => tracing::warn!(error = %err, "unlocking leadership failed"),
        Err(_) => tracing::warn!("unlocking leadership timed out"),
    }
    let _ = tokio::time::timeout(CHECK_TIMEOUT, conn.close()).await;
}

/// A dedicated connection whose server side drops it within ~11s of the peer vanishing.
async fn connect(options: &PgConnectOptions) -> Option<PgConnection> {
    let connected = tokio::time::timeout(CHECK_TIMEOUT, options.connect()).await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "leader election: cannot connect");
            return None;
        }
        Err(_) => return None,
    };
    match tokio::time::timeout(CHECK_TIMEOUT, set_keepalives(&mut conn)).await {
        Ok(Ok(_)) => Some(conn),
        _ => None,
    }
}

// The election's SQL, as small verbs kept out of the state machine. (`raw_sql` is avoided:
// its future is not `Send` for every lifetime, which a spawned task requires.)

async fn lock(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(conn)
        .await
        .map(drop)
}

async fn unlock(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .fetch_one(conn)
        .await
}

async fn ping(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(conn).await.map(drop)
}

async fn set_keepalives(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config('tcp_keepalives_idle', '5', false),
                set_config('tcp_keepalives_interval', '2', false),
                set_config('tcp_keepalives_count', '3', false)",
    )
    .execute(conn)
    .await
    .map(drop)
}
