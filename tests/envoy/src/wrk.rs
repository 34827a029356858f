//! `wrk` (Debian package `wrk`) against a URL on loopback, and what its `--latency` report
//! says.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};

/// One `wrk --latency` run's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    pub requests_per_s: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// `wrk -t<threads> -c<connections> -d<seconds>s --latency` with `headers` (`name: value`);
/// a run with socket errors or non-2xx answers is refused.
pub fn run(
    url: &str,
    threads: u32,
    connections: u32,
    seconds: u32,
    headers: &[String],
) -> Result<Figures> {
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency");
    for header in headers {
        command.arg("-H").arg(header);
    }
    let output = command
        .arg(url)
        .output()
        .context("cannot run wrk (Debian package `wrk`)")?;
    let report = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    parse(&report)
}

/// The figures of a `wrk --latency` report; a run with errors or non-2xx answers is refused.
pub fn parse(report: &str) -> Result<Figures> {
    if let Some(line) = report
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses") || l.contains("Socket errors"))
    {
        bail!("wrk saw failures ({}):\n{report}", line.trim());
    }
    let field = |prefix: &str| {
        report
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
            .ok_or_else(|| anyhow!("no `{prefix}` in the wrk report:\n{report}"))
    };
    let requests_per_s: f64 = field("Requests/sec:")?
        .parse()
        .context("Requests/sec is not a number")?;
    // `Latency  <avg> <stdev> <max> <+/- stdev>`
    let max = field("Latency ")?
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| anyhow!("no maximum on wrk's Latency line:\n{report}"))?;
    Ok(Figures {
        requests_per_s,
        p50: duration(field("50%")?)?,
        p99: duration(field("99%")?)?,
        max: duration(max)?,
    })
}

/// wrk's durations: `812.00us`, `1.25ms`, `2.01s`, `1.02m`.
fn duration(text: &str) -> Result<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        bail!("unknown wrk duration {text:?}")
    };
    let value: f64 = number
        .parse()
        .with_context(|| format!("bad wrk duration {text:?}"))?;
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 2s test @ http://127.0.0.1:41234/echo
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  312.45us   9.87ms   88.12%
    Req/Sec     7.91k   402.11     8.50k    71.00%
  Latency Distribution
     50%  0.97ms
     75%    1.10ms
     90%    1.31ms
     99%    2.45ms
  31490 requests in 2.00s, 2.73MB read
Requests/sec:  15743.21
Transfer/sec:      1.36MB
";

    #[test]
    fn reads_requests_per_second_and_latencies() {
        let figures = parse(REPORT).unwrap();
        assert_eq!(figures.requests_per_s, 15743.21);
        assert_eq!(figures.p50, Duration::from_micros(970));
        assert_eq!(figures.p99, Duration::from_micros(2450));
        assert_eq!(figures.max, Duration::from_micros(9870));
    }

    #[test]
    fn refuses_runs_with_failures() {
        let failed = REPORT.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 12\nRequests/sec",
        );
        assert!(parse(&failed).is_err());
    }

    #[test]
    fn durations_in_each_unit() {
        assert_eq!(duration("812.00us").unwrap(), Duration::from_micros(812));
        assert_eq!(duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(duration("1.5m").unwrap(), Duration::from_secs(90));
        assert!(duration("3h").is_err());
    }
}
