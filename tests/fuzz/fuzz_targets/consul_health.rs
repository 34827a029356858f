//! Consul's health answer (`/v1/health/service/<name>`): the same properties as the
//! catalog's (see `check_consul_answer`). The body is the whole input.
#![no_main]

use consul_enricher::consul::parse_health;
use consul_enricher_fuzz::check_consul_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| check_consul_answer(parse_health, body));
