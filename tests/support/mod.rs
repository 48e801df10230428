//! What the end-to-end tests share: a real Apache Kafka broker on loopback, an ingress on
//! port 0 with its own topic prefix, tokens, and a reader that decodes what landed.
#![allow(dead_code)]

pub mod apns;
pub mod audit;
pub mod browser;
pub mod fcm;
pub mod ledger;
pub mod oidc;
pub mod otlp;
pub mod process;
pub mod registry;
pub mod routes;
pub mod sentry;
pub mod sms;
pub mod smtp;
pub mod start;
pub mod up;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use events::{Codec, Decoded, WireFormat};
use ingress::idempotency::IdempotencyStore;
use ingress::{AppState, IngressArgs};
use platform::kafka::{KafkaArgs, ReadRecord};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes";
/// Signs one-click unsubscribe links in the services the tests start.
pub const UNSUBSCRIBE_SECRET: &str = "unsubscribe-secret-of-thirty-two-bytes";
/// The key that seals live secrets in the tests' events (32 bytes, base64).
pub const SEALING_KEY: &str = "dGVzdC1zZWFsaW5nLWtleS1vZi0zMi1ieXRlcy0hISE=";

/// Checks `check` every 100 ms until it holds, and gives what it found. `Err` says what it
/// saw instead, so a test that waits in vain fails naming `what` it waited for and the last
/// thing it saw, after `within`. One helper for every "wait until" of the tests.
pub async fn eventually<T, E, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(found) => return found,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[allow(unused_imports, reason = "each test binary uses some of them")]
pub use start::{announced, announced_address, brokers, opensearch_url, test_dir};

/// Kafka settings with a topic prefix of the test's own.
pub fn kafka(brokers: &str) -> KafkaArgs {
    KafkaArgs {
        brokers: Some(brokers.to_string()),
        properties: vec![],
        topic_prefix: format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        topics_file: None,
    }
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: IngressArgs,
}

pub fn ingress_args(extra: &[&str]) -> IngressArgs {
    let mut argv = vec![
        "ingress",
        "--jwt-hs256-secret",
        SECRET,
        "--topic-partitions",
        "3",
    ];
    argv.extend_from_slice(extra);
    Wrapper::parse_from(argv).args
}

pub struct TestIngress {
    pub base: String,
    pub state: Arc<AppState>,
    pub kafka: KafkaArgs,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestIngress {
    pub async fn start(
        kafka: KafkaArgs,
        args: IngressArgs,
        store: Arc<dyn IdempotencyStore>,
    ) -> Self {
        let state = Arc::new(
            ingress::connect(
                &args,
                &kafka,
                store,
                Arc::new(ingress::auth::Authenticator::from_args(&args.auth).expect("token keys")),
                args.contract
                    .privacy(None)
                    .await
                    .expect("the privacy settings load"),
            )
            .await
            .expect("ingress connects"),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        // As `herald ingress` serves it: its routes, with /healthz, /readyz and /metrics.
        let service = ingress::Service::new(state.clone());
        let router = {
            use platform::service::Service;
            service.routes().merge(platform::service::health_routes(
                service.probe().into_iter().collect(),
            ))
        };
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            platform::http::serve(listener, router, token, Default::default())
                .await
                .unwrap();
        });
        Self {
            base,
            state,
            kafka,
            shutdown,
            task,
        }
    }

    /// An ingress with default settings on a topic prefix of its own, keeping idempotency
    /// keys in memory.
    pub async fn start_default() -> Self {
        let kafka = kafka(&brokers().await);
        let store = Arc::new(ingress::idempotency::MemoryStore::default());
        Self::start(kafka, ingress_args(&[]), store).await
    }

    /// The full names of every domain topic.
    pub fn topics(&self) -> Vec<String> {
        self.state
            .catalog()
            .topics()
            .into_iter()
            .map(|t| self.kafka.topic(t))
            .collect()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        get_json(client().get(self.url(path))).await
    }

