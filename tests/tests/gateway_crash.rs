//! Crash safety of the outbox: gateways killed with SIGKILL mid-stream lose no reply and
//! never give one key two different replies.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aihummer_tests::{Gateway, INBOUND_SECRET, Receiver, TestDb, http, post_inbound, wait_for};
use serde_json::json;
use tokio::sync::{RwLock, Semaphore};
use tokio::task::JoinSet;

const WORKSPACE: &str = "9d3c1a7e-5b2f-4c8d-8e1f-2a3b4c5d6e7f";
const MESSAGES: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_messages_across_two_gateways_survive_two_kill_9_restarts_with_one_reply_per_key()
 {
    let db = TestDb::create().await;
    let receiver = Receiver::start(&[]).await;
    let (url, hook) = (db.url(), receiver.url());
    let env = [
        ("AIHUMMER_DATABASE_URL", url.as_str()),
        ("AIHUMMER_INBOUND_SECRET", INBOUND_SECRET),
        ("AIHUMMER_DEFAULT_WORKSPACE_ID", WORKSPACE),
        ("AIHUMMER_REPLY_WEBHOOK_URL", hook.as_str()),
        ("AIHUMMER_OUTBOX_LEASE", "2s"),
    ];
    let mut a = Gateway::start(&env);
    let b = Gateway::start(&env);
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;

    let targets = Arc::new(RwLock::new([a.url(""), b.url("")]));
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let (targets, sent) = (targets.clone(), sent.clone());
        tokio::spawn(async move {
            let client = http();
            let slots = Arc::new(Semaphore::new(16));
            let mut tasks = JoinSet::new();
            for i in 0..MESSAGES {
                let permit = slots.clone().acquire_owned().await.expect("semaphore");
                let (client, targets, sent) = (client.clone(), targets.clone(), sent.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    let key = format!("m-{i}");
                    let message = json!({"channel": "load", "external_id": key, "text": format!("message {i}")});
                    // A killed gateway's client retries on the other one with the same key.
                    for attempt in 0..400 {
                        let target = targets.read().await[(i + attempt) % 2].clone();
                        if let Ok((200, body)) = post_inbound(&client, &target, &message, Some(&key)).await {
                            sent.fetch_add(1, Ordering::SeqCst);
                            return (key, body["reply_id"].as_str().unwrap_or_default().to_string());
                        }
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    panic!("message {key} was never accepted");
                });
            }
            let mut accepted = HashMap::new();
            while let Some(done) = tasks.join_next().await {
                let (key, reply) = done.expect("sender task");
                accepted.insert(key, reply);
            }
            accepted
        })
    };

    for round in 1..=2 {
        let threshold = round * MESSAGES / 3;
        wait_for(
            Duration::from_secs(60),
            "the sender to make progress",
            || async { (sent.load(Ordering::SeqCst) >= threshold).then_some(()) },
        )
        .await;
        a.child.start_kill().expect("kill -9");
        a.wait_exit(Duration::from_secs(10)).await;
        a = Gateway::start(&env);
        targets.write().await[0] = a.url("");
    }
    let accepted = sender.await.expect("sender");
    assert_eq!(accepted.len(), MESSAGES);

    let pool = db.pool().await;
    wait_for(
        Duration::from_secs(90),
        "every reply to be delivered",
        || async {
            let open: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status <> 'delivered'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (open == 0 && receiver.delivered_keys().len() == MESSAGES).then_some(())
        },
    )
    .await;

    let replies: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&pool)
        .await
        .expect("count");
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_messages")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!((replies, messages), (MESSAGES as i64, MESSAGES as i64));

    let mut bodies: HashMap<String, HashSet<String>> = HashMap::new();
    let deliveries = receiver.deliveries();
    for delivery in &deliveries {
        bodies
            .entry(delivery.key.clone())
            .or_default()
            .insert(delivery.body.to_string());
    }
    assert_eq!(bodies.len(), MESSAGES);
    for (key, seen) in &bodies {
        assert_eq!(
            seen.len(),
            1,
            "key {key} carried different replies: {seen:?}"
        );
    }
    let expected: HashSet<String> = accepted.values().cloned().collect();
    let got: HashSet<String> = bodies.keys().cloned().collect();
    assert_eq!(
        got, expected,
        "delivered keys differ from the replies the gateways promised"
    );
    println!(
        "{} deliveries for {MESSAGES} replies ({} repeated after the kills)",
        deliveries.len(),
        deliveries.len() - MESSAGES
    );
}
