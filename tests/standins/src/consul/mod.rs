//! Stand-in for the parts of Consul's HTTP API that service discovery uses.
//!
//! Follows these documents of developer.hashicorp.com/consul/api-docs:
//! - `catalog`, "List Nodes for Service" (`GET /v1/catalog/service/:service`): response
//!   fields, the `dc`, `tag` and `filter` parameters, unknown service → `200 []`.
//! - `health`, "List Service Instances for Service" (`GET /v1/health/service/:service`):
//!   entries of `Node`, `Service` and `Checks`, the `passing` parameter (only instances whose
//!   checks all pass), `dc`, `tag` and `filter` as for the catalog.
//! - `agent/service`, "Register Service" (`PUT /v1/agent/service/register`, with `Name`, `ID`,
//!   `Address`, `Port`, `Tags`, `Meta`, `Check` and its initial `Status`) and "Deregister
//!   Service" (`PUT /v1/agent/service/deregister/:service_id`).
//! - `features/blocking`, "Blocking Queries": `index` and `wait` (default 5m, at most 10m, Go
//!   duration syntax), `X-Consul-Index` never 0; a service's index moves only when that
//!   service changes (an instance registered or deregistered, its meta or its check's status
//!   changed), an unknown service follows the whole catalog's index. `index` 0 or absent
//!   answers at once. A query whose `index` is not below the current one waits for a change
//!   or the end of `wait`, an `index` above the current one included: that is what Consul's
//!   servers do (the page's "Reset the index if it goes backwards" is the client's rule).
//!   A restored snapshot (`ConsulStandin::set_index`) answers every waiting query at once
//!   with the lower index, as Consul's servers do when a restore abandons their watches.
//! - `features/caching`, "Agent Caching", the "background refresh" form both endpoints
//!   document: `?cached` answers from the agent's cache with `X-Cache: HIT` or `MISS`; a miss
//!   fetches from the servers and the entry then follows every change of its service while
//!   the agent reaches its servers, so a hit's `Age` is `0`; an agent cut off from its
//!   servers keeps answering hits, frozen, with `Age` the seconds since it lost them;
//!   `Cache-Control` is ignored in this form; an entry unused for the cache TTL (3 days) is
//!   dropped. `cached` with `index` is a blocking query on the cached entry. `cached` with
//!   `consistent` is a 400.
//! - `features/consistency`: `stale`, `consistent` (both at once: 400),
//!   `X-Consul-KnownLeader`, `X-Consul-LastContact`, `X-Consul-Effective-Consistency`.
//! - `features/filtering` (see the `filter` module).
//! - The API overview's "Authentication": the token comes from `?token=`, `X-Consul-Token`
//!   or `Authorization: Bearer`. With ACLs on and `default_policy = "deny"`: an unknown token
//!   gets `403 ACL not found`; no token is the anonymous token, whose catalog reads are
//!   filtered to `[]` with `X-Consul-Results-Filtered-By-ACLs: true` and whose writes get
//!   `403 Permission denied: ...`.
//!
//! Error bodies are the texts Consul's HTTP server writes (`text/plain`): an unknown `dc` is
//! `500 No path to datacenter` (hashicorp/consul issue 908); `Invalid wait time`,
//! `Invalid index`, `Cannot specify ?stale with ?consistent, conflicting semantics.` are 400;
//! an agent without servers answers reads it cannot serve from its cache with
//! `500 No known Consul servers`.
//!
//! Simplifications: the agent is one node, whose `serfHealth` check always passes; checks
//! are stored, not run: every instance has one service check, passing unless the
//! registration's `Check.Status` or `ConsulStandin::set_check_status` says otherwise
//! (Consul starts a check `critical` until it first runs); blocking waits get no random
//! jitter (Consul adds up to `wait / 16`).

mod agent_cache;
mod filter;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::fault::{self, Fault, FaultPlan};
use crate::lock;
use crate::server::{self, read_body, response, text, Handler, LoopbackServer, Reply, ReplyFuture};
use agent_cache::{AgentCache, CacheOutcome};

/// The first index of a fresh catalog; Consul's indexes are never 0.
const FIRST_INDEX: u64 = 10;
const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
const MAX_WAIT: Duration = Duration::from_secs(10 * 60);
/// How long the agent keeps a cached read nobody asks for (Consul's default: 3 days).
const DEFAULT_AGENT_CACHE_TTL: Duration = Duration::from_secs(3 * 24 * 3600);
const MAX_REQUEST_BODY: usize = 1 << 20;
const ANONYMOUS_ACCESSOR_ID: &str = "00000000-0000-0000-0000-000000000002";
const NO_SERVERS: &str = "No known Consul servers";

/// How the stand-in is started.
#[derive(Debug, Clone)]
pub struct ConsulOptions {
    /// Where to listen; the default picks a free loopback port.
    pub listen: SocketAddr,
    /// The agent's datacenter: the default of `dc` and of registrations.
    pub datacenter: String,
    /// Further datacenters reachable over the WAN (datacenters of registered instances are
    /// always reachable). A `dc` outside them gets `500 No path to datacenter`.
    pub other_datacenters: Vec<String>,
    /// The agent's node name and address, used for agent registrations.
    pub node: String,
    pub node_address: String,
    /// ACLs on with `default_policy = "deny"`, this being the only token (a management token).
    pub acl_token: Option<String>,
    /// Encode empty tags and meta as `null`, as Consul versions before 1.x's struct defaults
    /// did and as Go's `nil` slices and maps still can.
    pub empty_collections_as_null: bool,
    /// How long a `?cached` read stays in the agent's cache without being asked for.
    pub agent_cache_ttl: Duration,
}

impl Default for ConsulOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            datacenter: "dc1".to_owned(),
            other_datacenters: Vec::new(),
            node: "consul-standin".to_owned(),
            node_address: "127.0.0.1".to_owned(),
            acl_token: None,
            empty_collections_as_null: false,
            agent_cache_ttl: DEFAULT_AGENT_CACHE_TTL,
        }
    }
}

