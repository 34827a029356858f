//! The Proxy-Wasm layer: moves data between the host and the host-independent modules.
//!
//! One root context per worker (VM) parses the configuration and owns a [`Shared`] state
//! that every HTTP context of that worker holds through an `Rc`: the configuration, the
//! metrics, the requests waiting for Consul, and the span queue.

mod host;
mod http;
mod lookup;
mod root;
mod spans;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use hashbrown::HashMap;
use std::rc::Rc;

use proxy_wasm::types::LogLevel;

use crate::cache::{Entry, Lookup};
use crate::config::Config;
use crate::consul::Instance;
use crate::enrich::{Attributes, Enrichment, InstanceView, RequestAttributes};
use crate::service_name::ServiceTarget;
use crate::span::{SpanIds, SpanRecord};
use crate::trace_context::{Baggage, TraceParent};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(root::Root::new(context_id)));
}}

/// The filter's counters (`consul_enricher_<name>_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Requests,
    Enriched,
    CacheHits,
    CacheMisses,
    CacheStale,
    ConsulCalls,
    ConsulErrors,
    ConsulTimeouts,
    CoalescedWaiters,
    InvalidTraceparent,
    InvalidBaggage,
    Stripped,
    CompanionMissing,
    ServicesCapped,
    SpansExported,
    SpansDropped,
}

const COUNTER_NAMES: [(Counter, &str); 16] = [
    (Counter::Requests, "consul_enricher_requests_total"),
    (Counter::Enriched, "consul_enricher_enriched_total"),
    (Counter::CacheHits, "consul_enricher_cache_hits_total"),
    (Counter::CacheMisses, "consul_enricher_cache_misses_total"),
    (Counter::CacheStale, "consul_enricher_cache_stale_total"),
    (Counter::ConsulCalls, "consul_enricher_consul_calls_total"),
    (Counter::ConsulErrors, "consul_enricher_consul_errors_total"),
    (
        Counter::ConsulTimeouts,
        "consul_enricher_consul_timeouts_total",
    ),
    (
        Counter::CoalescedWaiters,
        "consul_enricher_coalesced_waiters_total",
    ),
    (
        Counter::InvalidTraceparent,
        "consul_enricher_invalid_traceparent_total",
    ),
    (
        Counter::InvalidBaggage,
        "consul_enricher_invalid_baggage_total",
    ),
    (Counter::Stripped, "consul_enricher_stripped_total"),
    (
        Counter::CompanionMissing,
        "consul_enricher_companion_missing_total",
    ),
    (
        Counter::ServicesCapped,
        "consul_enricher_services_capped_total",
    ),
    (
        Counter::SpansExported,
        "consul_enricher_spans_exported_total",
    ),
    (Counter::SpansDropped, "consul_enricher_spans_dropped_total"),
];

/// Counters defined once per worker in `on_configure` (`None` where the host refused the
/// definition: the filter still works, it just cannot count). Counts accumulate in the
/// worker and reach the host on the tick, so counting costs a request no host call.
pub struct Metrics {
    ids: [Option<u32>; COUNTER_NAMES.len()],
    pending: [Cell<u64>; COUNTER_NAMES.len()],
}

impl Metrics {
    fn define() -> Metrics {
        Metrics {
            ids: COUNTER_NAMES.map(|(_, name)| host::define_counter(name)),
            pending: Default::default(),
        }
    }

    pub fn count(&self, counter: Counter, by: u64) {
        if let Some(cell) = self.pending.get(counter as usize) {
            cell.set(cell.get().saturating_add(by));
        }
    }

    /// Hands the accumulated counts to the host (from the tick).
    pub fn flush(&self) {
        for (id, cell) in self.ids.iter().zip(&self.pending) {
            let by = cell.take();
            if by > 0 {
                host::increment(*id, by);
            }
        }
    }
}

/// A Consul service a request goes to, and its cache id (`ServiceTarget::cache_id`).
pub struct Target {
    pub service: ServiceTarget,
    pub id: String,
}

impl Target {
    pub fn new(service: ServiceTarget, config: &Config) -> Target {
        let id = service.cache_id(&config.consul.datacenter);
        Target { service, id }
    }
}

/// What the filter knows about one request between its callbacks.
pub struct RequestState {
    pub target: Option<Rc<Target>>,
    pub trace: Option<TraceParent>,
    /// Our span id when this request is traced by the filter's own span.
    pub span_id: Option<[u8; 8]>,
    pub start_nanos: u64,
    /// The caller's baggage, parsed (empty when absent), that ours is appended to; None when
    /// it was malformed: it then passes through untouched.
    pub baggage: Option<Baggage>,
    /// Attributes from the caller's baggage members named in `baggage.read_keys`.
    pub baggage_attributes: Attributes,
    pub lookup_started_ms: u64,
    /// Kong: what the client sent under the filter's names reaches the upstream (the
    /// companion did not run); `x-consul-lookup` then says `unstripped`.
    pub unstripped: bool,
    pub entry: Option<Rc<Entry>>,
    /// This request's own attributes (baggage values read, lookup duration, then the
    /// peer address); with the service's and the instance's they are what the span and
    /// Kong's nginx variable get ([`RequestAttributes`]).
    pub attributes: Attributes,
    /// The service-level enrichment applied (its headers are repeated on the response with
    /// `headers.response`).
    pub service: Option<Rc<ServiceView>>,
    /// The serving instance's values, once the response said which it is.
    pub instance: Option<Rc<InstanceView>>,
}

