//! One worker: its own wasmtime `Store` and instance (the VM), root context, tick period
//! and HTTP contexts, as each Envoy worker thread or each Nginx worker process has.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::error::Context as _;
use wasmtime::{format_err, Result};
use wasmtime::{Instance, Linker, Memory, Module, Store, TypedFunc};

use crate::dispatch::CallResponse;
use crate::{HostShared, LogLevel, LogLine};

pub(crate) const ROOT_CONTEXT_ID: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Inside `on_request_headers`.
    RequestHeaders,
    /// Held before the upstream: the filter paused, or (Kong) a dispatch is pending.
    Paused,
    /// Request headers were sent upstream; waiting for `Host::respond`.
    Forwarded,
    /// `on_response_headers` paused the response.
    ResponsePaused,
    /// The filter answered with `proxy_send_local_response` or closed the stream; the
    /// context completes when the current callback returns.
    Ended,
    /// done/log/delete ran.
    Completed,
    /// The VM trapped while handling this request.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct LocalResponse {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What happened to one request, kept after the context is deleted so tests can inspect it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub worker: usize,
    pub context_id: u32,
    pub phase: Phase,
    /// The request headers as they are now (as the filter left them).
    pub request_headers: Vec<(String, String)>,
    /// Kong: headers the filter removed, or duplicates a set replaced, which ngx_wasm_module
    /// hides from the filter and nginx still forwards (see `abi::kong_set_request_header`).
    pub hidden_headers: Vec<(String, String)>,
    /// Snapshot taken when the request went upstream.
    pub upstream_headers: Option<Vec<(String, String)>>,
    pub response_headers: Vec<(String, String)>,
    /// Snapshot taken when the response went to the client.
    pub client_response_headers: Option<Vec<(String, String)>>,
    pub local_response: Option<LocalResponse>,
    pub was_paused: bool,
    pub started_at: Instant,
    pub forwarded_at: Option<Instant>,
    pub upstream_address: Option<String>,
    pub properties: HashMap<String, Vec<u8>>,
    /// Kong: the nginx variables the filter set (`ngx.<name>`), by name.
    pub nginx_variables: BTreeMap<String, Vec<u8>>,
    pub(crate) pending_calls: usize,
}

impl RequestRecord {
    pub fn upstream_header(&self, name: &str) -> Option<&str> {
        find_header(self.upstream_headers.as_deref()?, name)
    }

    pub fn client_response_header(&self, name: &str) -> Option<&str> {
        find_header(self.client_response_headers.as_deref()?, name)
    }

    /// How long the request was held before going upstream.
    pub fn held_for(&self) -> Option<Duration> {
        self.forwarded_at.map(|at| at - self.started_at)
    }

    pub(crate) fn forward(&mut self) {
        self.phase = Phase::Forwarded;
        let mut sent = self.request_headers.clone();
        sent.extend(self.hidden_headers.iter().cloned());
        self.upstream_headers = Some(sent);
        self.forwarded_at = Some(Instant::now());
    }
}

/// The request headers as ngx_wasm_module shows them: `:authority` from the server block,
/// the client's authority in `host` (see `HostOptions::server_authority`).
fn kong_request_headers(
    mut headers: Vec<(String, String)>,
    server_authority: &str,
) -> Vec<(String, String)> {
    let client = headers
        .iter()
        .position(|(n, _)| n == ":authority")
        .map(|at| headers.remove(at).1);
    if let Some(client) = client {
        if find_header(&headers, "host").is_none() {
            headers.push(("host".to_string(), client));
        }
    }
    headers.push((":authority".to_string(), server_authority.to_string()));
    headers
}

pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The callback the worker is running; ngx_wasm_module allows some host calls only in
/// some steps (`ngx_proxy_wasm_step_e`, `src/common/proxy_wasm/ngx_proxy_wasm.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Configure,
    Tick,
    RequestHeaders,
    ResponseHeaders,
    CallResponse,
    Done,
}

/// Work a host function asks for that must run after the current wasm call returns
/// (calling back into the VM from inside a host function would re-enter the SDK).
pub(crate) enum Deferred {
    Complete(u32),
}

pub(crate) struct WorkerState {
    pub index: usize,
    pub shared: Arc<HostShared>,
    pub memory: Option<Memory>,
    pub allocate: Option<TypedFunc<i32, i32>>,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub effective_context: u32,
    pub step: Step,
    pub requests: HashMap<u32, RequestRecord>,
    pub call_response: Option<CallResponse>,
    pub tick_period: Option<Duration>,
    pub next_call_token: u32,
    pub deferred: Vec<Deferred>,
    pub stdout: Vec<u8>,
    pub last_status: (u32, String),
}

