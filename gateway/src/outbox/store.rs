//! The outbox's SQL, as small verbs. Delivery verbs run on the owner pool (delivery is
//! cross-tenant); [`enqueue`] runs inside the inbound transaction on the app pool.
//! Every change a deliverer makes is fenced by its lease owner, so a deliverer whose
//! lease expired and was taken over cannot overwrite the new owner's outcome.

use std::time::Duration;

use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
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

/// Queues a reply in the caller's transaction and wakes deliverers when it commits.
pub async fn enqueue(
    tx: &mut Transaction<'static, Postgres>,
    workspace: Uuid,
    inbound_id: Uuid,
    reply_id: Uuid,
    payload: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (id, workspace_id, inbound_id, idempotency_key, payload)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(reply_id)
    .bind(workspace)
    .bind(inbound_id)
    .bind(reply_id.to_string())
    .bind(payload)
    .execute(&mut **tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Claims up to `limit` due rows for `owner` for `lease`, counting the attempt now, so a
/// deliverer that dies mid-attempt still used one.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>, sqlx::Error> {
    sqlx::query_as(
        "WITH due AS (
             SELECT id FROM outbox
             WHERE status = 'pending' AND next_attempt_at <= now()
               AND (lease_expires_at IS NULL OR lease_expires_at < now())
             ORDER BY next_attempt_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         )
         UPDATE outbox o
         SET lease_owner = $2,
             lease_expires_at = now() + make_interval(secs => $3),
             attempts = o.attempts + 1
         FROM due WHERE o.id = due.id
         RETURNING o.id, o.idempotency_key, o.payload, o.attempts",
    )
    .bind(limit)
    .bind(owner)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Marks a claimed row delivered; returns the seconds from its enqueue to now, or `None`
/// when the lease was lost meanwhile and nothing was marked.
pub async fn delivered(pool: &PgPool, owner: &str, id: Uuid) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE outbox SET status = 'delivered', delivered_at = now(), last_error = NULL,
                lease_owner = NULL, lease_expires_at = NULL
         WHERE id = $1 AND lease_owner = $2
         RETURNING extract(epoch FROM delivered_at - created_at)::float8",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(pool)
    .await
}

/// Schedules another attempt of a claimed row after `delay`.
pub async fn retry(
    pool: &PgPool,
    owner: &str,
    id: Uuid,
    delay: Duration,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $3), last_error = $4,
                lease_owner = NULL, lease_expires_at = NULL
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(delay.as_secs_f64())
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Dead-letters a claimed row with the reason.
pub async fn dead(pool: &PgPool, owner: &str, id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox SET status = 'dead', last_error = $3,
                lease_owner = NULL, lease_expires_at = NULL
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(owner)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
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
