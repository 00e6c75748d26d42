//! `POST /v1/inbound/generic`: a signed message in, a reply queued in the outbox.
//!
//! The body's HMAC-SHA256 under `AIHUMMER_INBOUND_SECRET` arrives as lowercase hex in
//! `X-AIHummer-Inbound-Secret` and is checked in constant time before anything is parsed.
//! The inbound row and the reply's outbox row are written in one transaction through the
//! app pool with the tenant set, so a reply exists exactly when its message does. The
//! `Idempotency-Key` header (or, without one, a key derived from the message) makes a
//! retry return the first result and queue nothing new, also when two gateways race.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Secret;
use crate::outbox::store as outbox;
use crate::responder::{Responder, Turn};
use crate::routes::error;
use crate::state::Shared;
use crate::tenant;

/// The largest accepted body.
pub const MAX_BODY: usize = 64 * 1024;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-aihummer-inbound-secret";
/// The longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 255;

/// What the inbound route needs besides the shared state.
pub struct Inbound {
    /// Shared gateway state (pools, readiness).
    pub shared: Arc<Shared>,
    /// The HMAC key; `None` disables the route with a clear 503.
    pub secret: Option<Secret>,
    /// The workspace messages belong to; `None` answers a clear 503.
    pub workspace: Option<Uuid>,
    /// Produces replies.
    pub responder: Box<dyn Responder>,
}

/// The inbound routes, with their own state.
pub fn routes(inbound: Arc<Inbound>) -> Router {
    Router::new()
        .route("/v1/inbound/generic", post(generic))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(inbound)
}

/// A validated generic inbound message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Message {
    /// The channel it came from.
    pub channel: String,
    /// Its id in that channel.
    pub external_id: String,
    /// Its text.
    pub text: String,
}

/// Checks the lowercase-hex HMAC-SHA256 `signature` of `body` under `secret`, in
/// constant time.
pub fn signature_matches(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Ok(signature) = hex::decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// Parses and validates a body; the error names the problem for the client.
pub fn parse(body: &[u8]) -> Result<Message, String> {
    let message: Message =
        serde_json::from_slice(body).map_err(|err| format!("invalid JSON body: {err}"))?;
    for (field, value) in [
        ("channel", &message.channel),
        ("external_id", &message.external_id),
    ] {
        if value.trim().is_empty() {
            return Err(format!("field `{field}` must not be empty"));
        }
    }
    Ok(message)
}

/// The key that makes a retry a no-op: the client's `Idempotency-Key`, or one derived from
/// the message itself, so an identical resend without a key is still recognised.
pub fn idempotency_key(headers: &HeaderMap, message: &Message) -> Result<String, String> {
    match headers.get("idempotency-key") {
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| "Idempotency-Key must be visible ASCII".to_string())?
                .trim();
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(format!(
                    "Idempotency-Key must be 1 to {MAX_KEY_LEN} characters"
                ));
            }
            Ok(format!("key:{key}"))
        }
        None => {
            let mut hash = Sha256::new();
            for part in [&message.channel, &message.external_id, &message.text] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part.as_bytes());
            }
            Ok(format!("derived:{}", hex::encode(hash.finalize())))
        }
    }
}

