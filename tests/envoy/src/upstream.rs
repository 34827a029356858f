//! An upstream on loopback that answers `200 ok` to every request, for the benchmarks: fast
//! enough that what is measured is the gateway in front of it.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

/// An HTTP/1.1 server on 127.0.0.1 answering `200 ok` to every request; each request's head
/// goes to `on_request` first, a body (by `content-length`, e.g. an OTLP export) is read and
/// dropped. One thread serves every connection (epoll, through tokio), so that the upstream
/// takes as little of a small machine as it can.
pub struct OkUpstream {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl OkUpstream {
    pub fn start(on_request: impl Fn(&str) + Send + Sync + 'static) -> Result<OkUpstream> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let on_request: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(on_request);
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                let accept = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(serve_connection(stream, Arc::clone(&on_request)));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Ok(OkUpstream {
            addr,
            stop: Some(stop),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for OkUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The `content-length` of a request head (0 without one).
fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Answers each request on the connection until it closes.
async fn serve_connection(stream: TcpStream, on_request: Arc<dyn Fn(&str) + Send + Sync>) {
    // Each answer is one write, so Nagle's algorithm never holds one back; without it a
    // small answer can still wait for the peer's delayed ACK (up to 40 ms on Linux).
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let mut answers = 0;
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let request_len = end + 4 + content_length(&head);
            if buffer.len() < request_len {
                break;
            }
            on_request(&head);
            buffer.drain(..request_len);
            answers += 1;
        }
        if write_all(&stream, &RESPONSE.repeat(answers)).await.is_err() {
            return;
        }
        if stream.readable().await.is_err() {
            return;
        }
        match stream.try_read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{Read as _, Write as _};

    #[test]
    fn answers_requests_with_and_without_bodies_on_one_connection() {
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        let upstream = OkUpstream::start(move |head| {
            if let Ok(mut heads) = seen.lock() {
                heads.push(head.lines().next().unwrap_or_default().to_string());
            }
        })
        .unwrap();
        let mut stream = std::net::TcpStream::connect(upstream.addr()).unwrap();
        stream
            .write_all(b"POST /v1/traces HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello")
            .unwrap();
        stream.write_all(b"GET /echo HTTP/1.1\r\n\r\n").unwrap();
        let mut answers = vec![0u8; RESPONSE.len() * 2];
        stream.read_exact(&mut answers).unwrap();
        assert_eq!(answers, [RESPONSE, RESPONSE].concat());
        assert_eq!(
            *heads.lock().unwrap(),
            ["POST /v1/traces HTTP/1.1", "GET /echo HTTP/1.1"]
        );
    }
}
