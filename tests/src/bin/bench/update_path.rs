//! Update path: artifact download throughput from a loopback CDN through the
//! supervisor's own download code (`aihummer::update::fetch`, hashing as it writes to
//! disk), against `curl` fetching the same file; and the time from `aihummer update` to
//! the old gateway gone, against `aihummer restart` (no download), from the handoff run.

use std::time::Duration;

use aihummer::update::fetch::{FetchOptions, Fetcher};
use aihummer_tests::update::Cdn;
use anyhow::{Context, bail};
use tokio::time::Instant;
use url::Url;

use crate::handoff::CommandTimes;
use crate::report::Report;

const SIZE: usize = 64 * 1024 * 1024;
const RUNS: usize = 5;

fn mib_per_second(best: Duration) -> f64 {
    SIZE as f64 / (1024.0 * 1024.0) / best.as_secs_f64().max(f64::EPSILON)
}

/// The best of [`RUNS`] downloads by the supervisor's fetcher.
async fn fetcher_best(url: &Url, out: &std::path::Path) -> anyhow::Result<Duration> {
    let fetcher = Fetcher::new(FetchOptions::default())?;
    let mut best = Duration::MAX;
    for _ in 0..RUNS {
        let file = tokio::fs::File::create(out).await?;
        let mut writer = tokio::io::BufWriter::with_capacity(1024 * 1024, file);
        let started = Instant::now();
        let done = fetcher
            .download(url, SIZE as u64, false, &mut writer, |_| {})
            .await?;
        best = best.min(started.elapsed());
        if done.size != SIZE as u64 {
            bail!("downloaded {} bytes of {SIZE}", done.size);
        }
    }
    Ok(best)
}

/// The best of [`RUNS`] downloads by `curl`, or `None` when curl is not installed.
async fn curl_best(url: &Url, out: &std::path::Path) -> anyhow::Result<Option<Duration>> {
    let mut best = Duration::MAX;
    for _ in 0..RUNS {
        let started = Instant::now();
        let status = tokio::process::Command::new("curl")
            .args(["-sf", "-o"])
            .arg(out)
            .arg(url.as_str())
            .status()
            .await;
        match status {
            Ok(s) if s.success() => best = best.min(started.elapsed()),
            Ok(s) => bail!("curl {url} failed: {s}"),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(best))
}

/// Each of `times` in milliseconds, in the order measured.
fn each_ms(times: &[Duration]) -> String {
    let each: Vec<String> = times
        .iter()
        .map(|t| format!("{:.0}", t.as_secs_f64() * 1000.0))
        .collect();
    format!("{} ms", each.join(", "))
}

/// Runs the scenario; `times` come from the handoff run, when it ran.
pub async fn run(times: Option<&CommandTimes>) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "Update path",
        "`curl` fetching the same file from the same CDN; `aihummer restart` for the handoff",
    );
    let dir = tempfile::tempdir()?;
    let blob: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::create_dir_all(dir.path().join("cdn/stable"))?;
    std::fs::write(dir.path().join("cdn/stable/blob"), &blob).context("writing the blob")?;
    drop(blob);
    let cdn = Cdn::start(&dir.path().join("cdn")).await;
    let url = Url::parse(&format!("{}stable/blob", cdn.base_url()))?;
    let out = dir.path().join("out");
    let ours = fetcher_best(&url, &out).await?;
    let figure = report.figure(
        "artifact download, 64 MiB on loopback, best of 5",
        format!("{:.0} MiB/s", mib_per_second(ours)),
    );
    match curl_best(&url, &out).await? {
        Some(curl) => figure.baseline(format!("{:.0} MiB/s (curl)", mib_per_second(curl))),
        None => figure.baseline("curl not installed"),
    };
    if let Some(times) = times
        && !times.update.is_empty()
    {
        report
            .figure(
                "`aihummer update` (check, download, verify, stage, hand off) to old gateway gone",
                each_ms(&times.update),
            )
            .baseline(format!("restart: {}", each_ms(&times.restart)));
    }
    Ok(report)
}
