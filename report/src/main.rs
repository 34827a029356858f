//! Which version made the clicks slow? Reads browser clicks and the gateway spans of the
//! same traces from Jaeger's query API v3, and prints their latency by UI component and
//! service version (instance, region, datacenter, lookup on request) and which attribute
//! values the slowest clicks have more often than the rest.

mod analysis;
mod chart;
mod clicks;
mod collect;
mod jaeger;
mod otlp_json;
mod render;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use crate::clicks::{ClickSpans, Clicks, Dimension};
use crate::jaeger::{rfc3339, unix_nanos, Jaeger, Window};
use crate::render::{Report, SlowClick, TimeWindow};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Which version made the clicks slow: click and gateway latency from Jaeger's traces by UI
/// component, service version, instance and region, and what the slow clicks have in common.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Jaeger's query service (api_v3 over HTTP).
    #[arg(long, default_value = "http://localhost:16686")]
    jaeger: String,
    /// Base URL of the Jaeger UI for links to traces [default: the --jaeger URL].
    #[arg(long)]
    ui: Option<String>,
    /// The browser's service name.
    #[arg(long, default_value = "checkout-web")]
    service: String,
    /// The click span's name.
    #[arg(long, default_value = "checkout.submit")]
    operation: String,
    /// Length of the window, ending at --end (e.g. 15m, 2h, 1day).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    since: Duration,
    /// Start of the window, RFC 3339 in UTC (e.g. 2026-12-01T10:00:00Z); overrides --since.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    start: Option<SystemTime>,
    /// End of the window, RFC 3339 in UTC [default: now].
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    end: Option<SystemTime>,
    /// More attributes to group the latency table by, besides ui.component and version.
    #[arg(long, value_enum, value_delimiter = ',')]
    by: Vec<Dimension>,
    /// Clicks slower than this percentile of all clicks are the slow ones.
    #[arg(long, default_value_t = 90.0, value_parser = parse_percentile)]
    slow_percentile: f64,
    /// How many of the slowest clicks to list with links.
    #[arg(long, default_value_t = 5)]
    slowest: usize,
    /// How many attribute values to list in the separation table (text format).
    #[arg(long, default_value_t = 12)]
    top: usize,
    /// Traces per search (Jaeger's query.num_traces); a full page is split by time.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    page_size: u32,
    /// Timeout of each request to Jaeger.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Also write an SVG chart of click latency per version to this file.
    #[arg(long)]
    chart: Option<PathBuf>,
}

