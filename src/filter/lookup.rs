//! Cache reads and writes, Consul calls, coalescing and resuming paused requests.
//!
//! How a request waits for Consul depends on what the host lets a callback resume:
//! - Envoy resumes any context made effective with `proxy_set_effective_context`, so
//!   within a worker every request for a service being looked up waits on the same call,
//!   and across workers a lease in shared data (taken with CAS) makes one worker call
//!   Consul while the others poll shared data for its answer from their tick.
//! - ngx_wasm_module ignores `proxy_set_effective_context` (`ngx_proxy_wasm_host.c`
//!   answers Ok and does nothing), `proxy_continue_stream` acts on the request whose
//!   callback is running, and resuming from `on_tick` crashed workers. The one thing that
//!   resumes a paused request is the host itself, once the last call that request
//!   dispatched is answered (`ngx_http_proxy_wasm_dispatch.c`, the resume handler). So on
//!   Kong a request waits only on a call of its own, and the filter never resumes it.
//!
//! Background refreshes come from the tick (root context) on both hosts, one per service
//! for the whole gateway (the lease), and resume nobody.

use std::rc::Rc;

use hashbrown::HashMap;

use proxy_wasm::types::{MapType, Status};

use super::host;
use super::{Call, Counter, Memo, Pending, Shared, WorkerState};
use crate::cache::{decide, encode_lease, lease_held, Entry, Lookup};
use crate::config::{Config, HostKind};
use crate::consul::{catalog_path, parse_catalog};
use crate::enrich::{self, Attributes, Enrichment};
use crate::service_name::ServiceTarget;

/// Most services whose decoded entry and enrichment a worker keeps (about 2 KB each with
/// three instances); beyond that the memo starts over. Wasm memory never shrinks, so this
/// bounds the worker's peak.
const MAX_MEMO: usize = 1024;

pub enum MissOutcome {
    /// The request waits for a Consul answer.
    Paused,
    /// No call could be made: serve the request now with what is known.
    FailOpen,
}

/// How long a worker serves a fresh entry from its own memo before it reads shared data
/// again: the bound on how late it sees an answer another worker stored.
pub const MEMO_RECHECK_MS: u64 = 500;

impl Shared {
    /// The service's cache entry for a request: the worker's memo while it is fresh and was
    /// checked against shared data within [`MEMO_RECHECK_MS`], else shared data.
    pub fn entry_for_request(&self, service: &str, now: u64) -> Option<Rc<Entry>> {
        {
            let state = self.state.borrow();
            if let Some(memo) = state.memo.get(service) {
                let recent = now.saturating_sub(memo.checked_ms) < MEMO_RECHECK_MS;
                if recent && decide(Some(&memo.entry), now) == Lookup::Hit {
                    return Some(Rc::clone(&memo.entry));
                }
            }
        }
        self.read_entry(service)
    }

    /// The service's cache entry, decoded only when the stored value changed.
    pub fn read_entry(&self, service: &str) -> Option<Rc<Entry>> {
        let key = self.config.entry_key(service);
        let (bytes, cas) = match host::shared_get(&key) {
            Ok(found) => found,
            Err(status) => {
                log::debug!("consul-enricher: shared data read failed: {status:?}");
                return None;
            }
        };
        let bytes = bytes?;
        let now = host::now_ms();
        let mut state = self.state.borrow_mut();
        if let Some(memo) = state.memo.get_mut(service) {
            if cas.is_some() && memo.cas == cas {
                memo.checked_ms = now;
                return Some(Rc::clone(&memo.entry));
            }
        }
        let entry = match Entry::decode(&bytes) {
            Ok(e) => Rc::new(e),
            Err(_) => {
                log::warn!("consul-enricher: ignoring an undecodable cache entry for {service}");
                return None;
            }
        };
        if state.memo.len() >= MAX_MEMO {
            state.memo.clear();
        }
        state.memo.insert(
            service.to_string(),
            Memo {
                cas,
                checked_ms: now,
                entry: Rc::clone(&entry),
                service: None,
            },
        );
        Some(entry)
    }

