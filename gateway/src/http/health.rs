//! `/healthz` and `/readyz`, and what each audience may learn from them.
//!
//! Readiness is judged once ([`readiness`]) and told two ways: the public listener gives a
//! generic reason (`database unavailable`), because raw database errors name hosts, roles
//! and databases; the private listeners (the supervisor's probe, the operator listener)
//! give the detail, which the supervisor shows in `status`. The detail also reaches the
//! log, at WARN, once each time it changes.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::VERSION;
use crate::state::{Phase, Shared};

/// How long `/readyz` waits on the database before calling it unreachable.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the gateway is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// A drain has started.
    Draining,
    /// Taken out of rotation before a stop; still serving.
    Withdrawn,
    /// Startup is not finished; the phase says where it is.
    Starting(Phase),
    /// Started, but a pool does not answer now; the database's own words.
    Unreachable(String),
}

impl NotReady {
    /// The reason with its detail, for the private listeners.
    pub fn detailed(&self) -> String {
        match self {
            NotReady::Draining => "draining".into(),
            NotReady::Withdrawn => "shutting down".into(),
            NotReady::Starting(phase) => phase.reason(),
            NotReady::Unreachable(detail) => format!("database unreachable: {detail}"),
        }
    }

    /// The reason without database error text, for the public listener.
    pub fn public(&self) -> String {
        match self {
            NotReady::Draining => "draining".into(),
            NotReady::Withdrawn => "shutting down".into(),
            NotReady::Starting(phase) => phase.public_reason(),
            NotReady::Unreachable(_) => Phase::UNAVAILABLE.into(),
        }
    }
}

/// Liveness: 200 whenever the process runs.
pub async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
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

/// `/readyz` on the public listener: generic reasons.
pub async fn readyz_public(State(shared): State<Arc<Shared>>) -> Response {
    answer(&shared, readiness(&shared).await.map_err(|n| n.public()))
}

/// `/readyz` on a private listener: reasons with their detail. A 200 here is what lets a
/// supervised gateway take client traffic (see [`crate::app::run`]).
pub async fn readyz_private(State(shared): State<Arc<Shared>>) -> Response {
    let readiness = readiness(&shared).await;
    if readiness.is_ok() {
        shared.note_ready_answered();
    }
    answer(&shared, readiness.map_err(|n| n.detailed()))
}

fn answer(shared: &Shared, readiness: Result<(), String>) -> Response {
    match readiness {
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

/// Ready means: not draining nor withdrawn, startup finished, and both pools answer now.
pub async fn readiness(shared: &Shared) -> Result<(), NotReady> {
    if shared.is_draining() {
        return Err(NotReady::Draining);
    }
    if shared.is_withdrawn() {
        return Err(NotReady::Withdrawn);
    }
    let phase = shared.phase();
    let Some(pools) = shared.pools().filter(|_| phase == Phase::Ready) else {
        return Err(NotReady::Starting(phase));
    };
    for pool in [&pools.owner, pools.app.pool()] {
        let check = sqlx::query("SELECT 1").execute(pool);
        let problem = match tokio::time::timeout(DB_CHECK_TIMEOUT, check).await {
            Ok(Ok(_)) => continue,
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {}s", DB_CHECK_TIMEOUT.as_secs()),
        };
        shared.note_database_problem(Some(&problem));
        return Err(NotReady::Unreachable(problem));
    }
    shared.note_database_problem(None);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_reason_never_carries_database_error_text() {
        let secret = "connection to 10.0.0.7 as role owner refused";
        for reason in [
            NotReady::Unreachable(secret.into()),
            NotReady::Starting(Phase::DatabaseUnavailable(secret.into())),
        ] {
            assert_eq!(reason.public(), "database unavailable");
            assert!(reason.detailed().contains(secret), "{reason:?}");
        }
        for phase in [Phase::HealthOnly, Phase::WaitingForMigrationLock] {
            let reason = NotReady::Starting(phase.clone());
            assert_eq!(reason.public(), phase.reason());
        }
        assert_eq!(NotReady::Draining.public(), "draining");
    }
}
