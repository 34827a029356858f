//! Jaeger's query API v3 over HTTP (`/api/v3/...`) over the stored spans.
//!
//! Follows Jaeger v2.17.0 (the demo's Jaeger), each behaviour from the file named beside
//! it; paths are from jaegertracing/jaeger's
//! `cmd/jaeger/internal/extension/jaegerquery/internal/apiv3/http_gateway.go` (below
//! "the gateway") and jaegertracing/jaeger-idl's `proto/api_v3/query_service.proto` (below
//! "the proto"), and from Jaeger's in-memory store, `internal/storage/v2/memory/tenant.go`
//! and `memory.go` (below "the memory store").
//!
//! Not served: `GET /api/v3/traces/{id}`, `/api/v3/dependencies`, `query.attributes`,
//! `query.duration_min`/`_max` (v2.17.0's gateway ignores `query.attributes` too), and
//! time zones other than `Z` in timestamps.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Response, StatusCode};
use serde_json::{json, Map, Value};

use super::{AttributeValue, StoredSpan};
use crate::server::response;

/// The gateway's search depth when the query names none (`defaultSearchDepth` in Jaeger's
/// later `query_parser.go`; v2.17.0 left it to the store, which refuses zero).
const DEFAULT_SEARCH_DEPTH: usize = 100;

/// A query parameter by its name as v2.17.0 spells it or by the camelCase alias Jaeger
/// accepts since (`query_parser.go`'s `getQueryParam`), ignoring empty values as Go's
/// `url.Values.Get` checks do.
fn parameter<'a>(parameters: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| {
        parameters
            .iter()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    })
}

/// The gateway's `tryHandleError`: a `GRPCGatewayError` (the proto) written with Go's
/// `http.Error`, so plain-text content type, `nosniff` and a trailing newline;
/// `encoding/json` leaves out the zero `grpcCode` and empty `httpStatus`.
fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"error": {"httpCode": status.as_u16(), "message": message}});
    let mut reply = response(status, "text/plain; charset=utf-8", format!("{body}\n"));
    reply.headers_mut().insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    reply
}

/// The gateway's `marshalResponse` (gogo `jsonpb`, which leaves out empty repeated fields,
/// so no services is `{}`).
fn success(body: Value) -> Response<Full<Bytes>> {
    response(StatusCode::OK, "application/json", body.to_string())
}

/// The resource's `service.name` as stored: Jaeger's collector pipeline puts placeholders
/// for missing, non-string and empty names (`internal/jptrace/sanitizer/emptyservicename.go`).
fn service_name(span: &StoredSpan) -> &str {
    match span.resource.get("service.name") {
        None => "missing-service-name",
        Some(AttributeValue::String(name)) if name.is_empty() => "empty-service-name",
        Some(AttributeValue::String(name)) => name,
        Some(_) => "service-name-wrong-type",
    }
}

/// `GET /api/v3/services`: every service name (the memory store's `GetServices`; sorted
/// here, unordered there).
pub(super) fn services(spans: &[StoredSpan]) -> Response<Full<Bytes>> {
    let mut names: Vec<&str> = spans.iter().map(service_name).collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return success(json!({}));
    }
    success(json!({"services": names}))
}

/// Span kind names as the store records operations (`internal/jptrace/spankind.go`'s
/// `SpanKindToString`); the gateway's `getOperations` turns the unspecified kind into
/// `internal`.
fn span_kind_name(kind: i32) -> &'static str {
    match kind {
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "internal",
    }
}

/// `GET /api/v3/operations?service=<name>[&span_kind=<kind>]`: the service's distinct
/// (name, kind) pairs (the memory store's `GetOperations`); an unknown service has none.
pub(super) fn operations(
    spans: &[StoredSpan],
    parameters: &[(String, String)],
) -> Response<Full<Bytes>> {
    let service = parameter(parameters, &["service"]).unwrap_or_default();
    let kind = parameter(parameters, &["spanKind", "span_kind"]);
    let mut found: Vec<(&str, &str)> = spans
        .iter()
        .filter(|span| service_name(span) == service)
        .map(|span| (span.name.as_str(), span_kind_name(span.kind)))
        .filter(|(_, span_kind)| kind.is_none_or(|wanted| wanted == *span_kind))
        .collect();
    found.sort_unstable();
    found.dedup();
    if found.is_empty() {
        return success(json!({}));
    }
    let operations: Vec<Value> = found
        .iter()
        .map(|(name, kind)| json!({"name": name, "spanKind": kind}))
        .collect();
    success(json!({"operations": operations}))
}

