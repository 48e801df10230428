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
use crate::openapi::{Api, Operation};
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
    if !(1..=200).contains(&id.chars().count()) || id.chars().any(char::is_control) {
        return Err(Problem::invalid(vec![events::json::FieldError {
            pointer: "/id".into(),
            message: "a subject id is 1 to 200 characters without control characters".into(),
        }]));
    }
    Ok(axum::Json(export(&exports, &id).await?))
}

/// The export routes' part of the API reference.
pub fn openapi() -> Api {
    let document = json!({
        "type": "object", "required": ["subject", "exported_at", "services", "data"],
        "properties": {
            "subject": {"type": "string"},
            "exported_at": {"type": "string", "format": "date-time"},
            "services": {"type": "array", "items": {"type": "string"}, "description": "the services of the answering process, each a member of data"},
            "data": {"type": "object", "description": "each service's part: auth (account, linked identities, sessions), notifications (contact, devices, preferences, deliveries), search-indexer (documents), audit-log (events done by and about the subject); null where a service holds nothing"}
        }
    });
    Api {
        tag: "privacy",
        description: "Everything Herald holds about a person, as one document (docs/privacy.md). Erasure is DELETE /api/v1/me and DELETE /api/v1/admin/subjects/{id}.",
        operations: vec![
            Operation::get("/api/v1/me/export", "Export one's data")
                .describe("Everything the services of this process hold about the caller, personal fields in plain text (or [erased]). herald up runs every service.")
                .bearer("any signed-in user, for themself")
                .ok(200, "The caller's data", document.clone())
                .problem(503, "A service's store did not answer"),
            Operation::get("/api/v1/admin/subjects/{id}/export", "Export anyone's data")
                .bearer("the admin role")
                .path_param("id", json!({"type": "string", "minLength": 1, "maxLength": 200}), "the data subject: an account's id, or an actor")
                .ok(200, "The subject's data", document)
                .problem(400, "The id is not UTF-8 once percent-decoded")
                .problem(403, "The caller lacks the admin role")
                .problem(422, "The id is empty, longer than 200 characters or holds control characters")
                .problem(503, "A service's store did not answer"),
        ],
        schemas: vec![],
    }
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
