//! W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage: parsing, validation and
//! serialisation of the headers the filter reads and extends.
//!
//! Everything here works on untrusted header values: bad input is an `Err` with a short
//! reason (`as_str`), never a panic.

pub mod baggage;
pub mod traceparent;
pub mod tracestate;

pub use baggage::{Baggage, BaggageError};
pub use traceparent::{hex_lower, TraceParent, TraceParentError};
pub use tracestate::{TraceState, TraceStateError};

/// RFC 9110 `OWS` characters: space and horizontal tab.
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// `s` without leading and trailing `OWS`. By bytes: OWS is ASCII, so the first and the
/// byte after the last other byte are character boundaries.
fn trim_ows(s: &str) -> &str {
    let ows = |b: &u8| is_ows(char::from(*b));
    let bytes = s.as_bytes();
    let start = bytes.iter().position(|b| !ows(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !ows(b))
        .map_or(start, |at| at + 1);
    s.get(start..end).unwrap_or_default()
}
