//! consul-enricher: a Proxy-Wasm filter that adds Consul service and instance metadata to
//! gateway traces.
//!
//! Everything but `filter` is host-independent logic with native unit tests; `filter` is
//! the thin Proxy-Wasm layer that moves data between the host and that logic.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cache;
pub mod config;
pub mod consul;
pub mod enrich;
pub mod header_value;
pub mod object;
pub mod service_name;
pub mod span;
pub mod trace_context;

// The Proxy-Wasm layer only exists in the gateway build (wasm32-wasip1).
#[cfg(target_os = "wasi")]
mod filter;
