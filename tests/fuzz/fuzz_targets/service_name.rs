//! Service names from Consul DNS host names: whatever is taken from a host is a name the
//! catalog path accepts (letters, digits, '-', '_', '.', at most 128), lower case, and the
//! same name is found again in the canonical host written from it.
#![no_main]

use consul_enricher::config::is_service_name;
use consul_enricher::service_name::from_consul_host;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|host: &str| {
    let Some(target) = from_consul_host(host) else {
        return;
    };
    for name in std::iter::once(&target.name).chain(&target.datacenter) {
        assert!(is_service_name(name), "{name:?}");
        assert!(!name.bytes().any(|b| b.is_ascii_uppercase()), "{name:?}");
    }
    let canonical = match &target.datacenter {
        Some(dc) => format!("{}.service.{dc}.consul", target.name),
        None => format!("{}.service.consul", target.name),
    };
    assert_eq!(from_consul_host(&canonical), Some(target));
});
