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
    app_with(sink, None)
}

fn app_with(
    sink: Arc<MemorySink>,
    privacy: Option<Arc<platform::privacy::Privacy>>,
) -> axum::Router {
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
            occurred_at: ingress::TimeWindow {
                before: Duration::from_secs(3650 * 86_400),
                after: Duration::from_secs(300),
            },
        },
        in_flight: ingress::admission::InFlight::new(1024 * 1024),
        privacy,
    };
    ingress::router(Arc::new(state))
}

async fn post(app: &axum::Router, key: &str, body: &Value) -> (u16, Value) {
    post_as(app, ("alice", "user"), key, body).await
}

async fn post_as(
    app: &axum::Router,
    (sub, role): (&str, &str),
    key: &str,
    body: &Value,
) -> (u16, Value) {
    let token = ingress::auth::mint_hs256(
        &SecretString::from(SECRET),
        sub,
        &[role.to_string()],
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
        "items": [{"sku": "tea", "quantity": 2, "unit_price_cents": 450}], "total_cents": 900,
        "currency": "EUR"}})
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

#[tokio::test]
async fn an_occurred_at_outside_its_window_is_refused_by_its_pointer_and_nothing_is_written() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    for (n, at) in [
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "1900-01-01T00:00:00Z",
        "2999-01-01T00:00:00+01:00",
    ]
    .into_iter()
    .enumerate()
    {
        let mut event = order();
        event["occurred_at"] = json!(at);
        let (status, problem) = post(&app, &format!("single-{n}"), &event).await;
        assert_eq!(status, 422, "{at}: {problem}");
        assert_eq!(problem["errors"][0]["pointer"], "/occurred_at", "{problem}");
        let batch = json!({"events": [order(), event]});
        let (status, problem) = post(&app, &format!("batch-{n}"), &batch).await;
        assert_eq!(status, 422, "{at}: {problem}");
        assert_eq!(problem["errors"][0]["pointer"], "/events/1/occurred_at");
    }
    assert!(sink.records().is_empty(), "nothing is written");
    let mut recent = order();
    recent["occurred_at"] = json!("2026-01-01T00:00:00Z");
    assert_eq!(post(&app, "recent", &recent).await.0, 202);
}

#[tokio::test]
async fn member_names_in_error_pointers_are_escaped() {
    let app = app(Arc::new(MemorySink::default()));
    let mut event = order();
    event["a/b~c"] = json!(1);
    let (status, problem) = post(&app, "escaped-1", &event).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/a~1b~0c");
    let batch = json!({"events": [order()], "x/y": 1});
    let (_, problem) = post(&app, "escaped-2", &batch).await;
    assert_eq!(problem["errors"][0]["pointer"], "/x~1y");
    let batch = json!({"events": [event]});
    let (_, problem) = post(&app, "escaped-3", &batch).await;
    assert_eq!(problem["errors"][0]["pointer"], "/events/0/a~1b~0c");
}

/// An event of `schema` that belongs to `owner`, from the schema's example.
fn owned_by(schema: &events::SchemaVersion, owner: &str) -> Value {
    let mut data = schema.example.clone();
    if let Some(field) = schema.owner_field() {
        let uuid_owner = data[field]
            .as_str()
            .is_some_and(|id| uuid::Uuid::try_parse(id).is_ok());
        data[field] = if uuid_owner {
            json!(uuid::Uuid::new_v4().to_string())
        } else {
            json!(owner)
        };
    }
    json!({"type": schema.event_type, "data": data})
}

#[tokio::test]
async fn a_user_publishing_any_event_type_on_someone_elses_behalf_is_refused_and_nothing_is_written()
 {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let catalog = Catalog::embedded().unwrap();
    let mut refused = 0;
    for schema in catalog.event_types() {
        // Always the publisher's own: the owner is the token's subject, stamped as actor.
        if schema.owner == Some(events::Owner::Actor) {
            continue;
        }
        let theirs = owned_by(schema, "mallory");
        let (status, problem) = post(&app, &format!("one-{}", schema.event_type), &theirs).await;
        assert_eq!(status, 403, "{}: {problem}", schema.event_type);
        // A batch with one such event is refused whole.
        let batch = json!({"events": [order(), theirs]});
        let (status, problem) = post(&app, &format!("batch-{}", schema.event_type), &batch).await;
        assert_eq!(status, 403, "{}: {problem}", schema.event_type);
        refused += 1;
    }
    assert!(refused >= 8, "event types tried: {refused}");
    assert!(sink.records().is_empty(), "nothing is written");
    let (status, problem) = post(&app, "own", &order()).await;
    assert_eq!(status, 202, "{problem}");
}