    fn write_entry(&self, service: &str, entry: &Entry) {
        let key = self.config.entry_key(service);
        if let Err(status) = host::shared_set(&key, &entry.encode(), None) {
            log::warn!("consul-enricher: cannot store the entry of {service}: {status:?}");
        }
    }

    /// Takes the service's lease unless another worker holds an unexpired one.
    fn take_lease(&self, service: &str, now: u64) -> bool {
        let key = self.config.lease_key(service);
        let Ok((value, cas)) = host::shared_get(&key) else {
            return false;
        };
        if lease_held(value.as_deref(), now) {
            return false;
        }
        let expires = now + self.lease_ms();
        host::shared_set(&key, &encode_lease(expires), cas).is_ok()
    }

    fn release_lease(&self, service: &str) {
        let key = self.config.lease_key(service);
        if let Err(status) = host::shared_set(&key, &encode_lease(0), None) {
            log::debug!("consul-enricher: cannot release the lease of {service}: {status:?}");
        }
    }

    fn lease_ms(&self) -> u64 {
        u64::from(self.config.consul.timeout_ms) + 1000
    }

    /// Sends the catalog query; `waiter` is the request (Kong) that waits on this call
    /// alone, `leased` whether this worker holds the service's lease for it.
    fn dispatch_catalog(
        &self,
        target: &ServiceTarget,
        waiter: Option<u32>,
        leased: bool,
    ) -> Result<u32, Status> {
        let c = &self.config.consul;
        let path = catalog_path(&target.name, target.datacenter.as_deref(), c);
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", c.authority.as_str()),
            (":scheme", "http"),
            ("accept", "application/json"),
        ];
        if !c.token.is_empty() {
            headers.push(("x-consul-token", c.token.as_str()));
        }
        let token = host::dispatch(&c.upstream, headers, None, c.timeout_ms)?;
        self.metrics.count(Counter::ConsulCalls, 1);
        self.state.borrow_mut().calls.insert(
            token,
            Call::Catalog {
                service: target.name.clone(),
                sent_ms: host::now_ms(),
                waiter,
                leased,
            },
        );
        Ok(token)
    }

    /// A request found nothing usable: wait for Consul the way the host allows.
    pub fn wait_for_lookup(&self, context_id: u32, target: &ServiceTarget) -> MissOutcome {
        match self.config.host {
            HostKind::Kong => self.wait_on_own_call(context_id, target),
            HostKind::Envoy => self.wait_on_shared_lookup(context_id, target),
        }
    }

    /// Kong: the request dispatches its own call and the host resumes it once answered.
    fn wait_on_own_call(&self, context_id: u32, target: &ServiceTarget) -> MissOutcome {
        match self.dispatch_catalog(target, Some(context_id), false) {
            Ok(_) => MissOutcome::Paused,
            Err(status) => {
                self.dispatch_failed(&target.name, status);
                MissOutcome::FailOpen
            }
        }
    }

    /// Envoy: join the lookup in flight in this worker, or start one (or, when another
    /// worker holds the lease, poll shared data for its answer from the tick).
    fn wait_on_shared_lookup(&self, context_id: u32, target: &ServiceTarget) -> MissOutcome {
        let now = host::now_ms();
        {
            let mut state = self.state.borrow_mut();
            if let Some(p) = state.pending.get_mut(&target.name) {
                p.waiters.push(context_id);
                self.metrics.count(Counter::CoalescedWaiters, 1);
                return MissOutcome::Paused;
            }
        }
        let own_call = self.take_lease(&target.name, now);
        if own_call {
            if let Err(status) = self.dispatch_catalog(target, None, true) {
                self.release_lease(&target.name);
                self.dispatch_failed(&target.name, status);
                return MissOutcome::FailOpen;
            }
        } else {
            self.metrics.count(Counter::CoalescedWaiters, 1);
        }
        self.state.borrow_mut().pending.insert(
            target.name.clone(),
            Pending {
                waiters: vec![context_id],
                deadline_ms: now + self.lease_ms(),
                own_call,
            },
        );
        MissOutcome::Paused
    }

    /// The host refused to send a call: count it and back off.
    fn dispatch_failed(&self, service: &str, status: Status) {
        log::warn!(
            "consul-enricher: cannot call Consul at {} for {service}: {status:?}",
            self.config.consul.upstream,
        );
        self.metrics.count(Counter::ConsulErrors, 1);
        self.record_failure(service);
    }

    fn record_failure(&self, service: &str) -> Rc<Entry> {
        let previous = self.read_entry(service).map(|e| (*e).clone());
        let entry = Entry::after_failure(previous, host::now_ms(), &self.config.cache);
        self.write_entry(service, &entry);
        Rc::new(entry)
    }

    /// Handles the answer to a dispatched call; `current` is the context the host called.
    pub fn on_call_response(&self, current: u32, token: u32, body_size: usize) {
        let call = self.state.borrow_mut().calls.remove(&token);
        match call {
            Some(Call::Catalog {
                service,
                sent_ms,
                waiter,
                leased,
            }) => {
                let entry = self.on_catalog_response(&service, sent_ms, body_size);
                if leased {
                    self.release_lease(&service);
                }
                match waiter {
                    // Kong delivers the answer to the request that made the call; the host
                    // resumes it when this callback returns.
                    Some(waiter) if waiter == current => {
                        let now = host::now_ms();
                        self.apply(waiter, Some(Rc::clone(&entry)), waiter_lookup(&entry), now);
                    }
                    Some(waiter) => log::debug!(
                        "consul-enricher: answer for request {waiter} delivered to {current}"
                    ),
                    None => self.finish_pending(current, &service, Some(entry)),
                }
            }
            Some(Call::SpanExport { spans }) => self.on_export_response(spans),
            None => log::debug!("consul-enricher: answer to an unknown call {token}"),
        }
    }

    /// Stores what Consul answered (or the failure) and returns the service's entry.
    fn on_catalog_response(&self, service: &str, sent_ms: u64, body_size: usize) -> Rc<Entry> {
        let status = host::call_response_header(":status");
        // ngx_wasm_module puts `:dispatch_status` on every call response: `ok` when the call
        // succeeded, otherwise why it failed (`ngx_proxy_wasm_maps.c`,
        // `ngx_wasm_socket_tcp.c` errlist); a failed call has no `:status` on either host.
        let dispatch_status = host::call_response_header(":dispatch_status");
        let failed = status.is_none() || dispatch_status.as_deref().is_some_and(|s| s != "ok");
        let body = if failed || body_size > self.config.consul.max_body_bytes as usize {
            Vec::new()
        } else {
            host::call_response_body(body_size)
        };
        let index = host::call_response_header("x-consul-index");
        let parsed = parse_catalog(
            status.as_deref(),
            failed,
            index.as_deref(),
            &body,
            body_size,
            &self.config.consul,
        );
        match parsed {
            Ok(catalog) => {
                if catalog.dropped > 0 {
                    log::warn!(
                        "consul-enricher: {service} has {} more instances than consul.max_instances; ignored",
                        catalog.dropped
                    );
                }
                if catalog.invalid > 0 {
                    log::warn!(
                        "consul-enricher: {service}: {} entries of Consul's answer are not a usable instance; skipped",
                        catalog.invalid
                    );
                }
                let entry = Entry::from_answer(
                    catalog.instances,
                    catalog.index,
                    host::now_ms(),
                    &self.config.cache,
                );
                self.write_entry(service, &entry);
                Rc::new(entry)
            }
            Err(err) => {
                // Kong names a timeout in `:dispatch_status`; Envoy answers a 504 or a bare
                // failure, so a failed call that took the whole timeout counts as one.
                let timeout_ms = u64::from(self.config.consul.timeout_ms);
                let timed_out = dispatch_status.as_deref() == Some("timeout")
                    || host::now_ms().saturating_sub(sent_ms) >= timeout_ms;
                if timed_out {
                    self.metrics.count(Counter::ConsulTimeouts, 1);
                } else {
                    self.metrics.count(Counter::ConsulErrors, 1);
                }
                log::warn!(
                    "consul-enricher: Consul lookup of {service} failed: {}{}{}",
                    err.as_str(),
                    if timed_out { " (timeout)" } else { "" },
                    if failed {
                        ""
                    } else {
                        "; serving without enrichment and backing off"
                    }
                );
                self.record_failure(service)
            }
        }
    }

    /// Resumes every request waiting on `service`, enriched from `entry` where it is usable.
    fn finish_pending(&self, current: u32, service: &str, entry: Option<Rc<Entry>>) {
        let Some(pending) = self.state.borrow_mut().pending.remove(service) else {
            return;
        };
        let lookup = entry.as_ref().map_or(Lookup::Backoff, waiter_lookup);
        // Only Envoy registers waiters (see the module comment): it resumes them here.
        for waiter in pending.waiters {
            if host::switch_to(waiter) {
                self.apply(waiter, entry.clone(), lookup, host::now_ms());
                host::resume_request();
            }
        }
        host::switch_to(current);
    }

    /// From the tick: resume requests whose answer another worker stored, and fail open
    /// the ones past their deadline.
    pub fn poll_pending(&self, root_id: u32) {
        let now = host::now_ms();
        let services: Vec<(String, bool, u64)> = self
            .state
            .borrow()
            .pending
            .iter()
            .map(|(s, p)| (s.clone(), p.own_call, p.deadline_ms))
            .collect();
        for (service, own_call, deadline) in services {
            let entry = self.read_entry(&service);
            let answered = !own_call && decide(entry.as_deref(), now) != Lookup::Miss;
            if answered {
                self.finish_pending(root_id, &service, entry);
            } else if now >= deadline {
                self.metrics.count(Counter::ConsulTimeouts, 1);
                log::warn!("consul-enricher: no Consul answer for {service} in time; serving without enrichment");
                let entry = if own_call {
                    self.release_lease(&service);
                    Some(self.record_failure(&service))
                } else {
                    entry
                };
                self.finish_pending(root_id, &service, entry);
            }
        }
    }

    /// From the tick: refresh stale services in the background, one call per service for
    /// the whole gateway (the lease).
    pub fn refresh_stale(&self) {
        let wanted = std::mem::take(&mut self.state.borrow_mut().refresh_wanted);
        let now = host::now_ms();
        for service in wanted {
            if self.state.borrow().pending.contains_key(&service) {
                continue;
            }
            let Some(entry) = self.read_entry(&service) else {
                continue;
            };
            if decide(Some(&entry), now) != (Lookup::Stale { refresh: true }) {
                continue;
            }
            if !self.take_lease(&service, now) {
                continue;
            }
            let target = ServiceTarget {
                name: service.clone(),
                datacenter: entry
                    .instances
                    .first()
                    .map(|i| i.datacenter.clone())
                    .filter(|dc| !dc.is_empty() && self.config.consul.datacenter != *dc),
            };
            match self.dispatch_catalog(&target, None, true) {
                Ok(_) => {
                    self.state.borrow_mut().pending.insert(
                        service,
                        Pending {
                            waiters: Vec::new(),
                            deadline_ms: now + self.lease_ms(),
                            own_call: true,
                        },
                    );
                }
                Err(status) => {
                    log::warn!("consul-enricher: cannot refresh {service}: {status:?}");
                    self.metrics.count(Counter::ConsulErrors, 1);
                    self.release_lease(&service);
                    self.record_failure(&service);
                }
            }
        }
    }

    /// Writes the service-level enrichment into the request of `context_id`, which must be
    /// the effective context.
    pub fn apply(&self, context_id: u32, entry: Option<Rc<Entry>>, lookup: Lookup, now: u64) {
        let mut state = self.state.borrow_mut();
        let WorkerState { requests, memo, .. } = &mut *state;
        let Some(req) = requests.get_mut(&context_id) else {
            return;
        };
        let Some(target) = req.target.as_ref() else {
            return;
        };
        let usable = matches!(lookup, Lookup::Hit | Lookup::Stale { .. } | Lookup::Miss);
        let entry = entry.filter(|_| usable);
        let e = service_enrichment(&self.config, memo, &target.name, &entry, lookup);
        if self.config.headers.request {
            for (name, value) in &e.headers {
                host::set_header(MapType::HttpRequestHeaders, name, value);
            }
        }
        if let Some(baggage) = req.baggage.as_mut() {
            let mut added = false;
            for (k, v) in &e.baggage {
                added |= baggage.append(k, v).is_ok();
            }
            if added {
                host::set_header(MapType::HttpRequestHeaders, "baggage", &baggage.to_header());
            }
        }
        if !e.headers.is_empty() {
            self.metrics.count(Counter::Enriched, 1);
        }
        self.metrics.count(lookup.counter(), 1);
        let mut attributes = Attributes::with_capacity(e.attributes.len() + 8);
        attributes.extend_from_slice(&e.attributes);
        attributes.append(&mut req.baggage_attributes);
        attributes.push((
            "consul.lookup.duration_ms".to_string(),
            enrich::AttrValue::Int(
                i64::try_from(now.saturating_sub(req.lookup_started_ms)).unwrap_or(i64::MAX),
            ),
        ));
        req.attributes = attributes;
        req.service = Some(e);
        req.entry = entry;
    }
}

