//! The API's reference: one OpenAPI 3.1 document for every route of every service, put
//! together from the parts each service declares beside its router, served as JSON at
//! `/api/v1/openapi.json` and as a page for people at `/docs`.

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;
use events::Catalog;
use platform::openapi::{Api, Operation};
use serde_json::{Value, json};

/// The whole document for `catalog`'s event types.
pub fn document(catalog: &Catalog) -> Value {
    let info = json!({
        "title": "Herald",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "An event-driven backend on Kafka: post actions over HTTP, read what consumers made of them. Every error is application/problem+json (RFC 9457).",
    });
    platform::openapi::document(
        info,
        &[
            ingress::openapi(catalog),
            auth::openapi(),
            audit_log::api::openapi(),
            notifications::api::openapi(),
            search_indexer::api::openapi(),
            reports::api::openapi(),
            platform::export::openapi(),
            replay::stream::openapi(),
            replay::admin::openapi(),
            operations(),
        ],
    )
}

/// What every process answers whichever services it runs.
fn operations() -> Api {
    let status = |word: &str| json!({"type": "object", "required": ["status"], "properties": {"status": {"const": word}}});
    Api {
        tag: "operations",
        description: "Probes, metrics and this reference. Operators reach /healthz, /readyz and /metrics on the internal network; the reverse proxy does not pass them.",
        operations: vec![
            Operation::get("/healthz", "Liveness: the process answers").ok(
                200,
                "Alive",
                status("ok"),
            ),
            Operation::get(
                "/readyz",
                "Readiness: the event log is reachable and every worker runs",
            )
            .ok(200, "Ready", status("ready"))
            .problem(
                503,
                "Not ready: the broker is unreachable, or a worker stopped (named in detail)",
            ),
            Operation::get("/metrics", "Prometheus metrics").content(
                200,
                "The process's metrics, in the Prometheus text format",
                "text/plain",
                json!({"type": "string"}),
            ),
            Operation::get("/api/v1/openapi.json", "This document").ok(
                200,
                "The OpenAPI 3.1 document",
                json!({"type": "object", "required": ["openapi", "paths"]}),
            ),
            Operation::get("/docs", "This reference, as a page").content(
                200,
                "Every operation by tag, rendered on the server",
                "text/html",
                json!({"type": "string"}),
            ),
        ],
        schemas: vec![],
    }
}

/// The reference as a service of the process that runs the ingress: routes only.
pub fn service(catalog: &Catalog) -> platform::service::RoutesOnly {
    platform::service::RoutesOnly {
        name: "reference",
        routes: router(catalog),
    }
}

/// `/api/v1/openapi.json` and `/docs`, made once.
fn router(catalog: &Catalog) -> Router {
    let document = document(catalog);
    // Made once; each answer shares the bytes.
    let page = Bytes::from(platform::openapi::reference_page(&document));
    let json = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
    Router::new()
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let json = json.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], json) }
            }),
        )
        .route(
            "/docs",
            get(move || {
                let page = page.clone();
                async move { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page) }
            }),
        )
}
