//! The part of Consul's catalog API the filter uses: building the
//! `GET /v1/catalog/service/<name>` request and reading its answer.
//!
//! Consul's answer is untrusted input, read by serde into just the fields the filter uses:
//! unknown fields are skipped unread, maps and lists may be `null`, an odd meta value or tag
//! is passed over, an unusable entry is skipped without losing the others, and sizes are
//! bounded so a huge registration cannot blow up the cache. The health endpoint's answer
//! (`/v1/health/service/<name>`) reads into the same [`Instance`].

use core::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess,
    Visitor,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{ConsulConfig, ConsulEndpoint};
use crate::object::from_object;

/// Longest string kept from Consul (ids, addresses, meta values); longer ones are cut.
pub const MAX_VALUE_LEN: usize = 256;
/// Most meta entries and tags kept per instance.
pub const MAX_MAP_ENTRIES: usize = 32;

/// A small string map kept sorted by key: Consul meta maps hold a handful of entries, and
/// a sorted vector is far smaller in the `.wasm` than a tree or hash map.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StringMap(Vec<(String, String)>);

impl StringMap {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .and_then(|i| self.0.get(i))
            .map(|(_, v)| v.as_str())
    }

    /// Adds `key` unless present (the first value wins, as Consul's JSON decoder does not
    /// promise anything for duplicates).
    pub fn insert_if_absent(&mut self, key: String, value: String) {
        if let Err(at) = self.0.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            self.0.insert(at, (key, value));
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One instance of a service, as the filter keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instance {
    pub node: String,
    pub node_address: String,
    pub datacenter: String,
    pub node_meta: StringMap,
    pub service_id: String,
    pub service_name: String,
    pub service_address: String,
    pub service_port: u16,
    pub tags: Vec<String>,
    pub meta: StringMap,
    pub modify_index: u64,
}

impl Instance {
    /// The address clients connect to: `ServiceAddress`, or the node's when it is empty
    /// (as Consul's DNS interface does).
    pub fn address(&self) -> &str {
        if self.service_address.is_empty() {
            &self.node_address
        } else {
            &self.service_address
        }
    }
}

/// Why a Consul answer was not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogError {
    /// A `:dispatch_status` or a missing `:status`: the call itself failed.
    CallFailed,
    /// Consul asked us to slow down (429) or is unavailable (503).
    Throttled(u16),
    /// 403: the ACL token was refused.
    Forbidden,
    /// Any other non-200 status.
    Status(u16),
    /// The body is larger than `consul.max_body_bytes`.
    TooLarge,
    /// The body is not the documented JSON array.
    InvalidJson,
}

impl CatalogError {
    pub fn as_str(&self) -> &'static str {
        match self {
            CatalogError::CallFailed => "call failed",
            CatalogError::Throttled(_) => "throttled",
            CatalogError::Forbidden => "ACL token refused",
            CatalogError::Status(_) => "unexpected status",
            CatalogError::TooLarge => "body too large",
            CatalogError::InvalidJson => "invalid JSON",
        }
    }
}

/// The longest prefix of `s` within `MAX_VALUE_LEN` bytes that ends on a character.
fn bounded_prefix(s: &str) -> &str {
    let mut cut = s.len().min(MAX_VALUE_LEN);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.get(..cut).unwrap_or_default()
}

fn bounded(mut s: String) -> String {
    let len = bounded_prefix(&s).len();
    s.truncate(len);
    s
}

/// A string from Consul: `null` reads as empty, and what is longer than `MAX_VALUE_LEN` is
/// cut. Any other type makes the entry holding it unusable.
#[derive(Default)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        Ok(Text(text.map(bounded).unwrap_or_default()))
    }
}

/// Any JSON value, reduced to what the lenient fields use: a meta value or a tag that is
/// not a string, or an index that is not a whole number, is passed over rather than making
/// the instance unusable.
enum LenientValue {
    Text(String),
    WholeNumber(u64),
    Other,
}

impl<'de> Deserialize<'de> for LenientValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Taken raw first: serde_json refuses to decode a valid number beyond f64 (`1e400`,
        // "number out of range"), which would make the whole instance unusable; raw, it is
        // only checked. A number is then read from its text.
        let raw = <&RawValue>::deserialize(deserializer)?.get();
        if raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            return Ok(raw
                .parse()
                .map_or(LenientValue::Other, LenientValue::WholeNumber));
        }
        serde_json::Deserializer::from_slice(raw.as_bytes())
            .deserialize_any(LenientValueVisitor)
            .map_err(de::Error::custom)
    }
}

