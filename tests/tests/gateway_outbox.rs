//! Generic inbound and outbox delivery against real gateways, a real PostgreSQL and a real
//! webhook receiver.

use std::time::Duration;

use aihummer_tests::{
    Gateway, INBOUND_SECRET, Receiver, TestDb, binary, free_port, get_json, http, post_inbound,
    signature, wait_for,
};
use serde_json::json;
use sqlx::PgPool;

const WORKSPACE: &str = "2b1f5d8e-3c4a-4e6f-9a7b-0c1d2e3f4a5b";

fn env<'a>(db: &'a str, hook: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AIHUMMER_DATABASE_URL", db),
        ("AIHUMMER_INBOUND_SECRET", INBOUND_SECRET),
        ("AIHUMMER_DEFAULT_WORKSPACE_ID", WORKSPACE),
        ("AIHUMMER_REPLY_WEBHOOK_URL", hook),
        ("AIHUMMER_OUTBOX_LEASE", "2s"),
    ]
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

async fn until_outbox(pool: &PgPool, status: &str, n: i64) {
    let sql = format!("SELECT count(*) FROM outbox WHERE status = '{status}'");
    wait_for(
        Duration::from_secs(30),
        &format!("{n} {status} replies"),
        || async { (count(pool, &sql).await == n).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn the_same_inbound_sent_five_times_including_concurrently_to_two_gateways_yields_one_reply()
{
    let db = TestDb::create().await;
    let receiver = Receiver::start(&[]).await;
    let (url, hook) = (db.url(), receiver.url());
    let a = Gateway::start(&env(&url, &hook));
    let b = Gateway::start(&env(&url, &hook));
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;
    let client = http();
    let message = json!({"channel": "sms", "external_id": "m-1", "text": "hello"});

    let (status, first) = post_inbound(&client, &a.url(""), &message, Some("same"))
        .await
        .expect("post");
    assert_eq!(status, 200, "{first}");
    let (_, again) = post_inbound(&client, &a.url(""), &message, Some("same"))
        .await
        .expect("post");
    assert_eq!(again, first);
    let (url_a, url_b) = (a.url(""), b.url(""));
    let (ra, rb, rc) = tokio::join!(
        post_inbound(&client, &url_a, &message, Some("same")),
        post_inbound(&client, &url_b, &message, Some("same")),
        post_inbound(&client, &url_b, &message, Some("same")),
    );
    for result in [ra, rb, rc] {
        assert_eq!(result.expect("post"), (200, first.clone()));
    }

    let pool = db.pool().await;
    until_outbox(&pool, "delivered", 1).await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM inbound_messages").await,
        1
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 1);
    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].body["reply_id"], first["reply_id"]);
    assert_eq!(deliveries[0].key, first["reply_id"].as_str().unwrap());
    assert_eq!(deliveries[0].body["external_id"], "m-1");
}

#[tokio::test]
async fn without_an_idempotency_key_an_identical_resend_is_still_recognised() {
    let db = TestDb::create().await;
    let receiver = Receiver::start(&[]).await;
    let gw = Gateway::start(&env(&db.url(), &receiver.url()));
    gw.wait_ready(Duration::from_secs(30)).await;
    let client = http();
    let message = json!({"channel": "sms", "external_id": "m-2", "text": "hi"});
    let (_, first) = post_inbound(&client, &gw.url(""), &message, None)
        .await
        .expect("post");
    let (_, second) = post_inbound(&client, &gw.url(""), &message, None)
        .await
        .expect("post");
    assert_eq!(first, second);
    let other = json!({"channel": "sms", "external_id": "m-3", "text": "hi"});
    let (_, third) = post_inbound(&client, &gw.url(""), &other, None)
        .await
        .expect("post");
    assert_ne!(third["reply_id"], first["reply_id"]);
    let pool = db.pool().await;
    until_outbox(&pool, "delivered", 2).await;
}

#[tokio::test]
async fn a_receiver_answering_500_then_200_gets_the_reply_again_with_the_same_key() {
    let db = TestDb::create().await;
    let receiver = Receiver::start(&[500]).await;
    let gw = Gateway::start(&env(&db.url(), &receiver.url()));
    gw.wait_ready(Duration::from_secs(30)).await;
    let message = json!({"channel": "chat", "external_id": "x", "text": "retry me"});
    let (status, result) = post_inbound(&http(), &gw.url(""), &message, Some("k500"))
        .await
        .expect("post");
    assert_eq!(status, 200);

    let pool = db.pool().await;
    until_outbox(&pool, "delivered", 1).await;
    let deliveries = receiver.deliveries();
    assert_eq!(
        deliveries.iter().map(|d| d.status).collect::<Vec<_>>(),
        [500, 200]
    );
    let key = result["reply_id"].as_str().unwrap();
    assert!(deliveries.iter().all(|d| d.key == key), "{deliveries:?}");
    assert_eq!(deliveries[0].body, deliveries[1].body);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("attempts");
    assert_eq!(attempts, 2);
}

