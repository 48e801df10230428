//! A person's data, exported: every service of a process says what it holds about one data
//! subject ([`Exporter`]), and the process answers them all as one JSON document on
//! `GET /api/v1/me/export` (the caller) and `GET /api/v1/admin/subjects/{id}/export` (an
//! admin, for anyone). `herald up` runs every service, so its document is whole; a process
//! running some services answers with their parts, named in `services`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::{Map, Value, json};

use crate::auth::Authenticator;
use crate::problem::Problem;

/// What one service holds about a data subject.
#[async_trait::async_trait]
pub trait Exporter: Send + Sync {
    /// Its part of the export: personal fields in plain text (the person's own), or as
    /// erased. `Value::Null` when it holds nothing about them.
    async fn export(&self, subject: &str) -> Result<Value, Problem>;
}

struct Exports {
    parts: Vec<(&'static str, Arc<dyn Exporter>)>,
    auth: Arc<Authenticator>,
}

/// The two export routes over `parts` (service name, exporter).
pub fn routes(parts: Vec<(&'static str, Arc<dyn Exporter>)>, auth: Arc<Authenticator>) -> Router {
    Router::new()
        .route("/api/v1/me/export", get(mine))
        .route("/api/v1/admin/subjects/{id}/export", get(anyones))
        .with_state(Arc::new(Exports { parts, auth }))
}

async fn mine(
    State(exports): State<Arc<Exports>>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Problem> {
    let principal = exports.auth.authenticate(&headers)?;
    Ok(axum::Json(export(&exports, &principal.subject).await?))
}

async fn anyones(
    State(exports): State<Arc<Exports>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Problem> {
    let principal = exports.auth.authenticate(&headers)?;
    if !principal.roles.iter().any(|role| role == "admin") {
        return Err(Problem::forbidden(
            "exporting another's data needs the admin role",
        ));
    }
    Ok(axum::Json(export(&exports, &id).await?))
}

async fn export(exports: &Exports, subject: &str) -> Result<Value, Problem> {
    let mut parts = Map::new();
    for (name, exporter) in &exports.parts {
        parts.insert((*name).to_string(), exporter.export(subject).await?);
    }
    Ok(json!({
        "subject": subject,
        "exported_at": jiff::Timestamp::now().to_string(),
        "services": exports.parts.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        "data": parts,
    }))
}
