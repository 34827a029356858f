//! The Consul stand-in seen from a plain HTTP client, against Consul's documented behaviour.

mod common;

use std::time::{Duration, Instant};

use common::{get, send, try_get};
use serde_json::Value;
use standins::{closed_port_addr, CheckStatus, ConsulOptions, ConsulStandin, Fault, Instance};

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

/// Polls `condition` until it holds; a test that never sees it fails after a generous bound.
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < give_up, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
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

    // A restored snapshot moves the index backwards. As Consul's servers do on a restore,
    // the waiting query answers at once with the lower index, which is how a client notices
    // it must reset.
    let current = index_of(&reply);
    let url = format!(
        "{}/v1/catalog/service/web?index={current}&wait=5m",
        consul.url()
    );
    let waiter = std::thread::spawn(move || get(&url, &[]));
    wait_until("the query is held", || {
        consul.held_queries("/v1/catalog/service/web") == 1
    });
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
fn reset_mid_body_fault_sends_the_head_and_half_the_body_then_resets() {
    use std::io::{Read as _, Write as _};
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    consul.set_fault(Fault::ResetMidBody);
    let mut stream = std::net::TcpStream::connect(consul.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /v1/catalog/service/web HTTP/1.1\r\nhost: consul\r\n\r\n")
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let ended = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break "end of stream",
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) => {
                assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
                break "reset";
            }
        }
    };
    let text = String::from_utf8_lossy(&received).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .expect("a content-length")
        .parse()
        .unwrap();
    assert_eq!(body.len(), length / 2, "half the body, then {ended}");
    assert_eq!(ended, "reset");
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

#[test]
fn blocking_query_is_held_until_an_instance_meta_changes() {
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    let index = consul.register(web("web-2", 8082, "1.0.0"));
    let url = format!(
        "{}/v1/catalog/service/web?index={index}&wait=5m",
        consul.url()
    );
    let waiter = std::thread::spawn(move || get(&url, &[]));
    wait_until("the query is held", || {
        consul.held_queries("/v1/catalog/service/web") == 1
    });
    assert_eq!(consul.held_queries("/v1/catalog/"), 1);
    assert_eq!(consul.held_queries("/v1/health/"), 0);

    let changed_at = consul.set_meta("web-2", "version", "2.0.0").expect("web-2");
    let reply = waiter.join().expect("waiter");
    assert_eq!(index_of(&reply), changed_at);
    assert!(changed_at > index);
    let body = reply.json();
    let web_2 = body
        .as_array()
        .expect("array")
        .iter()
        .find(|entry| entry["ServiceID"] == "web-2")
        .expect("web-2 listed");
    assert_eq!(web_2["ServiceMeta"]["version"], "2.0.0");
    assert_eq!(web_2["ModifyIndex"], changed_at);
    assert_eq!(
        consul.held_queries("/v1/"),
        0,
        "an answered query is not held"
    );
    assert_eq!(consul.set_meta("nope", "version", "1"), None);
}

#[test]
fn index_zero_or_missing_answers_at_once() {
    let consul = start();
    let index = consul.register(web("web-1", 8081, "1.0.0"));
    for query in ["index=0&wait=5m", "wait=5m"] {
        let reply = get(
            &format!("{}/v1/catalog/service/web?{query}", consul.url()),
            &[],
        );
        assert_eq!(index_of(&reply), index, "{query}");
    }
}

#[test]
fn index_above_the_current_one_waits_and_answers_with_the_lower_index() {
    let consul = start();
    let index = consul.register(web("web-1", 8081, "1.0.0"));
    let ahead = index + 1000;
    let url = format!(
        "{}/v1/health/service/web?index={ahead}&wait=1s",
        consul.url()
    );
    let waiter = std::thread::spawn(move || get(&url, &[]));
    // Consul's servers block a query whose index is not below theirs, whatever the
    // distance; the answer at the end of `wait` tells the client its index is ahead.
    wait_until("the query is held", || {
        consul.held_queries("/v1/health/service/web") == 1
    });
    let reply = waiter.join().expect("waiter");
    assert_eq!(reply.status, 200);
    assert_eq!(index_of(&reply), index);
    assert_eq!(reply.json()[0]["Service"]["ID"], "web-1");
}

