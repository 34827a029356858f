//! What the filter adds to a request: headers for the upstream, W3C baggage members and
//! span attributes, at service level (on request headers) and at instance level (on
//! response headers, once the host says which upstream address it used).
//!
//! Everything that came from Consul is untrusted: it passes through
//! [`header_value::sanitize`] before it reaches a header, and [`header_value::clean_text`]
//! before it reaches a baggage member or an attribute; meta keys pass through
//! [`header_value::attribute_key`] before they become part of an attribute name.

use std::net::IpAddr;

use crate::cache::Lookup;
use crate::config::{Config, HostKind};
use crate::consul::Instance;
use crate::header_value::{attribute_key, clean_text, sanitize};
use crate::trace_context::Baggage;

/// Longest value the filter writes into one header, baggage member or attribute.
pub const MAX_VALUE_LEN: usize = 256;
/// Most `consul.service.meta.*` / `consul.node.meta.*` attributes per span.
const MAX_META_ATTRIBUTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    /// A string array (OpenTelemetry's `consul.service.tags`-like lists).
    List(Vec<String>),
}

impl AttrValue {
    /// The value as text, a list joined by `,` (for hosts whose tags are strings).
    pub fn to_text(&self) -> String {
        match self {
            AttrValue::Str(text) => text.clone(),
            AttrValue::Int(n) => n.to_string(),
            AttrValue::List(items) => items.join(","),
        }
    }
}

/// Span attributes in the order they were added.
pub type Attributes = Vec<(String, AttrValue)>;

/// The service-level result of a lookup, ready to be written to the request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Enrichment {
    pub headers: Vec<(String, String)>,
    pub baggage: Vec<(String, String)>,
    pub attributes: Attributes,
}

fn str_attr(attrs: &mut Attributes, key: &str, value: &str) {
    if let Some(v) = clean_text(value, MAX_VALUE_LEN) {
        attrs.push((key.to_string(), AttrValue::Str(v.into_owned())));
    }
}

/// The `<prefix>lookup` request header on Kong when what the client sent under the filter's
/// names reaches the upstream (the companion plugin did not run on the route): the other
/// headers under the prefix, and `consul.*` baggage, may then be the client's.
pub const UNSTRIPPED: &str = "unstripped";

/// `a` followed by `b` in one allocation (header names, attribute names).
pub fn concat(a: &str, b: &str) -> String {
    let mut s = String::with_capacity(a.len() + b.len());
    s.push_str(a);
    s.push_str(b);
    s
}

/// Sorted distinct values of one field over all instances, joined by `,` (a single value
/// when the instances agree); None when no instance has it.
fn value_set<'a>(
    instances: &'a [Instance],
    field: impl Fn(&'a Instance) -> Option<&'a str>,
) -> Option<String> {
    let mut set: Vec<&str> = instances
        .iter()
        .filter_map(field)
        .filter(|v| !v.is_empty())
        .collect();
    set.sort_unstable();
    set.dedup();
    if set.is_empty() {
        return None;
    }
    let mut joined = String::new();
    for v in set {
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(v);
    }
    Some(joined)
}

