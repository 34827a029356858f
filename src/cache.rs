//! Cache policy and the compact encoding of cache entries in Proxy-Wasm shared data.
//!
//! Shared data has no TTL, so every entry carries its own deadlines. One entry per service
//! holds the last good answer (or "unknown to Consul", or "failed") and when to stop
//! trusting it; all workers read and write the same entry.

use crate::config::CacheConfig;
use crate::consul::{Instance, StringMap, MAX_MAP_ENTRIES, MAX_VALUE_LEN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    /// Consul answered with at least one instance.
    Found,
    /// Consul answered `200 []`: the service is unknown (negative cache).
    Unknown,
    /// No good answer yet; only the backoff deadline matters.
    Failed,
}

/// A cache entry. Times are milliseconds since the Unix epoch (the host's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub status: EntryStatus,
    /// Served as a hit until then.
    pub fresh_until: u64,
    /// Served stale, with a background refresh, until then.
    pub stale_until: u64,
    /// No call to Consul for this service before then (error backoff).
    pub retry_after: u64,
    /// Consecutive failed calls; drives the backoff.
    pub failures: u32,
    /// `X-Consul-Index` of the answer.
    pub index: u64,
    pub instances: Vec<Instance>,
}

/// What to do with a request, given the entry for its service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Fresh data: enrich now.
    Hit,
    /// Old but usable data: enrich now; `refresh` says a background call is due.
    Stale { refresh: bool },
    /// The service is known to be absent: pass through.
    Negative,
    /// Consul failed recently: pass through without calling it.
    Backoff,
    /// Nothing usable: call Consul and wait.
    Miss,
}

impl Lookup {
    /// The `consul.lookup` attribute value.
    pub fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Negative => "unknown",
            Lookup::Stale { .. } => "stale",
            Lookup::Backoff => "error",
            Lookup::Miss => "miss",
        }
    }
}

fn secs(s: u32) -> u64 {
    u64::from(s) * 1000
}

/// Decides how to serve a request at `now`.
pub fn decide(entry: Option<&Entry>, now: u64) -> Lookup {
    let Some(e) = entry else {
        return Lookup::Miss;
    };
    let may_call = now >= e.retry_after;
    match e.status {
        EntryStatus::Found if now < e.fresh_until => Lookup::Hit,
        EntryStatus::Found if now < e.stale_until => Lookup::Stale { refresh: may_call },
        EntryStatus::Unknown if now < e.fresh_until => Lookup::Negative,
        _ if may_call => Lookup::Miss,
        _ => Lookup::Backoff,
    }
}

impl Entry {
    /// A good answer: fresh for `ttl_s`, then stale for `stale_s`. An empty answer is the
    /// negative entry, remembered for `negative_ttl_s`.
    pub fn from_answer(instances: Vec<Instance>, index: u64, now: u64, cfg: &CacheConfig) -> Entry {
        if instances.is_empty() {
            let until = now + secs(cfg.negative_ttl_s);
            return Entry {
                status: EntryStatus::Unknown,
                fresh_until: until,
                stale_until: until,
                retry_after: until,
                failures: 0,
                index,
                instances,
            };
        }
        let fresh_until = now + secs(cfg.ttl_s);
        Entry {
            status: EntryStatus::Found,
            fresh_until,
            stale_until: fresh_until + secs(cfg.stale_s),
            retry_after: fresh_until,
            failures: 0,
            index,
            instances,
        }
    }

    /// After a failed call: keep what we had (stale data stays usable until its own
    /// deadline) and back off exponentially, `backoff_s` doubling up to `max_backoff_s`.
    pub fn after_failure(previous: Option<Entry>, now: u64, cfg: &CacheConfig) -> Entry {
        let mut e = previous.unwrap_or(Entry {
            status: EntryStatus::Failed,
            fresh_until: 0,
            stale_until: 0,
            retry_after: 0,
            failures: 0,
            index: 0,
            instances: Vec::new(),
        });
        if e.status == EntryStatus::Unknown {
            e.status = EntryStatus::Failed;
            e.instances.clear();
        }
        let doublings = e.failures.min(16);
        let backoff = secs(cfg.backoff_s)
            .saturating_mul(1u64 << doublings)
            .min(secs(cfg.max_backoff_s));
        e.failures = e.failures.saturating_add(1);
        e.retry_after = now + backoff;
        e
    }

