//! Event streams over HTTP (`GET /api/v1/streams/{topic}`) on two `herald ingress` processes
//! sharing a broker and a cursor key: a client cut off mid-stream resumes on the other with
//! no gap and no repeat; forged, foreign and stale cursors are refused; a user sees only
//! their own events.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use platform::kafka::KafkaArgs;
use serde_json::{Value, json};
use support::process::HeraldProcess;

const CURSOR_KEY: &str = "stream-cursor-key-of-the-test-deployment";

async fn ingress(kafka: &KafkaArgs, name: &str) -> HeraldProcess {
    let dir = support::test_dir(&format!("streams-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite://{}", dir.join(format!("{name}.db")).display());
    HeraldProcess::start(
        "ingress",
        kafka,
        &database,
        &[
            ("STREAM_CURSOR_KEY", CURSOR_KEY),
            ("HERALD_DATA_DIR", dir.to_str().unwrap()),
        ],
    )
    .await
}

/// Posts one order per customer in `customers`, in batches; the order ids.
async fn post_orders(base: &str, customers: &[String]) -> Vec<String> {
    let token = support::token("shop", &["service"]);
    let mut ids = Vec::new();
    for chunk in customers.chunks(100) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|customer| {
                let id = uuid::Uuid::new_v4().to_string();
                ids.push(id.clone());
                support::order_of(&id, customer)
            })
            .collect();
        let response = support::client()
            .post(format!("{base}/api/v1/events"))
            .bearer_auth(&token)
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
    ids
}

/// One Server-Sent Event.
#[derive(Debug, Default)]
struct Sse {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Reads events of an open SSE response until `take` of type `event_type` arrived, the
/// stream ends, or a minute passed: those, and the last id seen.
async fn read_sse(
    response: &mut reqwest::Response,
    event_type: &str,
    take: usize,
) -> (Vec<Sse>, Option<String>) {
    let mut text = String::new();
    let mut got = Vec::new();
    let mut last_id = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < take {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await else {
            break;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let mut sse = Sse::default();
            for line in block.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    sse.id = Some(id.to_string());
                } else if let Some(event) = line.strip_prefix("event: ") {
                    sse.event = Some(event.to_string());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    sse.data.push_str(data);
                }
            }
            if sse.id.is_some() {
                last_id = sse.id.clone();
            }
            if sse.event.as_deref() == Some(event_type) && got.len() < take {
                got.push(sse);
            }
        }
    }
    (got, last_id)
}

async fn open_sse(
    base: &str,
    token: &str,
    query: &str,
    last_id: Option<&str>,
) -> reqwest::Response {
    let mut request = support::client()
        .get(format!("{base}/api/v1/streams/orders?{query}"))
        .bearer_auth(token)
        .header("accept", "text/event-stream");
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response
}

