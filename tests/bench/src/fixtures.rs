//! The filters under test, their host options, and the requests the benchmarks send.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use standins::{ConsulStandin, Instance};
use test_host::{
    artifacts, Flavour, Host, HostOptions, LogLevel, Phase, RequestHandle, RequestSpec,
};

pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
pub const BAGGAGE: &str = "ui.component=checkout-button,ui.action=click";
pub const UPSTREAM: &str = "10.0.1.1:8080";

/// The least a Proxy-Wasm module can be: every ABI 0.2.1 callback the host calls, each
/// doing nothing. Running it measures the host's own cost per request ("no filter").
const EMPTY_FILTER_WAT: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_tick") (param i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))"#;

/// The host calls of an enricher cache hit on Kong and nothing else (docs/performance.md,
/// "What a hit costs"): the clock, the request's header map, the Kong service, six
/// `x-consul-*` headers and `baggage`; on the response `$upstream_addr`
/// (`ngx.upstream_addr`) and `$consul_enricher` (`ngx.consul_enricher`), with values of the
/// sizes a hit writes. Its cost is the floor of any filter that makes those calls.
const HIT_CALLS_WAT: &str = r#"(module
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 2048) "x-consul-service")
  (data (i32.const 2304) "echo")
  (data (i32.const 2560) "x-consul-datacenter")
  (data (i32.const 2816) "dc1")
  (data (i32.const 3072) "x-consul-meta-version")
  (data (i32.const 3328) "1.4.2,1.5.0")
  (data (i32.const 3584) "x-consul-meta-region")
  (data (i32.const 3840) "eu-west-1")
  (data (i32.const 4096) "x-consul-instances")
  (data (i32.const 4352) "3")
  (data (i32.const 4608) "x-consul-lookup")
  (data (i32.const 4864) "hit")
  (data (i32.const 5120) "baggage")
  (data (i32.const 5376) "ui.component=checkout-button,ui.action=click,consul.service=echo,consul.datacenter=dc1,consul.service.meta.version=1.4.2%2C1.5.0,consul.service.meta.region=eu-west-1")
  (data (i32.const 5632) "kong\00router\00service")
  (data (i32.const 5888) "ngx\00upstream_addr")
  (data (i32.const 6400) "ngx\00consul_enricher")
  (data (i32.const 6656) "{\22service.peer.name\22:\22echo\22,\22consul.lookup\22:\22hit\22,\22consul.service.meta.region\22:\22eu-west-1\22,\22ui.component\22:\22checkout-button\22,\22consul.lookup.duration_ms\22:0,\22network.peer.address\22:\2210.0.1.1\22,\22network.peer.port\22:8080,\22server.address\22:\2210.0.1.1\22,\22server.port\22:8080,\22consul.service.id\22:\22echo-0\22,\22consul.node\22:\22node-0\22,\22consul.datacenter\22:\22dc1\22,\22consul.service.tags\22:[\22http\22],\22consul.service.meta.version\22:\221.4.2\22}")
  ;; What the host returns goes to a bump area that starts over when full.
  (global $next (mut i32) (i32.const 65536))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (if (i32.gt_u (i32.add (global.get $next) (local.get $size)) (i32.const 131072))
      (then (global.set $next (i32.const 65536))))
    (local.set $at (global.get $next))
    (global.set $next (i32.add (local.get $at) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_tick") (param i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $now (i32.const 16)))
    (drop (call $pairs (i32.const 0) (i32.const 32) (i32.const 36)))
    (drop (call $get_property (i32.const 5632) (i32.const 19) (i32.const 32) (i32.const 36)))
    (drop (call $replace_header (i32.const 0) (i32.const 2048) (i32.const 16) (i32.const 2304) (i32.const 4)))
    (drop (call $replace_header (i32.const 0) (i32.const 2560) (i32.const 19) (i32.const 2816) (i32.const 3)))
    (drop (call $replace_header (i32.const 0) (i32.const 3072) (i32.const 21) (i32.const 3328) (i32.const 11)))
    (drop (call $replace_header (i32.const 0) (i32.const 3584) (i32.const 20) (i32.const 3840) (i32.const 9)))
    (drop (call $replace_header (i32.const 0) (i32.const 4096) (i32.const 18) (i32.const 4352) (i32.const 1)))
    (drop (call $replace_header (i32.const 0) (i32.const 4608) (i32.const 15) (i32.const 4864) (i32.const 3)))
    (drop (call $replace_header (i32.const 0) (i32.const 5120) (i32.const 7) (i32.const 5376) (i32.const 165)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $get_property (i32.const 5888) (i32.const 17) (i32.const 32) (i32.const 36)))
    (drop (call $set_property (i32.const 6400) (i32.const 19) (i32.const 6656) (i32.const 407)))
    (i32.const 0))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))"#;

/// The baseline filter's configuration on the Kong flavour: it reads the peer as the
/// enricher does there (see the baseline's `peer=`).
pub const BASELINE_ON_KONG: &str = "peer=ngx.upstream_addr";

