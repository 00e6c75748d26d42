//! The retention purge against a real PostgreSQL: old delivered replies and answered
//! messages go in bounded statements, everything younger or still referenced stays.

use std::time::Duration;

use aihummer_gateway::migrate;
use aihummer_gateway::outbox::housekeeping::{purge_answered, purge_delivered};
use aihummer_tests::TestDb;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio::time::Instant;

const WORKSPACE: &str = "5c0d7e1f-8a2b-4c3d-9e4f-a5b6c7d8e9f0";
const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A migrated database with one workspace, and an owner pool on it.
async fn migrated() -> (TestDb, PgPool) {
    let db = TestDb::create().await;
    let options: PgConnectOptions = db.url().parse().expect("test database URL");
    migrate::apply(&options, |_| {}).await.expect("migrations");
    let pool = db.pool().await;
    sqlx::query("INSERT INTO workspaces (id) VALUES ($1::uuid)")
        .bind(WORKSPACE)
        .execute(&pool)
        .await
        .expect("workspace");
    (db, pool)
}

/// Inserts `n` inbound messages received `age` ago, each with a reply in `status`
/// (delivered `age` ago when delivered); `reply = false` leaves the messages unanswered
/// (their replies already purged).
async fn insert(pool: &PgPool, n: i64, age: &str, status: &str, reply: bool) {
    sqlx::query(
        "WITH m AS (
             INSERT INTO inbound_messages
                 (workspace_id, channel, external_id, idempotency_key, body, received_at)
             SELECT $1::uuid, 'c', g::text, gen_random_uuid()::text, 'x', now() - $3::interval
             FROM generate_series(1, $2) g
             RETURNING id
         )
         INSERT INTO outbox
             (workspace_id, inbound_id, idempotency_key, payload, status, delivered_at)
         SELECT $1::uuid, m.id, gen_random_uuid()::text, '{}', $4,
                CASE WHEN $4 = 'delivered' THEN now() - $3::interval END
         FROM m WHERE $5",
    )
    .bind(WORKSPACE)
    .bind(n)
    .bind(age)
    .bind(status)
    .bind(reply)
    .execute(pool)
    .await
    .expect("insert rows");
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test]
async fn old_delivered_replies_and_answered_messages_are_purged_in_bounded_batches() {
    let (_db, pool) = migrated().await;
    insert(&pool, 5_000, "2 days", "delivered", true).await;
    // Young delivered replies, and old ones not delivered yet, are kept.
    insert(&pool, 300, "1 hour", "delivered", true).await;
    insert(&pool, 200, "2 days", "pending", true).await;
    insert(&pool, 100, "2 days", "dead", true).await;
    let later = Instant::now() + Duration::from_secs(60);

    let replies = purge_delivered(&pool, RETENTION, 1_000, later)
        .await
        .expect("purge replies");
    assert_eq!(replies.rows, 5_000);
    assert!(replies.complete);
    assert!(
        replies.statements >= 5,
        "5,000 rows in statements of 1,000 took {} statements",
        replies.statements
    );
    let outbox = "SELECT status || ':' || count(*) FROM outbox GROUP BY status ORDER BY status";
    let left: Vec<String> = sqlx::query_scalar(outbox)
        .fetch_all(&pool)
        .await
        .expect("outbox by status");
    assert_eq!(left, ["dead:100", "delivered:300", "pending:200"]);

    // The 5,000 messages whose replies went are answered; the 600 others keep their reply.
    let messages = purge_answered(&pool, RETENTION, 1_000, later)
        .await
        .expect("purge messages");
    assert_eq!((messages.rows, messages.complete), (5_000, true));
    assert!(messages.statements >= 5, "{messages:?}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM inbound_messages").await,
        600
    );
    let orphans = "SELECT count(*) FROM outbox o
                   WHERE NOT EXISTS (SELECT 1 FROM inbound_messages i WHERE i.id = o.inbound_id)";
    assert_eq!(count(&pool, orphans).await, 0);

    // A second pass finds nothing more.
    let again = purge_delivered(&pool, RETENTION, 1_000, later)
        .await
        .expect("purge again");
    assert_eq!((again.rows, again.complete), (0, true));
}

#[tokio::test]
async fn a_pass_out_of_time_stops_after_a_batch_and_the_next_pass_goes_on() {
    let (_db, pool) = migrated().await;
    insert(&pool, 2_500, "2 days", "delivered", true).await;
    insert(&pool, 2_500, "3 days", "delivered", false).await;

    // A budget already spent still lets each pass purge one batch, so it makes progress.
    let spent = Instant::now();
    let first = purge_delivered(&pool, RETENTION, 1_000, spent)
        .await
        .expect("first pass");
    assert_eq!(
        (first.rows, first.statements, first.complete),
        (1_000, 1, false)
    );
    let first = purge_answered(&pool, RETENTION, 1_000, spent)
        .await
        .expect("first pass, messages");
    assert_eq!(
        (first.rows, first.statements, first.complete),
        (1_000, 1, false)
    );

    let later = Instant::now() + Duration::from_secs(60);
    let rest = purge_delivered(&pool, RETENTION, 1_000, later)
        .await
        .expect("next pass");
    assert_eq!((rest.rows, rest.complete), (1_500, true));
    let rest = purge_answered(&pool, RETENTION, 1_000, later)
        .await
        .expect("next pass, messages");
    assert_eq!((rest.rows, rest.complete), (4_000, true));
    assert_eq!(count(&pool, "SELECT count(*) FROM outbox").await, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM inbound_messages").await,
        0
    );
}
