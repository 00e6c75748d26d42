//! Migrations: 8 gateways started at once on a fresh database, the time until all are
//! ready (one applies the migrations under the advisory lock, the others wait); the
//! baseline is one gateway alone on a fresh database.

use std::path::Path;
use std::time::Duration;

use aihummer_tests::{Gateway, TestDb};
use anyhow::bail;
use tokio::time::Instant;

use crate::report::{Report, ms};

const GATEWAYS: usize = 8;

/// Starts `count` gateways at once on a fresh database; the time until all are ready.
async fn all_ready(bin: &Path, count: usize) -> anyhow::Result<Duration> {
    let db = TestDb::create().await;
    let url = db.url();
    let env = [
        ("AIHUMMER_DATABASE_URL", url.as_str()),
        ("AIHUMMER_LOG", "warn"),
    ];
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    let gateways: Vec<Gateway> = (0..count)
        .map(|_| Gateway::start_with(bin, &env, |_| {}))
        .collect();
    let mut pending: Vec<&Gateway> = gateways.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for gateway in pending {
            let ready = match client.get(gateway.url("/readyz")).send().await {
                Ok(answer) => answer.status() == 200,
                Err(_) => false,
            };
            if !ready {
                still.push(gateway);
            }
        }
        pending = still;
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "{} of {count} gateways not ready after 120 s",
                pending.len()
            );
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(started.elapsed())
}

/// Runs the scenario with the gateway at `bin`.
pub async fn run(bin: &Path) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "Migrations",
        "one gateway alone on a fresh database, spawn to ready",
    );
    let alone = all_ready(bin, 1).await?;
    let together = all_ready(bin, GATEWAYS).await?;
    report
        .figure(
            format!("{GATEWAYS} gateways started at once on a fresh database, until all ready"),
            ms(together),
        )
        .baseline(ms(alone));
    Ok(report)
}
