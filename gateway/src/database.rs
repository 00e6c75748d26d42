//! The startup sequence against PostgreSQL, in strict order: apply migrations on the owner
//! connection, open the owner pool (and create the default workspace if it is missing),
//! open the app pool and check its roles. A transient
//! failure (database down, connection lost) is retried with backoff while `/readyz` reports
//! the reason; a migration conflict or failure, an owner URL behind a transaction pooler, or
//! an unsafe app login or role, ends startup (exit code 3).
//!
//! The app pool's connections stay in their login role: each serving transaction switches
//! to `aihummer_app` itself ([`crate::tenant`]). So the login must be safe on its own (it
//! answers anything run outside such a transaction), and `aihummer_app` must be safe inside.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use uuid::Uuid;

use crate::config::DbTarget;
use crate::migrate::{self, MigrationError};
use crate::state::{Phase, Pools, Shared};
use crate::tenant::{self, APP_ROLE, AppPool};
use aihummer_common::backoff::Backoff;

/// PostgreSQL's SQLSTATE for a missing privilege, here: the login may not `SET ROLE`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";
const POOL_SIZE: u32 = 16;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled connection idle this long is pinged before it is handed out.
pub(crate) const PING_IDLE: Duration = Duration::from_secs(1);

/// Why startup cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Migrations conflict with the database or failed.
    #[error(transparent)]
    Migration(MigrationError),
    /// The app connection could bypass row-level security, or cannot switch to the app role.
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
    // An unset app URL leaves the field out rather than logging `None`.
    let app_database = app.map(ToString::to_string);
    tracing::info!(database = %owner, app_database = app_database.as_deref(), "starting");
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
    let owner_pool = open(owner.options.clone()).await?;
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
            let pool = AppPool::restricted(open(app.options.clone()).await?);
            check_app_roles(&pool).await?;
            match holds_app_policies(&pool).await? {
                true => AppPool::inherited(pool.pool().clone()),
                false => pool,
            }
        }
        None => {
            tracing::warn!(
                "AIHUMMER_DB_APP_URL is not set: serving on the owner pool, so row-level \
                 security does not separate workspaces"
            );
            AppPool::unrestricted(owner_pool.clone())
        }
    };
    Ok(Pools {
        owner: owner_pool,
        app: app_pool,
    })
}

/// Opens a pool and one connection to prove it works.
async fn open(options: PgConnectOptions) -> Result<PgPool, Failure> {
    let options = options
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
    PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // sqlx pings every connection it hands out by default: a round trip per request,
        // as many as the inbound statement itself. A connection that has just been used is
        // known to be alive; one idle for a while may have been cut (server restart,
        // pooler or firewall timeout), so it is pinged and replaced when dead.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
        .map_err(|err| Failure::Retry(err.to_string()))
}

/// Refuses an app connection that could skip row-level security: a login role or an
/// `aihummer_app` that is a superuser, has `BYPASSRLS` or owns tables (owners have their own
/// policy), or a login that cannot switch to `aihummer_app`.
async fn check_app_roles(app: &AppPool) -> Result<(), Failure> {
    let (login, superuser, bypass, owns): (String, bool, bool, i64) = sqlx::query_as(
        "SELECT r.rolname::text, r.rolsuper, r.rolbypassrls,
                (SELECT count(*) FROM pg_tables t WHERE t.tableowner = r.rolname)
         FROM pg_roles r WHERE r.rolname = session_user",
    )
    .fetch_one(app.pool())
    .await
    .map_err(|err| Failure::Retry(err.to_string()))?;
    refuse_unsafe(&format!("the login role {login}"), superuser, bypass, owns)?;
    // No workspace has the nil id: this transaction sees no tenant rows.
    let mut tx = tenant::begin(app, Uuid::nil()).await.map_err(|err| {
        let refused = err
            .as_database_error()
            .and_then(|db| db.code())
            .is_some_and(|code| code == INSUFFICIENT_PRIVILEGE);
        match refused {
            true => Failure::Fatal(StartupError::UnsafeAppRole(format!(
                "the login role {login} cannot switch to {APP_ROLE} ({err}); grant it with \
                 GRANT {APP_ROLE} TO {login}"
            ))),
            false => Failure::Retry(err.to_string()),
        }
    })?;
    let (superuser, bypass, owns): (bool, bool, i64) = sqlx::query_as(
        "SELECT r.rolsuper, r.rolbypassrls,
                (SELECT count(*) FROM pg_tables t WHERE t.tableowner = r.rolname)
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|err| Failure::Retry(err.to_string()))?;
    let _ = tx.rollback().await;
    refuse_unsafe(&format!("role {APP_ROLE}"), superuser, bypass, owns)
}

/// Whether the app login is held to exactly `aihummer_app`'s row-level security by itself,
/// so a statement may run without switching roles: it has the role's privileges without
/// `SET ROLE` (an `INHERIT` member), and every policy applies to both or to neither (a
/// login that also holds the owner's privileges would get the owner's policy). Superusers,
/// `BYPASSRLS` and table owners were refused before.
async fn holds_app_policies(app: &AppPool) -> Result<bool, Failure> {
    let holds: bool = sqlx::query_scalar(
        "SELECT pg_has_role(session_user, $1, 'USAGE') AND NOT EXISTS (
             SELECT 1 FROM pg_policy p
             WHERE EXISTS (SELECT 1 FROM unnest(p.polroles) AS r (id)
                           WHERE r.id = 0 OR pg_has_role(session_user, r.id, 'USAGE'))
                <> EXISTS (SELECT 1 FROM unnest(p.polroles) AS r (id)
                           WHERE r.id = 0 OR pg_has_role($1, r.id, 'USAGE')))",
    )
    .bind(APP_ROLE)
    .fetch_one(app.pool())
    .await
    .map_err(|err| Failure::Retry(err.to_string()))?;
    match holds {
        true => tracing::info!(
            "the app login inherits {APP_ROLE}: inbound messages are stored in one statement"
        ),
        false => tracing::info!(
            "the app login does not inherit {APP_ROLE} alone: serving transactions switch to it"
        ),
    }
    Ok(holds)
}

fn refuse_unsafe(who: &str, superuser: bool, bypass: bool, owns: i64) -> Result<(), Failure> {
    let why = if superuser {
        format!("{who} is SUPERUSER, which skips row-level security")
    } else if bypass {
        format!("{who} has BYPASSRLS, which skips row-level security")
    } else if owns > 0 {
        format!("{who} owns {owns} tables, and owners have their own policy")
    } else {
        return Ok(());
    };
    Err(Failure::Fatal(StartupError::UnsafeAppRole(why)))
}
