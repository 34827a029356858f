//! Loopback stand-ins for the services the gateway filter talks to, for tests and local
//! runs: Consul's HTTP API ([`consul`]) and an OTLP/HTTP trace receiver with Jaeger's query
//! API ([`otlp`]). Each listens on 127.0.0.1, runs on its own thread and stops when dropped,
//! so sync and async tests use them alike.
//!
//! ```
//! use standins::{ConsulOptions, ConsulStandin, Fault, Instance, OtlpStandin};
//!
//! let consul = ConsulStandin::start(ConsulOptions::default()).unwrap();
//! consul.register(Instance::new("echo", "echo-1").address("127.0.0.1").port(8080).meta("version", "1.2.0"));
//! // Point the code under test at consul.url(); then inspect what it sent:
//! assert_eq!(consul.requests("/v1/catalog/service/echo"), 0);
//! // Make Consul misbehave for the next call only:
//! consul.set_fault_for_next(1, Fault::Status(503, "No cluster leader".into()));
//!
//! let collector = OtlpStandin::start().unwrap();
//! // Exporters post to format!("{}/v1/traces", collector.url()); Jaeger's query API is at
//! // format!("{}/api/traces/<trace-id>", collector.url()), and collector.spans() reads
//! // what arrived directly.
//! assert!(collector.spans().is_empty());
//! ```

pub mod consul;
mod fault;
pub mod otlp;
mod server;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use consul::{
    closed_port_addr, CheckStatus, ConsulOptions, ConsulStandin, HttpCheck, Instance,
    RecordedRequest,
};
pub use fault::Fault;
pub use otlp::{AttributeValue, Encoding, ExportAttempt, OtlpStandin, StoredSpan};

/// The stand-ins' state stays usable after a panicking test thread.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Blocks until the process gets SIGTERM or SIGINT (for the stand-in binaries).
pub fn wait_for_termination() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        Ok(())
    })
}
