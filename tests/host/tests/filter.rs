//! The real `consul_enricher.wasm` on the test host against the Consul stand-in: the
//! contract in docs/configuration.md and docs/attributes.md.
//!
//! The Kong flavour models ngx_wasm_module, whose engine runs only by hand, so it is the
//! reference for Kong in `make test`. For Envoy the reference is the official binary in
//! tests/envoy; the Envoy flavour keeps only what that cannot show, and each such test says
//! why in one line.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use standins::{closed_port_addr, ConsulOptions, ConsulStandin, Fault, Instance};
use test_host::{
    artifacts, Flavour, Host, HostOptions, LogLevel, Phase, RequestHandle, RequestSpec,
    KONG_CALL_OUTSIDE_A_REQUEST, KONG_LUA_OUTSIDE_REQUEST_HEADERS, KONG_UPSTREAM_NAME_READ,
};

const WAIT: Duration = Duration::from_secs(10);
const CATALOG: &str = "/v1/catalog/service/echo";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

struct Gateway {
    host: Host,
    flavour: Flavour,
}

fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, extra) => *base = extra.clone(),
    }
}

/// The filter configured for `flavour`, talking to Consul at `consul`.
fn host_options(flavour: Flavour, workers: usize, consul: &str, extra: Value) -> HostOptions {
    let upstream = match flavour {
        Flavour::Kong => consul.to_string(),
        Flavour::Envoy => "consul".to_string(),
    };
    // Long enough for a loaded CI machine to answer, shorter than the slow-Consul fault.
    let mut config = json!({
        "host": flavour.name(),
        "consul": {"upstream": upstream, "timeout_ms": 1000},
    });
    merge(&mut config, &extra);
    let wasm = artifacts::filter_wasm().expect("consul_enricher.wasm builds");
    let mut options = HostOptions::new(flavour, wasm, config.to_string());
    options.workers = workers;
    options.shm_zones = vec!["*".to_string(), "consul_enricher".to_string()];
    options.clusters = HashMap::from([("consul".to_string(), consul.to_string())]);
    options
}

fn gateway(flavour: Flavour, workers: usize, consul: &str, extra: Value) -> Gateway {
    let host = Host::new(host_options(flavour, workers, consul, extra))
        .unwrap_or_else(|e| panic!("{flavour:?}: {e}"));
    Gateway { host, flavour }
}

/// A traced request routed to the Consul service `echo`, as each gateway presents it.
fn echo_request(flavour: Flavour) -> RequestSpec {
    let spec = RequestSpec::get("echo.service.consul", "/echo").header("traceparent", TRACEPARENT);
    match flavour {
        Flavour::Kong => spec
            .property(
                "kong.router.service",
                r#"{"id":"5a1f0c3e-0000-4000-8000-000000000001","name":"echo","host":"echo.service.consul","port":8080,"protocol":"http"}"#,
            )
            .property("kong.version", "3.9.1")
            .property("kong.service_id", "5a1f0c3e-0000-4000-8000-000000000001")
            .property("kong.route_id", "5a1f0c3e-0000-4000-8000-000000000002"),
        Flavour::Envoy => spec.property("xds.cluster_name", "echo"),
    }
}

impl Gateway {
    fn send(&mut self, spec: RequestSpec) -> RequestHandle {
        self.send_on(0, spec)
    }

    fn send_on(&mut self, worker: usize, spec: RequestSpec) -> RequestHandle {
        self.host
            .request(worker, spec)
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.flavour))
    }

    /// Waits until the request went upstream (it may have been paused for Consul).
    fn forwarded(&mut self, request: RequestHandle) -> test_host::RequestRecord {
        let went = self
            .host
            .run_until(WAIT, |h| {
                h.record(request)
                    .is_some_and(|r| r.phase == Phase::Forwarded)
            })
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.flavour));
        let record = self.host.record(request).cloned().unwrap();
        assert!(
            went,
            "{:?}: request not forwarded: {:?}",
            self.flavour, record.phase
        );
        record
    }

    /// The upstream at `peer` answers `request` with a 200; the request's record after.
    fn answered(&mut self, request: RequestHandle, peer: &str) -> test_host::RequestRecord {
        self.host
            .respond(request, peer, vec![(":status".into(), "200".into())])
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.flavour));
        self.host.record(request).cloned().unwrap()
    }

    /// Sends `spec` (to the Consul service `echo`), answers it, and checks that it was
    /// enriched and completed: the record.
    fn enriched(&mut self, spec: RequestSpec) -> test_host::RequestRecord {
        let request = self.send(spec);
        let record = self.forwarded(request);
        assert_eq!(record.upstream_header("x-consul-service"), Some("echo"));
        let record = self.answered(request, "127.0.0.2:9002");
        assert_eq!(record.phase, Phase::Completed);
        record
    }

    /// A counter's value; the filter hands its counts to the host on the tick, so every
    /// worker ticks first.
    fn metric(&mut self, name: &str) -> i64 {
        self.host
            .tick_all()
            .unwrap_or_else(|e| panic!("{:?}: {e}", self.flavour));
        self.host
            .metric(&format!("consul_enricher_{name}_total"))
            .unwrap_or(0)
    }

    /// No trap, and (Kong) no call outside a request, Kong's Lua never asked outside
    /// request headers.
    fn assert_no_traps(&self) {
        let leaked = self.host.logs_containing(KONG_CALL_OUTSIDE_A_REQUEST);
        assert!(leaked.is_empty(), "{:?}: {leaked:?}", self.flavour);
        let misread = self.host.logs_containing(KONG_UPSTREAM_NAME_READ);
        assert!(misread.is_empty(), "{:?}: {misread:?}", self.flavour);
        let lua_calls = self.host.logs_containing(KONG_LUA_OUTSIDE_REQUEST_HEADERS);
        assert!(lua_calls.is_empty(), "{:?}: {lua_calls:?}", self.flavour);
        assert!(
            self.host.traps().is_empty(),
            "{:?}: {:?}",
            self.flavour,
            self.host.traps()
        );
    }
}

