//! The outbox's SQL, as small verbs. Delivery verbs run on the owner pool (delivery is
//! cross-tenant); replies are queued by the inbound statement
//! ([`crate::inbound::store`]), which notifies [`CHANNEL`].
//! Every change a deliverer makes is fenced by its lease owner, so a deliverer whose
//! lease expired and was taken over cannot overwrite the new owner's outcome.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

/// The channel deliverers `LISTEN` on; a committed enqueue wakes them.
pub const CHANNEL: &str = "aihummer_outbox";

/// A reply claimed for delivery.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// The row.
    pub id: Uuid,
    /// Sent as `Idempotency-Key` on every attempt.
    pub idempotency_key: String,
    /// The JSON posted to the webhook.
    pub payload: Value,
    /// Attempts including this one.
    pub attempts: i32,
    /// Its `next_attempt_at` when claimed, microseconds since the Unix epoch.
    pub due_micros: i64,
}

impl Claimed {
    /// Where the row stood in the queue's order.
    pub fn position(&self) -> Position {
        Position {
            due_micros: self.due_micros,
            id: self.id,
        }
    }
}

/// Counts by state, for the logs and `/v1/outbox/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Waiting for delivery (including leased).
    pub pending: i64,
    /// Pending and currently leased by a deliverer.
    pub leased: i64,
    /// Delivered.
    pub delivered: i64,
    /// Dead-lettered.
    pub dead: i64,
}

/// Where in the queue's order, `(next_attempt_at, id)`, a claimed row stood: a claim may
/// go on from the last row of the one before ([`claim`]'s `after`).
/// Ordered as the queue is: by `next_attempt_at`, then by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// `next_attempt_at`, microseconds since the Unix epoch (exact, unlike a float).
    pub due_micros: i64,
    /// The row's id, breaking ties: a burst of replies shares one `next_attempt_at`.
    pub id: Uuid,
}

/// Claims up to `limit` due rows for `owner` for `lease`, counting the attempt now, so a
/// deliverer that dies mid-attempt still used one. With `after`, only rows past that
/// position in the queue's order: the index scan starts there instead of walking, from
/// the head, over rows other deliverers hold and row versions not yet pruned.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    limit: i64,
    lease: Duration,
    after: Option<Position>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    // Two statements rather than one with an optional bound: a generic plan could not
    // start its index scan at a bound that may be absent.
    let claim = |sql| {
        sqlx::query_as(sql)
            .bind(limit)
            .bind(owner)
            .bind(lease.as_secs_f64())
    };
    let query = match after {
        Some(at) => claim(CLAIM_AFTER).bind(at.due_micros).bind(at.id),
        None => claim(CLAIM),
    };
    query.fetch_all(pool).await
}

/// The claim statement: due rows in the queue's order, past the position `bound` adds;
/// `$1` is the limit, `$2` the owner, `$3` the lease in seconds.
///
/// Its commit does not wait for the WAL to reach the disk (`synchronous_commit` off for
/// this transaction, set by the `durability` step the update reads): a claim lost with
/// the server's crash is a lease that never was, and the row is claimed again, with the
/// same key, as after a deliverer's crash. A reply then reaches the receiver sooner by one
/// WAL flush, on every claim.
macro_rules! claim_sql {
    ($bound:literal) => {
        concat!(
            "WITH durability AS MATERIALIZED (
                 SELECT set_config('synchronous_commit', 'off', true)
             ), due AS (
                 SELECT id FROM outbox
                 WHERE status = 'pending' AND next_attempt_at <= now()
                   AND (lease_expires_at IS NULL OR lease_expires_at < now())",
            $bound,
            "
                 ORDER BY next_attempt_at, id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE outbox o
             SET lease_owner = $2,
                 lease_expires_at = now() + make_interval(secs => $3),
                 attempts = o.attempts + 1
             FROM due, durability WHERE o.id = due.id
             RETURNING o.id, o.idempotency_key, o.payload, o.attempts,
                 (extract(epoch FROM o.next_attempt_at) * 1000000)::int8 AS due_micros"
        )
    };
}

/// The claim from the head of the queue.
const CLAIM: &str = claim_sql!("");

