//! Structs read from JSON objects only.
//!
//! A derived `Deserialize` also reads a struct from an array, taking its fields in order, so
//! `["echo", false]` would fill the first two fields of whatever struct was expected. The
//! configuration and Consul's answers are objects by definition; these adapters refuse
//! anything else ("expected an object").

use core::fmt;
use core::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Reads `T` from a JSON object.
pub fn from_object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_map(ObjectVisitor {
        unique_keys: false,
        value: PhantomData,
    })
}

/// Reads `T` from a JSON object whose keys are all different. A repeated key is refused
/// while it is read, so a path-tracking deserializer (serde_path_to_error) names the key
/// itself (`cache.ttl_s`); a derived struct alone would report it against the object
/// holding it (`cache`).
pub fn from_object_with_unique_keys<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_map(ObjectVisitor {
        unique_keys: true,
        value: PhantomData,
    })
}

struct ObjectVisitor<T> {
    unique_keys: bool,
    value: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        if self.unique_keys {
            T::deserialize(de::value::MapAccessDeserializer::new(UniqueKeys {
                map,
                seen: Vec::new(),
            }))
        } else {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
}

/// The members of one object, each key checked against those before it.
struct UniqueKeys<A> {
    map: A,
    seen: Vec<String>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for UniqueKeys<A> {
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
        self.map.next_value_seed(seed)
    }
}

/// Reads a key and hands it to the struct's own key reader unless it was seen before.
struct FirstOccurrence<'s, K> {
    seed: K,
    seen: &'s mut Vec<String>,
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for FirstOccurrence<'_, K> {
    type Value = K::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<K::Value, D::Error> {
        let key = String::deserialize(deserializer)?;
        if self.seen.contains(&key) {
            return Err(de::Error::custom("duplicate key"));
        }
        let field = self.seed.deserialize(key.as_str().into_deserializer());
        self.seen.push(key);
        field
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

    fn read(json: &str, unique_keys: bool) -> Result<Pair, String> {
        let mut de = serde_json::Deserializer::from_str(json);
        let pair = if unique_keys {
            from_object_with_unique_keys(&mut de)
        } else {
            from_object(&mut de)
        };
        pair.map_err(|e| e.to_string())
    }

    #[test]
    fn objects_are_read() {
        for unique_keys in [false, true] {
            assert_eq!(
                read(r#"{"b":2,"a":1}"#, unique_keys),
                Ok(Pair { a: 1, b: 2 })
            );
        }
    }

    #[test]
    fn arrays_are_refused_though_derive_would_take_them() {
        let mut de = serde_json::Deserializer::from_str("[1,2]");
        assert_eq!(Pair::deserialize(&mut de).ok(), Some(Pair { a: 1, b: 2 }));
        for unique_keys in [false, true] {
            let e = read("[1,2]", unique_keys).unwrap_err();
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
}