/// The status of a health check, as Consul writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckStatus {
    #[default]
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    /// `passing`, `warning` or `critical`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "passing" => Some(CheckStatus::Passing),
            "warning" => Some(CheckStatus::Warning),
            "critical" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

/// One service instance in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub service: String,
    pub id: String,
    /// Empty: the agent's node (and its address).
    pub node: String,
    pub node_address: String,
    /// Empty: the agent's datacenter.
    pub datacenter: String,
    /// `ServiceAddress`; empty means "use the node's address", as in Consul.
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub node_meta: BTreeMap<String, String>,
    pub check: Option<HttpCheck>,
    /// The status of the instance's service check.
    pub check_status: CheckStatus,
}

/// The HTTP health check given at registration (stored, not run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub http: String,
    pub interval: Duration,
    pub deregister_critical_service_after: Option<Duration>,
}

impl Instance {
    pub fn new(service: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            id: id.into(),
            node: String::new(),
            node_address: String::new(),
            datacenter: String::new(),
            address: String::new(),
            port: 0,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            node_meta: BTreeMap::new(),
            check: None,
            check_status: CheckStatus::Passing,
        }
    }

    pub fn node(mut self, name: impl Into<String>, address: impl Into<String>) -> Self {
        self.node = name.into();
        self.node_address = address.into();
        self
    }

    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = datacenter.into();
        self
    }

    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    pub fn node_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.node_meta.insert(key.into(), value.into());
        self
    }

    pub fn check_status(mut self, status: CheckStatus) -> Self {
        self.check_status = status;
        self
    }
}

/// One request as the stand-in received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Header names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    pub received: std::time::Instant,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The decoded values of query parameter `name`.
    pub fn query_values(&self, name: &str) -> Vec<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.into_owned())
            .collect()
    }

    /// Whether query parameter `name` is present, with or without a value (`?stale`).
    pub fn has_query(&self, name: &str) -> bool {
        form_urlencoded::parse(self.query.as_bytes()).any(|(key, _)| key == name)
    }
}

/// A running Consul stand-in; stops on [`ConsulStandin::stop`] or drop.
pub struct ConsulStandin {
    server: LoopbackServer,
    state: Arc<ConsulState>,
}

impl ConsulStandin {
    pub fn start(options: ConsulOptions) -> io::Result<Self> {
        let (changes, _) = watch::channel(FIRST_INDEX);
        let state = Arc::new(ConsulState {
            catalog: Mutex::new(Catalog::new()),
            agent_cache: Mutex::new(AgentCache::new(options.agent_cache_ttl)),
            options: options.clone(),
            changes,
            fault: Mutex::new(FaultPlan::default()),
            log: Mutex::new(Vec::new()),
            held: Mutex::new(HashMap::new()),
        });
        let server = LoopbackServer::start("consul-standin", options.listen, state.clone())?;
        Ok(Self { server, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Adds or replaces (same node and ID) an instance; returns the new catalog index.
    pub fn register(&self, instance: Instance) -> u64 {
        self.state.register(instance)
    }

    /// Removes every instance with this service ID; `false` if there was none.
    pub fn deregister(&self, service_id: &str) -> bool {
        self.state.deregister(service_id, None)
    }

    /// Sets meta `key` to `value` on every instance with this service ID, as a
    /// re-registration with the new meta would; the new index, `None` if there is no such
    /// instance.
    pub fn set_meta(&self, service_id: &str, key: &str, value: &str) -> Option<u64> {
        self.state.update_instances(service_id, |entry, index| {
            entry.instance.meta.insert(key.to_owned(), value.to_owned());
            entry.modify_index = index;
        })
    }

    /// Sets the status of the service check of every instance with this service ID; the new
    /// index, `None` if there is no such instance.
    pub fn set_check_status(&self, service_id: &str, status: CheckStatus) -> Option<u64> {
        self.state.update_instances(service_id, |entry, index| {
            entry.instance.check_status = status;
            entry.check_modify_index = index;
        })
    }

    /// The instances of a service, in every datacenter.
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        lock(&self.state.catalog)
            .instances_of(service)
            .iter()
            .map(|entry| entry.instance.clone())
            .collect()
    }

    /// The current catalog index (`X-Consul-Index` of an unknown service).
    pub fn index(&self) -> u64 {
        lock(&self.state.catalog).index
    }

    /// Moves every index to `index`, backwards too, as a restored snapshot or a new cluster
    /// does; every blocked query answers at once with it.
    pub fn set_index(&self, index: u64) {
        let index = index.max(1);
        let mut catalog = lock(&self.state.catalog);
        catalog.index = index;
        catalog.restores += 1;
        for value in catalog.service_index.values_mut() {
            *value = index;
        }
        for entry in catalog.services.values_mut().flatten() {
            entry.create_index = entry.create_index.min(index);
            entry.modify_index = index;
            entry.check_modify_index = index;
        }
        drop(catalog);
        self.state.publish(index);
    }

    /// Applies `fault` to every request from now on.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.fault) = FaultPlan::always(fault);
    }

    /// Applies `fault` to the next `count` requests, then behaves again.
    pub fn set_fault_for_next(&self, count: u32, fault: Fault) {
        *lock(&self.state.fault) = FaultPlan::next(count, fault);
    }

    /// How many requests arrived whose path starts with `path_prefix`.
    pub fn requests(&self, path_prefix: &str) -> u64 {
        lock(&self.state.log)
            .iter()
            .filter(|request| request.path.starts_with(path_prefix))
            .count() as u64
    }

    /// Every request received so far, oldest first.
    pub fn request_log(&self) -> Vec<RecordedRequest> {
        lock(&self.state.log).clone()
    }

    /// How many blocking queries (with an `index`) whose path starts with `path_prefix` are
    /// held right now, waiting for a change.
    pub fn held_queries(&self, path_prefix: &str) -> usize {
        lock(&self.state.held)
            .iter()
            .filter(|(path, _)| path.starts_with(path_prefix))
            .map(|(_, count)| count)
            .sum()
    }

    /// The agent loses its servers now: cached answers stop following changes and their
    /// `Age` counts from now; reads the cache cannot answer get `500`.
    pub fn disconnect_agent_cache(&self) {
        self.disconnect_agent_cache_since(Duration::ZERO);
    }

    /// As [`ConsulStandin::disconnect_agent_cache`], the servers lost `ago` before now, so
    /// cached answers report an `Age` of at least `ago`.
    pub fn disconnect_agent_cache_since(&self, ago: Duration) {
        lock(&self.state.agent_cache).disconnect(ago);
    }

    /// The agent reaches its servers again: cached answers catch up at once, `Age` is 0.
    pub fn reconnect_agent_cache(&self) {
        lock(&self.state.agent_cache).reconnect();
        let index = lock(&self.state.catalog).index;
        self.state.publish(index);
    }

    /// How many times the agent's cache fetched from the servers: misses, and background
    /// refreshes when a cached service changed.
    pub fn agent_cache_fetches(&self) -> u64 {
        lock(&self.state.agent_cache).fetches()
    }
}

/// An address on which nothing listens, for "Consul is down" cases.
pub fn closed_port_addr() -> SocketAddr {
    server::closed_port_addr()
}

/// The read endpoint a query came through; both list one service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Endpoint {
    Catalog,
    Health,
}