fn consul_with_echo(options: ConsulOptions) -> ConsulStandin {
    let consul = ConsulStandin::start(options).unwrap();
    consul.register(
        Instance::new("echo", "echo-1")
            .address("127.0.0.1")
            .port(9001)
            .meta("version", "1.2.0")
            .meta("region", "eu-west"),
    );
    consul.register(
        Instance::new("echo", "echo-2")
            .address("127.0.0.2")
            .port(9002)
            .meta("version", "1.3.0")
            .meta("region", "eu-west"),
    );
    consul
}

#[test]
fn cold_miss_pauses_for_one_call_then_hot_hits_make_none() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), json!({}));
    let first = gw.send(echo_request(flavour));
    assert_eq!(gw.host.record(first).unwrap().phase, Phase::Paused);
    let record = gw.forwarded(first);
    assert!(record.was_paused);
    assert_eq!(record.upstream_header("x-consul-service"), Some("echo"));
    assert_eq!(
        record.upstream_header("x-consul-meta-version"),
        Some("1.2.0,1.3.0")
    );
    assert_eq!(
        record.upstream_header("x-consul-meta-region"),
        Some("eu-west")
    );
    assert_eq!(record.upstream_header("x-consul-instances"), Some("2"));
    assert_eq!(record.upstream_header("x-consul-lookup"), Some("miss"));
    assert_eq!(consul.requests(CATALOG), 1);

    let second = gw.send(echo_request(flavour));
    let record = gw.host.record(second).cloned().unwrap();
    assert_eq!(record.phase, Phase::Forwarded, "a hit is not paused");
    assert_eq!(record.upstream_header("x-consul-lookup"), Some("hit"));
    assert_eq!(record.upstream_header("x-consul-service"), Some("echo"));
    assert_eq!(consul.requests(CATALOG), 1, "no call on a hit");
    assert_eq!(gw.metric("requests"), 2);
    assert_eq!(gw.metric("cache_misses"), 1);
    assert_eq!(gw.metric("cache_hits"), 1);
    assert_eq!(gw.metric("consul_calls"), 1);
    assert_eq!(gw.metric("enriched"), 2);
    gw.assert_no_traps();
}

/// Kong makes every call from a request (`KONG_CALL_OUTSIDE_A_REQUEST`): the first request
/// that finds the entry stale refreshes it and waits for Consul; the others are served stale
/// at once.
#[test]
fn a_stale_entry_is_refreshed_by_one_request_and_the_others_served_at_once() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    consul.set_fault(Fault::Delay(Duration::from_millis(300)));
    let extra = json!({"cache": {"ttl_s": 1, "stale_s": 300}});
    let mut gw = gateway(flavour, 2, &consul.addr().to_string(), extra);
    let first = gw.send(echo_request(flavour));
    gw.forwarded(first);
    std::thread::sleep(Duration::from_millis(1_100));

    let stale: Vec<_> = (0..4)
        .map(|i| gw.send_on(i % 2, echo_request(flavour)))
        .collect();
    let records: Vec<_> = stale
        .iter()
        .map(|r| gw.host.record(*r).cloned().unwrap())
        .collect();
    let carriers: Vec<_> = records
        .iter()
        .filter(|r| r.phase == Phase::Paused)
        .collect();
    assert_eq!(
        carriers.len(),
        1,
        "one request refreshes, for the whole gateway"
    );
    for record in records.iter().filter(|r| r.phase != Phase::Paused) {
        assert_eq!(record.phase, Phase::Forwarded, "stale is served at once");
        assert_eq!(record.upstream_header("x-consul-lookup"), Some("stale"));
    }
    let carrier = stale[records
        .iter()
        .position(|r| r.phase == Phase::Paused)
        .unwrap()];
    let record = gw.forwarded(carrier);
    assert_eq!(record.upstream_header("x-consul-lookup"), Some("hit"));
    let after = gw.send(echo_request(flavour));
    let record = gw.host.record(after).cloned().unwrap();
    assert_eq!(record.upstream_header("x-consul-lookup"), Some("hit"));
    assert_eq!(consul.requests(CATALOG), 2, "one refresh, across workers");
    assert!(gw.metric("cache_stale") >= 3);
    gw.assert_no_traps();
}

/// A blocking query cannot be carried by a request, so Kong has no watch: said once per
/// worker, and the entry is refreshed every TTL by a request instead.
#[test]
fn kong_has_no_watch_and_refreshes_from_requests() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    let extra = watch_config(json!({"cache": {"ttl_s": 1, "stale_s": 300}}));
    let mut gw = gateway(flavour, 2, &consul.addr().to_string(), extra);
    // Past the 1 s TTL on both workers, until a request refreshed the entry.
    let deadline = std::time::Instant::now() + WAIT;
    let mut i = 0;
    while consul.request_log().len() < 2 && std::time::Instant::now() < deadline {
        let request = gw.send_on(i % 2, echo_request(flavour));
        gw.forwarded(request);
        gw.host.advance(Duration::from_millis(100)).unwrap();
        i += 1;
    }
    let said = gw.host.logs_containing("consul.watch is off on Kong");
    assert_eq!(said.len(), 2, "once per worker: {said:?}");
    let log = consul.request_log();
    assert!(
        log.iter().all(|r| !r.has_query("index")),
        "no blocking query"
    );
    assert!(log.len() >= 2, "refreshed: {} calls", log.len());
    gw.assert_no_traps();
}

/// The filter's own spans on Kong: the export is carried by a request, which waits for the
/// collector; nothing is sent from the tick.
#[test]
fn kong_exports_spans_from_requests() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    let otlp = standins::OtlpStandin::start().unwrap();
    let extra = json!({"spans": {"enabled": true, "upstream": otlp.addr().to_string(),
        "authority": "otlp", "flush_ms": 100, "batch_size": 4}});
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), extra);
    for _ in 0..12 {
        let request = gw.send(echo_request(flavour));
        gw.forwarded(request);
        gw.answered(request, "127.0.0.1:9001");
        gw.host.advance(Duration::from_millis(50)).unwrap();
    }
    let spans = otlp.wait_for_spans(8, WAIT);
    assert!(spans.len() >= 8, "{} spans exported", spans.len());
    assert!(gw.metric("spans_exported") >= 8);
    gw.assert_no_traps();
}

