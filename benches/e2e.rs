//! End to end, through the real processes: POST at the ingress to the email accepted by the
//! SMTP server, to the audit row, to the user being searchable.
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 TEST_POSTGRES_URL=postgres://... cargo bench --bench e2e
//!
//! `herald ingress`, `herald audit-log` and `herald notifications` (on one fresh PostgreSQL
//! database) and `herald search-indexer` run as their own processes, with aiosmtpd on loopback.
//! Once they are caught up, `user.registered` is posted at BENCH_RATE (50) events/s for
//! BENCH_SECONDS (20), open loop (each request at its planned time, whatever the previous
//! answers), and each latency runs from that planned time:
//! - to the email: the SMTP server's time of acceptance;
//! - to the audit row: the row's `created_at` (PostgreSQL's clock: the writing transaction's
//!   start, so at most a commit earlier than the row is visible);
//! - to searchable: the index's document count, polled every 10 ms, reaching k for the k-th
//!   event sent (events arrive over 6 partitions, so this pairs counts with events by order,
//!   not by identity: a distribution, not a per-event figure).
//!
//! All clocks are this machine's wall clock.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Smtp, herald, percentile, setting, topic_prefix, wall};
use serde_json::{Value, json};
use uuid::Uuid;

fn registered(user: Uuid, email: &str) -> Value {
    json!({"type": "user.registered", "data": {
        "user_id": user, "email": email, "display_name": "Bench"
    }})
}

async fn documents(client: &reqwest::Client, search: &str, admin: &str) -> usize {
    let Ok(response) = client
        .get(format!("{search}/api/v1/search/stats"))
        .bearer_auth(admin)
        .send()
        .await
    else {
        return 0;
    };
    response
        .json::<Value>()
        .await
        .ok()
        .and_then(|stats| stats["documents"].as_u64())
        .unwrap_or(0) as usize
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let admin_url = std::env::var("TEST_POSTGRES_URL")
        .expect("set TEST_POSTGRES_URL (infra/scripts/services.sh prints it)");
    let rate = setting("BENCH_RATE", 50);
    let seconds = setting("BENCH_SECONDS", 20);
    let prefix = topic_prefix("e2e");
    let dir = std::env::temp_dir().join(format!("herald-bench-e2e-{}", &prefix[..11]));
    std::fs::create_dir_all(&dir).unwrap();
    let smtp = Smtp::start(&dir).await;
    let database = common::fresh_postgres(&admin_url).await;
    let index = dir.join("index").display().to_string();
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("TOPIC_PREFIX", prefix.as_str()),
        ("DATABASE_URL", database.as_str()),
        ("SMTP_URL", smtp.url.as_str()),
        ("SEARCH_INDEX_DIR", index.as_str()),
    ];
    let (_ingress, ingress) = herald("ingress", &env).await;
    let (_audit, _) = herald("audit-log", &env).await;
    let (_notifications, _) = herald("notifications", &env).await;
    let (_search, search) = herald("search-indexer", &env).await;
    let token = common::token("bench", "service");
    let admin = common::token("ops", "admin");
    let client = reqwest::Client::new();
    let post = |user: Uuid, email: String| {
        client
            .post(format!("{ingress}/api/v1/events"))
            .bearer_auth(&token)
            .json(&registered(user, &email))
            .send()
    };

    // Warm up: every consumer has joined and handled a first event.
    for i in 0..10 {
        let response = post(Uuid::new_v4(), format!("w{i}@example.com"))
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
    smtp.wait_for(10, Duration::from_secs(60)).await;
    let until = Instant::now() + Duration::from_secs(60);
    while documents(&client, &search, &admin).await < 10 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let warm = documents(&client, &search, &admin).await;

    // The index's document count over time, from before the first POST.
    let polling = tokio_util::sync::CancellationToken::new();
    let poller = tokio::spawn({
        let (client, search, admin, polling) = (
            client.clone(),
            search.clone(),
            admin.clone(),
            polling.clone(),
        );
        async move {
            let mut seen: Vec<(usize, f64)> = Vec::new();
            while !polling.is_cancelled() {
                let count = documents(&client, &search, &admin).await;
                if seen.last().is_none_or(|(last, _)| count > *last) {
                    seen.push((count, wall()));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        }
    });

    let n = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let started_wall = wall();
    let mut planned = Vec::with_capacity(n);
    let mut requests = Vec::with_capacity(n);
    for i in 0..n {
        let offset = interval.mul_f64(i as f64);
        tokio::time::sleep_until(start + offset).await;
        planned.push(started_wall + offset.as_secs_f64());
        let request = post(Uuid::new_v4(), format!("l{i}@example.com"));
        requests.push(tokio::spawn(async move {
            let response = request.await.ok()?;
            let body: Value = response.json().await.ok()?;
            body["event_id"].as_str()?.parse::<Uuid>().ok()
        }));
    }
    let mut event_ids = HashMap::new();
    for (i, request) in requests.into_iter().enumerate() {
        if let Some(id) = request.await.unwrap() {
            event_ids.insert(id, i);
        }
    }
    let accepted = event_ids.len();

    // Everything arrives.
    let emails = smtp.wait_for(10 + accepted, Duration::from_secs(120)).await;
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    let rows: Vec<(Uuid, f64)> = loop {
        let rows: Vec<(Uuid, f64)> =
            sqlx::query_as("SELECT id, EXTRACT(EPOCH FROM created_at)::float8 FROM audit_log")
                .fetch_all(&pool)
                .await
                .unwrap();
        if rows.len() >= 10 + accepted || Instant::now() > until {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let until = Instant::now() + Duration::from_secs(60);
    while documents(&client, &search, &admin).await < warm + accepted && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    polling.cancel();
    let seen = poller.await.unwrap();

    let to_email = sorted(emails.iter().filter_map(|(to, at)| {
        let i: usize = to.strip_prefix('l')?.split('@').next()?.parse().ok()?;
        Some((at - planned[i]) * 1000.0)
    }));
    let to_row = sorted(
        rows.iter()
            .filter_map(|(id, at)| Some((at - planned[*event_ids.get(id)?]) * 1000.0)),
    );
    // The k-th event sent (k from 1) is counted searchable when the index first held
    // `warm + k` documents.
    let to_search = sorted((1..=n).filter_map(|k| {
        let (_, at) = seen.iter().find(|(count, _)| *count >= warm + k)?;
        Some((at - planned[k - 1]) * 1000.0)
    }));
    println!(
        "{n} user.registered at {rate} events/s for {seconds} s, open loop; {accepted} answered \
         202"
    );
    println!("| path | events | p50 | p99 | max |\n|---|---|---|---|---|");
    for (path, latencies) in [
        ("POST to email accepted by the SMTP server", &to_email),
        ("POST to audit row (its transaction's start)", &to_row),
        ("POST to searchable (document count)", &to_search),
    ] {
        println!(
            "| {path} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            latencies.len(),
            percentile(latencies, 0.50),
            percentile(latencies, 0.99),
            latencies.last().copied().unwrap_or(0.0)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values
}
