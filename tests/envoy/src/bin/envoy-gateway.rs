//! The official Envoy with `consul_enricher.wasm`, from envoy/envoy.yaml on loopback, for
//! the browser runs, the demo and the benchmarks:
//!
//!   envoy-gateway --consul ADDR --echo ADDR [--echo ADDR]... [options]
//!
//! Prints `http://127.0.0.1:<port>` (the gateway listener) and `admin http://...` once Envoy
//! is ready, copies Envoy's log to stderr as it grows, and stops Envoy on SIGTERM or SIGINT.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _, Result};
use real_envoy::{filter_wasm, Envoy, Loopback};
use serde_json::Value;

const USAGE: &str = "\
usage: envoy-gateway --consul ADDR --echo ADDR [--echo ADDR]... [options]

  --consul ADDR          Consul's HTTP API, ip:port (envoy.yaml's cluster consul)
  --echo ADDR            an instance of the service echo, ip:port (cluster echo; repeatable)
  --otlp ADDR            OTLP/HTTP receiver, ip:port, for Envoy's spans and the filter's
                         (cluster otel-collector); without it, no span leaves Envoy
  --wasm PATH            the filter (default dist/consul_enricher.wasm)
  --workers N            Envoy's worker threads (default 2)
  --config-json JSON     merged over envoy.yaml's filter configuration
  --allow-origin ORIGIN  CORS origin allowed to call the gateway (repeatable)
  --port N               the gateway listener's port on 127.0.0.1 (default 0: a free one)
";

fn main() {
    if let Err(error) = run() {
        eprintln!("envoy-gateway: {error:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let (loopback, workers) = parse(std::env::args().skip(1))?;
    // Blocked before Envoy's child and any thread exist, so that they arrive only here.
    let signals = block_termination_signals();
    let mut envoy = Envoy::start(&loopback, workers)?;
    println!("{}", envoy.url(""));
    println!("admin http://{}", envoy.admin_addr());
    std::io::stdout().flush()?;
    let mut log = LogFollower::default();
    loop {
        log.copy_new(&envoy)?;
        if wait_for_signal(&signals, 200) {
            break;
        }
    }
    envoy.stop();
    log.copy_new(&envoy)?;
    Ok(())
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<(Loopback, usize)> {
    let mut loopback = Loopback::new(filter_wasm());
    let mut workers = 2;
    let mut echoes: Vec<SocketAddr> = Vec::new();
    let mut consul = None;
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))?;
        let addr = |value: &str| -> Result<SocketAddr> {
            value
                .parse()
                .with_context(|| format!("{flag}: {value} is not ip:port"))
        };
        match flag.as_str() {
            "--consul" => consul = Some(addr(&value)?),
            "--echo" => echoes.push(addr(&value)?),
            "--otlp" => loopback = loopback.cluster("otel-collector", [addr(&value)?]),
            "--wasm" => loopback.wasm = PathBuf::from(value),
            "--workers" => workers = value.parse().context("--workers")?,
            "--config-json" => {
                let extra: Value = serde_json::from_str(&value).context("--config-json")?;
                loopback = loopback.filter_config(extra);
            }
            "--allow-origin" => loopback.allow_origins.push(value),
            "--port" => loopback.port = value.parse().context("--port")?,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let consul = consul.ok_or_else(|| anyhow!("--consul is required\n{USAGE}"))?;
    if echoes.is_empty() {
        bail!("at least one --echo is required\n{USAGE}");
    }
    Ok((
        loopback.cluster("consul", [consul]).cluster("echo", echoes),
        workers,
    ))
}

/// Copies what Envoy's log gained since the last call to stderr.
#[derive(Default)]
struct LogFollower {
    offset: u64,
}

impl LogFollower {
    fn copy_new(&mut self, envoy: &Envoy) -> Result<()> {
        let Ok(mut file) = std::fs::File::open(envoy.log_path()) else {
            return Ok(());
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let mut new = Vec::new();
        file.read_to_end(&mut new)?;
        self.offset += new.len() as u64;
        std::io::stderr().write_all(&new)?;
        Ok(())
    }
}

/// Blocks SIGTERM and SIGINT for `wait_for_signal`, and asks for SIGTERM when the parent
/// (a browser run, a benchmark) ends without stopping this process.
fn block_termination_signals() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is what sigemptyset initialises; the calls only touch it,
    // this thread's signal mask (which the threads started later inherit) and this
    // process's parent-death signal.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// True if SIGTERM or SIGINT arrived within `millis`.
fn wait_for_signal(set: &libc::sigset_t, millis: i64) -> bool {
    let timeout = libc::timespec {
        tv_sec: millis / 1000,
        tv_nsec: (millis % 1000) * 1_000_000,
    };
    // SAFETY: `set` is an initialised signal set, `timeout` a valid timespec, and a null
    // siginfo is allowed.
    unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) > 0 }
}
