//! Settings read from the environment once at start-up. A bad value stops the service
//! with a message naming the variable, before anything listens or registers.

use std::fmt;
use std::net::IpAddr;

use opentelemetry_otlp::Protocol;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address to bind; `LISTEN_ADDRESS`, default `127.0.0.1` (containers set `0.0.0.0`).
    pub listen_address: IpAddr,
    /// `PORT`; 0 picks a free port.
    pub port: u16,
    pub service_name: String,
    /// `SERVICE_ID`; `None` means `<name>-<bound port>`, known only after binding.
    pub service_id: Option<String>,
    pub service_version: String,
    pub service_region: Option<String>,
    /// Address registered in Consul and used by its health check.
    pub service_address: String,
    pub service_tags: Vec<String>,
    pub consul: Option<ConsulConfig>,
    pub otlp: Option<OtlpConfig>,
    pub otel_service_name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsulConfig {
    /// Base URL of the agent's HTTP API, without a trailing `/`.
    pub base_url: String,
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// Full URL spans are posted to: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/traces` (OTLP exporter specification).
    pub traces_endpoint: String,
    pub protocol: Protocol,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.variable, self.reason)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads every setting through `lookup`; an empty value counts as unset, as shells and
    /// compose files often export empty variables.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let listen_address = match get("LISTEN_ADDRESS") {
            Some(value) => value.parse().map_err(|_| ConfigError {
                variable: "LISTEN_ADDRESS",
                reason: format!("{value:?} is not an IP address"),
            })?,
            None => IpAddr::from([127, 0, 0, 1]),
        };
        let port = match get("PORT") {
            Some(value) => value.parse().map_err(|_| ConfigError {
                variable: "PORT",
                reason: format!("{value:?} is not a port number (0-65535)"),
            })?,
            None => 0,
        };
        let service_name = get("SERVICE_NAME").unwrap_or_else(|| "echo".to_owned());
        let service_tags = get("SERVICE_TAGS")
            .map(|tags| {
                tags.split(',')
                    .map(str::trim)
                    .filter(|tag| !tag.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let consul = get("CONSUL_HTTP_ADDR")
            .map(|addr| {
                Ok::<_, ConfigError>(ConsulConfig {
                    base_url: consul_base_url(&addr)?,
                    token: get("CONSUL_HTTP_TOKEN"),
                })
            })
            .transpose()?;
        let traces_endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => Some(http_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)?),
            (None, Some(base)) => {
                let base = http_url("OTEL_EXPORTER_OTLP_ENDPOINT", base)?;
                Some(format!("{}/v1/traces", base.trim_end_matches('/')))
            }
            (None, None) => None,
        };
        let otlp = traces_endpoint
            .map(|traces_endpoint| {
                Ok::<_, ConfigError>(OtlpConfig {
                    protocol: otlp_protocol(get("OTEL_EXPORTER_OTLP_PROTOCOL").as_deref())?,
                    traces_endpoint,
                })
            })
            .transpose()?;

        Ok(Self {
            listen_address,
            port,
            service_id: get("SERVICE_ID"),
            service_version: get("SERVICE_VERSION")
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
            service_region: get("SERVICE_REGION"),
            service_address: get("SERVICE_ADDRESS").unwrap_or_else(|| "127.0.0.1".to_owned()),
            service_tags,
            consul,
            otlp,
            otel_service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.clone()),
            service_name,
        })
    }
}

/// `CONSUL_HTTP_ADDR` is `host:port` or a URL, as for Consul's own CLI. Only plain HTTP is
/// built in: the service is a demo backend talking to its local agent.
fn consul_base_url(addr: &str) -> Result<String, ConfigError> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let authority = url.strip_prefix("http://").ok_or_else(|| ConfigError {
        variable: "CONSUL_HTTP_ADDR",
        reason: format!("{addr:?}: only http:// is supported"),
    })?;
    if authority.trim_end_matches('/').is_empty() || authority.contains(char::is_whitespace) {
        return Err(ConfigError {
            variable: "CONSUL_HTTP_ADDR",
            reason: format!("{addr:?} has no host"),
        });
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn http_url(variable: &'static str, url: String) -> Result<String, ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url)
    } else {
        Err(ConfigError {
            variable,
            reason: format!("{url:?} is not an http:// or https:// URL"),
        })
    }
}

