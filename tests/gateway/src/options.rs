//! Command line of the `gateway` binary.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use test_host::{Flavour, LogLevel};

pub const USAGE: &str = "\
usage: gateway --consul URL [options]

  --wasm PATH             the filter (default dist/consul_enricher.wasm)
  --flavour kong|envoy    which gateway to behave like (default kong)
  --workers N             filter VMs; requests are spread over them (default 2)
  --config PATH           the filter's JSON configuration, from a file
  --config-json JSON      the filter's JSON configuration, inline (default {})
  --consul URL            Consul HTTP API the gateway resolves upstream instances from
  --route PREFIX=SERVICE  path prefix routed to a Consul service (default /echo=echo)
  --cluster NAME=ADDR     Envoy: dispatch cluster name -> ip:port (repeatable)
  --shm-zone NAME         Kong: shm_kv zone (repeatable; default consul_enricher)
  --allow-origin ORIGIN   CORS origin allowed to call the gateway (repeatable; * for any)
  --port N                listen port on 127.0.0.1 (default 0: any free port)
  --log-level LEVEL       trace|debug|info|warn|error: filter log lines printed to stderr
                          and the level the filter is told (default info)
";

#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub service: String,
}

impl Route {
    /// Kong's upstream host for the service, as the demo's Consul DNS names it.
    pub fn service_host(&self) -> String {
        format!("{}.service.consul", self.service)
    }

    /// Prefix matching on whole path segments: `/echo` matches `/echo`, `/echo/x` and
    /// `/echo?q`, not `/echoes`.
    pub fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(&self.prefix) {
            Some(rest) => {
                rest.is_empty() || self.prefix.ends_with('/') || rest.starts_with(['/', '?'])
            }
            None => false,
        }
    }
}

#[derive(Debug)]
pub struct GatewayOptions {
    pub wasm: PathBuf,
    pub flavour: Flavour,
    pub workers: usize,
    pub config: Vec<u8>,
    /// `host:port` of the Consul HTTP API.
    pub consul: String,
    pub routes: Vec<Route>,
    pub clusters: HashMap<String, String>,
    pub shm_zones: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub listen: SocketAddr,
    pub log_level: LogLevel,
}

fn split_pair<'a>(flag: &str, value: &'a str) -> Result<(&'a str, &'a str)> {
    value
        .split_once('=')
        .filter(|(key, rest)| !key.is_empty() && !rest.is_empty())
        .ok_or_else(|| anyhow!("{flag} wants NAME=VALUE, got {value:?}"))
}

/// `http://host:port[/]` or `host:port` → `host:port`.
fn host_port(flag: &str, url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    match rest.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !rest.contains('/') && port.parse::<u16>().is_ok() =>
        {
            Ok(rest.to_string())
        }
        _ => bail!("{flag} wants http://host:port, got {url:?}"),
    }
}

fn log_level(value: &str) -> Result<LogLevel> {
    Ok(match value {
        "trace" => LogLevel::Trace,
        "debug" => LogLevel::Debug,
        "info" => LogLevel::Info,
        "warn" => LogLevel::Warn,
        "error" => LogLevel::Error,
        other => bail!("--log-level: unknown level {other:?}"),
    })
}

