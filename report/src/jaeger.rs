//! A client of Jaeger's query API v3 over HTTP (`/api/v3/...` on the query port, 16686).
//!
//! Paths and parameters are jaegertracing/jaeger-idl's `proto/api_v3/query_service.proto`
//! as Jaeger's HTTP gateway reads them (jaegertracing/jaeger,
//! `cmd/jaeger/internal/extension/jaegerquery/internal/apiv3/http_gateway.go`). The
//! snake_case parameter names are the ones every Jaeger v2 reads (later versions also
//! take camelCase). Jaeger v2.17.0 ignores `query.attributes` over HTTP, so none is sent.
//!
//! Answers are recognised by their JSON, not their content type: v2.17.0 sets none on
//! success (Go then sniffs `text/plain`), and errors go through Go's `http.Error`
//! (`text/plain`) with a `{"error": {"httpCode", "message"}}` body.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

use crate::otlp_json::{Envelope, TracesData};

/// A page of traces larger than this is refused: lower `--page-size`.
const MAX_BODY_BYTES: u64 = 512 << 20;

/// The time bounds of a query, nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Window {
    /// Whether `time_ns` falls in this window, end excluded, so that adjacent windows
    /// never count a span twice (Jaeger's own bounds are inclusive at both ends).
    pub fn contains(&self, time_ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&time_ns)
    }

    pub fn split(&self) -> Option<(Window, Window)> {
        let middle = self.start_ns + (self.end_ns - self.start_ns) / 2;
        if middle == self.start_ns {
            return None;
        }
        Some((
            Window {
                start_ns: self.start_ns,
                end_ns: middle,
            },
            Window {
                start_ns: middle,
                end_ns: self.end_ns,
            },
        ))
    }
}

/// RFC 3339 in UTC with as many fraction digits as needed, which Go's
/// `time.RFC3339Nano` parses.
pub fn rfc3339(time_ns: u64) -> String {
    humantime::format_rfc3339(UNIX_EPOCH + Duration::from_nanos(time_ns)).to_string()
}

pub fn unix_nanos(time: SystemTime) -> Result<u64> {
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .context("time before 1970")?;
    u64::try_from(since_epoch.as_nanos()).context("time too far in the future")
}

/// A `FindTraces` query.
pub struct TraceQuery<'a> {
    pub service: &'a str,
    pub operation: &'a str,
    pub window: Window,
    pub max_traces: usize,
}

pub struct Jaeger {
    base: String,
    agent: ureq::Agent,
}

/// The parts of a `GET /api/v3/services` answer read here; an empty list is left out.
#[derive(Deserialize)]
struct Services {
    #[serde(default)]
    services: Vec<String>,
}

#[derive(Deserialize)]
struct Operations {
    #[serde(default)]
    operations: Vec<Operation>,
}

#[derive(Deserialize)]
struct Operation {
    name: String,
}

