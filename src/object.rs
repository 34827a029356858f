//! Structs read from JSON objects only, and, for the configuration, which key an error
//! came from.
//!
//! A derived `Deserialize` also reads a struct from an array, taking its fields in order, so
//! `["echo", false]` would fill the first two fields of whatever struct was expected. The
//! configuration and Consul's answers are objects by definition; these adapters refuse
//! anything else ("expected an object").
//!
//! The configuration's errors name their key by its dotted path (`consul.timeout_ms`,
//! `meta_keys[1]`). serde errors carry no path, so the adapters the configuration's objects
//! and lists are read through note each key or index an error passes on its way out, and
//! [`take_error_path`] joins them. This does what the `serde_path_to_error` crate does, for
//! the two shapes the configuration has, at a fraction of its size in the `.wasm` (its
//! wrapper of every serde call cost about 15 KB).

use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::Deserialize;

/// Reads `T` from a JSON object.
pub fn from_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_map(ObjectVisitor(PhantomData))
}

/// Reads `T`, a configuration struct, from a JSON object whose keys are all different, and
/// notes the key of an error for [`take_error_path`]. A repeated key is refused by its own
/// path (`cache.ttl_s`); a derived struct alone would report it against the object holding
/// it.
pub fn from_config_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_map(ConfigObjectVisitor(PhantomData))
}

/// Reads a configuration list of strings, noting the index of an element's error for
/// [`take_error_path`].
pub fn config_strings<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    deserializer.deserialize_seq(StringsVisitor)
}

enum PathSegment {
    Key(String),
    Index(usize),
}

thread_local! {
    /// The keys and indices the last configuration error passed through, innermost first.
    /// Errors are opaque serde_json values, so their path travels beside them; a VM runs
    /// one thread, and `Config::from_json` clears it before reading.
    static ERROR_PATH: Cell<Vec<PathSegment>> = const { Cell::new(Vec::new()) };
}

fn note(segment: PathSegment) {
    ERROR_PATH.with(|path| {
        let mut segments = path.take();
        segments.push(segment);
        path.set(segments);
    });
}

/// Forgets any path noted before; called before reading a configuration.
pub fn clear_error_path() {
    ERROR_PATH.with(|path| path.set(Vec::new()));
}

/// The dotted path of the key the last configuration error came from (`consul.timeout_ms`,
/// `meta_keys[1]`), empty for the document itself, and forgets it.
pub fn take_error_path() -> String {
    let segments = ERROR_PATH.with(Cell::take);
    let mut dotted = String::new();
    for segment in segments.iter().rev() {
        match segment {
            PathSegment::Key(key) => {
                if !dotted.is_empty() {
                    dotted.push('.');
                }
                dotted.push_str(key);
            }
            PathSegment::Index(index) => {
                dotted.push('[');
                dotted.push_str(&index.to_string());
                dotted.push(']');
            }
        }
    }
    dotted
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map))
    }
}

struct ConfigObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ConfigObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(ConfigMembers {
            map,
            seen: Vec::new(),
        }))
    }
}

/// The members of one configuration object: each key checked against those before it, and
/// noted when its value fails.
struct ConfigMembers<A> {
    map: A,
    /// The keys read so far; the last is the one whose value is being read.
    seen: Vec<String>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for ConfigMembers<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.map.next_key_seed(FirstOccurrence {
            seed,
            seen: &mut self.seen,
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed).inspect_err(|_| {
            if let Some(key) = self.seen.last() {
                note(PathSegment::Key(key.clone()));
            }
        })
    }
}

/// Reads a key and hands it to the struct's own key reader unless it was seen before; a key
/// that is repeated or unknown to the struct is noted.
struct FirstOccurrence<'s, K> {
    seed: K,
    seen: &'s mut Vec<String>,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for FirstOccurrence<'_, K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<K::Value, D::Error> {
        let key = String::deserialize(deserializer)?;
        let field = if self.seen.contains(&key) {
            Err(de::Error::custom("duplicate key"))
        } else {
            self.seed.deserialize(key.as_str().into_deserializer())
        };
        if field.is_err() {
            note(PathSegment::Key(key));
        } else {
            self.seen.push(key);
        }
        field
    }
}

