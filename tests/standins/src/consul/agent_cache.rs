//! The agent's cache of `?cached` reads, in the "background refresh" form that
//! developer.hashicorp.com/consul/api-docs/features/caching describes for the catalog and
//! health service endpoints: a miss fetches from the servers; from then on the entry follows
//! every change of what it answers (the agent's own blocking query), so while the agent
//! reaches its servers a hit is current and its `Age` is 0. Cut off from its servers, the
//! agent answers hits from the frozen entries with the seconds since it lost them as `Age`,
//! and cannot answer misses. An entry nobody asked for during the cache TTL is dropped.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{Answer, ServiceQuery};

/// How the cache answered a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheOutcome {
    /// `X-Cache: HIT` with `Age: age_s`.
    Hit { age_s: u64 },
    /// `X-Cache: MISS`: fetched from the servers for this read.
    Miss,
}

struct CachedRead {
    query: ServiceQuery,
    answer: Answer,
    last_used: Instant,
}

pub(crate) struct AgentCache {
    entries: HashMap<String, CachedRead>,
    ttl: Duration,
    /// `Some`: the agent has not reached its servers since then.
    disconnected_since: Option<Instant>,
    fetches: u64,
}

impl AgentCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            ttl,
            disconnected_since: None,
            fetches: 0,
        }
    }

    pub(crate) fn connected(&self) -> bool {
        self.disconnected_since.is_none()
    }

    /// The servers were lost `ago` before now.
    pub(crate) fn disconnect(&mut self, ago: Duration) {
        let now = Instant::now();
        self.disconnected_since = Some(now.checked_sub(ago).unwrap_or(now));
    }

    /// Entries catch up at the next [`AgentCache::refresh`].
    pub(crate) fn reconnect(&mut self) {
        self.disconnected_since = None;
    }

    /// Fetches from the servers so far: misses and background refreshes.
    pub(crate) fn fetches(&self) -> u64 {
        self.fetches
    }

    /// The cached answer to `query`, or on a miss the one `fetch` gets from the servers;
    /// `None` for a miss while the servers are unreachable.
    pub(crate) fn get(
        &mut self,
        query: &ServiceQuery,
        fetch: impl FnOnce() -> Answer,
    ) -> Option<(Answer, CacheOutcome)> {
        let now = Instant::now();
        let age_s = self
            .disconnected_since
            .map_or(0, |since| now.saturating_duration_since(since).as_secs());
        let key = query.cache_key();
        let ttl = self.ttl;
        if let Some(entry) = self
            .entries
            .get_mut(&key)
            .filter(|entry| now.saturating_duration_since(entry.last_used) < ttl)
        {
            entry.last_used = now;
            return Some((entry.answer.clone(), CacheOutcome::Hit { age_s }));
        }
        if !self.connected() {
            return None;
        }
        let answer = fetch();
        self.fetches += 1;
        self.entries.insert(
            key,
            CachedRead {
                query: query.clone(),
                answer: answer.clone(),
                last_used: now,
            },
        );
        Some((answer, CacheOutcome::Miss))
    }

    /// While the servers are reachable: drops entries unused for the TTL, and replaces each
    /// answer for which `fetch` (given the entry's query and index) returns a newer one.
    pub(crate) fn refresh(&mut self, mut fetch: impl FnMut(&ServiceQuery, u64) -> Option<Answer>) {
        if !self.connected() {
            return;
        }
        let now = Instant::now();
        let ttl = self.ttl;
        self.entries
            .retain(|_, entry| now.saturating_duration_since(entry.last_used) < ttl);
        for entry in self.entries.values_mut() {
            if let Some(answer) = fetch(&entry.query, entry.answer.index) {
                entry.answer = answer;
                self.fetches += 1;
            }
        }
    }
}
