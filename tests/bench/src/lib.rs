//! What the benchmark binaries (`bench-host`, `bench-fleet`, `bench-soak`) share: the
//! `gateway` binary, one gateway process, and an upstream on loopback that answers every
//! request (the one `bench-envoy` uses too).

pub mod gateway;
pub mod stats;

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

pub use real_envoy::OkUpstream;

/// The gateway binary: `GATEWAY_BIN`, else `gateway` beside this binary.
pub fn gateway_binary() -> Result<PathBuf> {
    let gateway = match std::env::var_os("GATEWAY_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("this binary has no directory"))?
            .join("gateway"),
    };
    if !gateway.exists() {
        bail!(
            "{} does not exist: build it with `cargo build -p consul-enricher-gateway` or set GATEWAY_BIN",
            gateway.display()
        );
    }
    Ok(gateway)
}
