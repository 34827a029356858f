//! The Consul stand-in seen from a plain HTTP client, against Consul's documented behaviour.

mod common;

use std::time::{Duration, Instant};

use common::{get, send, try_get};
use serde_json::Value;
use standins::{closed_port_addr, ConsulOptions, ConsulStandin, Fault, Instance};

fn start() -> ConsulStandin {
    ConsulStandin::start(ConsulOptions::default()).expect("start consul stand-in")
}

fn web(id: &str, port: u16, version: &str) -> Instance {
    Instance::new("web", id)
        .node(format!("node-{id}"), "10.0.0.1")
        .address("127.0.0.1")
        .port(port)
        .tag("http")
        .tag(format!("v{version}"))
        .meta("version", version)
        .meta("region", "eu-west")
}

fn index_of(reply: &common::Reply) -> u64 {
    reply
        .header("x-consul-index")
        .expect("X-Consul-Index")
        .parse()
        .expect("numeric X-Consul-Index")
}

fn service_ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = body
        .as_array()
        .expect("array")
        .iter()
        .map(|entry| entry["ServiceID"].as_str().expect("ServiceID").to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn catalog_answer_has_consuls_documented_shape() {
    let consul = start();
    let registered_at = consul.register(web("web-1", 8081, "1.4.0").node_meta("rack", "r1"));

    let reply = get(&format!("{}/v1/catalog/service/web", consul.url()), &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(index_of(&reply), registered_at);
    assert_eq!(reply.header("x-consul-knownleader"), Some("true"));
    assert_eq!(reply.header("x-consul-lastcontact"), Some("0"));
    assert_eq!(
        reply.header("x-consul-effective-consistency"),
        Some("leader")
    );

    let body = reply.json();
    let entries = body.as_array().expect("array");
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    for field in [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "ServiceKind",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "ServiceAddress",
        "ServiceWeights",
        "ServiceMeta",
        "ServicePort",
        "ServiceEnableTagOverride",
        "ServiceProxy",
        "ServiceConnect",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(entry.get(field).is_some(), "missing {field} in {entry}");
    }
    assert_eq!(entry["Node"], "node-web-1");
    assert_eq!(entry["Address"], "10.0.0.1");
    assert_eq!(entry["Datacenter"], "dc1");
    assert_eq!(entry["TaggedAddresses"]["lan"], "10.0.0.1");
    assert_eq!(entry["NodeMeta"]["rack"], "r1");
    assert_eq!(entry["ServiceName"], "web");
    assert_eq!(entry["ServiceID"], "web-1");
    assert_eq!(entry["ServiceAddress"], "127.0.0.1");
    assert_eq!(entry["ServicePort"], 8081);
    assert_eq!(entry["ServiceTags"], serde_json::json!(["http", "v1.4.0"]));
    assert_eq!(entry["ServiceMeta"]["version"], "1.4.0");
    assert_eq!(entry["ServiceMeta"]["region"], "eu-west");
    assert_eq!(entry["ServiceWeights"]["Passing"], 1);
    assert_eq!(entry["CreateIndex"], registered_at);
    assert_eq!(entry["ModifyIndex"], registered_at);
    let node_id = entry["ID"].as_str().expect("node ID");
    assert_eq!(node_id.len(), 36, "UUID-shaped node ID: {node_id}");
}

#[test]
fn unknown_service_is_an_empty_array_with_an_index() {
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    let reply = get(&format!("{}/v1/catalog/service/nope", consul.url()), &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), serde_json::json!([]));
    assert_eq!(index_of(&reply), consul.index());
}

#[test]
fn empty_collections_can_be_null_as_older_agents_sent_them() {
    let consul = ConsulStandin::start(ConsulOptions {
        empty_collections_as_null: true,
        ..ConsulOptions::default()
    })
    .expect("start");
    consul.register(Instance::new("bare", "bare-1").port(80));
    let body = get(&format!("{}/v1/catalog/service/bare", consul.url()), &[]).json();
    assert_eq!(body[0]["ServiceMeta"], Value::Null);
    assert_eq!(body[0]["ServiceTags"], Value::Null);
}

#[test]
fn consistency_modes_are_reported_and_conflicts_refused() {
    let consul = start();
    let base = format!("{}/v1/catalog/service/web", consul.url());
    let stale = get(&format!("{base}?stale"), &[]);
    assert_eq!(
        stale.header("x-consul-effective-consistency"),
        Some("stale")
    );
    let consistent = get(&format!("{base}?consistent"), &[]);
    assert_eq!(
        consistent.header("x-consul-effective-consistency"),
        Some("consistent")
    );
    let both = get(&format!("{base}?stale&consistent"), &[]);
    assert_eq!(both.status, 400);
    assert_eq!(
        both.text(),
        "Cannot specify ?stale with ?consistent, conflicting semantics."
    );
}

#[test]
fn datacenters_route_or_fail_like_consul() {
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    consul.register(web("web-2", 8082, "2.0.0").datacenter("dc2"));
    let base = format!("{}/v1/catalog/service/web", consul.url());

    assert_eq!(service_ids(&get(&base, &[]).json()), ["web-1"]);
    assert_eq!(
        service_ids(&get(&format!("{base}?dc=dc1"), &[]).json()),
        ["web-1"]
    );
    let dc2 = get(&format!("{base}?dc=dc2"), &[]).json();
    assert_eq!(service_ids(&dc2), ["web-2"]);
    assert_eq!(dc2[0]["Datacenter"], "dc2");

    let unknown = get(&format!("{base}?dc=mars"), &[]);
    assert_eq!(unknown.status, 500);
    assert_eq!(unknown.text(), "No path to datacenter");
}

#[test]
fn filter_expressions_select_instances() {
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    consul.register(web("web-2", 8082, "2.0.0").tag("canary"));
    consul.register(web("web-3", 8083, "2.0.0").meta("region", "us-east"));
    let base = format!("{}/v1/catalog/service/web", consul.url());
    let filtered = |expression: &str| {
        let url = format!(
            "{base}?filter={}",
            percent_encoding::utf8_percent_encode(expression, percent_encoding::NON_ALPHANUMERIC)
        );
        let reply = get(&url, &[]);
        assert_eq!(reply.status, 200, "{expression}: {}", reply.text());
        service_ids(&reply.json())
    };

    assert_eq!(
        filtered(r#"ServiceMeta.version == "2.0.0""#),
        ["web-2", "web-3"]
    );
    assert_eq!(filtered(r#"ServiceMeta["region"] != "eu-west""#), ["web-3"]);
    assert_eq!(filtered(r#""canary" in ServiceTags"#), ["web-2"]);
    assert_eq!(
        filtered(r#""canary" not in ServiceTags"#),
        ["web-1", "web-3"]
    );
    assert_eq!(filtered(r#"ServiceTags contains "canary""#), ["web-2"]);
    assert_eq!(
        filtered(r#"ServiceMeta.version == "2.0.0" and not ("canary" in ServiceTags)"#),
        ["web-3"]
    );
    assert_eq!(
        filtered(r#"ServicePort == 8081 or ServiceMeta.region == "us-east""#),
        ["web-1", "web-3"]
    );
    assert_eq!(
        filtered("ServiceMeta.missing is empty"),
        ["web-1", "web-2", "web-3"]
    );
    assert_eq!(filtered("ServiceID == `web-1`"), ["web-1"]);
    assert_eq!(
        filtered(r#"ServiceMeta.version == "9""#),
        Vec::<String>::new()
    );

    for (expression, message) in [
        ("Foo == \"x\"", "Selector \"Foo\" is not valid"),
        ("ServiceMeta.version =", "1:21 (20): no match found"),
        ("ServiceMeta.version == \"1", "unterminated string"),
        ("(ServiceID == \"a\"", "expected: \")\""),
    ] {
        let url = format!(
            "{base}?filter={}",
            percent_encoding::utf8_percent_encode(expression, percent_encoding::NON_ALPHANUMERIC)
        );
        let reply = get(&url, &[]);
        assert_eq!(reply.status, 500, "{expression}");
        let text = reply.text();
        assert!(
            text.starts_with("Failed to create boolean expression evaluator: ")
                && text.contains(message),
            "{expression}: {text}"
        );
    }
}

#[test]
fn tag_parameters_must_all_match() {
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    consul.register(web("web-2", 8082, "2.0.0").tag("canary"));
    let base = format!("{}/v1/catalog/service/web", consul.url());
    assert_eq!(
        service_ids(&get(&format!("{base}?tag=http"), &[]).json()),
        ["web-1", "web-2"]
    );
    assert_eq!(
        service_ids(&get(&format!("{base}?tag=http&tag=canary"), &[]).json()),
        ["web-2"]
    );
}

#[test]
fn blocking_query_returns_when_the_service_changes() {
    let consul = start();
    let first = consul.register(web("web-1", 8081, "1.0.0"));
    let url = format!(
        "{}/v1/catalog/service/web?index={first}&wait=30s",
        consul.url()
    );
    let waiter = std::thread::spawn(move || get(&url, &[]));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !waiter.is_finished(),
        "the query must block while nothing changes"
    );

    // Another service's change does not wake a watch on "web".
    consul.register(Instance::new("db", "db-1").port(5432));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !waiter.is_finished(),
        "a change to another service must not answer"
    );

    let second = consul.register(web("web-2", 8082, "2.0.0"));
    let reply = waiter.join().expect("waiter thread");
    assert_eq!(reply.status, 200);
    assert_eq!(index_of(&reply), second);
    assert_eq!(service_ids(&reply.json()), ["web-1", "web-2"]);
}

#[test]
fn blocking_query_times_out_with_the_same_index() {
    let consul = start();
    let index = consul.register(web("web-1", 8081, "1.0.0"));
    let started = Instant::now();
    let reply = get(
        &format!(
            "{}/v1/catalog/service/web?index={index}&wait=300ms",
            consul.url()
        ),
        &[],
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it must have waited"
    );
    assert_eq!(reply.status, 200);
    assert_eq!(index_of(&reply), index);
    assert_eq!(service_ids(&reply.json()), ["web-1"]);
}

#[test]
fn blocking_query_wakes_on_deregistration_and_index_reset() {
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    let index = consul.register(web("web-2", 8082, "1.0.0"));
    let url = format!(
        "{}/v1/catalog/service/web?index={index}&wait=30s",
        consul.url()
    );
    let waiter = std::thread::spawn(move || get(&url, &[]));
    std::thread::sleep(Duration::from_millis(100));
    assert!(consul.deregister("web-2"));
    let reply = waiter.join().expect("waiter");
    assert!(index_of(&reply) > index);
    assert_eq!(service_ids(&reply.json()), ["web-1"]);

    // A restored snapshot moves the index backwards. As in Consul, the query keeps blocking
    // (the index is not past the client's) and its answer at the timeout carries the lower
    // index, which is how a client notices it must reset.
    let current = index_of(&reply);
    let url = format!(
        "{}/v1/catalog/service/web?index={current}&wait=500ms",
        consul.url()
    );
    let waiter = std::thread::spawn(move || get(&url, &[]));
    std::thread::sleep(Duration::from_millis(100));
    consul.set_index(3);
    let reply = waiter.join().expect("waiter");
    assert_eq!(index_of(&reply), 3);
    assert_eq!(reply.json()[0]["ModifyIndex"], 3);
}

#[test]
fn bad_blocking_parameters_are_refused() {
    let consul = start();
    let base = format!("{}/v1/catalog/service/web", consul.url());
    let bad_wait = get(&format!("{base}?index=1&wait=soon"), &[]);
    assert_eq!(
        (bad_wait.status, bad_wait.text().as_str()),
        (400, "Invalid wait time")
    );
    let bad_index = get(&format!("{base}?index=-4"), &[]);
    assert_eq!(
        (bad_index.status, bad_index.text().as_str()),
        (400, "Invalid index")
    );
}

#[test]
fn acl_tokens_are_checked_like_consul() {
    let consul = ConsulStandin::start(ConsulOptions {
        acl_token: Some("s3cr3t".to_owned()),
        ..ConsulOptions::default()
    })
    .expect("start");
    consul.register(web("web-1", 8081, "1.0.0"));
    let base = format!("{}/v1/catalog/service/web", consul.url());

    let with_header = get(&base, &[("X-Consul-Token", "s3cr3t")]);
    assert_eq!(service_ids(&with_header.json()), ["web-1"]);
    let with_bearer = get(&base, &[("Authorization", "Bearer s3cr3t")]);
    assert_eq!(service_ids(&with_bearer.json()), ["web-1"]);
    let with_query = get(&format!("{base}?token=s3cr3t"), &[]);
    assert_eq!(service_ids(&with_query.json()), ["web-1"]);

    let wrong = get(&base, &[("X-Consul-Token", "guess")]);
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.text(), "ACL not found");

    let anonymous = get(&base, &[]);
    assert_eq!(anonymous.status, 200);
    assert_eq!(anonymous.json(), serde_json::json!([]));
    assert_eq!(
        anonymous.header("x-consul-results-filtered-by-acls"),
        Some("true")
    );

    let body = br#"{"Name": "api", "Port": 9000}"#;
    let register_url = format!("{}/v1/agent/service/register", consul.url());
    let denied = send("PUT", &register_url, &[], body);
    assert_eq!(denied.status, 403);
    assert!(
        denied.text().starts_with("Permission denied: "),
        "{}",
        denied.text()
    );
    assert_eq!(
        send("PUT", &register_url, &[("X-Consul-Token", "nope")], body).status,
        403
    );
    assert_eq!(
        send("PUT", &register_url, &[("X-Consul-Token", "s3cr3t")], body).status,
        200
    );
    assert_eq!(consul.instances("api").len(), 1);
}

#[test]
fn agent_registration_and_deregistration_over_http() {
    let consul = start();
    let before = consul.index();
    let register_url = format!("{}/v1/agent/service/register", consul.url());
    let body = br#"{
        "name": "echo", "ID": "echo-1", "Address": "127.0.0.1", "Port": 18080,
        "Tags": ["rust"], "Meta": {"version": "0.3.1", "region": "local"},
        "Check": {"HTTP": "http://127.0.0.1:18080/health", "Interval": "5s",
                  "DeregisterCriticalServiceAfter": "1m"}
    }"#;
    let reply = send("PUT", &register_url, &[], body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(consul.index() > before);

    let instances = consul.instances("echo");
    assert_eq!(instances.len(), 1);
    let echo = &instances[0];
    assert_eq!((echo.id.as_str(), echo.port), ("echo-1", 18080));
    assert_eq!(echo.node, "consul-standin");
    assert_eq!(echo.meta.get("version").map(String::as_str), Some("0.3.1"));
    let check = echo.check.as_ref().expect("check stored");
    assert_eq!(check.http, "http://127.0.0.1:18080/health");
    assert_eq!(check.interval, Duration::from_secs(5));
    assert_eq!(
        check.deregister_critical_service_after,
        Some(Duration::from_secs(60))
    );

    let listed = get(&format!("{}/v1/catalog/service/echo", consul.url()), &[]).json();
    assert_eq!(listed[0]["ServiceMeta"]["region"], "local");
    assert_eq!(listed[0]["Node"], "consul-standin");

    let deregister_url = format!("{}/v1/agent/service/deregister/echo-1", consul.url());
    assert_eq!(send("PUT", &deregister_url, &[], b"").status, 200);
    assert!(consul.instances("echo").is_empty());
    let again = send("PUT", &deregister_url, &[], b"");
    assert_eq!(again.status, 404);
    assert!(
        again.text().starts_with("Unknown service ID \"echo-1\""),
        "{}",
        again.text()
    );
}

#[test]
fn bad_registrations_are_refused() {
    let consul = start();
    let url = format!("{}/v1/agent/service/register", consul.url());
    let cases: [(&[u8], &str); 5] = [
        (b"{not json", "Request decode failed"),
        (br#"{"Port": 80}"#, "Missing service name"),
        (br#"{"Name": "x", "Port": 70000}"#, "invalid Port"),
        (
            br#"{"Name": "x", "Meta": {"bad key": "v"}}"#,
            "Invalid Service Meta",
        ),
        (
            br#"{"Name": "x", "Check": {"HTTP": "http://h/"}}"#,
            "Interval must be > 0",
        ),
    ];
    for (body, message) in cases {
        let reply = send("PUT", &url, &[], body);
        assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(body));
        assert!(reply.text().contains(message), "{}", reply.text());
    }
    assert_eq!(consul.index(), 10, "nothing was registered");
    let wrong_method = get(&url, &[]);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("PUT"));
    assert_eq!(get(&format!("{}/v1/kv/x", consul.url()), &[]).status, 404);
}

#[test]
fn requests_are_counted_and_logged() {
    let consul = ConsulStandin::start(ConsulOptions {
        acl_token: Some("t0k".to_owned()),
        ..ConsulOptions::default()
    })
    .expect("start");
    let base = format!("{}/v1/catalog/service/web", consul.url());
    get(
        &format!("{base}?dc=dc1&stale&filter=ServiceMeta.v%20%3D%3D%20%221%22"),
        &[("X-Consul-Token", "t0k")],
    );
    get(&base, &[("X-Consul-Token", "t0k")]);
    send(
        "PUT",
        &format!("{}/v1/agent/service/register", consul.url()),
        &[],
        b"{}",
    );

    assert_eq!(consul.requests("/v1/catalog/service/"), 2);
    assert_eq!(consul.requests("/v1/catalog/service/web"), 2);
    assert_eq!(consul.requests("/v1/agent/"), 1);
    assert_eq!(consul.requests("/v1/health/"), 0);

    let log = consul.request_log();
    assert_eq!(log.len(), 3);
    let first = &log[0];
    assert_eq!(first.method, "GET");
    assert_eq!(first.path, "/v1/catalog/service/web");
    assert_eq!(first.header("X-Consul-Token"), Some("t0k"));
    assert_eq!(first.query_values("dc"), ["dc1"]);
    assert!(first.has_query("stale"));
    assert_eq!(first.query_values("filter"), [r#"ServiceMeta.v == "1""#]);
    assert!(!log[1].has_query("stale"));
    assert_eq!(log[2].method, "PUT");
}

#[test]
fn delay_fault_postpones_the_answer() {
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    consul.set_fault(Fault::Delay(Duration::from_millis(400)));
    let started = Instant::now();
    let reply = get(&format!("{}/v1/catalog/service/web", consul.url()), &[]);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(service_ids(&reply.json()), ["web-1"]);
}

#[test]
fn status_faults_answer_with_that_status() {
    let consul = start();
    let url = format!("{}/v1/catalog/service/web", consul.url());
    consul.set_fault(Fault::Status(429, "rate limit exceeded".to_owned()));
    let limited = get(&url, &[]);
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.text(), "rate limit exceeded");

    consul.set_fault(Fault::Status(503, "No cluster leader".to_owned()));
    let unavailable = get(&url, &[]);
    assert_eq!(
        (unavailable.status, unavailable.text().as_str()),
        (503, "No cluster leader")
    );
    assert_eq!(unavailable.header("retry-after"), None);

    consul.set_fault(Fault::None);
    assert_eq!(get(&url, &[]).status, 200);
}

#[test]
fn fault_for_next_requests_then_recovers() {
    let consul = start();
    let url = format!("{}/v1/catalog/service/web", consul.url());
    consul.set_fault_for_next(2, Fault::Status(500, "boom".to_owned()));
    let statuses: Vec<u16> = (0..4).map(|_| get(&url, &[]).status).collect();
    assert_eq!(statuses, [500, 500, 200, 200]);
}

#[test]
fn invalid_json_fault_is_not_json() {
    let consul = start();
    consul.set_fault(Fault::InvalidJson);
    let reply = get(&format!("{}/v1/catalog/service/web", consul.url()), &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.header("x-consul-index").is_some());
    assert!(serde_json::from_slice::<Value>(&reply.body).is_err());
}

#[test]
fn oversized_fault_is_valid_json_of_the_requested_size() {
    let consul = start();
    let size = 2 * 1024 * 1024 + 17;
    consul.set_fault(Fault::Oversized(size));
    let reply = get(&format!("{}/v1/catalog/service/web", consul.url()), &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), size);
    assert_eq!(
        reply.header("content-length"),
        Some(size.to_string().as_str())
    );
    let body = reply.json();
    assert_eq!(body[0]["ServiceName"], "web");
    assert!(
        body[0]["ServiceMeta"]["padding"]
            .as_str()
            .expect("padding")
            .len()
            > 2_000_000
    );
}

#[test]
fn reset_fault_closes_the_connection_without_an_answer() {
    let consul = start();
    consul.set_fault(Fault::Reset);
    let url = format!("{}/v1/catalog/service/web", consul.url());
    assert!(try_get(&url, &[]).is_err(), "no HTTP answer may arrive");
    consul.set_fault(Fault::None);
    assert_eq!(get(&url, &[]).status, 200);
}

#[test]
fn closed_port_and_stopped_server_refuse_connections() {
    let closed = closed_port_addr();
    assert!(try_get(&format!("http://{closed}/v1/catalog/service/web"), &[]).is_err());

    let mut consul = start();
    let url = format!("{}/v1/catalog/service/web", consul.url());
    assert_eq!(get(&url, &[]).status, 200);
    consul.stop();
    assert!(try_get(&url, &[]).is_err());
}
