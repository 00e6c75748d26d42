//! Benchmark, not a test: outbox deliveries per second to a local receiver, with one and
//! with two gateways. Ignored by default; run it on the release build with
//! `cargo nextest run --release -p aihummer-tests --run-ignored only --no-capture bench_`.

use std::time::Duration;

use aihummer_tests::{Gateway, Receiver, TestDb, wait_for};
use tokio::time::Instant;

const REPLIES: i64 = 5000;
const WORKSPACE: &str = "5f0c2b9a-1d3e-4f5a-8b6c-7d8e9f0a1b2c";

async fn deliveries_per_second(gateways: usize) -> f64 {
    let db = TestDb::create().await;
    let receiver = Receiver::start(&[]).await;
    let (url, hook) = (db.url(), receiver.url());
    // Migrate and create the workspace with a gateway that has no webhook, then queue the
    // replies directly, so only delivery is timed.
    let setup = Gateway::start(&[
        ("AIHUMMER_DATABASE_URL", &url),
        ("AIHUMMER_DEFAULT_WORKSPACE_ID", WORKSPACE),
    ]);
    setup.wait_ready(Duration::from_secs(30)).await;
    drop(setup);
    let pool = db.pool().await;
    sqlx::query(
        "INSERT INTO outbox (workspace_id, idempotency_key, payload)
         SELECT $1::uuid, 'bench-' || n, jsonb_build_object('text', 'reply ' || n)
         FROM generate_series(1, $2) AS n",
    )
    .bind(WORKSPACE)
    .bind(REPLIES)
    .execute(&pool)
    .await
    .expect("queue replies");

    let started = Instant::now();
    let env = [
        ("AIHUMMER_DATABASE_URL", url.as_str()),
        ("AIHUMMER_REPLY_WEBHOOK_URL", hook.as_str()),
    ];
    let gws: Vec<Gateway> = (0..gateways).map(|_| Gateway::start(&env)).collect();
    wait_for(
        Duration::from_secs(300),
        "every reply delivered",
        || async {
            let open: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status <> 'delivered'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (open == 0).then_some(())
        },
    )
    .await;
    let elapsed = started.elapsed();
    drop(gws);
    REPLIES as f64 / elapsed.as_secs_f64()
}

#[tokio::test]
#[ignore = "benchmark: run explicitly on the release build"]
async fn bench_outbox_deliveries_per_second() {
    for gateways in [1, 2] {
        let rate = deliveries_per_second(gateways).await;
        println!(
            "outbox: {REPLIES} replies, {gateways} gateway(s): {rate:.0} deliveries/s (startup included)"
        );
    }
}
