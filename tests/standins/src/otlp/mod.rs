//! Stand-in for an OpenTelemetry collector's OTLP/HTTP trace receiver with Jaeger's query API
//! in front of what it received.
//!
//! Follows:
//! - OTLP specification (open-telemetry/opentelemetry-proto, docs/specification.md),
//!   "OTLP/HTTP": `POST /v1/traces` carrying `ExportTraceServiceRequest` as binary protobuf
//!   (`application/x-protobuf`) or JSON (`application/json`, see the `json` module), optionally
//!   `Content-Encoding: gzip`; the body is limited to 20 MiB after decompression (413
//!   above); success is `200` with an empty `ExportTraceServiceResponse` in the request's
//!   encoding; bad data is `400` with a `google.rpc.Status` body in that encoding; an
//!   unsupported content type is `415`.
//! - Fetch standard, "CORS protocol": preflight `OPTIONS` answered `204` with the requested
//!   method and headers allowed; `Access-Control-Allow-Origin` echoes the `Origin`, as the
//!   collector's `cors.allowed_origins: ["*"]` does for browser exporters.
//! - Jaeger query service HTTP JSON API (as served by Jaeger's UI backend, see
//!   the `jaeger` module): `GET /api/traces/<trace-id>`, `GET /api/traces?service=<name>`,
//!   `GET /api/services`.
//! - Jaeger's query API v3 over HTTP (see the `api_v3` module): `GET /api/v3/traces`,
//!   `GET /api/v3/services`, `GET /api/v3/operations`.
//!
//! The stand-in is stricter than a collector in one way, to catch exporter bugs: a span
//! whose trace or span id has the wrong length or is all zeroes (invalid per the trace
//! proto) makes the whole request a `400`.

mod api_v3;
mod jaeger;
mod json;

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flate2::read::GzDecoder;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message;

use crate::fault::{self, Fault, FaultPlan};
use crate::lock;
use crate::server::{read_body, response, text, Handler, LoopbackServer, Reply, ReplyFuture};

/// The OTLP specification's recommended request size limit, after decompression.
const MAX_BODY: usize = 20 << 20;
const TRACES_PATH: &str = "/v1/traces";

/// An attribute value, as OTLP's `AnyValue`.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Empty,
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttributeValue>),
    Map(BTreeMap<String, AttributeValue>),
}

impl AttributeValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttributeValue::String(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttributeValue::Int(number) => Some(*number),
            _ => None,
        }
    }

    fn from_proto(value: Option<&AnyValue>) -> Self {
        match value.and_then(|v| v.value.as_ref()) {
            None => AttributeValue::Empty,
            Some(any_value::Value::StringValue(text)) => AttributeValue::String(text.clone()),
            Some(any_value::Value::BoolValue(flag)) => AttributeValue::Bool(*flag),
            Some(any_value::Value::IntValue(number)) => AttributeValue::Int(*number),
            Some(any_value::Value::DoubleValue(number)) => AttributeValue::Double(*number),
            Some(any_value::Value::BytesValue(bytes)) => AttributeValue::Bytes(bytes.clone()),
            Some(any_value::Value::ArrayValue(array)) => AttributeValue::Array(
                array
                    .values
                    .iter()
                    .map(|v| Self::from_proto(Some(v)))
                    .collect(),
            ),
            Some(any_value::Value::KvlistValue(list)) => {
                AttributeValue::Map(attribute_map(&list.values))
            }
        }
    }
}

fn attribute_map(attributes: &[KeyValue]) -> BTreeMap<String, AttributeValue> {
    attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                AttributeValue::from_proto(kv.value.as_ref()),
            )
        })
        .collect()
}

/// How an export arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: BTreeMap<String, AttributeValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpanLink {
    pub trace_id: String,
    pub span_id: String,
    pub attributes: BTreeMap<String, AttributeValue>,
}

/// A received span with its resource and scope; ids are lowercase hex.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSpan {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub trace_state: String,
    pub flags: u32,
    pub name: String,
    /// OTLP `SpanKind`: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: BTreeMap<String, AttributeValue>,
    pub events: Vec<SpanEvent>,
    pub links: Vec<SpanLink>,
    /// OTLP `StatusCode`: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub resource: BTreeMap<String, AttributeValue>,
    pub scope_name: String,
    pub scope_version: String,
    pub encoding: Encoding,
}

impl StoredSpan {
    pub fn attribute(&self, key: &str) -> Option<&AttributeValue> {
        self.attributes.get(key)
    }

    /// A string attribute's value.
    pub fn string_attribute(&self, key: &str) -> Option<&str> {
        self.attribute(key).and_then(AttributeValue::as_str)
    }