/// The service-level enrichment of `service`, given the cached instances (empty when the
/// lookup found nothing usable). It is the same for every request to that service with the
/// same lookup outcome, so the filter computes it once per cache entry.
pub fn for_service(
    config: &Config,
    service: &str,
    instances: &[Instance],
    lookup: Lookup,
) -> Enrichment {
    let mut e = Enrichment::default();
    str_attr(&mut e.attributes, "service.peer.name", service);
    e.attributes.push((
        "consul.lookup".to_string(),
        AttrValue::Str(lookup.label().to_string()),
    ));
    let prefix = &config.headers.prefix;
    let mut header = |name: &str, value: &str| {
        if let Some(v) = sanitize(value, MAX_VALUE_LEN) {
            e.headers.push((concat(prefix, name), v.into_owned()));
        }
    };
    if instances.is_empty() {
        // Nothing usable: the upstream learns only why (`error` or `unknown`).
        header("lookup", lookup.label());
        return e;
    }
    header("service", service);
    let datacenters = value_set(instances, |i| Some(&i.datacenter));
    if let Some(dc) = &datacenters {
        header("datacenter", dc);
    }
    let meta_sets: Vec<(&str, String)> = config
        .meta_keys
        .iter()
        .filter_map(|k| value_set(instances, |i| i.meta.get(k)).map(|v| (k.as_str(), v)))
        .collect();
    for (k, v) in &meta_sets {
        header(&concat("meta-", k), v);
    }
    header("instances", &instances.len().to_string());
    header("lookup", lookup.label());

    if config.baggage.enabled {
        let mut member = |key: String, value: &str| {
            if let Some(v) = clean_text(value, MAX_VALUE_LEN) {
                e.baggage.push((key, v.into_owned()));
            }
        };
        member("consul.service".to_string(), service);
        if let Some(dc) = &datacenters {
            member("consul.datacenter".to_string(), dc);
        }
        for (k, v) in &meta_sets {
            member(concat("consul.service.meta.", k), v);
        }
    }

    if let Some(dc) = &datacenters {
        str_attr(&mut e.attributes, "consul.datacenter", dc);
    }
    let mut all_keys: Vec<&str> = instances
        .iter()
        .flat_map(|i| i.meta.iter().map(|(k, _)| k))
        .collect();
    all_keys.sort_unstable();
    all_keys.dedup();
    for k in all_keys.into_iter().take(MAX_META_ATTRIBUTES) {
        if let (Some(name), Some(v)) = (attribute_key(k), value_set(instances, |i| i.meta.get(k))) {
            str_attr(
                &mut e.attributes,
                &concat("consul.service.meta.", &name),
                &v,
            );
        }
    }
    e
}

/// Attributes of the caller's baggage members named in `read_keys` (the configuration's
/// `baggage.read_keys`), such as the UI component.
pub fn baggage_attributes(baggage: &Baggage, read_keys: &[String]) -> Attributes {
    let mut attrs = Attributes::new();
    for key in read_keys {
        if let Some(value) = baggage.get(key) {
            str_attr(&mut attrs, key, &value);
        }
    }
    attrs
}

/// The upstream peer the gateway connected to, its address in canonical form so that
/// it compares with Consul's as an address: IPv6 without brackets or zone and with `::`
/// compression (`std::net::Ipv6Addr`'s display, RFC 5952), hostnames lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: String,
    pub port: u16,
    /// The address as an IP address, when it is one.
    ip: Option<IpAddr>,
}

impl Peer {
    /// From `ip:port` (IPv6 in brackets): Envoy's `upstream.address`, or on Kong the last
    /// peer of nginx's `$upstream_addr` ([`last_upstream_addr`]).
    pub fn parse(address: &str) -> Option<Peer> {
        let (host, port) = address.trim().rsplit_once(':')?;
        let port = port.parse().ok()?;
        let (ip, bare) = parse_host(host);
        let address = match ip {
            // An IPv4 address that parses is already in canonical form.
            Some(IpAddr::V4(_)) if !bare.contains('%') => bare.to_string(),
            Some(ip) => ip.to_string(),
            None if bare.is_empty() => return None,
            None => bare.to_ascii_lowercase(),
        };
        Some(Peer { address, port, ip })
    }

    /// Whether `host` (an instance's address) is this peer's, compared as addresses; no
    /// allocation, as it runs for each instance on every response.
    fn is_host(&self, host: &str) -> bool {
        match (parse_host(host), self.ip) {
            ((Some(ip), _), Some(own)) => ip == own,
            ((None, bare), None) => !bare.is_empty() && bare.eq_ignore_ascii_case(&self.address),
            _ => false,
        }
    }
}

