//! The filter's own span, exported as OTLP/HTTP JSON (`ExportTraceServiceRequest` in the
//! proto3 JSON mapping, with hex trace and span ids as OTLP/HTTP requires).

use crate::enrich::{json_string, AttrValue, Attributes};
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
    let mut out = String::with_capacity(256 + spans.len() * 768);
    out.push_str(r#"{"resourceSpans":[{"resource":{"attributes":["#);
    push_attr(
        &mut out,
        "service.name",
        &AttrValue::Str(service_name.to_string()),
    );
    out.push_str(r#"]},"scopeSpans":[{"scope":{"name":"consul-enricher","version":""#);
    out.push_str(env!("CARGO_PKG_VERSION"));
    out.push_str(r#""},"spans":["#);
    for (n, span) in spans.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        push_span(&mut out, span);
    }
    out.push_str("]}]}]}");
    out
}

fn push_span(out: &mut String, s: &SpanRecord) {
    out.push_str(r#"{"traceId":""#);
    out.push_str(&hex_lower(&s.trace_id));
    out.push_str(r#"","spanId":""#);
    out.push_str(&hex_lower(&s.span_id));
    if s.parent_span_id != [0; 8] {
        out.push_str(r#"","parentSpanId":""#);
        out.push_str(&hex_lower(&s.parent_span_id));
    }
    out.push_str(r#"","name":"#);
    json_string(&s.name, out);
    out.push_str(r#","kind":"#);
    out.push(char::from(b'0' + SPAN_KIND_CLIENT));
    out.push_str(r#","startTimeUnixNano":""#);
    out.push_str(&s.start_unix_nanos.to_string());
    out.push_str(r#"","endTimeUnixNano":""#);
    out.push_str(&s.end_unix_nanos.max(s.start_unix_nanos).to_string());
    out.push_str(r#"","attributes":["#);
    for (n, (k, v)) in s.attributes.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        push_attr(out, k, v);
    }
    out.push_str("]}");
}

fn push_attr(out: &mut String, key: &str, value: &AttrValue) {
    out.push_str(r#"{"key":"#);
    json_string(key, out);
    out.push_str(r#","value":{"#);
    match value {
        AttrValue::Str(s) => {
            out.push_str(r#""stringValue":"#);
            json_string(s, out);
        }
        // proto3 JSON encodes int64 as a decimal string.
        AttrValue::Int(i) => {
            out.push_str(r#""intValue":""#);
            out.push_str(&i.to_string());
            out.push('"');
        }
    }
    out.push_str("}}");
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
