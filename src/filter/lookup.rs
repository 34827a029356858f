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
//! for the whole gateway (the lease), and resume nobody: a stale entry is refreshed, or,
//! with `consul.watch`, a service in use is watched with blocking queries.
//!
//! Everything here is keyed by the target's cache id (service and datacenter).

use std::rc::Rc;

use hashbrown::HashMap;

use proxy_wasm::types::{MapType, Status};

use super::host;
use super::{Call, Counter, Memo, Pending, ServiceView, Shared, Wanted, WorkerState};
use crate::cache::{
    decide, decode_count, encode_count, encode_lease, lease_expiry, Entry, EntryStatus, Lookup,
};
use crate::config::{Config, ConsulEndpoint, HostKind};
use crate::consul::{lookup_path, parse_catalog, parse_health, Catalog, CatalogError};
use crate::enrich::{self, Attributes, InstanceView};
use crate::service_name::ServiceTarget;

/// Most services whose decoded entry and enrichment a worker keeps (about 2 KB each with
/// three instances); beyond that the memo starts over. Wasm memory never shrinks, so this
/// bounds the worker's peak.
const MAX_MEMO: usize = 1024;

/// How long a worker serves a fresh entry from its own memo before it reads shared data
/// again: the bound on how late it sees an answer another worker stored.
pub const MEMO_RECHECK_MS: u64 = 500;

pub enum MissOutcome {
    /// The request waits for a Consul answer.
    Paused,
    /// No call could be made: serve the request now with what is known.
    FailOpen,
}

/// An entry the host holds as an empty value is a removed one (Envoy cannot delete a key).
fn decode_stored(bytes: &[u8]) -> Option<Result<Entry, ()>> {
    if bytes.is_empty() {
        return None;
    }
    Some(Entry::decode(bytes).map_err(|_| ()))
}

impl Shared {
    /// The service's cache entry for a request: the worker's memo while it is fresh and was
    /// checked against shared data within [`MEMO_RECHECK_MS`], else shared data.
    pub fn entry_for_request(&self, id: &str, now: u64) -> Option<Rc<Entry>> {
        {
            let state = self.state.borrow();
            if let Some(memo) = state.memo.get(id) {
                let recent = now.saturating_sub(memo.checked_ms) < MEMO_RECHECK_MS;
                if recent && decide(Some(&memo.entry), now) == Lookup::Hit {
                    return Some(Rc::clone(&memo.entry));
                }
            }
        }
        self.read_entry(id)
    }

    /// The service's cache entry, decoded only when the stored value changed.
    pub fn read_entry(&self, id: &str) -> Option<Rc<Entry>> {
        let key = self.config.entry_key(id);
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
        if let Some(memo) = state.memo.get_mut(id) {
            if cas.is_some() && memo.cas == cas {
                memo.checked_ms = now;
                return Some(Rc::clone(&memo.entry));
            }
        }
        let entry = match decode_stored(&bytes)? {
            Ok(e) => Rc::new(e),
            Err(()) => {
                log::warn!("consul-enricher: ignoring an undecodable cache entry for {id}");
                return None;
            }
        };
        if state.memo.len() >= MAX_MEMO {
            state.memo.clear();
        }
        state.memo.insert(
            id.to_string(),
            Memo {
                cas,
                checked_ms: now,
                entry: Rc::clone(&entry),
                service: None,
            },
        );
        Some(entry)
    }

    fn write_entry(&self, id: &str, entry: &Entry) {
        let key = self.config.entry_key(id);
        if let Err(status) = host::shared_store(&key, &entry.encode()) {
            log::warn!("consul-enricher: cannot store the entry of {id}: {status:?}");
            return;
        }
        if entry.status == EntryStatus::Unknown {
            let mut state = self.state.borrow_mut();
            if state.negative_written.len() < self.config.cache.max_services as usize {
                state
                    .negative_written
                    .push_back((id.to_string(), entry.fresh_until));
            }
        }
    }

