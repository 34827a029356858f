//! `bench-fleet`: what a fleet of gateways costs Consul, and how fast a change in Consul
//! reaches the requests, in poll mode (refresh once per TTL) and in watch mode (blocking
//! queries). Several `gateway` processes (the test host's serve mode), each with several
//! workers, run the filter against one Consul stand-in holding many services; a steady load
//! spread over the services runs for a while, and half-way one instance's meta `version`
//! changes. Ends with machine-readable `key value` lines; a figure that could not be
//! measured is `n/a`, with the reason above it.
//!
//! Figures:
//! - Consul requests per service per minute, during the load (after a first pass that put
//!   every service in every gateway's cache).
//! - Change propagation: from the change to the first request through each gateway whose
//!   upstream saw the new version in `x-consul-meta-version`, p50/p99 over the gateways.
//!   Besides the load, every gateway is probed for the changed service every 20 ms from the
//!   change on.
//!
//! Before the load, a first pass requests every service once through each gateway, spread
//! over one refresh period (the TTL in poll mode, the longer of TTL and `wait` in watch
//! mode), each gateway starting elsewhere in the list: refreshes then fall at spread phases,
//! across services and across gateways, as in a fleet that has run for a while, and the
//! load sees the steady state (a quick first pass would align them all).
//! - Wasm memory per worker and shared-data bytes per gateway, from the gateways' exit
//!   reports, for the fleet's services and for a larger catalog (one gateway, every service
//!   requested as many times as it has workers).
//!
//! Watch mode is the filter's `"consul": {"watch": true, "wait_s": .., "min_watch_interval_ms":
//! ..}`; a filter that refuses those keys logs "invalid configuration" and passes requests
//! through, and the bench then reports watch mode as refused. The gateways run the test
//! host's Kong flavour, and on Kong the filter has no watch (it logs that it refreshes
//! every TTL instead): watch mode is then reported as refused too. The `consul.change_visible_*`
//! keys are watch mode's; poll mode's carry a `.poll` suffix.
//!
//! Usage: `bench-fleet [--quick] [--gateways N] [--workers N] [--services N] [--instances N]
//! [--seconds S] [--rate R] [--ttl-s S] [--wait-s S] [--scale-services N] [--cached]
//! [--health]`. `--quick` runs small and briefly, to check that the bench runs; its figures
//! mean nothing.

mod load;
mod recorder;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use standins::{ConsulOptions, ConsulStandin, Instance};

use consul_enricher_bench::gateway::{ExitReport, Gateway, Instances, Launch};
use load::{Counts, SteadyLoad};
use recorder::Recorder;

const USAGE: &str = "usage: bench-fleet [--quick] [--gateways N] [--workers N] [--services N] \
[--instances N] [--seconds S] [--rate R] [--ttl-s S] [--wait-s S] [--scale-services N] \
[--cached] [--health]";
const CONNECTIONS_PER_GATEWAY: usize = 4;
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
const MIN_WATCH_INTERVAL_MS: u64 = 1000;
const OLD_VERSION: &str = "1.0.0";
const NEW_VERSION: &str = "2.0.0";
/// How long after the load a change may still become visible before it counts as missed,
/// beyond the TTL or wait.
const VISIBILITY_SLACK: Duration = Duration::from_secs(10);
const CONSUL_READS: [&str; 2] = ["/v1/catalog/service/", "/v1/health/service/"];

#[derive(Debug, Clone)]
struct Settings {
    gateways: usize,
    workers: usize,
    services: usize,
    instances: usize,
    seconds: u64,
    rate: u32,
    ttl_s: u64,
    wait_s: u64,
    scale_services: usize,
    cached: bool,
    health: bool,
}

const FULL: Settings = Settings {
    gateways: 4,
    workers: 4,
    services: 1_000,
    instances: 3,
    seconds: 60,
    rate: 1_000,
    ttl_s: 30,
    wait_s: 60,
    scale_services: 10_000,
    cached: false,
    health: false,
};

const QUICK: Settings = Settings {
    gateways: 2,
    workers: 2,
    services: 100,
    instances: 2,
    seconds: 6,
    rate: 300,
    ttl_s: 2,
    wait_s: 2,
    scale_services: 300,
    cached: false,
    health: false,
};

