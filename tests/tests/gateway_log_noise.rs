//! Log lines that are not news stay out of an operator's INFO/WARN log: a follower waiting
//! in the leader lock's queue is not a slow statement when it stops, and a restart on an
//! already migrated database draws no `_sqlx_migrations ... already exists` notice.

use std::time::Duration;

use aihummer_tests::{Gateway, TestDb, wait_for};
use nix::sys::signal::Signal;

const READY: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_stopping_follower_and_a_second_start_log_no_slow_statement_or_migration_notice() {
    let db = TestDb::create().await;
    let url = db.url();
    let env = [("AIHUMMER_DATABASE_URL", url.as_str())];
    let leader = Gateway::start(&env);
    leader.wait_ready(READY).await;
    let mut follower = Gateway::start(&env);
    follower.wait_ready(READY).await;
    // Wait until the follower has stood in the lock's queue for longer than sqlx's default
    // slow-statement threshold (1s), as every follower does at a fleet's stop.
    let pool = db.pool().await;
    wait_for(
        Duration::from_secs(20),
        "the follower waiting in the leader lock's queue for over a second",
        || {
            let pool = pool.clone();
            async move {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'
                       AND query LIKE '%pg_advisory_lock%'
                       AND now() - query_start > interval '1200 milliseconds'",
                )
                .fetch_one(&pool)
                .await
                .ok()?;
                (waiting > 0).then_some(())
            }
        },
    )
    .await;
    follower.signal(Signal::SIGTERM);
    assert_eq!(follower.wait_exit(READY).await.code(), Some(0));
    let logs = follower.logs();
    assert!(!logs.contains("slow statement"), "{logs}");
    assert!(
        !logs.contains("_sqlx_migrations"),
        "a second start draws no migration-table notice:\n{logs}"
    );
    assert!(logs.contains("migrations up to date"), "{logs}");
}