/// The peer that answered, from nginx's `$upstream_addr`: one `ip:port` per upstream
/// tried, `, ` between tries and ` : ` between internal redirects, in order
/// (`ngx_http_upstream_addr_variable`, `src/http/ngx_http_upstream.c`).
pub fn last_upstream_addr(upstream_addr: &str) -> &str {
    let after_redirects = upstream_addr.rsplit(" : ").next().unwrap_or(upstream_addr);
    after_redirects
        .rsplit(',')
        .next()
        .unwrap_or(after_redirects)
        .trim()
}

/// A host as an IP address (brackets and IPv6 zone dropped) when it is one, and the host
/// without brackets.
fn parse_host(host: &str) -> (Option<IpAddr>, &str) {
    let host = host.trim();
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let zone_free = bare.split_once('%').map_or(bare, |(ip, _)| ip);
    (zone_free.parse().ok(), bare)
}

/// The instance the gateway actually connected to, by its position in `instances`.
pub fn match_instance(instances: &[Instance], peer: &Peer) -> Option<usize> {
    instances
        .iter()
        .position(|i| i.service_port == peer.port && peer.is_host(i.address()))
}

/// The attributes of the peer address the host reported.
const PEER_ADDRESS: &str = "network.peer.address";
const PEER_PORT: &str = "network.peer.port";

/// The peer address the host reported, a request's own.
pub fn for_peer(peer: &Peer) -> Attributes {
    let mut attrs = Attributes::with_capacity(2);
    str_attr(&mut attrs, PEER_ADDRESS, &peer.address);
    attrs.push((PEER_PORT.to_string(), AttrValue::Int(i64::from(peer.port))));
    attrs
}

/// Attributes of the instance used. They replace the service-level `consul.*` values of
/// the same name.
pub fn for_instance(i: &Instance) -> Attributes {
    let mut attrs = Attributes::new();
    str_attr(&mut attrs, "server.address", i.address());
    attrs.push((
        "server.port".to_string(),
        AttrValue::Int(i64::from(i.service_port)),
    ));
    str_attr(&mut attrs, "consul.service.id", &i.service_id);
    str_attr(&mut attrs, "consul.node", &i.node);
    str_attr(&mut attrs, "consul.datacenter", &i.datacenter);
    if !i.tags.is_empty() {
        let tags: Vec<String> = i
            .tags
            .iter()
            .filter_map(|t| clean_text(t, MAX_VALUE_LEN).map(|t| t.into_owned()))
            .collect();
        attrs.push(("consul.service.tags".to_string(), AttrValue::List(tags)));
    }
    for (k, v) in i.meta.iter().take(MAX_META_ATTRIBUTES) {
        if let Some(name) = attribute_key(k) {
            str_attr(&mut attrs, &concat("consul.service.meta.", &name), v);
        }
    }
    for (k, v) in i.node_meta.iter().take(MAX_META_ATTRIBUTES) {
        if let Some(name) = attribute_key(k) {
            str_attr(&mut attrs, &concat("consul.node.meta.", &name), v);
        }
    }
    attrs
}

/// Response headers for the client (only with `headers.response`): the instance's id and
/// node on top of the service-level headers.
pub fn instance_headers(config: &Config, instance: &Instance) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    for (name, value) in [
        ("instance-id", &instance.service_id),
        ("node", &instance.node),
    ] {
        if let Some(v) = sanitize(value, MAX_VALUE_LEN) {
            headers.push((concat(&config.headers.prefix, name), v.into_owned()));
        }
    }
    headers
}

/// Envoy: the property path an attribute is set at for envoy.yaml's custom tags. Envoy keeps
/// a property a Wasm filter sets as the filter state `wasm.` + its path
/// (`Context::setProperty`, source/extensions/common/wasm/context.cc), which the tags read
/// with `%FILTER_STATE(wasm.consul_enricher.<attribute>:PLAIN)%`. One segment: Envoy takes
/// the path's bytes as they are, so NUL separators would end up in the key.
pub fn filter_state_path(attribute: &str) -> String {
    concat("consul_enricher.", attribute)
}

/// The attribute a request's lookup duration goes in.
pub const LOOKUP_DURATION: &str = "consul.lookup.duration_ms";

