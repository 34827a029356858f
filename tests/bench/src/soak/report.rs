//! What one gateway's soak recorded, and the figures drawn from it: a line per phase, then
//! the key `key value` lines.

use std::time::Duration;

use consul_enricher_bench::stats::{millis, Summary};

use crate::load::{Lookup, Outcome, Sample};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Healthy,
    /// Nothing listens where the gateway reaches Consul.
    Unreachable,
    Status500,
    Status429,
    /// Answers later than `consul.timeout_ms`.
    Slow,
    InvalidJson,
    Oversized,
    ResetMidBody,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Healthy => "healthy",
            Phase::Unreachable => "unreachable",
            Phase::Status500 => "500",
            Phase::Status429 => "429+retry-after",
            Phase::Slow => "slow",
            Phase::InvalidJson => "invalid json",
            Phase::Oversized => "oversized",
            Phase::ResetMidBody => "reset mid-body",
        }
    }

    pub fn is_fault(self) -> bool {
        self != Phase::Healthy
    }
}

pub struct PhaseRecord {
    pub phase: Phase,
    /// Since the load began.
    pub start: Duration,
    pub end: Duration,
    /// Reads that reached the Consul stand-in.
    pub consul_calls: u64,
    /// Calls the filter made, unreachable ones included (where the gateway counts them).
    pub filter_calls: Option<i64>,
    /// The gateway's resident memory at the phase's end.
    pub rss_kib: Option<u64>,
}

pub struct Run {
    pub label: &'static str,
    pub threads: usize,
    pub calls_bound: usize,
    pub phases: Vec<PhaseRecord>,
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
    pub services: usize,
    /// Per service, when its reads reached Consul during faults.
    pub fault_calls: Vec<Vec<Duration>>,
    /// Per service, the index of Consul's current `version` value in the load's list.
    pub current_versions: Vec<Option<usize>>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// The filter's linear memory per worker at the end, where the gateway reports it.
    pub wasm_memory_bytes: Vec<u64>,
}

/// How far the host's clock may be off when the filter reads it (see `most_calls_within`).
const CLOCK_SLACK: Duration = Duration::from_millis(10);

fn summary(samples: impl Iterator<Item = Duration>) -> Option<Summary> {
    let mut latencies: Vec<Duration> = samples.collect();
    (!latencies.is_empty()).then(|| Summary::of(&mut latencies))
}

fn ms_or_na(summary: Option<Summary>, pick: impl Fn(&Summary) -> Duration) -> String {
    summary.map_or_else(|| "n/a".to_string(), |s| format!("{:.1}", millis(pick(&s))))
}

impl Run {
    pub fn new(label: &'static str, threads: usize, calls_bound: usize) -> Run {
        Run {
            label,
            threads,
            calls_bound,
            phases: Vec::new(),
            samples: Vec::new(),
            errors: Vec::new(),
            services: 0,
            fault_calls: Vec::new(),
            current_versions: Vec::new(),
            rss_before_kib: None,
            rss_after_kib: None,
            wasm_memory_bytes: Vec::new(),
        }
    }

    pub fn print_phases(&self, phase_length: Duration) {
        println!(
            "  {:>3} {:<15} {:>7} {:>6} {:>7} {:>7} {:>7} {:>8}   {:<44} consul calls",
            "#",
            "phase",
            "req/s",
            "failed",
            "p50 ms",
            "p99 ms",
            "max ms",
            "RSS KiB",
            "consul.lookup"
        );
        for (index, record) in self.phases.iter().enumerate() {
            let samples: Vec<&Sample> = self.samples.iter().filter(|s| s.phase == index).collect();
            let seconds = (record.end - record.start).as_secs_f64().max(1e-3);
            let latency = summary(samples.iter().map(|s| s.latency));
            let lookups: Vec<String> = Lookup::ALL
                .iter()
                .map(|&lookup| {
                    let n = samples
                        .iter()
                        .filter(|s| s.lookup() == Some(lookup))
                        .count();
                    format!("{} {n}", lookup.label())
                })
                .collect();
            let filter_calls = record
                .filter_calls
                .map_or(String::new(), |n| format!(" (filter: {n})"));
            println!(
                "  {index:>3} {:<15} {:>7.0} {:>6} {:>7} {:>7} {:>7} {:>8}   {:<44} {}{filter_calls}",
                record.phase.name(),
                samples.len() as f64 / seconds,
                samples.iter().filter(|s| s.failed()).count(),
                ms_or_na(latency, |s| s.median),
                ms_or_na(latency, |s| s.p99),
                ms_or_na(latency, |s| s.max),
                record.rss_kib.map_or("n/a".into(), |k| k.to_string()),
                lookups.join(" "),
                record.consul_calls,
            );
        }
        println!(
            "  (phases of {phase_length:?}, the last one at least three TTLs; consul calls: reads \
             that reached Consul, the filter's own count in parentheses where the gateway has one)"
        );
        if !self.wasm_memory_bytes.is_empty() {
            let mib: Vec<String> = self
                .wasm_memory_bytes
                .iter()
                .map(|b| format!("{:.2} MiB", *b as f64 / 1048576.0))
                .collect();
            println!(
                "  the filter's linear memory per worker at the end: {}",
                mib.join(", ")
            );
        }
        for error in &self.errors {
            println!("  error: {error}");
        }
    }