/// A catalog row: the instance plus what Consul derives for it.
#[derive(Debug, Clone)]
pub(crate) struct CatalogEntry {
    instance: Instance,
    node_id: String,
    node_meta: BTreeMap<String, String>,
    tagged_addresses: BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
    /// Last change of the service check's status.
    check_modify_index: u64,
}

struct Catalog {
    /// Instances by service name; no service has an empty list.
    services: HashMap<String, Vec<CatalogEntry>>,
    /// The service of each instance, by node and service ID.
    located: HashMap<(String, String), String>,
    index: u64,
    /// Index of the last change per service that has instances.
    service_index: HashMap<String, u64>,
    /// Snapshot restores so far: each answers every waiting query.
    restores: u64,
}

impl Catalog {
    fn new() -> Self {
        Self {
            services: HashMap::new(),
            located: HashMap::new(),
            index: FIRST_INDEX,
            service_index: HashMap::new(),
            restores: 0,
        }
    }

    fn instances_of(&self, service: &str) -> &[CatalogEntry] {
        self.services.get(service).map_or(&[], Vec::as_slice)
    }

    fn index_of(&self, service: &str) -> u64 {
        self.service_index
            .get(service)
            .copied()
            .unwrap_or(self.index)
    }

    /// Records one change (one Raft entry) touching `services`; returns its index.
    fn commit(&mut self, services: &[String]) -> u64 {
        self.index += 1;
        for service in services {
            if self.services.contains_key(service) {
                self.service_index.insert(service.clone(), self.index);
            } else {
                self.service_index.remove(service);
            }
        }
        self.index
    }

    /// Takes out the entry of `id` on `node`, wherever its service is.
    fn take(&mut self, node: &str, id: &str) -> Option<CatalogEntry> {
        let service = self.located.remove(&(node.to_owned(), id.to_owned()))?;
        let entries = self.services.get_mut(&service)?;
        let position = entries
            .iter()
            .position(|e| e.instance.node == node && e.instance.id == id)?;
        let entry = entries.remove(position);
        if entries.is_empty() {
            self.services.remove(&service);
        }
        Some(entry)
    }

    fn insert(&mut self, entry: CatalogEntry) {
        let instance = &entry.instance;
        self.located.insert(
            (instance.node.clone(), instance.id.clone()),
            instance.service.clone(),
        );
        self.services
            .entry(instance.service.clone())
            .or_default()
            .push(entry);
    }
}

/// Everything that decides the answer of one read of a service's instances.
#[derive(Debug, Clone)]
pub(crate) struct ServiceQuery {
    endpoint: Endpoint,
    service: String,
    datacenter: String,
    tags: Vec<String>,
    /// The `filter` parameter as given, and parsed.
    filter_source: String,
    filter: Option<filter::Expression>,
    /// Health only: instances whose checks all pass.
    passing: bool,
    /// Read with the anonymous token while ACLs deny by default.
    anonymous: bool,
}

impl ServiceQuery {
    /// Two reads with the same key get the same answer (the agent cache's key).
    fn cache_key(&self) -> String {
        format!(
            "{:?}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.endpoint,
            self.service,
            self.datacenter,
            self.tags.join("\t"),
            self.filter_source,
            self.passing,
            self.anonymous
        )
    }

    fn selects(&self, entry: &CatalogEntry) -> bool {
        entry.instance.datacenter == self.datacenter
            && self
                .tags
                .iter()
                .all(|tag| entry.instance.tags.iter().any(|t| t == tag))
            && self.filter.as_ref().is_none_or(|e| e.matches(entry))
            && (!self.passing || entry.instance.check_status == CheckStatus::Passing)
    }
}

/// One answer to a read: the index it reflects and its JSON body.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    index: u64,
    body: Bytes,
    filtered_by_acls: bool,
}

/// A parsed read request.
struct Read {
    query: ServiceQuery,
    /// 0: answer at once.
    min_index: u64,
    wait: Duration,
    consistency: &'static str,
    cached: bool,
}

/// Counts a blocking query as held while it lives.
struct HeldQuery<'a> {
    held: &'a Mutex<HashMap<String, usize>>,
    path: String,
}

impl<'a> HeldQuery<'a> {
    fn new(held: &'a Mutex<HashMap<String, usize>>, path: &str) -> Self {
        *lock(held).entry(path.to_owned()).or_insert(0) += 1;
        Self {
            held,
            path: path.to_owned(),
        }
    }
}

impl Drop for HeldQuery<'_> {
    fn drop(&mut self) {
        let mut held = lock(self.held);
        if let Some(count) = held.get_mut(&self.path) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.path);
            }
        }
    }
}

