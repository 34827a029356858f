//! The OTLP receiver and Jaeger query stand-in seen from a plain HTTP client: exports in
//! both OTLP/HTTP encodings come back through the query API.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{get, send, try_call, try_get};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::{json, Value};
use standins::{AttributeValue, Encoding, Fault, OtlpStandin};

const TRACE_ID: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const TRACE_HEX: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const ROOT_ID: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];
const CHILD_ID: [u8; 8] = [0x53, 0x99, 0x5c, 0x3f, 0x42, 0xcd, 0x8a, 0xd8];

fn start() -> OtlpStandin {
    OtlpStandin::start().expect("start otlp stand-in")
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn text_attribute(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.to_owned()))
}

/// A gateway span (server) and its child (client), as the filter's exporter would send.
fn protobuf_request() -> ExportTraceServiceRequest {
    let root = Span {
        trace_id: TRACE_ID.to_vec(),
        span_id: ROOT_ID.to_vec(),
        name: "GET /echo".to_owned(),
        kind: 2,
        flags: 1,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: vec![
            text_attribute("service.peer.name", "echo"),
            text_attribute("consul.service.meta.version", "1.4.0"),
            attribute("server.port", any_value::Value::IntValue(8080)),
            attribute("consul.cache.fresh", any_value::Value::BoolValue(true)),
            attribute(
                "consul.lookup.duration_ms",
                any_value::Value::DoubleValue(1.5),
            ),
            attribute(
                "consul.service.tags",
                any_value::Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(any_value::Value::StringValue("v1".to_owned())),
                    }],
                }),
            ),
        ],
        status: Some(Status {
            message: "upstream failed".to_owned(),
            code: 2,
        }),
        events: vec![span::Event {
            time_unix_nano: 1_700_000_000_100_000_000,
            name: "consul.lookup".to_owned(),
            attributes: vec![text_attribute("consul.lookup", "miss")],
            dropped_attributes_count: 0,
        }],
        ..Default::default()
    };
    let child = Span {
        trace_id: TRACE_ID.to_vec(),
        span_id: CHILD_ID.to_vec(),
        parent_span_id: ROOT_ID.to_vec(),
        name: "consul lookup".to_owned(),
        kind: 3,
        start_time_unix_nano: 1_700_000_000_010_000_000,
        end_time_unix_nano: 1_700_000_000_012_000_000,
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    text_attribute("service.name", "api-gateway"),
                    text_attribute("host.name", "gw-1"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "consul-enricher".to_owned(),
                    version: "0.1.0".to_owned(),
                    ..Default::default()
                }),
                spans: vec![root, child],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn post(
    otlp: &OtlpStandin,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> common::Reply {
    let mut headers = vec![("Content-Type", content_type)];
    headers.extend_from_slice(extra);
    send("POST", &format!("{}/v1/traces", otlp.url()), &headers, body)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("finish gzip")
}

fn tag<'a>(tags: &'a Value, key: &str) -> &'a Value {
    tags.as_array()
        .expect("tags array")
        .iter()
        .find(|t| t["key"] == key)
        .unwrap_or_else(|| panic!("no tag {key} in {tags}"))
}

