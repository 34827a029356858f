//! Which Consul service a request goes to.
//!
//! Sources, in order: a static name from the configuration; a host of the form
//! `[<tag>.]<name>.service[.<dc>].consul` (Consul's DNS naming) taken from Kong's upstream
//! host or from `:authority`; Envoy's cluster name.

use crate::config::{is_service_name, ServiceConfig};

/// The service to look up, and the datacenter named by the host, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    pub name: String,
    pub datacenter: Option<String>,
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
    /// Kong: the service host the request is proxied to (`ngx.upstream_host`).
    pub upstream_host: Option<&'a str>,
    /// The request's `:authority`.
    pub authority: Option<&'a str>,
    /// Envoy: the route's cluster (`xds.cluster_name`).
    pub cluster: Option<&'a str>,
}

/// Decides the service for a request, or None when no source names one.
pub fn resolve(config: &ServiceConfig, sources: NameSources<'_>) -> Option<ServiceTarget> {
    if !config.name.is_empty() {
        return Some(ServiceTarget {
            name: config.name.clone(),
            datacenter: None,
        });
    }
    if config.from_host {
        let found = sources
            .upstream_host
            .and_then(from_consul_host)
            .or_else(|| sources.authority.and_then(from_consul_host));
        if found.is_some() {
            return found;
        }
    }
    if config.from_cluster {
        if let Some(cluster) = sources.cluster {
            return from_consul_host(cluster).or_else(|| {
                is_service_name(cluster).then(|| ServiceTarget {
                    name: cluster.to_string(),
                    datacenter: None,
                })
            });
        }
    }
    None
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
    fn upstream_host_before_authority() {
        let config = ServiceConfig::default();
        let sources = NameSources {
            upstream_host: Some("echo.service.consul"),
            authority: Some("web.service.consul"),
            cluster: None,
        };
        assert_eq!(resolve(&config, sources), target("echo", None));
        let sources = NameSources {
            upstream_host: Some("10.0.0.1"),
            authority: Some("web.service.dc2.consul"),
            cluster: None,
        };
        assert_eq!(resolve(&config, sources), target("web", Some("dc2")));
    }

    #[test]
    fn cluster_name_when_enabled() {
        let mut config = ServiceConfig {
            from_host: false,
            from_cluster: true,
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
    fn nothing_found() {
        assert_eq!(
            resolve(&ServiceConfig::default(), NameSources::default()),
            None
        );
    }
}
