//! The inbound messages' SQL. [`accept`] is the one verb the route needs: the message and
//! its reply's outbox row are written in one transaction through the app pool as
//! `aihummer_app` with the tenant set, so a reply exists exactly when its message does,
//! and a repeated idempotency key returns the first result and queues nothing new, also
//! when two gateways race.

use serde_json::{Value, json};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::inbound::Message;
use crate::outbox::store as outbox;
use crate::responder::{Responder, Turn};
use crate::tenant::{self, AppPool};

/// What storing a message came to.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The answer for the client: `inbound_id`, `reply_id` and `status`, or whatever the
    /// first delivery of the same key stored.
    pub result: Value,
    /// Whether the key was seen before, so nothing new was stored.
    pub replayed: bool,
}

/// Stores `message` under `key` in `workspace` with the reply `responder` writes, or
/// returns the stored result of the first delivery of the same key.
pub async fn accept(
    app: &AppPool,
    workspace: Uuid,
    key: &str,
    message: &Message,
    responder: &dyn Responder,
) -> Result<Accepted, sqlx::Error> {
    let mut tx = tenant::begin(app, workspace).await?;
    let Some(inbound_id) = insert(&mut tx, workspace, key, message).await? else {
        let result: Option<Value> = sqlx::query_scalar(
            "SELECT result FROM inbound_messages WHERE workspace_id = $1 AND idempotency_key = $2",
        )
        .bind(workspace)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Accepted {
            result: result.unwrap_or(Value::Null),
            replayed: true,
        });
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
    Ok(Accepted {
        result,
        replayed: false,
    })
}

/// Inserts the message; `None` when its key is already stored. A concurrent insert of the
/// same key waits here until the other transaction ends, then does nothing, so the caller
/// then reads the winner's result.
async fn insert(
    tx: &mut Transaction<'static, Postgres>,
    workspace: Uuid,
    key: &str,
    message: &Message,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
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
    .fetch_optional(&mut **tx)
    .await
}
