//! The router with in-memory sink and store: the paths a real broker cannot easily be made
//! to take, such as an acknowledgement lost after the write.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use events::{Catalog, Codec, WireFormat};
use http_body_util::BodyExt;
use ingress::auth::{AuthArgs, Authenticator};
use ingress::idempotency::MemoryStore;
use ingress::policy::PublishPolicy;
use ingress::sink::MemorySink;
use ingress::{AppState, Limits};
use secrecy::SecretString;
use serde_json::{Value, json};
use tower::ServiceExt;

const SECRET: &str = "router-test-secret-at-least-32-bytes";

fn app(sink: Arc<MemorySink>) -> axum::Router {
    let auth = AuthArgs::hs256(SECRET);
    let catalog = Arc::new(Catalog::embedded().unwrap());
    let state = AppState {
        topics: ingress::Topics::new(&Default::default(), &catalog),
        codec: Codec::new(catalog, WireFormat::SingleObject),
        policy: PublishPolicy::embedded(),
        auth: std::sync::Arc::new(Authenticator::from_args(&auth).unwrap()),
        sink,
        store: Arc::new(MemoryStore::default()),
        limits: Limits {
            max_events: 10,
            max_body_bytes: 64 * 1024,
            max_in_flight_bytes: 1024 * 1024,
            publish_deadline: Duration::from_millis(200),
            request_timeout: Duration::from_secs(5),
            idempotency_ttl: Duration::from_secs(3600),
        },
        in_flight: ingress::admission::InFlight::new(1024 * 1024),
    };
    ingress::router(Arc::new(state))
}

async fn post(app: &axum::Router, key: &str, body: &Value) -> (u16, Value) {
    let token = ingress::auth::mint_hs256(
        &SecretString::from(SECRET),
        "alice",
        &["user".to_string()],
        "herald",
        "herald",
        Duration::from_secs(60),
    )
    .unwrap();
    let request = Request::post("/api/v1/events")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn order() -> Value {
    json!({"type": "order.placed", "data": {"order_id": "o-1", "customer_id": "alice",
        "items": [], "total_cents": 0, "currency": "EUR"}})
}

#[tokio::test]
async fn a_retry_after_a_lost_acknowledgement_republishes_the_same_event_id() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    sink.set_acks_lost(true);
    let (status, problem) = post(&app, "k-1", &order()).await;
    assert_eq!(status, 503, "{problem}");
    sink.set_acks_lost(false);
    let (status, accepted) = post(&app, "k-1", &order()).await;
    assert_eq!(status, 202);
    let records = sink.records();
    assert_eq!(
        records.len(),
        2,
        "written twice: once unacknowledged, once on retry"
    );
    let ids: Vec<String> = records
        .iter()
        .map(|(r, _)| {
            let header = r.headers.iter().find(|(k, _)| k == "event_id").unwrap();
            String::from_utf8(header.1.clone()).unwrap()
        })
        .collect();
    assert_eq!(
        ids[0], ids[1],
        "the retry must reuse the event id so consumers deduplicate"
    );
    assert_eq!(accepted["event_id"], ids[0]);
    // and a third attempt only replays the answer
    let (status, replayed) = post(&app, "k-1", &order()).await;
    assert_eq!((status, replayed), (202, accepted));
    assert_eq!(sink.records().len(), 2);
}

#[tokio::test]
async fn a_broker_away_answers_503_and_publishes_nothing() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    sink.set_offline(true);
    let (status, problem) = post(&app, "k-2", &order()).await;
    assert_eq!(status, 503);
    assert_eq!(problem["type"], "urn:herald:problem:unavailable");
    assert!(sink.records().is_empty());
}
