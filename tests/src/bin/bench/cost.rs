//! Supervisor cost: the `aihummer` process's resident memory and CPU time over an idle
//! window while it supervises a healthy gateway (with a database); the baseline is that
//! gateway's own figures over the same window.

use std::time::Duration;

use aihummer_tests::TestDb;
use aihummer_tests::supervisor::rss_kib;
use anyhow::Context;

use crate::binaries::Binaries;
use crate::report::Report;
use crate::supervised::Supervised;

/// Clock ticks per second in `/proc/<pid>/stat` and `/proc/stat`: USER_HZ, 100 on every
/// Linux the project builds for.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// `utime + stime` of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("a stat line with a name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields.get(n - 3).context("a short stat line")?.parse()?)
    };
    Ok(field(14)? + field(15)?)
}

fn describe(rss: u64, ticks: u64, window: Duration) -> String {
    let cpu = ticks as f64 / TICKS_PER_SECOND;
    let mib = rss as f64 / 1024.0;
    if ticks == 0 {
        // The kernel counts CPU time in ticks: none means less than one.
        return format!(
            "{mib:.1} MiB, under {:.0} ms CPU",
            1000.0 / TICKS_PER_SECOND
        );
    }
    format!(
        "{mib:.1} MiB, {:.0} ms CPU ({:.2}% of a core)",
        cpu * 1000.0,
        cpu / window.as_secs_f64() * 100.0
    )
}

/// Runs the scenario.
pub async fn run(bins: &Binaries, quick: bool) -> anyhow::Result<Report> {
    let window = Duration::from_secs(if quick { 5 } else { 30 });
    let mut report = Report::new(
        "Supervisor cost",
        "the gateway it supervises, over the same window",
    );
    let db = TestDb::create().await;
    let url = db.url();
    let supervisor = Supervised::start(
        &bins.aihummer,
        &bins.gateway,
        &[("AIHUMMER_DATABASE_URL", &url)],
    )?;
    let gateway = supervisor.wait_serving(Duration::from_secs(60)).await?;
    let pid = supervisor.pid();
    let (sup_before, gw_before) = (cpu_ticks(pid)?, cpu_ticks(gateway)?);
    // The idle window is the measurement itself, not a wait for something to happen.
    tokio::time::sleep(window).await;
    let (sup_ticks, gw_ticks) = (
        cpu_ticks(pid)? - sup_before,
        cpu_ticks(gateway)? - gw_before,
    );
    let sup_rss = rss_kib(pid).context("the supervisor's VmRSS")?;
    let gw_rss = rss_kib(gateway).context("the gateway's VmRSS")?;
    report
        .figure(
            format!("`aihummer` idle {} s: VmRSS, CPU time", window.as_secs()),
            describe(sup_rss, sup_ticks, window),
        )
        .baseline(describe(gw_rss, gw_ticks, window));
    Ok(report)
}
