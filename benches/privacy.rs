//! What protecting personal data costs, in one run on one broker:
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench privacy
//!
//! Two deployments side by side, on topics of their own: "on" with PRIVACY_KEY_FILE (keys in
//! its SQLite file), "off" without. Both post the same events.
//! 1. ingress: batches of 100 `message.sent` (its body is personal, protected for its
//!    sender) from 32 clients, each its own sender, so each request touches keys a process
//!    keeps in memory; the two ingress processes take turns over ROUNDS rounds of
//!    BENCH_EVENTS events; medians and their ratio;
//! 2. first touch: batches of 100 `user.profile_updated` from a service, each about another
//!    of BENCH_SUBJECTS people, so every event makes a data key (a row in the key store);
//!    events/s on and off;
//! 3. a consumer: the search indexer started on each backlog (everything posted above, its
//!    personal fields revealed on "on"): documents/s until all are searchable;
//!
//!    The floor under it: the same messages encoded in this process, protected or not,
//!    written by a raw rdkafka producer (platform's Publisher, batches of 100, 32 in flight)
//!    in alternating rounds: what encryption costs where the ingress does none of its work
//!    (ciphertext is longer and does not compress, so the producer and the broker carry
//!    more);
//! 4. erasure: one sender with BENCH_ERASE_EVENTS (10,000) messages; `herald privacy erase`
//!    timed (the key destroyed, the account blanked, `user.erased` published), then the time
//!    until the indexer has removed every document of theirs;
//! 5. another consumer: BENCH_EMAILS (5,000) `user.registered` on each side, then `herald
//!    notifications` started on each backlog in turn with a real SMTP server of its own
//!    (aiosmtpd): welcome emails/s accepted, from process start to the last. On "on" each
//!    event's email and name are revealed, and the projection and the delivery log store
//!    them encrypted again.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{HERALD, Smtp, herald, median, setting, token, topic_prefix};
use serde_json::{Value, json};
use tokio::process::Child;

const BATCH: usize = 100;
const CLIENTS: usize = 32;
const ROUNDS: usize = 5;

fn message(n: usize, sender: usize) -> Value {
    json!({"type": "message.sent", "key": format!("c-{sender}"), "data": {
        "message_id": uuid::Uuid::new_v4().to_string(), "conversation_id": format!("c-{sender}"),
        "recipient_id": "reader", "body": format!("message {n} about the weather in Lisbon")}})
}

fn profile(user: usize) -> Value {
    let id = uuid::Uuid::from_u128(0x0190_c2a0_7a3b_7cc1_9c1e_0000_0000_0000 + user as u128);
    json!({"type": "user.profile_updated", "key": id.to_string(), "data": {
        "user_id": id.to_string(), "display_name": format!("Person {user}"),
        "phone": "+15550100"}})
}

/// One deployment: its folder, its ingress and the environment of its other processes.
struct Side {
    env: Vec<(String, String)>,
    _ingress: Child,
    base: String,
}

impl Side {
    async fn start(name: &'static str, brokers: &str, dir: &Path, protect: bool) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut env = vec![
            ("KAFKA_BROKERS".to_string(), brokers.to_string()),
            (
                "TOPIC_PREFIX".to_string(),
                topic_prefix(&format!("priv{name}")),
            ),
            ("HERALD_DATA_DIR".to_string(), dir.display().to_string()),
        ];
        if protect {
            let keys = dir.join("privacy-keys");
            platform::privacy::Keks::create_file(&keys).unwrap();
            env.push(("PRIVACY_KEY_FILE".into(), keys.display().to_string()));
            env.push((
                "PRIVACY_DATABASE_URL".into(),
                format!("sqlite://{}", dir.join("herald.db").display()),
            ));
        }
        let (ingress, base) = herald("ingress", &self_env(&env)).await;
        Self {
            env,
            _ingress: ingress,
            base,
        }
    }
}

fn self_env(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Posts `bodies` from CLIENTS clients, body `i` with `bearer(i % CLIENTS)`; events/s.
async fn post(
    client: &reqwest::Client,
    base: &str,
    bodies: &[bytes::Bytes],
    bearers: &[String],
) -> f64 {
    let url = format!("{base}/api/v1/events");
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    futures_util::future::join_all((0..CLIENTS).map(|c| {
        let (client, url, next, bearer) = (client.clone(), url.clone(), &next, &bearers[c]);
        async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return;
                };
                let response = client
                    .post(&url)
                    .bearer_auth(bearer)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
            }
        }
    }))
    .await;
    (bodies.len() * BATCH) as f64 / started.elapsed().as_secs_f64()
}