    /// Whether a new service may get an entry: at most `cache.max_services` per gateway,
    /// counted in shared data (an approximate count: workers race on it only upwards).
    fn admit_service(&self, id: &str) -> bool {
        let key = self.config.services_key();
        let Ok((value, cas)) = host::shared_get(&key) else {
            return true;
        };
        let count = decode_count(value.as_deref());
        if count >= self.config.cache.max_services {
            self.metrics.count(Counter::ServicesCapped, 1);
            log::warn!(
                "consul-enricher: {id} not looked up: cache.max_services ({}) services are cached",
                self.config.cache.max_services
            );
            return false;
        }
        if let Err(status) = host::shared_set(&key, &encode_count(count + 1), cas) {
            log::debug!("consul-enricher: service count not updated: {status:?}");
        }
        true
    }

    /// From the tick: removes the entries of unknown services this worker stored once they
    /// expired and nobody stored a newer one, and gives their places back.
    pub fn remove_expired_unknowns(&self) {
        let now = host::now_ms();
        loop {
            let id = {
                let mut state = self.state.borrow_mut();
                match state.negative_written.front() {
                    Some((_, expires)) if *expires <= now => {
                        state.negative_written.pop_front().map(|(id, _)| id)
                    }
                    _ => None,
                }
            };
            let Some(id) = id else {
                return;
            };
            let key = self.config.entry_key(&id);
            let Ok((Some(bytes), cas)) = host::shared_get(&key) else {
                continue;
            };
            let expired_unknown = matches!(
                decode_stored(&bytes),
                Some(Ok(e)) if e.status == EntryStatus::Unknown && e.fresh_until <= now
            );
            if expired_unknown && host::shared_delete(&key, cas).is_ok() {
                self.state.borrow_mut().memo.remove(&id);
                self.forget_service();
            }
        }
    }

    fn forget_service(&self) {
        let key = self.config.services_key();
        if let Ok((value, cas)) = host::shared_get(&key) {
            let count = decode_count(value.as_deref());
            let _ = host::shared_set(&key, &encode_count(count.saturating_sub(1)), cas);
        }
    }

    /// Takes the service's lease for `hold_ms` unless another worker holds an unexpired one;
    /// if it cannot, when to try again: the held lease's expiry, or the next tick.
    fn take_lease(&self, id: &str, now: u64, hold_ms: u64) -> Result<(), u64> {
        let key = self.config.lease_key(id);
        let Ok((value, cas)) = host::shared_get(&key) else {
            return Err(now);
        };
        if let Some(expires_at) = lease_expiry(value.as_deref()).filter(|&at| at > now) {
            return Err(expires_at);
        }
        host::shared_set(&key, &encode_lease(now + hold_ms), cas).map_err(|_| now)
    }

    /// A watched service this worker cannot act on before `at`: the tick passes it over
    /// until then. A service another worker watches is looked at again after
    /// `consul.min_watch_interval_ms` (or when that lease expires, if sooner): that worker
    /// may stop watching it when its own requests for it stop.
    fn try_watch_again_at(&self, id: &str, at: u64) {
        if let Some(wanted) = self.state.borrow_mut().refresh_wanted.get_mut(id) {
            wanted.next_try_ms = at;
        }
    }

    /// After a call: the lease is free again, or after a watch it stays taken until
    /// `consul.min_watch_interval_ms` after the watch began, so that a service whose index
    /// moves all the time is still asked at most that often.
    fn end_lease(&self, id: &str, sent_ms: u64, watched: bool) {
        let interval = u64::from(self.config.consul.min_watch_interval_ms);
        let until = if watched { sent_ms + interval } else { 0 };
        if until <= host::now_ms() {
            self.release_lease(id);
        } else if let Err(status) =
            host::shared_store(&self.config.lease_key(id), &encode_lease(until))
        {
            log::debug!("consul-enricher: cannot keep the lease of {id}: {status:?}");
        }
    }

    fn release_lease(&self, id: &str) {
        let key = self.config.lease_key(id);
        if let Err(status) = host::shared_store(&key, &encode_lease(0)) {
            log::debug!("consul-enricher: cannot release the lease of {id}: {status:?}");
        }
    }

    /// How long a lookup may take: the call's timeout and a second for the host.
    fn lookup_ms(&self) -> u64 {
        u64::from(self.config.consul.timeout_ms) + 1000
    }

    /// The dispatch timeout of a blocking query: Consul answers within `wait` plus up to
    /// wait/16 of jitter (Consul docs, "Blocking Queries"), then the call's own timeout.
    fn watch_timeout_ms(&self) -> u32 {
        let wait = self.config.consul.wait_s.saturating_mul(1000);
        wait.saturating_add(wait / 16)
            .saturating_add(self.config.consul.timeout_ms)
    }