/// `n` cold requests over two workers, all sent before Consul answers: every one is
/// answered and enriched. ngx_wasm_module can resume a paused request only when a call of
/// its own is answered, so each waits on its own call (docs/waiting.md).
fn concurrent_cold_requests(n: usize) {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    consul.set_fault(Fault::Delay(Duration::from_millis(100)));
    let extra = json!({"consul": {"timeout_ms": 10_000}});
    let mut gw = gateway(flavour, 2, &consul.addr().to_string(), extra);
    let requests: Vec<_> = (0..n)
        .map(|i| gw.send_on(i % 2, echo_request(flavour)))
        .collect();
    let all = gw
        .host
        .run_until(Duration::from_secs(60), |h| {
            requests
                .iter()
                .all(|r| h.record(*r).is_some_and(|r| r.phase == Phase::Forwarded))
        })
        .unwrap();
    let stuck: Vec<_> = requests
        .iter()
        .filter_map(|r| gw.host.record(*r))
        .filter(|r| r.phase != Phase::Forwarded)
        .map(|r| format!("{}/{}: {:?}", r.worker, r.context_id, r.phase))
        .take(5)
        .collect();
    assert!(all, "every request went upstream; stuck: {stuck:?}");
    for request in &requests {
        let record = gw.host.record(*request).unwrap();
        assert_eq!(record.upstream_header("x-consul-service"), Some("echo"));
        assert_eq!(record.upstream_header("x-consul-lookup"), Some("miss"));
    }
    assert_eq!(consul.requests(CATALOG), n as u64);
    assert_eq!(gw.metric("consul_calls") as usize, n);
    assert_eq!(gw.metric("enriched") as usize, n);
    gw.assert_no_traps();
    assert!(gw.host.logs_containing("PAUSE").is_empty());
}

#[test]
fn two_hundred_concurrent_cold_requests_over_two_workers_are_all_enriched() {
    concurrent_cold_requests(200);
}

#[test]
fn a_thousand_concurrent_cold_requests_over_two_workers_are_all_enriched() {
    concurrent_cold_requests(1000);
}

/// Every request goes on unenriched, nothing traps, and the backoff stops a second call.
fn assert_fails_open(consul_addr: &str, consul: Option<&ConsulStandin>, extra: Value) -> Gateway {
    let flavour = Flavour::Kong;
    let mut gw = gateway(flavour, 2, consul_addr, extra);
    let first = gw.send(echo_request(flavour));
    let record = gw.forwarded(first);
    assert_eq!(record.upstream_header("x-consul-meta-version"), None);
    assert_eq!(record.upstream_header("traceparent"), Some(TRACEPARENT));
    let calls = consul.map(|c| c.requests(CATALOG));
    for worker in [0, 1, 0] {
        let next = gw.send_on(worker, echo_request(flavour));
        let record = gw.forwarded(next);
        assert_eq!(record.upstream_header("x-consul-meta-version"), None);
        assert!(!record.was_paused, "backoff: no wait after a failure");
    }
    gw.host.run_until_idle(WAIT).unwrap();
    assert_eq!(consul.map(|c| c.requests(CATALOG)), calls, "backoff held");
    assert_eq!(gw.metric("consul_calls"), 1);
    gw.assert_no_traps();
    gw
}

#[test]
fn consul_down_costs_one_failed_call_then_backoff() {
    let mut gw = assert_fails_open(&closed_port_addr().to_string(), None, json!({}));
    assert_eq!(gw.metric("consul_errors"), 1);
}

#[test]
fn consul_slower_than_the_timeout_is_counted_as_a_timeout() {
    let consul = consul_with_echo(ConsulOptions::default());
    consul.set_fault(Fault::Delay(Duration::from_secs(2)));
    let mut gw = assert_fails_open(&consul.addr().to_string(), Some(&consul), json!({}));
    assert_eq!(gw.metric("consul_timeouts"), 1);
}

#[test]
fn consul_errors_fail_open_with_backoff() {
    let faults = [
        Fault::Status(500, "rpc error".into()),
        Fault::Status(503, "No cluster leader".into()),
        Fault::Status(
            429,
            "Your IP is issuing too many concurrent connections".into(),
        ),
        Fault::InvalidJson,
        Fault::Oversized(64 * 1024),
        Fault::Reset,
        Fault::ResetMidBody,
    ];
    for fault in &faults {
        let consul = consul_with_echo(ConsulOptions::default());
        consul.set_fault(fault.clone());
        let extra = json!({"consul": {"max_body_bytes": 4096}});
        let mut gw = assert_fails_open(&consul.addr().to_string(), Some(&consul), extra);
        assert_eq!(gw.metric("consul_errors"), 1, "{fault:?}");
    }
}

#[test]
fn unknown_service_is_negatively_cached() {
    let flavour = Flavour::Kong;
    let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), json!({}));
    let first = gw.send(echo_request(flavour));
    let record = gw.forwarded(first);
    assert_eq!(record.upstream_header("x-consul-meta-version"), None);
    let second = gw.send(echo_request(flavour));
    let record = gw.host.record(second).cloned().unwrap();
    assert_eq!(record.phase, Phase::Forwarded, "no wait");
    assert_eq!(consul.requests(CATALOG), 1, "negative-cached");
    assert_eq!(gw.metric("consul_errors"), 0, "unknown is not an error");
    gw.assert_no_traps();
}

#[test]
fn acl_token_and_datacenter_are_sent() {
    let flavour = Flavour::Kong;
    let options = ConsulOptions {
        acl_token: Some("s3cr3t-token".into()),
        other_datacenters: vec!["dc2".into()],
        ..ConsulOptions::default()
    };
    let consul = ConsulStandin::start(options).unwrap();
    consul.register(
        Instance::new("echo", "echo-dc2")
            .datacenter("dc2")
            .address("127.0.0.3")
            .port(9003)
            .meta("version", "2.0.0"),
    );
    let extra = json!({"consul": {"token": "s3cr3t-token", "datacenter": "dc2"}});
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), extra);
    let request = gw.send(echo_request(flavour));
    let record = gw.forwarded(request);
    assert_eq!(
        record.upstream_header("x-consul-meta-version"),
        Some("2.0.0")
    );
    assert_eq!(record.upstream_header("x-consul-datacenter"), Some("dc2"));
    let sent = consul
        .request_log()
        .into_iter()
        .find(|r| r.path == CATALOG)
        .unwrap();
    assert_eq!(sent.header("x-consul-token"), Some("s3cr3t-token"));
    assert_eq!(sent.query_values("dc"), vec!["dc2".to_string()]);
    gw.assert_no_traps();
}

