//! `kong/consul_enricher.meta.json` (Kong's admin-time validation), the configuration
//! reference's table (`docs/configuration.md`) and the filter's configuration structs must
//! agree: the same keys and defaults in all three, and the same example configurations
//! accepted or refused.

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

/// The dotted path of every leaf of a JSON object (arrays are leaves: `meta_keys`).
fn leaf_keys(value: &Value, prefix: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(members) => {
            for (key, member) in members {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_keys(member, &path, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// The configuration reference (`docs/configuration.md`).
const REFERENCE: &str = "docs/configuration.md";
/// The header of its table of keys.
const TABLE_HEADER: &str = "| Key | Default | Accepted | Meaning |\n|---|---|---|---|\n";

/// The reference's table: each row's dotted key and its default (JSON).
fn reference_table() -> Vec<(String, Value)> {
    let path = format!("{}/{REFERENCE}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let section = text
        .split("\n## Keys\n")
        .nth(1)
        .unwrap_or_else(|| panic!("{REFERENCE}: no \"## Keys\" section"));
    let table = section
        .split(TABLE_HEADER)
        .nth(1)
        .unwrap_or_else(|| panic!("{REFERENCE}: no table headed {TABLE_HEADER:?}"));
    table
        .lines()
        .take_while(|line| line.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row
                .trim_matches('|')
                .splitn(4, '|')
                .map(str::trim)
                .collect();
            assert_eq!(cells.len(), 4, "{REFERENCE}: not four cells: {row}");
            let unquote = |cell: &str| {
                cell.strip_prefix('`')
                    .and_then(|c| c.strip_suffix('`'))
                    .unwrap_or_else(|| panic!("{REFERENCE}: not in backticks: {row}"))
                    .to_string()
            };
            let default = unquote(cells[1]);
            let default = serde_json::from_str(&default)
                .unwrap_or_else(|e| panic!("{REFERENCE}: default of {row} is not JSON: {e}"));
            (unquote(cells[0]), default)
        })
        .collect()
}

#[test]
fn structs_schema_and_reference_list_the_same_keys() {
    let mut fields = Vec::new();
    let defaults = serde_json::to_value(Config::default()).unwrap();
    leaf_keys(&defaults, "", &mut fields);
    fields.sort();

    let meta = load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/kong/consul_enricher.meta.json"
    ));
    fn schema_keys(schema: &Value, prefix: &str, out: &mut Vec<String>) {
        match schema.get("properties") {
            Some(Value::Object(props)) => {
                for (key, prop) in props {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    schema_keys(prop, &path, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut schema = Vec::new();
    schema_keys(&meta["config_schema"], "", &mut schema);
    schema.sort();

    let mut reference: Vec<String> = reference_table().into_iter().map(|(key, _)| key).collect();
    reference.sort();

    assert!(fields.len() > 30, "{fields:?}");
    assert_eq!(schema, fields, "Kong schema vs the structs");
    assert_eq!(reference, fields, "{REFERENCE}'s table vs the structs");
}

#[test]
fn reference_defaults_are_the_parsers_defaults() {
    let mut documented = serde_json::Map::new();
    for (key, default) in reference_table() {
        let mut object = &mut documented;
        let mut segments: Vec<&str> = key.split('.').collect();
        let leaf = segments.pop().unwrap();
        for segment in segments {
            object = object
                .entry(segment)
                .or_insert_with(|| Value::Object(serde_json::Map::new()))
                .as_object_mut()
                .unwrap();
        }
        assert!(
            object.insert(leaf.to_string(), default).is_none(),
            "{key} twice"
        );
    }
    let documented = Value::Object(documented).to_string();
    assert_eq!(
        Config::from_json(documented.as_bytes()).unwrap(),
        Config::default(),
        "{documented}"
    );
}
