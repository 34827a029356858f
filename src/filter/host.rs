//! Host calls the filter makes, with every error handled: a failed call is logged at
//! debug level and reported as "nothing", never a panic.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{Bytes, MapType, MetricType, Status};

pub fn now_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub fn now_ms() -> u64 {
    now_nanos() / 1_000_000
}

pub fn header(map: MapType, name: &str) -> Option<String> {
    hostcalls::get_map_value(map, name).ok().flatten()
}

pub fn set_header(map: MapType, name: &str, value: &str) {
    if let Err(status) = hostcalls::set_map_value(map, name, Some(value)) {
        log::debug!("consul-enricher: cannot set header {name}: {status:?}");
    }
}

pub fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

pub fn set_property(path: &[&str], value: &[u8]) {
    if let Err(status) = hostcalls::set_property(path.to_vec(), Some(value)) {
        log::debug!(
            "consul-enricher: cannot set property {}: {status:?}",
            path.join(".")
        );
    }
}

pub fn shared_get(key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
    hostcalls::get_shared_data(key)
}

pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    hostcalls::set_shared_data(key, Some(value), cas)
}

pub fn dispatch(
    upstream: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout_ms: u32,
) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(
        upstream,
        headers,
        body,
        Vec::new(),
        Duration::from_millis(u64::from(timeout_ms)),
    )
}

/// Makes `context_id` the context later host calls act on; false if it is gone.
pub fn switch_to(context_id: u32) -> bool {
    hostcalls::set_effective_context(context_id).is_ok()
}

pub fn resume_request() {
    if let Err(status) = hostcalls::resume_http_request() {
        log::debug!("consul-enricher: cannot resume request: {status:?}");
    }
}

pub fn define_counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

pub fn increment(metric: Option<u32>, by: u64) {
    if let Some(id) = metric {
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        if hostcalls::increment_metric(id, by).is_err() {
            log::debug!("consul-enricher: cannot increment metric {id}");
        }
    }
}

pub fn call_response_header(name: &str) -> Option<String> {
    header(MapType::HttpCallResponseHeaders, name)
}

pub fn call_response_body(size: usize) -> Bytes {
    hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpCallResponseBody, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

/// Randomness from the host (WASI `random_get`), for span ids that differ across workers;
/// 0 if the host has none.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: the host writes exactly `buf.len()` bytes into the buffer we own.
    let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
    if errno == 0 {
        u64::from_le_bytes(buf)
    } else {
        0
    }
}
