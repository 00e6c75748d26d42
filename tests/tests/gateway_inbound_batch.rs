//! Group commit on the inbound path: messages stored at the same moment share statements,
//! and still each get exactly one row, one reply and their own answer, a repeated key
//! its first answer, and a message the database refuses fails alone.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use aihummer_gateway::inbound::Message;
use aihummer_gateway::inbound::batch::Batch;
use aihummer_gateway::inbound::store::{self, AcceptError, Accepted};
use aihummer_gateway::migrate;
use aihummer_gateway::responder::Builtin;
use aihummer_gateway::state::Pools;
use aihummer_tests::pools::pools_as;
use aihummer_tests::{Gateway, INBOUND_SECRET, Proxy, TestDb, post_inbound};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use tokio::task::JoinSet;
use uuid::Uuid;

/// A migrated database with two workspaces, and the gateway's pools on it as a login that
/// is a member of `aihummer_app` with `attributes`.
async fn setup(attributes: &str) -> (TestDb, Pools, [Uuid; 2]) {
    let mut db = TestDb::create().await;
    // The login's role comes with the migrations.
    let options = PgConnectOptions::from_str(&db.url()).expect("url");
    migrate::apply(&options, |_| {}).await.expect("migrate");
    let login = db.login(attributes).await;
    let pools = pools_as(&db, &login).await;
    let workspaces = [Uuid::new_v4(), Uuid::new_v4()];
    for ws in workspaces {
        sqlx::query("INSERT INTO workspaces (id, name) VALUES ($1, 'batch')")
            .bind(ws)
            .execute(&pools.owner)
            .await
            .expect("workspace");
    }
    (db, pools, workspaces)
}

/// What was sent (workspace and key), and what came of it.
type Outcome = ((Uuid, String), Result<Accepted, AcceptError>);

/// Stores every `(batch, workspace, key)` at once, each from its own task, and returns
/// each outcome with what was sent.
async fn store_all(pools: &Pools, sends: Vec<(Batch, Uuid, String)>) -> Vec<Outcome> {
    let mut tasks = JoinSet::new();
    for (batch, workspace, key) in sends {
        let app = pools.app.clone();
        tasks.spawn(async move {
            let message = Message {
                channel: "batch".into(),
                external_id: key.clone(),
                text: format!("text of {key}"),
            };
            let outcome = store::accept(&app, &batch, workspace, &key, &message, &Builtin).await;
            ((workspace, key), outcome)
        });
    }
    tasks.join_all().await
}

/// Checks that of each `(workspace, key)` sent, exactly one send stored it and every other
/// was answered the stored send's result; returns how many were stored.
fn one_stored_per_key(outcomes: &[Outcome]) -> usize {
    let mut by_key: HashMap<&(Uuid, String), Vec<&Accepted>> = HashMap::new();
    for (sent, outcome) in outcomes {
        let accepted = outcome.as_ref().expect("stored or replayed");
        by_key.entry(sent).or_default().push(accepted);
    }
    for (sent, answers) in &by_key {
        let first: Vec<_> = answers.iter().filter(|a| !a.replayed).collect();
        assert_eq!(first.len(), 1, "{sent:?}: one send stores the message");
        for answer in answers {
            assert_eq!(
                answer.result, first[0].result,
                "{sent:?}: replays answer the first result"
            );
        }
    }
    by_key.len()
}

/// Messages stored, and the transactions that stored them.
async fn messages_and_transactions(pools: &Pools) -> (i64, i64) {
    sqlx::query_as("SELECT count(*), count(DISTINCT xmin::text) FROM inbound_messages")
        .fetch_one(&pools.owner)
        .await
        .expect("count")
}

#[tokio::test]
async fn messages_sent_at_once_share_transactions_and_each_key_is_stored_once() {
    for attributes in [
        "INHERIT IN ROLE aihummer_app",
        "NOINHERIT IN ROLE aihummer_app",
    ] {
        let (_db, pools, [a, b]) = setup(attributes).await;
        let batch = Batch::default();
        // 100 keys in each workspace, each sent twice, all at once.
        let sends: Vec<_> = (0..2)
            .flat_map(|_| [a, b])
            .flat_map(|ws| (0..100).map(move |n| (ws, format!("key:{n}"))))
            .map(|(ws, key)| (batch.clone(), ws, key))
            .collect();
        let outcomes = store_all(&pools, sends).await;
        let stored = one_stored_per_key(&outcomes);
        assert_eq!(stored, 200, "{attributes}");

        let (messages, transactions) = messages_and_transactions(&pools).await;
        assert_eq!(messages, 200, "{attributes}: one row per workspace and key");
        assert!(
            transactions < messages,
            "{attributes}: {messages} messages sent at once were stored by {transactions} transactions"
        );
        let (replies, inconsistent): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE o.workspace_id <> m.workspace_id
                                                OR o.payload->>'external_id' <> m.external_id)
             FROM outbox o JOIN inbound_messages m ON m.id = o.inbound_id",
        )
        .fetch_one(&pools.owner)
        .await
        .expect("replies");
        assert_eq!(
            (replies, inconsistent),
            (200, 0),
            "{attributes}: one reply per message, its own"
        );
    }
}

