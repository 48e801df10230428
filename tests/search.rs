//! Search end to end: events posted at the real ingress, a real broker, the real
//! `herald search-indexer` process and its index folder (or a real OpenSearch node), queried
//! over HTTP. The scenarios that both backends promise run against each.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::process::HeraldProcess;
use support::{TestIngress, client, test_dir, token};
use uuid::Uuid;

fn publisher() -> String {
    token("search-test", &["user", "admin", "service"])
}

fn index_dir() -> String {
    let dir = test_dir("search").join(Uuid::new_v4().simple().to_string());
    dir.display().to_string()
}

/// Where a test's indexer keeps its documents.
enum Kept {
    /// An index folder of its own.
    Embedded(String),
    /// An index of its own on the tests' OpenSearch node.
    OpenSearch { url: String, index: String },
}

impl Kept {
    async fn of(backend: &str) -> Self {
        match backend {
            "opensearch" => Self::OpenSearch {
                url: support::opensearch_url().await,
                index: format!("search-test-{}", Uuid::new_v4().simple()),
            },
            _ => Self::Embedded(index_dir()),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Embedded(dir) => vec![
                ("SEARCH_INDEX_DIR", dir.clone()),
                ("SEARCH_COMMIT_MS", "100".into()),
            ],
            Self::OpenSearch { url, index } => vec![
                ("SEARCH_BACKEND", "opensearch".into()),
                ("OPENSEARCH_URL", url.clone()),
                ("OPENSEARCH_INDEX", index.clone()),
                // One node: no replica to place.
                ("OPENSEARCH_REPLICAS", "0".into()),
            ],
        }
    }
}

