//! The real binary against the OTLP/HTTP receiver stand-in: trace continuation, enrichment
//! attributes, resource, flush on shutdown, requests without a usable trace context.

mod common;

use common::{get, post, EchoProcess};
use standins::{closed_port_addr, Encoding, OtlpStandin, StoredSpan};

const INCOMING_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_SPAN_ID: &str = "00f067aa0ba902b7";
/// OTLP `Span.SpanKind` values.
const KIND_INTERNAL: i32 = 1;
const KIND_SERVER: i32 = 2;

fn otlp() -> OtlpStandin {
    OtlpStandin::start().expect("start OTLP stand-in")
}

fn start_exporting_to(otlp: &OtlpStandin, extra: &[(&str, &str)]) -> EchoProcess {
    let endpoint = otlp.url();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("SERVICE_NAME", "echo"),
        ("SERVICE_VERSION", "1.7.0"),
        ("SERVICE_REGION", "us-east-2"),
    ];
    env.extend_from_slice(extra);
    EchoProcess::start(&env)
}

fn span_named<'a>(spans: &'a [StoredSpan], name: &str) -> &'a StoredSpan {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
}

fn is_new_trace_id(trace_id: &str) -> bool {
    trace_id.len() == 32
        && trace_id.bytes().all(|b| b.is_ascii_hexdigit())
        && trace_id != "0".repeat(32)
        && trace_id != INCOMING_TRACE_ID
}

#[test]
fn continues_the_incoming_trace_and_records_the_enrichment() {
    let otlp = otlp();
    let mut echo = start_exporting_to(&otlp, &[]);
    let traceparent = format!("00-{INCOMING_TRACE_ID}-{INCOMING_SPAN_ID}-01");
    let reply = get(
        &echo.url("/echo"),
        &[
            ("traceparent", traceparent.as_str()),
            (
                "baggage",
                "ui.component=checkout-button,consul.service.meta.version=1.7.0,userId=42",
            ),
            ("x-consul-service", "echo"),
            ("x-consul-meta-region", "us-east-2"),
            ("x-request-id", "not-enrichment"),
        ],
    );
    assert_eq!(reply.status, 200);
    let echoed = reply.json();
    assert_eq!(echoed["method"], "GET");
    assert_eq!(echoed["path"], "/echo");
    assert_eq!(echoed["traceparent"], traceparent.as_str());
    assert_eq!(echoed["trace_id"], INCOMING_TRACE_ID);
    assert_eq!(
        echoed["headers"],
        serde_json::json!({"x-consul-service": "echo", "x-consul-meta-region": "us-east-2"})
    );
    assert_eq!(echoed["baggage"]["ui.component"], "checkout-button");
    assert_eq!(echoed["baggage"]["userId"], "42");
    assert_eq!(
        echoed["instance"],
        serde_json::json!({
            "service": "echo",
            "id": format!("echo-{}", echo.addr.port()),
            "version": "1.7.0",
            "region": "us-east-2"
        })
    );

    // The batch exporter's delay is seconds long: these spans arrive because shutdown
    // flushes them.
    echo.stop_with("TERM");
    let spans = otlp.trace(INCOMING_TRACE_ID);
    assert_eq!(spans.len(), 2, "{spans:#?}");

    let server = span_named(&spans, "GET /echo");
    assert_eq!(server.kind, KIND_SERVER);
    assert_eq!(server.parent_span_id.as_deref(), Some(INCOMING_SPAN_ID));
    assert_eq!(server.span_id, echoed["span_id"].as_str().expect("span id"));
    assert_eq!(server.string_attribute("http.request.method"), Some("GET"));
    assert_eq!(server.string_attribute("url.path"), Some("/echo"));
    assert_eq!(server.string_attribute("http.route"), Some("/echo"));
    assert_eq!(
        server
            .attribute("http.response.status_code")
            .and_then(|v| v.as_i64()),
        Some(200)
    );
    assert_eq!(
        server.attribute("server.port").and_then(|v| v.as_i64()),
        Some(i64::from(echo.addr.port()))
    );
    assert_eq!(
        server.string_attribute("enrichment.header.x-consul-service"),
        Some("echo")
    );
    assert_eq!(
        server.string_attribute("enrichment.header.x-consul-meta-region"),
        Some("us-east-2")
    );
    assert_eq!(
        server.string_attribute("enrichment.baggage.ui.component"),
        Some("checkout-button")
    );
    assert_eq!(
        server.string_attribute("enrichment.baggage.consul.service.meta.version"),
        Some("1.7.0")
    );
    let recorded: Vec<&String> = server
        .attributes
        .keys()
        .filter(|key| key.starts_with("enrichment."))
        .collect();
    assert_eq!(
        recorded.len(),
        4,
        "only enrichment is recorded: {recorded:?}"
    );

    let build = span_named(&spans, "build echo response");
    assert_eq!(build.kind, KIND_INTERNAL);
    assert_eq!(
        build.parent_span_id.as_deref(),
        Some(server.span_id.as_str())
    );

    for span in &spans {
        assert_eq!(span.encoding, Encoding::Protobuf);
        assert_eq!(span.service_name(), Some("echo"));
        let resource = |key: &str| span.resource.get(key).and_then(|v| v.as_str());
        assert_eq!(resource("service.version"), Some("1.7.0"));
        assert_eq!(resource("cloud.region"), Some("us-east-2"));
        let instance_id = format!("echo-{}", echo.addr.port());
        assert_eq!(resource("service.instance.id"), Some(instance_id.as_str()));
    }
    let exports = otlp.exports();
    assert!(!exports.is_empty());
    for export in exports {
        assert_eq!(export.content_type, "application/x-protobuf");
        assert_eq!(export.status, 200);
    }
}

