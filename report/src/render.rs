//! The report as text for people and as JSON for scripts; both show the same [`Report`].

use std::collections::BTreeMap;
use std::fmt::Write;

use comfy_table::{presets::ASCII_MARKDOWN, CellAlignment, Table};
use serde::Serialize;

use crate::analysis::{Row, Separation, Share};
use crate::clicks::{Click, Clicks, Dimension};
use crate::stats::{milliseconds, Latency};

#[derive(Debug, Serialize)]
pub struct Report {
    pub service: String,
    pub operation: String,
    pub jaeger: String,
    pub window: TimeWindow,
    pub traces: usize,
    pub clicks: usize,
    /// Clicks whose trace has a gateway span (one with `consul.service.id`).
    pub joined_clicks: usize,
    pub group_by: Vec<&'static str>,
    pub latency: Vec<Row>,
    pub separation: Option<Separation>,
    pub slowest: Vec<SlowClick>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TimeWindow {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Serialize)]
pub struct SlowClick {
    pub trace_id: String,
    pub url: String,
    pub click_ms: f64,
    pub gateway_ms: Option<f64>,
    pub attributes: BTreeMap<&'static str, String>,
}

impl SlowClick {
    pub fn new(clicks: &Clicks, click: &Click, ui_base: &str) -> Self {
        let trace_id = format!("{:032x}", click.trace_id);
        Self {
            url: format!("{}/trace/{trace_id}", ui_base.trim_end_matches('/')),
            trace_id,
            click_ms: milliseconds(click.duration_ns),
            gateway_ms: click.gateway_ns.map(milliseconds),
            attributes: Dimension::ALL
                .iter()
                .map(|d| (d.attribute(), clicks.value_name(click.value(*d)).to_owned()))
                .collect(),
        }
    }
}

pub fn json(report: &Report) -> serde_json::Result<String> {
    serde_json::to_string_pretty(report)
}

/// Milliseconds with one decimal.
fn ms(value: f64) -> String {
    format!("{value:.1}")
}

