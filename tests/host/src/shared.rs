//! State shared by every worker of one host: the shared-data store and the metrics.
//!
//! Shared data follows the Proxy-Wasm ABI 0.2.1 spec (`proxy_get_shared_data` /
//! `proxy_set_shared_data`) as Envoy implements it (`SharedData` in Envoy's
//! `source/extensions/common/wasm`): every write bumps a process-wide CAS counter that is
//! never 0; a write with a non-zero CAS that differs from the stored one is refused with
//! `CasMismatch`; a CAS of 0 writes unconditionally. Kong (ngx_wasm_module) differs: a write
//! succeeds only when its CAS equals the stored one, 0 meaning "only if absent" (seen on the
//! engine; `ngx_wa_shm_kv_set_locked`, src/common/shm/ngx_wa_shm_kv.c), and keys live in
//! named `shm_kv` zones (docs/DIRECTIVES.md): `ns/key` in zone `ns`, a key without `/` in the
//! default zone `*`; the host traps when the zone is not configured, which the caller
//! reports.

use std::collections::HashMap;

use crate::Flavour;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    pub value: Vec<u8>,
    pub cas: u32,
}

#[derive(Debug)]
pub(crate) enum SharedDataError {
    /// Kong only: the key's namespace is not a configured `shm_kv` zone.
    UnknownZone(String),
    CasMismatch,
}

pub(crate) struct SharedData {
    flavour: Flavour,
    zones: Vec<String>,
    entries: HashMap<String, SharedEntry>,
    last_cas: u32,
}

impl SharedData {
    pub(crate) fn new(flavour: Flavour, zones: Vec<String>) -> Self {
        Self {
            flavour,
            zones,
            entries: HashMap::new(),
            last_cas: 0,
        }
    }

