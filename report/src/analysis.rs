//! What the report says of the clicks: latency by group, and which attribute values the
//! slow clicks have more often than clicks in general (the idea of Honeycomb's BubbleUp:
//! compare each value's share among the slow ones with its share among all).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clicks::{Click, Clicks, Dimension};
use crate::stats::{milliseconds, percentile, Latency};

/// One group of the latency table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Attribute name to value, for each dimension grouped by.
    pub group: BTreeMap<&'static str, String>,
    pub clicks: Latency,
    /// Latency of the joined gateway spans; `None` when no click of the group has one.
    pub gateway: Option<Latency>,
}

/// Click and gateway latency grouped by `by`, groups in order of their values.
pub fn latency_table(clicks: &Clicks, by: &[Dimension]) -> Vec<Row> {
    let mut groups: BTreeMap<Vec<&str>, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
    for click in &clicks.clicks {
        let key = by
            .iter()
            .map(|d| clicks.value_name(click.value(*d)))
            .collect();
        let (durations, gateway) = groups.entry(key).or_default();
        durations.push(click.duration_ns);
        gateway.extend(click.gateway_ns);
    }
    groups
        .into_iter()
        .filter_map(|(key, (mut durations, mut gateway))| {
            Some(Row {
                group: by
                    .iter()
                    .zip(key)
                    .map(|(d, value)| (d.attribute(), value.to_owned()))
                    .collect(),
                clicks: Latency::of(&mut durations)?,
                gateway: Latency::of(&mut gateway),
            })
        })
        .collect()
}

/// How often one attribute value occurs among slow clicks and among all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Share {
    pub dimension: Dimension,
    pub attribute: &'static str,
    pub value: String,
    pub slow_clicks: usize,
    pub clicks: usize,
    /// Of the slow clicks, the fraction with this value.
    pub slow_share: f64,
    /// Of all clicks, the fraction with this value.
    pub share: f64,
    /// `slow_share - share`: how much more common the value is among slow clicks.
    pub difference: f64,
}

/// A dimension's power to separate slow clicks: its largest difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DimensionScore {
    pub dimension: Dimension,
    pub attribute: &'static str,
    pub difference: f64,
}

