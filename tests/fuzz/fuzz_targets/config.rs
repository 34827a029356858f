//! The configuration: any bytes give a Config or a ConfigError with a reason; an accepted
//! Config meets the documented bounds and, written back as JSON, parses to the same Config.
#![no_main]

use consul_enricher::config::Config;
use consul_enricher::header_value::is_token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let config = match Config::from_json(input) {
        Ok(config) => config,
        Err(e) => {
            assert!(!e.reason.is_empty());
            return;
        }
    };
    let prefix = &config.headers.prefix;
    assert!(is_token(prefix) && !prefix.bytes().any(|b| b.is_ascii_uppercase()));
    for keys in [&config.meta_keys, &config.baggage.read_keys] {
        assert!(keys.len() <= 16);
        assert!(keys.iter().all(|k| is_token(k) && k.len() <= 64));
    }
    assert!(config
        .meta_keys
        .iter()
        .all(|k| !k.bytes().any(|b| b.is_ascii_uppercase())));
    assert!((1..=1024).contains(&config.consul.max_instances));
    assert!(config.consul.max_body_bytes >= 1024);
    assert!(config.cache.backoff_s <= config.cache.max_backoff_s);
    assert!(config.spans.batch_size <= config.spans.max_queue);

    let written = serde_json::to_string(&config).expect("a Config serialises");
    assert_eq!(
        Config::from_json(written.as_bytes()),
        Ok(config),
        "{written}"
    );
});