pub struct Wasm {
    pub empty: PathBuf,
    pub hit_calls: PathBuf,
    pub baseline: PathBuf,
    pub enricher: PathBuf,
}

impl Wasm {
    /// The shipped filter and the baseline (from `CONSUL_ENRICHER_WASM` and
    /// `BASELINE_FILTER_WASM`, else built), and the two hand-written modules next to them.
    pub fn locate() -> Result<Wasm> {
        let enricher = artifacts::filter_wasm()?;
        let baseline = artifacts::baseline_wasm()?;
        let write = |name: &str, wat: &str| -> Result<PathBuf> {
            let path = std::env::temp_dir().join(format!("{name}-{}.wasm", std::process::id()));
            let bytes = wat::parse_str(wat).with_context(|| format!("{name} assembles"))?;
            std::fs::write(&path, bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        };
        Ok(Wasm {
            empty: write("empty-filter", EMPTY_FILTER_WAT)?,
            hit_calls: write("hit-calls", HIT_CALLS_WAT)?,
            baseline,
            enricher,
        })
    }
}

impl Drop for Wasm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.empty);
        let _ = std::fs::remove_file(&self.hit_calls);
    }
}

/// Options shared by every benchmark host: Kong flavour (the demo's gateway), logging at
/// info as a production gateway would, and the shm zones both filters use.
pub fn host_options(wasm: &PathBuf, config: String, workers: usize) -> HostOptions {
    let mut options = HostOptions::new(Flavour::Kong, wasm, config);
    options.workers = workers;
    options.log_level = LogLevel::Info;
    options.shm_zones = vec![
        "*".to_string(),
        "baseline".to_string(),
        "consul_enricher".to_string(),
    ];
    options
}

/// The enricher's configuration against `consul`, with `cache` and `consul` members added
/// to the defaults (JSON object bodies without braces).
pub fn enricher_config(consul: &ConsulStandin, consul_extra: &str, cache: &str) -> String {
    let sep = if consul_extra.is_empty() { "" } else { "," };
    format!(
        r#"{{"host":"kong","consul":{{"upstream":"{}"{sep}{consul_extra}}},"cache":{{{cache}}}}}"#,
        consul.addr()
    )
}

/// Registers `instances` instances of `service`, differing in version and region so the
/// filter builds value sets as it does for a rolling deployment.
pub fn register(consul: &ConsulStandin, service: &str, instances: usize) {
    for n in 0..instances {
        consul.register(
            Instance::new(service, format!("{service}-{n}"))
                .address(format!("10.0.1.{}", n + 1))
                .port(8080)
                .tag("http")
                .meta("version", if n % 2 == 0 { "1.4.2" } else { "1.5.0" })
                .meta("region", "eu-west-1"),
        );
    }
}

/// A traced request to `service` as Kong presents it: the route's Kong service (with its
/// host) answered by Kong's Lua as `kong.router.service`.
pub fn traced_request(service: &str) -> RequestSpec {
    RequestSpec::get("kong:8000", "/echo")
        .property(
            "kong.router.service",
            &format!(r#"{{"name":"{service}","host":"{service}.service.consul","port":8080}}"#),
        )
        .property("kong.version", "3.9.1")
        .header("traceparent", TRACEPARENT)
        .header("baggage", BAGGAGE)
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
        .header("accept", "application/json")
}

pub fn respond(host: &mut Host, request: RequestHandle) -> Result<()> {
    host.respond(
        request,
        UPSTREAM,
        vec![(":status".to_string(), "200".to_string())],
    )
    .map_err(anyhow::Error::msg)
}

/// Runs the host until every request in `requests` went upstream, then answers them all.
pub fn forward_and_respond(
    host: &mut Host,
    requests: &[RequestHandle],
    wait: Duration,
) -> Result<()> {
    let forwarded = host
        .run_until(wait, |h| {
            requests.iter().all(|r| {
                h.record(*r)
                    .is_some_and(|rec| rec.phase == Phase::Forwarded)
            })
        })
        .map_err(anyhow::Error::msg)?;
    if !forwarded {
        bail!("requests still held after {wait:?}");
    }
    for request in requests {
        respond(host, *request)?;
    }
    Ok(())
}

/// The `x-consul-lookup` header the filter sent upstream with `request`.
pub fn lookup_header(host: &Host, request: RequestHandle) -> Option<String> {
    host.record(request)?
        .upstream_header("x-consul-lookup")
        .map(str::to_string)
}

/// The `consul.lookup` attribute the filter left for Kong's companion plugin.
pub fn lookup_attribute(host: &Host, request: RequestHandle) -> Option<String> {
    let record = host.record(request)?;
    let json = String::from_utf8_lossy(record.nginx_variables.get("consul_enricher")?);
    let value = json.split("\"consul.lookup\":\"").nth(1)?;
    Some(value.split('"').next()?.to_string())
}