#[test]
fn protobuf_export_round_trips_to_the_query_api() {
    let otlp = start();
    let reply = post(
        &otlp,
        "application/x-protobuf",
        &[],
        &protobuf_request().encode_to_vec(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/x-protobuf"));
    let answer = ExportTraceServiceResponse::decode(reply.body.as_slice()).expect("response");
    assert_eq!(answer.partial_success, None);

    let spans = otlp.trace(TRACE_HEX);
    assert_eq!(spans.len(), 2);
    let root = &spans[0];
    assert_eq!(root.encoding, Encoding::Protobuf);
    assert_eq!(root.span_id, "00f067aa0ba902b7");
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.service_name(), Some("api-gateway"));
    assert_eq!(
        root.string_attribute("consul.service.meta.version"),
        Some("1.4.0")
    );
    assert_eq!(
        root.attribute("server.port")
            .and_then(AttributeValue::as_i64),
        Some(8080)
    );
    assert_eq!(
        root.attribute("consul.cache.fresh"),
        Some(&AttributeValue::Bool(true))
    );
    assert_eq!(root.scope_name, "consul-enricher");
    assert_eq!(spans[1].parent_span_id.as_deref(), Some("00f067aa0ba902b7"));

    let body = get(&format!("{}/api/traces/{TRACE_HEX}", otlp.url()), &[]).json();
    assert_eq!(body["errors"], Value::Null);
    let trace = &body["data"][0];
    assert_eq!(trace["traceID"], TRACE_HEX);
    let jaeger_spans = trace["spans"].as_array().expect("spans");
    assert_eq!(jaeger_spans.len(), 2);
    let jaeger_root = &jaeger_spans[0];
    assert_eq!(jaeger_root["traceID"], TRACE_HEX);
    assert_eq!(jaeger_root["spanID"], "00f067aa0ba902b7");
    assert_eq!(jaeger_root["operationName"], "GET /echo");
    assert_eq!(jaeger_root["references"], json!([]));
    assert_eq!(jaeger_root["startTime"], 1_700_000_000_000_000u64);
    assert_eq!(jaeger_root["duration"], 250_000);
    assert_eq!(jaeger_root["flags"], 1);
    let tags = &jaeger_root["tags"];
    assert_eq!(tag(tags, "consul.service.meta.version")["value"], "1.4.0");
    assert_eq!(
        tag(tags, "server.port"),
        &json!({"key": "server.port", "type": "int64", "value": 8080})
    );
    assert_eq!(tag(tags, "consul.cache.fresh")["type"], "bool");
    assert_eq!(tag(tags, "consul.lookup.duration_ms")["type"], "float64");
    assert_eq!(tag(tags, "consul.service.tags")["value"], r#"["v1"]"#);
    assert_eq!(tag(tags, "span.kind")["value"], "server");
    assert_eq!(tag(tags, "otel.status_code")["value"], "ERROR");
    assert_eq!(tag(tags, "error")["value"], true);
    assert_eq!(
        tag(tags, "otel.status_description")["value"],
        "upstream failed"
    );
    assert_eq!(tag(tags, "otel.scope.name")["value"], "consul-enricher");
    let log = &jaeger_root["logs"][0];
    assert_eq!(log["timestamp"], 1_700_000_000_100_000u64);
    assert_eq!(tag(&log["fields"], "event")["value"], "consul.lookup");
    assert_eq!(tag(&log["fields"], "consul.lookup")["value"], "miss");

    let jaeger_child = &jaeger_spans[1];
    assert_eq!(
        jaeger_child["references"],
        json!([{"refType": "CHILD_OF", "traceID": TRACE_HEX, "spanID": "00f067aa0ba902b7"}])
    );
    assert_eq!(tag(&jaeger_child["tags"], "span.kind")["value"], "client");

    let process_id = jaeger_root["processID"].as_str().expect("processID");
    assert_eq!(jaeger_child["processID"], process_id);
    let process = &trace["processes"][process_id];
    assert_eq!(process["serviceName"], "api-gateway");
    assert_eq!(
        process["tags"],
        json!([{"key": "host.name", "type": "string", "value": "gw-1"}])
    );
}

/// The OTLP/JSON form of a browser span and the gateway span under it: hex ids (upper case
/// is allowed), 64-bit integers as strings, integer enums.
fn json_request() -> Value {
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "web"}},
                {"key": "telemetry.sdk.language", "value": {"stringValue": "webjs"}}
            ]},
            "scopeSpans": [{
                "scope": {"name": "@opentelemetry/instrumentation-fetch", "version": "0.52.0"},
                "spans": [{
                    "traceId": TRACE_HEX.to_uppercase(),
                    "spanId": "A1B2C3D4E5F60718",
                    "name": "click",
                    "kind": 1,
                    "startTimeUnixNano": "1700000000000000000",
                    "endTimeUnixNano": 1_700_000_000_400_000_000u64,
                    "attributes": [
                        {"key": "ui.component", "value": {"stringValue": "checkout-button"}},
                        {"key": "http.status_code", "value": {"intValue": "200"}},
                        {"key": "retry", "value": {"boolValue": false}},
                        {"key": "payload", "value": {"bytesValue": "aGk="}},
                        {"key": "meta", "value": {"kvlistValue": {"values": [
                            {"key": "version", "value": {"stringValue": "2"}}
                        ]}}}
                    ],
                    "status": {"code": 1},
                    "links": [{"traceId": "0000000000000000ffffffffffffffff", "spanId": "0102030405060708"}],
                    "someFutureField": {"ignored": true}
                }]
            }]
        }]
    })
}

