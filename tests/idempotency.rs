//! Idempotency-Key against the real broker and both real stores (SQLite, PostgreSQL).

mod support;

use std::sync::Arc;

use ingress::idempotency::{IdempotencyStore, SqlStore};
use platform::db::Database;
use serde_json::Value;
use support::{TestIngress, ingress_args, kafka, order, token};

async fn sqlite(path: &std::path::Path) -> Arc<dyn IdempotencyStore> {
    let db = Database::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    Arc::new(SqlStore::new(db).await.unwrap())
}

async fn postgres() -> Arc<dyn IdempotencyStore> {
    let url = std::env::var("TEST_POSTGRES_URL")
        .expect("TEST_POSTGRES_URL must point at a PostgreSQL database: run infra/scripts/test.sh");
    let db = Database::connect(&url).await.unwrap();
    Arc::new(SqlStore::new(db).await.unwrap())
}

async fn post_with_key(app: &TestIngress, key: &str, body: &Value) -> reqwest::Response {
    support::client()
        .post(app.url("/api/v1/events"))
        .bearer_auth(token("alice", &["user"]))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Retries publish once, a changed body is refused, and the record outlives the process.
async fn retries_publish_once(store: Arc<dyn IdempotencyStore>, reopen: Arc<dyn IdempotencyStore>) {
    let kafka = kafka(&support::brokers().await);
    let app = TestIngress::start(kafka.clone(), ingress_args(&[]), store).await;
    let key = uuid::Uuid::new_v4().to_string();
    let first = post_with_key(&app, &key, &order("o-1")).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = post_with_key(&app, &key, &order("o-1")).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let changed = post_with_key(&app, &key, &order("o-2")).await;
    assert_eq!(changed.status(), 422);
    let body: Value = changed.json().await.unwrap();
    assert_eq!(body["type"], "urn:herald:problem:idempotency-key-reused");
    app.stop().await;

    let restarted = TestIngress::start(kafka.clone(), ingress_args(&[]), reopen).await;
    let after_restart = post_with_key(&restarted, &key, &order("o-1")).await;
    assert_eq!(after_restart.status(), 202);
    assert_eq!(after_restart.json::<Value>().await.unwrap(), first);
    let records = restarted.read("orders").await;
    assert_eq!(records.len(), 1, "the retries published again");
    assert_eq!(
        records[0].1.envelope.idempotency_key.as_deref(),
        Some(key.as_str())
    );
    restarted.stop().await;
}

#[tokio::test]
async fn sqlite_keys_make_retries_publish_once_across_a_restart() {
    let dir = support::test_dir("sqlite");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.db", uuid::Uuid::new_v4()));
    retries_publish_once(sqlite(&path).await, sqlite(&path).await).await;
}

#[tokio::test]
async fn postgres_keys_make_retries_publish_once_across_a_restart() {
    retries_publish_once(postgres().await, postgres().await).await;
}

#[tokio::test]
async fn a_key_is_scoped_to_its_caller() {
    let kafka = kafka(&support::brokers().await);
    let app = TestIngress::start(kafka, ingress_args(&[]), postgres().await).await;
    let key = uuid::Uuid::new_v4().to_string();
    assert_eq!(post_with_key(&app, &key, &order("o-1")).await.status(), 202);
    let bob = support::client()
        .post(app.url("/api/v1/events"))
        .bearer_auth(token("bob", &["user"]))
        .header("idempotency-key", &key)
        .json(&support::order_of("o-2", "bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(bob.status(), 202, "bob's key is not alice's");
    assert_eq!(app.read("orders").await.len(), 2);
    app.stop().await;
}

async fn expired_keys_are_purged(store: Arc<dyn IdempotencyStore>) {
    use ingress::idempotency::{Claim, Claimed};
    let now = jiff::Timestamp::now();
    let claim = Claim {
        attempt: uuid::Uuid::now_v7(),
        principal: "alice".into(),
        key: uuid::Uuid::new_v4().to_string(),
        request_hash: "h".into(),
        event_ids: vec![uuid::Uuid::now_v7()],
        received_at: now,
        lease: std::time::Duration::from_secs(10),
        // short, so the purge below touches no other test's keys (they live 24 h)
        ttl: std::time::Duration::from_secs(1),
    };
    assert_eq!(store.claim(&claim).await.unwrap(), Claimed::New);
    let later = now + jiff::SignedDuration::from_secs(2);
    assert!(store.purge_expired(later).await.unwrap() >= 1);
    // gone: the same key with another body is new again rather than a mismatch
    let other = Claim {
        request_hash: "other".into(),
        ..claim
    };
    assert_eq!(store.claim(&other).await.unwrap(), Claimed::New);
}

#[tokio::test]
async fn expired_keys_are_purged_from_sqlite_and_postgres() {
    let dir = support::test_dir("sqlite");
    std::fs::create_dir_all(&dir).unwrap();
    expired_keys_are_purged(sqlite(&dir.join(format!("{}.db", uuid::Uuid::new_v4()))).await).await;
    expired_keys_are_purged(postgres().await).await;
}
