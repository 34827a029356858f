//! The fleet's upstream: answers `200 ok` to every request and records, per gateway and
//! service, when each value of `x-consul-meta-version` first arrived, so the bench can tell
//! when a change in Consul became visible through each gateway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Result;
use consul_enricher_bench::OkUpstream;

use super::load::GATEWAY_HEADER;

const VERSION_HEADER: &str = "x-consul-meta-version";

#[derive(Default)]
struct Seen {
    /// Requests that carried the version header, per gateway.
    enriched: HashMap<usize, u64>,
    /// First arrival of each (gateway, service, version header value).
    first_arrival: HashMap<(usize, String, String), Instant>,
}

pub struct Recorder {
    upstream: OkUpstream,
    seen: Arc<Mutex<Seen>>,
}

impl Recorder {
    pub fn start() -> Result<Recorder> {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let recorded = Arc::clone(&seen);
        let upstream = OkUpstream::start(move |head| record(head, Instant::now(), &recorded))?;
        Ok(Recorder { upstream, seen })
    }

    pub fn addr(&self) -> SocketAddr {
        self.upstream.addr()
    }

    /// Requests from `gateway` that carried the version header.
    pub fn enriched(&self, gateway: usize) -> u64 {
        lock(&self.seen)
            .enriched
            .get(&gateway)
            .copied()
            .unwrap_or(0)
    }

    /// When a request through `gateway` for `service` first carried a version header
    /// containing `version`.
    pub fn first_with(&self, gateway: usize, service: &str, version: &str) -> Option<Instant> {
        lock(&self.seen)
            .first_arrival
            .iter()
            .filter(|((g, s, value), _)| {
                *g == gateway && s == service && value.split(',').any(|v| v.trim() == version)
            })
            .map(|(_, at)| *at)
            .min()
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(PoisonError::into_inner)
}

fn record(head: &str, arrived: Instant, seen: &Mutex<Seen>) {
    let mut lines = head.lines();
    // `GET /svc/<service>/... HTTP/1.1`
    let service = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|path| path.strip_prefix("/svc/"))
        .and_then(|rest| rest.split(['/', '?']).next())
        .unwrap_or_default()
        .to_string();
    let mut gateway = None;
    let mut version = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case(GATEWAY_HEADER) {
                gateway = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case(VERSION_HEADER) {
                version = Some(value.trim().to_string());
            }
        }
    }
    let mut seen = lock(seen);
    if let (Some(gateway), Some(version)) = (gateway, version) {
        *seen.enriched.entry(gateway).or_insert(0) += 1;
        seen.first_arrival
            .entry((gateway, service, version))
            .or_insert(arrived);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_first_arrivals_per_gateway_service_and_version() {
        let seen = Mutex::new(Seen::default());
        let head = |gateway: usize, version: &str| {
            format!(
                "GET /svc/web-3/echo HTTP/1.1\r\nhost: x\r\n{GATEWAY_HEADER}: {gateway}\r\nX-Consul-Meta-Version: {version}"
            )
        };
        let early = Instant::now();
        record(&head(1, "1.0.0"), early, &seen);
        let later = Instant::now();
        record(&head(1, "1.0.0,2.0.0"), later, &seen);
        record(&head(1, "1.0.0,2.0.0"), Instant::now(), &seen);
        record("GET /svc/web-3 HTTP/1.1\r\nhost: x", Instant::now(), &seen);
        let seen = lock(&seen);
        assert_eq!(seen.enriched[&1], 3);
        assert_eq!(
            seen.first_arrival[&(1, "web-3".to_string(), "1.0.0,2.0.0".to_string())],
            later
        );
    }
}
