//! Loopback HTTP/1.1 server shared by the stand-ins: it runs on its own thread with its own
//! tokio runtime (so sync and async tests can use it alike), stops when asked or dropped, and
//! can drop a connection with a TCP reset instead of answering.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// What a handler does with a request.
pub(crate) enum Reply {
    Respond(Response<Full<Bytes>>),
    /// Close the connection with a TCP reset, without answering.
    Reset,
    /// Send the headers and half the body of this response, then reset the connection.
    ResetMidBody(Response<Full<Bytes>>),
}

pub(crate) type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, request: Request<Incoming>) -> ReplyFuture;
}

/// A running server; stops on [`LoopbackServer::stop`] or drop.
pub(crate) struct LoopbackServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackServer {
    pub(crate) fn start(
        thread_name: &str,
        listen: SocketAddr,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Self> {
        let listener = StdTcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (shutdown, shutdown_requested) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(thread_name.to_owned())
            .spawn(move || runtime.block_on(accept_loop(listener, handler, shutdown_requested)))?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, drops every open connection (pending blocking queries included) and
    /// waits for the server thread to end.
    pub(crate) fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // The receiver is gone only if the thread already ended; nothing left to stop.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic in the server thread has already been reported on stderr.
            let _ = thread.join();
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listener: StdTcpListener,
    handler: Arc<dyn Handler>,
    mut shutdown_requested: oneshot::Receiver<()>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("stand-in: cannot register listener with the runtime: {error}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut shutdown_requested => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, handler.clone()));
                }
                Err(error) => {
                    // Typically out of file descriptors: wait instead of spinning.
                    eprintln!("stand-in: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

#[derive(Debug)]
pub(crate) struct ResetRequested;

impl fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection reset on purpose")
    }
}

impl Error for ResetRequested {}

async fn serve_connection(stream: TcpStream, handler: Arc<dyn Handler>) {
    // A second descriptor of the same socket outlives hyper's, so a reset can be armed
    // (SO_LINGER 0) and takes effect when the last descriptor closes.
    let Some((stream, socket)) = duplicate(stream) else {
        return;
    };
    let socket = Arc::new(socket);
    let service = service_fn(move |request| {
        let handler = handler.clone();
        let socket = socket.clone();
        async move {
            match handler.handle(request).await {
                Reply::Respond(response) => Ok(response.map(Either::Left)),
                Reply::Reset => {
                    arm_reset(&socket);
                    Err(ResetRequested)
                }
                Reply::ResetMidBody(response) => {
                    arm_reset(&socket);
                    Ok(truncated(response).await.map(Either::Right))
                }
            }
        }
    });
    // Errors here are the client going away or a reset on purpose; both end the connection.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// SO_LINGER 0: closing the socket resets the connection.
fn arm_reset(socket: &StdTcpStream) {
    if let Err(error) = SockRef::from(socket).set_linger(Some(Duration::ZERO)) {
        eprintln!("stand-in: cannot arm connection reset: {error}");
    }
}

/// The response with its full `Content-Length` but only half its body, then a failure:
/// hyper ends the connection there, and the armed linger turns that into a reset.
async fn truncated(response: Response<Full<Bytes>>) -> Response<HalfThenFail> {
    let (mut parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    parts.headers.insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from(body.len()),
    );
    Response::from_parts(parts, HalfThenFail::new(body.slice(..body.len() / 2)))
}

/// A body of unknown size (so hyper sends the `Content-Length` it is given, where a known
/// shorter size fails hyper's own check) that yields its bytes, waits for them to be sent
/// (hyper flushes while a body has nothing ready), then fails.
pub(crate) struct HalfThenFail {
    half: Option<Bytes>,
    sent: Pin<Box<tokio::time::Sleep>>,
}

impl HalfThenFail {
    fn new(half: Bytes) -> Self {
        Self {
            half: Some(half),
            sent: Box::pin(tokio::time::sleep(Duration::from_millis(20))),
        }
    }
}

impl Body for HalfThenFail {
    type Data = Bytes;
    type Error = ResetRequested;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResetRequested>>> {
        if let Some(half) = self.half.take() {
            return Poll::Ready(Some(Ok(Frame::data(half))));
        }
        self.sent
            .as_mut()
            .poll(context)
            .map(|()| Some(Err(ResetRequested)))
    }
}

fn duplicate(stream: TcpStream) -> Option<(TcpStream, StdTcpStream)> {
    let std_stream = stream.into_std().ok()?;
    let second = std_stream.try_clone().ok()?;
    let _ = std_stream.set_nodelay(true);
    let stream = TcpStream::from_std(std_stream).ok()?;
    Some((stream, second))
}

/// Reads a request body up to `limit` bytes; `None` if it is larger or the read fails.
pub(crate) async fn read_body(body: Incoming, limit: usize) -> Option<Bytes> {
    Limited::new(body, limit)
        .collect()
        .await
        .ok()
        .map(|collected| collected.to_bytes())
}

pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body.into())
}

/// An address on which nothing listens: bound to a free port, then released.
pub fn closed_port_addr() -> SocketAddr {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local address of a bound socket")
}
