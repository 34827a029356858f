//! Host calls the filter makes, each returning the host's status.
//!
//! The SDK's `hostcalls` wrappers panic on any status they do not expect (e.g.
//! `set_property` on anything but Ok, although ngx_wasm_module answers NotFound for a
//! property it has no handler for: `src/common/proxy_wasm/ngx_proxy_wasm_properties.c`),
//! and a panic traps the VM. So the filter calls the ABI 0.2.1 imports itself and turns
//! every status into a `Result`, except for `dispatch` (see there).

use std::ptr::null_mut;

use proxy_wasm::types::{BufferType, MapType, MetricType, Status};

mod abi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            kind: u32,
            start: usize,
            max: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_get_header_map_pairs(
            map: u32,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path: *const u8,
            path_size: usize,
            value: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            out_data: *mut *mut u8,
            out_size: *mut usize,
            out_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            value: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        pub fn proxy_continue_stream(stream: u32) -> u32;
        pub fn proxy_define_metric(
            kind: u32,
            name: *const u8,
            name_size: usize,
            out_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        pub fn random_get(buf: *mut u8, len: usize) -> u16;
    }
}

/// The ABI's status codes (proxy-wasm/spec `abi-versions/v0.2.1`, `proxy_status_t`);
/// codes the SDK has no name for are reported as InternalFailure.
fn status(code: u32) -> Result<(), Status> {
    match code {
        0 => Ok(()),
        1 => Err(Status::NotFound),
        2 => Err(Status::BadArgument),
        3 => Err(Status::SerializationFailure),
        4 => Err(Status::ParseFailure),
        7 => Err(Status::Empty),
        8 => Err(Status::CasMismatch),
        _ => Err(Status::InternalFailure),
    }
}

/// Takes ownership of bytes the host allocated through `proxy_on_memory_allocate` (the
/// SDK's allocator: a boxed slice of exactly `size` bytes).
fn take_host_bytes(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: the host wrote `size` bytes into a buffer of that capacity it obtained from
    // our allocator, and hands its ownership to us.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

pub fn now_nanos() -> u64 {
    let mut nanos = 0u64;
    // SAFETY: the host writes one u64 to a location we own.
    let code = unsafe { abi::proxy_get_current_time_nanoseconds(&mut nanos) };
    status(code).map_or(0, |()| nanos)
}

pub fn now_ms() -> u64 {
    now_nanos() / 1_000_000
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    status(unsafe { abi::proxy_set_tick_period_milliseconds(period) })
}

pub fn buffer(kind: BufferType, max: usize) -> Vec<u8> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: the host writes a pointer and a size to locations we own.
    let code = unsafe { abi::proxy_get_buffer_bytes(kind as u32, 0, max, &mut data, &mut size) };
    let bytes = take_host_bytes(data, size);
    status(code).map_or(Vec::new(), |()| bytes)
}

pub fn header(map: MapType, name: &str) -> Option<String> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: `name` outlives the call; the host writes a pointer and a size we own.
    let code = unsafe {
        abi::proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    let bytes = take_host_bytes(data, size);
    status(code).ok()?;
    String::from_utf8(bytes).ok()
}

/// The request's header map as the host serialised it, read in place.
pub struct HeaderPairs {
    bytes: Vec<u8>,
}

impl HeaderPairs {
    /// Every header, in order (a name can appear several times); pairs that are not UTF-8
    /// are left out.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        decode_pairs(&self.bytes)
            .filter_map(|(n, v)| Some((std::str::from_utf8(n).ok()?, std::str::from_utf8(v).ok()?)))
    }
}

/// Every request header, from one host call (empty if the host refuses).
pub fn request_headers() -> HeaderPairs {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: the host writes a pointer and a size to locations we own.
    let code = unsafe {
        abi::proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size)
    };
    let bytes = take_host_bytes(data, size);
    HeaderPairs {
        bytes: status(code).map_or(Vec::new(), |()| bytes),
    }
}

/// The ABI's serialised header map: a u32 count, then a (name size, value size) u32 pair
/// per header, then each name and value followed by a NUL byte.
fn decode_pairs(bytes: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(|b: [u8; 4]| u32::from_le_bytes(b) as usize)
    };
    let count = u32_at(0).unwrap_or(0);
    let mut cursor = 4 + count.saturating_mul(8);
    (0..count).map_while(move |i| {
        let name_len = u32_at(4 + i * 8)?;
        let value_len = u32_at(8 + i * 8)?;
        let name = bytes.get(cursor..cursor + name_len)?;
        cursor += name_len + 1;
        let value = bytes.get(cursor..cursor + value_len)?;
        cursor += value_len + 1;
        Some((name, value))
    })
}

pub fn set_header(map: MapType, name: &str, value: &str) {
    // SAFETY: `name` and `value` outlive the call.
    let code = unsafe {
        abi::proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    };
    if let Err(status) = status(code) {
        log::debug!("consul-enricher: cannot set header {name}: {status:?}");
    }
}

pub fn remove_header(map: MapType, name: &str) {
    // SAFETY: `name` outlives the call.
    let code = unsafe { abi::proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) };
    if let Err(status) = status(code) {
        log::debug!("consul-enricher: cannot remove header {name}: {status:?}");
    }
}

