//! Command line of the `gateway` binary.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use test_host::{Flavour, LogLevel};

pub const USAGE: &str = "\
usage: gateway --consul URL [options]
       gateway --upstream ADDR [options]

  --wasm PATH             the filter (default dist/consul_enricher.wasm)
  --flavour kong|envoy    which gateway to behave like (default kong)
  --workers N             filter VMs; requests are spread over them (default 2)
  --config PATH           the filter's JSON configuration, from a file
  --config-json JSON      the filter's JSON configuration, inline (default {})
  --consul URL            Consul HTTP API the gateway resolves upstream instances from
  --route PREFIX=SERVICE  path prefix routed to a Consul service (default /echo=echo);
                          SERVICE * takes the service from the path segment after PREFIX
                          (--route /svc=* sends /svc/web/x to the service web)
  --strip-path            Kong's route strip_path: the upstream gets the path without the
                          route's prefix (and, with *, without the service segment)
  --upstream ADDR         forward every request to ip:port instead of an instance of the
                          service from Consul (the filter still looks the service up)
  --cluster NAME=ADDR     Envoy: dispatch cluster name -> ip:port (repeatable)
  --shm-zone NAME         Kong: shm_kv zone (repeatable; default consul_enricher)
  --allow-origin ORIGIN   CORS origin allowed to call the gateway (repeatable; * for any)
  --port N                listen port on 127.0.0.1 (default 0: any free port)
  --log-level LEVEL       trace|debug|info|warn|error: filter log lines printed to stderr
                          and the level the filter is told (default info)
";

/// The `SERVICE` of a route whose service is the path segment after its prefix.
const SERVICE_FROM_PATH: &str = "*";

#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    pub service: String,
}

/// Kong's upstream host for a service, as the demo's Consul DNS names it.
pub fn service_host(service: &str) -> String {
    format!("{service}.service.consul")
}

impl Route {
    /// `path` as the upstream gets it under Kong's `strip_path`: without the prefix (and,
    /// for `*`, the service segment); `/` when nothing is left. `path` matches this route.
    pub fn stripped(&self, path: &str) -> String {
        let mut rest = path.get(self.prefix.len()..).unwrap_or_default();
        if self.service == SERVICE_FROM_PATH {
            let segment = rest.strip_prefix('/').unwrap_or(rest);
            rest = segment.find(['/', '?']).map_or("", |end| &segment[end..]);
        }
        match rest.strip_prefix('?') {
            Some(query) => format!("/?{query}"),
            None if rest.is_empty() => "/".to_string(),
            None => format!("/{}", rest.trim_start_matches('/')),
        }
    }

    /// The service `path` goes to, if it matches this route.
    pub fn service_for(&self, path: &str) -> Option<String> {
        if !self.matches(path) {
            return None;
        }
        if self.service != SERVICE_FROM_PATH {
            return Some(self.service.clone());
        }
        let rest = &path[self.prefix.len()..];
        let segment = rest.strip_prefix('/').unwrap_or(rest);
        let service = segment.split(['/', '?']).next().unwrap_or_default();
        (!service.is_empty()).then(|| service.to_string())
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
    /// `host:port` of the Consul HTTP API the gateway picks instances from.
    pub consul: String,
    /// `ip:port` every request goes to instead of an instance from Consul.
    pub upstream: Option<String>,
    pub routes: Vec<Route>,
    pub strip_path: bool,
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
        let mut upstream = None;
        let mut routes = Vec::new();
        let mut strip_path = false;
        let mut clusters = HashMap::new();
        let mut shm_zones = Vec::new();
        let mut allowed_origins = Vec::new();
        let mut listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut level = LogLevel::Info;

        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "--strip-path" {
                strip_path = true;
                continue;
            }
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
                "--upstream" => upstream = Some(host_port("--upstream", &value)?),
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
        let consul = match (consul, &upstream) {
            (Some(consul), _) => consul,
            (None, Some(_)) => String::new(),
            (None, None) => bail!("--consul or --upstream is required"),
        };
        Ok(Self {
            wasm,
            flavour,
            workers,
            config,
            consul,
            upstream,
            routes,
            strip_path,
            clusters,
            shm_zones,
            allowed_origins,
            listen,
            log_level: level,
        })
    }

    /// The service of the first route `path` matches.
    pub fn service_for(&self, path: &str) -> Option<String> {
        self.routes.iter().find_map(|route| route.service_for(path))
    }

    /// The path the upstream gets: `path` itself, or under `--strip-path` without what its
    /// route matched.
    pub fn upstream_path(&self, path: &str) -> String {
        match self
            .routes
            .iter()
            .find(|route| route.service_for(path).is_some())
        {
            Some(route) if self.strip_path => route.stripped(path),
            _ => path.to_string(),
        }
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
        assert_eq!(options.service_for("/echo").as_deref(), Some("echo"));
        assert_eq!(service_host("echo"), "echo.service.consul");
        assert_eq!(options.shm_zones, ["consul_enricher"]);
        assert_eq!(options.upstream, None);
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
    fn wildcard_routes_take_the_service_from_the_path() {
        let options = parse(&["--upstream", "127.0.0.1:9000", "--route", "/svc=*"]).unwrap();
        assert_eq!(options.upstream.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(options.service_for("/svc/web-7").as_deref(), Some("web-7"));
        assert_eq!(
            options.service_for("/svc/web-7/echo?x=1").as_deref(),
            Some("web-7")
        );
        assert_eq!(options.service_for("/svc/db?x=1").as_deref(), Some("db"));
        assert_eq!(options.service_for("/svc"), None);
        assert_eq!(options.service_for("/svc/"), None);
        assert_eq!(options.service_for("/other/web"), None);
    }

    #[test]
    fn strip_path_removes_what_the_route_matched() {
        let options = parse(&[
            "--upstream",
            "127.0.0.1:9000",
            "--route",
            "/svc=*",
            "--route",
            "/api=web",
            "--strip-path",
        ])
        .unwrap();
        assert_eq!(options.upstream_path("/svc/web-7/echo?x=1"), "/echo?x=1");
        assert_eq!(options.upstream_path("/svc/web-7"), "/");
        assert_eq!(options.upstream_path("/svc/web-7?x=1"), "/?x=1");
        assert_eq!(options.upstream_path("/api/echo"), "/echo");
        assert_eq!(options.upstream_path("/api"), "/");
        assert_eq!(options.upstream_path("/other/x"), "/other/x");
        let kept = parse(&["--upstream", "127.0.0.1:9000", "--route", "/svc=*"]).unwrap();
        assert_eq!(kept.upstream_path("/svc/web-7/echo"), "/svc/web-7/echo");
    }

    #[test]
    fn bad_values_are_named() {
        for (args, needle) in [
            (vec!["--consul", "x:1", "--flavour", "nginx"], "--flavour"),
            (vec!["--consul", "x:1", "--workers", "0"], "--workers"),
            (vec!["--consul", "nohost"], "--consul"),
            (vec!["--upstream", "nohost"], "--upstream"),
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
