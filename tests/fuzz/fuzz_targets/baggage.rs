//! `baggage`: whatever parses writes back to a header that parses equal; appending our
//! member keeps every caller member byte for byte and in order, stays within 64 members
//! and 8192 bytes, and reads back as the value we appended.
//!
//! Stripping the filter's namespace from any header (valid or not) leaves no member whose key
//! starts with `consul.` in any case, and keeps every other non-empty member.
//!
//! Input: the header, our key and our value, separated by 0xFF.
#![no_main]

use consul_enricher::trace_context::baggage::{strip_members, Baggage, MAX_BYTES, MAX_MEMBERS};
use consul_enricher_fuzz::text_fields;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some([header, key, value]) = text_fields(input) else {
        return;
    };
    check_stripping(header);
    let Ok(mut baggage) = Baggage::parse(header) else {
        return;
    };
    let written = baggage.as_header().to_string();
    assert_eq!(written.len(), baggage.header_len());
    assert_eq!(Baggage::parse(&written), Ok(baggage.clone()));

    let before = baggage.clone();
    if baggage.append(key, value).is_err() {
        assert_eq!(baggage, before, "a refused append changes nothing");
        return;
    }
    assert_eq!(baggage.len(), before.len() + 1);
    assert!(baggage.len() <= MAX_MEMBERS);
    let after = baggage.as_header().to_string();
    assert!(after.len() <= MAX_BYTES, "{} bytes", after.len());
    let ours = if written.is_empty() {
        after.as_str()
    } else {
        let rest = after
            .strip_prefix(written.as_str())
            .expect("caller members come first, unchanged");
        rest.strip_prefix(',').expect("then a separator")
    };
    let (our_key, our_value) = ours.split_once('=').expect("our member has '='");
    assert_eq!(our_key, key);
    assert!(
        our_value
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b",;\\\"".contains(&b)),
        "value not made of baggage-octets: {our_value:?}"
    );
    assert_eq!(baggage.get(key).as_deref(), Some(value));
    let reparsed = Baggage::parse(&after).expect("the header we write parses");
    assert_eq!(reparsed, baggage);
});

/// The trust boundary: no incoming `consul.*` member survives, and nothing else is lost.
fn check_stripping(header: &str) {
    let is_ours = |member: &str| {
        let key = member.split(['=', ';']).next().unwrap_or_default();
        let key = key.trim_matches([' ', '\t']);
        key.get(..7)
            .is_some_and(|k| k.eq_ignore_ascii_case("consul."))
    };
    let (kept, removed) = strip_members(header, "consul.");
    assert!(kept.split(',').all(|m| !is_ours(m)), "{kept:?}");
    let ours = header.split(',').filter(|m| is_ours(m)).count();
    assert_eq!(removed, ours);
    let others = header
        .split(',')
        .filter(|m| !is_ours(m) && !m.trim_matches([' ', '\t']).is_empty())
        .count();
    assert_eq!(kept.split(',').filter(|m| !m.is_empty()).count(), others);
}