struct ConsulState {
    options: ConsulOptions,
    catalog: Mutex<Catalog>,
    /// Locked before `catalog` when both are held.
    agent_cache: Mutex<AgentCache>,
    /// Carries the catalog index; blocking queries wait on it.
    changes: watch::Sender<u64>,
    fault: Mutex<FaultPlan>,
    log: Mutex<Vec<RecordedRequest>>,
    /// Blocking queries held now, by path.
    held: Mutex<HashMap<String, usize>>,
}

impl ConsulState {
    fn register(&self, mut instance: Instance) -> u64 {
        if instance.node.is_empty() {
            instance.node = self.options.node.clone();
            instance.node_address = self.options.node_address.clone();
        }
        if instance.datacenter.is_empty() {
            instance.datacenter = self.options.datacenter.clone();
        }
        let mut catalog = lock(&self.catalog);
        let next_index = catalog.index + 1;
        let mut touched = vec![instance.service.clone()];
        let create_index = match catalog.take(&instance.node, &instance.id) {
            Some(old) => {
                touched.push(old.instance.service);
                old.create_index
            }
            None => next_index,
        };
        catalog.insert(derive_entry(instance, create_index, next_index));
        let index = catalog.commit(&touched);
        drop(catalog);
        self.publish(index);
        index
    }

    /// Removes instances with `service_id` (only on `node` when given).
    fn deregister(&self, service_id: &str, node: Option<&str>) -> bool {
        let mut catalog = lock(&self.catalog);
        let removed: Vec<(String, String)> = catalog
            .located
            .keys()
            .filter(|(entry_node, id)| {
                id == service_id && node.is_none_or(|node| node == entry_node)
            })
            .cloned()
            .collect();
        let mut removed_services = Vec::new();
        for (entry_node, id) in removed {
            if let Some(entry) = catalog.take(&entry_node, &id) {
                if !removed_services.contains(&entry.instance.service) {
                    removed_services.push(entry.instance.service);
                }
            }
        }
        if removed_services.is_empty() {
            return false;
        }
        let index = catalog.commit(&removed_services);
        drop(catalog);
        self.publish(index);
        true
    }

    /// Applies `change` (given the index it gets) to every instance with `service_id`, as
    /// one change; the new index, `None` if there is no such instance.
    fn update_instances(
        &self,
        service_id: &str,
        change: impl Fn(&mut CatalogEntry, u64),
    ) -> Option<u64> {
        let mut catalog = lock(&self.catalog);
        let next_index = catalog.index + 1;
        let mut touched = Vec::new();
        for (service, entries) in &mut catalog.services {
            for entry in entries.iter_mut().filter(|e| e.instance.id == service_id) {
                change(entry, next_index);
                if !touched.contains(service) {
                    touched.push(service.clone());
                }
            }
        }
        if touched.is_empty() {
            return None;
        }
        let index = catalog.commit(&touched);
        drop(catalog);
        self.publish(index);
        Some(index)
    }

    /// After a change: the agent cache refreshes what it follows, then waiting queries wake.
    fn publish(&self, index: u64) {
        {
            let mut cache = lock(&self.agent_cache);
            let catalog = lock(&self.catalog);
            cache.refresh(|query, cached_index| {
                (catalog.index_of(&query.service) != cached_index)
                    .then(|| self.answer(&catalog, query))
            });
        }
        self.changes.send_replace(index);
    }

    fn record(&self, request: &Request<Incoming>) {
        let record = RecordedRequest {
            received: std::time::Instant::now(),
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().unwrap_or_default().to_owned(),
            headers: request
                .headers()
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        };
        lock(&self.log).push(record);
    }

    fn reachable(&self, datacenter: &str) -> bool {
        datacenter == self.options.datacenter
            || self
                .options
                .other_datacenters
                .iter()
                .any(|dc| dc == datacenter)
            || lock(&self.catalog)
                .services
                .values()
                .flatten()
                .any(|entry| entry.instance.datacenter == datacenter)
    }

    fn token_check(&self, token: Option<&str>) -> TokenCheck {
        match (&self.options.acl_token, token) {
            (None, _) => TokenCheck::Allowed,
            (Some(_), None) => TokenCheck::Anonymous,
            (Some(expected), Some(given)) if expected == given => TokenCheck::Allowed,
            (Some(_), Some(_)) => TokenCheck::NotFound,
        }
    }
}

fn derive_entry(instance: Instance, create_index: u64, modify_index: u64) -> CatalogEntry {
    let mut node_meta = BTreeMap::from([("consul-network-segment".to_owned(), String::new())]);
    node_meta.extend(instance.node_meta.clone());
    let mut tagged_addresses = BTreeMap::new();
    for key in ["lan", "lan_ipv4", "wan", "wan_ipv4"] {
        tagged_addresses.insert(key.to_owned(), instance.node_address.clone());
    }
    CatalogEntry {
        node_id: node_id(&instance.node),
        node_meta,
        tagged_addresses,
        instance,
        create_index,
        modify_index,
        check_modify_index: create_index,
    }
}

/// A stable UUID-shaped node ID derived from the node name (FNV-1a).
fn node_id(node: &str) -> String {
    let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
    for byte in node.bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000000001000000000000000000013b);
    }
    let hex = format!("{hash:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

enum TokenCheck {
    Allowed,
    Anonymous,
    NotFound,
}

impl Handler for ConsulState {
    fn handle(self: Arc<Self>, request: Request<Incoming>) -> ReplyFuture {
        Box::pin(async move {
            self.record(&request);
            let fault = lock(&self.fault).take();
            match fault {
                Fault::None => {}
                Fault::Delay(delay) => tokio::time::sleep(delay).await,
                Fault::Reset => return Reply::Reset,
                Fault::ResetMidBody => return Reply::ResetMidBody(self.route(request).await),
                Fault::Status(code, body) => {
                    return Reply::Respond(fault::status_reply(code, body))
                }
                Fault::InvalidJson => {
                    let mut reply = response(StatusCode::OK, "application/json", "[{\"ID\": \"");
                    self.add_query_meta(&mut reply, lock(&self.catalog).index, "leader");
                    return Reply::Respond(reply);
                }
                Fault::Oversized(size) => {
                    return Reply::Respond(self.oversized(request.uri().path(), size));
                }
            }
            Reply::Respond(self.route(request).await)
        })
    }
}

const CATALOG_SERVICE_PREFIX: &str = "/v1/catalog/service/";
const HEALTH_SERVICE_PREFIX: &str = "/v1/health/service/";
const REGISTER_PATH: &str = "/v1/agent/service/register";
const DEREGISTER_PREFIX: &str = "/v1/agent/service/deregister/";

fn method_not_allowed(method: &Method, allow: &'static str) -> Response<Full<Bytes>> {
    let mut reply = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed"),
    );
    reply
        .headers_mut()
        .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
    reply
}