#[tokio::test]
async fn a_receiver_answering_400_dead_letters_the_reply_and_a_requeue_delivers_it() {
    let db = TestDb::create().await;
    let receiver = Receiver::start(&[400]).await;
    let (url, hook) = (db.url(), receiver.url());
    let operator = format!("127.0.0.1:{}", free_port());
    let mut vars = env(&url, &hook);
    vars.push(("AIHUMMER_METRICS_ADDR", &operator));
    let gw = Gateway::start(&vars);
    gw.wait_ready(Duration::from_secs(30)).await;
    let message = json!({"channel": "chat", "external_id": "y", "text": "refused"});
    post_inbound(&http(), &gw.url(""), &message, Some("k400"))
        .await
        .expect("post");

    let pool = db.pool().await;
    until_outbox(&pool, "dead", 1).await;
    let reason: String = sqlx::query_scalar("SELECT last_error FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("reason");
    assert!(reason.contains("HTTP 400"), "{reason}");
    let (_, stats) = get_json(&http(), &format!("http://{operator}/v1/outbox/stats"))
        .await
        .expect("stats");
    assert_eq!(stats["dead"], 1);

    let out = std::process::Command::new(binary("aihummer-gateway"))
        .args(["outbox", "requeue"])
        .env("AIHUMMER_DATABASE_URL", db.url())
        .output()
        .expect("run requeue");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("requeued 1"));

    until_outbox(&pool, "delivered", 1).await;
    let deliveries = receiver.deliveries();
    assert_eq!(
        deliveries.iter().map(|d| d.status).collect::<Vec<_>>(),
        [400, 200]
    );
    assert_eq!(deliveries[0].key, deliveries[1].key);
}

#[tokio::test]
async fn bad_input_gets_the_documented_errors_and_writes_nothing() {
    let db = TestDb::create().await;
    let receiver = Receiver::start(&[]).await;
    let gw = Gateway::start(&env(&db.url(), &receiver.url()));
    gw.wait_ready(Duration::from_secs(30)).await;
    let client = http();
    let url = gw.url("/v1/inbound/generic");
    let good = br#"{"channel":"sms","external_id":"1","text":"hi"}"#.to_vec();
    let post = |body: Vec<u8>, signature: Option<String>| {
        let mut request = client.post(&url).body(body);
        if let Some(signature) = signature {
            request = request.header("x-aihummer-signature", signature);
        }
        async move {
            let response = request.send().await.expect("answer");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.expect("JSON error");
            (
                status,
                body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }
    };
    let signed = |body: &[u8]| Some(signature(INBOUND_SECRET, None, body));
    let no_external_id = br#"{"channel":"sms","text":"x"}"#;
    let cases = [
        (post(good.clone(), None).await, (401, "missing_signature")),
        (
            post(good.clone(), Some(signature("wrong", None, &good))).await,
            (401, "bad_signature"),
        ),
        (
            post(good.clone(), Some("not-hex".into())).await,
            (401, "malformed_signature"),
        ),
        (
            post(b"{nope".to_vec(), signed(b"{nope")).await,
            (422, "bad_message"),
        ),
        (
            post(no_external_id.to_vec(), signed(no_external_id)).await,
            (422, "bad_message"),
        ),
    ];
    for (got, (status, code)) in cases {
        assert_eq!(got, (status, code.to_string()));
    }
    let huge = format!(
        r#"{{"channel":"sms","external_id":"1","text":"{}"}}"#,
        "x".repeat(200_000)
    );
    let (status, code) = post(huge.clone().into_bytes(), signed(huge.as_bytes())).await;
    assert_eq!((status, code.as_str()), (413, "body_too_large"));

    let without_workspace = Gateway::start(&[
        ("AIHUMMER_DATABASE_URL", &db.url()),
        ("AIHUMMER_INBOUND_SECRET", INBOUND_SECRET),
    ]);
    without_workspace.wait_ready(Duration::from_secs(30)).await;
    let response = client
        .post(without_workspace.url("/v1/inbound/generic"))
        .header(
            "x-aihummer-signature",
            signature(INBOUND_SECRET, None, &good),
        )
        .body(good.clone())
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 503);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "no_workspace");

    let pool = db.pool().await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM inbound_messages").await,
        0
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 0);
    assert!(receiver.deliveries().is_empty());
}

