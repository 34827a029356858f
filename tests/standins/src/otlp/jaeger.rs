//! Jaeger query service HTTP JSON API over the stored spans.
//!
//! Follows the JSON shape of Jaeger's query API for its UI (jaegertracing/jaeger: the
//! `structuredResponse` of the query HTTP handler, with `data`, `total`, `limit`, `offset`,
//! `errors`; the `model/json` trace with `traceID`, `spans`, `processes`, `warnings`; spans
//! with `traceID`, `spanID`, `operationName`, `references[{refType, traceID, spanID}]`,
//! `flags`, `startTime` and `duration` in
//! microseconds, `tags[{key, type, value}]`, `logs[{timestamp, fields}]`, `processID`) and
//! Jaeger's OTLP translation (opentelemetry-collector-contrib `pkg/translator/jaeger`):
//! the parent becomes a `CHILD_OF` reference and links `FOLLOWS_FROM`; `service.name`
//! becomes the process's `serviceName` and other resource attributes its tags; span kind,
//! status, scope and trace state become the tags `span.kind`, `otel.status_code` (with
//! `error: true` for errors), `otel.status_description`, `otel.scope.name`,
//! `otel.scope.version`, `w3c.tracestate`; arrays and maps become JSON strings; a trace id
//! whose high 64 bits are zero is printed as 16 hex digits.

use std::collections::BTreeMap;

use base64::Engine;
use hyper::StatusCode;
use serde_json::{json, Value};

use super::{AttributeValue, StoredSpan};

/// Jaeger's default number of traces for a search without `limit`.
const DEFAULT_SEARCH_LIMIT: usize = 100;

fn structured(data: Value, total: usize) -> Value {
    json!({"data": data, "total": total, "limit": 0, "offset": 0, "errors": null})
}

fn error(status: StatusCode, message: &str) -> (StatusCode, Value) {
    (
        status,
        json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": status.as_u16(), "msg": message}],
        }),
    )
}

pub(super) fn trace_by_id(spans: &[StoredSpan], trace_id: Option<&str>) -> (StatusCode, Value) {
    let Some(trace_id) = trace_id else {
        return error(StatusCode::BAD_REQUEST, "cannot parse traceID param");
    };
    let members: Vec<&StoredSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    if members.is_empty() {
        return error(StatusCode::NOT_FOUND, "trace not found");
    }
    (StatusCode::OK, structured(json!([trace_json(&members)]), 1))
}

pub(super) fn search(spans: &[StoredSpan], parameters: &[(String, String)]) -> (StatusCode, Value) {
    let parameter = |name: &str| {
        parameters
            .iter()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    };
    let Some(service) = parameter("service") else {
        return error(StatusCode::BAD_REQUEST, "parameter 'service' is required");
    };
    let limit = match parameter("limit").map(str::parse::<usize>) {
        None => DEFAULT_SEARCH_LIMIT,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "unable to parse param 'limit'"),
    };
    let operation = parameter("operation");
    let mut trace_ids: Vec<&str> = Vec::new();
    for span in spans {
        let matches = span.service_name() == Some(service)
            && operation.is_none_or(|operation| span.name == operation);
        if matches && !trace_ids.contains(&span.trace_id.as_str()) {
            trace_ids.push(&span.trace_id);
        }
    }
    let traces: Vec<Value> = trace_ids
        .iter()
        .take(limit)
        .map(|id| {
            let members: Vec<&StoredSpan> = spans.iter().filter(|s| s.trace_id == *id).collect();
            trace_json(&members)
        })
        .collect();
    let total = traces.len();
    (StatusCode::OK, structured(Value::Array(traces), total))
}

pub(super) fn services(spans: &[StoredSpan]) -> (StatusCode, Value) {
    let mut names: Vec<&str> = spans.iter().map(service_name).collect();
    names.sort_unstable();
    names.dedup();
    let total = names.len();
    (StatusCode::OK, structured(json!(names), total))
}

/// The name Jaeger shows for a span's process.
fn service_name(span: &StoredSpan) -> &str {
    span.service_name().unwrap_or("OTLPResourceNoServiceName")
}

/// Jaeger's text form of a trace id: 16 digits when the high half is zero.
pub(super) fn jaeger_trace_id(trace_id: &str) -> &str {
    match trace_id.split_at_checked(16) {
        Some((high, low)) if high.bytes().all(|b| b == b'0') => low,
        _ => trace_id,
    }
}

fn trace_json(spans: &[&StoredSpan]) -> Value {
    let mut processes: Vec<Value> = Vec::new();
    let mut span_values = Vec::new();
    for span in spans {
        let process = process_json(span);
        let position = match processes.iter().position(|p| *p == process) {
            Some(position) => position,
            None => {
                processes.push(process);
                processes.len() - 1
            }
        };
        span_values.push(span_json(span, &format!("p{}", position + 1)));
    }
    let processes: serde_json::Map<String, Value> = processes
        .into_iter()
        .enumerate()
        .map(|(position, process)| (format!("p{}", position + 1), process))
        .collect();
    json!({
        "traceID": jaeger_trace_id(&spans[0].trace_id),
        "spans": span_values,
        "processes": processes,
        "warnings": null,
    })
}

