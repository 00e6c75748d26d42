//! Leader failover: three gateways on one database; kill -9 the leader, then SIGTERM the
//! next one; the time until another gateway reports leadership on `/healthz`. The
//! baseline is PostgreSQL's own floor: a session waiting on the same kind of advisory
//! lock, timed from its holder's connection dropping (kill -9) or unlocking (a resign).

use std::path::Path;
use std::time::Duration;

use aihummer_tests::{Gateway, TestDb};
use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use sqlx::{Connection, PgConnection};
use tokio::time::Instant;

use crate::report::{Report, ms};

/// An advisory lock key of the bench's own ("bench" in ASCII), apart from the gateway's.
const LOCK_KEY: i64 = 0x0062_656e_6368;

/// Which of `gateways` reports `"leader": true` on `/healthz`, if one does.
async fn leader(client: &reqwest::Client, gateways: &[&Gateway]) -> Option<usize> {
    for (i, gateway) in gateways.iter().enumerate() {
        let answer = client.get(gateway.url("/healthz")).send().await.ok()?;
        let body: serde_json::Value = answer.json().await.ok()?;
        if body["leader"] == true {
            return Some(i);
        }
    }
    None
}

/// Polls until one of `gateways` leads; its index and the time it took.
async fn next_leader(
    client: &reqwest::Client,
    gateways: &[&Gateway],
    deadline: Duration,
) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    loop {
        if let Some(i) = leader(client, gateways).await {
            return Ok((i, started.elapsed()));
        }
        if started.elapsed() > deadline {
            bail!("no gateway took the lead within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The advisory-lock handoff between two bare sessions: the holder drops its connection
/// (`kill`) or unlocks; the time until the queued waiter holds the lock.
async fn lock_handoff(url: &str, kill: bool) -> anyhow::Result<Duration> {
    let mut holder = PgConnection::connect(url).await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut holder)
        .await?;
    let mut waiter = PgConnection::connect(url).await?;
    let waiting = tokio::spawn(async move {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut waiter)
            .await
            .map(|_| Instant::now())
    });
    let mut admin = PgConnection::connect(url).await?;
    let queued_by = Instant::now() + Duration::from_secs(10);
    loop {
        let queued: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&mut admin)
        .await?;
        if queued > 0 {
            break;
        }
        if Instant::now() > queued_by {
            bail!("the waiting session never queued for the lock");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    if kill {
        // Dropping the connection closes its socket without a goodbye, as a killed
        // process's does.
        drop(holder);
    } else {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOCK_KEY)
            .execute(&mut holder)
            .await?;
    }
    let got = waiting.await??;
    Ok(got - started)
}

/// One round on `url` (migrated): three gateways; the leader killed, then the next one
/// terminated. Returns the two times until another gateway led.
async fn round(bin: &Path, url: &str) -> anyhow::Result<(Duration, Duration)> {
    let env = [("AIHUMMER_DATABASE_URL", url), ("AIHUMMER_LOG", "warn")];
    let mut gateways: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start_with(bin, &env, |_| {}))
        .collect();
    for gateway in &gateways {
        gateway.wait_ready(Duration::from_secs(60)).await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let all: Vec<&Gateway> = gateways.iter().collect();
    let (first, _) = next_leader(&client, &all, Duration::from_secs(30)).await?;

    let killed = gateways.remove(first);
    let started = Instant::now();
    killed.signal(Signal::SIGKILL);
    let rest: Vec<&Gateway> = gateways.iter().collect();
    let (second, _) = next_leader(&client, &rest, Duration::from_secs(60)).await?;
    let after_kill = started.elapsed();
    drop(killed);

    let resigning = gateways.remove(second);
    let started = Instant::now();
    resigning.signal(Signal::SIGTERM);
    let rest: Vec<&Gateway> = gateways.iter().collect();
    next_leader(&client, &rest, Duration::from_secs(60)).await?;
    Ok((after_kill, started.elapsed()))
}

/// `times` as "median (min–max, n runs)".
fn median_of(mut times: Vec<Duration>) -> String {
    times.sort();
    match (times.first(), times.last()) {
        (Some(min), Some(max)) if times.len() > 1 => format!(
            "{} ({:.1}–{}, {} runs)",
            ms(times[times.len() / 2]),
            min.as_secs_f64() * 1000.0,
            ms(*max),
            times.len()
        ),
        _ => times.first().map_or_else(String::new, |t| ms(*t)),
    }
}

/// Runs the scenario with the gateway at `bin`, `rounds` times.
pub async fn run(bin: &Path, rounds: usize) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "Leader failover",
        "two bare PostgreSQL sessions handing over an advisory lock (holder's connection \
         dropped / unlocked), the floor any election on it can reach",
    );
    let db = TestDb::create().await;
    let url = db.url();
    let setup = Gateway::start_with(bin, &[("AIHUMMER_DATABASE_URL", url.as_str())], |_| {});
    setup.wait_ready(Duration::from_secs(60)).await;
    drop(setup);
    let (mut kills, mut terms) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (kill, term) = round(bin, &url).await?;
        kills.push(kill);
        terms.push(term);
    }
    let (mut floor_kill, mut floor_term) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        floor_kill.push(
            lock_handoff(&url, true)
                .await
                .context("the lock baseline")?,
        );
        floor_term.push(
            lock_handoff(&url, false)
                .await
                .context("the lock baseline")?,
        );
    }
    report
        .figure("next leader after kill -9 of the leader", median_of(kills))
        .baseline(median_of(floor_kill));
    report
        .figure("next leader after SIGTERM of the leader", median_of(terms))
        .baseline(median_of(floor_term));
    report.note(
        "Three gateways on one database, `/healthz` polled every 2 ms from just before the \
         signal; the figure includes that polling.",
    );
    Ok(report)
}
