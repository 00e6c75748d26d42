//! Handoff under load: the ping load against a real `aihummer run` while it performs
//! `aihummer restart`s and real version upgrades from a loopback CDN, compared with the
//! two baselines under the identical load and the same number of replacements.

use std::time::Duration;

use aihummer_tests::TestDb;
use aihummer_tests::supervisor::alive;
use aihummer_tests::updating::Offering;
use anyhow::{Context, bail};

use crate::baseline;
use crate::binaries::Binaries;
use crate::pinger::Pinger;
use crate::report::Report;
use crate::supervised::Supervised;
use crate::timeline::{Timeline, Window, compare};

/// One replacement of the serving gateway.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// `aihummer restart`: the same binary again.
    Restart,
    /// `aihummer update` to the n-th stamped version, published on the CDN just before.
    Upgrade(usize),
}

/// What the run does: the replacements, and the steady time before, between and after.
pub struct Plan {
    /// The replacements, in order.
    pub steps: Vec<Step>,
    /// Steady load before the first, between two, and after the last.
    pub gap: Duration,
}

impl Plan {
    /// The plan for a quick or a full run.
    pub fn new(quick: bool) -> Plan {
        use Step::{Restart, Upgrade};
        if quick {
            Plan {
                steps: vec![Restart, Upgrade(0), Restart, Upgrade(1)],
                gap: Duration::from_millis(1500),
            }
        } else {
            Plan {
                steps: vec![
                    Restart,
                    Restart,
                    Upgrade(0),
                    Restart,
                    Restart,
                    Upgrade(1),
                    Restart,
                    Restart,
                ],
                gap: Duration::from_secs(2),
            }
        }
    }
}

/// How long the supervisor's own commands took, for the update path's figures.
#[derive(Debug, Default)]
pub struct CommandTimes {
    /// `aihummer restart`, command given to command returned (the old gateway gone).
    pub restart: Vec<Duration>,
    /// `aihummer update` (check, download, verify, stage, hand off) likewise.
    pub update: Vec<Duration>,
}

/// Runs the supervised handoff and both baselines; returns the report, the three
/// timelines (supervised first) for the chart, and the command times.
pub async fn run(
    bins: &Binaries,
    quick: bool,
) -> anyhow::Result<(Report, Vec<Timeline>, CommandTimes)> {
    let plan = Plan::new(quick);
    let db = TestDb::create().await;
    let url = db.url();
    let mut report = Report::new(
        "Handoff under load",
        "the same gateway and load with stop-then-start (the gateway binds the port itself; \
         SIGTERM, wait for exit, start again: a plain `systemctl restart` of a simple \
         service) and sequential (the bench holds the socket and passes it on; the old \
         gateway drains and exits before the new one starts)",
    );
    let (supervised, times) = supervised(bins, &url, &plan).await?;
    let stop_start = baseline::stop_then_start(&bins.gateway, &url, &plan).await?;
    let sequential = baseline::sequential(&bins.gateway, &url, &plan).await?;
    compare(
        &mut report,
        &supervised,
        &[stop_start.clone(), sequential.clone()],
    );
    report.note(format!(
        "Load: {} keep-alive clients (5 ms between requests) and {} fresh-connection \
         clients (10 ms) on `GET /v1/ping`; gateways with a database; {} replacements \
         {:.1} s apart.",
        crate::pinger::KEEP_ALIVE,
        crate::pinger::FRESH,
        plan.steps.len(),
        plan.gap.as_secs_f64()
    ));
    Ok((report, vec![supervised, stop_start, sequential], times))
}

async fn supervised(
    bins: &Binaries,
    db_url: &str,
    plan: &Plan,
) -> anyhow::Result<(Timeline, CommandTimes)> {
    let (first_version, first_binary) = bins.stamped.first().context("a stamped gateway")?;
    let offering = Offering::start(first_binary, first_version).await;
    let base_url = offering.base_url();
    let supervisor = Supervised::start(
        &bins.aihummer,
        &bins.gateway,
        &[
            ("AIHUMMER_DATABASE_URL", db_url),
            ("AIHUMMER_DOWNLOAD_BASE_URL", &base_url),
        ],
    )?;
    supervisor.wait_serving(Duration::from_secs(60)).await?;
    let pinger = Pinger::start(&supervisor.url("/v1/ping"))?;
    let mut windows = Vec::new();
    let mut times = CommandTimes::default();
    tokio::time::sleep(plan.gap).await;
    for step in &plan.steps {
        let (args, what, expect) = match *step {
            Step::Restart => (["restart", "--json"], "restart".to_string(), None),
            Step::Upgrade(n) => {
                let (version, binary) = bins.stamped.get(n).context("a stamped gateway")?;
                if n > 0 {
                    offering.publish(binary, version).await;
                }
                (
                    ["update", "--json"],
                    format!("update to {version}"),
                    Some(*version),
                )
            }
        };
        let start = pinger.now();
        let answer = supervisor.cli_json(&args).await?;
        let end = pinger.now();
        match step {
            Step::Restart => times.restart.push(end - start),
            Step::Upgrade(_) => times.update.push(end - start),
        }
        let old = answer["old_pid"].as_u64().unwrap_or_default() as u32;
        if old == 0 || alive(old) {
            bail!("{what}: the old gateway ({old}) is not gone when the command returns: {answer}");
        }
        if let Some(version) = expect
            && answer["version"] != version
        {
            bail!("{what}: {answer}");
        }
        windows.push(Window { what, start, end });
        tokio::time::sleep(plan.gap).await;
    }
    let samples = pinger.stop().await?;
    Ok((
        Timeline {
            label: "supervised handoff",
            samples,
            windows,
        },
        times,
    ))
}
