//! One request through the gateway: CORS preflight, route, the filter's request headers,
//! the upstream instance, the filter's response headers, the answer.
//!
//! CORS follows Kong's `cors` plugin as the demo configures it (kong/kong.yml): a preflight
//! from an allowed origin gets `Access-Control-Allow-Origin` (the origin), the allowed
//! methods and headers, `Access-Control-Max-Age` and `Vary: Origin`; actual responses get
//! the origin and `Vary`. The plugin answers preflights before any filter runs.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use test_host::{find_header, Flavour, LocalResponse, RequestSpec};

use crate::filter::{FilterThread, Verdict};
use crate::options::{service_host, GatewayOptions};
use crate::upstream::{exchange, Balancer};

const ALLOW_METHODS: &str = "GET,POST,OPTIONS";
const ALLOW_HEADERS: &str = "content-type,traceparent,tracestate,baggage";
const PREFLIGHT_MAX_AGE: &str = "600";
/// Kong's default `client_max_body_size`.
const MAX_REQUEST_BODY: usize = 1024 * 1024;
/// Hop-by-hop headers (RFC 9110 section 7.6.1) and the framing the proxy recomputes.
const NOT_FORWARDED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

pub struct Gateway {
    pub options: GatewayOptions,
    pub filter: FilterThread,
    pub balancer: Balancer,
}

type Answer = Response<Full<Bytes>>;

fn plain(status: StatusCode, message: &str) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(format!(
        "{{\"message\":{message:?}}}\n"
    ))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn forwarded(name: &str) -> bool {
    !name.starts_with(':') && !NOT_FORWARDED.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// A response from header pairs as the filter left them; `:status` sets the status.
fn from_pairs(default_status: StatusCode, headers: &[(String, String)], body: Bytes) -> Answer {
    let status = find_header(headers, ":status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(default_status);
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    for (name, value) in headers.iter().filter(|(name, _)| forwarded(name)) {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => eprintln!("gateway: dropped header {name:?} that is not valid HTTP"),
        }
    }
    response
}

fn local(response: LocalResponse) -> Answer {
    let status = u16::try_from(response.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    from_pairs(status, &response.headers, Bytes::from(response.body))
}

impl Gateway {
    pub async fn serve(self: Arc<Self>, request: Request<Incoming>) -> Result<Answer, Infallible> {
        let origin = request
            .headers()
            .get("origin")
            .and_then(|v| v.to_str().ok())
            .filter(|origin| self.options.origin_allowed(origin))
            .map(str::to_string);
        let is_preflight = request.method() == Method::OPTIONS
            && request
                .headers()
                .contains_key("access-control-request-method");
        let mut answer = if is_preflight {
            preflight(origin.is_some())
        } else {
            self.proxy(request).await
        };
        if let Some(origin) = origin {
            if let Ok(value) = HeaderValue::from_str(&origin) {
                answer
                    .headers_mut()
                    .insert("access-control-allow-origin", value);
            }
            answer
                .headers_mut()
                .append("vary", HeaderValue::from_static("Origin"));
        }
        Ok(answer)
    }

    async fn proxy(&self, request: Request<Incoming>) -> Answer {
        let path = request.uri().path_and_query().map_or_else(
            || request.uri().path().to_string(),
            |p| p.as_str().to_string(),
        );
        let Some(service) = self.options.service_for(&path) else {
            return plain(StatusCode::NOT_FOUND, "no Route matched with those values");
        };
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large or unreadable",
                )
            }
        };
        let authority = parts
            .headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut headers = vec![
            (":method".to_string(), parts.method.to_string()),
            (":path".to_string(), path),
            (":authority".to_string(), authority),
            (":scheme".to_string(), "http".to_string()),
        ];
        for (name, value) in &parts.headers {
            if forwarded(name.as_str()) {
                headers.push((
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                ));
            }
        }
        let mut spec = RequestSpec {
            headers,
            ..RequestSpec::default()
        };
        spec = match self.options.flavour {
            // Kong's Lua answers the route's service entity (`kong/runloop/wasm.lua`).
            Flavour::Kong => spec
                .property(
                    "kong.router.service",
                    &format!(r#"{{"host":"{}"}}"#, service_host(&service)),
                )
                .property("kong.version", "3.9.1"),
            Flavour::Envoy => spec.property("xds.cluster_name", &service),
        };

        let (handle, upstream_headers) = match self.filter.request(spec).await {
            Ok((_, Verdict::Local(response))) => return local(response),
            Ok((handle, Verdict::Continue(headers))) => (handle, headers),
            Err(message) => {
                eprintln!("gateway: request headers: {message}");
                return plain(StatusCode::BAD_GATEWAY, "the filter failed on the request");
            }
        };

        let picked = match &self.options.upstream {
            Some(address) => Ok(address.clone()),
            None => self.balancer.pick(&service).await,
        };
        let (address, upstream) = match picked {
            Ok(address) => {
                let upstream = self
                    .forward(&service, &address, &upstream_headers, body)
                    .await;
                (address, upstream)
            }
            Err(error) => (
                String::new(),
                Err(format!("name resolution failed: {error:#}")),
            ),
        };
        let (status_headers, upstream_body) = match upstream {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let mut pairs = vec![(":status".to_string(), parts.status.as_u16().to_string())];
                for (name, value) in &parts.headers {
                    pairs.push((
                        name.to_string(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    ));
                }
                (pairs, body)
            }
            Err(message) => {
                eprintln!("gateway: upstream {address:?}: {message}");
                let status = if address.is_empty() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_GATEWAY
                };
                let pairs = vec![(":status".to_string(), status.as_u16().to_string())];
                (pairs, Bytes::from(format!("{{\"message\":{message:?}}}\n")))
            }
        };
        match self.filter.respond(handle, address, status_headers).await {
            Ok(Verdict::Continue(headers)) => {
                from_pairs(StatusCode::BAD_GATEWAY, &headers, upstream_body)
            }
            Ok(Verdict::Local(response)) => local(response),
            Err(message) => {
                eprintln!("gateway: response headers: {message}");
                plain(StatusCode::BAD_GATEWAY, "the filter failed on the response")
            }
        }
    }

    /// The request to the instance, with the headers the filter left. Kong sends the
    /// service's host (`preserve_host` off); Envoy keeps `:authority`.
    async fn forward(
        &self,
        service: &str,
        address: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Response<Bytes>, String> {
        let method = find_header(headers, ":method").unwrap_or("GET");
        let path = self
            .options
            .upstream_path(find_header(headers, ":path").unwrap_or("/"));
        let host = match self.options.flavour {
            Flavour::Kong => service_host(service),
            Flavour::Envoy => find_header(headers, ":authority")
                .unwrap_or(address)
                .to_string(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(path.as_str())
            .header("host", host);
        for (name, value) in headers.iter().filter(|(name, _)| forwarded(name)) {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder
            .header("content-length", body.len())
            .body(Full::new(body))
            .map_err(|e| format!("the filtered request is not valid HTTP: {e}"))?;
        exchange(address, request)
            .await
            .map_err(|e| format!("{e:#}"))
    }
}

fn preflight(allowed: bool) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()));
    if allowed {
        let headers = response.headers_mut();
        headers.insert(
            "access-control-allow-methods",
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            "access-control-allow-headers",
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            "access-control-max-age",
            HeaderValue::from_static(PREFLIGHT_MAX_AGE),
        );
    }
    response
}