    /// The compact binary form stored in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.instances.len() * 160);
        out.push(FORMAT_VERSION);
        out.push(match self.status {
            EntryStatus::Found => 0,
            EntryStatus::Unknown => 1,
            EntryStatus::Failed => 2,
        });
        for v in [self.fresh_until, self.stale_until, self.retry_after] {
            put_varint(&mut out, v);
        }
        put_varint(&mut out, u64::from(self.failures));
        put_varint(&mut out, self.index);
        put_varint(&mut out, self.instances.len() as u64);
        for i in &self.instances {
            for s in [
                &i.node,
                &i.node_address,
                &i.datacenter,
                &i.service_id,
                &i.service_name,
                &i.service_address,
            ] {
                put_str(&mut out, s);
            }
            put_varint(&mut out, u64::from(i.service_port));
            put_varint(&mut out, i.modify_index);
            put_varint(&mut out, i.tags.len() as u64);
            for t in &i.tags {
                put_str(&mut out, t);
            }
            put_map(&mut out, &i.meta);
            put_map(&mut out, &i.node_meta);
        }
        out
    }

    /// Reads an entry written by [`Entry::encode`]. Anything else (another version, a
    /// truncated or corrupted value) is an error and the caller treats it as a miss.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.byte()? != FORMAT_VERSION {
            return Err(DecodeError);
        }
        let status = match r.byte()? {
            0 => EntryStatus::Found,
            1 => EntryStatus::Unknown,
            2 => EntryStatus::Failed,
            _ => return Err(DecodeError),
        };
        let fresh_until = r.varint()?;
        let stale_until = r.varint()?;
        let retry_after = r.varint()?;
        let failures = u32::try_from(r.varint()?).map_err(|_| DecodeError)?;
        let index = r.varint()?;
        let count = r.count(MAX_INSTANCES)?;
        let mut instances = Vec::with_capacity(count);
        for _ in 0..count {
            let node = r.string()?;
            let node_address = r.string()?;
            let datacenter = r.string()?;
            let service_id = r.string()?;
            let service_name = r.string()?;
            let service_address = r.string()?;
            let service_port = u16::try_from(r.varint()?).map_err(|_| DecodeError)?;
            let modify_index = r.varint()?;
            let tag_count = r.count(MAX_MAP_ENTRIES)?;
            let mut tags = Vec::with_capacity(tag_count);
            for _ in 0..tag_count {
                tags.push(r.string()?);
            }
            let meta = r.map()?;
            let node_meta = r.map()?;
            instances.push(Instance {
                node,
                node_address,
                datacenter,
                node_meta,
                service_id,
                service_name,
                service_address,
                service_port,
                tags,
                meta,
                modify_index,
            });
        }
        if r.pos != bytes.len() {
            return Err(DecodeError);
        }
        Ok(Entry {
            status,
            fresh_until,
            stale_until,
            retry_after,
            failures,
            index,
            instances,
        })
    }
}

const FORMAT_VERSION: u8 = 1;
/// Matches the largest `consul.max_instances` the configuration accepts.
const MAX_INSTANCES: usize = 1024;

/// The stored value is not an entry this version wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_map(out: &mut Vec<u8>, map: &StringMap) {
    put_varint(out, map.len() as u64);
    for (k, v) in map.iter() {
        put_str(out, k);
        put_str(out, v);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.bytes.get(self.pos).ok_or(DecodeError)?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(DecodeError);
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError)
    }

    fn count(&mut self, max: usize) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= max)
            .ok_or(DecodeError)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.count(MAX_VALUE_LEN)?;
        let end = self.pos.checked_add(len).ok_or(DecodeError)?;
        let slice = self.bytes.get(self.pos..end).ok_or(DecodeError)?;
        self.pos = end;
        core::str::from_utf8(slice)
            .map(str::to_owned)
            .map_err(|_| DecodeError)
    }

    fn map(&mut self) -> Result<StringMap, DecodeError> {
        let n = self.count(MAX_MAP_ENTRIES)?;
        let mut map = StringMap::default();
        for _ in 0..n {
            let k = self.string()?;
            let v = self.string()?;
            map.insert_if_absent(k, v);
        }
        if map.len() != n {
            return Err(DecodeError);
        }
        Ok(map)
    }
}

