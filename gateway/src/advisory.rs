//! Session advisory locks, as small verbs for the migration lock and the leader lock.
//!
//! A session lock belongs to the connection that took it: it must be unlocked on that same
//! connection, and ending the session releases it whatever else went wrong, so both users
//! hold theirs on a dedicated connection, never a pooled one.

use sqlx::postgres::PgConnection;

/// Takes `key` if it is free; whether it was.
pub async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    answer(conn, "SELECT pg_try_advisory_lock($1)", key).await
}

/// Waits in the server's queue until `key` is this session's.
pub async fn lock(conn: &mut PgConnection, key: i64) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key)
        .execute(conn)
        .await
        .map(drop)
}

/// Releases `key`; `false` when this session did not hold it.
pub async fn unlock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    answer(conn, "SELECT pg_advisory_unlock($1)", key).await
}

async fn answer(conn: &mut PgConnection, sql: &'static str, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(sql).bind(key).fetch_one(conn).await
}
