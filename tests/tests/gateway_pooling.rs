//! The gateway behind a real PgBouncer: the owner connection (migrations, leadership)
//! needs a session of its own, so a transaction pooler there is refused at startup with
//! the variable named, while a session pooler is fine.

use std::str::FromStr;
use std::time::Duration;

use aihummer_gateway::session::{self, SessionError};
use aihummer_tests::pgbouncer::{PgBouncer, PoolMode};
use aihummer_tests::{Gateway, TestDb, get_json, http, wait_for};
use sqlx::postgres::PgConnectOptions;

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_session_is_refused_through_a_transaction_pooler_and_accepted_directly() {
    let db = TestDb::create().await;
    let Some(bouncer) = PgBouncer::start(&db, PoolMode::Transaction, &["postgres"]).await else {
        return;
    };
    let pooled = PgConnectOptions::from_str(&bouncer.url(&db, "postgres")).expect("url");
    match session::open(&pooled, TIMEOUT).await {
        Err(err @ SessionError::TransactionPooler { .. }) => {
            assert!(err.to_string().contains("AIHUMMER_DATABASE_URL"), "{err}")
        }
        Err(other) => panic!("expected a transaction pooler, got: {other}"),
        Ok(_) => panic!(
            "a transaction-pooled connection passed as a session; pgbouncer log:\n{}",
            bouncer.logs()
        ),
    }
    let direct = PgConnectOptions::from_str(&db.url()).expect("url");
    session::open(&direct, TIMEOUT)
        .await
        .expect("a direct connection is a session");
}

#[tokio::test]
async fn a_gateway_whose_owner_url_goes_through_a_transaction_pooler_refuses_to_start() {
    let db = TestDb::create().await;
    let Some(bouncer) = PgBouncer::start(&db, PoolMode::Transaction, &["postgres"]).await else {
        return;
    };
    let url = bouncer.url(&db, "postgres");
    let mut gw = Gateway::start(&[("AIHUMMER_DATABASE_URL", &url)]);
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    let logs = gw.logs();
    assert_eq!(status.code(), Some(3), "{logs}");
    assert!(
        logs.contains("AIHUMMER_DATABASE_URL goes through a transaction pooler"),
        "{logs}"
    );
    // Refused before any migration ran.
    let pool = db.pool().await;
    let migrated: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .expect("query");
    assert!(!migrated);
}

#[tokio::test]
async fn a_gateway_whose_owner_url_goes_through_a_session_pooler_serves_and_leads() {
    let db = TestDb::create().await;
    let Some(bouncer) = PgBouncer::start(&db, PoolMode::Session, &["postgres"]).await else {
        return;
    };
    let url = bouncer.url(&db, "postgres");
    let gw = Gateway::start(&[("AIHUMMER_DATABASE_URL", &url)]);
    gw.wait_ready(Duration::from_secs(30)).await;
    let client = http();
    wait_for(Duration::from_secs(10), "the gateway to lead", || async {
        let (_, health) = get_json(&client, &gw.url("/healthz")).await?;
        (health["leader"] == true).then_some(())
    })
    .await;
}