#[test]
fn json_export_round_trips_to_the_query_api() {
    let otlp = start();
    let reply = post(
        &otlp,
        "application/json",
        &[("Origin", "http://localhost:8081")],
        json_request().to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.json(), json!({}));
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("http://localhost:8081")
    );

    let spans = otlp.spans();
    assert_eq!(spans.len(), 1);
    let click = &spans[0];
    assert_eq!(click.encoding, Encoding::Json);
    assert_eq!(click.trace_id, TRACE_HEX);
    assert_eq!(click.span_id, "a1b2c3d4e5f60718");
    assert_eq!(click.start_time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(click.end_time_unix_nano, 1_700_000_000_400_000_000);
    assert_eq!(
        click.string_attribute("ui.component"),
        Some("checkout-button")
    );
    assert_eq!(
        click.attribute("http.status_code"),
        Some(&AttributeValue::Int(200))
    );
    assert_eq!(
        click.attribute("payload"),
        Some(&AttributeValue::Bytes(b"hi".to_vec()))
    );
    assert_eq!(click.links[0].trace_id, "0000000000000000ffffffffffffffff");

    let body = get(&format!("{}/api/traces/{TRACE_HEX}", otlp.url()), &[]).json();
    let jaeger_span = &body["data"][0]["spans"][0];
    assert_eq!(jaeger_span["operationName"], "click");
    assert_eq!(jaeger_span["duration"], 400_000);
    assert_eq!(
        tag(&jaeger_span["tags"], "ui.component")["value"],
        "checkout-button"
    );
    assert_eq!(
        tag(&jaeger_span["tags"], "meta")["value"],
        r#"{"version":"2"}"#
    );
    assert_eq!(tag(&jaeger_span["tags"], "span.kind")["value"], "internal");
    assert_eq!(tag(&jaeger_span["tags"], "otel.status_code")["value"], "OK");
    // A trace id whose high half is zero is printed in Jaeger's short form.
    assert_eq!(
        jaeger_span["references"],
        json!([{"refType": "FOLLOWS_FROM", "traceID": "ffffffffffffffff", "spanID": "0102030405060708"}])
    );
    assert_eq!(body["data"][0]["processes"]["p1"]["serviceName"], "web");
}

#[test]
fn gzip_bodies_are_accepted_in_both_encodings() {
    let otlp = start();
    let protobuf = post(
        &otlp,
        "application/x-protobuf",
        &[("Content-Encoding", "gzip")],
        &gzip(&protobuf_request().encode_to_vec()),
    );
    assert_eq!(protobuf.status, 200, "{}", protobuf.text());
    let json = post(
        &otlp,
        "application/json; charset=utf-8",
        &[("Content-Encoding", "gzip")],
        &gzip(json_request().to_string().as_bytes()),
    );
    assert_eq!(json.status, 200, "{}", json.text());
    assert_eq!(otlp.trace(TRACE_HEX).len(), 3);
    let exports = otlp.exports();
    assert_eq!(exports.len(), 2);
    assert_eq!(exports[0].content_encoding.as_deref(), Some("gzip"));
    assert_eq!((exports[0].spans, exports[1].spans), (2, 1));
}