fn process_json(span: &StoredSpan) -> Value {
    let tags: Vec<Value> = span
        .resource
        .iter()
        .filter(|(key, _)| key.as_str() != "service.name")
        .map(|(key, value)| tag(key, value))
        .collect();
    json!({"serviceName": service_name(span), "tags": tags})
}

fn tag(key: &str, value: &AttributeValue) -> Value {
    let (kind, value) = match value {
        AttributeValue::String(text) => ("string", json!(text)),
        AttributeValue::Bool(flag) => ("bool", json!(flag)),
        AttributeValue::Int(number) => ("int64", json!(number)),
        AttributeValue::Double(number) => ("float64", json!(number)),
        AttributeValue::Bytes(bytes) => (
            "binary",
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
        AttributeValue::Empty => ("string", json!("")),
        AttributeValue::Array(_) | AttributeValue::Map(_) => {
            ("string", json!(plain_json(value).to_string()))
        }
    };
    json!({"key": key, "type": kind, "value": value})
}

/// An attribute as plain JSON, for arrays and maps flattened into string tags.
fn plain_json(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::Empty => Value::Null,
        AttributeValue::String(text) => json!(text),
        AttributeValue::Bool(flag) => json!(flag),
        AttributeValue::Int(number) => json!(number),
        AttributeValue::Double(number) => json!(number),
        AttributeValue::Bytes(bytes) => {
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        AttributeValue::Array(items) => Value::Array(items.iter().map(plain_json).collect()),
        AttributeValue::Map(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), plain_json(value)))
                .collect(),
        ),
    }
}

fn span_kind_name(kind: i32) -> Option<&'static str> {
    match kind {
        1 => Some("internal"),
        2 => Some("server"),
        3 => Some("client"),
        4 => Some("producer"),
        5 => Some("consumer"),
        _ => None,
    }
}

fn span_json(span: &StoredSpan, process_id: &str) -> Value {
    let trace_id = jaeger_trace_id(&span.trace_id);
    let mut references = Vec::new();
    if let Some(parent) = &span.parent_span_id {
        references.push(json!({"refType": "CHILD_OF", "traceID": trace_id, "spanID": parent}));
    }
    for link in &span.links {
        references.push(json!({
            "refType": "FOLLOWS_FROM",
            "traceID": jaeger_trace_id(&link.trace_id),
            "spanID": link.span_id,
        }));
    }
    let mut tags: Vec<Value> = span
        .attributes
        .iter()
        .map(|(key, value)| tag(key, value))
        .collect();
    let mut derived: BTreeMap<&str, AttributeValue> = BTreeMap::new();
    if let Some(kind) = span_kind_name(span.kind) {
        derived.insert("span.kind", AttributeValue::String(kind.to_owned()));
    }
    match span.status_code {
        1 => {
            derived.insert("otel.status_code", AttributeValue::String("OK".to_owned()));
        }
        2 => {
            derived.insert(
                "otel.status_code",
                AttributeValue::String("ERROR".to_owned()),
            );
            derived.insert("error", AttributeValue::Bool(true));
        }
        _ => {}
    }
    if !span.status_message.is_empty() {
        derived.insert(
            "otel.status_description",
            AttributeValue::String(span.status_message.clone()),
        );
    }
    if !span.scope_name.is_empty() {
        derived.insert(
            "otel.scope.name",
            AttributeValue::String(span.scope_name.clone()),
        );
    }
    if !span.scope_version.is_empty() {
        derived.insert(
            "otel.scope.version",
            AttributeValue::String(span.scope_version.clone()),
        );
    }
    if !span.trace_state.is_empty() {
        derived.insert(
            "w3c.tracestate",
            AttributeValue::String(span.trace_state.clone()),
        );
    }
    tags.extend(derived.iter().map(|(key, value)| tag(key, value)));
    let logs: Vec<Value> = span
        .events
        .iter()
        .map(|event| {
            let mut fields = vec![tag("event", &AttributeValue::String(event.name.clone()))];
            fields.extend(event.attributes.iter().map(|(key, value)| tag(key, value)));
            json!({"timestamp": event.time_unix_nano / 1000, "fields": fields})
        })
        .collect();
    json!({
        "traceID": trace_id,
        "spanID": span.span_id,
        "operationName": span.name,
        "references": references,
        "flags": span.flags & 0xff,
        "startTime": span.start_time_unix_nano / 1000,
        "duration": span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) / 1000,
        "tags": tags,
        "logs": logs,
        "processID": process_id,
        "warnings": null,
    })
}
