//! `tracestate`: whatever parses has at most 32 valid members and writes back to a header
//! that parses equal; `set` puts our member left-most, keeps the others in order and never
//! holds more than 32.
//!
//! Input: the header, our key and our value, separated by 0xFF.
#![no_main]

use consul_enricher::trace_context::tracestate::{
    is_valid_key, is_valid_value, TraceState, MAX_MEMBERS,
};
use consul_enricher_fuzz::text_fields;
use libfuzzer_sys::fuzz_target;

/// The header's members as `key=value` texts, in order.
fn members(header: &str) -> Vec<&str> {
    header.split(',').filter(|m| !m.is_empty()).collect()
}

fuzz_target!(|input: &[u8]| {
    let Some([header, key, value]) = text_fields(input) else {
        return;
    };
    let Ok(mut state) = TraceState::parse(header) else {
        return;
    };
    assert!(state.len() <= MAX_MEMBERS);
    let written = state.to_header();
    let written_members = members(&written);
    assert_eq!(written_members.len(), state.len());
    for member in &written_members {
        let (k, v) = member.split_once('=').expect("a member has '='");
        assert!(is_valid_key(k), "{k:?}");
        assert!(is_valid_value(v), "{v:?}");
        assert_eq!(state.get(k), Some(v));
    }
    assert_eq!(TraceState::parse(&written), Ok(state.clone()));

    let before = state.clone();
    if state.set(key, value).is_err() {
        assert_eq!(state, before, "a refused set changes nothing");
        return;
    }
    assert!(state.len() <= MAX_MEMBERS);
    assert_eq!(state.get(key), Some(value));
    let after = state.to_header();
    let after_members = members(&after);
    let ours = format!("{key}={value}");
    assert_eq!(after_members.first().copied(), Some(ours.as_str()));
    let others: Vec<&str> = written_members
        .iter()
        .copied()
        .filter(|m| m.split_once('=').map(|(k, _)| k) != Some(key))
        .take(MAX_MEMBERS - 1)
        .collect();
    assert_eq!(&after_members[1..], others.as_slice());
    assert_eq!(TraceState::parse(&after), Ok(state));
});
