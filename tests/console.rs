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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_browsed_and_redriven_once_and_stale_or_forged_redrives_change_nothing() {
    let app = TestIngress::start_default().await;
    let dir = test_dir("console").join(uuid::Uuid::new_v4().simple().to_string());
    // The cause: an audit log deployed with the schemas of every event type but one.
    let partial = dir.join("schemas");
    std::fs::create_dir_all(&partial).unwrap();
    let all = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/avro");
    for entry in std::fs::read_dir(all).unwrap() {
        let path = entry.unwrap().path();
        if !path.ends_with("user.registered.v1.avsc") {
            std::fs::copy(&path, partial.join(path.file_name().unwrap())).unwrap();
        }
    }
    let database = format!("sqlite://{}", dir.join("audit.db").display());
    let ingress_db = format!("sqlite://{}", dir.join("ingress.db").display());
    let ingress = HeraldProcess::start("ingress", &app.kafka, &ingress_db, &[]).await;
    let partial_text = partial.display().to_string();
    let audit = HeraldProcess::start(
        "audit-log",
        &app.kafka,
        &database,
        &[("SCHEMAS_DIR", partial_text.as_str())],
    )
    .await;
    let response = app
        .post(
            &token("accounts", &["service"]),
            &serde_json::json!({"type": "user.registered", "data": {
                "user_id": uuid::Uuid::new_v4(), "email": "late@example.com",
                "display_name": "Late", "locale": "en", "time_zone": "UTC"
            }}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let event_id = accepted["event_id"].as_str().unwrap().to_string();

    let admin = token("ops", &["admin"]);
    let call = |method: reqwest::Method, path: &str, body: Option<Value>, bearer: &str| {
        let mut request = support::client()
            .request(method, format!("{}{path}", ingress.base))
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let letters = "/api/v1/admin/dead-letters/audit-log";
    let listed = support::eventually(Duration::from_secs(60), "a dead letter", || async {
        let (status, body) = call(reqwest::Method::GET, letters, None, &admin).await;
        assert_eq!(status, 200, "{body}");
        if body["waiting"] == 1 {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await;
    let letter = &listed["letters"][0];
    assert_eq!(letter["event_id"], event_id.as_str());
    assert_eq!(letter["event_type"], "user.registered");
    assert_eq!(letter["topic"], "users");
    assert_eq!(
        letter["event"]["data"]["display_name"], "Late",
        "decoded: {letter}"
    );
    assert!(!letter["error"].as_str().unwrap().is_empty());
    assert_eq!(letter["redriven"], false);
    let mark = letter["mark"].as_str().unwrap().to_string();
    let redrive = format!("{letters}/redrive");

    // Forged, malformed, not an admin: refused, and nothing is published.
    for (body, bearer, want) in [
        (serde_json::json!({"marks": ["9:999"]}), admin.as_str(), 404),
        (
            serde_json::json!({"marks": [mark.clone(), "9:999"]}),
            admin.as_str(),
            404,
        ),
        (serde_json::json!({"marks": []}), admin.as_str(), 400),
        (
            serde_json::json!({"marks": [mark.clone()], "all": true}),
            admin.as_str(),
            400,
        ),
        (
            serde_json::json!({"marks": [mark.clone()]}),
            &*token("alice", &["user"]),
            403,
        ),
    ] {
        let (status, answer) =
            call(reqwest::Method::POST, &redrive, Some(body.clone()), bearer).await;
        assert_eq!(status, want, "{body}: {answer}");
    }
    let (status, _) = call(
        reqwest::Method::GET,
        "/api/v1/admin/dead-letters/no%20such",
        None,
        &admin,
    )
    .await;
    assert_eq!(status, 400);
    let (_, still) = call(reqwest::Method::GET, letters, None, &admin).await;
    assert_eq!(
        still["waiting"], 1,
        "a refused redrive changed something: {still}"
    );

    // The fix, then the redrive: applied once.
    audit.terminate().await;
    let _audit = HeraldProcess::start("audit-log", &app.kafka, &database, &[]).await;
    let (status, answer) = call(
        reqwest::Method::POST,
        &redrive,
        Some(serde_json::json!({"marks": [mark.clone()]})),
        &admin,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["redriven"][0]["event_id"], event_id.as_str());
    let id = uuid::Uuid::parse_str(&event_id).unwrap();
    support::eventually(
        Duration::from_secs(60),
        "the redriven event applied",
        || async {
            let rows = support::audit::rows_by_id(&database).await;
            if rows.get(&id) == Some(&1) {
                Ok(())
            } else {
                Err(format!("{rows:?}"))
            }
        },
    )
    .await;
    // The same request again, from a stale page: refused, nothing published twice.
    let (status, answer) = call(
        reqwest::Method::POST,
        &redrive,
        Some(serde_json::json!({"marks": [mark]})),
        &admin,
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    let (_, after) = call(reqwest::Method::GET, letters, None, &admin).await;
    assert_eq!(
        (
            after["waiting"].clone(),
            after["letters"][0]["redriven"].clone()
        ),
        (0.into(), true.into())
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        support::audit::rows_by_id(&database).await.get(&id),
        Some(&1)
    );
    app.stop().await;
}
