//! The startup sequence against PostgreSQL, in strict order: apply migrations on the owner
//! connection, open the owner pool (and create the default workspace if it is missing),
//! open the app pool and check its role. A transient
//! failure (database down, connection lost) is retried with backoff while `/readyz` reports
//! the reason; a migration conflict or failure, or an unsafe app role, ends startup.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

use crate::config::DbTarget;
use crate::migrate::{self, MigrationError};
use crate::state::{Phase, Pools, Shared};
use aihummer_common::backoff::Backoff;

/// The role the app pool serves as; created by the migrations.
pub const APP_ROLE: &str = "aihummer_app";
const POOL_SIZE: u32 = 16;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why startup cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Migrations conflict with the database or failed.
    #[error(transparent)]
    Migration(MigrationError),
    /// The app connection could bypass row-level security.
    #[error("AIHUMMER_DB_APP_URL is unsafe to serve with: {0}")]
    UnsafeAppRole(String),
}

enum Failure {
    Retry(String),
    Fatal(StartupError),
}

/// Runs startup until it succeeds or fails for good, and returns the serving pools.
pub async fn start(
    owner: &DbTarget,
    app: Option<&DbTarget>,
    workspace: Option<Uuid>,
    shared: &Shared,
) -> Result<Pools, StartupError> {
    tracing::info!(database = %owner, app_database = ?app.map(ToString::to_string), "starting");
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        shared.set_phase(Phase::Connecting);
        match attempt(owner, app, workspace, shared).await {
            Ok(pools) => return Ok(pools),
            Err(Failure::Fatal(err)) => return Err(err),
            Err(Failure::Retry(reason)) => {
                let delay = backoff.next_delay();
                tracing::warn!(%reason, retry_in = ?delay, "database not available");
                shared.set_phase(Phase::DatabaseUnavailable(reason));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn attempt(
    owner: &DbTarget,
    app: Option<&DbTarget>,
    workspace: Option<Uuid>,
    shared: &Shared,
) -> Result<Pools, Failure> {
    migrate::apply(&owner.options, |phase| shared.set_phase(phase))
        .await
        .map_err(|err| match err.is_transient() {
            true => Failure::Retry(err.to_string()),
            false => Failure::Fatal(StartupError::Migration(err)),
        })?;
    let owner_pool = open(owner.options.clone(), false).await?;
    if let Some(workspace) = workspace {
        sqlx::query(
            "INSERT INTO workspaces (id, name) VALUES ($1, 'default') ON CONFLICT DO NOTHING",
        )
        .bind(workspace)
        .execute(&owner_pool)
        .await
        .map_err(|err| Failure::Retry(err.to_string()))?;
    }
    let app_pool = match app {
        Some(app) => {
            let pool = open(app.options.clone(), true).await?;
            check_app_role(&pool).await?;
            pool
        }
        None => {
            tracing::warn!(
                "AIHUMMER_DB_APP_URL is not set: serving on the owner pool, so row-level \
                 security does not separate workspaces"
            );
            owner_pool.clone()
        }
    };
    Ok(Pools {
        owner: owner_pool,
        app: app_pool,
    })
}

/// Opens a pool and one connection to prove it works. App connections switch to
/// `aihummer_app` so they hold exactly its privileges whatever login role was used.
async fn open(options: PgConnectOptions, as_app_role: bool) -> Result<PgPool, Failure> {
    let options = options
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    let mut pool = PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT);
    if as_app_role {
        pool = pool.after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query("SET ROLE aihummer_app").execute(conn).await?;
                Ok(())
            })
        });
    }
    pool.connect_with(options)
        .await
        .map_err(|err| Failure::Retry(err.to_string()))
}

/// Refuses an app role that would skip row-level security.
async fn check_app_role(pool: &PgPool) -> Result<(), Failure> {
    let (bypasses, owns): (bool, i64) = sqlx::query_as(
        "SELECT r.rolsuper OR r.rolbypassrls,
                (SELECT count(*) FROM pg_tables t WHERE t.tableowner = current_user)
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(pool)
    .await
    .map_err(|err| Failure::Retry(err.to_string()))?;
    if bypasses {
        return Err(Failure::Fatal(StartupError::UnsafeAppRole(format!(
            "role {APP_ROLE} is SUPERUSER or BYPASSRLS"
        ))));
    }
    if owns > 0 {
        return Err(Failure::Fatal(StartupError::UnsafeAppRole(format!(
            "role {APP_ROLE} owns {owns} tables, and owners have their own policy"
        ))));
    }
    Ok(())
}