    /// When each service first got an answer enriched from Consul.
    fn first_usable(&self) -> Vec<Option<Duration>> {
        let mut first = vec![None; self.services];
        for sample in &self.samples {
            let usable = matches!(
                sample.outcome,
                Outcome::Answered {
                    lookup: Lookup::Hit | Lookup::Stale | Lookup::Miss,
                    version: Some(_),
                    ..
                }
            );
            if usable && first[sample.service].is_none() {
                first[sample.service] = Some(sample.answered_at());
            }
        }
        first
    }

    /// Latencies during faults: of requests for a service with no usable entry when the
    /// fault began, and of the others.
    fn fault_latencies(&self) -> (Option<Summary>, Option<Summary>) {
        let first_usable = self.first_usable();
        let (mut cold, mut cached) = (Vec::new(), Vec::new());
        for sample in &self.samples {
            let record = &self.phases[sample.phase];
            if !record.phase.is_fault() {
                continue;
            }
            match first_usable[sample.service] {
                Some(at) if at < record.start => cached.push(sample.latency),
                _ => cold.push(sample.latency),
            }
        }
        (summary(cold.into_iter()), summary(cached.into_iter()))
    }

    /// How long after the last fault every service was answered as a hit with Consul's
    /// current values; `None` if one never was.
    fn recovery(&self) -> Option<Duration> {
        let start = self.phases.last()?.start;
        let last = self.phases.len() - 1;
        (0..self.services)
            .map(|service| {
                let current = self.current_versions[service]?;
                self.samples
                    .iter()
                    .filter(|s| s.phase == last && s.service == service)
                    .find(|s| {
                        matches!(s.outcome, Outcome::Answered { lookup: Lookup::Hit, version: Some(v), status: 200..=299 } if usize::from(v) == current)
                    })
                    .map(|s| s.answered_at().saturating_sub(start))
            })
            .try_fold(Duration::ZERO, |most, at| Some(most.max(at?)))
    }

    /// The shortest time between two reads of one service during faults.
    fn shortest_spacing(&self) -> Option<Duration> {
        self.fault_calls
            .iter()
            .flat_map(|arrivals| arrivals.windows(2).map(|pair| pair[1] - pair[0]))
            .min()
    }

    /// The most reads one service got within any `backoff` during faults. The filter times
    /// its backoff by the host's clock, in whole milliseconds read from the event loop's
    /// cached time, so reads a backoff apart by that clock may arrive a little less than a
    /// backoff apart: [`CLOCK_SLACK`] less counts as a backoff.
    fn most_calls_within(&self, backoff: Duration) -> usize {
        let backoff = backoff.saturating_sub(CLOCK_SLACK);
        self.fault_calls
            .iter()
            .flat_map(|arrivals| {
                arrivals.iter().enumerate().map(move |(first, &from)| {
                    arrivals[first..]
                        .iter()
                        .take_while(|&&at| at < from + backoff)
                        .count()
                })
            })
            .max()
            .unwrap_or(0)
    }

    pub fn print_key_lines(&self, timeout_ms: u32, ttl_s: u32, backoff: Duration) {
        let key = |name: &str| format!("soak.{}.{name}", self.label);
        let failed = self.samples.iter().filter(|s| s.failed()).count();
        let (cold, cached) = self.fault_latencies();
        let calls = self.most_calls_within(backoff);
        let growth = match (self.rss_before_kib, self.rss_after_kib) {
            (Some(before), Some(after)) if before > 0 => {
                format!(
                    "{:.1}",
                    (after as f64 - before as f64) * 100.0 / before as f64
                )
            }
            _ => "n/a".to_string(),
        };
        let recovery = self.recovery();
        let within = recovery.is_some_and(|r| r <= Duration::from_secs(u64::from(ttl_s)));
        println!(
            "{}: {} requests, {failed} failed; during faults, {} requests for services without a \
             usable entry when the fault began (target p99 <= {} ms), {} others; RSS {} -> {} KiB; \
             calls bound {} per service per backoff ({} client threads)",
            self.label,
            self.samples.len(),
            cold.map_or(0, |s| s.samples),
            timeout_ms + 50,
            cached.map_or(0, |s| s.samples),
            self.rss_before_kib.map_or("n/a".into(), |k| k.to_string()),
            self.rss_after_kib.map_or("n/a".into(), |k| k.to_string()),
            self.calls_bound,
            self.threads,
        );
        println!("{} {failed}", key("failed_requests"));
        println!(
            "{} {}",
            key("p99_ms_during_faults"),
            ms_or_na(cold, |s| s.p99)
        );
        println!(
            "{} {}",
            key("max_ms_during_faults"),
            ms_or_na(cold, |s| s.max)
        );
        println!(
            "{} {}",
            key("p99_ms_during_faults_cached"),
            ms_or_na(cached, |s| s.p99)
        );
        println!("{} {calls}", key("calls_per_service_per_backoff"));
        println!(
            "{} {}",
            key("calls_per_service_per_backoff_bound"),
            self.calls_bound
        );
        println!(
            "{} {}",
            key("shortest_call_spacing_ms"),
            ms_or_na(
                self.shortest_spacing().map(|d| Summary::of(&mut [d])),
                |s| s.max
            )
        );
        println!("{} {growth}", key("rss_growth_pct"));
        println!("{} {}", key("recovered_within_ttl"), u8::from(within));
        println!(
            "{} {}",
            key("recovery_ms"),
            recovery.map_or("n/a".into(), |r| format!("{:.0}", millis(r)))
        );
    }
}
