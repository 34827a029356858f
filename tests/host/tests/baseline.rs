//! The host proven on the baseline filter, under both flavours: load, configure, request
//! and response headers, metrics, logs, ticks, several workers sharing data with CAS, and
//! dispatch round trips and failures over real loopback sockets.

use std::collections::HashMap;
use std::time::Duration;

use standins::{closed_port_addr, ConsulOptions, ConsulStandin, Fault, Instance};
use test_host::{artifacts, Flavour, Host, HostError, HostOptions, Phase, RequestSpec};

const WAIT: Duration = Duration::from_secs(10);

fn options(flavour: Flavour, config: &str) -> HostOptions {
    let wasm = artifacts::baseline_wasm().expect("baseline filter builds");
    let mut options = HostOptions::new(flavour, wasm, config);
    options.shm_zones = vec!["*".to_string(), "baseline".to_string()];
    options
}

/// Config making the baseline dispatch to `addr`: Kong names `host:port`, Envoy a cluster.
fn dispatch_options(flavour: Flavour, addr: &str, extra: &str) -> HostOptions {
    match flavour {
        Flavour::Kong => options(flavour, &format!("dispatch={addr};{extra}")),
        Flavour::Envoy => {
            let mut options = options(flavour, &format!("dispatch=backend;{extra}"));
            options.clusters = HashMap::from([("backend".to_string(), addr.to_string())]);
            options
        }
    }
}