/// A refresh lease: the worker holding an unexpired lease is the one calling Consul for
/// that service. The value is the lease's expiry (ms, little endian).
pub fn encode_lease(expires_at: u64) -> [u8; 8] {
    expires_at.to_le_bytes()
}

/// The stored form of the gateway's count of services with an entry.
pub fn encode_count(count: u32) -> [u8; 4] {
    count.to_le_bytes()
}

/// A stored service count; malformed or absent values count as 0.
pub fn decode_count(value: Option<&[u8]>) -> u32 {
    value
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map_or(0, u32::from_le_bytes)
}

/// A stored lease's expiry; a lease is held until then. Malformed values count as free.
pub fn lease_expiry(value: Option<&[u8]>) -> Option<u64> {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn cfg() -> CacheConfig {
        CacheConfig {
            ttl_s: 30,
            stale_s: 300,
            negative_ttl_s: 10,
            backoff_s: 5,
            max_backoff_s: 60,
            ..CacheConfig::default()
        }
    }

    fn instance(id: &str) -> Instance {
        let mut meta = StringMap::default();
        meta.insert_if_absent("version".to_string(), "1.2.3".to_string());
        meta.insert_if_absent("region".to_string(), "eu-west-1".to_string());
        let mut node_meta = StringMap::default();
        node_meta.insert_if_absent("rack".to_string(), "r1".to_string());
        Instance {
            node: "node-1".into(),
            node_address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            node_meta,
            service_id: id.into(),
            service_name: "echo".into(),
            service_address: "10.0.0.2".into(),
            service_port: 8080,
            tags: vec!["primary".into(), "v1".into()],
            meta,
            modify_index: u64::MAX,
        }
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn fresh_then_stale_then_miss() {
        let e = Entry::from_answer(vec![instance("a")], 7, T0, &cfg());
        assert_eq!(decide(Some(&e), T0), Lookup::Hit);
        assert_eq!(decide(Some(&e), T0 + 29_999), Lookup::Hit);
        assert_eq!(
            decide(Some(&e), T0 + 30_000),
            Lookup::Stale { refresh: true }
        );
        assert_eq!(
            decide(Some(&e), T0 + 329_999),
            Lookup::Stale { refresh: true }
        );
        assert_eq!(decide(Some(&e), T0 + 330_000), Lookup::Miss);
        assert_eq!(decide(None, T0), Lookup::Miss);
    }

    #[test]
    fn empty_answer_is_negative_for_its_ttl() {
        let e = Entry::from_answer(vec![], 7, T0, &cfg());
        assert_eq!(e.status, EntryStatus::Unknown);
        assert_eq!(decide(Some(&e), T0 + 9_999), Lookup::Negative);
        assert_eq!(decide(Some(&e), T0 + 10_000), Lookup::Miss);
    }

    #[test]
    fn failure_without_data_backs_off_exponentially() {
        let c = cfg();
        let e1 = Entry::after_failure(None, T0, &c);
        assert_eq!(e1.status, EntryStatus::Failed);
        assert_eq!(decide(Some(&e1), T0 + 4_999), Lookup::Backoff);
        assert_eq!(decide(Some(&e1), T0 + 5_000), Lookup::Miss);
        let e2 = Entry::after_failure(Some(e1), T0 + 5_000, &c);
        assert_eq!(e2.retry_after, T0 + 5_000 + 10_000);
        let mut e = e2;
        for _ in 0..10 {
            e = Entry::after_failure(Some(e), T0, &c);
        }
        assert_eq!(e.retry_after, T0 + 60_000, "capped at max_backoff_s");
        let ok = Entry::from_answer(vec![instance("a")], 1, T0, &c);
        assert_eq!(ok.failures, 0);
    }

    #[test]
    fn failed_refresh_keeps_stale_data_and_stops_refreshing() {
        let c = cfg();
        let e = Entry::from_answer(vec![instance("a")], 7, T0, &c);
        let now = T0 + 40_000;
        let failed = Entry::after_failure(Some(e), now, &c);
        assert_eq!(failed.status, EntryStatus::Found);
        assert_eq!(
            decide(Some(&failed), now + 1),
            Lookup::Stale { refresh: false }
        );
        assert_eq!(
            decide(Some(&failed), now + 5_000),
            Lookup::Stale { refresh: true }
        );
        assert_eq!(failed.instances.len(), 1);
        // Past the stale window during a backoff: pass through, no call.
        let late = Entry {
            retry_after: T0 + 400_000,
            ..failed
        };
        assert_eq!(decide(Some(&late), T0 + 350_000), Lookup::Backoff);
    }

    #[test]
    fn failure_after_negative_becomes_failed() {
        let c = cfg();
        let e = Entry::from_answer(vec![], 7, T0, &c);
        let f = Entry::after_failure(Some(e), T0 + 20_000, &c);
        assert_eq!(f.status, EntryStatus::Failed);
        assert_eq!(decide(Some(&f), T0 + 20_001), Lookup::Backoff);
    }

    #[test]
    fn service_counts_round_trip_and_malformed_ones_are_zero() {
        assert_eq!(decode_count(Some(&encode_count(10_000))), 10_000);
        assert_eq!(decode_count(None), 0);
        assert_eq!(decode_count(Some(b"abc")), 0);
    }

    #[test]
    fn labels() {
        assert_eq!(Lookup::Hit.label(), "hit");
        assert_eq!(Lookup::Stale { refresh: false }.label(), "stale");
        assert_eq!(Lookup::Miss.label(), "miss");
        assert_eq!(Lookup::Backoff.label(), "error");
        assert_eq!(Lookup::Negative.label(), "unknown");
    }

    #[test]
    fn encoding_round_trips() {
        let c = cfg();
        for e in [
            Entry::from_answer(
                vec![instance("a"), instance("b"), Instance::default()],
                99,
                T0,
                &c,
            ),
            Entry::from_answer(vec![], 0, T0, &c),
            Entry::after_failure(None, T0, &c),
        ] {
            let bytes = e.encode();
            assert_eq!(Entry::decode(&bytes).unwrap(), e);
        }
    }

    #[test]
    fn encoding_is_compact() {
        let e = Entry::from_answer(vec![instance("echo-1")], 1, T0, &cfg());
        assert!(e.encode().len() < 160, "{}", e.encode().len());
    }

    #[test]
    fn corrupt_values_are_rejected() {
        let good = Entry::from_answer(vec![instance("a")], 1, T0, &cfg()).encode();
        assert_eq!(Entry::decode(&[]), Err(DecodeError));
        assert_eq!(Entry::decode(&[9, 0]), Err(DecodeError));
        for cut in 0..good.len() {
            assert_eq!(
                Entry::decode(&good[..cut]),
                Err(DecodeError),
                "cut at {cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(Entry::decode(&trailing), Err(DecodeError));
        let mut bad_status = good.clone();
        bad_status[1] = 7;
        assert_eq!(Entry::decode(&bad_status), Err(DecodeError));
        // A huge declared count must fail before allocating.
        let mut huge = vec![FORMAT_VERSION, 0, 0, 0, 0, 0, 0];
        put_varint(&mut huge, u64::MAX);
        assert_eq!(Entry::decode(&huge), Err(DecodeError));
        // Overlong varint.
        let over = [
            FORMAT_VERSION,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
        ];
        assert_eq!(Entry::decode(&over), Err(DecodeError));
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut e = Entry::from_answer(vec![instance("a")], 1, T0, &cfg()).encode();
        let pos = e.windows(6).position(|w| w == b"node-1").unwrap();
        e[pos] = 0xff;
        assert_eq!(Entry::decode(&e), Err(DecodeError));
    }

    #[test]
    fn leases() {
        assert_eq!(lease_expiry(None), None);
        assert_eq!(lease_expiry(Some(&encode_lease(T0 + 1))), Some(T0 + 1));
        assert_eq!(lease_expiry(Some(&encode_lease(0))), Some(0));
        assert_eq!(lease_expiry(Some(b"junk")), None);
    }
}
