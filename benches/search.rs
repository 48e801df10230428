//! Search against the real `herald ingress` and `herald search-indexer` processes:
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench search
//!
//! 1. indexing: BENCH_DOCS (200,000) `order.placed` events posted first (batches of 500), then
//!    the indexer started on the backlog: documents per second until all are searchable;
//! 2. freshness: with the indexer caught up, 200 orders posted one by one at 20/s, each with a
//!    word of its own: time from the POST being sent to a search finding it, p50/p99/max;
//! 3. queries: 2,000 searches of one or two words of the vocabulary over the whole index, one
//!    at a time, as an admin and as a customer (visibility filter): p50/p99;
//! 4. the index's size on disk, and per million documents; the indexer's peak RSS.

mod common;

use common::{
    HERALD, herald, ingress_on, peak_rss_mb, percentile, post_batches, setting, token, topic_prefix,
};

use std::time::{Duration, Instant};

use serde_json::{Value, json};

const CUSTOMERS: usize = 10_000;

/// A vocabulary of 2,000 pronounceable words, the same every run.
fn vocabulary() -> Vec<String> {
    let onsets = [
        "b", "k", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "z",
    ];
    let vowels = ["a", "e", "i", "o", "u"];
    let mut words = Vec::new();
    'all: for a in onsets {
        for b in vowels {
            for c in onsets {
                for d in vowels {
                    for e in ["n", "r", "s", "x"] {
                        words.push(format!("{a}{b}{c}{d}{e}"));
                        if words.len() == 2_000 {
                            break 'all;
                        }
                    }
                }
            }
        }
    }
    words
}

/// A small deterministic generator (no dependency for a benchmark's dice).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn order(id: &str, customer: usize, words: &[&str]) -> Value {
    json!({"type": "order.placed", "key": id, "data": {
        "order_id": id, "customer_id": format!("c-{customer}"),
        "items": words.iter().map(|w| json!({"sku": w, "quantity": 1, "unit_price_cents": 450})).collect::<Vec<_>>(),
        "total_cents": 450 * words.len(), "currency": "EUR"
    }})
}

