//! `bench-soak`: the filter under a steady load while Consul fails, through the official
//! Envoy (envoy/envoy.yaml, 2 workers) and through the test host's Kong flavour (the
//! `gateway` binary, 2 workers), one after the other, each in front of echo-service
//! processes. Consul (the stand-in) goes through a cycle of phases: healthy, unreachable
//! (nothing listens), 500, 429 with `Retry-After`, slower than `consul.timeout_ms`, invalid
//! JSON, an answer larger than `consul.max_body_bytes`, a reset mid-answer; and healthy
//! again. Every phase adds a service the load then asks for (a cold service), and one
//! instance's `version` changes once, in the middle of the faults.
//!
//! Per phase it prints requests per second, failed requests, latency, the `consul.lookup`
//! outcomes and the Consul calls; then per gateway the key figures as `key value` lines
//! (targets in docs/soak.md):
//! - `soak.<gateway>.failed_requests`: answers other than 2xx and connection errors, whole run.
//! - `soak.<gateway>.p99_ms_during_faults`: requests during faults for a service that had
//!   no usable entry when the fault began (the only ones that may wait for Consul);
//!   `..._cached` is the same for the others (hits and stale entries, which never wait).
//! - `soak.<gateway>.calls_per_service_per_backoff`: the most Consul calls one service got
//!   within any `cache.backoff_s` during faults (by arrival time), beside the bound the backoff
//!   policy sets (`..._bound`).
//! - `soak.<gateway>.rss_growth_pct`: the gateway's resident memory, end against after the
//!   first phase.
//! - `soak.<gateway>.recovered_within_ttl`: 1 when, after the last fault, every service was
//!   answered as a `hit` with Consul's current values within one `cache.ttl_s`
//!   (`soak.<gateway>.recovery_ms`: how long it took).
//!
//! `--external URL --consul-listen ADDR --echo-listen ADDR,ADDR` drives a gateway this
//! program does not start (docs/soak.md shows an nginx configuration for it).

mod gate;
mod load;
mod report;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use standins::{ConsulOptions, ConsulStandin, Fault, Instance};

use consul_enricher_bench::gateway::{Gateway, Instances, Launch};
use gate::ConsulGate;
use load::{Load, Steering};
use real_envoy::{EchoService, Envoy, Loopback};
use report::{Phase, Run};

const USAGE: &str = "usage: bench-soak [--quick] [--phase-s S] [--minutes M] [--threads N] \
[--rate R] [--services N] [--gateways envoy,kong] \
[--external URL --consul-listen ADDR --echo-listen ADDR,ADDR [--rss-pid PID]...]";

const TIMEOUT_MS: u32 = 300;
const TTL_S: u32 = 2;
/// Backoff after a failed call: `backoff_s` doubling up to `max_backoff_s` (src/cache.rs).
/// A service in backoff is not asked before it ends, so recovery within one TTL needs the
/// longest backoff below the TTL.
const BACKOFF_S: u32 = 1;
const MAX_BACKOFF_S: u32 = 1;
/// Consul answers larger than this are refused; the oversized phase answers twice as much.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// The slow phase answers this long after `timeout_ms`.
const SLOW_BY: Duration = Duration::from_millis(700);
const ECHO_INSTANCES: usize = 2;
const OLD_VERSION: &str = "1.0.0";
const NEW_VERSION: &str = "2.0.0";
/// What the upstream sees once one of two instances has the new version.
const MIXED_VERSIONS: &str = "1.0.0,2.0.0";

#[derive(Debug, Clone)]
struct Settings {
    phase: Duration,
    /// Fault cycles; `--minutes` sets how many.
    cycles: usize,
    threads: usize,
    rate: u32,
    /// Services known before the load starts; each phase adds one.
    services: usize,
    gateways: Vec<String>,
    external: Option<External>,
}

#[derive(Debug, Clone)]
struct External {
    url: String,
    consul_listen: SocketAddr,
    echo_listen: Vec<SocketAddr>,
    rss_pids: Vec<u32>,
}

const FULL: Settings = Settings {
    phase: Duration::from_secs(6),
    cycles: 1,
    threads: 8,
    rate: 800,
    services: 4,
    gateways: Vec::new(),
    external: None,
};

const QUICK: Settings = Settings {
    phase: Duration::from_secs(2),
    cycles: 1,
    threads: 4,
    rate: 300,
    services: 3,
    gateways: Vec::new(),
    external: None,
};

