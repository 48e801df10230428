//! The broker goes away under load: the ingress answers 503 within its deadline, never 2xx
//! for an event that is not durable, and recovers when the broker is back.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ingress::idempotency::MemoryStore;
use platform::broker::LocalBroker;
use serde_json::Value;
use support::process::HeraldProcess;
use support::webhook::Webhook;
use support::{TestIngress, ingress_args, order, token};

const DEADLINE: Duration = Duration::from_millis(2000);

#[derive(Debug, Default)]
struct Outcomes {
    accepted: Vec<String>,
    unavailable: usize,
    slowest_503: Duration,
}

#[tokio::test]
async fn broker_killed_under_load_loses_no_acknowledged_event() {
    let dir = support::test_dir(&format!("outage-{}", uuid::Uuid::new_v4().simple()));
    let mut broker = LocalBroker::start(&dir, None)
        .await
        .expect("private broker starts");
    let kafka = support::kafka(&broker.bootstrap());
    let args = ingress_args(&["--publish-deadline-ms", &DEADLINE.as_millis().to_string()]);
    let app =
        Arc::new(TestIngress::start(kafka.clone(), args, Arc::new(MemoryStore::default())).await);
    let user = token("alice", &["user"]);

    // Load: one request every 20 ms from 4 clients until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for c in 0..4 {
        let (app, user, stop) = (app.clone(), user.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut out = Outcomes::default();
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let started = Instant::now();
                let response = app.post(&user, &order(&format!("c{c}-{i}"))).await;
                match response.status().as_u16() {
                    202 => {
                        let body: Value = response.json().await.unwrap();
                        out.accepted
                            .push(body["event_id"].as_str().unwrap().to_string());
                    }
                    503 => {
                        assert!(response.headers().contains_key("retry-after"));
                        out.unavailable += 1;
                        out.slowest_503 = out.slowest_503.max(started.elapsed());
                    }
                    other => panic!("unexpected status {other}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            out
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.kill();
    // While it is down, readiness says so and posts fail within the deadline.
    tokio::time::sleep(DEADLINE + Duration::from_secs(2)).await;
    let ready = support::client()
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    broker.restart().await.expect("broker restarts");
    support::eventually(
        Duration::from_secs(60),
        "a 202 after the broker's restart",
        || async {
            let status = app.post(&user, &order("after-restart")).await.status();
            if status == 202 { Ok(()) } else { Err(status) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();

    let mut total = Outcomes::default();
    for client in clients {
        let out = client.await.unwrap();
        total.accepted.extend(out.accepted);
        total.unavailable += out.unavailable;
        total.slowest_503 = total.slowest_503.max(out.slowest_503);
    }
    assert!(total.unavailable > 0, "the outage produced no 503");
    assert!(
        total.slowest_503 < DEADLINE + Duration::from_millis(500),
        "a 503 took {:?}, over the {DEADLINE:?} deadline",
        total.slowest_503
    );
    let stored: std::collections::HashSet<String> = support::read(&kafka, "orders")
        .await
        .into_iter()
        .map(|(_, d)| d.envelope.event_id.to_string())
        .collect();
    let lost: Vec<&String> = total
        .accepted
        .iter()
        .filter(|id| !stored.contains(*id))
        .collect();
    eprintln!(
        "outage: {} accepted, {} answered 503 (slowest {:?}), {} accepted but missing, {} records in the topic",
        total.accepted.len(),
        total.unavailable,
        total.slowest_503,
        lost.len(),
        stored.len()
    );
    assert!(lost.is_empty(), "acknowledged events lost: {lost:?}");
    match Arc::try_unwrap(app) {
        Ok(app) => app.stop().await,
        Err(_) => panic!("ingress still shared"),
    }
    broker.stop(Duration::from_secs(30)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_outage_posts_two_alerts_not_one_per_failed_request_even_when_it_stops() {
    let dir = support::test_dir(&format!("alerts-{}", uuid::Uuid::new_v4().simple()));
    let broker = KilledOnDrop(
        LocalBroker::start(&dir, None)
            .await
            .expect("private broker starts"),
    );
    let kafka = support::kafka(&broker.0.bootstrap());
    let webhook = Webhook::start().await;
    let database = format!("sqlite://{}", dir.join("ingress.db").display());
    let ingress = HeraldProcess::start(
        "ingress",
        &kafka,
        &database,
        &[
            ("ALERT_WEBHOOK_URL", &webhook.url),
            ("ALERT_WINDOW_SECS", "600"),
            ("PUBLISH_DEADLINE_MS", "2000"),
        ],
    )
    .await;
    let user = token("alice", &["user"]);
    let post = |i: usize| {
        let (base, user) = (ingress.base.clone(), user.clone());
        async move {
            support::client()
                .post(format!("{base}/api/v1/events"))
                .bearer_auth(user)
                .json(&order(&format!("alerted-{i}")))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post(0).await, 202);

    broker.0.kill();
    let statuses = futures_util::future::join_all((1..=30).map(post)).await;
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");

    // The first failure at once; the other 29 are held for the window (10 minutes)...
    let texts = webhook
        .wait_for(1, Duration::from_secs(15), Duration::from_secs(2))
        .await;
    assert_eq!(texts.len(), 1, "{texts:#?}");
    assert!(
        texts[0].starts_with("herald-ingress: 503 on POST /api/v1/events (request "),
        "{}",
        texts[0]
    );
    // ... and summed up in one message when the process stops before it closes.
    ingress.terminate().await;
    let texts = webhook.texts();
    eprintln!("alerts: {texts:#?}");
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert!(
        texts[1]
            .starts_with("herald-ingress: 29 more 5xx on POST /api/v1/events in the last 600 s"),
        "{}",
        texts[1]
    );
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A private broker that does not outlive its test, even one that fails.
struct KilledOnDrop(LocalBroker);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

#[tokio::test]
async fn requests_beyond_the_in_flight_budget_are_shed_at_once_and_publish_nothing() {
    let dir = support::test_dir(&format!("shed-{}", uuid::Uuid::new_v4().simple()));
    let broker = KilledOnDrop(
        LocalBroker::start(&dir, None)
            .await
            .expect("private broker starts"),
    );
    let kafka = support::kafka(&broker.0.bootstrap());
    // A budget of 4 KiB: an order (about 250 bytes, plus 1 KiB a request costs anyway)
    // takes 2 KiB of it, so two requests fill it.
    let args = ingress_args(&[
        "--max-body-bytes",
        "2048",
        "--max-in-flight-bytes",
        "4096",
        "--publish-deadline-ms",
        "8000",
    ]);
    let app =
        Arc::new(TestIngress::start(kafka.clone(), args, Arc::new(MemoryStore::default())).await);
    let user = token("alice", &["user"]);
    assert_eq!(app.post(&user, &order("before")).await.status(), 202);

    // Frozen, the broker acknowledges nothing: two requests wait and hold the budget.
    broker.0.pause();
    let waiting: Vec<_> = ["held-1", "held-2"]
        .into_iter()
        .map(|id| {
            let (app, user) = (app.clone(), user.clone());
            tokio::spawn(async move { app.post(&user, &order(id)).await.status().as_u16() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let shed = app.post(&user, &order("shed")).await;
    let took = started.elapsed();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    let problem: Value = shed.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:herald:problem:overloaded",
        "{problem}"
    );
    assert!(
        took < Duration::from_secs(1),
        "shed after {took:?}, not at once"
    );

    // Back: the held requests are acknowledged and the budget is free again.
    broker.0.resume();
    for request in waiting {
        assert_eq!(request.await.unwrap(), 202);
    }
    assert_eq!(app.post(&user, &order("after")).await.status(), 202);
    let mut keys: Vec<String> = support::read(&kafka, "orders")
        .await
        .into_iter()
        .map(|(record, _)| String::from_utf8(record.key.unwrap_or_default()).unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["after", "before", "held-1", "held-2"]);
    eprintln!("shed: a request beyond the budget answered 503 in {took:?}");
    match Arc::try_unwrap(app) {
        Ok(app) => app.stop().await,
        Err(_) => panic!("ingress still shared"),
    }
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}
