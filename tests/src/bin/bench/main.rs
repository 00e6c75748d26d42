//! `bench`: measures the gateway's hot paths on this machine and prints the figures.
//!
//! `cargo run --release -p aihummer-tests --bin bench -- inbound|outbox [--quick]
//! [--gateway PATH]`. It builds the release gateway (unless `--gateway` names a binary,
//! e.g. an older build to compare with), creates a fresh database on the test server
//! (`AIHUMMER_TEST_PG`, default `postgres://postgres@127.0.0.1:5432`) for each run and
//! drops it afterwards, starts the gateways, a loopback webhook receiver and its own load
//! generator, all bounded in count and time. It exits non-zero when a request failed or a
//! reply was duplicated or lost.
//!
//! One module per scenario ([`inbound`], [`outbox`]); each returns a [`Report`].

mod inbound;
mod load;
mod outbox;
mod receiver;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use report::Report;

/// The parsed command line.
struct Args {
    scenarios: Vec<String>,
    quick: bool,
    gateway: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        scenarios: Vec::new(),
        quick: false,
        gateway: None,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(arg) = raw.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--gateway" => {
                args.gateway = Some(raw.next().context("--gateway needs a path")?.into())
            }
            "inbound" | "outbox" => args.scenarios.push(arg),
            other => bail!(
                "unknown argument {other:?}; usage: bench inbound|outbox [--quick] [--gateway PATH]"
            ),
        }
    }
    if args.scenarios.is_empty() {
        args.scenarios = vec!["inbound".into(), "outbox".into()];
    }
    Ok(args)
}

/// The release gateway next to this binary, built first when it is not given.
fn gateway_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "aihummer-gateway",
            "--bin",
            "aihummer-gateway",
        ])
        .status()
        .context("running cargo build for the gateway")?;
    if !status.success() {
        bail!("building the release gateway failed: {status}");
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    Ok(exe
        .parent()
        .context("the bench binary has a directory")?
        .join("aihummer-gateway"))
}

async fn run(args: Args) -> anyhow::Result<Vec<Report>> {
    let gateway = gateway_binary(args.gateway)?;
    let mut reports = Vec::new();
    for scenario in &args.scenarios {
        let report = match scenario.as_str() {
            "inbound" => inbound::run(&gateway, args.quick).await?,
            _ => outbox::run(&gateway, args.quick).await?,
        };
        report.print();
        reports.push(report);
    }
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
