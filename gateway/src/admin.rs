//! Operator commands that work on the database directly, without a running gateway:
//! `aihummer-gateway outbox stats` and `aihummer-gateway outbox requeue [--id ID]`.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::config::Config;
use crate::outbox::store::{self, Stats};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// There is no database to work on.
    #[error("AIHUMMER_DATABASE_URL is not set")]
    NoDatabase,
    /// The database refused or did not answer.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

async fn owner_pool(config: &Config) -> Result<PgPool, AdminError> {
    let target = config.database.as_ref().ok_or(AdminError::NoDatabase)?;
    Ok(PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(target.options.clone())
        .await?)
}

/// Outbox counts by state.
pub async fn outbox_stats(config: &Config) -> Result<Stats, AdminError> {
    let pool = owner_pool(config).await?;
    let stats = store::stats(&pool).await?;
    pool.close().await;
    Ok(stats)
}

/// Requeues dead-lettered replies (all, or one); returns how many.
pub async fn outbox_requeue(config: &Config, id: Option<Uuid>) -> Result<u64, AdminError> {
    let pool = owner_pool(config).await?;
    let requeued = store::requeue(&pool, id).await?;
    pool.close().await;
    Ok(requeued)
}