/// An RFC 3339 timestamp as nanoseconds since the epoch (Go's `time.RFC3339Nano`, UTC only).
fn unix_nanos(text: &str) -> Result<u64, String> {
    let time = humantime::parse_rfc3339(text).map_err(|error| error.to_string())?;
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "before 1970".to_owned())?;
    u64::try_from(since_epoch.as_nanos()).map_err(|_| "out of range".to_owned())
}

/// What a `FindTraces` query asks for.
struct TraceQuery<'a> {
    service: Option<&'a str>,
    operation: Option<&'a str>,
    start_min: u64,
    start_max: u64,
    search_depth: usize,
}

/// The gateway's `parseFindTracesQuery`, with its error messages.
fn trace_query(parameters: &[(String, String)]) -> Result<TraceQuery<'_>, String> {
    let start_min = parameter(parameters, &["query.start_time_min", "query.startTimeMin"]);
    let start_max = parameter(parameters, &["query.start_time_max", "query.startTimeMax"]);
    let (Some(start_min), Some(start_max)) = (start_min, start_max) else {
        return Err("query.start_time_min and query.start_time_max are required".to_owned());
    };
    let time = |text: &str, name: &str| {
        unix_nanos(text).map_err(|error| format!("malformed parameter {name}: {error}"))
    };
    let search_depth = match parameter(
        parameters,
        &[
            "query.num_traces",
            "query.search_depth",
            "query.searchDepth",
        ],
    ) {
        None => DEFAULT_SEARCH_DEPTH,
        Some(text) => text
            .parse::<i64>()
            .map_err(|error| format!("malformed parameter query.num_traces: {error}"))?
            .try_into()
            .unwrap_or(0),
    };
    Ok(TraceQuery {
        service: parameter(parameters, &["query.service_name", "query.serviceName"]),
        operation: parameter(parameters, &["query.operation_name", "query.operationName"]),
        start_min: time(start_min, "query.start_time_min")?,
        start_max: time(start_max, "query.start_time_max")?,
        search_depth,
    })
}

impl TraceQuery<'_> {
    /// The memory store's `validSpan` for the fields served: both time bounds inclusive.
    fn matches(&self, span: &StoredSpan) -> bool {
        self.service.is_none_or(|name| service_name(span) == name)
            && self.operation.is_none_or(|name| span.name == name)
            && (self.start_min..=self.start_max).contains(&span.start_time_unix_nano)
    }
}

/// `GET /api/v3/traces?query.service_name=...`: whole traces with at least one matching
/// span, the trace first received last first (the memory store walks its ring back from
/// the newest trace id), at most `query.num_traces` of them (the store refuses zero); none is
/// a 404 "No traces found" (the gateway's `returnTraces`), and the traces are one
/// `TracesData` in a `{"result": ...}` envelope (the proto's `GRPCGatewayWrapper`).
pub(super) fn find_traces(
    spans: &[StoredSpan],
    parameters: &[(String, String)],
) -> Response<Full<Bytes>> {
    let query = match trace_query(parameters) {
        Ok(query) => query,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if query.search_depth == 0 {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "search depth must be greater than 0 and less than max traces",
        );
    }
    let mut trace_ids: Vec<&str> = Vec::new();
    for span in spans {
        if !trace_ids.contains(&span.trace_id.as_str()) {
            trace_ids.push(&span.trace_id);
        }
    }
    let found: Vec<&str> = trace_ids
        .into_iter()
        .rev()
        .filter(|id| {
            spans
                .iter()
                .any(|span| span.trace_id == *id && query.matches(span))
        })
        .take(query.search_depth)
        .collect();
    if found.is_empty() {
        return error(StatusCode::NOT_FOUND, "No traces found");
    }
    let resource_spans: Vec<Value> = found
        .iter()
        .flat_map(|id| {
            let members: Vec<&StoredSpan> =
                spans.iter().filter(|span| span.trace_id == *id).collect();
            resource_spans_json(&members)
        })
        .collect();
    success(json!({"result": {"resourceSpans": resource_spans}}))
}

/// A scope's first span (which names it) and its spans as JSON.
type ScopeGroup<'a> = (&'a StoredSpan, Vec<Value>);
/// A resource's first span (which names it) and its scopes.
type ResourceGroup<'a> = (&'a StoredSpan, Vec<ScopeGroup<'a>>);

