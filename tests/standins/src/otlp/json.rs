//! Decoder of OTLP/HTTP JSON trace exports into the protobuf message types.
//!
//! Follows the "JSON Protobuf Encoding" section of the OTLP specification
//! (open-telemetry/opentelemetry-proto, docs/specification.md) on top of the proto3 JSON
//! mapping (protobuf.dev, "JSON Mapping"):
//! - keys are lowerCamelCase field names; the original snake_case names are not valid keys
//!   and, like every unknown key, are ignored;
//! - `traceId` and `spanId` (also `parentSpanId` and in links) are case-insensitive hex, not
//!   base64; other `bytes` fields (`bytesValue`) are base64;
//! - enum fields (`kind`, `status.code`) are integers only; enum names are refused;
//! - 64-bit integers are decimal strings or numbers; `null` means the field's default.

use base64::Engine;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Map, Value};

type Result<T> = std::result::Result<T, String>;

pub(crate) fn decode(body: &[u8]) -> Result<ExportTraceServiceRequest> {
    let value: Value =
        serde_json::from_slice(body).map_err(|error| format!("invalid JSON: {error}"))?;
    let object = as_object(&value, "ExportTraceServiceRequest")?;
    Ok(ExportTraceServiceRequest {
        resource_spans: list(object, "resourceSpans", resource_spans)?,
    })
}

fn as_object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>> {
    value
        .as_object()
        .ok_or_else(|| format!("{what} must be a JSON object, got {value}"))
}

/// A present, non-null field.
fn get<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    object.get(key).filter(|value| !value.is_null())
}

fn list<T>(
    object: &Map<String, Value>,
    key: &str,
    decode_item: impl Fn(&Value) -> Result<T>,
) -> Result<Vec<T>> {
    match get(object, key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(position, item)| {
                decode_item(item).map_err(|e| format!("{key}[{position}]: {e}"))
            })
            .collect(),
        Some(other) => Err(format!("{key} must be an array, got {other}")),
    }
}

fn message<T>(
    object: &Map<String, Value>,
    key: &str,
    decode_message: impl Fn(&Value) -> Result<T>,
) -> Result<Option<T>> {
    get(object, key)
        .map(|value| decode_message(value).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

fn string(object: &Map<String, Value>, key: &str) -> Result<String> {
    match get(object, key) {
        None => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(format!("{key} must be a string, got {other}")),
    }
}

fn unsigned(object: &Map<String, Value>, key: &str) -> Result<u64> {
    match get(object, key) {
        None => Ok(0),
        Some(Value::Number(number)) => number
            .as_u64()
            .ok_or_else(|| format!("{key} must be an unsigned integer, got {number}")),
        Some(Value::String(text)) => text
            .parse()
            .map_err(|_| format!("{key} must be an unsigned integer, got {text:?}")),
        Some(other) => Err(format!("{key} must be an integer, got {other}")),
    }
}

fn small_unsigned(object: &Map<String, Value>, key: &str) -> Result<u32> {
    let value = unsigned(object, key)?;
    u32::try_from(value).map_err(|_| format!("{key} is out of range: {value}"))
}

fn signed(value: &Value, key: &str) -> Result<i64> {
    match value {
        Value::Number(number) => number
            .as_i64()
            .ok_or_else(|| format!("{key} must be an integer, got {number}")),
        Value::String(text) => text
            .parse()
            .map_err(|_| format!("{key} must be an integer, got {text:?}")),
        other => Err(format!("{key} must be an integer, got {other}")),
    }
}

fn enumeration(object: &Map<String, Value>, key: &str) -> Result<i32> {
    match get(object, key) {
        None => Ok(0),
        Some(Value::Number(number)) => number
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| format!("{key} must be an integer enum value, got {number}")),
        Some(other) => Err(format!(
            "{key} must be an integer enum value (OTLP/JSON forbids enum names), got {other}"
        )),
    }
}

/// An id of `length` bytes as case-insensitive hex; absent or empty gives no bytes.
fn hex_id(object: &Map<String, Value>, key: &str, length: usize) -> Result<Vec<u8>> {
    let text = string(object, key)?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if text.len() != length * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{key} must be {} hex digits (OTLP/JSON ids are hex, not base64), got {text:?}",
            length * 2
        ));
    }
    (0..length)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn resource_spans(value: &Value) -> Result<ResourceSpans> {
    let object = as_object(value, "ResourceSpans")?;
    Ok(ResourceSpans {
        resource: message(object, "resource", resource)?,
        scope_spans: list(object, "scopeSpans", scope_spans)?,
        schema_url: string(object, "schemaUrl")?,
    })
}

fn resource(value: &Value) -> Result<Resource> {
    let object = as_object(value, "Resource")?;
    Ok(Resource {
        attributes: list(object, "attributes", key_value)?,
        dropped_attributes_count: small_unsigned(object, "droppedAttributesCount")?,
        entity_refs: Vec::new(),
    })
}

fn scope_spans(value: &Value) -> Result<ScopeSpans> {
    let object = as_object(value, "ScopeSpans")?;
    Ok(ScopeSpans {
        scope: message(object, "scope", scope)?,
        spans: list(object, "spans", span)?,
        schema_url: string(object, "schemaUrl")?,
    })
}

