//! The filter's configuration: one JSON object, parsed once in `on_configure`.
//!
//! The structs below are the schema. serde reads them: every struct refuses unknown keys and
//! takes its `Default` for absent ones (docs/configuration.md's table), and is read from an
//! object only, with no key twice, and an error names its key by its dotted path, so the
//! host's log says what to fix ([`crate::object`]). What types cannot say (ranges, formats,
//! rules across keys) is checked by one `validate` step after.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use crate::header_value::is_token;
use crate::object::{
    clear_error_path, config_strings, from_config_object as object, take_error_path,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostKind {
    /// Kong Gateway (ngx_wasm_module): dispatch upstream is `host:port`.
    Kong,
    /// Envoy: dispatch upstream is a cluster name.
    Envoy,
}

/// By hand rather than derived: serde_json reads a derived enum only from a string or an
/// object and answers anything else with a bare "expected value"; this names the type.
impl<'de> Deserialize<'de> for HostKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "kong" => Ok(HostKind::Kong),
            "envoy" => Ok(HostKind::Envoy),
            other => Err(de::Error::unknown_variant(other, &["kong", "envoy"])),
        }
    }
}

// `Serialize` writes a configuration back as the JSON it was read from (tests and fuzzing
// compare the field list with docs/configuration.md and the Kong schema); the filter never
// calls it, so it adds nothing to the `.wasm`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub host: HostKind,
    #[serde(deserialize_with = "object")]
    pub consul: ConsulConfig,
    #[serde(deserialize_with = "object")]
    pub service: ServiceConfig,
    #[serde(deserialize_with = "object")]
    pub cache: CacheConfig,
    #[serde(deserialize_with = "object")]
    pub headers: HeadersConfig,
    #[serde(deserialize_with = "config_strings")]
    pub meta_keys: Vec<String>,
    #[serde(deserialize_with = "object")]
    pub baggage: BaggageConfig,
    /// Kong (ngx_wasm_module): the nginx variable that receives the request's attributes
    /// as one JSON object; empty: none is written.
    pub nginx_variable: String,
    pub strip_incoming: bool,
    #[serde(deserialize_with = "object")]
    pub spans: SpansConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulConfig {
    pub upstream: String,
    pub authority: String,
    pub datacenter: String,
    pub token: String,
    pub stale: bool,
    pub filter: String,
    pub timeout_ms: u32,
    pub max_body_bytes: u32,
    pub max_instances: u32,
    pub endpoint: ConsulEndpoint,
    pub cached: bool,
    pub watch: bool,
    pub wait_s: u32,
    pub min_watch_interval_ms: u32,
}

/// Which Consul API answers a lookup; both answers parse into the same instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsulEndpoint {
    /// `/v1/catalog/service/<name>`: every registered instance.
    Catalog,
    /// `/v1/health/service/<name>?passing`: the instances whose checks all pass.
    Health,
}

/// By hand for the same reason as [`HostKind`]'s.
impl<'de> Deserialize<'de> for ConsulEndpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        match name.as_str() {
            "catalog" => Ok(ConsulEndpoint::Catalog),
            "health" => Ok(ConsulEndpoint::Health),
            other => Err(de::Error::unknown_variant(other, &["catalog", "health"])),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub from_host: bool,
    pub from_cluster: bool,
    pub from_authority: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub ttl_s: u32,
    pub stale_s: u32,
    pub negative_ttl_s: u32,
    pub backoff_s: u32,
    pub max_backoff_s: u32,
    pub max_services: u32,
    pub shm_namespace: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadersConfig {
    pub request: bool,
    pub response: bool,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaggageConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "config_strings")]
    pub read_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpansConfig {
    pub enabled: bool,
    pub upstream: String,
    pub authority: String,
    pub path: String,
    pub service_name: String,
    pub reparent: bool,
    pub batch_size: u32,
    pub max_queue: u32,
    pub flush_ms: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: HostKind::Kong,
            consul: ConsulConfig::default(),
            service: ServiceConfig::default(),
            cache: CacheConfig::default(),
            headers: HeadersConfig::default(),
            meta_keys: vec!["version".into(), "region".into()],
            baggage: BaggageConfig::default(),
            nginx_variable: "consul_enricher".into(),
            strip_incoming: true,
            spans: SpansConfig::default(),
        }
    }
}

