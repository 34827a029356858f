//! Runs the real echo-service binary for the integration tests: spawned with a given
//! environment, its announced address read from stdout, its stderr kept for assertions,
//! stopped with a real signal.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const START_TIMEOUT: Duration = Duration::from_secs(20);
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

pub struct EchoProcess {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl EchoProcess {
    /// Starts the binary with exactly `env` (plus `PATH`) and waits for `listening on`.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut child = command(env)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn echo-service");
        let stderr = collect_stderr(&mut child);
        let stdout = child.stdout.take().expect("piped stdout");
        let (first_line, first_line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first_line.send(lines.next());
            // Keep draining so the process never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match first_line_rx.recv_timeout(START_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                panic!(
                    "no `listening on` line ({other:?}); stderr:\n{}",
                    stderr.lock().expect("stderr lock")
                );
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first stdout line {line:?}"));
        Self {
            child,
            addr,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; panics with its stderr if it does not.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "echo-service did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and expects a clean exit (status 0).
    pub fn stop_with(&mut self, signal: &str) {
        self.signal(signal);
        let status = self.wait(EXIT_TIMEOUT);
        assert!(
            status.success(),
            "exit status {status} after SIG{signal}; stderr:\n{}",
            self.stderr()
        );
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The binary with a clean environment, so variables of the machine running the tests
/// (a real `CONSUL_HTTP_ADDR`, say) cannot leak in.
pub fn command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_echo-service"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let collected = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().expect("piped stderr");
    let sink = Arc::clone(&collected);
    thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read @ 1..) = stderr.read(&mut buffer) {
            sink.lock()
                .expect("stderr lock")
                .push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    });
    collected
}

pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", self.body))
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn into_reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut response = result.expect("HTTP request to echo-service");
    Reply {
        status: response.status().as_u16(),
        body: response.body_mut().read_to_string().expect("response body"),
    }
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    into_reply(request.call())
}

pub fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut request = agent().post(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    into_reply(request.send(body))
}

/// Polls `probe` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(25));
    }
}
