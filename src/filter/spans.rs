//! The filter's own spans: queued per worker, exported in batches from the tick, or on
//! Kong by a request (see `Shared::calls_need_a_request`).

use super::host;
use super::{Call, Counter, RequestState, Shared};
use crate::span::{encode_export, SpanRecord};

/// Export calls in flight per worker; more spans wait in the queue.
const MAX_EXPORTS_IN_FLIGHT: u32 = 2;
/// How long an export may take: from the tick, as long as a collector needs; carried by a
/// request (Kong), that request waits for it, so a collector that hangs costs it a second
/// at most.
const EXPORT_TIMEOUT_MS: u32 = 5_000;
const CARRIED_EXPORT_TIMEOUT_MS: u32 = 1_000;

impl Shared {
    /// Queues the span of a finished request, when it has one.
    pub fn finish_span(&self, req: &RequestState) {
        let (Some(trace), Some(span_id)) = (&req.trace, req.span_id) else {
            return;
        };
        let name = match &req.target {
            Some(t) => {
                let mut n = String::from("consul-enricher ");
                n.push_str(&t.service.name);
                n
            }
            None => String::from("consul-enricher"),
        };
        let record = SpanRecord {
            trace_id: trace.trace_id,
            span_id,
            parent_span_id: trace.parent_id,
            name,
            start_unix_nanos: req.start_nanos,
            end_unix_nanos: host::now_nanos(),
            attributes: req.all_attributes().iter().cloned().collect(),
        };
        let mut state = self.state.borrow_mut();
        if state.spans.len() >= self.config.spans.max_queue as usize {
            self.metrics.count(Counter::SpansDropped, 1);
        } else {
            state.spans.push_back(record);
        }
    }

    /// Sends one batch when it is full or the flush period has passed: from the tick (the
    /// answer comes back to the root context, which outlives requests), or on Kong from the
    /// request `carrier`, which then waits for the answer. True when a call was sent.
    pub fn flush_spans(&self, carrier: Option<u32>) -> bool {
        let sp = &self.config.spans;
        if !sp.enabled {
            return false;
        }
        let now = host::now_ms();
        let batch: Vec<SpanRecord> = {
            let mut state = self.state.borrow_mut();
            let due = now.saturating_sub(state.last_flush_ms) >= u64::from(sp.flush_ms);
            let full = state.spans.len() >= sp.batch_size as usize;
            if state.spans.is_empty()
                || state.exports_in_flight >= MAX_EXPORTS_IN_FLIGHT
                || !(full || due)
            {
                return false;
            }
            state.last_flush_ms = now;
            let n = state.spans.len().min(sp.batch_size as usize);
            state.spans.drain(..n).collect()
        };
        let count = batch.len() as u64;
        let body = encode_export(&sp.service_name, &batch);
        let headers = vec![
            (":method", "POST"),
            (":path", sp.path.as_str()),
            (":authority", sp.authority.as_str()),
            (":scheme", "http"),
            ("content-type", "application/json"),
        ];
        let timeout = match carrier {
            Some(_) => CARRIED_EXPORT_TIMEOUT_MS,
            None => EXPORT_TIMEOUT_MS,
        };
        match host::dispatch(&sp.upstream, headers, Some(body.as_bytes()), timeout) {
            Ok(token) => {
                let mut state = self.state.borrow_mut();
                state.exports_in_flight += 1;
                let call = Call::SpanExport {
                    spans: count,
                    carrier,
                };
                state.calls.insert(token, call);
                true
            }
            Err(status) => {
                log::warn!(
                    "consul-enricher: cannot export spans to {}: {status:?}",
                    sp.upstream
                );
                self.metrics.count(Counter::SpansDropped, count);
                false
            }
        }
    }

    pub fn on_export_response(&self, spans: u64) {
        {
            let mut state = self.state.borrow_mut();
            state.exports_in_flight = state.exports_in_flight.saturating_sub(1);
        }
        // A failed call has no `:status` on either host (ngx_wasm_module's
        // `:dispatch_status` is on every answer, `ok` included).
        let status = host::call_response_header(":status");
        let ok = status.as_deref().is_some_and(|s| s.starts_with('2'));
        if ok {
            self.metrics.count(Counter::SpansExported, spans);
        } else {
            log::warn!(
                "consul-enricher: span export failed (status {}); {spans} spans dropped",
                status.as_deref().unwrap_or("none")
            );
            self.metrics.count(Counter::SpansDropped, spans);
        }
    }
}