#[test]
fn missing_or_broken_traceparent_starts_a_new_trace() {
    let otlp = otlp();
    let mut echo = start_exporting_to(&otlp, &[]);
    let broken = [
        "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736",
        "not a traceparent at all",
    ];
    let mut new_trace_ids = Vec::new();
    let none = get(&echo.url("/echo"), &[]);
    assert_eq!(none.status, 200);
    assert_eq!(none.json()["traceparent"], serde_json::Value::Null);
    new_trace_ids.push(none.json()["trace_id"].as_str().expect("id").to_owned());
    for traceparent in broken {
        let reply = post(&echo.url("/echo"), &[("traceparent", traceparent)], "{}");
        assert_eq!(reply.status, 200, "{traceparent}");
        let echoed = reply.json();
        assert_eq!(echoed["traceparent"], traceparent);
        let trace_id = echoed["trace_id"].as_str().expect("id").to_owned();
        assert!(is_new_trace_id(&trace_id), "{traceparent}: {trace_id}");
        new_trace_ids.push(trace_id);
    }
    let mut distinct = new_trace_ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), new_trace_ids.len(), "{new_trace_ids:?}");

    echo.stop_with("TERM");
    for trace_id in &new_trace_ids {
        let spans = otlp.trace(trace_id);
        assert_eq!(spans.len(), 2, "{trace_id}: {spans:#?}");
        let server = spans
            .iter()
            .find(|span| span.kind == KIND_SERVER)
            .unwrap_or_else(|| panic!("no server span in {spans:#?}"));
        assert_eq!(server.parent_span_id, None, "a root span: {server:#?}");
    }
}

#[test]
fn an_unsampled_parent_is_continued_but_not_exported() {
    let otlp = otlp();
    let mut echo = start_exporting_to(&otlp, &[]);
    let unsampled = format!("00-{INCOMING_TRACE_ID}-{INCOMING_SPAN_ID}-00");
    let reply = get(&echo.url("/echo"), &[("traceparent", unsampled.as_str())]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["trace_id"], INCOMING_TRACE_ID);
    let sampled = get(&echo.url("/echo"), &[]).json();

    echo.stop_with("TERM");
    assert!(otlp.trace(INCOMING_TRACE_ID).is_empty());
    let sampled_trace = sampled["trace_id"].as_str().expect("id");
    assert_eq!(otlp.trace(sampled_trace).len(), 2);
}