impl RequestState {
    pub fn all_attributes(&self) -> RequestAttributes<'_> {
        static NONE: Attributes = Vec::new();
        RequestAttributes {
            service: self
                .service
                .as_ref()
                .map_or(&NONE, |s| &s.enrichment.attributes),
            own: &self.attributes,
            instance: self.instance.as_ref().map_or(&NONE, |i| &i.attributes),
        }
    }
}

/// A service-level enrichment as the requests served from one cache entry share it, with
/// the instance views computed from it so far: one per instance a response matched, and
/// one for no match (at most `consul.max_instances` + 1).
pub struct ServiceView {
    pub enrichment: Enrichment,
    instances: RefCell<Vec<(Option<usize>, Rc<InstanceView>)>>,
}

impl ServiceView {
    pub fn new(enrichment: Enrichment) -> ServiceView {
        ServiceView {
            enrichment,
            instances: RefCell::new(Vec::new()),
        }
    }

    /// The view of `instances[index]` (the entry this enrichment was computed from), or of
    /// no instance.
    pub fn instance_view(
        &self,
        config: &Config,
        instances: &[Instance],
        index: Option<usize>,
    ) -> Rc<InstanceView> {
        if let Some((_, view)) = self.instances.borrow().iter().find(|(i, _)| *i == index) {
            return Rc::clone(view);
        }
        let instance = index.and_then(|i| instances.get(i));
        let view = Rc::new(InstanceView::new(
            config,
            &self.enrichment.attributes,
            instance,
        ));
        self.instances.borrow_mut().push((index, Rc::clone(&view)));
        view
    }
}

/// A Consul lookup this worker is waiting for, with the requests paused on it (Envoy; a
/// background refresh has none).
pub struct Pending {
    pub waiters: Vec<u32>,
    /// Give up on the lookup (fail open) at this time.
    pub deadline_ms: u64,
    /// True when this worker made the call; false when another worker holds the lease and
    /// this one polls shared data for the answer.
    pub own_call: bool,
}

/// Why a dispatched call was made.
pub enum Call {
    Lookup {
        id: String,
        sent_ms: u64,
        /// The request waiting on this call alone (Kong), if any.
        waiter: Option<u32>,
        /// Whether this worker took the service's lease for this call.
        leased: bool,
        /// A blocking query (`consul.watch`) from this index.
        watch_from: Option<u64>,
    },
    SpanExport {
        spans: u64,
        /// Kong: the request that carries the call (see `Shared::calls_need_a_request`).
        carrier: Option<u32>,
    },
}

/// The decoded entry of a service (by cache id) with the shared-data CAS it was read at, so that an
/// unchanged value is not decoded again, and its service-level enrichment, so that it is
/// not computed again for every request (with the lookup label it was computed for).
pub struct Memo {
    pub cas: Option<u32>,
    /// When shared data last showed this entry.
    pub checked_ms: u64,
    pub entry: Rc<Entry>,
    pub service: Option<(&'static str, Rc<ServiceView>)>,
}

/// A service this worker wants refreshed or watched.
pub struct Wanted {
    pub target: ServiceTarget,
    /// When this worker last served a request for it.
    pub used_ms: u64,
    /// Not before this time: another worker's watch holds the lease until then, or Consul
    /// failed and the entry is in backoff. Keeps a tick from reading shared data for every
    /// watched service (thousands, 20 ticks a second) while nothing can be done for them.
    pub next_try_ms: u64,
}

pub struct WorkerState {
    pub requests: HashMap<u32, RequestState>,
    /// By cache id.
    pub pending: HashMap<String, Pending>,
    pub calls: HashMap<u32, Call>,
    /// Services to refresh or watch from the next tick, by cache id (kept without
    /// duplicates).
    pub refresh_wanted: HashMap<String, Wanted>,
    /// Entries of services unknown to Consul this worker stored, with their expiry: the
    /// tick removes them from shared data once expired, so invented names cannot fill it.
    pub negative_written: VecDeque<(String, u64)>,
    pub memo: HashMap<String, Memo>,
    /// What each host-reported upstream resolved to (`http::resolve_target`), by the
    /// property's text.
    pub targets: HashMap<String, Option<Rc<Target>>>,
    pub spans: VecDeque<SpanRecord>,
    pub span_ids: SpanIds,
    pub last_flush_ms: u64,
    pub exports_in_flight: u32,
    /// Malformed inputs seen, to log the 1st, 2nd, 4th, 8th... only.
    pub invalid_inputs: u64,
}

pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    pub state: RefCell<WorkerState>,
    /// The property `ngx.<nginx_variable>` (path segments joined by NUL), `None` when no
    /// variable is configured.
    pub nginx_variable_property: Option<String>,
    /// True once the host refused the nginx variable.
    pub nginx_variable_refused: Cell<bool>,
    /// Whether Kong's Lua answers this worker's `kong.*` properties, once a request found
    /// out (it does for the worker's whole life or never).
    pub kong_lua: Cell<Option<bool>>,
    /// True once this worker said that Kong's companion plugin did not run on a route.
    pub companion_missing_said: Cell<bool>,
}

/// How often a worker's tick runs: it polls for answers other workers fetched, enforces
/// deadlines, starts background refreshes and flushes spans.
pub const TICK_MS: u64 = 50;

impl Lookup {
    fn counter(self) -> Counter {
        match self {
            Lookup::Hit | Lookup::Negative => Counter::CacheHits,
            Lookup::Stale { .. } => Counter::CacheStale,
            Lookup::Miss | Lookup::Backoff => Counter::CacheMisses,
        }
    }
}
