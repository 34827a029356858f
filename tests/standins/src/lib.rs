//! Loopback stand-ins for the services the gateway filter talks to, for tests and local
//! runs: Consul's HTTP API ([`consul`]) and an OTLP/HTTP trace receiver with Jaeger's query
//! API ([`otlp`]). Each listens on 127.0.0.1, runs on its own thread and stops when dropped.

pub mod consul;
mod fault;
pub mod otlp;
mod server;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use consul::{
    closed_port_addr, ConsulOptions, ConsulStandin, HttpCheck, Instance, RecordedRequest,
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
