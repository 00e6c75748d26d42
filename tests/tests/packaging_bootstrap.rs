//! `packaging/bootstrap.sql` on a fresh database name: run as the documented psql command,
//! it creates the owner, the database and a login role in `aihummer_app`, and a gateway
//! started with the resulting URLs migrates as the owner and serves inbound through the
//! app role on the first try.

use std::process::Command;
use std::time::Duration;

use aihummer_tests::packaging::packaging_dir;
use aihummer_tests::{Gateway, INBOUND_SECRET, http, post_inbound, server_url};
use serde_json::json;
use sqlx::PgPool;

const WORKSPACE: &str = "0b6c2a1e-3f4d-4e5a-8b9c-0d1e2f3a4b5c";

/// The database and roles the test made, dropped afterwards (also on panic).
struct Bootstrapped {
    db: String,
    owner: String,
    login: String,
}

impl Drop for Bootstrapped {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-q", "-d", &format!("{}/postgres", server_url())])
            .args([
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
            ])
            .args(["-c", &format!("DROP ROLE IF EXISTS {}", self.login)])
            .args(["-c", &format!("DROP ROLE IF EXISTS {}", self.owner)])
            .status();
    }
}

/// Runs bootstrap.sql with psql as the superuser; returns whether it succeeded and its output.
fn bootstrap(b: &Bootstrapped, extra: &[&str]) -> (bool, String) {
    let out = Command::new("psql")
        .args(["-X", "-d", &format!("{}/postgres", server_url())])
        .args(["-v", &format!("db={}", b.db)])
        .args(["-v", &format!("owner={}", b.owner)])
        .args(["-v", &format!("app_login={}", b.login)])
        .args(extra)
        .arg("-f")
        .arg(packaging_dir().join("bootstrap.sql"))
        .output()
        .expect("run psql");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

fn url(role: &str, password: &str, db: &str) -> String {
    let base = server_url();
    let host = base.rsplit('@').next().unwrap_or("127.0.0.1:5432");
    format!("postgres://{role}:{password}@{host}/{db}")
}

#[tokio::test]
async fn a_gateway_serves_inbound_through_the_app_role_on_a_database_made_by_bootstrap_sql() {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let b = Bootstrapped {
        db: format!("aihummer_bootstrap_{id}"),
        owner: format!("aihummer_bs_owner_{id}"),
        login: format!("aihummer_bs_web_{id}"),
    };
    let passwords = [
        "-v",
        "owner_password='owner-pw'",
        "-v",
        "app_password='app-pw'",
    ];

    // Without the passwords it refuses, naming the missing variable, and creates nothing.
    let (ok, said) = bootstrap(&b, &[]);
    assert!(!ok && said.contains("owner_password"), "{said}");
    let (ok, said) = bootstrap(&b, &passwords);
    assert!(ok, "{said}");
    // Running it again is safe.
    let (ok, said) = bootstrap(&b, &passwords);
    assert!(ok, "a second run: {said}");

    let owner_url = url(&b.owner, "owner-pw", &b.db);
    let app_url = url(&b.login, "app-pw", &b.db);
    let gw = Gateway::start(&[
        ("AIHUMMER_DATABASE_URL", &owner_url),
        ("AIHUMMER_DB_APP_URL", &app_url),
        ("AIHUMMER_INBOUND_SECRET", INBOUND_SECRET),
        ("AIHUMMER_DEFAULT_WORKSPACE_ID", WORKSPACE),
    ]);
    gw.wait_ready(Duration::from_secs(30)).await;
    let body = json!({"channel": "sms", "external_id": "m-1", "text": "hello"});
    let (status, answer) = post_inbound(&http(), &gw.url(""), &body, Some("k-1"))
        .await
        .expect("an answer");
    assert_eq!(status, 200, "{answer}\n{}", gw.logs());
    let logs = gw.logs();
    assert!(!logs.contains("serving on the owner pool"), "{logs}");

    // The tables belong to the owner role, and the message was written by the app login.
    let admin = PgPool::connect(&format!("{}/{}", server_url(), b.db))
        .await
        .expect("connect as the superuser");
    let owner: String = sqlx::query_scalar(
        "SELECT tableowner::text FROM pg_tables WHERE tablename = 'inbound_messages'",
    )
    .fetch_one(&admin)
    .await
    .expect("owner");
    assert_eq!(owner, b.owner);
    let serving: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity WHERE datname = current_database() AND usename::text = $1",
    )
    .bind(&b.login)
    .fetch_all(&admin)
    .await
    .expect("activity");
    assert_eq!(
        serving,
        std::slice::from_ref(&b.login),
        "the gateway serves through the app login"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM inbound_messages")
        .fetch_one(&admin)
        .await
        .expect("count");
    assert_eq!(stored, 1);
    admin.close().await;
    drop(gw);
}