/// The token as Consul's HTTP server reads it: `?token=`, then `X-Consul-Token`, then
/// `Authorization: Bearer`.
fn request_token(request: &Request<Incoming>, query: &[(String, String)]) -> Option<String> {
    if let Some((_, token)) = query.iter().find(|(key, _)| key == "token") {
        return Some(token.clone());
    }
    let headers = request.headers();
    if let Some(token) = headers.get("x-consul-token").and_then(|v| v.to_str().ok()) {
        return Some(token.trim().to_owned());
    }
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|token| token.trim().to_owned())
}

fn decoded_segment(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

impl ConsulState {
    async fn route(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        let read = [
            (CATALOG_SERVICE_PREFIX, Endpoint::Catalog),
            (HEALTH_SERVICE_PREFIX, Endpoint::Health),
        ]
        .into_iter()
        .find_map(|(prefix, endpoint)| path.strip_prefix(prefix).map(|rest| (rest, endpoint)));
        if let Some((service, endpoint)) = read {
            if method != Method::GET {
                return method_not_allowed(&method, "GET");
            }
            return self
                .service_read(endpoint, &decoded_segment(service), &request)
                .await;
        }
        if path == REGISTER_PATH {
            if method != Method::PUT {
                return method_not_allowed(&method, "PUT");
            }
            return self.agent_register(request).await;
        }
        if let Some(service_id) = path.strip_prefix(DEREGISTER_PREFIX) {
            if method != Method::PUT {
                return method_not_allowed(&method, "PUT");
            }
            return self.agent_deregister(&decoded_segment(service_id), &request);
        }
        text(StatusCode::NOT_FOUND, "404 page not found\n")
    }

    fn add_query_meta(&self, reply: &mut Response<Full<Bytes>>, index: u64, consistency: &str) {
        let headers = reply.headers_mut();
        let pairs = [
            ("x-consul-index", index.max(1).to_string()),
            ("x-consul-knownleader", "true".to_owned()),
            ("x-consul-lastcontact", "0".to_owned()),
            ("x-consul-effective-consistency", consistency.to_owned()),
        ];
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }

    /// The parameters of a read, or the answer that refuses them.
    fn parse_read(
        &self,
        endpoint: Endpoint,
        service: &str,
        request: &Request<Incoming>,
    ) -> Result<Read, Box<Response<Full<Bytes>>>> {
        let query: Vec<(String, String)> =
            form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let has = |name: &str| query.iter().any(|(key, _)| key == name);
        let first = |name: &str| {
            query
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let stale = has("stale");
        let consistent = has("consistent");
        let cached = has("cached");
        if stale && consistent {
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            )));
        }
        if cached && consistent {
            return Err(Box::new(text(
                StatusCode::BAD_REQUEST,
                "Cannot specify ?cached with ?consistent, conflicting semantics.",
            )));
        }
        // Consul's servers take a zero wait as the default one.
        let wait = match first("wait").map(parse_go_duration) {
            None | Some(Some(Duration::ZERO)) => DEFAULT_WAIT,
            Some(Some(wait)) => wait.min(MAX_WAIT),
            Some(None) => return Err(Box::new(text(StatusCode::BAD_REQUEST, "Invalid wait time"))),
        };
        let min_index = match first("index").map(str::parse::<u64>) {
            None => 0,
            Some(Ok(index)) => index,
            Some(Err(_)) => return Err(Box::new(text(StatusCode::BAD_REQUEST, "Invalid index"))),
        };
        let passing = match (endpoint, first("passing")) {
            (Endpoint::Catalog, _) | (Endpoint::Health, None) => false,
            (Endpoint::Health, Some("" | "true" | "1")) => true,
            (Endpoint::Health, Some("false" | "0")) => false,
            (Endpoint::Health, Some(_)) => {
                return Err(Box::new(text(
                    StatusCode::BAD_REQUEST,
                    "Invalid value for ?passing",
                )))
            }
        };
        let datacenter = first("dc")
            .filter(|dc| !dc.is_empty())
            .unwrap_or(&self.options.datacenter)
            .to_owned();
        if !self.reachable(&datacenter) {
            return Err(Box::new(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "No path to datacenter",
            )));
        }
        let consistency = if stale {
            "stale"
        } else if consistent {
            "consistent"
        } else {
            "leader"
        };
        let token = request_token(request, &query);
        let anonymous = match self.token_check(token.as_deref()) {
            TokenCheck::Allowed => false,
            TokenCheck::Anonymous => true,
            TokenCheck::NotFound => {
                let mut reply = text(StatusCode::FORBIDDEN, "ACL not found");
                self.add_query_meta(&mut reply, lock(&self.catalog).index, consistency);
                return Err(Box::new(reply));
            }
        };
        let filter_source = first("filter").unwrap_or_default().to_owned();
        let filter = match Some(filter_source.as_str())
            .filter(|f| !f.is_empty())
            .map(|f| filter::parse(f, endpoint))
        {
            None => None,
            Some(Ok(expression)) => Some(expression),
            Some(Err(message)) => {
                return Err(Box::new(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Failed to create boolean expression evaluator: {message}"),
                )));
            }
        };
        let tags = query
            .iter()
            .filter(|(key, _)| key == "tag")
            .map(|(_, value)| value.clone())
            .collect();
        Ok(Read {
            query: ServiceQuery {
                endpoint,
                service: service.to_owned(),
                datacenter,
                tags,
                filter_source,
                filter,
                passing,
                anonymous,
            },
            min_index,
            wait,
            consistency,
            cached,
        })
    }

    /// `GET /v1/catalog/service/:service` and `GET /v1/health/service/:service`, blocking
    /// and cached or not.
    async fn service_read(
        &self,
        endpoint: Endpoint,
        service: &str,
        request: &Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let read = match self.parse_read(endpoint, service, request) {
            Ok(read) => read,
            Err(refusal) => return *refusal,
        };
        if !read.cached && !lock(&self.agent_cache).connected() {
            return text(StatusCode::INTERNAL_SERVER_ERROR, NO_SERVERS);
        }
        let _held = (read.min_index > 0).then(|| HeldQuery::new(&self.held, request.uri().path()));
        let mut changes = self.changes.subscribe();
        let restores = lock(&self.catalog).restores;
        let deadline = Instant::now() + read.wait;
        // A cached read is a hit or a miss by its first look at the cache.
        let mut first_outcome = None;
        loop {
            let cached = if read.cached {
                match self.cached_answer(&read.query) {
                    Some((answer, outcome)) => {
                        let outcome = match first_outcome.get_or_insert(outcome) {
                            CacheOutcome::Miss => CacheOutcome::Miss,
                            CacheOutcome::Hit { .. } => outcome,
                        };
                        Some((answer, outcome))
                    }
                    None => return text(StatusCode::INTERNAL_SERVER_ERROR, NO_SERVERS),
                }
            } else {
                None
            };
            let (index, restored) = {
                let catalog = lock(&self.catalog);
                let index = match &cached {
                    Some((answer, _)) => answer.index,
                    None => catalog.index_of(&read.query.service),
                };
                (index, catalog.restores != restores)
            };
            if read.min_index == 0
                || index > read.min_index
                || restored
                || Instant::now() >= deadline
            {
                return match cached {
                    Some((answer, outcome)) => {
                        self.read_reply(answer, read.consistency, Some(outcome))
                    }
                    None => {
                        let answer = self.answer(&lock(&self.catalog), &read.query);
                        self.read_reply(answer, read.consistency, None)
                    }
                };
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return text(StatusCode::INTERNAL_SERVER_ERROR, "agent is shutting down");
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// The agent cache's answer to `query`; `None` for a miss it cannot fetch.
    fn cached_answer(&self, query: &ServiceQuery) -> Option<(Answer, CacheOutcome)> {
        lock(&self.agent_cache).get(query, || self.answer(&lock(&self.catalog), query))
    }

    fn read_reply(
        &self,
        answer: Answer,
        consistency: &str,
        cache: Option<CacheOutcome>,
    ) -> Response<Full<Bytes>> {
        let mut reply = response(StatusCode::OK, "application/json", answer.body);
        self.add_query_meta(&mut reply, answer.index, consistency);
        let headers = reply.headers_mut();
        if answer.filtered_by_acls {
            headers.insert(
                "x-consul-results-filtered-by-acls",
                HeaderValue::from_static("true"),
            );
        }
        match cache {
            None => {}
            Some(CacheOutcome::Miss) => {
                headers.insert("x-cache", HeaderValue::from_static("MISS"));
            }
            Some(CacheOutcome::Hit { age_s }) => {
                headers.insert("x-cache", HeaderValue::from_static("HIT"));
                headers.insert(hyper::header::AGE, HeaderValue::from(age_s));
            }
        }
        reply
    }

    /// The servers' answer to `query` now.
    fn answer(&self, catalog: &Catalog, query: &ServiceQuery) -> Answer {
        let entries: Vec<&CatalogEntry> = catalog
            .instances_of(&query.service)
            .iter()
            .filter(|entry| query.selects(entry))
            .collect();
        let body = if query.anonymous {
            Value::Array(Vec::new())
        } else {
            Value::Array(
                entries
                    .iter()
                    .map(|entry| match query.endpoint {
                        Endpoint::Catalog => self.entry_json(entry),
                        Endpoint::Health => self.health_json(entry),
                    })
                    .collect(),
            )
        };
        Answer {
            index: catalog.index_of(&query.service),
            body: Bytes::from(body.to_string()),
            filtered_by_acls: query.anonymous && !entries.is_empty(),
        }
    }

    fn collection(&self, value: Value, empty: bool) -> Value {
        if empty && self.options.empty_collections_as_null {
            Value::Null
        } else {
            value
        }
    }

    /// `ServiceTaggedAddresses` (catalog) and `Service.TaggedAddresses` (health).
    fn service_tagged_addresses(instance: &Instance) -> Value {
        match instance.address.parse::<Ipv4Addr>() {
            Ok(_) => {
                let address = json!({"Address": instance.address, "Port": instance.port});
                json!({"lan_ipv4": address, "wan_ipv4": address})
            }
            Err(_) => Value::Null,
        }
    }

    fn entry_json(&self, entry: &CatalogEntry) -> Value {
        let instance = &entry.instance;
        let mut object = Map::new();
        let mut put = |key: &str, value: Value| {
            object.insert(key.to_owned(), value);
        };
        put("ID", json!(entry.node_id));
        put("Node", json!(instance.node));
        put("Address", json!(instance.node_address));
        put("Datacenter", json!(instance.datacenter));
        put("TaggedAddresses", json!(entry.tagged_addresses));
        put("NodeMeta", json!(entry.node_meta));
        put("ServiceKind", json!(""));
        put("ServiceID", json!(instance.id));
        put("ServiceName", json!(instance.service));
        put(
            "ServiceTags",
            self.collection(json!(instance.tags), instance.tags.is_empty()),
        );
        put("ServiceAddress", json!(instance.address));
        put(
            "ServiceTaggedAddresses",
            Self::service_tagged_addresses(instance),
        );
        put("ServiceWeights", json!({"Passing": 1, "Warning": 1}));
        put(
            "ServiceMeta",
            self.collection(json!(instance.meta), instance.meta.is_empty()),
        );
        put("ServicePort", json!(instance.port));
        put("ServiceSocketPath", json!(""));
        put("ServiceEnableTagOverride", json!(false));
        put(
            "ServiceProxy",
            json!({"Mode": "", "MeshGateway": {}, "Expose": {}}),
        );
        put("ServiceConnect", json!({}));
        put("CreateIndex", json!(entry.create_index));
        put("ModifyIndex", json!(entry.modify_index));
        Value::Object(object)
    }

    /// One entry of "List Service Instances for Service": the node, the service instance
    /// and the checks of both (the node's `serfHealth`, the instance's service check).
    fn health_json(&self, entry: &CatalogEntry) -> Value {
        let instance = &entry.instance;
        let tags = self.collection(json!(instance.tags), instance.tags.is_empty());
        let node = json!({
            "ID": entry.node_id,
            "Node": instance.node,
            "Address": instance.node_address,
            "Datacenter": instance.datacenter,
            "TaggedAddresses": entry.tagged_addresses,
            "Meta": entry.node_meta,
            "CreateIndex": entry.create_index,
            "ModifyIndex": entry.modify_index,
        });
        let service = json!({
            "Kind": "",
            "ID": instance.id,
            "Service": instance.service,
            "Tags": tags,
            "Address": instance.address,
            "TaggedAddresses": Self::service_tagged_addresses(instance),
            "Meta": self.collection(json!(instance.meta), instance.meta.is_empty()),
            "Port": instance.port,
            "SocketPath": "",
            "Weights": {"Passing": 1, "Warning": 1},
            "EnableTagOverride": false,
            "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}},
            "Connect": {},
            "CreateIndex": entry.create_index,
            "ModifyIndex": entry.modify_index,
        });
        let serf_health = json!({
            "Node": instance.node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": "passing",
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": entry.create_index,
            "ModifyIndex": entry.create_index,
        });
        let (check_type, interval, definition) = match &instance.check {
            Some(check) => (
                "http",
                format_go_duration(check.interval),
                json!({"HTTP": check.http, "Interval": format_go_duration(check.interval)}),
            ),
            None => ("ttl", String::new(), json!({})),
        };
        let service_check = json!({
            "Node": instance.node,
            "CheckID": format!("service:{}", instance.id),
            "Name": format!("Service '{}' check", instance.service),
            "Status": instance.check_status.as_str(),
            "Notes": "",
            "Output": "",
            "ServiceID": instance.id,
            "ServiceName": instance.service,
            "ServiceTags": tags,
            "Type": check_type,
            "Interval": interval,
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": definition,
            "CreateIndex": entry.create_index,
            "ModifyIndex": entry.check_modify_index,
        });
        json!({"Node": node, "Service": service, "Checks": [serf_health, service_check]})
    }

    fn oversized(&self, path: &str, size: usize) -> Response<Full<Bytes>> {
        let service = path
            .strip_prefix(CATALOG_SERVICE_PREFIX)
            .map(decoded_segment)
            .unwrap_or_else(|| "oversized".to_owned());
        let index = lock(&self.catalog).index;
        let instance = Instance::new(service.clone(), format!("{service}-1"))
            .node(self.options.node.clone(), self.options.node_address.clone())
            .datacenter(self.options.datacenter.clone())
            .address("127.0.0.1")
            .port(8080)
            .meta("padding", "");
        let mut entry = derive_entry(instance, index, index);
        let empty_size = Value::Array(vec![self.entry_json(&entry)])
            .to_string()
            .len();
        entry.instance.meta.insert(
            "padding".to_owned(),
            "x".repeat(size.saturating_sub(empty_size)),
        );
        let body = Value::Array(vec![self.entry_json(&entry)]).to_string();
        let mut reply = response(StatusCode::OK, "application/json", body);
        self.add_query_meta(&mut reply, index, "leader");
        reply
    }

    fn write_denied(&self, token: Option<&str>, service: &str) -> Option<Response<Full<Bytes>>> {
        match self.token_check(token) {
            TokenCheck::Allowed => None,
            TokenCheck::NotFound => Some(text(StatusCode::FORBIDDEN, "ACL not found")),
            TokenCheck::Anonymous => Some(text(
                StatusCode::FORBIDDEN,
                format!(
                    "Permission denied: token with AccessorID '{ANONYMOUS_ACCESSOR_ID}' lacks permission 'service:write' on {service:?}"
                ),
            )),
        }
    }

    async fn agent_register(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let query: Vec<(String, String)> =
            form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let token = request_token(&request, &query);
        let Some(body) = read_body(request.into_body(), MAX_REQUEST_BODY).await else {
            return text(
                StatusCode::BAD_REQUEST,
                "Request decode failed: body unreadable or too large",
            );
        };
        let instance = match self.parse_registration(&body) {
            Ok(instance) => instance,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        if let Some(denied) = self.write_denied(token.as_deref(), &instance.service) {
            return denied;
        }
        self.register(instance);
        response(StatusCode::OK, "text/plain; charset=utf-8", Bytes::new())
    }

    fn agent_deregister(
        &self,
        service_id: &str,
        request: &Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let query: Vec<(String, String)> =
            form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let token = request_token(request, &query);
        let service = lock(&self.catalog)
            .services
            .values()
            .flatten()
            .find(|e| e.instance.id == service_id && e.instance.node == self.options.node)
            .map(|e| e.instance.service.clone());
        let Some(service) = service else {
            return text(
                StatusCode::NOT_FOUND,
                format!("Unknown service ID {service_id:?}. Ensure that the service ID is passed, not the service name."),
            );
        };
        if let Some(denied) = self.write_denied(token.as_deref(), &service) {
            return denied;
        }
        self.deregister(service_id, Some(&self.options.node.clone()));
        response(StatusCode::OK, "text/plain; charset=utf-8", Bytes::new())
    }

    /// Decodes a registration body. Keys match case-insensitively, as Consul's decoder does.
    fn parse_registration(&self, body: &[u8]) -> Result<Instance, String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|error| format!("Request decode failed: {error}"))?;
        let Value::Object(object) = value else {
            return Err("Request decode failed: expected a JSON object".to_owned());
        };
        let name = string_field(&object, "Name")?.unwrap_or_default();
        if name.is_empty() {
            return Err("Missing service name".to_owned());
        }
        let id = string_field(&object, "ID")?
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| name.clone());
        let port = match field(&object, "Port") {
            None | Some(Value::Null) => 0,
            Some(value) => value
                .as_u64()
                .and_then(|port| u16::try_from(port).ok())
                .ok_or_else(|| format!("Request decode failed: invalid Port {value}"))?,
        };
        let tags = match field(&object, "Tags") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| item.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or("Request decode failed: Tags must be strings")?,
            Some(_) => return Err("Request decode failed: Tags must be an array".to_owned()),
        };
        let meta = string_map(&object, "Meta")?;
        validate_meta(&meta)?;
        let (check, check_status) = match field(&object, "Check") {
            None | Some(Value::Null) => (None, CheckStatus::Passing),
            Some(Value::Object(check)) => (parse_check(check)?, parse_check_status(check)?),
            Some(_) => return Err("Request decode failed: Check must be an object".to_owned()),
        };
        let mut instance = Instance::new(name, id)
            .node(self.options.node.clone(), self.options.node_address.clone())
            .datacenter(self.options.datacenter.clone())
            .address(string_field(&object, "Address")?.unwrap_or_default())
            .port(port);
        instance.tags = tags;
        instance.meta = meta;
        instance.check = check;
        instance.check_status = check_status;
        Ok(instance)
    }
}

fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
}

fn string_field(object: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(other) => Err(format!(
            "Request decode failed: {name} must be a string, got {other}"
        )),
    }
}

fn string_map(object: &Map<String, Value>, name: &str) -> Result<BTreeMap<String, String>, String> {
    match field(object, name) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(key, value)| match value {
                Value::String(value) => Ok((key.clone(), value.clone())),
                other => Err(format!(
                    "Request decode failed: {name}.{key} must be a string, got {other}"
                )),
            })
            .collect(),
        Some(other) => Err(format!(
            "Request decode failed: {name} must be an object, got {other}"
        )),
    }
}

/// Limits of service metadata from the agent/service "Register Service" document.
fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    const MAX_PAIRS: usize = 64;
    const MAX_KEY: usize = 128;
    const MAX_VALUE: usize = 512;
    if meta.len() > MAX_PAIRS {
        return Err(format!(
            "Invalid Service Meta: Node metadata cannot contain more than {MAX_PAIRS} key/value pairs"
        ));
    }
    for (key, value) in meta {
        let problem = if key.is_empty() {
            Some("Key cannot be blank".to_owned())
        } else if !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            Some("Key contains invalid characters".to_owned())
        } else if key.len() > MAX_KEY {
            Some(format!("Key is too long (limit: {MAX_KEY} characters)"))
        } else if key.starts_with("consul-") {
            Some("Key prefix 'consul-' is reserved for internal use".to_owned())
        } else if value.len() > MAX_VALUE {
            Some(format!("Value is too long (limit: {MAX_VALUE} characters)"))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!(
                "Invalid Service Meta: Couldn't load metadata pair ('{key}', '{value}'): {problem}"
            ));
        }
    }
    Ok(())
}