/// The value that best separates slow clicks, and what more there is to say of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cause {
    #[serde(flatten)]
    pub share: Share,
    /// Other attributes with one value on all the cause's clicks, a value that fewer than
    /// half of all clicks have: for an instance, its version and region.
    pub alike: BTreeMap<&'static str, String>,
    /// Among the cause's clicks, what best separates their own slow ones (above the same
    /// percentile of their latency), e.g. one instance of a slow version.
    pub within: Option<Within>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Within {
    pub threshold_ms: f64,
    #[serde(flatten)]
    pub share: Share,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Separation {
    pub percentile: f64,
    /// Clicks slower than this are slow.
    pub threshold_ms: f64,
    pub slow_clicks: usize,
    pub clicks: usize,
    /// Best separating first.
    pub dimensions: Vec<DimensionScore>,
    /// Largest difference first.
    pub shares: Vec<Share>,
    /// `None` when no click is slower than the threshold.
    pub cause: Option<Cause>,
}

/// When two values separate equally well, the one named first is the one the report is
/// about (versions), then the finer place (instance), then the coarser ones.
fn preference(dimension: Dimension) -> usize {
    match dimension {
        Dimension::Version => 0,
        Dimension::Instance => 1,
        Dimension::Region => 2,
        Dimension::Datacenter => 3,
        Dimension::Component => 4,
        Dimension::Lookup => 5,
    }
}

/// Differences rounded so that equal fractions computed two ways compare equal.
fn ordering_key(share: &Share) -> (i64, usize, String) {
    (
        -(share.difference * 1e9).round() as i64,
        preference(share.dimension),
        share.value.clone(),
    )
}

/// Each value's share among the clicks slower than `threshold_ns` and among all `clicks`,
/// for `dimensions`, largest difference first.
fn shares(
    all: &Clicks,
    clicks: &[&Click],
    threshold_ns: u64,
    dimensions: &[Dimension],
) -> Vec<Share> {
    let slow_total = clicks
        .iter()
        .filter(|c| c.duration_ns > threshold_ns)
        .count();
    let mut shares = Vec::new();
    for dimension in dimensions {
        let mut counts: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
        for click in clicks {
            let (slow, every) = counts.entry(click.value(*dimension)).or_default();
            *every += 1;
            if click.duration_ns > threshold_ns {
                *slow += 1;
            }
        }
        for (value, (slow, every)) in counts {
            let slow_share = fraction(slow, slow_total);
            let share = fraction(every, clicks.len());
            shares.push(Share {
                dimension: *dimension,
                attribute: dimension.attribute(),
                value: all.value_name(value).to_owned(),
                slow_clicks: slow,
                clicks: every,
                slow_share,
                share,
                difference: slow_share - share,
            });
        }
    }
    shares.sort_by_key(ordering_key);
    shares
}

fn fraction(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The nearest-rank `percentile` of the clicks' latency.
fn threshold(clicks: &[&Click], at: f64) -> Option<u64> {
    let mut durations: Vec<u64> = clicks.iter().map(|c| c.duration_ns).collect();
    durations.sort_unstable();
    percentile(&durations, at)
}

/// Which attribute values are more common among the clicks slower than `at` percent of
/// all than among all clicks; `None` without clicks.
pub fn separate(all: &Clicks, at: f64) -> Option<Separation> {
    let clicks: Vec<&Click> = all.clicks.iter().collect();
    let threshold_ns = threshold(&clicks, at)?;
    let shares = shares(all, &clicks, threshold_ns, &Dimension::ALL);
    let dimensions = dimension_scores(&shares);
    let slow_clicks = clicks
        .iter()
        .filter(|c| c.duration_ns > threshold_ns)
        .count();
    let cause = shares
        .first()
        .filter(|best| slow_clicks > 0 && best.difference > 0.0)
        .map(|best| explain(all, best, at));
    Some(Separation {
        percentile: at,
        threshold_ms: milliseconds(threshold_ns),
        slow_clicks,
        clicks: clicks.len(),
        dimensions,
        shares,
        cause,
    })
}

fn dimension_scores(shares: &[Share]) -> Vec<DimensionScore> {
    // `shares` is sorted: a dimension's first share is its best.
    let mut scores: Vec<DimensionScore> = Vec::new();
    for share in shares {
        if scores.iter().all(|s| s.dimension != share.dimension) {
            scores.push(DimensionScore {
                dimension: share.dimension,
                attribute: share.attribute,
                difference: share.difference,
            });
        }
    }
    scores
}

/// The cause's alike attributes and its own best separating value.
fn explain(all: &Clicks, cause: &Share, at: f64) -> Cause {
    let members: Vec<&Click> = all
        .clicks
        .iter()
        .filter(|c| all.value_name(c.value(cause.dimension)) == cause.value)
        .collect();
    let others: Vec<Dimension> = Dimension::ALL
        .into_iter()
        .filter(|d| *d != cause.dimension)
        .collect();
    let alike = others
        .iter()
        .filter_map(|dimension| {
            let value = members.first()?.value(*dimension);
            let same_in_cause = members.iter().all(|c| c.value(*dimension) == value);
            let elsewhere = all
                .clicks
                .iter()
                .filter(|c| c.value(*dimension) == value)
                .count();
            // A value most clicks have (a cache hit, the one datacenter) says nothing.
            let telling = elsewhere * 2 < all.clicks.len();
            (same_in_cause && telling)
                .then(|| (dimension.attribute(), all.value_name(value).to_owned()))
        })
        .collect();
    let within = threshold(&members, at).and_then(|threshold_ns| {
        let best = shares(all, &members, threshold_ns, &others)
            .into_iter()
            .next()
            .filter(|best| best.slow_clicks > 0 && best.difference > 0.0)?;
        Some(Within {
            threshold_ms: milliseconds(threshold_ns),
            share: best,
        })
    });
    Cause {
        share: cause.clone(),
        alike,
        within,
    }
}

/// The `count` slowest clicks, slowest first.
pub fn slowest(clicks: &Clicks, count: usize) -> Vec<&Click> {
    let mut sorted: Vec<&Click> = clicks.clicks.iter().collect();
    sorted.sort_by_key(|c| std::cmp::Reverse(c.duration_ns));
    sorted.truncate(count);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clicks::tests::{resource, span, ALL_TIME, SPANS};
    use crate::otlp_json::TracesData;

    /// Clicks of `ms` each, with a gateway span of half that carrying `attributes`.
    fn add(
        clicks: &mut Clicks,
        first_trace: u128,
        count: usize,
        ms: u64,
        attributes: &[(&str, &str)],
    ) {
        let mut browser = Vec::new();
        let mut gateway = Vec::new();
        for n in 0..count {
            let trace = first_trace + n as u128;
            // A little spread, so percentiles are not all ties.
            let ms = ms + n as u64 % 3;
            browser.push(span(
                trace,
                "checkout.submit",
                1000,
                ms,
                &[(
                    "ui.component",
                    if n.is_multiple_of(2) {
                        "form"
                    } else {
                        "button"
                    },
                )],
            ));
            gateway.push(span(trace, "ingress", 1001, ms / 2, attributes));
        }
        let page = TracesData {
            resource_spans: vec![
                resource("checkout-web", browser),
                resource("envoy-gateway", gateway),
            ],
        };
        clicks.add_page(&page, &SPANS, ALL_TIME).expect("joins");
    }

    const FAST: &[(&str, &str)] = &[
        ("consul.service.id", "echo-1"),
        ("consul.service.meta.version", "1.4.2"),
        ("consul.service.meta.region", "eu-west-1"),
        ("consul.datacenter", "dc1"),
        ("consul.lookup", "hit"),
    ];
    const SLOW: &[(&str, &str)] = &[
        ("consul.service.id", "echo-2"),
        ("consul.service.meta.version", "2.0.0"),
        ("consul.service.meta.region", "us-east-1"),
        ("consul.datacenter", "dc1"),
        ("consul.lookup", "hit"),
    ];
    const SLOWER: &[(&str, &str)] = &[
        ("consul.service.id", "echo-3"),
        ("consul.service.meta.version", "2.0.0"),
        ("consul.service.meta.region", "us-east-1"),
        ("consul.datacenter", "dc1"),
        ("consul.lookup", "hit"),
    ];

    /// 90 clicks on 1.4.2 at ~100 ms, 5 on 2.0.0's echo-2 at ~500 ms, 5 on its echo-3 at ~800 ms.
    fn scenario() -> Clicks {
        let mut clicks = Clicks::default();
        add(&mut clicks, 1, 90, 100, FAST);
        add(&mut clicks, 1000, 5, 500, SLOW);
        add(&mut clicks, 2000, 5, 800, SLOWER);
        clicks
    }

    #[test]
    fn latency_by_component_and_version() {
        let clicks = scenario();
        let rows = latency_table(&clicks, &[Dimension::Component, Dimension::Version]);
        let groups: Vec<(String, String, usize)> = rows
            .iter()
            .map(|r| {
                (
                    r.group["ui.component"].clone(),
                    r.group["consul.service.meta.version"].clone(),
                    r.clicks.count,
                )
            })
            .collect();
        assert_eq!(
            groups,
            [
                ("button".into(), "1.4.2".into(), 45),
                ("button".into(), "2.0.0".into(), 4),
                ("form".into(), "1.4.2".into(), 45),
                ("form".into(), "2.0.0".into(), 6),
            ]
        );
        let form_v2 = &rows[3];
        // echo-2 (500, 502, 501) and echo-3 (800, 802, 801): nearest rank 3 of 6 is 502 ms.
        assert_eq!(form_v2.clicks.p50_ms, 502.0);
        assert_eq!(form_v2.clicks.max_ms, 802.0);
        assert_eq!(form_v2.gateway.as_ref().map(|g| g.max_ms), Some(401.0));
    }

    #[test]
    fn the_slow_version_separates_slow_clicks_and_its_slowest_instance_within_it() {
        let clicks = scenario();
        let separation = separate(&clicks, 90.0).expect("clicks");
        // p90 of 100 clicks is the 90th: the slowest 1.4.2 click; the 10 on 2.0.0 are slower.
        assert_eq!(separation.threshold_ms, 102.0);
        assert_eq!(separation.slow_clicks, 10);
        let first = &separation.shares[0];
        assert_eq!(
            (first.attribute, first.value.as_str()),
            ("consul.service.meta.version", "2.0.0")
        );
        assert_eq!((first.slow_share, first.share), (1.0, 0.1));
        assert!((first.difference - 0.9).abs() < 1e-9);
        // The region says as much, but the version is named first.
        assert_eq!(
            (
                separation.shares[1].attribute,
                separation.shares[1].value.as_str()
            ),
            ("consul.service.meta.region", "us-east-1")
        );
        assert_eq!(separation.dimensions[0].dimension, Dimension::Version);
        // The UI component and datacenter do not separate.
        let component = separation
            .dimensions
            .iter()
            .find(|d| d.dimension == Dimension::Component)
            .expect("scored");
        assert!(component.difference < 0.15, "{component:?}");
        let datacenter = separation
            .dimensions
            .iter()
            .find(|d| d.dimension == Dimension::Datacenter)
            .expect("scored");
        assert_eq!(datacenter.difference, 0.0);

        let cause = separation.cause.expect("a cause");
        assert_eq!(cause.share.value, "2.0.0");
        assert_eq!(
            cause.alike,
            BTreeMap::from([("consul.service.meta.region", "us-east-1".to_owned())])
        );
        let within = cause.within.expect("an instance within");
        assert_eq!(
            (within.share.attribute, within.share.value.as_str()),
            ("consul.service.id", "echo-3")
        );
        assert_eq!(within.share.slow_share, 1.0);
    }

    #[test]
    fn no_cause_when_no_click_is_slower_than_the_percentile() {
        let mut clicks = Clicks::default();
        let mut page = TracesData::default();
        page.resource_spans.push(resource(
            "checkout-web",
            (1..=4)
                .map(|t| span(t, "checkout.submit", 0, 100, &[]))
                .collect(),
        ));
        clicks.add_page(&page, &SPANS, ALL_TIME).expect("joins");
        let separation = separate(&clicks, 90.0).expect("clicks");
        assert_eq!(separation.slow_clicks, 0);
        assert_eq!(separation.cause, None);
        assert_eq!(separate(&Clicks::default(), 90.0), None);
    }

    #[test]
    fn the_slowest_clicks_come_first() {
        let clicks = scenario();
        let ids: Vec<u128> = slowest(&clicks, 3).iter().map(|c| c.trace_id).collect();
        // echo-3's 802 ms, then its two 801 ms clicks in the order they came.
        assert_eq!(ids, [2002, 2001, 2004]);
    }
}
