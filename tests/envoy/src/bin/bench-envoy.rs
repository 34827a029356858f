//! `bench-envoy`: throughput and latency through the official Envoy (V8), each way of
//! running beside the others in the same run, ending with the key line
//! `ratio.envoy_hit_rps_vs_baseline`.
//!
//!   bench-envoy [--quick] [--previous PATH]
//!
//! One Envoy (2 workers) with a listener per row, each a copy of envoy/envoy.yaml's gateway
//! listener (tracer, custom tags, routes) that differs only in its HTTP filters: no Wasm
//! filter, the baseline filter, or the enricher with its own VM (`vm_id`) and so its own
//! cache. One process is the fairest comparison on a 2-core machine: every row has the same
//! workers, upstream connection pools and Envoy spans, and idle listeners cost only their
//! VMs' ticks. The rows run in interleaved rounds (each round runs every row back to back,
//! starting one row later than the round before), so a slow moment of the machine does
//! not land on one row. Then a sequential probe sends requests one at a time on one
//! keep-alive connection per row, where a stall of the gateway shows as such rather than
//! inside a queue of 32 connections.
//!
//! The upstream is [`OkUpstream`] (also the sink of Envoy's spans); Consul is the stand-in.
//! `--quick` runs everything briefly (`make bench-smoke`): its figures only show that it
//! runs. `--previous PATH` adds a row: another build of the enricher on cache hits (e.g. the
//! last release's `.wasm`), so that two builds are compared within one run.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use real_envoy::{
    connection_manager, filter_wasm, gateway_listener, http_filter, workspace_root, wrk, Envoy,
    Loopback, OkUpstream, ENVOY_VERSION, WASM_FILTER,
};
use serde_json::{json, Value};
use standins::{closed_port_addr, ConsulOptions, ConsulStandin, Fault, Instance};

const WORKERS: usize = 2;
const WRK_THREADS: u32 = 2;
const WRK_CONNECTIONS: u32 = 32;
/// What the demo's browser sends: a sampled trace and a baggage member the filter reads.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const BAGGAGE: &str = "ui.component=checkout-button,ui.action=click";
/// A sequential request slower than this is counted as an outlier.
const OUTLIER: Duration = Duration::from_millis(20);

struct Sizes {
    rounds: usize,
    seconds: u32,
    probe_requests: usize,
}

const FULL: Sizes = Sizes {
    rounds: 5,
    seconds: 6,
    probe_requests: 1000,
};

const QUICK: Sizes = Sizes {
    rounds: 1,
    seconds: 1,
    probe_requests: 20,
};

/// What a row's listener runs.
enum Subject {
    NoFilter,
    Baseline,
    /// The enricher (`wasm`) with this configuration over envoy.yaml's, in its own VM; the
    /// upstream must see `x-consul-lookup: <lookup>` on (nearly) every request. Without
    /// `span_tags` the listener's tracer has no custom tags: the filter does the same work,
    /// but Envoy puts none of it on its span, which shows what those attributes cost Envoy.
    Enricher {
        wasm: PathBuf,
        extra: Value,
        lookup: &'static str,
        span_tags: bool,
    },
}

struct Row {
    name: &'static str,
    listener: &'static str,
    subject: Subject,
}

