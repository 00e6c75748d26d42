//! The app pool and its transactions, the only way serving touches tenant tables.
//!
//! Each transaction switches to `aihummer_app` with `SET LOCAL ROLE`, sent with its
//! `BEGIN` in one round trip, and sets the tenant with `set_config(.., true)`; both last
//! until the transaction ends. A hot path may set the tenant inside its own statement
//! ([`begin_as_app`]) to save the round trip [`begin`] spends on it, and, when the pool
//! needs no role switch ([`AppPool::single_statement`]), run that statement alone, as its
//! own implicit transaction: no `BEGIN`, no `COMMIT`. Nothing is set per session, so a
//! pooled connection carries neither role nor workspace from one request to the next,
//! also behind a transaction pooler (PgBouncer's `pool_mode = transaction`), which hands
//! each transaction whatever server session is free; a statement run alone is one such
//! transaction, its tenant setting ending with it.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::warm::Warm;

/// The setting the row-level security policies read.
pub const SETTING: &str = "aihummer.workspace_id";
/// The role serving transactions switch to; created by the migrations.
pub const APP_ROLE: &str = "aihummer_app";

/// The pool requests are served on, and how its statements come under `aihummer_app`'s
/// policies.
#[derive(Debug, Clone)]
pub struct AppPool {
    pool: PgPool,
    access: Access,
    warm: Warm,
}

/// How a serving statement on an [`AppPool`] is held to row-level security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The owner pool: the owner's own policy lets every row through.
    Owner,
    /// The login must switch to [`APP_ROLE`] in each transaction.
    SwitchRole,
    /// The login holds [`APP_ROLE`]'s privileges and exactly its policies by itself (an
    /// `INHERIT` member, checked at startup); transactions still switch, for their later
    /// statements, but a statement may also run alone.
    Inherited,
}

impl AppPool {
    /// A pool whose transactions run as [`APP_ROLE`] (`AIHUMMER_DB_APP_URL`'s login must be
    /// a member of it).
    pub fn restricted(pool: PgPool) -> Self {
        Self {
            pool,
            access: Access::SwitchRole,
            warm: Warm::default(),
        }
    }

    /// A pool like [`AppPool::restricted`] whose login is held to exactly [`APP_ROLE`]'s
    /// policies and privileges by itself, with no switch; the caller has checked that.
    pub fn inherited(pool: PgPool) -> Self {
        Self {
            pool,
            access: Access::Inherited,
            warm: Warm::default(),
        }
    }

    /// A pool whose transactions keep the login's own role: the owner pool serving when
    /// `AIHUMMER_DB_APP_URL` is not set.
    pub fn unrestricted(pool: PgPool) -> Self {
        Self {
            pool,
            access: Access::Owner,
            warm: Warm::default(),
        }
    }

    /// Whether a statement that sets the tenant itself (see [`begin_as_app`]) may run alone
    /// on [`AppPool::pool`], outside any transaction block: true unless only a role switch
    /// brings the login under the policies.
    pub fn single_statement(&self) -> bool {
        self.access != Access::SwitchRole
    }

    /// Just-used connections for a statement run alone on the hot path.
    pub fn warm(&self) -> &Warm {
        &self.warm
    }

    /// Closes the pool, once the connections kept aside are back in it.
    pub async fn close(&self) {
        self.warm.give_back();
        self.pool.close().await;
    }

    /// The underlying pool.
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
    let mut tx = begin_as_app(app).await?;
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(SETTING)
        .bind(workspace.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Begins a transaction on `app` as [`APP_ROLE`] (when the pool is restricted) with no
/// tenant set yet, so the policies let nothing through until the caller's first statement
/// sets [`SETTING`] with `set_config(.., true)`. The role cannot be set inside that
/// statement: PostgreSQL applies a statement's policies and privileges for the role in
/// force when it is planned, before any `set_config('role', ..)` in it runs.
pub async fn begin_as_app(app: &AppPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    if app.access != Access::Owner {
        // One simple query, one round trip; a constant, as `SET` takes no parameters.
        app.pool
            .begin_with("BEGIN; SET LOCAL ROLE aihummer_app")
            .await
    } else {
        app.pool.begin().await
    }
}
