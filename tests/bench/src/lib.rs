//! What the benchmark binaries (`bench-host`, `bench-fleet`, `bench-soak`) share: the
//! `gateway` binary, one gateway process, and an upstream on loopback that answers every
//! request.

pub mod gateway;
pub mod stats;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};

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

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

/// An HTTP/1.1 server on 127.0.0.1 answering `200 ok` to every request (GETs without
/// bodies), a thread per connection; each request's head goes to `on_request` first.
pub struct OkUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl OkUpstream {
    pub fn start(on_request: impl Fn(&str) + Send + Sync + 'static) -> Result<OkUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let on_request = Arc::new(on_request);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let on_request = Arc::clone(&on_request);
                    std::thread::spawn(move || serve_connection(stream, &*on_request));
                }
            }
        });
        Ok(OkUpstream { addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for OkUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Answers each request head on the connection until it closes.
fn serve_connection(mut stream: TcpStream, on_request: &dyn Fn(&str)) {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            on_request(&String::from_utf8_lossy(&buffer[..end]));
            buffer.drain(..end + 4);
            if stream.write_all(RESPONSE).is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}