fn rows(previous: Option<PathBuf>) -> Vec<Row> {
    // The enricher's own spans are off (the integration tests' setting): Envoy's span
    // carries every attribute through the custom tags, and at these rates the filter's
    // span queue would overflow and drop spans.
    let no_spans = json!({"spans": {"enabled": false}});
    let with = |extra: Value| {
        let mut all = no_spans.clone();
        real_envoy::merge(&mut all, &extra);
        all
    };
    let hit = |wasm: PathBuf, span_tags: bool| Subject::Enricher {
        wasm,
        extra: with(json!({"cache": {"ttl_s": 3600}})),
        lookup: "hit",
        span_tags,
    };
    let mut rows = vec![
        Row {
            name: "no Wasm filter",
            listener: "no-filter",
            subject: Subject::NoFilter,
        },
        Row {
            name: "baseline filter",
            listener: "baseline",
            subject: Subject::Baseline,
        },
        Row {
            name: "enricher, cache hit",
            listener: "hit",
            subject: hit(filter_wasm(), true),
        },
        Row {
            name: "enricher, cache hit, no span tags",
            listener: "hit-untagged",
            subject: hit(filter_wasm(), false),
        },
        Row {
            name: "enricher, serving stale",
            listener: "stale",
            subject: Subject::Enricher {
                wasm: filter_wasm(),
                // Fresh for 1 s, then stale for an hour; the refreshes fail (below).
                extra: with(json!({"consul": {"upstream": "consul-stale"},
                                    "cache": {"ttl_s": 1, "stale_s": 3600}})),
                lookup: "stale",
                span_tags: true,
            },
        },
        Row {
            name: "enricher, Consul down (backoff)",
            listener: "down",
            subject: Subject::Enricher {
                wasm: filter_wasm(),
                extra: with(json!({"consul": {"upstream": "consul-down"}})),
                lookup: "error",
                span_tags: true,
            },
        },
    ];
    if let Some(previous) = previous {
        rows.insert(
            3,
            Row {
                name: "enricher, cache hit, --previous",
                listener: "previous",
                subject: hit(previous, true),
            },
        );
    }
    rows
}

/// The upstream's count of requests and of each `x-consul-lookup` value it saw.
#[derive(Default)]
struct Seen {
    requests: u64,
    lookups: std::collections::HashMap<String, u64>,
}

fn count(seen: &Mutex<Seen>, head: &str) {
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    if !head.starts_with("GET /echo") {
        return;
    }
    seen.requests += 1;
    let lookup = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-consul-lookup")
            .then(|| value.trim().to_string())
    });
    if let Some(lookup) = lookup {
        *seen.lookups.entry(lookup).or_default() += 1;
    }
}

fn snapshot(seen: &Mutex<Seen>) -> (u64, std::collections::HashMap<String, u64>) {
    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    (seen.requests, seen.lookups.clone())
}

fn baseline_wasm() -> PathBuf {
    std::env::var_os("BASELINE_FILTER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/wasm32-wasip1/release/baseline_filter.wasm")
        })
}

/// A copy of `cluster` named `name` whose one endpoint is `addr`.
fn cluster_copy(cluster: &Value, name: &str, addr: SocketAddr) -> Value {
    let mut copy = cluster.clone();
    copy["name"] = json!(name);
    copy["load_assignment"] = json!({"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {
            "address": addr.ip().to_string(), "port_value": addr.port()}}}}
    ]}]});
    copy
}

/// envoy/envoy.yaml rendered for loopback, its gateway listener replaced by one per row.
fn bootstrap(
    rows: &[Row],
    upstream: SocketAddr,
    consul: SocketAddr,
    stale_consul: SocketAddr,
) -> Result<Value> {
    let base = Loopback::new("")
        .cluster("echo", [upstream])
        .cluster("consul", [consul])
        .cluster("otel-collector", [upstream]);
    let mut config = base.render()?;
    let mut listeners = Vec::new();
    for row in rows {
        let mut rendered = match &row.subject {
            Subject::Enricher { wasm, extra, .. } => {
                let mut loopback = base.clone().filter_config(extra.clone());
                loopback.wasm = wasm.clone();
                loopback.render()?
            }
            _ => config.clone(),
        };
        let mut listener = gateway_listener(&mut rendered)?.clone();
        listener["name"] = json!(row.listener);
        let manager = connection_manager(&mut listener)?;
        manager["stat_prefix"] = json!(row.listener);
        match &row.subject {
            Subject::NoFilter => {
                if let Some(filters) = manager["http_filters"].as_array_mut() {
                    filters.retain(|filter| filter["name"] != WASM_FILTER);
                }
            }
            Subject::Baseline => {
                let plugin = &mut http_filter(manager, WASM_FILTER)?["typed_config"]["config"];
                plugin["vm_config"]["vm_id"] = json!(row.listener);
                plugin["vm_config"]["code"]["local"]["filename"] =
                    json!(baseline_wasm().display().to_string());
                // The baseline's configuration is `key=value;...`; empty is its default.
                plugin["configuration"]["value"] = json!("");
            }
            Subject::Enricher { span_tags, .. } => {
                if !span_tags {
                    manager["tracing"]["custom_tags"] = json!([]);
                }
                let plugin = &mut http_filter(manager, WASM_FILTER)?["typed_config"]["config"];
                plugin["vm_config"]["vm_id"] = json!(row.listener);
            }
        }
        listeners.push(listener);
    }
    config["static_resources"]["listeners"] = Value::Array(listeners);
    let clusters = config["static_resources"]["clusters"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("envoy.yaml has no clusters"))?;
    let consul_cluster = clusters
        .iter()
        .find(|c| c["name"] == "consul")
        .cloned()
        .ok_or_else(|| anyhow!("envoy.yaml has no cluster consul"))?;
    clusters.push(cluster_copy(&consul_cluster, "consul-stale", stale_consul));
    clusters.push(cluster_copy(
        &consul_cluster,
        "consul-down",
        closed_port_addr(),
    ));
    Ok(config)
}

