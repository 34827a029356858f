//! The filter's VMs on a thread of their own. The test host is driven synchronously, so one
//! thread owns it, takes requests and upstream responses from the proxy over a channel,
//! advances it (dispatch results, ticks) and answers each waiting request once the filter
//! lets it go on: forwarded, answered locally, or completed after `on_log`.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use test_host::{
    Host, HostOptions, LocalResponse, LogLevel, Phase, RequestHandle, RequestRecord, RequestSpec,
};
use tokio::sync::oneshot;

use crate::options::GatewayOptions;

/// What the filter decided for a request or a response.
#[derive(Debug)]
pub enum Verdict {
    /// Go on with these headers (the request's to the upstream, or the response's to the
    /// client), as the filter left them.
    Continue(Vec<(String, String)>),
    /// The filter answered itself.
    Local(LocalResponse),
}

type Reply = oneshot::Sender<Result<Verdict, String>>;

enum Command {
    Request {
        spec: RequestSpec,
        reply: oneshot::Sender<Result<(RequestHandle, Verdict), String>>,
    },
    Respond {
        request: RequestHandle,
        upstream_address: String,
        headers: Vec<(String, String)>,
        reply: Reply,
    },
}

enum Waiter {
    Request(
        RequestHandle,
        oneshot::Sender<Result<(RequestHandle, Verdict), String>>,
    ),
    Response(RequestHandle, Reply),
}

