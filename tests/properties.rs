//! Properties of the trace-context headers the filter extends: what we write parses back
//! to what we had, our members never drop or reorder the caller's, and `tracestate` keeps
//! our member left-most within 32 members.

use consul_enricher::trace_context::baggage::{self, Baggage};
use consul_enricher::trace_context::tracestate::{self, TraceState};
use proptest::collection::vec;
use proptest::prelude::*;

/// RFC 9110 token: a baggage key.
const TOKEN: &str = "[!#$%&'*+.^_`|~0-9a-zA-Z-]{1,12}";
/// W3C baggage-octet: printable ASCII but space, '"', ',', ';' and '\'.
const BAGGAGE_VALUE: &str = "[\\x21\\x23-\\x2b\\x2d-\\x3a\\x3c-\\x5b\\x5d-\\x7e]{0,12}";
/// RFC 9110 OWS.
const OWS: &str = "[ \t]{0,2}";

/// A caller's baggage member, written as a client may: optional properties and spaces
/// around `=` and `;` (spaces around the whole member belong to the list, not to it).
fn caller_member() -> impl Strategy<Value = String> {
    let property = (TOKEN, prop::option::of(BAGGAGE_VALUE), OWS).prop_map(|(k, v, ows)| match v {
        Some(v) => format!("{ows};{ows}{k}{ows}={ows}{v}"),
        None => format!(";{ows}{k}"),
    });
    (TOKEN, OWS, BAGGAGE_VALUE, vec(property, 0..3)).prop_map(|(k, ows, v, props)| {
        let member = format!("{k}{ows}={ows}{v}{}", props.concat());
        member.trim_end_matches([' ', '\t']).to_string()
    })
}

/// Members joined by `,` with optional whitespace around each, as a header may arrive.
fn with_ows(members: &[String], spaces: &[(String, String)]) -> String {
    members
        .iter()
        .zip(spaces.iter().cycle())
        .map(|(m, (before, after))| format!("{before}{m}{after}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Our members: distinct token keys, any text as value.
fn our_members() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((TOKEN, any::<String>()), 0..8).prop_map(|members| {
        let mut distinct: Vec<(String, String)> = Vec::new();
        for (k, v) in members {
            if !distinct.iter().any(|(key, _)| *key == k) {
                distinct.push((k, v));
            }
        }
        distinct
    })
}

fn simple_key() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_*/-]{0,10}"
}

fn tracestate_key() -> impl Strategy<Value = String> {
    prop_oneof![
        simple_key(),
        "[a-z0-9][a-z0-9_*/-]{0,8}@[a-z][a-z0-9_*/-]{0,8}",
    ]
}

/// A tracestate value: printable ASCII but ',' and '=', not ending in a space.
fn tracestate_value() -> impl Strategy<Value = String> {
    "[\\x20-\\x2b\\x2d-\\x3c\\x3e-\\x7e]{0,12}[\\x21-\\x2b\\x2d-\\x3c\\x3e-\\x7e]"
}

/// Up to `max` tracestate members with distinct keys, as `key=value` texts.
fn tracestate_members(max: usize) -> impl Strategy<Value = Vec<String>> {
    vec((tracestate_key(), tracestate_value()), 0..=max).prop_map(|members| {
        let mut keys: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for (k, v) in members {
            if !keys.contains(&k) {
                out.push(format!("{k}={v}"));
                keys.push(k);
            }
        }
        out
    })
}

fn key_of(member: &str) -> &str {
    member.split_once('=').map_or(member, |(k, _)| k)
}

