//! Writes a run's results: `results.json` (every figure, baseline, target and verdict),
//! `results.md` (the same as tables, for the README) and `handoff.svg`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::plot;
use crate::report::Report;
use crate::timeline::Timeline;

/// Facts about the run itself.
pub struct Run {
    /// `--quick` or the full run.
    pub quick: bool,
    /// The scenarios asked for.
    pub scenarios: Vec<String>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Time spent building stamped gateways in this run, if any were built.
    pub stamp_build: Option<Duration>,
}

fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

/// Writes the three files into `dir`, creating it.
pub fn write(
    dir: &Path,
    run: &Run,
    reports: &[Report],
    timelines: &[Timeline],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let kind = if run.quick { "--quick" } else { "full" };
    let commit = commit();
    let stamp = run
        .stamp_build
        .map_or("reused from target/bench-stamped".to_string(), |d| {
            format!("built in this run in {:.0} s", d.as_secs_f64())
        });
    let json = json!({
        "run": {
            "kind": kind,
            "scenarios": run.scenarios,
            "elapsed_s": run.elapsed.as_secs_f64(),
            "commit": commit,
            "cores": cores(),
            "stamped_gateways": stamp,
        },
        "reports": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
        "handoff_windows": timelines.iter().map(|t| json!({
            "run": t.label,
            "windows": t.windows.iter().map(|w| json!({
                "what": w.what,
                "start_s": w.start.as_secs_f64(),
                "end_s": w.end.as_secs_f64(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "ok": reports.iter().all(|r| r.failures.is_empty()),
    });
    let text = serde_json::to_string_pretty(&json)?;
    std::fs::write(dir.join("results.json"), text + "\n").context("writing results.json")?;

    let mut md = format!(
        "Run: `bench` {kind} at `{commit}`, {} cores, {:.0} s in all; stamped release \
         gateways {stamp}.\n\n",
        cores(),
        run.elapsed.as_secs_f64()
    );
    for report in reports {
        md += &report.to_markdown();
        md += "\n";
    }
    if !timelines.is_empty() {
        plot::draw(&dir.join("handoff.svg"), timelines)?;
        md += "![Latency over time: the supervised handoff and both baselines](handoff.svg)\n";
    }
    std::fs::write(dir.join("results.md"), md).context("writing results.md")?;
    Ok(())
}
