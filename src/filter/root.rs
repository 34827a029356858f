//! The root context: configuration, metrics, and the per-worker tick.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use hashbrown::HashMap;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};

use super::host;
use super::http::Http;
use super::{Metrics, Shared, WorkerState, TICK_MS};
use crate::config::{Config, HostKind};
use crate::span::SpanIds;

pub struct Root {
    id: u32,
    shared: Option<Rc<Shared>>,
}

impl Root {
    pub fn new(id: u32) -> Root {
        Root { id, shared: None }
    }
}

/// An invalid configuration. Envoy refuses a filter whose `on_configure` fails and keeps
/// the configuration it runs (a listener update is rejected), which is what an Envoy
/// operator expects. ngx_wasm_module instead makes every worker exit while the master stays
/// up, so every request hangs (seen on the engine Kong 3.9 ships); Kong also validates the
/// configuration against `consul_enricher.meta.json` when it is set. So unless the
/// configuration says `"host": "envoy"`, the filter stays loaded and passes every request
/// through untouched, and says why at the error level.
fn pass_through_unless_envoy(bytes: &[u8], why: &str) -> bool {
    if Config::declared_host(bytes) == Some(crate::config::HostKind::Envoy) {
        log::error!("consul-enricher: {why}");
        return false;
    }
    log::error!("consul-enricher: passing every request through: {why}");
    true
}

/// The property path of the configured nginx variable, on Kong only.
fn nginx_variable_property(config: &Config) -> Option<String> {
    (config.host == HostKind::Kong && !config.nginx_variable.is_empty())
        .then(|| format!("ngx\0{}", config.nginx_variable))
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        if let Some(shared) = &self.shared {
            shared.on_call_response(self.id, token, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = host::buffer(BufferType::PluginConfiguration, size);
        let mut config = match Config::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                self.shared = None;
                return pass_through_unless_envoy(&bytes, &e.to_string());
            }
        };
        if config.host == HostKind::Kong && config.consul.watch {
            // A blocking query cannot be carried by a request (it would hold it for
            // consul.wait_s), and a call from the tick leaks on Kong (see
            // `Shared::calls_need_a_request`).
            log::warn!(
                "consul-enricher: consul.watch is off on Kong (a call outside a request \
                 leaks there); refreshing every cache.ttl_s"
            );
            config.consul.watch = false;
        }
        let seed = host::random_u64() ^ host::now_nanos();
        let shared = Shared {
            nginx_variable_property: nginx_variable_property(&config),
            config,
            metrics: Metrics::define(),
            nginx_variable_refused: Cell::new(false),
            kong_lua: Cell::new(None),
            companion_missing_said: Cell::new(false),
            state: RefCell::new(WorkerState {
                requests: HashMap::new(),
                pending: HashMap::new(),
                calls: HashMap::new(),
                refresh_wanted: HashMap::new(),
                negative_written: VecDeque::new(),
                memo: HashMap::new(),
                targets: HashMap::new(),
                spans: VecDeque::new(),
                span_ids: SpanIds::new(seed),
                last_flush_ms: host::now_ms(),
                exports_in_flight: 0,
                invalid_inputs: 0,
            }),
        };
        if host::set_tick_period_ms(TICK_MS as u32).is_err() {
            log::warn!(
                "consul-enricher: no tick: background refresh, span export and metrics are off"
            );
        }
        log::info!(
            "consul-enricher: configured (host {}, Consul at {})",
            match shared.config.host {
                crate::config::HostKind::Kong => "kong",
                crate::config::HostKind::Envoy => "envoy",
            },
            shared.config.consul.upstream
        );
        self.shared = Some(Rc::new(shared));
        true
    }

    fn on_tick(&mut self) {
        if let Some(shared) = &self.shared {
            shared.poll_pending(self.id);
            shared.remove_expired_unknowns();
            if !shared.calls_need_a_request() {
                shared.refresh_wanted();
                shared.flush_spans(None);
            }
            shared.metrics.flush();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(context_id, self.shared.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