/// One request on `stream`: its status and how long it took.
fn request(stream: &mut TcpStream, request: &[u8]) -> Result<(u16, Duration)> {
    let started = Instant::now();
    stream.write_all(request)?;
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("Envoy closed the connection");
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    let length: usize = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .ok_or_else(|| anyhow!("no content-length in {head:?}"))?;
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("Envoy closed the connection mid-body");
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Ok((status, started.elapsed()))
}

fn request_bytes() -> Vec<u8> {
    format!(
        "GET /echo HTTP/1.1\r\nhost: bench\r\ntraceparent: {TRACEPARENT}\r\nbaggage: {BAGGAGE}\r\n\r\n"
    )
    .into_bytes()
}

/// `n` requests one after the other on one keep-alive connection (TCP_NODELAY, as wrk).
fn sequential(addr: SocketAddr, n: usize) -> Result<Vec<Duration>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let bytes = request_bytes();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, took) = request(&mut stream, &bytes)?;
        if status != 200 {
            bail!("Envoy answered {status}");
        }
        times.push(took);
    }
    Ok(times)
}

/// Requests until the upstream sees `lookup` (the cache is filled, or in the state the row
/// measures).
fn warm_up(addr: SocketAddr, seen: &Mutex<Seen>, lookup: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let before = snapshot(seen).1.get(lookup).copied().unwrap_or(0);
        sequential(addr, 1)?;
        if snapshot(seen).1.get(lookup).copied().unwrap_or(0) > before {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no `x-consul-lookup: {lookup}` within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    let (mut quick, mut previous) = (false, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--previous" => {
                previous = Some(PathBuf::from(
                    args.next()
                        .ok_or_else(|| anyhow!("--previous needs a path"))?,
                ))
            }
            other => {
                bail!("unknown argument `{other}` (usage: bench-envoy [--quick] [--previous PATH])")
            }
        }
    }
    let sizes = if quick { QUICK } else { FULL };
    let rows = rows(previous);
    let index = |listener: &str| {
        rows.iter()
            .position(|row| row.listener == listener)
            .ok_or_else(|| anyhow!("no row {listener}"))
    };
    let (hit, untagged, baseline) = (index("hit")?, index("hit-untagged")?, index("baseline")?);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let upstream_seen = Arc::clone(&seen);
    let upstream = OkUpstream::start(move |head| count(&upstream_seen, head))?;
    let instance = Instance::new("echo", "echo-1")
        .address("127.0.0.1")
        .port(upstream.addr().port())
        .meta("version", "1.4.2")
        .meta("region", "eu-west-1");
    let consul = ConsulStandin::start(ConsulOptions::default())?;
    consul.register(instance.clone());
    let stale_consul = ConsulStandin::start(ConsulOptions::default())?;
    stale_consul.register(instance);
    let config = bootstrap(&rows, upstream.addr(), consul.addr(), stale_consul.addr())?;
    let envoy = Envoy::start_config(&config, WORKERS)?;
    let addr = |row: &Row| {
        envoy
            .listener(row.listener)
            .ok_or_else(|| anyhow!("Envoy has no listener {}", row.listener))
    };

    // Each enricher fills its cache (a miss), then is brought to the state it measures.
    for row in &rows {
        if let &Subject::Enricher { lookup, .. } = &row.subject {
            let within = Duration::from_secs(10);
            if lookup == "stale" {
                warm_up(addr(row)?, &seen, "miss", within)?;
                // Every refresh fails from now on, so the entry stays stale for the run.
                stale_consul.set_fault(Fault::Status(500, "rpc error".into()));
            }
            warm_up(addr(row)?, &seen, lookup, within)?;
        }
    }

    println!(
        "Envoy {ENVOY_VERSION} (V8), {WORKERS} workers, one Envoy with a listener per row; \
         wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{}s --latency, {} interleaved round(s):",
        sizes.seconds, sizes.rounds
    );
    let headers = [
        format!("traceparent: {TRACEPARENT}"),
        format!("baggage: {BAGGAGE}"),
    ];
    let mut figures: Vec<Vec<wrk::Figures>> = rows.iter().map(|_| Vec::new()).collect();
    for round in 0..sizes.rounds {
        for offset in 0..rows.len() {
            let index = (round + offset) % rows.len();
            let row = &rows[index];
            let url = format!("http://{}/echo", addr(row)?);
            let (requests_before, lookups_before) = snapshot(&seen);
            let run = wrk::run(&url, WRK_THREADS, WRK_CONNECTIONS, sizes.seconds, &headers)
                .with_context(|| format!("row `{}`", row.name))?;
            let (requests_after, lookups_after) = snapshot(&seen);
            let served = requests_after - requests_before;
            if served == 0 {
                bail!("row `{}`: no request reached the upstream", row.name);
            }
            if let &Subject::Enricher { lookup, .. } = &row.subject {
                let labelled = lookups_after.get(lookup).copied().unwrap_or(0)
                    - lookups_before.get(lookup).copied().unwrap_or(0);
                if labelled * 10 < served * 9 {
                    bail!(
                        "row `{}`: only {labelled} of {served} upstream requests had \
                         `x-consul-lookup: {lookup}`",
                        row.name
                    );
                }
            }
            figures[index].push(run);
        }
    }
    println!(
        "  {:<34} {:>9} {:>9} {:>9} {:>9}   rounds' req/s",
        "", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    let mut mean_rps = Vec::new();
    for (row, runs) in rows.iter().zip(&figures) {
        let rps: Vec<f64> = runs.iter().map(|f| f.requests_per_s).collect();
        let mean = rps.iter().sum::<f64>() / rps.len() as f64;
        let p50 = median(&mut runs.iter().map(|f| ms(f.p50)).collect::<Vec<_>>());
        let p99 = median(&mut runs.iter().map(|f| ms(f.p99)).collect::<Vec<_>>());
        let max = runs.iter().map(|f| ms(f.max)).fold(0.0, f64::max);
        let rounds: Vec<String> = rps.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "  {:<34} {mean:>9.0} {p50:>9.2} {p99:>9.2} {max:>9.1}   {}",
            row.name,
            rounds.join(" ")
        );
        mean_rps.push(rps);
    }
    let per_round: Vec<String> = mean_rps[hit]
        .iter()
        .zip(&mean_rps[baseline])
        .map(|(hit, baseline)| format!("{:.2}", hit / baseline))
        .collect();
    println!(
        "  (req/s: mean of the rounds; p50, p99: median of the rounds; max: of all rounds; \
         hit / baseline per round: {})",
        per_round.join(" ")
    );

    println!(
        "\nSequential requests, one keep-alive connection per row (TCP_NODELAY), {} each:",
        sizes.probe_requests
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>9}   over {} ms",
        "",
        "p50 ms",
        "p99 ms",
        "max ms",
        OUTLIER.as_millis()
    );
    for row in &rows {
        let mut times = sequential(addr(row)?, sizes.probe_requests)
            .with_context(|| format!("row `{}`", row.name))?;
        times.sort_unstable();
        let slow = times.iter().filter(|&&t| t > OUTLIER).count();
        println!(
            "  {:<34} {:>9.2} {:>9.2} {:>9.1}   {slow}",
            row.name,
            ms(percentile(&times, 50.0)),
            ms(percentile(&times, 99.0)),
            ms(percentile(&times, 100.0)),
        );
    }

    let total = |runs: &[f64]| runs.iter().sum::<f64>();
    println!();
    println!(
        "ratio.envoy_hit_rps_vs_baseline {:.2}",
        total(&mean_rps[hit]) / total(&mean_rps[baseline])
    );
    println!(
        "ratio.envoy_hit_no_span_tags_rps_vs_baseline {:.2}",
        total(&mean_rps[untagged]) / total(&mean_rps[baseline])
    );
    Ok(())
}
