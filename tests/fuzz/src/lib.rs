//! Checks shared by the fuzz targets: the properties every value the filter writes must
//! have, and those of every Consul answer the filter reads.

use consul_enricher::cache::Entry;
use consul_enricher::config::{CacheConfig, ConsulConfig};
use consul_enricher::consul::{
    Catalog, CatalogError, StringMap, MAX_MAP_ENTRIES, MAX_VALUE_LEN,
};
use consul_enricher::header_value::is_token;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

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

/// The members of a JSON object in document order, repeated keys included (a map type
/// would merge them); None when `text` is not one object.
pub fn object_members(text: &str) -> Option<Vec<(String, Value)>> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, Value)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::new();
            while let Some(member) = map.next_entry()? {
                members.push(member);
            }
            Ok(members)
        }
    }
    let mut json = serde_json::Deserializer::from_str(text);
    let members = (&mut json).deserialize_map(Members).ok()?;
    json.end().ok()?;
    Some(members)
}

/// A reader of one Consul answer: `parse_catalog` or `parse_health`.
pub type AnswerParser = fn(
    Option<&str>,
    bool,
    Option<&str>,
    &[u8],
    usize,
    &ConsulConfig,
) -> Result<Catalog, CatalogError>;

fn assert_bounded_map(map: &StringMap) {
    assert!(map.len() <= MAX_MAP_ENTRIES);
    let keys: Vec<&str> = map.iter().map(|(k, _)| k).collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "keys not sorted and distinct"
    );
    for (k, v) in map.iter() {
        assert!(k.len() <= MAX_VALUE_LEN && v.len() <= MAX_VALUE_LEN);
        assert_eq!(map.get(k), Some(v));
    }
}

/// A Consul answer body: whatever is accepted is a JSON array whose entries are all
/// accounted for (kept, skipped as invalid, or dropped past `max_instances`), stays within
/// the bounds (instances, string lengths, map and tag counts), is made of the instances
/// its entries give each on its own, and survives the cache encoding unchanged. The body's
/// length picks `max_instances`.
pub fn check_consul_answer(parse: AnswerParser, body: &[u8]) {
    let config = ConsulConfig {
        max_instances: 1 + (body.len() % 8) as u32,
        ..ConsulConfig::default()
    };
    let max = config.max_instances as usize;
    let max_body = config.max_body_bytes as usize;
    assert_eq!(
        parse(Some("200"), false, None, body, max_body + 1, &config),
        Err(CatalogError::TooLarge)
    );
    assert_eq!(
        parse(Some("200"), true, None, body, body.len(), &config),
        Err(CatalogError::CallFailed)
    );
    let Ok(catalog) = parse(Some(" 200 "), false, Some("42"), body, body.len(), &config) else {
        return;
    };
    let Ok(entries) = serde_json::from_slice::<Vec<&RawValue>>(body) else {
        panic!("accepted a body that is not a JSON array");
    };
    assert_eq!(catalog.index, 42);
    assert!(catalog.instances.len() + catalog.invalid <= max);
    assert_eq!(
        catalog.instances.len() + catalog.invalid + catalog.dropped,
        entries.len()
    );
    assert!(
        !catalog.instances.is_empty() || catalog.invalid == 0,
        "an answer of invalid entries only was accepted"
    );
    let one_by_one: Vec<_> = entries
        .iter()
        .take(max)
        .filter_map(|entry| {
            let alone = format!("[{}]", entry.get());
            parse(Some("200"), false, None, alone.as_bytes(), alone.len(), &config).ok()
        })
        .flat_map(|c| c.instances)
        .collect();
    assert_eq!(one_by_one, catalog.instances, "an entry read differently in company");
    for i in &catalog.instances {
        for s in [
            &i.node,
            &i.node_address,
            &i.datacenter,
            &i.service_id,
            &i.service_name,
            &i.service_address,
        ] {
            assert!(s.len() <= MAX_VALUE_LEN);
        }
        assert!(i.tags.len() <= MAX_MAP_ENTRIES);
        assert!(i.tags.iter().all(|t| t.len() <= MAX_VALUE_LEN));
        assert_bounded_map(&i.meta);
        assert_bounded_map(&i.node_meta);
    }

    let entry = Entry::from_answer(
        catalog.instances,
        catalog.index,
        1_700_000_000_000,
        &CacheConfig::default(),
    );
    assert_eq!(Entry::decode(&entry.encode()), Ok(entry));
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
