//! Hostile and careless input against the whole system, as `herald up` runs it: every route
//! of every service, read from the routers' own source (so a route added is walked without
//! editing this test), with a corpus of bad inputs: malformed and oversized bodies, deep
//! nesting, wrong types, extreme numbers, control characters and CR/LF in every string, bidi
//! overrides, invalid UTF-8, bad and missing tokens, hostile path parameters and queries,
//! invented methods. Then every string field of every event type, posted with hostile values,
//! flows through every consumer.
//!
//! What must hold: no answer is a 5xx, no process panics, every consumer group's lag comes
//! back to 0, `/readyz` still answers 200, and invented methods add no metric series.
//!
//! The test command runs a short corpus; `HOSTILE_FULL=1` runs every combination.

mod support;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::routes::{routes, routes_in};
use support::up::Up;

fn full() -> bool {
    std::env::var("HOSTILE_FULL").is_ok_and(|v| v == "1")
}

/// Hostile strings for any text a client controls.
fn hostile_strings() -> Vec<String> {
    let mut strings: Vec<String> = [
        "Eve\r\nBcc: x@evil.example",
        "Eve\nX-Injected: 1",
        "nul\u{0}byte",
        "\u{1b}[31mred\u{7}",
        "\u{202e}evil\u{202c}",
        "\u{2066}iso\u{2069}",
        "\u{85}\u{2028}\u{2029}",
        "{{ 7*7 }}{% raw %}",
        "<script>alert(1)</script>",
        "'; DROP TABLE x; --",
        "../../etc/passwd",
        "not-an-email@",
        "@@",
        "+",
        "",
        " ",
        "😀\u{fe0f}\u{200d}",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    strings.push("x".repeat(if full() { 1 << 20 } else { 100_000 }));
    strings
}

/// Bodies no handler should take, and the content type they come with.
fn hostile_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let json = "application/json";
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(20_000), "}".repeat(20_000));
    let mut bodies: Vec<(&'static str, Vec<u8>)> = vec![
        (json, b"".to_vec()),
        (json, b"{".to_vec()),
        (json, b"null".to_vec()),
        (json, b"[]".to_vec()),
        (json, b"\"text\"".to_vec()),
        (
            json,
            b"{\"a\":1e400,\"b\":-9223372036854775809,\"c\":18446744073709551616}".to_vec(),
        ),
        (json, b"{\"a\":\xff\xfe\"invalid utf-8\"}".to_vec()),
        (json, deep_array.into_bytes()),
        (json, deep_object.into_bytes()),
        (
            json,
            format!("{{\"x\":\"{}\"}}", "y".repeat(3 << 20)).into_bytes(),
        ),
        (
            "text/plain",
            b"{\"email\":\"a@b.c\",\"password\":\"correct horse battery\"}".to_vec(),
        ),
        (
            "application/x-www-form-urlencoded",
            b"email=a%40b.c&password=x".to_vec(),
        ),
    ];
    // Every field name the API knows, with every hostile string and wrong types.
    let fields = [
        "email",
        "password",
        "display_name",
        "phone",
        "locale",
        "time_zone",
        "code",
        "token",
        "refresh_token",
        "new_password",
        "role",
        "type",
        "data",
        "events",
        "key",
        "platform",
        "latest",
        "minimum",
        "channels",
        "quiet_hours",
        "categories",
        "q",
        "cursor",
    ];
    for value in hostile_strings()
        .into_iter()
        .take(if full() { usize::MAX } else { 6 })
    {
        let object: serde_json::Map<String, Value> = fields
            .iter()
            .map(|f| (f.to_string(), json!(value)))
            .collect();
        bodies.push((json, Value::Object(object).to_string().into_bytes()));
    }
    let wrong: serde_json::Map<String, Value> = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let v = [
                json!(1),
                json!(true),
                json!([]),
                json!({}),
                json!(null),
                json!(-1.5),
            ];
            (f.to_string(), v[i % v.len()].clone())
        })
        .collect();
    bodies.push((json, Value::Object(wrong).to_string().into_bytes()));
    bodies
}