impl GatewayOptions {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self> {
        let mut wasm = PathBuf::from("dist/consul_enricher.wasm");
        let mut flavour = Flavour::Kong;
        let mut workers = 2;
        let mut config = b"{}".to_vec();
        let mut consul = None;
        let mut routes = Vec::new();
        let mut clusters = HashMap::new();
        let mut shm_zones = Vec::new();
        let mut allowed_origins = Vec::new();
        let mut listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut level = LogLevel::Info;

        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
            match flag.as_str() {
                "--wasm" => wasm = PathBuf::from(value),
                "--flavour" => {
                    flavour = match value.as_str() {
                        "kong" => Flavour::Kong,
                        "envoy" => Flavour::Envoy,
                        other => bail!("--flavour: {other:?} is neither kong nor envoy"),
                    }
                }
                "--workers" => {
                    workers =
                        value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            anyhow!("--workers: {value:?} is not a positive number")
                        })?
                }
                "--config" => {
                    config = std::fs::read(&value)
                        .with_context(|| format!("--config: cannot read {value}"))?
                }
                "--config-json" => config = value.into_bytes(),
                "--consul" => consul = Some(host_port("--consul", &value)?),
                "--route" => {
                    let (prefix, service) = split_pair("--route", &value)?;
                    if !prefix.starts_with('/') {
                        bail!("--route: the prefix must start with /, got {prefix:?}");
                    }
                    routes.push(Route {
                        prefix: prefix.to_string(),
                        service: service.to_string(),
                    });
                }
                "--cluster" => {
                    let (name, address) = split_pair("--cluster", &value)?;
                    clusters.insert(name.to_string(), host_port("--cluster", address)?);
                }
                "--shm-zone" => shm_zones.push(value),
                "--allow-origin" => allowed_origins.push(value.trim_end_matches('/').to_string()),
                "--port" => {
                    let port = value
                        .parse()
                        .map_err(|_| anyhow!("--port: {value:?} is not a port"))?;
                    listen.set_port(port);
                }
                "--log-level" => level = log_level(&value)?,
                other => bail!("unknown argument {other:?}"),
            }
        }
        if routes.is_empty() {
            routes.push(Route {
                prefix: "/echo".to_string(),
                service: "echo".to_string(),
            });
        }
        if shm_zones.is_empty() {
            shm_zones.push("consul_enricher".to_string());
        }
        Ok(Self {
            wasm,
            flavour,
            workers,
            config,
            consul: consul.ok_or_else(|| anyhow!("--consul is required"))?,
            routes,
            clusters,
            shm_zones,
            allowed_origins,
            listen,
            log_level: level,
        })
    }

    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|route| route.matches(path))
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed == origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<GatewayOptions> {
        GatewayOptions::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn defaults_route_echo_and_need_consul() {
        let options = parse(&["--consul", "http://127.0.0.1:8500/"]).unwrap();
        assert_eq!(options.consul, "127.0.0.1:8500");
        assert_eq!(
            options.route_for("/echo").unwrap().service_host(),
            "echo.service.consul"
        );
        assert_eq!(options.shm_zones, ["consul_enricher"]);
        assert!(parse(&[]).unwrap_err().to_string().contains("--consul"));
    }

    #[test]
    fn routes_match_whole_segments() {
        let route = Route {
            prefix: "/echo".into(),
            service: "echo".into(),
        };
        assert!(route.matches("/echo"));
        assert!(route.matches("/echo/deeper"));
        assert!(route.matches("/echo?x=1"));
        assert!(!route.matches("/echoes"));
        assert!(!route.matches("/other"));
    }

    #[test]
    fn bad_values_are_named() {
        for (args, needle) in [
            (vec!["--consul", "x:1", "--flavour", "nginx"], "--flavour"),
            (vec!["--consul", "x:1", "--workers", "0"], "--workers"),
            (vec!["--consul", "nohost"], "--consul"),
            (vec!["--consul", "x:1", "--cluster", "consul"], "--cluster"),
            (vec!["--consul", "x:1", "--route", "echo=echo"], "--route"),
            (vec!["--consul", "x:1", "--bogus", "1"], "--bogus"),
            (vec!["--consul"], "needs a value"),
        ] {
            let error = parse(&args).unwrap_err().to_string();
            assert!(error.contains(needle), "{args:?}: {error}");
        }
    }

    #[test]
    fn origins_and_clusters() {
        let options = parse(&[
            "--consul",
            "127.0.0.1:1",
            "--allow-origin",
            "http://127.0.0.1:9000/",
            "--cluster",
            "otel=http://127.0.0.1:4318",
        ])
        .unwrap();
        assert!(options.origin_allowed("http://127.0.0.1:9000"));
        assert!(!options.origin_allowed("http://evil.example"));
        assert_eq!(options.clusters["otel"], "127.0.0.1:4318");
    }
}
