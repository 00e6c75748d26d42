//! Inbound at queue speed: signed messages with unique keys accepted per second by one
//! gateway serving through the app role (row-level security on, as in production), closed
//! loop over 16 connections; then every message is checked to have exactly one queued
//! reply, and a replay of some keys to queue nothing more.

use std::path::Path;
use std::time::Duration;

use aihummer_tests::{Gateway, INBOUND_SECRET, TestDb};
use sqlx::PgPool;

use crate::load;
use crate::report::{Report, percentile, rate, thousands};

/// The workspace messages go to.
pub const WORKSPACE: &str = "6a1e0c4d-2b3f-4a5e-8c7d-9e0f1a2b3c4d";
const CONNECTIONS: usize = 16;

/// Starts a gateway serving inbound through a login that is a member of `aihummer_app`,
/// on a fresh `db` (migrated first by a gateway on the owner URL), with `extra` settings.
pub async fn app_role_gateway(bin: &Path, db: &mut TestDb, extra: &[(&str, &str)]) -> Gateway {
    let owner = db.url();
    let setup = Gateway::start_with(bin, &[("AIHUMMER_DATABASE_URL", &owner)], |_| {});
    setup.wait_ready(Duration::from_secs(60)).await;
    drop(setup);
    let login = db.app_login().await;
    let app = db.url_as(&login);
    let mut env = vec![
        ("AIHUMMER_DATABASE_URL", owner.as_str()),
        ("AIHUMMER_DB_APP_URL", app.as_str()),
        ("AIHUMMER_INBOUND_SECRET", INBOUND_SECRET),
        ("AIHUMMER_DEFAULT_WORKSPACE_ID", WORKSPACE),
        ("AIHUMMER_LOG", "warn"),
    ];
    env.extend_from_slice(extra);
    let gateway = Gateway::start_with(bin, &env, |_| {});
    gateway.wait_ready(Duration::from_secs(60)).await;
    gateway
}

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Runs the scenario with the gateway at `bin`.
pub async fn run(bin: &Path, quick: bool) -> anyhow::Result<Report> {
    let (messages, deadline) = if quick {
        (10_000, Duration::from_secs(30))
    } else {
        (40_000, Duration::from_secs(90))
    };
    let mut report = Report::new(
        "Inbound",
        "`/v1/ping` on the same gateway over the same connections: HTTP without the database",
    );
    let mut db = TestDb::create().await;
    let gateway = app_role_gateway(bin, &mut db, &[]).await;
    let url = gateway.url("");
    // Warm the pools and connections before the clock starts.
    let warm = load::closed_loop(&url, load::prepare("warm", 500), CONNECTIONS, deadline).await?;
    let outcome = load::closed_loop(
        &url,
        load::prepare("bench", messages),
        CONNECTIONS,
        deadline,
    )
    .await?;
    let accepted = rate(outcome.ok, outcome.elapsed);
    let (ping, _) = load::get_rate(
        &format!("{url}/v1/ping"),
        CONNECTIONS,
        Duration::from_secs(if quick { 2 } else { 5 }),
    )
    .await?;
    report
        .figure(
            format!(
                "accepted/s, 1 gateway, {CONNECTIONS} connections, {} messages",
                outcome.ok
            ),
            thousands(accepted),
        )
        .baseline(format!("{} pings/s", thousands(ping)))
        .target("≥ 5,000", accepted >= 5000.0);
    report.figure(
        "inbound latency p50 / p99",
        format!(
            "{:.1} / {:.1} ms",
            percentile(&outcome.latencies, 50.0),
            percentile(&outcome.latencies, 99.0)
        ),
    );
    // A refused request is a missed target, not a failed run: the run fails on a reply
    // duplicated or lost (below), and an overloaded gateway answers 503 by design.
    let failed = outcome.failed + warm.failed;
    report
        .figure("inbound requests failed", thousands(failed as f64))
        .target("0", failed == 0);
    if let Some(error) = outcome
        .first_error
        .as_deref()
        .or(warm.first_error.as_deref())
    {
        report.note(format!("The first failed inbound request: {error}."));
    }

    // A replay of keys already stored returns 200 and queues nothing.
    let pool = db.pool().await;
    let before = count(&pool, "SELECT count(*) FROM outbox").await?;
    let replay =
        load::closed_loop(&url, load::prepare("bench", 200), CONNECTIONS, deadline).await?;
    let after = count(&pool, "SELECT count(*) FROM outbox").await?;
    let messages_stored = count(&pool, "SELECT count(*) FROM inbound_messages").await?;
    let expected = (outcome.ok + warm.ok) as i64;
    report
        .figure(
            "replies queued / messages accepted (with the warm-up's)",
            format!(
                "{} / {}",
                thousands(after as f64),
                thousands(expected as f64)
            ),
        )
        .target("one each", after == expected && messages_stored == expected);
    if replay.failed > 0 || after != before {
        report.fail(format!(
            "a replay of 200 keys: {} failed, {} replies queued",
            replay.failed,
            after - before
        ));
    }
    if after != expected || messages_stored != expected {
        report.fail(format!(
            "{expected} messages accepted but {messages_stored} stored with {after} replies"
        ));
    }
    pool.close().await;
    drop(gateway);
    Ok(report)
}
