//! A Proxy-Wasm test host on wasmtime that runs a filter's `.wasm` the way Kong Gateway
//! (ngx_wasm_module) or Envoy would, so integration tests and benchmarks can exercise the
//! real filter without either gateway.
//!
//! Written from the Proxy-Wasm ABI 0.2.1 spec (proxy-wasm/spec), the Rust SDK's imports
//! (`proxy-wasm` 0.2.5 `src/hostcalls.rs`), ngx_wasm_module's `docs/PROXY_WASM.md` and
//! sources, and Envoy's `source/extensions/common/wasm/context.cc`. The host differences
//! it reproduces are listed in the design ("Host differences a test host must reproduce").
//!
//! Driving model: the VMs are driven synchronously by the caller (`request`, `respond`,
//! `advance`, `run_until`, `tick_all`); dispatched calls run on a background tokio runtime
//! over real loopback sockets and are delivered back to the worker and context that made
//! them when the caller advances the host.

mod abi;
pub mod artifacts;
mod dispatch;
mod shared;
mod wasi;
mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::error::Context as _;
use wasmtime::Result;
use wasmtime::{Engine, Linker, Module};

pub use abi::{
    KONG_CALL_OUTSIDE_A_REQUEST, KONG_LUA_OUTSIDE_REQUEST_HEADERS, KONG_UPSTREAM_NAME_READ,
};
pub use dispatch::DispatchRecord;
pub use shared::{MetricKind, SharedEntry};
pub use worker::{find_header, LocalResponse, Phase, RequestRecord};

use dispatch::{failure_response, Completion};
use shared::{Metrics, SharedData};
use worker::{Worker, WorkerState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    Kong,
    Envoy,
}

impl Flavour {
    pub const ALL: [Flavour; 2] = [Flavour::Kong, Flavour::Envoy];

