//! Reads every click of a time window from Jaeger, page by page.
//!
//! A search returns at most `num_traces` traces and says nothing of the rest, so a page
//! that comes back full is not used: its window is split in two and each half is asked
//! for again, until every page holds fewer traces than the limit. Each page is joined and
//! dropped before the next one is asked for, so memory holds one page and the small
//! per-click records.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Result;

use crate::clicks::{ClickSpans, Clicks};
use crate::jaeger::{rfc3339, Jaeger, TraceQuery, Window};

/// The clicks of `window`, and warnings about what could not be read.
pub fn collect(
    jaeger: &Jaeger,
    spans: &ClickSpans,
    window: Window,
    page_size: usize,
) -> Result<(Clicks, Vec<String>)> {
    let mut clicks = Clicks::default();
    let mut warnings = Vec::new();
    let mut progress = Progress::new();
    // Earliest window on top, so pages come in time order.
    let mut pending = vec![window];
    while let Some(window) = pending.pop() {
        let query = TraceQuery {
            service: spans.service,
            operation: spans.operation,
            window,
            max_traces: page_size,
        };
        let Some(page) = jaeger.find_traces(&query)? else {
            progress.page(&clicks, window);
            continue;
        };
        let full = distinct_traces(&page) >= page_size;
        match window.split() {
            Some((early, late)) if full => {
                pending.push(late);
                pending.push(early);
                progress.split();
            }
            _ => {
                if full {
                    warnings.push(format!(
                        "{} holds more than {page_size} traces in one nanosecond: some were not read; raise --page-size",
                        rfc3339(window.start_ns)
                    ));
                }
                clicks.add_page(&page, spans, window)?;
                progress.page(&clicks, window);
            }
        }
    }
    progress.finish(&clicks);
    Ok((clicks, warnings))
}

fn distinct_traces(page: &crate::otlp_json::TracesData) -> usize {
    let mut ids: Vec<&str> = page
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|span| span.trace_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

/// A line on stderr once the window needs more than one page: updated in place on a
/// terminal, every few seconds otherwise (logs).
struct Progress {
    terminal: bool,
    pages: usize,
    splits: usize,
    last: Option<Instant>,
    shown: bool,
}

impl Progress {
    fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            pages: 0,
            splits: 0,
            last: None,
            shown: false,
        }
    }

    fn split(&mut self) {
        self.splits += 1;
    }

    fn page(&mut self, clicks: &Clicks, window: Window) {
        self.pages += 1;
        if self.splits == 0 {
            return;
        }
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_some_and(|last| last.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        self.show(&format!(
            "reading traces: page {}, {} clicks so far, up to {}",
            self.pages,
            clicks.clicks.len(),
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(window.end_ns))
        ));
    }

    fn finish(&mut self, clicks: &Clicks) {
        if self.shown {
            self.show(&format!(
                "read {} pages ({} full pages split): {} clicks in {} traces",
                self.pages,
                self.splits,
                clicks.clicks.len(),
                clicks.traces
            ));
            if self.terminal {
                eprintln!();
            }
        }
    }

    fn show(&mut self, line: &str) {
        self.shown = true;
        let mut stderr = std::io::stderr().lock();
        // Progress is a courtesy: a closed stderr must not stop the report.
        let _ = if self.terminal {
            write!(stderr, "\r\x1b[2K{line}")
        } else {
            writeln!(stderr, "{line}")
        };
        let _ = stderr.flush();
    }
}
