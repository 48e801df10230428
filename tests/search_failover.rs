//! The OpenSearch backend losing a node under indexing load: two nodes on loopback (node 1
//! the cluster manager), an index with one replica of each shard, orders posted all along,
//! node 2 killed (SIGKILL) in the middle. Every acknowledged order must be searchable after,
//! once, and every search meanwhile answers whole (200) or 503 with Retry-After.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::process::HeraldProcess;
use support::{TestIngress, client, test_dir, token};
use uuid::Uuid;

fn order(id: &str) -> Value {
    json!({"type": "order.placed", "key": id, "data": {
        "order_id": id, "customer_id": "c-1",
        "items": [{"sku": "tea", "quantity": 1, "unit_price_cents": 450}],
        "total_cents": 450, "currency": "EUR"
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_node_under_load_loses_no_acknowledged_order_and_no_answer_is_partial() {
    let app = TestIngress::start_default().await;
    let run = Uuid::new_v4().simple().to_string();
    let dir = test_dir("opensearch-failover").join(&run);
    let mut cluster = platform::search_node::LocalSearchCluster::start(&dir, 2)
        .await
        .expect("a two-node search cluster");
    let urls = cluster.urls();
    let index = format!("failover-{run}");
    let log = dir.join("indexer.log");
    let indexer = HeraldProcess::start_logging(
        "search-indexer",
        &app.kafka,
        "sqlite::memory:",
        &[
            ("SEARCH_BACKEND", "opensearch"),
            ("OPENSEARCH_URL", urls.as_str()),
            ("OPENSEARCH_INDEX", index.as_str()),
            ("OPENSEARCH_SHARDS", "2"),
            ("OPENSEARCH_REPLICAS", "1"),
        ],
        &log,
    )
    .await;
    let node1 = urls.split(',').next().unwrap().to_string();
    // Every shard and its replica placed before the load begins.
    let health: Value = client()
        .get(format!(
            "{node1}/_cluster/health/{index}-1?wait_for_status=green&timeout=60s"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "green", "{health}");

    // Searches all along: each answer whole, or a 503 that says when to come back.
    let stop = tokio_util::sync::CancellationToken::new();
    let searching = {
        let (base, stop) = (indexer.base.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut whole, mut unavailable) = (0, 0);
            while !stop.is_cancelled() {
                let response = client()
                    .get(format!("{base}/api/v1/search?q=tea&limit=5"))
                    .bearer_auth(token("ops", &["admin"]))
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    200 => whole += 1,
                    503 => {
                        assert!(response.headers().contains_key("retry-after"));
                        unavailable += 1;
                    }
                    other => panic!("a search answered {other}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (whole, unavailable)
        })
    };

    // 2,000 orders in batches of 50; node 2 killed after the first 600.
    let mut acknowledged = BTreeSet::new();
    let started = Instant::now();
    for batch in 0..40 {
        if batch == 12 {
            cluster.node(2).kill();
            println!("node 2 killed after {:?}", started.elapsed());
        }
        let ids: Vec<String> = (0..50).map(|i| format!("o-{}", batch * 50 + i)).collect();
        let events: Vec<Value> = ids.iter().map(|id| order(id)).collect();
        let response = app
            .post(&token("shop", &["service"]), &json!({ "events": events }))
            .await;
        if response.status() == 202 {
            acknowledged.extend(ids);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(acknowledged.len(), 2_000, "the ingress took every order");

    // Every acknowledged order searchable, once.
    let admin = token("ops", &["admin"]);
    let found = support::eventually(
        Duration::from_secs(120),
        "every acknowledged order searchable",
        || async {
            let stats: Value = client()
                .get(format!("{}/api/v1/search/stats", indexer.base))
                .bearer_auth(&admin)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if stats["documents"] == 2_000 {
                Ok(stats)
            } else {
                Err(format!("{stats}"))
            }
        },
    )
    .await;
    let mut seen = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let page: Value = client()
            .get(format!(
                "{}/api/v1/search?q=tea&limit=100{cursor}",
                indexer.base
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for hit in page["items"].as_array().unwrap() {
            let id = hit["id"].as_str().unwrap().trim_start_matches("order:");
            assert!(seen.insert(id.to_string()), "{id} answered twice");
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    stop.cancel();
    let (whole, unavailable) = searching.await.unwrap();
    let missing = acknowledged.difference(&seen).count();
    // How often the indexer met the lost node: requests retried, batches retried.
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let count = |what: &str| logged.lines().filter(|l| l.contains(what)).count();
    let retried = count("sending those again") + count("retrying in place");
    let failovers = count("did not answer; trying the next");
    println!(
        "failover: {} acknowledged, {} searchable once each, {missing} missing; \
         {whole} searches answered whole and {unavailable} with 503 meanwhile; \
         {failovers} requests moved to the other node, {retried} writes retried; {found}",
        acknowledged.len(),
        seen.len(),
    );
    assert_eq!(missing, 0);
    assert_eq!(seen, acknowledged);
    // No node left: a search says to come back, rather than answering nothing found.
    cluster.node(1).kill();
    let response = client()
        .get(format!("{}/api/v1/search?q=tea", indexer.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let (status, _) = indexer.terminate().await;
    assert!(status.success(), "{status}");
    cluster.stop(Duration::from_secs(20)).await;
    app.stop().await;
}
