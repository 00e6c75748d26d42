//! Outbox housekeeping, the leader's periodic job: purge what retention lets go, count the
//! outbox by state, and warn about replies nobody is delivering. The SQL sits here as
//! small verbs, beside the schema it knows; [`sweep`] runs them in order.

use std::fmt;
use std::time::Duration;

use sqlx::PgPool;

use crate::outbox::store::{self, Stats};

/// What one housekeeping pass did and found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sweep {
    /// Delivered replies purged.
    pub purged_replies: u64,
    /// Answered inbound messages purged.
    pub purged_messages: u64,
    /// Pending replies due for over a minute that no deliverer holds.
    pub overdue: i64,
    /// The outbox by state after the purge.
    pub stats: Stats,
}

impl fmt::Display for Sweep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "purged {} replies and {} messages; {} overdue",
            self.purged_replies, self.purged_messages, self.overdue
        )
    }
}

impl Sweep {
    /// Logs the outbox counts, and a warning when replies are overdue.
    pub fn log(&self) {
        tracing::info!(
            pending = self.stats.pending,
            leased = self.stats.leased,
            delivered = self.stats.delivered,
            dead = self.stats.dead,
            purged_replies = self.purged_replies,
            purged_messages = self.purged_messages,
            "outbox"
        );
        if self.overdue > 0 {
            tracing::warn!(
                overdue = self.overdue,
                "replies are overdue: is a deliverer running with AIHUMMER_REPLY_WEBHOOK_URL set?"
            );
        }
    }
}

/// One housekeeping pass on the owner `pool`, keeping rows for `retention`.
pub async fn sweep(pool: &PgPool, retention: Duration) -> Result<Sweep, sqlx::Error> {
    let purged_replies = purge_delivered(pool, retention).await?;
    let purged_messages = purge_answered(pool, retention).await?;
    let overdue = overdue(pool).await?;
    let stats = store::stats(pool).await?;
    Ok(Sweep {
        purged_replies,
        purged_messages,
        overdue,
        stats,
    })
}

/// Deletes replies delivered more than `retention` ago; returns how many.
pub async fn purge_delivered(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM outbox WHERE status = 'delivered'
         AND delivered_at < now() - make_interval(secs => $1)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Deletes inbound messages received more than `retention` ago that no reply refers to any
/// more (their idempotency keys go with them); returns how many.
pub async fn purge_answered(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM inbound_messages i WHERE received_at < now() - make_interval(secs => $1)
         AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.inbound_id = i.id)",
    )
    .bind(retention.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Counts pending replies due for over a minute that no live lease holds.
pub async fn overdue(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE status = 'pending'
         AND next_attempt_at < now() - interval '1 minute'
         AND (lease_expires_at IS NULL OR lease_expires_at < now())",
    )
    .fetch_one(pool)
    .await
}
