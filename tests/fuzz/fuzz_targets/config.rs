//! The configuration: any bytes give a Config or a ConfigError naming a key; an accepted
//! Config meets the documented bounds and, written back as JSON, parses to the same Config.
#![no_main]

use consul_enricher::config::{Config, HostKind};
use consul_enricher::enrich::json_string;
use consul_enricher::header_value::is_token;
use libfuzzer_sys::fuzz_target;

/// Writes `"key":value` members of one JSON object.
struct ObjectWriter<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> ObjectWriter<'a> {
    fn open(out: &'a mut String) -> Self {
        out.push('{');
        ObjectWriter { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        json_string(key, self.out);
        self.out.push(':');
        self.out
    }

    fn string(&mut self, key: &str, value: &str) {
        json_string(value, self.key(key));
    }

    fn raw(&mut self, key: &str, value: impl ToString) {
        self.key(key).push_str(&value.to_string());
    }

    fn strings(&mut self, key: &str, values: &[String]) {
        let out = self.key(key);
        out.push('[');
        for (n, v) in values.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            json_string(v, out);
        }
        out.push(']');
    }

    fn object(&mut self, key: &str, fill: impl FnOnce(&mut ObjectWriter)) {
        let mut inner = ObjectWriter::open(self.key(key));
        fill(&mut inner);
        inner.out.push('}');
    }
}

fn to_json(c: &Config) -> String {
    let mut out = String::new();
    let mut w = ObjectWriter::open(&mut out);
    w.string(
        "host",
        match c.host {
            HostKind::Kong => "kong",
            HostKind::Envoy => "envoy",
        },
    );
    w.object("consul", |w| {
        let k = &c.consul;
        w.string("upstream", &k.upstream);
        w.string("authority", &k.authority);
        w.string("datacenter", &k.datacenter);
        w.string("token", &k.token);
        w.raw("stale", k.stale);
        w.string("filter", &k.filter);
        w.raw("timeout_ms", k.timeout_ms);
        w.raw("max_body_bytes", k.max_body_bytes);
        w.raw("max_instances", k.max_instances);
    });
    w.object("service", |w| {
        w.string("name", &c.service.name);
        w.raw("from_host", c.service.from_host);
        w.raw("from_cluster", c.service.from_cluster);
    });
    w.object("cache", |w| {
        let k = &c.cache;
        w.raw("ttl_s", k.ttl_s);
        w.raw("stale_s", k.stale_s);
        w.raw("negative_ttl_s", k.negative_ttl_s);
        w.raw("backoff_s", k.backoff_s);
        w.raw("max_backoff_s", k.max_backoff_s);
        w.string("shm_namespace", &k.shm_namespace);
    });
    w.object("headers", |w| {
        w.raw("request", c.headers.request);
        w.raw("response", c.headers.response);
        w.string("prefix", &c.headers.prefix);
    });
    w.strings("meta_keys", &c.meta_keys);
    w.object("baggage", |w| {
        w.raw("enabled", c.baggage.enabled);
        w.strings("read_keys", &c.baggage.read_keys);
    });
    w.raw("kong_ctx_shared", c.kong_ctx_shared);
    w.object("spans", |w| {
        let s = &c.spans;
        w.raw("enabled", s.enabled);
        w.string("upstream", &s.upstream);
        w.string("authority", &s.authority);
        w.string("path", &s.path);
        w.string("service_name", &s.service_name);
        w.raw("reparent", s.reparent);
        w.raw("batch_size", s.batch_size);
        w.raw("max_queue", s.max_queue);
        w.raw("flush_ms", s.flush_ms);
    });
    out.push('}');
    out
}

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

    let written = to_json(&config);
    assert_eq!(
        Config::from_json(written.as_bytes()),
        Ok(config),
        "{written}"
    );
});