    /// Sends the lookup; `waiter` is the request (Kong) that waits on this call alone,
    /// `leased` whether this worker holds the service's lease for it, `watch_from` the index
    /// of a blocking query.
    fn dispatch_lookup(
        &self,
        target: &ServiceTarget,
        id: &str,
        waiter: Option<u32>,
        leased: bool,
        watch_from: Option<u64>,
    ) -> Result<u32, Status> {
        let c = &self.config.consul;
        let dc = target.datacenter_or(&c.datacenter);
        let path = lookup_path(&target.name, dc, c, watch_from);
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
        let timeout = match watch_from {
            Some(_) => self.watch_timeout_ms(),
            None => c.timeout_ms,
        };
        let token = host::dispatch(&c.upstream, headers, None, timeout)?;
        self.metrics.count(Counter::ConsulCalls, 1);
        self.state.borrow_mut().calls.insert(
            token,
            Call::Lookup {
                id: id.to_string(),
                sent_ms: host::now_ms(),
                waiter,
                leased,
                watch_from,
            },
        );
        Ok(token)
    }

    /// A request found nothing usable: wait for Consul the way the host allows.
    pub fn wait_for_lookup(
        &self,
        context_id: u32,
        target: &ServiceTarget,
        id: &str,
        known: bool,
    ) -> MissOutcome {
        if !known && !self.admit_service(id) {
            return MissOutcome::FailOpen;
        }
        match self.config.host {
            HostKind::Kong => self.wait_on_own_call(context_id, target, id),
            HostKind::Envoy => self.wait_on_shared_lookup(context_id, target, id),
        }
    }

    /// Kong: the request dispatches its own call and the host resumes it once answered.
    fn wait_on_own_call(&self, context_id: u32, target: &ServiceTarget, id: &str) -> MissOutcome {
        match self.dispatch_lookup(target, id, Some(context_id), false, None) {
            Ok(_) => MissOutcome::Paused,
            Err(status) => {
                self.dispatch_failed(id, status);
                MissOutcome::FailOpen
            }
        }
    }

    /// Envoy: join the lookup in flight in this worker, or start one (or, when another
    /// worker holds the lease, poll shared data for its answer from the tick).
    fn wait_on_shared_lookup(
        &self,
        context_id: u32,
        target: &ServiceTarget,
        id: &str,
    ) -> MissOutcome {
        let now = host::now_ms();
        {
            let mut state = self.state.borrow_mut();
            if let Some(p) = state.pending.get_mut(id) {
                p.waiters.push(context_id);
                self.metrics.count(Counter::CoalescedWaiters, 1);
                return MissOutcome::Paused;
            }
        }
        let own_call = self.take_lease(id, now, self.lookup_ms()).is_ok();
        if own_call {
            if let Err(status) = self.dispatch_lookup(target, id, None, true, None) {
                self.release_lease(id);
                self.dispatch_failed(id, status);
                return MissOutcome::FailOpen;
            }
        } else {
            self.metrics.count(Counter::CoalescedWaiters, 1);
        }
        self.state.borrow_mut().pending.insert(
            id.to_string(),
            Pending {
                waiters: vec![context_id],
                deadline_ms: now + self.lookup_ms(),
                own_call,
            },
        );
        MissOutcome::Paused
    }

    /// The host refused to send a call: count it and back off.
    fn dispatch_failed(&self, id: &str, status: Status) {
        log::warn!(
            "consul-enricher: cannot call Consul at {} for {id}: {status:?}",
            self.config.consul.upstream,
        );
        self.metrics.count(Counter::ConsulErrors, 1);
        self.record_failure(id);
    }

    fn record_failure(&self, id: &str) -> Rc<Entry> {
        let previous = self.read_entry(id).map(|e| (*e).clone());
        let entry = Entry::after_failure(previous, host::now_ms(), &self.config.cache);
        self.write_entry(id, &entry);
        Rc::new(entry)
    }

