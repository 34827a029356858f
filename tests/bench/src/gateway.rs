//! One `gateway` process (the test host's serve mode): started with the filter and a
//! configuration, its stderr read as it runs, stopped with SIGTERM so it prints its exit
//! report (metrics, wasm memory per worker, shared-data size).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

/// What the filter logs when it refuses its configuration (and the gateway then passes
/// every request through), or a setting its host cannot have (Kong has no `consul.watch`:
/// the filter refreshes every TTL instead, so a watch-mode figure would be poll mode's).
const REFUSALS: [&str; 2] = ["invalid configuration", "consul.watch is off on Kong"];
/// Lines of other output kept for error messages.
const KEPT_LINES: usize = 20;
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The kernel's clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks_per_second() -> Result<f64> {
    let output = Command::new("getconf").arg("CLK_TCK").output()?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK")
}

#[derive(Default)]
struct Stderr {
    refusal: Option<String>,
    report: Vec<String>,
    other: Vec<String>,
}

/// The exit report of a stopped gateway.
#[derive(Debug, Clone)]
pub struct ExitReport {
    pub worker_memory_bytes: Vec<u64>,
    pub shared_data_keys: u64,
    pub shared_data_bytes: u64,
}

pub struct Gateway {
    child: Child,
    /// `host:port`
    pub addr: String,
    stderr: Arc<Mutex<Stderr>>,
    reader: Option<JoinHandle<()>>,
}

pub struct Launch<'a> {
    pub binary: &'a Path,
    pub wasm: &'a Path,
    pub workers: usize,
    pub config: &'a str,
    pub instances: Instances<'a>,
}

/// Where the gateway sends a request.
pub enum Instances<'a> {
    /// Every request to this `ip:port`.
    Upstream(&'a str),
    /// To an instance of the request's service from this Consul (`http://host:port`), the
    /// path without `/svc/<service>` (Kong's `strip_path`).
    Consul(&'a str),
}

impl Gateway {
    /// Starts a gateway routing `/svc/<service>/...` to the service `<service>`.
    pub fn start(launch: &Launch<'_>) -> Result<Gateway> {
        let mut command = Command::new(launch.binary);
        command
            .arg("--wasm")
            .arg(launch.wasm)
            .args(["--workers", &launch.workers.to_string()])
            .args(["--config-json", launch.config])
            .args(["--route", "/svc=*"])
            .args(["--shm-zone", "consul_enricher"])
            .args(["--log-level", "warn"]);
        match launch.instances {
            Instances::Upstream(addr) => command.args(["--upstream", addr]),
            Instances::Consul(url) => command.args(["--consul", url, "--strip-path"]),
        };
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", launch.binary.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let stderr_pipe = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let stderr = Arc::new(Mutex::new(Stderr::default()));
        let reader = {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                    let mut kept = stderr.lock().unwrap_or_else(PoisonError::into_inner);
                    if REFUSALS.iter().any(|r| line.contains(r)) {
                        kept.refusal.get_or_insert(line);
                    } else if is_report_line(&line) {
                        kept.report.push(line);
                    } else if kept.other.len() < KEPT_LINES {
                        kept.other.push(line);
                    }
                }
            })
        };
        let mut gateway = Gateway {
            child,
            addr: String::new(),
            stderr,
            reader: Some(reader),
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        match line.trim().strip_prefix("http://") {
            Some(addr) => gateway.addr = addr.to_string(),
            None => bail!(
                "the gateway did not print its URL (got {line:?}); its stderr: {}",
                gateway.output()
            ),
        }
        Ok(gateway)
    }

    /// The filter's refusal of its configuration, if it logged one.
    pub fn refusal(&self) -> Option<String> {
        self.lock().refusal.clone()
    }

    /// The first lines of the gateway's other output, for error messages.
    pub fn output(&self) -> String {
        self.lock().other.join("\n")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stderr> {
        self.stderr.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resident memory of the gateway process, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        real_envoy::rss_kib(self.child.id())
    }

    /// CPU time the process has used so far (user + system), from `/proc/<pid>/stat`
    /// (fields 14 and 15, in clock ticks: proc(5)).
    pub fn cpu_time(&self) -> Result<Duration> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // The command name (field 2) is in parentheses and may hold spaces.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |index: usize| -> Result<u64> {
            fields
                .get(index)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| anyhow!("no CPU field {index} in /proc/{pid}/stat"))
        };
        // After the name, field 3 is at index 0: utime (14) at 11, stime (15) at 12.
        let total = ticks(11)? + ticks(12)?;
        Ok(Duration::from_secs_f64(
            total as f64 / clock_ticks_per_second()?,
        ))
    }

    /// SIGTERM, wait for the exit, and read the exit report.
    pub fn stop(mut self) -> Result<ExitReport> {
        let pid = self.child.id().to_string();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("cannot run kill")?;
        if !signalled.success() {
            bail!("kill -TERM {pid} failed");
        }
        let give_up = Instant::now() + STOP_GRACE;
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= give_up {
                bail!("gateway {pid} did not stop within {STOP_GRACE:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(reader) = self.reader.take() {
            // The pipe closed with the process; a panicked reader only loses lines.
            let _ = reader.join();
        }
        let stderr = self.lock();
        parse_report(&stderr.report).with_context(|| {
            format!(
                "gateway {pid} exit report; its stderr: {}",
                stderr.other.join("\n")
            )
        })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn is_report_line(line: &str) -> bool {
    line.starts_with("wasm_memory_bytes ")
        || line.starts_with("shared_data ")
        || line.starts_with("trap: ")
}

/// `wasm_memory_bytes worker N = B`, `shared_data keys = K`, `shared_data bytes = B`; a
/// trap is an error.
fn parse_report(lines: &[String]) -> Result<ExitReport> {
    if let Some(trap) = lines.iter().find(|l| l.starts_with("trap: ")) {
        bail!("the filter trapped: {trap}");
    }
    let value = |line: &str| -> Result<u64> {
        line.rsplit_once(" = ")
            .and_then(|(_, value)| value.trim().parse().ok())
            .ok_or_else(|| anyhow!("unreadable report line {line:?}"))
    };
    let mut worker_memory_bytes = Vec::new();
    let mut keys = None;
    let mut bytes = None;
    for line in lines {
        if line.starts_with("wasm_memory_bytes worker ") {
            worker_memory_bytes.push(value(line)?);
        } else if line.starts_with("shared_data keys = ") {
            keys = Some(value(line)?);
        } else if line.starts_with("shared_data bytes = ") {
            bytes = Some(value(line)?);
        }
    }
    match (worker_memory_bytes.is_empty(), keys, bytes) {
        (false, Some(shared_data_keys), Some(shared_data_bytes)) => Ok(ExitReport {
            worker_memory_bytes,
            shared_data_keys,
            shared_data_bytes,
        }),
        _ => bail!("no memory and shared-data lines in the exit report"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_exit_report() {
        let lines: Vec<String> = [
            "wasm_memory_bytes worker 0 = 1310720",
            "wasm_memory_bytes worker 1 = 1376256",
            "shared_data keys = 1002",
            "shared_data bytes = 345678",
        ]
        .map(String::from)
        .to_vec();
        let report = parse_report(&lines).unwrap();
        assert_eq!(report.worker_memory_bytes, [1310720, 1376256]);
        assert_eq!(
            (report.shared_data_keys, report.shared_data_bytes),
            (1002, 345678)
        );
        assert!(parse_report(&lines[..2]).is_err());
        let mut trapped = lines.clone();
        trapped.push("trap: unreachable".to_string());
        assert!(parse_report(&trapped).is_err());
    }
}