/// A trace's spans as OTLP `ResourceSpans`, one per resource and within it one
/// `ScopeSpans` per scope, in arrival order (as exported, then appended per trace by the
/// memory store's `storeTraces`).
fn resource_spans_json(spans: &[&StoredSpan]) -> Vec<Value> {
    let mut resources: Vec<ResourceGroup> = Vec::new();
    for span in spans {
        let position = match resources
            .iter()
            .position(|(first, _)| first.resource == span.resource)
        {
            Some(position) => position,
            None => {
                resources.push((span, Vec::new()));
                resources.len() - 1
            }
        };
        let scopes = &mut resources[position].1;
        let same_scope = |(first, _): &ScopeGroup| {
            first.scope_name == span.scope_name && first.scope_version == span.scope_version
        };
        match scopes.iter_mut().find(|scope| same_scope(scope)) {
            Some((_, members)) => members.push(span_json(span)),
            None => scopes.push((span, vec![span_json(span)])),
        }
    }
    resources
        .into_iter()
        .map(|(first, scopes)| {
            let mut attributes: Vec<Value> = vec![key_value(
                "service.name",
                &AttributeValue::String(service_name(first).to_owned()),
            )];
            attributes.extend(
                first
                    .resource
                    .iter()
                    .filter(|(key, _)| key.as_str() != "service.name")
                    .map(|(key, value)| key_value(key, value)),
            );
            let scope_spans: Vec<Value> = scopes
                .into_iter()
                .map(|(first, members)| {
                    let mut scope = Map::new();
                    if !first.scope_name.is_empty() {
                        scope.insert("name".into(), json!(first.scope_name));
                    }
                    if !first.scope_version.is_empty() {
                        scope.insert("version".into(), json!(first.scope_version));
                    }
                    json!({"scope": scope, "spans": members})
                })
                .collect();
            json!({"resource": {"attributes": attributes}, "scopeSpans": scope_spans})
        })
        .collect()
}

/// OTLP/JSON as the collector's `ptrace.JSONMarshaler` writes it (OTLP specification, "JSON
/// Protobuf Encoding"): hex ids, 64-bit integers as decimal strings, enums as numbers,
/// empty fields left out.
fn span_json(span: &StoredSpan) -> Value {
    let mut object = Map::new();
    object.insert("traceId".into(), json!(span.trace_id));
    object.insert("spanId".into(), json!(span.span_id));
    if !span.trace_state.is_empty() {
        object.insert("traceState".into(), json!(span.trace_state));
    }
    if let Some(parent) = &span.parent_span_id {
        object.insert("parentSpanId".into(), json!(parent));
    }
    if span.flags != 0 {
        object.insert("flags".into(), json!(span.flags));
    }
    object.insert("name".into(), json!(span.name));
    if span.kind != 0 {
        object.insert("kind".into(), json!(span.kind));
    }
    object.insert(
        "startTimeUnixNano".into(),
        json!(span.start_time_unix_nano.to_string()),
    );
    object.insert(
        "endTimeUnixNano".into(),
        json!(span.end_time_unix_nano.to_string()),
    );
    if !span.attributes.is_empty() {
        object.insert("attributes".into(), attributes_json(&span.attributes));
    }
    if !span.events.is_empty() {
        let events: Vec<Value> = span
            .events
            .iter()
            .map(|event| {
                json!({
                    "timeUnixNano": event.time_unix_nano.to_string(),
                    "name": event.name,
                    "attributes": attributes_json(&event.attributes),
                })
            })
            .collect();
        object.insert("events".into(), json!(events));
    }
    if !span.links.is_empty() {
        let links: Vec<Value> = span
            .links
            .iter()
            .map(|link| {
                json!({
                    "traceId": link.trace_id,
                    "spanId": link.span_id,
                    "attributes": attributes_json(&link.attributes),
                })
            })
            .collect();
        object.insert("links".into(), json!(links));
    }
    let mut status = Map::new();
    if !span.status_message.is_empty() {
        status.insert("message".into(), json!(span.status_message));
    }
    if span.status_code != 0 {
        status.insert("code".into(), json!(span.status_code));
    }
    object.insert("status".into(), Value::Object(status));
    Value::Object(object)
}

fn attributes_json(attributes: &BTreeMap<String, AttributeValue>) -> Value {
    Value::Array(
        attributes
            .iter()
            .map(|(key, value)| key_value(key, value))
            .collect(),
    )
}

fn key_value(key: &str, value: &AttributeValue) -> Value {
    json!({"key": key, "value": any_value(value)})
}

fn any_value(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::Empty => json!({}),
        AttributeValue::String(text) => json!({"stringValue": text}),
        AttributeValue::Bool(flag) => json!({"boolValue": flag}),
        AttributeValue::Int(number) => json!({"intValue": number.to_string()}),
        AttributeValue::Double(number) => json!({"doubleValue": number}),
        AttributeValue::Bytes(bytes) => {
            json!({"bytesValue": base64::engine::general_purpose::STANDARD.encode(bytes)})
        }
        AttributeValue::Array(items) => {
            let values: Vec<Value> = items.iter().map(any_value).collect();
            json!({"arrayValue": {"values": values}})
        }
        AttributeValue::Map(map) => {
            let values: Vec<Value> = map.iter().map(|(k, v)| key_value(k, v)).collect();
            json!({"kvlistValue": {"values": values}})
        }
    }
}
