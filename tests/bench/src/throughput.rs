//! Throughput through the `gateway` binary (the test host's serve mode) with `wrk` on
//! loopback, to a trivial upstream that Consul lists as the `echo` service.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use standins::{ConsulOptions, ConsulStandin, Instance};

use consul_enricher_bench::{gateway_binary, OkUpstream};

use crate::fixtures::{BAGGAGE, TRACEPARENT};

#[derive(Default)]
struct UpstreamCounts {
    requests: AtomicU64,
    /// Requests the filter enriched from a cache hit (`x-consul-lookup: hit`).
    enriched_hits: AtomicU64,
}

impl UpstreamCounts {
    fn count(&self, head: &str) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let head = head.to_ascii_lowercase();
        if head.lines().any(|l| l.trim_end() == "x-consul-lookup: hit") {
            self.enriched_hits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The filter a gateway run loads.
pub struct Subject<'a> {
    pub wasm: &'a Path,
    pub config: String,
    pub shm_zone: &'a str,
    /// Require that the upstream saw enriched requests.
    pub expect_enriched: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub requests_per_s: f64,
    pub p99: Duration,
}

pub struct Bench {
    gateway: PathBuf,
    consul: ConsulStandin,
    /// Serves while the bench lives.
    _upstream: OkUpstream,
    counts: Arc<UpstreamCounts>,
}

struct RunningGateway(Child);

impl Drop for RunningGateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Bench {
    pub fn new() -> Result<Bench> {
        let gateway = gateway_binary()?;
        let counts = Arc::new(UpstreamCounts::default());
        let upstream_counts = Arc::clone(&counts);
        let upstream = OkUpstream::start(move |head| upstream_counts.count(head))?;
        let consul = ConsulStandin::start(ConsulOptions::default())?;
        consul.register(
            Instance::new("echo", "echo-1")
                .address("127.0.0.1")
                .port(upstream.addr().port())
                .meta("version", "1.4.2")
                .meta("region", "eu-west-1"),
        );
        Ok(Bench {
            gateway,
            consul,
            _upstream: upstream,
            counts,
        })
    }

    pub fn consul_addr(&self) -> SocketAddr {
        self.consul.addr()
    }

    fn start_gateway(&self, subject: &Subject<'_>) -> Result<(RunningGateway, String)> {
        let mut child = Command::new(&self.gateway)
            .arg("--wasm")
            .arg(subject.wasm)
            .args(["--consul", &self.consul.url()])
            .args(["--config-json", &subject.config])
            .args(["--shm-zone", subject.shm_zone])
            .args(["--route", "/echo=echo"])
            .args(["--log-level", "warn"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", self.gateway.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no gateway stdout"))?;
        let running = RunningGateway(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let url = line.trim().to_string();
        if !url.starts_with("http://") {
            bail!("the gateway did not print its URL (got {url:?})");
        }
        Ok((running, url))
    }

    /// Runs `wrk` against a gateway loading `subject`, after one request that fills the
    /// filter's cache.
    pub fn run(&self, subject: &Subject<'_>, seconds: u32, connections: u32) -> Result<Figures> {
        let (_gateway, url) = self.start_gateway(subject)?;
        let target = format!("{url}/echo");
        let first = std::process::Command::new("wrk")
            .args(["-t1", "-c1", "-d1s"])
            .args(headers())
            .arg(&target)
            .output()
            .context("cannot run wrk (Debian package `wrk`)")?;
        if !first.status.success() {
            bail!("wrk failed: {}", String::from_utf8_lossy(&first.stderr));
        }
        let before = self.counts();
        let output = Command::new("wrk")
            .arg("-t2")
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .arg("--latency")
            .args(headers())
            .arg(&target)
            .output()
            .context("cannot run wrk (Debian package `wrk`)")?;
        let report = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            bail!("wrk failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let figures = parse_wrk(&report)?;
        let after = self.counts();
        let served = after.0 - before.0;
        if served == 0 {
            bail!("no request reached the upstream:\n{report}");
        }
        if subject.expect_enriched && (after.1 - before.1) * 10 < served * 9 {
            bail!(
                "only {} of {served} upstream requests were enriched from the cache",
                after.1 - before.1
            );
        }
        Ok(figures)
    }

    fn counts(&self) -> (u64, u64) {
        let c = &self.counts;
        (
            c.requests.load(Ordering::SeqCst),
            c.enriched_hits.load(Ordering::SeqCst),
        )
    }
}

fn headers() -> Vec<String> {
    vec![
        "-H".to_string(),
        format!("traceparent: {TRACEPARENT}"),
        "-H".to_string(),
        format!("baggage: {BAGGAGE}"),
    ]
}

/// Requests/s and the 99th percentile latency from `wrk --latency` output; a run with
/// errors or non-2xx answers is refused.
fn parse_wrk(report: &str) -> Result<Figures> {
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
    let p99 = parse_wrk_duration(field("99%")?)?;
    Ok(Figures {
        requests_per_s,
        p99,
    })
}

/// wrk's durations: `812.00us`, `1.25ms`, `2.01s`.
fn parse_wrk_duration(text: &str) -> Result<Duration> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
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
    fn reads_requests_per_second_and_p99() {
        let figures = parse_wrk(REPORT).unwrap();
        assert_eq!(figures.requests_per_s, 15743.21);
        assert_eq!(figures.p99, Duration::from_micros(2450));
    }

    #[test]
    fn refuses_runs_with_failures() {
        let failed = REPORT.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 12\nRequests/sec",
        );
        assert!(parse_wrk(&failed).is_err());
    }

    #[test]
    fn durations_in_each_unit() {
        assert_eq!(
            parse_wrk_duration("812.00us").unwrap(),
            Duration::from_micros(812)
        );
        assert_eq!(parse_wrk_duration("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_wrk_duration("3h").is_err());
    }
}