impl Default for ConsulConfig {
    fn default() -> Self {
        ConsulConfig {
            upstream: "127.0.0.1:8500".into(),
            authority: "consul".into(),
            datacenter: String::new(),
            token: String::new(),
            stale: true,
            filter: String::new(),
            timeout_ms: 1000,
            max_body_bytes: 1024 * 1024,
            max_instances: 64,
            endpoint: ConsulEndpoint::Catalog,
            cached: false,
            watch: false,
            wait_s: 60,
            min_watch_interval_ms: 1000,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            name: String::new(),
            from_host: true,
            from_cluster: true,
            from_authority: false,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl_s: 30,
            stale_s: 300,
            negative_ttl_s: 10,
            backoff_s: 5,
            max_backoff_s: 60,
            max_services: 10_000,
            shm_namespace: "consul_enricher".into(),
        }
    }
}

impl Default for HeadersConfig {
    fn default() -> Self {
        HeadersConfig {
            request: true,
            response: false,
            prefix: "x-consul-".into(),
        }
    }
}

impl Default for BaggageConfig {
    fn default() -> Self {
        BaggageConfig {
            enabled: true,
            read_keys: vec!["ui.component".into()],
        }
    }
}

impl Default for SpansConfig {
    fn default() -> Self {
        SpansConfig {
            enabled: false,
            upstream: "127.0.0.1:4318".into(),
            authority: "otel-collector".into(),
            path: "/v1/traces".into(),
            service_name: "api-gateway".into(),
            reparent: true,
            batch_size: 64,
            max_queue: 1024,
            flush_ms: 1000,
        }
    }
}

/// A refused configuration: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("invalid configuration: ")?;
        f.write_str(if self.key.is_empty() {
            "(top level)"
        } else {
            &self.key
        })?;
        f.write_str(": ")?;
        f.write_str(&self.reason)
    }
}

fn refuse(key: &str, reason: &str) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// Most keys a list option may hold; each becomes headers or attributes per request.
const MAX_LIST_KEYS: usize = 16;

