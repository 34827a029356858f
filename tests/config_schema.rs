//! `kong/consul_enricher.meta.json` (Kong's admin-time validation) and the filter's own
//! configuration parser must agree: the same example configurations go through both.

use consul_enricher::config::Config;
use serde_json::Value;

fn load(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn schema() -> jsonschema::Validator {
    let meta = load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/kong/consul_enricher.meta.json"
    ));
    jsonschema::draft4::new(&meta["config_schema"]).expect("the schema is valid draft 4")
}

fn examples() -> Value {
    load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/config-examples.json"
    ))
}

#[test]
fn valid_examples_pass_both() {
    let schema = schema();
    for config in examples()["valid"].as_array().unwrap() {
        let text = config.to_string();
        assert!(schema.is_valid(config), "schema refused {text}");
        if let Err(e) = Config::from_json(text.as_bytes()) {
            panic!("parser refused {text}: {e}");
        }
    }
}

#[test]
fn invalid_examples_fail_both_on_the_same_key() {
    let schema = schema();
    for case in examples()["invalid"].as_array().unwrap() {
        let config = &case["config"];
        let text = config.to_string();
        assert!(!schema.is_valid(config), "schema accepted {text}");
        let err = Config::from_json(text.as_bytes()).expect_err(&text);
        assert_eq!(err.key, case["key"].as_str().unwrap(), "{text}: {err}");
    }
}

#[test]
fn cross_key_rules_are_the_parsers_alone() {
    let schema = schema();
    for case in examples()["invalid_by_parser_only"].as_array().unwrap() {
        let config = &case["config"];
        let text = config.to_string();
        assert!(
            schema.is_valid(config),
            "draft 4 cannot express this, yet refused {text}"
        );
        let err = Config::from_json(text.as_bytes()).expect_err(&text);
        assert_eq!(err.key, case["key"].as_str().unwrap(), "{text}: {err}");
    }
}

#[test]
fn schema_defaults_are_the_parsers_defaults() {
    let meta = load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/kong/consul_enricher.meta.json"
    ));
    // Build a configuration from every default the schema documents; the parser must
    // read it back as its own defaults.
    fn defaults(schema: &Value) -> Value {
        match schema.get("properties") {
            Some(Value::Object(props)) => Value::Object(
                props
                    .iter()
                    .map(|(k, v)| (k.clone(), defaults(v)))
                    .collect(),
            ),
            _ => schema["default"].clone(),
        }
    }
    let documented = defaults(&meta["config_schema"]).to_string();
    assert_eq!(
        Config::from_json(documented.as_bytes()).unwrap(),
        Config::default(),
        "{documented}"
    );
}
