//! The parts of OTLP/JSON `TracesData` the report reads, as Jaeger's api_v3 writes them.
//!
//! Jaeger marshals traces with the collector's `ptrace.JSONMarshaler`
//! (jaegertracing/jaeger, `internal/jptrace/traces.go`), so the OTLP specification's "JSON
//! Protobuf Encoding" holds: lowerCamelCase keys, trace ids as 32 hex digits, 64-bit integers
//! (times, `intValue`) as decimal strings, empty fields left out. Every other field is
//! skipped while parsing, so a page costs only what is kept here.
//!
//! Not opentelemetry-proto's serde types: they keep whole spans, and their `AnyValue`
//! refuses an empty value (`{}`, what the marshaller writes for an empty attribute;
//! opentelemetry-proto 0.31, `src/proto.rs`, `deserialize_from_value`), which would fail a
//! whole page for one attribute.

use serde::{Deserialize, Deserializer};

/// The body of a successful `GET /api/v3/traces`: `TracesData` in grpc-gateway's
/// `{"result": ...}` envelope (jaegertracing/jaeger-idl, `proto/api_v3/query_service.proto`,
/// `GRPCGatewayWrapper`).
#[derive(Debug, Default, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub result: Option<TracesData>,
    #[serde(default)]
    pub error: Option<GatewayErrorDetails>,
}

/// `GRPCGatewayError.error` of the same proto: `{"error": {"httpCode": 404, "message": ...}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayErrorDetails {
    #[serde(default)]
    pub http_code: i32,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracesData {
    #[serde(default)]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpans {
    #[serde(default)]
    pub resource: Resource,
    #[serde(default)]
    pub scope_spans: Vec<ScopeSpans>,
}

impl ResourceSpans {
    /// The resource's `service.name`.
    pub fn service_name(&self) -> Option<&str> {
        string_attribute(&self.resource.attributes, "service.name")
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Resource {
    #[serde(default)]
    pub attributes: Vec<KeyValue>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ScopeSpans {
    #[serde(default)]
    pub spans: Vec<Span>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    #[serde(default)]
    pub trace_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "u64_from_string_or_number")]
    pub start_time_unix_nano: u64,
    #[serde(default, deserialize_with = "u64_from_string_or_number")]
    pub end_time_unix_nano: u64,
    #[serde(default)]
    pub attributes: Vec<KeyValue>,
}

impl Span {
    pub fn duration_ns(&self) -> u64 {
        self.end_time_unix_nano
            .saturating_sub(self.start_time_unix_nano)
    }

    /// An attribute's value as text, whatever its type.
    pub fn attribute(&self, key: &str) -> Option<String> {
        self.attributes
            .iter()
            .find(|attribute| attribute.key == key)
            .and_then(|attribute| attribute.value.text())
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct KeyValue {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: AnyValue,
}

/// The scalar kinds of OTLP's `AnyValue`; arrays, maps and bytes are skipped.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnyValue {
    #[serde(default)]
    pub string_value: Option<String>,
    #[serde(default)]
    pub bool_value: Option<bool>,
    #[serde(default, deserialize_with = "i64_from_string_or_number")]
    pub int_value: Option<i64>,
    #[serde(default)]
    pub double_value: Option<f64>,
}

impl AnyValue {
    fn text(&self) -> Option<String> {
        if let Some(text) = &self.string_value {
            return Some(text.clone());
        }
        self.int_value
            .map(|number| number.to_string())
            .or_else(|| self.bool_value.map(|flag| flag.to_string()))
            .or_else(|| self.double_value.map(|number| number.to_string()))
    }
}

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.string_value.as_deref())
}

/// A proto3 JSON 64-bit integer: a decimal string, or a number from lenient writers.
#[derive(Deserialize)]
#[serde(untagged)]
enum Integer<T> {
    Number(T),
    Text(String),
}

fn u64_from_string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    match Integer::<u64>::deserialize(deserializer)? {
        Integer::Number(number) => Ok(number),
        Integer::Text(text) => text.parse().map_err(serde::de::Error::custom),
    }
}

fn i64_from_string_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<i64>, D::Error> {
    match Integer::<i64>::deserialize(deserializer)? {
        Integer::Number(number) => Ok(Some(number)),
        Integer::Text(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jaegers_otlp_json() {
        let body = r#"{"result":{"resourceSpans":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"checkout-web"}}]},
            "scopeSpans":[{"scope":{},"spans":[{"traceId":"0af7651916cd43dd8448eb211c80319c",
            "spanId":"b7ad6b7169203331","name":"checkout.submit","kind":1,
            "startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000250000000",
            "attributes":[{"key":"ui.component","value":{"stringValue":"checkout-form"}},
            {"key":"server.port","value":{"intValue":"8080"}},
            {"key":"empty","value":{}},
            {"key":"tags","value":{"arrayValue":{"values":[{"stringValue":"a"}]}}}],
            "events":[{"name":"x"}],"status":{}}]}]}]}}"#;
        let envelope: Envelope = serde_json::from_str(body).expect("parses");
        let data = envelope.result.expect("result");
        let resource = &data.resource_spans[0];
        assert_eq!(resource.service_name(), Some("checkout-web"));
        let span = &resource.scope_spans[0].spans[0];
        assert_eq!(span.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(span.duration_ns(), 250_000_000);
        assert_eq!(
            span.attribute("ui.component").as_deref(),
            Some("checkout-form")
        );
        assert_eq!(span.attribute("server.port").as_deref(), Some("8080"));
        assert_eq!(span.attribute("empty"), None);
        assert_eq!(span.attribute("tags"), None);
    }

    #[test]
    fn reads_the_error_envelope() {
        let body = r#"{"error":{"httpCode":404,"message":"No traces found"}}"#;
        let envelope: Envelope = serde_json::from_str(body).expect("parses");
        let error = envelope.error.expect("error");
        assert_eq!(
            (error.http_code, error.message.as_str()),
            (404, "No traces found")
        );
        assert!(envelope.result.is_none());
    }
}
