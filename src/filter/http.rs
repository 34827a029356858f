//! The HTTP context: reads the request, decides, and writes what `enrich` computed.

use std::borrow::Cow;
use std::rc::Rc;

use hashbrown::HashMap;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host;
use super::lookup::MissOutcome;
use super::{Call, Counter, RequestState, Shared, Target};
use crate::cache::{decide, Lookup};
use crate::config::{Config, HostKind};
use crate::enrich::{self, concat};
use crate::header_value::starts_with_ignore_case;
use crate::service_name::{resolve, NameSources};
use crate::trace_context::baggage::strip_members;
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

/// Envoy: the serving instance's attributes and the peer's as filter state, which
/// envoy.yaml's custom tags read when the span is finalised, after the response (see
/// [`enrich::filter_state_path`]). The instance's are prepared once per instance view.
fn set_filter_state(peer: &enrich::Attributes, view: &enrich::InstanceView) {
    let peer = peer
        .iter()
        .map(|(name, value)| (enrich::filter_state_path(name), value.to_text()));
    for (path, value) in peer {
        set_state(&path, &value);
    }
    for (path, value) in &view.filter_state {
        set_state(path, value);
    }
}

fn set_state(path: &str, value: &str) {
    if let Err(status) = host::set_property(path, value.as_bytes()) {
        log::debug!("consul-enricher: cannot set filter state {path}: {status:?}");
    }
}

/// The upstream peer of this request, as each host reports it (see [`enrich::Peer`]).
///
/// On Kong from nginx's `$upstream_addr`, not ngx_wasm_module's `upstream.address` and
/// `upstream.port`: those search the peer's name with `strrchr`, which needs a terminating
/// NUL the name does not have (`get_upstream_address`, `get_upstream_port` in
/// `src/common/proxy_wasm/ngx_proxy_wasm_properties.c`, 9136e463 as on main). Under Kong's
/// balancer the name sits in a reused buffer, and real Kong 3.9.1 then logged `[emerg]
/// malloc(18446744073709551613) failed` for 41-53% of the requests under load, whose
/// instance was lost. The variable is built by nginx with its length.
fn upstream_peer(kind: HostKind) -> Option<enrich::Peer> {
    match kind {
        HostKind::Kong => {
            let upstream_addr = host::property("ngx\0upstream_addr")?;
            enrich::Peer::parse(enrich::last_upstream_addr(&upstream_addr))
        }
        HostKind::Envoy => enrich::Peer::parse(&host::property("upstream\0address")?),
    }
}

/// Whether anything takes the serving instance's values for this request: response
/// headers, Envoy's filter state, Kong's span companion ([`Shared::nginx_variable_wanted`]) or
/// the filter's own span. Otherwise the response is left alone: no property read,
/// nothing computed.
fn instance_wanted(shared: &Shared, req: &RequestState) -> bool {
    shared.config.headers.response
        || req.span_id.is_some()
        || shared.config.host == HostKind::Envoy
        || shared.nginx_variable_wanted()
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        if let Some(shared) = &self.shared {
            shared.on_call_response(self.id, token, body_size);
        }
    }
}

/// What the filter reads of the incoming request headers, borrowed from the one host
/// call that returned them all.
struct Incoming<'a> {
    /// The first `traceparent` header and how many there are.
    traceparent: Option<&'a str>,
    traceparents: usize,
    /// Every `baggage` line joined by `,`, as the W3C spec reads several, and how many
    /// lines there are.
    baggage: Cow<'a, str>,
    baggage_lines: usize,
    /// The authority the client asked for: `:authority` on Envoy; on ngx_wasm_module
    /// `:authority` is built from the server block, the client's is the `host` header.
    client_authority: Option<&'a str>,
    /// Headers under the filter's prefix: only the filter may write those.
    forged: Vec<&'a str>,
}