fn batches(events: impl Iterator<Item = Value>) -> Vec<bytes::Bytes> {
    let events: Vec<Value> = events.collect();
    events
        .chunks(BATCH)
        .map(|chunk| bytes::Bytes::from(json!({ "events": chunk }).to_string()))
        .collect()
}

async fn documents(client: &reqwest::Client, base: &str, admin: &str) -> u64 {
    let stats: Value = client
        .get(format!("{base}/api/v1/search/stats"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["documents"].as_u64().unwrap_or(0)
}

/// Starts the side's search indexer and waits until it holds `want` documents: the
/// process and its address, and documents/s from its start.
async fn index(side: &Side, dir: &Path, admin: &str, want: u64) -> (Child, String, f64) {
    let client = reqwest::Client::new();
    let mut env = side.env.clone();
    env.push((
        "SEARCH_INDEX_DIR".into(),
        dir.join("index").display().to_string(),
    ));
    env.push(("SEARCH_COMMIT_MS".into(), "200".into()));
    let started = Instant::now();
    let (indexer, base) = herald("search-indexer", &self_env(&env)).await;
    while documents(&client, &base, admin).await < want {
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "indexing stalled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = want as f64 / started.elapsed().as_secs_f64();
    (indexer, base, rate)
}

fn registered(side: &str, n: usize) -> Value {
    json!({"type": "user.registered", "data": {
        "user_id": uuid::Uuid::new_v4(), "email": format!("{side}{n}@example.com"),
        "display_name": format!("Reader {n}")}})
}

/// Starts the side's notifications on its backlog, with an SMTP server of its own, and waits
/// for `want` emails: emails/s from its start.
async fn notify(side: &Side, dir: &Path, want: usize) -> f64 {
    let smtp = Smtp::start(dir).await;
    // The welcome email alone: the messages posted above would otherwise wait for their
    // recipient's account, a cost of its own.
    let rules = dir.join("welcome-only.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nevent = \"user.registered\"\ntemplate = \"welcome\"\n\
         category = \"transactional\"\nchannels = [\"email\"]\nto = { user = \"user_id\" }\n",
    )
    .unwrap();
    let mut env = side.env.clone();
    env.push(("SMTP_URL".into(), smtp.url.clone()));
    env.push(("NOTIFY_RULES_FILE".into(), rules.display().to_string()));
    let started = Instant::now();
    let (_notifier, _) = herald("notifications", &self_env(&env)).await;
    let got = smtp.wait_for(want, Duration::from_secs(900)).await;
    assert_eq!(got.len(), want, "emails accepted");
    want as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let events = setting("BENCH_EVENTS", 50_000) as usize;
    let subjects = setting("BENCH_SUBJECTS", 20_000) as usize;
    let erase_events = setting("BENCH_ERASE_EVENTS", 10_000) as usize;
    let emails = setting("BENCH_EMAILS", 5_000) as usize;
    let root = std::env::temp_dir().join(format!("herald-bench-privacy-{}", std::process::id()));
    let on = Side::start("on", &brokers, &root.join("on"), true).await;
    let off = Side::start("off", &brokers, &root.join("off"), false).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .unwrap();
    let senders: Vec<String> = (0..CLIENTS)
        .map(|c| token(&format!("sender-{c}"), "user"))
        .collect();
    let service = vec![token("accounts", "service"); CLIENTS];
    let admin = token("ops", "admin");

    // 1. Batches of messages, the two ingresses taking turns; a warm-up round first.
    let per_round = events / (BATCH * CLIENTS) * CLIENTS;
    let round = |r: usize| {
        batches((0..per_round * BATCH).map(move |n| message(r * 1_000_000 + n, n % CLIENTS)))
    };
    for side in [&on, &off] {
        post(&client, &side.base, &round(99), &senders).await;
    }
    let (mut on_rates, mut off_rates) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let bodies = round(r);
        // Alternate which goes first, so neither always finds the broker busier.
        if r % 2 == 0 {
            on_rates.push(post(&client, &on.base, &bodies, &senders).await);
            off_rates.push(post(&client, &off.base, &bodies, &senders).await);
        } else {
            off_rates.push(post(&client, &off.base, &bodies, &senders).await);
            on_rates.push(post(&client, &on.base, &bodies, &senders).await);
        }
    }
    let (on_rate, off_rate) = (median(&on_rates), median(&off_rates));

    // 1b. The raw producer, with the same messages encoded here, protected or not.
    let (raw_on, raw_off) = raw_floor(&brokers, per_round * BATCH).await;

    // 2. Every event about another person: a data key made for each.
    let first_touch = batches((0..subjects).map(profile));
    let first_on = post(&client, &on.base, &first_touch, &service).await;
    let first_off = post(&client, &off.base, &first_touch, &service).await;

    // 3. The indexer on each backlog: the messages (one document each) and the people.
    let backlog = ((ROUNDS + 1) * per_round * BATCH) as u64;
    let (_off_indexer, _, index_off) = index(&off, &root.join("off"), &admin, backlog).await;
    let (indexer, index_base, index_on) = index(&on, &root.join("on"), &admin, backlog).await;

    // 4. One sender with many messages, erased.
    let talker = token("talker", "user");
    let chatty = batches((0..erase_events).map(|n| message(n, 0)));
    post(&client, &on.base, &chatty, &vec![talker; CLIENTS]).await;
    let before = backlog + erase_events as u64;
    while documents(&client, &index_base, &admin).await < before {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let erased = tokio::process::Command::new(HERALD)
        .args(["privacy", "erase", "--subject", "talker"])
        .envs(on.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("JWT_HS256_SECRET", common::SECRET)
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    assert!(
        erased.status.success(),
        "{}",
        String::from_utf8_lossy(&erased.stderr)
    );
    let command = started.elapsed().as_secs_f64();
    while documents(&client, &index_base, &admin).await > backlog {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the erasure stalled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let scrubbed = started.elapsed().as_secs_f64();
    drop(indexer);

    // 5. Notifications on a backlog of registrations, each side in turn.
    let mut notify_rates = Vec::new();
    for (name, side) in [("off", &off), ("on", &on)] {
        let backlog = batches((0..emails).map(|n| registered(name, n)));
        post(&client, &side.base, &backlog, &service).await;
        notify_rates.push(notify(side, &root.join(name), emails).await);
    }
    let (notify_off, notify_on) = (notify_rates[0], notify_rates[1]);

    println!("| measure | encryption on | off | on / off |");
    println!("|---|---|---|---|");
    println!(
        "| ingress, batches of {BATCH} `message.sent`, {CLIENTS} clients (each its own sender), median of {ROUNDS} rounds of {} events | {on_rate:.0} events/s | {off_rate:.0} events/s | {:.0}% |",
        per_round * BATCH,
        100.0 * on_rate / off_rate
    );
    println!(
        "| rounds (on / off events/s) | {} | | |",
        on_rates
            .iter()
            .zip(&off_rates)
            .map(|(a, b)| format!("{a:.0}/{b:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| raw producer (the floor: no HTTP, no ingress), the same messages encoded in advance, protected or not, median of {ROUNDS} rounds | {:.0} events/s | {:.0} events/s | {:.0}% |",
        median(&raw_on),
        median(&raw_off),
        100.0 * median(&raw_on) / median(&raw_off)
    );
    println!(
        "| ingress, batches of {BATCH} `user.profile_updated` about {subjects} people (a new data key each) | {first_on:.0} events/s | {first_off:.0} events/s | {:.0}% |",
        100.0 * first_on / first_off
    );
    println!(
        "| search indexer on a backlog of {backlog} messages | {index_on:.0} documents/s | {index_off:.0} documents/s | {:.0}% |",
        100.0 * index_on / index_off
    );
    println!(
        "| notifications on a backlog of {emails} `user.registered` (a welcome email each, real SMTP) | {notify_on:.0} emails/s | {notify_off:.0} emails/s | {:.0}% |",
        100.0 * notify_on / notify_off
    );
    println!(
        "| erasure of a sender with {erase_events} messages: `herald privacy erase` (key destroyed, account blanked, event published) | {command:.2} s | | |"
    );
    println!(
        "| ... until the indexer has removed all {erase_events} of their documents | {scrubbed:.2} s | | |"
    );
    drop((on, off));
    let _ = std::fs::remove_dir_all(&root);
}

/// The raw producer's rounds (events/s) of `count` messages each, protected and not, in
/// turn: the floor under the ingress's ratio.
async fn raw_floor(brokers: &str, count: usize) -> (Vec<f64>, Vec<f64>) {
    use events::{Catalog, Codec, Envelope, WireFormat};
    use platform::kafka::{KafkaArgs, OutgoingRecord, Publisher};
    use platform::privacy::{Keks, MemoryKeyStore, Privacy};
    use std::sync::Arc;
    let kafka = KafkaArgs {
        brokers: Some(brokers.to_string()),
        properties: Vec::new(),
        topic_prefix: topic_prefix("privraw"),
        topics_file: None,
    };
    let topic = kafka.topic("messages");
    platform::kafka::ensure_topics(&kafka, std::slice::from_ref(&topic), Default::default())
        .await
        .unwrap();
    let catalog = Arc::new(Catalog::embedded().unwrap());
    let codec = Codec::new(catalog.clone(), WireFormat::SingleObject);
    let schema = catalog.latest("message.sent").unwrap().clone();
    let dir = std::env::temp_dir().join(format!("herald-bench-raw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    Keks::create_file(&file).unwrap();
    let privacy = Privacy::new(
        Keks::read(&file).unwrap(),
        Arc::new(MemoryKeyStore::default()),
    );
    let senders: Vec<String> = (0..CLIENTS).map(|c| format!("sender-{c}")).collect();
    let subjects: Vec<&str> = senders.iter().map(String::as_str).collect();
    let keys = privacy.keys_for(&subjects).await.unwrap();
    let topic: Arc<str> = topic.into();
    let records = |protect: bool, round: usize| -> Vec<OutgoingRecord> {
        (0..count)
            .map(|n| {
                let sender = n % CLIENTS;
                let value = schema
                    .validate(&message(round * 1_000_000 + n, sender)["data"], "")
                    .unwrap();
                let mut data = Vec::new();
                schema.encode_value(&value, &mut data).unwrap();
                if protect {
                    let key = keys[sender].as_ref().unwrap();
                    data =
                        Privacy::protect_avro_with(key, &schema, &senders[sender], &data).unwrap();
                }
                let now = jiff::Timestamp::now();
                let envelope = Envelope {
                    event_id: uuid::Uuid::now_v7(),
                    event_type: "message.sent".into(),
                    occurred_at: now,
                    received_at: now,
                    actor: senders[sender].clone(),
                    source: "api".into(),
                    idempotency_key: None,
                };
                OutgoingRecord::event(
                    topic.clone(),
                    format!("c-{sender}").into_bytes(),
                    codec.encode_bytes(&schema, &envelope, &data).unwrap(),
                    "message.sent",
                    &envelope.event_id.to_string(),
                    now.as_millisecond(),
                )
            })
            .collect()
    };
    let publisher = Publisher::new(&kafka, Duration::from_secs(30)).unwrap();
    let round = |records: Vec<OutgoingRecord>| {
        let publisher = publisher.clone();
        async move {
            let records = Arc::new(records);
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let started = Instant::now();
            futures_util::future::join_all((0..CLIENTS).map(|_| {
                let (publisher, records, next) = (publisher.clone(), records.clone(), next.clone());
                async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i * BATCH >= records.len() {
                            return;
                        }
                        let end = ((i + 1) * BATCH).min(records.len());
                        publisher
                            .publish_all(&records[i * BATCH..end])
                            .await
                            .unwrap();
                    }
                }
            }))
            .await;
            records.len() as f64 / started.elapsed().as_secs_f64()
        }
    };
    round(records(true, 98)).await;
    round(records(false, 98)).await;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for r in 0..ROUNDS {
        let (protected, plain) = (records(true, r), records(false, r));
        if r % 2 == 0 {
            on.push(round(protected).await);
            off.push(round(plain).await);
        } else {
            off.push(round(plain).await);
            on.push(round(protected).await);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    (on, off)
}