    pub async fn post(&self, token: &str, body: &serde_json::Value) -> reqwest::Response {
        client()
            .post(self.url("/api/v1/events"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Every record of an aggregate topic, decoded.
    pub async fn read(&self, aggregate: &str) -> Vec<(ReadRecord, Decoded)> {
        read(&self.kafka, aggregate).await
    }
}

pub async fn read(kafka: &KafkaArgs, aggregate: &str) -> Vec<(ReadRecord, Decoded)> {
    let codec = Codec::new(
        Arc::new(events::Catalog::embedded().unwrap()),
        WireFormat::SingleObject,
    );
    platform::kafka::read_to_end(kafka, &[kafka.topic(aggregate)], Duration::from_secs(30))
        .await
        .expect("topic readable")
        .into_iter()
        .map(|record| {
            let decoded = codec
                .decode(record.payload.as_deref().unwrap_or_default())
                .expect("decodes");
            (record, decoded)
        })
        .collect()
}

/// A search indexer's `/api/v1/search/stats`, read as an admin.
pub async fn search_stats(base: &str) -> serde_json::Value {
    get_json(
        client()
            .get(format!("{base}/api/v1/search/stats"))
            .bearer_auth(token("ops", &["admin"])),
    )
    .await
}

/// The JSON body of a GET.
async fn get_json(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub fn token(sub: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    ingress::auth::mint_hs256(
        &SecretString::from(SECRET),
        sub,
        &roles,
        "herald",
        "herald",
        Duration::from_secs(600),
    )
    .unwrap()
}

/// `value` sealed with the tests' key, as a producer of `event_type` writes `field`.
pub fn sealed(event_type: &str, field: &str, value: &str) -> String {
    let key = SecretString::from(SEALING_KEY);
    let key = platform::seal::SealingKey::from_base64(&key).expect("the tests' sealing key");
    key.seal(event_type, field, value)
}

/// An event's data with its sealed fields opened, as the notifications service sees it.
pub fn opened(decoded: events::Decoded) -> serde_json::Value {
    let key = SecretString::from(SEALING_KEY);
    let key = platform::seal::SealingKey::from_base64(&key).expect("the tests' sealing key");
    let mut data = decoded.data;
    key.open_fields(&decoded.written_with, &mut data)
        .expect("sealed with the tests' key");
    data
}

/// `order.placed` for `id`, placed by `customer` (a user may publish only their own).
pub fn order_of(id: &str, customer: &str) -> serde_json::Value {
    let mut event = order(id);
    event["data"]["customer_id"] = customer.into();
    event
}

pub fn order(id: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "order.placed",
        "key": id,
        "data": {"order_id": id, "customer_id": "alice", "total_cents": 900, "currency": "EUR",
                 "items": [{"sku": "tea", "quantity": 2, "unit_price_cents": 450}]}
    })
}

/// The partition Java's default partitioner picks for a key: murmur2, positive, modulo.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1e995;
    let mut h: u32 = 0x9747b28c ^ key.len() as u32;
    let chunks = key.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().unwrap());
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h as i32) & 0x7fff_ffff) % partitions
}

/// The fields of an `application/x-www-form-urlencoded` body, decoded (for the stand-ins).
pub fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// A schema folder in `dir` with every event type's schema but `missing`'s: a consumer
/// deployed with it cannot decode that type and dead-letters its events.
pub fn schemas_without(dir: &std::path::Path, missing: &str) -> std::path::PathBuf {
    let partial = dir.join("schemas");
    std::fs::create_dir_all(&partial).unwrap();
    let all = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/avro");
    for entry in std::fs::read_dir(all).unwrap() {
        let path = entry.unwrap().path();
        if !path.ends_with(format!("{missing}.v1.avsc")) {
            std::fs::copy(&path, partial.join(path.file_name().unwrap())).unwrap();
        }
    }
    partial
}
