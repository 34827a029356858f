//! The filter's configuration: one JSON object, parsed once in `on_configure`.
//!
//! Every key has a default (see the README's table); unknown keys are refused. Errors name
//! the offending key by its dotted path, so the host's log says what to fix.

use crate::header_value::is_token;
use crate::json::{self, Json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Kong Gateway (ngx_wasm_module): dispatch upstream is `host:port`.
    Kong,
    /// Envoy: dispatch upstream is a cluster name.
    Envoy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub host: HostKind,
    pub consul: ConsulConfig,
    pub service: ServiceConfig,
    pub cache: CacheConfig,
    pub headers: HeadersConfig,
    pub meta_keys: Vec<String>,
    pub baggage: BaggageConfig,
    pub kong_ctx_shared: bool,
    pub spans: SpansConfig,
}

#[derive(Debug, Clone, PartialEq)]
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    pub from_host: bool,
    pub from_cluster: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub ttl_s: u32,
    pub stale_s: u32,
    pub negative_ttl_s: u32,
    pub backoff_s: u32,
    pub max_backoff_s: u32,
    pub shm_namespace: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeadersConfig {
    pub request: bool,
    pub response: bool,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BaggageConfig {
    pub enabled: bool,
    pub read_keys: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
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
            kong_ctx_shared: true,
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
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            name: String::new(),
            from_host: true,
            from_cluster: false,
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
        let doc = json::parse(bytes).map_err(|e| ConfigError {
            key: String::new(),
            reason: e.to_string(),
        })?;
        let mut c = Config::default();
        members("", &doc, |key, v| {
            match key {
                "host" => {
                    c.host = match string(key, v)?.as_str() {
                        "kong" => HostKind::Kong,
                        "envoy" => HostKind::Envoy,
                        _ => return Err(refuse(key, "must be \"kong\" or \"envoy\"")),
                    }
                }
                "consul" => members(key, v, |key, v| {
                    let k = &mut c.consul;
                    match leaf(key) {
                        "upstream" => k.upstream = string(key, v)?,
                        "authority" => k.authority = string(key, v)?,
                        "datacenter" => k.datacenter = string(key, v)?,
                        "token" => k.token = string(key, v)?,
                        "stale" => k.stale = boolean(key, v)?,
                        "filter" => k.filter = string(key, v)?,
                        "timeout_ms" => k.timeout_ms = number(key, v)?,
                        "max_body_bytes" => k.max_body_bytes = number(key, v)?,
                        "max_instances" => k.max_instances = number(key, v)?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?,
                "service" => members(key, v, |key, v| {
                    let k = &mut c.service;
                    match leaf(key) {
                        "name" => k.name = string(key, v)?,
                        "from_host" => k.from_host = boolean(key, v)?,
                        "from_cluster" => k.from_cluster = boolean(key, v)?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?,
                "cache" => members(key, v, |key, v| {
                    let k = &mut c.cache;
                    match leaf(key) {
                        "ttl_s" => k.ttl_s = number(key, v)?,
                        "stale_s" => k.stale_s = number(key, v)?,
                        "negative_ttl_s" => k.negative_ttl_s = number(key, v)?,
                        "backoff_s" => k.backoff_s = number(key, v)?,
                        "max_backoff_s" => k.max_backoff_s = number(key, v)?,
                        "shm_namespace" => k.shm_namespace = string(key, v)?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?,
                "headers" => members(key, v, |key, v| {
                    let k = &mut c.headers;
                    match leaf(key) {
                        "request" => k.request = boolean(key, v)?,
                        "response" => k.response = boolean(key, v)?,
                        "prefix" => k.prefix = string(key, v)?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?,
                "meta_keys" => c.meta_keys = strings(key, v)?,
                "baggage" => members(key, v, |key, v| {
                    let k = &mut c.baggage;
                    match leaf(key) {
                        "enabled" => k.enabled = boolean(key, v)?,
                        "read_keys" => k.read_keys = strings(key, v)?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?,
                "kong_ctx_shared" => c.kong_ctx_shared = boolean(key, v)?,
                "spans" => members(key, v, |key, v| {
                    let k = &mut c.spans;
                    match leaf(key) {
                        "enabled" => k.enabled = boolean(key, v)?,
                        "upstream" => k.upstream = string(key, v)?,
                        "authority" => k.authority = string(key, v)?,
                        "path" => k.path = string(key, v)?,
                        "service_name" => k.service_name = string(key, v)?,
                        "reparent" => k.reparent = boolean(key, v)?,
                        "batch_size" => k.batch_size = number(key, v)?,
                        "max_queue" => k.max_queue = number(key, v)?,
                        "flush_ms" => k.flush_ms = number(key, v)?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        c.validate()?;
        Ok(c)
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

        let s = &self.service;
        if !s.name.is_empty() && !is_service_name(&s.name) {
            return Err(refuse(
                "service.name",
                "letters, digits, '-', '_' and '.' only, at most 128",
            ));
        }
        if s.name.is_empty() && !s.from_host && !s.from_cluster {
            return Err(refuse(
                "service",
                "no way to find the service: set name, from_host or from_cluster",
            ));
        }

        let k = &self.cache;
        in_range("cache.ttl_s", k.ttl_s, 1, 86_400)?;
        in_range("cache.stale_s", k.stale_s, 0, 7 * 86_400)?;
        in_range("cache.negative_ttl_s", k.negative_ttl_s, 0, 86_400)?;
        in_range("cache.backoff_s", k.backoff_s, 1, 3_600)?;
        in_range("cache.max_backoff_s", k.max_backoff_s, k.backoff_s, 86_400)?;
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

    /// The shared-data key of a service's cache entry.
    pub fn entry_key(&self, service: &str) -> String {
        self.shared_key("svc", service)
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

fn join(parent: &str, key: &str) -> String {
    let mut path = String::with_capacity(parent.len() + key.len() + 1);
    path.push_str(parent);
    if !parent.is_empty() {
        path.push('.');
    }
    path.push_str(key);
    path
}

/// The last segment of a dotted key path.
fn leaf(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// Calls `field` with the full path and value of each member of the object at `path`;
/// `field` returns false for a key it does not know, which is refused.
fn members(
    path: &str,
    value: &Json,
    mut field: impl FnMut(&str, &Json) -> Result<bool, ConfigError>,
) -> Result<(), ConfigError> {
    let Json::Object(items) = value else {
        return Err(wrong_type(path, "an object", value));
    };
    for (n, (key, v)) in items.iter().enumerate() {
        let full = join(path, key);
        if items.iter().take(n).any(|(k, _)| k == key) {
            return Err(refuse(&full, "duplicate key"));
        }
        if !field(&full, v)? {
            return Err(refuse(&full, "unknown key"));
        }
    }
    Ok(())
}

fn wrong_type(key: &str, expected: &str, got: &Json) -> ConfigError {
    let mut reason = String::from("must be ");
    reason.push_str(expected);
    reason.push_str(", not ");
    reason.push_str(got.kind());
    ConfigError {
        key: key.into(),
        reason,
    }
}

fn string(key: &str, v: &Json) -> Result<String, ConfigError> {
    match v {
        Json::String(s) => Ok(s.clone()),
        other => Err(wrong_type(key, "a string", other)),
    }
}

fn boolean(key: &str, v: &Json) -> Result<bool, ConfigError> {
    match v {
        Json::Bool(b) => Ok(*b),
        other => Err(wrong_type(key, "a boolean", other)),
    }
}

fn number(key: &str, v: &Json) -> Result<u32, ConfigError> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| wrong_type(key, "a whole number from 0 to 4294967295", v))
}

fn strings(key: &str, v: &Json) -> Result<Vec<String>, ConfigError> {
    let Json::Array(items) = v else {
        return Err(wrong_type(key, "an array of strings", v));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut path = String::from(key);
            path.push('[');
            path.push_str(&i.to_string());
            path.push(']');
            string(&path, item)
        })
        .collect()
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
    }

    #[test]
    fn full_config_parses() {
        let c = Config::from_json(
            br#"{"host":"envoy","consul":{"upstream":"consul","authority":"consul.local",
            "datacenter":"dc2","token":"s3cr3t","stale":false,"filter":"ServiceMeta.version != \"\"",
            "timeout_ms":250,"max_body_bytes":65536,"max_instances":8},
            "service":{"name":"echo","from_host":false,"from_cluster":true},
            "cache":{"ttl_s":5,"stale_s":0,"negative_ttl_s":1,"backoff_s":2,"max_backoff_s":4,"shm_namespace":"ce"},
            "headers":{"request":false,"response":true,"prefix":"x-svc-"},
            "meta_keys":["version"],"baggage":{"enabled":false,"read_keys":[]},
            "kong_ctx_shared":false,
            "spans":{"enabled":true,"upstream":"otel","authority":"collector","path":"/v1/traces",
            "service_name":"edge","reparent":false,"batch_size":10,"max_queue":20,"flush_ms":500}}"#,
        )
        .unwrap();
        assert_eq!(c.host, HostKind::Envoy);
        assert_eq!(c.consul.datacenter, "dc2");
        assert_eq!(c.service.name, "echo");
        assert_eq!(c.cache.shm_namespace, "ce");
        assert_eq!(c.spans.batch_size, 10);
        assert_eq!(c.entry_key("echo"), "ce/svc:echo");
        assert_eq!(c.lease_key("echo"), "ce/lease:echo");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let e = err(r#"{"consul":{"timout_ms":5}}"#);
        assert_eq!(e.key, "consul.timout_ms");
        assert_eq!(e.reason, "unknown key");
        let e = err(r#"{"colour":"blue"}"#);
        assert_eq!(e.key, "colour");
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
    fn duplicate_keys_are_refused() {
        let e = err(r#"{"cache":{"ttl_s":5,"ttl_s":6}}"#);
        assert_eq!(e.key, "cache.ttl_s");
        assert_eq!(e.reason, "duplicate key");
    }

    #[test]
    fn malformed_json_is_refused() {
        let e = err("{\"host\":");
        assert!(!e.reason.is_empty());
        assert!(Config::from_json(b"[]").is_err());
        assert!(Config::from_json(b"\"kong\"").is_err());
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
            (r#"{"service":{"from_host":false}}"#, "service"),
            (
                r#"{"cache":{"shm_namespace":"a/b"}}"#,
                "cache.shm_namespace",
            ),
            (r#"{"cache":{"shm_namespace":""}}"#, "cache.shm_namespace"),
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
    }
}
