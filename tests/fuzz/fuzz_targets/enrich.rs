//! Enrichment from a fuzzed Consul answer and fuzzed request values: every header name and
//! baggage key is a token, every header, baggage and attribute value is clean printable
//! ASCII within 256 bytes, our baggage members are appended after the caller's without
//! touching them, and the attribute object is JSON.
//!
//! Input: the service name, the upstream address, the caller's `baggage` header and the
//! catalog body, separated by 0xFF.
#![no_main]

use consul_enricher::cache::Lookup;
use consul_enricher::config::{Config, ConsulConfig};
use consul_enricher::consul::{parse_catalog, Instance};
use consul_enricher::enrich::{
    baggage_attributes, for_peer, for_service, instance_headers, match_instance, AttrValue,
    Attributes, InstanceView, Peer, RequestAttributes, MAX_VALUE_LEN,
};
use consul_enricher::trace_context::{Baggage, BaggageError};
use consul_enricher_fuzz::{assert_clean_value, assert_token, object_members, text_fields};
use libfuzzer_sys::fuzz_target;

const LOOKUPS: [Lookup; 5] = [
    Lookup::Hit,
    Lookup::Stale { refresh: true },
    Lookup::Negative,
    Lookup::Backoff,
    Lookup::Miss,
];

/// A request's attributes: the service's, its own and its instance's, each clean, and the
/// instance view's JSON object every attribute of the layers exactly once.
fn assert_clean_attributes(
    config: &Config,
    service: &Attributes,
    own: &Attributes,
    instance: Option<&Instance>,
) {
    let view = InstanceView::new(config, service, instance);
    for (key, value) in service.iter().chain(own).chain(&view.attributes) {
        assert!(!key.is_empty());
        // Attributes carry Consul's text itself (UTF-8 kept), never a control character.
        if let AttrValue::Str(s) = value {
            assert!(!s.is_empty() && s.len() <= MAX_VALUE_LEN, "{key}: {s:?}");
            assert!(!s.chars().any(|c| c.is_ascii_control()), "{key}: {s:?}");
            assert!(!s.starts_with(' ') && !s.ends_with(' '), "{key}: {s:?}");
        }
    }
    let layers = RequestAttributes {
        service,
        own,
        instance: &view.attributes,
    };
    let json = String::from_utf8(view.json_object(own)).expect("the object is UTF-8");
    let Some(members) = object_members(&json) else {
        panic!("attributes are not a JSON object");
    };
    let attrs: Vec<_> = layers.iter().collect();
    assert_eq!(members.len(), attrs.len());
    for (key, value) in attrs {
        let expected = match value {
            AttrValue::Str(s) => serde_json::json!(s),
            AttrValue::Int(n) => serde_json::json!(n),
            AttrValue::List(items) => serde_json::json!(items),
        };
        assert!(
            members.iter().any(|(k, v)| k == key && *v == expected),
            "{key} not written as {expected}"
        );
    }
}

fuzz_target!(|input: &[u8]| {
    let Some([service, upstream, caller_baggage, body]) = text_fields(input) else {
        return;
    };
    let body = body.as_bytes();

    let mut config = Config::default();
    config.meta_keys.push("zone".into());
    config.baggage.read_keys.push("tenant".into());
    let consul = ConsulConfig {
        max_instances: 8,
        ..config.consul.clone()
    };
    let Ok(catalog) = parse_catalog(Some("200"), false, None, body, body.len(), &consul) else {
        return;
    };
    let instances = &catalog.instances;

    let caller = Baggage::parse(caller_baggage).ok();
    let lookup = LOOKUPS[input.len() % LOOKUPS.len()];

    let e = for_service(&config, service, instances, lookup);
    if let Some(caller) = &caller {
        let own = baggage_attributes(caller, &config.baggage.read_keys);
        assert_clean_attributes(&config, &e.attributes, &own, None);
    }
    for (name, value) in &e.headers {
        assert_token("header name", name);
        assert!(name.starts_with(&config.headers.prefix));
        assert_clean_value(name, value, MAX_VALUE_LEN);
    }
    for (key, value) in &e.baggage {
        assert_token("baggage key", key);
        // Baggage values are Consul's text; the baggage writer percent-encodes them once.
        assert!(
            !value.chars().any(|c| c.is_ascii_control()),
            "{key}: {value:?}"
        );
        assert!(value.len() <= MAX_VALUE_LEN);
    }
    assert_clean_attributes(&config, &e.attributes, &Vec::new(), None);

    if let Some(mut baggage) = caller {
        let written = baggage.as_header().to_string();
        for (key, value) in &e.baggage {
            if let Err(err) = baggage.append(key, value) {
                assert_ne!(err, BaggageError::InvalidKey);
            }
        }
        let after = baggage.as_header().to_string();
        assert!(after.starts_with(&written), "caller members changed");
        assert_eq!(Baggage::parse(&after), Ok(baggage));
    }

    let peer = Peer::parse(upstream);
    let used = peer
        .as_ref()
        .and_then(|p| match_instance(instances, p))
        .and_then(|at| instances.get(at));
    if let Some(i) = used {
        for (name, value) in instance_headers(&config, i) {
            assert_token("header name", &name);
            assert_clean_value(&name, &value, MAX_VALUE_LEN);
        }
    }
    let own = peer.as_ref().map(for_peer).unwrap_or_default();
    assert_clean_attributes(&config, &e.attributes, &own, used);
});
