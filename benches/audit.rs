//! Audit-log throughput: a backlog of 100,000 events of every type, drained by the real
//! `herald audit-log` process into SQLite and into PostgreSQL.
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 TEST_POSTGRES_URL=postgres://... cargo bench --bench audit
//!
//! `infra/scripts/services.sh` prints TEST_POSTGRES_URL; without it only SQLite runs. For
//! each store: time from process start to the last row, time from the first row to the last
//! (the drain rate), peak RSS of the process (VmHWM), and a full `verify` of the chains.
//! Then PostgreSQL again with two processes in one group: the scaling from one to two.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_log::store::SqlStore;
use events::{Catalog, Codec, Envelope, WireFormat};
use platform::db::Database;
use platform::kafka::{KafkaArgs, OutgoingRecord, Publisher};
use serde_json::json;
use uuid::Uuid;

const EVENTS: usize = 100_000;
const PARTITIONS: i32 = 6;

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(EVENTS);
    let prefix = format!("bench{}.", &Uuid::new_v4().simple().to_string()[..8]);
    let kafka = KafkaArgs {
        brokers: Some(brokers.clone()),
        properties: vec![],
        topic_prefix: prefix.clone(),
        topics_file: None,
    };
    let catalog = Arc::new(Catalog::embedded().unwrap());
    let topics: Vec<String> = catalog
        .topics()
        .into_iter()
        .map(|t| kafka.topic(t))
        .collect();
    platform::kafka::ensure_topics(
        &kafka,
        &topics,
        platform::kafka::TopicOverrides {
            partitions: Some(PARTITIONS),
            replication: None,
        },
    )
    .await
    .unwrap();

    let started = Instant::now();
    backlog(&kafka, &catalog, events).await;
    println!(
        "backlog: {events} events of {} types on {} topics x {PARTITIONS} partitions, published in {:.1} s",
        catalog.event_types().count(),
        topics.len(),
        started.elapsed().as_secs_f64()
    );

    let temp = std::env::temp_dir().join(format!("herald-bench-audit-{}", &prefix[..13]));
    std::fs::create_dir_all(&temp).unwrap();
    let mut stores = vec![(
        "sqlite",
        format!("sqlite://{}", temp.join("audit.db").display()),
    )];
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(admin) => stores.push(("postgres", common::fresh_postgres(&admin).await)),
        Err(_) => println!("postgres: skipped (TEST_POSTGRES_URL unset)"),
    }
    let postgres = stores.iter().any(|(name, _)| *name == "postgres");
    for (name, url) in stores {
        drain(name, &url, &kafka, events, 1).await;
    }
    // Scaling: two processes in one group share the partitions, on a database of their own.
    if let (true, Ok(admin)) = (postgres, std::env::var("TEST_POSTGRES_URL")) {
        drain(
            "postgres",
            &common::fresh_postgres(&admin).await,
            &kafka,
            events,
            2,
        )
        .await;
    }
    let _ = std::fs::remove_dir_all(&temp);
}

/// Publishes `n` distinct events, every type in turn, keys spread over the partitions.
async fn backlog(kafka: &KafkaArgs, catalog: &Arc<Catalog>, n: usize) {
    let codec = Codec::new(catalog.clone(), WireFormat::SingleObject);
    let publisher = Publisher::new(kafka, Duration::from_secs(60)).unwrap();
    let types: Vec<_> = catalog.event_types().cloned().collect();
    let mut chunk = Vec::with_capacity(1000);
    for i in 0..n {
        let schema = &types[i % types.len()];
        let mut data = schema.example.clone();
        let key = if data[&schema.key_field]
            .as_str()
            .is_some_and(|k| Uuid::try_parse(k).is_ok())
        {
            Uuid::from_u128(i as u128 + 1).to_string()
        } else {
            format!("k-{i}")
        };
        data[&schema.key_field] = json!(key);
        let value = schema.validate(&data, "").unwrap();
        let now = jiff::Timestamp::now();
        let envelope = Envelope {
            event_id: Uuid::now_v7(),
            event_type: schema.event_type.clone(),
            occurred_at: now,
            received_at: now,
            actor: "bench".into(),
            source: "api".into(),
            idempotency_key: None,
        };
        chunk.push(OutgoingRecord {
            topic: kafka.topic(&schema.topic).into(),
            key: key.into_bytes(),
            payload: codec.encode(schema, &envelope, &value).unwrap(),
            timestamp_ms: now.as_millisecond(),
            headers: vec![],
        });
        if chunk.len() == 1000 || i + 1 == n {
            publisher.publish_all(&chunk).await.unwrap();
            chunk.clear();
        }
    }
}

async fn count(db: &Database) -> i64 {
    platform::with_pool!(db, pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
            .fetch_one(pool)
            .await
            .unwrap_or(0)
    })
}

/// Starts `herald audit-log` on the backlog and times it until every event has its row.
async fn drain(name: &str, url: &str, kafka: &KafkaArgs, events: usize, instances: usize) {
    let started = Instant::now();
    let mut children = Vec::new();
    for _ in 0..instances {
        children.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
                .arg("audit-log")
                .env("KAFKA_BROKERS", kafka.brokers.as_deref().unwrap())
                .env("TOPIC_PREFIX", &kafka.topic_prefix)
                .env(
                    "CONSUMER_GROUP",
                    format!("{}audit-bench-{name}-{instances}", kafka.topic_prefix),
                )
                .env("DATABASE_URL", url)
                .env("HERALD_LISTEN", "127.0.0.1:0")
                .env("JWT_HS256_SECRET", common::SECRET)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("herald audit-log starts"),
        );
    }
    let pids: Vec<u32> = children.iter().map(|c| c.id().unwrap()).collect();
    // The process creates the tables; until then the count reads as 0.
    let db = loop {
        if let Ok(db) = Database::connect(url).await {
            break db;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut first_row = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let rows = count(&db).await;
        if rows > 0 && first_row.is_none() {
            first_row = Some(started.elapsed());
        }
        if rows as usize >= events || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = started.elapsed();
    let peak_mb = pids
        .iter()
        .map(|pid| common::peak_rss_mb(*pid))
        .fold(0.0, f64::max);
    let cpu_seconds: f64 = pids.iter().map(|pid| common::cpu_seconds(*pid)).sum();
    for (pid, mut child) in pids.iter().zip(children) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    }
    let rows = count(&db).await;
    let first = first_row.unwrap_or(total);
    let draining = total.saturating_sub(first).as_secs_f64().max(0.001);
    println!(
        "{name}, {instances} process(es): {rows} rows of {events} events; {:.2} s from process \
         start ({:.0} events/s), {:.2} s from first to last row ({:.0} events/s); peak RSS \
         {:.1} MB; CPU {:.1} s",
        total.as_secs_f64(),
        rows as f64 / total.as_secs_f64(),
        draining,
        rows as f64 / draining,
        peak_mb,
        cpu_seconds
    );
    let store = SqlStore::new(db).await.unwrap();
    let t = Instant::now();
    let report = audit_log::verify::verify(&store).await.unwrap();
    println!(
        "{name}: verify {} rows in {} chains in {:.2} s: {}",
        report.rows,
        report.chains,
        t.elapsed().as_secs_f64(),
        if report.passed() { "intact" } else { "FAILED" }
    );
}
