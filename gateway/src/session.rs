//! Dedicated database sessions for the session advisory locks (the migration lock and
//! leadership), proven to be real sessions.
//!
//! A session advisory lock belongs to one server session. Behind a transaction pooler
//! (PgBouncer's `pool_mode = transaction`) each transaction of a client connection runs on
//! whichever server session is free, so a lock taken by one statement stays with a server
//! session that other clients go on using: nobody could release it, check it, or lose it
//! with the connection. [`open`] refuses such a connection, naming `AIHUMMER_DATABASE_URL`.
//!
//! The signal, checked against a real PgBouncer in the `gateway_pooling` suite: a direct or
//! session-pooled connection keeps one backend (`pg_backend_pid()`) for life, and two
//! connections open at once never share one. A transaction pooler gives the server session
//! a statement has just freed to the next statement of any client (PgBouncer reuses the
//! most recently freed first), so a second connection asking right after the first is
//! answered by the same backend, or the first one's backend changes.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor, Row};

/// How many times the two connections compare backends.
const ROUNDS: usize = 3;

/// Why no session could be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The database did not answer in time or refused the connection: worth retrying.
    #[error("cannot reach the database: {0}")]
    Unreachable(String),
    /// The connection goes through a transaction pooler, so it has no session of its own.
    #[error(
        "AIHUMMER_DATABASE_URL goes through a transaction pooler ({evidence}): migrations and \
         leader election hold session advisory locks, so AIHUMMER_DATABASE_URL must reach \
         PostgreSQL directly or through a session-pooled PgBouncer database; transaction \
         pooling is for AIHUMMER_DB_APP_URL only"
    )]
    TransactionPooler {
        /// What the backends showed.
        evidence: String,
    },
}

impl SessionError {
    fn unreachable(err: impl std::fmt::Display) -> Self {
        SessionError::Unreachable(err.to_string())
    }
}

/// Opens a connection with `options` within `timeout` and proves it is a session of its own
/// with a second, short-lived connection.
pub async fn open(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, SessionError> {
    let mut conn = connect(options, timeout).await?;
    match prove(&mut conn, options, timeout).await {
        Ok(()) => Ok(conn),
        Err(err) => {
            let _ = tokio::time::timeout(timeout, conn.close()).await;
            Err(err)
        }
    }
}

async fn prove(
    conn: &mut PgConnection,
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<(), SessionError> {
    let mut witness = connect(options, timeout).await?;
    let shared = tokio::time::timeout(timeout, shared_backend(conn, &mut witness)).await;
    let _ = tokio::time::timeout(timeout, witness.close()).await;
    match shared {
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some(evidence))) => Err(SessionError::TransactionPooler { evidence }),
        Ok(Err(err)) => Err(SessionError::unreachable(err)),
        Err(_) => Err(SessionError::unreachable(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

async fn connect(
    options: &PgConnectOptions,
    timeout: Duration,
) -> Result<PgConnection, SessionError> {
    // These sessions wait in advisory-lock queues in rounds of up to `WAIT_ROUND`: a wait
    // is not a slow statement, so sqlx's slow-statement warning (1s by default) would fire
    // for every follower. A statement past `SILENCE_BOUND` is still worth a warning.
    let options = options.clone().log_slow_statements(
        tracing::log::LevelFilter::Warn,
        crate::advisory::SILENCE_BOUND,
    );
    tokio::time::timeout(timeout, options.connect())
        .await
        .map_err(|_| SessionError::unreachable(format!("no answer within {timeout:?}")))?
        .map_err(SessionError::unreachable)
}

/// What shows that `conn` and `witness` share backends, or `None` when they never do.
async fn shared_backend(
    conn: &mut PgConnection,
    witness: &mut PgConnection,
) -> Result<Option<String>, sqlx::Error> {
    let own = backend(conn).await?;
    for _ in 0..ROUNDS {
        let other = backend(witness).await?;
        if other == own {
            return Ok(Some(format!(
                "two connections were both answered by backend pid {own}"
            )));
        }
        let again = backend(conn).await?;
        if again != own {
            return Ok(Some(format!(
                "one connection was answered by backend pid {own}, then by {again}"
            )));
        }
    }
    Ok(None)
}

/// The backend answering this statement. A simple query, not a prepared one: behind a
/// transaction pooler a statement prepared on one backend may be executed on another,
/// which would fail before it showed anything.
async fn backend(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
    conn.fetch_one("SELECT pg_backend_pid()").await?.try_get(0)
}