impl Config {
    /// Parses and validates the plugin configuration. Empty input means all defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        let mut json = serde_json::Deserializer::from_slice(bytes);
        clear_error_path();
        let parsed = object::<_, Config>(&mut json).and_then(|config| json.end().map(|()| config));
        let config = parsed.map_err(|error| ConfigError {
            key: take_error_path(),
            reason: reason(&error),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.consul;
        if c.upstream.is_empty() {
            return Err(refuse("consul.upstream", "must not be empty"));
        }
        if self.host == HostKind::Kong && !is_host_port(&c.upstream) {
            return Err(refuse(
                "consul.upstream",
                "with host \"kong\" it must be host:port",
            ));
        }
        check_authority("consul.authority", &c.authority)?;
        if !c.datacenter.bytes().all(is_name_byte) || c.datacenter.len() > 64 {
            return Err(refuse(
                "consul.datacenter",
                "letters, digits, '-', '_' and '.' only, at most 64",
            ));
        }
        if !is_visible_ascii(&c.token) || c.token.len() > 256 {
            return Err(refuse(
                "consul.token",
                "visible ASCII only, at most 256 bytes",
            ));
        }
        if !c.filter.chars().all(|ch| !ch.is_control()) || c.filter.len() > 1024 {
            return Err(refuse(
                "consul.filter",
                "no control characters, at most 1024 bytes",
            ));
        }
        in_range("consul.timeout_ms", c.timeout_ms, 1, 60_000)?;
        in_range("consul.max_body_bytes", c.max_body_bytes, 1024, 16 << 20)?;
        in_range("consul.max_instances", c.max_instances, 1, 1024)?;
        in_range("consul.wait_s", c.wait_s, 1, 600)?;
        in_range(
            "consul.min_watch_interval_ms",
            c.min_watch_interval_ms,
            0,
            3_600_000,
        )?;

        let s = &self.service;
        if !s.name.is_empty() && !is_service_name(&s.name) {
            return Err(refuse(
                "service.name",
                "letters, digits, '-', '_' and '.' only, at most 128",
            ));
        }
        if s.name.is_empty() && !s.from_host && !s.from_cluster && !s.from_authority {
            return Err(refuse(
                "service",
                "no way to find the service: set name, from_host, from_cluster or from_authority",
            ));
        }

        let k = &self.cache;
        in_range("cache.ttl_s", k.ttl_s, 1, 86_400)?;
        in_range("cache.stale_s", k.stale_s, 0, 7 * 86_400)?;
        in_range("cache.negative_ttl_s", k.negative_ttl_s, 0, 86_400)?;
        in_range("cache.backoff_s", k.backoff_s, 1, 3_600)?;
        in_range("cache.max_backoff_s", k.max_backoff_s, k.backoff_s, 86_400)?;
        in_range("cache.max_services", k.max_services, 1, 1_000_000)?;
        if k.shm_namespace.is_empty()
            || k.shm_namespace.len() > 64
            || !k
                .shm_namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(refuse(
                "cache.shm_namespace",
                "1 to 64 letters, digits, '-' or '_'",
            ));
        }

        if self.nginx_variable.len() > 64
            || !self
                .nginx_variable
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(refuse(
                "nginx_variable",
                "up to 64 letters, digits or '_' (an nginx variable name without its $)",
            ));
        }

        let h = &self.headers;
        if h.prefix.is_empty()
            || !is_token(&h.prefix)
            || h.prefix.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(refuse(
                "headers.prefix",
                "must be a non-empty lowercase header-name token",
            ));
        }

        check_keys(
            "meta_keys",
            &self.meta_keys,
            |k| is_token(k) && !k.bytes().any(|b| b.is_ascii_uppercase()),
            "each must be a lowercase header-name token",
        )?;
        check_keys(
            "baggage.read_keys",
            &self.baggage.read_keys,
            is_token,
            "each must be a baggage key (a token)",
        )?;

        let sp = &self.spans;
        if sp.enabled {
            if sp.upstream.is_empty() {
                return Err(refuse(
                    "spans.upstream",
                    "must not be empty when spans are enabled",
                ));
            }
            if self.host == HostKind::Kong && !is_host_port(&sp.upstream) {
                return Err(refuse(
                    "spans.upstream",
                    "with host \"kong\" it must be host:port",
                ));
            }
        }
        check_authority("spans.authority", &sp.authority)?;
        if !sp.path.starts_with('/') || !is_visible_ascii(&sp.path) {
            return Err(refuse("spans.path", "must be an absolute path"));
        }
        if sp.service_name.is_empty()
            || sp.service_name.len() > 128
            || !sp.service_name.chars().all(|ch| !ch.is_control())
        {
            return Err(refuse(
                "spans.service_name",
                "1 to 128 characters, no control characters",
            ));
        }
        in_range("spans.batch_size", sp.batch_size, 1, 1024)?;
        in_range("spans.max_queue", sp.max_queue, sp.batch_size, 65_536)?;
        in_range("spans.flush_ms", sp.flush_ms, 100, 60_000)?;
        Ok(())
    }

    /// The host the configuration names, when its JSON is readable that far: so that a
    /// configuration refused for another key can still be handled the way its host needs.
    pub fn declared_host(bytes: &[u8]) -> Option<HostKind> {
        #[derive(Deserialize)]
        struct HostOnly {
            host: Option<HostKind>,
        }
        serde_json::from_slice::<HostOnly>(bytes).ok()?.host
    }

    /// The shared-data key of a service's cache entry.
    pub fn entry_key(&self, service: &str) -> String {
        self.shared_key("svc", service)
    }

    /// The shared-data key of the gateway's count of services with an entry.
    pub fn services_key(&self) -> String {
        self.shared_key("count", "services")
    }

    /// The shared-data key of a service's refresh lease.
    pub fn lease_key(&self, service: &str) -> String {
        self.shared_key("lease", service)
    }

    fn shared_key(&self, kind: &str, service: &str) -> String {
        let ns = &self.cache.shm_namespace;
        let mut key = String::with_capacity(ns.len() + kind.len() + service.len() + 2);
        key.push_str(ns);
        key.push('/');
        key.push_str(kind);
        key.push(':');
        key.push_str(service);
        key
    }
}