#[test]
fn a_wrong_acl_token_fails_open() {
    let options = ConsulOptions {
        acl_token: Some("right".into()),
        ..ConsulOptions::default()
    };
    let consul = consul_with_echo(options);
    let extra = json!({"consul": {"token": "wrong"}});
    let mut gw = assert_fails_open(&consul.addr().to_string(), Some(&consul), extra);
    assert_eq!(gw.metric("consul_errors"), 1);
}

#[test]
fn invalid_config_on_kong_passes_every_request_through_naming_the_key() {
    let consul = consul_with_echo(ConsulOptions::default());
    let extra = json!({"consul": {"timout_ms": 5}});
    let mut gw = gateway(Flavour::Kong, 2, &consul.addr().to_string(), extra);
    let errors = gw.host.logs_containing("consul.timout_ms");
    assert_eq!(errors.len(), 2, "once per worker: {errors:?}");
    assert!(errors.iter().all(|l| l.level == LogLevel::Error));
    for worker in [0, 1] {
        let spec = echo_request(Flavour::Kong).header("x-other", "kept");
        let request = gw.send_on(worker, spec);
        let record = gw.host.record(request).cloned().unwrap();
        assert_eq!(record.phase, Phase::Forwarded, "not paused");
        assert_eq!(record.upstream_header("x-consul-service"), None);
        assert_eq!(record.upstream_header("x-other"), Some("kept"));
        assert_eq!(record.upstream_header("traceparent"), Some(TRACEPARENT));
    }
    assert_eq!(consul.requests(CATALOG), 0);
    gw.assert_no_traps();
}

#[test]
fn an_undeclared_nginx_variable_is_said_once_and_not_written_again() {
    let consul = consul_with_echo(ConsulOptions::default());
    let mut options = host_options(Flavour::Kong, 1, &consul.addr().to_string(), json!({}));
    options.nginx_variables.clear();
    let mut gw = Gateway {
        host: Host::new(options).unwrap(),
        flavour: Flavour::Kong,
    };
    for _ in 0..3 {
        let record = gw.enriched(echo_request(Flavour::Kong));
        assert!(record.nginx_variables.is_empty());
    }
    let said = gw
        .host
        .logs_containing("nginx variable $consul_enricher is not declared");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].message.contains("nginx_proxy_set"), "{said:?}");
    gw.assert_no_traps();
}

#[test]
fn an_nginx_without_kong_lua_gets_the_variable_too() {
    let consul = consul_with_echo(ConsulOptions::default());
    let mut gw = gateway(Flavour::Kong, 1, &consul.addr().to_string(), json!({}));
    for _ in 0..3 {
        // No `kong.version`: the operator sets `$upstream_host` (`ngx.upstream_host`); an
        // access log can print `$consul_enricher`.
        let spec = RequestSpec::get("kong", "/echo")
            .header("traceparent", TRACEPARENT)
            .property("ngx.upstream_host", "echo.service.consul");
        let record = gw.enriched(spec);
        let raw = &record.nginx_variables["consul_enricher"];
        let attributes: Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(attributes["consul.service.id"], "echo-2", "{attributes}");
    }
    assert_eq!(gw.host.logs_containing("no Kong Lua").len(), 1);
    gw.assert_no_traps();
}

#[test]
fn nginx_variable_off_writes_nothing() {
    let consul = consul_with_echo(ConsulOptions::default());
    let extra = json!({"nginx_variable": ""});
    let mut gw = gateway(Flavour::Kong, 1, &consul.addr().to_string(), extra);
    let record = gw.enriched(echo_request(Flavour::Kong));
    assert!(record.nginx_variables.is_empty());
    assert!(gw.host.logs_containing("nginx variable").is_empty());
    gw.assert_no_traps();
}

/// Kong's Lua answers `kong.*` properties through a LuaJIT callback that is safe only in
/// request headers (see `KONG_LUA_OUTSIDE_REQUEST_HEADERS` in the host); writing
/// `kong.ctx.shared` on response headers crashed Kong 3.9.1's workers under load.
#[test]
fn kong_lua_is_asked_only_in_request_headers_even_under_concurrency() {
    let consul = consul_with_echo(ConsulOptions::default());
    let extra = json!({"headers": {"response": true}, "cache": {"ttl_s": 1, "stale_s": 5}});
    let mut gw = gateway(Flavour::Kong, 2, &consul.addr().to_string(), extra);
    for round in 0..3 {
        // Cold, then hits, then stale with a refresh: every callback the filter has.
        let requests: Vec<_> = (0..20)
            .map(|i| {
                let spec = echo_request(Flavour::Kong).header("x-consul-service", "forged");
                gw.send_on(i % 2, spec)
            })
            .collect();
        for (i, request) in requests.into_iter().enumerate() {
            gw.forwarded(request);
            let record = gw.answered(
                request,
                if i % 2 == 0 {
                    "127.0.0.1:9001"
                } else {
                    "127.0.0.2:9002"
                },
            );
            assert_eq!(record.phase, Phase::Completed, "round {round}");
            let lua_calls = gw.host.logs_containing(KONG_LUA_OUTSIDE_REQUEST_HEADERS);
            assert!(lua_calls.is_empty(), "round {round}: {lua_calls:?}");
            assert!(record.nginx_variables.contains_key("consul_enricher"));
        }
        gw.host.tick_all().unwrap();
        std::thread::sleep(Duration::from_millis(1100));
    }
    gw.assert_no_traps();
}

#[test]
fn kong_reads_the_instance_from_upstream_addr() {
    let consul = consul_with_echo(ConsulOptions::default());
    let mut gw = gateway(Flavour::Kong, 1, &consul.addr().to_string(), json!({}));
    for (peer, id) in [("127.0.0.1:9001", "echo-1"), ("127.0.0.2:9002", "echo-2")] {
        let request = gw.send(echo_request(Flavour::Kong));
        gw.forwarded(request);
        let record = gw.answered(request, peer);
        let raw = &record.nginx_variables["consul_enricher"];
        let attributes: Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(attributes["consul.service.id"], id, "{attributes}");
        assert_eq!(
            attributes["server.port"],
            peer[10..].parse::<i64>().unwrap()
        );
    }
    gw.assert_no_traps();
}