/// Reads any JSON value but a number, which [`LenientValue`] reads from its text.
struct LenientValueVisitor;

impl<'de> Visitor<'de> for LenientValueVisitor {
    type Value = LenientValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value but a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<LenientValue, E> {
        Ok(LenientValue::Text(bounded_prefix(v).to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<LenientValue, E> {
        Ok(LenientValue::Text(bounded(v)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<LenientValue, E> {
        Ok(LenientValue::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<LenientValue, E> {
        Ok(LenientValue::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<LenientValue, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(LenientValue::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LenientValue, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(LenientValue::Other)
    }
}

/// A string map (`ServiceMeta`, `NodeMeta`): `null` reads as empty, at most
/// `MAX_MAP_ENTRIES` entries are kept, the first of duplicate keys wins, and an entry whose
/// value is not a string is left out.
impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_option(NullOr(StringMapVisitor))
    }
}

struct StringMapVisitor;

impl<'de> Visitor<'de> for StringMapVisitor {
    type Value = StringMap;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
        let mut strings = StringMap::default();
        while let Some(key) = map.next_key::<String>()? {
            if let LenientValue::Text(value) = map.next_value()? {
                if strings.len() < MAX_MAP_ENTRIES {
                    strings.insert_if_absent(bounded(key), value);
                }
            }
        }
        Ok(strings)
    }
}

/// `ServiceTags`: `null` reads as empty, at most `MAX_MAP_ENTRIES` tags are kept, and an
/// element that is not a string is left out.
#[derive(Default)]
struct Tags(Vec<String>);

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_option(NullOr(TagsVisitor))
    }
}

struct TagsVisitor;

impl<'de> Visitor<'de> for TagsVisitor {
    type Value = Tags;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tags, A::Error> {
        let mut tags = Vec::new();
        while let Some(element) = seq.next_element()? {
            if let LenientValue::Text(tag) = element {
                if tags.len() < MAX_MAP_ENTRIES {
                    tags.push(tag);
                }
            }
        }
        Ok(Tags(tags))
    }
}

/// `ModifyIndex`: informational, so anything but a whole number reads as 0.
#[derive(Default)]
struct Index(u64);

impl<'de> Deserialize<'de> for Index {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match LenientValue::deserialize(deserializer)? {
            LenientValue::WholeNumber(n) => Ok(Index(n)),
            LenientValue::Text(_) | LenientValue::Other => Ok(Index(0)),
        }
    }
}

/// A port: `null` reads as 0; anything but a whole number up to 65535 makes the instance
/// unusable, since a wrong port would match the wrong upstream.
#[derive(Default)]
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Port(Option::<u16>::deserialize(deserializer)?.unwrap_or(0)))
    }
}

/// A visitor that also takes `null`, as the visited type's empty value.
struct NullOr<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for NullOr<V>
where
    V::Value: Default,
{
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)?;
        f.write_str(" or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        Ok(V::Value::default())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        deserializer.deserialize_any(self.0)
    }
}

/// One entry of `GET /v1/catalog/service/<name>`: the fields the filter uses, in Consul's
/// names. Every other field (`ServiceProxy`, `TaggedAddresses`, ...) is skipped unread.
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct CatalogEntry {
    node: Text,
    address: Text,
    datacenter: Text,
    node_meta: StringMap,
    #[serde(rename = "ServiceID")]
    service_id: Text,
    service_name: Text,
    service_address: Text,
    service_port: Port,
    service_tags: Tags,
    service_meta: StringMap,
    modify_index: Index,
}

impl From<CatalogEntry> for Instance {
    fn from(e: CatalogEntry) -> Instance {
        Instance {
            node: e.node.0,
            node_address: e.address.0,
            datacenter: e.datacenter.0,
            node_meta: e.node_meta,
            service_id: e.service_id.0,
            service_name: e.service_name.0,
            service_address: e.service_address.0,
            service_port: e.service_port.0,
            tags: e.service_tags.0,
            meta: e.service_meta,
            modify_index: e.modify_index.0,
        }
    }
}

/// One entry of `GET /v1/health/service/<name>`: the node and the service registration
/// nested, plus `Checks`, which the filter leaves to Consul (the `passing` parameter).
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct HealthEntry {
    #[serde(deserialize_with = "from_object")]
    node: HealthNode,
    #[serde(deserialize_with = "from_object")]
    service: HealthService,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct HealthNode {
    node: Text,
    address: Text,
    datacenter: Text,
    meta: StringMap,
}

#[derive(Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct HealthService {
    #[serde(rename = "ID")]
    id: Text,
    service: Text,
    address: Text,
    port: Port,
    tags: Tags,
    meta: StringMap,
    modify_index: Index,
}

