//! The operators' views over HTTP: `GET /api/v1/admin/consumers` on a `herald ingress`
//! process, with a search indexer as the consumer group it watches.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::process::HeraldProcess;
use support::{TestIngress, test_dir, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_see_every_groups_lag_fall_as_its_consumer_reads() {
    let app = TestIngress::start_default().await;
    let dir = test_dir("console").join(uuid::Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite://{}", dir.join("console.db").display());
    let ingress = HeraldProcess::start("ingress", &app.kafka, &database, &[]).await;
    let publisher = token("shop", &["service"]);
    for i in 0..30 {
        let response = app
            .post(&publisher, &support::order(&format!("o-{i}")))
            .await;
        assert_eq!(response.status(), 202);
    }
    let index = dir.join("index").display().to_string();
    let _search = HeraldProcess::start(
        "search-indexer",
        &app.kafka,
        &database,
        &[("SEARCH_INDEX_DIR", index.as_str())],
    )
    .await;
    let get = |bearer: Option<String>| {
        let url = format!("{}/api/v1/admin/consumers", ingress.base);
        async move {
            let mut request = support::client().get(url);
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let admin = token("ops", &["admin"]);
    let group = support::eventually(Duration::from_secs(90), "the indexer caught up", || async {
        let (status, body) = get(Some(admin.clone())).await;
        assert_eq!(status, 200, "{body}");
        let indexer = body["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["group"].as_str().unwrap().starts_with("search-indexer"))
            .cloned();
        match indexer {
            Some(g) if g["lag"] == 0 && g["committed"].as_i64() >= Some(30) => Ok(g),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let partitions = group["partitions"].as_array().unwrap();
    assert!(partitions.iter().any(|p| p["topic"] == "orders"), "{group}");
    assert!(
        partitions
            .iter()
            .all(|p| p["lag"] == 0 && p["end"] == p["committed"])
    );
    // Not for anyone else.
    assert_eq!(get(Some(token("alice", &["user"]))).await.0, 403);
    assert_eq!(get(Some(token("ana", &["analyst"]))).await.0, 403);
    assert_eq!(get(None).await.0, 401);
    app.stop().await;
}
