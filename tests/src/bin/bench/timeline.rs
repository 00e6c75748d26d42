//! One handoff run as the load saw it: every request, and the windows in which a gateway
//! was being replaced; and the figures drawn from it (steady state vs inside windows).

use std::time::Duration;

use crate::pinger::Sample;
use crate::report::{Report, spread};

/// A window in which one gateway was replaced by another, from the load's start.
#[derive(Debug, Clone)]
pub struct Window {
    /// What was done: `restart`, `update to 1.1.0`, `stop-then-start`, ..
    pub what: String,
    /// When the command was given.
    pub start: Duration,
    /// When the new gateway served and the old one was gone.
    pub end: Duration,
}

/// A whole run: the load's samples and the handoff windows.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// `supervised handoff`, `stop-then-start`, `sequential`.
    pub label: &'static str,
    /// Every request, in the order sent.
    pub samples: Vec<Sample>,
    /// Every handoff, in order.
    pub windows: Vec<Window>,
}

/// What a timeline came to.
pub struct Summary {
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Failures by kind, the most frequent first.
    pub failure_kinds: Vec<(String, usize)>,
    /// Latencies of answered requests outside any window, sorted.
    pub steady: Vec<Duration>,
    /// Latencies of answered requests sent inside a window, sorted.
    pub handoff: Vec<Duration>,
}

impl Timeline {
    /// Whether `at` falls inside a handoff window.
    pub fn in_window(&self, at: Duration) -> bool {
        self.windows.iter().any(|w| w.start <= at && at <= w.end)
    }

    /// Splits the samples into steady state and handoff windows.
    pub fn summary(&self) -> Summary {
        let mut kinds: std::collections::HashMap<String, usize> = Default::default();
        let (mut steady, mut handoff) = (Vec::new(), Vec::new());
        for s in &self.samples {
            // Failures are counted, not timed: a refused connection fails in microseconds
            // and would pull the percentiles down.
            if let Some(error) = &s.error {
                *kinds.entry(short_kind(error)).or_default() += 1;
                continue;
            }
            if self.in_window(s.at) {
                handoff.push(s.latency);
            } else {
                steady.push(s.latency);
            }
        }
        steady.sort();
        handoff.sort();
        let mut failure_kinds: Vec<(String, usize)> = kinds.into_iter().collect();
        failure_kinds.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        Summary {
            requests: self.samples.len(),
            failed: failure_kinds.iter().map(|(_, n)| n).sum(),
            failure_kinds,
            steady,
            handoff,
        }
    }
}

/// Records `main`'s figures in `report`, each with the same figure of every baseline
/// beside it: requests and failures, latency in steady state and inside handoff windows,
/// each handoff's duration. A failed request in `main` fails the run.
pub fn compare(report: &mut Report, main: &Timeline, baselines: &[Timeline]) {
    let main_summary = main.summary();
    let summaries: Vec<(&str, Summary)> =
        baselines.iter().map(|b| (b.label, b.summary())).collect();
    let beside = |f: &dyn Fn(&Summary) -> String| {
        summaries
            .iter()
            .map(|(label, s)| format!("{label}: {}", f(s)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let counts = |s: &Summary| format!("{} / {}", s.requests, s.failed);
    report
        .figure("requests / failed", counts(&main_summary))
        .baseline(beside(&counts))
        .target("0 failed", main_summary.failed == 0);
    let steady = |s: &Summary| spread(&s.steady);
    report
        .figure(
            "answered, steady state: p50 / p99 / max latency",
            steady(&main_summary),
        )
        .baseline(beside(&steady));
    let inside = |s: &Summary| spread(&s.handoff);
    report
        .figure(
            "answered, inside handoff windows: p50 / p99 / max latency",
            inside(&main_summary),
        )
        .baseline(beside(&inside));
    // The supervised run's windows are restarts and updates; an update is marked.
    let durations = |t: &Timeline| {
        t.windows
            .iter()
            .map(|w| {
                let ms = (w.end - w.start).as_secs_f64() * 1000.0;
                match w.what.strip_prefix("update ") {
                    Some(to) => format!("{ms:.0} ({to})"),
                    None => format!("{ms:.0}"),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    report
        .figure(
            "each handoff, command to old gateway gone (ms)",
            durations(main),
        )
        .baseline(
            baselines
                .iter()
                .map(|b| format!("{}: {}", b.label, durations(b)))
                .collect::<Vec<_>>()
                .join("; "),
        );
    for (label, s) in
        std::iter::once((main.label, &main_summary)).chain(summaries.iter().map(|(l, s)| (*l, s)))
    {
        if !s.failure_kinds.is_empty() {
            let kinds: Vec<String> = s
                .failure_kinds
                .iter()
                .take(3)
                .map(|(kind, n)| format!("{n} {kind}"))
                .collect();
            report.note(format!("Failures in {label}: {}.", kinds.join(", ")));
        }
    }
    if main_summary.failed > 0 {
        report.fail(format!(
            "{} of {} requests failed during supervised handoffs",
            main_summary.failed, main_summary.requests
        ));
    }
}

/// The gist of a failure, so a thousand refused connections count as one kind.
fn short_kind(error: &str) -> String {
    for kind in [
        "Connection refused",
        "Connection reset",
        "connection closed before message completed",
        "operation timed out",
        "status",
    ] {
        if error.contains(kind) {
            return kind.to_lowercase();
        }
    }
    error.chars().take(60).collect()
}
