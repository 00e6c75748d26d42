//! The app pool and its transactions, the only way serving touches tenant tables.
//!
//! Each transaction switches to `aihummer_app` with `SET LOCAL ROLE` and sets the tenant
//! with `set_config(.., true)`; both last until the transaction ends. Nothing is set per
//! session, so a pooled connection carries neither role nor workspace from one request to
//! the next, also behind a transaction pooler (PgBouncer's `pool_mode = transaction`),
//! which hands each transaction whatever server session is free.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The setting the row-level security policies read.
pub const SETTING: &str = "aihummer.workspace_id";
/// The role serving transactions switch to; created by the migrations.
pub const APP_ROLE: &str = "aihummer_app";

/// The pool requests are served on, and whether its transactions switch to [`APP_ROLE`].
#[derive(Debug, Clone)]
pub struct AppPool {
    pool: PgPool,
    restricted: bool,
}

impl AppPool {
    /// A pool whose transactions run as [`APP_ROLE`] (`AIHUMMER_DB_APP_URL`'s login must be
    /// a member of it).
    pub fn restricted(pool: PgPool) -> Self {
        Self {
            pool,
            restricted: true,
        }
    }

    /// A pool whose transactions keep the login's own role: the owner pool serving when
    /// `AIHUMMER_DB_APP_URL` is not set.
    pub fn unrestricted(pool: PgPool) -> Self {
        Self {
            pool,
            restricted: false,
        }
    }

    /// The underlying pool, for checks and for closing it.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Begins a transaction on `app` in which the policies let through only `workspace`'s
/// rows.
pub async fn begin(
    app: &AppPool,
    workspace: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = app.pool.begin().await?;
    if app.restricted {
        // A constant: `SET` takes no parameters.
        sqlx::query("SET LOCAL ROLE aihummer_app")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(SETTING)
        .bind(workspace.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}