    fn check_zone(&self, key: &str) -> Result<(), SharedDataError> {
        if self.flavour != Flavour::Kong {
            return Ok(());
        }
        let zone = key.split_once('/').map_or("*", |(zone, _)| zone);
        if self.zones.iter().any(|z| z == zone) {
            Ok(())
        } else {
            Err(SharedDataError::UnknownZone(zone.to_string()))
        }
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<SharedEntry>, SharedDataError> {
        self.check_zone(key)?;
        Ok(self.entries.get(key).cloned())
    }

    /// Whether a write with `cas` may replace what `key` holds.
    fn cas_allows(&self, key: &str, cas: u32) -> bool {
        let stored = self.entries.get(key).map(|e| e.cas);
        match self.flavour {
            Flavour::Kong => cas == stored.unwrap_or(0),
            Flavour::Envoy => cas == 0 || stored.is_none_or(|s| s == cas),
        }
    }

    pub(crate) fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<(), SharedDataError> {
        self.check_zone(key)?;
        if !self.cas_allows(key, cas) {
            return Err(SharedDataError::CasMismatch);
        }
        self.last_cas = self.last_cas.checked_add(1).unwrap_or(1);
        self.entries.insert(
            key.to_string(),
            SharedEntry {
                value: value.to_vec(),
                cas: self.last_cas,
            },
        );
        Ok(())
    }

    /// ngx_wasm_module deletes a key set with a null value (`ngx_proxy_wasm_hfuncs_
    /// set_shared_data`, ngx_proxy_wasm_host.c); Envoy's ABI has no delete and keeps an
    /// empty value.
    pub(crate) fn delete(&mut self, key: &str, cas: u32) -> Result<(), SharedDataError> {
        self.check_zone(key)?;
        if !self.cas_allows(key, cas) {
            return Err(SharedDataError::CasMismatch);
        }
        self.entries.remove(key);
        Ok(())
    }

    pub(crate) fn snapshot(&self, key: &str) -> Option<SharedEntry> {
        self.entries.get(key).cloned()
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.entries.keys().cloned().collect();
        keys.sort();
        keys
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub(crate) fn from_abi(raw: i32) -> Option<Self> {
        match raw {
            0 => Some(Self::Counter),
            1 => Some(Self::Gauge),
            2 => Some(Self::Histogram),
            _ => None,
        }
    }
}

struct Metric {
    name: String,
    kind: MetricKind,
    value: i64,
}

#[derive(Debug)]
pub(crate) enum MetricError {
    NotFound,
    BadArgument,
}

/// Metrics by name, shared by all workers: a second `define_metric` of the same name from
/// another worker returns the same id, so values are summed over workers as a gateway's
/// stats are.
#[derive(Default)]
pub(crate) struct Metrics {
    metrics: Vec<Metric>,
}

impl Metrics {
    pub(crate) fn define(&mut self, kind: MetricKind, name: &str) -> u32 {
        let index = match self.metrics.iter().position(|m| m.name == name) {
            Some(index) => index,
            None => {
                self.metrics.push(Metric {
                    name: name.to_string(),
                    kind,
                    value: 0,
                });
                self.metrics.len() - 1
            }
        };
        // Ids start at 1 so a filter cannot mistake 0 for "undefined".
        (index + 1) as u32
    }

    fn by_id(&mut self, id: u32) -> Result<&mut Metric, MetricError> {
        let index = (id as usize).checked_sub(1).ok_or(MetricError::NotFound)?;
        self.metrics.get_mut(index).ok_or(MetricError::NotFound)
    }

    /// Counters only go up (Envoy refuses a non-positive counter increment with BadArgument).
    pub(crate) fn increment(&mut self, id: u32, offset: i64) -> Result<(), MetricError> {
        let metric = self.by_id(id)?;
        if metric.kind == MetricKind::Counter && offset <= 0 {
            return Err(MetricError::BadArgument);
        }
        metric.value = metric.value.saturating_add(offset);
        Ok(())
    }

    pub(crate) fn record(&mut self, id: u32, value: u64) -> Result<(), MetricError> {
        let metric = self.by_id(id)?;
        if metric.kind == MetricKind::Counter {
            return Err(MetricError::BadArgument);
        }
        metric.value = i64::try_from(value).unwrap_or(i64::MAX);
        Ok(())
    }

    pub(crate) fn get(&mut self, id: u32) -> Result<u64, MetricError> {
        let metric = self.by_id(id)?;
        Ok(u64::try_from(metric.value).unwrap_or(0))
    }

    pub(crate) fn value_of(&self, name: &str) -> Option<i64> {
        self.metrics
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.value)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.metrics.iter().map(|m| m.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_refuses_a_stale_cas() {
        let mut data = SharedData::new(Flavour::Envoy, Vec::new());
        data.set("k", b"1", 0).unwrap();
        let first = data.get("k").unwrap().unwrap();
        assert_ne!(first.cas, 0);
        data.set("k", b"2", first.cas).unwrap();
        let second = data.get("k").unwrap().unwrap();
        assert_eq!(second.value, b"2");
        assert_ne!(second.cas, first.cas);
        assert!(matches!(
            data.set("k", b"3", first.cas),
            Err(SharedDataError::CasMismatch)
        ));
        assert_eq!(data.get("k").unwrap().unwrap().value, b"2");
        data.set("k", b"4", 0).unwrap();
        assert_eq!(data.get("k").unwrap().unwrap().value, b"4");
    }

    #[test]
    fn kong_keys_need_a_configured_zone() {
        let mut data = SharedData::new(Flavour::Kong, vec!["cache".to_string()]);
        data.set("cache/a", b"x", 0).unwrap();
        assert!(matches!(
            data.set("other/a", b"x", 0),
            Err(SharedDataError::UnknownZone(zone)) if zone == "other"
        ));
        assert!(matches!(
            data.get("plain"),
            Err(SharedDataError::UnknownZone(zone)) if zone == "*"
        ));
        let mut data = SharedData::new(Flavour::Kong, vec!["*".to_string()]);
        assert!(data.set("plain", b"x", 0).is_ok());
    }

    #[test]
    fn metrics_are_shared_by_name_and_counters_only_grow() {
        let mut metrics = Metrics::default();
        let a = metrics.define(MetricKind::Counter, "requests");
        let b = metrics.define(MetricKind::Counter, "requests");
        assert_eq!(a, b);
        metrics.increment(a, 2).unwrap();
        metrics.increment(b, 3).unwrap();
        assert_eq!(metrics.value_of("requests"), Some(5));
        assert!(matches!(
            metrics.increment(a, -1),
            Err(MetricError::BadArgument)
        ));
        assert!(matches!(
            metrics.increment(99, 1),
            Err(MetricError::NotFound)
        ));
        let gauge = metrics.define(MetricKind::Gauge, "queue");
        metrics.record(gauge, 7).unwrap();
        assert_eq!(metrics.get(gauge).unwrap(), 7);
    }
}
