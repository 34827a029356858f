//! `envoy/envoy.yaml`, the file operators copy, rendered for loopback: every test, browser
//! run, demo and benchmark starts Envoy from it, so what they show holds for that file.
//!
//! What changes: the admin and listener addresses (127.0.0.1, port 0 unless given), each
//! cluster's endpoints (STATIC, on the addresses given; none when not given), the `.wasm`'s
//! path, the filter's JSON configuration (merged over the file's), and the CORS origins.
//! Everything else — the filter chain, the tracer, the custom tags, `failure_policy` — is
//! the file's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

/// The listener of envoy/envoy.yaml that carries the filter.
pub const GATEWAY_LISTENER: &str = "gateway";
/// The name of the Wasm filter in envoy/envoy.yaml's HTTP filters.
pub const WASM_FILTER: &str = "envoy.filters.http.wasm";
const CORS_FILTER: &str = "envoy.filters.http.cors";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// envoy/envoy.yaml as JSON.
pub fn demo_file() -> Result<Value> {
    let path = workspace_root().join("envoy/envoy.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// What the rendering sets; the rest is envoy/envoy.yaml's.
#[derive(Debug, Clone)]
pub struct Loopback {
    pub wasm: PathBuf,
    /// Merged over the file's filter configuration: objects key by key, other values replace.
    pub filter_config: Value,
    /// Endpoints by the file's cluster names (`echo`, `consul`, `otel-collector`,
    /// `jaeger-otlp`); a cluster not named here has none.
    pub clusters: BTreeMap<String, Vec<SocketAddr>>,
    /// The gateway listener's port (0: any free one).
    pub port: u16,
    /// CORS origins allowed to call the gateway; empty keeps the file's.
    pub allow_origins: Vec<String>,
}

impl Loopback {
    pub fn new(wasm: impl Into<PathBuf>) -> Self {
        Loopback {
            wasm: wasm.into(),
            filter_config: json!({}),
            clusters: BTreeMap::new(),
            port: 0,
            allow_origins: Vec::new(),
        }
    }

    pub fn cluster(mut self, name: &str, endpoints: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.clusters
            .insert(name.to_string(), endpoints.into_iter().collect());
        self
    }

    pub fn filter_config(mut self, extra: Value) -> Self {
        merge(&mut self.filter_config, &extra);
        self
    }

    /// envoy/envoy.yaml with these settings.
    pub fn render(&self) -> Result<Value> {
        let mut config = demo_file()?;
        config["admin"]["address"] = socket_address(0);
        self.render_listener(gateway_listener(&mut config)?)?;
        render_clusters(&mut config, &self.clusters)?;
        Ok(config)
    }

    fn render_listener(&self, listener: &mut Value) -> Result<()> {
        listener["address"] = socket_address(self.port);
        let manager = connection_manager(listener)?;
        if !self.allow_origins.is_empty() {
            let origins: Vec<Value> = self
                .allow_origins
                .iter()
                .map(|origin| json!({"exact": origin}))
                .collect();
            for host in array_mut(&mut manager["route_config"]["virtual_hosts"])? {
                host["typed_per_filter_config"][CORS_FILTER]["allow_origin_string_match"] =
                    Value::Array(origins.clone());
            }
        }
        let wasm = http_filter(manager, WASM_FILTER)?;
        let plugin = &mut wasm["typed_config"]["config"];
        plugin["vm_config"]["code"]["local"]["filename"] = json!(self.wasm.display().to_string());
        let configuration = &mut plugin["configuration"]["value"];
        let text = configuration
            .as_str()
            .ok_or_else(|| anyhow!("the wasm filter's configuration has no string value"))?;
        let mut filter_config: Value = serde_json::from_str(text)
            .context("the wasm filter's configuration in envoy/envoy.yaml is not JSON")?;
        merge(&mut filter_config, &self.filter_config);
        *configuration = json!(filter_config.to_string());
        Ok(())
    }
}

/// Objects merged key by key; any other value replaces.
pub fn merge(base: &mut Value, extra: &Value) {
    match (base, extra) {
        (Value::Object(base), Value::Object(extra)) => {
            for (key, value) in extra {
                merge(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, extra) => *base = extra.clone(),
    }
}

fn socket_address(port: u16) -> Value {
    json!({"socket_address": {"address": "127.0.0.1", "port_value": port}})
}

fn array_mut(value: &mut Value) -> Result<&mut Vec<Value>> {
    value
        .as_array_mut()
        .ok_or_else(|| anyhow!("expected a list in envoy/envoy.yaml"))
}

pub fn gateway_listener(config: &mut Value) -> Result<&mut Value> {
    array_mut(&mut config["static_resources"]["listeners"])?
        .iter_mut()
        .find(|listener| listener["name"] == GATEWAY_LISTENER)
        .ok_or_else(|| anyhow!("envoy/envoy.yaml has no listener {GATEWAY_LISTENER}"))
}

/// The listener's HTTP connection manager.
pub fn connection_manager(listener: &mut Value) -> Result<&mut Value> {
    let chain = array_mut(&mut listener["filter_chains"])?
        .first_mut()
        .ok_or_else(|| anyhow!("a listener without a filter chain"))?;
    let filter = array_mut(&mut chain["filters"])?
        .first_mut()
        .ok_or_else(|| anyhow!("a filter chain without filters"))?;
    Ok(&mut filter["typed_config"])
}

/// The connection manager's HTTP filter named `name`.
pub fn http_filter<'a>(manager: &'a mut Value, name: &str) -> Result<&'a mut Value> {
    array_mut(&mut manager["http_filters"])?
        .iter_mut()
        .find(|filter| filter["name"] == name)
        .ok_or_else(|| anyhow!("no HTTP filter {name} in envoy/envoy.yaml"))
}

fn render_clusters(
    config: &mut Value,
    endpoints: &BTreeMap<String, Vec<SocketAddr>>,
) -> Result<()> {
    let clusters = array_mut(&mut config["static_resources"]["clusters"])?;
    for name in endpoints.keys() {
        if !clusters
            .iter()
            .any(|cluster| cluster["name"] == name.as_str())
        {
            bail!("envoy/envoy.yaml has no cluster {name}");
        }
    }
    for cluster in clusters {
        let name = cluster["name"].as_str().unwrap_or_default().to_string();
        let lb_endpoints: Vec<Value> = endpoints
            .get(&name)
            .into_iter()
            .flatten()
            .map(|addr| {
                json!({"endpoint": {"address": {"socket_address": {
                    "address": addr.ip().to_string(), "port_value": addr.port()
                }}}})
            })
            .collect();
        cluster["type"] = json!("STATIC");
        cluster["load_assignment"] =
            json!({"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]});
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_rendered_for_loopback() {
        let echo: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let config = Loopback::new("/tmp/f.wasm")
            .cluster("echo", [echo])
            .filter_config(json!({"consul": {"timeout_ms": 50}}))
            .render()
            .unwrap();
        let text = config.to_string();
        assert!(!text.contains("0.0.0.0"), "{text}");
        assert!(!text.contains("STRICT_DNS"), "{text}");
        assert!(text.contains("/tmp/f.wasm"));
        let mut config = config;
        let manager = connection_manager(gateway_listener(&mut config).unwrap()).unwrap();
        let wasm = http_filter(manager, WASM_FILTER).unwrap();
        let filter_config: Value = serde_json::from_str(
            wasm["typed_config"]["config"]["configuration"]["value"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(filter_config["consul"]["timeout_ms"], 50);
        assert_eq!(filter_config["consul"]["upstream"], "consul", "the file's");
    }

    #[test]
    fn an_unknown_cluster_is_refused() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let error = Loopback::new("/f.wasm")
            .cluster("nope", [addr])
            .render()
            .unwrap_err();
        assert!(error.to_string().contains("nope"));
    }
}
