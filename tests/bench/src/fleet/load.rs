//! Requests through the gateways: a small HTTP/1.1 keep-alive client, a paced load spread
//! over the services, one pass over every service, and probes of one service.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

/// Tells the upstream which gateway a request came through.
pub const GATEWAY_HEADER: &str = "x-fleet-gateway";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const BAGGAGE: &str = "ui.component=checkout-button,ui.action=click";
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive connection to a gateway, reconnecting after a failure.
pub struct Client {
    /// `host:port`
    addr: String,
    gateway: usize,
    connection: Option<BufReader<TcpStream>>,
}

impl Client {
    pub fn new(addr: &str, gateway: usize) -> Client {
        Client {
            addr: addr.to_string(),
            gateway,
            connection: None,
        }
    }

    /// `GET /svc/<service>/echo`; the status of the answer.
    pub fn get(&mut self, service: &str) -> Result<u16> {
        let result = self.exchange(service);
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    fn exchange(&mut self, service: &str) -> Result<u16> {
        if self.connection.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .with_context(|| format!("cannot connect to gateway {}", self.addr))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            self.connection = Some(BufReader::new(stream));
        }
        let connection = self
            .connection
            .as_mut()
            .ok_or_else(|| anyhow!("no connection"))?;
        let request = format!(
            "GET /svc/{service}/echo HTTP/1.1\r\nhost: {}\r\ntraceparent: {TRACEPARENT}\r\n\
             baggage: {BAGGAGE}\r\n{GATEWAY_HEADER}: {}\r\n\r\n",
            self.addr, self.gateway
        );
        connection.get_mut().write_all(request.as_bytes())?;
        let mut status_line = String::new();
        connection.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| anyhow!("not an HTTP status line: {status_line:?}"))?;
        let mut content_length = None;
        let mut close = false;
        loop {
            let mut line = String::new();
            if connection.read_line(&mut line)? == 0 {
                bail!("the gateway closed the connection mid-answer");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        let length = content_length.ok_or_else(|| anyhow!("an answer without content-length"))?;
        let mut body = vec![0u8; length];
        connection.read_exact(&mut body)?;
        if close {
            self.connection = None;
        }
        Ok(status)
    }
}

/// Outcomes of a set of requests.
#[derive(Default)]
pub struct Counts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

impl Counts {
    fn count(&self, outcome: &Result<u16>) {
        match outcome {
            Ok(200) => self.ok.fetch_add(1, Ordering::Relaxed),
            _ => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }
}

/// Every service once through each gateway, `connections` requests at a time per gateway.
pub fn every_service_once(
    gateways: &[String],
    services: &[String],
    connections: usize,
    counts: &Counts,
) {
    std::thread::scope(|scope| {
        for (gateway, addr) in gateways.iter().enumerate() {
            for connection in 0..connections {
                scope.spawn(move || {
                    let mut client = Client::new(addr, gateway);
                    for service in services.iter().skip(connection).step_by(connections) {
                        counts.count(&client.get(service));
                    }
                });
            }
        }
    });
}

/// Every service once through each gateway, paced evenly over `spread`; gateway `g` of `G`
/// starts `g/G` of the way into the list, so each service's first request (and with it the
/// phase of its refreshes) falls at a different time in each gateway.
pub fn spread_pass(
    gateways: &[String],
    services: &[String],
    connections: usize,
    spread: Duration,
    counts: &Counts,
) {
    let started = Instant::now();
    let step = spread.div_f64(services.len().max(1) as f64);
    std::thread::scope(|scope| {
        for (gateway, addr) in gateways.iter().enumerate() {
            let rotation = gateway * services.len() / gateways.len();
            for connection in 0..connections {
                scope.spawn(move || {
                    let mut client = Client::new(addr, gateway);
                    for position in (connection..services.len()).step_by(connections) {
                        let due = started + step.mul_f64(position as f64);
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        let service = &services[(position + rotation) % services.len()];
                        counts.count(&client.get(service));
                    }
                });
            }
        }
    });
}

/// A steady load: `rate` requests per second over all gateways, `connections` per gateway,
/// each gateway going through the services in turn, until `stop` is set.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub counts: Arc<Counts>,
}

impl SteadyLoad {
    pub fn start(
        gateways: &[String],
        services: Arc<Vec<String>>,
        connections: usize,
        rate: u32,
    ) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let per_connection = f64::from(rate) / (gateways.len() * connections) as f64;
        let interval = Duration::from_secs_f64(1.0 / per_connection.max(1e-3));
        let started = Instant::now();
        let mut threads = Vec::new();
        for (gateway, addr) in gateways.iter().enumerate() {
            let next_service = Arc::new(AtomicU64::new(0));
            for connection in 0..connections {
                let (stop, counts, services) = (
                    Arc::clone(&stop),
                    Arc::clone(&counts),
                    Arc::clone(&services),
                );
                let next_service = Arc::clone(&next_service);
                let addr = addr.clone();
                // Connections start spread over one interval, so requests arrive evenly.
                let offset = interval.mul_f64(connection as f64 / connections as f64);
                threads.push(std::thread::spawn(move || {
                    let mut client = Client::new(&addr, gateway);
                    let mut due = started + offset;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        let n = next_service.fetch_add(1, Ordering::Relaxed) as usize;
                        counts.count(&client.get(&services[n % services.len()]));
                        due += interval;
                    }
                }));
            }
        }
        SteadyLoad {
            stop,
            threads,
            counts,
        }
    }

    pub fn stop(self) -> Arc<Counts> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            // A panicking load thread has printed its message; its counts stand.
            let _ = thread.join();
        }
        self.counts
    }
}

/// Requests `service` through every gateway every `interval` until `done(gateway)` or
/// `deadline`.
pub fn probe_until(
    gateways: &[String],
    service: &str,
    interval: Duration,
    deadline: Instant,
    done: &(dyn Fn(usize) -> bool + Sync),
    counts: &Counts,
) {
    std::thread::scope(|scope| {
        for (gateway, addr) in gateways.iter().enumerate() {
            scope.spawn(move || {
                let mut client = Client::new(addr, gateway);
                while !done(gateway) && Instant::now() < deadline {
                    counts.count(&client.get(service));
                    std::thread::sleep(interval);
                }
            });
        }
    });
}
