//! `GET /metrics` on the private listeners, and the layer that counts every request.
//!
//! The scrape refreshes the gauges read from the process (draining, leader) and, within
//! [`DATABASE_READ_TIMEOUT`], those read from the database (outbox depth, oldest pending
//! reply, schema version). A database that does not answer in time never fails the
//! scrape: `aihummer_gateway_outbox_read_ok` turns 0 and the database gauges keep their
//! last values.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;

use crate::metrics::Metrics;
use crate::outbox::store::{self, Stats};
use crate::state::Shared;

/// How long a scrape waits for the database gauges; Prometheus' own timeout is 10 s by
/// default, and a scrape must answer well inside it.
pub const DATABASE_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Scrape {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

/// The `/metrics` route, for a private router.
pub fn route(shared: Arc<Shared>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { shared, metrics })
}

/// Counts every request `router` answers under `listener` (`public` or `private`).
pub fn counted(router: Router, metrics: Arc<Metrics>, listener: &'static str) -> Router {
    router.layer(middleware::from_fn_with_state(
        (metrics, listener),
        count_request,
    ))
}

async fn count_request(
    State((metrics, listener)): State<(Arc<Metrics>, &'static str)>,
    request: Request,
    next: Next,
) -> Response {
    let route = Metrics::route(request.uri().path());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .latency
        .with_label_values(&[listener, route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[listener, route, response.status().as_str()])
        .inc();
    response
}

async fn scrape(State(scrape): State<Scrape>) -> Response {
    let Scrape { shared, metrics } = scrape;
    metrics.draining.set(i64::from(shared.is_draining()));
    metrics.leader.set(i64::from(shared.is_leader()));
    let read = match shared.pools() {
        Some(pools) => {
            tokio::time::timeout(DATABASE_READ_TIMEOUT, read_database(&pools.owner)).await
        }
        // Health-only, or not ready yet: nothing to read.
        None => Ok(Err(ReadError::NotReady)),
    };
    match read {
        Ok(Ok((stats, gauges))) => {
            metrics.outbox_read_ok.set(1);
            for (state, count) in [
                ("pending", stats.pending),
                ("leased", stats.leased),
                ("delivered", stats.delivered),
                ("dead", stats.dead),
            ] {
                metrics.outbox.with_label_values(&[state]).set(count);
            }
            metrics
                .oldest_pending
                .set(gauges.oldest_pending.unwrap_or(0.0));
            metrics
                .schema_version
                .set(gauges.schema_version.unwrap_or(0));
        }
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "metrics: database gauges not read");
            metrics.outbox_read_ok.set(0);
        }
        Err(_) => {
            tracing::warn!(timeout = ?DATABASE_READ_TIMEOUT, "metrics: the database did not answer in time");
            metrics.outbox_read_ok.set(0);
        }
    }
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {err}"),
        )
            .into_response(),
    }
}

/// The gauges read from the database besides the outbox counts.
#[derive(sqlx::FromRow)]
struct DatabaseGauges {
    oldest_pending: Option<f64>,
    schema_version: Option<i64>,
}

/// Why a scrape has no database gauges.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    /// No database configured, or startup has not opened the pools yet.
    #[error("the database is not ready")]
    NotReady,
    /// A query failed.
    #[error(transparent)]
    Query(#[from] sqlx::Error),
}

async fn read_database(pool: &PgPool) -> Result<(Stats, DatabaseGauges), ReadError> {
    let stats = store::stats(pool).await?;
    let gauges = sqlx::query_as(
        "SELECT (SELECT extract(epoch FROM now() - min(created_at))::float8
                 FROM outbox WHERE status = 'pending') AS oldest_pending,
                (SELECT max(version) FROM _sqlx_migrations WHERE success) AS schema_version",
    )
    .fetch_one(pool)
    .await?;
    Ok((stats, gauges))
}
