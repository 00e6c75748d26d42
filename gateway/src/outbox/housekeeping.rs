//! Outbox housekeeping, the leader's periodic job: purge what retention lets go, count the
//! outbox by state, and warn about replies nobody is delivering. The SQL sits here as
//! small verbs, beside the schema it knows; [`sweep`] runs them in order.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

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

/// How many rows one purge statement deletes at most: each statement is a short
/// transaction holding few row locks and writing a bounded slice of WAL, however much
/// retention lets go at once.
pub const PURGE_BATCH: i64 = 1_000;
/// How long one pass may spend purging; what is left waits for the next pass.
pub const PURGE_BUDGET: Duration = Duration::from_secs(30);

/// What one purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Rows deleted.
    pub rows: u64,
    /// Statements (transactions) it took.
    pub statements: u32,
    /// Whether it went through the whole table; `false` when the budget ran out first.
    pub complete: bool,
}

/// One housekeeping pass on the owner `pool`, keeping rows for `retention`.
pub async fn sweep(pool: &PgPool, retention: Duration) -> Result<Sweep, sqlx::Error> {
    let deadline = Instant::now() + PURGE_BUDGET;
    let replies = purge_delivered(pool, retention, PURGE_BATCH, deadline).await?;
    let messages = purge_answered(pool, retention, PURGE_BATCH, deadline).await?;
    let overdue = overdue(pool).await?;
    let stats = store::stats(pool).await?;
    Ok(Sweep {
        purged_replies: replies.rows,
        purged_messages: messages.rows,
        overdue,
        stats,
    })
}

/// Deletes replies delivered more than `retention` ago, `batch` per statement, until none
/// is left or `deadline` has passed.
pub async fn purge_delivered(
    pool: &PgPool,
    retention: Duration,
    batch: i64,
    deadline: Instant,
) -> Result<Purged, sqlx::Error> {
    let due = "t.status = 'delivered' AND t.delivered_at < now() - make_interval(secs => $1)";
    purge(pool, "outbox", due, "", retention, batch, deadline).await
}

/// Deletes inbound messages received more than `retention` ago that no reply refers to any
/// more (their idempotency keys go with them), `batch` per statement, until none is left or
/// `deadline` has passed.
pub async fn purge_answered(
    pool: &PgPool,
    retention: Duration,
    batch: i64,
    deadline: Instant,
) -> Result<Purged, sqlx::Error> {
    let due = "t.received_at < now() - make_interval(secs => $1)";
    let unreferenced = "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.inbound_id = t.id)";
    purge(
        pool,
        "inbound_messages",
        due,
        unreferenced,
        retention,
        batch,
        deadline,
    )
    .await
}

/// Deletes the rows of `table` (aliased `t`) that are `due` (a condition reading the
/// retention in seconds as `$1`) and meet `also`, in statements of at most `batch` rows.
///
/// Each statement picks the next `batch` due rows in physical order after the last row
/// position (`ctid`) the previous one picked, which PostgreSQL reads as a range scan, so a
/// purge reads its table once instead of walking again past the rows earlier statements
/// deleted (they stay in the pages until vacuumed). It deletes the picked rows by their
/// position, checking both conditions again, so a row that changed since it was picked is
/// left alone. `also` is checked only there, row by row, so it cannot turn the pick into a
/// join that reads the rows in another order.
async fn purge(
    pool: &PgPool,
    table: &str,
    due: &str,
    also: &str,
    retention: Duration,
    batch: i64,
    deadline: Instant,
) -> Result<Purged, sqlx::Error> {
    let sql = format!(
        "WITH picked AS (
             SELECT t.ctid FROM {table} t WHERE t.ctid > $2::text::tid AND {due} LIMIT $3
         ), gone AS (
             DELETE FROM {table} t
             WHERE t.ctid = ANY (ARRAY(SELECT ctid FROM picked)) AND {due} {also}
             RETURNING 1
         )
         SELECT (SELECT count(*) FROM gone),
                (SELECT count(*) FROM picked),
                (SELECT max(ctid)::text FROM picked)"
    );
    let mut purged = Purged::default();
    let mut after = String::from("(0,0)");
    loop {
        let (deleted, picked, last): (i64, i64, Option<String>) = sqlx::query_as(&sql)
            .bind(retention.as_secs_f64())
            .bind(&after)
            .bind(batch)
            .fetch_one(pool)
            .await?;
        purged.rows += u64::try_from(deleted).unwrap_or_default();
        purged.statements += 1;
        match last {
            Some(last) if picked >= batch => after = last,
            _ => {
                purged.complete = true;
                return Ok(purged);
            }
        }
        if Instant::now() >= deadline {
            return Ok(purged);
        }
    }
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