proptest! {
    #[test]
    fn baggage_written_parses_back_to_the_same(
        members in vec(caller_member(), 0..10),
        spaces in vec((OWS, OWS), 1..4),
    ) {
        let parsed = Baggage::parse(&with_ows(&members, &spaces)).expect("valid caller baggage");
        prop_assert_eq!(parsed.len(), members.len());
        let written = parsed.as_header().to_string();
        prop_assert_eq!(&written, &members.join(","));
        prop_assert_eq!(Baggage::parse(&written), Ok(parsed));
    }

    #[test]
    fn our_baggage_members_parse_back_to_their_values(ours in our_members()) {
        let mut baggage = Baggage::default();
        for (k, v) in &ours {
            prop_assert_eq!(baggage.append(k, v), Ok(()));
        }
        let reparsed = Baggage::parse(baggage.as_header()).expect("our header parses");
        prop_assert_eq!(&reparsed, &baggage);
        for (k, v) in &ours {
            prop_assert_eq!(reparsed.get(k), Some(v.clone()));
        }
    }

    #[test]
    fn appending_keeps_every_caller_member_byte_for_byte_and_in_order(
        caller in vec(caller_member(), 0..baggage::MAX_MEMBERS + 4),
        spaces in vec((OWS, OWS), 1..4),
        ours in our_members(),
    ) {
        let mut baggage = Baggage::parse(&with_ows(&caller, &spaces)).expect("valid caller baggage");
        let mut appended = 0;
        for (k, v) in &ours {
            let before = baggage.clone();
            match baggage.append(k, v) {
                Ok(()) => appended += 1,
                Err(_) => prop_assert_eq!(&baggage, &before),
            }
        }
        let header = baggage.as_header();
        let written: Vec<&str> = if header.is_empty() { Vec::new() } else { header.split(',').collect() };
        prop_assert_eq!(written.len(), caller.len() + appended);
        prop_assert_eq!(&written[..caller.len()], caller.as_slice());
        if appended > 0 {
            prop_assert!(baggage.len() <= baggage::MAX_MEMBERS);
            prop_assert!(header.len() <= baggage::MAX_BYTES);
        }
    }

    #[test]
    fn tracestate_written_parses_back_to_the_same(
        members in tracestate_members(tracestate::MAX_MEMBERS),
        spaces in vec((OWS, OWS), 1..4),
    ) {
        let parsed = TraceState::parse(&with_ows(&members, &spaces)).expect("valid tracestate");
        let written = parsed.to_header();
        prop_assert_eq!(&written, &members.join(","));
        prop_assert_eq!(TraceState::parse(&written), Ok(parsed));
    }

    #[test]
    fn tracestate_over_32_members_is_refused(members in tracestate_members(64)) {
        let parsed = TraceState::parse(&members.join(","));
        if members.len() > tracestate::MAX_MEMBERS {
            prop_assert_eq!(parsed, Err(tracestate::TraceStateError::TooManyMembers));
        } else {
            prop_assert!(parsed.is_ok());
        }
    }

    #[test]
    fn tracestate_set_puts_our_member_left_most_and_keeps_at_most_32(
        members in tracestate_members(tracestate::MAX_MEMBERS),
        key in tracestate_key(),
        value in tracestate_value(),
        reuse_a_caller_key in any::<prop::sample::Index>(),
    ) {
        // Half the cases set a key the caller already has.
        let key = match members.get(reuse_a_caller_key.index(members.len() * 2 + 1)) {
            Some(member) => key_of(member).to_string(),
            None => key,
        };
        let mut state = TraceState::parse(&members.join(",")).expect("valid tracestate");
        prop_assert_eq!(state.set(&key, &value), Ok(()));
        prop_assert!(state.len() <= tracestate::MAX_MEMBERS);
        let header = state.to_header();
        let written: Vec<&str> = header.split(',').collect();
        let ours = format!("{key}={value}");
        prop_assert_eq!(written[0], ours.as_str());
        let others: Vec<&str> = members
            .iter()
            .map(String::as_str)
            .filter(|m| key_of(m) != key)
            .take(tracestate::MAX_MEMBERS - 1)
            .collect();
        prop_assert_eq!(&written[1..], others.as_slice());
        prop_assert_eq!(TraceState::parse(&header), Ok(state));
    }

    #[test]
    fn tracestate_set_with_an_invalid_key_changes_nothing(
        members in tracestate_members(8),
        key in "[A-Z@ ,=]{1,4}|[a-z]{1,4}@@[a-z]{1,4}|[a-z]{257}",
    ) {
        let mut state = TraceState::parse(&members.join(",")).expect("valid tracestate");
        let before = state.clone();
        prop_assert!(state.set(&key, "v").is_err());
        prop_assert_eq!(state, before);
    }
}