/// The OTLP exporter specification's values; gRPC is not built in (it would pull in a gRPC
/// stack for a demo backend), so it is refused rather than silently replaced.
fn otlp_protocol(value: Option<&str>) -> Result<Protocol, ConfigError> {
    match value {
        None | Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some("http/json") => Ok(Protocol::HttpJson),
        Some(other) => Err(ConfigError {
            variable: "OTEL_EXPORTER_OTLP_PROTOCOL",
            reason: format!("{other:?} is not supported; use http/protobuf or http/json"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_register_nowhere_and_export_nothing() {
        let config = config(&[]).expect("empty environment is valid");
        assert_eq!(config.listen_address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(config.port, 0);
        assert_eq!(config.service_name, "echo");
        assert_eq!(config.otel_service_name, "echo");
        assert_eq!(config.service_id, None);
        assert_eq!(config.service_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(config.service_region, None);
        assert_eq!(config.service_address, "127.0.0.1");
        assert!(config.service_tags.is_empty());
        assert_eq!(config.consul, None);
        assert_eq!(config.otlp, None);
    }

    #[test]
    fn reads_every_variable() {
        let config = config(&[
            ("LISTEN_ADDRESS", "0.0.0.0"),
            ("PORT", "8080"),
            ("SERVICE_NAME", "payments"),
            ("SERVICE_ID", "payments-a"),
            ("SERVICE_VERSION", "2.1.0"),
            ("SERVICE_REGION", "eu-west-1"),
            ("SERVICE_ADDRESS", "10.0.0.7"),
            ("SERVICE_TAGS", "blue, canary,,"),
            ("CONSUL_HTTP_ADDR", "consul:8500"),
            ("CONSUL_HTTP_TOKEN", "secret"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "payments-otel"),
        ])
        .expect("valid");
        assert_eq!(config.listen_address, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(config.port, 8080);
        assert_eq!(config.service_name, "payments");
        assert_eq!(config.service_id.as_deref(), Some("payments-a"));
        assert_eq!(config.service_version, "2.1.0");
        assert_eq!(config.service_region.as_deref(), Some("eu-west-1"));
        assert_eq!(config.service_address, "10.0.0.7");
        assert_eq!(config.service_tags, ["blue", "canary"]);
        assert_eq!(
            config.consul,
            Some(ConsulConfig {
                base_url: "http://consul:8500".to_owned(),
                token: Some("secret".to_owned()),
            })
        );
        assert_eq!(
            config.otlp,
            Some(OtlpConfig {
                traces_endpoint: "http://jaeger:4318/v1/traces".to_owned(),
                protocol: Protocol::HttpJson,
            })
        );
        assert_eq!(config.otel_service_name, "payments-otel");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let config = config(&[("CONSUL_HTTP_ADDR", ""), ("SERVICE_NAME", " ")]).expect("valid");
        assert_eq!(config.consul, None);
        assert_eq!(config.service_name, "echo");
    }

    #[test]
    fn consul_url_keeps_scheme_and_drops_trailing_slash() {
        let config = config(&[("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500/")]).expect("valid");
        assert_eq!(
            config.consul.expect("set").base_url,
            "http://127.0.0.1:8500"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            ("PORT", "eighty"),
            ("PORT", "70000"),
            ("LISTEN_ADDRESS", "localhost"),
            ("CONSUL_HTTP_ADDR", "https://consul:8501"),
            ("CONSUL_HTTP_ADDR", "http://"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4318"),
        ];
        for (variable, value) in cases {
            let error = config(&[(variable, value)]).expect_err(value);
            assert_eq!(error.variable, variable, "{value}");
            assert!(error.to_string().contains(value), "{error}");
        }
    }

    #[test]
    fn traces_endpoint_wins_and_is_used_as_is() {
        let both = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://jaeger:4318/custom",
            ),
        ])
        .expect("valid");
        assert_eq!(
            both.otlp.expect("set").traces_endpoint,
            "http://jaeger:4318/custom"
        );
        let base_only =
            config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).expect("valid");
        assert_eq!(
            base_only.otlp.expect("set").traces_endpoint,
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn grpc_protocol_is_refused() {
        let error = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .expect_err("grpc is not built in");
        assert_eq!(error.variable, "OTEL_EXPORTER_OTLP_PROTOCOL");
    }

    #[test]
    fn protocol_without_endpoint_is_ignored() {
        let config = config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).expect("no export");
        assert_eq!(config.otlp, None);
    }
}
