//! `/echo` answers with what the request carried (the gateway's enrichment and the trace
//! context) and who answered; `/health` is Consul's check.
//!
//! Span attributes follow the OpenTelemetry HTTP server semantic conventions
//! (`http.request.method`, `url.path`, `url.scheme`, `http.route`,
//! `http.response.status_code`, `server.port`); the enrichment goes under `enrichment.*`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::get;
use axum::{Json, Router};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer};
use opentelemetry::KeyValue;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::trace::SdkTracer;
use serde::Serialize;

const ENRICHMENT_HEADER_PREFIX: &str = "x-consul-";
/// Baggage members recorded as attributes: the gateway's (`consul.*`) and the page's (`ui.*`).
const ENRICHMENT_BAGGAGE_PREFIXES: [&str; 2] = ["consul.", "ui."];
const ECHO_ROUTE: &str = "/echo";

/// Who answered: the same values as the Consul registration's ID and `Meta`.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub service: String,
    pub id: String,
    pub version: String,
    pub region: Option<String>,
}

pub struct EchoState {
    pub instance: Instance,
    pub port: u16,
    pub tracer: SdkTracer,
    pub propagator: TextMapCompositePropagator,
    /// Waited inside the server span before answering (`RESPONSE_DELAY_MS`).
    pub response_delay: Duration,
}

pub fn router(state: Arc<EchoState>) -> Router {
    Router::new()
        .route(ECHO_ROUTE, get(echo).post(echo))
        .route("/health", get(health))
        .with_state(state)
}

async fn health() -> &'static str {
    "ok"
}

#[derive(Debug, Serialize)]
struct EchoResponse {
    method: String,
    path: String,
    /// The `x-consul-*` headers, by lower-case name; repeated headers joined with `,`.
    headers: BTreeMap<String, String>,
    /// The `traceparent` header as received, valid or not.
    traceparent: Option<String>,
    /// The baggage members the W3C propagator accepted.
    baggage: BTreeMap<String, String>,
    body_bytes: usize,
    /// The ids of this service's server span: the incoming trace id when a valid
    /// `traceparent` came in, a new one otherwise.
    trace_id: String,
    span_id: String,
    instance: Instance,
}

async fn echo(
    State(state): State<Arc<EchoState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Json<EchoResponse>) {
    let incoming = state.propagator.extract(&HeaderExtractor(&headers));
    let enrichment_headers = enrichment_headers(&headers);
    let baggage: BTreeMap<String, String> = incoming
        .baggage()
        .iter()
        .map(|(key, (value, _metadata))| (key.to_string(), value.to_string()))
        .collect();

    let mut attributes = vec![
        KeyValue::new("http.request.method", method.to_string()),
        KeyValue::new("url.path", uri.path().to_owned()),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("http.route", ECHO_ROUTE),
        KeyValue::new("server.port", i64::from(state.port)),
    ];
    attributes.extend(
        enrichment_headers
            .iter()
            .map(|(name, value)| KeyValue::new(format!("enrichment.header.{name}"), value.clone())),
    );
    attributes.extend(
        baggage
            .iter()
            .filter(|(key, _)| is_enrichment_baggage_key(key))
            .map(|(key, value)| KeyValue::new(format!("enrichment.baggage.{key}"), value.clone())),
    );

    let server_span = state
        .tracer
        .span_builder(format!("{method} {ECHO_ROUTE}"))
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(&state.tracer, &incoming);
    let request_cx = incoming.with_span(server_span);
    let span_context = request_cx.span().span_context().clone();

    let mut build_span = state
        .tracer
        .start_with_context("build echo response", &request_cx);
    let response = EchoResponse {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers: enrichment_headers,
        traceparent: headers
            .get("traceparent")
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
        baggage,
        body_bytes: body.len(),
        trace_id: span_context.trace_id().to_string(),
        span_id: span_context.span_id().to_string(),
        instance: state.instance.clone(),
    };
    build_span.end();
    if !state.response_delay.is_zero() {
        tokio::time::sleep(state.response_delay).await;
    }

    let status = StatusCode::OK;
    let span = request_cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    span.end();
    (status, Json(response))
}

fn enrichment_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut enrichment: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        if !name.starts_with(ENRICHMENT_HEADER_PREFIX) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        enrichment
            .entry(name.to_owned())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    enrichment
}

fn is_enrichment_baggage_key(key: &str) -> bool {
    ENRICHMENT_BAGGAGE_PREFIXES
        .iter()
        .any(|prefix| key.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn repeated_enrichment_headers_are_joined_and_others_ignored() {
        let mut headers = HeaderMap::new();
        headers.append("x-consul-meta-version", HeaderValue::from_static("1.0"));
        headers.append("x-consul-meta-version", HeaderValue::from_static("2.0"));
        headers.append("x-consul-service", HeaderValue::from_static("echo"));
        headers.append("x-request-id", HeaderValue::from_static("abc"));
        let enrichment = enrichment_headers(&headers);
        assert_eq!(
            enrichment,
            BTreeMap::from([
                ("x-consul-meta-version".to_owned(), "1.0,2.0".to_owned()),
                ("x-consul-service".to_owned(), "echo".to_owned()),
            ])
        );
    }

    #[test]
    fn only_gateway_and_page_baggage_is_enrichment() {
        assert!(is_enrichment_baggage_key("consul.service.meta.version"));
        assert!(is_enrichment_baggage_key("ui.component"));
        assert!(!is_enrichment_baggage_key("userId"));
        assert!(!is_enrichment_baggage_key("consulservice"));
    }
}
