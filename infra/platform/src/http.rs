//! Serving an axum router with the deadlines and bounds `axum::serve` lacks.
//!
//! Every way a client can hold a connection without using it has a deadline, so no client,
//! however many sockets it opens, can keep the API from anyone else:
//! - the first bytes, up to telling HTTP/1 from HTTP/2, must come within
//!   `handshake_timeout` (a socket that sends nothing, or half of the HTTP/2 preface, is
//!   closed then);
//! - an HTTP/1 request's headers must come within `header_read_timeout`, and a kept-alive
//!   connection's next request too;
//! - an HTTP/2 connection is pinged every `h2_keep_alive` and closed when a ping goes
//!   unanswered;
//! - a connection of either kind with no request under way for `idle_timeout` is closed
//!   (HTTP/2 with a GOAWAY, so a client that is between requests starts a new one cleanly).
//!
//! At most `max_connections` are open at once: past that the listener is not read, so new
//! connections wait in the kernel's accept queue, where they cost the process nothing,
//! instead of each holding buffers and a task here. While one waits, every connection open
//! for a `turn` or more closes after its current answer, so waiting clients get their turn.
//! One client address holds at most `max_connections_per_address` of them (proxies named in
//! `unlimited` are exempt: every client behind them shares their address); a connection past
//! that is closed as soon as it is accepted, so one address cannot take the slots of others.
//! Shutdown stops accepting, lets in-flight requests finish within a deadline, then returns.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A new connection must send enough to tell its protocol (the HTTP/2 preface, or the
    /// first bytes of an HTTP/1 request) within this time.
    pub handshake_timeout: Duration,
    /// A connection must send a request's headers within this time, and an idle kept-alive
    /// connection its next request: so no idle client holds one of `max_connections` longer.
    pub header_read_timeout: Duration,
    /// A connection with no request under way for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 connections are pinged this often, and closed when a ping goes unanswered for
    /// as long.
    pub h2_keep_alive: Duration,
    /// In-flight requests get this long to finish after shutdown is requested.
    pub drain_deadline: Duration,
    /// Connections open at once; the next waits in the kernel's accept queue until one
    /// closes.
    pub max_connections: usize,
    /// Connections open at once from one client address; the next is closed at once.
    pub max_connections_per_address: usize,
    /// Addresses exempt from `max_connections_per_address` (reverse proxies).
    pub unlimited: Vec<crate::net::IpRange>,
    /// How long a connection keeps its slot while another waits: at the cap at most
    /// `max_connections` connections per turn are closed and opened again.
    pub turn: Duration,
}

/// Each costs 35 to 45 KB under load (buffers, the task, a request being read): 1,024 of them
/// add about 45 MB to the ingress's 29 MB at rest.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// A quarter of [`DEFAULT_MAX_CONNECTIONS`]: four addresses are needed to fill the process,
/// and 256 clients behind one NAT still get in.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            h2_keep_alive: Duration::from_secs(20),
            drain_deadline: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            unlimited: Vec::new(),
            turn: Duration::from_secs(1),
        }
    }
}

/// Connections the kernel queues for a listener past `max_connections` (the system's
/// `net.core.somaxconn` may lower it). Past this queue the kernel drops a new connection's
/// first packet, and its client sends it again a second later.
pub const ACCEPT_QUEUE: u32 = 1024;

/// Binds a listener with an accept queue of [`ACCEPT_QUEUE`]: `TcpListener::bind` gives 128.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted service binds again while the last one's connections are in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_QUEUE)
}

/// The two ways a connection is served once its protocol is known.
struct Builders {
    http1: Builder<TokioExecutor>,
    http2: Builder<TokioExecutor>,
}