impl<'a> Incoming<'a> {
    fn read(config: &Config, headers: &'a host::HeaderPairs) -> Incoming<'a> {
        let prefix = &config.headers.prefix;
        let authority_header = match config.host {
            HostKind::Kong => "host",
            HostKind::Envoy => ":authority",
        };
        let mut incoming = Incoming {
            traceparent: None,
            traceparents: 0,
            baggage: Cow::Borrowed(""),
            baggage_lines: 0,
            client_authority: None,
            forged: Vec::new(),
        };
        for (name, value) in headers.iter() {
            if name.eq_ignore_ascii_case(authority_header) {
                incoming.client_authority = Some(value);
            } else if name.eq_ignore_ascii_case("traceparent") {
                incoming.traceparent = incoming.traceparent.or(Some(value));
                incoming.traceparents += 1;
            } else if name.eq_ignore_ascii_case("baggage") {
                if incoming.baggage_lines == 0 {
                    incoming.baggage = Cow::Borrowed(value);
                } else {
                    let joined = incoming.baggage.to_mut();
                    joined.push(',');
                    joined.push_str(value);
                }
                incoming.baggage_lines += 1;
            } else if starts_with_ignore_case(name, prefix) {
                incoming.forged.push(name);
            }
        }
        incoming
    }
}

/// Removes a request header. ngx_wasm_module removes a header by zeroing its hash
/// (`ngx_http_wasm_set_header_helper`, src/http/ngx_http_wasm_headers.c), and nginx's proxy
/// module forwards every header regardless (`ngx_http_proxy_create_request`), so on Kong a
/// removed header would still reach the upstream: there the filter empties it instead, and
/// Kong's companion plugin clears it for real before the filter runs (docs/trust.md).
fn remove_request_header(kong: bool, name: &str) {
    if kong {
        host::set_header(MapType::HttpRequestHeaders, name, "");
    } else {
        host::remove_header(MapType::HttpRequestHeaders, name);
    }
}

/// The namespace of the baggage members the filter writes.
const BAGGAGE_NAMESPACE: &str = "consul.";

/// Removes what only the filter may write (headers under its prefix, baggage members in
/// its namespace; unless `strip_incoming` is off, for a gateway behind a trusted one) and
/// returns the caller's baggage as one list: every `baggage` line of the request, joined,
/// as the W3C spec reads them. The baggage is `None` when it is malformed; it then passes
/// on untouched but for the removed members. Also whether Kong's companion did not run
/// (see [`note_missing_companion`]): the upstream then gets what the client sent.
fn strip_incoming(shared: &Shared, incoming: &Incoming) -> (Option<Baggage>, bool) {
    let strip = shared.config.strip_incoming;
    let kong = shared.config.host == HostKind::Kong;
    if strip {
        for name in &incoming.forged {
            remove_request_header(kong, name);
        }
    }
    let joined = &*incoming.baggage;
    let (kept, removed) = if strip {
        strip_members(joined, BAGGAGE_NAMESPACE)
    } else {
        (Cow::Borrowed(joined), 0)
    };
    if removed > 0 || incoming.baggage_lines > 1 {
        if kept.is_empty() {
            remove_request_header(kong, "baggage");
        } else {
            // A replace keeps one line (ngx_wasm_module updates the first and drops the
            // others from what the filter sees; see `remove_request_header`).
            host::set_header(MapType::HttpRequestHeaders, "baggage", &kept);
        }
    }
    let stripped = if strip { incoming.forged.len() } else { 0 } + removed;
    if stripped > 0 {
        shared.metrics.count(Counter::Stripped, stripped as u64);
    }
    let unstripped = kong && strip && (!incoming.forged.is_empty() || incoming.baggage_lines > 1);
    if unstripped {
        note_missing_companion(shared);
    }
    let baggage = Baggage::parse(&kept)
        .map_err(|e| {
            shared.metrics.count(Counter::InvalidBaggage, 1);
            log_invalid(shared, "baggage", e.as_str());
        })
        .ok();
    (baggage, unstripped)
}

/// Kong's companion plugin removes headers under the prefix and joins `baggage` lines in
/// Lua, in the access phase, before the filter chain runs (`kong/init.lua`: plugins'
/// access, then `runloop.wasm_attach`): when either reaches the filter, the companion did
/// not run on this route. The upstream then gets each forged header emptied (`""`), the
/// later copies of a repeated one and the later `baggage` lines as the client sent them
/// (see `remove_request_header`), and `x-consul-lookup: unstripped` instead of the lookup's
/// outcome, so that it knows. Counted per request, said once per worker.
fn note_missing_companion(shared: &Shared) {
    shared.metrics.count(Counter::CompanionMissing, 1);
    if shared.companion_missing_said.replace(true) {
        return;
    }
    let route = host::property("kong\0route_id").unwrap_or_else(|| "unknown".into());
    let service = host::property("kong\0service_id").unwrap_or_else(|| "unknown".into());
    log::warn!(
        "consul-enricher: x-consul-* headers or several baggage lines reached the filter on \
         route {route} (service {service}): the companion plugin consul-enricher-span did not \
         run there, so the upstream gets what the client sent (x-consul-lookup: unstripped); \
         enable it on every route with the filter"
    );
}

/// The request's trace context; absent, several or malformed `traceparent` headers leave
/// it untouched (several are invalid by W3C Trace Context).
fn read_trace(shared: &Shared, incoming: &Incoming) -> Option<TraceParent> {
    let value = match (incoming.traceparent, incoming.traceparents) {
        (None, _) => return None,
        (Some(one), 1) => one,
        _ => {
            shared.metrics.count(Counter::InvalidTraceparent, 1);
            log_invalid(shared, "traceparent", "the request has several");
            return None;
        }
    };
    TraceParent::parse(value)
        .map_err(|e| {
            shared.metrics.count(Counter::InvalidTraceparent, 1);
            log_invalid(shared, "traceparent", e.as_str());
        })
        .ok()
}

/// The id of the filter's own span for this request, when it exports one; the upstream
/// then sees that span as its parent (`spans.reparent`).
fn start_span(shared: &Shared, trace: Option<&TraceParent>) -> Option<[u8; 8]> {
    let config = &shared.config;
    let t = trace.filter(|t| config.spans.enabled && t.sampled())?;
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

/// What the gateway's own configuration names as this request's upstream, as the host
/// reports it: on Kong the route's service, which Kong's Lua answers as
/// `kong.router.service` with the service entity as JSON (`kong/runloop/wasm.lua`, Kong
/// 3.6+), or on an nginx without Kong's Lua (no `kong.version` either; `kong.*` answers
/// NotFound) the `ngx.upstream_host` variable the operator sets; on Envoy the route's
/// cluster (`xds.cluster_name`). With Kong, `ngx.upstream_host` is never read: with
/// `preserve_host` Kong sets it to the client's `Host`. Which of the two a Kong worker has
/// is learnt on its first request, so that every later one makes a single property call.
fn upstream_source(shared: &Shared) -> Option<UpstreamSource> {
    let config = &shared.config;
    match config.host {
        HostKind::Kong if config.service.from_host => {}
        HostKind::Envoy if config.service.from_cluster => {
            return host::property("xds\0cluster_name").map(UpstreamSource::Cluster);
        }
        _ => return None,
    }
    if shared.kong_lua.get() == Some(false) {
        return host::property("ngx\0upstream_host").map(UpstreamSource::Host);
    }
    match host::property("kong\0router\0service") {
        Some(json) => {
            shared.kong_lua.set(Some(true));
            Some(UpstreamSource::KongService(json))
        }
        None if shared.kong_lua.get().is_none() => {
            let kong_lua = host::property("kong\0version").is_some();
            shared.kong_lua.set(Some(kong_lua));
            if kong_lua {
                None
            } else {
                log::info!(
                    "consul-enricher: no Kong Lua in this nginx (no kong.version): the service \
                     comes from ngx.upstream_host"
                );
                host::property("ngx\0upstream_host").map(UpstreamSource::Host)
            }
        }
        None => None,
    }
}

/// A host property that names the upstream (see [`upstream_source`]).
enum UpstreamSource {
    KongService(String),
    Host(String),
    Cluster(String),
}

impl UpstreamSource {
    fn text(&self) -> &str {
        match self {
            UpstreamSource::KongService(t)
            | UpstreamSource::Host(t)
            | UpstreamSource::Cluster(t) => t,
        }
    }

    /// The Consul service this source names, by the configuration's rules.
    fn resolve(&self, config: &Config) -> Option<Target> {
        #[derive(serde::Deserialize)]
        struct KongService {
            host: Option<String>,
        }
        let kong_host;
        let sources = match self {
            UpstreamSource::KongService(json) => {
                kong_host = serde_json::from_slice::<KongService>(json.as_bytes())
                    .ok()?
                    .host;
                NameSources {
                    upstream_host: kong_host.as_deref(),
                    ..NameSources::default()
                }
            }
            UpstreamSource::Host(host) => NameSources {
                upstream_host: Some(host),
                ..NameSources::default()
            },
            UpstreamSource::Cluster(cluster) => NameSources {
                cluster: Some(cluster),
                ..NameSources::default()
            },
        };
        target_of(config, sources)
    }
}

/// The target the configuration's rules find in `sources`.
fn target_of(config: &Config, sources: NameSources<'_>) -> Option<Target> {
    resolve(&config.service, sources).map(|t| Target::new(t, config))
}

/// Most host-reported upstreams whose resolution a worker keeps; beyond that it starts
/// over (a gateway has as many as it has routes to Consul services).
const MAX_TARGETS: usize = 1024;

/// The Consul service (and datacenter) of this request, from the sources the
/// configuration names; the client's authority only with `service.from_authority`. What
/// the host reported resolves the same way every time, so its answer is kept per worker
/// and a request reads one property and one map entry; the client's authority is never
/// kept (the client chooses it).
fn resolve_target(shared: &Shared, incoming: &Incoming) -> Option<Rc<Target>> {
    let config = &shared.config;
    let source = if config.service.name.is_empty() {
        upstream_source(shared)
    } else {
        None
    };
    let key = source.as_ref().map_or("", UpstreamSource::text);
    let known = shared.state.borrow().targets.get(key).cloned();
    let target = match known {
        Some(target) => target,
        None => {
            let target = match &source {
                Some(source) => source.resolve(config),
                None => target_of(config, NameSources::default()),
            }
            .map(Rc::new);
            let mut state = shared.state.borrow_mut();
            if state.targets.len() >= MAX_TARGETS {
                state.targets.clear();
            }
            state.targets.insert(key.to_string(), target.clone());
            target
        }
    };
    target.or_else(|| {
        let authority = NameSources {
            authority: incoming.client_authority,
            ..NameSources::default()
        };
        target_of(config, authority).map(Rc::new)
    })
}

impl Http {
    /// The request's enrichment: strip, read the trace context, find the service, then
    /// enrich from the cache or wait for Consul (`Action::Pause`).
    fn enrich_request(&self, shared: &Rc<Shared>) -> Action {
        let config = &shared.config;
        shared.metrics.count(Counter::Requests, 1);
        let start_nanos = host::now_nanos();

        let headers = host::request_headers();
        let incoming = Incoming::read(config, &headers);
        let (baggage, unstripped) = strip_incoming(shared, &incoming);
        let trace = read_trace(shared, &incoming);
        let span_id = start_span(shared, trace.as_ref());
        let baggage_attributes = baggage
            .as_ref()
            .filter(|_| shared.own_attributes_wanted(span_id.is_some()))
            .map(|b| enrich::baggage_attributes(b, &config.baggage.read_keys))
            .unwrap_or_default();
        let target = resolve_target(shared, &incoming);
        shared.state.borrow_mut().requests.insert(
            self.id,
            RequestState {
                target: target.clone(),
                trace,
                span_id,
                start_nanos,
                baggage,
                baggage_attributes,
                lookup_started_ms: start_nanos / 1_000_000,
                unstripped,
                entry: None,
                attributes: Vec::new(),
                service: None,
                instance: None,
            },
        );
        let Some(target) = target else {
            log::debug!("consul-enricher: no Consul service for this request");
            if config.headers.request {
                let lookup = concat(&config.headers.prefix, "lookup");
                let value = if unstripped {
                    enrich::UNSTRIPPED
                } else {
                    "none"
                };
                host::set_header(MapType::HttpRequestHeaders, &lookup, value);
            }
            return Action::Continue;
        };

        let (service, id) = (&target.service, target.id.as_str());
        let now = start_nanos / 1_000_000;
        let entry = shared.entry_for_request(id, now);
        let lookup = decide(entry.as_deref(), now);
        shared.note_use(service, id, lookup, now);
        if lookup == Lookup::Miss {
            let known = entry.is_some();
            if let MissOutcome::Paused = shared.wait_for_lookup(self.id, service, id, known) {
                return Action::Pause;
            }
            shared.apply(self.id, shared.read_entry(id), Lookup::Backoff, now);
            return Action::Continue;
        }
        if lookup == (Lookup::Stale { refresh: true })
            && shared.calls_need_a_request()
            && shared.refresh_with_request(self.id, service, id, now)
        {
            return Action::Pause;
        }
        shared.apply(self.id, entry, lookup, now);
        Action::Continue
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(shared) = self.shared.clone() else {
            return Action::Continue;
        };
        let action = self.enrich_request(&shared);
        // Kong: this request carries the span export that is due, and waits for it.
        if shared.calls_need_a_request() && shared.flush_spans(Some(self.id)) {
            return Action::Pause;
        }
        action
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(shared) = &self.shared else {
            return Action::Continue;
        };
        let config = &shared.config;
        let wanted = shared
            .state
            .borrow()
            .requests
            .get(&self.id)
            .is_some_and(|req| req.target.is_some() && instance_wanted(shared, req));
        if !wanted {
            return Action::Continue;
        }
        let peer = upstream_peer(config.host);
        let mut state = shared.state.borrow_mut();
        let Some(req) = state.requests.get_mut(&self.id) else {
            return Action::Continue;
        };
        let instances = req
            .entry
            .as_ref()
            .map_or(&[][..], |e| e.instances.as_slice());
        let index = peer
            .as_ref()
            .and_then(|p| enrich::match_instance(instances, p));
        let view = match &req.service {
            Some(service) => service.instance_view(config, instances, index),
            None => Rc::new(enrich::InstanceView::new(config, &Vec::new(), None)),
        };
        if config.headers.response {
            let service_headers = req
                .service
                .as_ref()
                .map_or(&[][..], |s| &s.enrichment.headers[..]);
            for (name, value) in service_headers.iter().chain(view.headers.iter()) {
                host::set_header(MapType::HttpResponseHeaders, name, value);
            }
        }
        let peer_attributes = peer.as_ref().map(enrich::for_peer).unwrap_or_default();
        if config.host == HostKind::Envoy {
            set_filter_state(&peer_attributes, &view);
        }
        if shared.own_attributes_wanted(req.span_id.is_some()) {
            req.attributes.extend(peer_attributes);
        }
        if shared.nginx_variable_wanted() {
            shared.write_nginx_variable(&view, &req.attributes);
        }
        req.instance = Some(view);
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
            let carried = match shared.state.try_borrow_mut() {
                Ok(mut state) => {
                    state.requests.remove(&self.id);
                    for pending in state.pending.values_mut() {
                        pending.waiters.retain(|&w| w != self.id);
                    }
                    take_carried_calls(&mut state.calls, self.id)
                }
                Err(_) => Vec::new(),
            };
            for call in carried {
                shared.forget_call(call);
            }
        }
    }
}

/// The calls still in flight that request `context_id` made (Kong): the host drops them
/// with the request, and no answer will come.
fn take_carried_calls(calls: &mut HashMap<u32, Call>, context_id: u32) -> Vec<Call> {
    let tokens: Vec<u32> = calls
        .iter()
        .filter(|(_, call)| match call {
            Call::Lookup { waiter, .. } => *waiter == Some(context_id),
            Call::SpanExport { carrier, .. } => *carrier == Some(context_id),
        })
        .map(|(token, _)| *token)
        .collect();
    tokens.iter().filter_map(|t| calls.remove(t)).collect()
}
