//! Clicks joined to their gateway span, kept small: per click its two durations, its
//! trace id and one number per attribute value.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::jaeger::Window;
use crate::otlp_json::TracesData;

/// What a click is grouped and compared by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dimension {
    /// `ui.component` of the click (or of the gateway span, which reads it from baggage).
    Component,
    /// `consul.service.meta.version` of the gateway span.
    Version,
    /// `consul.service.id`: the instance that answered.
    Instance,
    /// `consul.service.meta.region`.
    Region,
    /// `consul.datacenter`.
    Datacenter,
    /// `consul.lookup`: how the filter got the metadata (hit, miss, stale, error).
    Lookup,
}

impl Dimension {
    pub const ALL: [Dimension; 6] = [
        Dimension::Component,
        Dimension::Version,
        Dimension::Instance,
        Dimension::Region,
        Dimension::Datacenter,
        Dimension::Lookup,
    ];

    pub fn attribute(self) -> &'static str {
        match self {
            Dimension::Component => "ui.component",
            Dimension::Version => "consul.service.meta.version",
            Dimension::Instance => "consul.service.id",
            Dimension::Region => "consul.service.meta.region",
            Dimension::Datacenter => "consul.datacenter",
            Dimension::Lookup => "consul.lookup",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The number standing for an attribute value in a [`Click`].
pub type ValueId = u32;

/// Shown for an attribute a click or its gateway span does not carry.
pub const MISSING: &str = "(none)";

/// Attribute values, each stored once.
#[derive(Debug)]
pub struct Values {
    names: Vec<String>,
    ids: HashMap<String, ValueId>,
}

impl Default for Values {
    fn default() -> Self {
        let mut values = Values {
            names: Vec::new(),
            ids: HashMap::new(),
        };
        values.id(MISSING);
        values
    }
}

impl Values {
    pub fn id(&mut self, name: &str) -> ValueId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = ValueId::try_from(self.names.len()).unwrap_or(ValueId::MAX);
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        id
    }

    pub fn name(&self, id: ValueId) -> &str {
        self.names.get(id as usize).map_or(MISSING, String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub trace_id: u128,
    pub duration_ns: u64,
    /// The gateway span's duration; `None` when the trace has no span with
    /// `consul.service.id`.
    pub gateway_ns: Option<u64>,
    values: [ValueId; Dimension::ALL.len()],
}

impl Click {
    pub fn value(&self, dimension: Dimension) -> ValueId {
        self.values[dimension.index()]
    }
}

/// Every click of a report with the values they name.
#[derive(Debug, Default)]
pub struct Clicks {
    pub clicks: Vec<Click>,
    pub values: Values,
    /// Traces with at least one click.
    pub traces: usize,
}

/// Which spans are clicks.
pub struct ClickSpans<'a> {
    pub service: &'a str,
    pub operation: &'a str,
}

/// A gateway span's part of the join.
struct GatewaySpan {
    duration_ns: u64,
    values: [Option<String>; Dimension::ALL.len()],
}

impl Clicks {
    pub fn value_name(&self, id: ValueId) -> &str {
        self.values.name(id)
    }

    /// Adds the clicks of one page: each click span of `spans` that started in `window`,
    /// joined by trace id to the span of the same trace that carries `consul.service.id`
    /// (the longest one if several do: the gateway's request span rather than a span
    /// inside it).
    pub fn add_page(
        &mut self,
        page: &TracesData,
        spans: &ClickSpans,
        window: Window,
    ) -> Result<()> {
        let mut traces: HashMap<u128, Option<GatewaySpan>> = HashMap::new();
        let mut found: Vec<(u128, u64, Option<String>)> = Vec::new();
        for resource in &page.resource_spans {
            let is_browser = resource.service_name() == Some(spans.service);
            for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                let trace_id = u128::from_str_radix(&span.trace_id, 16).with_context(|| {
                    format!(
                        "a span of Jaeger's answer has the trace id {:?}, not 32 hex digits",
                        span.trace_id
                    )
                })?;
                let gateway = traces.entry(trace_id).or_default();
                if is_browser && span.name == spans.operation {
                    if window.contains(span.start_time_unix_nano) {
                        found.push((
                            trace_id,
                            span.duration_ns(),
                            span.attribute(Dimension::Component.attribute()),
                        ));
                    }
                } else if span.attribute(Dimension::Instance.attribute()).is_some()
                    && gateway
                        .as_ref()
                        .is_none_or(|kept| kept.duration_ns < span.duration_ns())
                {
                    *gateway = Some(GatewaySpan {
                        duration_ns: span.duration_ns(),
                        values: Dimension::ALL.map(|d| span.attribute(d.attribute())),
                    });
                }
            }
        }
        let mut with_clicks: Vec<u128> = found.iter().map(|(trace_id, ..)| *trace_id).collect();
        with_clicks.sort_unstable();
        with_clicks.dedup();
        self.traces += with_clicks.len();
        for (trace_id, duration_ns, component) in found {
            let gateway = traces.get(&trace_id).and_then(Option::as_ref);
            let values = Dimension::ALL.map(|dimension| {
                let from_click = match dimension {
                    Dimension::Component => component.as_deref(),
                    _ => None,
                };
                let from_gateway = gateway.and_then(|g| g.values[dimension.index()].as_deref());
                self.values
                    .id(from_click.or(from_gateway).unwrap_or(MISSING))
            });
            self.clicks.push(Click {
                trace_id,
                duration_ns,
                gateway_ns: gateway.map(|g| g.duration_ns),
                values,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::otlp_json::{AnyValue, KeyValue, Resource, ResourceSpans, ScopeSpans, Span};

    pub fn text(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: AnyValue {
                string_value: Some(value.to_owned()),
                ..Default::default()
            },
        }
    }

    pub fn span(
        trace: u128,
        name: &str,
        start_ms: u64,
        ms: u64,
        attributes: &[(&str, &str)],
    ) -> Span {
        Span {
            trace_id: format!("{trace:032x}"),
            name: name.to_owned(),
            start_time_unix_nano: start_ms * 1_000_000,
            end_time_unix_nano: (start_ms + ms) * 1_000_000,
            attributes: attributes.iter().map(|(k, v)| text(k, v)).collect(),
        }
    }

    pub fn resource(service: &str, spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: Resource {
                attributes: vec![text("service.name", service)],
            },
            scope_spans: vec![ScopeSpans { spans }],
        }
    }

    pub const SPANS: ClickSpans<'static> = ClickSpans {
        service: "checkout-web",
        operation: "checkout.submit",
    };

    pub const ALL_TIME: Window = Window {
        start_ns: 0,
        end_ns: u64::MAX,
    };

    fn names(clicks: &Clicks, click: &Click) -> Vec<String> {
        Dimension::ALL
            .iter()
            .map(|d| clicks.value_name(click.value(*d)).to_owned())
            .collect()
    }

    #[test]
    fn a_click_is_joined_to_the_gateway_span_of_its_trace() {
        let page = TracesData {
            resource_spans: vec![
                resource(
                    "checkout-web",
                    vec![
                        span(
                            1,
                            "checkout.submit",
                            1000,
                            120,
                            &[("ui.component", "checkout-form")],
                        ),
                        span(1, "POST", 1001, 110, &[]),
                        span(2, "checkout.submit", 2000, 300, &[]),
                    ],
                ),
                resource(
                    "api-gateway",
                    vec![
                        span(
                            1,
                            "consul-enricher echo",
                            1002,
                            14,
                            &[("consul.service.id", "echo-1"), ("consul.lookup", "hit")],
                        ),
                        // Kong's request span around it, with the same attributes: the longer one counts.
                        span(
                            1,
                            "kong",
                            1001,
                            100,
                            &[
                                ("consul.service.id", "echo-1"),
                                ("consul.service.meta.version", "1.4.2"),
                                ("consul.service.meta.region", "eu-west-1"),
                                ("consul.datacenter", "dc1"),
                                ("consul.lookup", "miss"),
                            ],
                        ),
                    ],
                ),
                resource("echo", vec![span(1, "POST /echo", 1003, 5, &[])]),
            ],
        };
        let mut clicks = Clicks::default();
        clicks.add_page(&page, &SPANS, ALL_TIME).expect("joins");
        assert_eq!((clicks.clicks.len(), clicks.traces), (2, 2));
        let joined = &clicks.clicks[0];
        assert_eq!(
            (joined.trace_id, joined.duration_ns, joined.gateway_ns),
            (1, 120_000_000, Some(100_000_000))
        );
        assert_eq!(
            names(&clicks, joined),
            [
                "checkout-form",
                "1.4.2",
                "echo-1",
                "eu-west-1",
                "dc1",
                "miss"
            ]
        );
        // A click whose trace never reached a gateway is kept, with no gateway values.
        let alone = &clicks.clicks[1];
        assert_eq!((alone.trace_id, alone.gateway_ns), (2, None));
        assert_eq!(names(&clicks, alone), [MISSING; 6]);
    }

    #[test]
    fn only_clicks_that_started_in_the_window_count() {
        let page = TracesData {
            resource_spans: vec![resource(
                "checkout-web",
                vec![
                    span(1, "checkout.submit", 999, 10, &[]),
                    span(2, "checkout.submit", 1000, 10, &[]),
                    span(3, "checkout.submit", 1999, 10, &[]),
                    span(4, "checkout.submit", 2000, 10, &[]),
                    span(5, "other", 1500, 10, &[]),
                ],
            )],
        };
        let mut clicks = Clicks::default();
        let window = Window {
            start_ns: 1_000_000_000,
            end_ns: 2_000_000_000,
        };
        clicks.add_page(&page, &SPANS, window).expect("joins");
        let ids: Vec<u128> = clicks.clicks.iter().map(|c| c.trace_id).collect();
        assert_eq!(ids, [2, 3]);
    }

    #[test]
    fn a_bad_trace_id_is_an_error() {
        let mut bad = span(1, "checkout.submit", 0, 1, &[]);
        bad.trace_id = "not-hex".to_owned();
        let page = TracesData {
            resource_spans: vec![resource("checkout-web", vec![bad])],
        };
        let error = Clicks::default()
            .add_page(&page, &SPANS, ALL_TIME)
            .expect_err("refused");
        assert!(error.to_string().contains("not-hex"), "{error}");
    }
}
