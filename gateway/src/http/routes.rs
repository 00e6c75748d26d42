//! The gateway's two routers, and the small handlers that are not health or inbound.
//!
//! - [`public`]: what clients reach: health, readiness (generic reasons), ping, inbound.
//! - [`private`]: what only the supervisor's probe and an operator reach: health,
//!   readiness with its detail, outbox counts, Prometheus metrics.
//!
//! Both fall back to the same JSON 404/405, so a route that is private answers 404 on the
//! public listener like any unknown path. Every error is an [`ApiError`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::VERSION;
use crate::http::error::ApiError;
use crate::http::health;
use crate::http::inbound::{self, Inbound};
use crate::http::metrics as http_metrics;
use crate::metrics::Metrics;
use crate::state::Shared;

/// The longest artificial delay `/v1/ping?delay_ms=` accepts.
pub const MAX_PING_DELAY: Duration = Duration::from_secs(30);

/// The router of the public listener.
pub fn public(shared: Arc<Shared>, inbound: Arc<Inbound>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz_public))
        .route("/v1/ping", get(ping))
        .with_state(shared)
        .merge(inbound::routes(inbound))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// The router of the private listeners: the supervisor's probe and the operator listener.
pub fn private(shared: Arc<Shared>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz_private))
        .route("/v1/outbox/stats", get(outbox_stats))
        .with_state(shared.clone())
        .merge(http_metrics::route(shared, metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

#[derive(Deserialize)]
struct PingParams {
    delay_ms: Option<u64>,
}

/// A tiny liveness answer. `delay_ms` holds the answer back, so an operator can check that
/// a drain or a handoff lets a slow request finish.
async fn ping(
    State(shared): State<Arc<Shared>>,
    params: Result<Query<PingParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let bad_query = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", message);
    let Query(params) = params.map_err(|err| bad_query(err.body_text()))?;
    if let Some(ms) = params.delay_ms {
        let delay = Duration::from_millis(ms);
        if delay > MAX_PING_DELAY {
            return Err(bad_query(format!(
                "delay_ms may be at most {}",
                MAX_PING_DELAY.as_millis()
            )));
        }
        tokio::time::sleep(delay).await;
    }
    Ok(Json(json!({ "pong": true, "version": VERSION, "pid": shared.pid })).into_response())
}

/// Outbox counts by state, across all workspaces (counts only, no content).
async fn outbox_stats(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let pools = shared
        .pools()
        .ok_or_else(|| ApiError::not_ready(&shared.phase()))?;
    let stats = crate::outbox::store::stats(&pools.owner)
        .await
        .map_err(|err| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_error",
                format!("cannot read the outbox: {err}"),
            )
        })?;
    Ok(Json(stats).into_response())
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