/// Envoy flavour: real Envoy's tracer rewrites traceparent upstream; baggage half not yet shown.
#[test]
fn invalid_traceparent_and_baggage_pass_through_untouched() {
    for flavour in Flavour::ALL {
        let consul = consul_with_echo(ConsulOptions::default());
        let mut gw = gateway(flavour, 1, &consul.addr().to_string(), json!({}));
        let bad_parent = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let bad_baggage = "ui.component=checkout,=novalue";
        let mut spec = RequestSpec::get("echo.service.consul", "/echo")
            .header("traceparent", bad_parent)
            .header("baggage", bad_baggage);
        spec.properties = echo_request(flavour).properties;
        let request = gw.send(spec);
        let record = gw.forwarded(request);
        assert_eq!(
            record.upstream_header("traceparent"),
            Some(bad_parent),
            "{flavour:?}"
        );
        assert_eq!(
            record.upstream_header("baggage"),
            Some(bad_baggage),
            "{flavour:?}"
        );
        assert_eq!(gw.metric("invalid_traceparent"), 1);
        assert_eq!(gw.metric("invalid_baggage"), 1);
        gw.assert_no_traps();
    }
}

fn baggage_members(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect()
}

/// Envoy flavour: not yet shown on real Envoy (echo-service reports parsed members, not the line).
#[test]
fn baggage_limits_are_kept() {
    for flavour in Flavour::ALL {
        let consul = consul_with_echo(ConsulOptions::default());
        let mut gw = gateway(flavour, 1, &consul.addr().to_string(), json!({}));

        // Room left: the caller's members stay first and ours are appended.
        let request = gw.send(echo_request(flavour).header("baggage", "ui.component=checkout"));
        let record = gw.forwarded(request);
        let baggage = record.upstream_header("baggage").unwrap().to_string();
        let members = baggage_members(&baggage);
        assert_eq!(
            members.first(),
            Some(&"ui.component=checkout"),
            "{flavour:?}"
        );
        assert!(
            members.iter().any(|m| m.starts_with("consul.service=echo")),
            "{baggage}"
        );

        // Full: 64 members already; nothing may push it past 64 members or 8192 bytes.
        let full: Vec<String> = (0..64).map(|i| format!("k{i}=v{i}")).collect();
        let full = full.join(",");
        let request = gw.send(echo_request(flavour).header("baggage", &full));
        let record = gw.host.record(request).cloned().unwrap();
        let baggage = record.upstream_header("baggage").unwrap().to_string();
        assert!(
            baggage_members(&baggage).len() <= 64,
            "{flavour:?}: {baggage}"
        );
        assert!(baggage.len() <= 8192);
        for i in 0..64 {
            assert!(baggage_members(&baggage).contains(&format!("k{i}=v{i}").as_str()));
        }
        gw.assert_no_traps();
    }
}

#[test]
fn the_instance_actually_used_gets_its_own_attributes() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    let extra = json!({"headers": {"response": true}});
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), extra);
    let request = gw.send(echo_request(flavour));
    gw.forwarded(request);
    let record = gw.answered(request, "127.0.0.2:9002");
    assert_eq!(record.phase, Phase::Completed);
    assert_eq!(
        record.client_response_header("x-consul-service"),
        Some("echo")
    );
    let raw = record
        .nginx_variables
        .get("consul_enricher")
        .expect("$consul_enricher written");
    let attributes: Value = serde_json::from_slice(raw).unwrap();
    assert_eq!(attributes["consul.service.id"], "echo-2", "{attributes}");
    assert_eq!(attributes["service.peer.name"], "echo");
    assert_eq!(attributes["consul.service.meta.version"], "1.3.0");
    assert_eq!(attributes["network.peer.address"], "127.0.0.2");
    assert_eq!(attributes["consul.lookup"], "miss");
    gw.assert_no_traps();
}

#[test]
fn meta_with_crlf_or_huge_text_never_reaches_a_header() {
    let flavour = Flavour::Kong;
    let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
    consul.register(
        Instance::new("echo", "echo-evil")
            .address("127.0.0.1")
            .port(9001)
            .meta("version", "1.0\r\nx-injected: yes")
            .meta("region", "x".repeat(100_000)),
    );
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), json!({}));
    let request = gw.send(echo_request(flavour));
    let record = gw.forwarded(request);
    let headers = record.upstream_headers.clone().unwrap();
    assert!(headers.iter().all(|(n, _)| n != "x-injected"));
    for (name, value) in &headers {
        assert!(
            !value.contains('\r') && !value.contains('\n'),
            "{name}: {value:?}"
        );
        assert!(value.len() < 16 * 1024, "{name} is {} bytes", value.len());
    }
    gw.assert_no_traps();
}

/// Every `x-consul-*` header and `consul.*` baggage member a client sends.
fn forged(spec: RequestSpec) -> RequestSpec {
    spec.header("x-consul-service", "admin")
        .header("X-Consul-Lookup", "hit")
        .header("x-consul-meta-version", "evil")
        .header("x-consul-meta-owner", "evil")
        .header(
            "baggage",
            "consul.service=admin,ui.component=checkout-form,Consul.Service.Meta.version=evil",
        )
}

/// The `x-consul-*` headers the upstream got with a value, names in lower case. On Kong the
/// filter cannot remove a header (ngx_wasm_module hides it from the filter but nginx still
/// forwards it), so it empties forged ones; Kong's companion plugin removes them before.
fn consul_headers(record: &test_host::RequestRecord) -> Vec<(String, String)> {
    record
        .upstream_headers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .filter(|(n, v)| n.starts_with("x-consul-") && !v.is_empty())
        .collect()
}

