//! Event streams over HTTP against `herald tail`, on one broker:
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench streams
//!
//! BENCH_EVENTS (100,000) `order.placed` are posted to topics of their own, then read back:
//! 1. the ceiling: `herald tail orders --last N`, every event decoded and written as a JSON
//!    line (to /dev/null), from the process's start to its exit;
//! 2. one client: `GET /api/v1/streams/orders?from=...` as server-sent events, until it
//!    has all N: events/s from the request to the last event;
//! 3. BENCH_CLIENTS (100) clients at once, each reading the first BENCH_EACH (10,000)
//!    events from the beginning: events/s delivered in all, and the slowest client's.

mod common;

use std::time::Instant;

use common::{HERALD, herald, setting, token, topic_prefix};
use serde_json::json;

/// Reads server-sent events from `response` until `want` events named `order.placed` came:
/// how many came.
async fn count_events(mut response: reqwest::Response, want: usize) -> usize {
    let mut text = String::new();
    let mut got = 0;
    while got < want {
        let Ok(Some(chunk)) = response.chunk().await else {
            break;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(end) = text.rfind("\n\n") {
            got += text[..end].matches("event: order.placed\n").count();
            text.drain(..end + 2);
        }
    }
    got
}

async fn open(client: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    let response = client
        .get(format!(
            "{base}/api/v1/streams/orders?from=2020-01-01T00:00:00Z&type=order.placed"
        ))
        .bearer_auth(token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let events = setting("BENCH_EVENTS", 100_000) as usize;
    let clients = setting("BENCH_CLIENTS", 100) as usize;
    let each = (setting("BENCH_EACH", 10_000) as usize).min(events);
    let prefix = topic_prefix("sbench");
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("TOPIC_PREFIX", prefix.as_str()),
        ("STREAM_CURSOR_KEY", "bench-stream-cursor-key"),
        ("STREAM_MAX_PER_CALLER", "1000"),
    ];
    let (_ingress, base) = herald("ingress", &env).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let shop = token("shop", "service");
    for start in (0..events).step_by(100) {
        let batch: Vec<_> = (start..(start + 100).min(events))
            .map(|n| {
                json!({"type": "order.placed", "key": format!("o-{n}"), "data": {
                    "order_id": format!("o-{n}"), "customer_id": format!("c-{}", n % 1000),
                    "items": [{"sku": "tea", "quantity": 2, "unit_price_cents": 450}],
                    "total_cents": 900, "currency": "EUR"}})
            })
            .collect();
        let response = client
            .post(format!("{base}/api/v1/events"))
            .bearer_auth(&shop)
            .json(&json!({ "events": batch }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }

    // 1. The ceiling: herald tail, every event to a JSON line.
    let started = Instant::now();
    let tail = tokio::process::Command::new(HERALD)
        .args(["tail", "orders", "--last", &events.to_string()])
        .envs(env)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(tail.success());
    let tail_rate = events as f64 / started.elapsed().as_secs_f64();

    // 2. One client, every event.
    let analyst = token("ana", "analyst");
    let started = Instant::now();
    let got = count_events(open(&client, &base, &analyst).await, events).await;
    assert_eq!(got, events);
    let one_rate = events as f64 / started.elapsed().as_secs_f64();

    // 3. Many clients at once, each the first `each` events.
    let started = Instant::now();
    let reads = futures_util::future::join_all((0..clients).map(|_| {
        let (client, base, analyst) = (client.clone(), base.clone(), analyst.clone());
        async move {
            let started = Instant::now();
            let got = count_events(open(&client, &base, &analyst).await, each).await;
            assert_eq!(got, each);
            each as f64 / started.elapsed().as_secs_f64()
        }
    }))
    .await;
    let all_rate = (clients * each) as f64 / started.elapsed().as_secs_f64();
    let slowest = reads.iter().copied().fold(f64::MAX, f64::min);

    println!("| measure | events/s | against herald tail |");
    println!("|---|---|---|");
    println!(
        "| `herald tail orders --last {events}`, JSON lines to /dev/null (the ceiling) | {tail_rate:.0} | 100% |"
    );
    println!(
        "| one client, server-sent events, {events} events from the beginning | {one_rate:.0} | {:.0}% |",
        100.0 * one_rate / tail_rate
    );
    println!(
        "| {clients} clients at once, {each} events each from the beginning: delivered in all | {all_rate:.0} | {:.0}% |",
        100.0 * all_rate / tail_rate
    );
    println!("| ... the slowest of the {clients} clients | {slowest:.0} | |");
}
