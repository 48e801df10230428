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
    /// The other processes whose parts are gathered.
    peers: Vec<String>,
    client: reqwest::Client,
}

/// The two export routes over `parts` (service name, exporter), gathering `peers`' too.
pub fn routes(
    parts: Vec<(&'static str, Arc<dyn Exporter>)>,
    auth: Arc<Authenticator>,
    peers: Vec<String>,
) -> Router {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .expect("an HTTP client builds");
    Router::new()
        .route("/api/v1/me/export", get(mine))
        .route("/api/v1/admin/subjects/{id}/export", get(anyones))
        .with_state(Arc::new(Exports {
            parts,
            auth,
            peers: peers
                .into_iter()
                .map(|p| p.trim_end_matches('/').to_string())
                .collect(),
            client,
        }))
}

async fn mine(
    State(exports): State<Arc<Exports>>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Problem> {
    let principal = exports.auth.authenticate(&headers)?;
    let path = "/api/v1/me/export".to_string();
    Ok(axum::Json(
        export(&exports, &principal.subject, (&path, &headers)).await?,
    ))
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
    if !crate::privacy::is_subject_id(&id) {
        return Err(Problem::invalid(vec![events::json::FieldError {
            pointer: "/id".into(),
            message: "a subject id is 1 to 200 characters without control characters".into(),
        }]));
    }
    let path = format!("/api/v1/admin/subjects/{}/export", encode_segment(&id));
    Ok(axum::Json(export(&exports, &id, (&path, &headers)).await?))
}

/// `text` as one path segment, percent-encoded.
fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

/// This process's parts and its peers', asked `path` with the caller's `headers`.
async fn export(
    exports: &Exports,
    subject: &str,
    (path, headers): (&str, &HeaderMap),
) -> Result<Value, Problem> {
    let mut parts = Map::new();
    let mut services: Vec<Value> = Vec::new();
    for (name, exporter) in &exports.parts {
        parts.insert((*name).to_string(), exporter.export(subject).await?);
        services.push((*name).into());
    }
    for peer in &exports.peers {
        let (their_services, their_parts) = ask(exports, peer, path, headers).await?;
        services.extend(their_services);
        parts.extend(their_parts);
    }
    Ok(json!({
        "subject": subject,
        "exported_at": jiff::Timestamp::now().to_string(),
        "services": services,
        "data": parts,
    }))
}

/// A peer's part of the export: its services and their data.
async fn ask(
    exports: &Exports,
    peer: &str,
    path: &str,
    headers: &HeaderMap,
) -> Result<(Vec<Value>, Map<String, Value>), Problem> {
    let unavailable = |why: String| {
        tracing::warn!(peer, why, "a part of an export could not be gathered");
        Problem::unavailable(
            format!("a part of the export could not be gathered from {peer}; retry"),
            5,
        )
    };
    let mut request = exports.client.get(format!("{peer}{path}"));
    if let Some(authorization) = headers.get(axum::http::header::AUTHORIZATION) {
        request = request.header(axum::http::header::AUTHORIZATION, authorization.clone());
    }
    let response = request
        .send()
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    if !response.status().is_success() {
        return Err(unavailable(format!("it answered {}", response.status())));
    }
    let mut document: Value = response
        .json()
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    let services = match document["services"].take() {
        Value::Array(services) => services,
        _ => Vec::new(),
    };
    let parts = match document["data"].take() {
        Value::Object(parts) => parts,
        _ => Map::new(),
    };
    Ok((services, parts))
}
