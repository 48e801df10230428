//! A stand-in for Sentry's ingestion endpoint: `POST /api/<project>/envelope/`, as the real
//! one takes it. It keeps every envelope with its `X-Sentry-Auth` header and reads it with a
//! parser of its own (the envelope format: a header line, then per item a header line and a
//! payload of `length` bytes, or up to the next newline).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::Value;

/// One envelope as received.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub project: String,
    pub auth: String,
    pub raw: Vec<u8>,
    pub header: Value,
    /// Each item's header and its payload (JSON when it parses, a string otherwise).
    pub items: Vec<(Value, Value)>,
}

impl Envelope {
    /// The payloads of its `event` items.
    pub fn events(&self) -> Vec<Value> {
        self.items
            .iter()
            .filter(|(header, _)| header["type"] == "event")
            .map(|(_, payload)| payload.clone())
            .collect()
    }
}

type Received = Arc<Mutex<Vec<Envelope>>>;

pub struct SentryStandIn {
    /// A DSN that points here, for project 42 with public key `herald-key`.
    pub dsn: String,
    received: Received,
}

/// Reads an envelope as the format's documentation describes it.
pub fn parse(raw: &[u8]) -> (Value, Vec<(Value, Value)>) {
    let line = |from: usize| -> (usize, usize) {
        let end = raw[from..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| from + p);
        (end, (end + 1).min(raw.len()))
    };
    let (end, mut at) = line(0);
    let header = serde_json::from_slice(&raw[..end]).expect("an envelope header");
    let mut items = Vec::new();
    while at < raw.len() {
        let (end, next) = line(at);
        if end == at {
            at = next;
            continue;
        }
        let item: Value = serde_json::from_slice(&raw[at..end]).expect("an item header");
        let (payload, after) = match item["length"].as_u64() {
            Some(length) => {
                let stop = next + length as usize;
                (&raw[next..stop], (stop + 1).min(raw.len()))
            }
            None => {
                let (stop, after) = line(next);
                (&raw[next..stop], after)
            }
        };
        let payload = serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
        items.push((item, payload));
        at = after;
    }
    (header, items)
}

async fn receive(
    State(received): State<Received>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) {
    let auth = headers
        .get("x-sentry-auth")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (header, items) = parse(&body);
    received.lock().unwrap().push(Envelope {
        project,
        auth,
        raw: body.to_vec(),
        header,
        items,
    });
}

impl SentryStandIn {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = Received::default();
        let app = Router::new()
            .route("/api/{project}/envelope/", post(receive))
            .with_state(received.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            dsn: format!("http://herald-key@{address}/42"),
            received,
        }
    }

    pub fn envelopes(&self) -> Vec<Envelope> {
        self.received.lock().unwrap().clone()
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Value> {
        self.envelopes().iter().flat_map(Envelope::events).collect()
    }

    /// Waits until `n` events arrived (panics after `within`).
    pub async fn wait_for_events(&self, n: usize, within: Duration) -> Vec<Value> {
        super::eventually(within, &format!("{n} sentry events"), || async {
            let events = self.events();
            if events.len() >= n {
                Ok(())
            } else {
                Err(format!("{events:#?}"))
            }
        })
        .await;
        self.events()
    }
}
