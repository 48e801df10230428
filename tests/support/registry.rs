//! A stand-in for a Confluent-compatible schema registry (Confluent's cannot run here): the
//! part of its REST API Herald uses, checking the exact requests: content type, subject
//! names, and schemas that parse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Default)]
pub struct Registry {
    /// (subject, canonical schema) -> id
    pub ids: Mutex<HashMap<(String, String), u32>>,
}

async fn register(
    State(registry): State<Arc<Registry>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if headers["content-type"] != "application/vnd.schemaregistry.v1+json" {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Json(json!({"error_code": 415})),
        );
    }
    let Some(schema) = body["schema"].as_str() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201})),
        );
    };
    let Ok(parsed) = apache_avro::Schema::parse_str(schema) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201})),
        );
    };
    let mut ids = registry.ids.lock().unwrap();
    let next = ids.len() as u32 + 1;
    let id = *ids
        .entry((subject, parsed.canonical_form()))
        .or_insert(next);
    (StatusCode::OK, Json(json!({"id": id})))
}

/// A registry on a port of its own: its URL, and what it holds.
pub async fn start() -> (String, Arc<Registry>) {
    let registry = Arc::new(Registry::default());
    let app = axum::Router::new()
        .route("/subjects/{subject}/versions", post(register))
        // Apicurio's Confluent-compatible API, as docker-compose.yml names it.
        .route(
            "/apis/ccompat/v7/subjects/{subject}/versions",
            post(register),
        )
        .with_state(registry.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, registry)
}