#[tokio::test]
async fn the_refusal_names_the_owner_field_by_its_pointer() {
    let app = app(Arc::new(MemorySink::default()));
    let mut theirs = order();
    theirs["data"]["customer_id"] = json!("bob");
    let (status, problem) = post(&app, "pointer-1", &theirs).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/data/customer_id");
    let batch = json!({"events": [order(), theirs]});
    let (_, problem) = post(&app, "pointer-2", &batch).await;
    assert_eq!(
        problem["errors"][0]["pointer"],
        "/events/1/data/customer_id"
    );
}

#[tokio::test]
async fn order_amounts_that_do_not_add_up_are_refused_on_both_paths() {
    let sink = Arc::new(MemorySink::default());
    let app = app(sink.clone());
    let bad = [
        (
            json!([{"sku": "a", "quantity": -2, "unit_price_cents": 450}]),
            -900,
            "/data/items/0/quantity",
        ),
        (
            json!([{"sku": "a", "quantity": 2, "unit_price_cents": -450}]),
            -900,
            "/data/items/0/unit_price_cents",
        ),
        (
            json!([{"sku": "a", "quantity": 2, "unit_price_cents": 450}]),
            1,
            "/data/total_cents",
        ),
    ];
    for (n, (items, total, pointer)) in bad.into_iter().enumerate() {
        let mut event = order();
        event["data"]["items"] = items;
        event["data"]["total_cents"] = json!(total);
        // In the schema's order with the type first (the text path), and sorted (the tree's
        // order of members does not matter).
        let (status, problem) = post(&app, &format!("amounts-{n}"), &event).await;
        assert_eq!(status, 422, "{problem}");
        assert_eq!(problem["errors"][0]["pointer"], pointer, "{problem}");
    }
    assert!(sink.records().is_empty());
}

#[tokio::test]
async fn personal_fields_leave_encrypted_and_nothing_new_is_taken_about_an_erased_person() {
    use platform::privacy::{Keks, MemoryKeyStore, Privacy};
    let dir = std::env::temp_dir().join(format!("herald-router-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("privacy-keys");
    let _ = std::fs::remove_file(&file);
    Keks::create_file(&file).unwrap();
    let privacy = Arc::new(Privacy::new(
        Keks::read(&file).unwrap(),
        Arc::new(MemoryKeyStore::default()),
    ));
    let sink = Arc::new(MemorySink::default());
    let app = app_with(sink.clone(), Some(privacy.clone()));
    // About a person named by a field (a UUID), and about the sender of a message.
    let person = "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11";
    let batch = json!({"events": [
        {"type": "user.profile_updated",
         "data": {"user_id": person, "display_name": "Zoë Secret", "phone": "+15550199"}},
        {"type": "message.sent", "key": "c-1",
         "data": {"message_id": "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e12", "conversation_id": "c-1",
                  "recipient_id": "bob", "body": "my code word is periwinkle"}},
    ]});
    let (status, answer) = post_as(&app, ("accounts", "service"), "p-1", &batch).await;
    assert_eq!(status, 202, "{answer}");
    let codec = Codec::new(
        Arc::new(Catalog::embedded().unwrap()),
        WireFormat::SingleObject,
    );
    let records = sink.records();
    assert_eq!(records.len(), 2);
    for ((record, _), sent) in records.iter().zip(batch["events"].as_array().unwrap()) {
        let payload = &record.payload;
        for secret in ["Zoë Secret", "+15550199", "periwinkle"] {
            assert!(
                !payload
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "{secret} in plain text on the log"
            );
        }
        let mut decoded = codec.decode(payload).unwrap();
        let schema = codec
            .catalog()
            .latest(&decoded.envelope.event_type)
            .unwrap();
        privacy
            .reveal_data(schema, &decoded.envelope.actor, &mut decoded.data)
            .await
            .unwrap();
        for (field, value) in sent["data"].as_object().unwrap() {
            assert_eq!(&decoded.data[field], value, "{field} reads back");
        }
    }
    // Once erased, nothing more is taken about the person, and nothing is published.
    privacy.erase(person).await.unwrap();
    let (status, problem) = post_as(&app, ("accounts", "service"), "p-2", &batch).await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["pointer"], "/events/0/data");
    assert_eq!(sink.records().len(), 2);
}