/// The claim going on past the position `($4, $5)`.
const CLAIM_AFTER: &str = claim_sql!(
    "
                   AND (next_attempt_at, id)
                       > ('epoch'::timestamptz + $4 * interval '1 microsecond', $5::uuid)"
);

/// An attempt's verdict, as [`complete`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it: done.
    Delivered,
    /// Try again after `delay`; the reason is kept as the row's last error.
    Retry {
        /// How long until the next attempt.
        delay: Duration,
        /// Why this attempt failed.
        reason: String,
    },
    /// Given up, with the reason for the operator.
    Dead(String),
}

/// The outcome of one claimed row's attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The row.
    pub id: Uuid,
    /// What to record.
    pub outcome: Outcome,
}

/// Records `completions` in one statement: delivered rows are marked delivered, retried
/// ones scheduled after their delay, dead ones dead-lettered; each leaves its lease. A row
/// `owner` no longer leases (its lease ran out and another deliverer took it) is left
/// alone. Returns how many rows changed, and for each row marked delivered the seconds
/// from its enqueue to now (the delivery lag).
pub async fn complete(
    pool: &PgPool,
    owner: &str,
    completions: &[Completion],
) -> Result<(u64, Vec<f64>), sqlx::Error> {
    let mut ids = Vec::with_capacity(completions.len());
    let mut kinds = Vec::with_capacity(completions.len());
    let mut delays = Vec::with_capacity(completions.len());
    let mut reasons = Vec::with_capacity(completions.len());
    for completion in completions {
        ids.push(completion.id);
        let (kind, delay, reason) = match &completion.outcome {
            Outcome::Delivered => ("delivered", 0.0, ""),
            Outcome::Retry { delay, reason } => ("pending", delay.as_secs_f64(), reason.as_str()),
            Outcome::Dead(reason) => ("dead", 0.0, reason.as_str()),
        };
        kinds.push(kind);
        delays.push(delay);
        reasons.push(reason);
    }
    let changed: Vec<Option<f64>> = sqlx::query_scalar(
        "UPDATE outbox o
         SET status = c.status,
             delivered_at = CASE WHEN c.status = 'delivered' THEN now() ELSE o.delivered_at END,
             next_attempt_at = CASE WHEN c.status = 'pending'
                 THEN now() + make_interval(secs => c.delay) ELSE o.next_attempt_at END,
             last_error = NULLIF(c.reason, ''),
             lease_owner = NULL, lease_expires_at = NULL
         FROM unnest($1::uuid[], $2::text[], $3::float8[], $4::text[])
             AS c(id, status, delay, reason)
         WHERE o.id = c.id AND o.lease_owner = $5
         RETURNING CASE WHEN o.status = 'delivered'
             THEN extract(epoch FROM o.delivered_at - o.created_at)::float8 END",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&delays)
    .bind(&reasons)
    .bind(owner)
    .fetch_all(pool)
    .await?;
    let rows = u64::try_from(changed.len()).unwrap_or(u64::MAX);
    Ok((rows, changed.into_iter().flatten().collect()))
}

/// Gives back every lease `owner` still holds, without counting the attempt, so another
/// gateway delivers those rows at once instead of after the lease. Returns how many.
pub async fn release(pool: &PgPool, owner: &str) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE outbox SET lease_owner = NULL, lease_expires_at = NULL,
                attempts = greatest(attempts - 1, 0)
         WHERE lease_owner = $1 AND status = 'pending'",
    )
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Counts rows by state.
pub async fn stats(pool: &PgPool) -> Result<Stats, sqlx::Error> {
    let (pending, leased, delivered, dead): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'),
                count(*) FILTER (WHERE status = 'pending' AND lease_expires_at > now()),
                count(*) FILTER (WHERE status = 'delivered'),
                count(*) FILTER (WHERE status = 'dead')
         FROM outbox",
    )
    .fetch_one(pool)
    .await?;
    Ok(Stats {
        pending,
        leased,
        delivered,
        dead,
    })
}

/// Puts dead-lettered rows (all, or the one `id`) back in the queue with a fresh attempt
/// budget and the same idempotency key, and wakes deliverers. Returns how many.
pub async fn requeue(pool: &PgPool, id: Option<Uuid>) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = now(),
                lease_owner = NULL, lease_expires_at = NULL
         WHERE status = 'dead' AND ($1::uuid IS NULL OR id = $1)",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}
