//! Real echo-service processes as Envoy's upstream instances: each answers `/echo` with the
//! `x-consul-*` headers, `baggage` and `traceparent` it received and names itself.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::workspace_root;

/// The echo-service binary: `ECHO_SERVICE_BIN`, or the debug build in the target directory.
pub fn echo_service_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("ECHO_SERVICE_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target"))
            .join("debug/echo-service"),
    };
    if !path.exists() {
        bail!(
            "no echo-service at {}: cargo build -p echo-service (or set ECHO_SERVICE_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// One echo-service instance, stopped when dropped.
pub struct EchoService {
    child: Child,
    addr: SocketAddr,
    pub id: String,
}

impl EchoService {
    /// An instance `id` of the service `echo`, not registered anywhere (the test registers
    /// it in its Consul), exporting no spans unless `env` says so.
    pub fn start(id: &str, env: &[(&str, &str)]) -> Result<EchoService> {
        let mut command = Command::new(echo_service_binary()?);
        command
            .env_clear()
            .env("SERVICE_ID", id)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: as for Envoy: the kernel ends the instance when this process ends.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command.spawn().context("starting echo-service")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("echo-service has no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow!("echo-service said {line:?}"))?
            .parse()?;
        Ok(EchoService {
            child,
            addr,
            id: id.to_string(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
