//! Finds the `.wasm` files the tests run, building them when needed, so
//! `cargo test -p consul-enricher-test-host` works from a clean checkout.
//!
//! An environment variable wins (`CONSUL_ENRICHER_WASM`, `BASELINE_FILTER_WASM`); otherwise
//! `cargo build --release --target wasm32-wasip1 -p <package>` runs once per test process
//! (a no-op when up to date) and the file is taken from the target directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use wasmtime::error::Context as _;
use wasmtime::{bail, Result};

pub const TARGET: &str = "wasm32-wasip1";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn build(package: &str, file: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let path = target_dir().join(TARGET).join("release").join(file);
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|p| p == package) {
        return Ok(path);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "--target", TARGET, "-p", package])
        .output()
        .with_context(|| format!("cannot run cargo to build {package}"))?;
    if !output.status.success() {
        bail!(
            "building {package} for {TARGET} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if !path.exists() {
        bail!("{} was not produced by the build", path.display());
    }
    built.push(package.to_string());
    Ok(path)
}

fn from_env_or_build(variable: &str, package: &str, file: &str) -> Result<PathBuf> {
    match std::env::var_os(variable) {
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.exists() {
                bail!("{variable}={} does not exist", path.display());
            }
            Ok(path)
        }
        None => build(package, file),
    }
}

/// The product: `consul_enricher.wasm`.
pub fn filter_wasm() -> Result<PathBuf> {
    from_env_or_build(
        "CONSUL_ENRICHER_WASM",
        "consul-enricher",
        "consul_enricher.wasm",
    )
}

/// The benchmark floor and the host's own test subject.
pub fn baseline_wasm() -> Result<PathBuf> {
    from_env_or_build(
        "BASELINE_FILTER_WASM",
        "baseline-filter",
        "baseline_filter.wasm",
    )
}