fn scope(value: &Value) -> Result<InstrumentationScope> {
    let object = as_object(value, "InstrumentationScope")?;
    Ok(InstrumentationScope {
        name: string(object, "name")?,
        version: string(object, "version")?,
        attributes: list(object, "attributes", key_value)?,
        dropped_attributes_count: small_unsigned(object, "droppedAttributesCount")?,
    })
}

fn span(value: &Value) -> Result<Span> {
    let object = as_object(value, "Span")?;
    Ok(Span {
        trace_id: hex_id(object, "traceId", 16)?,
        span_id: hex_id(object, "spanId", 8)?,
        trace_state: string(object, "traceState")?,
        parent_span_id: hex_id(object, "parentSpanId", 8)?,
        flags: small_unsigned(object, "flags")?,
        name: string(object, "name")?,
        kind: enumeration(object, "kind")?,
        start_time_unix_nano: unsigned(object, "startTimeUnixNano")?,
        end_time_unix_nano: unsigned(object, "endTimeUnixNano")?,
        attributes: list(object, "attributes", key_value)?,
        dropped_attributes_count: small_unsigned(object, "droppedAttributesCount")?,
        events: list(object, "events", event)?,
        dropped_events_count: small_unsigned(object, "droppedEventsCount")?,
        links: list(object, "links", link)?,
        dropped_links_count: small_unsigned(object, "droppedLinksCount")?,
        status: message(object, "status", status)?,
    })
}

fn event(value: &Value) -> Result<span::Event> {
    let object = as_object(value, "Event")?;
    Ok(span::Event {
        time_unix_nano: unsigned(object, "timeUnixNano")?,
        name: string(object, "name")?,
        attributes: list(object, "attributes", key_value)?,
        dropped_attributes_count: small_unsigned(object, "droppedAttributesCount")?,
    })
}

fn link(value: &Value) -> Result<span::Link> {
    let object = as_object(value, "Link")?;
    Ok(span::Link {
        trace_id: hex_id(object, "traceId", 16)?,
        span_id: hex_id(object, "spanId", 8)?,
        trace_state: string(object, "traceState")?,
        attributes: list(object, "attributes", key_value)?,
        dropped_attributes_count: small_unsigned(object, "droppedAttributesCount")?,
        flags: small_unsigned(object, "flags")?,
    })
}

fn status(value: &Value) -> Result<Status> {
    let object = as_object(value, "Status")?;
    Ok(Status {
        message: string(object, "message")?,
        code: enumeration(object, "code")?,
    })
}

fn key_value(value: &Value) -> Result<KeyValue> {
    let object = as_object(value, "KeyValue")?;
    Ok(KeyValue {
        key: string(object, "key")?,
        value: message(object, "value", any_value)?,
    })
}

fn any_value(value: &Value) -> Result<AnyValue> {
    let object = as_object(value, "AnyValue")?;
    let present: Vec<&String> = object
        .iter()
        .filter(|(key, value)| {
            !value.is_null()
                && matches!(
                    key.as_str(),
                    "stringValue"
                        | "boolValue"
                        | "intValue"
                        | "doubleValue"
                        | "arrayValue"
                        | "kvlistValue"
                        | "bytesValue"
                )
        })
        .map(|(key, _)| key)
        .collect();
    let [key] = present.as_slice() else {
        if present.is_empty() {
            return Ok(AnyValue { value: None });
        }
        return Err(format!("AnyValue must hold one value, got {present:?}"));
    };
    let field = &object[key.as_str()];
    let decoded = match key.as_str() {
        "stringValue" => any_value::Value::StringValue(
            field
                .as_str()
                .ok_or_else(|| format!("stringValue must be a string, got {field}"))?
                .to_owned(),
        ),
        "boolValue" => any_value::Value::BoolValue(
            field
                .as_bool()
                .ok_or_else(|| format!("boolValue must be a boolean, got {field}"))?,
        ),
        "intValue" => any_value::Value::IntValue(signed(field, "intValue")?),
        "doubleValue" => any_value::Value::DoubleValue(double(field)?),
        "arrayValue" => any_value::Value::ArrayValue(ArrayValue {
            values: list(as_object(field, "ArrayValue")?, "values", any_value)?,
        }),
        "kvlistValue" => any_value::Value::KvlistValue(KeyValueList {
            values: list(as_object(field, "KeyValueList")?, "values", key_value)?,
        }),
        _ => {
            let text = field
                .as_str()
                .ok_or_else(|| format!("bytesValue must be a base64 string, got {field}"))?;
            any_value::Value::BytesValue(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|error| format!("bytesValue is not base64: {error}"))?,
            )
        }
    };
    Ok(AnyValue {
        value: Some(decoded),
    })
}

fn double(value: &Value) -> Result<f64> {
    match value {
        Value::Number(number) => number
            .as_f64()
            .ok_or_else(|| format!("doubleValue is not a double: {number}")),
        Value::String(text) => match text.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            other => other
                .parse()
                .map_err(|_| format!("doubleValue is not a double: {other:?}")),
        },
        other => Err(format!("doubleValue must be a number, got {other}")),
    }
}
