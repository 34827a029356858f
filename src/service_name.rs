//! Which Consul service a request goes to.
//!
//! Sources, in order: a static name from the configuration; what the operator configured as
//! the gateway's upstream — Kong's service host (a `[<tag>.]<name>.service[.<dc>].consul`
//! name, Consul's DNS naming) or Envoy's cluster name; and only when the operator opts in,
//! the request's `:authority`, which the client chooses.

use crate::config::{is_service_name, ServiceConfig};

/// The service to look up, and the datacenter named by the host, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    pub name: String,
    pub datacenter: Option<String>,
}

impl ServiceTarget {
    /// The datacenter asked for: the one the host names, else the configured one (empty:
    /// the Consul agent's own).
    pub fn datacenter_or<'a>(&'a self, configured: &'a str) -> &'a str {
        self.datacenter.as_deref().unwrap_or(configured)
    }

    /// What the cache knows this target by: the service and its datacenter, so that
    /// answers of different datacenters never mix.
    pub fn cache_id(&self, configured_datacenter: &str) -> String {
        let dc = self.datacenter_or(configured_datacenter);
        let mut id = String::with_capacity(self.name.len() + 1 + dc.len());
        id.push_str(&self.name);
        if !dc.is_empty() {
            id.push('@');
            id.push_str(dc);
        }
        id
    }
}

