//! `proxy_http_call` I/O: one real HTTP/1.1 exchange over a loopback socket per call, run
//! on the host's tokio runtime, its result sent back to the synchronous driver, which
//! delivers it to the worker and context that dispatched it.
//!
//! How a failure reaches the filter differs per gateway, and is reproduced from:
//! - Kong, ngx_wasm_module PR #625 "invoke on_http_call_response on dispatch failures":
//!   `on_http_call_response(token, 0, 0, 0)` and a `:dispatch_status` pseudo-header of
//!   `timeout`, `broken connection` (refused, reset, closed early) or `reader failure`
//!   (an unparsable response).
//! - Envoy, the router's local replies seen through `AsyncClient` (envoy docs "HTTP
//!   connection management: upstream errors"; `source/common/router/router.cc`): a
//!   connect failure, reset or protocol error becomes `:status 503` with body
//!   `upstream connect error or disconnect/reset before headers. reset reason: <reason>`;
//!   a timeout becomes `:status 504` with body `upstream request timeout`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::{HeaderName, HeaderValue, Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::Flavour;

/// A call as the host sends it; header names/values were validated at dispatch time.
#[derive(Debug, Clone)]
pub struct DispatchRecord {
    pub worker: usize,
    pub context_id: u32,
    pub token: u32,
    /// What the filter passed as upstream (Kong `host:port`, Envoy a cluster name).
    pub upstream: String,
    /// The socket address actually connected to.
    pub target: String,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DispatchFailure {
    Timeout,
    ConnectFailed(String),
    Reset(String),
    BadResponse(String),
}

/// A dispatch result as the filter sees it in `on_http_call_response`.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallResponse {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The `num_headers` argument of the callback (Kong reports 0 on failure even though
    /// `:dispatch_status` can be read).
    pub reported_headers: usize,
}

pub(crate) struct Completion {
    pub worker: usize,
    pub context_id: u32,
    pub token: u32,
    pub outcome: Result<CallResponse, DispatchFailure>,
}

pub(crate) fn failure_response(flavour: Flavour, failure: &DispatchFailure) -> CallResponse {
    match flavour {
        Flavour::Kong => {
            let status = match failure {
                DispatchFailure::Timeout => "timeout",
                DispatchFailure::ConnectFailed(_) | DispatchFailure::Reset(_) => {
                    "broken connection"
                }
                DispatchFailure::BadResponse(_) => "reader failure",
            };
            CallResponse {
                headers: vec![(":dispatch_status".to_string(), status.to_string())],
                body: Vec::new(),
                reported_headers: 0,
            }
        }
        Flavour::Envoy => {
            let (status, body) = match failure {
                DispatchFailure::Timeout => ("504", "upstream request timeout".to_string()),
                DispatchFailure::ConnectFailed(_) => {
                    ("503", envoy_reset_body("connection failure"))
                }
                DispatchFailure::Reset(_) => ("503", envoy_reset_body("connection termination")),
                DispatchFailure::BadResponse(_) => ("503", envoy_reset_body("protocol error")),
            };
            let headers = vec![
                (":status".to_string(), status.to_string()),
                ("content-length".to_string(), body.len().to_string()),
                ("content-type".to_string(), "text/plain".to_string()),
            ];
            CallResponse {
                reported_headers: headers.len(),
                headers,
                body: body.into_bytes(),
            }
        }
    }
}

fn envoy_reset_body(reason: &str) -> String {
    format!("upstream connect error or disconnect/reset before headers. reset reason: {reason}")
}

/// Checks what hyper would refuse later, so a bad header is a dispatch-time error.
pub(crate) fn valid_header(name: &str, value: &str) -> bool {
    HeaderName::from_bytes(name.as_bytes()).is_ok() && HeaderValue::from_str(value).is_ok()
}

fn classify(error: hyper::Error) -> DispatchFailure {
    if error.is_parse() || error.is_parse_status() {
        DispatchFailure::BadResponse(error.to_string())
    } else {
        DispatchFailure::Reset(error.to_string())
    }
}

pub(crate) async fn perform(
    flavour: Flavour,
    call: DispatchRecord,
) -> Result<CallResponse, DispatchFailure> {
    let exchange = exchange(flavour, &call);
    match call.timeout {
        Some(limit) => tokio::time::timeout(limit, exchange)
            .await
            .unwrap_or(Err(DispatchFailure::Timeout)),
        None => exchange.await,
    }
}

async fn exchange(
    flavour: Flavour,
    call: &DispatchRecord,
) -> Result<CallResponse, DispatchFailure> {
    let stream = TcpStream::connect(&call.target)
        .await
        .map_err(|e| DispatchFailure::ConnectFailed(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(classify)?;
    tokio::spawn(connection);

    let method = Method::from_bytes(call.method.as_bytes())
        .map_err(|e| DispatchFailure::BadResponse(format!("method: {e}")))?;
    let mut builder = Request::builder()
        .method(method)
        .uri(call.path.as_str())
        .header("host", call.authority.as_str());
    if flavour == Flavour::Kong {
        builder = builder.header("connection", "close");
    }
    for (name, value) in &call.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = builder
        .body(Full::new(Bytes::from(call.body.clone())))
        .map_err(|e| DispatchFailure::BadResponse(format!("request: {e}")))?;
    let response = sender.send_request(request).await.map_err(classify)?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(classify)?.to_bytes();

    let mut headers = vec![(":status".to_string(), parts.status.as_u16().to_string())];
    // ngx_wasm_module answers `:dispatch_status` on every call response, `ok` on success
    // (`ngx_proxy_wasm_maps_get_dispatch_status`, `ngx_wasm_socket_tcp.c` errlist), and
    // counts only the upstream's own headers in `num_headers` (ngx_http_proxy_wasm.c).
    if flavour == Flavour::Kong {
        headers.push((":dispatch_status".to_string(), "ok".to_string()));
    }
    let pseudo = headers.len();
    for (name, value) in &parts.headers {
        headers.push((
            name.as_str().to_string(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    let reported_headers = match flavour {
        Flavour::Kong => headers.len() - pseudo,
        Flavour::Envoy => headers.len(),
    };
    Ok(CallResponse {
        reported_headers,
        headers,
        body: body.to_vec(),
    })
}