#[tokio::test]
async fn two_gateways_storing_the_same_keys_at_once_store_each_once() {
    let (_db, pools, [a, _]) = setup("INHERIT IN ROLE aihummer_app").await;
    // Two queues, as two gateways have, racing on the same 100 keys.
    let (one, two) = (Batch::default(), Batch::default());
    let sends: Vec<_> = (0..100)
        .flat_map(|n| {
            [
                (one.clone(), a, format!("key:{n}")),
                (two.clone(), a, format!("key:{n}")),
            ]
        })
        .collect();
    let outcomes = store_all(&pools, sends).await;
    assert_eq!(one_stored_per_key(&outcomes), 100);
    let replies: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pools.owner)
        .await
        .expect("replies");
    assert_eq!(replies, 100);
}

#[tokio::test]
async fn a_message_the_database_refuses_fails_alone() {
    let (_db, pools, [a, _]) = setup("INHERIT IN ROLE aihummer_app").await;
    let batch = Batch::default();
    // A key too large for its index: PostgreSQL refuses that row, and only that one.
    let refused = format!(
        "key:{}",
        (0..400)
            .map(|_| Uuid::new_v4().simple().to_string())
            .collect::<String>()
    );
    let mut sends: Vec<_> = (0..60)
        .map(|n| (batch.clone(), a, format!("key:{n}")))
        .collect();
    sends.insert(30, (batch.clone(), a, refused.clone()));
    let outcomes = store_all(&pools, sends).await;
    let failed: HashSet<&str> = outcomes
        .iter()
        .filter(|(_, outcome)| outcome.is_err())
        .map(|((_, key), _)| key.as_str())
        .collect();
    assert_eq!(failed, HashSet::from([refused.as_str()]));
    let (messages, _) = messages_and_transactions(&pools).await;
    assert_eq!(messages, 60);
}

#[tokio::test]
async fn while_the_database_is_down_messages_are_refused_together_and_stored_once_it_is_back() {
    let db = TestDb::create().await;
    let mut proxy = Proxy::new();
    proxy.start().await;
    let url = proxy.url(&db);
    let gw = Gateway::start(&[
        ("AIHUMMER_DATABASE_URL", url.as_str()),
        ("AIHUMMER_INBOUND_SECRET", INBOUND_SECRET),
        (
            "AIHUMMER_DEFAULT_WORKSPACE_ID",
            "6a3e1c55-8a0b-4b6e-9d3f-1e2a3b4c5d6e",
        ),
    ]);
    gw.wait_ready(Duration::from_secs(30)).await;
    // Longer than any wait the gateway may impose, so that its answer is what is measured.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client");
    let send_all = || {
        let mut sends = JoinSet::new();
        for n in 0..40 {
            let (client, base) = (client.clone(), gw.url(""));
            sends.spawn(async move {
                let body = json!({"channel": "sms", "external_id": format!("m-{n}"), "text": "hi"});
                post_inbound(
                    &client,
                    base.trim_end_matches('/'),
                    &body,
                    Some(&format!("k-{n}")),
                )
                .await
                .expect("an answer")
            });
        }
        sends.join_all()
    };

    proxy.stop().await;
    let started = Instant::now();
    let answers = send_all().await;
    let took = started.elapsed();
    assert!(
        answers.iter().all(|(status, _)| *status == 503),
        "{answers:?}"
    );
    // Each statement waits out the pool's 5 s at most, and the messages waiting meanwhile
    // fail with the next one, not one by one after it.
    assert!(took < Duration::from_secs(30), "40 refusals took {took:?}");

    proxy.start().await;
    let answers = send_all().await;
    assert!(
        answers
            .iter()
            .all(|(status, body)| *status == 200 && body["status"] == "queued"),
        "{answers:?}"
    );
    let pool = db.pool().await;
    let (messages, replies): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM inbound_messages), (SELECT count(*) FROM outbox)",
    )
    .fetch_one(&pool)
    .await
    .expect("counts");
    assert_eq!((messages, replies), (40, 40));
}
