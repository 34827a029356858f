//! `--chart out.svg`: the distribution of click latency per service version, as box plots
//! (quartiles, whiskers at 1.5 times the interquartile range), drawn with plotters.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::clicks::{Clicks, Dimension};
use crate::stats::milliseconds;

pub fn write_svg(clicks: &Clicks, path: &Path, title: &str) -> Result<()> {
    let mut by_version: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for click in &clicks.clicks {
        let version = clicks.value_name(click.value(Dimension::Version));
        by_version
            .entry(version.to_owned())
            .or_default()
            .push(milliseconds(click.duration_ns));
    }
    let labels: Vec<String> = by_version
        .iter()
        .map(|(version, values)| format!("{version} ({} clicks)", values.len()))
        .collect();
    let slowest = by_version
        .values()
        .flatten()
        .fold(0.0_f64, |max, value| max.max(*value));
    let failed = |error: &dyn std::fmt::Display| anyhow!("drawing {}: {error}", path.display());

    let height = 140 + 70 * u32::try_from(labels.len()).unwrap_or(u32::MAX / 140);
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| failed(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(200)
        .build_cartesian_2d(
            0.0_f32..(slowest as f32 * 1.05).max(1.0),
            labels[..].into_segmented(),
        )
        .map_err(|e| failed(&e))?;
    chart
        .configure_mesh()
        .x_desc("click latency (ms)")
        .y_desc(Dimension::Version.attribute())
        .disable_y_mesh()
        .draw()
        .map_err(|e| failed(&e))?;
    chart
        .draw_series(
            labels
                .iter()
                .zip(by_version.values())
                .map(|(label, values)| {
                    Boxplot::new_horizontal(SegmentValue::CenterOf(label), &Quartiles::new(values))
                        .width(24)
                        .style(BLUE)
                }),
        )
        .map_err(|e| failed(&e))?;
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
    }
}
