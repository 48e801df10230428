//! Notifications end to end: events posted at the real ingress, a real broker, the real
//! `herald notifications` process, and a real SMTP server on loopback (aiosmtpd). Every email
//! is counted at the SMTP server: none missing, none twice.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::process::HeraldProcess;
use support::smtp::{SmtpServer, by_recipient};
use support::{TestIngress, client, test_dir, token};
use uuid::Uuid;

fn publisher() -> String {
    token("notify-test", &["user", "admin", "service"])
}

fn sqlite_url(name: &str) -> String {
    let dir = test_dir("notifications");
    std::fs::create_dir_all(&dir).unwrap();
    format!(
        "sqlite://{}",
        dir.join(format!("{name}-{}.db", Uuid::new_v4().simple()))
            .display()
    )
}

fn registered(user_id: Uuid, email: &str, name: &str, locale: &str) -> Value {
    json!({"type": "user.registered", "data": {
        "user_id": user_id, "email": email, "display_name": name,
        "locale": locale, "time_zone": "Europe/Paris"
    }})
}

async fn post(app: &TestIngress, body: &Value) -> Uuid {
    let response = app.post(&publisher(), body).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    Uuid::parse_str(body["event_id"].as_str().unwrap()).unwrap()
}

async fn get(base: &str, path: &str, bearer: Option<&str>) -> (u16, Value) {
    let mut request = client().get(format!("{base}{path}"));
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Three columns of every delivery row of an API answer, sorted.
fn columns(answer: &Value, names: [&str; 3]) -> Vec<(String, String, String)> {
    let mut rows: Vec<_> = answer["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let column = |name: &str| match &r[name] {
                Value::Null => String::new(),
                Value::String(text) => text.clone(),
                other => panic!("{name} is not text: {other}"),
            };
            (column(names[0]), column(names[1]), column(names[2]))
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_and_receipt_emails_arrive_once_and_a_replay_sends_nothing() {
    let app = TestIngress::start_default().await;
    let smtp = SmtpServer::start("welcome").await;
    let db = sqlite_url("welcome");
    let notifier = HeraldProcess::start(
        "notifications",
        &app.kafka,
        &db,
        &[("SMTP_URL", &smtp.url())],
    )
    .await;

    let user = Uuid::new_v4();
    let address = format!("zoe.{}@example.com", &user.simple().to_string()[..8]);
    let welcome = post(&app, &registered(user, &address, "Zoé", "fr-CA")).await;
    let received = smtp.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 1, "the welcome email arrives");
    let email = &received[0];
    assert_eq!(email.rcpt_tos, std::slice::from_ref(&address));
    assert_eq!(email.from, "Herald <no-reply@herald.localhost>");
    assert!(email.to.contains(&address), "{}", email.to);
    // French, for a fr-CA user; non-ASCII survives the encoding.
    assert_eq!(email.subject, "Bienvenue sur Herald, Zoé");
    let text = email.text.as_deref().unwrap();
    assert!(text.contains("votre compte est prêt"), "{text}");
    assert!(text.contains(&address), "{text}");
    assert!(email.html.as_deref().unwrap().contains("<b>"));

    // The order's customer is that user: the receipt comes in English (no French receipt).
    let order = post(
        &app,
        &json!({"type": "order.placed", "data": {
            "order_id": "o-77", "customer_id": user.to_string(),
            "items": [{"sku": "tea-01", "quantity": 2, "unit_price_cents": 450}],
            "total_cents": 900, "currency": "EUR"
        }}),
    )
    .await;
    let received = smtp.wait_for(2, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 2, "the receipt arrives");
    let receipt = &received[1];
    assert_eq!(receipt.subject, "Your order o-77");
    let text = receipt.text.as_deref().unwrap();
    assert!(text.contains("2 x tea-01"), "{text}");
    assert!(text.contains("Total: 9.00 EUR"), "{text}");
    assert!(receipt.html.is_none());
    assert_ne!(receipt.message_id, email.message_id);

    // What was sent, as the user and an admin see it.
    let (status, mine) = get(
        &notifier.base,
        "/api/v1/me/notifications",
        Some(&token(&user.to_string(), &["user"])),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        columns(&mine, ["event_type", "channel", "status"]),
        [
            ("order.placed".into(), "email".into(), "sent".into()),
            ("order.placed".into(), "push".into(), "skipped".into()),
            ("user.registered".into(), "email".into(), "sent".into()),
        ]
    );
    let admin = token("ops", &["admin"]);
    let (status, one) = get(
        &notifier.base,
        &format!("/api/v1/notifications?event_id={order}"),
        Some(&admin),
    )
    .await;
    assert_eq!(status, 200);
    let items = one["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let push = items.iter().find(|r| r["channel"] == "push").unwrap();
    assert_eq!(push["detail"], "no push provider is configured");
    let sent = items.iter().find(|r| r["channel"] == "email").unwrap();
    assert_eq!(sent["address"], address.as_str());
    assert_eq!(sent["attempts"], 1);
    assert_eq!(sent["provider"], "smtp");

    // Each outcome is published as an event, once, naming no address: what reports counts.
    let outcomes = support::eventually(
        Duration::from_secs(30),
        "the three outcomes on the notifications topic",
        || async {
            let mut outcomes: Vec<(String, String, String, String)> =
                support::read(&app.kafka, "notifications")
                    .await
                    .into_iter()
                    .map(|(_, event)| {
                        assert_eq!(event.envelope.event_type, "notification.settled");
                        assert_eq!(event.envelope.actor, "herald-notifications");
                        assert!(!event.data.to_string().contains('@'), "{}", event.data);
                        let field = |name: &str| event.data[name].as_str().unwrap().to_string();
                        (
                            field("source_event_id"),
                            field("source_event_type"),
                            field("channel"),
                            field("status"),
                        )
                    })
                    .collect();
            outcomes.sort();
            if outcomes.len() >= 3 {
                Ok(outcomes)
            } else {
                Err(format!("{outcomes:?}"))
            }
        },
    )
    .await;
    let mut expected = vec![
        (
            welcome.to_string(),
            "user.registered".into(),
            "email".into(),
            "sent".into(),
        ),
        (
            order.to_string(),
            "order.placed".into(),
            "email".into(),
            "sent".into(),
        ),
        (
            order.to_string(),
            "order.placed".into(),
            "push".into(),
            "skipped".into(),
        ),
    ];
    expected.sort();
    assert_eq!(outcomes, expected, "each outcome published once");

    // Bad requests get precise answers.
    let path = format!("/api/v1/notifications?event_id={welcome}");
    assert_eq!(get(&notifier.base, &path, None).await.0, 401);
    let not_admin = token(&user.to_string(), &["user"]);
    assert_eq!(get(&notifier.base, &path, Some(&not_admin)).await.0, 403);
    for bad in [
        "/api/v1/notifications",
        "/api/v1/notifications?event_id=nope",
        "/api/v1/notifications?event_id=&limit=0",
        "/api/v1/notifications?event=x",
    ] {
        let (status, problem) = get(&notifier.base, bad, Some(&admin)).await;
        assert_eq!(status, 400, "{bad}: {problem}");
        assert!(problem["detail"].is_string(), "{bad}: {problem}");
    }

    // A replay: a second group reads both topics from the start against the same log.
    let replay_group = format!("replay-{}", Uuid::new_v4().simple());
    let replay = HeraldProcess::start(
        "notifications",
        &app.kafka,
        &db,
        &[("SMTP_URL", &smtp.url()), ("CONSUMER_GROUP", &replay_group)],
    )
    .await;
    support::eventually(
        Duration::from_secs(60),
        "the replay processing both events",
        || async {
            let processed = replay.metric("herald_consumer_processed_total").await;
            if processed >= 2.0 {
                Ok(())
            } else {
                Err(format!("{processed} processed"))
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.received().len(), 2, "a replay sends nothing new");
    for process in [replay, notifier] {
        let (status, _) = process.terminate().await;
        assert!(status.success(), "{status}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_server_refusing_for_a_while_delays_but_loses_and_repeats_nothing() {
    let app = TestIngress::start_default().await;
    let smtp = SmtpServer::start("refusing").await;
    smtp.refuse(true);
    let db = sqlite_url("refusing");
    let notifier = HeraldProcess::start(
        "notifications",
        &app.kafka,
        &db,
        &[("SMTP_URL", &smtp.url())],
    )
    .await;
    let mut addresses = Vec::new();
    for i in 0..20 {
        let address = format!(
            "r{i}.{}@example.com",
            &Uuid::new_v4().simple().to_string()[..6]
        );
        post(&app, &registered(Uuid::new_v4(), &address, "R", "en")).await;
        addresses.push(address);
    }
    // While refused, attempts are recorded as retrying and nothing is accepted.
    support::eventually(Duration::from_secs(60), "an attempt", || async {
        let attempts = notifier.metric("herald_notifications_total").await;
        if attempts >= 1.0 {
            Ok(())
        } else {
            Err(format!("{attempts} attempts"))
        }
    })
    .await;
    assert!(smtp.received().is_empty());
    smtp.refuse(false);
    let received = smtp.wait_for(20, Duration::from_secs(90)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = by_recipient(&smtp.received());
    let missing = addresses
        .iter()
        .filter(|a| !counts.contains_key(*a))
        .count();
    let duplicates: usize = counts.values().map(|n| n.saturating_sub(1)).sum();
    eprintln!(
        "refused then accepted: {} emails for 20 users, {missing} missing, {duplicates} duplicates",
        received.len()
    );
    assert_eq!((missing, duplicates), (0, 0));
    notifier.terminate().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_nothing_and_every_repeat_is_counted() {
    let app = std::sync::Arc::new(TestIngress::start_default().await);
    let smtp = SmtpServer::start("kill9").await;
    let db = sqlite_url("kill9");
    let url = smtp.url();
    let env = [("SMTP_URL", url.as_str())];
    let mut notifier = HeraldProcess::start("notifications", &app.kafka, &db, &env).await;
    let producer = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut addresses = Vec::new();
            for batch in 0..30 {
                let events: Vec<Value> = (0..20)
                    .map(|i| {
                        let address = format!("k{batch}-{i}@example.com");
                        addresses.push(address.clone());
                        registered(Uuid::new_v4(), &address, "K", "en")
                    })
                    .collect();
                let response = app.post(&publisher(), &json!({ "events": events })).await;
                assert_eq!(response.status(), 202);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            addresses
        })
    };
    for pause in [1500, 1800] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        notifier.kill9().await;
        notifier = HeraldProcess::start("notifications", &app.kafka, &db, &env).await;
    }
    let addresses = producer.await.unwrap();
    smtp.wait_for(addresses.len(), Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = by_recipient(&smtp.received());
    let missing = addresses
        .iter()
        .filter(|a| !counts.contains_key(*a))
        .count();
    let duplicates: usize = counts.values().map(|n| n.saturating_sub(1)).sum();
    // Deliveries the log shows were attempted again after an attempt without an outcome:
    // the only ones that may have reached the server twice.
    let database = platform::db::Database::connect(&db).await.unwrap();
    let repeated: Vec<(String,)> = platform::with_pool!(&database, pool => {
        sqlx::query_as("SELECT address FROM notify_deliveries WHERE attempts > 1")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    let repeated: std::collections::HashSet<String> = repeated.into_iter().map(|(a,)| a).collect();
    let uncounted: Vec<&String> = counts
        .iter()
        .filter(|(address, n)| **n > 1 && !repeated.contains(*address))
        .map(|(address, _)| address)
        .collect();
    eprintln!(
        "kill -9 x2: {} emails for {} users, {missing} missing, {duplicates} duplicates, \
         {} deliveries attempted again after a crash (sends in flight at the kill)",
        smtp.received().len(),
        addresses.len(),
        repeated.len()
    );
    assert_eq!(missing, 0);
    assert!(
        uncounted.is_empty(),
        "every duplicate is a delivery the log counts as repeated: {uncounted:?}"
    );
    // Every delivery's outcome is on the log under one event id: a crash between the
    // broker's acknowledgement and the outbox's record publishes it again, with that id.
    let outcomes = support::eventually(
        Duration::from_secs(30),
        "every outcome published",
        || async {
            let records = support::read(&app.kafka, "notifications").await;
            let ids: std::collections::HashSet<Uuid> =
                records.iter().map(|(_, e)| e.envelope.event_id).collect();
            if ids.len() >= addresses.len() {
                Ok((records, ids))
            } else {
                Err(format!("{} of {} outcomes", ids.len(), addresses.len()))
            }
        },
    )
    .await;
    let (records, ids) = outcomes;
    let settled: std::collections::HashSet<(String, String)> = records
        .iter()
        .map(|(_, e)| {
            assert_eq!(e.data["status"], "sent", "{}", e.data);
            (
                e.data["source_event_id"].as_str().unwrap().to_string(),
                e.data["channel"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    eprintln!(
        "kill -9 x2: {} outcome records, {} distinct outcomes, {} published again",
        records.len(),
        ids.len(),
        records.len() - ids.len()
    );
    assert_eq!(ids.len(), addresses.len(), "one outcome per delivery");
    assert_eq!(settled.len(), addresses.len());
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secondary_smtp_server_delivers_when_the_primary_is_down_and_both_down_dead_letters() {
    let app = TestIngress::start_default().await;
    // The primary is down: nothing listens on its port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let primary_url = format!("smtp://{}", closed.local_addr().unwrap());
    drop(closed);
    let secondary = SmtpServer::start("secondary").await;
    let secondary_url = secondary.url();
    let db = sqlite_url("failover");
    let notifier = HeraldProcess::start(
        "notifications",
        &app.kafka,
        &db,
        &[
            ("SMTP_URL", primary_url.as_str()),
            ("SMTP_FALLBACK_URL", secondary_url.as_str()),
            ("NOTIFY_MAX_ATTEMPTS", "3"),
            ("CONSUMER_MAX_BACKOFF_MS", "300"),
        ],
    )
    .await;
    let mut expected = Vec::new();
    let mut first = None;
    for i in 0..6 {
        let address = format!(
            "f{i}.{}@example.com",
            &Uuid::new_v4().simple().to_string()[..6]
        );
        let id = post(&app, &registered(Uuid::new_v4(), &address, "F", "en")).await;
        first.get_or_insert(id);
        expected.push(address);
    }
    let received = secondary.wait_for(6, Duration::from_secs(60)).await;
    let counts = by_recipient(&received);
    assert!(
        expected.iter().all(|a| counts.get(a) == Some(&1)),
        "{counts:?}"
    );
    let admin = token("ops", &["admin"]);
    let (_, rows) = get(
        &notifier.base,
        &format!("/api/v1/notifications?event_id={}", first.unwrap()),
        Some(&admin),
    )
    .await;
    assert_eq!(rows["items"][0]["provider"], "smtp-fallback", "{rows}");

    // Both refuse: a few attempts, then the delivery is dead and its event dead-lettered.
    secondary.refuse(true);
    let doomed = post(
        &app,
        &registered(Uuid::new_v4(), "doomed@example.com", "D", "en"),
    )
    .await;
    let dlq = format!("{}{}.dlq", app.kafka.topic_prefix, notifications::NAME);
    let letters = support::eventually(Duration::from_secs(60), "a dead letter", || async {
        let letters = platform::kafka::read_to_end(
            &app.kafka,
            std::slice::from_ref(&dlq),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_default();
        if letters.is_empty() {
            Err("no dead letter")
        } else {
            Ok(letters)
        }
    })
    .await;
    assert_eq!(letters.len(), 1, "the event is dead-lettered once");
    let error = String::from_utf8(
        letters[0]
            .header(platform::consumer::dlq_headers::ERROR)
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    let (_, rows) = get(
        &notifier.base,
        &format!("/api/v1/notifications?event_id={doomed}"),
        Some(&admin),
    )
    .await;
    let row = &rows["items"][0];
    assert_eq!(row["status"], "dead", "{rows}");
    assert_eq!(row["attempts"], 4, "three sends, then the give-up");
    assert_eq!(secondary.received().len(), 6);
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

async fn device(base: &str, user: &str, token_value: &str) -> reqwest::StatusCode {
    device_on(base, user, token_value, "android").await
}

async fn device_on(
    base: &str,
    user: &str,
    token_value: &str,
    platform: &str,
) -> reqwest::StatusCode {
    client()
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(token(user, &["user"]))
        .json(&json!({"token": token_value, "platform": platform}))
        .send()
        .await
        .unwrap()
        .status()
}

/// The ingress, an SMTP server, the FCM stand-in, and `herald notifications` wired to them
/// (plus `extra` settings).
struct WithPush {
    app: TestIngress,
    smtp: SmtpServer,
    fcm: support::fcm::FcmStandIn,
    notifier: HeraldProcess,
}

async fn with_push(name: &str, extra: &[(&str, &str)]) -> WithPush {
    let app = TestIngress::start_default().await;
    let smtp = SmtpServer::start(name).await;
    let fcm = support::fcm::FcmStandIn::start().await;
    let account = fcm.service_account_file();
    let db = sqlite_url(name);
    let smtp_url = smtp.url();
    let mut env = vec![
        ("SMTP_URL", smtp_url.as_str()),
        ("FCM_SERVICE_ACCOUNT_FILE", account.as_str()),
        ("FCM_ENDPOINT", fcm.base.as_str()),
    ];
    env.extend_from_slice(extra);
    let notifier = HeraldProcess::start("notifications", &app.kafka, &db, &env).await;
    WithPush {
        app,
        smtp,
        fcm,
        notifier,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_reach_every_active_device_through_fcm_and_an_unregistered_one_is_dropped() {
    let WithPush {
        app,
        smtp,
        fcm,
        notifier,
    } = with_push("push", &[]).await;
    let user = Uuid::new_v4();
    let me = user.to_string();
    post(&app, &registered(user, "pusher@example.com", "Pat", "en")).await;
    smtp.wait_for(1, Duration::from_secs(60)).await;

    // Devices: two of the user's, one bad request of each kind.
    assert_eq!(device(&notifier.base, &me, "phone-token-1").await, 201);
    assert_eq!(device(&notifier.base, &me, "dead-tablet-token").await, 201);
    let bad = |body: Value| {
        client()
            .post(format!("{}/api/v1/devices", notifier.base))
            .bearer_auth(token(&me, &["user"]))
            .json(&body)
            .send()
    };
    for body in [
        json!({"token": "", "platform": "android"}),
        json!({"token": "t", "platform": "symbian"}),
        json!({"token": "t"}),
        json!({"token": "t", "platform": "ios", "extra": 1}),
    ] {
        let response = bad(body.clone()).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
    }
    let anonymous = client()
        .post(format!("{}/api/v1/devices", notifier.base))
        .json(&json!({"token": "t", "platform": "ios"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let not_mine = client()
        .delete(format!("{}/api/v1/devices/phone-token-1", notifier.base))
        .bearer_auth(token("someone-else", &["user"]))
        .send()
        .await
        .unwrap();
    assert_eq!(not_mine.status(), 404);

    let order = |id: &str| {
        json!({"type": "order.placed", "data": {
            "order_id": id, "customer_id": me,
            "items": [{"sku": "tea-01", "quantity": 2, "unit_price_cents": 450}],
            "total_cents": 900, "currency": "EUR"
        }})
    };
    let first = post(&app, &order("o-push-1")).await;
    support::eventually(Duration::from_secs(60), "two pushes", || async {
        let sends = fcm.sends();
        if sends.len() >= 2 {
            Ok(())
        } else {
            Err(format!("{sends:?}"))
        }
    })
    .await;
    smtp.wait_for(2, Duration::from_secs(60)).await;
    let sends = fcm.sends();
    let to_phone = sends
        .iter()
        .find(|s| s["message"]["token"] == "phone-token-1")
        .expect("a push to the phone");
    assert_eq!(
        to_phone["message"]["notification"],
        json!({"title": "Order received", "body": "Order o-push-1: 9.00 EUR"})
    );
    assert_eq!(to_phone["message"]["data"]["event_id"], first.to_string());
    assert_eq!(to_phone["message"]["data"]["event_type"], "order.placed");
    assert_eq!(
        to_phone["message"]["data"]["herald_delivery"]
            .as_str()
            .unwrap()
            .len(),
        32
    );
    assert_eq!(fcm.grants(), 1, "one access token, reused");

    let admin = token("ops", &["admin"]);
    let (_, rows) = get(
        &notifier.base,
        &format!("/api/v1/notifications?event_id={first}"),
        Some(&admin),
    )
    .await;
    assert_eq!(
        columns(&rows, ["channel", "status", "address"]),
        [
            ("email".into(), "sent".into(), "pusher@example.com".into()),
            ("push".into(), "failed".into(), "android …-token".into()),
            ("push".into(), "sent".into(), "android …oken-1".into()),
        ],
        "{rows}"
    );

    // The unregistered token is dropped: the next order pushes to the phone only.
    post(&app, &order("o-push-2")).await;
    smtp.wait_for(3, Duration::from_secs(60)).await;
    support::eventually(Duration::from_secs(30), "a third push", || async {
        let sends = fcm.sends();
        if sends.len() >= 3 {
            Ok(())
        } else {
            Err(format!("{} pushes", sends.len()))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sends = fcm.sends();
    assert_eq!(sends.len(), 3, "{sends:?}");
    assert_eq!(sends[2]["message"]["token"], "phone-token-1");

    // Removing the last device: pushes stop, recorded as skipped.
    let removed = client()
        .delete(format!("{}/api/v1/devices/phone-token-1", notifier.base))
        .bearer_auth(token(&me, &["user"]))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    let third = post(&app, &order("o-push-3")).await;
    smtp.wait_for(4, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rows) = get(
        &notifier.base,
        &format!("/api/v1/notifications?event_id={third}"),
        Some(&admin),
    )
    .await;
    let push = rows["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["channel"] == "push")
        .cloned()
        .unwrap();
    assert_eq!(push["status"], "skipped");
    assert_eq!(push["detail"], "no device registered");
    assert_eq!(fcm.sends().len(), 3);
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otp_is_texted_on_the_transactional_route_and_no_secret_reaches_the_log() {
    use support::sms::{ACCOUNT_SID, AUTH_TOKEN, SmsStandIn};
    let app = TestIngress::start_default().await;
    let smtp = SmtpServer::start("otp").await;
    let gateway = SmsStandIn::start().await;
    let db = sqlite_url("otp");
    let log = test_dir("notifications").join(format!("otp-{}.log", Uuid::new_v4().simple()));
    let notifier = HeraldProcess::start_logging(
        "notifications",
        &app.kafka,
        &db,
        &[
            ("SMTP_URL", &smtp.url()),
            ("SMS_TWILIO_ACCOUNT_SID", ACCOUNT_SID),
            ("SMS_TWILIO_AUTH_TOKEN", AUTH_TOKEN),
            ("SMS_ENDPOINT", &gateway.base),
            ("SMS_TRANSACTIONAL_FROM", "HeraldTx"),
            ("SMS_PROMOTIONAL_FROM", "HeraldPromo"),
            // Everything the service logs, at its most talkative.
            ("RUST_LOG", "debug"),
        ],
        &log,
    )
    .await;
    let code = "731904";
    let user = Uuid::new_v4();
    // In plain text, the ingress refuses it: a live secret never crosses the log unsealed.
    let plain = json!({"type": "otp.requested", "data": {
        "user_id": user, "phone": "+15550100", "code": code, "purpose": "login",
        "expires_at": "2026-11-22T10:05:00Z"
    }});
    let refused = app.post(&token("svc", &["service"]), &plain).await;
    assert_eq!(refused.status(), 422);
    let refused: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(refused["errors"][0]["pointer"], "/data/code", "{refused}");
    let mut sealed = plain.clone();
    sealed["data"]["code"] = support::sealed("otp.requested", "code", code).into();
    let otp = post(&app, &sealed).await;
    // On the log, only the sealed code.
    let payloads = app.read("otp").await;
    assert!(payloads.iter().all(|(record, _)| {
        let payload = record.payload.as_deref().unwrap_or_default();
        !payload.windows(code.len()).any(|w| w == code.as_bytes())
    }));
    support::eventually(Duration::from_secs(60), "an SMS", || async {
        if gateway.texted().is_empty() {
            Err("no SMS")
        } else {
            Ok(())
        }
    })
    .await;
    let texted = gateway.texted();
    assert_eq!(texted.len(), 1);
    assert_eq!(texted[0].to, "+15550100");
    assert_eq!(texted[0].from, "HeraldTx", "transactional route");
    assert!(
        texted[0]
            .body
            .starts_with(&format!("Your Herald code is {code}.")),
        "{}",
        texted[0].body
    );
    assert_eq!(texted[0].idempotency_key.len(), 32);

    let admin = token("ops", &["admin"]);
    let (_, rows) = get(
        &notifier.base,
        &format!("/api/v1/notifications?event_id={otp}"),
        Some(&admin),
    )
    .await;
    assert_eq!(rows["items"][0]["status"], "sent", "{rows}");
    assert_eq!(rows["items"][0]["provider"], "twilio");
    assert_eq!(rows["items"][0]["category"], "transactional");
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");

    // The canaries: the code, the gateway's auth token, the bearer token used above.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("consumer started"),
        "the log has content: {logged}"
    );
    for (what, canary) in [
        ("the OTP code", code),
        ("the SMS auth token", AUTH_TOKEN),
        ("a bearer token", admin.as_str()),
    ] {
        let lines: Vec<&str> = logged.lines().filter(|l| l.contains(canary)).collect();
        assert!(lines.is_empty(), "{what} appears in the log: {lines:?}");
    }
    app.stop().await;
}

/// A rules file with a promotional rule (rules are data: message.sent as an offer) beside a
/// transactional one; its path.
fn promotional_rules() -> String {
    let rules = test_dir("notifications").join(format!("rules-{}.toml", Uuid::new_v4().simple()));
    std::fs::write(
        &rules,
        r#"
[[rule]]
event = "message.sent"
template = "message"
category = "promotional"
channels = ["email"]
to = { user = "recipient_id" }

[[rule]]
event = "order.placed"
template = "receipt"
category = "transactional"
channels = ["email"]
to = { user = "customer_id" }
"#,
    )
    .unwrap();
    rules.display().to_string()
}

async fn preferences(base: &str, user: &str, body: Option<Value>) -> (u16, Value) {
    let request = match &body {
        None => client().get(format!("{base}/api/v1/me/notification-preferences")),
        Some(body) => client()
            .put(format!("{base}/api/v1/me/notification-preferences"))
            .json(body),
    };
    let response = request
        .bearer_auth(token(user, &["user"]))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_in_opt_out_and_the_daily_cap_are_honoured() {
    let app = TestIngress::start_default().await;
    let smtp = SmtpServer::start("prefs").await;
    let db = sqlite_url("prefs");
    let rules = promotional_rules();
    let notifier = HeraldProcess::start(
        "notifications",
        &app.kafka,
        &db,
        &[
            ("SMTP_URL", &smtp.url()),
            ("NOTIFY_RULES_FILE", &rules),
            ("NOTIFY_PROMOTIONAL_DAILY_CAP", "2"),
        ],
    )
    .await;
    let user = Uuid::new_v4();
    let me = user.to_string();
    post(&app, &registered(user, "prefs@example.com", "P", "en")).await;

    // Defaults: transactional on, promotional off.
    let (status, defaults) = preferences(&notifier.base, &me, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        defaults,
        json!({"transactional": {"email": true, "push": true, "sms": true},
               "promotional": {"email": false, "push": false, "sms": false}})
    );
    let promo = |n: usize| {
        json!({"type": "message.sent", "data": {
            "message_id": Uuid::new_v4(), "conversation_id": format!("c-{n}"),
            "recipient_id": me, "body": format!("Offer {n}")
        }})
    };
    let admin = token("ops", &["admin"]);
    let detail_of = |event: Uuid| {
        let base = notifier.base.clone();
        let admin = admin.clone();
        async move {
            support::eventually(Duration::from_secs(60), "a delivery row", || async {
                let (_, rows) = get(
                    &base,
                    &format!("/api/v1/notifications?event_id={event}"),
                    Some(&admin),
                )
                .await;
                match rows["items"].get(0) {
                    Some(row) => Ok((row["status"].clone(), row["detail"].clone())),
                    None => Err(format!("no delivery row: {rows}")),
                }
            })
            .await
        }
    };
    let before = post(&app, &promo(0)).await;
    assert_eq!(
        detail_of(before).await,
        (
            json!("skipped"),
            json!("the user has not opted in to promotional email")
        )
    );

    // Opt in to promotional email: two of three offers arrive, the third hits the cap.
    let (status, chosen) = preferences(
        &notifier.base,
        &me,
        Some(json!({"promotional": {"email": true}})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(chosen["promotional"]["email"], true);
    assert_eq!(chosen["promotional"]["sms"], false);
    let mut offers = Vec::new();
    for n in 1..=3 {
        offers.push(post(&app, &promo(n)).await);
    }
    for offer in &offers {
        detail_of(*offer).await;
    }
    let received = smtp.wait_for(2, Duration::from_secs(30)).await;
    let subjects: Vec<&str> = received.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects.iter().filter(|s| **s == "New message").count(),
        2,
        "{subjects:?}"
    );
    let capped = detail_of(offers[2]).await;
    assert_eq!(
        capped,
        (
            json!("skipped"),
            json!("the daily cap of 2 promotional messages is reached")
        )
    );

    // Opting out of transactional email stops the receipt.
    let (status, _) = preferences(
        &notifier.base,
        &me,
        Some(json!({"transactional": {"email": false}, "promotional": {"email": true}})),
    )
    .await;
    assert_eq!(status, 200);
    let order = post(
        &app,
        &json!({"type": "order.placed", "data": {
            "order_id": "o-prefs", "customer_id": me,
            "items": [{"sku": "tea-01", "quantity": 1, "unit_price_cents": 450}],
            "total_cents": 450, "currency": "EUR"
        }}),
    )
    .await;
    assert_eq!(
        detail_of(order).await,
        (json!("skipped"), json!("the user turned email off"))
    );
    assert_eq!(smtp.received().len(), 2, "the two offers only");

    // Bad documents: 400; no token: 401.
    for bad in [
        json!({"marketing": {"email": true}}),
        json!({"promotional": {"fax": true}}),
        json!({"promotional": {"live": true}}),
        json!({"promotional": {"email": "yes"}}),
    ] {
        let (status, problem) = preferences(&notifier.base, &me, Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {problem}");
    }
    let anonymous = client()
        .get(format!(
            "{}/api/v1/me/notification-preferences",
            notifier.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_a_promotion_until_they_end_but_not_a_receipt() {
    let app = TestIngress::start_default().await;
    let smtp = SmtpServer::start("quiet").await;
    let db = sqlite_url("quiet");
    let rules = promotional_rules();
    let notifier = HeraldProcess::start(
        "notifications",
        &app.kafka,
        &db,
        &[("SMTP_URL", &smtp.url()), ("NOTIFY_RULES_FILE", &rules)],
    )
    .await;
    let user = Uuid::new_v4();
    let me = user.to_string();
    post(
        &app,
        &json!({"type": "user.registered", "data": {
            "user_id": user, "email": "night@example.com", "display_name": "N",
            "locale": "en", "time_zone": "UTC"
        }}),
    )
    .await;

    // Quiet from this minute to the next, in the user's zone (UTC): far enough from the
    // minute's end that the event is planned inside the window.
    let now = || jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    if now().second() > 45 {
        tokio::time::sleep(Duration::from_secs(16)).await;
    }
    let (start, end) = (now(), now() + jiff::SignedDuration::from_secs(60));
    let window = json!({
        "start": format!("{:02}:{:02}", start.hour(), start.minute()),
        "end": format!("{:02}:{:02}", end.hour(), end.minute()),
    });
    let (status, saved) = preferences(
        &notifier.base,
        &me,
        Some(json!({"promotional": {"email": true}, "quiet_hours": window})),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["quiet_hours"], window);

    let offer = post(
        &app,
        &json!({"type": "message.sent", "data": {
            "message_id": Uuid::new_v4(), "conversation_id": "c-night",
            "recipient_id": me, "body": "Night offer"
        }}),
    )
    .await;
    let receipt = post(
        &app,
        &json!({"type": "order.placed", "data": {
            "order_id": "o-night", "customer_id": me,
            "items": [{"sku": "tea-01", "quantity": 1, "unit_price_cents": 450}],
            "total_cents": 450, "currency": "EUR"
        }}),
    )
    .await;
    let received = smtp.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].subject, "Your order o-night",
        "the receipt is not held"
    );
    let admin = token("ops", &["admin"]);
    let row = |event: Uuid| {
        let (base, admin) = (notifier.base.clone(), admin.clone());
        async move {
            let (_, rows) = get(
                &base,
                &format!("/api/v1/notifications?event_id={event}"),
                Some(&admin),
            )
            .await;
            rows["items"][0].clone()
        }
    };
    // The offer is on another topic than the receipt: its row may come a moment later.
    let held = support::eventually(Duration::from_secs(30), "the offer's row", || async {
        let held = row(offer).await;
        if held.is_null() {
            Err("no delivery row")
        } else {
            Ok(held)
        }
    })
    .await;
    assert_eq!(held["status"], "deferred", "{held}");
    assert_eq!(row(receipt).await["status"], "sent");

    // When the window ends, the offer goes out, once.
    let received = smtp.wait_for(2, Duration::from_secs(90)).await;
    assert_eq!(received.len(), 2, "the offer is sent after the quiet hours");
    assert_eq!(received[1].subject, "New message");
    assert_eq!(
        received[1].text.as_deref().map(str::trim),
        Some("Night offer")
    );
    // The server has the message a moment before the log has its outcome.
    let released = support::eventually(Duration::from_secs(30), "an outcome", || async {
        let released = row(offer).await;
        let pending = ["deferred", "sending"].contains(&released["status"].as_str().unwrap());
        if pending {
            Err(format!("{released}"))
        } else {
            Ok(released)
        }
    })
    .await;
    assert_eq!(released["status"], "sent", "{released}");
    assert_eq!(released["attempts"], 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.received().len(), 2);
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

/// A client's open `GET /api/v1/stream`: the `notification` events it receives.
struct LiveStream {
    response: reqwest::Response,
    buffer: String,
}

impl LiveStream {
    async fn open(base: &str, user: &str) -> Self {
        // No overall timeout: the stream stays open as long as the test reads it.
        let response = reqwest::Client::new()
            .get(format!("{base}/api/v1/stream"))
            .bearer_auth(token(user, &["user"]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next notification: its `id` and its data.
    async fn next(&mut self, within: Duration) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                        .map(str::to_string)
                };
                if field("event").as_deref() == Some("notification") {
                    let data = serde_json::from_str(&field("data").unwrap()).unwrap();
                    return (field("id").unwrap(), data);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("a notification in time")
                .unwrap()
                .expect("the stream stays open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

/// Waits until the delivery rows of `event` show `expected` in three columns (sorted).
async fn settled_as(base: &str, event: Uuid, names: [&str; 3], expected: &[(&str, &str, &str)]) {
    let admin = token("ops", &["admin"]);
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    support::eventually(
        Duration::from_secs(60),
        &format!("the delivery rows of {event} as {expected:?}"),
        || async {
            let (_, rows) = get(
                base,
                &format!("/api/v1/notifications?event_id={event}"),
                Some(&admin),
            )
            .await;
            let got = columns(&rows, names);
            if got == expected {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
}

/// Waits until the service counts `n` open streams.
async fn wait_for_streams(notifier: &HeraldProcess, n: f64) {
    support::eventually(
        Duration::from_secs(30),
        &format!("{n} open streams"),
        || async {
            let open = notifier
                .metric("herald_notifications_live_connections")
                .await;
            if open == n {
                Ok(())
            } else {
                Err(format!("{open} open streams"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_user_gets_a_message_live_and_a_disconnected_one_as_push() {
    let WithPush {
        app,
        smtp,
        fcm,
        notifier,
    } = with_push("live", &[]).await;
    let user = Uuid::new_v4();
    let bob = user.to_string();
    post(&app, &registered(user, "bob@example.com", "Bob", "en")).await;
    smtp.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(device(&notifier.base, &bob, "bob-phone").await, 201);

    let anonymous = client()
        .get(format!("{}/api/v1/stream", notifier.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let message = |body: &str| {
        json!({"type": "message.sent", "data": {
            "message_id": Uuid::new_v4(), "conversation_id": "c-live",
            "recipient_id": bob, "body": body
        }})
    };
    // Connected (twice: a phone and a laptop): both streams get it, no push.
    let mut phone = LiveStream::open(&notifier.base, &bob).await;
    let mut laptop = LiveStream::open(&notifier.base, &bob).await;
    let live = post(&app, &message("Lunch at noon?")).await;
    for stream in [&mut phone, &mut laptop] {
        let (id, data) = stream.next(Duration::from_secs(60)).await;
        assert_eq!(id, live.to_string());
        assert_eq!(
            data,
            json!({"event_id": live.to_string(), "event_type": "message.sent",
                   "title": "New message", "body": "Lunch at noon?"})
        );
    }

    // Gone: the next message goes as push, and only as push.
    drop(phone);
    drop(laptop);
    wait_for_streams(&notifier, 0.0).await;
    let pushed = post(&app, &message("Still there?")).await;
    support::eventually(Duration::from_secs(60), "a push", || async {
        if fcm.sends().is_empty() {
            Err("no push")
        } else {
            Ok(())
        }
    })
    .await;
    let sends = fcm.sends();
    assert_eq!(sends[0]["message"]["token"], "bob-phone");
    assert_eq!(
        sends[0]["message"]["notification"],
        json!({"title": "New message", "body": "Still there?"})
    );
    assert_eq!(sends[0]["message"]["data"]["event_id"], pushed.to_string());

    // A stream opened now receives neither again; the log tells what went where.
    let mut later = LiveStream::open(&notifier.base, &bob).await;
    settled_as(
        &notifier.base,
        live,
        ["channel", "status", "provider"],
        &[("live", "sent", "stream")],
    )
    .await;
    settled_as(
        &notifier.base,
        pushed,
        ["channel", "status", "detail"],
        &[
            ("live", "skipped", "not connected: sent as push"),
            ("push", "sent", ""),
        ],
    )
    .await;
    let third = post(&app, &message("Back?")).await;
    let (id, _) = later.next(Duration::from_secs(60)).await;
    assert_eq!(id, third.to_string(), "only the new message arrives");
    assert_eq!(fcm.sends().len(), 1);
    drop(later);

    // A stream ends when its token expires.
    let short = ingress::auth::mint_hs256(
        &secrecy::SecretString::from(support::SECRET),
        &bob,
        &["user".to_string()],
        "herald",
        "herald",
        Duration::from_secs(2),
    )
    .unwrap();
    let mut expiring = reqwest::Client::new()
        .get(format!("{}/api/v1/stream", notifier.base))
        .bearer_auth(short)
        .send()
        .await
        .unwrap();
    assert_eq!(expiring.status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while expiring.chunk().await.unwrap().is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its token");
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

/// A WebSocket client of `GET /api/v1/stream`: tokio-tungstenite, which shares no code with
/// the server's side but the protocol.
type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket on the live stream with `bearer`, or answers the HTTP refusal.
async fn websocket(
    base: &str,
    bearer: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/api/v1/stream", base.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    if let Some(bearer) = bearer {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {bearer}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, response)) => {
            assert_eq!(response.status(), 101);
            Ok(socket)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(refused)) => Err(*refused),
        Err(err) => panic!("the handshake failed: {err}"),
    }
}

/// The next text message's JSON, or the close frame's code if the server closes first.
async fn socket_next(socket: &mut Socket, within: Duration) -> Result<Value, u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let frame = tokio::time::timeout(within, socket.next())
            .await
            .expect("a message or a close in time");
        match frame {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => {
                return Err(frame.map_or(1005, |f| u16::from(f.code)));
            }
            Some(Ok(_)) => continue,
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_gets_messages_live_beside_an_event_stream_and_as_push_once_gone() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let WithPush {
        app,
        smtp,
        fcm,
        notifier,
    } = with_push("websocket", &[]).await;
    let user = Uuid::new_v4();
    let bob = user.to_string();
    post(&app, &registered(user, "bob@example.com", "Bob", "en")).await;
    smtp.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(device(&notifier.base, &bob, "bob-phone").await, 201);
    let bearer = token(&bob, &["user"]);

    // No token, or a forged one: the upgrade is refused with a 401 problem, before 101.
    for bad in [
        None,
        Some("not.a.token"),
        Some(&*token(&bob, &["user"]).replace('.', "x")),
    ] {
        let refused = websocket(&notifier.base, bad).await.unwrap_err();
        assert_eq!(refused.status(), 401, "{bad:?}");
        assert_eq!(
            refused.headers()["content-type"],
            "application/problem+json",
            "{bad:?}"
        );
    }

    let message = |body: &str| {
        json!({"type": "message.sent", "data": {
            "message_id": Uuid::new_v4(), "conversation_id": "c-socket",
            "recipient_id": bob, "body": body
        }})
    };
    // A WebSocket and an event stream of the same user: both get the message, no push.
    let mut phone = websocket(&notifier.base, Some(&bearer)).await.unwrap();
    let mut laptop = LiveStream::open(&notifier.base, &bob).await;
    wait_for_streams(&notifier, 2.0).await;
    let live = post(&app, &message("Lunch at noon?")).await;
    let expected = json!({"event_id": live.to_string(), "event_type": "message.sent",
                          "title": "New message", "body": "Lunch at noon?"});
    assert_eq!(
        socket_next(&mut phone, Duration::from_secs(60)).await,
        Ok(expected.clone())
    );
    assert_eq!(laptop.next(Duration::from_secs(60)).await.1, expected);

    // A binary frame and an oversized one each close their own socket with a protocol
    // error; the service and the user's other connections go on.
    let mut binary = websocket(&notifier.base, Some(&bearer)).await.unwrap();
    binary.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(
        socket_next(&mut binary, Duration::from_secs(10)).await,
        Err(1003)
    );
    let mut oversized = websocket(&notifier.base, Some(&bearer)).await.unwrap();
    oversized
        .send(Message::text("x".repeat(64 * 1024)))
        .await
        .unwrap();
    assert_eq!(
        socket_next(&mut oversized, Duration::from_secs(10)).await,
        Err(1009)
    );
    // Text and pings from the client are read and let be.
    phone.send(Message::text("hello?")).await.unwrap();
    phone
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    wait_for_streams(&notifier, 2.0).await;
    let second = post(&app, &message("Still on?")).await;
    assert_eq!(
        socket_next(&mut phone, Duration::from_secs(60))
            .await
            .unwrap()["event_id"],
        second.to_string()
    );
    assert_eq!(
        laptop.next(Duration::from_secs(60)).await.0,
        second.to_string()
    );

    // An upgrade to something else than a WebSocket (curl --http2 offers h2c) gets the
    // event stream; a WebSocket upgrade without its key is a 400 problem.
    let h2c = client()
        .get(format!("{}/api/v1/stream", notifier.base))
        .bearer_auth(&bearer)
        .header("upgrade", "h2c")
        .send()
        .await
        .unwrap();
    assert_eq!(h2c.status(), 200);
    assert_eq!(h2c.headers()["content-type"], "text/event-stream");
    drop(h2c);
    let keyless = client()
        .get(format!("{}/api/v1/stream", notifier.base))
        .bearer_auth(&bearer)
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .send()
        .await
        .unwrap();
    assert_eq!(keyless.status(), 400);
    assert_eq!(
        keyless.headers()["content-type"],
        "application/problem+json"
    );
    wait_for_streams(&notifier, 2.0).await;

    // Eight streams per user, of both kinds together: the ninth is refused with 429.
    let mut more = Vec::new();
    for _ in 0..6 {
        more.push(websocket(&notifier.base, Some(&bearer)).await.unwrap());
    }
    let refused = websocket(&notifier.base, Some(&bearer)).await.unwrap_err();
    assert_eq!(refused.status(), 429);
    drop(more);

    // Gone from both: the next message goes as push, and only as push.
    phone.close(None).await.unwrap();
    drop(phone);
    drop(laptop);
    wait_for_streams(&notifier, 0.0).await;
    let pushed = post(&app, &message("Call me")).await;
    settled_as(
        &notifier.base,
        pushed,
        ["channel", "status", "detail"],
        &[
            ("live", "skipped", "not connected: sent as push"),
            ("push", "sent", ""),
        ],
    )
    .await;
    let sends = fcm.sends();
    assert_eq!(
        sends.len(),
        1,
        "only the message sent while away was pushed"
    );
    assert_eq!(sends[0]["message"]["data"]["event_id"], pushed.to_string());
    settled_as(
        &notifier.base,
        live,
        ["channel", "status", "provider"],
        &[("live", "sent", "stream")],
    )
    .await;

    // Shutdown closes an open socket with 1001 (going away), and the process exits cleanly.
    let mut last = websocket(&notifier.base, Some(&bearer)).await.unwrap();
    wait_for_streams(&notifier, 1.0).await;
    let closed = tokio::spawn(async move { socket_next(&mut last, Duration::from_secs(30)).await });
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");
    assert_eq!(closed.await.unwrap(), Err(1001));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_reaches_the_orders_customer_and_a_campaign_only_opted_in_users_until_they_unsubscribe()
 {
    let WithPush {
        app,
        smtp,
        fcm,
        notifier,
    } = with_push(
        "campaign",
        &[
            ("NOTIFY_RECIPIENT_GRACE_SECS", "2"),
            ("NOTIFY_PUBLIC_URL", "https://api.example.com"),
        ],
    )
    .await;
    let (fan, skeptic) = (Uuid::new_v4(), Uuid::new_v4());
    let (fan_id, skeptic_id) = (fan.to_string(), skeptic.to_string());
    post(&app, &registered(fan, "fan@example.com", "Fan", "en")).await;
    post(
        &app,
        &registered(skeptic, "skeptic@example.com", "Sk", "en"),
    )
    .await;
    smtp.wait_for(2, Duration::from_secs(60)).await;
    assert_eq!(device(&notifier.base, &fan_id, "fan-phone").await, 201);
    assert_eq!(
        device(&notifier.base, &skeptic_id, "skeptic-phone").await,
        201
    );
    let pushes_to = |token: &str| {
        fcm.sends()
            .iter()
            .filter(|s| s["message"]["token"] == token)
            .map(|s| {
                s["message"]["notification"]["title"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };

    // order.shipped names no customer: the order.placed before it did.
    post(
        &app,
        &json!({"type": "order.placed", "data": {
            "order_id": "o-ship-1", "customer_id": fan_id,
            "items": [{"sku": "tea-01", "quantity": 1, "unit_price_cents": 450}],
            "total_cents": 450, "currency": "EUR"
        }}),
    )
    .await;
    let shipped = |order: &str| {
        json!({"type": "order.shipped", "data": {
            "order_id": order, "carrier": "DHL", "tracking_number": "JD01",
            "shipped_at": "2026-11-22T09:30:00Z"
        }})
    };
    let ship = post(&app, &shipped("o-ship-1")).await;
    settled_as(
        &notifier.base,
        ship,
        ["channel", "status", "recipient"],
        &[(
            "push",
            "sent",
            &format!(
                "{fan_id}/{}",
                notifications::delivery::device_id("fan-phone")
            ),
        )],
    )
    .await;
    // Both may go in one batch, whose sends run side by side: in either order.
    let mut pushed = pushes_to("fan-phone");
    pushed.sort();
    assert_eq!(pushed, ["Order received", "Your order is on its way"]);
    // An order never placed: skipped at once (its order.placed would have come first).
    let lost = post(&app, &shipped("o-never-placed")).await;
    settled_as(
        &notifier.base,
        lost,
        ["channel", "status", "detail"],
        &[("push", "skipped", "unknown order o-never-placed")],
    )
    .await;

    // The fan opts in to promotional email and push; the skeptic does not.
    let (status, _) = preferences(
        &notifier.base,
        &fan_id,
        Some(json!({"promotional": {"email": true, "push": true}})),
    )
    .await;
    assert_eq!(status, 200);
    let campaign = |id: &str, channels: Value| {
        json!({"type": "campaign.launched", "data": {
            "campaign_id": id, "name": id, "subject": "20% off",
            "body": "Everything is 20% off until Sunday.", "channels": channels
        }})
    };
    let first = post(&app, &campaign("spring", json!(["email"]))).await;
    // Two welcomes, the receipt, the offer.
    let received = smtp.wait_for(4, Duration::from_secs(60)).await;
    settled_as(
        &notifier.base,
        first,
        ["channel", "status", "recipient"],
        &[("email", "sent", &fan_id)],
    )
    .await;
    let offer = received.iter().find(|m| m.subject == "20% off").unwrap();
    assert_eq!(offer.rcpt_tos, ["fan@example.com"]);
    let link = offer
        .content
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: <"))
        .and_then(|l| l.strip_suffix('>'))
        .expect("a List-Unsubscribe header")
        .to_string();
    assert!(
        offer
            .content
            .contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{}",
        offer.content
    );
    let path = link
        .strip_prefix("https://api.example.com")
        .expect("the link is on the public URL");
    assert!(offer.text.as_deref().unwrap().contains(&link), "{offer:?}");
    assert!(
        pushes_to("fan-phone").len() == 2,
        "the campaign named email only"
    );

    // One click (what a mail client sends), no login; a forged link is refused.
    let forged = client()
        .post(format!(
            "{}/api/v1/unsubscribe/eyJhbGciOiJIUzI1NiJ9.e30.x",
            notifier.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 404);
    let page = client()
        .get(format!("{}{path}", notifier.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<form method=\"post\""));
    let (_, still) = preferences(&notifier.base, &fan_id, None).await;
    assert_eq!(still["promotional"]["email"], true, "a GET changes nothing");
    let clicked = client()
        .post(format!("{}{path}", notifier.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(clicked.status(), 200);
    let (_, now) = preferences(&notifier.base, &fan_id, None).await;
    assert_eq!(
        now["promotional"],
        json!({"email": false, "push": true, "sms": false})
    );

    // The next campaign: push to the fan only; no email to anyone, nothing to the skeptic.
    let second = post(&app, &campaign("summer", json!(["email", "push"]))).await;
    settled_as(
        &notifier.base,
        second,
        ["channel", "status", "detail"],
        &[
            (
                "email",
                "skipped",
                "the user has not opted in to promotional email",
            ),
            ("push", "sent", ""),
        ],
    )
    .await;
    assert_eq!(
        pushes_to("fan-phone"),
        ["Order received", "Your order is on its way", "20% off"]
    );
    assert!(pushes_to("skeptic-phone").is_empty());
    assert_eq!(smtp.received().len(), 4);
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ios_devices_are_pushed_through_apns_and_an_ios_app_on_fcm_through_fcm() {
    let apns = support::apns::ApnsStandIn::start().await;
    let apns_env = apns.env();
    let extra: Vec<(&str, &str)> = apns_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let WithPush {
        app,
        smtp,
        fcm,
        notifier,
    } = with_push("apns", &extra).await;
    let user = Uuid::new_v4();
    let me = user.to_string();
    post(&app, &registered(user, "ios@example.com", "Io", "en")).await;
    smtp.wait_for(1, Duration::from_secs(60)).await;
    let iphone = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let old_ipad = "dead0000a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071829300000";
    let ios_on_fcm = "fcm-ios:APA91bHun4MxP5egoKMwt2KZFBaFUH";
    for (token_value, platform) in [(iphone, "ios"), (old_ipad, "ios"), (ios_on_fcm, "ios")] {
        assert_eq!(
            device_on(&notifier.base, &me, token_value, platform).await,
            201
        );
    }
    let placed = post(
        &app,
        &json!({"type": "order.placed", "data": {
            "order_id": "o-ios-1", "customer_id": me,
            "items": [{"sku": "tea-01", "quantity": 2, "unit_price_cents": 450}],
            "total_cents": 900, "currency": "EUR"
        }}),
    )
    .await;
    settled_as(
        &notifier.base,
        placed,
        ["channel", "status", "provider"],
        &[
            ("email", "sent", "smtp"),
            ("push", "failed", ""),
            ("push", "sent", "apns"),
            ("push", "sent", "fcm"),
        ],
    )
    .await;
    let sends = apns.sends();
    assert_eq!(sends.len(), 2, "{sends:?}");
    let to_iphone = sends.iter().find(|s| s["device"] == iphone).unwrap();
    assert_eq!(
        to_iphone["payload"]["aps"]["alert"],
        json!({"title": "Order received", "body": "Order o-ios-1: 9.00 EUR"})
    );
    assert_eq!(to_iphone["payload"]["event_id"], placed.to_string());
    assert_eq!(to_iphone["priority"], "10");
    assert_eq!(
        to_iphone["collapse_id"], to_iphone["payload"]["herald_delivery"],
        "a repeat replaces the first on the device"
    );
    let fcm_sends = fcm.sends();
    assert_eq!(fcm_sends.len(), 1);
    assert_eq!(fcm_sends[0]["message"]["token"], ios_on_fcm);

    // APNs said the iPad's token is gone: the next order skips it.
    let second = post(
        &app,
        &json!({"type": "order.placed", "data": {
            "order_id": "o-ios-2", "customer_id": me,
            "items": [{"sku": "tea-01", "quantity": 1, "unit_price_cents": 450}],
            "total_cents": 450, "currency": "EUR"
        }}),
    )
    .await;
    settled_as(
        &notifier.base,
        second,
        ["channel", "status", "provider"],
        &[
            ("email", "sent", "smtp"),
            ("push", "sent", "apns"),
            ("push", "sent", "fcm"),
        ],
    )
    .await;
    assert_eq!(fcm.sends().len(), 2);
    let sends = apns.sends();
    assert_eq!(sends.len(), 3, "{sends:?}");
    assert_eq!(sends[2]["device"], iphone);
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

/// An event whose recipient is not known yet waits aside: the messages of everyone else in
/// its partitions go on at once instead of after the recipient grace (60 s), and once the
/// user is known each of its messages is sent, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_an_unknown_recipient_wait_aside_and_delay_no_one_else() {
    let app = TestIngress::start_default().await;
    let smtp = SmtpServer::start("parked").await;
    let db = sqlite_url("parked");
    let notifier = HeraldProcess::start(
        "notifications",
        &app.kafka,
        &db,
        &[("SMTP_URL", &smtp.url())],
    )
    .await;
    let address = |user: Uuid| format!("p.{}@example.com", user.simple());
    let known: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for user in &known {
        post(&app, &registered(*user, &address(*user), "Known", "en")).await;
    }
    smtp.wait_for(known.len(), Duration::from_secs(60)).await;
    let unknown = Uuid::new_v4();
    let order = |n: usize, customer: Uuid| {
        json!({"type": "order.placed", "data": {
            "order_id": format!("o-parked-{n}-{}", customer.simple()), "customer_id": customer.to_string(),
            "items": [{"sku": "tea-01", "quantity": 1, "unit_price_cents": 450}],
            "total_cents": 450, "currency": "EUR"
        }})
    };
    // 50 orders of the unknown user interleaved with 50 of known users, over every partition.
    let events: Vec<Value> = (0..50)
        .flat_map(|n| [order(n, unknown), order(n, known[n % known.len()])])
        .collect();
    let started = std::time::Instant::now();
    let response = app.post(&publisher(), &json!({ "events": events })).await;
    assert_eq!(response.status(), 202);
    let received = smtp
        .wait_for(known.len() + 50, Duration::from_secs(50))
        .await;
    let took = started.elapsed();
    let counts = by_recipient(&received);
    for user in &known {
        assert_eq!(
            counts.get(&address(*user)),
            Some(&11),
            "a welcome and 10 receipts"
        );
    }
    assert!(
        took < Duration::from_secs(30),
        "the known users' receipts waited {took:?}"
    );
    assert_eq!(counts.get(&address(unknown)), None);
    // Once the user is known, the parked orders run: each receipt once.
    post(&app, &registered(unknown, &address(unknown), "Late", "en")).await;
    let received = smtp
        .wait_for(known.len() + 50 + 51, Duration::from_secs(60))
        .await;
    let counts = by_recipient(&received);
    assert_eq!(
        counts.get(&address(unknown)),
        Some(&51),
        "a welcome and 50 receipts"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        smtp.received().len(),
        known.len() + 50 + 51,
        "nothing twice"
    );
    let (status, _) = notifier.terminate().await;
    assert!(status.success(), "{status}");
    app.stop().await;
}

/// Two replicas of the notifications service in one consumer group, sharing PostgreSQL and
/// Redis: a user connected to one gets every live message, whichever replica handles it, and
/// no push; once their stream is closed everywhere, the next message goes as push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_message_reaches_the_users_stream_on_whichever_replica_handles_it() {
    let redis = std::env::var("REDIS_URL")
        .expect("REDIS_URL must point at a Redis server: run infra/scripts/test.sh");
    let app = TestIngress::start_default().await;
    let smtp = SmtpServer::start("replicas").await;
    let fcm = support::fcm::FcmStandIn::start().await;
    let account = fcm.service_account_file();
    let db = support::audit::fresh_postgres().await;
    let smtp_url = smtp.url();
    let env = [
        ("SMTP_URL", smtp_url.as_str()),
        ("FCM_SERVICE_ACCOUNT_FILE", account.as_str()),
        ("FCM_ENDPOINT", fcm.base.as_str()),
        ("REDIS_URL", redis.as_str()),
    ];
    let one = HeraldProcess::start("notifications", &app.kafka, &db, &env).await;
    let two = HeraldProcess::start("notifications", &app.kafka, &db, &env).await;
    let user = Uuid::new_v4();
    let bob = user.to_string();
    post(
        &app,
        &registered(user, "bob-replicas@example.com", "Bob", "en"),
    )
    .await;
    smtp.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(device(&one.base, &bob, "bob-phone").await, 201);

    // Both replicas share the partitions.
    let kafka = app.kafka.clone();
    support::eventually(
        Duration::from_secs(90),
        "two members in the group",
        || async {
            let kafka = kafka.clone();
            let groups = tokio::task::spawn_blocking(move || {
                platform::kafka::groups::list(&kafka, Duration::from_secs(10)).unwrap()
            })
            .await
            .unwrap();
            let group = groups
                .iter()
                .find(|g| g.name == app.kafka.topic("notifications"));
            match group {
                Some(g) if g.members == 2 && g.state == "Stable" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // Bob's stream is on the first replica only.
    let mut stream = LiveStream::open(&one.base, &bob).await;
    wait_for_streams(&one, 1.0).await;
    let message = |conversation: &str, body: &str| {
        json!({"type": "message.sent", "key": conversation, "data": {
            "message_id": Uuid::new_v4(), "conversation_id": conversation,
            "recipient_id": bob, "body": body
        }})
    };
    // Messages in many conversations, so on many partitions: both replicas handle some.
    let mut sent = std::collections::HashSet::new();
    for i in 0..24 {
        sent.insert(
            post(&app, &message(&format!("c-{i}"), &format!("note {i}")))
                .await
                .to_string(),
        );
    }
    let mut got = std::collections::HashSet::new();
    while got.len() < sent.len() {
        let (id, _) = stream.next(Duration::from_secs(60)).await;
        assert!(got.insert(id.clone()), "{id} twice");
    }
    assert_eq!(got, sent);
    let (by_one, by_two) = (live_sent(&one).await, live_sent(&two).await);
    eprintln!(
        "live messages planned by the replica holding the stream: {by_one}, by the other: {by_two}"
    );
    assert!(
        by_two > 0.0,
        "the other replica handled none: the test proves nothing"
    );
    assert!(
        fcm.sends().is_empty(),
        "a push for a connected user: {:?}",
        fcm.sends()
    );

    // Closed everywhere: the next message goes as push, whichever replica handles it.
    drop(stream);
    wait_for_streams(&one, 0.0).await;
    post(&app, &message("c-after", "gone?")).await;
    support::eventually(Duration::from_secs(60), "a push", || async {
        if fcm.sends().len() == 1 {
            Ok(())
        } else {
            Err(fcm.sends().len())
        }
    })
    .await;
    drop((one, two));
    app.stop().await;
}

/// The live messages a replica planned and delivered, from its /metrics.
async fn live_sent(replica: &HeraldProcess) -> f64 {
    replica
        .metrics()
        .await
        .lines()
        .filter(|l| {
            l.starts_with("herald_notifications_total{")
                && l.contains("channel=\"live\"")
                && l.contains("status=\"sent\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, n| sum + n)
}
