//! `bench`: measures AiHummer on this machine, each figure against a baseline in the same
//! run, and writes `results.json`, `results.md` and `handoff.svg`.
//!
//! `cargo run --release -p aihummer-tests --bin bench -- [SCENARIO..] [--quick]
//! [--out DIR] [--gateway PATH]`. With no scenario it runs them all: `handoff` (with its
//! stop-then-start and sequential baselines), `overhead`, `inbound`, `outbox`,
//! `sustained`, `slow-receiver`, `failover`, `migrations`, `cost`, `update`. It builds the
//! release supervisor and gateway first (a no-op when fresh) and gateways stamped with
//! other versions (once; cached under `target/bench-stamped`), creates fresh databases on
//! the test server (`AIHUMMER_TEST_PG`, default `postgres://postgres@127.0.0.1:5432`) and
//! drops them, and starts the supervisors, gateways, a loopback CDN, a webhook receiver
//! and its own load, all bounded in count and time. `--gateway PATH` runs another gateway
//! build (an older one, to compare) in the inbound, outbox, sustained, slow-receiver,
//! failover and migrations scenarios. `DIR` defaults to `target/bench`.
//!
//! Exit status: 0 when every run held; 1 when a request failed during a supervised
//! handoff, a reply was duplicated or lost, or a scenario could not run to the end; 2
//! when the bench could not start. A missed target (inbound requests refused under
//! overload among them) is reported in the results, not in the exit status.

mod baseline;
mod binaries;
mod cost;
mod failover;
mod feed;
mod handoff;
mod inbound;
mod load;
mod migrations;
mod outbox;
mod overhead;
mod pinger;
mod plot;
mod receiver;
mod report;
mod results;
mod slow_receiver;
mod supervised;
mod sustained;
mod tables;
mod timeline;
mod update_path;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};

use report::Report;

const SCENARIOS: [&str; 10] = [
    "handoff",
    "overhead",
    "inbound",
    "outbox",
    "sustained",
    "slow-receiver",
    "failover",
    "migrations",
    "cost",
    "update",
];

/// The parsed command line.
struct Args {
    scenarios: Vec<String>,
    quick: bool,
    out: Option<PathBuf>,
    gateway: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        scenarios: Vec::new(),
        quick: false,
        out: None,
        gateway: None,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(arg) = raw.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--out" => args.out = Some(raw.next().context("--out needs a directory")?.into()),
            "--gateway" => {
                args.gateway = Some(raw.next().context("--gateway needs a path")?.into())
            }
            name if SCENARIOS.contains(&name) => args.scenarios.push(arg),
            other => bail!(
                "unknown argument {other:?}; usage: bench [{}].. [--quick] [--out DIR] \
                 [--gateway PATH]",
                SCENARIOS.join("|")
            ),
        }
    }
    if args.scenarios.is_empty() {
        args.scenarios = SCENARIOS.map(String::from).to_vec();
    }
    Ok(args)
}

fn default_out() -> anyhow::Result<PathBuf> {
    // target/release/bench -> target/bench
    let exe = std::env::current_exe().context("locating the bench binary")?;
    Ok(exe
        .parent()
        .and_then(|release| release.parent())
        .context("the bench binary lives in target/<profile>")?
        .join("bench"))
}

async fn run(args: Args) -> anyhow::Result<Vec<Report>> {
    let started = Instant::now();
    let out = match args.out {
        Some(out) => out,
        None => default_out()?,
    };
    let bins = binaries::prepare(args.gateway)?;
    if let Some(took) = bins.stamp_build {
        println!(
            "bench: built the stamped release gateways in {:.0} s",
            took.as_secs_f64()
        );
    }
    let mut reports = Vec::new();
    let mut timelines = Vec::new();
    let mut times = None;
    for scenario in &args.scenarios {
        let scenario_started = Instant::now();
        let outcome = match scenario.as_str() {
            "handoff" => handoff::run(&bins, args.quick).await.map(|(r, t, c)| {
                timelines = t;
                times = Some(c);
                r
            }),
            "overhead" => overhead::run(&bins, args.quick).await,
            "inbound" => inbound::run(&bins.gateway, args.quick).await,
            "outbox" => outbox::run(&bins.gateway, args.quick).await,
            "sustained" => sustained::run(&bins.gateway, args.quick).await,
            "slow-receiver" => slow_receiver::run(&bins.gateway, args.quick).await,
            "failover" => failover::run(&bins.gateway, if args.quick { 1 } else { 3 }).await,
            "migrations" => migrations::run(&bins.gateway).await,
            "cost" => cost::run(&bins, args.quick).await,
            _ => update_path::run(times.as_ref()).await,
        };
        // A scenario that could not run is a failure of the run, but the others still
        // run and the results are still written.
        let mut report = outcome.unwrap_or_else(|err| {
            let mut report = Report::new("scenario error", "none");
            report.fail(format!("{scenario}: {err:#}"));
            report
        });
        // The full run must end within 15 minutes: each scenario's share shows where.
        report.note(format!(
            "The scenario took {:.0} s.",
            scenario_started.elapsed().as_secs_f64()
        ));
        report.print();
        reports.push(report);
    }
    let run = results::Run {
        quick: args.quick,
        scenarios: args.scenarios.clone(),
        elapsed: started.elapsed(),
        stamp_build: bins.stamp_build,
    };
    results::write(&out, &run, &reports, &timelines)?;
    println!(
        "bench: {:.0} s; results in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(reports)
}

fn main() -> ExitCode {
    let outcome = parse_args().and_then(|args| {
        tokio::runtime::Runtime::new()
            .context("starting the runtime")?
            .block_on(run(args))
    });
    match outcome {
        Ok(reports) if reports.iter().all(|r| r.failures.is_empty()) => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("bench: FAILED (see the failures above)");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("bench: {err:#}");
            ExitCode::from(2)
        }
    }
}
