//! Baseline Proxy-Wasm filter.
//!
//! It does the least a tracing filter does, so benchmarks have a floor to compare the
//! real filter against, and it exercises every host feature the test host must prove:
//! - request headers: adds `x-baseline-traceparent-seen: 1|0`;
//! - configuration: a JSON-free `key=value;...` string (`refuse=1` refuses it,
//!   `dispatch=<upstream>` makes requests carrying `x-baseline-dispatch: 1` pause on a
//!   dispatched `GET /baseline`, `authority=` and `path=` shape that call,
//!   `timeout_ms=` bounds it (500 by default), `tick_ms=` sets the tick period);
//! - shared data: every request increments the counter `baseline/requests` with a
//!   compare-and-swap loop, so concurrent workers prove the host's CAS;
//! - metrics: `baseline_requests_total`, `baseline_ticks_total`;
//! - response headers: echoes the peer property as `x-baseline-upstream`: `upstream.address`
//!   by default, another with `peer=<dotted path>` (on Kong `peer=ngx.upstream_addr`, as the
//!   enricher reads the peer there: ngx_wasm_module's `upstream.address` misreads the peer's
//!   name under Kong's balancer, and the test host's Kong flavour logs each read at Critical).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};
use std::rc::Rc;
use std::time::Duration;

const COUNTER_KEY: &str = "baseline/requests";
const CAS_ATTEMPTS: u32 = 16;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(BaselineRoot::default()));
}}

#[derive(Default, Clone)]
struct Settings {
    dispatch_upstream: Option<String>,
    dispatch_authority: String,
    dispatch_path: String,
    dispatch_timeout_ms: u64,
    tick_ms: u64,
    /// The property echoed on the response, as its path's segments.
    peer: Vec<String>,
}

#[derive(Default)]
struct BaselineRoot {
    settings: Rc<Settings>,
    requests_metric: Option<u32>,
    ticks_metric: Option<u32>,
}

fn parse_settings(text: &str) -> Result<Settings, String> {
    let mut settings = Settings {
        dispatch_authority: "baseline".to_string(),
        dispatch_path: "/baseline".to_string(),
        dispatch_timeout_ms: 500,
        peer: vec!["upstream".to_string(), "address".to_string()],
        ..Settings::default()
    };
    for pair in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not key=value"))?;
        match key {
            "refuse" if value == "1" => return Err("refuse=1 asks to refuse".to_string()),
            "refuse" => {}
            "dispatch" => settings.dispatch_upstream = Some(value.to_string()),
            "authority" => settings.dispatch_authority = value.to_string(),
            "path" => settings.dispatch_path = value.to_string(),
            "peer" => settings.peer = value.split('.').map(str::to_string).collect(),
            "timeout_ms" => {
                settings.dispatch_timeout_ms = value
                    .parse()
                    .map_err(|_| format!("timeout_ms `{value}` is not a number"))?
            }
            "tick_ms" => {
                settings.tick_ms = value
                    .parse()
                    .map_err(|_| format!("tick_ms `{value}` is not a number"))?
            }
            _ => return Err(format!("unknown key `{key}`")),
        }
    }
    Ok(settings)
}

impl Context for BaselineRoot {}

impl RootContext for BaselineRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        match parse_settings(&text) {
            Ok(settings) => {
                if settings.tick_ms > 0 {
                    self.set_tick_period(Duration::from_millis(settings.tick_ms));
                }
                self.settings = Rc::new(settings);
            }
            Err(reason) => {
                log::error!("baseline: configuration refused: {reason}");
                return false;
            }
        }
        self.requests_metric =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "baseline_requests_total")
                .ok();
        self.ticks_metric =
            proxy_wasm::hostcalls::define_metric(MetricType::Counter, "baseline_ticks_total").ok();
        log::info!("baseline: configured");
        true
    }

    fn on_tick(&mut self) {
        if let Some(id) = self.ticks_metric {
            let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BaselineHttp {
            settings: Rc::clone(&self.settings),
            requests_metric: self.requests_metric,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct BaselineHttp {
    settings: Rc<Settings>,
    requests_metric: Option<u32>,
}

impl BaselineHttp {
    /// Adds one to the shared counter; a lost race (CasMismatch) retries from a fresh read.
    fn count_request(&self) {
        for _ in 0..CAS_ATTEMPTS {
            let (value, cas) = self.get_shared_data(COUNTER_KEY);
            let current = value
                .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            let next = (current + 1).to_le_bytes();
            match self.set_shared_data(COUNTER_KEY, Some(&next), cas) {
                Ok(()) => return,
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    log::warn!("baseline: shared data write failed: {status:?}");
                    return;
                }
            }
        }
        log::warn!("baseline: shared counter gave up after {CAS_ATTEMPTS} CAS attempts");
    }
}

impl Context for BaselineHttp {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body: usize, _t: usize) {
        let status = self
            .get_http_call_response_header(":status")
            .or_else(|| {
                self.get_http_call_response_header(":dispatch_status")
                    .map(|s| format!("failed: {s}"))
            })
            .unwrap_or_else(|| "none".to_string());
        self.set_http_request_header("x-baseline-call-status", Some(&status));
        self.set_http_request_header("x-baseline-call-body-bytes", Some(&body.to_string()));
        self.resume_http_request();
    }
}

impl HttpContext for BaselineHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(id) = self.requests_metric {
            let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
        }
        self.count_request();
        let seen = match self.get_http_request_header("traceparent") {
            Some(_) => "1",
            None => "0",
        };
        self.set_http_request_header("x-baseline-traceparent-seen", Some(seen));

        let wants_call = self
            .get_http_request_header("x-baseline-dispatch")
            .as_deref()
            == Some("1");
        let Some(upstream) = self
            .settings
            .dispatch_upstream
            .as_deref()
            .filter(|_| wants_call)
        else {
            return Action::Continue;
        };
        let headers = vec![
            (":method", "GET"),
            (":path", self.settings.dispatch_path.as_str()),
            (":authority", self.settings.dispatch_authority.as_str()),
        ];
        match self.dispatch_http_call(
            upstream,
            headers,
            None,
            vec![],
            Duration::from_millis(self.settings.dispatch_timeout_ms),
        ) {
            Ok(_) => Action::Pause,
            Err(status) => {
                log::warn!("baseline: dispatch refused: {status:?}");
                self.set_http_request_header("x-baseline-call-status", Some("refused"));
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let upstream = self
            .get_property(self.settings.peer.iter().map(String::as_str).collect())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_else(|| "unknown".to_string());
        self.set_http_response_header("x-baseline-upstream", Some(&upstream));
        Action::Continue
    }
}