impl From<HealthEntry> for Instance {
    fn from(e: HealthEntry) -> Instance {
        Instance {
            node: e.node.node.0,
            node_address: e.node.address.0,
            datacenter: e.node.datacenter.0,
            node_meta: e.node.meta,
            service_id: e.service.id.0,
            service_name: e.service.service.0,
            service_address: e.service.address.0,
            service_port: e.service.port.0,
            tags: e.service.tags.0,
            meta: e.service.meta,
            modify_index: e.service.modify_index.0,
        }
    }
}

/// A usable catalog answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub instances: Vec<Instance>,
    /// `X-Consul-Index`, for blocking queries; 0 when absent or unparsable.
    pub index: u64,
    /// Instances Consul returned beyond `consul.max_instances`, dropped.
    pub dropped: usize,
    /// Entries within `consul.max_instances` that are not a usable instance (not an object,
    /// a field of the wrong type, a port out of range), skipped.
    pub invalid: usize,
}

/// Reads a catalog answer (`GET /v1/catalog/service/<name>`) from the dispatch response's
/// status, headers and body.
///
/// `status` is the `:status` pseudo-header (None when the call failed before an answer),
/// `dispatch_failed` is true when the host reported a failure (Kong's `:dispatch_status`).
pub fn parse_catalog(
    status: Option<&str>,
    dispatch_failed: bool,
    consul_index: Option<&str>,
    body: &[u8],
    body_size: usize,
    config: &ConsulConfig,
) -> Result<Catalog, CatalogError> {
    parse_answer(
        read_entry::<CatalogEntry>,
        status,
        dispatch_failed,
        consul_index,
        body,
        body_size,
        config,
    )
}

/// Reads a health answer (`GET /v1/health/service/<name>`) into the same instances as
/// [`parse_catalog`], with the same status handling and bounds. Check results are not read:
/// a caller wanting healthy instances only asks Consul with `passing`.
pub fn parse_health(
    status: Option<&str>,
    dispatch_failed: bool,
    consul_index: Option<&str>,
    body: &[u8],
    body_size: usize,
    config: &ConsulConfig,
) -> Result<Catalog, CatalogError> {
    parse_answer(
        read_entry::<HealthEntry>,
        status,
        dispatch_failed,
        consul_index,
        body,
        body_size,
        config,
    )
}

/// Reads one entry of an answer, in the shape `E`, from an object.
fn read_entry<E: DeserializeOwned + Into<Instance>>(raw: &[u8]) -> Option<Instance> {
    // From bytes, as the whole answer is read: one reader type, so serde_json's reader is
    // compiled once into the `.wasm`.
    let mut entry = serde_json::Deserializer::from_slice(raw);
    from_object::<_, E>(&mut entry).ok().map(Into::into)
}

/// What the two endpoints share: the status, the size bound, the entries one by one.
/// `read_entry` is a function, not a type parameter, so this exists once in the `.wasm`.
fn parse_answer(
    read_entry: fn(&[u8]) -> Option<Instance>,
    status: Option<&str>,
    dispatch_failed: bool,
    consul_index: Option<&str>,
    body: &[u8],
    body_size: usize,
    config: &ConsulConfig,
) -> Result<Catalog, CatalogError> {
    if dispatch_failed {
        return Err(CatalogError::CallFailed);
    }
    let code = status
        .and_then(|s| s.trim().parse::<u16>().ok())
        .ok_or(CatalogError::CallFailed)?;
    match code {
        200 => {}
        403 => return Err(CatalogError::Forbidden),
        429 | 503 => return Err(CatalogError::Throttled(code)),
        other => return Err(CatalogError::Status(other)),
    }
    if body_size > config.max_body_bytes as usize || body.len() > config.max_body_bytes as usize {
        return Err(CatalogError::TooLarge);
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let entries = Entries {
        max: config.max_instances as usize,
        read_entry,
    };
    let (instances, invalid, dropped) = entries
        .deserialize(&mut json)
        .and_then(|read| json.end().map(|()| read))
        .map_err(|_| CatalogError::InvalidJson)?;
    // Entries that all failed are garbage, not "service unknown": an empty answer would be
    // cached as the negative entry.
    if instances.is_empty() && invalid > 0 {
        return Err(CatalogError::InvalidJson);
    }
    Ok(Catalog {
        instances,
        index: consul_index
            .and_then(|i| i.trim().parse().ok())
            .unwrap_or(0),
        dropped,
        invalid,
    })
}

/// The answer's array, read one entry at a time: each entry is first taken whole as raw
/// JSON (checked, not decoded), then decoded on its own from an object, so a bad entry is
/// counted and skipped without losing the others. Entries past `max` are only checked.
struct Entries {
    max: usize,
    read_entry: fn(&[u8]) -> Option<Instance>,
}

impl<'de> DeserializeSeed<'de> for Entries {
    /// The instances, the entries skipped as invalid, the entries dropped past `max`.
    type Value = (Vec<Instance>, usize, usize);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Entries {
    type Value = (Vec<Instance>, usize, usize);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of service instances")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (mut instances, mut invalid, mut dropped) = (Vec::new(), 0, 0);
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if instances.len() + invalid == self.max {
                dropped += 1;
                continue;
            }
            match (self.read_entry)(raw.get().as_bytes()) {
                Some(instance) => instances.push(instance),
                None => invalid += 1,
            }
        }
        Ok((instances, invalid, dropped))
    }
}