#[test]
fn health_answer_has_consuls_documented_shape() {
    let consul = start();
    let registered_at = consul.register(web("web-1", 8081, "1.4.0").node_meta("rack", "r1"));
    let reply = get(&format!("{}/v1/health/service/web", consul.url()), &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(index_of(&reply), registered_at);
    let body = reply.json();
    let entries = body.as_array().expect("array");
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];

    let node = &entry["Node"];
    for field in [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "Meta",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(node.get(field).is_some(), "Node.{field} missing: {node}");
    }
    assert_eq!(node["Node"], "node-web-1");
    assert_eq!(node["Address"], "10.0.0.1");
    assert_eq!(node["Datacenter"], "dc1");
    assert_eq!(node["Meta"]["rack"], "r1");
    assert_eq!(node["ID"].as_str().expect("node ID").len(), 36);

    let service = &entry["Service"];
    for field in [
        "ID",
        "Service",
        "Tags",
        "Address",
        "TaggedAddresses",
        "Meta",
        "Port",
        "Weights",
        "EnableTagOverride",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(
            service.get(field).is_some(),
            "Service.{field} missing: {service}"
        );
    }
    assert_eq!(service["ID"], "web-1");
    assert_eq!(service["Service"], "web");
    assert_eq!(service["Tags"], serde_json::json!(["http", "v1.4.0"]));
    assert_eq!(service["Address"], "127.0.0.1");
    assert_eq!(service["Port"], 8081);
    assert_eq!(service["Meta"]["version"], "1.4.0");
    assert_eq!(service["TaggedAddresses"]["lan_ipv4"]["Port"], 8081);
    assert_eq!(service["Weights"]["Passing"], 1);
    assert_eq!(service["ModifyIndex"], registered_at);

    let checks = entry["Checks"].as_array().expect("Checks");
    let check_ids: Vec<&str> = checks
        .iter()
        .map(|check| check["CheckID"].as_str().expect("CheckID"))
        .collect();
    assert_eq!(check_ids, ["serfHealth", "service:web-1"]);
    for check in checks {
        for field in [
            "Node",
            "CheckID",
            "Name",
            "Status",
            "ServiceID",
            "ServiceName",
        ] {
            assert!(check.get(field).is_some(), "Checks[].{field} missing");
        }
        assert_eq!(check["Node"], "node-web-1");
        assert_eq!(check["Status"], "passing");
    }
    assert_eq!(checks[0]["ServiceID"], "");
    assert_eq!(checks[1]["ServiceID"], "web-1");
    assert_eq!(checks[1]["ServiceName"], "web");

    let unknown = get(&format!("{}/v1/health/service/nope", consul.url()), &[]);
    assert_eq!(unknown.json(), serde_json::json!([]));
    assert_eq!(index_of(&unknown), consul.index());
}

