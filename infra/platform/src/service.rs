//! What every service is to the process that runs it, and how a process runs several.
//!
//! A service is built by its crate from its own settings and the shared handles (database,
//! Kafka settings, token verifier); then it is a [`Service`]: routes to serve, and a task to
//! run until shutdown that owns everything it starts. [`run`] is the one way a process runs
//! services, one (`herald audit-log`) or all of them (`herald up`): their routes merged
//! behind the edge with `/healthz`, `/readyz` and `/metrics`, their tasks side by side, every
//! task awaited at shutdown, and the first that stops by itself stopping them all, so a
//! process that no longer does its work does not look alive.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::edge::Edge;
use crate::http::ServeOptions;
use crate::problem::Problem;

/// A service's work until shutdown.
pub type Work = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// One service, ready to run.
pub trait Service: Send {
    /// Its name, in logs and in what a failure says.
    fn name(&self) -> &'static str;

    /// Its HTTP routes, state included (none: an empty router).
    fn routes(&self) -> Router;

    /// Whether it can do its work now, for `/readyz` (beside the consumers' own check).
    fn probe(&self) -> Option<Arc<dyn Probe>> {
        None
    }

    /// What it holds about one data subject, for their export (see [`crate::export`]).
    fn exporter(&self) -> Option<Arc<dyn crate::export::Exporter>> {
        None
    }

    /// Runs until `shutdown`, owning every task it starts: each is awaited before the
    /// returned future ends. An error, or an end before shutdown, stops the process.
    fn run(self: Box<Self>, shutdown: CancellationToken) -> Work;
}

/// A readiness check a service adds to `/readyz`.
#[async_trait::async_trait]
pub trait Probe: Send + Sync {
    /// `Err`: the problem `/readyz` answers (a 503 saying what is missing).
    async fn ready(&self) -> Result<(), Problem>;
}

/// Where and how a process serves its services.
pub struct Serving {
    pub listener: TcpListener,
    pub edge: Arc<Edge>,
    pub options: ServeOptions,
    /// Cancelled by a signal, or by the first service that stops.
    pub shutdown: CancellationToken,
}

impl Serving {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves every service's routes (merged, behind the edge) and runs every service's work
/// until shutdown; then waits for all of it. The first error is the result.
pub async fn run(serving: Serving, services: Vec<Box<dyn Service>>) -> anyhow::Result<()> {
    crate::metrics::install();
    let Serving {
        listener,
        edge,
        options,
        shutdown,
    } = serving;
    let mut routes = Router::new();
    let mut probes = Vec::new();
    let mut exporters = Vec::new();
    for service in &services {
        routes = routes.merge(service.routes());
        probes.extend(service.probe());
        exporters.extend(service.exporter().map(|e| (service.name(), e)));
    }
    if let (false, Some(auth)) = (exporters.is_empty(), edge.authenticator()) {
        routes = routes.merge(crate::export::routes(
            exporters,
            auth,
            edge.export_peers().to_vec(),
        ));
    }
    let router = edge.wrap(routes.merge(health_routes(probes)))?;
    let mut work = JoinSet::new();
    for service in services {
        let name = service.name();
        let stop = shutdown.clone();
        let task = service.run(shutdown.clone());
        work.spawn(async move {
            let ended = task.await;
            match &ended {
                Err(err) => tracing::error!(
                    service = name,
                    err = format!("{err:#}"),
                    "service stopped; stopping the process"
                ),
                Ok(()) if !stop.is_cancelled() => {
                    tracing::error!(
                        service = name,
                        "service stopped by itself; stopping the process"
                    );
                }
                Ok(()) => {}
            }
            stop.cancel();
            ended.map_err(|err| err.context(name))
        });
    }
    let served = crate::http::serve(listener, router, shutdown.clone(), options).await;
    shutdown.cancel();
    let mut outcome = served.map_err(anyhow::Error::from);
    while let Some(ended) = work.join_next().await {
        let ended = ended.map_err(anyhow::Error::from).and_then(|r| r);
        if outcome.is_ok() {
            outcome = ended;
        }
    }
    outcome
}

/// `/healthz` (the process answers), `/readyz` (the consumers and `probes`) and `/metrics`:
/// what every process serves beside its services' routes.
pub fn health_routes(probes: Vec<Arc<dyn Probe>>) -> Router {
    let probes: Arc<[Arc<dyn Probe>]> = probes.into();
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(move || readyz(probes.clone())))
        .route("/metrics", get(|| async { crate::metrics::render() }))
}

/// Ready while every partition assigned to this process is consumed and every probe
/// passes.
async fn readyz(probes: Arc<[Arc<dyn Probe>]>) -> Response {
    if let Err(problem) = crate::consumer::health::readiness() {
        return problem.into_response();
    }
    for probe in probes.iter() {
        if let Err(problem) = probe.ready().await {
            return problem.into_response();
        }
    }
    axum::Json(serde_json::json!({"status": "ready"})).into_response()
}

/// A service with routes only: its work is to wait for shutdown.
pub struct RoutesOnly {
    pub name: &'static str,
    pub routes: Router,
}

impl Service for RoutesOnly {
    fn name(&self) -> &'static str {
        self.name
    }

    fn routes(&self) -> Router {
        self.routes.clone()
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> Work {
        Box::pin(async move {
            shutdown.cancelled().await;
            Ok(())
        })
    }
}