    /// The `service.name` resource attribute.
    pub fn service_name(&self) -> Option<&str> {
        self.resource
            .get("service.name")
            .and_then(AttributeValue::as_str)
    }
}

/// One `POST /v1/traces` as received, accepted or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportAttempt {
    pub content_type: String,
    pub content_encoding: Option<String>,
    pub origin: Option<String>,
    /// The status answered.
    pub status: u16,
    /// Spans stored from this request.
    pub spans: usize,
    /// Why it was refused, when it was.
    pub error: Option<String>,
}

/// A running OTLP receiver and Jaeger query stand-in; stops on [`OtlpStandin::stop`] or drop.
pub struct OtlpStandin {
    server: LoopbackServer,
    state: Arc<OtlpState>,
}

impl OtlpStandin {
    /// Listens on a free loopback port.
    pub fn start() -> io::Result<Self> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    pub fn start_on(listen: SocketAddr) -> io::Result<Self> {
        let state = Arc::new(OtlpState {
            spans: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            exports: Mutex::new(Vec::new()),
            fault: Mutex::new(FaultPlan::default()),
        });
        let server = LoopbackServer::start("otlp-standin", listen, state.clone())?;
        Ok(Self { server, state })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:<port>`; exports go to `<url>/v1/traces`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Every span received, in arrival order.
    pub fn spans(&self) -> Vec<StoredSpan> {
        lock(&self.state.spans).clone()
    }

    /// The spans of one trace; the id is hex in any case, 32 digits or Jaeger's short form.
    pub fn trace(&self, trace_id: &str) -> Vec<StoredSpan> {
        let wanted = normalize_trace_id(trace_id);
        lock(&self.state.spans)
            .iter()
            .filter(|span| Some(&span.trace_id) == wanted.as_ref())
            .cloned()
            .collect()
    }

    /// Waits until at least `count` spans arrived or `timeout` passed; returns all spans.
    /// Blocking: async tests call it through `spawn_blocking`.
    pub fn wait_for_spans(&self, count: usize, timeout: Duration) -> Vec<StoredSpan> {
        let deadline = Instant::now() + timeout;
        let mut spans = lock(&self.state.spans);
        while spans.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            spans = self
                .state
                .arrived
                .wait_timeout(spans, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        spans.clone()
    }

    /// Every export request received, oldest first.
    pub fn exports(&self) -> Vec<ExportAttempt> {
        lock(&self.state.exports).clone()
    }

    /// Applies `fault` to every export (`POST /v1/traces`) from now on; the query API is
    /// never affected.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.state.fault) = FaultPlan::always(fault);
    }

    /// Applies `fault` to the next `count` exports, then behaves again.
    pub fn set_fault_for_next(&self, count: u32, fault: Fault) {
        *lock(&self.state.fault) = FaultPlan::next(count, fault);
    }
}

/// Lowercase 32-digit form of a trace id given in any case, with or without leading zeros.
fn normalize_trace_id(trace_id: &str) -> Option<String> {
    if trace_id.is_empty()
        || trace_id.len() > 32
        || !trace_id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    Some(format!("{:0>32}", trace_id.to_ascii_lowercase()))
}

struct OtlpState {
    spans: Mutex<Vec<StoredSpan>>,
    arrived: Condvar,
    exports: Mutex<Vec<ExportAttempt>>,
    fault: Mutex<FaultPlan>,
}

impl Handler for OtlpState {
    fn handle(self: Arc<Self>, request: Request<Incoming>) -> ReplyFuture {
        Box::pin(async move {
            let origin = request
                .headers()
                .get(hyper::header::ORIGIN)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if request.method() == Method::OPTIONS {
                return Reply::Respond(preflight(request.headers(), origin.as_deref()));
            }
            let path = request.uri().path().to_owned();
            let reply = if path == TRACES_PATH {
                if request.method() != Method::POST {
                    let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                    reply.headers_mut().insert(
                        hyper::header::ALLOW,
                        HeaderValue::from_static("POST, OPTIONS"),
                    );
                    reply
                } else {
                    let fault = lock(&self.fault).take();
                    match fault {
                        Fault::None => self.export(request, origin.clone()).await,
                        Fault::Delay(delay) => {
                            tokio::time::sleep(delay).await;
                            self.export(request, origin.clone()).await
                        }
                        Fault::Reset => return Reply::Reset,
                        Fault::ResetMidBody => {
                            return Reply::ResetMidBody(self.export(request, origin.clone()).await)
                        }
                        Fault::Status(code, body) => fault::status_reply(code, body),
                        Fault::InvalidJson => response(StatusCode::OK, "application/json", "{\""),
                        Fault::Oversized(size) => oversized_success(size),
                    }
                }
            } else if request.method() == Method::GET {
                self.query(&path, request.uri().query().unwrap_or_default())
            } else {
                text(StatusCode::NOT_FOUND, "404 page not found\n")
            };
            Reply::Respond(with_cors(reply, origin.as_deref()))
        })
    }
}

fn with_cors(mut reply: Response<Full<Bytes>>, origin: Option<&str>) -> Response<Full<Bytes>> {
    if let Some(origin) = origin.and_then(|o| HeaderValue::from_str(o).ok()) {
        let headers = reply.headers_mut();
        headers.insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(hyper::header::VARY, HeaderValue::from_static("Origin"));
    }
    reply
}

fn preflight(headers: &HeaderMap, origin: Option<&str>) -> Response<Full<Bytes>> {
    let mut reply = response(
        StatusCode::NO_CONTENT,
        "text/plain; charset=utf-8",
        Bytes::new(),
    );
    let out = reply.headers_mut();
    out.insert(
        hyper::header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS"),
    );
    if let Some(requested) = headers.get(hyper::header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(
            hyper::header::ACCESS_CONTROL_ALLOW_HEADERS,
            requested.clone(),
        );
    }
    out.insert(
        hyper::header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("7200"),
    );
    with_cors(reply, origin)
}

/// A success whose body is a valid `ExportTraceServiceResponse` in JSON, padded to `size`
/// bytes inside a partial-success warning (zero rejected spans).
fn oversized_success(size: usize) -> Response<Full<Bytes>> {
    let skeleton = r#"{"partialSuccess":{"rejectedSpans":"0","errorMessage":""}}"#;
    let padding = "x".repeat(size.saturating_sub(skeleton.len()));
    let body =
        format!(r#"{{"partialSuccess":{{"rejectedSpans":"0","errorMessage":"{padding}"}}}}"#);
    response(StatusCode::OK, "application/json", body)
}

#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// gRPC code INVALID_ARGUMENT, for bad data.
const INVALID_ARGUMENT: i32 = 3;
/// gRPC code RESOURCE_EXHAUSTED, for a too large body.
const RESOURCE_EXHAUSTED: i32 = 8;

fn encoded_status(
    status: StatusCode,
    encoding: Encoding,
    code: i32,
    message: &str,
) -> Response<Full<Bytes>> {
    match encoding {
        Encoding::Protobuf => response(
            status,
            "application/x-protobuf",
            RpcStatus {
                code,
                message: message.to_owned(),
            }
            .encode_to_vec(),
        ),
        Encoding::Json => response(
            status,
            "application/json",
            serde_json::json!({"code": code, "message": message}).to_string(),
        ),
    }
}

impl OtlpState {
    async fn export(
        &self,
        request: Request<Incoming>,
        origin: Option<String>,
    ) -> Response<Full<Bytes>> {
        let headers = request.headers();
        let content_type = headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let content_encoding = headers
            .get(hyper::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let media_type = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let encoding = match media_type.as_str() {
            "application/x-protobuf" => Some(Encoding::Protobuf),
            "application/json" => Some(Encoding::Json),
            _ => None,
        };
        let outcome = match encoding {
            None => Err((
                text(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("unsupported content type {content_type:?}; use application/x-protobuf or application/json"),
                ),
                format!("unsupported content type {content_type:?}"),
            )),
            Some(encoding) => self
                .accept(request.into_body(), encoding, content_encoding.as_deref())
                .await
                .map(|spans| (encoding, spans)),
        };
        let (reply, spans, error) = match outcome {
            Ok((encoding, count)) => {
                let body = match encoding {
                    Encoding::Protobuf => ExportTraceServiceResponse::default().encode_to_vec(),
                    Encoding::Json => b"{}".to_vec(),
                };
                let content_type = match encoding {
                    Encoding::Protobuf => "application/x-protobuf",
                    Encoding::Json => "application/json",
                };
                (response(StatusCode::OK, content_type, body), count, None)
            }
            Err((reply, error)) => (reply, 0, Some(error)),
        };
        lock(&self.exports).push(ExportAttempt {
            content_type,
            content_encoding,
            origin,
            status: reply.status().as_u16(),
            spans,
            error,
        });
        reply
    }

    /// Decodes and stores one export; returns how many spans it carried.
    async fn accept(
        &self,
        body: Incoming,
        encoding: Encoding,
        content_encoding: Option<&str>,
    ) -> Result<usize, (Response<Full<Bytes>>, String)> {
        let bad = |status: StatusCode, code: i32, message: String| {
            (encoded_status(status, encoding, code, &message), message)
        };
        let Some(raw) = read_body(body, MAX_BODY).await else {
            return Err(bad(
                StatusCode::PAYLOAD_TOO_LARGE,
                RESOURCE_EXHAUSTED,
                format!("request body larger than {MAX_BODY} bytes"),
            ));
        };
        let payload = match content_encoding.map(str::trim) {
            None | Some("") | Some("identity") => raw.to_vec(),
            Some(gzip) if gzip.eq_ignore_ascii_case("gzip") => {
                let mut inflated = Vec::new();
                let read = GzDecoder::new(raw.as_ref())
                    .take(MAX_BODY as u64 + 1)
                    .read_to_end(&mut inflated);
                if let Err(error) = read {
                    return Err(bad(
                        StatusCode::BAD_REQUEST,
                        INVALID_ARGUMENT,
                        format!("invalid gzip body: {error}"),
                    ));
                }
                if inflated.len() > MAX_BODY {
                    return Err(bad(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        RESOURCE_EXHAUSTED,
                        format!("decompressed body larger than {MAX_BODY} bytes"),
                    ));
                }
                inflated
            }
            Some(other) => {
                return Err(bad(
                    StatusCode::BAD_REQUEST,
                    INVALID_ARGUMENT,
                    format!("unsupported Content-Encoding {other:?}"),
                ));
            }
        };
        let decoded = match encoding {
            Encoding::Protobuf => ExportTraceServiceRequest::decode(payload.as_slice())
                .map_err(|error| format!("invalid protobuf: {error}")),
            Encoding::Json => json::decode(&payload),
        };
        let spans = decoded
            .and_then(|request| stored_spans(&request, encoding))
            .map_err(|message| bad(StatusCode::BAD_REQUEST, INVALID_ARGUMENT, message))?;
        let count = spans.len();
        lock(&self.spans).extend(spans);
        self.arrived.notify_all();
        Ok(count)
    }

    fn query(&self, path: &str, query: &str) -> Response<Full<Bytes>> {
        let spans = lock(&self.spans).clone();
        let parameters: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        match path {
            "/api/v3/traces" => return api_v3::find_traces(&spans, &parameters),
            "/api/v3/services" => return api_v3::services(&spans),
            "/api/v3/operations" => return api_v3::operations(&spans, &parameters),
            _ => {}
        }
        let (status, body) = if let Some(trace_id) = path.strip_prefix("/api/traces/") {
            jaeger::trace_by_id(&spans, normalize_trace_id(trace_id).as_deref())
        } else if path == "/api/traces" {
            jaeger::search(&spans, &parameters)
        } else if path == "/api/services" {
            jaeger::services(&spans)
        } else {
            return text(StatusCode::NOT_FOUND, "404 page not found\n");
        };
        response(status, "application/json", body.to_string())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span or trace id of `length` bytes that is not all zeroes, as hex.
fn valid_id(bytes: &[u8], length: usize, what: &str) -> Result<String, String> {
    if bytes.len() != length {
        return Err(format!(
            "{what} must be {length} bytes, got {}",
            bytes.len()
        ));
    }
    if bytes.iter().all(|b| *b == 0) {
        return Err(format!("{what} is all zeroes (invalid)"));
    }
    Ok(hex(bytes))
}

fn stored_spans(
    request: &ExportTraceServiceRequest,
    encoding: Encoding,
) -> Result<Vec<StoredSpan>, String> {
    let mut stored = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attribute_map(&r.attributes))
            .unwrap_or_default();
        for scope_spans in &resource_spans.scope_spans {
            let (scope_name, scope_version) = scope_spans
                .scope
                .as_ref()
                .map(|s| (s.name.clone(), s.version.clone()))
                .unwrap_or_default();
            for span in &scope_spans.spans {
                let trace_id = valid_id(&span.trace_id, 16, "traceId")?;
                let span_id = valid_id(&span.span_id, 8, "spanId")?;
                let parent_span_id = if span.parent_span_id.is_empty() {
                    None
                } else {
                    Some(valid_id(&span.parent_span_id, 8, "parentSpanId")?)
                };
                let links = span
                    .links
                    .iter()
                    .map(|link| {
                        Ok(SpanLink {
                            trace_id: valid_id(&link.trace_id, 16, "link traceId")?,
                            span_id: valid_id(&link.span_id, 8, "link spanId")?,
                            attributes: attribute_map(&link.attributes),
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                let status = span.status.clone().unwrap_or_default();
                stored.push(StoredSpan {
                    trace_id,
                    span_id,
                    parent_span_id,
                    trace_state: span.trace_state.clone(),
                    flags: span.flags,
                    name: span.name.clone(),
                    kind: span.kind,
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                    attributes: attribute_map(&span.attributes),
                    events: span
                        .events
                        .iter()
                        .map(|event| SpanEvent {
                            name: event.name.clone(),
                            time_unix_nano: event.time_unix_nano,
                            attributes: attribute_map(&event.attributes),
                        })
                        .collect(),
                    links,
                    status_code: status.code,
                    status_message: status.message,
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    encoding,
                });
            }
        }
    }
    Ok(stored)
}