/// Handle the proxy uses; the thread stops when it is dropped.
pub struct FilterThread {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

/// How long the thread waits for a command while no dispatch is in flight and no request
/// waits on the filter: bounds how late a tick may fire.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// The same while the filter has work in flight: bounds the latency a dispatch answer adds.
const BUSY_WAIT: Duration = Duration::from_millis(1);
const LOG_EVERY: Duration = Duration::from_millis(200);

impl FilterThread {
    /// Loads the filter into `workers` VMs (refused configuration is an error here) and
    /// starts the thread.
    pub fn start(options: &GatewayOptions) -> Result<Self> {
        let mut host_options = HostOptions::new(
            options.flavour,
            options.wasm.clone(),
            options.config.clone(),
        );
        host_options.workers = options.workers;
        host_options.clusters = options.clusters.clone();
        host_options.shm_zones = options.shm_zones.clone();
        host_options.log_level = options.log_level;
        let level = options.log_level;
        let (ready_tx, ready_rx) = mpsc::channel();
        let (commands, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("filter".into())
            .spawn(move || match Host::new(host_options) {
                Ok(host) => {
                    let _ = ready_tx.send(Ok(()));
                    run(host, receiver, level);
                }
                Err(error) => {
                    let _ = ready_tx.send(Err(error.to_string()));
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the filter thread ended while loading"))?
            .map_err(|message| anyhow!("cannot load the filter: {message}"))?;
        Ok(Self {
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    fn send(&self, command: Command) -> Result<(), String> {
        self.commands
            .as_ref()
            .and_then(|commands| commands.send(command).ok())
            .ok_or_else(|| "the filter thread has stopped".to_string())
    }

    /// `on_request_headers` on the next worker; resolves when the filter forwards the
    /// request or answers it.
    pub async fn request(&self, spec: RequestSpec) -> Result<(RequestHandle, Verdict), String> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Request { spec, reply })?;
        answer
            .await
            .map_err(|_| "the filter thread dropped the request".to_string())?
    }

    /// `on_response_headers`, then done/log/delete; resolves with the headers for the
    /// client once the context completed.
    pub async fn respond(
        &self,
        request: RequestHandle,
        upstream_address: String,
        headers: Vec<(String, String)>,
    ) -> Result<Verdict, String> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Respond {
            request,
            upstream_address,
            headers,
            reply,
        })?;
        answer
            .await
            .map_err(|_| "the filter thread dropped the response".to_string())?
    }
}

impl Drop for FilterThread {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut host: Host, commands: mpsc::Receiver<Command>, level: LogLevel) {
    let mut waiters: Vec<Waiter> = Vec::new();
    let mut next_worker = 0;
    let mut logs_printed = 0;
    let mut last_log_check = Instant::now();
    loop {
        let busy = !waiters.is_empty() || host.calls_in_flight() > 0;
        let first = match commands.recv_timeout(if busy { BUSY_WAIT } else { IDLE_WAIT }) {
            Ok(command) => Some(command),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        for command in first
            .into_iter()
            .chain(std::iter::from_fn(|| commands.try_recv().ok()))
        {
            match command {
                Command::Request { spec, reply } => {
                    let worker = next_worker;
                    next_worker = (next_worker + 1) % host.worker_count();
                    match host.request(worker, spec) {
                        Ok(handle) => waiters.push(Waiter::Request(handle, reply)),
                        Err(error) => {
                            let _ = reply.send(Err(error.to_string()));
                        }
                    }
                }
                Command::Respond {
                    request,
                    upstream_address,
                    headers,
                    reply,
                } => match host.respond(request, &upstream_address, headers) {
                    Ok(()) => waiters.push(Waiter::Response(request, reply)),
                    Err(error) => {
                        let _ = reply.send(Err(error.to_string()));
                    }
                },
            }
        }
        if let Err(error) = host.advance(Duration::ZERO) {
            eprintln!("gateway: filter error while advancing: {error}");
        }
        waiters = waiters
            .into_iter()
            .filter_map(|waiter| settle(&mut host, waiter))
            .collect();
        if last_log_check.elapsed() >= LOG_EVERY {
            logs_printed = print_logs(&host, logs_printed, level);
            last_log_check = Instant::now();
        }
    }
    print_logs(&host, logs_printed, level);
    print_report(&mut host);
}

/// Answers a waiter whose request reached a state the proxy can act on; gives it back
/// while the filter still holds the request. A request the filter is done with is
/// forgotten by the host (which otherwise keeps every record, and a long run's memory
/// would grow with each request).
fn settle(host: &mut Host, waiter: Waiter) -> Option<Waiter> {
    let handle = match &waiter {
        Waiter::Request(handle, _) | Waiter::Response(handle, _) => *handle,
    };
    let record = host.record(handle)?;
    if matches!(record.phase, Phase::Completed | Phase::Failed(_)) {
        let left = answer(record, waiter);
        host.take_record(handle);
        return left;
    }
    answer(record, waiter)
}

fn answer(record: &RequestRecord, waiter: Waiter) -> Option<Waiter> {
    let local = record.local_response.clone().map(Verdict::Local);
    match waiter {
        Waiter::Request(handle, reply) => {
            let outcome = match (&record.phase, local) {
                (_, Some(local)) => Ok(local),
                (Phase::Forwarded, None) => Ok(Verdict::Continue(
                    record.upstream_headers.clone().unwrap_or_default(),
                )),
                (Phase::Failed(message), None) => Err(format!("filter failed: {message}")),
                (Phase::Completed | Phase::Ended, None) => {
                    Err("the filter closed the request".to_string())
                }
                _ if reply.is_closed() => return None,
                _ => return Some(Waiter::Request(handle, reply)),
            };
            let _ = reply.send(outcome.map(|verdict| (handle, verdict)));
        }
        Waiter::Response(handle, reply) => {
            let outcome = match (&record.phase, local) {
                (_, Some(local)) => Ok(local),
                (Phase::Completed, None) => Ok(Verdict::Continue(
                    record.client_response_headers.clone().unwrap_or_default(),
                )),
                (Phase::Failed(message), None) => Err(format!("filter failed: {message}")),
                _ if reply.is_closed() => return None,
                _ => return Some(Waiter::Response(handle, reply)),
            };
            let _ = reply.send(outcome);
        }
    }
    None
}

fn print_logs(host: &Host, printed: usize, level: LogLevel) -> usize {
    let logs = host.logs();
    for line in logs.iter().skip(printed).filter(|line| line.level >= level) {
        eprintln!("filter[{}] {:?}: {}", line.worker, line.level, line.message);
    }
    logs.len()
}

/// The filter's metrics (after a last tick on every worker: the filter hands its counts to
/// the host on the tick), each worker's wasm linear memory and the shared data the workers
/// hold, one `name = value` line each.
fn print_report(host: &mut Host) {
    if let Err(error) = host.tick_all() {
        eprintln!("gateway: last tick: {error}");
    }
    let mut names = host.metric_names();
    names.sort();
    for name in names {
        eprintln!("metric {name} = {}", host.metric(&name).unwrap_or_default());
    }
    for worker in 0..host.worker_count() {
        if let Some(bytes) = host.memory_bytes(worker) {
            eprintln!("wasm_memory_bytes worker {worker} = {bytes}");
        }
    }
    let keys = host.shared_data_keys();
    let bytes: usize = keys
        .iter()
        .map(|key| key.len() + host.shared_data(key).map_or(0, |entry| entry.value.len()))
        .sum();
    eprintln!("shared_data keys = {}", keys.len());
    eprintln!("shared_data bytes = {bytes}");
    for trap in host.traps() {
        eprintln!("trap: {trap}");
    }
}