#[test]
fn the_traces_endpoint_variable_is_used_as_it_is() {
    let otlp = otlp();
    // The generic endpoint leads nowhere: spans arrive only if the exporter posts to the
    // traces-specific URL, without appending /v1/traces to it again.
    let nowhere = format!("http://{}", closed_port_addr());
    let traces = format!("{}/v1/traces", otlp.url());
    let mut echo = EchoProcess::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", nowhere.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
    ]);
    let reply = get(&echo.url("/echo"), &[]).json();

    echo.stop_with("TERM");
    let spans = otlp.trace(reply["trace_id"].as_str().expect("id"));
    assert_eq!(spans.len(), 2, "{spans:#?}");
}

#[test]
fn otel_resource_attributes_are_kept_and_the_instance_values_win() {
    let otlp = otlp();
    let mut echo = start_exporting_to(
        &otlp,
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=demo,service.version=9.9.9",
        )],
    );
    let reply = get(&echo.url("/echo"), &[]).json();

    echo.stop_with("TERM");
    let spans = otlp.trace(reply["trace_id"].as_str().expect("id"));
    assert_eq!(spans.len(), 2);
    for span in &spans {
        let resource = |key: &str| span.resource.get(key).and_then(|v| v.as_str());
        assert_eq!(resource("deployment.environment.name"), Some("demo"));
        // The version registered in Consul is the one the trace reports.
        assert_eq!(resource("service.version"), Some("1.7.0"));
        assert_eq!(span.service_name(), Some("echo"));
    }
}

#[test]
fn a_service_name_in_otel_resource_attributes_is_not_replaced() {
    let otlp = otlp();
    let mut echo = start_exporting_to(
        &otlp,
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=echo-from-attributes",
        )],
    );
    let reply = get(&echo.url("/echo"), &[]).json();
    assert_eq!(reply["instance"]["service"], "echo");

    echo.stop_with("TERM");
    let spans = otlp.trace(reply["trace_id"].as_str().expect("id"));
    assert_eq!(spans.len(), 2);
    assert!(spans
        .iter()
        .all(|span| span.service_name() == Some("echo-from-attributes")));
}

#[test]
fn otel_service_name_overrides_the_resource_name_only() {
    let otlp = otlp();
    let mut echo = start_exporting_to(&otlp, &[("OTEL_SERVICE_NAME", "echo-backend")]);
    let reply = get(&echo.url("/echo"), &[]).json();
    assert_eq!(reply["instance"]["service"], "echo");

    echo.stop_with("TERM");
    let spans = otlp.trace(reply["trace_id"].as_str().expect("id"));
    assert_eq!(spans.len(), 2);
    assert!(spans
        .iter()
        .all(|span| span.service_name() == Some("echo-backend")));
}

#[test]
fn an_unreachable_collector_costs_requests_nothing_and_shutdown_still_exits_0() {
    let endpoint = format!("http://{}", closed_port_addr());
    let mut echo = EchoProcess::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]);
    for _ in 0..20 {
        assert_eq!(get(&echo.url("/echo"), &[]).status, 200);
    }
    echo.stop_with("TERM");
}

#[test]
fn without_an_endpoint_the_trace_is_still_continued() {
    let mut echo = EchoProcess::start(&[]);
    let traceparent = format!("00-{INCOMING_TRACE_ID}-{INCOMING_SPAN_ID}-01");
    let reply = get(&echo.url("/echo"), &[("traceparent", traceparent.as_str())]);
    assert_eq!(reply.json()["trace_id"], INCOMING_TRACE_ID);
    assert_ne!(reply.json()["span_id"], INCOMING_SPAN_ID);
    echo.stop_with("TERM");
}

#[test]
fn a_response_delay_is_spent_inside_the_server_span() {
    let otlp = otlp();
    let mut echo = start_exporting_to(&otlp, &[("RESPONSE_DELAY_MS", "120")]);
    let started = std::time::Instant::now();
    assert_eq!(get(&echo.url("/echo"), &[]).status, 200);
    assert!(started.elapsed() >= std::time::Duration::from_millis(120));
    echo.stop_with("TERM");

    let spans = otlp.wait_for_spans(2, std::time::Duration::from_secs(5));
    let server = span_named(&spans, "GET /echo");
    let server_ms = (server.end_time_unix_nano - server.start_time_unix_nano) / 1_000_000;
    assert!(server_ms >= 120, "server span lasted {server_ms} ms");
}