#[tokio::test]
async fn replies_written_through_the_app_role_stay_invisible_to_another_workspace() {
    let mut db = TestDb::create().await;
    let receiver = Receiver::start(&[]).await;
    let first = Gateway::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    first.wait_ready(Duration::from_secs(30)).await;
    let login = db.app_login().await;
    let app_url = db.url_as(&login);
    let (url, hook) = (db.url(), receiver.url());
    let mut vars = env(&url, &hook);
    vars.push(("AIHUMMER_DB_APP_URL", &app_url));
    let gw = Gateway::start(&vars);
    gw.wait_ready(Duration::from_secs(30)).await;
    let message = json!({"channel": "sms", "external_id": "rls", "text": "private"});
    let (status, _) = post_inbound(&http(), &gw.url(""), &message, Some("rls"))
        .await
        .expect("post");
    assert_eq!(status, 200);

    let app = sqlx::PgPool::connect(&app_url).await.expect("app pool");
    let app = aihummer_gateway::tenant::AppPool::restricted(app);
    let other = uuid::Uuid::new_v4();
    let mut tx = aihummer_gateway::tenant::begin(&app, other)
        .await
        .expect("tx");
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_messages")
        .fetch_one(&mut *tx)
        .await
        .expect("select");
    let replies: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&mut *tx)
        .await
        .expect("select");
    assert_eq!((seen, replies), (0, 0));
    drop(tx);
    let mut tx = aihummer_gateway::tenant::begin(&app, WORKSPACE.parse().unwrap())
        .await
        .expect("tx");
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_messages")
        .fetch_one(&mut *tx)
        .await
        .expect("select");
    assert_eq!(seen, 1);
}

#[tokio::test]
async fn a_draining_gateway_gives_its_leases_back_so_another_delivers_without_waiting_for_them() {
    let db = TestDb::create().await;
    let receiver = Receiver::start_slow(&[], Duration::from_secs(4)).await;
    let (url, hook) = (db.url(), receiver.url());
    let mut vars = env(&url, &hook);
    vars.retain(|(k, _)| *k != "AIHUMMER_OUTBOX_LEASE");
    vars.push(("AIHUMMER_OUTBOX_LEASE", "60s"));
    let mut draining = Gateway::start(&vars);
    draining.wait_ready(Duration::from_secs(30)).await;
    let client = http();
    for i in 0..5 {
        let message = json!({"channel": "sms", "external_id": format!("d-{i}"), "text": "slow"});
        post_inbound(&client, &draining.url(""), &message, None)
            .await
            .expect("post");
    }
    let pool = db.pool().await;
    wait_for(
        Duration::from_secs(10),
        "the first gateway to lease a reply",
        || async {
            (count(
                &pool,
                "SELECT count(*) FROM outbox WHERE lease_owner IS NOT NULL",
            )
            .await
                > 0)
            .then_some(())
        },
    )
    .await;

    draining.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        draining.wait_exit(Duration::from_secs(15)).await.code(),
        Some(0)
    );
    assert!(
        draining.logs().contains("released outbox leases"),
        "{}",
        draining.logs()
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM outbox WHERE lease_owner IS NOT NULL"
        )
        .await,
        0
    );

    // Well inside the 60s lease: the released rows are delivered by the next gateway.
    let next = Gateway::start(&vars);
    next.wait_ready(Duration::from_secs(30)).await;
    until_outbox(&pool, "delivered", 5).await;
}