/// One request's attributes, in three layers, each replacing the one before by key: the
/// service's (shared by every request served from one cache entry, so never copied per
/// request), the request's own (baggage values, lookup duration, peer address) and the
/// serving instance's (shared like the service's; what Consul says of the instance wins).
#[derive(Clone, Copy)]
pub struct RequestAttributes<'a> {
    pub service: &'a Attributes,
    pub own: &'a Attributes,
    pub instance: &'a Attributes,
}

fn has_key(attrs: &Attributes, key: &str) -> bool {
    attrs.iter().any(|(k, _)| k == key)
}

impl<'a> RequestAttributes<'a> {
    pub fn iter(self) -> impl Iterator<Item = &'a (String, AttrValue)> {
        let (own, instance) = (self.own, self.instance);
        self.service
            .iter()
            .filter(move |(key, _)| !has_key(own, key) && !has_key(instance, key))
            .chain(own.iter().filter(move |(key, _)| !has_key(instance, key)))
            .chain(instance)
    }
}

/// What a request's serving instance adds, computed once per cache entry, lookup outcome
/// and instance (or none matched), with the nginx-variable JSON of every attribute no
/// request replaces already written, so that a response writes only its own members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    /// The instance's attributes (none when no instance matched).
    pub attributes: Attributes,
    /// Its response headers (`headers.response`).
    pub headers: Vec<(String, String)>,
    /// Envoy: each attribute as the property path it is set at for envoy.yaml's custom tags
    /// (`consul_enricher.<attribute>`) and its text, so that a response only makes the
    /// calls (empty on Kong).
    pub filter_state: Vec<(String, String)>,
    /// The service's attributes that no request's own replaces and the instance's, as
    /// JSON object members.
    json_members: Vec<u8>,
    /// The service's a request's own may replace (named in `baggage.read_keys`).
    replaceable: Attributes,
}

impl InstanceView {
    pub fn new(config: &Config, service: &Attributes, instance: Option<&Instance>) -> InstanceView {
        let attributes = instance.map(for_instance).unwrap_or_default();
        let headers = instance
            .map(|i| instance_headers(config, i))
            .unwrap_or_default();
        let filter_state = match config.host {
            HostKind::Envoy => attributes
                .iter()
                .map(|(name, value)| (filter_state_path(name), value.to_text()))
                .collect(),
            HostKind::Kong => Vec::new(),
        };
        let layers = RequestAttributes {
            service,
            own: &Vec::new(),
            instance: &attributes,
        };
        let own_only = |key: &str| [LOOKUP_DURATION, PEER_ADDRESS, PEER_PORT].contains(&key);
        let replaceable_key = |key: &str| config.baggage.read_keys.iter().any(|k| k == key);
        let mut json_members = Vec::new();
        write_members(
            &mut json_members,
            &mut layers
                .iter()
                .filter(|(k, _)| !own_only(k) && !replaceable_key(k)),
        );
        let replaceable = layers
            .iter()
            .filter(|(k, _)| replaceable_key(k) && !has_key(&attributes, k))
            .cloned()
            .collect();
        InstanceView {
            attributes,
            headers,
            filter_state,
            json_members,
            replaceable,
        }
    }

    /// Every attribute of a request with these `own` attributes as one JSON object
    /// (Kong's nginx variable, `$consul_enricher` by default), written into one buffer.
    pub fn json_object(&self, own: &Attributes) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.json_members.len() + 128);
        out.push(b'{');
        out.extend_from_slice(&self.json_members);
        write_members(
            &mut out,
            &mut self
                .replaceable
                .iter()
                .filter(|(k, _)| !has_key(own, k))
                .chain(own.iter().filter(|(k, _)| !has_key(&self.attributes, k))),
        );
        out.push(b'}');
        out
    }
}