fn parse_percentile(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value > 0.0 && value < 100.0 => Ok(value),
        _ => Err(format!(
            "{text:?} is not a percentile between 0 and 100 (exclusive)"
        )),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("consul-enricher-report: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let window = time_window(args)?;
    let jaeger = Jaeger::new(&args.jaeger, args.timeout)?;
    check_click_spans_known(&jaeger, &args.service, &args.operation)?;
    let spans = ClickSpans {
        service: &args.service,
        operation: &args.operation,
    };
    let page_size = usize::try_from(args.page_size).context("--page-size")?;
    let (clicks, warnings) = collect::collect(&jaeger, &spans, window, page_size)?;
    if clicks.clicks.is_empty() {
        bail!(
            "no {} span of {} started between {} and {}; widen the window with --since or --start",
            args.operation,
            args.service,
            rfc3339(window.start_ns),
            rfc3339(window.end_ns),
        );
    }
    let report = build_report(args, &jaeger, window, &clicks, warnings);
    let output = match args.format {
        Format::Text => render::text(&report, args.top),
        Format::Json => render::json(&report)? + "\n",
    };
    print!("{output}");
    if let Some(path) = &args.chart {
        let title = format!(
            "{} · {}: click latency by version",
            args.service, args.operation
        );
        chart::write_svg(&clicks, path, &title)?;
        eprintln!("chart written to {}", path.display());
    }
    Ok(())
}

fn time_window(args: &Args) -> Result<Window> {
    let end = args.end.unwrap_or_else(SystemTime::now);
    let start = match args.start {
        Some(start) => start,
        None => end
            .checked_sub(args.since)
            .context("--since reaches before 1970")?,
    };
    let window = Window {
        start_ns: unix_nanos(start)?,
        end_ns: unix_nanos(end)?,
    };
    if window.start_ns >= window.end_ns {
        bail!(
            "the window is empty: {} is not before {}",
            rfc3339(window.start_ns),
            rfc3339(window.end_ns)
        );
    }
    Ok(window)
}

/// A clear error for a misspelt service or operation, instead of "no traces".
fn check_click_spans_known(jaeger: &Jaeger, service: &str, operation: &str) -> Result<()> {
    let services = jaeger.services()?;
    if !services.iter().any(|s| s == service) {
        bail!(
            "Jaeger at {} knows no service {service:?}; it knows: {}",
            jaeger.base(),
            listing(&services)
        );
    }
    let operations = jaeger.operations(service)?;
    if !operations.iter().any(|o| o == operation) {
        bail!(
            "Jaeger knows no operation {operation:?} of {service}; it knows: {}",
            listing(&operations)
        );
    }
    Ok(())
}

fn listing(names: &[String]) -> String {
    if names.is_empty() {
        return "none yet".to_owned();
    }
    let mut sorted = names.to_vec();
    sorted.sort();
    sorted.join(", ")
}

/// The latency table's dimensions: component and version, then those of `--by`.
fn group_by(extra: &[Dimension]) -> Vec<Dimension> {
    let mut dimensions = vec![Dimension::Component, Dimension::Version];
    for dimension in extra {
        if !dimensions.contains(dimension) {
            dimensions.push(*dimension);
        }
    }
    dimensions
}

fn build_report(
    args: &Args,
    jaeger: &Jaeger,
    window: Window,
    clicks: &Clicks,
    warnings: Vec<String>,
) -> Report {
    let by = group_by(&args.by);
    let ui_base = args.ui.as_deref().unwrap_or(jaeger.base());
    Report {
        service: args.service.clone(),
        operation: args.operation.clone(),
        jaeger: jaeger.base().to_owned(),
        window: TimeWindow {
            start: rfc3339(window.start_ns),
            end: rfc3339(window.end_ns),
        },
        traces: clicks.traces,
        clicks: clicks.clicks.len(),
        joined_clicks: clicks
            .clicks
            .iter()
            .filter(|c| c.gateway_ns.is_some())
            .count(),
        group_by: by.iter().map(|d| d.attribute()).collect(),
        latency: analysis::latency_table(clicks, &by),
        separation: analysis::separate(clicks, args.slow_percentile),
        slowest: analysis::slowest(clicks, args.slowest)
            .into_iter()
            .map(|click| SlowClick::new(clicks, click, ui_base))
            .collect(),
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_groups_by_component_and_version_first() {
        assert_eq!(
            group_by(&[Dimension::Instance, Dimension::Version, Dimension::Region]),
            [
                Dimension::Component,
                Dimension::Version,
                Dimension::Instance,
                Dimension::Region
            ]
        );
    }

    #[test]
    fn percentiles_are_checked() {
        assert_eq!(parse_percentile("90"), Ok(90.0));
        assert!(parse_percentile("100").is_err());
        assert!(parse_percentile("p90").is_err());
    }

    #[test]
    fn the_window_ends_at_end_and_lasts_since() {
        let args = Args::parse_from(["report", "--end", "2023-11-14T23:00:00Z", "--since", "30m"]);
        let window = time_window(&args).expect("window");
        assert_eq!(rfc3339(window.start_ns), "2023-11-14T22:30:00Z");
        assert_eq!(rfc3339(window.end_ns), "2023-11-14T23:00:00Z");
        let backwards = Args::parse_from([
            "report",
            "--start",
            "2023-11-15T00:00:00Z",
            "--end",
            "2023-11-14T23:00:00Z",
        ]);
        assert!(time_window(&backwards).is_err());
    }
}
