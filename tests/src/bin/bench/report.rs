//! What a scenario measured: named figures, and the failures that make the run fail.

use std::time::Duration;

/// One scenario's results.
#[derive(Debug, Default)]
pub struct Report {
    /// The scenario's name.
    pub scenario: &'static str,
    /// Figures in the order measured: name, value.
    pub figures: Vec<(String, String)>,
    /// Failed requests, duplicates, losses: anything here fails the run.
    pub failures: Vec<String>,
}

impl Report {
    /// An empty report for `scenario`.
    pub fn new(scenario: &'static str) -> Self {
        Report {
            scenario,
            ..Report::default()
        }
    }

    /// Records a figure.
    pub fn figure(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.figures.push((name.into(), value.into()));
    }

    /// Records a failure.
    pub fn fail(&mut self, what: impl Into<String>) {
        self.failures.push(what.into());
    }

    /// Prints the figures and failures.
    pub fn print(&self) {
        println!("== {}", self.scenario);
        for (name, value) in &self.figures {
            println!("{name:>40}: {value}");
        }
        for failure in &self.failures {
            println!("{:>40}: {failure}", "FAILURE");
        }
    }
}

/// `count` events over `elapsed`, per second.
pub fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

/// The `p`-th percentile (0..=100) of `sorted`, in milliseconds; 0 when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}
