//! What a scenario measured: figures, each with the baseline it is measured against and
//! the target it is judged by, and the failures that make the run fail.

use std::time::Duration;

use serde_json::{Value, json};

/// One measured figure.
#[derive(Debug, Default)]
pub struct Figure {
    /// What was measured, with its unit.
    pub name: String,
    /// The measured value, formatted.
    pub value: String,
    /// The same thing measured on the baseline in the same run, formatted.
    pub baseline: Option<String>,
    /// The target, as stated in the issue, and whether the value met it.
    pub target: Option<(String, bool)>,
}

impl Figure {
    /// Sets the baseline's value.
    pub fn baseline(&mut self, value: impl Into<String>) -> &mut Self {
        self.baseline = Some(value.into());
        self
    }

    /// Sets the target and whether it was met.
    pub fn target(&mut self, target: impl Into<String>, met: bool) -> &mut Self {
        self.target = Some((target.into(), met));
        self
    }

    fn verdict(&self) -> &'static str {
        match self.target {
            Some((_, true)) => "met",
            Some((_, false)) => "MISSED",
            None => "",
        }
    }
}

/// One scenario's results.
#[derive(Debug, Default)]
pub struct Report {
    /// The scenario's name.
    pub scenario: &'static str,
    /// What the baseline column means for this scenario.
    pub baseline: &'static str,
    /// Figures in the order measured.
    pub figures: Vec<Figure>,
    /// Failed requests, duplicates, losses: anything here fails the run.
    pub failures: Vec<String>,
    /// Observations that explain a figure (setup, what was left out).
    pub notes: Vec<String>,
}

impl Report {
    /// An empty report for `scenario`, whose baselines are `baseline`.
    pub fn new(scenario: &'static str, baseline: &'static str) -> Self {
        Report {
            scenario,
            baseline,
            ..Report::default()
        }
    }

    /// Records a figure; the returned reference adds its baseline and target.
    pub fn figure(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Figure {
        self.figures.push(Figure {
            name: name.into(),
            value: value.into(),
            ..Figure::default()
        });
        self.figures.last_mut().expect("just pushed")
    }

    /// Records a failure.
    pub fn fail(&mut self, what: impl Into<String>) {
        self.failures.push(what.into());
    }

    /// Records a note.
    pub fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }

    /// Prints the figures and failures as they are measured, for whoever watches the run.
    pub fn print(&self) {
        println!("== {} (baseline: {})", self.scenario, self.baseline);
        for f in &self.figures {
            let mut line = format!("{:>58}: {}", f.name, f.value);
            if let Some(baseline) = &f.baseline {
                line += &format!("   [baseline {baseline}]");
            }
            if let Some((target, _)) = &f.target {
                line += &format!("   [target {target}: {}]", f.verdict());
            }
            println!("{line}");
        }
        for failure in &self.failures {
            println!("{:>58}: {failure}", "FAILURE");
        }
        for note in &self.notes {
            println!("{:>58}: {note}", "note");
        }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                json!({
                    "name": f.name,
                    "value": f.value,
                    "baseline": f.baseline,
                    "target": f.target.as_ref().map(|(t, _)| t),
                    "met": f.target.as_ref().map(|(_, met)| met),
                })
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "baseline": self.baseline,
            "figures": figures,
            "failures": self.failures,
            "notes": self.notes,
        })
    }

    /// The report as a Markdown section with one table.
    pub fn to_markdown(&self) -> String {
        let mut md = format!(
            "### {}\n\nBaseline: {}.\n\n| what | measured | baseline | target | |\n|---|---|---|---|---|\n",
            self.scenario, self.baseline
        );
        for f in &self.figures {
            let verdict = match f.verdict() {
                "MISSED" => "**missed**",
                other => other,
            };
            md += &format!(
                "| {} | {} | {} | {} | {} |\n",
                f.name,
                f.value,
                f.baseline.as_deref().unwrap_or(""),
                f.target.as_ref().map(|(t, _)| t.as_str()).unwrap_or(""),
                verdict
            );
        }
        for failure in &self.failures {
            md += &format!("\n**Failure:** {failure}\n");
        }
        for note in &self.notes {
            md += &format!("\n{note}\n");
        }
        md
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

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `sorted`'s p50 / p99 / max in milliseconds.
pub fn spread(sorted: &[Duration]) -> String {
    format!(
        "{:.1} / {:.1} / {:.1} ms",
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        percentile(sorted, 100.0)
    )
}

/// A whole number with thousands separators, as the README writes them.
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
