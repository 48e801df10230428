//! HTTP in, Kafka out: the ingress against a real Apache Kafka broker on loopback.

mod support;

use std::sync::Arc;

use ingress::idempotency::MemoryStore;
use serde_json::{Value, json};
use support::{TestIngress, ingress_args, kafka, order, token};

async fn start() -> TestIngress {
    TestIngress::start_default().await
}

async fn problem(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/problem+json");
    (status, response.json().await.unwrap())
}

fn pointers(problem: &Value) -> Vec<String> {
    let mut list: Vec<String> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_string())
        .collect();
    list.sort();
    list
}

#[tokio::test]
async fn posted_events_are_in_kafka_avro_encoded_with_a_stamped_envelope() {
    let app = start().await;
    let user = token("alice", &["user"]);
    let mut single = order("o-1");
    single["occurred_at"] = json!("2026-11-22T09:30:00Z");
    let response = app.post(&user, &single).await;
    assert_eq!(response.status(), 202);
    let one: Value = response.json().await.unwrap();
    assert_eq!(one["topic"], app.kafka.topic("orders"));
    assert_eq!(one["event_type"], "order.placed");

    let batch = json!({"events": [order("o-2"), {
        "type": "message.sent", "data": {"message_id": "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e12",
        "conversation_id": "c-1", "recipient_id": "bob", "body": "hi"}}]});
    let response = app.post(&user, &batch).await;
    assert_eq!(response.status(), 202);
    let many: Value = response.json().await.unwrap();
    assert_eq!(many["events"].as_array().unwrap().len(), 2);

    let orders = app.read("orders").await;
    assert_eq!(orders.len(), 2);
    let (record, first) = orders
        .iter()
        .find(|(_, d)| d.data["order_id"] == "o-1")
        .unwrap();
    assert_eq!(first.envelope.event_id.to_string(), one["event_id"]);
    assert_eq!(record.partition, one["partition"]);
    assert_eq!(record.offset, one["offset"]);
    assert_eq!(record.key.as_deref(), Some(&b"o-1"[..]));
    assert_eq!(
        &record.payload.as_ref().unwrap()[..2],
        &[0xC3, 0x01],
        "single-object encoding"
    );
    assert_eq!(first.envelope.actor, "alice");
    assert_eq!(first.envelope.source, "api");
    assert_eq!(first.envelope.event_id.get_version_num(), 7);
    assert_eq!(
        first.envelope.occurred_at,
        "2026-11-22T09:30:00Z".parse::<jiff::Timestamp>().unwrap()
    );
    assert_eq!(first.data, order("o-1")["data"]);
    assert_eq!(record.header("event_type"), Some(&b"order.placed"[..]));

    let messages = app.read("messages").await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1.envelope.actor, "alice");
    app.stop().await;
}

#[tokio::test]
async fn every_event_carries_the_requests_trace_in_its_kafka_headers() {
    let app = start().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (id, header) in [("traced", traceparent), ("garbled", "00-xyz")] {
        let response = support::client()
            .post(app.url("/api/v1/events"))
            .bearer_auth(token("alice", &["user"]))
            .header("traceparent", header)
            .json(&order(id))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    let records = app.read("orders").await;
    let header_of = |id: &str| {
        let (record, _) = records
            .iter()
            .find(|(_, d)| d.data["order_id"] == id)
            .unwrap();
        record.header("traceparent").map(<[u8]>::to_vec)
    };
    // The ingress's span is a child of the caller's: same trace, its own span id.
    let traced = String::from_utf8(header_of("traced").unwrap()).unwrap();
    assert!(
        traced.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && traced != traceparent,
        "{traced}"
    );
    // A malformed traceparent starts a new trace rather than breaking the consumers'.
    let garbled = String::from_utf8(header_of("garbled").unwrap()).unwrap();
    assert_eq!(garbled.len(), traceparent.len(), "{garbled}");
    assert!(!garbled.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
    app.stop().await;
}

#[tokio::test]
async fn keys_land_on_the_partition_java_clients_choose() {
    let app = start().await;
    let user = token("alice", &["user"]);
    for i in 0..12 {
        let id = format!("order-{i}");
        let response: Value = app.post(&user, &order(&id)).await.json().await.unwrap();
        assert_eq!(
            response["partition"],
            support::java_partition(id.as_bytes(), 3),
            "{id}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_actor_is_the_token_subject_whatever_the_body_says() {
    let app = start().await;
    let mut forged = order("o-9");
    forged["actor"] = json!("mallory");
    let (status, body) = problem(app.post(&token("alice", &["user"]), &forged).await).await;
    assert_eq!(status, 422);
    assert_eq!(pointers(&body), ["/actor"]);
    app.stop().await;
}

#[tokio::test]
async fn every_invalid_field_is_named_and_a_bad_batch_publishes_nothing() {
    let app = start().await;
    // A service: order.shipped belongs to services and admins.
    let user = token("alice", &["service"]);
    let batch = json!({"events": [
        order("fine"),
        {"type": "order.refunded", "data": {}},
        {"type": "order.placed", "data": {"order_id": "x", "customer_id": 5, "total_cents": 1.5,
            "currency": "EUR", "items": [], "colour": "red"}},
        {"type": "order.shipped", "key": "other", "data": {"order_id": "o", "carrier": "c", "shipped_at": "noon"}},
        {"type": "message.sent", "data": {"message_id": "nope", "conversation_id": "c", "recipient_id": "b"}},
        {"type": "order.placed"}
    ]});
    let (status, body) = problem(app.post(&user, &batch).await).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["type"], "urn:herald:problem:validation");
    assert_eq!(
        pointers(&body),
        [
            "/events/1/type",
            "/events/2/data/colour",
            "/events/2/data/customer_id",
            "/events/2/data/total_cents",
            "/events/3/data/shipped_at",
            "/events/3/key",
            "/events/4/data/body",
            "/events/4/data/message_id",
            "/events/5/data",
        ]
    );
    let campaign = json!({"type": "campaign.launched", "data": {"campaign_id": "c", "name": "n",
        "subject": "s", "body": "b", "channels": ["fax"]}});
    let (status, body) = problem(app.post(&token("root", &["admin"]), &campaign).await).await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["pointer"], "/data/channels/0");
    assert_eq!(
        body["errors"][0]["message"],
        "\"fax\" is not one of: email, sms, push"
    );
    assert!(
        app.read("orders").await.is_empty(),
        "a refused batch published something"
    );
    app.stop().await;
}

#[tokio::test]
async fn missing_or_bad_tokens_get_401_and_roles_without_the_right_get_403() {
    let app = start().await;
    let client = support::client();
    let response = client
        .post(app.url("/api/v1/events"))
        .json(&order("o"))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=\"herald\"")
    );
    assert_eq!(problem(response).await.0, 401);
    let (status, _) = problem(app.post("not.a.jwt", &order("o")).await).await;
    assert_eq!(status, 401);

    let campaign = json!({"type": "campaign.launched", "data": {"campaign_id": "c", "name": "n",
        "subject": "s", "body": "b", "channels": ["email"]}});
    let (status, body) = problem(app.post(&token("alice", &["user"]), &campaign).await).await;
    assert_eq!(status, 403);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("campaign.launched")
    );
    assert_eq!(
        app.post(&token("root", &["admin"]), &campaign)
            .await
            .status(),
        202
    );

    let signup = json!({"type": "user.registered", "data": {"user_id": "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11",
        "email": "a@example.com", "display_name": "A"}});
    assert_eq!(
        problem(app.post(&token("alice", &["user"]), &signup).await)
            .await
            .0,
        403
    );
    assert_eq!(
        app.post(&token("auth", &["service"]), &signup)
            .await
            .status(),
        202
    );
    app.stop().await;
}