/// A property, by its path as the ABI takes it: the segments separated by NUL bytes
/// (`"upstream\0address"`).
pub fn property(path: &str) -> Option<String> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: `path` outlives the call; the host writes a pointer and a size we own.
    let code = unsafe { abi::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    let bytes = take_host_bytes(data, size);
    status(code).ok()?;
    String::from_utf8(bytes).ok()
}

/// Sets a property (path as for [`property`]).
pub fn set_property(path: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: `path` and `value` outlive the call.
    status(unsafe {
        abi::proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len())
    })
}

/// A shared-data value and its CAS; `(None, None)` when the key is absent.
pub fn shared_get(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let (mut data, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: `key` outlives the call; the host writes to locations we own.
    let code = unsafe {
        abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
    };
    let bytes = take_host_bytes(data, size);
    match status(code) {
        Ok(()) => Ok((Some(bytes), (cas != 0).then_some(cas))),
        Err(Status::NotFound) => Ok((None, None)),
        Err(status) => Err(status),
    }
}

pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: `key` and `value` outlive the call.
    status(unsafe {
        abi::proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// Stores `value` under `key` whatever is there: with the CAS of the value read just
/// before, retried on a mismatch. ngx_wasm_module writes only when the CAS equals the
/// stored one, 0 meaning "only if absent" (`ngx_wa_shm_kv_set_locked`,
/// src/common/shm/ngx_wa_shm_kv.c); Envoy also takes 0 as "unconditionally", so passing
/// the current CAS is right on both.
pub fn shared_store(key: &str, value: &[u8]) -> Result<(), Status> {
    let mut result = Err(Status::CasMismatch);
    for _ in 0..3 {
        let (_, cas) = shared_get(key)?;
        result = shared_set(key, value, cas);
        if result != Err(Status::CasMismatch) {
            break;
        }
    }
    result
}

/// Removes a shared-data key (a null value is a delete for ngx_wasm_module,
/// `ngx_proxy_wasm_hfuncs_set_shared_data`); Envoy keeps the key with an empty value, which
/// the filter reads as absent.
pub fn shared_delete(key: &str, cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: `key` outlives the call; a null value with length 0 is the ABI's "no value".
    status(unsafe {
        abi::proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            std::ptr::null(),
            0,
            cas.unwrap_or(0),
        )
    })
}

/// The one SDK wrapper the filter uses: the SDK must record which context made a call to
/// route its answer back (`dispatcher::register_callout`), and only its wrapper does that.
/// It panics on statuses other than Ok, BadArgument and InternalFailure, and neither host
/// answers `proxy_http_call` with another: ngx_wasm_module answers Ok or InternalFailure
/// (`ngx_proxy_wasm_hfuncs_dispatch_http_call`, ngx_proxy_wasm_host.c) or traps, Envoy Ok,
/// BadArgument or InternalFailure (`Context::httpCall`, source/extensions/common/wasm/
/// context.cc).
pub fn dispatch(
    upstream: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout_ms: u32,
) -> Result<u32, Status> {
    proxy_wasm::hostcalls::dispatch_http_call(
        upstream,
        headers,
        body,
        Vec::new(),
        std::time::Duration::from_millis(u64::from(timeout_ms)),
    )
}

/// Makes `context_id` the context later host calls act on; false if it is gone.
/// Envoy honours this; ngx_wasm_module answers Ok and ignores it (see `Shared::resume`).
pub fn switch_to(context_id: u32) -> bool {
    // SAFETY: no pointers.
    status(unsafe { abi::proxy_set_effective_context(context_id) }).is_ok()
}

pub fn resume_request() {
    const STREAM_TYPE_REQUEST: u32 = 0;
    // SAFETY: no pointers.
    if let Err(status) = status(unsafe { abi::proxy_continue_stream(STREAM_TYPE_REQUEST) }) {
        log::debug!("consul-enricher: cannot resume request: {status:?}");
    }
}

pub fn define_counter(name: &str) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: `name` outlives the call; the host writes the id to a u32 we own.
    let code = unsafe {
        abi::proxy_define_metric(
            MetricType::Counter as u32,
            name.as_ptr(),
            name.len(),
            &mut id,
        )
    };
    status(code).ok().map(|()| id)
}

pub fn increment(metric: Option<u32>, by: u64) {
    if let Some(id) = metric {
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        // SAFETY: no pointers.
        if status(unsafe { abi::proxy_increment_metric(id, by) }).is_err() {
            log::debug!("consul-enricher: cannot increment metric {id}");
        }
    }
}

pub fn call_response_header(name: &str) -> Option<String> {
    header(MapType::HttpCallResponseHeaders, name)
}

pub fn call_response_body(size: usize) -> Vec<u8> {
    buffer(BufferType::HttpCallResponseBody, size)
}

/// Randomness from the host (WASI `random_get`), for span ids that differ across workers;
/// 0 if the host has none.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: the host writes exactly `buf.len()` bytes into the buffer we own.
    let errno = unsafe { abi::random_get(buf.as_mut_ptr(), buf.len()) };
    if errno == 0 {
        u64::from_le_bytes(buf)
    } else {
        0
    }
}