/// serde_json's message. A type or value error drops serde_json's position: the key already
/// says where, and hosts (Kong from YAML, Envoy from a protobuf string) hand the filter JSON
/// they wrote themselves, whose lines and columns the operator never saw. A syntax error
/// keeps it, as there may be no key to name.
fn reason(error: &serde_json::Error) -> String {
    let text = error.to_string();
    if !error.is_data() {
        return text;
    }
    let position = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_string(),
        None => text,
    }
}

fn in_range(key: &str, value: u32, min: u32, max: u32) -> Result<(), ConfigError> {
    if value < min || value > max {
        let mut reason = String::from("must be between ");
        reason.push_str(&min.to_string());
        reason.push_str(" and ");
        reason.push_str(&max.to_string());
        return Err(ConfigError {
            key: key.into(),
            reason,
        });
    }
    Ok(())
}

fn check_keys(
    key: &str,
    keys: &[String],
    valid: impl Fn(&str) -> bool,
    reason: &str,
) -> Result<(), ConfigError> {
    if keys.len() > MAX_LIST_KEYS {
        return Err(refuse(key, "at most 16 entries"));
    }
    match keys.iter().position(|k| k.len() > 64 || !valid(k)) {
        Some(i) => {
            let mut path = String::from(key);
            path.push('[');
            path.push_str(&i.to_string());
            path.push(']');
            Err(ConfigError {
                key: path,
                reason: reason.into(),
            })
        }
        None => Ok(()),
    }
}

fn check_authority(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() || value.len() > 255 || !is_visible_ascii(value) {
        return Err(refuse(key, "must be a non-empty host name"));
    }
    Ok(())
}

fn is_visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// Consul service names are DNS-friendly; anything else cannot be looked up by URL path.
pub fn is_service_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(is_name_byte)
}

fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && is_visible_ascii(host) && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn err(json: &str) -> ConfigError {
        Config::from_json(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn empty_config_is_all_defaults() {
        assert_eq!(Config::from_json(b"").unwrap(), Config::default());
        assert_eq!(Config::from_json(b"  \n").unwrap(), Config::default());
        assert_eq!(Config::from_json(b"{}").unwrap(), Config::default());
    }

    #[test]
    fn defaults_match_the_readme() {
        let c = Config::default();
        assert_eq!(c.host, HostKind::Kong);
        assert_eq!(c.consul.upstream, "127.0.0.1:8500");
        assert_eq!(c.consul.timeout_ms, 1000);
        assert!(c.consul.stale);
        assert_eq!(c.cache.ttl_s, 30);
        assert_eq!(c.cache.stale_s, 300);
        assert_eq!(c.headers.prefix, "x-consul-");
        assert!(!c.headers.response);
        assert_eq!(c.meta_keys, vec!["version", "region"]);
        assert_eq!(c.baggage.read_keys, vec!["ui.component"]);
        assert!(!c.spans.enabled);
        assert!(c.strip_incoming);
        assert!(c.service.from_host && c.service.from_cluster);
        assert!(
            !c.service.from_authority,
            "the client's authority is opt-in"
        );
        assert_eq!(c.cache.max_services, 10_000);
        assert_eq!(c.consul.endpoint, ConsulEndpoint::Catalog);
        assert!(!c.consul.cached && !c.consul.watch);
        assert_eq!(c.consul.wait_s, 60);
    }

    #[test]
    fn the_host_is_read_from_an_otherwise_refused_configuration() {
        assert_eq!(
            Config::declared_host(br#"{"host":"envoy","consul":{"timout_ms":5}}"#),
            Some(HostKind::Envoy)
        );
        assert_eq!(Config::declared_host(br#"{"consul":{}}"#), None);
        assert_eq!(Config::declared_host(b"{not json"), None);
        assert_eq!(Config::declared_host(br#"{"host":"nginx"}"#), None);
    }

    #[test]
    fn full_config_parses() {
        let c = Config::from_json(
            br#"{"host":"envoy","consul":{"upstream":"consul","authority":"consul.local",
            "datacenter":"dc2","token":"s3cr3t","stale":false,"filter":"ServiceMeta.version != \"\"",
            "timeout_ms":250,"max_body_bytes":65536,"max_instances":8,"endpoint":"health",
            "cached":true,"watch":true,"wait_s":30,"min_watch_interval_ms":2000},
            "service":{"name":"echo","from_host":false,"from_cluster":true,"from_authority":true},
            "cache":{"ttl_s":5,"stale_s":0,"negative_ttl_s":1,"backoff_s":2,"max_backoff_s":4,
            "max_services":100,"shm_namespace":"ce"},
            "headers":{"request":false,"response":true,"prefix":"x-svc-"},
            "meta_keys":["version"],"baggage":{"enabled":false,"read_keys":[]},
            "nginx_variable":"","strip_incoming":false,
            "spans":{"enabled":true,"upstream":"otel","authority":"collector","path":"/v1/traces",
            "service_name":"edge","reparent":false,"batch_size":10,"max_queue":20,"flush_ms":500}}"#,
        )
        .unwrap();
        assert_eq!(c.host, HostKind::Envoy);
        assert_eq!(c.consul.datacenter, "dc2");
        assert_eq!(c.service.name, "echo");
        assert_eq!(c.cache.shm_namespace, "ce");
        assert_eq!(c.spans.batch_size, 10);
        assert_eq!(c.consul.endpoint, ConsulEndpoint::Health);
        assert!(c.consul.watch && c.consul.cached && !c.strip_incoming);
        assert_eq!(c.cache.max_services, 100);
        assert_eq!(c.entry_key("echo"), "ce/svc:echo");
        assert_eq!(c.lease_key("echo"), "ce/lease:echo");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let e = err(r#"{"consul":{"timout_ms":5}}"#);
        assert_eq!(e.key, "consul.timout_ms");
        assert!(
            e.reason
                .starts_with("unknown field `timout_ms`, expected one of `upstream`"),
            "{}",
            e.reason
        );
        let e = err(r#"{"colour":"blue"}"#);
        assert_eq!(e.key, "colour");
        assert!(
            e.reason.starts_with("unknown field `colour`"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        assert_eq!(
            err(r#"{"consul":{"timeout_ms":"fast"}}"#).key,
            "consul.timeout_ms"
        );
        assert_eq!(err(r#"{"host":"nginx"}"#).key, "host");
        assert_eq!(err(r#"{"meta_keys":["a",3]}"#).key, "meta_keys[1]");
        assert_eq!(
            err(r#"{"consul":{"timeout_ms":-1}}"#).key,
            "consul.timeout_ms"
        );
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        for (json, key, reason) in [
            (
                r#"{"consul":{"timeout_ms":"fast"}}"#,
                "consul.timeout_ms",
                "invalid type: string \"fast\", expected u32",
            ),
            (
                r#"{"consul":{"timeout_ms":1.5}}"#,
                "consul.timeout_ms",
                "invalid type: floating point `1.5`, expected u32",
            ),
            (
                r#"{"cache":{"ttl_s":4294967296}}"#,
                "cache.ttl_s",
                "invalid value: integer `4294967296`, expected u32",
            ),
            (
                r#"{"host":"nginx"}"#,
                "host",
                "unknown variant `nginx`, expected `kong` or `envoy`",
            ),
            (
                r#"{"host":1}"#,
                "host",
                "invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"consul":{"stale":"yes"}}"#,
                "consul.stale",
                "invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"meta_keys":"version"}"#,
                "meta_keys",
                "invalid type: string \"version\", expected an array of strings",
            ),
            (
                r#"{"meta_keys":["a",3]}"#,
                "meta_keys[1]",
                "invalid type: integer `3`, expected a string",
            ),
            (
                r#"{"consul":null}"#,
                "consul",
                "invalid type: null, expected an object",
            ),
            (
                r#"{"consul":"consul:8500"}"#,
                "consul",
                "invalid type: string \"consul:8500\", expected an object",
            ),
        ] {
            let e = err(json);
            assert_eq!((e.key.as_str(), e.reason.as_str()), (key, reason), "{json}");
        }
    }

    #[test]
    fn arrays_are_not_objects() {
        // A derived struct alone would read an array as its fields in order.
        let e = err(r#"{"service":["echo",false,true]}"#);
        assert_eq!(e.key, "service");
        assert_eq!(e.reason, "invalid type: sequence, expected an object");
        let e = err(r#"["envoy"]"#);
        assert_eq!(e.key, "");
        assert_eq!(e.reason, "invalid type: sequence, expected an object");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = err(r#"{"cache":{"ttl_s":5,"ttl_s":6}}"#);
        assert_eq!(e.key, "cache.ttl_s");
        assert_eq!(e.reason, "duplicate key");
        let e = err(r#"{"host":"kong","cache":{},"host":"envoy"}"#);
        assert_eq!(e.key, "host");
        assert_eq!(e.reason, "duplicate key");
        // The same key in two different objects is no repeat.
        let c = Config::from_json(br#"{"consul":{"upstream":"c:1"},"spans":{"upstream":"s:2"}}"#)
            .unwrap();
        assert_eq!(
            (c.consul.upstream.as_str(), c.spans.upstream.as_str()),
            ("c:1", "s:2")
        );
    }

    #[test]
    fn malformed_json_is_refused() {
        let e = err("{\"host\":");
        assert!(!e.reason.is_empty());
        assert_eq!(e.reason, "EOF while parsing a value at line 1 column 8");
        assert!(Config::from_json(b"[]").is_err());
        assert!(Config::from_json(b"\"kong\"").is_err());
        let e = err("{} {}");
        assert_eq!(e.key, "");
        assert_eq!(e.reason, "trailing characters at line 1 column 4");
        let e = err("{\"consul\":{\"token\":\"\\ud800\"}}");
        assert_eq!(e.key, "consul.token");
        assert!(e.reason.contains("escape"), "{}", e.reason);
    }

    #[test]
    fn ranges_are_checked() {
        for (json, key) in [
            (r#"{"consul":{"timeout_ms":0}}"#, "consul.timeout_ms"),
            (r#"{"consul":{"timeout_ms":60001}}"#, "consul.timeout_ms"),
            (
                r#"{"consul":{"max_body_bytes":10}}"#,
                "consul.max_body_bytes",
            ),
            (r#"{"consul":{"max_instances":0}}"#, "consul.max_instances"),
            (r#"{"cache":{"ttl_s":0}}"#, "cache.ttl_s"),
            (
                r#"{"cache":{"backoff_s":10,"max_backoff_s":5}}"#,
                "cache.max_backoff_s",
            ),
            (r#"{"spans":{"batch_size":0}}"#, "spans.batch_size"),
            (
                r#"{"spans":{"batch_size":100,"max_queue":10}}"#,
                "spans.max_queue",
            ),
            (r#"{"spans":{"flush_ms":5}}"#, "spans.flush_ms"),
        ] {
            let e = err(json);
            assert_eq!(e.key, key, "{json}");
            assert!(
                e.reason.starts_with("must be between"),
                "{json}: {}",
                e.reason
            );
        }
    }

    #[test]
    fn values_are_checked() {
        for (json, key) in [
            (r#"{"consul":{"upstream":""}}"#, "consul.upstream"),
            (r#"{"consul":{"upstream":"consul"}}"#, "consul.upstream"),
            (
                r#"{"consul":{"upstream":"consul:http"}}"#,
                "consul.upstream",
            ),
            (r#"{"consul":{"upstream":"consul:0"}}"#, "consul.upstream"),
            (r#"{"consul":{"authority":""}}"#, "consul.authority"),
            (r#"{"consul":{"authority":"a b"}}"#, "consul.authority"),
            (r#"{"consul":{"datacenter":"dc/1"}}"#, "consul.datacenter"),
            (r#"{"consul":{"token":"a\r\nX-Evil: 1"}}"#, "consul.token"),
            (r#"{"consul":{"filter":"a\nb"}}"#, "consul.filter"),
            (r#"{"service":{"name":"a/b"}}"#, "service.name"),
            (
                r#"{"service":{"from_host":false,"from_cluster":false}}"#,
                "service",
            ),
            (
                r#"{"cache":{"shm_namespace":"a/b"}}"#,
                "cache.shm_namespace",
            ),
            (r#"{"cache":{"shm_namespace":""}}"#, "cache.shm_namespace"),
            (r#"{"nginx_variable":"$consul_enricher"}"#, "nginx_variable"),
            (r#"{"nginx_variable":"consul-enricher"}"#, "nginx_variable"),
            (r#"{"headers":{"prefix":"X-Consul-"}}"#, "headers.prefix"),
            (r#"{"headers":{"prefix":"x consul"}}"#, "headers.prefix"),
            (r#"{"meta_keys":["version","Region"]}"#, "meta_keys[1]"),
            (
                r#"{"baggage":{"read_keys":["ui component"]}}"#,
                "baggage.read_keys[0]",
            ),
            (
                r#"{"spans":{"enabled":true,"upstream":"collector"}}"#,
                "spans.upstream",
            ),
            (r#"{"spans":{"path":"v1/traces"}}"#, "spans.path"),
            (r#"{"spans":{"service_name":""}}"#, "spans.service_name"),
        ] {
            assert_eq!(err(json).key, key, "{json}");
        }
        let many: Vec<String> = (0..17).map(|i| format!("\"k{i}\"")).collect();
        let e = err(&format!("{{\"meta_keys\":[{}]}}", many.join(",")));
        assert_eq!(e.key, "meta_keys");
    }

    #[test]
    fn envoy_accepts_cluster_names() {
        let c = Config::from_json(
            br#"{"host":"envoy","consul":{"upstream":"consul_cluster"},"spans":{"enabled":true,"upstream":"otel"}}"#,
        )
        .unwrap();
        assert_eq!(c.consul.upstream, "consul_cluster");
    }

    #[test]
    fn error_display_names_key_and_reason() {
        let e = err(r#"{"cache":{"ttl_s":0}}"#);
        assert_eq!(
            e.to_string(),
            "invalid configuration: cache.ttl_s: must be between 1 and 86400"
        );
        assert_eq!(
            err(r#"{"spans":{"flush":5}}"#).to_string(),
            "invalid configuration: spans.flush: unknown field `flush`, expected one of \
             `enabled`, `upstream`, `authority`, `path`, `service_name`, `reparent`, \
             `batch_size`, `max_queue`, `flush_ms`"
        );
        assert_eq!(
            err("[]").to_string(),
            "invalid configuration: (top level): invalid type: sequence, expected an object"
        );
    }
}