#[test]
fn health_passing_lists_only_instances_whose_checks_all_pass() {
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    consul.register(web("web-2", 8082, "1.0.0").check_status(CheckStatus::Warning));
    consul.register(web("web-3", 8083, "1.0.0"));
    let base = format!("{}/v1/health/service/web", consul.url());
    let ids = |query: &str| {
        let reply = get(&format!("{base}{query}"), &[]);
        assert_eq!(reply.status, 200, "{query}: {}", reply.text());
        let mut ids: Vec<String> = reply
            .json()
            .as_array()
            .expect("array")
            .iter()
            .map(|entry| entry["Service"]["ID"].as_str().expect("ID").to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(""), ["web-1", "web-2", "web-3"]);
    assert_eq!(ids("?passing"), ["web-1", "web-3"]);
    assert_eq!(ids("?passing=true"), ["web-1", "web-3"]);
    assert_eq!(ids("?passing=false"), ["web-1", "web-2", "web-3"]);

    let index = index_of(&get(&format!("{base}?passing"), &[]));
    let changed_at = consul
        .set_check_status("web-3", CheckStatus::Critical)
        .expect("web-3");
    assert!(changed_at > index);
    assert_eq!(ids("?passing"), ["web-1"]);
    let all = get(&base, &[]).json();
    let web_3 = all
        .as_array()
        .expect("array")
        .iter()
        .find(|entry| entry["Service"]["ID"] == "web-3")
        .expect("web-3 listed")
        .clone();
    assert_eq!(web_3["Checks"][1]["Status"], "critical");
    assert_eq!(web_3["Checks"][1]["ModifyIndex"], changed_at);
    // The catalog lists every instance, whatever its checks say.
    assert_eq!(
        service_ids(&get(&format!("{}/v1/catalog/service/web", consul.url()), &[]).json()),
        ["web-1", "web-2", "web-3"]
    );
    assert_eq!(consul.set_check_status("nope", CheckStatus::Passing), None);
    assert_eq!(get(&format!("{base}?passing=maybe"), &[]).status, 400);
}

#[test]
fn health_blocking_query_wakes_on_a_check_status_change() {
    let consul = start();
    let index = consul.register(web("web-1", 8081, "1.0.0"));
    let url = format!(
        "{}/v1/health/service/web?passing&index={index}&wait=5m",
        consul.url()
    );
    let waiter = std::thread::spawn(move || get(&url, &[]));
    wait_until("the query is held", || {
        consul.held_queries("/v1/health/service/web") == 1
    });
    let changed_at = consul
        .set_check_status("web-1", CheckStatus::Critical)
        .expect("web-1");
    let reply = waiter.join().expect("waiter");
    assert_eq!(index_of(&reply), changed_at);
    assert_eq!(reply.json(), serde_json::json!([]));
}

#[test]
fn registration_check_status_reaches_the_health_answer() {
    let consul = start();
    let register_url = format!("{}/v1/agent/service/register", consul.url());
    let body = br#"{
        "Name": "echo", "ID": "echo-1", "Port": 18080,
        "Check": {"HTTP": "http://127.0.0.1:18080/health", "Interval": "5s",
                  "Status": "critical"}
    }"#;
    assert_eq!(send("PUT", &register_url, &[], body).status, 200);
    let base = format!("{}/v1/health/service/echo", consul.url());
    assert_eq!(
        get(&format!("{base}?passing"), &[]).json(),
        serde_json::json!([])
    );
    let check = &get(&base, &[]).json()[0]["Checks"][1];
    assert_eq!(check["Status"], "critical");
    assert_eq!(check["Type"], "http");
    assert_eq!(check["Interval"], "5s");
    let bad = br#"{"Name": "x", "Check": {"TTL": "10s", "Status": "fine"}}"#;
    let refused = send("PUT", &register_url, &[], bad);
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("Status"), "{}", refused.text());
}

