//! Self-registration with the local Consul agent.
//!
//! Follows developer.hashicorp.com/consul/api-docs/agent/service ("Register Service",
//! `PUT /v1/agent/service/register`; "Deregister Service",
//! `PUT /v1/agent/service/deregister/:service_id`), api-docs/agent/check for the HTTP
//! check fields, and the API overview's "Authentication" (`X-Consul-Token`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::ConsulConfig;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts before giving up on registering; the service keeps serving either way.
const REGISTER_ATTEMPTS: u32 = 8;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(8);
const CHECK_INTERVAL: &str = "10s";
/// A check starts `critical` unless registered with a status, and Consul's DNS and health
/// API hide the instance until it first passes, up to one interval after registration. The
/// service answers /health before it registers, so it starts `passing`.
const CHECK_INITIAL_STATUS: &str = "passing";
const CHECK_TIMEOUT: &str = "2s";
/// Consul's own clean-up if this process dies without deregistering.
const DEREGISTER_CRITICAL_AFTER: &str = "1m";

/// The body of `PUT /v1/agent/service/register`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Registration {
    pub name: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub check: HttpCheck,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HttpCheck {
    #[serde(rename = "HTTP")]
    pub http: String,
    pub method: String,
    pub interval: String,
    pub timeout: String,
    /// The check's initial status (api-docs/agent/check, `Status`).
    pub status: String,
    pub deregister_critical_service_after: String,
}

impl Registration {
    pub fn new(
        name: &str,
        id: &str,
        address: &str,
        port: u16,
        tags: &[String],
        meta: BTreeMap<String, String>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            id: id.to_owned(),
            address: address.to_owned(),
            port,
            tags: tags.to_vec(),
            meta,
            check: HttpCheck {
                http: format!("http://{}/health", host_port(address, port)),
                method: "GET".to_owned(),
                interval: CHECK_INTERVAL.to_owned(),
                timeout: CHECK_TIMEOUT.to_owned(),
                status: CHECK_INITIAL_STATUS.to_owned(),
                deregister_critical_service_after: DEREGISTER_CRITICAL_AFTER.to_owned(),
            },
        }
    }
}

/// `host:port`, with brackets around an IPv6 literal.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub struct ConsulAgent {
    config: ConsulConfig,
    http: reqwest::Client,
    registered: AtomicBool,
}

impl ConsulAgent {
    pub fn new(config: ConsulConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self {
            config,
            http,
            registered: AtomicBool::new(false),
        })
    }

    /// Registers, retrying with a doubling delay while the agent is unreachable or refuses.
    /// Never fails: an unregistered service still answers, it just is not discoverable.
    pub async fn register_with_retries(self: Arc<Self>, registration: Registration) {
        let mut delay = FIRST_RETRY_DELAY;
        for attempt in 1..=REGISTER_ATTEMPTS {
            match self.register(&registration).await {
                Ok(()) => {
                    self.registered.store(true, Ordering::SeqCst);
                    eprintln!(
                        "echo-service: registered {} as {} in Consul at {}",
                        registration.name, registration.id, self.config.base_url
                    );
                    return;
                }
                Err(error) if attempt < REGISTER_ATTEMPTS => {
                    eprintln!(
                        "echo-service: Consul registration attempt {attempt}/{REGISTER_ATTEMPTS} failed: {error}; retrying in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(error) => eprintln!(
                    "echo-service: giving up on Consul registration after {REGISTER_ATTEMPTS} attempts: {error}; serving unregistered"
                ),
            }
        }
    }

    async fn register(&self, registration: &Registration) -> Result<(), String> {
        let url = format!("{}/v1/agent/service/register", self.config.base_url);
        self.put(self.http.put(url).json(registration)).await
    }

    /// Deregisters if registration succeeded; errors are logged, shutdown goes on.
    pub async fn deregister(&self, service_id: &str) {
        if !self.registered.swap(false, Ordering::SeqCst) {
            return;
        }
        let url = format!(
            "{}/v1/agent/service/deregister/{}",
            self.config.base_url,
            percent_encode_path_segment(service_id)
        );
        match self.put(self.http.put(url)).await {
            Ok(()) => eprintln!("echo-service: deregistered {service_id} from Consul"),
            Err(error) => eprintln!("echo-service: Consul deregistration failed: {error}"),
        }
    }

    async fn put(&self, request: reqwest::RequestBuilder) -> Result<(), String> {
        let request = match &self.config.token {
            Some(token) => request.header("X-Consul-Token", token),
            None => request,
        };
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(format!("HTTP {status}: {}", body.trim()))
    }
}

/// Service IDs are free text in Consul; everything outside RFC 3986's unreserved set is
/// escaped so the ID stays one path segment.
fn percent_encode_path_segment(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registration_body_has_consul_field_names() {
        let meta = BTreeMap::from([
            ("version".to_owned(), "1.2.0".to_owned()),
            ("region".to_owned(), "eu-west-1".to_owned()),
        ]);
        let body = serde_json::to_value(Registration::new(
            "echo",
            "echo-1",
            "10.0.0.5",
            8080,
            &["blue".to_owned()],
            meta,
        ))
        .expect("serializable");
        assert_eq!(
            body,
            json!({
                "Name": "echo",
                "ID": "echo-1",
                "Address": "10.0.0.5",
                "Port": 8080,
                "Tags": ["blue"],
                "Meta": {"version": "1.2.0", "region": "eu-west-1"},
                "Check": {
                    "HTTP": "http://10.0.0.5:8080/health",
                    "Method": "GET",
                    "Interval": "10s",
                    "Timeout": "2s",
                    "Status": "passing",
                    "DeregisterCriticalServiceAfter": "1m"
                }
            })
        );
    }

    #[test]
    fn ipv6_check_url_is_bracketed() {
        let registration = Registration::new("echo", "e", "::1", 9000, &[], BTreeMap::new());
        assert_eq!(registration.check.http, "http://[::1]:9000/health");
    }

    #[test]
    fn service_id_stays_one_path_segment() {
        assert_eq!(percent_encode_path_segment("echo-8080"), "echo-8080");
        assert_eq!(percent_encode_path_segment("a/b c"), "a%2Fb%20c");
    }
}
