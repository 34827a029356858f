//! Checks shared by the fuzz targets: the properties every value the filter writes must
//! have, and a JSON writer so parsed documents can be written back and read again.

use consul_enricher::enrich::json_string;
use consul_enricher::header_value::is_token;
use consul_enricher::json::Json;

/// Panics unless `value` could go into a header value, a baggage member or an attribute:
/// non-empty printable ASCII (no CR, LF, NUL, other control characters or DEL), no
/// surrounding spaces, at most `max_len` bytes.
pub fn assert_clean_value(what: &str, value: &str, max_len: usize) {
    assert!(!value.is_empty(), "{what}: empty value");
    assert!(
        value.len() <= max_len,
        "{what}: {} bytes, bound {max_len}: {value:?}",
        value.len()
    );
    assert!(
        value.bytes().all(|b| (0x20..0x7f).contains(&b)),
        "{what}: not printable ASCII: {value:?}"
    );
    assert!(
        !value.starts_with(' ') && !value.ends_with(' '),
        "{what}: surrounding space: {value:?}"
    );
}

/// Panics unless `name` is an RFC 9110 token (a valid header name or baggage key).
pub fn assert_token(what: &str, name: &str) {
    assert!(is_token(name), "{what}: not a token: {name:?}");
}

/// Writes `value` as JSON text that [`consul_enricher::json::parse`] reads back equal.
pub fn write_json(value: &Json, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(text) => out.push_str(text),
        Json::String(s) => json_string(s, out),
        Json::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Json::Object(members) => {
            out.push('{');
            for (n, (key, item)) in members.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                json_string(key, out);
                out.push(':');
                write_json(item, out);
            }
            out.push('}');
        }
    }
}

/// Byte that separates the text fields of one fuzz input: it never occurs in UTF-8, so
/// every field can still hold any text.
pub const FIELD_SEPARATOR: u8 = 0xff;

/// Splits `input` into exactly `N` UTF-8 fields at [`FIELD_SEPARATOR`]; None when the
/// count or the encoding is wrong.
pub fn text_fields<const N: usize>(input: &[u8]) -> Option<[&str; N]> {
    let mut parts = input.split(|&b| b == FIELD_SEPARATOR);
    let mut fields = [""; N];
    for field in &mut fields {
        *field = std::str::from_utf8(parts.next()?).ok()?;
    }
    parts.next().is_none().then_some(fields)
}
