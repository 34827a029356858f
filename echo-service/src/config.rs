//! Settings read from the environment once at start-up. A bad value stops the service
//! with a message naming the variable, before anything listens or registers.
//!
//! The OpenTelemetry variables (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`, `OTEL_TRACES_SAMPLER`...) are read by the
//! OpenTelemetry crates themselves; this module only decides whether spans are exported at
//! all, and refuses the one value the crates would otherwise replace silently.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

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
    /// Whether spans are exported: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Without either, spans are still created (their
    /// ids are echoed back) but go nowhere.
    pub otlp_export: bool,
    /// `RESPONSE_DELAY_MS`: how long `/echo` waits before answering, inside its server
    /// span; the demo makes one version slow with it so the report has a cause to find.
    pub response_delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsulConfig {
    /// Base URL of the agent's HTTP API, without a trailing `/`.
    pub base_url: String,
    pub token: Option<String>,
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
        let response_delay = match get("RESPONSE_DELAY_MS") {
            Some(value) => Duration::from_millis(value.parse().map_err(|_| ConfigError {
                variable: "RESPONSE_DELAY_MS",
                reason: format!("{value:?} is not a whole number of milliseconds"),
            })?),
            None => Duration::ZERO,
        };
        let otlp_export = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        if otlp_export {
            refuse_other_protocols(&get)?;
        }

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
            otlp_export,
            response_delay,
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

/// The one OTLP protocol built in: the specification's default, protobuf over HTTP (gRPC
/// would pull a gRPC stack into a demo backend). opentelemetry-otlp replaces a protocol it
/// was not built with by its default, with a warning only its internal log shows (and would
/// then post protobuf to, say, a gRPC port): refused here instead, naming the variable the
/// exporter reads, the traces-specific one first as it does.
const OTLP_PROTOCOL: &str = "http/protobuf";

fn refuse_other_protocols(get: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let variable = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find(|variable| get(variable).is_some());
    match variable.and_then(|variable| get(variable).map(|value| (variable, value))) {
        Some((variable, value)) if !value.eq_ignore_ascii_case(OTLP_PROTOCOL) => Err(ConfigError {
            variable,
            reason: format!("{value:?} is not built in; only {OTLP_PROTOCOL} is"),
        }),
        _ => Ok(()),
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
        assert_eq!(config.service_id, None);
        assert_eq!(config.service_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(config.service_region, None);
        assert_eq!(config.service_address, "127.0.0.1");
        assert!(config.service_tags.is_empty());
        assert_eq!(config.consul, None);
        assert!(!config.otlp_export);
        assert_eq!(config.response_delay, Duration::ZERO);
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
            ("RESPONSE_DELAY_MS", "150"),
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
        assert!(config.otlp_export);
        assert_eq!(config.response_delay, Duration::from_millis(150));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let config = config(&[
            ("CONSUL_HTTP_ADDR", ""),
            ("SERVICE_NAME", " "),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        ])
        .expect("valid");
        assert_eq!(config.consul, None);
        assert_eq!(config.service_name, "echo");
        assert!(!config.otlp_export);
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
            ("RESPONSE_DELAY_MS", "-5"),
            ("RESPONSE_DELAY_MS", "0.5"),
        ];
        for (variable, value) in cases {
            let error = config(&[(variable, value)]).expect_err(value);
            assert_eq!(error.variable, variable, "{value}");
            assert!(error.to_string().contains(value), "{error}");
        }
    }

    #[test]
    fn either_endpoint_variable_turns_export_on() {
        for variable in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            let config = config(&[(variable, "http://collector:4318")]).expect("valid");
            assert!(config.otlp_export, "{variable}");
        }
    }

    #[test]
    fn other_protocols_are_refused_naming_the_variable_the_exporter_reads() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4317");
        for value in ["grpc", "http/json", "HTTP/JSON", "protobuf"] {
            let error =
                config(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", value)]).expect_err(value);
            assert_eq!(error.variable, "OTEL_EXPORTER_OTLP_PROTOCOL");
            assert!(error.to_string().contains(value), "{error}");
        }
        let specific = config(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .expect_err("the traces protocol is the one read");
        assert_eq!(specific.variable, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
        // The traces-specific value hides a generic one, as in the exporter.
        let overridden = config(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "HTTP/PROTOBUF"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        assert!(overridden.is_ok(), "{overridden:?}");
    }

    #[test]
    fn protocol_without_endpoint_is_ignored() {
        let config = config(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).expect("no export");
        assert!(!config.otlp_export);
    }
}