/// The path of a lookup of `service` in datacenter `dc` (empty: the agent's own):
/// `/v1/catalog/service/<name>` or, with `consul.endpoint` "health",
/// `/v1/health/service/<name>?passing`; `stale`, `cached` (agent caching) and `filter` as
/// configured; with `watch_from`, a blocking query (`index`, `wait`) from that index.
pub fn lookup_path(
    service: &str,
    dc: &str,
    config: &ConsulConfig,
    watch_from: Option<u64>,
) -> String {
    let mut path = String::with_capacity(96 + service.len() + config.filter.len() * 3);
    let mut sep = '?';
    let mut param = |path: &mut String, name: &str, value: Option<&str>| {
        path.push(sep);
        path.push_str(name);
        if let Some(value) = value {
            path.push('=');
            path.push_str(value);
        }
        sep = '&';
    };
    match config.endpoint {
        ConsulEndpoint::Catalog => path.push_str("/v1/catalog/service/"),
        ConsulEndpoint::Health => path.push_str("/v1/health/service/"),
    }
    path.push_str(service);
    if config.endpoint == ConsulEndpoint::Health {
        param(&mut path, "passing", None);
    }
    if !dc.is_empty() {
        param(&mut path, "dc", Some(dc));
    }
    if config.stale {
        param(&mut path, "stale", None);
    }
    if config.cached {
        param(&mut path, "cached", None);
    }
    if let Some(index) = watch_from {
        param(&mut path, "index", Some(&index.to_string()));
        param(&mut path, "wait", Some(&format!("{}s", config.wait_s)));
    }
    if !config.filter.is_empty() {
        let mut encoded = String::with_capacity(config.filter.len() * 3);
        percent_encode_query(&config.filter, &mut encoded);
        param(&mut path, "filter", Some(&encoded));
    }
    path
}

