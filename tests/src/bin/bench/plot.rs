//! `handoff.svg`: one panel per timeline (the supervised handoff, then each baseline),
//! latency over time on one shared log scale, handoff windows shaded, failed requests as
//! red crosses: the supervised line stays flat where the baselines spike or fail.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use plotters::prelude::*;

use crate::timeline::Timeline;

/// Width of the buckets the latency lines are drawn from.
const BUCKET: Duration = Duration::from_millis(100);
/// The log scale's floor, in milliseconds.
const FLOOR: f64 = 0.05;

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).max(FLOOR)
}

/// Per bucket of [`BUCKET`]: its middle (seconds), median and maximum latency (ms).
fn buckets(timeline: &Timeline) -> Vec<(f64, f64, f64)> {
    let mut out = Vec::new();
    let mut current: Vec<f64> = Vec::new();
    let mut index = 0u128;
    let flush = |index: u128, values: &mut Vec<f64>, out: &mut Vec<(f64, f64, f64)>| {
        if values.is_empty() {
            return;
        }
        values.sort_by(f64::total_cmp);
        let middle = (index as f64 + 0.5) * BUCKET.as_secs_f64();
        out.push((middle, values[values.len() / 2], values[values.len() - 1]));
        values.clear();
    };
    for s in timeline.samples.iter().filter(|s| s.error.is_none()) {
        let at = s.at.as_millis() / BUCKET.as_millis();
        if at != index {
            flush(index, &mut current, &mut out);
            index = at;
        }
        current.push(ms(s.latency));
    }
    flush(index, &mut current, &mut out);
    out
}

/// Draws `timelines` into `path`.
pub fn draw(path: &Path, timelines: &[Timeline]) -> anyhow::Result<()> {
    draw_inner(path, timelines)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

fn draw_inner(path: &Path, timelines: &[Timeline]) -> Result<(), Box<dyn std::error::Error>> {
    let height = 300 * timelines.len().max(1) as u32;
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let y_max = timelines
        .iter()
        .flat_map(|t| t.samples.iter().map(|s| ms(s.latency)))
        .fold(100.0, f64::max)
        * 1.5;
    let x_max = timelines
        .iter()
        .filter_map(|t| t.samples.last().map(|s| s.at.as_secs_f64()))
        .fold(1.0, f64::max);
    let window_fill = RGBColor(255, 170, 60).mix(0.35).filled();
    for (panel, timeline) in root
        .split_evenly((timelines.len(), 1))
        .iter()
        .zip(timelines)
    {
        let summary = timeline.summary();
        let caption = format!(
            "{}: {} requests, {} failed",
            timeline.label, summary.requests, summary.failed
        );
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 18))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, (FLOOR..y_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds since the load started")
            .y_desc("latency, ms")
            .draw()?;
        chart
            .draw_series(timeline.windows.iter().map(|w| {
                Rectangle::new(
                    [
                        (w.start.as_secs_f64(), FLOOR),
                        (w.end.as_secs_f64().max(w.start.as_secs_f64() + 0.03), y_max),
                    ],
                    window_fill,
                )
            }))?
            .label("handoff window")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], window_fill));
        let points = buckets(timeline);
        chart
            .draw_series(LineSeries::new(points.iter().map(|p| (p.0, p.2)), &BLUE))?
            .label("max per 100 ms")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, p.1)),
                &RGBColor(0, 140, 0),
            ))?
            .label("median per 100 ms")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RGBColor(0, 140, 0)));
        // One cross per failed request, at most one per 10 ms and latency decade, so a
        // long outage stays a readable band rather than a megabyte of identical marks.
        let mut seen = std::collections::HashSet::new();
        let failures: Vec<(f64, f64)> = timeline
            .samples
            .iter()
            .filter(|s| s.error.is_some())
            .filter(|s| seen.insert((s.at.as_millis() / 10, ms(s.latency).log10().floor() as i64)))
            .map(|s| (s.at.as_secs_f64(), ms(s.latency).min(y_max)))
            .collect();
        chart
            .draw_series(
                failures
                    .iter()
                    .map(|p| Cross::new(*p, 4, RED.stroke_width(2))),
            )?
            .label("failed request")
            .legend(|(x, y)| Cross::new((x + 8, y), 4, RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