/// Parses a Consul DNS name, e.g. `echo.service.consul`, `v2.echo.service.dc1.consul:8080`.
pub fn from_consul_host(host: &str) -> Option<ServiceTarget> {
    let host = strip_port(host.trim()).trim_end_matches('.');
    if host.len() > 253 {
        return None;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let n = labels.len();
    if n < 3 || !labels.last()?.eq_ignore_ascii_case("consul") {
        return None;
    }
    let (service_at, datacenter) = if labels.get(n - 2)?.eq_ignore_ascii_case("service") {
        (n - 2, None)
    } else if n >= 4 && labels.get(n - 3)?.eq_ignore_ascii_case("service") {
        (n - 3, Some(labels.get(n - 2)?.to_ascii_lowercase()))
    } else {
        return None;
    };
    let name = labels.get(service_at.checked_sub(1)?)?.to_ascii_lowercase();
    if !is_service_name(&name) || datacenter.as_deref().is_some_and(|dc| !is_service_name(dc)) {
        return None;
    }
    Some(ServiceTarget { name, datacenter })
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Where the request's candidate names come from; each is what the host reported.
#[derive(Debug, Default, Clone, Copy)]
pub struct NameSources<'a> {
    /// Kong: the host of the Kong service the route proxies to.
    pub upstream_host: Option<&'a str>,
    /// Envoy: the route's cluster (`xds.cluster_name`).
    pub cluster: Option<&'a str>,
    /// The request's `:authority` (client-controlled).
    pub authority: Option<&'a str>,
}

/// Decides the service for a request, or None when no source names one. The gateway's
/// own upstream comes before anything the client sent.
pub fn resolve(config: &ServiceConfig, sources: NameSources<'_>) -> Option<ServiceTarget> {
    if !config.name.is_empty() {
        return Some(ServiceTarget {
            name: config.name.clone(),
            datacenter: None,
        });
    }
    let from_upstream_host = config
        .from_host
        .then_some(sources.upstream_host)
        .flatten()
        .and_then(from_consul_host);
    let from_cluster = || {
        let cluster = config.from_cluster.then_some(sources.cluster).flatten()?;
        from_consul_host(cluster).or_else(|| {
            is_service_name(cluster).then(|| ServiceTarget {
                name: cluster.to_string(),
                datacenter: None,
            })
        })
    };
    let from_authority = || {
        config
            .from_authority
            .then_some(sources.authority)
            .flatten()
            .and_then(from_consul_host)
    };
    from_upstream_host
        .or_else(from_cluster)
        .or_else(from_authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn target(name: &str, dc: Option<&str>) -> Option<ServiceTarget> {
        Some(ServiceTarget {
            name: name.into(),
            datacenter: dc.map(Into::into),
        })
    }

    #[test]
    fn consul_dns_names() {
        assert_eq!(
            from_consul_host("echo.service.consul"),
            target("echo", None)
        );
        assert_eq!(
            from_consul_host("echo.service.dc1.consul"),
            target("echo", Some("dc1"))
        );
        assert_eq!(
            from_consul_host("v2.echo.service.consul"),
            target("echo", None)
        );
        assert_eq!(
            from_consul_host("Echo.Service.DC1.Consul."),
            target("echo", Some("dc1"))
        );
        assert_eq!(
            from_consul_host("echo.service.consul:8080"),
            target("echo", None)
        );
        assert_eq!(
            from_consul_host(" echo.service.consul "),
            target("echo", None)
        );
    }

    #[test]
    fn other_hosts_are_not_consul_names() {
        for host in [
            "",
            "consul",
            "service.consul",
            "echo.consul",
            "echo.service.example.com",
            "echo.node.consul",
            "echo.service.dc1.extra.consul",
            "ec ho.service.consul",
            "echo.service.d c.consul",
            "localhost:8000",
            "127.0.0.1",
            "[::1]:8080",
        ] {
            assert_eq!(from_consul_host(host), None, "{host}");
        }
        assert_eq!(
            from_consul_host(&format!("{}.service.consul", "a".repeat(300))),
            None
        );
    }

    #[test]
    fn static_name_wins() {
        let config = ServiceConfig {
            name: "orders".into(),
            ..ServiceConfig::default()
        };
        let sources = NameSources {
            authority: Some("echo.service.consul"),
            ..NameSources::default()
        };
        assert_eq!(resolve(&config, sources), target("orders", None));
    }

    #[test]
    fn the_gateways_upstream_before_the_clients_authority() {
        let config = ServiceConfig {
            from_authority: true,
            ..ServiceConfig::default()
        };
        let sources = NameSources {
            upstream_host: Some("echo.service.consul"),
            authority: Some("billing.service.consul"),
            cluster: None,
        };
        assert_eq!(resolve(&config, sources), target("echo", None));
        let cluster = NameSources {
            cluster: Some("echo"),
            authority: Some("billing.service.consul"),
            ..NameSources::default()
        };
        assert_eq!(resolve(&config, cluster), target("echo", None));
        let only_authority = NameSources {
            upstream_host: Some("10.0.0.1"),
            authority: Some("web.service.dc2.consul"),
            cluster: None,
        };
        assert_eq!(resolve(&config, only_authority), target("web", Some("dc2")));
    }

    #[test]
    fn the_clients_authority_is_ignored_by_default() {
        let sources = NameSources {
            authority: Some("billing.service.consul"),
            ..NameSources::default()
        };
        assert_eq!(resolve(&ServiceConfig::default(), sources), None);
    }

    #[test]
    fn cluster_names() {
        let mut config = ServiceConfig {
            from_host: false,
            ..ServiceConfig::default()
        };
        let sources = NameSources {
            authority: Some("echo.service.consul"),
            cluster: Some("echo_cluster"),
            ..NameSources::default()
        };
        assert_eq!(resolve(&config, sources), target("echo_cluster", None));
        let dns = NameSources {
            cluster: Some("echo.service.dc3.consul"),
            ..NameSources::default()
        };
        assert_eq!(resolve(&config, dns), target("echo", Some("dc3")));
        let bad = NameSources {
            cluster: Some("outbound|80||x"),
            ..NameSources::default()
        };
        assert_eq!(resolve(&config, bad), None);
        config.from_cluster = false;
        assert_eq!(resolve(&config, sources), None);
    }

    #[test]
    fn cache_ids_keep_datacenters_apart() {
        let plain = ServiceTarget {
            name: "echo".into(),
            datacenter: None,
        };
        let dc2 = ServiceTarget {
            name: "echo".into(),
            datacenter: Some("dc2".into()),
        };
        assert_eq!(plain.cache_id(""), "echo");
        assert_eq!(plain.cache_id("dc1"), "echo@dc1");
        assert_eq!(dc2.cache_id("dc1"), "echo@dc2");
        assert_ne!(plain.cache_id(""), dc2.cache_id(""));
    }

    #[test]
    fn nothing_found() {
        assert_eq!(
            resolve(&ServiceConfig::default(), NameSources::default()),
            None
        );
    }
}
