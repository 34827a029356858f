//! The gateway's own side of Consul and of the upstream: which instance serves a request
//! (the catalog, round robin, as Kong's balancer does over the SRV answer of Consul DNS and
//! Envoy over a cluster's endpoints), and one HTTP/1.1 exchange with it.
//!
//! Catalog shape: Consul's HTTP API docs, "List Nodes for Service"
//! (`GET /v1/catalog/service/:service`): `ServiceAddress` falls back to the node's
//! `Address` when empty.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Larger upstream answers are refused rather than buffered.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// One HTTP/1.1 exchange over a fresh loopback connection, body read whole.
pub async fn exchange(address: &str, request: Request<Full<Bytes>>) -> Result<Response<Bytes>> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = http_body_util::Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer of {address}: {e}"))?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, work)
        .await
        .map_err(|_| anyhow!("{address} did not answer within {EXCHANGE_TIMEOUT:?}"))?
}

/// Instances of a service from the catalog, round robin per gateway.
pub struct Balancer {
    consul: String,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(consul: String) -> Self {
        Self {
            consul,
            next: AtomicUsize::new(0),
        }
    }

    /// `ip:port` of the next instance of `service`; an error when Consul cannot say or
    /// knows no instance (the gateway then answers 503 as Kong does on a failed name
    /// resolution).
    pub async fn pick(&self, service: &str) -> Result<String> {
        let request = Request::get(format!("/v1/catalog/service/{service}"))
            .header("host", &self.consul)
            .body(Full::new(Bytes::new()))?;
        let response = exchange(&self.consul, request).await?;
        if !response.status().is_success() {
            bail!(
                "Consul answered {} for service {service}",
                response.status()
            );
        }
        let mut instances = parse_catalog(response.body())?;
        if instances.is_empty() {
            bail!("Consul knows no instance of {service}");
        }
        instances.sort();
        let index = self.next.fetch_add(1, Ordering::Relaxed) % instances.len();
        Ok(instances.swap_remove(index).1)
    }
}

/// `(service id, ip:port)` of every entry.
fn parse_catalog(body: &[u8]) -> Result<Vec<(String, String)>> {
    let entries: Vec<Value> =
        serde_json::from_slice(body).context("the catalog answer is not a JSON array")?;
    entries
        .iter()
        .map(|entry| {
            let text = |key: &str| entry.get(key).and_then(Value::as_str).unwrap_or("");
            let address = match text("ServiceAddress") {
                "" => text("Address"),
                address => address,
            };
            let port = entry
                .get("ServicePort")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if address.is_empty() || port == 0 || port > u64::from(u16::MAX) {
                bail!(
                    "catalog entry {:?} has no usable address and port",
                    text("ServiceID")
                );
            }
            Ok((text("ServiceID").to_string(), format!("{address}:{port}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_addresses_fall_back_to_the_node() {
        let body = br#"[
            {"ServiceID": "b", "Address": "10.0.0.2", "ServiceAddress": "", "ServicePort": 81},
            {"ServiceID": "a", "Address": "10.0.0.1", "ServiceAddress": "127.0.0.1", "ServicePort": 80, "ServiceMeta": null}
        ]"#;
        assert_eq!(
            parse_catalog(body).unwrap(),
            [
                ("b".into(), "10.0.0.2:81".into()),
                ("a".into(), "127.0.0.1:80".into())
            ]
        );
    }

    #[test]
    fn unusable_catalogs_are_errors() {
        assert!(parse_catalog(b"{}").is_err());
        assert!(
            parse_catalog(br#"[{"ServiceID": "x", "Address": "", "ServicePort": 80}]"#).is_err()
        );
        assert!(
            parse_catalog(br#"[{"ServiceID": "x", "Address": "h", "ServicePort": 0}]"#).is_err()
        );
        assert!(parse_catalog(b"[]").unwrap().is_empty());
    }
}