async fn start_kept(app: &TestIngress, kept: &Kept) -> HeraldProcess {
    let env = kept.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The indexer keeps no database; the helper's DATABASE_URL is ignored.
    let logs = test_dir("search-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join(format!("{}.log", Uuid::new_v4().simple()));
    HeraldProcess::start_logging("search-indexer", &app.kafka, "sqlite::memory:", &env, &log).await
}

async fn post(app: &TestIngress, body: &Value) {
    let response = app.post(&publisher(), body).await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
}

async fn search(base: &str, query: &str, who: &str, roles: &[&str]) -> (u16, Value) {
    let response = client()
        .get(format!("{base}/api/v1/search?{query}"))
        .bearer_auth(token(who, roles))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The ids a search answers, once it answers `want` of them (within 30 s).
async fn ids_when(base: &str, query: &str, who: &str, roles: &[&str], want: usize) -> Vec<String> {
    support::eventually(
        Duration::from_secs(30),
        &format!("{want} hits for {query} as {who}"),
        || async {
            let (status, answer) = search(base, query, who, roles).await;
            assert_eq!(status, 200, "{answer}");
            let ids: Vec<String> = answer["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|hit| hit["id"].as_str().unwrap().to_string())
                .collect();
            if ids.len() == want {
                Ok(ids)
            } else {
                Err(format!("{ids:?}"))
            }
        },
    )
    .await
}

fn order(id: &str, customer: &str, sku: &str) -> Value {
    json!({"type": "order.placed", "key": id, "data": {
        "order_id": id, "customer_id": customer,
        "items": [{"sku": sku, "quantity": 1, "unit_price_cents": 450}],
        "total_cents": 450, "currency": "EUR"
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_find_their_orders_with_typos_and_removed_users_disappear() {
    owners_find_their_orders("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_find_their_orders_with_typos_and_removed_users_disappear_in_opensearch() {
    owners_find_their_orders("opensearch").await;
}

async fn owners_find_their_orders(backend: &str) {
    let app = TestIngress::start_default().await;
    let indexer = start_kept(&app, &Kept::of(backend).await).await;
    let base = indexer.base.clone();
    let (alice, bob) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    post(
        &app,
        &json!({"type": "user.registered", "data": {
            "user_id": alice, "email": "alice@example.com", "display_name": "Alice Wonderland"
        }}),
    )
    .await;
    post(&app, &order("o-tea", &alice, "earl-grey-tea")).await;
    post(&app, &order("o-mug", &bob, "green-mug")).await;

    // Found by its owner, with the match highlighted; not by another customer; by an admin.
    let posted = Instant::now();
    let found = ids_when(&base, "q=tea", &alice, &["user"], 1).await;
    println!("order searchable {:?} after its POST", posted.elapsed());
    assert_eq!(found, ["order:o-tea"]);
    let (_, answer) = search(&base, "q=tea", &alice, &["user"]).await;
    assert_eq!(answer["items"][0]["type"], "order");
    assert!(
        answer["items"][0]["snippet"]
            .as_str()
            .unwrap()
            .contains("<b>tea</b>"),
        "{answer}"
    );
    assert!(
        ids_when(&base, "q=tea", &bob, &["user"], 0)
            .await
            .is_empty()
    );
    assert_eq!(
        ids_when(&base, "q=mug", &bob, &["user"], 1).await,
        ["order:o-mug"]
    );
    assert_eq!(
        ids_when(&base, "q=tea", "ops", &["admin"], 1).await,
        ["order:o-tea"]
    );
    // One typo away, and a word's beginning.
    assert_eq!(
        ids_when(&base, "q=gery", &alice, &["user"], 1).await,
        ["order:o-tea"]
    );
    // A user's display name is public; their email is not indexed.
    assert_eq!(
        ids_when(&base, "q=wonderland", &bob, &["user"], 1).await,
        [format!("user:{alice}")]
    );
    assert!(
        ids_when(&base, "q=alice%40example.com", &bob, &["user"], 0)
            .await
            .is_empty()
    );

    // Shipping amends the order: filterable by its status.
    post(
        &app,
        &json!({"type": "order.shipped", "key": "o-tea", "data": {
            "order_id": "o-tea", "carrier": "DHL", "tracking_number": "JD01",
            "shipped_at": "2026-11-22T09:30:00Z"
        }}),
    )
    .await;
    assert_eq!(
        ids_when(&base, "q=tea&field=status:shipped", &alice, &["user"], 1).await,
        ["order:o-tea"]
    );
    assert_eq!(
        ids_when(&base, "q=dhl&type=order", &alice, &["user"], 1).await,
        ["order:o-tea"]
    );

    // Deleted: gone from every search.
    post(
        &app,
        &json!({"type": "user.deleted", "data": {"user_id": alice}}),
    )
    .await;
    assert!(
        ids_when(&base, "q=wonderland", "ops", &["admin"], 0)
            .await
            .is_empty()
    );

    // Mistakes are 400s that say what is wrong; no token is 401.
    for (query, says) in [
        ("", "q is required"),
        ("q=tea&sort=new", "unknown parameter"),
        ("q=tea&type=invoice", "type must be one of"),
        ("q=tea&cursor=abc", "cursor"),
        ("q=tea&limit=0", "limit"),
        ("q=nofield:tea", "q:"),
        ("q=tea&field=shipped", "name:value"),
    ] {
        let (status, problem) = search(&base, query, &alice, &["user"]).await;
        assert_eq!(status, 400, "{query}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{query}: {problem}"
        );
    }
    let anonymous = client()
        .get(format!("{base}/api/v1/search?q=tea"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let (status, _) = search(&base, "", &alice, &["user"]).await;
    assert_eq!(status, 400);
    let stats = client()
        .get(format!("{base}/api/v1/search/stats"))
        .bearer_auth(token(&alice, &["user"]))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 403);
    let (status, _) = indexer.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_leaves_one_document_per_entity() {
    kill_9_mid_stream("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_leaves_one_document_per_entity_in_opensearch() {
    kill_9_mid_stream("opensearch").await;
}

async fn kill_9_mid_stream(backend: &str) {
    let app = TestIngress::start_default().await;
    let kept = Kept::of(backend).await;
    let indexer = start_kept(&app, &kept).await;
    const ORDERS: usize = 3_000;
    let poster = {
        let app_url = app.url("/api/v1/events");
        tokio::spawn(async move {
            for chunk in 0..ORDERS / 100 {
                let events: Vec<Value> = (0..100)
                    .map(|i| {
                        let n = chunk * 100 + i;
                        order(&format!("o-{n}"), &format!("c-{}", n % 50), "tea")
                    })
                    .collect();
                let response = client()
                    .post(&app_url)
                    .bearer_auth(publisher())
                    .json(&json!({"events": events}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Killed twice while the orders flow; each restart resumes from the index's commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    indexer.kill9().await;
    let indexer = start_kept(&app, &kept).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    indexer.kill9().await;
    poster.await.unwrap();
    let indexer = start_kept(&app, &kept).await;
    let seen = support::eventually(
        Duration::from_secs(60),
        "one document per order",
        || async {
            let seen = support::search_stats(&indexer.base).await;
            if seen["documents"] == ORDERS {
                Ok(seen)
            } else {
                Err(format!("{seen}"))
            }
        },
    )
    .await;
    println!("{backend}, after two kill -9: {seen}");
    assert_eq!(seen["removed"], 0);
    // Each order is found once.
    let (_, answer) = search(&indexer.base, "q=tea&limit=1", "ops", &["admin"]).await;
    assert_eq!(answer["total"], ORDERS);
    let (status, _) = indexer.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

/// What a set of queries answers: totals, and every hit (id, title, fields). Hits with
/// equal scores have no defined order, and BM25 statistics count replaced documents until
/// segments merge, so the hits are compared as sets: each query below fits on one page.
async fn answers(base: &str) -> Vec<Value> {
    let queries: [(&str, &str, &[&str]); 5] = [
        ("q=mug&limit=100", "ops", &["admin"]),
        ("q=tea&limit=100", "c-3", &["user"]),
        ("q=tae", "c-3", &["user"]),
        ("q=mug&field=status:shipped&limit=100", "ops", &["admin"]),
        ("q=reindex&type=user", "ops", &["admin"]),
    ];
    let mut out = Vec::new();
    for (query, who, roles) in queries {
        let (status, answer) = search(base, query, who, roles).await;
        assert_eq!(status, 200, "{query}: {answer}");
        let mut hits: Vec<String> = answer["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hit| json!([hit["id"], hit["title"], hit["fields"]]).to_string())
            .collect();
        hits.sort();
        assert_eq!(
            hits.len() as u64,
            answer["total"].as_u64().unwrap(),
            "{query}"
        );
        out.push(json!({"query": query, "total": answer["total"], "hits": hits}));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_swaps_in_a_rebuilt_index_while_queries_run() {
    reindex_while_queries_run("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reindex_swaps_in_a_rebuilt_index_while_queries_run_in_opensearch() {
    reindex_while_queries_run("opensearch").await;
}

async fn reindex_while_queries_run(backend: &str) {
    let app = TestIngress::start_default().await;
    let store = Kept::of(backend).await;
    let indexer = start_kept(&app, &store).await;
    // Orders, some shipped; users, one deleted: a rebuild must end where the live index is.
    let events: Vec<Value> = (0..300)
        .map(|n| {
            let sku = if n % 3 == 0 { "mug" } else { "tea" };
            order(&format!("o-{n}"), &format!("c-{}", n % 10), sku)
        })
        .collect();
    for chunk in events.chunks(100) {
        post(&app, &json!({"events": chunk})).await;
    }
    for n in (0..300).step_by(6) {
        post(
            &app,
            &json!({"type": "order.shipped", "data": {
                "order_id": format!("o-{n}"), "carrier": "DHL", "tracking_number": "T",
                "shipped_at": "2026-11-22T09:30:00Z"
            }}),
        )
        .await;
    }
    let (kept, gone) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, name) in [(kept, "Reindex Kept"), (gone, "Reindex Gone")] {
        post(
            &app,
            &json!({"type": "user.registered", "data": {
                "user_id": id, "email": format!("{id}@example.com"), "display_name": name,
                "locale": "en", "time_zone": "UTC"
            }}),
        )
        .await;
    }
    post(
        &app,
        &json!({"type": "user.deleted", "data": {"user_id": gone}}),
    )
    .await;
    support::eventually(Duration::from_secs(60), "301 documents", || async {
        let seen = support::search_stats(&indexer.base).await;
        if seen["documents"] == 301 {
            Ok(())
        } else {
            Err(format!("{seen}"))
        }
    })
    .await;
    // Indexed is not enough: every amendment must be in before the answers are taken.
    ids_when(
        &indexer.base,
        "q=mug&field=status:shipped&limit=100",
        "ops",
        &["admin"],
        50,
    )
    .await;
    let before = answers(&indexer.base).await;
    let totals: Vec<&Value> = before.iter().map(|answer| &answer["total"]).collect();
    // 100 mugs, 50 of them shipped; 20 tea orders of c-3's; one user left.
    assert_eq!(totals, [100, 20, 20, 50, 1]);

    // Queries run all along the rebuild and the swap; each must answer the same.
    let stop = tokio_util::sync::CancellationToken::new();
    let querying = {
        let (base, before, stop) = (indexer.base.clone(), before.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.is_cancelled() {
                assert_eq!(answers(&base).await, before, "after {rounds} rounds");
                rounds += 1;
            }
            rounds
        })
    };
    let output = tokio::process::Command::new(support::process::HERALD)
        .args(["search-indexer", "reindex"])
        .env("KAFKA_BROKERS", app.kafka.brokers.as_deref().unwrap())
        .env("TOPIC_PREFIX", &app.kafka.topic_prefix)
        .envs(store.env())
        .env("CONSUMER_SESSION_TIMEOUT_MS", "6000")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains("generation 2 is current") && printed.contains("301 documents"),
        "{printed}"
    );
    match &store {
        Kept::Embedded(_) => {
            support::eventually(
                Duration::from_secs(60),
                "the service switching to generation 2",
                || async {
                    let generation = indexer.metric("herald_search_generation").await;
                    if generation == 2.0 {
                        Ok(())
                    } else {
                        Err(format!("generation {generation}"))
                    }
                },
            )
            .await;
        }
        Kept::OpenSearch { url, index } => {
            // The alias names the new index alone; the old one is gone.
            let aliases: Value = client()
                .get(format!("{url}/_alias/{index}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let named: Vec<&String> = aliases.as_object().unwrap().keys().collect();
            assert_eq!(named, [&format!("{index}-2")], "{aliases}");
            let old = client()
                .get(format!("{url}/{index}-1"))
                .send()
                .await
                .unwrap();
            assert_eq!(old.status(), 404);
        }
    }
    stop.cancel();
    let rounds = querying.await.unwrap();
    println!("{backend}: {rounds} rounds of queries during the rebuild, each answered the same");
    assert!(rounds > 0);
    assert_eq!(answers(&indexer.base).await, before);
    if let Kept::Embedded(dir) = &store {
        // The old generation goes once no query holds it; the service consumes into the new one.
        let old = std::path::Path::new(dir).join("gen-1");
        support::eventually(Duration::from_secs(30), "gen-1 removed", || async {
            if old.exists() {
                Err("gen-1 is still there")
            } else {
                Ok(())
            }
        })
        .await;
    }
    post(&app, &order("o-after", "c-3", "kettle")).await;
    assert_eq!(
        ids_when(&indexer.base, "q=kettle", "c-3", &["user"], 1).await,
        ["order:o-after"]
    );
    let (status, _) = indexer.terminate().await;
    assert!(status.success(), "{status}");
    // Restarted, it serves the new generation.
    let indexer = start_kept(&app, &store).await;
    assert_eq!(support::search_stats(&indexer.base).await["documents"], 302);
    let (status, _) = indexer.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_opensearch_refuses_is_dead_lettered_and_the_rest_are_indexed() {
    let app = TestIngress::start_default().await;
    let store = Kept::of("opensearch").await;
    let indexer = start_kept(&app, &store).await;
    // A customer id longer than any keyword OpenSearch indexes (32,766 bytes): the cluster
    // refuses the document (an immense term), whatever is tried.
    let huge = "c".repeat(40_000);
    let events = json!({"events": [
        order("o-before", "c-1", "tea"),
        order("o-huge", &huge, "tea"),
        order("o-after", "c-1", "tea"),
    ]});
    let response = app.post(&publisher(), &events).await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let accepted: Value = response.json().await.unwrap_or(Value::Null);
    let mut found = ids_when(&indexer.base, "q=tea&limit=10", "ops", &["admin"], 2).await;
    found.sort();
    assert_eq!(found, ["order:o-after", "order:o-before"]);
    let dlq = format!("{}search-indexer-0.dlq", app.kafka.topic_prefix);
    let letters = support::eventually(Duration::from_secs(60), "one dead letter", || async {
        let letters = platform::kafka::read_to_end(
            &app.kafka,
            std::slice::from_ref(&dlq),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
        if letters.len() == 1 {
            Ok(letters)
        } else {
            Err(format!("{} letters", letters.len()))
        }
    })
    .await;
    let error = String::from_utf8_lossy(
        letters[0]
            .header(platform::consumer::dlq_headers::ERROR)
            .unwrap(),
    )
    .to_string();
    assert!(error.contains("OpenSearch refused"), "{error}");
    assert!(error.contains("order:o-huge"), "{error}");
    println!("dead-lettered: {error:.200} ({accepted})");
    let (status, _) = indexer.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_persons_documents_leave_the_index() {
    erased_persons_documents_leave("embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_persons_documents_leave_the_index_in_opensearch() {
    erased_persons_documents_leave("opensearch").await;
}

async fn erased_persons_documents_leave(backend: &str) {
    let app = TestIngress::start_default().await;
    let indexer = start_kept(&app, &Kept::of(backend).await).await;
    let (erin, bob) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    post(
        &app,
        &json!({"type": "user.registered", "data": {
            "user_id": erin, "email": "erin@example.com", "display_name": "Erin Quartz"
        }}),
    )
    .await;
    // A message Erin sent to Bob: her words, in Bob's document.
    let response = app
        .post(
            &token(&erin, &["user", "service"]),
            &json!({"type": "message.sent", "data": {
                "message_id": Uuid::new_v4(), "conversation_id": "c-1",
                "recipient_id": bob, "body": "quartz crystals at noon"
            }}),
        )
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    assert_eq!(
        ids_when(&indexer.base, "q=quartz", "ops", &["admin"], 2)
            .await
            .len(),
        2
    );
    post(
        &app,
        &json!({"type": "user.erased", "data": {"user_id": erin}}),
    )
    .await;
    assert!(
        ids_when(&indexer.base, "q=quartz", "ops", &["admin"], 0)
            .await
            .is_empty()
    );

    // Registered and erased back to back (one partition, often one batch): the document
    // written a moment before the erasure goes too.
    let (fleet, topics) = (Uuid::new_v4().to_string(), vec![app.kafka.topic("users")]);
    let events = json!({"events": [
        {"type": "user.registered", "key": fleet, "data": {
            "user_id": fleet, "email": "fleet@example.com", "display_name": "Fleeting Zircon"}},
        {"type": "user.erased", "key": fleet, "data": {"user_id": fleet}},
    ]});
    let response = app.post(&publisher(), &events).await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let group = format!("{}search-indexer-0", app.kafka.topic_prefix);
    support::eventually(
        Duration::from_secs(60),
        "the indexer past the erasure",
        || async {
            let ends = platform::kafka::watermarks_of(&app.kafka, &topics, Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string())?;
            let read = platform::kafka::committed_offsets(&app.kafka, &group, &topics)
                .await
                .map_err(|e| e.to_string())?;
            let behind: Vec<_> = ends
                .iter()
                .filter(|(at, (_, high))| read.get(*at).copied().unwrap_or(0) < *high)
                .collect();
            if behind.is_empty() {
                Ok(())
            } else {
                Err(format!("{behind:?}"))
            }
        },
    )
    .await;
    let (status, answer) = search(&indexer.base, "q=zircon", "ops", &["admin"]).await;
    assert_eq!(
        (status, answer["total"].clone()),
        (200, json!(0)),
        "{answer}"
    );
    let (status, _) = indexer.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}
