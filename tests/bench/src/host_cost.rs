//! Per-request cost in the test host: one request's `on_request_headers` and
//! `on_response_headers` (and the context's done/log/delete), timed one by one, for the
//! empty module, the baseline filter, a module making a hit's host calls and nothing else,
//! and the enricher in each cache state.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use standins::{ConsulOptions, ConsulStandin, Fault};
use test_host::{Host, RequestHandle};

use crate::fixtures::{
    enricher_config, forward_and_respond, host_options, lookup_attribute, lookup_header, register,
    respond, traced_request, Wasm, BASELINE_ON_KONG,
};
use consul_enricher_bench::stats::Summary;

const SERVICE: &str = "echo";
const WAIT: Duration = Duration::from_secs(10);

pub struct HostCost {
    pub no_filter: Summary,
    pub baseline: Summary,
    pub hit_calls: Summary,
    pub hit: Summary,
    pub stale: Summary,
    pub consul_down: Summary,
}

/// What every measured request must show, checked after timing.
enum Expect {
    Nothing,
    LookupHeader(&'static str),
    LookupAttribute(&'static str),
}

/// Times `iterations` requests after `warmup` untimed ones. Between requests the host
/// delivers dispatch answers and runs due ticks, untimed, as a gateway's event loop would.
fn measure(host: &mut Host, warmup: usize, iterations: usize, expect: Expect) -> Result<Summary> {
    let spec = traced_request(SERVICE);
    let mut samples = Vec::with_capacity(iterations);
    for n in 0..warmup + iterations {
        let request_spec = spec.clone();
        let started = Instant::now();
        let request = host.request(0, request_spec).map_err(anyhow::Error::msg)?;
        respond(host, request)?;
        let took = started.elapsed();
        check(host, request, &expect)?;
        host.take_record(request);
        host.take_record(request);
        if n >= warmup {
            samples.push(took);
        }
        host.advance(Duration::ZERO).map_err(anyhow::Error::msg)?;
    }
    if !host.traps().is_empty() {
        bail!("the filter trapped: {:?}", host.traps());
    }
    Ok(Summary::of(&mut samples))
}

fn check(host: &Host, request: RequestHandle, expect: &Expect) -> Result<()> {
    let (what, seen) = match expect {
        Expect::Nothing => return Ok(()),
        Expect::LookupHeader(want) => (*want, lookup_header(host, request)),
        Expect::LookupAttribute(want) => (*want, lookup_attribute(host, request)),
    };
    if seen.as_deref() != Some(what) {
        bail!("expected lookup `{what}`, the filter reported {seen:?}");
    }
    Ok(())
}

/// Sends one request and waits until the filter let it go upstream (a miss pauses it).
fn prime(host: &mut Host) -> Result<()> {
    let request = host
        .request(0, traced_request(SERVICE))
        .map_err(anyhow::Error::msg)?;
    forward_and_respond(host, &[request], WAIT)
}

pub fn run(wasm: &Wasm, warmup: usize, iterations: usize) -> Result<HostCost> {
    let mut host =
        Host::new(host_options(&wasm.empty, String::new(), 1)).map_err(anyhow::Error::msg)?;
    let no_filter = measure(&mut host, warmup, iterations, Expect::Nothing)?;

    let mut host = Host::new(host_options(
        &wasm.baseline,
        BASELINE_ON_KONG.to_string(),
        1,
    ))
    .map_err(anyhow::Error::msg)?;
    let baseline = measure(&mut host, warmup, iterations, Expect::Nothing)?;

    let mut host =
        Host::new(host_options(&wasm.hit_calls, String::new(), 1)).map_err(anyhow::Error::msg)?;
    let hit_calls = measure(&mut host, warmup, iterations, Expect::Nothing)?;

    let consul = ConsulStandin::start(ConsulOptions::default())?;
    register(&consul, SERVICE, 3);

    let config = enricher_config(&consul, "", r#""ttl_s":3600"#);
    let mut host =
        Host::new(host_options(&wasm.enricher, config, 1)).map_err(anyhow::Error::msg)?;
    prime(&mut host)?;
    let calls = consul.requests("/v1/catalog/service/");
    let hit = measure(&mut host, warmup, iterations, Expect::LookupHeader("hit"))?;
    if consul.requests("/v1/catalog/service/") != calls {
        bail!("cache hits called Consul");
    }

    // Stale: the entry outlived its 1 s TTL and its refresh is in flight (Consul answers
    // slowly): on Kong the first request that found it stale carries the refresh and waits
    // for it, so every measured request is served stale.
    let config = enricher_config(
        &consul,
        r#""timeout_ms":30000"#,
        r#""ttl_s":1,"stale_s":3600"#,
    );
    let mut host =
        Host::new(host_options(&wasm.enricher, config, 1)).map_err(anyhow::Error::msg)?;
    prime(&mut host)?;
    std::thread::sleep(Duration::from_millis(1100));
    consul.set_fault(Fault::Delay(Duration::from_secs(30)));
    host.request(0, traced_request(SERVICE))
        .map_err(anyhow::Error::msg)?;
    let stale = measure(&mut host, warmup, iterations, Expect::LookupHeader("stale"))?;
    consul.set_fault(Fault::None);

    // Consul down: the first request waited for one timeout; later ones pass through
    // without calling Consul while the backoff runs.
    let down = ConsulStandin::start(ConsulOptions::default())?;
    down.set_fault(Fault::Delay(Duration::from_secs(60)));
    let config = enricher_config(
        &down,
        r#""timeout_ms":200"#,
        r#""backoff_s":3600,"max_backoff_s":3600"#,
    );
    let mut host =
        Host::new(host_options(&wasm.enricher, config, 1)).map_err(anyhow::Error::msg)?;
    prime(&mut host)?;
    // The filter hands its counts to the host on the tick.
    host.tick_all().map_err(anyhow::Error::msg)?;
    if host.metric("consul_enricher_consul_timeouts_total") != Some(1) {
        bail!("the first request did not end in a Consul timeout");
    }
    let consul_down = measure(
        &mut host,
        warmup,
        iterations,
        Expect::LookupAttribute("error"),
    )?;
    if down.requests("/v1/catalog/service/") != 1 {
        bail!("Consul was called again during the backoff");
    }

    Ok(HostCost {
        no_filter,
        baseline,
        hit_calls,
        hit,
        stale,
        consul_down,
    })
}
