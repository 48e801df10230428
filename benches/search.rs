//! Search against the real `herald ingress` and `herald search-indexer` processes, the
//! embedded index and the OpenSearch backend in one run, on the same backlog:
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench search
//!
//! For each backend of BENCH_SEARCH_BACKENDS (`embedded,opensearch`; the OpenSearch node is
//! TEST_OPENSEARCH_URL, or one started from Maven Central's jars):
//! 1. indexing: BENCH_DOCS (200,000) `order.placed` events posted first (batches of 500), then
//!    the indexer started on the backlog: documents per second until all are searchable;
//! 2. freshness: with the indexer caught up, 200 orders posted one by one at 20/s, each with a
//!    word of its own: time from the POST being sent to a search finding it, p50/p99/max;
//! 3. queries: 2,000 searches of one or two words of the vocabulary over the whole index, one
//!    at a time, as an admin and as a customer (visibility filter): p50/p99;
//! 4. the index's size, and per million documents; the indexer's peak RSS;
//! 5. a rebuild (`herald search-indexer reindex`) while queries run.
//!
//! Then, with BENCH_DOCS_LARGE (1,000,000; 0 skips it) above BENCH_DOCS, the backlog grows to
//! that many orders, every indexer catches up, and the queries are measured again.

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

struct Bench {
    client: reqwest::Client,
    ingress: String,
    service: String,
    admin: String,
    customer: String,
    words: Vec<String>,
    prefix: String,
}

/// One backend's indexer, running.
struct Indexer {
    backend: String,
    _child: tokio::process::Child,
    pid: u32,
    base: String,
    env: Vec<(String, String)>,
}

/// The orders `range` as batches of 500 (each with three words of the vocabulary).
fn batches(range: std::ops::Range<usize>, words: &[String]) -> Vec<Value> {
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ range.start as u64);
    let mut batches = Vec::new();
    for chunk in range.collect::<Vec<_>>().chunks(500) {
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
    batches
}