impl Builders {
    fn new(options: &ServeOptions) -> Self {
        let mut http1 = Builder::new(TokioExecutor::new()).http1_only();
        http1
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout);
        let mut http2 = Builder::new(TokioExecutor::new()).http2_only();
        http2
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(options.h2_keep_alive)
            .keep_alive_timeout(options.h2_keep_alive);
        Self { http1, http2 }
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains.
/// Handlers can extract `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    options: ServeOptions,
) -> std::io::Result<()> {
    let builders = Arc::new(Builders::new(&options));
    let slots = Arc::new(Slots::new(options.max_connections));
    let per_address = Arc::new(PerAddress::new(
        options.max_connections_per_address,
        options.unlimited.clone(),
    ));
    let options = Arc::new(options);
    let connections = TaskTracker::new();
    let abort = CancellationToken::new();
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(admitted) = per_address.admit(remote.ip()) else {
            metrics::counter!("herald_http_connections_refused_total", "reason" => "per_address")
                .increment(1);
            tracing::debug!(%remote, "connection refused: its address holds too many");
            continue;
        };
        // At the cap this one connection waits here, and the next in the kernel's queue.
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.take() => slot,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            stream,
            remote,
            held: Held::new(slot, admitted),
            router: router.clone(),
            builders: builders.clone(),
            options: options.clone(),
            slots: slots.clone(),
        };
        let (shutdown, abort) = (shutdown.clone(), abort.clone());
        connections.spawn(async move {
            connection.run(&shutdown, &abort).await;
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(options.drain_deadline, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain deadline; closing them");
        abort.cancel();
        connections.wait().await;
    }
    Ok(())
}

/// The HTTP/2 connection preface (RFC 9113, 3.4): a connection that starts with it speaks
/// HTTP/2, any other speaks HTTP/1.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Reads until the protocol is known: the first byte that leaves the preface, or the whole
/// preface. Returns the protocol and the bytes read, which the connection reads again.
async fn detect(stream: &mut TcpStream) -> std::io::Result<(Protocol, Vec<u8>)> {
    let mut read = Vec::with_capacity(PREFACE.len());
    let mut chunk = [0u8; PREFACE.len()];
    loop {
        let n = stream
            .read(&mut chunk[..PREFACE.len() - read.len()])
            .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        read.extend_from_slice(&chunk[..n]);
        if !PREFACE.starts_with(&read) {
            return Ok((Protocol::Http1, read));
        }
        if read.len() == PREFACE.len() {
            return Ok((Protocol::Http2, read));
        }
    }
}

/// One accepted connection and what serving it takes.
struct Connection {
    stream: TcpStream,
    remote: SocketAddr,
    held: Held,
    router: Router,
    builders: Arc<Builders>,
    options: Arc<ServeOptions>,
    slots: Arc<Slots>,
}

impl Connection {
    /// Serves the connection until the client or a deadline closes it; on `shutdown` lets its
    /// requests under way finish; on `abort` drops it.
    async fn run(mut self, shutdown: &CancellationToken, abort: &CancellationToken) {
        let detected = tokio::select! {
            () = shutdown.cancelled() => return,
            detected = tokio::time::timeout(self.options.handshake_timeout, detect(&mut self.stream)) => detected,
        };
        let (protocol, read) = match detected {
            Ok(Ok(detected)) => detected,
            Ok(Err(err)) => {
                tracing::debug!(remote = %self.remote, %err, "connection closed before a request");
                return;
            }
            Err(_) => {
                metrics::counter!("herald_http_handshake_timeouts_total").increment(1);
                tracing::debug!(remote = %self.remote, "no request within the handshake timeout");
                return;
            }
        };
        let activity = Arc::new(Activity::new());
        // The router as this connection's service: it gives handlers the client's address,
        // tracks which requests are under way, and at the cap ends the connection's turn.
        let (remote, slots, opened, turn) = (
            self.remote,
            self.slots.clone(),
            Instant::now(),
            self.options.turn,
        );
        let (started, answered) = (activity.clone(), activity.clone());
        let service = self
            .router
            .clone()
            .map_request(
                move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                    started.begin();
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(remote));
                    request
                },
            )
            .map_response(move |mut response: axum::response::Response| {
                answered.end();
                // Kept-alive clients take turns with those waiting, rather than keeping them
                // out for as long as they stay busy.
                if slots.wanted() && opened.elapsed() >= turn {
                    match protocol {
                        Protocol::Http1 => {
                            let close = HeaderValue::from_static("close");
                            response.headers_mut().insert(header::CONNECTION, close);
                        }
                        // HTTP/2 has no Connection header: a GOAWAY ends it instead.
                        Protocol::Http2 => answered.close_wanted.notify_one(),
                    }
                }
                response
            });
        let builder = match protocol {
            Protocol::Http1 => &self.builders.http1,
            Protocol::Http2 => &self.builders.http2,
        };
        let io = TokioIo::new(Replayed::new(read, self.stream, self.held));
        let connection =
            builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service));
        let mut connection = std::pin::pin!(connection);
        let mut closing = false;
        let idle_timeout = self.options.idle_timeout;
        // An idle connection closed gracefully still waits for its client (HTTP/2 sends a
        // GOAWAY and a PING, and waits for the PING's answer): a client that never answers is
        // dropped after this.
        let grace = idle_timeout.min(Duration::from_secs(5));
        let mut drop_at: Option<tokio::time::Instant> = None;
        loop {
            let dropping = async {
                match drop_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = dropping => return,
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(remote = %self.remote, err = %err, "connection closed with an error");
                    }
                    return;
                }
                () = abort.cancelled() => return,
                () = shutdown.cancelled(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = activity.idle_for(idle_timeout), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    drop_at = Some(tokio::time::Instant::now() + grace);
                }
                () = activity.close_wanted.notified(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Requests under way on one connection, and when the last one began or answered.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `opened` to the last request's start or answer.
    last: AtomicU64,
    /// The connection's turn is over (HTTP/2 at the cap).
    close_wanted: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            close_wanted: Notify::new(),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// A request answered (its body may still stream: HTTP/2's GOAWAY and HTTP/1's graceful
    /// close both let it finish).
    fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// Returns once no request has been under way for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let since =
                self.opened.elapsed() - Duration::from_millis(self.last.load(Ordering::Relaxed));
            if self.in_flight.load(Ordering::Relaxed) == 0 && since >= timeout {
                return;
            }
            tokio::time::sleep(timeout.saturating_sub(since).max(timeout / 4)).await;
        }
    }
}