#[test]
fn forged_headers_never_reach_the_upstream_when_consul_is_down() {
    let flavour = Flavour::Kong;
    let mut gw = gateway(flavour, 1, &closed_port_addr().to_string(), json!({}));
    for _ in 0..3 {
        let request = gw.send(forged(echo_request(flavour)));
        let record = gw.forwarded(request);
        // Forged headers reach the filter: no companion ran, and the upstream is told.
        assert_eq!(
            consul_headers(&record),
            vec![("x-consul-lookup".to_string(), "unstripped".to_string())],
            "only the truth of this request"
        );
        assert_eq!(
            record.upstream_header("baggage"),
            Some("ui.component=checkout-form")
        );
    }
    assert_eq!(gw.metric("stripped"), 3 * 6);
    gw.assert_no_traps();
}

#[test]
fn forged_values_are_replaced_by_consuls_on_enriched_requests() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    let extra = json!({"meta_keys": ["version", "region", "owner"]});
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), extra);
    let request = gw.send(forged(echo_request(flavour)));
    let record = gw.forwarded(request);
    assert_eq!(record.upstream_header("x-consul-service"), Some("echo"));
    assert_eq!(
        record.upstream_header("x-consul-lookup"),
        Some("unstripped")
    );
    assert_eq!(
        record.upstream_header("x-consul-meta-version"),
        Some("1.2.0,1.3.0")
    );
    assert!(
        record
            .upstream_header("x-consul-meta-owner")
            .is_none_or(str::is_empty),
        "a key Consul lacks is not left to the client"
    );
    let baggage = record.upstream_header("baggage").unwrap().to_string();
    let members = baggage_members(&baggage);
    assert!(members.contains(&"consul.service=echo"), "{baggage}");
    assert!(members.contains(&"consul.service.meta.version=1.2.0%2C1.3.0"));
    assert!(members.contains(&"ui.component=checkout-form"));
    assert!(!baggage.to_ascii_lowercase().contains("evil"), "{baggage}");
    assert!(!baggage.contains("admin"), "{baggage}");
    gw.assert_no_traps();
}

/// Envoy flavour: the unrouted half; real Envoy answers a path envoy.yaml leaves unrouted 404.
#[test]
fn without_a_usable_answer_the_upstream_learns_only_why() {
    for flavour in Flavour::ALL {
        let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
        let mut gw = gateway(flavour, 1, &consul.addr().to_string(), json!({}));
        let request = gw.send(forged(echo_request(flavour)));
        let record = gw.forwarded(request);
        // On Kong forged headers reaching the filter mean no companion ran on the route.
        let (unknown, none) = match flavour {
            Flavour::Kong => ("unstripped", "unstripped"),
            Flavour::Envoy => ("unknown", "none"),
        };
        assert_eq!(
            consul_headers(&record),
            vec![("x-consul-lookup".to_string(), unknown.to_string())],
            "{flavour:?}: an unknown service"
        );
        let unrouted =
            RequestSpec::get("example.org", "/other").header("x-consul-service", "admin");
        let request = gw.send(unrouted);
        let record = gw.forwarded(request);
        assert_eq!(
            consul_headers(&record),
            vec![("x-consul-lookup".to_string(), none.to_string())],
            "{flavour:?}: no Consul service for this request"
        );
        gw.assert_no_traps();
    }
}

#[test]
fn several_baggage_headers_are_one_list() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), json!({}));
    let spec = echo_request(flavour)
        .header("baggage", "first=1,ui.component=checkout-form")
        .header("baggage", "second=2;p");
    let request = gw.send(spec);
    let record = gw.forwarded(request);
    let lines: Vec<_> = record
        .upstream_headers
        .clone()
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n == "baggage")
        .collect();
    // ngx_wasm_module replaces the first line and hides the second from the filter,
    // but nginx still forwards it (Kong's companion plugin joins the lines before).
    assert_eq!(lines.len(), 2, "{lines:?}");
    let members = baggage_members(&lines[0].1);
    assert_eq!(
        members[..3],
        ["first=1", "ui.component=checkout-form", "second=2;p"],
        "the caller's members first, in order"
    );
    assert!(members.contains(&"consul.service=echo"));
    gw.assert_no_traps();
}

/// Envoy flavour: real Envoy's tracer rewrites traceparent upstream, hiding the filter's handling.
#[test]
fn several_traceparent_headers_pass_untouched() {
    for flavour in Flavour::ALL {
        let consul = consul_with_echo(ConsulOptions::default());
        let extra = json!({"spans": {"enabled": true, "upstream": consul.addr().to_string()}});
        let mut gw = gateway(flavour, 1, &consul.addr().to_string(), extra);
        let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let request = gw.send(echo_request(flavour).header("traceparent", other));
        let record = gw.forwarded(request);
        let sent: Vec<_> = record
            .upstream_headers
            .clone()
            .unwrap()
            .into_iter()
            .filter(|(n, _)| n == "traceparent")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            sent,
            vec![TRACEPARENT.to_string(), other.to_string()],
            "{flavour:?}"
        );
        assert_eq!(gw.metric("invalid_traceparent"), 1);
        gw.assert_no_traps();
    }
}

/// Envoy flavour: not yet shown on real Envoy (an IPv6 instance; echo-service parses baggage).
#[test]
fn consul_text_is_encoded_once_and_attributes_carry_it_decoded() {
    for flavour in Flavour::ALL {
        let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
        consul.register(
            Instance::new("echo", "echo-zh")
                .address("2001:db8:0:0:0:0:0:1")
                .port(5000)
                .meta("version", "1.0")
                .meta("region", "Zürich")
                .meta("build id\r\nx", "42"),
        );
        let extra = json!({"headers": {"response": true}});
        let mut gw = gateway(flavour, 1, &consul.addr().to_string(), extra);
        let request = gw.send(echo_request(flavour));
        let record = gw.forwarded(request);
        let baggage = record.upstream_header("baggage").unwrap().to_string();
        assert!(
            baggage_members(&baggage).contains(&"consul.service.meta.region=Z%C3%BCrich"),
            "{flavour:?}: {baggage}"
        );
        let record = gw.answered(request, "[2001:db8::1]:5000");
        assert_eq!(
            record.client_response_header("x-consul-instance-id"),
            Some("echo-zh"),
            "{flavour:?}: IPv6 compared as an address"
        );
        if flavour == Flavour::Kong {
            let raw = &record.nginx_variables["consul_enricher"];
            let attributes: Value = serde_json::from_slice(raw).unwrap();
            assert_eq!(attributes["consul.service.meta.region"], "Zürich");
            assert_eq!(
                attributes["consul.service.meta.build_id__x"], "42",
                "{attributes}"
            );
            assert_eq!(attributes["network.peer.address"], "2001:db8::1");
            assert_eq!(attributes["server.port"], 5000);
        }
        gw.assert_no_traps();
    }
}