impl WorkerState {
    pub(crate) fn log(&self, level: LogLevel, message: String) {
        self.shared.push_log(LogLine {
            worker: self.index,
            level,
            message,
        });
    }
}

struct Exports {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_vm_start: TypedFunc<(i32, i32), i32>,
    on_configure: TypedFunc<(i32, i32), i32>,
    on_tick: TypedFunc<i32, ()>,
    on_request_headers: TypedFunc<(i32, i32, i32), i32>,
    on_response_headers: TypedFunc<(i32, i32, i32), i32>,
    on_http_call_response: TypedFunc<(i32, i32, i32, i32, i32), ()>,
    on_done: TypedFunc<i32, i32>,
    on_log: TypedFunc<i32, ()>,
    on_delete: TypedFunc<i32, ()>,
}

pub(crate) struct Worker {
    pub store: Store<WorkerState>,
    exports: Exports,
    pub next_context_id: u32,
    pub next_tick: Option<Instant>,
    /// Set once the VM trapped; a trapped instance is not called again.
    pub trapped: Option<String>,
}

const ACTION_CONTINUE: i32 = 0;

pub(crate) const KONG_RESPONSE_PAUSE: &str =
    "\"ResponseHeaders\" returned \"PAUSE\": local response expected but none produced";

fn typed<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    instance: &Instance,
    store: &mut Store<WorkerState>,
    name: &str,
) -> Result<TypedFunc<P, R>> {
    instance
        .get_typed_func::<P, R>(&mut *store, name)
        .with_context(|| {
            format!("the module does not export `{name}` with the ABI 0.2.1 signature")
        })
}

