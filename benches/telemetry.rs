//! What tracing and metrics cost the ingress: `herald ingress` processes on the same broker,
//! loaded in turn: one with metrics and span export off, one with metrics only, one with both.
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench telemetry
//!
//! Metrics: the Prometheus recorder (off: `HERALD_METRICS=off`). Traces: every request's
//! spans (the request, the produce) exported over OTLP/HTTP, protobuf, to a receiver in this
//! process, every trace sampled (`BENCH_SAMPLER_ARG` below 1 samples that share of traces
//! instead). All sides log at `warn`, so logs cost the same. Rounds rotate which side goes
//! first; medians are reported.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ROUNDS: usize = 3;

fn order(i: usize) -> Value {
    json!({"type": "order.placed", "data": {"order_id": format!("o-{i}"), "customer_id": "alice",
        "items": [{"sku": "tea", "quantity": 2, "unit_price_cents": 450}], "total_cents": 900, "currency": "EUR"}})
}

/// Counts the OTLP export requests and their bytes, without keeping them.
async fn receive(
    axum::extract::State(seen): axum::extract::State<Arc<[AtomicU64; 2]>>,
    body: axum::body::Bytes,
) -> &'static str {
    seen[0].fetch_add(1, Ordering::Relaxed);
    seen[1].fetch_add(body.len() as u64, Ordering::Relaxed);
    ""
}

/// Requests per second from 32 clients posting `body` for `seconds`.
async fn load(client: &reqwest::Client, url: &str, token: &str, body: &str, seconds: u64) -> f64 {
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let done = futures_util::future::join_all((0..32).map(|_| async {
        let mut n = 0u64;
        while Instant::now() < until {
            let response = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_owned())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            n += 1;
        }
        n
    }))
    .await;
    done.iter().sum::<u64>() as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let seconds = common::setting("BENCH_SECONDS", 8);
    let sampler_arg = std::env::var("BENCH_SAMPLER_ARG").unwrap_or_else(|_| "1".to_string());
    let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(receive))
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let prefix = format!("bench{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let sides: [(&str, Vec<(&str, String)>); 3] = [
        ("off", vec![("HERALD_METRICS", "off".into())]),
        ("metrics", vec![]),
        (
            "metrics + traces",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
                ("OTEL_TRACES_SAMPLER_ARG", sampler_arg.clone()),
            ],
        ),
    ];
    let mut bases = Vec::new();
    let mut children = Vec::new();
    for (_, env) in &sides {
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.extend([
            ("KAFKA_BROKERS", brokers.as_str()),
            ("TOPIC_PREFIX", prefix.as_str()),
            ("RUST_LOG", "warn"),
        ]);
        let (child, base) = common::herald("ingress", &env).await;
        children.push(child);
        bases.push(base);
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    // The customer of every order: a user publishes only their own.
    let token = common::token("alice", "user");
    let single = order(1).to_string();
    let batch = json!({"events": (0..100).map(order).collect::<Vec<_>>()}).to_string();

    // Warm every side up (connections, topic metadata).
    for base in &bases {
        load(
            &client,
            &format!("{base}/api/v1/events"),
            &token,
            &single,
            2,
        )
        .await;
    }
    let before = seen[0].load(Ordering::Relaxed);
    let mut single_rates = vec![Vec::new(); sides.len()];
    let mut batch_rates = vec![Vec::new(); sides.len()];
    for round in 0..ROUNDS {
        for k in 0..sides.len() {
            let side = (round + k) % sides.len();
            let url = format!("{}/api/v1/events", bases[side]);
            single_rates[side].push(load(&client, &url, &token, &single, seconds).await);
            batch_rates[side].push(100.0 * load(&client, &url, &token, &batch, seconds).await);
        }
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let exports = seen[0].load(Ordering::Relaxed) - before;
    let megabytes = seen[1].load(Ordering::Relaxed) as f64 / 1e6;
    let mut series = Vec::new();
    for base in &bases {
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        series.push(
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .count(),
        );
    }

    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("traces sampled: {sampler_arg}; {ROUNDS} rounds of {seconds} s per load and side");
    println!(
        "| side | single events, 32 clients (req/s) | vs off | batches of 100 (events/s) | vs off | series on /metrics |"
    );
    println!("|---|---|---|---|---|---|");
    let (single_off, batch_off) = (
        common::median(&single_rates[0]),
        common::median(&batch_rates[0]),
    );
    for (k, (name, _)) in sides.iter().enumerate() {
        let (single, batch) = (
            common::median(&single_rates[k]),
            common::median(&batch_rates[k]),
        );
        println!(
            "| {name} | {single:.0} ({}) | {:.1}% | {batch:.0} ({}) | {:.1}% | {} |",
            list(&single_rates[k]),
            100.0 * single / single_off,
            list(&batch_rates[k]),
            100.0 * batch / batch_off,
            series[k]
        );
    }
    println!("OTLP export requests received while measured: {exports} ({megabytes:.1} MB)");
}