    /// Handles the answer to a dispatched call; `current` is the context the host called.
    pub fn on_call_response(&self, current: u32, token: u32, body_size: usize) {
        let call = self.state.borrow_mut().calls.remove(&token);
        match call {
            Some(Call::Lookup {
                id,
                sent_ms,
                waiter,
                leased,
                watch_from,
            }) => {
                let entry = self.on_lookup_response(&id, body_size, watch_from);
                if leased {
                    self.end_lease(&id, sent_ms, watch_from.is_some());
                }
                match waiter {
                    // Kong delivers the answer to the request that made the call; the host
                    // resumes it when this callback returns. A request that carried the
                    // refresh of a stale entry (the leased call) is labelled as it is
                    // served: a hit once refreshed, stale when Consul failed.
                    Some(waiter) if waiter == current => {
                        let now = host::now_ms();
                        let lookup = match leased {
                            true => decide(Some(&entry), now),
                            false => waiter_lookup(&entry),
                        };
                        self.apply(waiter, Some(Rc::clone(&entry)), lookup, now);
                    }
                    Some(waiter) => log::debug!(
                        "consul-enricher: answer for request {waiter} delivered to {current}"
                    ),
                    None => self.finish_pending(current, &id, Some(entry)),
                }
            }
            Some(Call::SpanExport { spans, .. }) => self.on_export_response(spans),
            None => log::debug!("consul-enricher: answer to an unknown call {token}"),
        }
    }

    /// A call whose request went away before its answer: its lease and its place among
    /// the exports in flight are given back, its spans counted as dropped.
    pub fn forget_call(&self, call: Call) {
        match call {
            Call::Lookup { id, leased, .. } => {
                if leased {
                    self.release_lease(&id);
                }
            }
            Call::SpanExport { spans, .. } => {
                let mut state = self.state.borrow_mut();
                state.exports_in_flight = state.exports_in_flight.saturating_sub(1);
                self.metrics.count(Counter::SpansDropped, spans);
            }
        }
    }

    /// Stores what Consul answered (or the failure) and returns the service's entry.
    fn on_lookup_response(&self, id: &str, body_size: usize, watch_from: Option<u64>) -> Rc<Entry> {
        let status = host::call_response_header(":status");
        // ngx_wasm_module puts `:dispatch_status` on every call response: `ok` when the call
        // succeeded, otherwise why it failed (`ngx_proxy_wasm_maps.c`,
        // `ngx_wasm_socket_tcp.c` errlist); a failed call has no `:status` on either host.
        let dispatch_status = host::call_response_header(":dispatch_status");
        let failed = status.is_none() || dispatch_status.as_deref().is_some_and(|s| s != "ok");
        match self.read_answer(status.as_deref(), failed, body_size) {
            Ok(catalog) => self.store_answer(id, catalog, watch_from),
            Err(err) => {
                // Kong names a timeout in `:dispatch_status`. Envoy's router answers a call
                // that outlived its timeout with a local 504 (`source/common/router/router.cc`,
                // `onResponseTimeout`); Consul itself never answers 504. The time the call
                // took cannot tell: Envoy's timer runs on the monotonic clock and may fire a
                // millisecond before the wall clock the filter reads says the timeout passed.
                let timed_out = dispatch_status.as_deref() == Some("timeout")
                    || status.as_deref() == Some("504");
                let counter = if timed_out {
                    Counter::ConsulTimeouts
                } else {
                    Counter::ConsulErrors
                };
                self.metrics.count(counter, 1);
                log::warn!(
                    "consul-enricher: Consul lookup of {id} failed: {}{}; serving without \
                     fresh data and backing off",
                    err.as_str(),
                    if timed_out { " (timeout)" } else { "" },
                );
                self.record_failure(id)
            }
        }
    }

    fn read_answer(
        &self,
        status: Option<&str>,
        failed: bool,
        body_size: usize,
    ) -> Result<Catalog, CatalogError> {
        let c = &self.config.consul;
        let body = if failed || body_size > c.max_body_bytes as usize {
            Vec::new()
        } else {
            host::call_response_body(body_size)
        };
        let index = host::call_response_header("x-consul-index");
        let parse = match c.endpoint {
            ConsulEndpoint::Catalog => parse_catalog,
            ConsulEndpoint::Health => parse_health,
        };
        parse(status, failed, index.as_deref(), &body, body_size, c)
    }

