//! Leader election across every gateway on one database. The elector publishes whether
//! this gateway leads on a `watch` channel; the scheduler and `/healthz` read it.
//!
//! ```text
//!            ┌──────────── follower ─────────────┐
//!   start ──►│ open a dedicated session,         │
//!            │ wait in pg_advisory_lock's queue  │
//!            │ in rounds of 2s (silent for 4s:   │
//!            │ dead; reconnect after a tick)     │
//!            └───────┬───────────────────────────┘
//!  got lock: publish │            ▲ connection check failed: publish false, step down
//!       true         ▼            │ (dropping the connection ends the session and its lock)
//!            ┌──────────── leader ───────────────┐
//!            │ each tick: check the connection   │
//!            └───────┬───────────────────────────┘
//!               stop │ publish false, then unlock (checked) and close:
//!                    ▼ the next waiter holds the lock at once
//!                  done (the channel closes, so the scheduler ends too)
//! ```
//!
//! A session advisory lock dies with its connection. Locally a killed leader's socket is
//! closed by the kernel and the lock is gone at once; across a network the server only
//! notices a vanished peer through TCP keepalive, so the leader's session sets short
//! server-side keepalives. The leader itself notices a dead connection within one check,
//! and a follower within [`advisory::SILENCE_BOUND`] (its wait is renewed in rounds, and a
//! round with no answer ends it), so once the path is back it queues again on a fresh
//! connection instead of waiting for ever on a dead one. The session must be one of its own:
//! behind a transaction pooler the follower refuses to queue (see [`crate::session`]).
//! Leadership is published `false` before the lock is given up, so this gateway's
//! scheduler stops before another's can start. Scheduled work is fenced in the database as well (see [`crate::scheduler`]), so even
//! two leaders in a partition cannot run one slot twice.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::watch;
use tokio::time::Interval;

use crate::advisory::{self, LockError};
use crate::session::{self, SessionError};

/// Advisory lock key for leadership ("aihmlead" in ASCII).
pub const LOCK_KEY: i64 = 0x6169_686d_6c65_6164;
/// How often the leader checks its connection (and the scheduler looks for due jobs), and
/// how long a follower waits before replacing a failed connection.
pub const TICK: Duration = Duration::from_millis(500);
/// How long a connection check or lock attempt may take before it counts as lost.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a term of leadership ended.
enum TermEnd {
    /// Stop was asked for; the connection still holds the lock.
    Resigned(PgConnection),
    /// The connection failed, and the lock went with it.
    Lost(String),
}

/// Runs the election for this gateway until `stop`.
pub struct Elector {
    options: PgConnectOptions,
    instance: String,
    leadership: watch::Sender<bool>,
}

impl Elector {
    /// An elector connecting with the owner `options` as `instance`, publishing on
    /// `leadership` whether it leads.
    pub fn new(
        options: PgConnectOptions,
        instance: String,
        leadership: watch::Sender<bool>,
    ) -> Self {
        Self {
            options: options.application_name("aihummer-gateway leader"),
            instance,
            leadership,
        }
    }

    /// Follows and leads in turn until `stop` turns true; a leader then resigns at once.
    /// Returning drops the sender, which closes the leadership channel.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            let Some(conn) = self.follow(&mut stop).await else {
                return;
            };
            self.leadership.send_replace(true);
            tracing::info!(instance = %self.instance, "gained leadership");
            let end = lead(conn, &mut stop).await;
            self.leadership.send_replace(false);
            match end {
                TermEnd::Resigned(conn) => {
                    resign(conn).await;
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
            if stopped_at_tick(&mut retry, stop).await {
                return None;
            }
            let Some(mut conn) = connect(&self.options).await else {
                continue;
            };
            // On stop the wait is abandoned by dropping the connection, which leaves the queue.
            let waited = tokio::select! {
                locked = advisory::lock(&mut conn, LOCK_KEY) => Some(locked),
                _ = stop.changed() => None,
            };
            match waited {
                Some(Ok(())) => return Some(conn),
                Some(Err(LockError::Silent(bound))) => tracing::warn!(
                    silent_for = ?bound,
                    "leader election: the database connection stopped answering while \
                     waiting for leadership; reconnecting"
                ),
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "leader election: waiting for the lock failed")
                }
                None => return None,
            }
        }
    }
}

/// Holds the lock: checks the connection each tick until it fails or `stop` turns true.
async fn lead(mut conn: PgConnection, stop: &mut watch::Receiver<bool>) -> TermEnd {
    let mut tick = tokio::time::interval(TICK);
    loop {
        if stopped_at_tick(&mut tick, stop).await {
            return TermEnd::Resigned(conn);
        }
        match tokio::time::timeout(CHECK_TIMEOUT, ping(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return TermEnd::Lost(err.to_string()),
            Err(_) => return TermEnd::Lost(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }
}

/// Waits for the next tick of `interval` or a change of `stop`; whether stop is now true.
async fn stopped_at_tick(interval: &mut Interval, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = interval.tick() => {}
        _ = stop.changed() => {}
    }
    *stop.borrow()
}

/// Unlocks on the session that locked, then ends the session, which releases the lock
/// even if the unlock did not.
async fn resign(mut conn: PgConnection) {
    match tokio::time::timeout(CHECK_TIMEOUT, advisory::unlock(&mut conn, LOCK_KEY)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => tracing::warn!("leadership lock was not held at unlock"),
        Ok(Err(err)) => tracing::warn!(error = %err, "unlocking leadership failed"),
        Err(_) => tracing::warn!("unlocking leadership timed out"),
    }
    let _ = tokio::time::timeout(CHECK_TIMEOUT, conn.close()).await;
}

/// A dedicated session whose server side drops it within ~11s of the peer vanishing.
async fn connect(options: &PgConnectOptions) -> Option<PgConnection> {
    let mut conn = match session::open(options, CHECK_TIMEOUT).await {
        Ok(conn) => conn,
        Err(err @ SessionError::TransactionPooler { .. }) => {
            tracing::error!(error = %err, "leader election: refusing to lead");
            return None;
        }
        Err(err) => {
            tracing::debug!(error = %err, "leader election: cannot connect");
            return None;
        }
    };
    match tokio::time::timeout(CHECK_TIMEOUT, set_keepalives(&mut conn)).await {
        Ok(Ok(_)) => Some(conn),
        _ => None,
    }
}

// The election's SQL, as small verbs kept out of the state machine (the lock's own are in
// `advisory`). (`raw_sql` is avoided: its future is not `Send` for every lifetime, which a
// spawned task requires.)

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
