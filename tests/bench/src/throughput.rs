//! Throughput through the `gateway` binary (the test host's serve mode) with `wrk` on
//! loopback, to a trivial upstream that Consul lists as the `echo` service.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use standins::{ConsulOptions, ConsulStandin, Instance};

use consul_enricher_bench::gateway_binary;
use real_envoy::wrk::{self, Figures};
use real_envoy::OkUpstream;

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
        wrk::run(&target, 1, 1, 1, &headers())?;
        let before = self.counts();
        let figures = wrk::run(&target, 2, connections, seconds, &headers())?;
        let after = self.counts();
        let served = after.0 - before.0;
        if served == 0 {
            bail!("no request reached the upstream");
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
        format!("traceparent: {TRACEPARENT}"),
        format!("baggage: {BAGGAGE}"),
    ]
}
