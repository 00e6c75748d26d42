//! The fleet's tables: the supervisors' own schema, `aihummer_fleet`, beside (and never
//! inside) the gateway's. Created by the first supervisor that needs them, idempotently,
//! under a transaction-scoped advisory lock so that nodes starting together do not race
//! on `CREATE TABLE IF NOT EXISTS` (which is not safe against itself).

use sqlx::PgPool;

/// The advisory lock key serialising the schema's creation ("aihfleet" in ASCII); the
/// gateway's migrations use a key of their own.
const LOCK: i64 = 0x6169_6866_6c65_6574;

const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS aihummer_fleet;
CREATE TABLE IF NOT EXISTS aihummer_fleet.nodes (
    node_id text PRIMARY KEY,
    host text NOT NULL,
    address text NOT NULL,
    version text,
    supervisor_version text NOT NULL,
    state text NOT NULL,
    detail text,
    cohort smallint NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS aihummer_fleet.rollout_lease (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    node_id text NOT NULL,
    version text NOT NULL,
    acquired_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS aihummer_fleet.halted_versions (
    version text PRIMARY KEY,
    node_id text NOT NULL,
    reason text NOT NULL,
    halted_at timestamptz NOT NULL
);
";

/// Creates the schema and its tables unless they exist.
pub async fn ensure(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await?;
    for statement in SCHEMA.split(';').filter(|s| !s.trim().is_empty()) {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await
}
