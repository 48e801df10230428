//! A client for the Confluent Schema Registry REST API (also served by Karapace and Redpanda),
//! enough to register Herald's schemas and learn their ids at start-up.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry at {url} unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("schema registry refused subject {subject}: HTTP {status}: {body}")]
    Refused {
        subject: String,
        status: u16,
        body: String,
    },
}

/// Registers `schema` (Avro JSON) under `subject`; returns its global id. Registering the
/// same schema again returns the same id, so this runs at every start.
pub async fn register(base_url: &str, subject: &str, schema: &str) -> Result<u32, RegistryError> {
    let url = format!(
        "{}/subjects/{}/versions",
        base_url.trim_end_matches('/'),
        subject
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|source| RegistryError::Unreachable {
            url: crate::db::redact_url(base_url),
            source: source.without_url(),
        })?;
    let response = client
        .post(&url)
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({ "schema": schema, "schemaType": "AVRO" }))
        .send()
        .await
        .map_err(|source| RegistryError::Unreachable {
            url: crate::db::redact_url(base_url),
            source: source.without_url(),
        })?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    let id = (status == 200)
        .then(|| serde_json::from_str::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|v| v["id"].as_u64())
        .and_then(|id| u32::try_from(id).ok());
    id.ok_or(RegistryError::Refused {
        subject: subject.to_string(),
        status,
        body,
    })
}