fn percent_encode_query(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const DOCUMENTED: &str = r#"[
      {
        "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
        "Node": "foobar",
        "Address": "192.168.10.10",
        "Datacenter": "dc1",
        "TaggedAddresses": {"lan": "192.168.10.10", "wan": "10.0.10.10"},
        "NodeMeta": {"somekey": "somevalue"},
        "CreateIndex": 51,
        "ModifyIndex": 51,
        "ServiceAddress": "172.17.0.3",
        "ServiceEnableTagOverride": false,
        "ServiceID": "32a2a47f7992:nodea:5000",
        "ServiceName": "foobar",
        "ServicePort": 5000,
        "ServiceMeta": {"foobar_meta_value": "baz"},
        "ServiceTaggedAddresses": {"lan": {"address": "172.17.0.3", "port": 5000}},
        "ServiceTags": ["tacos"],
        "ServiceProxy": {"DestinationServiceName": "", "Upstreams": null},
        "ServiceConnect": {"Native": false, "Proxy": null},
        "Namespace": "default"
      }
    ]"#;

    fn cfg() -> ConsulConfig {
        ConsulConfig::default()
    }

    fn parse(body: &str) -> Result<Catalog, CatalogError> {
        parse_catalog(
            Some("200"),
            false,
            Some("51"),
            body.as_bytes(),
            body.len(),
            &cfg(),
        )
    }

    #[test]
    fn parses_the_documented_response() {
        let c = parse(DOCUMENTED).unwrap();
        assert_eq!(c.index, 51);
        assert_eq!(c.dropped, 0);
        let i = &c.instances[0];
        assert_eq!(i.node, "foobar");
        assert_eq!(i.node_address, "192.168.10.10");
        assert_eq!(i.datacenter, "dc1");
        assert_eq!(i.node_meta.get("somekey"), Some("somevalue"));
        assert_eq!(i.service_id, "32a2a47f7992:nodea:5000");
        assert_eq!(i.service_name, "foobar");
        assert_eq!(i.address(), "172.17.0.3");
        assert_eq!(i.service_port, 5000);
        assert_eq!(i.tags, vec!["tacos"]);
        assert_eq!(i.meta.get("foobar_meta_value"), Some("baz"));
        assert_eq!(i.modify_index, 51);
    }

    #[test]
    fn null_and_missing_fields_are_tolerated() {
        let c = parse(
            r#"[{"Node":"n","ServiceMeta":null,"NodeMeta":null,"ServiceTags":null,
                "ServiceAddress":"","Address":"10.0.0.1","ServicePort":null},{}]"#,
        )
        .unwrap();
        assert_eq!(c.instances.len(), 2);
        assert!(c.instances[0].meta.is_empty());
        assert_eq!(c.instances[0].address(), "10.0.0.1");
        assert_eq!(c.instances[1], Instance::default());
    }

    #[test]
    fn unknown_service_is_an_empty_list() {
        assert!(parse("[]").unwrap().instances.is_empty());
    }

    #[test]
    fn status_codes_map_to_errors() {
        let p = |s: Option<&str>, failed| parse_catalog(s, failed, None, b"[]", 2, &cfg());
        assert_eq!(p(Some("403"), false), Err(CatalogError::Forbidden));
        assert_eq!(p(Some("429"), false), Err(CatalogError::Throttled(429)));
        assert_eq!(p(Some("503"), false), Err(CatalogError::Throttled(503)));
        assert_eq!(p(Some("500"), false), Err(CatalogError::Status(500)));
        assert_eq!(p(Some("404"), false), Err(CatalogError::Status(404)));
        assert_eq!(p(None, false), Err(CatalogError::CallFailed));
        assert_eq!(p(Some("abc"), false), Err(CatalogError::CallFailed));
        assert_eq!(p(Some("200"), true), Err(CatalogError::CallFailed));
    }

    #[test]
    fn invalid_json_is_an_error() {
        for body in [
            "",
            "{",
            "{}",
            "null",
            "[1,2]",
            "[{\"ServicePort\":70000}]",
            "<html>",
        ] {
            assert_eq!(parse(body), Err(CatalogError::InvalidJson), "{body}");
        }
    }

    #[test]
    fn body_size_is_bounded() {
        let mut c = cfg();
        c.max_body_bytes = 1024;
        let big = format!("[{{\"Node\":\"{}\"}}]", "x".repeat(2000));
        let r = parse_catalog(Some("200"), false, None, big.as_bytes(), big.len(), &c);
        assert_eq!(r, Err(CatalogError::TooLarge));
        // The declared size counts even when the host handed over less.
        let r = parse_catalog(Some("200"), false, None, b"[]", 5000, &c);
        assert_eq!(r, Err(CatalogError::TooLarge));
    }

    #[test]
    fn instance_count_is_bounded() {
        let mut c = cfg();
        c.max_instances = 2;
        let body = "[{\"Node\":\"a\"},{\"Node\":\"b\"},{\"Node\":\"c\"}]";
        let r = parse_catalog(Some("200"), false, None, body.as_bytes(), body.len(), &c).unwrap();
        assert_eq!(r.instances.len(), 2);
        assert_eq!(r.dropped, 1);
    }

    #[test]
    fn values_and_maps_are_bounded() {
        let meta: Vec<String> = (0..40).map(|i| format!("\"k{i:02}\":\"v\"")).collect();
        let tags: Vec<String> = (0..40).map(|i| format!("\"t{i}\"")).collect();
        let body = format!(
            "[{{\"ServiceID\":\"{}\",\"ServiceMeta\":{{{}}},\"ServiceTags\":[{}]}}]",
            "é".repeat(200),
            meta.join(","),
            tags.join(",")
        );
        let c = parse(&body).unwrap();
        let i = &c.instances[0];
        assert!(i.service_id.len() <= MAX_VALUE_LEN);
        assert!(i.service_id.chars().all(|c| c == 'é'));
        assert_eq!(i.meta.len(), MAX_MAP_ENTRIES);
        assert_eq!(i.tags.len(), MAX_MAP_ENTRIES);
    }

    #[test]
    fn index_header_is_kept() {
        let r = parse_catalog(Some("200"), false, Some(" 1234 "), b"[]", 2, &cfg()).unwrap();
        assert_eq!(r.index, 1234);
        let r = parse_catalog(Some("200"), false, Some("x"), b"[]", 2, &cfg()).unwrap();
        assert_eq!(r.index, 0);
    }

    #[test]
    fn unknown_fields_are_skipped_however_deep() {
        // A user's proxy configuration is free-form JSON of any depth and type.
        let nested = "[".repeat(10_000) + &"]".repeat(10_000);
        let body = format!(
            r#"[{{"ServiceID":"web-1","ServicePort":80,
                "ServiceProxy":{{"Config":{{"protocol":"http","limits":[1,2.5,-3,true,null],
                "deep":{nested}}}}},"ServiceWeights":{{"Passing":1}},"ServiceLocality":null}}]"#
        );
        let c = parse(&body).unwrap();
        assert_eq!(c.instances.len(), 1);
        assert_eq!(c.instances[0].service_id, "web-1");
        assert_eq!(c.instances[0].service_port, 80);
        assert_eq!(c.invalid, 0);
    }

    #[test]
    fn odd_meta_values_and_tags_are_passed_over() {
        let c = parse(
            r#"[{"ServiceMeta":{"version":"1.0","weight":5,"flags":["a"],"owner":{"team":"x"},
                "gone":null,"canary":false,"region":"eu"},
                "NodeMeta":{"rack":7,"zone":"a"},
                "ServiceTags":["http",1,null,{"x":1},"blue"],"ModifyIndex":"12"}]"#,
        )
        .unwrap();
        let i = &c.instances[0];
        let meta: Vec<(&str, &str)> = i.meta.iter().collect();
        assert_eq!(meta, vec![("region", "eu"), ("version", "1.0")]);
        let node_meta: Vec<(&str, &str)> = i.node_meta.iter().collect();
        assert_eq!(node_meta, vec![("zone", "a")]);
        assert_eq!(i.tags, vec!["http", "blue"]);
        assert_eq!(i.modify_index, 0);
        assert_eq!(c.invalid, 0);
    }

    #[test]
    fn numbers_beyond_f64_are_passed_over_not_the_instance() {
        // serde_json cannot hold these ("number out of range"), yet they are valid JSON.
        let huge = format!("1{}", "0".repeat(400));
        let c = parse(&format!(
            r#"[{{"Node":"a","ModifyIndex":1e400,"ServiceMeta":{{"w":1e400,"v":"1"}},
                "NodeMeta":{{"n":-1e400,"zone":"z"}},"ServiceTags":[1e400,"t",[2e999]]}},
               {{"Node":"b","ModifyIndex":{huge},"ServiceMeta":{{"w":{huge}}}}}]"#
        ))
        .unwrap();
        assert_eq!(c.invalid, 0);
        let nodes: Vec<&str> = c.instances.iter().map(|i| i.node.as_str()).collect();
        assert_eq!(nodes, vec!["a", "b"]);
        let i = &c.instances[0];
        assert_eq!(i.modify_index, 0);
        assert_eq!(i.meta, map(&[("v", "1")]));
        assert_eq!(i.node_meta, map(&[("zone", "z")]));
        assert_eq!(i.tags, vec!["t"]);
        assert_eq!(c.instances[1].modify_index, 0);
        assert!(c.instances[1].meta.is_empty());

        let c = health(
            r#"[{"Node":{"Node":"n","Meta":{"m":1e400}},
                 "Service":{"ID":"s","ModifyIndex":-1e400,"Meta":{"w":1E+400},"Tags":[1e400]}}]"#,
        )
        .unwrap();
        assert_eq!((c.instances.len(), c.invalid), (1, 0));
        let i = &c.instances[0];
        assert_eq!((i.node.as_str(), i.service_id.as_str()), ("n", "s"));
        assert_eq!(i.modify_index, 0);
        assert!(i.meta.is_empty() && i.node_meta.is_empty() && i.tags.is_empty());
    }

    #[test]
    fn only_a_whole_number_within_u64_is_an_index() {
        for (json, index) in [
            ("0", 0),
            ("51", 51),
            ("18446744073709551615", u64::MAX),
            ("18446744073709551616", 0),
            ("-1", 0),
            ("-0", 0),
            ("12.0", 0),
            ("1e2", 0),
            ("\"12\"", 0),
            ("true", 0),
            ("null", 0),
            ("[1]", 0),
            ("{\"a\":1}", 0),
        ] {
            let c = parse(&format!(r#"[{{"ModifyIndex":{json}}}]"#)).unwrap();
            assert_eq!(
                (c.instances[0].modify_index, c.invalid),
                (index, 0),
                "{json}"
            );
        }
    }

    #[test]
    fn duplicate_meta_keys_keep_the_first() {
        let c = parse(r#"[{"ServiceMeta":{"version":"1","version":"2"}}]"#).unwrap();
        assert_eq!(c.instances[0].meta.get("version"), Some("1"));
        assert_eq!(c.instances[0].meta.len(), 1);
    }

    #[test]
    fn one_bad_entry_keeps_the_others() {
        let c = parse(
            r#"[{"Node":"a","ServicePort":5000},{"Node":5},{"ServicePort":70000},
                {"ServicePort":"80"},{"ServiceMeta":[]},"text",null,{"Node":"b"}]"#,
        )
        .unwrap();
        let nodes: Vec<&str> = c.instances.iter().map(|i| i.node.as_str()).collect();
        assert_eq!(nodes, vec!["a", "b"]);
        assert_eq!(c.invalid, 6);
        assert_eq!(c.dropped, 0);
    }

    #[test]
    fn the_instance_bound_counts_bad_entries_too() {
        let mut c = cfg();
        c.max_instances = 2;
        let body = r#"[1,{"Node":"a"},{"Node":"b"},{"Node":"c"}]"#;
        let r = parse_catalog(Some("200"), false, None, body.as_bytes(), body.len(), &c).unwrap();
        assert_eq!(r.instances.len(), 1);
        assert_eq!(r.instances[0].node, "a");
        assert_eq!((r.invalid, r.dropped), (1, 2));
    }

    #[test]
    fn entries_past_the_bound_must_still_be_json() {
        let mut c = cfg();
        c.max_instances = 1;
        let body = r#"[{"Node":"a"},{"Node":]"#;
        let r = parse_catalog(Some("200"), false, None, body.as_bytes(), body.len(), &c);
        assert_eq!(r, Err(CatalogError::InvalidJson));
    }

    #[test]
    fn broken_documents_are_invalid_json() {
        for body in [
            &b"[] x"[..],
            b"[{\"Node\":\"a\"}",
            b"[{\"Node\":\"\xff\"}]",
            b"[{\"Node\":\"\\ud800\"}]",
            b"[{\"Node\":\"a\"},]",
        ] {
            let r = parse_catalog(Some("200"), false, None, body, body.len(), &cfg());
            assert_eq!(
                r,
                Err(CatalogError::InvalidJson),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// The sample answer of Consul's API documentation for `/v1/health/service/:service`.
    const DOCUMENTED_HEALTH: &str = r#"[
      {
        "Node": {
          "ID": "40e4a748-2192-161a-0510-9bf59fe950b5",
          "Node": "foobar",
          "Address": "10.1.10.12",
          "Datacenter": "dc1",
          "TaggedAddresses": {"lan": "10.1.10.12", "wan": "10.1.10.12"},
          "Meta": {"instance_type": "t2.medium"}
        },
        "Service": {
          "ID": "redis",
          "Service": "redis",
          "Tags": ["primary"],
          "Address": "10.1.10.12",
          "TaggedAddresses": {
            "lan": {"address": "10.1.10.12", "port": 8000},
            "wan": {"address": "198.18.1.2", "port": 80}
          },
          "Meta": {"redis_version": "4.0"},
          "Port": 8000,
          "Weights": {"Passing": 10, "Warning": 1},
          "Namespace": "default"
        },
        "Checks": [
          {
            "Node": "foobar",
            "CheckID": "service:redis",
            "Name": "Service 'redis' check",
            "Status": "passing",
            "Notes": "",
            "Output": "",
            "ServiceID": "redis",
            "ServiceName": "redis",
            "ServiceTags": ["primary"],
            "Namespace": "default"
          },
          {
            "Node": "foobar",
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Namespace": "default"
          }
        ]
      }
    ]"#;

    fn health(body: &str) -> Result<Catalog, CatalogError> {
        parse_health(
            Some("200"),
            false,
            Some("7"),
            body.as_bytes(),
            body.len(),
            &cfg(),
        )
    }

    #[test]
    fn health_answer_parses_the_documented_response() {
        let c = health(DOCUMENTED_HEALTH).unwrap();
        assert_eq!((c.index, c.dropped, c.invalid), (7, 0, 0));
        assert_eq!(
            c.instances,
            vec![Instance {
                node: "foobar".into(),
                node_address: "10.1.10.12".into(),
                datacenter: "dc1".into(),
                node_meta: map(&[("instance_type", "t2.medium")]),
                service_id: "redis".into(),
                service_name: "redis".into(),
                service_address: "10.1.10.12".into(),
                service_port: 8000,
                tags: vec!["primary".into()],
                meta: map(&[("redis_version", "4.0")]),
                modify_index: 0,
            }]
        );
    }

    #[test]
    fn health_answer_reads_the_service_index_and_tolerates_nulls() {
        let c = health(
            r#"[{"Node":{"Node":"n1","Address":"10.0.0.1","Meta":null,"ModifyIndex":3},
                 "Service":{"ID":"echo-1","Service":"echo","Address":"","Port":8080,
                 "Tags":null,"Meta":null,"ModifyIndex":42},"Checks":null},
                {"Node":{"Node":"n2"},"Service":{"ID":"echo-2","Port":70000}},
                {}]"#,
        )
        .unwrap();
        assert_eq!(c.instances.len(), 2);
        let i = &c.instances[0];
        assert_eq!(i.address(), "10.0.0.1");
        assert_eq!(i.service_port, 8080);
        assert_eq!(i.modify_index, 42);
        assert!(i.tags.is_empty() && i.meta.is_empty() && i.node_meta.is_empty());
        assert_eq!(c.instances[1], Instance::default());
        assert_eq!(c.invalid, 1);
    }

    #[test]
    fn health_answer_has_the_catalogs_statuses_and_bounds() {
        let p = |s: Option<&str>, failed| parse_health(s, failed, None, b"[]", 2, &cfg());
        assert_eq!(p(Some("403"), false), Err(CatalogError::Forbidden));
        assert_eq!(p(Some("429"), false), Err(CatalogError::Throttled(429)));
        assert_eq!(p(Some("500"), false), Err(CatalogError::Status(500)));
        assert_eq!(p(None, false), Err(CatalogError::CallFailed));
        assert_eq!(p(Some("200"), true), Err(CatalogError::CallFailed));
        assert!(p(Some("200"), false).unwrap().instances.is_empty());

        let mut c = cfg();
        c.max_instances = 1;
        let two = format!(
            "[{0},{0}]",
            DOCUMENTED_HEALTH.trim().trim_matches(['[', ']'])
        );
        let r = parse_health(Some("200"), false, None, two.as_bytes(), two.len(), &c).unwrap();
        assert_eq!((r.instances.len(), r.dropped), (1, 1));
        c.max_body_bytes = 1024;
        let r = parse_health(Some("200"), false, None, b"[]", 2048, &c);
        assert_eq!(r, Err(CatalogError::TooLarge));
        for body in ["{}", "[1]", "[{\"Node\":\"foobar\"}]", "[{\"Service\":[]}]"] {
            assert_eq!(health(body), Err(CatalogError::InvalidJson), "{body}");
        }
    }

    fn map(entries: &[(&str, &str)]) -> StringMap {
        let mut m = StringMap::default();
        for (k, v) in entries {
            m.insert_if_absent(k.to_string(), v.to_string());
        }
        m
    }

    #[test]
    fn path_carries_dc_stale_and_filter() {
        let mut c = cfg();
        assert_eq!(
            lookup_path("echo", "", &c, None),
            "/v1/catalog/service/echo?stale"
        );
        assert_eq!(
            lookup_path("echo", "dc2", &c, None),
            "/v1/catalog/service/echo?dc=dc2&stale"
        );
        c.stale = false;
        c.filter = "ServiceMeta.version == \"2\"".into();
        assert_eq!(
            lookup_path("echo", "dc1", &c, None),
            "/v1/catalog/service/echo?dc=dc1&filter=ServiceMeta.version%20%3D%3D%20%222%22"
        );
        c.filter.clear();
        assert_eq!(
            lookup_path("echo", "", &c, None),
            "/v1/catalog/service/echo"
        );
    }

    #[test]
    fn path_of_health_cached_and_blocking_queries() {
        let mut c = cfg();
        c.endpoint = ConsulEndpoint::Health;
        c.cached = true;
        c.wait_s = 30;
        assert_eq!(
            lookup_path("echo", "", &c, None),
            "/v1/health/service/echo?passing&stale&cached"
        );
        assert_eq!(
            lookup_path("echo", "dc1", &c, Some(42)),
            "/v1/health/service/echo?passing&dc=dc1&stale&cached&index=42&wait=30s"
        );
    }
}
