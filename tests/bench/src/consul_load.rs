//! The load the filter puts on Consul, and what its cache costs the workers' memory.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use consul_enricher::config::Config;
use standins::{ConsulOptions, ConsulStandin, Instance};
use test_host::{Host, RequestHandle};

use crate::fixtures::{
    enricher_config, forward_and_respond, host_options, lookup_header, register, respond,
    traced_request, Wasm,
};

const WORKERS: usize = 4;
const CATALOG: &str = "/v1/catalog/service/";

/// Consul calls for `requests` requests arriving together, round robin over four workers,
/// for a service nobody has looked up yet.
pub fn cold_burst(wasm: &Wasm, requests: usize) -> Result<u64> {
    let consul = ConsulStandin::start(ConsulOptions::default())?;
    register(&consul, "echo", 3);
    let config = enricher_config(&consul, "", "");
    let mut host =
        Host::new(host_options(&wasm.enricher, config, WORKERS)).map_err(anyhow::Error::msg)?;
    let handles = (0..requests)
        .map(|n| host.request(n % WORKERS, traced_request("echo")))
        .collect::<Result<Vec<RequestHandle>, _>>()
        .map_err(anyhow::Error::msg)?;
    forward_and_respond(&mut host, &handles, Duration::from_secs(30))?;
    for handle in &handles {
        if lookup_header(&host, *handle).as_deref() != Some("miss") {
            bail!("a request of the cold burst was not enriched from the lookup");
        }
    }
    Ok(consul.requests(CATALOG))
}

pub struct SteadyState {
    pub requests: usize,
    pub services: usize,
    pub ttl_s: u64,
    pub elapsed: Duration,
    pub calls: u64,
    /// Calls the design allows: one per TTL per service, plus each service's first lookup.
    pub allowed: u64,
}

/// `requests` requests paced at `rate` per second over four workers and `services`
/// services with a 1 s TTL, so entries go stale and are refreshed during the run.
pub fn steady_state(
    wasm: &Wasm,
    requests: usize,
    services: usize,
    rate: u32,
) -> Result<SteadyState> {
    const TTL_S: u64 = 1;
    let consul = ConsulStandin::start(ConsulOptions::default())?;
    let names: Vec<String> = (0..services).map(|n| format!("svc-{n}")).collect();
    for name in &names {
        register(&consul, name, 2);
    }
    let config = enricher_config(&consul, "", &format!(r#""ttl_s":{TTL_S},"stale_s":60"#));
    let mut host =
        Host::new(host_options(&wasm.enricher, config, WORKERS)).map_err(anyhow::Error::msg)?;
    let interval = Duration::from_secs(1) / rate;
    let started = Instant::now();
    let mut held = Vec::new();
    for n in 0..requests {
        let due = started + interval * n as u32;
        loop {
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            host.advance(left).map_err(anyhow::Error::msg)?;
        }
        let request = host
            .request(n % WORKERS, traced_request(&names[n % services]))
            .map_err(anyhow::Error::msg)?;
        if host
            .record(request)
            .is_some_and(|r| r.phase == test_host::Phase::Forwarded)
        {
            respond(&mut host, request)?;
        } else {
            held.push(request);
        }
    }
    forward_and_respond(&mut host, &held, Duration::from_secs(10))?;
    let elapsed = started.elapsed();
    if !host.traps().is_empty() {
        bail!("the filter trapped: {:?}", host.traps());
    }
    let calls = consul.requests(CATALOG);
    let periods = elapsed.as_secs_f64() / TTL_S as f64;
    Ok(SteadyState {
        requests,
        services,
        ttl_s: TTL_S,
        elapsed,
        calls,
        allowed: services as u64 * (1 + periods.ceil() as u64),
    })
}

pub struct Memory {
    pub services: usize,
    pub before: Vec<usize>,
    pub after: Vec<usize>,
}

/// Wasm linear memory of each of four workers after every worker served `services`
/// distinct services (each looked up once in Consul, then cached).
pub fn memory(wasm: &Wasm, services: usize) -> Result<Memory> {
    const BATCH: usize = 500;
    let consul = ConsulStandin::start(ConsulOptions::default())?;
    for n in 0..services {
        consul.register(
            Instance::new(format!("svc-{n}"), format!("svc-{n}-0"))
                .address("10.0.2.1")
                .port(8080)
                .meta("version", "2.0.1")
                .meta("region", "eu-west-1"),
        );
    }
    let config = enricher_config(&consul, "", r#""ttl_s":3600"#);
    let mut host =
        Host::new(host_options(&wasm.enricher, config, WORKERS)).map_err(anyhow::Error::msg)?;
    let before = (0..WORKERS)
        .map(|w| host.memory_bytes(w))
        .collect::<Option<Vec<_>>>();
    let mut start = 0;
    while start < services {
        let batch = start..(start + BATCH).min(services);
        for worker in 0..WORKERS {
            let handles = batch
                .clone()
                .map(|n| host.request(worker, traced_request(&format!("svc-{n}"))))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            forward_and_respond(&mut host, &handles, Duration::from_secs(30))?;
        }
        start = batch.end;
    }
    let keys = Config::default();
    let cached = (0..services)
        .filter(|n| {
            host.shared_data(&keys.entry_key(&format!("svc-{n}")))
                .is_some()
        })
        .count();
    if cached < services {
        bail!("only {cached} of {services} services are cached");
    }
    let after = (0..WORKERS)
        .map(|w| host.memory_bytes(w))
        .collect::<Option<Vec<_>>>();
    match (before, after) {
        (Some(before), Some(after)) => Ok(Memory {
            services,
            before,
            after,
        }),
        _ => bail!("the host does not report the workers' memory"),
    }
}
