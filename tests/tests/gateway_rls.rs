//! Row-level security as the restricted `aihummer_app` role: one workspace never sees or
//! writes another's rows, and a transaction with no tenant sees nothing. The app pool's
//! connections switch to that role per transaction only, and an app login that could skip
//! row-level security itself is refused.

use std::str::FromStr;
use std::time::Duration;

use aihummer_gateway::inbound::batch::Batch;
use aihummer_gateway::inbound::{Message, store};
use aihummer_gateway::migrate;
use aihummer_gateway::responder::Builtin;
use aihummer_gateway::tenant::{self, AppPool};
use aihummer_tests::pools::pools_as;
use aihummer_tests::{Gateway, TestDb};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use uuid::Uuid;

struct Fixture {
    db: TestDb,
    owner: PgPool,
    app: AppPool,
    a: Uuid,
    b: Uuid,
}

/// A migrated database with two workspaces holding one message each, and an app pool
/// that connects through a login role whose transactions switch to `aihummer_app`, as the
/// gateway's do. One connection only, so every transaction reuses the same session.
async fn fixture() -> Fixture {
    let mut db = TestDb::create().await;
    let options = PgConnectOptions::from_str(&db.url()).expect("url");
    migrate::apply(&options, |_| {}).await.expect("migrate");
    let owner = db.pool().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for (ws, text) in [(a, "for a"), (b, "for b")] {
        sqlx::query("INSERT INTO workspaces (id, name) VALUES ($1, $2)")
            .bind(ws)
            .bind(text)
            .execute(&owner)
            .await
            .expect("workspace");
        sqlx::query(
            "INSERT INTO inbound_messages (workspace_id, channel, external_id, idempotency_key, body)
             VALUES ($1, 'test', 'ext', $2, $2)",
        )
        .bind(ws)
        .bind(text)
        .execute(&owner)
        .await
        .expect("message");
    }
    let login = db.app_login().await;
    let app = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url_as(&login))
        .await
        .expect("app pool");
    let app = AppPool::restricted(app);
    Fixture {
        db,
        owner,
        app,
        a,
        b,
    }
}

#[tokio::test]
async fn a_workspace_sees_only_its_own_rows() {
    let f = fixture().await;
    let mut tx = tenant::begin(&f.app, f.a).await.expect("tenant tx");
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM inbound_messages")
        .fetch_all(&mut *tx)
        .await
        .expect("select");
    assert_eq!(bodies, ["for a"]);
    let of_b: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inbound_messages WHERE workspace_id = $1")
            .bind(f.b)
            .fetch_one(&mut *tx)
            .await
            .expect("select b");
    assert_eq!(of_b, 0);
    let workspaces: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM workspaces")
        .fetch_all(&mut *tx)
        .await
        .expect("workspaces");
    assert_eq!(workspaces, [f.a]);
    let updated =
        sqlx::query("UPDATE inbound_messages SET body = 'hijacked' WHERE workspace_id = $1")
            .bind(f.b)
            .execute(&mut *tx)
            .await
            .expect("update");
    assert_eq!(updated.rows_affected(), 0);
    tx.commit().await.expect("commit");
    let untouched: String =
        sqlx::query_scalar("SELECT body FROM inbound_messages WHERE workspace_id = $1")
            .bind(f.b)
            .fetch_one(&f.owner)
            .await
            .expect("owner read");
    assert_eq!(untouched, "for b");
}

#[tokio::test]
async fn a_workspace_cannot_write_into_another() {
    let f = fixture().await;
    let mut tx = tenant::begin(&f.app, f.a).await.expect("tenant tx");
    let err = sqlx::query(
        "INSERT INTO inbound_messages (workspace_id, channel, external_id, idempotency_key, body)
         VALUES ($1, 'test', 'ext', 'sneaky', 'sneaky')",
    )
    .bind(f.b)
    .execute(&mut *tx)
    .await
    .expect_err("writing into another workspace must fail");
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("42501"), "{err}");
    drop(tx);
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM inbound_messages WHERE idempotency_key = 'sneaky'",
    )
    .fetch_one(&f.owner)
    .await
    .expect("owner read");
    assert_eq!(count, 0);
}

