//! The `env` host functions of Proxy-Wasm ABI 0.2.1 (proxy-wasm/spec, `abi-versions/v0.2.1`),
//! with the exact import list and signatures of the Rust SDK `proxy-wasm` 0.2.5
//! (`src/hostcalls.rs`). Where Kong (ngx_wasm_module, `src/common/proxy_wasm/
//! ngx_proxy_wasm_host.c`, `src/http/proxy_wasm/ngx_http_proxy_wasm_dispatch.c`) and Envoy
//! (`source/extensions/common/wasm/context.cc`) answer differently, the host's flavour picks.
//! Features neither this host nor the filter needs (gRPC, shared queues, body rewriting)
//! trap with a message naming the call, rather than pretending to work.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{bail, format_err, Result};
use wasmtime::{Caller, Linker};

use crate::dispatch::{valid_header, DispatchRecord};
use crate::shared::{MetricError, MetricKind, SharedDataError};
use crate::worker::{Deferred, LocalResponse, Phase, Step, WorkerState, ROOT_CONTEXT_ID};
use crate::{Flavour, LogLevel};

const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const CAS_MISMATCH: i32 = 8;

const MAP_REQUEST_HEADERS: i32 = 0;
const MAP_RESPONSE_HEADERS: i32 = 2;
const MAP_CALL_RESPONSE_HEADERS: i32 = 6;

const BUFFER_REQUEST_BODY: i32 = 0;
const BUFFER_RESPONSE_BODY: i32 = 1;
const BUFFER_CALL_RESPONSE_BODY: i32 = 4;
const BUFFER_VM_CONFIGURATION: i32 = 6;
const BUFFER_PLUGIN_CONFIGURATION: i32 = 7;

const STREAM_REQUEST: i32 = 0;
const STREAM_RESPONSE: i32 = 1;

/// ngx_wasm_module's socket timeouts when a call passes 0 (`proxy_wasm_socket_*_timeout`).
const KONG_DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

type Ctx<'a> = Caller<'a, WorkerState>;

pub(crate) fn read_bytes(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Result<Vec<u8>> {
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| format_err!("no memory"))?;
    let start = ptr as u32 as usize;
    memory
        .data(&*caller)
        .get(start..start.saturating_add(len as u32 as usize))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| format_err!("read of {len} bytes at {ptr:#x} is out of bounds"))
}

fn read_string(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Result<String> {
    let bytes = read_bytes(caller, ptr, len)?;
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned()))
}

pub(crate) fn write_bytes(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> Result<()> {
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| format_err!("no memory"))?;
    memory
        .write(&mut *caller, ptr as u32 as usize, bytes)
        .map_err(|_| {
            format_err!(
                "write of {} bytes at {ptr:#x} is out of bounds",
                bytes.len()
            )
        })
}

