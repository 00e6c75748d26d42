//! `POST /v1/inbound/generic`: the HTTP side of a signed message in, a reply queued.
//!
//! The signature (over a timestamp, the `Idempotency-Key` and the body; see
//! [`crate::http::signature`]) is checked before anything is parsed.
//! The `Idempotency-Key` header (or, without one, a key derived from the message) makes a
//! retry return the first result. Storing is [`crate::inbound::store`]; this module only
//! checks, parses and turns each outcome into a status.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use uuid::Uuid;

use crate::http::error::ApiError;
use crate::http::signature::Verifier;
use crate::inbound::batch::Batch;
use crate::inbound::{Message, Wake, store};
use crate::responder::Responder;
use crate::state::Shared;

/// The largest accepted body.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;

/// What the inbound route needs besides the shared state.
pub struct Inbound {
    /// Shared gateway state (pools, readiness).
    pub shared: Arc<Shared>,
    /// Checks signatures under `AIHUMMER_INBOUND_SECRET`; `None` (no secret) disables the
    /// route with a clear 503.
    pub verifier: Option<Verifier>,
    /// The workspace messages belong to; `None` answers a clear 503.
    pub workspace: Option<Uuid>,
    /// Produces replies.
    pub responder: Box<dyn Responder>,
    /// Wakes the outbox deliverers once a reply is committed.
    pub wake: Wake,
    /// Messages waiting to be stored together.
    pub batch: Batch,
}

/// The inbound routes, with their own state.
pub fn routes(inbound: Arc<Inbound>) -> Router {
    Router::new()
        .route("/v1/inbound/generic", post(generic))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(inbound)
}

/// Why an `Idempotency-Key` header is refused; the text is what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The header has bytes outside visible ASCII.
    #[error("Idempotency-Key must be visible ASCII")]
    NotAscii,
    /// The header is blank or too long.
    #[error("Idempotency-Key must be 1 to {MAX_KEY_LEN} characters")]
    Length,
}

/// The key that makes a retry a no-op: the client's `Idempotency-Key`, or one derived from
/// the message itself, so an identical resend without a key is still recognised.
pub fn idempotency_key(headers: &HeaderMap, message: &Message) -> Result<String, KeyError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(message.derived_key());
    };
    let key = value.to_str().map_err(|_| KeyError::NotAscii)?.trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(KeyError::Length);
    }
    Ok(format!("key:{key}"))
}

async fn generic(
    State(inbound): State<Arc<Inbound>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(refused_body)?;
    let verifier = inbound.verifier.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "inbound_disabled",
            "generic inbound is disabled: AIHUMMER_INBOUND_SECRET is not set",
        )
    })?;
    verifier
        .check(&headers, &body, SystemTime::now())
        .map_err(|why| ApiError::new(StatusCode::UNAUTHORIZED, why.code(), why.to_string()))?;
    let message = Message::parse(&body).map_err(|why| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_message",
            why.to_string(),
        )
    })?;
    let key = idempotency_key(&headers, &message).map_err(|why| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_idempotency_key",
            why.to_string(),
        )
    })?;
    let workspace = inbound.workspace.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_workspace",
            "AIHUMMER_DEFAULT_WORKSPACE_ID is not set, so generic inbound has no workspace",
        )
    })?;
    let pools = inbound
        .shared
        .pools()
        .ok_or_else(|| ApiError::not_ready(&inbound.shared.phase()))?;
    let accepted = store::accept(
        &pools.app,
        &inbound.batch,
        workspace,
        &key,
        &message,
        &*inbound.responder,
    )
    .await
    .map_err(|err| {
        tracing::warn!(error = %err, "inbound message not stored");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_error",
            "the message could not be stored; retry with the same Idempotency-Key",
        )
    })?;
    if !accepted.replayed {
        inbound.wake.after_commit();
    }
    let mut response = (StatusCode::OK, Json(accepted.result)).into_response();
    if accepted.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A body axum could not read: too large (413), or otherwise unreadable.
fn refused_body(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "body_too_large"
    } else {
        "bad_body"
    };
    ApiError::new(status, code, rejection.body_text())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idempotency_key_comes_from_the_header_or_from_the_message() {
        let message = Message::parse(br#"{"channel":"c","external_id":"1","text":"hi"}"#).unwrap();
        let mut headers = HeaderMap::new();
        let derived = idempotency_key(&headers, &message).unwrap();
        assert_eq!(derived, idempotency_key(&headers, &message).unwrap());
        let other = Message {
            text: "bye".into(),
            ..message.clone()
        };
        assert_ne!(derived, idempotency_key(&headers, &other).unwrap());
        headers.insert("idempotency-key", HeaderValue::from_static("abc"));
        assert_eq!(idempotency_key(&headers, &message).unwrap(), "key:abc");
        headers.insert(
            "idempotency-key",
            HeaderValue::from_str(&"k".repeat(300)).unwrap(),
        );
        assert!(idempotency_key(&headers, &message).is_err());
    }
}