impl Worker {
    pub(crate) fn instantiate(
        linker: &Linker<WorkerState>,
        module: &Module,
        state: WorkerState,
    ) -> Result<Self> {
        let mut store = Store::new(module.engine(), state);
        let missing: Vec<String> = module
            .imports()
            .filter(|import| linker.get_by_import(&mut store, import).is_none())
            .map(|import| format!("{}::{}", import.module(), import.name()))
            .collect();
        if !missing.is_empty() {
            return Err(format_err!(
                "the module imports functions this host does not provide: {}",
                missing.join(", ")
            ));
        }
        let instance = linker.instantiate(&mut store, module)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| format_err!("the module does not export `memory`"))?;
        let allocate = typed::<i32, i32>(&instance, &mut store, "proxy_on_memory_allocate")?;
        store.data_mut().memory = Some(memory);
        store.data_mut().allocate = Some(allocate);
        let exports = Exports {
            on_context_create: typed(&instance, &mut store, "proxy_on_context_create")?,
            on_vm_start: typed(&instance, &mut store, "proxy_on_vm_start")?,
            on_configure: typed(&instance, &mut store, "proxy_on_configure")?,
            on_tick: typed(&instance, &mut store, "proxy_on_tick")?,
            on_request_headers: typed(&instance, &mut store, "proxy_on_request_headers")?,
            on_response_headers: typed(&instance, &mut store, "proxy_on_response_headers")?,
            on_http_call_response: typed(&instance, &mut store, "proxy_on_http_call_response")?,
            on_done: typed(&instance, &mut store, "proxy_on_done")?,
            on_log: typed(&instance, &mut store, "proxy_on_log")?,
            on_delete: typed(&instance, &mut store, "proxy_on_delete")?,
        };
        // A reactor (cdylib) exports `_initialize`; a command module exports `_start`.
        for start in ["_initialize", "_start"] {
            if let Ok(func) = instance.get_typed_func::<(), ()>(&mut store, start) {
                func.call(&mut store, ())
                    .with_context(|| format!("`{start}` trapped"))?;
                break;
            }
        }
        Ok(Self {
            store,
            exports,
            next_context_id: ROOT_CONTEXT_ID + 1,
            next_tick: None,
            trapped: None,
        })
    }

    fn guard(&self) -> Result<()> {
        match &self.trapped {
            Some(message) => Err(format_err!("worker trapped earlier: {message}")),
            None => Ok(()),
        }
    }

    fn note_trap<T>(&mut self, result: Result<T>, during: &str) -> Result<T> {
        result.map_err(|error| {
            let message = format!("{during}: {error:?}");
            self.trapped = Some(message.clone());
            self.store
                .data()
                .log(LogLevel::Critical, format!("trap {message}"));
            format_err!(message)
        })
    }

    /// Root context creation, `on_vm_start` and `on_configure`; returns false when the
    /// filter refused (either callback returned false).
    pub(crate) fn start_root(&mut self) -> Result<bool> {
        let vm_size = self.store.data().vm_config.len() as i32;
        let config_size = self.store.data().plugin_config.len() as i32;
        self.store.data_mut().effective_context = ROOT_CONTEXT_ID;
        self.store.data_mut().step = Step::Configure;
        let root = ROOT_CONTEXT_ID as i32;
        let result = self
            .exports
            .on_context_create
            .call(&mut self.store, (root, 0));
        self.note_trap(result, "proxy_on_context_create(root)")?;
        let result = self
            .exports
            .on_vm_start
            .call(&mut self.store, (root, vm_size));
        if self.note_trap(result, "proxy_on_vm_start")? == 0 {
            return Ok(false);
        }
        let result = self
            .exports
            .on_configure
            .call(&mut self.store, (root, config_size));
        let configured = self.note_trap(result, "proxy_on_configure")? != 0;
        self.run_deferred()?;
        self.schedule_tick();
        Ok(configured)
    }

    pub(crate) fn schedule_tick(&mut self) {
        self.next_tick = self.store.data().tick_period.map(|p| Instant::now() + p);
    }

    pub(crate) fn tick(&mut self) -> Result<()> {
        self.guard()?;
        self.store.data_mut().effective_context = ROOT_CONTEXT_ID;
        self.store.data_mut().step = Step::Tick;
        let result = self
            .exports
            .on_tick
            .call(&mut self.store, ROOT_CONTEXT_ID as i32);
        self.note_trap(result, "proxy_on_tick")?;
        self.run_deferred()?;
        self.schedule_tick();
        Ok(())
    }

    pub(crate) fn start_request(
        &mut self,
        headers: Vec<(String, String)>,
        properties: HashMap<String, Vec<u8>>,
        end_of_stream: bool,
    ) -> Result<u32> {
        self.guard()?;
        let context_id = self.next_context_id;
        self.next_context_id += 1;
        let headers = match self.store.data().shared.flavour {
            crate::Flavour::Kong => {
                kong_request_headers(headers, &self.store.data().shared.server_authority)
            }
            crate::Flavour::Envoy => headers,
        };
        let count = headers.len() as i32;
        let index = self.store.data().index;
        self.store.data_mut().requests.insert(
            context_id,
            RequestRecord {
                worker: index,
                context_id,
                phase: Phase::RequestHeaders,
                request_headers: headers,
                hidden_headers: Vec::new(),
                upstream_headers: None,
                response_headers: Vec::new(),
                client_response_headers: None,
                local_response: None,
                was_paused: false,
                started_at: Instant::now(),
                forwarded_at: None,
                upstream_address: None,
                properties,
                nginx_variables: BTreeMap::new(),
                pending_calls: 0,
            },
        );
        self.store.data_mut().effective_context = context_id;
        self.store.data_mut().step = Step::RequestHeaders;
        let id = context_id as i32;
        let result = self
            .exports
            .on_context_create
            .call(&mut self.store, (id, ROOT_CONTEXT_ID as i32));
        self.fail_request_on_trap(context_id, result, "proxy_on_context_create")?;
        self.store.data_mut().effective_context = context_id;
        let result = self
            .exports
            .on_request_headers
            .call(&mut self.store, (id, count, i32::from(end_of_stream)));
        let action = self.fail_request_on_trap(context_id, result, "proxy_on_request_headers")?;
        let kong = self.store.data().shared.flavour == crate::Flavour::Kong;
        if let Some(record) = self.store.data_mut().requests.get_mut(&context_id) {
            if record.phase == Phase::RequestHeaders {
                // ngx_wasm_module holds the request while a dispatch it made is pending,
                // whatever the callback returned.
                let held_by_call = kong && record.pending_calls > 0;
                if action == ACTION_CONTINUE && !held_by_call {
                    record.forward();
                } else {
                    record.phase = Phase::Paused;
                    record.was_paused = true;
                }
            }
        }
        self.run_deferred()?;
        Ok(context_id)
    }

    fn fail_request_on_trap<T>(
        &mut self,
        context_id: u32,
        result: Result<T>,
        during: &str,
    ) -> Result<T> {
        let result = self.note_trap(result, during);
        if let Err(error) = &result {
            if let Some(record) = self.store.data_mut().requests.get_mut(&context_id) {
                record.phase = Phase::Failed(error.to_string());
            }
        }
        result
    }

    pub(crate) fn respond(
        &mut self,
        context_id: u32,
        upstream_address: &str,
        headers: Vec<(String, String)>,
    ) -> Result<()> {
        self.guard()?;
        let record = self
            .store
            .data_mut()
            .requests
            .get_mut(&context_id)
            .ok_or_else(|| format_err!("no request with context {context_id}"))?;
        if record.phase != Phase::Forwarded {
            return Err(format_err!(
                "request {context_id} cannot get a response in phase {:?}",
                record.phase
            ));
        }
        record.upstream_address = Some(upstream_address.to_string());
        let count = headers.len() as i32;
        record.response_headers = headers;
        self.store.data_mut().effective_context = context_id;
        self.store.data_mut().step = Step::ResponseHeaders;
        let result = self
            .exports
            .on_response_headers
            .call(&mut self.store, (context_id as i32, count, 0));
        let action = self.fail_request_on_trap(context_id, result, "proxy_on_response_headers")?;
        let kong = self.store.data().shared.flavour == crate::Flavour::Kong;
        let Some(record) = self.store.data_mut().requests.get_mut(&context_id) else {
            return Ok(());
        };
        let paused = record.phase == Phase::Forwarded && action != ACTION_CONTINUE;
        if paused && kong {
            // ngx_wasm_module takes PAUSE in the header filter phase for "produce a local
            // response"; with none produced it logs this line and the response is lost
            // (`src/common/proxy_wasm/ngx_proxy_wasm.c`): the client gets nothing.
            record.phase = Phase::Failed(KONG_RESPONSE_PAUSE.to_string());
            self.store
                .data()
                .log(LogLevel::Warn, KONG_RESPONSE_PAUSE.to_string());
            return Ok(());
        }
        if paused {
            record.phase = Phase::ResponsePaused;
        }
        self.run_deferred()?;
        if !paused {
            self.complete(context_id)?;
        }
        Ok(())
    }

    /// done, log, delete, in Envoy's order; the record stays for inspection.
    pub(crate) fn complete(&mut self, context_id: u32) -> Result<()> {
        let Some(record) = self.store.data_mut().requests.get_mut(&context_id) else {
            return Ok(());
        };
        if record.phase == Phase::Completed {
            return Ok(());
        }
        if record.client_response_headers.is_none() && record.local_response.is_none() {
            record.client_response_headers = Some(record.response_headers.clone());
        }
        let id = context_id as i32;
        self.store.data_mut().effective_context = context_id;
        self.store.data_mut().step = Step::Done;
        let result = self.exports.on_done.call(&mut self.store, id);
        self.fail_request_on_trap(context_id, result, "proxy_on_done")?;
        let result = self.exports.on_log.call(&mut self.store, id);
        self.fail_request_on_trap(context_id, result, "proxy_on_log")?;
        let result = self.exports.on_delete.call(&mut self.store, id);
        self.fail_request_on_trap(context_id, result, "proxy_on_delete")?;
        if let Some(record) = self.store.data_mut().requests.get_mut(&context_id) {
            record.phase = Phase::Completed;
        }
        Ok(())
    }

    pub(crate) fn deliver(
        &mut self,
        context_id: u32,
        token: u32,
        response: CallResponse,
    ) -> Result<()> {
        self.guard()?;
        let kong = self.store.data().shared.flavour == crate::Flavour::Kong;
        let is_request = context_id != ROOT_CONTEXT_ID;
        if is_request {
            match self.store.data_mut().requests.get_mut(&context_id) {
                Some(record)
                    if record.phase != Phase::Completed
                        && !matches!(record.phase, Phase::Failed(_)) =>
                {
                    record.pending_calls = record.pending_calls.saturating_sub(1);
                }
                // Both gateways cancel a context's calls when the context goes away.
                _ => return Ok(()),
            }
        }
        let args = (
            context_id as i32,
            token as i32,
            response.reported_headers as i32,
            response.body.len() as i32,
            0,
        );
        self.store.data_mut().call_response = Some(response);
        self.store.data_mut().effective_context = context_id;
        self.store.data_mut().step = Step::CallResponse;
        let result = self
            .exports
            .on_http_call_response
            .call(&mut self.store, args);
        self.store.data_mut().call_response = None;
        if is_request {
            self.fail_request_on_trap(context_id, result, "proxy_on_http_call_response")?;
            if kong {
                if let Some(record) = self.store.data_mut().requests.get_mut(&context_id) {
                    // ngx_wasm_module resumes the request once its last call is handled.
                    if record.pending_calls == 0 && record.phase == Phase::Paused {
                        record.forward();
                    }
                }
            }
        } else {
            self.note_trap(result, "proxy_on_http_call_response(root)")?;
        }
        self.run_deferred()
    }

    fn run_deferred(&mut self) -> Result<()> {
        while let Some(work) = self.store.data_mut().deferred.pop() {
            match work {
                Deferred::Complete(context_id) => self.complete(context_id)?,
            }
        }
        Ok(())
    }
}