/// Queues `slow` replies the receiver answers after 6 s (due first), then the rest of 64
/// it answers at once, to a gateway keeping `concurrency` deliveries in flight; returns how
/// many fast replies the receiver had answered before the first slow one was answered.
async fn fast_replies_answered_before_the_first_slow_one(concurrency: &str, slow: i32) -> usize {
    let db = TestDb::create().await;
    let receiver = Receiver::start_slow_for("slow-", Duration::from_secs(6)).await;
    let (url, hook) = (db.url(), receiver.url());
    let mut vars = env(&url, &hook);
    vars.retain(|(k, _)| *k != "AIHUMMER_OUTBOX_LEASE");
    vars.push(("AIHUMMER_OUTBOX_LEASE", "60s"));
    vars.push(("AIHUMMER_OUTBOX_CONCURRENCY", concurrency));
    let gateway = Gateway::start(&vars);
    gateway.wait_ready(Duration::from_secs(30)).await;
    let pool = db.pool().await;
    sqlx::query(
        "WITH queued AS (
             INSERT INTO outbox (workspace_id, idempotency_key, payload, next_attempt_at)
             SELECT $1::uuid, CASE WHEN n <= $2 THEN 'slow-' ELSE 'fast-' END || n,
                    jsonb_build_object('n', n), now() - interval '1 minute' + n * interval '1 ms'
             FROM generate_series(1, 64) AS n
             RETURNING id
         )
         SELECT pg_notify('aihummer_outbox', '') FROM (SELECT count(*) FROM queued) AS c",
    )
    .bind(WORKSPACE)
    .bind(slow)
    .execute(&pool)
    .await
    .expect("queue replies");
    until_outbox(&pool, "delivered", 64).await;
    receiver
        .deliveries()
        .iter()
        .take_while(|d| !d.key.starts_with("slow-"))
        .count()
}

#[tokio::test]
async fn slow_receiver_answers_hold_only_their_own_slots_so_other_replies_keep_flowing() {
    assert_eq!(
        fast_replies_answered_before_the_first_slow_one("8", 4).await,
        60
    );
}

#[tokio::test]
async fn slow_answers_step_out_of_the_window_so_they_cannot_fill_it() {
    // Two slots, and twice as many slow replies due first: each steps aside once it has
    // gone unanswered for a moment, so the fast ones are all answered within the slow
    // ones' 6 s.
    assert_eq!(
        fast_replies_answered_before_the_first_slow_one("2", 4).await,
        60
    );
}

#[tokio::test]
async fn outbox_concurrency_bounds_the_deliveries_in_flight() {
    // One slot, and a slow lane of four: the first four slow replies step aside, the fifth
    // keeps the one slot, and nothing else moves until a slow reply is answered.
    assert_eq!(
        fast_replies_answered_before_the_first_slow_one("1", 5).await,
        0
    );
}

#[tokio::test]
async fn a_reply_coming_due_behind_a_draining_backlog_is_not_left_until_the_backlog_ends() {
    // One slot and a receiver taking 5 ms: 2,000 queued replies take many seconds, claimed
    // a row or two at a time, each claim going on past the last.
    let db = TestDb::create().await;
    let receiver = Receiver::start_slow(&[], Duration::from_millis(5)).await;
    let (url, hook) = (db.url(), receiver.url());
    let mut vars = env(&url, &hook);
    vars.retain(|(k, _)| *k != "AIHUMMER_OUTBOX_LEASE");
    vars.push(("AIHUMMER_OUTBOX_LEASE", "60s"));
    vars.push(("AIHUMMER_OUTBOX_CONCURRENCY", "1"));
    let gateway = Gateway::start(&vars);
    gateway.wait_ready(Duration::from_secs(30)).await;
    let pool = db.pool().await;
    let queue = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(sql)
                .bind(WORKSPACE)
                .execute(&pool)
                .await
                .expect("queue");
            sqlx::query("SELECT pg_notify('aihummer_outbox', '')")
                .execute(&pool)
                .await
                .expect("notify");
        }
    };
    queue(
        "INSERT INTO outbox (workspace_id, idempotency_key, payload)
         SELECT $1::uuid, 'backlog-' || n, jsonb_build_object('n', n)
         FROM generate_series(1, 2000) AS n",
    )
    .await;
    let delivered = "SELECT count(*) FROM outbox WHERE status = 'delivered'";
    wait_for(Duration::from_secs(30), "the drain under way", || async {
        (count(&pool, delivered).await >= 100).then_some(())
    })
    .await;
    // Due an hour ago: before every row claimed so far, as a retry or a lease given back
    // would be.
    queue(
        "INSERT INTO outbox (workspace_id, idempotency_key, payload, next_attempt_at)
         VALUES ($1::uuid, 'behind', '{}', now() - interval '1 hour')",
    )
    .await;
    let behind = "SELECT count(*) FROM outbox
                  WHERE idempotency_key = 'behind' AND status = 'delivered'";
    wait_for(
        Duration::from_secs(30),
        "the reply behind delivered",
        || async { (count(&pool, behind).await == 1).then_some(()) },
    )
    .await;
    let backlog_left = 2000 + 1 - count(&pool, delivered).await;
    assert!(
        backlog_left > 500,
        "the reply behind the cursor waited for the backlog: {backlog_left} left when it went"
    );
    drop(gateway);
}
