//! Migrations under an advisory lock: concurrent starters, failures, conflicts and a
//! database that is newer than the binary.

use std::time::Duration;

use aihummer_gateway::migrate::{LOCK_KEY, migrator};
use aihummer_tests::{Gateway, TestDb, get_json, http, wait_for};
use sqlx::PgPool;

const READY: Duration = Duration::from_secs(60);

fn embedded_versions() -> Vec<i64> {
    migrator().iter().map(|m| m.version).collect()
}

async fn applied(pool: &PgPool) -> Vec<(i64, bool)> {
    sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .expect("read _sqlx_migrations")
}

/// Holders of the migration lock (leadership, another advisory lock, is not counted).
async fn advisory_locks(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND d.datname = current_database()
           AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = $1",
    )
    .bind(LOCK_KEY)
    .fetch_one(pool)
    .await
    .expect("read pg_locks")
}

/// Runs one gateway until it is ready, then stops it: the database is fully migrated.
async fn migrate_with_a_gateway(db: &TestDb) {
    let mut gw = Gateway::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    gw.wait_ready(READY).await;
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(gw.wait_exit(Duration::from_secs(15)).await.code(), Some(0));
}

#[tokio::test]
async fn eight_gateways_starting_at_once_all_become_ready_and_apply_each_migration_once() {
    let db = TestDb::create().await;
    let url = db.url();
    let gateways: Vec<Gateway> = (0..8)
        .map(|_| Gateway::start(&[("AIHUMMER_DATABASE_URL", &url)]))
        .collect();
    for gw in &gateways {
        let ready = gw.wait_ready(READY).await;
        assert_eq!(ready["pid"], gw.pid());
    }
    let pool = db.pool().await;
    let versions = embedded_versions();
    assert_eq!(
        applied(&pool).await,
        versions.iter().map(|v| (*v, true)).collect::<Vec<_>>()
    );
    for gw in &gateways {
        let logs = gw.logs();
        assert!(
            !logs.contains("\"level\":\"ERROR\""),
            "a gateway logged an error:\n{logs}"
        );
        assert!(logs.contains("migrations up to date"), "{logs}");
    }
    assert_eq!(
        advisory_locks(&pool).await,
        0,
        "no migration lock may outlive startup"
    );
}

#[tokio::test]
async fn a_gateway_waiting_for_the_migration_lock_says_so_and_proceeds_when_it_is_free() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let mut holder = pool.acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *holder)
        .await
        .expect("take the migration lock");

    let gw = Gateway::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    let client = http();
    let url = gw.url("/readyz");
    wait_for(
        Duration::from_secs(15),
        "/readyz to report the wait",
        || async {
            match get_json(&client, &url).await {
                Some((503, body))
                    if body["reason"].as_str()?.contains("waiting for migrations") =>
                {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;

    let released: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *holder)
        .await
        .expect("release");
    assert!(released);
    gw.wait_ready(READY).await;
}

#[tokio::test]
async fn a_failing_migration_stops_the_gateway_leaves_no_lock_and_the_next_start_succeeds() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    // An object in the way of migration 4 makes it fail the way a bad migration would.
    sqlx::query("CREATE TABLE job_runs (unrelated int)")
        .execute(&pool)
        .await
        .expect("create the obstacle");

    let mut gw = Gateway::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(3), "log:\n{}", gw.logs());
    let logs = gw.logs();
    assert!(logs.contains("migration 4 failed"), "{logs}");
    // The server ends the backend a moment after the client goes; the lock must go with it.
    wait_for(
        Duration::from_secs(5),
        "the migration lock to be released",
        || async { (advisory_locks(&pool).await == 0).then_some(()) },
    )
    .await;
    assert_eq!(applied(&pool).await, vec![(1, true), (2, true), (3, true)]);

    sqlx::query("DROP TABLE job_runs")
        .execute(&pool)
        .await
        .expect("remove obstacle");
    let gw = Gateway::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    gw.wait_ready(READY).await;
    assert_eq!(applied(&pool).await.len(), embedded_versions().len());
}

#[tokio::test]
async fn a_migration_changed_after_it_was_applied_makes_the_gateway_refuse_to_start() {
    let db = TestDb::create().await;
    migrate_with_a_gateway(&db).await;

    let pool = db.pool().await;
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = 2")
        .execute(&pool)
        .await
        .expect("tamper with the checksum");

    let mut gw = Gateway::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(3));
    let logs = gw.logs();
    assert!(
        logs.contains("migration 2 was applied with different contents"),
        "{logs}"
    );
    wait_for(
        Duration::from_secs(5),
        "the migration lock to be released",
        || async { (advisory_locks(&pool).await == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn an_older_gateway_starts_and_serves_against_a_database_with_newer_migrations() {
    let db = TestDb::create().await;
    migrate_with_a_gateway(&db).await;

    // What a newer release would have applied: an expand-only change this binary does not
    // know, recorded the way the migrator records it.
    let pool = db.pool().await;
    let newer = embedded_versions().iter().max().copied().unwrap_or(0) + 1;
    sqlx::query("ALTER TABLE outbox ADD COLUMN priority integer NOT NULL DEFAULT 0")
        .execute(&pool)
        .await
        .expect("newer schema");
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'outbox priority', true, '\\xfeed'::bytea, 1)",
    )
    .bind(newer)
    .execute(&pool)
    .await
    .expect("record the newer migration");

    let gw = Gateway::start(&[("AIHUMMER_DATABASE_URL", &db.url())]);
    let ready = gw.wait_ready(READY).await;
    assert_eq!(ready["pid"], gw.pid());
    assert_eq!(applied(&pool).await.len(), embedded_versions().len() + 1);
}