    /// The filter's `host` configuration value for this gateway.
    pub fn name(self) -> &'static str {
        match self {
            Flavour::Kong => "kong",
            Flavour::Envoy => "envoy",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

#[derive(Debug, Clone)]
pub struct LogLine {
    pub worker: usize,
    pub level: LogLevel,
    pub message: String,
}

pub struct HostOptions {
    pub flavour: Flavour,
    pub workers: usize,
    pub wasm_path: PathBuf,
    /// The filter configuration (`proxy_on_configure`).
    pub config: Vec<u8>,
    pub vm_config: Vec<u8>,
    /// Kong: the configured `shm_kv` zones (`*` is the default zone for keys without `/`).
    pub shm_zones: Vec<String>,
    /// Envoy: cluster name → `ip:port`.
    pub clusters: HashMap<String, String>,
    /// Properties every context can read (e.g. `node.id`); requests add their own.
    pub properties: HashMap<String, Vec<u8>>,
    /// Kong: the host property namespace ngx_wasm_module was built with (`kong` in Kong,
    /// the module's default `wasmx` elsewhere); `kong.*` is NotFound under another one.
    pub property_namespace: String,
    /// Kong: the nginx variables declared changeable (`set $name ...;`), which the filter
    /// may set as `ngx.<name>`; any other `ngx.*` set is NotFound. Kong declares the filter's
    /// with `nginx_proxy_set`, as docker-compose.yml does (`KONG_NGINX_PROXY_SET`).
    pub nginx_variables: Vec<String>,
    /// Kong: what `:authority` reads, built from the server block's `server_name` and the
    /// listening port (`ngx_proxy_wasm_maps_get_authority`, ngx_proxy_wasm_maps.c); the
    /// client's `Host` stays in the `host` header.
    pub server_authority: String,
    /// The level `proxy_get_log_level` reports.
    pub log_level: LogLevel,
    /// Fire `proxy_on_tick` from `advance` when a worker's period is due.
    pub auto_ticks: bool,
}

impl HostOptions {
    pub fn new(
        flavour: Flavour,
        wasm_path: impl Into<PathBuf>,
        config: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            flavour,
            workers: 1,
            wasm_path: wasm_path.into(),
            config: config.into(),
            vm_config: Vec::new(),
            shm_zones: vec!["*".to_string()],
            clusters: HashMap::new(),
            properties: HashMap::new(),
            property_namespace: "kong".to_string(),
            nginx_variables: vec!["consul_enricher".to_string()],
            server_authority: "kong:8000".to_string(),
            log_level: LogLevel::Trace,
            auto_ticks: true,
        }
    }
}

/// One downstream request as the gateway hands it to the filter.
#[derive(Debug, Clone, Default)]
pub struct RequestSpec {
    pub headers: Vec<(String, String)>,
    /// Per-request properties (Kong `kong.service_id`, `ngx.upstream_host`; Envoy
    /// `xds.cluster_name`, ...).
    pub properties: HashMap<String, Vec<u8>>,
}

impl RequestSpec {
    pub fn get(authority: &str, path: &str) -> Self {
        Self {
            headers: vec![
                (":method".to_string(), "GET".to_string()),
                (":path".to_string(), path.to_string()),
                (":authority".to_string(), authority.to_string()),
                (":scheme".to_string(), "http".to_string()),
            ],
            properties: HashMap::new(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn property(mut self, path: &str, value: &str) -> Self {
        self.properties
            .insert(path.to_string(), value.as_bytes().to_vec());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHandle {
    pub worker: usize,
    pub context_id: u32,
}

#[derive(Debug)]
pub enum HostError {
    /// The module could not be loaded (e.g. an import the host does not provide).
    Load(String),
    /// `on_vm_start` or `on_configure` returned false; the logs say why.
    ConfigRefused { worker: usize, logs: Vec<LogLine> },
    /// The VM trapped.
    Trap(String),
    /// The caller asked for something the request's state does not allow.
    Usage(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Load(message) => write!(f, "load error: {message}"),
            HostError::ConfigRefused { worker, logs } => {
                write!(f, "config refused on worker {worker}")?;
                for line in logs {
                    write!(f, "\n  [{:?}] {}", line.level, line.message)?;
                }
                Ok(())
            }
            HostError::Trap(message) => write!(f, "trap: {message}"),
            HostError::Usage(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for HostError {}

/// What all workers share: shared data, metrics, logs, and the dispatch machinery.
pub(crate) struct HostShared {
    pub flavour: Flavour,
    pub clusters: HashMap<String, String>,
    pub properties: HashMap<String, Vec<u8>>,
    pub property_namespace: String,
    pub nginx_variables: Vec<String>,
    pub server_authority: String,
    pub log_level: LogLevel,
    shared_data: Mutex<SharedData>,
    metrics: Mutex<Metrics>,
    logs: Mutex<Vec<LogLine>>,
    dispatches: Mutex<Vec<DispatchRecord>>,
    in_flight: AtomicUsize,
    completions: mpsc::Sender<Completion>,
    runtime: tokio::runtime::Handle,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HostShared {
    pub(crate) fn shared_data(&self) -> MutexGuard<'_, SharedData> {
        lock(&self.shared_data)
    }

    pub(crate) fn metrics(&self) -> MutexGuard<'_, Metrics> {
        lock(&self.metrics)
    }

    pub(crate) fn push_log(&self, line: LogLine) {
        lock(&self.logs).push(line);
    }

    pub(crate) fn dispatch(&self, call: DispatchRecord) {
        lock(&self.dispatches).push(call.clone());
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let sender = self.completions.clone();
        let flavour = self.flavour;
        self.runtime.spawn(async move {
            let (worker, context_id, token) = (call.worker, call.context_id, call.token);
            let outcome = dispatch::perform(flavour, call).await;
            // The host may be gone already; then nobody waits for this answer.
            let _ = sender.send(Completion {
                worker,
                context_id,
                token,
                outcome,
            });
        });
    }
}

/// The one engine. With `TEST_HOST_PERF_MAP` set, wasmtime writes `/tmp/perf-<pid>.map` so
/// that `perf report` names the filter's functions (docs/performance.md).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        if std::env::var_os("TEST_HOST_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        Engine::new(&config).unwrap_or_else(|_| Engine::default())
    })
}

/// Compiled modules by path and modification time: compiling the filter once per test
/// binary instead of once per test.
fn load_module(path: &Path) -> Result<Module> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, (SystemTime, Module)>>> = OnceLock::new();
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("cannot read {}", path.display()))?;
    let mut cache = lock(CACHE.get_or_init(Default::default));
    if let Some((at, module)) = cache.get(path) {
        if *at == modified {
            return Ok(module.clone());
        }
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let module = Module::new(engine(), &bytes)
        .with_context(|| format!("cannot compile {}", path.display()))?;
    cache.insert(path.to_path_buf(), (modified, module.clone()));
    Ok(module)
}

pub struct Host {
    shared: Arc<HostShared>,
    workers: Vec<Worker>,
    completions: mpsc::Receiver<Completion>,
    auto_ticks: bool,
    traps: Vec<String>,
    // Dropped last: in-flight calls finish or are cancelled with it.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Host {
    pub fn new(options: HostOptions) -> Result<Self, HostError> {
        let module =
            load_module(&options.wasm_path).map_err(|e| HostError::Load(format!("{e:#}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| HostError::Load(format!("tokio runtime: {e}")))?;
        let (sender, receiver) = mpsc::channel();
        let shared = Arc::new(HostShared {
            flavour: options.flavour,
            clusters: options.clusters,
            properties: options.properties,
            property_namespace: options.property_namespace,
            nginx_variables: options.nginx_variables,
            server_authority: options.server_authority,
            log_level: options.log_level,
            shared_data: Mutex::new(SharedData::new(options.flavour, options.shm_zones)),
            metrics: Mutex::new(Metrics::default()),
            logs: Mutex::new(Vec::new()),
            dispatches: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            completions: sender,
            runtime: runtime.handle().clone(),
        });
        let mut linker = Linker::new(engine());
        abi::add_proxy_functions(&mut linker).map_err(|e| HostError::Load(format!("{e:#}")))?;
        wasi::add_wasi_functions(&mut linker).map_err(|e| HostError::Load(format!("{e:#}")))?;

        let mut workers = Vec::with_capacity(options.workers);
        for index in 0..options.workers.max(1) {
            let state = WorkerState {
                index,
                shared: Arc::clone(&shared),
                memory: None,
                allocate: None,
                plugin_config: options.config.clone(),
                vm_config: options.vm_config.clone(),
                effective_context: worker::ROOT_CONTEXT_ID,
                step: worker::Step::Configure,
                requests: HashMap::new(),
                call_response: None,
                tick_period: None,
                // ngx_wasm_module numbers calls from 0, Envoy from 1.
                next_call_token: match options.flavour {
                    Flavour::Kong => 0,
                    Flavour::Envoy => 1,
                },
                deferred: Vec::new(),
                stdout: Vec::new(),
                last_status: (0, String::new()),
            };
            let mut worker = Worker::instantiate(&linker, &module, state)
                .map_err(|e| HostError::Load(format!("worker {index}: {e:#}")))?;
            let configured = worker
                .start_root()
                .map_err(|e| HostError::Trap(format!("worker {index}: {e:#}")))?;
            if !configured {
                let logs = lock(&shared.logs)
                    .iter()
                    .filter(|l| l.worker == index)
                    .cloned()
                    .collect();
                return Err(HostError::ConfigRefused {
                    worker: index,
                    logs,
                });
            }
            workers.push(worker);
        }
        Ok(Self {
            shared,
            workers,
            completions: receiver,
            auto_ticks: options.auto_ticks,
            traps: Vec::new(),
            runtime: Some(runtime),
        })
    }

    pub fn flavour(&self) -> Flavour {
        self.shared.flavour
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    fn worker_mut(&mut self, index: usize) -> Result<&mut Worker, HostError> {
        let count = self.workers.len();
        self.workers
            .get_mut(index)
            .ok_or_else(|| HostError::Usage(format!("no worker {index} (host has {count})")))
    }

    fn trap(&mut self, error: wasmtime::Error) -> HostError {
        let message = format!("{error:#}");
        self.traps.push(message.clone());
        HostError::Trap(message)
    }

    /// A new request on `worker`: context creation and `on_request_headers`.
    pub fn request(
        &mut self,
        worker: usize,
        spec: RequestSpec,
    ) -> Result<RequestHandle, HostError> {
        let result = self
            .worker_mut(worker)?
            .start_request(spec.headers, spec.properties, true);
        match result {
            Ok(context_id) => Ok(RequestHandle { worker, context_id }),
            Err(error) => Err(self.trap(error)),
        }
    }

    /// The upstream answered: `upstream.address` becomes readable, `on_response_headers`
    /// runs, and (unless the response is paused) the context completes.
    pub fn respond(
        &mut self,
        request: RequestHandle,
        upstream_address: &str,
        response_headers: Vec<(String, String)>,
    ) -> Result<(), HostError> {
        let phase = self.record(request).map(|r| r.phase.clone());
        if phase != Some(Phase::Forwarded) {
            return Err(HostError::Usage(format!(
                "request {request:?} is not forwarded: {phase:?}"
            )));
        }
        let result = self.worker_mut(request.worker)?.respond(
            request.context_id,
            upstream_address,
            response_headers,
        );
        result.map_err(|error| self.trap(error))
    }

    pub fn record(&self, request: RequestHandle) -> Option<&RequestRecord> {
        self.workers
            .get(request.worker)?
            .store
            .data()
            .requests
            .get(&request.context_id)
    }

    /// Hands back a request's record and forgets it. The host keeps every record for
    /// inspection; a long run (the benchmarks) takes each one when done with it, so the
    /// host's memory stays flat as the engine's does.
    pub fn take_record(&mut self, request: RequestHandle) -> Option<RequestRecord> {
        self.workers
            .get_mut(request.worker)?
            .store
            .data_mut()
            .requests
            .remove(&request.context_id)
    }

    /// Waits up to `max_wait` for dispatch results and due ticks, handles what arrived,
    /// and returns whether anything happened.
    pub fn advance(&mut self, max_wait: Duration) -> Result<bool, HostError> {
        let now = Instant::now();
        let next_tick = if self.auto_ticks {
            self.workers.iter().filter_map(|w| w.next_tick).min()
        } else {
            None
        };
        let wait = match next_tick {
            Some(at) => max_wait.min(at.saturating_duration_since(now)),
            None => max_wait,
        };
        let mut progressed = false;
        if let Ok(first) = self.completions.recv_timeout(wait) {
            self.deliver(first)?;
            progressed = true;
            while let Ok(next) = self.completions.try_recv() {
                self.deliver(next)?;
            }
        }
        if self.auto_ticks {
            let now = Instant::now();
            for index in 0..self.workers.len() {
                if self.workers[index].next_tick.is_some_and(|at| at <= now) {
                    let result = self.workers[index].tick();
                    result.map_err(|error| self.trap(error))?;
                    progressed = true;
                }
            }
        }
        Ok(progressed)
    }

    fn deliver(&mut self, completion: Completion) -> Result<(), HostError> {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        let response = match completion.outcome {
            Ok(response) => response,
            Err(failure) => {
                let worker = &self.workers[completion.worker];
                worker.store.data().log(
                    LogLevel::Debug,
                    format!("host: dispatch {} failed: {failure:?}", completion.token),
                );
                failure_response(self.shared.flavour, &failure)
            }
        };
        let result = self.worker_mut(completion.worker)?.deliver(
            completion.context_id,
            completion.token,
            response,
        );
        result.map_err(|error| self.trap(error))
    }

    /// Advances until `done` holds or `timeout` passes; returns whether `done` held.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Host) -> bool,
    ) -> Result<bool, HostError> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.advance(left.min(Duration::from_millis(50)))?;
        }
    }

    /// Advances until no dispatched call is in flight.
    pub fn run_until_idle(&mut self, timeout: Duration) -> Result<bool, HostError> {
        self.run_until(timeout, |host| host.calls_in_flight() == 0)
    }

    pub fn calls_in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// `proxy_on_tick` on every worker that set a tick period.
    pub fn tick_all(&mut self) -> Result<(), HostError> {
        for index in 0..self.workers.len() {
            if self.workers[index].store.data().tick_period.is_some() {
                let result = self.workers[index].tick();
                result.map_err(|error| self.trap(error))?;
            }
        }
        Ok(())
    }

    pub fn tick_period(&self, worker: usize) -> Option<Duration> {
        self.workers.get(worker)?.store.data().tick_period
    }

    /// A worker's wasm linear memory in bytes (it only ever grows).
    pub fn memory_bytes(&self, worker: usize) -> Option<usize> {
        let worker = self.workers.get(worker)?;
        Some(worker.store.data().memory?.data_size(&worker.store))
    }

    /// A metric's value, summed over workers (all workers share one metric per name).
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.shared.metrics().value_of(name)
    }

    pub fn metric_names(&self) -> Vec<String> {
        self.shared.metrics().names()
    }

    pub fn logs(&self) -> Vec<LogLine> {
        lock(&self.shared.logs).clone()
    }

    /// Log lines containing `needle`, for assertions.
    pub fn logs_containing(&self, needle: &str) -> Vec<LogLine> {
        lock(&self.shared.logs)
            .iter()
            .filter(|l| l.message.contains(needle))
            .cloned()
            .collect()
    }

    pub fn shared_data(&self, key: &str) -> Option<SharedEntry> {
        self.shared.shared_data().snapshot(key)
    }

    pub fn shared_data_keys(&self) -> Vec<String> {
        self.shared.shared_data().keys()
    }

    /// Every call the filter dispatched, in order.
    pub fn dispatches(&self) -> Vec<DispatchRecord> {
        lock(&self.shared.dispatches).clone()
    }

    /// Every trap so far; a correct filter never traps.
    pub fn traps(&self) -> &[String] {
        &self.traps
    }

    pub fn requests(&self) -> impl Iterator<Item = &RequestRecord> {
        self.workers
            .iter()
            .flat_map(|w| w.store.data().requests.values())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
