//! The filter configurations the demo ships in `kong/kong.yml` and `envoy/envoy.yaml` are
//! accepted by the filter's own parser, with the host they are meant for.

use consul_enricher::config::{Config, HostKind};
use serde_json::Value;

fn yaml(path: &str) -> Value {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Every object in `doc` for which `pick` returns a value.
fn find_all(doc: &Value, pick: &dyn Fn(&Value) -> Option<Value>, out: &mut Vec<Value>) {
    if let Some(found) = pick(doc) {
        out.push(found);
    }
    match doc {
        Value::Object(map) => map.values().for_each(|v| find_all(v, pick, out)),
        Value::Array(items) => items.iter().for_each(|v| find_all(v, pick, out)),
        _ => {}
    }
}

#[test]
fn kong_filter_chain_config_is_accepted() {
    let mut configs = Vec::new();
    find_all(
        &yaml("kong/kong.yml"),
        &|v| (v["name"] == "consul_enricher").then(|| v["config"].clone()),
        &mut configs,
    );
    assert!(!configs.is_empty(), "no consul_enricher filter in kong.yml");
    for config in configs {
        let text = config.to_string();
        let parsed = Config::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.host, HostKind::Kong);
    }
}

#[test]
fn envoy_wasm_filter_config_is_accepted() {
    let mut configs = Vec::new();
    find_all(
        &yaml("envoy/envoy.yaml"),
        &|v| {
            (v["name"] == "consul_enricher")
                .then(|| v["configuration"]["value"].clone())
                .filter(Value::is_string)
        },
        &mut configs,
    );
    assert!(
        !configs.is_empty(),
        "no consul_enricher configuration in envoy.yaml"
    );
    for config in configs {
        let text = config.as_str().unwrap();
        let parsed = Config::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.host, HostKind::Envoy);
    }
}