fn parse_check(check: &Map<String, Value>) -> Result<Option<HttpCheck>, String> {
    let Some(http) = string_field(check, "HTTP")? else {
        // Other check kinds (TTL, TCP, ...) are accepted and not modelled.
        return Ok(None);
    };
    let interval = string_field(check, "Interval")?
        .as_deref()
        .and_then(parse_go_duration)
        .filter(|interval| !interval.is_zero())
        .ok_or("Invalid check: Interval must be > 0 for Script, HTTP, or TCP checks")?;
    let deregister_critical_service_after =
        match string_field(check, "DeregisterCriticalServiceAfter")? {
            None => None,
            Some(text) => Some(parse_go_duration(&text).ok_or_else(|| {
                format!("Request decode failed: invalid DeregisterCriticalServiceAfter {text:?}")
            })?),
        };
    Ok(Some(HttpCheck {
        http,
        interval,
        deregister_critical_service_after,
    }))
}

/// A check's initial `Status`; the stand-in takes an absent one as passing (it runs no
/// checks, so none would ever leave Consul's initial `critical`).
fn parse_check_status(check: &Map<String, Value>) -> Result<CheckStatus, String> {
    match string_field(check, "Status")?.as_deref() {
        None | Some("") => Ok(CheckStatus::Passing),
        Some(status) => CheckStatus::parse(status).ok_or_else(|| {
            format!("Invalid check: Status must be passing, warning or critical, got {status:?}")
        }),
    }
}

