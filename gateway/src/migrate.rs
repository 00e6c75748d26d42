//! The embedded migrations (`migrations/NNNN_name.sql`), applied under an advisory lock.
//!
//! Many gateways may start at once against one database: exactly one applies, the others
//! wait on the lock and then find nothing left to do. The lock is taken on a dedicated
//! connection that is closed afterwards, on success and on every error path, so a failed
//! migration can never leave the lock held on a pooled connection (a known sqlx pitfall).
//! That connection must be a session of its own: behind a transaction pooler the gateway
//! refuses to start ([`crate::session`]), and a wait for the lock on a connection that went
//! silent ends within [`advisory::SILENCE_BOUND`] and is retried.
//!
//! Forward-safe: migrations the database has but this binary does not know (a newer
//! gateway applied them during a rolling upgrade) are ignored. A migration whose contents
//! differ from what was applied is a conflict, and the gateway refuses to start.

use std::time::Duration;

use sqlx::Connection;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::advisory::{self, LockError};
use crate::session::{self, SessionError};
use crate::state::Phase;

/// Advisory lock key for migrations ("aihmmigr" in ASCII). Advisory locks are scoped to
/// one database, so gateways of different databases never wait on each other.
pub const LOCK_KEY: i64 = 0x6169_686d_6d69_6772;
/// How long opening the dedicated connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database did not answer or the connection broke: worth retrying.
    #[error("cannot reach the database: {0}")]
    Unreachable(String),
    /// An applied migration differs from the one embedded in this binary.
    #[error(
        "migration {0} was applied with different contents than this binary embeds (checksum mismatch); refusing to start"
    )]
    Conflict(i64),
    /// A migration is recorded as started but not finished.
    #[error("migration {0} is recorded as partially applied; repair the database, then restart")]
    Dirty(i64),
    /// A migration's SQL failed; its transaction was rolled back.
    #[error("migration {version} failed and was rolled back: {reason}")]
    Failed {
        /// The migration's version number.
        version: i64,
        /// The database's error.
        reason: String,
    },
    /// `AIHUMMER_DATABASE_URL` is no session of its own, so the lock would mean nothing.
    #[error(transparent)]
    NoSession(SessionError),
    /// Anything else the migrator refused.
    #[error("migrations could not run: {0}")]
    Other(String),
}

impl MigrationError {
    /// Whether a later attempt may succeed without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, MigrationError::Unreachable(_))
    }
}

impl From<MigrateError> for MigrationError {
    fn from(err: MigrateError) -> Self {
        match err {
            MigrateError::VersionMismatch(version) => MigrationError::Conflict(version),
            MigrateError::Dirty(version) => MigrationError::Dirty(version),
            MigrateError::ExecuteMigration(err, _) | MigrateError::Execute(err)
                if is_connection_error(&err) =>
            {
                MigrationError::Unreachable(err.to_string())
            }
            MigrateError::ExecuteMigration(err, version) => MigrationError::Failed {
                version,
                reason: err.to_string(),
            },
            other => MigrationError::Other(other.to_string()),
        }
    }
}

/// Whether an error says the connection, not the SQL, is at fault.
pub fn is_connection_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exceptions; 57P0x: the server is shutting down or starting.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

fn sql_error(err: sqlx::Error) -> MigrationError {
    if is_connection_error(&err) {
        MigrationError::Unreachable(err.to_string())
    } else {
        MigrationError::Other(err.to_string())
    }
}

/// The migrations embedded in this binary, set up for use under this module's own lock.
pub fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("../migrations");
    migrator.set_ignore_missing(true);
    migrator.set_locking(false);
    migrator
}

/// Applies pending migrations on a dedicated connection, reporting the phase as it goes.
pub async fn apply(
    options: &PgConnectOptions,
    report: impl Fn(Phase),
) -> Result<(), MigrationError> {
    // The migrator's `CREATE TABLE IF NOT EXISTS _sqlx_migrations` draws a NOTICE on every
    // start after the first ("already exists, skipping"), which sqlx logs at INFO: noise.
    // Warnings and errors still come through.
    let options = options
        .clone()
        .options([("client_min_messages", "warning")]);
    let mut conn = session::open(&options, CONNECT_TIMEOUT)
        .await
        .map_err(|err| match err {
            SessionError::Unreachable(why) => MigrationError::Unreachable(why),
            pooled @ SessionError::TransactionPooler { .. } => MigrationError::NoSession(pooled),
        })?;
    let result = apply_locked(&mut conn, &report).await;
    // The advisory lock is a session lock: ending the session releases it on every path,
    // including a failed migration whose error skipped the unlock. A connection that went
    // silent is dropped instead once the close times out.
    match tokio::time::timeout(CONNECT_TIMEOUT, conn.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(error = %err, "closing the migration connection failed"),
        Err(_) => tracing::debug!("closing the migration connection timed out"),
    }
    result
}

async fn apply_locked(
    conn: &mut PgConnection,
    report: &impl Fn(Phase),
) -> Result<(), MigrationError> {
    let locked = advisory::try_lock(conn, LOCK_KEY)
        .await
        .map_err(sql_error)?;
    if !locked {
        report(Phase::WaitingForMigrationLock);
        advisory::lock(conn, LOCK_KEY)
            .await
            .map_err(|err| match err {
                LockError::Sql(err) => sql_error(err),
                silent @ LockError::Silent(_) => {
                    MigrationError::Unreachable(format!("waiting for the migration lock: {silent}"))
                }
            })?;
    }
    report(Phase::Migrating);
    let migrator = migrator();
    migrator.run(&mut *conn).await?;
    let released = advisory::unlock(conn, LOCK_KEY).await.map_err(sql_error)?;
    if !released {
        tracing::warn!("the migration lock was not held at unlock; the session ends anyway");
    }
    let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    tracing::info!(latest, "migrations up to date");
    Ok(())
}
