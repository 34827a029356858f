//! `traceparent`: whatever parses writes back as a version-00 header that parses to the
//! same ids, and a version-00 header writes back exactly as it came (spaces trimmed).
#![no_main]

use consul_enricher::trace_context::traceparent::{TraceParent, FLAG_SAMPLED, TRACEPARENT_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let Ok(parsed) = TraceParent::parse(input) else {
        return;
    };
    assert_ne!(parsed.version, 0xff);
    assert_ne!(parsed.trace_id, [0; 16]);
    assert_ne!(parsed.parent_id, [0; 8]);

    let header = parsed.to_header();
    assert_eq!(header.len(), TRACEPARENT_LEN);
    assert!(header.starts_with("00-"));
    assert!(header
        .bytes()
        .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));

    let again = TraceParent::parse(&header).expect("our own header parses");
    assert_eq!(again.version, 0);
    assert_eq!(again.trace_id, parsed.trace_id);
    assert_eq!(again.parent_id, parsed.parent_id);
    assert_eq!(again.sampled(), parsed.sampled());
    if parsed.version == 0 {
        assert_eq!(again.flags, parsed.flags);
        assert_eq!(header, input.trim_matches([' ', '\t']));
    } else {
        assert_eq!(again.flags, parsed.flags & FLAG_SAMPLED);
    }

    let span_id = [0x5a; 8];
    let continued = TraceParent::parse(&parsed.with_parent(span_id).to_header())
        .expect("a continued header parses");
    assert_eq!(continued.trace_id, parsed.trace_id);
    assert_eq!(continued.parent_id, span_id);
});