/// Formats a duration as Go's `time.Duration.String` does for whole milliseconds:
/// `10s`, `1m30s`, `1h0m0s`, `250ms`, `0s`.
fn format_go_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_owned();
    }
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs();
    let fraction = duration.subsec_millis();
    let seconds_text = if fraction == 0 {
        format!("{}s", seconds % 60)
    } else {
        format!("{}.{:03}", seconds % 60, fraction)
            .trim_end_matches('0')
            .to_owned()
            + "s"
    };
    match (seconds / 3600, seconds % 3600 / 60) {
        (0, 0) => seconds_text,
        (0, minutes) => format!("{minutes}m{seconds_text}"),
        (hours, minutes) => format!("{hours}h{minutes}m{seconds_text}"),
    }
}

/// Parses Go's `time.ParseDuration` syntax: `300ms`, `1.5h`, `2h45m`, `10s`; `0` alone.
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_length = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_length].parse().ok()?;
        rest = &rest[number_length..];
        let unit_length = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_length] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_length..];
        total += number * nanos_per_unit;
    }
    Some(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("ten seconds"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn go_duration_text() {
        assert_eq!(format_go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn node_ids_are_uuid_shaped_and_stable() {
        let id = node_id("node-a");
        assert_eq!(id.len(), 36);
        assert_eq!(id, node_id("node-a"));
        assert_ne!(id, node_id("node-b"));
    }
}
