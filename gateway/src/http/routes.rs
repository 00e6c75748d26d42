//! The gateway's router: health, readiness, ping and outbox counts, the inbound route
//! merged in, and fallbacks. Every error is an [`ApiError`].

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
use crate::http::inbound::{self, Inbound};
use crate::state::{Phase, Shared};

/// The longest artificial delay `/v1/ping?delay_ms=` accepts.
pub const MAX_PING_DELAY: Duration = Duration::from_secs(30);
/// How long `/readyz` waits on the database before calling it unreachable.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The router, served on the public and the probe listener alike.
pub fn router(shared: Arc<Shared>, inbound: Arc<Inbound>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/ping", get(ping))
        .route("/v1/outbox/stats", get(outbox_stats))
        .with_state(shared)
        .merge(inbound::routes(inbound))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({
        "status": "ok",
        "version": VERSION,
        "pid": shared.pid,
        "mode": if shared.full_mode { "full" } else { "health-only" },
        "phase": shared.phase().name(),
        "leader": shared.is_leader(),
        "draining": shared.is_draining(),
    }))
    .into_response()
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match readiness(&shared).await {
        Ok(()) => {
            Json(json!({ "ready": true, "version": VERSION, "pid": shared.pid })).into_response()
        }
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "ready": false,
                "reason": reason,
                "version": VERSION,
                "pid": shared.pid,
            })),
        )
            .into_response(),
    }
}

/// Ready means: not draining, startup finished, and both pools answer right now.
async fn readiness(shared: &Shared) -> Result<(), String> {
    if shared.is_draining() {
        return Err("draining".into());
    }
    let phase = shared.phase();
    let Some(pools) = shared.pools().filter(|_| phase == Phase::Ready) else {
        return Err(phase.reason());
    };
    for pool in [&pools.owner, pools.app.pool()] {
        let check = sqlx::query("SELECT 1").execute(pool);
        match tokio::time::timeout(DB_CHECK_TIMEOUT, check).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(format!("database unreachable: {err}")),
            Err(_) => return Err("database unreachable: no answer within 2s".into()),
        }
    }
    Ok(())
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