#[test]
fn invalid_json_exports_are_bad_requests_with_a_status_body() {
    let otlp = start();
    let valid = json_request();
    let mut base64_ids = valid.clone();
    base64_ids["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] =
        json!("S/kvNXezTaajzpKdDg5HNg==");
    let mut enum_name = valid.clone();
    enum_name["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["kind"] = json!("SPAN_KIND_SERVER");
    let mut snake_case = valid.clone();
    let span = &mut snake_case["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    let trace_id = span["traceId"].take();
    span.as_object_mut().expect("span").remove("traceId");
    span["trace_id"] = trace_id;
    let mut zero_id = valid;
    zero_id["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = json!("0000000000000000");

    for (body, message) in [
        (base64_ids.to_string(), "hex, not base64"),
        (enum_name.to_string(), "forbids enum names"),
        (snake_case.to_string(), "traceId must be 16 bytes"),
        (zero_id.to_string(), "spanId is all zeroes"),
        ("{\"resourceSpans\": [".to_owned(), "invalid JSON"),
    ] {
        let reply = post(&otlp, "application/json", &[], body.as_bytes());
        assert_eq!(reply.status, 400, "{message}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let status = reply.json();
        assert_eq!(status["code"], 3);
        let text = status["message"].as_str().expect("message");
        assert!(text.contains(message), "{message}: {text}");
    }
    assert!(otlp.spans().is_empty(), "a refused request stores nothing");
    assert!(otlp
        .exports()
        .iter()
        .all(|e| e.status == 400 && e.error.is_some()));
}

#[test]
fn invalid_protobuf_is_a_bad_request_with_a_protobuf_status() {
    let otlp = start();
    let reply = post(&otlp, "application/x-protobuf", &[], b"\xff\xff\xff\xff");
    assert_eq!(reply.status, 400);
    assert_eq!(reply.header("content-type"), Some("application/x-protobuf"));
    // google.rpc.Status: code (field 1) = 3, message (field 2) names the problem.
    assert_eq!(&reply.body[..2], &[0x08, 0x03]);
    assert!(reply.text().contains("invalid protobuf"));
}

#[test]
fn unsupported_content_type_method_and_size_are_refused() {
    let otlp = start();
    assert_eq!(post(&otlp, "text/plain", &[], b"hello").status, 415);
    let wrong_method = get(&format!("{}/v1/traces", otlp.url()), &[]);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST, OPTIONS"));
    let bomb = gzip(&vec![b' '; (20 << 20) + 1]);
    let too_large = post(
        &otlp,
        "application/json",
        &[("Content-Encoding", "gzip")],
        &bomb,
    );
    assert_eq!(too_large.status, 413);
    assert_eq!(
        post(
            &otlp,
            "application/json",
            &[("Content-Encoding", "br")],
            b"{}"
        )
        .status,
        400
    );
}

#[test]
fn cors_preflight_allows_browser_exports() {
    let otlp = start();
    let reply = try_call(
        "OPTIONS",
        &format!("{}/v1/traces", otlp.url()),
        &[
            ("Origin", "http://localhost:8081"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type,traceparent"),
        ],
    )
    .expect("preflight");
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("http://localhost:8081")
    );
    assert!(reply
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("content-type,traceparent")
    );
    assert_eq!(reply.header("vary"), Some("Origin"));
}

#[test]
fn jaeger_search_services_and_missing_traces() {
    let otlp = start();
    post(
        &otlp,
        "application/x-protobuf",
        &[],
        &protobuf_request().encode_to_vec(),
    );
    post(
        &otlp,
        "application/json",
        &[],
        json_request().to_string().as_bytes(),
    );

    let services = get(&format!("{}/api/services", otlp.url()), &[]).json();
    assert_eq!(services["data"], json!(["api-gateway", "web"]));
    assert_eq!(services["total"], 2);

    let found = get(&format!("{}/api/traces?service=web", otlp.url()), &[]).json();
    assert_eq!(found["data"].as_array().expect("traces").len(), 1);
    assert_eq!(
        found["data"][0]["spans"].as_array().expect("spans").len(),
        3
    );
    let by_operation = get(
        &format!(
            "{}/api/traces?service=api-gateway&operation=nothing",
            otlp.url()
        ),
        &[],
    )
    .json();
    assert_eq!(by_operation["data"], json!([]));
    assert_eq!(get(&format!("{}/api/traces", otlp.url()), &[]).status, 400);

    let missing = get(
        &format!("{}/api/traces/{}", otlp.url(), "ab".repeat(16)),
        &[],
    );
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["errors"][0]["msg"], "trace not found");
    assert_eq!(
        get(&format!("{}/api/traces/not-hex", otlp.url()), &[]).status,
        400
    );
}

#[test]
fn short_trace_ids_are_found_in_either_form() {
    let otlp = start();
    let mut request = protobuf_request();
    let short = [
        0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0,
    ];
    for span in &mut request.resource_spans[0].scope_spans[0].spans {
        span.trace_id = short.to_vec();
    }
    post(
        &otlp,
        "application/x-protobuf",
        &[],
        &request.encode_to_vec(),
    );
    assert_eq!(otlp.trace("123456789ABCDEF0").len(), 2);
    let body = get(&format!("{}/api/traces/123456789abcdef0", otlp.url()), &[]).json();
    assert_eq!(body["data"][0]["traceID"], "123456789abcdef0");
    let long = get(
        &format!("{}/api/traces/0000000000000000123456789abcdef0", otlp.url()),
        &[],
    );
    assert_eq!(long.status, 200);
}

#[test]
fn export_faults_then_recovery() {
    let otlp = start();
    let body = protobuf_request().encode_to_vec();
    otlp.set_fault_for_next(1, Fault::Status(503, "overloaded".to_owned()));
    assert_eq!(
        post(&otlp, "application/x-protobuf", &[], &body).status,
        503
    );
    assert!(otlp.spans().is_empty());
    assert_eq!(
        post(&otlp, "application/x-protobuf", &[], &body).status,
        200
    );
    assert_eq!(otlp.spans().len(), 2);

    otlp.set_fault(Fault::Reset);
    let reset = common::try_send(
        "POST",
        &format!("{}/v1/traces", otlp.url()),
        &[("Content-Type", "application/x-protobuf")],
        &body,
    );
    assert!(reset.is_err(), "no answer may arrive");
    otlp.set_fault(Fault::None);
    // The query API is never faulted.
    assert_eq!(
        get(&format!("{}/api/services", otlp.url()), &[]).status,
        200
    );
}

#[test]
fn waiting_for_spans_returns_when_they_arrive() {
    let mut otlp = start();
    let url = format!("{}/v1/traces", otlp.url());
    let exporter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        send(
            "POST",
            &url,
            &[("Content-Type", "application/x-protobuf")],
            &protobuf_request().encode_to_vec(),
        )
    });
    let spans = otlp.wait_for_spans(2, Duration::from_secs(20));
    assert_eq!(spans.len(), 2);
    assert_eq!(exporter.join().expect("exporter").status, 200);
    assert_eq!(
        otlp.wait_for_spans(3, Duration::from_millis(50)).len(),
        2,
        "times out with what arrived"
    );

    let services_url = format!("{}/api/services", otlp.url());
    otlp.stop();
    assert!(try_get(&services_url, &[]).is_err());
}
