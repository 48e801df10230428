//! The audit store on both databases (PostgreSQL and the embedded SQLite): duplicates add
//! nothing, tampering is found at the right row, and the admin query API pages and filters.

mod support;

use std::sync::Arc;
use std::time::Duration;

use audit_log::chain::{Entry, chain_name};
use audit_log::store::{AuditStore, SqlStore};
use events::Envelope;
use jiff::Timestamp;
use platform::consumer::Event;
use platform::db::Database;
use platform::with_pool;
use serde_json::{Value, json};
use uuid::Uuid;

async fn sqlite() -> (Database, String) {
    let file = support::test_dir(&format!("audit-{}.db", Uuid::new_v4().simple()));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let url = format!("sqlite://{}", file.display());
    (Database::connect(&url).await.unwrap(), url)
}

async fn postgres() -> (Database, String) {
    let url = support::audit::fresh_postgres().await;
    (Database::connect(&url).await.unwrap(), url)
}

/// Both stores, fresh.
async fn stores() -> Vec<(&'static str, SqlStore, String)> {
    let mut all = Vec::new();
    for (name, (db, url)) in [("sqlite", sqlite().await), ("postgres", postgres().await)] {
        all.push((name, SqlStore::new(db).await.unwrap(), url));
    }
    all
}

fn event(
    topic: &str,
    partition: i32,
    offset: i64,
    actor: &str,
    event_type: &str,
    minute: i64,
) -> Event {
    let at = Timestamp::from_second(1_795_341_600 + minute * 60).unwrap();
    Event {
        topic: topic.into(),
        partition,
        offset,
        key: Some(format!("k-{}", offset % 3)),
        envelope: Envelope {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            occurred_at: at,
            received_at: at,
            actor: actor.into(),
            source: "api".into(),
            idempotency_key: None,
        },
        data: json!({"order_id": format!("o-{offset}"), "note": "tea"}),
        written_with: 1,
        traceparent: None,
    }
}

/// Ten events on orders/0 by alice and bob, five on users/1 by carol.
fn seed() -> (Vec<Event>, Vec<Event>) {
    let orders = (0..10)
        .map(|i| {
            let actor = if i % 2 == 0 { "alice" } else { "bob" };
            event("orders", 0, i, actor, "order.placed", i)
        })
        .collect();
    let users = (0..5)
        .map(|i| event("users", 1, i, "carol", "user.registered", 100 + i))
        .collect();
    (orders, users)
}

async fn append(store: &SqlStore, events: &[Event]) -> usize {
    let chain = chain_name(&events[0].topic, events[0].partition);
    store
        .append(&chain, events.iter().map(Entry::from_event).collect())
        .await
        .unwrap()
}

async fn count(db: &Database) -> i64 {
    with_pool!(db, pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log").fetch_one(pool).await.unwrap()
    })
}

#[tokio::test]
async fn redelivered_and_replayed_events_change_nothing() {
    for (name, store, _) in stores().await {
        let (orders, _) = seed();
        assert_eq!(append(&store, &orders[..6]).await, 6, "{name}");
        // A redelivery overlapping what was written, then a replay of old ids at new offsets.
        assert_eq!(append(&store, &orders[4..]).await, 4, "{name}");
        let replayed: Vec<Event> = orders[..3]
            .iter()
            .enumerate()
            .map(|(i, e)| Event {
                offset: 10 + i as i64,
                ..e.clone()
            })
            .collect();
        assert_eq!(append(&store, &replayed).await, 0, "{name}");
        assert_eq!(count(store.database()).await, 10, "{name}");
        let report = audit_log::verify::verify(&store).await.unwrap();
        assert!(report.passed(), "{name}: {:?}", report.failures);
        assert_eq!(report.rows, 10);
    }
}

