//! Consul's catalog answer: whatever is accepted stays within the bounds (instances,
//! string lengths, map and tag counts), counts what it dropped, and survives the cache
//! encoding unchanged. The body is the whole input; its length picks `max_instances`.
#![no_main]

use consul_enricher::cache::Entry;
use consul_enricher::config::{CacheConfig, ConsulConfig};
use consul_enricher::consul::{
    parse_catalog, CatalogError, StringMap, MAX_MAP_ENTRIES, MAX_VALUE_LEN,
};
use consul_enricher::json::{self, Json};
use libfuzzer_sys::fuzz_target;

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

fuzz_target!(|body: &[u8]| {
    let config = ConsulConfig {
        max_instances: 1 + (body.len() % 8) as u32,
        ..ConsulConfig::default()
    };
    let max_body = config.max_body_bytes as usize;
    assert_eq!(
        parse_catalog(Some("200"), false, None, body, max_body + 1, &config),
        Err(CatalogError::TooLarge)
    );
    assert_eq!(
        parse_catalog(Some("200"), true, None, body, body.len(), &config),
        Err(CatalogError::CallFailed)
    );
    let Ok(catalog) = parse_catalog(Some(" 200 "), false, Some("42"), body, body.len(), &config)
    else {
        return;
    };
    let Ok(Json::Array(items)) = json::parse(body) else {
        panic!("accepted a body that is not a JSON array");
    };
    assert_eq!(catalog.index, 42);
    assert!(catalog.instances.len() <= config.max_instances as usize);
    assert_eq!(catalog.instances.len() + catalog.dropped, items.len());
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
});