#[tokio::test]
async fn with_no_tenant_set_nothing_is_visible_even_on_a_connection_a_tenant_used_before() {
    let f = fixture().await;
    let mut tx = tenant::begin(&f.app, f.a).await.expect("tenant tx");
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_messages")
        .fetch_one(&mut *tx)
        .await
        .expect("select");
    assert_eq!(seen, 1);
    tx.commit().await.expect("commit");

    // The pool has one connection: this is the same session, after the tenant's transaction.
    let mut tx = f.app.pool().begin().await.expect("plain tx");
    for table in ["workspaces", "inbound_messages", "outbox"] {
        let row = sqlx::query(&format!("SELECT count(*) AS n FROM {table}"))
            .fetch_one(&mut *tx)
            .await
            .expect("select");
        assert_eq!(
            row.get::<i64, _>("n"),
            0,
            "{table} leaked rows with no tenant set"
        );
    }
}

#[tokio::test]
async fn the_app_role_is_neither_owner_superuser_nor_bypassrls_and_cannot_touch_job_runs() {
    let f = fixture().await;
    let (superuser, bypass): (bool, bool) = sqlx::query_as(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'aihummer_app'",
    )
    .fetch_one(&f.owner)
    .await
    .expect("role");
    assert!(!superuser && !bypass);
    let owned: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tableowner = 'aihummer_app'")
            .fetch_one(&f.owner)
            .await
            .expect("owned");
    assert_eq!(owned, 0);
    let err = sqlx::query("SELECT count(*) FROM job_runs")
        .fetch_one(f.app.pool())
        .await
        .expect_err("job_runs is not for the app role");
    assert!(err.to_string().contains("permission denied"), "{err}");
}

#[tokio::test]
async fn a_gateway_serves_through_the_app_role_when_one_is_configured() {
    let mut f = fixture().await;
    let login = f.db.app_login().await;
    let app_url = f.db.url_as(&login);
    let gw = Gateway::start(&[
        ("AIHUMMER_DATABASE_URL", &f.db.url()),
        ("AIHUMMER_DB_APP_URL", &app_url),
    ]);
    gw.wait_ready(Duration::from_secs(30)).await;
    let logs = gw.logs();
    assert!(!logs.contains("serving on the owner pool"), "{logs}");
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = current_database() AND usename::text = $1",
    )
    .bind(&login)
    .fetch_all(&f.owner)
    .await
    .expect("activity");
    assert_eq!(users, [login]);
}

#[tokio::test]
async fn the_app_pool_is_in_the_app_role_inside_a_serving_transaction_and_only_there() {
    let mut db = TestDb::create().await;
    let options = PgConnectOptions::from_str(&db.url()).expect("url");
    migrate::apply(&options, |_| {}).await.expect("migrate");
    let login = db.app_login().await;
    let pools = pools_as(&db, &login).await;
    let current_user = "SELECT current_user::text";

    // Startup's own role check ran a serving transaction on the pool's one connection.
    let outside: String = sqlx::query_scalar(current_user)
        .fetch_one(pools.app.pool())
        .await
        .expect("outside");
    assert_eq!(
        outside, login,
        "a pooled connection must not hold the app role"
    );
    let mut tx = tenant::begin(&pools.app, Uuid::new_v4()).await.expect("tx");
    let inside: String = sqlx::query_scalar(current_user)
        .fetch_one(&mut *tx)
        .await
        .expect("inside");
    assert_eq!(inside, "aihummer_app");
    tx.commit().await.expect("commit");
    let after: String = sqlx::query_scalar(current_user)
        .fetch_one(pools.app.pool())
        .await
        .expect("after");
    assert_eq!(after, login, "the role must end with the transaction");
    pools.app.close().await;
    pools.owner.close().await;
}

/// A fresh database with the migrations applied (which create `aihummer_app`).
async fn migrated() -> TestDb {
    let db = TestDb::create().await;
    let options = PgConnectOptions::from_str(&db.url()).expect("url");
    migrate::apply(&options, |_| {}).await.expect("migrate");
    db
}

/// Starts a gateway serving through `app_login` and returns its exit code and log.
async fn refused(db: &TestDb, app_login: &str) -> (Option<i32>, String) {
    let app_url = db.url_as(app_login);
    let mut gw = Gateway::start(&[
        ("AIHUMMER_DATABASE_URL", &db.url()),
        ("AIHUMMER_DB_APP_URL", &app_url),
    ]);
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    (status.code(), gw.logs())
}