/// What an open connection holds: its slot among `max_connections`, its place among its
/// address's, and its count in `herald_http_connections`; all given back when it drops.
///
/// The socket owns it, not the task serving HTTP on it: a connection upgraded to a WebSocket
/// outlives that task and keeps counting until its socket closes.
struct Held {
    _slot: OwnedSemaphorePermit,
    _admitted: Admitted,
}

impl Held {
    fn new(slot: OwnedSemaphorePermit, admitted: Admitted) -> Self {
        metrics::gauge!("herald_http_connections").increment(1);
        Self {
            _slot: slot,
            _admitted: admitted,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::gauge!("herald_http_connections").decrement(1);
    }
}

/// A stream whose first bytes, already read to tell the protocol, are read again.
struct Replayed {
    read: Vec<u8>,
    at: usize,
    stream: TcpStream,
    _held: Held,
}

impl Replayed {
    fn new(read: Vec<u8>, stream: TcpStream, held: Held) -> Self {
        Self {
            read,
            at: 0,
            stream,
            _held: held,
        }
    }
}

impl AsyncRead for Replayed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replayed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connections open per client address.
struct PerAddress {
    max: usize,
    unlimited: Vec<crate::net::IpRange>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection's place in its address's count, given back when dropped.
struct Admitted {
    addresses: Arc<PerAddress>,
    ip: Option<IpAddr>,
}

impl PerAddress {
    fn new(max: usize, unlimited: Vec<crate::net::IpRange>) -> Self {
        Self {
            max: max.max(1),
            unlimited,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A place for a connection from `ip`, or `None` when its address holds `max` already.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Admitted> {
        let ip = ip.to_canonical();
        if crate::net::in_any(&self.unlimited, ip) {
            return Some(Admitted {
                addresses: self.clone(),
                ip: None,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Admitted {
            addresses: self.clone(),
            ip: Some(ip),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut open = self
            .addresses
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// The connections a listener may have open, and whether an accepted one waits for a slot.
struct Slots {
    free: Arc<Semaphore>,
    waiting: AtomicBool,
}

impl Slots {
    fn new(max_connections: usize) -> Self {
        Self {
            free: Arc::new(Semaphore::new(max_connections.max(1))),
            waiting: AtomicBool::new(false),
        }
    }

    /// A slot for a connection just accepted, held until it closes.
    async fn take(&self) -> OwnedSemaphorePermit {
        if let Ok(slot) = self.free.clone().try_acquire_owned() {
            return slot;
        }
        self.waiting.store(true, Ordering::Relaxed);
        let slot = self.free.clone().acquire_owned().await;
        self.waiting.store(false, Ordering::Relaxed);
        slot.expect("the semaphore is never closed")
    }

    /// Whether an accepted connection waits for a slot.
    fn wanted(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(
        options: ServeOptions,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let router = Router::new()
            .route(
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "done" }));
        let token = shutdown.clone();
        let task =
            tokio::spawn(async move { serve(listener, router, token, options).await.unwrap() });
        (addr, shutdown, task)
    }

    #[tokio::test]
    async fn a_client_that_never_finishes_its_headers_is_disconnected() {
        let options = ServeOptions {
            header_read_timeout: Duration::from_millis(300),
            ..ServeOptions::default()
        };
        let (addr, shutdown, task) = start(options).await;
        // The headers' blank line never comes.
        let mut stream = send(addr, b"GET /slow HTTP/1.1\r\nhost: x\r\n").await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the connection was still open after 5 s");
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn shutdown_lets_in_flight_requests_finish() {
        let (addr, shutdown, task) = start(ServeOptions::default()).await;
        let mut stream = send(addr, CLOSE).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.cancel();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("done"));
        task.await.unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still accepting after shutdown"
        );
    }

    const KEEP_ALIVE: &[u8] = b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n";
    const CLOSE: &[u8] = b"GET /slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

    /// Sends `request` on a new connection to `addr`.
    async fn send(addr: SocketAddr, request: &[u8]) -> tokio::net::TcpStream {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        stream
    }

    /// Whether the server closes `stream` within a second.
    async fn closed(stream: &mut tokio::net::TcpStream) -> bool {
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut rest));
        end.await.is_ok()
    }

    /// Asserts that `stream` gets a 200 within five seconds: `what` says which.
    async fn served_within(stream: &mut tokio::net::TcpStream, what: &str) {
        let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(stream))
            .await
            .unwrap_or_else(|_| panic!("no answer in 5 s: {what}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{what}: {answer}");
    }

    /// Stops the server `start` began, and waits for it to return.
    async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<()>) {
        shutdown.cancel();
        task.await.unwrap();
    }

    /// Reads from `stream` until the answer's body, "done", has come.
    async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"done") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer came");
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn past_the_connection_cap_a_connection_waits_until_one_closes() {
        let options = ServeOptions {
            max_connections: 1,
            ..ServeOptions::default()
        };
        let (addr, shutdown, task) = start(options).await;
        // Holds the only slot without sending a byte.
        let first = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Connects (the kernel queues it) but is not served while the first is open.
        let mut second = send(addr, CLOSE).await;
        let early = tokio::time::timeout(Duration::from_secs(1), read_answer(&mut second)).await;
        assert!(early.is_err(), "served past the cap: {early:?}");
        drop(first);
        served_within(&mut second, "served once the first connection closed").await;
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_gives_its_slot_up() {
        let options = ServeOptions {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(500),
            ..ServeOptions::default()
        };
        let (addr, shutdown, task) = start(options).await;
        // Served, then kept alive and silent.
        let mut idle = send(addr, KEEP_ALIVE).await;
        served_within(&mut idle, "the first request").await;
        let mut next = send(addr, CLOSE).await;
        served_within(&mut next, "served once the idle connection timed out").await;
        assert!(closed(&mut idle).await, "the idle connection is still open");
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn at_the_cap_a_busy_kept_alive_connection_makes_way_for_a_waiting_one() {
        let options = ServeOptions {
            max_connections: 1,
            turn: Duration::from_secs(3),
            ..ServeOptions::default()
        };
        let (addr, shutdown, task) = start(options.clone()).await;
        let mut busy = send(addr, KEEP_ALIVE).await;
        let answer = read_answer(&mut busy).await;
        assert!(!answer.contains("connection: close"), "{answer}");
        let mut waiting = send(addr, KEEP_ALIVE).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Within its turn, the busy client keeps its connection while the other waits.
        busy.write_all(KEEP_ALIVE).await.unwrap();
        let answer = read_answer(&mut busy).await;
        assert!(!answer.contains("connection: close"), "{answer}");
        tokio::time::sleep(options.turn).await;
        // After it, the busy client's next answer closes its connection.
        busy.write_all(KEEP_ALIVE).await.unwrap();
        let answer = read_answer(&mut busy).await;
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(closed(&mut busy).await, "the busy connection is still open");
        served_within(&mut waiting, "the waiting connection was served").await;
        stop(shutdown, task).await;
    }

    /// A connection to `addr` from the loopback address `from` (127.0.0.0/8 is all local).
    async fn connect_from(from: [u8; 4], addr: SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(addr).await.unwrap()
    }

    /// Waits until the server closes `stream`, up to `limit`; true if it did.
    async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn silent_and_half_open_sockets_from_one_address_leave_the_api_to_others() {
        let options = ServeOptions {
            handshake_timeout: Duration::from_secs(1),
            ..ServeOptions::default()
        };
        let deadline = options.handshake_timeout;
        let (addr, shutdown, task) = start(options).await;
        let opened = Instant::now();
        // 2,000 sockets that never send a byte and 200 that send half the HTTP/2 preface,
        // all from 127.0.0.2, opened 100 at a time.
        let mut held = Vec::new();
        for wave in 0..22 {
            let connects = (0..100).map(|_| connect_from([127, 0, 0, 2], addr));
            let mut wave_sockets = futures_util::future::join_all(connects).await;
            if wave >= 20 {
                for socket in &mut wave_sockets {
                    socket.write_all(&PREFACE[..16]).await.unwrap();
                }
            }
            held.extend(wave_sockets);
        }
        let all_opened = opened.elapsed();
        // Meanwhile a client on another address is answered, again and again.
        let mut slowest = Duration::ZERO;
        for _ in 0..5 {
            let asked = Instant::now();
            let mut client = connect_from([127, 0, 0, 1], addr).await;
            client
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            served_within(&mut client, "/healthz while the sockets are held").await;
            slowest = slowest.max(asked.elapsed());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every held socket is closed by the server within the deadline and a margin.
        let margin = Duration::from_secs(2);
        let checks = held
            .iter_mut()
            .map(|socket| closed_within(socket, deadline + margin + all_opened));
        let closed = futures_util::future::join_all(checks).await;
        let still_open = closed.iter().filter(|closed| !**closed).count();
        let took = opened.elapsed();
        println!(
            "held {} sockets (opened in {all_opened:?}); /healthz slowest {slowest:?}; all closed after {took:?}",
            held.len()
        );
        assert_eq!(still_open, 0, "sockets the server left open");
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_of_connections() {
        let options = ServeOptions {
            max_connections_per_address: 2,
            ..ServeOptions::default()
        };
        let (addr, shutdown, task) = start(options).await;
        let _first = connect_from([127, 0, 0, 3], addr).await;
        let _second = connect_from([127, 0, 0, 3], addr).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = connect_from([127, 0, 0, 3], addr).await;
        assert!(
            closed_within(&mut third, Duration::from_secs(1)).await,
            "a third connection from the address stayed open"
        );
        let mut other = connect_from([127, 0, 0, 4], addr).await;
        other.write_all(CLOSE).await.unwrap();
        served_within(&mut other, "another address").await;
        stop(shutdown, task).await;
    }

    #[tokio::test]
    async fn an_http2_connection_is_served_then_closed_when_idle() {
        let options = ServeOptions {
            idle_timeout: Duration::from_millis(500),
            ..ServeOptions::default()
        };
        let (addr, shutdown, task) = start(options).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The preface and an empty SETTINGS frame: the server answers with its own SETTINGS,
        // so the preface read to tell the protocol reached HTTP/2 whole.
        stream.write_all(PREFACE).await.unwrap();
        stream
            .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut frame = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut frame))
            .await
            .expect("the server's SETTINGS within 2 s")
            .unwrap();
        assert_eq!(frame[3], 4, "the first frame is SETTINGS: {frame:?}");
        assert!(
            closed_within(&mut stream, Duration::from_secs(3)).await,
            "an idle HTTP/2 connection stayed open"
        );
        stop(shutdown, task).await;
    }
}