impl Jaeger {
    pub fn new(base: &str, timeout: Duration) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if base.starts_with("https://") {
            bail!("{base}: this report speaks plain HTTP only; reach Jaeger's query port (16686) over http://, e.g. through a port-forward");
        }
        if !base.starts_with("http://") {
            bail!("{base}: the Jaeger URL must start with http://, e.g. http://localhost:16686");
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Ok(Self { base, agent })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Every service Jaeger knows.
    pub fn services(&self) -> Result<Vec<String>> {
        let body = self.get("/api/v3/services", &[])?.into_success()?;
        let services: Services = self.parse(&body, "/api/v3/services")?;
        Ok(services.services)
    }

    /// The operation (span) names Jaeger knows for `service`.
    pub fn operations(&self, service: &str) -> Result<Vec<String>> {
        let body = self
            .get("/api/v3/operations", &[("service", service)])?
            .into_success()?;
        let operations: Operations = self.parse(&body, "/api/v3/operations")?;
        Ok(operations.operations.into_iter().map(|o| o.name).collect())
    }

    /// The traces with a span matching `query`; `None` when Jaeger found none.
    pub fn find_traces(&self, query: &TraceQuery) -> Result<Option<TracesData>> {
        let start = rfc3339(query.window.start_ns);
        let end = rfc3339(query.window.end_ns);
        let max_traces = query.max_traces.to_string();
        let answer = self.get(
            "/api/v3/traces",
            &[
                ("query.service_name", query.service),
                ("query.operation_name", query.operation),
                ("query.start_time_min", &start),
                ("query.start_time_max", &end),
                ("query.num_traces", &max_traces),
            ],
        )?;
        if answer.status == 404 {
            // "No traces found" is how the gateway's `returnTraces` says the search was empty.
            if let Ok(Envelope { error: Some(_), .. }) = serde_json::from_slice(&answer.body) {
                return Ok(None);
            }
        }
        let body = answer.into_success()?;
        // grpc-gateway may stream several envelopes one after another; Jaeger writes one.
        let mut data = TracesData::default();
        for envelope in serde_json::Deserializer::from_slice(&body).into_iter::<Envelope>() {
            let envelope = envelope.map_err(|error| {
                not_api_v3(&self.base, "/api/v3/traces", &body, &error.to_string())
            })?;
            if let Some(error) = envelope.error {
                bail!(
                    "Jaeger failed the search midway: {} ({})",
                    error.message,
                    error.http_code
                );
            }
            if let Some(result) = envelope.result {
                data.resource_spans.extend(result.resource_spans);
            }
        }
        Ok(Some(data))
    }

    fn get(&self, path: &str, parameters: &[(&str, &str)]) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url);
        for (name, value) in parameters {
            request = request.query(*name, *value);
        }
        let mut response = request.call().map_err(|error| match error {
            ureq::Error::Timeout(_) => anyhow!("Jaeger at {} did not answer {path} in time ({error}); a smaller --page-size or a shorter window asks less of it", self.base),
            other => anyhow!("cannot reach Jaeger at {}: {other}. Is it running? (the demo's Jaeger listens on http://localhost:16686)", self.base),
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_vec()
            .map_err(|error| {
                anyhow!("reading Jaeger's answer to {path} failed: {error}; lower --page-size if the answer is too large")
            })?;
        Ok(Answer {
            base: self.base.clone(),
            path: path.to_owned(),
            status,
            body,
        })
    }

    fn parse<T: for<'de> Deserialize<'de>>(&self, body: &[u8], path: &str) -> Result<T> {
        serde_json::from_slice(body)
            .map_err(|error| not_api_v3(&self.base, path, body, &error.to_string()))
    }
}

struct Answer {
    base: String,
    path: String,
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    /// The body of a 2xx answer; otherwise the clearest error for the answer.
    fn into_success(self) -> Result<Vec<u8>> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        match serde_json::from_slice::<Envelope>(&self.body) {
            Ok(Envelope {
                error: Some(error), ..
            }) => bail!(
                "Jaeger at {} refused {}: {} (HTTP {})",
                self.base,
                self.path,
                error.message,
                self.status
            ),
            _ if self.status == 404 => bail!(
                "{}{} is not found (404, \"{}\"): this server does not speak Jaeger's query API v3; point --jaeger at the query service of a Jaeger v2 (port 16686)",
                self.base,
                self.path,
                snippet(&self.body)
            ),
            _ => bail!(
                "Jaeger at {} answered {} with HTTP {}: {}",
                self.base,
                self.path,
                self.status,
                snippet(&self.body)
            ),
        }
    }
}

fn not_api_v3(base: &str, path: &str, body: &[u8], error: &str) -> anyhow::Error {
    anyhow!(
        "{base}{path} answered something that is not Jaeger's api_v3 JSON ({error}; it begins \"{}\"): is --jaeger the query service (port 16686) of Jaeger v2?",
        snippet(body)
    )
}

/// The start of a body, on one line, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_split_in_halves_down_to_a_nanosecond() {
        let window = Window {
            start_ns: 10,
            end_ns: 20,
        };
        let (early, late) = window.split().expect("splits");
        assert_eq!((early.start_ns, early.end_ns), (10, 15));
        assert_eq!((late.start_ns, late.end_ns), (15, 20));
        assert!(early.contains(14) && !early.contains(15) && late.contains(15));
        let narrow = Window {
            start_ns: 10,
            end_ns: 11,
        };
        assert_eq!(narrow.split(), None);
    }

    #[test]
    fn times_are_rfc3339_down_to_nanoseconds() {
        assert_eq!(
            rfc3339(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(rfc3339(1_700_000_000_000_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn snippets_are_one_short_line() {
        assert_eq!(
            snippet(b"<!doctype html>\n<html>"),
            "<!doctype html> <html>"
        );
        assert_eq!(snippet("x".repeat(100).as_bytes()).len(), 83);
    }
}