/// Kong's `echo_request` with the client's authority set to `authority`.
fn with_client_authority(authority: &str) -> RequestSpec {
    let mut spec = echo_request(Flavour::Kong);
    spec.headers.retain(|(n, _)| n != ":authority");
    spec.headers.push((":authority".into(), authority.into()));
    spec
}

#[test]
fn the_client_cannot_choose_the_service() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    consul.register(
        Instance::new("billing", "billing-1")
            .address("127.0.0.9")
            .port(9009),
    );
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), json!({}));
    let request = gw.send(with_client_authority("billing.service.consul"));
    let record = gw.forwarded(request);
    assert_eq!(record.upstream_header("x-consul-service"), Some("echo"));
    let unrouted = RequestSpec::get("billing.service.consul", "/billing");
    let request = gw.send(unrouted);
    let record = gw.forwarded(request);
    assert_eq!(record.upstream_header("x-consul-lookup"), Some("none"));
    assert_eq!(consul.requests("/v1/catalog/service/billing"), 0);
    gw.assert_no_traps();
}

#[test]
fn the_clients_authority_names_the_service_only_when_configured() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    let extra = json!({"service": {"from_authority": true}});
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), extra);
    let request = gw.send(RequestSpec::get("echo.service.consul", "/any"));
    let record = gw.forwarded(request);
    assert_eq!(record.upstream_header("x-consul-service"), Some("echo"));
    gw.assert_no_traps();
}

#[test]
fn kong_without_its_lua_reads_the_upstream_host_variable() {
    let consul = consul_with_echo(ConsulOptions::default());
    let mut gw = gateway(Flavour::Kong, 1, &consul.addr().to_string(), json!({}));
    let spec = RequestSpec::get("client.example", "/echo")
        .property("ngx.upstream_host", "echo.service.consul");
    let request = gw.send(spec);
    let record = gw.forwarded(request);
    assert_eq!(record.upstream_header("x-consul-service"), Some("echo"));
    gw.assert_no_traps();
    // With Kong's Lua present (it is for a worker's whole life, or never), the variable
    // (the client's Host under preserve_host) is not a source.
    let mut gw = gateway(Flavour::Kong, 1, &consul.addr().to_string(), json!({}));
    let spec = RequestSpec::get("client.example", "/echo")
        .property("kong.version", "3.9.1")
        .property("ngx.upstream_host", "echo.service.consul");
    let request = gw.send(spec);
    let record = gw.forwarded(request);
    assert_eq!(record.upstream_header("x-consul-lookup"), Some("none"));
    gw.assert_no_traps();
}

fn routed_to(flavour: Flavour, host: &str) -> RequestSpec {
    let spec = RequestSpec::get("gateway.example", "/echo").header("traceparent", TRACEPARENT);
    match flavour {
        Flavour::Kong => spec
            .property("kong.router.service", &format!(r#"{{"host":"{host}"}}"#))
            .property("kong.version", "3.9.1"),
        Flavour::Envoy => spec.property("xds.cluster_name", host),
    }
}

/// Envoy flavour: not yet shown on real Envoy (no cluster names a datacenter; an authority could).
#[test]
fn the_cache_keeps_datacenters_apart() {
    for flavour in Flavour::ALL {
        let options = ConsulOptions {
            other_datacenters: vec!["dc2".into()],
            ..ConsulOptions::default()
        };
        let consul = consul_with_echo(options);
        consul.register(
            Instance::new("echo", "echo-dc2")
                .datacenter("dc2")
                .address("127.0.0.3")
                .port(9003)
                .meta("version", "2.0.0"),
        );
        let mut gw = gateway(flavour, 1, &consul.addr().to_string(), json!({}));
        let dc2 = gw.send(routed_to(flavour, "echo.service.dc2.consul"));
        let record = gw.forwarded(dc2);
        assert_eq!(
            record.upstream_header("x-consul-meta-version"),
            Some("2.0.0")
        );
        for host in ["echo.service.consul", "echo.service.dc1.consul"] {
            let request = gw.send(routed_to(flavour, host));
            let record = gw.forwarded(request);
            assert_eq!(
                record.upstream_header("x-consul-meta-version"),
                Some("1.2.0,1.3.0"),
                "{flavour:?} {host}"
            );
        }
        assert_eq!(
            consul.requests(CATALOG),
            3,
            "{flavour:?}: one lookup per datacenter"
        );
        gw.assert_no_traps();
    }
}

#[test]
fn invented_names_cannot_fill_shared_data() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    let extra = json!({
        "service": {"from_authority": true, "from_host": false, "from_cluster": false},
        "cache": {"max_services": 3, "negative_ttl_s": 1},
    });
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), extra);
    for i in 0..6 {
        let request = gw.send(RequestSpec::get(
            &format!("made-up-{i}.service.consul"),
            "/",
        ));
        gw.forwarded(request);
    }
    assert_eq!(consul.request_log().len(), 3, "the cap held");
    assert_eq!(gw.metric("services_capped"), 3);
    let entries = |gw: &Gateway| {
        gw.host
            .shared_data_keys()
            .into_iter()
            .filter(|k| k.contains("/svc:"))
            .filter(|k| gw.host.shared_data(k).is_some_and(|e| !e.value.is_empty()))
            .count()
    };
    assert_eq!(entries(&gw), 3);
    std::thread::sleep(Duration::from_millis(1_100));
    gw.host.tick_all().unwrap();
    assert_eq!(entries(&gw), 0, "expired unknowns are removed");
    let request = gw.send(RequestSpec::get("made-up-9.service.consul", "/"));
    gw.forwarded(request);
    assert_eq!(consul.request_log().len(), 4, "places were given back");
    gw.assert_no_traps();
}

