//! Serving an axum router with the timeouts and the bound `axum::serve` lacks.
//!
//! A client that opens a connection and sends headers slowly would otherwise hold a task
//! forever; hyper's header-read timeout closes it, and closes a kept-alive connection that
//! sends no next request within the same time. At most `max_connections` are open at once:
//! past that the listener is not read, so new connections wait in the kernel's accept queue,
//! where they cost the process nothing, instead of each holding buffers and a task here.
//! While one waits, every connection open for a second or more closes after its current
//! answer (`Connection: close`), so waiting clients get their turn.
//! Shutdown stops accepting, lets in-flight requests finish within a deadline, then returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A connection must send a request's headers within this time, and an idle kept-alive
    /// connection its next request: so no idle client holds one of `max_connections` longer.
    pub header_read_timeout: Duration,
    /// In-flight requests get this long to finish after shutdown is requested.
    pub drain_deadline: Duration,
    /// Connections open at once; the next waits in the kernel's accept queue until one
    /// closes.
    pub max_connections: usize,
    /// How long a connection keeps its slot while another waits: at the cap at most
    /// `max_connections` connections per turn are closed and opened again.
    pub turn: Duration,
}

/// Each costs 35 to 45 KB under load (buffers, the task, a request being read): 1,024 of them
/// add about 45 MB to the ingress's 29 MB at rest.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
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

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains.
/// Handlers can extract `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    options: ServeOptions,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Slots::new(options.max_connections));
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
        // At the cap this one connection waits here, and the next in the kernel's queue.
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.take() => slot,
        };
        let _ = stream.set_nodelay(true);
        let (slots_now, opened, turn) = (slots.clone(), Instant::now(), options.turn);
        let service = router
            .clone()
            .map_request(
                move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(ConnectInfo::<SocketAddr>(remote));
                    request
                },
            )
            .map_response(move |mut response: axum::response::Response| {
                // Kept-alive clients take turns with those waiting, rather than keeping them
                // out for as long as they stay busy.
                if slots_now.wanted() && opened.elapsed() >= turn {
                    let close = HeaderValue::from_static("close");
                    response.headers_mut().insert(header::CONNECTION, close);
                }
                response
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        let open = metrics::gauge!("herald_http_connections");
        open.increment(1);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%remote, err = %err, "connection closed with an error");
            }
            open.decrement(1);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(options.drain_deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain deadline; closing them");
    }
    Ok(())
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
        let router = Router::new().route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        );
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
        let (addr, shutdown, task) = start(options).await;
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
}
