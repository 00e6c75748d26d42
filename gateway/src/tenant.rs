//! Transactions scoped to one workspace, the only way the app pool touches tenant tables.
//!
//! The tenant is set with `set_config(.., true)`, which lasts until the transaction ends,
//! so a pooled connection never carries one workspace's setting into another's request.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The setting the row-level security policies read.
pub const SETTING: &str = "aihummer.workspace_id";

/// Begins a transaction in which the policies let through only `workspace`'s rows.
pub async fn begin(
    pool: &PgPool,
    workspace: Uuid,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(SETTING)
        .bind(workspace.to_string())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}