/// Values for a path's `{parameters}`, percent-encoded as a client would send them.
fn hostile_params() -> Vec<String> {
    let mut params: Vec<String> = [
        "x",
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        "%E2%80%AE",
        "%FF%FE",
        "%0D%0ALocation:%20x",
        "00000000-0000-0000-0000-000000000000",
        "-1",
        "99999999999999999999999",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    params.push("a".repeat(4000));
    params
}

const HOSTILE_QUERY: &str = "?q=%00%0D%0A&limit=-1&offset=99999999999999999999&cursor=%FF&from=0000-01-01T00:00:00Z&to=9999-99-99&event_id=nope&platform=%00&version=1.2.3.4.5.6&type=x&field=a&field=b";

/// What the walk saw.
#[derive(Default)]
struct Tally {
    requests: usize,
    by_status: BTreeMap<u16, usize>,
    server_errors: Vec<String>,
}

impl Tally {
    fn record(&mut self, what: &str, status: u16) {
        self.requests += 1;
        *self.by_status.entry(status).or_default() += 1;
        if status >= 500 {
            self.server_errors.push(format!("{status} for {what}"));
        }
    }
}

async fn send(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&(&'static str, Vec<u8>)>,
) -> Option<u16> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client.request(method, url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some((content_type, bytes)) = body {
        request = request
            .header("content-type", *content_type)
            .body(bytes.clone());
    }
    // A connection the server closes on an oversized body counts as refused, not as a 5xx.
    request.send().await.ok().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_every_route_yields_no_5xx_no_panic_and_no_stuck_consumer() {
    let routes = routes();
    // The walk must see the services' routes, or it proves nothing.
    for expected in [
        "/api/v1/events",
        "/api/v1/auth/register",
        "/api/v1/search",
        "/api/v1/audit",
    ] {
        assert!(
            routes.iter().any(|r| r.path == expected),
            "{expected} not found in {routes:?}"
        );
    }
    let up = Up::start(
        "hostile",
        // Events for recipients no one registered wait aside this long, then end skipped:
        // the walk checks that every delivery ends.
        &[("NOTIFY_RECIPIENT_GRACE_SECS", "5")],
    )
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let tokens = [
        None,
        Some("not.a.token".to_string()),
        Some(up.token("hostile-user", "user")),
        Some(up.token("hostile-admin", "admin")),
    ];
    let bodies = hostile_bodies();
    let params = hostile_params();
    let mut tally = Tally::default();
    let started = Instant::now();
    for route in &routes {
        let paths: Vec<String> = if route.path.contains('{') {
            params
                .iter()
                .map(|p| {
                    let mut path = String::new();
                    for (i, part) in route.path.split('{').enumerate() {
                        if i == 0 {
                            path.push_str(part);
                        } else {
                            path.push_str(p);
                            path.push_str(part.split_once('}').map_or("", |(_, rest)| rest));
                        }
                    }
                    path
                })
                .collect()
        } else {
            vec![route.path.clone()]
        };
        let methods = [route.method.as_str(), "PATCH", "DELETE", "PUT"];
        for (n, path) in paths.iter().enumerate() {
            for query in ["", HOSTILE_QUERY] {
                let url = format!("{}{path}{query}", up.base);
                for (t, token) in tokens.iter().enumerate() {
                    // Every body with the route's own method and the strongest token; the
                    // rest of the combinations in the full corpus only.
                    let every_body = full() || (t == 3 && n == 0 && query.is_empty());
                    for method in methods {
                        if !every_body {
                            let status = send(&client, method, &url, token.as_deref(), None).await;
                            if let Some(status) = status {
                                tally.record(&format!("{method} {url}"), status);
                            }
                            continue;
                        }
                        if !full() && method != route.method {
                            continue;
                        }
                        for body in &bodies {
                            let status =
                                send(&client, method, &url, token.as_deref(), Some(body)).await;
                            if let Some(status) = status {
                                let what = format!("{method} {url} ({} bytes)", body.1.len());
                                tally.record(&what, status);
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "hostile walk: {} routes, {} requests in {:?}; statuses {:?}",
        routes.len(),
        tally.requests,
        started.elapsed(),
        tally.by_status
    );

    // Invented methods fold into one label: none of them becomes a metric series.
    let invented: Vec<String> = (0..100)
        .map(|i| {
            format!(
                "X{}{i}",
                uuid::Uuid::new_v4().simple().to_string()[..6].to_uppercase()
            )
        })
        .collect();
    for method in &invented {
        let status = send(&client, method, &format!("{}/healthz", up.base), None, None).await;
        if let Some(status) = status {
            tally.record(&format!("{method} /healthz"), status);
        }
    }
    let metrics = client
        .get(format!("{}/metrics", up.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let leaked: Vec<&String> = invented
        .iter()
        .filter(|m| metrics.contains(m.as_str()))
        .collect();
    assert!(leaked.is_empty(), "methods became series: {leaked:?}");

    // Every string field of every event type, hostile, through every consumer.
    let service = up.token("hostile-service", "service");
    let admin = up.token("hostile-admin", "admin");
    let key = up.sealing_key();
    let catalog = events::Catalog::embedded().unwrap();
    let mut posted = 0;
    let mut accepted_ids = Vec::new();
    let mut event_statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for schema in catalog.event_types() {
        // One field at a time, so the rest of the event stays valid and it reaches the
        // consumers (a hostile UUID or timestamp is refused at the door, as it should be).
        let variants = strings_in(&schema.example).into_iter().flat_map(|field| {
            hostile_strings()
                .into_iter()
                .map(move |value| (field.clone(), value))
        });
        for (field, value) in variants {
            let mut data = schema.example.clone();
            set(&mut data, &field, &value);
            key.seal_fields(schema, &mut data);
            let body = json!({"type": schema.event_type, "data": data});
            let token = if schema.event_type == "campaign.launched" {
                &admin
            } else {
                &service
            };
            let answer = client
                .post(format!("{}/api/v1/events", up.base))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await;
            if let Ok(answer) = answer {
                let status = answer.status().as_u16();
                *event_statuses.entry(status).or_insert(0) += 1;
                tally.record(
                    &format!("POST {} with hostile strings", schema.event_type),
                    status,
                );
                if status == 202 {
                    posted += 1;
                    let accepted: Value = answer.json().await.unwrap();
                    accepted_ids.push(accepted["event_id"].as_str().unwrap().to_string());
                }
            }
        }
    }
    eprintln!(
        "hostile events: {posted} accepted, statuses {event_statuses:?}; totals: {} requests, {:?}",
        tally.requests, tally.by_status
    );
    assert!(
        posted > 0,
        "no hostile event was accepted, so none reached a consumer"
    );
    assert!(
        tally.server_errors.is_empty(),
        "5xx answers: {:?}",
        tally.server_errors
    );

    // Every consumer group drains: no partition is stuck on a hostile event.
    let drained = support::eventually(
        Duration::from_secs(180),
        "every consumer group drained",
        || async {
            let kafka = up.kafka.clone();
            let lags = tokio::task::spawn_blocking(move || {
                let timeout = Duration::from_secs(10);
                let mut total = 0i64;
                let mut groups = Vec::new();
                for group in platform::kafka::groups::list(&kafka, timeout).unwrap() {
                    if group.name.starts_with(&kafka.topic_prefix) && !group.name.ends_with(".dlq")
                    {
                        let lag: i64 = platform::kafka::groups::lag(&kafka, &group.name, timeout)
                            .unwrap()
                            .iter()
                            .map(|l| l.lag.max(0))
                            .sum();
                        total += lag;
                        groups.push((group.name.clone(), lag));
                    }
                }
                (total, groups)
            })
            .await
            .unwrap();
            if lags.0 == 0 && lags.1.len() >= 3 {
                Ok(lags.1)
            } else {
                Err(format!("consumers stuck: {:?}", lags.1))
            }
        },
    )
    .await;
    eprintln!("consumer groups drained: {drained:?}");
    // Every delivery the hostile events made ends: sent, failed, skipped or dead, none left
    // sending or retrying.
    parked_events_run(&client, &up.base).await;
    let deliveries = deliveries_end(&client, &up.base, &admin, &accepted_ids).await;
    eprintln!("hostile events' deliveries: {deliveries:?}");
    assert!(
        deliveries.values().sum::<usize>() > 0,
        "no hostile event made a delivery, so the notifications were not tried"
    );

    let ready = client
        .get(format!("{}/readyz", up.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    up.assert_no_panic();
}

/// The JSON pointers of every string in `value`.
/// Waits until no event waits aside for its recipient (it then has its deliveries).
async fn parked_events_run(client: &reqwest::Client, base: &str) {
    let parked = support::eventually(
        Duration::from_secs(120),
        "parked events all run",
        || async {
            let metrics = client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let count = |name: &str| -> f64 {
                metrics
                    .lines()
                    .filter(|line| line.starts_with(name))
                    .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            };
            let (parked, unparked) = (
                count("herald_notifications_parked_total"),
                count("herald_notifications_unparked_total"),
            );
            if parked == unparked {
                Ok(parked)
            } else {
                Err(format!(
                    "parked events never ran: {parked} parked, {unparked} unparked"
                ))
            }
        },
    )
    .await;
    eprintln!("parked events all ran: {parked}");
}

/// Waits until every delivery of `event_ids` has a final status; how many ended in each.
async fn deliveries_end(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    event_ids: &[String],
) -> BTreeMap<String, usize> {
    const FINAL: [&str; 4] = ["sent", "failed", "skipped", "dead"];
    // Each round asks only about the events not yet ended.
    let pending = Mutex::new(event_ids.iter().collect::<Vec<&String>>());
    let ended: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
    support::eventually(
        Duration::from_secs(180),
        "every delivery of the hostile events ended",
        || async {
            let waiting = std::mem::take(&mut *pending.lock().unwrap());
            let mut still = Vec::new();
            let mut seen = String::new();
            for event_id in waiting {
                let items: Value = client
                    .get(format!("{base}/api/v1/notifications?event_id={event_id}"))
                    .bearer_auth(admin)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let statuses: Vec<String> = items["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|row| row["status"].as_str().unwrap().to_string())
                    .collect();
                if statuses.iter().all(|s| FINAL.contains(&s.as_str())) {
                    let mut ended = ended.lock().unwrap();
                    for status in statuses {
                        *ended.entry(status).or_default() += 1;
                    }
                } else {
                    if seen.is_empty() {
                        seen = format!("event {event_id}'s deliveries never ended: {statuses:?}");
                    }
                    still.push(event_id);
                }
            }
            let left = still.len();
            *pending.lock().unwrap() = still;
            match left {
                0 => Ok(()),
                _ => Err(format!("{left} events pending; {seen}")),
            }
        },
    )
    .await;
    ended.into_inner().unwrap()
}

fn strings_in(value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(value: &Value, at: String, found: &mut Vec<String>) {
        match value {
            Value::String(_) => found.push(at),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{at}/{i}"), found);
                }
            }
            Value::Object(members) => {
                for (name, member) in members {
                    walk(member, format!("{at}/{name}"), found);
                }
            }
            _ => {}
        }
    }
    walk(value, String::new(), &mut found);
    found
}

fn set(data: &mut Value, pointer: &str, text: &str) {
    if let Some(slot) = data.pointer_mut(pointer) {
        *slot = json!(text);
    }
}

#[test]
fn the_route_reader_finds_methods_prefixes_and_constants() {
    let text = r#"
        const BASE: &str = "/api/v1/things";
        fn router() -> Router {
            Router::new()
                .route(BASE, get(list))
                .route("/x/{id}", get(a).patch(b).delete(c))
                .nest("/api/v1", v1())
        }
        fn v1() -> Router {
            Router::new().route(
                "/auth/login",
                post(api::login),
            )
        }
    "#;
    let found: Vec<(String, String)> = routes_in(text)
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    let expected = [
        ("GET", "/api/v1/things"),
        ("GET", "/x/{id}"),
        ("PATCH", "/x/{id}"),
        ("DELETE", "/x/{id}"),
        ("POST", "/api/v1/auth/login"),
    ];
    assert_eq!(
        found,
        expected
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect::<Vec<_>>()
    );
}
