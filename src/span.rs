//! The filter's own span, exported as OTLP/HTTP JSON (`ExportTraceServiceRequest` in the
//! proto3 JSON mapping, with hex trace and span ids as OTLP/HTTP requires).

use serde::Serialize;

use crate::enrich::{AttrValue, Attributes};
use crate::trace_context::hex_lower;

/// One finished span of the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: [u8; 8],
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Attributes,
}

/// OTLP `SPAN_KIND_CLIENT`: the gateway's hop calls the upstream service.
const SPAN_KIND_CLIENT: u8 = 3;

/// The export request body for a batch of spans.
pub fn encode_export(service_name: &str, spans: &[SpanRecord]) -> String {
    let request = ExportRequest {
        resource_spans: [ResourceSpans {
            resource: Resource {
                attributes: [KeyValue {
                    key: "service.name",
                    value: AnyValue::String(service_name),
                }],
            },
            scope_spans: [ScopeSpans {
                scope: Scope {
                    name: "consul-enricher",
                    version: env!("CARGO_PKG_VERSION"),
                },
                spans: spans.iter().map(Span::from).collect(),
            }],
        }],
    };
    // Cannot fail: every map key is a string and the output is memory.
    serde_json::to_string(&request).unwrap_or_default()
}

// The OTLP/JSON shape of `ExportTraceServiceRequest`, borrowing from the records. proto3's
// JSON mapping writes 64-bit integers as decimal strings and names fields in lowerCamelCase.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportRequest<'a> {
    resource_spans: [ResourceSpans<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans<'a> {
    resource: Resource<'a>,
    scope_spans: [ScopeSpans<'a>; 1],
}

#[derive(Serialize)]
struct Resource<'a> {
    attributes: [KeyValue<'a>; 1],
}

#[derive(Serialize)]
struct ScopeSpans<'a> {
    scope: Scope,
    spans: Vec<Span<'a>>,
}

#[derive(Serialize)]
struct Scope {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Span<'a> {
    trace_id: String,
    span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_span_id: Option<String>,
    name: &'a str,
    kind: u8,
    start_time_unix_nano: String,
    end_time_unix_nano: String,
    attributes: Vec<KeyValue<'a>>,
}

impl<'a> From<&'a SpanRecord> for Span<'a> {
    fn from(s: &'a SpanRecord) -> Span<'a> {
        Span {
            trace_id: hex_lower(&s.trace_id),
            span_id: hex_lower(&s.span_id),
            parent_span_id: (s.parent_span_id != [0; 8]).then(|| hex_lower(&s.parent_span_id)),
            name: &s.name,
            kind: SPAN_KIND_CLIENT,
            start_time_unix_nano: s.start_unix_nanos.to_string(),
            end_time_unix_nano: s.end_unix_nanos.max(s.start_unix_nanos).to_string(),
            attributes: s
                .attributes
                .iter()
                .map(|(key, value)| KeyValue {
                    key,
                    value: match value {
                        AttrValue::Str(text) => AnyValue::String(text),
                        AttrValue::Int(n) => AnyValue::Int(n.to_string()),
                        AttrValue::List(items) => AnyValue::Array(ArrayValue {
                            values: items.iter().map(|i| AnyValue::String(i)).collect(),
                        }),
                    },
                })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct KeyValue<'a> {
    key: &'a str,
    value: AnyValue<'a>,
}

/// Serialised as `{"stringValue": ...}`, `{"intValue": "..."}` or
/// `{"arrayValue": {"values": [...]}}` (OTLP/JSON `AnyValue`).
#[derive(Serialize)]
enum AnyValue<'a> {
    #[serde(rename = "stringValue")]
    String(&'a str),
    #[serde(rename = "intValue")]
    Int(String),
    #[serde(rename = "arrayValue")]
    Array(ArrayValue<'a>),
}

#[derive(Serialize)]
struct ArrayValue<'a> {
    values: Vec<AnyValue<'a>>,
}

/// Span ids for one VM: xorshift64* seeded from the VM's randomness and clock. Ids need to
/// be unique, not unpredictable.
pub struct SpanIds(u64);

impl SpanIds {
    pub fn new(seed: u64) -> SpanIds {
        SpanIds(seed | 1)
    }

    pub fn next_id(&mut self) -> [u8; 8] {
        loop {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let id = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn span() -> SpanRecord {
        SpanRecord {
            trace_id: [0x4b; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: [0xaa; 8],
            name: "consul-enricher echo".into(),
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_002_000_000,
            attributes: vec![
                ("service.peer.name".into(), AttrValue::Str("echo".into())),
                ("server.port".into(), AttrValue::Int(8080)),
                ("odd\"key".into(), AttrValue::Str("line\nbreak".into())),
            ],
        }
    }

    #[test]
    fn export_is_valid_otlp_json() {
        let body = encode_export("api-gateway", &[span(), span()]);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let rs = &v["resourceSpans"][0];
        assert_eq!(rs["resource"]["attributes"][0]["key"], "service.name");
        assert_eq!(
            rs["resource"]["attributes"][0]["value"]["stringValue"],
            "api-gateway"
        );
        let spans = rs["scopeSpans"][0]["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2);
        let s = &spans[0];
        assert_eq!(s["traceId"], "4b".repeat(16));
        assert_eq!(s["spanId"], "0102030405060708");
        assert_eq!(s["parentSpanId"], "aa".repeat(8));
        assert_eq!(s["kind"], 3);
        assert_eq!(s["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(s["endTimeUnixNano"], "1700000000002000000");
        assert_eq!(s["attributes"][1]["value"]["intValue"], "8080");
        assert_eq!(s["attributes"][2]["key"], "odd\"key");
        assert_eq!(s["attributes"][2]["value"]["stringValue"], "line\nbreak");
    }

    #[test]
    fn root_span_has_no_parent_and_end_never_precedes_start() {
        let mut s = span();
        s.parent_span_id = [0; 8];
        s.end_unix_nanos = 0;
        let v: serde_json::Value = serde_json::from_str(&encode_export("g", &[s])).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(s.get("parentSpanId").is_none());
        assert_eq!(s["endTimeUnixNano"], s["startTimeUnixNano"]);
    }

    #[test]
    fn empty_batch_is_valid() {
        let v: serde_json::Value = serde_json::from_str(&encode_export("g", &[])).unwrap();
        assert!(v["resourceSpans"][0]["scopeSpans"][0]["spans"]
            .as_array()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn span_ids_are_nonzero_and_distinct() {
        let mut ids = SpanIds::new(0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = ids.next_id();
            assert_ne!(id, [0; 8]);
            assert!(seen.insert(id));
        }
    }
}
