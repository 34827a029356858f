//! The way to the filter's Consul, which the soak can cut: a TCP relay on a fixed loopback
//! address in front of the Consul stand-in. Closed, nothing listens on the address (a
//! connection is refused, as by a Consul agent that is down) and every relayed connection is
//! reset; open again, it listens on the same address.
//!
//! The relay keeps what the stand-in does to a connection: its end of the answer, or a reset
//! (the stand-in's `Reset` and `ResetMidBody` faults), which it passes on as a reset.

use std::collections::HashMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use socket2::SockRef;

/// How long re-opening waits for the address to be free again.
const REBIND: Duration = Duration::from_secs(5);

/// One relayed connection.
struct Link {
    client: TcpStream,
    consul: TcpStream,
    cut: AtomicBool,
}

impl Link {
    /// Resets the client's side and wakes both directions, which then end.
    fn cut(&self) {
        if !self.cut.swap(true, Ordering::SeqCst) {
            let _ = SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
            let _ = self.client.shutdown(Shutdown::Read);
            let _ = self.consul.shutdown(Shutdown::Read);
        }
    }
}

#[derive(Default)]
struct Relayed {
    next: AtomicU64,
    /// Every relayed connection, so that closing the gate can cut them.
    links: Mutex<HashMap<u64, Arc<Link>>>,
}

impl Relayed {
    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Link>>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct ConsulGate {
    addr: SocketAddr,
    target: SocketAddr,
    relayed: Arc<Relayed>,
    accepting: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl ConsulGate {
    /// An open gate on `listen` (port 0: any free one) relaying to `target`.
    pub fn open_on(listen: SocketAddr, target: SocketAddr) -> Result<ConsulGate> {
        let listener =
            TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        let mut gate = ConsulGate {
            addr: listener.local_addr()?,
            target,
            relayed: Arc::new(Relayed::default()),
            accepting: None,
        };
        gate.accept_on(listener);
        Ok(gate)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Listens again on the same address (if closed).
    pub fn open(&mut self) -> Result<()> {
        if self.accepting.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + REBIND;
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(error) if error.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => bail!("cannot listen on {} again: {error}", self.addr),
            }
        };
        self.accept_on(listener);
        Ok(())
    }

    /// Stops listening and resets every relayed connection.
    pub fn close(&mut self) {
        if let Some((stop, thread)) = self.accepting.take() {
            stop.store(true, Ordering::SeqCst);
            // Wakes the accept loop so it sees the flag and drops the listener.
            let _ = TcpStream::connect(self.addr);
            let _ = thread.join();
        }
        for (_, link) in self.relayed.links().drain() {
            link.cut();
        }
    }

    fn accept_on(&mut self, listener: TcpListener) {
        let stop = Arc::new(AtomicBool::new(false));
        let (relayed, target, thread_stop) =
            (Arc::clone(&self.relayed), self.target, Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for client in listener.incoming() {
                if thread_stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(client) = client {
                    relay(client, target, &relayed);
                }
            }
        });
        self.accepting = Some((stop, thread));
    }
}

impl Drop for ConsulGate {
    fn drop(&mut self) {
        self.close();
    }
}

/// Relays one connection, a thread per direction; a connection the target refuses is reset.
fn relay(client: TcpStream, target: SocketAddr, relayed: &Arc<Relayed>) {
    let Ok(consul) = TcpStream::connect(target) else {
        let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
        return;
    };
    let link = Arc::new(Link {
        client,
        consul,
        cut: AtomicBool::new(false),
    });
    let id = relayed.next.fetch_add(1, Ordering::Relaxed);
    relayed.links().insert(id, Arc::clone(&link));
    for towards_consul in [true, false] {
        let (link, relayed) = (Arc::clone(&link), Arc::clone(relayed));
        std::thread::spawn(move || {
            let (from, to) = match towards_consul {
                true => (&link.client, &link.consul),
                false => (&link.consul, &link.client),
            };
            pipe(from, to, &link);
            relayed.links().remove(&id);
        });
    }
}

/// Copies one direction until its end (passed on as an end) or a failure (which cuts the
/// connection: a reset from the stand-in reaches the client as a reset).
fn pipe(mut from: &TcpStream, mut to: &TcpStream, link: &Link) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) => {
                if !link.cut.load(Ordering::SeqCst) {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    link.cut();
                    return;
                }
            }
            Err(_) => {
                link.cut();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use consul_enricher_bench::OkUpstream;

    fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        let mut answer = String::new();
        let mut buffer = [0u8; 256];
        while !answer.ends_with("ok") {
            match stream.read(&mut buffer)? {
                0 => break,
                n => answer.push_str(&String::from_utf8_lossy(&buffer[..n])),
            }
        }
        Ok(answer)
    }

    #[test]
    fn relays_refuses_when_closed_and_relays_again() {
        let upstream = OkUpstream::start(|_| {}).unwrap();
        let mut gate =
            ConsulGate::open_on("127.0.0.1:0".parse().unwrap(), upstream.addr()).unwrap();
        assert!(get(gate.addr()).unwrap().starts_with("HTTP/1.1 200"));
        let idle = TcpStream::connect(gate.addr()).unwrap();
        gate.close();
        let refused = TcpStream::connect(gate.addr()).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        let mut buffer = [0u8; 8];
        idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(
            matches!((&idle).read(&mut buffer), Err(_) | Ok(0)),
            "a relayed connection ends with the gate"
        );
        gate.open().unwrap();
        assert!(get(gate.addr()).unwrap().starts_with("HTTP/1.1 200"));
    }
}