fn parse_args() -> Result<Settings> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut settings = if args.iter().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let mut number = || -> Result<u64> {
            let value = args
                .next()
                .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| anyhow!("{flag}: {value:?} is not a positive number"))
        };
        match flag.as_str() {
            "--quick" => {}
            "--gateways" => settings.gateways = number()? as usize,
            "--workers" => settings.workers = number()? as usize,
            "--services" => settings.services = number()? as usize,
            "--instances" => settings.instances = number()? as usize,
            "--seconds" => settings.seconds = number()?,
            "--rate" => settings.rate = u32::try_from(number()?)?,
            "--ttl-s" => settings.ttl_s = number()?,
            "--wait-s" => settings.wait_s = number()?,
            "--scale-services" => settings.scale_services = number()? as usize,
            "--cached" => settings.cached = true,
            "--health" => settings.health = true,
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(settings)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Poll,
    Watch,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Poll => "poll",
            Mode::Watch => "watch",
        }
    }
}

/// The filter's configuration for `mode` against Consul at `consul`.
fn filter_config(settings: &Settings, mode: Mode, consul: &str) -> String {
    let mut consul_keys = format!(r#""upstream":"{consul}""#);
    if mode == Mode::Watch {
        consul_keys.push_str(&format!(
            r#","watch":true,"wait_s":{},"min_watch_interval_ms":{MIN_WATCH_INTERVAL_MS}"#,
            settings.wait_s
        ));
    }
    if settings.cached {
        consul_keys.push_str(r#","cached":true"#);
    }
    if settings.health {
        consul_keys.push_str(r#","endpoint":"health""#);
    }
    format!(
        r#"{{"host":"kong","consul":{{{consul_keys}}},"cache":{{"ttl_s":{}}}}}"#,
        settings.ttl_s
    )
}

fn service_name(n: usize) -> String {
    format!("svc-{n}")
}

/// `services` services of `instances` instances each; the first instance of each is the
/// recorder (the gateways' upstream), so the filter can match it on the response.
fn catalog(services: usize, instances: usize, recorder: &Recorder) -> Result<ConsulStandin> {
    let consul = ConsulStandin::start(ConsulOptions::default())?;
    for n in 0..services {
        let name = service_name(n);
        for i in 0..instances {
            let instance = Instance::new(&name, format!("{name}-{i}"))
                .tag("http")
                .meta("version", OLD_VERSION)
                .meta("region", "eu-west-1");
            let instance = if i == 0 {
                instance
                    .address(recorder.addr().ip().to_string())
                    .port(recorder.addr().port())
            } else {
                instance
                    .address(format!(
                        "10.{}.{}.{}",
                        1 + n / 65_536,
                        n / 256 % 256,
                        n % 256
                    ))
                    .port(8080 + i as u16)
            };
            consul.register(instance);
        }
    }
    Ok(consul)
}

fn consul_reads(consul: &ConsulStandin) -> u64 {
    CONSUL_READS.iter().map(|path| consul.requests(path)).sum()
}

/// The gateways started for one run, stopped (with their reports) or killed on drop.
struct Fleet {
    gateways: Vec<Gateway>,
}

impl Fleet {
    fn start(count: usize, launch: &Launch<'_>) -> Result<Fleet> {
        let gateways = (0..count)
            .map(|_| Gateway::start(launch))
            .collect::<Result<Vec<_>>>()?;
        Ok(Fleet { gateways })
    }

    fn addrs(&self) -> Vec<String> {
        self.gateways.iter().map(|g| g.addr.clone()).collect()
    }

    /// CPU time used so far by each gateway process.
    fn cpu_times(&self) -> Result<Vec<Duration>> {
        self.gateways.iter().map(Gateway::cpu_time).collect()
    }

    fn refusal(&self) -> Option<String> {
        self.gateways.iter().find_map(Gateway::refusal)
    }

    /// The filter's refusal of its configuration, which it logs while loading: the
    /// gateways pass its log lines on within a fraction of a second.
    fn refusal_at_start(&self) -> Option<String> {
        let give_up = Instant::now() + Duration::from_secs(1);
        loop {
            let refusal = self.refusal();
            if refusal.is_some() || Instant::now() >= give_up {
                return refusal;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Refused configuration, or requests that were not enriched through some gateway.
    fn check_enriched(&self, recorder: &Recorder) -> Result<Option<String>> {
        // The filter's log lines reach the gateway's stderr a moment after they are written.
        let give_up = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(refusal) = self.refusal() {
                return Ok(Some(refusal));
            }
            let unenriched = (0..self.gateways.len()).find(|g| recorder.enriched(*g) == 0);
            match unenriched {
                None => return Ok(None),
                Some(gateway) if Instant::now() >= give_up => bail!(
                    "no request through gateway {gateway} was enriched; its stderr:\n{}",
                    self.gateways[gateway].output()
                ),
                Some(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn stop(self) -> Result<Vec<ExitReport>> {
        self.gateways.into_iter().map(Gateway::stop).collect()
    }
}

struct Environment {
    gateway: PathBuf,
    wasm: PathBuf,
}

/// What one fleet run measured.
struct FleetRun {
    /// Requests of the steady load, answered `200`.
    requests: u64,
    /// Requests of the load and of the probes that failed.
    failed: u64,
    probes: u64,
    window: Duration,
    consul_requests: u64,
    cache_fetches: u64,
    held_at_end: usize,
    /// Per gateway: CPU time used during the load.
    cpu: Vec<Duration>,
    /// Per gateway: time from the change until visible, `None` when never seen.
    visible_after: Vec<Option<Duration>>,
    visibility_deadline: Duration,
    reports: Vec<ExitReport>,
}

enum Outcome<T> {
    Measured(T),
    Refused(String),
}

/// The recorder (the gateways' upstream), a Consul stand-in with `services` services and
/// `gateways` gateways running the filter in `mode`; refused when the filter refuses the
/// configuration.
fn start_fleet(
    env: &Environment,
    settings: &Settings,
    mode: Mode,
    services: usize,
    gateways: usize,
) -> Result<Outcome<(Recorder, ConsulStandin, Fleet)>> {
    let recorder = Recorder::start()?;
    let consul = catalog(services, settings.instances, &recorder)?;
    let config = filter_config(settings, mode, &consul.addr().to_string());
    let upstream = recorder.addr().to_string();
    let fleet = Fleet::start(
        gateways,
        &Launch {
            binary: &env.gateway,
            wasm: &env.wasm,
            workers: settings.workers,
            config: &config,
            instances: Instances::Upstream(&upstream),
        },
    )?;
    Ok(match fleet.refusal_at_start() {
        Some(refusal) => Outcome::Refused(refusal),
        None => Outcome::Measured((recorder, consul, fleet)),
    })
}

fn fleet_run(env: &Environment, settings: &Settings, mode: Mode) -> Result<Outcome<FleetRun>> {
    let (recorder, consul, fleet) =
        match start_fleet(env, settings, mode, settings.services, settings.gateways)? {
            Outcome::Measured(started) => started,
            Outcome::Refused(refusal) => return Ok(Outcome::Refused(refusal)),
        };
    let addrs = fleet.addrs();
    // The second instance of a service in the middle (the only one if there is one).
    let changed_service = service_name(settings.services / 2);
    let changed_instance = format!("{changed_service}-{}", settings.instances.min(2) - 1);
    let services: Arc<Vec<String>> = Arc::new((0..settings.services).map(service_name).collect());

    let refresh_period = Duration::from_secs(match mode {
        Mode::Poll => settings.ttl_s,
        Mode::Watch => settings.ttl_s.max(settings.wait_s),
    });
    let warmup = Counts::default();
    load::spread_pass(
        &addrs,
        &services,
        CONNECTIONS_PER_GATEWAY,
        refresh_period,
        &warmup,
    );
    if warmup.failed() > 0 {
        bail!(
            "{} of {} first requests failed",
            warmup.failed(),
            warmup.ok() + warmup.failed()
        );
    }
    if let Some(refusal) = fleet.check_enriched(&recorder)? {
        return Ok(Outcome::Refused(refusal));
    }

    let window = Duration::from_secs(settings.seconds);
    let reads_before = consul_reads(&consul);
    let fetches_before = consul.agent_cache_fetches();
    let cpu_before = fleet.cpu_times()?;
    let started = Instant::now();
    let steady = SteadyLoad::start(
        &addrs,
        Arc::clone(&services),
        CONNECTIONS_PER_GATEWAY,
        settings.rate,
    );
    std::thread::sleep(window / 2);
    let changed_at = Instant::now();
    consul
        .set_meta(&changed_instance, "version", NEW_VERSION)
        .ok_or_else(|| anyhow!("no instance {changed_instance}"))?;
    let visibility_deadline =
        Duration::from_secs(settings.ttl_s.max(settings.wait_s)) + VISIBILITY_SLACK;
    let probes = Counts::default();
    let visible = |gateway: usize| {
        recorder
            .first_with(gateway, &changed_service, NEW_VERSION)
            .is_some()
    };
    // The probes may outlast the load; the load and the Consul count end with the window.
    let (cpu_after, requests, failed, consul_requests, cache_fetches, held_at_end, elapsed) =
        std::thread::scope(|scope| {
            scope.spawn(|| {
                load::probe_until(
                    &addrs,
                    &changed_service,
                    PROBE_INTERVAL,
                    changed_at + visibility_deadline,
                    &visible,
                    &probes,
                )
            });
            std::thread::sleep((started + window).saturating_duration_since(Instant::now()));
            let held_at_end = consul.held_queries("/v1/");
            let elapsed = started.elapsed();
            let cpu_after = fleet.cpu_times();
            let steady = steady.stop();
            (
                cpu_after,
                steady.ok(),
                steady.failed(),
                consul_reads(&consul) - reads_before,
                consul.agent_cache_fetches() - fetches_before,
                held_at_end,
                elapsed,
            )
        });
    let visible_after = (0..settings.gateways)
        .map(|g| {
            recorder
                .first_with(g, &changed_service, NEW_VERSION)
                .map(|at| at.saturating_duration_since(changed_at))
        })
        .collect();
    let cpu = cpu_after?
        .iter()
        .zip(&cpu_before)
        .map(|(after, before)| after.saturating_sub(*before))
        .collect();
    let reports = fleet.stop()?;
    Ok(Outcome::Measured(FleetRun {
        requests,
        failed: failed + probes.failed(),
        probes: probes.ok(),
        window: elapsed,
        consul_requests,
        cache_fetches,
        held_at_end,
        cpu,
        visible_after,
        visibility_deadline,
        reports,
    }))
}

/// One gateway in poll mode after each of `services` services was requested as many times
/// as it has workers.
fn scale_run(
    env: &Environment,
    settings: &Settings,
    services: usize,
) -> Result<Outcome<ExitReport>> {
    let (recorder, _consul, fleet) = match start_fleet(env, settings, Mode::Poll, services, 1)? {
        Outcome::Measured(started) => started,
        Outcome::Refused(refusal) => return Ok(Outcome::Refused(refusal)),
    };
    let names: Vec<String> = (0..services).map(service_name).collect();
    let counts = Counts::default();
    // The gateway hands requests to its workers in turn.
    for _ in 0..settings.workers {
        load::every_service_once(&fleet.addrs(), &names, CONNECTIONS_PER_GATEWAY, &counts);
    }
    if counts.failed() > 0 {
        bail!("{} requests of the scale run failed", counts.failed());
    }
    if let Some(refusal) = fleet.check_enriched(&recorder)? {
        return Ok(Outcome::Refused(refusal));
    }
    let mut reports = fleet.stop()?;
    reports
        .pop()
        .map(Outcome::Measured)
        .ok_or_else(|| anyhow!("no exit report"))
}

/// Nearest-rank percentile; `None` when the rank falls on a gateway that never saw the
/// change (missing samples sort last).
fn percentile(samples: &[Option<Duration>], pct: f64) -> Option<Duration> {
    let mut sorted: Vec<Option<Duration>> = samples.to_vec();
    sorted.sort_by_key(|sample| sample.unwrap_or(Duration::MAX));
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    *sorted.get(rank.clamp(1, sorted.len().max(1)) - 1)?
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn memory_line(reports: &[ExitReport]) -> String {
    let workers: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.worker_memory_bytes.iter().copied())
        .collect();
    let min = workers.iter().copied().min().unwrap_or(0);
    let max = workers.iter().copied().max().unwrap_or(0);
    let mean = workers.iter().sum::<u64>() as f64 / workers.len().max(1) as f64;
    let keys =
        reports.iter().map(|r| r.shared_data_keys).sum::<u64>() / reports.len().max(1) as u64;
    let bytes =
        reports.iter().map(|r| r.shared_data_bytes).sum::<u64>() / reports.len().max(1) as u64;
    format!(
        "wasm memory per worker {:.2}-{:.2} MiB (mean {:.2}, {} workers); shared data per gateway {keys} keys, {bytes} bytes",
        mib(min),
        mib(max),
        mean / 1_048_576.0,
        workers.len()
    )
}

fn millis(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "n/a".to_string(),
        |d| format!("{:.0}", d.as_secs_f64() * 1e3),
    )
}

/// Prints one mode's figures; returns (requests per service-minute, p50, p99).
fn report_fleet(
    settings: &Settings,
    outcome: &Outcome<FleetRun>,
) -> (Option<f64>, Option<Duration>, Option<Duration>) {
    let run = match outcome {
        Outcome::Refused(line) => {
            println!("  refused: the filter does not accept this configuration, no figures:");
            println!("    {line}");
            return (None, None, None);
        }
        Outcome::Measured(run) => run,
    };
    let minutes = run.window.as_secs_f64() / 60.0;
    let per_service_minute = run.consul_requests as f64 / settings.services as f64 / minutes;
    println!(
        "  load: {} requests through the gateways in {:.1} s ({:.0}/s), {} probes, {} failed",
        run.requests,
        run.window.as_secs_f64(),
        run.requests as f64 / run.window.as_secs_f64(),
        run.probes,
        run.failed
    );
    println!(
        "  Consul: {} requests during the load = {per_service_minute:.3} per service per minute; {} blocking queries held at the end",
        run.consul_requests, run.held_at_end
    );
    let cpu_share: Vec<f64> = run
        .cpu
        .iter()
        .map(|c| 100.0 * c.as_secs_f64() / run.window.as_secs_f64())
        .collect();
    println!(
        "  gateway CPU during the load: {:.0}-{:.0}% of a core per gateway ({} workers each; load, filter and ticks)",
        cpu_share.iter().copied().fold(f64::INFINITY, f64::min),
        cpu_share.iter().copied().fold(0.0, f64::max),
        settings.workers
    );
    if settings.cached {
        println!(
            "  agent cache: {} fetches from the servers during the load",
            run.cache_fetches
        );
    }
    let p50 = percentile(&run.visible_after, 50.0);
    let p99 = percentile(&run.visible_after, 99.0);
    let missed = run.visible_after.iter().filter(|v| v.is_none()).count();
    println!(
        "  change visible after: p50 {} ms, p99 {} ms over {} gateways (probes every {} ms){}",
        millis(p50),
        millis(p99),
        run.visible_after.len(),
        PROBE_INTERVAL.as_millis(),
        if missed > 0 {
            format!(
                "; not visible through {missed} within {} s",
                run.visibility_deadline.as_secs()
            )
        } else {
            String::new()
        }
    );
    println!(
        "  {} services: {}",
        settings.services,
        memory_line(&run.reports)
    );
    (Some(per_service_minute), p50, p99)
}

fn key_line(key: &str, value: Option<String>) {
    println!("{key} {}", value.unwrap_or_else(|| "n/a".to_string()));
}

fn main() -> Result<()> {
    let settings = parse_args()?;
    let env = Environment {
        gateway: consul_enricher_bench::gateway_binary()?,
        wasm: test_host::artifacts::filter_wasm().map_err(|e| anyhow!("{e:#}"))?,
    };
    println!("filter:  {}", env.wasm.display());
    println!("gateway: {}", env.gateway.display());
    println!(
        "\nFleet: {} gateways x {} workers, {} services x {} instances, {} req/s for {} s, \
         one instance's meta version changed at {} s (Consul endpoint {}{})",
        settings.gateways,
        settings.workers,
        settings.services,
        settings.instances,
        settings.rate,
        settings.seconds,
        settings.seconds / 2,
        if settings.health {
            "health, passing"
        } else {
            "catalog"
        },
        if settings.cached { ", agent cache" } else { "" },
    );

    let mut figures = Vec::new();
    for mode in [Mode::Poll, Mode::Watch] {
        match mode {
            Mode::Poll => println!("\npoll mode (cache.ttl_s {}):", settings.ttl_s),
            Mode::Watch => println!(
                "\nwatch mode (consul.watch, wait_s {}, min_watch_interval_ms {MIN_WATCH_INTERVAL_MS}; cache.ttl_s {}):",
                settings.wait_s, settings.ttl_s
            ),
        }
        let outcome = fleet_run(&env, &settings, mode)
            .with_context(|| format!("fleet run in {} mode", mode.name()))?;
        figures.push(report_fleet(&settings, &outcome));
    }
    if figures[0].0.is_none() {
        bail!("poll mode must run with every filter configuration");
    }

    println!(
        "\nLarger catalog: one gateway x {} workers, every service requested {} times (the \
         gateway deals requests to its workers in turn):",
        settings.workers, settings.workers
    );
    // Poll mode only: watch mode holds one connection per watched service (each call of
    // a Proxy-Wasm filter is one HTTP/1.1 request), thousands here, far past what a Consul
    // agent accepts from one address by default (`limits.http_max_conns_per_client`, 200)
    // and past this machine's open-file limit. Its memory at 1,000 services is above.
    match scale_run(&env, &settings, settings.scale_services).context("scale run in poll mode")? {
        Outcome::Measured(report) => println!(
            "  poll mode, {} services: {}",
            settings.scale_services,
            memory_line(&[report])
        ),
        Outcome::Refused(_) => bail!("poll mode must run with every filter configuration"),
    }

    let [poll, watch] = [figures[0], figures[1]];
    println!();
    key_line(
        "consul.requests_per_service_minute.poll",
        poll.0.map(|v| format!("{v:.3}")),
    );
    key_line(
        "consul.requests_per_service_minute.watch",
        watch.0.map(|v| format!("{v:.3}")),
    );
    key_line(
        "consul.change_visible_p50_ms",
        watch.1.map(|d| millis(Some(d))),
    );
    key_line(
        "consul.change_visible_p99_ms",
        watch.2.map(|d| millis(Some(d))),
    );
    key_line(
        "consul.change_visible_p50_ms.poll",
        poll.1.map(|d| millis(Some(d))),
    );
    key_line(
        "consul.change_visible_p99_ms.poll",
        poll.2.map(|d| millis(Some(d))),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_put_missed_gateways_last() {
        let ms = |n| Some(Duration::from_millis(n));
        let samples = [ms(300), ms(100), None, ms(200)];
        assert_eq!(percentile(&samples, 50.0), ms(200));
        assert_eq!(percentile(&samples, 99.0), None);
        assert_eq!(percentile(&samples[..2], 99.0), ms(300));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn watch_mode_adds_the_watch_keys() {
        let poll = filter_config(&FULL, Mode::Poll, "127.0.0.1:8500");
        assert_eq!(
            poll,
            r#"{"host":"kong","consul":{"upstream":"127.0.0.1:8500"},"cache":{"ttl_s":30}}"#
        );
        let watch = filter_config(
            &Settings {
                cached: true,
                health: true,
                ..FULL
            },
            Mode::Watch,
            "127.0.0.1:8500",
        );
        assert_eq!(
            watch,
            r#"{"host":"kong","consul":{"upstream":"127.0.0.1:8500","watch":true,"wait_s":60,"min_watch_interval_ms":1000,"cached":true,"endpoint":"health"},"cache":{"ttl_s":30}}"#
        );
    }
}
