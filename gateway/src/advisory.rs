//! Session advisory locks, as small verbs for the migration lock and the leader lock.
//!
//! A session lock belongs to the connection that took it: it must be unlocked on that same
//! connection, and ending the session releases it whatever else went wrong, so both users
//! hold theirs on a dedicated connection ([`crate::session`]), never a pooled one.
//!
//! Waiting for a lock is done in bounded rounds: each round waits in the server's queue
//! under a `lock_timeout` and is renewed when it runs out. A connection whose peer vanished
//! without a reset (a dead network path; sqlx cannot set client-side TCP keepalives) would
//! otherwise leave the waiter blocked for ever; with rounds, a round that gets no answer at
//! all shows the connection is dead within [`SILENCE_BOUND`].

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// How long one round waits in the server's queue before it is renewed.
pub const WAIT_ROUND: Duration = Duration::from_secs(2);
/// How long a round may go without any answer before the connection counts as dead: the
/// round itself plus a grace for the server's reply.
pub const SILENCE_BOUND: Duration = Duration::from_secs(4);
/// PostgreSQL's SQLSTATE for a lock wait that ran out (`lock_not_available`).
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Why waiting for a lock ended without it.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The database answered with an error, or the connection broke.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// The connection stopped answering: the peer is gone without telling.
    #[error("the database connection stopped answering (no reply within {0:?})")]
    Silent(Duration),
}

/// Takes `key` if it is free; whether it was.
pub async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    answer(conn, "SELECT pg_try_advisory_lock($1)", key).await
}

/// Waits in the server's queue until `key` is this session's, in rounds of [`WAIT_ROUND`],
/// failing with [`LockError::Silent`] when a round gets no answer within [`SILENCE_BOUND`].
/// After an error the connection is in an unknown state: close or drop it.
pub async fn lock(conn: &mut PgConnection, key: i64) -> Result<(), LockError> {
    loop {
        match tokio::time::timeout(SILENCE_BOUND, wait_round(conn, key)).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => {}
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => return Err(LockError::Silent(SILENCE_BOUND)),
        }
    }
}

/// One round: `true` once `key` is held, `false` when [`WAIT_ROUND`] ran out first. The
/// transaction only scopes `lock_timeout`; a session lock outlives the transaction that
/// took it.
async fn wait_round(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", WAIT_ROUND.as_millis()))
        .execute(&mut *tx)
        .await?;
    let waited = sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut *tx)
        .await;
    match waited {
        Ok(_) => tx.commit().await.map(|()| true),
        Err(err) if is_lock_timeout(&err) => tx.rollback().await.map(|()| false),
        Err(err) => Err(err),
    }
}

fn is_lock_timeout(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == LOCK_NOT_AVAILABLE)
}

/// Releases `key`; `false` when this session did not hold it.
pub async fn unlock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    answer(conn, "SELECT pg_advisory_unlock($1)", key).await
}

async fn answer(conn: &mut PgConnection, sql: &'static str, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(sql).bind(key).fetch_one(conn).await
}
