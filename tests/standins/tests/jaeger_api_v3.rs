//! Jaeger's query API v3 over HTTP as the OTLP stand-in serves it: what was exported comes
//! back as OTLP/JSON in a `{"result": ...}` envelope, searches are bounded by time and
//! depth, and errors have Jaeger's `{"error": ...}` shape.

mod common;

use common::get;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::{json, Value};
use standins::OtlpStandin;

/// 2023-11-14T22:13:20Z.
const BASE_NANOS: u64 = 1_700_000_000_000_000_000;
const SECOND: u64 = 1_000_000_000;

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.to_owned()))
}

fn trace_id(n: u8) -> Vec<u8> {
    let mut id = vec![0xab; 16];
    id[15] = n;
    id
}

/// A browser click (`web`) and its gateway span, started `offset` seconds after the base.
fn click(n: u8, offset: u64) -> ExportTraceServiceRequest {
    let start = BASE_NANOS + offset * SECOND;
    let browser = Span {
        trace_id: trace_id(n),
        span_id: vec![1, 2, 3, 4, 5, 6, 7, n],
        name: "checkout.submit".to_owned(),
        kind: 1,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 120_000_000,
        attributes: vec![text("ui.component", "checkout-form")],
        ..Default::default()
    };
    let gateway = Span {
        trace_id: trace_id(n),
        span_id: vec![9, 9, 9, 9, 9, 9, 9, n],
        parent_span_id: vec![1, 2, 3, 4, 5, 6, 7, n],
        name: "ingress".to_owned(),
        kind: 2,
        start_time_unix_nano: start + 1_000_000,
        end_time_unix_nano: start + 101_000_000,
        attributes: vec![
            text("consul.service.id", "echo-1"),
            attribute("server.port", any_value::Value::IntValue(8080)),
        ],
        ..Default::default()
    };
    let resource = |name: &str| Resource {
        attributes: vec![text("service.name", name)],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![
            ResourceSpans {
                resource: Some(resource("web")),
                scope_spans: vec![ScopeSpans {
                    spans: vec![browser],
                    ..Default::default()
                }],
                ..Default::default()
            },
            ResourceSpans {
                resource: Some(resource("envoy-gateway")),
                scope_spans: vec![ScopeSpans {
                    spans: vec![gateway],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
    }
}

fn start_with_clicks(offsets: &[u64]) -> OtlpStandin {
    let otlp = OtlpStandin::start().expect("start otlp stand-in");
    for (n, offset) in offsets.iter().enumerate() {
        let n = u8::try_from(n + 1).expect("few clicks");
        let reply = common::send(
            "POST",
            &format!("{}/v1/traces", otlp.url()),
            &[("Content-Type", "application/x-protobuf")],
            &click(n, *offset).encode_to_vec(),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    otlp
}

fn find(otlp: &OtlpStandin, query: &str) -> common::Reply {
    get(&format!("{}/api/v3/traces?{query}", otlp.url()), &[])
}

const WINDOW: &str =
    "query.start_time_min=2023-11-14T22:00:00Z&query.start_time_max=2023-11-14T23:00:00Z";

/// The trace ids of a `{"result": TracesData}` answer, once each, in order.
fn trace_ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for resource in body["result"]["resourceSpans"].as_array().expect("array") {
        for scope in resource["scopeSpans"].as_array().expect("scopes") {
            for span in scope["spans"].as_array().expect("spans") {
                let id = span["traceId"].as_str().expect("hex id").to_owned();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

#[test]
fn find_traces_answers_otlp_json_in_a_result_envelope() {
    let otlp = start_with_clicks(&[10]);
    let reply = find(
        &otlp,
        &format!("query.service_name=web&query.operation_name=checkout.submit&{WINDOW}&query.num_traces=20"),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    let resources = body["result"]["resourceSpans"].as_array().expect("array");
    // The whole trace comes back, the gateway's resource too.
    assert_eq!(resources.len(), 2);
    assert_eq!(
        resources[0]["resource"]["attributes"],
        json!([{"key": "service.name", "value": {"stringValue": "web"}}])
    );
    let browser = &resources[0]["scopeSpans"][0]["spans"][0];
    assert_eq!(browser["traceId"], "ababababababababababababababab01");
    assert_eq!(browser["spanId"], "0102030405060701");
    assert_eq!(browser["name"], "checkout.submit");
    assert_eq!(browser["kind"], 1);
    assert_eq!(browser["startTimeUnixNano"], "1700000010000000000");
    assert_eq!(browser["endTimeUnixNano"], "1700000010120000000");
    assert_eq!(
        browser["attributes"],
        json!([{"key": "ui.component", "value": {"stringValue": "checkout-form"}}])
    );
    assert_eq!(browser["status"], json!({}));
    assert!(browser.get("parentSpanId").is_none());
    let gateway = &resources[1]["scopeSpans"][0]["spans"][0];
    assert_eq!(gateway["parentSpanId"], "0102030405060701");
    assert_eq!(gateway["kind"], 2);
    // 64-bit integers are decimal strings in OTLP/JSON.
    assert_eq!(
        gateway["attributes"][1],
        json!({"key": "server.port", "value": {"intValue": "8080"}})
    );
}

#[test]
fn find_traces_is_bounded_by_time_and_depth_newest_first() {
    let otlp = start_with_clicks(&[10, 20, 30, 40]);
    let narrow = find(
        &otlp,
        "query.service_name=web&query.start_time_min=2023-11-14T22:13:40Z&query.start_time_max=2023-11-14T22:13:50Z&query.num_traces=10",
    );
    // Both bounds are inclusive, as in Jaeger's memory store: 20 s and 30 s after the base.
    assert_eq!(
        trace_ids(&narrow.json()),
        [
            "ababababababababababababababab03",
            "ababababababababababababababab02"
        ]
    );
    let capped = find(
        &otlp,
        &format!("query.service_name=web&{WINDOW}&query.num_traces=3"),
    );
    assert_eq!(
        trace_ids(&capped.json()),
        [
            "ababababababababababababababab04",
            "ababababababababababababababab03",
            "ababababababababababababababab02"
        ]
    );
    // Jaeger's later camelCase names are the same query.
    let camel = find(
        &otlp,
        "query.serviceName=web&query.startTimeMin=2023-11-14T22:00:00Z&query.startTimeMax=2023-11-14T23:00:00Z&query.searchDepth=1",
    );
    assert_eq!(
        trace_ids(&camel.json()),
        ["ababababababababababababababab04"]
    );
}

#[test]
fn find_traces_errors_have_jaegers_shape() {
    let otlp = start_with_clicks(&[10]);
    let none = find(
        &otlp,
        &format!("query.service_name=web&query.operation_name=other&{WINDOW}"),
    );
    assert_eq!(none.status, 404);
    assert_eq!(
        none.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        none.text(),
        "{\"error\":{\"httpCode\":404,\"message\":\"No traces found\"}}\n"
    );

    let no_window = find(&otlp, "query.service_name=web");
    assert_eq!(no_window.status, 400);
    assert_eq!(
        no_window.json()["error"]["message"],
        "query.start_time_min and query.start_time_max are required"
    );
    let bad_time = find(
        &otlp,
        "query.service_name=web&query.start_time_min=yesterday&query.start_time_max=2023-11-14T23:00:00Z",
    );
    assert_eq!(bad_time.status, 400);
    let message = bad_time.json()["error"]["message"].to_string();
    assert!(
        message.contains("malformed parameter query.start_time_min"),
        "{message}"
    );
    let zero = find(
        &otlp,
        &format!("query.service_name=web&{WINDOW}&query.num_traces=0"),
    );
    assert_eq!(zero.status, 500);
    assert_eq!(zero.json()["error"]["httpCode"], 500);
}

#[test]
fn services_and_operations() {
    let otlp = OtlpStandin::start().expect("start otlp stand-in");
    let empty = get(&format!("{}/api/v3/services", otlp.url()), &[]);
    // jsonpb leaves an empty list out.
    assert_eq!(empty.json(), json!({}));

    let otlp = start_with_clicks(&[10, 20]);
    let services = get(&format!("{}/api/v3/services", otlp.url()), &[]).json();
    assert_eq!(services, json!({"services": ["envoy-gateway", "web"]}));

    let operations = get(
        &format!("{}/api/v3/operations?service=envoy-gateway", otlp.url()),
        &[],
    )
    .json();
    assert_eq!(
        operations,
        json!({"operations": [{"name": "ingress", "spanKind": "server"}]})
    );
    let web = get(
        &format!("{}/api/v3/operations?service=web", otlp.url()),
        &[],
    )
    .json();
    assert_eq!(
        web,
        json!({"operations": [{"name": "checkout.submit", "spanKind": "internal"}]})
    );
    let filtered = get(
        &format!(
            "{}/api/v3/operations?service=web&span_kind=server",
            otlp.url()
        ),
        &[],
    )
    .json();
    assert_eq!(filtered, json!({}));
    let unknown = get(
        &format!("{}/api/v3/operations?service=nobody", otlp.url()),
        &[],
    )
    .json();
    assert_eq!(unknown, json!({}));
}

#[test]
fn unknown_v3_paths_are_plain_404s() {
    let otlp = OtlpStandin::start().expect("start otlp stand-in");
    let reply = get(&format!("{}/api/v3/nothing", otlp.url()), &[]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.text(), "404 page not found\n");
}
