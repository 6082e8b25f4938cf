//! SVG plots of a scenario, drawn with plotters: connections per pod over time (one file per
//! strategy), reconnects per second (all strategies), and the gap histogram.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::report::ScenarioReport;
use super::Run;

const SIZE: (u32, u32) = (960, 480);
type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A white canvas with a title, room for axis labels, the look every plot shares.
fn frame<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, plotters::coord::Shift>,
    title: String,
) -> ChartBuilder<'a, 'a, DB> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    builder
}

fn name(report: &ScenarioReport) -> String {
    format!("{:?}", report.scenario).to_lowercase()
}

/// Writes every plot into `dir`; returns the files written.
pub fn write_all(dir: &Path, report: &ScenarioReport, runs: &[Run]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for (run, result) in runs.iter().zip(&report.strategies) {
        let file = dir.join(format!(
            "{}-{}-connections.svg",
            name(report),
            result.strategy
        ));
        connections(&file, report, run, result.strategy)?;
        files.push(file);
    }
    let file = dir.join(format!("{}-reconnects.svg", name(report)));
    reconnects(&file, report, runs)?;
    files.push(file);
    let file = dir.join(format!("{}-gaps.svg", name(report)));
    gaps(&file, report, runs)?;
    files.push(file);
    Ok(files)
}

fn connections(file: &Path, report: &ScenarioReport, run: &Run, strategy: &str) -> Result<()> {
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let seconds = run.samples.len() as f64;
    let max = run
        .samples
        .iter()
        .flat_map(|s| s.connections.iter().copied())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = frame(
        &root,
        format!("{} — {strategy}: connections per pod", name(report)),
    )
    .build_cartesian_2d(0f64..seconds, 0u32..(max + max / 10))?;
    chart
        .configure_mesh()
        .x_desc("simulated seconds")
        .y_desc("connections")
        .draw()?;
    let pods = run
        .samples
        .iter()
        .map(|s| s.connections.len())
        .max()
        .unwrap_or(0);
    // At most ~1,200 points a line: a plot, not a data dump.
    let every = run.samples.len().div_ceil(1_200).max(1);
    for p in 0..pods {
        let color = Palette99::pick(p).to_rgba();
        chart.draw_series(LineSeries::new(
            run.samples
                .iter()
                .enumerate()
                .step_by(every)
                .filter_map(|(t, s)| s.connections.get(p).map(|&c| (t as f64, c))),
            color,
        ))?;
    }
    root.present()?;
    Ok(())
}

fn reconnects(file: &Path, report: &ScenarioReport, runs: &[Run]) -> Result<()> {
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let seconds = runs.iter().map(|r| r.samples.len()).max().unwrap_or(1) as f64;
    let max = runs
        .iter()
        .flat_map(|r| r.samples.iter().map(|s| s.reconnects))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut chart = frame(&root, format!("{} — reconnects per second", name(report)))
        .build_cartesian_2d(0f64..seconds, 0u64..(max + max / 10))?;
    chart
        .configure_mesh()
        .x_desc("simulated seconds")
        .y_desc("reconnects/s")
        .draw()?;
    for (i, (run, result)) in runs.iter().zip(&report.strategies).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let every = run.samples.len().div_ceil(1_200).max(1);
        chart
            .draw_series(LineSeries::new(
                run.samples
                    .iter()
                    .enumerate()
                    .step_by(every)
                    .map(|(t, s)| (t as f64, s.reconnects)),
                color,
            ))?
            .label(result.strategy)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn gaps(file: &Path, report: &ScenarioReport, runs: &[Run]) -> Result<()> {
    // Buckets of 5 s up to twice the offline threshold; the last holds everything longer.
    let width = 5.0;
    let buckets = ((report.offline_threshold_seconds * 2.0) / width).ceil() as usize + 1;
    let counts: Vec<Vec<u64>> = runs
        .iter()
        .map(|r| {
            let mut c = vec![0u64; buckets];
            for &g in &r.gaps {
                let b = ((f64::from(g) / width) as usize).min(buckets - 1);
                c[b] += 1;
            }
            c
        })
        .collect();
    let max = counts.iter().flatten().copied().max().unwrap_or(1).max(1);
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = frame(
        &root,
        format!(
            "{} — how long agents were disconnected (offline after {:.0} s)",
            name(report),
            report.offline_threshold_seconds
        ),
    )
    .build_cartesian_2d(0f64..(buckets as f64 * width), (1u64..max * 2).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("gap, seconds (5 s buckets; the last holds all longer)")
        .y_desc("agents (log)")
        .draw()?;
    for (i, (c, result)) in counts.iter().zip(&report.strategies).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, u64)> = c
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(b, &n)| (b as f64 * width + width / 2.0, n))
            .collect();
        // Markers too: a strategy whose gaps all fall in one bucket is a single point.
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(result.strategy)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    let threshold = report.offline_threshold_seconds;
    chart.draw_series(LineSeries::new(
        vec![(threshold, 1), (threshold, max * 2)],
        RED.mix(0.6).stroke_width(1),
    ))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