#[tokio::test]
async fn a_superuser_app_login_is_refused_at_startup_naming_the_variable() {
    let db = TestDb::create().await;
    // The test server's `postgres` is a superuser, and may switch to any role.
    let (code, logs) = refused(&db, "postgres").await;
    assert_eq!(code, Some(3), "{logs}");
    assert!(
        logs.contains("AIHUMMER_DB_APP_URL is unsafe")
            && logs.contains("login role postgres is SUPERUSER"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_bypassrls_app_login_is_refused_at_startup() {
    let mut db = migrated().await;
    let login = db.login("BYPASSRLS IN ROLE aihummer_app").await;
    let (code, logs) = refused(&db, &login).await;
    assert_eq!(code, Some(3), "{logs}");
    assert!(
        logs.contains(&format!("login role {login} has BYPASSRLS")),
        "{logs}"
    );
}

#[tokio::test]
async fn an_app_login_that_cannot_switch_to_the_app_role_is_refused_at_startup() {
    let mut db = migrated().await;
    let login = db.login("").await;
    let (code, logs) = refused(&db, &login).await;
    assert_eq!(code, Some(3), "{logs}");
    assert!(
        logs.contains(&format!("GRANT aihummer_app TO {login}")),
        "{logs}"
    );
}

#[tokio::test]
async fn an_inheriting_login_stores_a_message_in_one_statement_that_leaves_no_tenant_behind() {
    let mut f = fixture().await;
    let login = f.db.app_login().await;
    let pools = pools_as(&f.db, &login).await;
    assert!(
        pools.app.single_statement(),
        "an INHERIT member of aihummer_app"
    );
    let message = Message {
        channel: "test".into(),
        external_id: "one".into(),
        text: "hello".into(),
    };
    let batch = Batch::default();

    let first = store::accept(&pools.app, &batch, f.a, "key:one", &message, &Builtin)
        .await
        .expect("stored");
    assert!(!first.replayed);
    let again = store::accept(&pools.app, &batch, f.a, "key:one", &message, &Builtin)
        .await
        .expect("replayed");
    assert_eq!((again.replayed, &again.result), (true, &first.result));
    let other = store::accept(&pools.app, &batch, f.b, "key:one", &message, &Builtin)
        .await
        .expect("the same key in another workspace");
    assert!(!other.replayed);
    let stored: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT workspace_id, count(*) FROM outbox GROUP BY 1 ORDER BY 1")
            .fetch_all(&f.owner)
            .await
            .expect("outbox");
    let mut expected = vec![(f.a, 1), (f.b, 1)];
    expected.sort();
    assert_eq!(stored, expected);

    // The connection that just stored for a workspace is back with no tenant: as the login
    // and outside any transaction, it sees no rows at all.
    // It is the one kept warm for the next message.
    let mut conn = pools
        .app
        .warm()
        .acquire(pools.app.pool())
        .await
        .expect("the connection that just stored");
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_messages")
        .fetch_one(&mut *conn)
        .await
        .expect("count as the login");
    assert_eq!(visible, 0);
    drop(conn);
    pools.app.close().await;
    pools.owner.close().await;
}

#[tokio::test]
async fn a_login_not_held_to_the_app_roles_policies_by_itself_switches_role_per_transaction() {
    let mut f = fixture().await;
    // No inherited privileges; and privileges of the owner too, whose policy lets all through.
    let noinherit = f.db.login("NOINHERIT IN ROLE aihummer_app").await;
    let with_owner = f.db.login("IN ROLE aihummer_app, postgres").await;
    for login in [noinherit, with_owner] {
        let pools = pools_as(&f.db, &login).await;
        assert!(!pools.app.single_statement(), "{login}");
        let message = Message {
            channel: "test".into(),
            external_id: login.clone(),
            text: "hello".into(),
        };
        let batch = Batch::default();
        let stored = store::accept(&pools.app, &batch, f.a, &login, &message, &Builtin)
            .await
            .expect("stored");
        assert!(!stored.replayed, "{login}");
        pools.app.close().await;
        pools.owner.close().await;
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE workspace_id = $1")
        .bind(f.a)
        .fetch_one(&f.owner)
        .await
        .expect("outbox");
    assert_eq!(count, 2);
}
