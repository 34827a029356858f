//! `--chart out.svg`: the distribution of click latency per service version, drawn with
//! plotters: a box from p25 to p75 with the median, whiskers out to the fastest and the
//! slowest click. (Plotters' own `Boxplot` ends its whiskers at 1.5 interquartile ranges
//! whether or not a click lies there, which draws latencies nobody measured.)

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::clicks::{Clicks, Dimension};
use crate::stats::{milliseconds, percentile};

/// Pixels between a box and the edges of its row; caps and median reach further.
const BOX_MARGIN: u32 = 22;
const CAP_MARGIN: u32 = 30;
const MEDIAN_MARGIN: u32 = 18;

/// One version's row: its label and the five numbers drawn, in milliseconds.
struct Row {
    label: String,
    /// Fastest, p25, median, p75, slowest.
    summary: [f32; 5],
}

fn rows(clicks: &Clicks) -> Vec<Row> {
    let mut by_version: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for click in &clicks.clicks {
        let version = clicks.value_name(click.value(Dimension::Version));
        by_version
            .entry(version)
            .or_default()
            .push(click.duration_ns);
    }
    by_version
        .into_iter()
        .map(|(version, mut durations)| {
            durations.sort_unstable();
            let at = |p: f64| percentile(&durations, p).map_or(0.0, |ns| milliseconds(ns) as f32);
            Row {
                label: format!("{version} ({} clicks)", durations.len()),
                summary: [
                    durations.first().map_or(0.0, |ns| milliseconds(*ns) as f32),
                    at(25.0),
                    at(50.0),
                    at(75.0),
                    at(100.0),
                ],
            }
        })
        .collect()
}

/// A vertical stroke `width` wide across a row, `margin` pixels short of its edges: a
/// filled rectangle, since SVG draws nothing for a rectangle of zero width.
fn stroke<'a>(
    x: f32,
    width: f32,
    row: (SegmentValue<&'a String>, SegmentValue<&'a String>),
    margin: u32,
) -> Rectangle<(f32, SegmentValue<&'a String>)> {
    let mut line = Rectangle::new(
        [(x - width / 2.0, row.0), (x + width / 2.0, row.1)],
        BLUE.filled(),
    );
    line.set_margin(margin, margin, 0, 0);
    line
}

pub fn write_svg(clicks: &Clicks, path: &Path, title: &str) -> Result<()> {
    let rows = rows(clicks);
    let labels: Vec<String> = rows.iter().map(|row| row.label.clone()).collect();
    let slowest = rows
        .iter()
        .map(|row| row.summary[4])
        .fold(0.0_f32, f32::max);
    let failed = |error: &dyn std::fmt::Display| anyhow!("drawing {}: {error}", path.display());
    // The segment of row `i`: from its label to the next one (or the axis end).
    let segment = |i: usize| {
        (
            SegmentValue::Exact(&labels[i]),
            labels
                .get(i + 1)
                .map_or(SegmentValue::Last, SegmentValue::Exact),
        )
    };

    let height = 140 + 70 * u32::try_from(rows.len()).unwrap_or(u32::MAX / 140);
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(200)
        .build_cartesian_2d(
            0.0_f32..(slowest * 1.05).max(1.0),
            labels[..].into_segmented(),
        )
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("click latency (ms): box p25 to p75 with the median, whiskers to the fastest and slowest click")
        .y_desc(Dimension::Version.attribute())
        .y_label_formatter(&|value| match value {
            SegmentValue::Exact(label) | SegmentValue::CenterOf(label) => label.to_string(),
            SegmentValue::Last => String::new(),
        })
        .disable_y_mesh()
        .draw()
        .map_err(|e| failed(&e))?;

    let plot_width = chart.plotting_area().dim_in_pixel().0.max(1) as f32;
    let pixel = chart.x_range().end / plot_width;
    let line = ShapeStyle::from(&BLUE).stroke_width(1);
    let boxes = rows.iter().enumerate().map(|(i, row)| {
        let (top, bottom) = segment(i);
        let mut shape = Rectangle::new(
            [(row.summary[1], top), (row.summary[3], bottom)],
            BLUE.mix(0.2).filled(),
        );
        shape.set_margin(BOX_MARGIN, BOX_MARGIN, 0, 0);
        shape
    });
    chart.draw_series(boxes).map_err(|e| failed(&e))?;
    let strokes = rows.iter().enumerate().flat_map(|(i, row)| {
        let [fastest, p25, median, p75, slowest] = row.summary;
        [
            stroke(fastest, pixel, segment(i), CAP_MARGIN),
            stroke(p25, pixel, segment(i), BOX_MARGIN),
            stroke(median, 3.0 * pixel, segment(i), MEDIAN_MARGIN),
            stroke(p75, pixel, segment(i), BOX_MARGIN),
            stroke(slowest, pixel, segment(i), CAP_MARGIN),
        ]
    });
    chart.draw_series(strokes).map_err(|e| failed(&e))?;
    let whiskers = rows.iter().flat_map(|row| {
        let [fastest, p25, _, p75, slowest] = row.summary;
        let center = SegmentValue::CenterOf(&row.label);
        [
            PathElement::new(vec![(fastest, center.clone()), (p25, center.clone())], line),
            PathElement::new(vec![(p75, center.clone()), (slowest, center)], line),
        ]
    });
    chart.draw_series(whiskers).map_err(|e| failed(&e))?;
    root.present().map_err(|e| failed(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clicks::tests::{resource, span, ALL_TIME, SPANS};
    use crate::otlp_json::TracesData;

    #[test]
    fn one_box_per_version() {
        let mut clicks = Clicks::default();
        let mut browser = Vec::new();
        let mut gateway = Vec::new();
        for trace in 1..=20u128 {
            let (version, ms) = if trace.is_multiple_of(2) {
                ("1.4.2", 100)
            } else {
                ("2.0.0", 500)
            };
            browser.push(span(trace, "checkout.submit", 0, ms + trace as u64, &[]));
            gateway.push(span(
                trace,
                "ingress",
                0,
                10,
                &[
                    ("consul.service.id", "echo"),
                    ("consul.service.meta.version", version),
                ],
            ));
        }
        let page = TracesData {
            resource_spans: vec![resource("checkout-web", browser), resource("gw", gateway)],
        };
        clicks.add_page(&page, &SPANS, ALL_TIME).expect("joins");
        let path =
            std::env::temp_dir().join(format!("consul-enricher-report-{}.svg", std::process::id()));
        write_svg(&clicks, &path, "clicks").expect("draws");
        let svg = std::fs::read_to_string(&path).expect("written");
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("1.4.2 (10 clicks)") && svg.contains("2.0.0 (10 clicks)"));
        assert!(svg.contains("click latency (ms)"));
        // Labels as written, not in Debug quotes.
        assert!(!svg.contains("\"1.4.2"));
    }

    #[test]
    fn rows_are_the_five_numbers_of_each_version() {
        let mut clicks = Clicks::default();
        let browser = (1..=8u128)
            .map(|trace| span(trace, "checkout.submit", 0, 100 * trace as u64, &[]))
            .collect();
        let page = TracesData {
            resource_spans: vec![resource("checkout-web", browser)],
        };
        clicks.add_page(&page, &SPANS, ALL_TIME).expect("joins");
        let rows = rows(&clicks);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].label, "(none) (8 clicks)");
        assert_eq!(rows[0].summary, [100.0, 200.0, 400.0, 600.0, 800.0]);
    }
}
