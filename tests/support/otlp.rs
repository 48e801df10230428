//! A local OTLP/HTTP receiver: what a collector would get from Herald's trace exporter. It
//! decodes the JSON encoding of `ExportTraceServiceRequest` and keeps every span with the
//! name of the service that sent it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;

/// One received span.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// `SPAN_KIND_*` as a number (2 server, 3 client, 4 producer, 5 consumer).
    pub kind: u64,
    pub attributes: HashMap<String, Value>,
    /// Trace ids of the spans this one links to.
    pub links: Vec<String>,
}

type Spans = Arc<Mutex<Vec<Span>>>;

pub struct OtlpReceiver {
    pub endpoint: String,
    spans: Spans,
}

async fn traces(State(spans): State<Spans>, headers: HeaderMap, body: String) -> StatusCode {
    let json = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if !json {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut received = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let resource_attributes = attributes(&resource["resource"]["attributes"]);
        let service = resource_attributes
            .get("service.name")
            .map(text)
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                received.push(Span {
                    service: service.clone(),
                    name: text(&span["name"]),
                    trace_id: text(&span["traceId"]),
                    span_id: text(&span["spanId"]),
                    parent_span_id: text(&span["parentSpanId"]),
                    kind: span["kind"].as_u64().unwrap_or_default(),
                    attributes: attributes(&span["attributes"]),
                    links: span["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| text(&l["traceId"]))
                        .collect(),
                });
            }
        }
    }
    spans.lock().unwrap().extend(received);
    StatusCode::OK
}

/// OTLP attributes (`[{key, value: {stringValue | intValue | ...}}]`) as a map of plain values.
fn attributes(list: &Value) -> HashMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let value = kv["value"].as_object()?.values().next()?.clone();
            Some((kv["key"].as_str()?.to_string(), value))
        })
        .collect()
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Spans::default();
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .with_state(spans.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { endpoint, spans }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the spans received (panics after `within`); the spans then.
    pub async fn wait_until(&self, within: Duration, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        super::eventually(within, "the spans awaited", || async {
            let spans = self.spans();
            if done(&spans) {
                Ok(spans)
            } else {
                let names: Vec<(&str, &str)> = spans
                    .iter()
                    .map(|s| (s.service.as_str(), s.name.as_str()))
                    .collect();
                Err(format!("{} spans: {names:?}", spans.len()))
            }
        })
        .await
    }
}
