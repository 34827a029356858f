//! `bench-host`: the host-level benchmark figures of consul-enricher, side by side with the
//! baseline filter in the same run, ending with one machine-readable line per key figure.
//!
//! `bench-host` runs the full benchmark; `bench-host --quick` runs every part briefly, to
//! check that it still runs (its figures mean nothing); `bench-host --per-request` runs only
//! the per-request figures, for profiling (docs/performance.md).

mod consul_load;
mod fixtures;
mod host_cost;
mod throughput;

use anyhow::{bail, Context as _, Result};

use crate::fixtures::{Wasm, BASELINE_ON_KONG};
use consul_enricher_bench::stats::{micros, Summary};

struct Sizes {
    warmup: usize,
    iterations: usize,
    cold_burst: usize,
    steady_requests: usize,
    steady_services: usize,
    steady_rate: u32,
    cached_services: usize,
    wrk_seconds: u32,
}

const WRK_CONNECTIONS: u32 = 16;

const FULL: Sizes = Sizes {
    warmup: 2_000,
    iterations: 20_000,
    cold_burst: 1_000,
    steady_requests: 100_000,
    steady_services: 10,
    steady_rate: 10_000,
    cached_services: 10_000,
    wrk_seconds: 10,
};

const QUICK: Sizes = Sizes {
    warmup: 20,
    iterations: 200,
    cold_burst: 1_000,
    steady_requests: 3_000,
    steady_services: 10,
    steady_rate: 1_000,
    cached_services: 200,
    wrk_seconds: 1,
};

fn row(name: &str, s: &Summary, baseline: &Summary) {
    println!(
        "  {name:<36} median {:>8.2} us   p99 {:>8.2} us   ({:.2}x baseline median, {} requests)",
        micros(s.median),
        micros(s.p99),
        s.median.as_secs_f64() / baseline.median.as_secs_f64(),
        s.samples
    );
}

fn file_size(path: &std::path::Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len())
}

fn main() -> Result<()> {
    let (quick, per_request_only) = match std::env::args().nth(1).as_deref() {
        None => (false, false),
        Some("--quick") => (true, false),
        Some("--per-request") => (false, true),
        Some(other) => {
            bail!("unknown argument `{other}` (usage: bench-host [--quick | --per-request])")
        }
    };
    let sizes = if quick { QUICK } else { FULL };
    let wasm = Wasm::locate()?;
    println!("filter:   {}", wasm.enricher.display());
    println!("baseline: {}", wasm.baseline.display());

    println!("\nPer-request cost in the test host (Kong flavour, one worker):");
    let cost = host_cost::run(&wasm, sizes.warmup, sizes.iterations)?;
    row("no filter (empty module)", &cost.no_filter, &cost.baseline);
    row("baseline filter", &cost.baseline, &cost.baseline);
    row("a hit's host calls alone", &cost.hit_calls, &cost.baseline);
    row("enricher, cache hit", &cost.hit, &cost.baseline);
    row(
        "enricher, stale (refresh in flight)",
        &cost.stale,
        &cost.baseline,
    );
    row(
        "enricher, Consul down (backoff)",
        &cost.consul_down,
        &cost.baseline,
    );
    if per_request_only {
        return Ok(());
    }

    println!("\nThroughput through the gateway (wrk, 2 threads, {WRK_CONNECTIONS} connections, {} s each; 2 filter workers):", sizes.wrk_seconds);
    let bench = throughput::Bench::new()?;
    let enricher_config = format!(
        r#"{{"host":"kong","consul":{{"upstream":"{}"}},"cache":{{"ttl_s":3600}}}}"#,
        bench.consul_addr()
    );
    let subjects = [
        (
            "no filter (empty module)",
            &wasm.empty,
            String::new(),
            "consul_enricher",
            false,
        ),
        (
            "baseline filter",
            &wasm.baseline,
            BASELINE_ON_KONG.to_string(),
            "baseline",
            false,
        ),
        (
            "enricher, cache hit",
            &wasm.enricher,
            enricher_config,
            "consul_enricher",
            true,
        ),
    ];
    let mut rps = Vec::new();
    for (name, path, config, shm_zone, expect_enriched) in subjects {
        let subject = throughput::Subject {
            wasm: path,
            config,
            shm_zone,
            expect_enriched,
        };
        let figures = bench.run(&subject, sizes.wrk_seconds, WRK_CONNECTIONS)?;
        println!(
            "  {name:<36} {:>9.0} req/s   p99 {:>8.2} ms",
            figures.requests_per_s,
            figures.p99.as_secs_f64() * 1e3
        );
        rps.push(figures.requests_per_s);
    }
    drop(bench);

    println!("\nConsul load (4 workers):");
    let burst = consul_load::cold_burst(&wasm, sizes.cold_burst)?;
    println!(
        "  {} concurrent cold requests: {burst} Consul call(s) (Kong: each waits on a call of its own)",
        sizes.cold_burst
    );
    let steady = consul_load::steady_state(
        &wasm,
        sizes.steady_requests,
        sizes.steady_services,
        sizes.steady_rate,
    )?;
    let per_100k = (steady.calls as f64 * 100_000.0 / steady.requests as f64).round() as u64;
    println!(
        "  steady state: {} requests over {} services in {:.1} s, TTL {} s: {} Consul calls \
         (one per TTL per service allows {}); {per_100k} per 100,000 requests",
        steady.requests,
        steady.services,
        steady.elapsed.as_secs_f64(),
        steady.ttl_s,
        steady.calls,
        steady.allowed,
    );

    println!("\nMemory:");
    let memory = consul_load::memory(&wasm, sizes.cached_services)?;
    for (worker, (before, after)) in memory.before.iter().zip(&memory.after).enumerate() {
        println!(
            "  worker {worker}: wasm linear memory {:.2} MiB after configure, {:.2} MiB after {} cached services",
            *before as f64 / 1048576.0,
            *after as f64 / 1048576.0,
            memory.services
        );
    }

    let wasm_size = file_size(&wasm.enricher)?;
    let baseline_size = file_size(&wasm.baseline)?;
    println!("\nSize:");
    println!("  consul_enricher.wasm {wasm_size} bytes; baseline {baseline_size} bytes");

    println!();
    println!(
        "ratio.hot_path_vs_baseline {:.2}",
        cost.hit.median.as_secs_f64() / cost.baseline.median.as_secs_f64()
    );
    println!(
        "ratio.hit_host_calls_vs_baseline {:.2}",
        cost.hit_calls.median.as_secs_f64() / cost.baseline.median.as_secs_f64()
    );
    println!("ratio.rps_vs_baseline {:.2}", rps[2] / rps[1]);
    println!("consul.calls_per_cold_burst {burst}");
    println!("consul.calls_per_100k {per_100k}");
    println!("wasm.size_bytes {wasm_size}");
    Ok(())
}
