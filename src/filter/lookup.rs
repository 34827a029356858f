//! Cache reads and writes, Consul calls, coalescing and resuming paused requests.
//!
//! Within a worker, every request for a service that is being looked up waits on the same
//! call. Across workers, a lease in shared data (taken with CAS) makes one worker call
//! Consul while the others poll shared data for its answer from their tick.

use std::rc::Rc;

use hashbrown::HashMap;

use proxy_wasm::types::{MapType, Status};

use super::host;
use super::{Call, Memo, Pending, Shared, WorkerState};
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

impl Shared {
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
        let mut state = self.state.borrow_mut();
        if let Some(memo) = state.memo.get(service) {
            if cas.is_some() && memo.cas == cas {
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

    fn dispatch_catalog(&self, target: &ServiceTarget) -> Result<u32, Status> {
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
        host::increment(self.metrics.consul_calls, 1);
        self.state.borrow_mut().calls.insert(
            token,
            Call::Catalog {
                service: target.name.clone(),
                sent_ms: host::now_ms(),
            },
        );
        Ok(token)
    }

    /// A request found nothing usable: join the lookup in flight, or start one.
    pub fn wait_for_lookup(&self, context_id: u32, target: &ServiceTarget) -> MissOutcome {
        let now = host::now_ms();
        {
            let mut state = self.state.borrow_mut();
            if let Some(p) = state.pending.get_mut(&target.name) {
                p.waiters.push(context_id);
                host::increment(self.metrics.coalesced_waiters, 1);
                return MissOutcome::Paused;
            }
        }
        let own_call = self.take_lease(&target.name, now);
        if own_call {
            if let Err(status) = self.dispatch_catalog(target) {
                log::warn!(
                    "consul-enricher: cannot call Consul at {} for {}: {status:?}",
                    self.config.consul.upstream,
                    target.name
                );
                host::increment(self.metrics.consul_errors, 1);
                self.release_lease(&target.name);
                self.record_failure(&target.name);
                return MissOutcome::FailOpen;
            }
        } else {
            host::increment(self.metrics.coalesced_waiters, 1);
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

    fn record_failure(&self, service: &str) -> Rc<Entry> {
        let previous = self.read_entry(service).map(|e| (*e).clone());
        let entry = Entry::after_failure(previous, host::now_ms(), &self.config.cache);
        self.write_entry(service, &entry);
        Rc::new(entry)
    }

    /// Handles the answer to a dispatched call; `current` is the context the host called.
    pub fn on_call_response(&self, current: u32, token: u32, num_headers: usize, body_size: usize) {
        let call = self.state.borrow_mut().calls.remove(&token);
        match call {
            Some(Call::Catalog { service, sent_ms }) => {
                self.on_catalog_response(current, &service, sent_ms, num_headers, body_size)
            }
            Some(Call::SpanExport { spans }) => self.on_export_response(spans),
            None => log::debug!("consul-enricher: answer to an unknown call {token}"),
        }
    }

    fn on_catalog_response(
        &self,
        current: u32,
        service: &str,
        sent_ms: u64,
        num_headers: usize,
        body_size: usize,
    ) {
        let status = host::call_response_header(":status");
        let dispatch_status = host::call_response_header(":dispatch_status");
        let failed = num_headers == 0 || dispatch_status.is_some();
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
        let entry = match parsed {
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
                    host::increment(self.metrics.consul_timeouts, 1);
                } else {
                    host::increment(self.metrics.consul_errors, 1);
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
        };
        self.release_lease(service);
        self.finish_pending(current, service, Some(entry));
    }

    /// Resumes every request waiting on `service`, enriched from `entry` where it is usable.
    fn finish_pending(&self, current: u32, service: &str, entry: Option<Rc<Entry>>) {
        let Some(pending) = self.state.borrow_mut().pending.remove(service) else {
            return;
        };
        let lookup = match entry.as_deref().map(|e| decide(Some(e), host::now_ms())) {
            Some(Lookup::Hit) | Some(Lookup::Stale { .. }) => Lookup::Miss,
            Some(Lookup::Negative) => Lookup::Negative,
            _ => Lookup::Backoff,
        };
        for waiter in pending.waiters {
            if host::switch_to(waiter) {
                self.apply(waiter, entry.clone(), lookup);
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
                host::increment(self.metrics.consul_timeouts, 1);
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
            match self.dispatch_catalog(&target) {
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
                    host::increment(self.metrics.consul_errors, 1);
                    self.release_lease(&service);
                    self.record_failure(&service);
                }
            }
        }
    }

    /// Writes the service-level enrichment into the request of `context_id`, which must be
    /// the effective context.
    pub fn apply(&self, context_id: u32, entry: Option<Rc<Entry>>, lookup: Lookup) {
        let now = host::now_ms();
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
            host::increment(self.metrics.enriched, 1);
        }
        host::increment(lookup.metric(&self.metrics), 1);
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
        if self.config.host == HostKind::Kong && self.config.kong_ctx_shared {
            write_kong_ctx(&req.attributes);
        }
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

pub fn write_kong_ctx(attributes: &Attributes) {
    host::set_property(
        &["kong", "ctx", "shared", "consul_enricher"],
        enrich::to_json_object(attributes).as_bytes(),
    );
}
