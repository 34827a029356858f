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

pub struct Wasm {
    pub empty: PathBuf,
    pub baseline: PathBuf,
    pub enricher: PathBuf,
}

impl Wasm {
    /// The shipped filter and the baseline (from `CONSUL_ENRICHER_WASM` and
    /// `BASELINE_FILTER_WASM`, else built), and the empty module written next to them.
    pub fn locate() -> Result<Wasm> {
        let enricher = artifacts::filter_wasm()?;
        let baseline = artifacts::baseline_wasm()?;
        let empty = std::env::temp_dir().join(format!("empty-filter-{}.wasm", std::process::id()));
        let bytes = wat::parse_str(EMPTY_FILTER_WAT).context("the empty filter assembles")?;
        std::fs::write(&empty, bytes)
            .with_context(|| format!("cannot write {}", empty.display()))?;
        Ok(Wasm {
            empty,
            baseline,
            enricher,
        })
    }
}

impl Drop for Wasm {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.empty);
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

/// A browser request through the gateway to `<service>.service.consul`, Kong's upstream
/// host for the route (Kong's `:authority` is its server block's, not the service).
pub fn traced_request(service: &str) -> RequestSpec {
    let host = format!("{service}.service.consul");
    RequestSpec::get(&host, "/echo")
        .property("ngx.upstream_host", &host)
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
    let json = String::from_utf8_lossy(record.kong_ctx_shared.get("consul_enricher")?);
    let value = json.split("\"consul.lookup\":\"").nth(1)?;
    Some(value.split('"').next()?.to_string())
}