fn order_ids(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let event: Value = serde_json::from_str(&e.data).unwrap();
            event["data"]["order_id"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_mid_stream_resumes_on_another_process_with_no_gap_and_no_repeat() {
    let kafka = support::kafka(&support::brokers().await);
    let (one, two) = (ingress(&kafka, "one").await, ingress(&kafka, "two").await);
    let analyst = support::token("ana", &["analyst"]);
    let customers: Vec<String> = (0..300).map(|i| format!("c-{}", i % 7)).collect();
    let mut posted = post_orders(&one.base, &customers).await;

    // From the beginning on the first process: 120 events, then the client goes.
    let mut response = open_sse(
        &one.base,
        &analyst,
        "from=2020-01-01T00:00:00Z&type=order.placed",
        None,
    )
    .await;
    let (first, last_id) = read_sse(&mut response, "order.placed", 120).await;
    assert_eq!(first.len(), 120);
    let last_id = last_id.unwrap();
    // More arrive while it is away.
    posted.extend(post_orders(&two.base, &customers[..200]).await);
    // It resumes on the second process with the last id it got.
    let mut response = open_sse(
        &two.base,
        &analyst,
        "from=2020-01-01T00:00:00Z&type=order.placed",
        Some(&last_id),
    )
    .await;
    let (rest, _) = read_sse(&mut response, "order.placed", posted.len() - 120).await;

    let mut seen = order_ids(&first);
    seen.extend(order_ids(&rest));
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "an event came twice");
    let missing: Vec<&String> = posted.iter().filter(|id| !distinct.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} events missing: {missing:?}",
        missing.len()
    );
    eprintln!(
        "resume: {} events before the cut, {} after, on the other process; 0 missing, 0 repeated",
        first.len(),
        rest.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_chain_reads_everything_once_and_a_user_sees_only_their_own() {
    let kafka = support::kafka(&support::brokers().await);
    let (one, two) = (ingress(&kafka, "one").await, ingress(&kafka, "two").await);
    let customers: Vec<String> = (0..150)
        .map(|i| {
            if i % 3 == 0 {
                "alice".into()
            } else {
                format!("other-{i}")
            }
        })
        .collect();
    let posted = post_orders(&one.base, &customers).await;
    let alices: HashSet<&String> = posted
        .iter()
        .zip(&customers)
        .filter(|(_, c)| *c == "alice")
        .map(|(id, _)| id)
        .collect();

    // Alice long-polls from the beginning, alternating processes, 7 at a time.
    let alice = support::token("alice", &["user"]);
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    for round in 0.. {
        let base = if round % 2 == 0 { &one.base } else { &two.base };
        let query = match &cursor {
            Some(cursor) => format!("cursor={cursor}&limit=7&wait=2"),
            None => "from=2020-01-01T00:00:00Z&limit=7&wait=2".to_string(),
        };
        let page: Value = support::client()
            .get(format!("{base}/api/v1/streams/orders?{query}"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        for event in events {
            assert_eq!(event["data"]["customer_id"], "alice", "{event}");
            seen.push(event["data"]["order_id"].as_str().unwrap().to_string());
        }
        cursor = Some(page["cursor"].as_str().unwrap().to_string());
        if events.is_empty() {
            break;
        }
        assert!(round < 100, "the chain does not end");
    }
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "an event came twice");
    assert_eq!(distinct, alices);

    // A user may not read a type that has no owner.
    let status = support::client()
        .get(format!(
            "{}/api/v1/streams/orders?type=order.shipped&wait=0",
            one.base
        ))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_foreign_and_stale_cursors_and_bad_requests_get_a_4xx() {
    let kafka = support::kafka(&support::brokers().await);
    let one = ingress(&kafka, "one").await;
    post_orders(&one.base, &["c-1".to_string()]).await;
    let analyst = support::token("ana", &["analyst"]);
    let get = |path: String| {
        let analyst = analyst.clone();
        let base = one.base.clone();
        async move {
            let response = support::client()
                .get(format!("{base}{path}"))
                .bearer_auth(&analyst)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let (status, page) =
        get("/api/v1/streams/orders?from=2020-01-01T00:00:00Z&wait=5".into()).await;
    assert_eq!(status, 200, "{page}");
    let good = page["cursor"].as_str().unwrap().to_string();
    // A cursor from another deployment's key, an altered one, one for another topic.
    let (head, _) = good.rsplit_once('.').unwrap();
    let other = replay::stream::cursor::CursorKey::new(b"someone else's key");
    let theirs = other.sign(&replay::stream::cursor::Cursor {
        topic: "orders".into(),
        positions: [(0, 0)].into(),
    });
    let mine = replay::stream::cursor::CursorKey::new(CURSOR_KEY.as_bytes());
    let users = mine.sign(&replay::stream::cursor::Cursor {
        topic: "users".into(),
        positions: [(0, 0)].into(),
    });
    let stale = mine.sign(&replay::stream::cursor::Cursor {
        topic: "orders".into(),
        positions: [(0, 1_000_000_000)].into(),
    });
    for (cursor, want) in [
        (format!("{head}.AAAAAAAAAAAAAAAAAAAAAA"), 400),
        (theirs, 400),
        (users, 400),
        ("not-a-cursor".to_string(), 400),
        (stale, 410),
    ] {
        let (status, body) = get(format!("/api/v1/streams/orders?cursor={cursor}&wait=0")).await;
        assert_eq!(status, want, "{cursor}: {body}");
        assert!(body["detail"].is_string(), "{body}");
    }
    for (path, want) in [
        ("/api/v1/streams/nowhere?wait=0", 404),
        ("/api/v1/streams/orders?from=yesterday&wait=0", 400),
        ("/api/v1/streams/orders?type=user.registered&wait=0", 400),
        ("/api/v1/streams/orders?unknown=1", 400),
        (
            &*format!("/api/v1/streams/orders?cursor={good}&from=2020-01-01T00:00:00Z"),
            400,
        ),
    ] {
        let (status, body) = get(path.to_string()).await;
        assert_eq!(status, want, "{path}: {body}");
    }
    // The token in the query, as a browser's EventSource sends it.
    let by_query = |query: String| {
        let base = one.base.clone();
        async move {
            support::client()
                .get(format!("{base}/api/v1/streams/orders?{query}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        by_query(format!("access_token={analyst}&wait=0")).await,
        200
    );
    assert_eq!(by_query("access_token=forged&wait=0".into()).await, 401);
    let both = support::client()
        .get(format!(
            "{}/api/v1/streams/orders?access_token={analyst}&wait=0",
            one.base
        ))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(both, 400);
    // Without a token: 401.
    let status = support::client()
        .get(format!("{}/api/v1/streams/orders", one.base))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_cleanly_and_resumes_and_callers_hold_few_streams() {
    let kafka = support::kafka(&support::brokers().await);
    let dir = support::test_dir(&format!("streams-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite://{}", dir.join("slow.db").display());
    let one = HeraldProcess::start(
        "ingress",
        &kafka,
        &database,
        &[
            ("STREAM_CURSOR_KEY", CURSOR_KEY),
            ("STREAM_BUFFER_EVENTS", "5"),
            ("STREAM_MAX_PER_CALLER", "2"),
        ],
    )
    .await;
    let customers: Vec<String> = (0..20_000).map(|i| format!("customer-{i:06}")).collect();
    let posted = post_orders(&one.base, &customers).await;
    let analyst = support::token("ana", &["analyst"]);
    let from = "from=2020-01-01T00:00:00Z&type=order.placed";

    // The client reads nothing for a while: the socket and then the buffer fill, and the
    // stream ends after what was buffered.
    let mut response = open_sse(&one.base, &analyst, from, None).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (first, mut last_id) = read_sse(&mut response, "order.placed", posted.len()).await;
    assert!(
        first.len() < posted.len(),
        "a client that did not read got all {} events",
        first.len()
    );
    let mut seen = order_ids(&first);
    let mut cuts = 0;
    // It resumes until it has everything.
    while seen.len() < posted.len() {
        cuts += 1;
        assert!(cuts < 100, "resuming does not end");
        let mut response = open_sse(&one.base, &analyst, from, last_id.as_deref()).await;
        let (more, last) = read_sse(&mut response, "order.placed", posted.len() - seen.len()).await;
        seen.extend(order_ids(&more));
        last_id = last.or(last_id);
    }
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), posted.len(), "an event came twice");
    assert!(posted.iter().all(|id| distinct.contains(id)));
    eprintln!(
        "slow client: {} of {} events before the cut, the rest in {cuts} resumption(s)",
        first.len(),
        posted.len()
    );

    // Two streams per caller here: a third is refused until one closes.
    let held = [
        open_sse(&one.base, &analyst, "", None).await,
        open_sse(&one.base, &analyst, "", None).await,
    ];
    let refused = support::client()
        .get(format!("{}/api/v1/streams/orders", one.base))
        .bearer_auth(&analyst)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let other = support::token("someone-else", &["analyst"]);
    open_sse(&one.base, &other, "", None).await;
    drop(held);
    support::eventually(Duration::from_secs(10), "a place freed", || async {
        let status = support::client()
            .get(format!("{}/api/v1/streams/orders?wait=0", one.base))
            .bearer_auth(&analyst)
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 { Ok(()) } else { Err(status) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let dir = support::test_dir(&format!("streams-outage-{}", uuid::Uuid::new_v4().simple()));
    let mut broker = platform::broker::LocalBroker::start(&dir, None)
        .await
        .expect("private broker starts");
    let kafka = support::kafka(&broker.bootstrap());
    let one = ingress(&kafka, "outage").await;
    let analyst = support::token("ana", &["analyst"]);
    let customers: Vec<String> = (0..100).map(|i| format!("c-{i}")).collect();
    let mut posted = post_orders(&one.base, &customers).await;
    let from = "from=2020-01-01T00:00:00Z&type=order.placed";
    let mut response = open_sse(&one.base, &analyst, from, None).await;
    let (before, mut last_id) = read_sse(&mut response, "order.placed", 100).await;
    let mut seen = order_ids(&before);

    broker.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart().await.expect("broker restarts");
    // The ingress answers again once it has reconnected; what it acknowledges is streamed.
    let token = support::token("shop", &["service"]);
    for i in 0..100 {
        let id = uuid::Uuid::new_v4().to_string();
        let order = support::order_of(&id, &format!("after-{i}"));
        support::eventually(
            Duration::from_secs(60),
            "a 202 after the restart",
            || async {
                let status = support::client()
                    .post(format!("{}/api/v1/events", one.base))
                    .bearer_auth(&token)
                    .json(&order)
                    .send()
                    .await
                    .unwrap()
                    .status();
                if status == 202 { Ok(()) } else { Err(status) }
            },
        )
        .await;
        posted.push(id);
    }
    // The same stream goes on, or, if it ended, the client resumes from its last id.
    let mut resumed = 0;
    while seen.len() < posted.len() {
        let (more, last) = read_sse(&mut response, "order.placed", posted.len() - seen.len()).await;
        seen.extend(order_ids(&more));
        last_id = last.or(last_id);
        if seen.len() < posted.len() {
            resumed += 1;
            assert!(resumed < 10, "{} of {} events", seen.len(), posted.len());
            response = open_sse(&one.base, &analyst, from, last_id.as_deref()).await;
        }
    }
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "an event came twice");
    assert!(posted.iter().all(|id| distinct.contains(id)));
    eprintln!(
        "broker restart: {} events streamed, 0 missing, 0 repeated, {resumed} resumption(s)",
        seen.len()
    );
    drop(one);
    broker.stop(Duration::from_secs(30)).await;
}