#[test]
fn health_reads_take_dc_filter_stale_and_tokens_like_the_catalog() {
    let consul = ConsulStandin::start(ConsulOptions {
        acl_token: Some("s3cr3t".to_owned()),
        ..ConsulOptions::default()
    })
    .expect("start");
    consul.register(web("web-1", 8081, "1.0.0"));
    consul.register(web("web-2", 8082, "2.0.0"));
    consul.register(web("web-3", 8083, "2.0.0").datacenter("dc2"));
    let base = format!("{}/v1/health/service/web", consul.url());
    let token = [("X-Consul-Token", "s3cr3t")];
    let ids = |reply: &common::Reply| -> Vec<String> {
        reply
            .json()
            .as_array()
            .expect("array")
            .iter()
            .map(|entry| entry["Service"]["ID"].as_str().expect("ID").to_owned())
            .collect()
    };
    let filtered = |expression: &str| {
        format!(
            "{base}?filter={}",
            percent_encoding::utf8_percent_encode(expression, percent_encoding::NON_ALPHANUMERIC)
        )
    };

    assert_eq!(ids(&get(&format!("{base}?dc=dc2"), &token)), ["web-3"]);
    assert_eq!(
        get(&format!("{base}?dc=mars"), &token).text(),
        "No path to datacenter"
    );
    assert_eq!(
        ids(&get(
            &filtered(r#"Service.Meta.version == "2.0.0""#),
            &token
        )),
        ["web-2"]
    );
    assert_eq!(
        ids(&get(&filtered(r#"Node.Node == "node-web-1""#), &token)),
        ["web-1"]
    );
    assert_eq!(
        ids(&get(&filtered(r#""v1.0.0" in Service.Tags"#), &token)),
        ["web-1"]
    );
    for (expression, message) in [
        (r#"ServiceMeta.version == "2.0.0""#, "is not valid"),
        (
            r#"Checks.Status == "passing""#,
            "is not supported by this Consul stand-in",
        ),
    ] {
        let reply = get(&filtered(expression), &token);
        assert_eq!(reply.status, 500, "{expression}");
        assert!(reply.text().contains(message), "{}", reply.text());
    }
    let stale = get(&format!("{base}?stale"), &token);
    assert_eq!(
        stale.header("x-consul-effective-consistency"),
        Some("stale")
    );
    assert_eq!(ids(&get(&format!("{base}?token=s3cr3t"), &[])).len(), 2);
    let anonymous = get(&base, &[]);
    assert_eq!(anonymous.json(), serde_json::json!([]));
    assert_eq!(
        anonymous.header("x-consul-results-filtered-by-acls"),
        Some("true")
    );
    let wrong = get(&base, &[("X-Consul-Token", "guess")]);
    assert_eq!(
        (wrong.status, wrong.text().as_str()),
        (403, "ACL not found")
    );
}

#[test]
fn cached_reads_miss_then_hit_with_age_zero_and_follow_changes() {
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    for path in ["/v1/catalog/service/web", "/v1/health/service/web"] {
        let url = format!("{}{path}?cached", consul.url());
        let first = get(&url, &[]);
        assert_eq!(first.status, 200);
        assert_eq!(first.header("x-cache"), Some("MISS"), "{path}");
        assert_eq!(first.header("age"), None, "a miss has no Age");
        let second = get(&url, &[]);
        assert_eq!(second.header("x-cache"), Some("HIT"), "{path}");
        assert_eq!(second.header("age"), Some("0"), "{path}");
        assert_eq!(index_of(&second), index_of(&first));
        assert_eq!(second.body, first.body);
    }
    assert_eq!(consul.agent_cache_fetches(), 2);

    // Each cached query is its own entry.
    let passing = get(
        &format!("{}/v1/health/service/web?passing&cached", consul.url()),
        &[],
    );
    assert_eq!(passing.header("x-cache"), Some("MISS"));
    assert_eq!(consul.agent_cache_fetches(), 3);

    // The agent's background refresh keeps the entries current: one fetch each per change.
    let changed_at = consul.set_meta("web-1", "version", "1.1.0").expect("web-1");
    assert_eq!(consul.agent_cache_fetches(), 6);
    let after = get(
        &format!("{}/v1/catalog/service/web?cached", consul.url()),
        &[],
    );
    assert_eq!(after.header("x-cache"), Some("HIT"));
    assert_eq!(after.header("age"), Some("0"));
    assert_eq!(index_of(&after), changed_at);
    assert_eq!(after.json()[0]["ServiceMeta"]["version"], "1.1.0");

    let refused = get(
        &format!("{}/v1/catalog/service/web?cached&consistent", consul.url()),
        &[],
    );
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.text(),
        "Cannot specify ?cached with ?consistent, conflicting semantics."
    );
}

#[test]
fn agent_without_servers_answers_hits_frozen_with_their_age() {
    let consul = start();
    consul.register(web("web-1", 8081, "1.0.0"));
    let url = format!("{}/v1/health/service/web?cached", consul.url());
    let fresh = get(&url, &[]);
    assert_eq!(fresh.header("x-cache"), Some("MISS"));

    consul.disconnect_agent_cache_since(Duration::from_secs(120));
    consul.set_meta("web-1", "version", "2.0.0");
    let aged = get(&url, &[]);
    assert_eq!(aged.status, 200);
    assert_eq!(aged.header("x-cache"), Some("HIT"));
    let age: u64 = aged
        .header("age")
        .expect("Age")
        .parse()
        .expect("numeric Age");
    assert!(age >= 120, "Age {age}");
    assert_eq!(
        aged.json()[0]["Service"]["Meta"]["version"],
        "1.0.0",
        "the cut-off agent cannot see the change"
    );
    assert_eq!(index_of(&aged), index_of(&fresh));

    for uncached in [
        format!("{}/v1/health/service/web", consul.url()),
        format!("{}/v1/catalog/service/web?cached", consul.url()),
    ] {
        let reply = get(&uncached, &[]);
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (500, "No known Consul servers"),
            "{uncached}"
        );
    }

    consul.reconnect_agent_cache();
    let caught_up = get(&url, &[]);
    assert_eq!(caught_up.header("x-cache"), Some("HIT"));
    assert_eq!(caught_up.header("age"), Some("0"));
    assert_eq!(caught_up.json()[0]["Service"]["Meta"]["version"], "2.0.0");
}

#[test]
fn cached_entries_unused_for_the_cache_ttl_are_fetched_again() {
    let consul = ConsulStandin::start(ConsulOptions {
        agent_cache_ttl: Duration::from_millis(50),
        ..ConsulOptions::default()
    })
    .expect("start");
    consul.register(web("web-1", 8081, "1.0.0"));
    let url = format!("{}/v1/catalog/service/web?cached", consul.url());
    assert_eq!(get(&url, &[]).header("x-cache"), Some("MISS"));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(get(&url, &[]).header("x-cache"), Some("MISS"));
    assert_eq!(consul.agent_cache_fetches(), 2);
}

#[test]
fn cached_blocking_query_waits_on_the_agent_cache() {
    let consul = start();
    let index = consul.register(web("web-1", 8081, "1.0.0"));
    let base = format!("{}/v1/catalog/service/web?cached", consul.url());
    assert_eq!(get(&base, &[]).header("x-cache"), Some("MISS"));
    let url = format!("{base}&index={index}&wait=5m");
    let waiter = std::thread::spawn(move || get(&url, &[]));
    wait_until("the query is held", || {
        consul.held_queries("/v1/catalog/service/web") == 1
    });
    let changed_at = consul.register(web("web-2", 8082, "1.0.0"));
    let reply = waiter.join().expect("waiter");
    assert_eq!(reply.header("x-cache"), Some("HIT"));
    assert_eq!(reply.header("age"), Some("0"));
    assert_eq!(index_of(&reply), changed_at);
    assert_eq!(service_ids(&reply.json()), ["web-1", "web-2"]);

    // Cut off from its servers, the agent holds the query to the end of `wait` and answers
    // with what it has.
    consul.disconnect_agent_cache();
    consul.register(web("web-3", 8083, "1.0.0"));
    let frozen = get(&format!("{base}&index={changed_at}&wait=100ms"), &[]);
    assert_eq!(frozen.header("x-cache"), Some("HIT"));
    assert_eq!(index_of(&frozen), changed_at);
    assert_eq!(service_ids(&frozen.json()), ["web-1", "web-2"]);
}
