//! The HTTP context: reads the request, decides, and writes what `enrich` computed.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host;
use super::lookup::MissOutcome;
use super::{RequestState, Shared};
use crate::cache::{decide, Lookup};
use crate::config::HostKind;
use crate::enrich;
use crate::service_name::{resolve, NameSources};
use crate::trace_context::{Baggage, TraceParent};

pub struct Http {
    id: u32,
    /// None when the filter has no valid configuration: requests pass through.
    shared: Option<Rc<Shared>>,
}

impl Http {
    pub fn new(id: u32, shared: Option<Rc<Shared>>) -> Http {
        Http { id, shared }
    }
}

/// Logs malformed input on its 1st, 2nd, 4th, 8th... occurrence per worker, so a flood of
/// bad requests cannot flood the log.
fn log_invalid(shared: &Shared, what: &str, why: &str) {
    let n = {
        let mut state = shared.state.borrow_mut();
        state.invalid_inputs += 1;
        state.invalid_inputs
    };
    if n.is_power_of_two() {
        log::warn!(
            "consul-enricher: {what} passed through untouched: {why} ({n} malformed inputs so far)"
        );
    }
}

/// The upstream peer of this request, as each host reports it (see [`enrich::Peer`]).
fn upstream_peer(kind: HostKind) -> Option<enrich::Peer> {
    let address = host::property(&["upstream", "address"])?;
    match kind {
        HostKind::Kong => {
            let port = host::property(&["upstream", "port"])?;
            enrich::Peer::parse(&address, Some(&port))
        }
        HostKind::Envoy => enrich::Peer::parse(&address, None),
    }
}

fn request_header(name: &str) -> Option<String> {
    host::header(MapType::HttpRequestHeaders, name)
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _: usize,
        body_size: usize,
        _: usize,
    ) {
        if let Some(shared) = &self.shared {
            shared.on_call_response(self.id, token, body_size);
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let config = &shared.config;
        host::increment(shared.metrics.requests, 1);
        let start_nanos = host::now_nanos();

        let trace =
            request_header("traceparent").and_then(|value| match TraceParent::parse(&value) {
                Ok(t) => Some(t),
                Err(e) => {
                    host::increment(shared.metrics.invalid_traceparent, 1);
                    log_invalid(&shared, "traceparent", e.as_str());
                    None
                }
            });

        let baggage = match request_header("baggage") {
            None => Some(Baggage::default()),
            Some(raw) => Baggage::parse(&raw)
                .map_err(|e| {
                    host::increment(shared.metrics.invalid_baggage, 1);
                    log_invalid(&shared, "baggage", e.as_str());
                })
                .ok(),
        };
        let baggage_attributes = baggage
            .as_ref()
            .map(|b| enrich::baggage_attributes(b, &config.baggage.read_keys))
            .unwrap_or_default();

        let span_id = match &trace {
            Some(t) if config.spans.enabled && t.sampled() => {
                let id = shared.state.borrow_mut().span_ids.next_id();
                if config.spans.reparent {
                    host::set_header(
                        MapType::HttpRequestHeaders,
                        "traceparent",
                        &t.with_parent(id).to_header(),
                    );
                }
                Some(id)
            }
            _ => None,
        };

        let upstream_host = match config.host {
            HostKind::Kong if config.service.from_host => host::property(&["ngx", "upstream_host"]),
            _ => None,
        };
        let cluster = match config.host {
            HostKind::Envoy if config.service.from_cluster => {
                host::property(&["xds", "cluster_name"])
            }
            _ => None,
        };
        let authority = if config.service.from_host {
            request_header(":authority")
        } else {
            None
        };
        let target = resolve(
            &config.service,
            NameSources {
                upstream_host: upstream_host.as_deref(),
                authority: authority.as_deref(),
                cluster: cluster.as_deref(),
            },
        );
        let name = target.as_ref().map(|t| t.name.clone());
        shared.state.borrow_mut().requests.insert(
            self.id,
            RequestState {
                target,
                trace,
                span_id,
                start_nanos,
                baggage,
                baggage_attributes,
                lookup_started_ms: start_nanos / 1_000_000,
                entry: None,
                attributes: Vec::new(),
                service: None,
            },
        );
        let Some(name) = name else {
            log::debug!("consul-enricher: no Consul service for this request");
            return Action::Continue;
        };

        let entry = shared.read_entry(&name);
        let lookup = decide(entry.as_deref(), host::now_ms());
        match lookup {
            Lookup::Miss => {
                let target = shared
                    .state
                    .borrow()
                    .requests
                    .get(&self.id)
                    .and_then(|r| r.target.clone());
                if let Some(target) = target {
                    if let MissOutcome::Paused = shared.wait_for_lookup(self.id, &target) {
                        return Action::Pause;
                    }
                }
                shared.apply(self.id, shared.read_entry(&name), Lookup::Backoff);
            }
            Lookup::Stale { refresh } => {
                if refresh {
                    let mut state = shared.state.borrow_mut();
                    if !state.refresh_wanted.contains(&name) {
                        state.refresh_wanted.push(name);
                    }
                }
                shared.apply(self.id, entry, lookup);
            }
            _ => shared.apply(self.id, entry, lookup),
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(shared) = &self.shared else {
            return Action::Continue;
        };
        let config = &shared.config;
        let peer = upstream_peer(config.host);
        let mut state = shared.state.borrow_mut();
        let Some(req) = state.requests.get_mut(&self.id) else {
            return Action::Continue;
        };
        if req.target.is_none() {
            return Action::Continue;
        }
        let instances = req
            .entry
            .as_ref()
            .map_or(&[][..], |e| e.instances.as_slice());
        let instance = peer
            .as_ref()
            .and_then(|p| enrich::match_instance(instances, p));
        if config.headers.response {
            let instance_headers = instance
                .map(|i| enrich::instance_headers(config, i))
                .unwrap_or_default();
            let service_headers = req.service.as_ref().map_or(&[][..], |e| &e.headers[..]);
            for (name, value) in service_headers.iter().chain(instance_headers.iter()) {
                host::set_header(MapType::HttpResponseHeaders, name, value);
            }
        }
        let instance_attrs = enrich::for_instance(instance, peer.as_ref());
        enrich::merge(&mut req.attributes, instance_attrs);
        if config.host == HostKind::Kong && config.kong_ctx_shared {
            shared.write_kong_ctx(&req.attributes);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Some(shared) = &self.shared {
            let req = shared.state.borrow_mut().requests.remove(&self.id);
            if let Some(req) = req {
                shared.finish_span(&req);
            }
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            if let Ok(mut state) = shared.state.try_borrow_mut() {
                state.requests.remove(&self.id);
                for pending in state.pending.values_mut() {
                    pending.waiters.retain(|&w| w != self.id);
                }
            }
        }
    }
}