fn traced() -> RequestSpec {
    RequestSpec::get("echo.service.consul", "/echo").header(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
}

#[test]
fn request_headers_are_rewritten_and_counted() {
    for flavour in Flavour::ALL {
        let mut host = Host::new(options(flavour, "")).unwrap();
        let with = host.request(0, traced()).unwrap();
        let without = host.request(0, RequestSpec::get("a", "/")).unwrap();
        let with = host.record(with).unwrap();
        assert_eq!(with.phase, Phase::Forwarded, "{flavour:?}");
        assert_eq!(
            with.upstream_header("x-baseline-traceparent-seen"),
            Some("1")
        );
        let without = host.record(without).unwrap();
        assert_eq!(
            without.upstream_header("x-baseline-traceparent-seen"),
            Some("0")
        );
        assert_eq!(
            host.metric("baseline_requests_total"),
            Some(2),
            "{flavour:?}"
        );
        assert!(!host.logs_containing("baseline: configured").is_empty());
        assert!(host.traps().is_empty());
    }
}

#[test]
fn response_sees_upstream_address_only_once_chosen() {
    for flavour in Flavour::ALL {
        let mut host = Host::new(options(flavour, "")).unwrap();
        let request = host.request(0, traced()).unwrap();
        host.respond(
            request,
            "10.1.2.3:8080",
            vec![(":status".into(), "200".into())],
        )
        .unwrap();
        let record = host.record(request).unwrap();
        assert_eq!(record.phase, Phase::Completed);
        // ngx_wasm_module reports the address alone (the port is `upstream.port`).
        let expected = match flavour {
            Flavour::Kong => "10.1.2.3",
            Flavour::Envoy => "10.1.2.3:8080",
        };
        assert_eq!(
            record.client_response_header("x-baseline-upstream"),
            Some(expected),
            "{flavour:?}"
        );
        // A second response for a completed request is a usage error, not a silent no-op.
        let again = host.respond(request, "10.1.2.3:8080", vec![]);
        assert!(matches!(again, Err(HostError::Usage(_))), "{again:?}");
    }
}

#[test]
fn kong_peer_from_upstream_addr_is_read_without_a_critical_line() {
    let mut host = Host::new(options(Flavour::Kong, "peer=ngx.upstream_addr")).unwrap();
    let request = host.request(0, traced()).unwrap();
    host.respond(
        request,
        "10.1.2.3:8080",
        vec![(":status".into(), "200".into())],
    )
    .unwrap();
    let record = host.record(request).unwrap();
    assert_eq!(
        record.client_response_header("x-baseline-upstream"),
        Some("10.1.2.3:8080")
    );
    let misread = host.logs_containing(test_host::KONG_UPSTREAM_NAME_READ);
    assert!(misread.is_empty(), "{misread:?}");
}

#[test]
fn refused_config_is_reported_with_the_filter_logs() {
    for flavour in Flavour::ALL {
        match Host::new(options(flavour, "refuse=1")) {
            Err(HostError::ConfigRefused { worker, logs }) => {
                assert_eq!(worker, 0);
                assert!(
                    logs.iter()
                        .any(|l| l.message.contains("configuration refused")),
                    "{logs:?}"
                );
            }
            other => panic!("{flavour:?}: expected a refusal, got {:?}", other.err()),
        }
    }
}

#[test]
fn an_import_the_host_lacks_is_a_load_error_naming_it() {
    let wat = r#"(module
        (import "env" "proxy_make_coffee" (func (param i32) (result i32)))
        (memory (export "memory") 1))"#;
    let path = std::env::temp_dir().join(format!("missing-import-{}.wasm", std::process::id()));
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    for flavour in Flavour::ALL {
        match Host::new(HostOptions::new(flavour, &path, "")) {
            Err(HostError::Load(message)) => {
                assert!(message.contains("env::proxy_make_coffee"), "{message}")
            }
            other => panic!("expected a load error, got {:?}", other.err()),
        }
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn workers_share_one_store_with_compare_and_swap() {
    for flavour in Flavour::ALL {
        let mut opts = options(flavour, "");
        opts.workers = 4;
        let mut host = Host::new(opts).unwrap();
        for i in 0..40 {
            host.request(i % 4, traced()).unwrap();
        }
        let entry = host
            .shared_data("baseline/requests")
            .expect("counter written");
        let count = u64::from_le_bytes(entry.value.as_slice().try_into().unwrap());
        assert_eq!(count, 40, "{flavour:?}");
        assert_eq!(host.metric("baseline_requests_total"), Some(40));
        assert_ne!(entry.cas, 0);
    }
}

#[test]
fn kong_traps_on_a_key_outside_configured_shm_zones() {
    let mut opts = options(Flavour::Kong, "");
    opts.shm_zones = vec!["*".to_string()];
    let mut host = Host::new(opts).unwrap();
    let result = host.request(0, traced());
    match result {
        Err(HostError::Trap(message)) => {
            assert!(message.contains("shm_kv zone \"baseline\""), "{message}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_eq!(host.traps().len(), 1);

    // Envoy has no zones: the same filter works with the same options.
    let mut opts = options(Flavour::Envoy, "");
    opts.shm_zones = vec!["*".to_string()];
    let mut host = Host::new(opts).unwrap();
    host.request(0, traced()).unwrap();
    assert!(host.traps().is_empty());
}

#[test]
fn ticks_run_per_worker_with_the_period_the_root_set() {
    for flavour in Flavour::ALL {
        let mut opts = options(flavour, "tick_ms=20");
        opts.workers = 3;
        opts.auto_ticks = false;
        let mut host = Host::new(opts).unwrap();
        assert_eq!(host.tick_period(2), Some(Duration::from_millis(20)));
        host.tick_all().unwrap();
        assert_eq!(host.metric("baseline_ticks_total"), Some(3));

        let mut opts = options(flavour, "tick_ms=5");
        opts.workers = 2;
        let mut host = Host::new(opts).unwrap();
        let ticked = host
            .run_until(WAIT, |h| h.metric("baseline_ticks_total") >= Some(10))
            .unwrap();
        assert!(ticked, "{flavour:?}: ticks fire from advance()");
    }
}

#[test]
fn dispatch_round_trip_pauses_then_resumes_the_request() {
    let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
    consul.register(
        Instance::new("echo", "echo-1")
            .address("127.0.0.1")
            .port(9000),
    );
    for flavour in Flavour::ALL {
        let before = consul.requests("/v1/catalog/service/echo");
        let opts = dispatch_options(
            flavour,
            &consul.addr().to_string(),
            "path=/v1/catalog/service/echo;authority=consul",
        );
        let mut host = Host::new(opts).unwrap();
        let request = host
            .request(0, traced().header("x-baseline-dispatch", "1"))
            .unwrap();
        assert_eq!(host.record(request).unwrap().phase, Phase::Paused);
        assert_eq!(host.calls_in_flight(), 1);
        let resumed = host
            .run_until(WAIT, |h| {
                h.record(request).unwrap().phase == Phase::Forwarded
            })
            .unwrap();
        assert!(resumed, "{flavour:?}");
        let record = host.record(request).unwrap();
        assert!(record.was_paused);
        assert_eq!(
            record.upstream_header("x-baseline-call-status"),
            Some("200")
        );
        let body: usize = record
            .upstream_header("x-baseline-call-body-bytes")
            .unwrap()
            .parse()
            .unwrap();
        assert!(body > 10, "the catalog answer arrived: {body} bytes");
        assert_eq!(consul.requests("/v1/catalog/service/echo"), before + 1);
        let sent = consul.request_log().last().cloned().unwrap();
        assert_eq!(sent.header("host"), Some("consul"), "{flavour:?}");
        assert_eq!(host.dispatches().len(), 1);
        assert_eq!(host.calls_in_flight(), 0);
    }
}

/// Dispatches one call against a misbehaving upstream and returns the filter's view.
fn failed_call_status(flavour: Flavour, addr: &str) -> String {
    let mut host = Host::new(dispatch_options(flavour, addr, "")).unwrap();
    let request = host
        .request(0, traced().header("x-baseline-dispatch", "1"))
        .unwrap();
    let resumed = host
        .run_until(WAIT, |h| {
            h.record(request).unwrap().phase == Phase::Forwarded
        })
        .unwrap();
    assert!(resumed, "{flavour:?}: a failed call still comes back");
    assert!(host.traps().is_empty());
    let record = host.record(request).unwrap();
    record
        .upstream_header("x-baseline-call-status")
        .unwrap()
        .to_string()
}

#[test]
fn dispatch_failures_arrive_the_way_each_gateway_reports_them() {
    let closed = closed_port_addr().to_string();
    assert_eq!(
        failed_call_status(Flavour::Kong, &closed),
        "failed: broken connection"
    );
    assert_eq!(failed_call_status(Flavour::Envoy, &closed), "503");

    let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
    let addr = consul.addr().to_string();
    // The baseline's calls time out after 500 ms.
    consul.set_fault(Fault::Delay(Duration::from_secs(3)));
    assert_eq!(failed_call_status(Flavour::Kong, &addr), "failed: timeout");
    assert_eq!(failed_call_status(Flavour::Envoy, &addr), "504");

    consul.set_fault(Fault::Reset);
    assert_eq!(
        failed_call_status(Flavour::Kong, &addr),
        "failed: broken connection"
    );
    assert_eq!(failed_call_status(Flavour::Envoy, &addr), "503");
}

#[test]
fn dispatch_argument_rules_differ_per_gateway() {
    // Kong traps on a call without :path; Envoy refuses it with BadArgument.
    let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
    let addr = consul.addr().to_string();
    let mut kong = Host::new(dispatch_options(Flavour::Kong, &addr, "path=")).unwrap();
    match kong.request(0, traced().header("x-baseline-dispatch", "1")) {
        Err(HostError::Trap(message)) => assert!(message.contains("no :path"), "{message}"),
        other => panic!("expected a trap, got {other:?}"),
    }
    let mut envoy = Host::new(dispatch_options(Flavour::Envoy, &addr, "path=")).unwrap();
    let request = envoy
        .request(0, traced().header("x-baseline-dispatch", "1"))
        .unwrap();
    let record = envoy.record(request).unwrap();
    assert_eq!(
        record.upstream_header("x-baseline-call-status"),
        Some("refused")
    );

    // Envoy: an unknown cluster is a BadArgument, and no socket is opened.
    let mut opts = options(Flavour::Envoy, "dispatch=nowhere");
    opts.clusters = HashMap::from([("backend".to_string(), addr)]);
    let mut envoy = Host::new(opts).unwrap();
    let request = envoy
        .request(0, traced().header("x-baseline-dispatch", "1"))
        .unwrap();
    let record = envoy.record(request).unwrap();
    assert_eq!(
        record.upstream_header("x-baseline-call-status"),
        Some("refused")
    );
    assert!(envoy.dispatches().is_empty());
}

#[test]
fn a_thousand_paused_requests_across_four_workers_all_resume() {
    let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
    for flavour in Flavour::ALL {
        // Every call must get its answer, however loaded the machine: a generous timeout.
        let mut opts = dispatch_options(flavour, &consul.addr().to_string(), "timeout_ms=30000");
        opts.workers = 4;
        let mut host = Host::new(opts).unwrap();
        let requests: Vec<_> = (0..1000)
            .map(|i| {
                host.request(i % 4, traced().header("x-baseline-dispatch", "1"))
                    .unwrap()
            })
            .collect();
        assert!(requests
            .iter()
            .all(|r| host.record(*r).unwrap().phase == Phase::Paused));
        let all = host
            .run_until(Duration::from_secs(60), |h| {
                requests
                    .iter()
                    .all(|r| h.record(*r).unwrap().phase == Phase::Forwarded)
            })
            .unwrap();
        assert!(all, "{flavour:?}");
        assert!(requests.iter().all(|r| {
            let status = host
                .record(*r)
                .unwrap()
                .upstream_header("x-baseline-call-status");
            status.is_some_and(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
        }));
        for (worker, handle) in requests.iter().enumerate().take(4) {
            assert_eq!(handle.worker, worker);
        }
        assert!(host.traps().is_empty());
    }
}
