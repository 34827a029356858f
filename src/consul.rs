//! The part of Consul's catalog API the filter uses: building the
//! `GET /v1/catalog/service/<name>` request and reading its answer.
//!
//! Consul's answer is untrusted input: unknown fields are ignored, maps and lists may be
//! `null`, and sizes are bounded so a huge registration cannot blow up the cache.

use crate::config::ConsulConfig;
use crate::json::{self, Json};

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

fn bounded(mut s: String) -> String {
    if s.len() > MAX_VALUE_LEN {
        let mut cut = MAX_VALUE_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// A string field: absent and `null` read as empty; any other type is not Consul's answer.
fn text(v: &Json) -> Result<String, CatalogError> {
    match v {
        Json::Null => Ok(String::new()),
        Json::String(s) => Ok(bounded(s.clone())),
        _ => Err(CatalogError::InvalidJson),
    }
}

/// A string map (`ServiceMeta`, `NodeMeta`): `null` reads as empty, at most
/// `MAX_MAP_ENTRIES` entries are kept, the first of duplicate keys wins.
fn string_map(v: &Json) -> Result<StringMap, CatalogError> {
    let mut map = StringMap::default();
    match v {
        Json::Null => {}
        Json::Object(items) => {
            for (k, v) in items {
                if map.len() == MAX_MAP_ENTRIES {
                    break;
                }
                map.insert_if_absent(bounded(k.clone()), text(v)?);
            }
        }
        _ => return Err(CatalogError::InvalidJson),
    }
    Ok(map)
}

fn instance(v: &Json) -> Result<Instance, CatalogError> {
    let Json::Object(fields) = v else {
        return Err(CatalogError::InvalidJson);
    };
    let mut i = Instance::default();
    for (name, value) in fields {
        match name.as_str() {
            "Node" => i.node = text(value)?,
            "Address" => i.node_address = text(value)?,
            "Datacenter" => i.datacenter = text(value)?,
            "NodeMeta" => i.node_meta = string_map(value)?,
            "ServiceID" => i.service_id = text(value)?,
            "ServiceName" => i.service_name = text(value)?,
            "ServiceAddress" => i.service_address = text(value)?,
            "ServicePort" => {
                i.service_port = match value {
                    Json::Null => 0,
                    v => v
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .ok_or(CatalogError::InvalidJson)?,
                }
            }
            "ServiceTags" => {
                i.tags = match value {
                    Json::Null => Vec::new(),
                    Json::Array(tags) => tags
                        .iter()
                        .take(MAX_MAP_ENTRIES)
                        .map(text)
                        .collect::<Result<_, _>>()?,
                    _ => return Err(CatalogError::InvalidJson),
                }
            }
            "ServiceMeta" => i.meta = string_map(value)?,
            "ModifyIndex" => i.modify_index = value.as_u64().unwrap_or(0),
            _ => {}
        }
    }
    Ok(i)
}

/// A usable catalog answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub instances: Vec<Instance>,
    /// `X-Consul-Index`, for blocking queries; 0 when absent or unparsable.
    pub index: u64,
    /// Instances Consul returned beyond `consul.max_instances`, dropped.
    pub dropped: usize,
}

/// Reads a catalog answer from the dispatch response's status, headers and body.
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
    let doc = json::parse(body).map_err(|_| CatalogError::InvalidJson)?;
    let Json::Array(items) = doc else {
        return Err(CatalogError::InvalidJson);
    };
    let max = config.max_instances as usize;
    let dropped = items.len().saturating_sub(max);
    let instances = items
        .iter()
        .take(max)
        .map(instance)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Catalog {
        instances,
        index: consul_index
            .and_then(|i| i.trim().parse().ok())
            .unwrap_or(0),
        dropped,
    })
}

/// The request path for `GET /v1/catalog/service/<service>` with the configured query.
///
/// `datacenter` overrides `consul.datacenter` (it comes from a `<name>.service.<dc>.consul`
/// host). The service name is already restricted to URL-safe characters.
pub fn catalog_path(service: &str, datacenter: Option<&str>, config: &ConsulConfig) -> String {
    let mut path = String::with_capacity(64 + service.len() + config.filter.len() * 3);
    path.push_str("/v1/catalog/service/");
    path.push_str(service);
    let mut sep = '?';
    let dc = datacenter.unwrap_or(&config.datacenter);
    if !dc.is_empty() {
        path.push(sep);
        path.push_str("dc=");
        path.push_str(dc);
        sep = '&';
    }
    if config.stale {
        path.push(sep);
        path.push_str("stale");
        sep = '&';
    }
    if !config.filter.is_empty() {
        path.push(sep);
        path.push_str("filter=");
        percent_encode_query(&config.filter, &mut path);
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
    fn path_carries_dc_stale_and_filter() {
        let mut c = cfg();
        assert_eq!(
            catalog_path("echo", None, &c),
            "/v1/catalog/service/echo?stale"
        );
        c.datacenter = "dc1".into();
        assert_eq!(
            catalog_path("echo", None, &c),
            "/v1/catalog/service/echo?dc=dc1&stale"
        );
        assert_eq!(
            catalog_path("echo", Some("dc2"), &c),
            "/v1/catalog/service/echo?dc=dc2&stale"
        );
        c.stale = false;
        c.filter = "ServiceMeta.version == \"2\"".into();
        assert_eq!(
            catalog_path("echo", None, &c),
            "/v1/catalog/service/echo?dc=dc1&filter=ServiceMeta.version%20%3D%3D%20%222%22"
        );
        c.datacenter.clear();
        c.filter.clear();
        assert_eq!(catalog_path("echo", None, &c), "/v1/catalog/service/echo");
    }
}