async fn generic(
    State(inbound): State<Arc<Inbound>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "body_too_large"
            } else {
                "bad_body"
            };
            return error(status, code, rejection.body_text());
        }
    };
    let Some(secret) = &inbound.secret else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "inbound_disabled",
            "generic inbound is disabled: AIHUMMER_INBOUND_SECRET is not set",
        );
    };
    let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    match signature {
        None => {
            return error(
                StatusCode::UNAUTHORIZED,
                "missing_signature",
                "the X-AIHummer-Inbound-Secret header is missing",
            );
        }
        Some(sig) if !signature_matches(secret.0.as_bytes(), &body, sig) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                "X-AIHummer-Inbound-Secret is not the HMAC-SHA256 of the body",
            );
        }
        Some(_) => {}
    }
    let message = match parse(&body) {
        Ok(message) => message,
        Err(why) => return error(StatusCode::UNPROCESSABLE_ENTITY, "bad_message", why),
    };
    let key = match idempotency_key(&headers, &message) {
        Ok(key) => key,
        Err(why) => return error(StatusCode::BAD_REQUEST, "bad_idempotency_key", why),
    };
    let Some(workspace) = inbound.workspace else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_workspace",
            "AIHUMMER_DEFAULT_WORKSPACE_ID is not set, so generic inbound has no workspace",
        );
    };
    let Some(pools) = inbound.shared.pools() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            inbound.shared.phase().reason(),
        );
    };
    match accept(&pools.app, workspace, &key, &message, &*inbound.responder).await {
        Ok((result, replayed)) => {
            let mut response = (StatusCode::OK, axum::Json(result)).into_response();
            if replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            response
        }
        Err(err) => {
            tracing::warn!(error = %err, "inbound message not stored");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_error",
                "the message could not be stored; retry with the same Idempotency-Key",
            )
        }
    }
}

/// Stores the message and its reply, or returns the stored result of the first delivery
/// of the same key. The bool says whether this was a replay.
async fn accept(
    app: &sqlx::PgPool,
    workspace: Uuid,
    key: &str,
    message: &Message,
    responder: &dyn Responder,
) -> Result<(Value, bool), sqlx::Error> {
    let mut tx = tenant::begin(app, workspace).await?;
    // A concurrent insert of the same key waits here until the other transaction ends,
    // then does nothing; the select below then reads the winner's result.
    let inbound_id: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO inbound_messages (workspace_id, channel, external_id, idempotency_key, body)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (workspace_id, idempotency_key) DO NOTHING
         RETURNING id",
    )
    .bind(workspace)
    .bind(&message.channel)
    .bind(&message.external_id)
    .bind(key)
    .bind(&message.text)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(inbound_id) = inbound_id else {
        let result: Option<Value> = sqlx::query_scalar(
            "SELECT result FROM inbound_messages WHERE workspace_id = $1 AND idempotency_key = $2",
        )
        .bind(workspace)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok((result.unwrap_or(Value::Null), true));
    };
    let text = responder.reply(&Turn {
        channel: &message.channel,
        external_id: &message.external_id,
        text: &message.text,
    });
    let reply_id = Uuid::new_v4();
    let payload = json!({
        "reply_id": reply_id,
        "in_reply_to": inbound_id,
        "workspace_id": workspace,
        "channel": message.channel,
        "external_id": message.external_id,
        "text": text,
    });
    outbox::enqueue(&mut tx, workspace, inbound_id, reply_id, &payload).await?;
    let result = json!({
        "inbound_id": inbound_id,
        "reply_id": reply_id,
        "status": "queued",
    });
    sqlx::query("UPDATE inbound_messages SET result = $1 WHERE id = $2")
        .bind(&result)
        .bind(inbound_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((result, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn only_the_hmac_of_the_exact_body_under_the_secret_matches() {
        let body = br#"{"channel":"c","external_id":"1","text":"hi"}"#;
        let good = sign("secret", body);
        assert!(signature_matches(b"secret", body, &good));
        assert!(!signature_matches(b"other", body, &good));
        assert!(!signature_matches(b"secret", b"{}", &good));
        assert!(!signature_matches(b"secret", body, "zz-not-hex"));
        assert!(!signature_matches(b"secret", body, &good[..10]));
    }

    #[test]
    fn a_message_needs_its_three_fields_and_a_channel_and_id() {
        assert!(parse(br#"{"channel":"c","external_id":"1","text":""}"#).is_ok());
        let missing = parse(br#"{"channel":"c","text":"x"}"#).unwrap_err();
        assert!(missing.contains("external_id"), "{missing}");
        assert!(parse(br#"{"channel":" ","external_id":"1","text":"x"}"#).is_err());
        assert!(parse(br#"{"channel":1,"external_id":"1","text":"x"}"#).is_err());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn the_idempotency_key_comes_from_the_header_or_from_the_message() {
        let message = parse(br#"{"channel":"c","external_id":"1","text":"hi"}"#).unwrap();
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