async fn stats(client: &reqwest::Client, base: &str, admin: &str) -> Value {
    client
        .get(format!("{base}/api/v1/search/stats"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn total(client: &reqwest::Client, base: &str, query: &str, bearer: &str) -> u64 {
    let answer: Value = client
        .get(format!("{base}/api/v1/search?{query}"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["total"].as_u64().unwrap_or(0)
}

async fn ids(client: &reqwest::Client, base: &str, query: &str, bearer: &str) -> Vec<String> {
    let answer: Value = client
        .get(format!("{base}/api/v1/search?{query}"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let docs = setting("BENCH_DOCS", 200_000) as usize;
    let prefix = topic_prefix("sbench");
    let dir = std::env::temp_dir().join(format!("herald-bench-search-{}", &prefix[..14]));
    let (_ingress, ingress, common) = ingress_on(brokers.as_str(), &prefix).await;
    let service = token("bench", "service");
    let admin = token("ops", "admin");
    let client = reqwest::Client::new();
    let words = vocabulary();

    // 1. The backlog, then the indexer on it.
    let started = Instant::now();
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15);
    let mut batches = Vec::new();
    for chunk in (0..docs).collect::<Vec<_>>().chunks(500) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|n| {
                let picked: Vec<&str> = (0..3)
                    .map(|_| words[dice.below(words.len())].as_str())
                    .collect();
                order(&format!("o-{n}"), n % CUSTOMERS, &picked)
            })
            .collect();
        batches.push(json!({ "events": events }));
    }
    post_batches(&client, &ingress, &batches, |_| service.clone()).await;
    let url = format!("{ingress}/api/v1/events");
    println!(
        "backlog: {docs} order.placed events posted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let index_dir = dir.join("index");
    let mut env = common.to_vec();
    let index_dir_text = index_dir.display().to_string();
    env.push(("SEARCH_INDEX_DIR", index_dir_text.as_str()));
    let started = Instant::now();
    let (indexer, base) = herald("search-indexer", &env).await;
    let pid = indexer.id().unwrap();
    loop {
        let seen = stats(&client, &base, &admin).await;
        if seen["documents"].as_u64().unwrap_or(0) as usize >= docs {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "indexing stalled: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed().as_secs_f64();
    println!(
        "indexing: {docs} documents searchable {took:.1} s after process start ({:.0} documents/s); peak RSS {:.1} MB",
        docs as f64 / took,
        peak_rss_mb(pid)
    );

    // 2. Freshness: POST to searchable.
    let mut waits = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut pending = Vec::new();
    for n in 0..200 {
        tick.tick().await;
        let word = format!("fresh{n}x{}", &prefix[6..12]);
        let body = order(&format!("f-{n}"), 1, &[word.as_str()]);
        let client = client.clone();
        let (url, service, admin, base) =
            (url.clone(), service.clone(), admin.clone(), base.clone());
        pending.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = client
                .post(&url)
                .bearer_auth(&service)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
            let id = format!("order:f-{n}");
            // Typo tolerance finds the orders of neighbouring words first: wait for this one.
            while !ids(&client, &base, &format!("q={word}&limit=100"), &admin)
                .await
                .contains(&id)
            {
                assert!(
                    sent.elapsed() < Duration::from_secs(30),
                    "{word} never searchable"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sent.elapsed().as_secs_f64() * 1000.0
        }));
    }
    for task in pending {
        waits.push(task.await.unwrap());
    }
    waits.sort_by(f64::total_cmp);
    println!(
        "freshness: 200 orders at 20/s, POST to searchable p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&waits, 0.5),
        percentile(&waits, 0.99),
        waits.last().unwrap()
    );

    // 3. Queries over the whole index.
    let customer = token("c-42", "user");
    for (who, bearer) in [("admin", &admin), ("customer", &customer)] {
        let mut times = Vec::new();
        let mut hits = 0;
        for _ in 0..2_000 {
            let query = if dice.below(2) == 0 {
                format!("q={}", words[dice.below(words.len())])
            } else {
                format!(
                    "q={}+{}",
                    words[dice.below(words.len())],
                    words[dice.below(words.len())]
                )
            };
            let sent = Instant::now();
            hits += total(&client, &base, &format!("{query}&limit=20"), bearer).await;
            times.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "queries as {who}: 2,000 over {docs} documents, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({:.1} matches per query)",
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times.last().unwrap(),
            hits as f64 / 2_000.0
        );
    }

    // 4. Size.
    let seen = stats(&client, &base, &admin).await;
    let bytes = seen["bytes"].as_f64().unwrap_or(0.0);
    println!(
        "index: {} documents, {} segments, {:.1} MB on disk ({:.0} MB per million documents); peak RSS {:.1} MB",
        seen["documents"],
        seen["segments"],
        bytes / 1e6,
        bytes / 1e6 / (seen["documents"].as_f64().unwrap_or(1.0) / 1e6),
        peak_rss_mb(pid)
    );

    // 5. A rebuild beside the live index while queries run.
    let started = Instant::now();
    let rebuild = tokio::process::Command::new(HERALD)
        .args(["search-indexer", "reindex"])
        .envs(env.iter().copied())
        .env("RUST_LOG", "error")
        .output();
    let querying = {
        let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
        let words = words.clone();
        tokio::spawn(async move {
            let mut dice = Dice(7);
            let mut times = Vec::new();
            let mut failed = 0;
            loop {
                let query = format!(
                    "{}/api/v1/search?q={}&limit=20",
                    base,
                    words[dice.below(words.len())]
                );
                let sent = Instant::now();
                match client.get(&query).bearer_auth(&admin).send().await {
                    Ok(response) if response.status() == 200 => {}
                    _ => failed += 1,
                }
                times.push(sent.elapsed().as_secs_f64() * 1000.0);
                let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
                if metrics
                    .text()
                    .await
                    .unwrap()
                    .contains("herald_search_generation 2")
                {
                    return (times, failed);
                }
            }
        })
    };
    let output = rebuild.await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let built = started.elapsed().as_secs_f64();
    let (mut times, failed) = querying.await.unwrap();
    let switched = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    println!(
        "reindex: {} in {built:.1} s ({:.0} documents/s), served {switched:.1} s after it began; {} queries meanwhile, {failed} failed, p50 {:.2} ms, p99 {:.2} ms; peak RSS of the service {:.1} MB",
        String::from_utf8_lossy(&output.stdout).trim(),
        (docs + 200) as f64 / built,
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        peak_rss_mb(pid)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