    /// Stores a successful answer. An agent's cached answer (`consul.cached`) is as old as
    /// its `Age` header says (Consul docs, "Agent Caching"), so it turns stale that much
    /// sooner.
    fn store_answer(&self, id: &str, catalog: Catalog, watch_from: Option<u64>) -> Rc<Entry> {
        if catalog.dropped > 0 {
            log::warn!(
                "consul-enricher: {id} has {} more instances than consul.max_instances; ignored",
                catalog.dropped
            );
        }
        if catalog.invalid > 0 {
            log::warn!(
                "consul-enricher: {id}: {} entries of Consul's answer are not a usable instance; skipped",
                catalog.invalid
            );
        }
        if watch_from.is_some_and(|from| catalog.index < from) {
            log::info!("consul-enricher: Consul's index for {id} went backwards; watching anew");
        }
        let age_ms = match self.config.consul.cached {
            true => host::call_response_header("age")
                .and_then(|a| a.trim().parse::<u64>().ok())
                .map_or(0, |s| s.saturating_mul(1000)),
            false => 0,
        };
        let now = host::now_ms().saturating_sub(age_ms);
        // Consul's rules for the next blocking query: an index that went backwards starts
        // over from 0, and an index of 0 is taken as 1 (docs, "Blocking Queries").
        let index = match watch_from {
            Some(from) if catalog.index < from => 0,
            _ => catalog.index.max(1),
        };
        let entry = Entry::from_answer(catalog.instances, index, now, &self.config.cache);
        self.write_entry(id, &entry);
        Rc::new(entry)
    }