#[test]
fn stripping_can_be_turned_off_behind_a_trusted_gateway() {
    let flavour = Flavour::Kong;
    let extra = json!({"strip_incoming": false});
    let mut gw = gateway(flavour, 1, &closed_port_addr().to_string(), extra);
    let request = gw.send(forged(echo_request(flavour)));
    let record = gw.forwarded(request);
    assert_eq!(
        record.upstream_header("x-consul-meta-version"),
        Some("evil")
    );
    assert!(record
        .upstream_header("baggage")
        .unwrap()
        .contains("consul.service=admin"));
    gw.assert_no_traps();
}

fn watch_config(extra: Value) -> Value {
    let mut config = json!({
        "consul": {"watch": true, "wait_s": 5, "min_watch_interval_ms": 100, "timeout_ms": 1000},
        "cache": {"ttl_s": 3600},
    });
    merge(&mut config, &extra);
    config
}

/// Sends requests on `worker` (advancing the host in between) until one's upstream sees
/// `version`.
fn until_version(gw: &mut Gateway, worker: usize, version: &str, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        let request = gw.send_on(worker, echo_request(gw.flavour));
        let record = gw.forwarded(request);
        if record
            .upstream_header("x-consul-meta-version")
            .is_some_and(|v| v.contains(version))
        {
            return true;
        }
        gw.host.advance(Duration::from_millis(50)).unwrap();
    }
    false
}

/// Requests on one worker only, for `period`, advancing the host in between.
fn serve_on(gw: &mut Gateway, worker: usize, period: Duration) {
    let until = std::time::Instant::now() + period;
    while std::time::Instant::now() < until {
        let request = gw.send_on(worker, echo_request(gw.flavour));
        gw.forwarded(request);
        gw.host.advance(Duration::from_millis(50)).unwrap();
    }
}

/// Envoy only: Kong has no watch. On the test host because the test picks each request's
/// worker, and real Envoy's kernel picks per connection.
#[test]
fn another_worker_takes_the_watch_over_when_its_watcher_stops_serving_the_service() {
    let flavour = Flavour::Envoy;
    let consul = consul_with_echo(ConsulOptions::default());
    // A worker stops watching a service it has not served for a TTL.
    let config = watch_config(json!({"consul": {"wait_s": 1}, "cache": {"ttl_s": 2}}));
    let mut gw = gateway(flavour, 2, &consul.addr().to_string(), config);
    serve_on(&mut gw, 0, Duration::from_millis(1500));
    // Worker 0 watches; then only worker 1 serves the service, longer than a TTL and a
    // wait, so worker 0's watch ends and worker 1 must hold the next one.
    serve_on(&mut gw, 1, Duration::from_secs(4));
    consul.register(
        Instance::new("echo", "echo-1")
            .address("127.0.0.1")
            .port(9001)
            .meta("version", "9.9.9")
            .meta("region", "eu-west"),
    );
    assert!(
        until_version(&mut gw, 1, "9.9.9", Duration::from_secs(3)),
        "{flavour:?}: the change reached worker 1's requests"
    );
    let watches = consul
        .request_log()
        .iter()
        .filter(|r| r.path == CATALOG && r.has_query("index"))
        .count();
    // About one watch per second of wait over some 6 s, never one per tick.
    assert!(watches <= 12, "{flavour:?}: {watches} watches");
    gw.assert_no_traps();
}

#[test]
fn agent_mode_asks_the_agents_cache() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    let extra = json!({"consul": {"cached": true}});
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), extra);
    let request = gw.send(echo_request(flavour));
    let record = gw.forwarded(request);
    assert_eq!(record.upstream_header("x-consul-service"), Some("echo"));
    let sent = consul.request_log();
    assert!(sent.iter().all(|r| r.has_query("cached")), "{flavour:?}");
    gw.assert_no_traps();
}

#[test]
fn the_health_endpoint_labels_only_instances_that_can_serve() {
    let flavour = Flavour::Kong;
    let consul = consul_with_echo(ConsulOptions::default());
    consul.set_check_status("echo-2", standins::CheckStatus::Critical);
    let extra = json!({"consul": {"endpoint": "health"}});
    let mut gw = gateway(flavour, 1, &consul.addr().to_string(), extra);
    let request = gw.send(echo_request(flavour));
    let record = gw.forwarded(request);
    assert_eq!(
        record.upstream_header("x-consul-instances"),
        Some("1"),
        "{flavour:?}"
    );
    assert_eq!(
        record.upstream_header("x-consul-meta-version"),
        Some("1.2.0")
    );
    let sent = consul.request_log();
    assert!(sent
        .iter()
        .all(|r| r.path == "/v1/health/service/echo" && r.has_query("passing")));
    gw.assert_no_traps();
}

/// Kong without its companion plugin on the route: forged headers and a second `baggage`
/// line reach the filter, which says so once per worker with the route and counts each
/// request; the upstream gets the forged headers emptied and the second line as sent.
#[test]
fn kong_says_once_per_worker_that_the_companion_did_not_run() {
    let consul = consul_with_echo(ConsulOptions::default());
    let mut gw = gateway(Flavour::Kong, 2, &consul.addr().to_string(), json!({}));
    for worker in [0, 1, 0, 1] {
        let spec = forged(echo_request(Flavour::Kong)).header("baggage", "second=2");
        let request = gw.send_on(worker, spec);
        let record = gw.forwarded(request);
        assert_eq!(record.upstream_header("x-consul-meta-owner"), Some(""));
        assert_eq!(record.upstream_header("x-consul-service"), Some("echo"));
        assert_eq!(
            record.upstream_header("x-consul-lookup"),
            Some("unstripped")
        );
    }
    let said = gw
        .host
        .logs_containing("companion plugin consul-enricher-span did not run");
    assert_eq!(said.len(), 2, "once per worker: {said:?}");
    assert!(said.iter().all(|l| l.level == LogLevel::Warn));
    assert!(said[0]
        .message
        .contains("route 5a1f0c3e-0000-4000-8000-000000000002"));
    assert_eq!(gw.metric("companion_missing"), 4);
    let clean = gw.send(echo_request(Flavour::Kong));
    let record = gw.forwarded(clean);
    assert_eq!(record.upstream_header("x-consul-lookup"), Some("hit"));
    assert_eq!(
        gw.metric("companion_missing"),
        4,
        "a clean request is not counted"
    );
    gw.assert_no_traps();
}