/// What a request that waited for Consul is labelled: a miss when the answer is usable.
fn waiter_lookup(entry: &Rc<Entry>) -> Lookup {
    match decide(Some(entry), host::now_ms()) {
        Lookup::Hit | Lookup::Stale { .. } => Lookup::Miss,
        Lookup::Negative => Lookup::Negative,
        _ => Lookup::Backoff,
    }
}

/// The service-level enrichment for `entry` at this lookup outcome, from the memo when it
/// was computed for the same decoded entry and outcome.
fn service_enrichment(
    config: &Config,
    memo: &mut HashMap<String, Memo>,
    service: &str,
    entry: &Option<Rc<Entry>>,
    lookup: Lookup,
) -> Rc<Enrichment> {
    let label = lookup.label();
    let memo = memo
        .get_mut(service)
        .filter(|m| entry.as_ref().is_some_and(|e| Rc::ptr_eq(e, &m.entry)));
    if let Some((memo_label, e)) = memo.as_ref().and_then(|m| m.service.as_ref()) {
        if *memo_label == label {
            return Rc::clone(e);
        }
    }
    let instances = entry.as_ref().map_or(&[][..], |e| &e.instances[..]);
    let e = Rc::new(enrich::for_service(config, service, instances, lookup));
    if let Some(m) = memo {
        m.service = Some((label, Rc::clone(&e)));
    }
    e
}

impl Shared {
    /// Hands the request's attributes to Kong's Lua (`kong.ctx.shared.consul_enricher`),
    /// where the span companion reads them. A host that refuses the property (an nginx
    /// without Kong's Lua, or a module built with another property namespace answers
    /// NotFound) is told once per worker, and not asked again.
    pub fn write_kong_ctx(&self, attributes: &Attributes) {
        if !self.kong_ctx_writable.get() {
            return;
        }
        let value = enrich::to_json_object(attributes);
        if let Err(status) = host::set_property(
            &["kong", "ctx", "shared", "consul_enricher"],
            value.as_bytes(),
        ) {
            self.kong_ctx_writable.set(false);
            log::warn!(
                "consul-enricher: this host refuses kong.ctx.shared ({status:?}): Kong's span \
                 companion gets nothing from this worker; set kong_ctx_shared to false to silence this"
            );
        }
    }
}
