//! The inbound messages' SQL. [`accept`] is the one verb the route needs: the message, its
//! result and its reply's outbox row are written by ONE statement, which sets the tenant
//! itself, so a reply exists exactly when its message does, and a repeated idempotency
//! key returns the first result and queues nothing new, also when two gateways race.
//! Messages arriving together share the statement ([`crate::inbound::batch`]).
//!
//! Round trips for a statement: one, the statement alone as its own implicit
//! transaction, when the app pool's login is held to `aihummer_app`'s policies by itself
//! ([`AppPool::single_statement`]), on a just-used connection ([`crate::warm`]) that skips
//! the pool's ping; else three: `BEGIN; SET LOCAL ROLE` (one simple
//! query), the statement, `COMMIT`. A replay adds a transaction reading the stored result.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::inbound::Message;
use crate::inbound::batch::{Abandoned, Batch};
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

/// The reply as the webhook receives it; serialised straight into the bound `jsonb`.
#[derive(Serialize)]
struct Reply<'a> {
    reply_id: Uuid,
    in_reply_to: Uuid,
    workspace_id: Uuid,
    channel: &'a str,
    external_id: &'a str,
    text: &'a str,
}

/// The client's answer, stored with the message so a replay returns it.
#[derive(Serialize)]
struct Outcome {
    inbound_id: Uuid,
    reply_id: Uuid,
    status: &'static str,
}

/// A message ready to be stored: its row, its result and its reply, serialised.
pub struct NewMessage {
    /// The message's id, by which [`store_group`] reports it stored.
    pub inbound_id: Uuid,
    reply_id: Uuid,
    channel: String,
    external_id: String,
    key: String,
    text: String,
    /// The client's answer, JSON.
    result: String,
    /// The reply as the webhook receives it, JSON.
    payload: String,
}

/// Sets the tenant, inserts the messages with their results and, for each whose key is
/// new, its outbox row; returns the ids of the messages stored. No `NOTIFY` here: it would
/// serialize the commits ([`crate::inbound::wake`] says why), so the caller wakes the
/// deliverers after it. The tenant is set by the `tenant` CTE that the insert reads its
/// rows from, so it is in force before the policies check them; `MATERIALIZED` and the
/// volatile `set_config` keep it a separate step. The messages are inserted in the order
/// of their keys, so statements racing on the same keys (a client's retries, two gateways)
/// wait for each other in one order and cannot deadlock; of two with the same key in one
/// statement, the one given first is stored. A reply's id is also its idempotency key.
const STORE: &str = "WITH tenant AS MATERIALIZED (
         SELECT set_config('aihummer.workspace_id', ($1::uuid)::text, true)
     ), input AS (
         SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                              $7::text[], $8::uuid[], $9::text[])
             WITH ORDINALITY
             AS i(id, channel, external_id, idempotency_key, body, result, reply_id, payload, n)
     ), message AS (
         INSERT INTO inbound_messages
             (id, workspace_id, channel, external_id, idempotency_key, body, result)
         SELECT i.id, $1, i.channel, i.external_id, i.idempotency_key, i.body, i.result::jsonb
         FROM input i, tenant
         ORDER BY i.idempotency_key, i.n
         ON CONFLICT (workspace_id, idempotency_key) DO NOTHING
         RETURNING id
     ), reply AS (
         INSERT INTO outbox (id, workspace_id, inbound_id, idempotency_key, payload)
         SELECT i.reply_id, $1, message.id, (i.reply_id)::text, i.payload::jsonb
         FROM message JOIN input i ON i.id = message.id
         RETURNING inbound_id
     )
     SELECT inbound_id FROM reply";

/// Why a message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The database refused or could not be reached.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The statement storing it with other messages failed.
    #[error(transparent)]
    Shared(#[from] Arc<sqlx::Error>),
    /// The gateway stopped before the statement storing it ended.
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
}

/// Stores `message` under `key` in `workspace` with the reply `responder` writes, together
/// with other messages waiting on `batch`, or returns the stored result of the first
/// delivery of the same key. A new reply is committed when this returns: the caller wakes
/// the deliverers ([`crate::inbound::Wake::after_commit`]).
pub async fn accept(
    app: &AppPool,
    batch: &Batch,
    workspace: Uuid,
    key: &str,
    message: &Message,
    responder: &dyn Responder,
) -> Result<Accepted, AcceptError> {
    // Written before the statement so it is one statement; wasted only on a replay.
    let text = responder.reply(&Turn {
        channel: &message.channel,
        external_id: &message.external_id,
        text: &message.text,
    });
    // Time-ordered ids: a new row's index entries, and those of its later versions while
    // it is delivered, land on the few pages at the right edge of the id indexes instead
    // of on random ones, so after a checkpoint fewer pages go to the WAL whole and the
    // indexes stay smaller.
    let (inbound_id, reply_id) = (Uuid::now_v7(), Uuid::now_v7());
    let outcome = Outcome {
        inbound_id,
        reply_id,
        status: "queued",
    };
    let reply = Reply {
        reply_id,
        in_reply_to: inbound_id,
        workspace_id: workspace,
        channel: &message.channel,
        external_id: &message.external_id,
        text: &text,
    };
    let new = NewMessage {
        inbound_id,
        reply_id,
        channel: message.channel.clone(),
        external_id: message.external_id.clone(),
        key: key.to_owned(),
        text: message.text.clone(),
        result: json(&outcome),
        payload: json(&reply),
    };
    if !batch.store(app, workspace, new).await?? {
        return Ok(Accepted {
            result: first_result(app, workspace, key).await?,
            replayed: true,
        });
    }
    Ok(Accepted {
        result: serde_json::json!(outcome),
        replayed: false,
    })
}

/// `value` as JSON text. Serialising these plain structs of strings and ids cannot fail.
fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// Stores `messages` in `workspace` in one statement, as one transaction, and returns the
/// ids of those stored (the others' keys were taken).
pub async fn store_group(
    app: &AppPool,
    workspace: Uuid,
    messages: &[&NewMessage],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let column = |field: fn(&NewMessage) -> &str| -> Vec<&str> {
        messages.iter().map(|m| field(m)).collect()
    };
    let statement = sqlx::query_scalar::<_, Uuid>(STORE)
        .bind(workspace)
        .bind(messages.iter().map(|m| m.inbound_id).collect::<Vec<_>>())
        .bind(column(|m| &m.channel))
        .bind(column(|m| &m.external_id))
        .bind(column(|m| &m.key))
        .bind(column(|m| &m.text))
        .bind(column(|m| &m.result))
        .bind(messages.iter().map(|m| m.reply_id).collect::<Vec<_>>())
        .bind(column(|m| &m.payload));
    let stored = if app.single_statement() {
        let mut conn = app.warm().acquire(app.pool()).await?;
        let stored = statement.fetch_all(&mut *conn).await?;
        app.warm().keep(app.pool(), conn);
        stored
    } else {
        let mut tx = tenant::begin_as_app(app).await?;
        let stored = statement.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        stored
    };
    Ok(stored.into_iter().collect())
}

/// The result stored with the first delivery of `key`. A concurrent first delivery made
/// the insert wait for its commit, so this later transaction's snapshot sees its result.
async fn first_result(app: &AppPool, workspace: Uuid, key: &str) -> Result<Value, sqlx::Error> {
    let mut tx = tenant::begin(app, workspace).await?;
    let result: Option<Value> = sqlx::query_scalar(
        "SELECT result FROM inbound_messages WHERE workspace_id = $1 AND idempotency_key = $2",
    )
    .bind(workspace)
    .bind(key)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(result.unwrap_or(Value::Null))
}
