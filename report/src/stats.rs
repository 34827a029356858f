//! Latency percentiles by the nearest-rank method: every percentile is a latency that was
//! measured.

use serde::Serialize;

/// The nearest-rank `percentile` (0 < p <= 100) of ascending `sorted` values.
pub fn percentile(sorted: &[u64], percentile: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (percentile / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Count and percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub fn milliseconds(nanoseconds: u64) -> f64 {
    nanoseconds as f64 / 1e6
}

impl Latency {
    /// Sorts `values` (nanoseconds) and summarises them; `None` when there are none.
    pub fn of(values: &mut [u64]) -> Option<Latency> {
        values.sort_unstable();
        let at = |p| percentile(values, p).map(milliseconds);
        Some(Latency {
            count: values.len(),
            p50_ms: at(50.0)?,
            p95_ms: at(95.0)?,
            p99_ms: at(99.0)?,
            max_ms: at(100.0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&values, 90.0), Some(90));
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 100.0), Some(100));
        assert_eq!(percentile(&[7], 1.0), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_summary_in_milliseconds() {
        let mut values = vec![3_000_000, 1_000_000, 2_000_000, 100_000_000];
        let latency = Latency::of(&mut values).expect("values");
        assert_eq!(
            latency,
            Latency {
                count: 4,
                p50_ms: 2.0,
                p95_ms: 100.0,
                p99_ms: 100.0,
                max_ms: 100.0
            }
        );
        assert_eq!(Latency::of(&mut []), None);
    }
}