struct StringsVisitor;

impl<'de> Visitor<'de> for StringsVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut strings = Vec::new();
        loop {
            match seq.next_element() {
                Ok(Some(s)) => strings.push(s),
                Ok(None) => return Ok(strings),
                Err(error) => {
                    note(PathSegment::Index(strings.len()));
                    return Err(error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Pair {
        a: u8,
        b: u8,
    }

    fn read(json: &str, config: bool) -> Result<Pair, String> {
        let mut de = serde_json::Deserializer::from_str(json);
        let pair = if config {
            from_config_object(&mut de)
        } else {
            from_object(&mut de)
        };
        pair.map_err(|e| e.to_string())
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default, deserialize_with = "from_config_object")]
        inner: Inner,
        #[serde(default, deserialize_with = "config_strings")]
        list: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: u8,
    }

    /// The error path of reading `json` as an `Outer` configuration.
    fn path(json: &str) -> String {
        clear_error_path();
        let mut de = serde_json::Deserializer::from_str(json);
        let read = from_config_object::<_, Outer>(&mut de);
        assert!(read.is_err(), "{json} was read");
        take_error_path()
    }

    #[test]
    fn objects_are_read() {
        for config in [false, true] {
            assert_eq!(read(r#"{"b":2,"a":1}"#, config), Ok(Pair { a: 1, b: 2 }));
        }
    }

    #[test]
    fn arrays_are_refused_though_derive_would_take_them() {
        let mut de = serde_json::Deserializer::from_str("[1,2]");
        assert_eq!(Pair::deserialize(&mut de).ok(), Some(Pair { a: 1, b: 2 }));
        for config in [false, true] {
            let e = read("[1,2]", config).unwrap_err();
            assert!(
                e.starts_with("invalid type: sequence, expected an object"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_repeated_key_is_refused_as_such() {
        let e = read(r#"{"a":1,"b":2,"a":3}"#, true).unwrap_err();
        assert!(e.starts_with("duplicate key at"), "{e}");
        // Without the check, derive's own error names the field but not as a key path.
        let e = read(r#"{"a":1,"b":2,"a":3}"#, false).unwrap_err();
        assert!(e.starts_with("duplicate field `a`"), "{e}");
    }

    #[test]
    fn configuration_objects_and_lists_are_read() {
        let mut de = serde_json::Deserializer::from_str(r#"{"inner":{"n":7},"list":["a","b"]}"#);
        let outer = from_config_object::<_, Outer>(&mut de).unwrap();
        assert_eq!(
            (outer.inner.n, outer.list),
            (7, vec!["a".to_string(), "b".into()])
        );
    }

    #[test]
    fn errors_name_their_key_path() {
        assert_eq!(path(r#"{"inner":{"n":"x"}}"#), "inner.n");
        assert_eq!(path(r#"{"inner":{"n":300}}"#), "inner.n");
        assert_eq!(path(r#"{"inner":{"m":1}}"#), "inner.m");
        assert_eq!(path(r#"{"inner":{"n":1,"n":2}}"#), "inner.n");
        assert_eq!(path(r#"{"inner":[1]}"#), "inner");
        assert_eq!(path(r#"{"inner":{"n":"#), "inner.n");
        assert_eq!(path(r#"{"list":["a","b",3]}"#), "list[2]");
        assert_eq!(path(r#"{"list":"a"}"#), "list");
        assert_eq!(path(r#"{"list":[],"other":1}"#), "other");
        assert_eq!(path(r#"{"list":[],"list":[]}"#), "list");
        assert_eq!(path("[]"), "");
    }

    #[test]
    fn the_path_is_taken_once_and_only_configurations_note_one() {
        assert_eq!(path(r#"{"list":[1]}"#), "list[0]");
        assert_eq!(take_error_path(), "");
        clear_error_path();
        assert!(read(r#"{"a":"x","b":1}"#, false).is_err());
        assert_eq!(take_error_path(), "");
        assert!(read(r#"{"a":"x","b":1}"#, true).is_err());
        assert_eq!(take_error_path(), "a");
    }
}