#[tokio::test]
async fn malformed_oversized_and_non_json_bodies_get_precise_4xx() {
    let kafka = kafka(&support::brokers().await);
    let args = ingress_args(&["--max-body-bytes", "2048", "--max-batch-events", "3"]);
    let app = TestIngress::start(kafka, args, Arc::new(MemoryStore::default())).await;
    let client = support::client();
    let user = token("alice", &["user"]);
    let post = |body: Vec<u8>, content_type: &'static str| {
        client
            .post(app.url("/api/v1/events"))
            .bearer_auth(&user)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (body, content_type, status) in [
        (b"{\"type\":".to_vec(), "application/json", 400),
        (b"[1,2]".to_vec(), "application/json", 400),
        (vec![b' '; 4096], "application/json", 413),
        (b"{}".to_vec(), "text/plain", 415),
    ] {
        assert_eq!(
            problem(post(body, content_type).await.unwrap()).await.0,
            status
        );
    }
    let four = json!({"events": [order("a"), order("b"), order("c"), order("d")]});
    assert_eq!(problem(app.post(&user, &four).await).await.0, 413);
    let response = client.get(app.url("/api/v1/nothing")).send().await.unwrap();
    assert_eq!(problem(response).await.0, 404);
    let response = client
        .delete(app.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 405);
    let response = client
        .post(app.url("/api/v1/events"))
        .bearer_auth(&user)
        .header("idempotency-key", "")
        .json(&order("o"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 400);
    assert!(app.read("orders").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn validate_only_checks_without_publishing() {
    let app = start().await;
    let response = support::client()
        .post(app.url("/api/v1/events?validate_only=true"))
        .bearer_auth(token("alice", &["user"]))
        .json(&json!({"events": [order("a"), order("b")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"valid": true, "events": 2})
    );
    assert!(app.read("orders").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn the_catalog_lists_every_type_with_an_example_that_the_ingress_accepts() {
    let app = start().await;
    let client = support::client();
    let catalog = app.get_json("/api/v1/event-types").await;
    let types = catalog["event_types"].as_array().unwrap();
    assert_eq!(types.len(), 12);
    // Whom each type's data is about, and which fields hold personal data.
    let personal: Vec<(String, Value)> = types
        .iter()
        .filter(|t| !t["personal"].is_null())
        .map(|t| {
            (
                t["type"].as_str().unwrap().to_string(),
                t["personal"].clone(),
            )
        })
        .collect();
    assert_eq!(
        personal,
        [
            (
                "message.sent".into(),
                json!({"subject": "@actor", "fields": ["body"]})
            ),
            (
                "otp.requested".into(),
                json!({"subject": "user_id", "fields": ["phone"]})
            ),
            (
                "user.password_reset_requested".into(),
                json!({"subject": "user_id", "fields": ["email"]})
            ),
            (
                "user.profile_updated".into(),
                json!({"subject": "user_id", "fields": ["email", "display_name", "phone"]})
            ),
            (
                "user.registered".into(),
                json!({"subject": "user_id", "fields": ["email", "display_name", "phone"]})
            ),
        ]
    );
    for t in types {
        let role = t["publish_roles"][0].as_str().unwrap();
        let body = json!({"type": t["type"], "data": t["example"]});
        let response = client
            .post(app.url("/api/v1/events?validate_only=true"))
            .bearer_auth(token("someone", &[role]))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", t["type"]);
    }
    assert_eq!(
        client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.stop().await;
}
