//! Serving an axum router with the timeouts `axum::serve` lacks.
//!
//! A client that opens a connection and sends headers slowly would otherwise hold a task
//! forever; hyper's header-read timeout closes it. Shutdown stops accepting, lets in-flight
//! requests finish within a deadline, then returns.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A connection must send a request's headers within this time.
    pub header_read_timeout: Duration,
    /// In-flight requests get this long to finish after shutdown is requested.
    pub drain_deadline: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(10),
        }
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
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let service = router.clone().map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                request
            },
        );
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%remote, err = %err, "connection closed with an error");
            }
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