/// Appends attributes as JSON object members (`"key":value`, comma-separated, after any
/// members `out` already holds), serde_json writing each key and value.
fn write_members(out: &mut Vec<u8>, attrs: &mut dyn Iterator<Item = &(String, AttrValue)>) {
    for (key, value) in attrs {
        if !matches!(out.last(), None | Some(b'{')) {
            out.push(b',');
        }
        // Cannot fail: keys and values are strings, integers and string lists, and the
        // output is memory.
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        let _ = match value {
            AttrValue::Str(text) => serde_json::to_writer(&mut *out, text),
            AttrValue::Int(n) => serde_json::to_writer(&mut *out, n),
            AttrValue::List(items) => serde_json::to_writer(&mut *out, items),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::StringMap;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn instance(id: &str, addr: &str, port: u16, version: &str, region: &str) -> Instance {
        let mut meta = StringMap::default();
        meta.insert_if_absent("version".to_string(), version.to_string());
        meta.insert_if_absent("region".to_string(), region.to_string());
        Instance {
            node: format!("node-{id}"),
            node_address: "10.9.9.9".into(),
            datacenter: "dc1".into(),
            service_id: id.into(),
            service_name: "echo".into(),
            service_address: addr.into(),
            service_port: port,
            tags: vec!["http".into(), "blue".into()],
            meta,
            ..Instance::default()
        }
    }

    fn header<'a>(e: &'a Enrichment, name: &str) -> Option<&'a str> {
        e.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn attr<'a>(a: &'a Attributes, name: &str) -> Option<&'a AttrValue> {
        a.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn s(v: &str) -> AttrValue {
        AttrValue::Str(v.into())
    }

    #[test]
    fn one_version_is_a_single_value() {
        let cfg = Config::default();
        let inst = [
            instance("a", "10.0.0.1", 80, "1.0", "eu"),
            instance("b", "10.0.0.2", 80, "1.0", "eu"),
        ];
        let e = for_service(&cfg, "echo", &inst, Lookup::Hit);
        assert_eq!(header(&e, "x-consul-service"), Some("echo"));
        assert_eq!(header(&e, "x-consul-datacenter"), Some("dc1"));
        assert_eq!(header(&e, "x-consul-meta-version"), Some("1.0"));
        assert_eq!(header(&e, "x-consul-meta-region"), Some("eu"));
        assert_eq!(header(&e, "x-consul-instances"), Some("2"));
        assert_eq!(header(&e, "x-consul-lookup"), Some("hit"));
        assert_eq!(
            e.baggage,
            vec![
                ("consul.service".to_string(), "echo".to_string()),
                ("consul.datacenter".to_string(), "dc1".to_string()),
                ("consul.service.meta.version".to_string(), "1.0".to_string()),
                ("consul.service.meta.region".to_string(), "eu".to_string()),
            ]
        );
        assert_eq!(attr(&e.attributes, "service.peer.name"), Some(&s("echo")));
        assert_eq!(
            attr(&e.attributes, "consul.service.meta.version"),
            Some(&s("1.0"))
        );
    }

    #[test]
    fn differing_versions_are_the_sorted_set() {
        let cfg = Config::default();
        let inst = [
            instance("a", "10.0.0.1", 80, "2.0", "us"),
            instance("b", "10.0.0.2", 80, "1.0", "eu"),
            instance("c", "10.0.0.3", 80, "2.0", "eu"),
        ];
        let e = for_service(&cfg, "echo", &inst, Lookup::Stale { refresh: true });
        assert_eq!(header(&e, "x-consul-meta-version"), Some("1.0,2.0"));
        assert_eq!(header(&e, "x-consul-meta-region"), Some("eu,us"));
        assert_eq!(header(&e, "x-consul-lookup"), Some("stale"));
    }

    #[test]
    fn nothing_usable_says_only_why() {
        let cfg = Config::default();
        let caller = Baggage::parse("ui.component=checkout-form,other=1").expect("valid");
        let e = for_service(&cfg, "echo", &[], Lookup::Backoff);
        assert_eq!(
            e.headers,
            vec![("x-consul-lookup".to_string(), "error".to_string())]
        );
        assert!(e.baggage.is_empty());
        assert_eq!(attr(&e.attributes, "consul.lookup"), Some(&s("error")));
        let unknown = for_service(&cfg, "echo", &[], Lookup::Negative);
        assert_eq!(header(&unknown, "x-consul-lookup"), Some("unknown"));
        assert_eq!(unknown.headers.len(), 1);
        assert_eq!(
            attr(
                &baggage_attributes(&caller, &cfg.baggage.read_keys),
                "ui.component"
            ),
            Some(&s("checkout-form"))
        );
        assert_eq!(
            attr(
                &baggage_attributes(&caller, &cfg.baggage.read_keys),
                "other"
            ),
            None
        );
    }

    #[test]
    fn prefix_meta_keys_and_baggage_switch_are_honoured() {
        let mut cfg = Config::default();
        cfg.headers.prefix = "x-svc-".into();
        cfg.meta_keys = vec!["region".into(), "absent".into()];
        cfg.baggage.enabled = false;
        let inst = [instance("a", "10.0.0.1", 80, "1.0", "eu")];
        let e = for_service(&cfg, "echo", &inst, Lookup::Miss);
        assert_eq!(header(&e, "x-svc-meta-region"), Some("eu"));
        assert_eq!(header(&e, "x-svc-meta-version"), None);
        assert_eq!(header(&e, "x-svc-meta-absent"), None);
        assert!(e.baggage.is_empty());
        // Attributes carry every meta key regardless of meta_keys.
        assert_eq!(
            attr(&e.attributes, "consul.service.meta.version"),
            Some(&s("1.0"))
        );
    }

    #[test]
    fn hostile_consul_values_never_reach_headers_raw() {
        let cfg = Config::default();
        let mut evil = instance(
            "a\r\nx-injected: 1",
            "10.0.0.1",
            80,
            "1.0\r\nSet-Cookie: x=y",
            "eu\0",
        );
        evil.datacenter = "x".repeat(5000);
        let e = for_service(&cfg, "echo", &[evil.clone()], Lookup::Hit);
        for (n, v) in e.headers.iter().chain(e.baggage.iter()) {
            assert!(v.bytes().all(|b| b >= 0x20 && b != 0x7f), "{n}: {v:?}");
            assert!(v.len() <= MAX_VALUE_LEN);
        }
        let attrs = for_instance(&evil);
        for (_, v) in &attrs {
            if let AttrValue::Str(v) = v {
                assert!(!v.contains('\r') && !v.contains('\n') && !v.contains('\0'));
            }
        }
    }

    fn peer(address: &str) -> Option<Peer> {
        Peer::parse(address)
    }

    fn matched(instances: &[Instance], peer: Option<Peer>) -> Option<&str> {
        let at = match_instance(instances, &peer?)?;
        instances.get(at).map(|i| i.service_id.as_str())
    }

    #[test]
    fn upstream_address_picks_the_instance() {
        let inst = [
            instance("a", "10.0.0.1", 8080, "1.0", "eu"),
            instance("b", "10.0.0.2", 8080, "2.0", "us"),
            instance("c", "", 9090, "3.0", "ap"),
        ];
        assert_eq!(matched(&inst, peer("10.0.0.2:8080")), Some("b"));
        assert_eq!(matched(&inst, peer("10.9.9.9:9090")), Some("c"));
        assert_eq!(matched(&inst, peer("10.0.0.2:9999")), None);
        assert_eq!(peer("garbage"), None);
        assert_eq!(peer(""), None);
        assert_eq!(peer("10.0.0.2:"), None);
    }

    #[test]
    fn kong_takes_the_last_peer_of_upstream_addr() {
        let inst = [instance("b", "10.0.0.2", 8080, "2.0", "us")];
        let kong = |v| peer(last_upstream_addr(v));
        assert_eq!(matched(&inst, kong("10.0.0.2:8080")), Some("b"));
        assert_eq!(
            matched(&inst, kong("10.0.0.1:8080, 10.0.0.2:8080")),
            Some("b")
        );
        assert_eq!(matched(&inst, kong("10.0.0.2:8080, 10.0.0.1:8080")), None);
        assert_eq!(
            matched(&inst, kong("10.0.0.9:80 : 10.0.0.2:8080")),
            Some("b")
        );
        assert_eq!(
            last_upstream_addr("[::1]:80, [2001:db8::1]:5000"),
            "[2001:db8::1]:5000"
        );
        assert_eq!(kong("unix:/tmp/echo.sock"), None);
        assert_eq!(kong(""), None);
    }

    #[test]
    fn ipv6_compares_as_an_address() {
        let long_form = [instance("d", "2001:db8:0:0:0:0:0:1", 5000, "1", "x")];
        assert_eq!(matched(&long_form, peer("[2001:db8::1]:5000")), Some("d"));
        let short = [instance("e", "::1", 80, "1", "x")];
        assert_eq!(matched(&short, peer("[::1]:80")), Some("e"));
        assert_eq!(matched(&short, peer("[0:0::1%eth0]:80")), Some("e"));
        let upper = [instance("f", "2001:DB8::A", 80, "1", "x")];
        assert_eq!(matched(&upper, peer("[2001:db8::a]:80")), Some("f"));
        assert_eq!(
            peer("[2001:db8::1]:5000").map(|p| p.address),
            Some("2001:db8::1".to_string())
        );
    }

    #[test]
    fn instance_attributes() {
        let i = instance("b", "10.0.0.2", 8080, "2.0", "us");
        let a = for_instance(&i);
        assert_eq!(attr(&a, "server.address"), Some(&s("10.0.0.2")));
        assert_eq!(attr(&a, "server.port"), Some(&AttrValue::Int(8080)));
        assert_eq!(attr(&a, "consul.service.id"), Some(&s("b")));
        assert_eq!(attr(&a, "consul.node"), Some(&s("node-b")));
        assert_eq!(attr(&a, "consul.datacenter"), Some(&s("dc1")));
        assert_eq!(
            attr(&a, "consul.service.tags"),
            Some(&AttrValue::List(vec!["http".into(), "blue".into()]))
        );
        assert_eq!(attr(&a, "consul.service.meta.version"), Some(&s("2.0")));
        assert_eq!(attr(&a, "consul.service.meta.region"), Some(&s("us")));
        let peer_attrs = for_peer(&Peer::parse("10.0.0.2:8080").unwrap());
        assert_eq!(
            peer_attrs,
            vec![
                ("network.peer.address".to_string(), s("10.0.0.2")),
                ("network.peer.port".to_string(), AttrValue::Int(8080))
            ]
        );
    }

    fn attrs(pairs: &[(&str, AttrValue)]) -> Attributes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// The nginx-variable object of a request: what its instance view writes, checked
    /// against the layers it stands for.
    fn json(config: &Config, service: &Attributes, own: &Attributes) -> String {
        let view = InstanceView::new(config, service, None);
        let out = String::from_utf8(view.json_object(own)).expect("UTF-8");
        let layers = RequestAttributes {
            service,
            own,
            instance: &view.attributes,
        };
        let parsed: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&out).expect("a JSON object");
        assert_eq!(parsed.len(), layers.iter().count(), "{out}");
        out
    }

    #[test]
    fn each_layer_replaces_the_one_before_by_key() {
        let service = attrs(&[
            ("x", s("1")),
            ("y", s("2")),
            ("server.port", AttrValue::Int(1)),
        ]);
        let own = attrs(&[
            ("y", s("3")),
            ("server.port", AttrValue::Int(2)),
            ("z", AttrValue::Int(4)),
        ]);
        let instance = attrs(&[("server.port", AttrValue::Int(3))]);
        let layers = RequestAttributes {
            service: &service,
            own: &own,
            instance: &instance,
        };
        let seen: Vec<_> = layers.iter().cloned().collect();
        assert_eq!(
            seen,
            attrs(&[
                ("x", s("1")),
                ("y", s("3")),
                ("z", AttrValue::Int(4)),
                ("server.port", AttrValue::Int(3))
            ])
        );
    }

    #[test]
    fn the_json_object_has_every_layer_once() {
        let cfg = Config::default();
        let service = attrs(&[
            ("service.peer.name", s("echo")),
            ("ui.component", s("from-service")),
            ("consul.lookup", s("hit")),
        ]);
        let own = attrs(&[
            ("ui.component", s("checkout")),
            (LOOKUP_DURATION, AttrValue::Int(0)),
            ("network.peer.port", AttrValue::Int(8080)),
        ]);
        assert_eq!(
            json(&cfg, &service, &own),
            r#"{"service.peer.name":"echo","consul.lookup":"hit","ui.component":"checkout","consul.lookup.duration_ms":0,"network.peer.port":8080}"#
        );
        // Without the baggage member, the service's value of a read key stays.
        let without = attrs(&[(LOOKUP_DURATION, AttrValue::Int(3))]);
        assert_eq!(
            json(&cfg, &service, &without),
            r#"{"service.peer.name":"echo","consul.lookup":"hit","ui.component":"from-service","consul.lookup.duration_ms":3}"#
        );
        assert_eq!(json(&cfg, &Vec::new(), &Vec::new()), "{}");
        assert_eq!(json(&cfg, &service, &Vec::new()).matches(':').count(), 3);
        assert_eq!(json(&cfg, &Vec::new(), &own).matches(':').count(), 3);
    }

    #[test]
    fn the_instance_wins_over_the_request_and_the_service() {
        let cfg = Config::default();
        let i = instance("b", "10.0.0.2", 8080, "2.0", "us");
        let service = attrs(&[("consul.service.meta.version", s("1.0,2.0"))]);
        let view = InstanceView::new(&cfg, &service, Some(&i));
        let own = attrs(&[
            ("server.address", s("forged")),
            (LOOKUP_DURATION, AttrValue::Int(1)),
        ]);
        let out: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&view.json_object(&own)).expect("a JSON object");
        assert_eq!(out["server.address"], "10.0.0.2");
        assert_eq!(out["consul.service.meta.version"], "2.0");
        assert_eq!(out[LOOKUP_DURATION], 1);
        assert_eq!(out.len(), view.attributes.len() + 1);
        assert_eq!(view.headers.len(), 2);
    }

    #[test]
    fn json_object_escapes() {
        let a = vec![
            ("a\"b".to_string(), s("line\nbreak\\")),
            ("n".to_string(), AttrValue::Int(-5)),
        ];
        let cfg = Config::default();
        assert_eq!(
            json(&cfg, &a, &Vec::new()),
            r#"{"a\"b":"line\nbreak\\","n":-5}"#
        );
    }

    #[test]
    fn json_object_parses_back_to_its_attributes() {
        for input in [
            "",
            "plain",
            "\"",
            "\\\\",
            "a\u{1}b\u{1f}c\u{7f}",
            "Zürich ✓ \"quoted\" \\ end",
            "\u{0}",
            "tail\n",
        ] {
            let attrs = vec![
                (input.to_string(), s(input)),
                ("n".to_string(), AttrValue::Int(i64::MIN)),
            ];
            let out = json(&Config::default(), &attrs, &Vec::new());
            let back: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&out).expect("a JSON object");
            assert_eq!(back.len(), 2, "{out}");
            assert_eq!(back[input], input, "{out}");
            assert_eq!(back["n"], i64::MIN, "{out}");
        }
    }

    #[test]
    fn instance_headers_are_sanitised() {
        let cfg = Config::default();
        let i = instance("id\r\n1", "10.0.0.1", 80, "1", "x");
        let h = instance_headers(&cfg, &i);
        assert_eq!(h[0].0, "x-consul-instance-id");
        assert!(!h[0].1.contains('\r'));
        assert_eq!(h[1].0, "x-consul-node");
        assert!(h[1].1.starts_with("node-id") && !h[1].1.contains('\n'));
    }
}
