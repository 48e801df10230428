//! Search end to end: events posted at the real ingress, a real broker, the real
//! `herald search-indexer` process and its index folder, queried over HTTP.

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

async fn start(app: &TestIngress, dir: &str) -> HeraldProcess {
    // The indexer keeps no database; the helper's DATABASE_URL is ignored.
    HeraldProcess::start(
        "search-indexer",
        &app.kafka,
        "sqlite::memory:",
        &[("SEARCH_INDEX_DIR", dir), ("SEARCH_COMMIT_MS", "100")],
    )
    .await
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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, answer) = search(base, query, who, roles).await;
        assert_eq!(status, 200, "{answer}");
        let ids: Vec<String> = answer["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hit| hit["id"].as_str().unwrap().to_string())
            .collect();
        if ids.len() == want || Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let app = TestIngress::start_default().await;
    let dir = index_dir();
    let indexer = start(&app, &dir).await;
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

async fn stats(base: &str) -> Value {
    client()
        .get(format!("{base}/api/v1/search/stats"))
        .bearer_auth(token("ops", &["admin"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_leaves_one_document_per_entity() {
    let app = TestIngress::start_default().await;
    let dir = index_dir();
    let indexer = start(&app, &dir).await;
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
    let indexer = start(&app, &dir).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    indexer.kill9().await;
    poster.await.unwrap();
    let indexer = start(&app, &dir).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = stats(&indexer.base).await;
    while seen["documents"] != ORDERS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = stats(&indexer.base).await;
    }
    println!("after two kill -9: {seen}");
    assert_eq!(seen["documents"], ORDERS, "one document per order: {seen}");
    assert_eq!(seen["removed"], 0);
    // Each order is found once.
    let (_, answer) = search(&indexer.base, "q=tea&limit=1", "ops", &["admin"]).await;
    assert_eq!(answer["total"], ORDERS);
    let (status, _) = indexer.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}