/// Seeds both chains, applies `tamper` (SQL), verifies: exactly one chain fails, at `seq`.
async fn tampered(tamper: &[&str], seq: i64, fault: &str) {
    for (name, store, url) in stores().await {
        let (orders, users) = seed();
        append(&store, &orders).await;
        append(&store, &users).await;
        for sql in tamper {
            with_pool!(store.database(), pool => {
                sqlx::query(sqlx::AssertSqlSafe(*sql)).execute(pool).await.unwrap();
            });
        }
        let report = audit_log::verify::verify(&store).await.unwrap();
        assert_eq!(report.failures.len(), 1, "{name}: {:?}", report.failures);
        let failure = &report.failures[0];
        assert_eq!(failure.chain, "orders/0", "{name}");
        assert_eq!(failure.seq, seq, "{name}: {failure}");
        assert!(failure.to_string().contains(fault), "{name}: {failure}");

        // The command says the same and exits 1.
        let output = std::process::Command::new(support::process::HERALD)
            .args(["audit", "verify"])
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{name}: {stdout}");
        assert!(
            stdout.contains(&format!("chain orders/0 row {seq}")),
            "{name}: {stdout}"
        );

        // And so does the console's button, and the chains' view remembers it.
        let api = serve(SqlStore::new(store.database().clone()).await.unwrap()).await;
        let (status, outcome) = verify_over_http(&api).await;
        assert_eq!(status, 200, "{name}: {outcome}");
        assert_eq!(outcome["passed"], false, "{name}: {outcome}");
        assert_eq!(outcome["chains"], 2, "{name}");
        assert_eq!(outcome["failures"][0]["chain"], "orders/0", "{name}");
        assert_eq!(outcome["failures"][0]["seq"], seq, "{name}");
        assert!(
            outcome["failures"][0]["fault"]
                .as_str()
                .unwrap()
                .contains(fault),
            "{name}: {outcome}"
        );
        let (_, chains) = get(&api, "/chains", Some(&support::token("root", &["admin"]))).await;
        assert_eq!(chains["last_verification"], outcome, "{name}");
        api.shutdown.cancel();
    }
}