pub(crate) fn write_u32(caller: &mut Ctx<'_>, ptr: i32, value: u32) -> Result<()> {
    write_bytes(caller, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(caller: &mut Ctx<'_>, ptr: i32, value: u64) -> Result<()> {
    write_bytes(caller, ptr, &value.to_le_bytes())
}

/// Copies `bytes` into memory the module allocates (`proxy_on_memory_allocate`) and returns
/// pointer and size through the two out-pointers; the module owns and frees the copy.
fn return_bytes(caller: &mut Ctx<'_>, bytes: &[u8], data_ptr: i32, size_ptr: i32) -> Result<()> {
    if bytes.is_empty() {
        write_u32(caller, data_ptr, 0)?;
        return write_u32(caller, size_ptr, 0);
    }
    let allocate = caller
        .data()
        .allocate
        .clone()
        .ok_or_else(|| format_err!("no proxy_on_memory_allocate"))?;
    let address = allocate.call(&mut *caller, bytes.len() as i32)?;
    if address == 0 {
        bail!("proxy_on_memory_allocate({}) returned null", bytes.len());
    }
    write_bytes(caller, address, bytes)?;
    write_u32(caller, data_ptr, address as u32)?;
    write_u32(caller, size_ptr, bytes.len() as u32)
}

/// The SDK's map serialisation: count, (name length, value length) pairs, then each name
/// and value followed by a NUL.
pub(crate) fn encode_map(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

pub(crate) fn decode_map(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let word = |at: usize| -> Result<usize> {
        let raw = bytes
            .get(at..at + 4)
            .ok_or_else(|| format_err!("map truncated at byte {at}"))?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize)
    };
    let count = word(0)?;
    let mut cursor = 4 + count * 8;
    let mut pairs = Vec::with_capacity(count);
    for i in 0..count {
        let name_len = word(4 + i * 8)?;
        let value_len = word(8 + i * 8)?;
        let name = bytes
            .get(cursor..cursor + name_len)
            .ok_or_else(|| format_err!("map name {i} out of range"))?;
        cursor += name_len + 1;
        let value = bytes
            .get(cursor..cursor + value_len)
            .ok_or_else(|| format_err!("map value {i} out of range"))?;
        cursor += value_len + 1;
        pairs.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(pairs)
}

enum MapRef {
    Request(u32),
    Response(u32),
    CallResponse,
    /// Trailers are not modelled: always empty.
    Empty,
}

fn map_ref(state: &WorkerState, map_type: i32) -> Option<MapRef> {
    let context = state.effective_context;
    let is_request = state.requests.contains_key(&context);
    match map_type {
        MAP_REQUEST_HEADERS if is_request => Some(MapRef::Request(context)),
        MAP_RESPONSE_HEADERS if is_request => Some(MapRef::Response(context)),
        MAP_CALL_RESPONSE_HEADERS if state.call_response.is_some() => Some(MapRef::CallResponse),
        1 | 3 | 7 => Some(MapRef::Empty),
        _ => None,
    }
}

fn map_mut<'a>(state: &'a mut WorkerState, map: &MapRef) -> Option<&'a mut Vec<(String, String)>> {
    match map {
        MapRef::Request(id) => state.requests.get_mut(id).map(|r| &mut r.request_headers),
        MapRef::Response(id) => state.requests.get_mut(id).map(|r| &mut r.response_headers),
        MapRef::CallResponse => state.call_response.as_mut().map(|c| &mut c.headers),
        MapRef::Empty => None,
    }
}

/// What `read` makes of a header map (an absent one reads as empty); None when the map
/// does not exist here.
fn read_map<T>(
    state: &mut WorkerState,
    map_type: i32,
    read: impl FnOnce(&[(String, String)]) -> T,
) -> Option<T> {
    let map = map_ref(state, map_type)?;
    Some(read(map_mut(state, &map).map_or(&[][..], |m| &m[..])))
}

/// Applies `edit` to a header map; NOT_FOUND when the map does not exist here.
fn edit_map(
    state: &mut WorkerState,
    map_type: i32,
    edit: impl FnOnce(&mut Vec<(String, String)>),
) -> i32 {
    let Some(map) = map_ref(state, map_type) else {
        return NOT_FOUND;
    };
    match map_mut(state, &map) {
        Some(headers) => {
            edit(headers);
            OK
        }
        None => BAD_ARGUMENT,
    }
}

/// The request being edited, when this is Kong and the map is its request headers.
fn kong_request(
    state: &mut WorkerState,
    map_type: i32,
) -> Option<&mut crate::worker::RequestRecord> {
    if state.shared.flavour != Flavour::Kong || map_type != MAP_REQUEST_HEADERS {
        return None;
    }
    let context = state.effective_context;
    state.requests.get_mut(&context)
}

/// ngx_wasm_module's set (`Some`) and remove (`None`) of a request header
/// (`ngx_http_wasm_set_header_helper`, src/http/ngx_http_wasm_headers.c): a set updates
/// the first header of that name in place and a remove or a set clears the others by
/// zeroing their hash, which hides them from the filter but not from nginx's proxy module,
/// which forwards every `headers_in` entry (`ngx_http_proxy_create_request`,
/// src/http/modules/ngx_http_proxy_module.c): they stay in `RequestRecord::hidden_headers`.
fn kong_set_request_header(
    record: &mut crate::worker::RequestRecord,
    key: &str,
    value: Option<String>,
) {
    let headers = &mut record.request_headers;
    let mut value = value;
    let mut i = 0;
    while i < headers.len() {
        if !headers[i].0.eq_ignore_ascii_case(key) {
            i += 1;
        } else if let Some(new) = value.take() {
            headers[i].1 = new;
            i += 1;
        } else {
            record.hidden_headers.push(headers.remove(i));
        }
    }
    if let Some(new) = value {
        headers.push((key.to_ascii_lowercase(), new));
    }
}

fn property_path(raw: &[u8]) -> String {
    let dotted: Vec<u8> = raw.iter().map(|&b| if b == 0 { b'.' } else { b }).collect();
    String::from_utf8(dotted)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

const KONG_CTX_SHARED: &str = "kong.ctx.shared.";

/// The start of the Critical line the Kong flavour logs when the filter makes Kong's Lua
/// answer a property outside request headers.
pub const KONG_LUA_OUTSIDE_REQUEST_HEADERS: &str =
    "Kong's Lua answered a property outside request headers";

/// The start of the Critical line the Kong flavour logs for a call made outside a request.
pub const KONG_CALL_OUTSIDE_A_REQUEST: &str = "a call made outside a request leaks a connection";

/// ngx_wasm_module sends a call made outside a request (from the root context: the tick,
/// or the answer to an earlier such call) on a fake request with a fake connection taken
/// from the worker's `worker_connections` (`ngx_http_wasm_create_fake_connection`,
/// `src/http/ngx_http_wasm_util.c`), and the cleanup that would give them back is compiled
/// out (`ngx_http_proxy_wasm_dispatch`, `src/http/proxy_wasm/ngx_http_proxy_wasm_dispatch.c`;
/// 9136e463, and still on main). On nginx 1.25.3 with that module, a worker then logs
/// "worker_connections are not enough" and stops accepting connections after that many such
/// calls. The host counts nothing down; it logs every such call at Critical.
fn note_call_outside_a_request(state: &WorkerState) {
    state.log(
        LogLevel::Critical,
        format!("{KONG_CALL_OUTSIDE_A_REQUEST} (in {:?})", state.step),
    );
}

/// Kong answers `kong.*` properties in Lua: ngx_wasm_module calls Kong's handler as a
/// LuaJIT FFI callback from C (`set_host_properties_handlers` in
/// `lib/resty/wasmx/proxy_wasm.lua`), and LuaJIT runs a callback on the coroutine that last
/// used the FFI (`lj_ccallback_enter`, LuaJIT `src/lj_ccallback.c`), in which the handler
/// first stores the calling request (`set_r`). In request headers, which ngx_wasm_module
/// runs right after Kong's access handler (`req_headers_in_access`,
/// `src/common/lua/ngx_wasm_lua_ffi.c`), that coroutine is this request's own. In any later
/// step it is whichever request last ran Lua, which then works on this request: Kong
/// 3.9.1's workers crash under concurrent load (freed requests logged, `ctx` nil, "API
/// disabled in the context of balancer_by_lua*"). The host cannot make that race happen on
/// cue, so it logs the call at Critical, every time.
fn note_kong_lua_call(state: &WorkerState, path: &str) {
    let kong_lua = state.shared.flavour == Flavour::Kong
        && path.starts_with("kong.")
        && !foreign_namespace(state, path)
        && request_property(state, "kong.version").is_some();
    if kong_lua && state.step != Step::RequestHeaders {
        state.log(
            LogLevel::Critical,
            format!(
                "{KONG_LUA_OUTSIDE_REQUEST_HEADERS}: {path} in {:?}",
                state.step
            ),
        );
    }
}

fn request_property(state: &WorkerState, path: &str) -> Option<Vec<u8>> {
    let record = state.requests.get(&state.effective_context);
    record
        .and_then(|r| r.properties.get(path))
        .or_else(|| state.shared.properties.get(path))
        .cloned()
}

/// Whether the host has no answer for `path` at all. ngx_wasm_module answers `ngx.*`, its
/// mapped Envoy-style attributes, and `<namespace>.*` host properties (Kong's Lua
/// answers them; the namespace is a build option, `wasmx` by default, `kong` in Kong:
/// `NGX_WASM_HOST_PROPERTY_NAMESPACE` in `src/common/proxy_wasm/
/// ngx_proxy_wasm_properties.c`); anything else is NotFound.
fn foreign_namespace(state: &WorkerState, path: &str) -> bool {
    match state.shared.flavour {
        Flavour::Kong => {
            let in_host_namespace = path
                .strip_prefix(state.shared.property_namespace.as_str())
                .is_some_and(|rest| rest.starts_with('.'));
            ["xds.", "node.", "plugin_"]
                .iter()
                .any(|p| path.starts_with(p))
                || (path.starts_with("kong.") && !in_host_namespace)
        }
        Flavour::Envoy => ["kong.", "ngx."].iter().any(|p| path.starts_with(p)),
    }
}

/// The start of the Critical line the Kong flavour logs when the filter reads
/// `upstream.address` or `upstream.port`.
pub const KONG_UPSTREAM_NAME_READ: &str =
    "upstream.address and upstream.port misread the peer's name";

/// `upstream.address` and `upstream.port` from the peer's `ip:port`. ngx_wasm_module cuts
/// the peer name at its last `:` for both (`get_upstream_address`, `get_upstream_port` in
/// `ngx_proxy_wasm_properties.c`: the address keeps an IPv6 address's brackets); Envoy
/// reports `ip:port` as `upstream.address` once the upstream connected. On Kong both find
/// that `:` with `strrchr` in a name that has no terminating NUL; under Kong's balancer the
/// name sits in a reused buffer, and real Kong 3.9.1 logged `[emerg] malloc(...)
/// failed` for about half the requests under load, which lost their instance. The host
/// answers, and logs the read at Critical, every time. `$upstream_addr` is the safe way
/// (`ngx.upstream_addr`, built by nginx with its length: `ngx_http_upstream_addr_variable`).
fn upstream_property(flavour: Flavour, peer: &str, path: &str) -> Option<Vec<u8>> {
    let (address, port) = peer.rsplit_once(':')?;
    let value = match (flavour, path) {
        (Flavour::Kong, "upstream.address") => address,
        (Flavour::Kong, "upstream.port") => port,
        (Flavour::Envoy, "upstream.address") => peer,
        (Flavour::Envoy, "upstream.port") => port,
        _ => return None,
    };
    Some(value.as_bytes().to_vec())
}

fn get_property(state: &WorkerState, path: &str) -> Option<Vec<u8>> {
    let flavour = state.shared.flavour;
    if foreign_namespace(state, path) {
        return None;
    }
    note_kong_lua_call(state, path);
    let record = state.requests.get(&state.effective_context);
    if path == "upstream.address" || path == "upstream.port" {
        if flavour == Flavour::Kong {
            state.log(
                LogLevel::Critical,
                format!("{KONG_UPSTREAM_NAME_READ}: {path}"),
            );
        }
        let peer = record?.upstream_address.as_deref()?;
        return upstream_property(flavour, peer, path);
    }
    if flavour == Flavour::Kong && path == "ngx.upstream_addr" {
        return record?
            .upstream_address
            .as_ref()
            .map(|p| p.as_bytes().to_vec());
    }
    if let Some(name) = path.strip_prefix("ngx.") {
        if let Some(value) = record.and_then(|r| r.nginx_variables.get(name)) {
            return Some(value.clone());
        }
    }
    request_property(state, path)
}

/// Kong: `ngx.<name>` sets a declared variable (`ngx_proxy_wasm_properties_set_ngx`:
/// an unknown one is NotFound), `kong.ctx.shared.*` goes to Kong's Lua, any other
/// `kong.*` is NotFound. Envoy keeps what is set for the request.
fn set_property(state: &mut WorkerState, path: &str, value: Vec<u8>) -> i32 {
    let flavour = state.shared.flavour;
    if foreign_namespace(state, path) {
        return NOT_FOUND;
    }
    note_kong_lua_call(state, path);
    let declared = |name: &str| state.shared.nginx_variables.iter().any(|v| v == name);
    let variable = path.strip_prefix("ngx.").filter(|name| declared(name));
    let variable = variable.map(str::to_string);
    let context = state.effective_context;
    let Some(record) = state.requests.get_mut(&context) else {
        return NOT_FOUND;
    };
    match flavour {
        Flavour::Kong => {
            if let Some(name) = variable {
                record.nginx_variables.insert(name, value);
                OK
            } else if path.starts_with(KONG_CTX_SHARED) {
                record.properties.insert(path.to_string(), value);
                OK
            } else {
                NOT_FOUND
            }
        }
        Flavour::Envoy => {
            record.properties.insert(path.to_string(), value);
            OK
        }
    }
}

fn log_level(raw: i32) -> LogLevel {
    match raw {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        4 => LogLevel::Error,
        _ => LogLevel::Critical,
    }
}

fn unsupported(name: &'static str) -> wasmtime::Error {
    format_err!("{name} is not supported by this test host")
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    crate::worker::find_header(headers, name).filter(|v| !v.is_empty())
}

fn http_call(
    caller: &mut Ctx<'_>,
    upstream: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout_ms: u32,
) -> Result<std::result::Result<u32, i32>> {
    let flavour = caller.data().shared.flavour;
    let method = header_value(&headers, ":method").map(str::to_string);
    let path = header_value(&headers, ":path").map(str::to_string);
    let authority = header_value(&headers, ":authority").map(str::to_string);
    let (target, authority) = match flavour {
        Flavour::Kong => {
            // `ngx_proxy_wasm_hfuncs_dispatch_http_call` (ngx_proxy_wasm_host.c) traps
            // outside these steps.
            let step = caller.data().step;
            if !matches!(step, Step::RequestHeaders | Step::Tick | Step::CallResponse) {
                bail!(
                    "can only send HTTP dispatch during \"on_request_headers\", \
                     \"on_request_body\", \"on_dispatch_response\", \"on_tick\" (in {step:?})"
                );
            }
            if caller.data().effective_context == ROOT_CONTEXT_ID {
                note_call_outside_a_request(caller.data());
            }
            // ngx_wasm_module traps on these: the failure happens inside the host call.
            if upstream.is_empty() {
                bail!("dispatch failed: no host");
            }
            if method.is_none() {
                bail!("dispatch failed: no :method");
            }
            if path.is_none() {
                bail!("dispatch failed: no :path");
            }
            let target = if upstream
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
            {
                upstream.clone()
            } else {
                format!("{upstream}:80")
            };
            let host = upstream
                .rsplit_once(':')
                .map_or(upstream.as_str(), |(h, _)| h)
                .to_string();
            (target, authority.unwrap_or(host))
        }
        Flavour::Envoy => {
            let Some(address) = caller.data().shared.clusters.get(&upstream).cloned() else {
                return Ok(Err(BAD_ARGUMENT));
            };
            let (Some(authority), true, true) = (authority, method.is_some(), path.is_some())
            else {
                return Ok(Err(BAD_ARGUMENT));
            };
            (address, authority)
        }
    };
    let plain: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !name.starts_with(':'))
        .filter(|(name, _)| {
            !name.eq_ignore_ascii_case("host") && !name.eq_ignore_ascii_case("connection")
        })
        .cloned()
        .collect();
    if !plain.iter().all(|(n, v)| valid_header(n, v)) || !valid_header("host", &authority) {
        return Ok(Err(BAD_ARGUMENT));
    }
    let timeout = match (timeout_ms, flavour) {
        (0, Flavour::Kong) => Some(KONG_DEFAULT_CALL_TIMEOUT),
        (0, Flavour::Envoy) => None,
        (ms, _) => Some(Duration::from_millis(u64::from(ms))),
    };
    let state = caller.data_mut();
    let token = state.next_call_token;
    state.next_call_token = state.next_call_token.wrapping_add(1);
    let context_id = state.effective_context;
    if let Some(record) = state.requests.get_mut(&context_id) {
        record.pending_calls += 1;
    }
    state.shared.dispatch(DispatchRecord {
        worker: state.index,
        context_id,
        token,
        upstream,
        target,
        method: method.unwrap_or_default(),
        path: path.unwrap_or_default(),
        authority,
        headers: plain,
        body,
        timeout,
    });
    Ok(Ok(token))
}

pub(crate) fn add_proxy_functions(linker: &mut Linker<WorkerState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| -> Result<i32> {
            let message = read_string(&mut c, ptr, len)?;
            c.data().log(log_level(level), message);
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Ctx<'_>, out: i32| -> Result<i32> {
            let level = c.data().shared.log_level as u32;
            write_u32(&mut c, out, level)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, out: i32| -> Result<i32> {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            write_u64(&mut c, out, now.as_nanos() as u64)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, period: i32| -> Result<i32> {
            let state = c.data_mut();
            if state.effective_context != ROOT_CONTEXT_ID {
                return Ok(BAD_ARGUMENT);
            }
            state.tick_period =
                (period != 0).then(|| Duration::from_millis(u64::from(period as u32)));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>,
         kind: i32,
         start: i32,
         max: i32,
         data_out: i32,
         size_out: i32|
         -> Result<i32> {
            let state = c.data();
            let buffer: Vec<u8> = match kind {
                BUFFER_VM_CONFIGURATION => state.vm_config.clone(),
                BUFFER_PLUGIN_CONFIGURATION => state.plugin_config.clone(),
                BUFFER_CALL_RESPONSE_BODY => match &state.call_response {
                    Some(response) => response.body.clone(),
                    None => return Ok(NOT_FOUND),
                },
                BUFFER_REQUEST_BODY | BUFFER_RESPONSE_BODY => Vec::new(),
                _ => return Ok(NOT_FOUND),
            };
            let start = (start as u32 as usize).min(buffer.len());
            let end = start.saturating_add(max as u32 as usize).min(buffer.len());
            return_bytes(&mut c, &buffer[start..end], data_out, size_out)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |_c: Ctx<'_>, _kind: i32, _start: i32, _size: i32, _ptr: i32, _len: i32| -> Result<i32> {
            Err(unsupported("proxy_set_buffer_bytes"))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, map_type: i32, data_out: i32, size_out: i32| -> Result<i32> {
            let Some(encoded) = read_map(c.data_mut(), map_type, encode_map) else {
                return Ok(NOT_FOUND);
            };
            return_bytes(&mut c, &encoded, data_out, size_out)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Ctx<'_>, map_type: i32, ptr: i32, len: i32| -> Result<i32> {
            let pairs = decode_map(&read_bytes(&mut c, ptr, len)?)?;
            Ok(edit_map(c.data_mut(), map_type, |headers| *headers = pairs))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>,
         map_type: i32,
         key_ptr: i32,
         key_len: i32,
         data_out: i32,
         size_out: i32|
         -> Result<i32> {
            let key = read_string(&mut c, key_ptr, key_len)?;
            let value = read_map(c.data_mut(), map_type, |pairs| {
                crate::worker::find_header(pairs, &key).map(|v| v.as_bytes().to_vec())
            });
            match value.flatten() {
                Some(value) => {
                    return_bytes(&mut c, &value, data_out, size_out)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Ctx<'_>,
         map_type: i32,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32|
         -> Result<i32> {
            let key = read_string(&mut c, key_ptr, key_len)?;
            let value = read_string(&mut c, value_ptr, value_len)?;
            if let Some(record) = kong_request(c.data_mut(), map_type) {
                kong_set_request_header(record, &key, Some(value));
                return Ok(OK);
            }
            Ok(edit_map(c.data_mut(), map_type, |headers| {
                headers.retain(|(name, _)| !name.eq_ignore_ascii_case(&key));
                headers.push((key.to_ascii_lowercase(), value));
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Ctx<'_>,
         map_type: i32,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32|
         -> Result<i32> {
            let key = read_string(&mut c, key_ptr, key_len)?;
            let value = read_string(&mut c, value_ptr, value_len)?;
            Ok(edit_map(c.data_mut(), map_type, |headers| {
                headers.push((key.to_ascii_lowercase(), value))
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Ctx<'_>, map_type: i32, key_ptr: i32, key_len: i32| -> Result<i32> {
            let key = read_string(&mut c, key_ptr, key_len)?;
            if let Some(record) = kong_request(c.data_mut(), map_type) {
                kong_set_request_header(record, &key, None);
                return Ok(OK);
            }
            Ok(edit_map(c.data_mut(), map_type, |headers| {
                headers.retain(|(name, _)| !name.eq_ignore_ascii_case(&key))
            }))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_>,
         path_ptr: i32,
         path_len: i32,
         data_out: i32,
         size_out: i32|
         -> Result<i32> {
            let path = property_path(&read_bytes(&mut c, path_ptr, path_len)?);
            match get_property(c.data(), &path) {
                Some(value) => {
                    return_bytes(&mut c, &value, data_out, size_out)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Ctx<'_>,
         path_ptr: i32,
         path_len: i32,
         value_ptr: i32,
         value_len: i32|
         -> Result<i32> {
            let path = property_path(&read_bytes(&mut c, path_ptr, path_len)?);
            let value = read_bytes(&mut c, value_ptr, value_len)?;
            Ok(set_property(c.data_mut(), &path, value))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>, key_ptr: i32, key_len: i32, data_out: i32, size_out: i32, cas_out: i32| -> Result<i32> {
            let key = read_string(&mut c, key_ptr, key_len)?;
            let found = c.data().shared.shared_data().get(&key);
            match found {
                Ok(Some(entry)) => {
                    return_bytes(&mut c, &entry.value, data_out, size_out)?;
                    write_u32(&mut c, cas_out, entry.cas)?;
                    Ok(OK)
                }
                Ok(None) => Ok(NOT_FOUND),
                Err(SharedDataError::UnknownZone(zone)) => {
                    bail!("attempt to get key/value from unconfigured shm_kv zone \"{zone}\" (key \"{key}\")")
                }
                Err(SharedDataError::CasMismatch) => Ok(CAS_MISMATCH),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Ctx<'_>, key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32, cas: i32| -> Result<i32> {
            let key = read_string(&mut c, key_ptr, key_len)?;
            let value = read_bytes(&mut c, value_ptr, value_len)?;
            let shared = &c.data().shared;
            let written = if value_ptr == 0 && shared.flavour == Flavour::Kong {
                shared.shared_data().delete(&key, cas as u32)
            } else {
                shared.shared_data().set(&key, &value, cas as u32)
            };
            match written {
                Ok(()) => Ok(OK),
                Err(SharedDataError::CasMismatch) => Ok(CAS_MISMATCH),
                Err(SharedDataError::UnknownZone(zone)) => {
                    bail!("attempt to set key/value in unconfigured shm_kv zone \"{zone}\" (key \"{key}\")")
                }
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |_c: Ctx<'_>, _a: i32, _b: i32, _c2: i32| -> Result<i32> {
            Err(unsupported("proxy_register_shared_queue"))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |_c: Ctx<'_>, _a: i32, _b: i32, _c2: i32, _d: i32, _e: i32| -> Result<i32> {
            Err(unsupported("proxy_resolve_shared_queue"))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |_c: Ctx<'_>, _a: i32, _b: i32, _c2: i32| -> Result<i32> {
            Err(unsupported("proxy_dequeue_shared_queue"))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |_c: Ctx<'_>, _a: i32, _b: i32, _c2: i32| -> Result<i32> {
            Err(unsupported("proxy_enqueue_shared_queue"))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Ctx<'_>, stream: i32| -> Result<i32> {
            let state = c.data_mut();
            let kong = state.shared.flavour == Flavour::Kong;
            // ngx_wasm_module resumes the request of the running callback
            // (`ngx_proxy_wasm_hfuncs_resume_http_request`); from `on_tick` there is none
            // and the worker crashed (seen on the engine: SIGSEGV in
            // `ngx_wasm_set_resume_handler`).
            if kong && state.step == Step::Tick {
                bail!("worker crashed: proxy_continue_stream from on_tick (SIGSEGV)");
            }
            let context = state.effective_context;
            let Some(record) = state.requests.get_mut(&context) else {
                return Ok(NOT_FOUND);
            };
            match (stream, &record.phase) {
                // The module yields again while the request has calls pending.
                (STREAM_REQUEST, Phase::Paused) if kong && record.pending_calls > 0 => {}
                (STREAM_REQUEST, Phase::Paused) => record.forward(),
                (STREAM_RESPONSE, Phase::ResponsePaused) => {
                    state.deferred.push(Deferred::Complete(context))
                }
                (STREAM_REQUEST | STREAM_RESPONSE, _) => {}
                _ => return Ok(BAD_ARGUMENT),
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: Ctx<'_>, _stream: i32| -> Result<i32> {
            let state = c.data_mut();
            let context = state.effective_context;
            let Some(record) = state.requests.get_mut(&context) else {
                return Ok(NOT_FOUND);
            };
            record.phase = Phase::Ended;
            state.deferred.push(Deferred::Complete(context));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>,
         status: i32,
         _details_ptr: i32,
         _details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         _grpc: i32|
         -> Result<i32> {
            let body = read_bytes(&mut c, body_ptr, body_len)?;
            let headers = decode_map(&read_bytes(&mut c, headers_ptr, headers_len)?)?;
            let state = c.data_mut();
            let context = state.effective_context;
            let Some(record) = state.requests.get_mut(&context) else {
                return Ok(NOT_FOUND);
            };
            record.local_response = Some(LocalResponse {
                status: status as u32,
                headers,
                body,
            });
            record.phase = Phase::Ended;
            state.deferred.push(Deferred::Complete(context));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Ctx<'_>,
         upstream_ptr: i32,
         upstream_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         body_ptr: i32,
         body_len: i32,
         _trailers_ptr: i32,
         _trailers_len: i32,
         timeout_ms: i32,
         token_out: i32|
         -> Result<i32> {
            let upstream = read_string(&mut c, upstream_ptr, upstream_len)?;
            let headers = decode_map(&read_bytes(&mut c, headers_ptr, headers_len)?)?;
            let body = read_bytes(&mut c, body_ptr, body_len)?;
            match http_call(&mut c, upstream, headers, body, timeout_ms as u32)? {
                Ok(token) => {
                    write_u32(&mut c, token_out, token)?;
                    Ok(OK)
                }
                Err(status) => Ok(status),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |_c: Ctx<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> Result<i32> { Err(unsupported("proxy_grpc_call")) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_c: Ctx<'_>,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32,
         _: i32|
         -> Result<i32> { Err(unsupported("proxy_grpc_stream")) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |_c: Ctx<'_>, _: i32, _: i32, _: i32, _: i32| -> Result<i32> {
            Err(unsupported("proxy_grpc_send"))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |_c: Ctx<'_>, _: i32| -> Result<i32> { Err(unsupported("proxy_grpc_cancel")) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_close",
        |_c: Ctx<'_>, _: i32| -> Result<i32> { Err(unsupported("proxy_grpc_close")) },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut c: Ctx<'_>, code_out: i32, data_out: i32, size_out: i32| -> Result<i32> {
            let (code, message) = c.data().last_status.clone();
            write_u32(&mut c, code_out, code)?;
            return_bytes(&mut c, message.as_bytes(), data_out, size_out)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Ctx<'_>, context: i32| -> Result<i32> {
            let state = c.data_mut();
            // ngx_wasm_module answers Ok and does nothing
            // (`ngx_proxy_wasm_hfuncs_set_effective_context`, ngx_proxy_wasm_host.c): host
            // calls keep acting on the context whose callback is running.
            if state.shared.flavour == Flavour::Kong {
                return Ok(OK);
            }
            let context = context as u32;
            let alive = context == ROOT_CONTEXT_ID
                || state
                    .requests
                    .get(&context)
                    .is_some_and(|r| !matches!(r.phase, Phase::Completed | Phase::Failed(_)));
            if !alive {
                return Ok(BAD_ARGUMENT);
            }
            state.effective_context = context;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_c: Ctx<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> Result<i32> {
            // No foreign function is registered, as on a gateway without extensions.
            Ok(NOT_FOUND)
        },
    )?;
    linker.func_wrap("env", "proxy_done", |_c: Ctx<'_>| -> Result<i32> { Ok(OK) })?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Ctx<'_>, kind: i32, name_ptr: i32, name_len: i32, id_out: i32| -> Result<i32> {
            let Some(kind) = MetricKind::from_abi(kind) else {
                return Ok(BAD_ARGUMENT);
            };
            let name = read_string(&mut c, name_ptr, name_len)?;
            let id = c.data().shared.metrics().define(kind, &name);
            write_u32(&mut c, id_out, id)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Ctx<'_>, id: i32, out: i32| -> Result<i32> {
            let value = c.data().shared.metrics().get(id as u32);
            match value {
                Ok(value) => {
                    write_u64(&mut c, out, value)?;
                    Ok(OK)
                }
                Err(error) => Ok(metric_status(error)),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: Ctx<'_>, id: i32, value: i64| -> Result<i32> {
            let recorded = c.data().shared.metrics().record(id as u32, value as u64);
            Ok(recorded.map_or_else(metric_status, |()| OK))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: Ctx<'_>, id: i32, offset: i64| -> Result<i32> {
            let incremented = c.data().shared.metrics().increment(id as u32, offset);
            Ok(incremented.map_or_else(metric_status, |()| OK))
        },
    )?;
    Ok(())
}

fn metric_status(error: MetricError) -> i32 {
    match error {
        MetricError::NotFound => NOT_FOUND,
        MetricError::BadArgument => BAD_ARGUMENT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_in_the_sdk_layout() {
        let pairs = vec![
            (":status".to_string(), "200".to_string()),
            ("x-empty".to_string(), String::new()),
        ];
        let bytes = encode_map(&pairs);
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(decode_map(&bytes).unwrap(), pairs);
        assert!(decode_map(&bytes[..bytes.len() - 3]).is_err());
        assert!(decode_map(&[]).unwrap().is_empty());
    }

    #[test]
    fn property_paths_join_segments_with_dots() {
        assert_eq!(property_path(b"upstream\0address"), "upstream.address");
        assert_eq!(property_path(b"kong\0ctx\0shared\0x"), "kong.ctx.shared.x");
    }
}