impl Bench {
    async fn post(&self, range: std::ops::Range<usize>) {
        let started = Instant::now();
        let count = range.len();
        let batches = batches(range, &self.words);
        post_batches(&self.client, &self.ingress, &batches, |_| {
            self.service.clone()
        })
        .await;
        println!(
            "backlog: {count} order.placed events posted in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    async fn wait_for(&self, indexer: &Indexer, docs: usize) -> f64 {
        let started = Instant::now();
        loop {
            let seen = stats(&self.client, &indexer.base, &self.admin).await;
            if seen["documents"].as_u64().unwrap_or(0) as usize >= docs {
                return started.elapsed().as_secs_f64();
            }
            assert!(
                started.elapsed() < Duration::from_secs(3600),
                "{}: indexing stalled: {seen}",
                indexer.backend
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Phases 1 to 4 for one backend; its indexer, left running.
    async fn measure(&self, backend: &str, env: Vec<(String, String)>, docs: usize) -> Indexer {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let started = Instant::now();
        let (child, base) = herald("search-indexer", &pairs).await;
        let pid = child.id().unwrap();
        let indexer = Indexer {
            backend: backend.to_string(),
            _child: child,
            pid,
            base,
            env,
        };
        self.wait_for(&indexer, docs).await;
        let took = started.elapsed().as_secs_f64();
        println!(
            "{backend}: indexing: {docs} documents searchable {took:.1} s after process start ({:.0} documents/s); peak RSS {:.1} MB",
            docs as f64 / took,
            peak_rss_mb(pid)
        );
        self.freshness(&indexer).await;
        self.queries(&indexer, docs).await;
        let seen = stats(&self.client, &indexer.base, &self.admin).await;
        let bytes = seen["bytes"].as_f64().unwrap_or(0.0);
        println!(
            "{backend}: index: {} documents, {} segments, {:.1} MB ({:.0} MB per million documents); peak RSS {:.1} MB",
            seen["documents"],
            seen["segments"],
            bytes / 1e6,
            bytes / 1e6 / (seen["documents"].as_f64().unwrap_or(1.0) / 1e6),
            peak_rss_mb(pid)
        );
        indexer
    }

    async fn freshness(&self, indexer: &Indexer) {
        let url = format!("{}/api/v1/events", self.ingress);
        let mut waits = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut pending = Vec::new();
        for n in 0..200 {
            tick.tick().await;
            let word = format!("fresh{n}x{}{}", &indexer.backend[..1], &self.prefix[6..12]);
            let id = format!("f-{}-{n}", indexer.backend);
            let body = order(&id, 1, &[word.as_str()]);
            let client = self.client.clone();
            let (url, service, admin, base) = (
                url.clone(),
                self.service.clone(),
                self.admin.clone(),
                indexer.base.clone(),
            );
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
                let id = format!("order:{id}");
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
            "{}: freshness: 200 orders at 20/s, POST to searchable p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            indexer.backend,
            percentile(&waits, 0.5),
            percentile(&waits, 0.99),
            waits.last().unwrap()
        );
    }

    async fn queries(&self, indexer: &Indexer, docs: usize) {
        let mut dice = Dice(42);
        let words = &self.words;
        for (who, bearer) in [("admin", &self.admin), ("customer", &self.customer)] {
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
                hits += total(
                    &self.client,
                    &indexer.base,
                    &format!("{query}&limit=20"),
                    bearer,
                )
                .await;
                times.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            times.sort_by(f64::total_cmp);
            println!(
                "{}: queries as {who}: 2,000 over {docs} documents, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({:.1} matches per query)",
                indexer.backend,
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                times.last().unwrap(),
                hits as f64 / 2_000.0
            );
        }
    }

    /// Phase 5: a rebuild while queries run, until the command ends (and, embedded, until
    /// the service serves the new generation).
    async fn rebuild(&self, indexer: &Indexer, docs: usize) {
        let started = Instant::now();
        let rebuild = tokio::process::Command::new(HERALD)
            .args(["search-indexer", "reindex"])
            .envs(indexer.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "error")
            .output();
        let done = tokio_util::sync::CancellationToken::new();
        let querying = {
            let (client, base, admin) = (
                self.client.clone(),
                indexer.base.clone(),
                self.admin.clone(),
            );
            let words = self.words.clone();
            let embedded = indexer.backend == "embedded";
            let done = done.clone();
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
                    if done.is_cancelled() {
                        let switched = !embedded
                            || client
                                .get(format!("{base}/metrics"))
                                .send()
                                .await
                                .unwrap()
                                .text()
                                .await
                                .unwrap()
                                .contains("herald_search_generation 2");
                        if switched {
                            return (times, failed);
                        }
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
        done.cancel();
        let (mut times, failed) = querying.await.unwrap();
        let switched = started.elapsed().as_secs_f64();
        times.sort_by(f64::total_cmp);
        println!(
            "{}: reindex: {} in {built:.1} s ({:.0} documents/s), served {switched:.1} s after it began; {} queries meanwhile, {failed} failed, p50 {:.2} ms, p99 {:.2} ms; peak RSS of the service {:.1} MB",
            indexer.backend,
            String::from_utf8_lossy(&output.stdout).trim(),
            docs as f64 / built,
            times.len(),
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            peak_rss_mb(indexer.pid)
        );
    }
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let docs = setting("BENCH_DOCS", 200_000) as usize;
    let large = setting("BENCH_DOCS_LARGE", 1_000_000) as usize;
    let backends = std::env::var("BENCH_SEARCH_BACKENDS")
        .unwrap_or_else(|_| "embedded,opensearch".to_string());
    let prefix = topic_prefix("sbench");
    let dir = std::env::temp_dir().join(format!("herald-bench-search-{}", &prefix[..14]));
    let (_ingress, ingress, common) = ingress_on(brokers.as_str(), &prefix).await;
    let bench = Bench {
        client: reqwest::Client::new(),
        ingress,
        service: token("bench", "service"),
        admin: token("ops", "admin"),
        customer: token("c-42", "user"),
        words: vocabulary(),
        prefix: prefix.clone(),
    };
    bench.post(0..docs).await;
    let mut indexers = Vec::new();
    for backend in backends.split(',').map(str::trim) {
        let mut env: Vec<(String, String)> = common
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        env.push(("SEARCH_REPLICA".into(), backend.into()));
        match backend {
            "opensearch" => {
                let url = common::start::opensearch_url().await;
                env.push(("SEARCH_BACKEND".into(), "opensearch".into()));
                env.push(("OPENSEARCH_URL".into(), url));
                env.push(("OPENSEARCH_INDEX".into(), format!("{prefix}bench")));
                env.push(("OPENSEARCH_REPLICAS".into(), "0".into()));
            }
            _ => env.push((
                "SEARCH_INDEX_DIR".into(),
                dir.join("index").display().to_string(),
            )),
        }
        let indexer = bench.measure(backend, env, docs).await;
        bench.rebuild(&indexer, docs).await;
        indexers.push(indexer);
    }
    if large > docs {
        bench.post(docs..large).await;
        for indexer in &indexers {
            let took = bench.wait_for(indexer, large).await;
            println!(
                "{}: caught up to {large} documents {took:.1} s after the growth was posted",
                indexer.backend
            );
        }
        for indexer in &indexers {
            bench.queries(indexer, large).await;
            println!(
                "{}: peak RSS of the indexer over the whole run {:.1} MB",
                indexer.backend,
                peak_rss_mb(indexer.pid)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