fn parse_args() -> Result<Settings> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut settings = if args.iter().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    settings.gateways = vec!["envoy".into(), "kong".into()];
    let (mut minutes, mut external_url, mut consul_listen, mut echo_listen, mut rss_pids) =
        (None, None, None, Vec::new(), Vec::new());
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        if flag == "--quick" {
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
        let number = || -> Result<u64> {
            value
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| anyhow!("{flag}: {value:?} is not a positive number"))
        };
        match flag.as_str() {
            "--phase-s" => settings.phase = Duration::from_secs(number()?),
            "--minutes" => minutes = Some(number()?),
            "--threads" => settings.threads = number()? as usize,
            "--rate" => settings.rate = u32::try_from(number()?)?,
            "--services" => settings.services = number()? as usize,
            "--gateways" => settings.gateways = value.split(',').map(str::to_string).collect(),
            "--external" => external_url = Some(value.trim_end_matches('/').to_string()),
            "--consul-listen" => consul_listen = Some(value.parse()?),
            "--echo-listen" => {
                echo_listen = value.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            "--rss-pid" => rss_pids.push(u32::try_from(number()?)?),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if let Some(minutes) = minutes {
        let cycle = settings.phase * Schedule::PHASES_PER_CYCLE as u32;
        settings.cycles = (Duration::from_secs(minutes * 60).as_secs_f64() / cycle.as_secs_f64())
            .ceil()
            .max(1.0) as usize;
    }
    for gateway in &settings.gateways {
        if !["envoy", "kong"].contains(&gateway.as_str()) {
            bail!("--gateways: {gateway:?} is neither envoy nor kong");
        }
    }
    settings.external = match (external_url, consul_listen) {
        (Some(url), Some(consul_listen)) if echo_listen.len() == ECHO_INSTANCES => {
            Some(External {
                url,
                consul_listen,
                echo_listen,
                rss_pids,
            })
        }
        (None, None) if echo_listen.is_empty() && rss_pids.is_empty() => None,
        _ => bail!(
            "--external needs --consul-listen and --echo-listen with {ECHO_INSTANCES} addresses\n{USAGE}"
        ),
    };
    Ok(settings)
}

/// The order of phases: healthy, then each cycle's faults and a healthy phase after them;
/// the last healthy phase is the recovery.
struct Schedule {
    phases: Vec<Phase>,
    /// The phase at whose start one instance's version changes.
    version_change: usize,
}

impl Schedule {
    const FAULTS: [Phase; 7] = [
        Phase::Unreachable,
        Phase::Status500,
        Phase::Status429,
        Phase::Slow,
        Phase::InvalidJson,
        Phase::Oversized,
        Phase::ResetMidBody,
    ];
    const PHASES_PER_CYCLE: usize = Self::FAULTS.len() + 1;

    fn new(cycles: usize) -> Schedule {
        let mut phases = vec![Phase::Healthy];
        for _ in 0..cycles {
            phases.extend(Self::FAULTS);
            phases.push(Phase::Healthy);
        }
        // The 500 phase of the middle cycle.
        let version_change = 1 + (cycles / 2) * Self::PHASES_PER_CYCLE + 1;
        Schedule {
            phases,
            version_change,
        }
    }
}

fn service_name(index: usize) -> String {
    // One width for all, so that no name is a prefix of another (Consul paths are counted
    // by prefix).
    format!("svc-{index:03}")
}

/// The filter's Consul and the way to it, and the services' instances.
struct World {
    /// The filter's Consul, behind the gate.
    consul: ConsulStandin,
    gate: ConsulGate,
    /// The Kong flavour's own instance resolution (Kong's DNS in production), never failing.
    directory: ConsulStandin,
    echoes: Vec<EchoService>,
    services: Arc<Vec<String>>,
}

impl World {
    fn start(settings: &Settings, schedule: &Schedule) -> Result<World> {
        let consul = ConsulStandin::start(ConsulOptions::default())?;
        let directory = ConsulStandin::start(ConsulOptions::default())?;
        let (consul_listen, echo_listen) = match &settings.external {
            Some(external) => (external.consul_listen, external.echo_listen.clone()),
            None => (
                SocketAddr::from(([127, 0, 0, 1], 0)),
                vec![SocketAddr::from(([127, 0, 0, 1], 0)); ECHO_INSTANCES],
            ),
        };
        let gate = ConsulGate::open_on(consul_listen, consul.addr())?;
        let echoes = echo_listen
            .iter()
            .enumerate()
            .map(|(n, listen)| {
                EchoService::start(
                    &format!("echo-{n}"),
                    &[
                        ("LISTEN_ADDRESS", &listen.ip().to_string()),
                        ("PORT", &listen.port().to_string()),
                    ],
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let services = (0..settings.services + schedule.phases.len() - 1)
            .map(service_name)
            .collect();
        let world = World {
            consul,
            gate,
            directory,
            echoes,
            services: Arc::new(services),
        };
        for service in 0..settings.services {
            world.register(service);
        }
        Ok(world)
    }

    fn echo_addrs(&self) -> Vec<SocketAddr> {
        self.echoes.iter().map(EchoService::addr).collect()
    }

    /// The service's instances, one per echo-service process, in both Consuls.
    fn register(&self, service: usize) {
        let name = &self.services[service];
        for (n, echo) in self.echoes.iter().enumerate() {
            let instance = Instance::new(name, format!("{name}-{n}"))
                .address(echo.addr().ip().to_string())
                .port(echo.addr().port())
                .meta("version", OLD_VERSION)
                .meta("region", "eu-west");
            self.consul.register(instance.clone());
            self.directory.register(instance);
        }
    }

    fn change_version(&self, service: usize) {
        let id = format!("{}-0", self.services[service]);
        for consul in [&self.consul, &self.directory] {
            consul.set_meta(&id, "version", NEW_VERSION);
        }
    }

    /// The `x-consul-meta-version` Consul's current answer gives for `service`.
    fn current_version(&self, service: usize) -> String {
        let mut versions: Vec<String> = self
            .consul
            .instances(&self.services[service])
            .iter()
            .filter_map(|i| i.meta.get("version").cloned())
            .collect();
        versions.sort();
        versions.dedup();
        versions.join(",")
    }

    fn enter(&mut self, phase: Phase) -> Result<()> {
        let fault = match phase {
            Phase::Healthy | Phase::Unreachable => Fault::None,
            Phase::Status500 => Fault::Status(500, "rpc error making call: EOF".into()),
            Phase::Status429 => Fault::Status(
                429,
                "Your IP is issuing too many concurrent connections, please rate limit your calls"
                    .into(),
            ),
            Phase::Slow => Fault::Delay(Duration::from_millis(u64::from(TIMEOUT_MS)) + SLOW_BY),
            Phase::InvalidJson => Fault::InvalidJson,
            Phase::Oversized => Fault::Oversized(2 * MAX_BODY_BYTES),
            Phase::ResetMidBody => Fault::ResetMidBody,
        };
        self.consul.set_fault(fault);
        match phase {
            Phase::Unreachable => self.gate.close(),
            _ => self.gate.open()?,
        }
        Ok(())
    }

    /// Consul reads of the services so far.
    fn calls(&self) -> u64 {
        self.consul.requests("/v1/catalog/service/")
    }

    /// Per service, when its reads reached Consul during faults (since `began`).
    fn fault_calls(&self, began: Instant, phases: &[report::PhaseRecord]) -> Vec<Vec<Duration>> {
        let mut calls = vec![Vec::new(); self.services.len()];
        for request in self.consul.request_log() {
            let Some(name) = request.path.strip_prefix("/v1/catalog/service/") else {
                continue;
            };
            let at = request.received.saturating_duration_since(began);
            let in_fault = phases
                .iter()
                .any(|p| p.phase.is_fault() && p.start <= at && at < p.end);
            if let (true, Some(service)) = (in_fault, self.services.iter().position(|s| s == name))
            {
                calls[service].push(at);
            }
        }
        calls
    }
}

/// The filter's configuration on top of each gateway's own.
fn filter_config() -> Value {
    json!({
        "consul": {"timeout_ms": TIMEOUT_MS, "max_body_bytes": MAX_BODY_BYTES},
        "cache": {"ttl_s": TTL_S, "backoff_s": BACKOFF_S, "max_backoff_s": MAX_BACKOFF_S},
        "spans": {"enabled": false}
    })
}

/// A gateway under test.
enum Subject {
    Envoy(Envoy),
    Kong(Gateway),
    External { url: String, pids: Vec<u32> },
}

impl Subject {
    fn start(name: &str, world: &World) -> Result<Subject> {
        match name {
            "envoy" => start_envoy(world).map(Subject::Envoy),
            _ => start_kong_flavour(world).map(Subject::Kong),
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Subject::Envoy(_) => "envoy",
            Subject::Kong(_) => "kong_flavour",
            Subject::External { .. } => "external",
        }
    }

    fn url(&self) -> String {
        match self {
            Subject::Envoy(envoy) => envoy.url(""),
            Subject::Kong(gateway) => format!("http://{}", gateway.addr),
            Subject::External { url, .. } => url.clone(),
        }
    }

    /// Resident memory, KiB (an external gateway's: the processes named, summed).
    fn rss_kib(&self) -> Result<Option<u64>> {
        Ok(match self {
            Subject::Envoy(envoy) => Some(envoy.rss_kib()?),
            Subject::Kong(gateway) => Some(gateway.rss_kib()?),
            Subject::External { pids, .. } if pids.is_empty() => None,
            Subject::External { pids, .. } => Some(
                pids.iter()
                    .map(|pid| real_envoy::rss_kib(*pid))
                    .sum::<Result<u64>>()?,
            ),
        })
    }

    /// The calls the filter made (attempts included), where the gateway says.
    fn filter_calls(&self) -> Option<i64> {
        match self {
            Subject::Envoy(envoy) => envoy.metric("consul_calls").ok(),
            _ => None,
        }
    }

    /// Concurrent calls one service may get within a backoff window: Envoy's workers share
    /// one call per service (a lease in shared data); on Kong every request that finds no
    /// usable entry waits on a call of its own (src/filter/lookup.rs).
    fn calls_bound(&self, threads: usize) -> usize {
        match self {
            Subject::Envoy(_) => 1,
            _ => threads,
        }
    }
}

/// envoy/envoy.yaml with a route `/svc/<name>/` and a cluster `<name>` (the echo instances)
/// per service: the filter takes the service from the cluster.
fn start_envoy(world: &World) -> Result<Envoy> {
    let echoes = world.echo_addrs();
    let mut config = Loopback::new(real_envoy::filter_wasm())
        .cluster("consul", [world.gate.addr()])
        .cluster("echo", echoes.iter().copied())
        .filter_config(filter_config())
        .render()?;
    let echo_cluster = config["static_resources"]["clusters"]
        .as_array()
        .and_then(|clusters| clusters.iter().find(|c| c["name"] == "echo"))
        .cloned()
        .ok_or_else(|| anyhow!("envoy/envoy.yaml has no cluster echo"))?;
    let mut routes = Vec::new();
    for name in world.services.iter() {
        let mut cluster = echo_cluster.clone();
        cluster["name"] = json!(name);
        cluster["load_assignment"]["cluster_name"] = json!(name);
        push(&mut config["static_resources"]["clusters"], cluster)?;
        routes.push(json!({
            "match": {"prefix": format!("/svc/{name}/")},
            "route": {"cluster": name, "prefix_rewrite": "/"}
        }));
    }
    let manager = real_envoy::connection_manager(real_envoy::gateway_listener(&mut config)?)?;
    let host = &mut manager["route_config"]["virtual_hosts"][0]["routes"];
    for route in routes {
        push(host, route)?;
    }
    Envoy::start_config(&config, 2)
}

fn push(list: &mut Value, item: Value) -> Result<()> {
    list.as_array_mut()
        .ok_or_else(|| anyhow!("expected a list in the rendered envoy.yaml"))?
        .push(item);
    Ok(())
}

/// The `gateway` binary as Kong: the filter's Consul behind the gate, the instances from
/// the directory.
fn start_kong_flavour(world: &World) -> Result<Gateway> {
    let mut config = json!({
        "host": "kong",
        "consul": {"upstream": world.gate.addr().to_string(), "authority": "consul"}
    });
    real_envoy::merge(&mut config, &filter_config());
    let binary = consul_enricher_bench::gateway_binary()?;
    let wasm = real_envoy::filter_wasm();
    let config = config.to_string();
    let directory = world.directory.url();
    let gateway = Gateway::start(&Launch {
        binary: &binary,
        wasm: &wasm,
        workers: 2,
        config: &config,
        instances: Instances::Consul(&directory),
    })?;
    if let Some(refusal) = gateway.refusal() {
        bail!("the filter refused its configuration: {refusal}");
    }
    Ok(gateway)
}

/// One gateway through the whole schedule.
fn soak(settings: &Settings, schedule: &Schedule, gateway: Option<&str>) -> Result<Run> {
    let mut world = World::start(settings, schedule)?;
    let subject = match (gateway, &settings.external) {
        (Some(name), _) => Subject::start(name, &world)?,
        (None, Some(external)) => Subject::External {
            url: external.url.clone(),
            pids: external.rss_pids.clone(),
        },
        (None, None) => bail!("no gateway to soak"),
    };
    let label = subject.label();
    println!(
        "\n{label}: {} phases of {:?} ({} cycle(s)), {} threads, {} req/s, services {} + 1 per phase",
        schedule.phases.len(),
        settings.phase,
        settings.cycles,
        settings.threads,
        settings.rate,
        settings.services,
    );
    let steering = Arc::new(Steering {
        phase: 0.into(),
        services: settings.services.into(),
    });
    let versions = Arc::new(vec![
        OLD_VERSION.to_string(),
        NEW_VERSION.to_string(),
        MIXED_VERSIONS.to_string(),
    ]);
    let began = Instant::now();
    let load = Load::start(
        began,
        &subject.url(),
        Arc::clone(&world.services),
        Arc::clone(&versions),
        Arc::clone(&steering),
        settings.threads,
        settings.rate,
    );
    let mut run = Run::new(
        label,
        settings.threads,
        subject.calls_bound(settings.threads),
    );
    let last = schedule.phases.len() - 1;
    for (index, &phase) in schedule.phases.iter().enumerate() {
        if index > 0 {
            world.register(settings.services + index - 1);
            steering.services.fetch_add(1, Ordering::SeqCst);
        }
        if index == schedule.version_change {
            world.change_version(0);
        }
        world.enter(phase)?;
        steering.phase.store(index, Ordering::SeqCst);
        let start = began.elapsed();
        let filter_calls = subject.filter_calls();
        // The recovery phase is long enough to see every service back after one TTL.
        let length = match index == last {
            true => settings
                .phase
                .max(Duration::from_secs(3 * u64::from(TTL_S))),
            false => settings.phase,
        };
        let calls = world.calls();
        std::thread::sleep((start + length).saturating_sub(began.elapsed()));
        let in_phase = world.calls() - calls;
        let rss_kib = subject.rss_kib()?;
        if index == 0 {
            run.rss_before_kib = rss_kib;
        }
        run.phases.push(report::PhaseRecord {
            phase,
            start,
            end: began.elapsed(),
            consul_calls: in_phase,
            filter_calls: subject
                .filter_calls()
                .zip(filter_calls)
                .map(|(after, before)| after - before),
            rss_kib,
        });
    }
    let recorded = load.stop();
    run.rss_after_kib = subject.rss_kib()?;
    run.current_versions = (0..world.services.len())
        .map(|service| {
            let current = world.current_version(service);
            versions.iter().position(|v| *v == current)
        })
        .collect();
    run.services = world.services.len();
    run.fault_calls = world.fault_calls(began, &run.phases);
    run.errors = recorded.errors;
    run.samples = recorded.samples;
    if let Subject::Kong(gateway) = subject {
        run.wasm_memory_bytes = gateway
            .stop()
            .context("the Kong flavour's gateway")?
            .worker_memory_bytes;
    }
    Ok(run)
}

fn main() -> Result<()> {
    let settings = parse_args()?;
    let schedule = Schedule::new(settings.cycles);
    println!(
        "Soak: filter {}, consul.timeout_ms {TIMEOUT_MS}, cache.ttl_s {TTL_S}, cache.backoff_s \
         {BACKOFF_S}, cache.max_backoff_s {MAX_BACKOFF_S}; {} echo-service instances per service",
        real_envoy::filter_wasm().display(),
        ECHO_INSTANCES,
    );
    let gateways: Vec<Option<&str>> = match settings.external {
        Some(_) => vec![None],
        None => settings.gateways.iter().map(|g| Some(g.as_str())).collect(),
    };
    let mut runs = Vec::new();
    for gateway in gateways {
        let run = soak(&settings, &schedule, gateway)?;
        run.print_phases(settings.phase);
        runs.push(run);
    }
    println!();
    for run in &runs {
        run.print_key_lines(TIMEOUT_MS, TTL_S, Duration::from_secs(u64::from(BACKOFF_S)));
    }
    Ok(())
}