/// `POST /api/v1/audit/verify` as an admin.
async fn verify_over_http(api: &Api) -> (u16, Value) {
    let response = support::client()
        .post(format!("{}/api/v1/audit/verify", api.base))
        .bearer_auth(support::token("root", &["admin"]))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn an_altered_row_fails_verification_at_that_row() {
    tampered(
        &["UPDATE audit_log SET content = REPLACE(content, 'tea', 'gin') WHERE chain = 'orders/0' AND seq = 4"],
        4,
        "altered",
    )
    .await;
}

#[tokio::test]
async fn an_altered_query_column_fails_verification_at_that_row() {
    tampered(
        &["UPDATE audit_log SET actor = 'mallory' WHERE chain = 'orders/0' AND seq = 2"],
        2,
        "altered",
    )
    .await;
}

#[tokio::test]
async fn a_deleted_row_fails_verification_where_it_was() {
    tampered(
        &["DELETE FROM audit_log WHERE chain = 'orders/0' AND seq = 6"],
        7,
        "removed",
    )
    .await;
}

#[tokio::test]
async fn swapped_rows_fail_verification_at_the_first_of_them() {
    tampered(
        &[
            "UPDATE audit_log SET seq = -1 WHERE chain = 'orders/0' AND seq = 3",
            "UPDATE audit_log SET seq = 3 WHERE chain = 'orders/0' AND seq = 4",
            "UPDATE audit_log SET seq = 4 WHERE chain = 'orders/0' AND seq = -1",
        ],
        3,
        "does not follow",
    )
    .await;
}

#[tokio::test]
async fn deleting_the_newest_rows_fails_verification_against_the_head() {
    tampered(
        &["DELETE FROM audit_log WHERE chain = 'orders/0' AND seq > 8"],
        8,
        "removed from the end",
    )
    .await;
}

#[tokio::test]
async fn an_intact_log_verifies_and_the_command_exits_0() {
    let (db, url) = sqlite().await;
    let store = SqlStore::new(db).await.unwrap();
    let (orders, users) = seed();
    append(&store, &orders).await;
    append(&store, &users).await;
    let output = std::process::Command::new(support::process::HERALD)
        .args(["audit", "verify"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("15 rows in 2 chains"), "{stdout}");

    // Over HTTP: the chains' heads, nothing verified yet, then a passing verification.
    let api = serve(SqlStore::new(store.database().clone()).await.unwrap()).await;
    let admin = support::token("root", &["admin"]);
    let (status, chains) = get(&api, "/chains", Some(&admin)).await;
    assert_eq!(status, 200, "{chains}");
    assert_eq!(chains["last_verification"], Value::Null);
    assert_eq!(chains["chains"][0]["chain"], "orders/0");
    assert_eq!(chains["chains"][0]["rows"], 10);
    assert_eq!(chains["chains"][1]["rows"], 5);
    let (status, outcome) = verify_over_http(&api).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(
        (outcome["passed"].clone(), outcome["rows"].clone()),
        (true.into(), 15.into())
    );
    let (status, _) = get(&api, "/chains", Some(&support::token("alice", &["user"]))).await;
    assert_eq!(status, 403);
    let response = support::client()
        .post(format!("{}/api/v1/audit/verify", api.base))
        .bearer_auth(support::token("alice", &["user"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    api.shutdown.cancel();

    // Export of a time range: oldest first, one JSON object per line.
    let output = std::process::Command::new(support::process::HERALD)
        .args([
            "audit",
            "export",
            "--from",
            "2026-11-22T10:02:00Z",
            "--to",
            "2026-11-22T10:05:00Z",
        ])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let offsets: Vec<i64> = lines
        .iter()
        .map(|l| l["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3, 4]);
    assert_eq!(lines[0]["audit"]["chain"], "orders/0");

    let output = std::process::Command::new(support::process::HERALD)
        .args(["audit", "export", "--from", "yesterday"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--from must be an RFC 3339 time"));
}

struct Api {
    base: String,
    shutdown: tokio_util::sync::CancellationToken,
}

async fn serve(store: SqlStore) -> Api {
    let auth =
        platform::auth::Authenticator::from_args(&platform::auth::AuthArgs::hs256(support::SECRET))
            .unwrap();
    let router = audit_log::api::router(Arc::new(audit_log::api::AuditApi {
        store: Arc::new(store),
        auth: Arc::new(auth),
        privacy: None,
        catalog: Arc::new(events::Catalog::embedded().unwrap()),
        verifying: Default::default(),
        verified: Default::default(),
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(platform::http::serve(
        listener,
        router,
        shutdown.clone(),
        platform::http::ServeOptions::default(),
    ));
    Api { base, shutdown }
}

async fn get(api: &Api, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = support::client().get(format!("{}/api/v1/audit{query}", api.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status >= 400 {
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    (status, response.json().await.unwrap())
}

fn offsets(page: &Value) -> Vec<(String, i64)> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["topic"].as_str().unwrap().to_string(),
                i["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_query_api_is_for_admins_and_pages_newest_first() {
    for (name, store, _) in stores().await {
        let (orders, users) = seed();
        append(&store, &orders).await;
        append(&store, &users).await;
        let api = serve(store).await;
        let admin = support::token("root", &["admin"]);
        let user = support::token("alice", &["user"]);

        let (status, problem) = get(&api, "", None).await;
        assert_eq!(status, 401, "{name}: {problem}");
        let (status, problem) = get(&api, "", Some(&user)).await;
        assert_eq!(status, 403, "{name}: {problem}");
        let (status, problem) = get(&api, "?limit=0", Some(&admin)).await;
        assert_eq!(status, 400, "{name}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("limit"));
        let (status, _) = get(&api, "?limit=0", None).await;
        assert_eq!(status, 401, "{name}: authentication comes before the query");

        // Every row once, newest first, over pages of 4.
        let mut seen = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) =
                get(&api, &format!("?limit=4&cursor={cursor}"), Some(&admin)).await;
            assert_eq!(status, 200, "{name}: {page}");
            seen.extend(offsets(&page));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = next.to_string(),
                None => break,
            }
        }
        let mut expected: Vec<(String, i64)> = (0..5).rev().map(|i| ("users".into(), i)).collect();
        expected.extend((0..10).rev().map(|i| ("orders".to_string(), i)));
        assert_eq!(seen, expected, "{name}");

        let (_, bobs) = get(&api, "?actor=bob", Some(&admin)).await;
        assert_eq!(
            offsets(&bobs),
            [9, 7, 5, 3, 1].map(|i| ("orders".to_string(), i)),
            "{name}"
        );
        let (_, registered) = get(&api, "?type=user.registered&limit=2", Some(&admin)).await;
        assert_eq!(offsets(&registered).len(), 2, "{name}");
        assert!(registered["next_cursor"].is_string());
        let (_, keyed) = get(&api, "?key=k-0&type=order.placed", Some(&admin)).await;
        assert_eq!(
            offsets(&keyed),
            [9, 6, 3, 0].map(|i| ("orders".to_string(), i)),
            "{name}"
        );
        let (_, window) = get(
            &api,
            "?from=2026-11-22T10:02:00Z&to=2026-11-22T10:04:00Z",
            Some(&admin),
        )
        .await;
        assert_eq!(
            offsets(&window),
            [3, 2].map(|i| ("orders".to_string(), i)),
            "{name}"
        );
        let item = &window["items"][0];
        assert_eq!(item["actor"], "bob");
        assert_eq!(item["data"]["order_id"], "o-3");
        assert_eq!(item["audit"]["chain"], "orders/0");
        assert_eq!(item["audit"]["seq"], 4);
        api.shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