    /// Resumes every request waiting on `id`, enriched from `entry` where it is usable.
    fn finish_pending(&self, current: u32, id: &str, entry: Option<Rc<Entry>>) {
        let Some(pending) = self.state.borrow_mut().pending.remove(id) else {
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
        let pending: Vec<(String, bool, u64)> = self
            .state
            .borrow()
            .pending
            .iter()
            .map(|(id, p)| (id.clone(), p.own_call, p.deadline_ms))
            .collect();
        for (id, own_call, deadline) in pending {
            let entry = self.read_entry(&id);
            let answered = !own_call && decide(entry.as_deref(), now) != Lookup::Miss;
            if answered {
                self.finish_pending(root_id, &id, entry);
            } else if now >= deadline {
                self.metrics.count(Counter::ConsulTimeouts, 1);
                log::warn!(
                    "consul-enricher: no Consul answer for {id} in time; serving without enrichment"
                );
                let entry = if own_call {
                    self.release_lease(&id);
                    Some(self.record_failure(&id))
                } else {
                    entry
                };
                self.finish_pending(root_id, &id, entry);
            }
        }
    }

    /// Whether every call must be made by a request. ngx_wasm_module sends a call made
    /// outside one (from the tick) on a fake request with a fake connection taken from the
    /// worker's `worker_connections`, and never gives either back: the cleanup that would is
    /// compiled out (`ngx_http_proxy_wasm_dispatch` in
    /// `src/http/proxy_wasm/ngx_http_proxy_wasm_dispatch.c`, 9136e463 as on main). So on
    /// Kong a worker would stop accepting connections after that many background calls.
    /// A request's own call is freed with the request.
    pub fn calls_need_a_request(&self) -> bool {
        self.config.host == HostKind::Kong
    }

    /// Kong: the request that finds `id`'s entry stale refreshes it, if no other request of
    /// the gateway is (the lease), and waits for the answer like a miss; the others are
    /// served stale meanwhile. True when the call was sent.
    pub fn refresh_with_request(
        &self,
        context_id: u32,
        target: &ServiceTarget,
        id: &str,
        now: u64,
    ) -> bool {
        if self.take_lease(id, now, self.lookup_ms()).is_err() {
            return false;
        }
        match self.dispatch_lookup(target, id, Some(context_id), true, None) {
            Ok(_) => true,
            Err(status) => {
                self.release_lease(id);
                self.dispatch_failed(id, status);
                false
            }
        }
    }

    /// A request used the service's entry: with `consul.watch` the service is watched while
    /// in use; otherwise a stale entry is refreshed. Both happen on the next tick, on Envoy:
    /// on Kong a stale entry is refreshed by a request ([`Shared::refresh_with_request`]).
    pub fn note_use(&self, target: &ServiceTarget, id: &str, lookup: Lookup, now: u64) {
        let wanted = self.config.consul.watch || lookup == (Lookup::Stale { refresh: true });
        if !wanted || self.calls_need_a_request() {
            return;
        }
        let mut state = self.state.borrow_mut();
        match state.refresh_wanted.get_mut(id) {
            Some(wanted) => wanted.used_ms = now,
            None => {
                let wanted = Wanted {
                    target: target.clone(),
                    used_ms: now,
                    next_try_ms: 0,
                };
                state.refresh_wanted.insert(id.to_string(), wanted);
            }
        }
    }

    /// From the tick: one background call per wanted service for the whole gateway (the
    /// lease): a refresh of a stale entry, or, with `consul.watch`, a blocking query from
    /// the entry's index, at most one per `consul.min_watch_interval_ms`. A watched
    /// service that no request of this worker used for a TTL is no longer watched by it.
    pub fn refresh_wanted(&self) {
        let now = host::now_ms();
        let ttl_ms = u64::from(self.config.cache.ttl_s) * 1000;
        let watch = self.config.consul.watch;
        let wanted: Vec<(String, ServiceTarget)> = {
            let mut state = self.state.borrow_mut();
            let WorkerState {
                refresh_wanted,
                pending,
                ..
            } = &mut *state;
            if watch {
                refresh_wanted.retain(|_, w| now.saturating_sub(w.used_ms) < ttl_ms);
                refresh_wanted
                    .iter()
                    .filter(|(id, w)| now >= w.next_try_ms && !pending.contains_key(*id))
                    .map(|(id, w)| (id.clone(), w.target.clone()))
                    .collect()
            } else {
                refresh_wanted
                    .drain()
                    .filter(|(id, _)| !pending.contains_key(id))
                    .map(|(id, w)| (id, w.target))
                    .collect()
            }
        };
        for (id, target) in wanted {
            let Some(entry) = self.read_entry(&id) else {
                continue;
            };
            let lookup = decide(Some(&entry), now);
            let (watch_from, hold_ms) = if watch {
                if now < entry.retry_after && entry.failures > 0 {
                    self.try_watch_again_at(&id, entry.retry_after);
                    continue;
                }
                // An index of 0 asks without blocking, which is how a watch starts over
                // after Consul's index went backwards (docs, "Blocking Queries").
                (Some(entry.index), u64::from(self.watch_timeout_ms()) + 1000)
            } else if lookup == (Lookup::Stale { refresh: true }) {
                (None, self.lookup_ms())
            } else {
                continue;
            };
            if let Err(held_until) = self.take_lease(&id, now, hold_ms) {
                if watch {
                    let recheck = now + u64::from(self.config.consul.min_watch_interval_ms);
                    self.try_watch_again_at(&id, held_until.min(recheck));
                }
                continue;
            }
            match self.dispatch_lookup(&target, &id, None, true, watch_from) {
                Ok(_) => {
                    self.state.borrow_mut().pending.insert(
                        id,
                        Pending {
                            waiters: Vec::new(),
                            deadline_ms: now + hold_ms,
                            own_call: true,
                        },
                    );
                }
                Err(status) => {
                    log::warn!("consul-enricher: cannot refresh {id}: {status:?}");
                    self.metrics.count(Counter::ConsulErrors, 1);
                    self.release_lease(&id);
                    self.record_failure(&id);
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
        let view = service_enrichment(
            &self.config,
            memo,
            &target.service.name,
            &target.id,
            &entry,
            lookup,
        );
        let e = &view.enrichment;
        if self.config.headers.request {
            for (name, value) in &e.headers {
                host::set_header(MapType::HttpRequestHeaders, name, value);
            }
            if req.unstripped {
                let lookup = enrich::concat(&self.config.headers.prefix, "lookup");
                host::set_header(MapType::HttpRequestHeaders, &lookup, enrich::UNSTRIPPED);
            }
        }
        if let Some(baggage) = req.baggage.as_mut() {
            let mut added = false;
            for (k, v) in &e.baggage {
                added |= baggage.append(k, v).is_ok();
            }
            if added {
                host::set_header(MapType::HttpRequestHeaders, "baggage", baggage.as_header());
            }
        }
        if entry.is_some() {
            self.metrics.count(Counter::Enriched, 1);
        }
        self.metrics.count(lookup.counter(), 1);
        if self.own_attributes_wanted(req.span_id.is_some()) {
            // The baggage values, the lookup duration, and on the response the peer's two.
            let mut attributes = Attributes::with_capacity(req.baggage_attributes.len() + 3);
            attributes.append(&mut req.baggage_attributes);
            attributes.push((
                enrich::LOOKUP_DURATION.to_string(),
                enrich::AttrValue::Int(
                    i64::try_from(now.saturating_sub(req.lookup_started_ms)).unwrap_or(i64::MAX),
                ),
            ));
            req.attributes = attributes;
        }
        req.service = Some(view);
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
    id: &str,
    entry: &Option<Rc<Entry>>,
    lookup: Lookup,
) -> Rc<ServiceView> {
    let label = lookup.label();
    let memo = memo
        .get_mut(id)
        .filter(|m| entry.as_ref().is_some_and(|e| Rc::ptr_eq(e, &m.entry)));
    if let Some((memo_label, e)) = memo.as_ref().and_then(|m| m.service.as_ref()) {
        if *memo_label == label {
            return Rc::clone(e);
        }
    }
    let instances = entry.as_ref().map_or(&[][..], |e| &e.instances[..]);
    let e = Rc::new(ServiceView::new(enrich::for_service(
        config, service, instances, lookup,
    )));
    if let Some(m) = memo {
        m.service = Some((label, Rc::clone(&e)));
    }
    e
}

impl Shared {
    /// Whether this worker writes the request's attributes to its nginx variable: on Kong,
    /// configured, and not refused by the host.
    pub fn nginx_variable_wanted(&self) -> bool {
        self.config.host == HostKind::Kong
            && self.nginx_variable_property.is_some()
            && !self.nginx_variable_refused.get()
    }

    /// Whether a request's own attributes (baggage values read, lookup duration, peer
    /// address) have a taker: the filter's own span for it (`traced`) or Kong's span
    /// companion. Otherwise they are not computed: on Envoy, whose span gets the instance
    /// through filter state, a hit then allocates none of them.
    pub fn own_attributes_wanted(&self, traced: bool) -> bool {
        traced || self.nginx_variable_wanted()
    }

    /// Hands the request's attributes to Kong's Lua through the nginx variable
    /// `$<nginx_variable>`, where the span companion reads them in the log phase.
    ///
    /// Never through a `kong.*` property such as `kong.ctx.shared`: Kong answers those in
    /// Lua, through a LuaJIT FFI callback that ngx_wasm_module calls from C
    /// (`set_host_properties_handlers` in `lib/resty/wasmx/proxy_wasm.lua`). LuaJIT runs a
    /// callback on the coroutine that last used the FFI (`lj_ccallback_enter` in LuaJIT's
    /// `src/lj_ccallback.c`), and the handler first stores this request in that coroutine
    /// (`set_r`); on response headers that coroutine is another request's, which then
    /// works on the wrong request: Kong 3.9.1's workers crash under concurrent load. An
    /// `ngx.*` property is set in C (`ngx_proxy_wasm_properties_set_ngx` in
    /// `src/common/proxy_wasm/ngx_proxy_wasm_properties.c`): no Lua runs.
    ///
    /// The variable must be declared (`set $consul_enricher '';`, in Kong
    /// `nginx_proxy_set`): undeclared it is NotFound, and this worker says so once and
    /// stops writing. Called only when [`Shared::nginx_variable_wanted`].
    pub fn write_nginx_variable(&self, instance: &InstanceView, own: &Attributes) {
        let Some(property) = &self.nginx_variable_property else {
            return;
        };
        let value = instance.json_object(own);
        if let Err(status) = host::set_property(property, &value) {
            let name = &self.config.nginx_variable;
            if status == Status::NotFound {
                log::warn!(
                    "consul-enricher: nginx variable ${name} is not declared \
                     (nginx_proxy_set = ${name} '' in kong.conf): Kong's span gets nothing \
                     from this worker"
                );
            } else {
                log::warn!(
                    "consul-enricher: nginx variable ${name} refused ({status:?}): Kong's \
                     span gets nothing from this worker"
                );
            }
            self.nginx_variable_refused.set(true);
        }
    }
}
