//! The inbound messages' SQL. [`accept`] is the one verb the route needs: the message, its
//! result and its reply's outbox row are written by ONE statement, which sets the tenant
//! itself, so a reply exists exactly when its message does, and a repeated idempotency
//! key returns the first result and queues nothing new, also when two gateways race.
//!
//! Round trips for a new message: one, the statement alone as its own implicit
//! transaction, when the app pool's login is held to `aihummer_app`'s policies by itself
//! ([`AppPool::single_statement`]), on a just-used connection ([`crate::warm`]) that skips
//! the pool's ping; else three: `BEGIN; SET LOCAL ROLE` (one simple
//! query), the statement, `COMMIT`. A replay adds a transaction reading the stored result.

use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::inbound::Message;
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

/// Sets the tenant, inserts the message with its result and, only when the key is new,
/// the outbox row; returns 1 when stored, 0 on a repeated key. No `NOTIFY` here: it would
/// serialize the commits ([`crate::inbound::wake`] says why), so the caller wakes the
/// deliverers after it. The tenant is set by the `tenant` CTE that the insert reads its
/// row from, so it is in force before the policies check that row; `MATERIALIZED` and the
/// volatile `set_config` keep it a separate step. `$8` is the reply's id and its
/// idempotency key.
const ACCEPT: &str = "WITH tenant AS MATERIALIZED (
         SELECT set_config('aihummer.workspace_id', ($1::uuid)::text, true)
     ), message AS (
         INSERT INTO inbound_messages
             (id, workspace_id, channel, external_id, idempotency_key, body, result)
         SELECT $2, $1, $3, $4, $5, $6, $7 FROM tenant
         ON CONFLICT (workspace_id, idempotency_key) DO NOTHING
         RETURNING id
     ), reply AS (
         INSERT INTO outbox (id, workspace_id, inbound_id, idempotency_key, payload)
         SELECT $8, $1, message.id, ($8::uuid)::text, $9 FROM message
         RETURNING id
     )
     SELECT count(*) FROM reply";

/// Stores `message` under `key` in `workspace` with the reply `responder` writes, or
/// returns the stored result of the first delivery of the same key. A new reply is
/// committed when this returns: the caller wakes the deliverers
/// ([`crate::inbound::Wake::after_commit`]).
pub async fn accept(
    app: &AppPool,
    workspace: Uuid,
    key: &str,
    message: &Message,
    responder: &dyn Responder,
) -> Result<Accepted, sqlx::Error> {
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
    let statement = sqlx::query_scalar::<_, i64>(ACCEPT)
        .bind(workspace)
        .bind(inbound_id)
        .bind(&message.channel)
        .bind(&message.external_id)
        .bind(key)
        .bind(&message.text)
        .bind(Json(&outcome))
        .bind(reply_id)
        .bind(Json(&reply));
    let stored = if app.single_statement() {
        let mut conn = app.warm().acquire(app.pool()).await?;
        let stored = statement.fetch_one(&mut *conn).await?;
        app.warm().keep(app.pool(), conn);
        stored
    } else {
        let mut tx = tenant::begin_as_app(app).await?;
        let stored = statement.fetch_one(&mut *tx).await?;
        tx.commit().await?;
        stored
    };
    if stored == 0 {
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
