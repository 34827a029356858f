//! A plain blocking HTTP client for the stand-in tests.

use std::time::Duration;

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", self.text()))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn into_reply(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply, ureq::Error> {
    let mut response = result?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A bodiless request (`GET`, `OPTIONS`) with extra headers; transport errors are returned,
/// statuses are not errors.
pub fn try_call(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Reply, ureq::Error> {
    let agent = agent();
    let mut request = match method {
        "GET" => agent.get(url),
        "OPTIONS" => agent.options(url),
        other => panic!("unsupported method {other}"),
    };
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    into_reply(request.call())
}

pub fn try_get(url: &str, headers: &[(&str, &str)]) -> Result<Reply, ureq::Error> {
    try_call("GET", url, headers)
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    try_get(url, headers).unwrap_or_else(|error| panic!("GET {url}: {error}"))
}

pub fn try_send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, ureq::Error> {
    let agent = agent();
    let mut request = match method {
        "PUT" => agent.put(url),
        "POST" => agent.post(url),
        other => panic!("unsupported method {other}"),
    };
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    into_reply(request.send(body))
}

pub fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    try_send(method, url, headers, body).unwrap_or_else(|error| panic!("{method} {url}: {error}"))
}
