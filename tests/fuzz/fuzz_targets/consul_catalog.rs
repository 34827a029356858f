//! Consul's catalog answer (`/v1/catalog/service/<name>`): see `check_consul_answer` for
//! the properties. The body is the whole input.
#![no_main]

use consul_enricher::consul::parse_catalog;
use consul_enricher_fuzz::check_consul_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| check_consul_answer(parse_catalog, body));