fn percent(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

/// A difference of shares in percentage points, signed.
fn points(value: f64) -> String {
    format!("{:+.1}", value * 100.0)
}

fn latency_cells(latency: Option<&Latency>) -> Vec<String> {
    match latency {
        Some(l) => vec![
            l.count.to_string(),
            ms(l.p50_ms),
            ms(l.p95_ms),
            ms(l.p99_ms),
            ms(l.max_ms),
        ],
        None => vec!["0".into(), "-".into(), "-".into(), "-".into(), "-".into()],
    }
}

fn table(header: Vec<String>, rows: Vec<Vec<String>>, text_columns: usize) -> String {
    let mut table = Table::new();
    table.load_style(ASCII_MARKDOWN).set_header(header);
    for row in rows {
        table.add_row(row);
    }
    for (index, column) in table.column_iter_mut().enumerate() {
        if index >= text_columns {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table.to_string()
}

fn latency_table(report: &Report) -> String {
    let mut header: Vec<String> = report.group_by.iter().map(|a| a.to_string()).collect();
    for name in ["clicks", "p50 ms", "p95 ms", "p99 ms", "max ms"] {
        header.push(name.into());
    }
    for name in ["gateway", "p50 ms", "p95 ms", "p99 ms", "max ms"] {
        header.push(name.into());
    }
    let rows = report
        .latency
        .iter()
        .map(|row| {
            let mut cells: Vec<String> = report
                .group_by
                .iter()
                .map(|a| row.group.get(a).cloned().unwrap_or_default())
                .collect();
            cells.extend(latency_cells(Some(&row.clicks)));
            cells.extend(latency_cells(row.gateway.as_ref()));
            cells
        })
        .collect();
    table(header, rows, report.group_by.len())
}

fn share_line(share: &Share) -> String {
    format!(
        "{} = {}: {} of the slow clicks ({}), {} of all clicks ({})",
        share.attribute,
        share.value,
        percent(share.slow_share),
        share.slow_clicks,
        percent(share.share),
        share.clicks,
    )
}

fn separation_text(out: &mut String, separation: &Separation, top: usize) {
    let _ = writeln!(
        out,
        "\nSlow clicks: slower than p{} = {} ms: {} of {}",
        separation.percentile,
        ms(separation.threshold_ms),
        separation.slow_clicks,
        separation.clicks
    );
    let Some(cause) = &separation.cause else {
        let _ = writeln!(
            out,
            "No click is slower than p{}: nothing to separate.",
            separation.percentile
        );
        return;
    };
    let _ = writeln!(out, "\nCause: {}", share_line(&cause.share));
    if !cause.alike.is_empty() {
        let alike: Vec<String> = cause
            .alike
            .iter()
            .map(|(attribute, value)| format!("{attribute} = {value}"))
            .collect();
        let _ = writeln!(out, "  all of them with {}", alike.join(", "));
    }
    if let Some(within) = &cause.within {
        let _ = writeln!(
            out,
            "  within it, slower than its own p{} = {} ms: {}",
            separation.percentile,
            ms(within.threshold_ms),
            share_line(&within.share)
        );
    }
    let _ = writeln!(
        out,
        "\nWhich dimension separates slow clicks best (largest difference of share, slow vs all):"
    );
    let rows = separation
        .dimensions
        .iter()
        .map(|d| vec![d.attribute.to_string(), points(d.difference)])
        .collect();
    let _ = writeln!(
        out,
        "{}",
        table(vec!["attribute".into(), "points".into()], rows, 1)
    );
    let _ = writeln!(out, "\nValues, largest difference first:");
    let rows = separation
        .shares
        .iter()
        .take(top)
        .map(|s| {
            vec![
                s.attribute.to_string(),
                s.value.clone(),
                format!("{} ({})", percent(s.slow_share), s.slow_clicks),
                format!("{} ({})", percent(s.share), s.clicks),
                points(s.difference),
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "{}",
        table(
            vec![
                "attribute".into(),
                "value".into(),
                "among slow".into(),
                "among all".into(),
                "points".into()
            ],
            rows,
            2
        )
    );
    if separation.shares.len() > top {
        let _ = writeln!(
            out,
            "({} more values; --top shows more, --format json shows all)",
            separation.shares.len() - top
        );
    }
}

pub fn text(report: &Report, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} · {} from {} to {} (Jaeger {})",
        report.service, report.operation, report.window.start, report.window.end, report.jaeger
    );
    let _ = writeln!(
        out,
        "{} clicks in {} traces; {} joined to a gateway span (consul.service.id)\n",
        report.clicks, report.traces, report.joined_clicks
    );
    let _ = writeln!(out, "Latency by {}:", report.group_by.join(" × "));
    let _ = writeln!(out, "{}", latency_table(report));
    if let Some(separation) = &report.separation {
        separation_text(&mut out, separation, top);
    }
    if !report.slowest.is_empty() {
        let _ = writeln!(out, "\nSlowest clicks:");
        let rows = report
            .slowest
            .iter()
            .map(|click| {
                let attribute = |d: Dimension| click.attributes[d.attribute()].clone();
                vec![
                    attribute(Dimension::Component),
                    attribute(Dimension::Version),
                    attribute(Dimension::Instance),
                    attribute(Dimension::Region),
                    ms(click.click_ms),
                    click.gateway_ms.map_or("-".into(), ms),
                    click.url.clone(),
                ]
            })
            .collect();
        let header = [
            "ui.component",
            "version",
            "instance",
            "region",
            "click ms",
            "gateway ms",
            "trace",
        ]
        .map(String::from)
        .to_vec();
        let _ = writeln!(out, "{}", table(header, rows, 4));
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "\nwarning: {warning}");
    }
    out
}
