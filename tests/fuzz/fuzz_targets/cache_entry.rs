//! The cache entry codec: any bytes decode to an entry or an error, a decoded entry
//! encodes to at most as many bytes and decodes back equal, and every entry built within
//! the bounds round-trips: decode(encode(x)) == x.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use consul_enricher::cache::{Entry, EntryStatus};
use consul_enricher::consul::{Instance, StringMap, MAX_MAP_ENTRIES, MAX_VALUE_LEN};
use libfuzzer_sys::fuzz_target;

/// An arbitrary string cut to the longest prefix of at most `MAX_VALUE_LEN` bytes.
fn bounded_string(u: &mut Unstructured) -> Result<String> {
    let mut s = String::arbitrary(u)?;
    let mut cut = s.len().min(MAX_VALUE_LEN);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    Ok(s)
}

fn string_map(u: &mut Unstructured) -> Result<StringMap> {
    let mut map = StringMap::default();
    for _ in 0..u.int_in_range(0..=MAX_MAP_ENTRIES)? {
        map.insert_if_absent(bounded_string(u)?, bounded_string(u)?);
    }
    Ok(map)
}

fn instance(u: &mut Unstructured) -> Result<Instance> {
    Ok(Instance {
        node: bounded_string(u)?,
        node_address: bounded_string(u)?,
        datacenter: bounded_string(u)?,
        node_meta: string_map(u)?,
        service_id: bounded_string(u)?,
        service_name: bounded_string(u)?,
        service_address: bounded_string(u)?,
        service_port: u.arbitrary()?,
        tags: (0..u.int_in_range(0..=MAX_MAP_ENTRIES)?)
            .map(|_| bounded_string(u))
            .collect::<Result<_>>()?,
        meta: string_map(u)?,
        modify_index: u.arbitrary()?,
    })
}

fn entry(u: &mut Unstructured) -> Result<Entry> {
    Ok(Entry {
        status: *u.choose(&[
            EntryStatus::Found,
            EntryStatus::Unknown,
            EntryStatus::Failed,
        ])?,
        fresh_until: u.arbitrary()?,
        stale_until: u.arbitrary()?,
        retry_after: u.arbitrary()?,
        failures: u.arbitrary()?,
        index: u.arbitrary()?,
        instances: (0..u.int_in_range(0..=4)?)
            .map(|_| instance(u))
            .collect::<Result<_>>()?,
    })
}

fuzz_target!(|input: &[u8]| {
    if let Ok(decoded) = Entry::decode(input) {
        let encoded = decoded.encode();
        assert!(encoded.len() <= input.len());
        assert_eq!(Entry::decode(&encoded), Ok(decoded));
    }
    if let Ok(built) = entry(&mut Unstructured::new(input)) {
        assert_eq!(Entry::decode(&built.encode()), Ok(built));
    }
});
