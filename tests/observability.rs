//! Seeing a request: its trace id from the edge to the Kafka headers, its log line, its
//! metrics, and one exported trace from the ingress through every consumer down to the SMTP
//! call. Errors and panics as Sentry events. Real broker, `herald <service>` processes, a
//! local OTLP/HTTP receiver, a real SMTP server, a stand-in for Sentry's envelope endpoint.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use platform::kafka::{OutgoingRecord, Publisher};
use serde_json::{Value, json};
use support::otlp::{OtlpReceiver, Span};
use support::process::HeraldProcess;
use support::sentry::SentryStandIn;
use support::smtp::SmtpServer;
use support::webhook::Webhook;

#[tokio::test]
async fn one_request_is_one_trace_in_the_response_the_log_the_event_and_the_metrics() {
    let kafka = support::kafka(&support::brokers().await);
    let dir = support::test_dir("observability");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("ingress.log");
    let database = format!("sqlite://{}", dir.join("unused.db").display());
    let ingress =
        HeraldProcess::start_logging("ingress", &kafka, &database, &[("RUST_LOG", "info")], &log)
            .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = support::client()
        .post(format!("{}/api/v1/events", ingress.base))
        .bearer_auth(support::token("alice", &["user"]))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("x-request-id", "req-observability-1")
        .json(&support::order("observed"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let span = response.headers()["traceresponse"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(span.starts_with(&format!("00-{trace_id}-")), "{span}");
    let refused = support::client()
        .post(format!("{}/api/v1/events", ingress.base))
        .bearer_auth(support::token("alice", &["user"]))
        .json(&serde_json::json!({"type": "order.placed", "data": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);

    // The event carries the produce span: a child of the one the response named.
    let records = support::read(&kafka, "orders").await;
    let (record, _) = records
        .iter()
        .find(|(_, d)| d.data["order_id"] == "observed")
        .expect("the event is in Kafka");
    let produce = std::str::from_utf8(record.header("traceparent").unwrap()).unwrap();
    assert!(produce.starts_with(&format!("00-{trace_id}-")), "{produce}");
    assert_ne!(produce, span);

    // Metrics by route pattern and status; the produce latency by outcome.
    let text = ingress.metrics().await;
    for series in [
        r#"herald_http_requests_total{method="POST",route="/api/v1/events",status="202"} 1"#,
        r#"herald_http_requests_total{method="POST",route="/api/v1/events",status="422"} 1"#,
        r#"herald_http_request_duration_seconds_count{method="POST",route="/api/v1/events"} 2"#,
        r#"herald_kafka_produce_seconds_count{outcome="acknowledged"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "{series} not in:\n{text}"
        );
    }
    ingress.terminate().await;

    // Logs are JSON off a terminal; the request's line carries its request id and trace id.
    let logged = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = logged
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let request = lines
        .iter()
        .find(|l| l["message"] == "request" && l["status"] == 202)
        .unwrap_or_else(|| panic!("no request line in {logged}"));
    assert_eq!(request["route"], "/api/v1/events");
    assert_eq!(request["span"]["trace_id"], trace_id);
    assert_eq!(request["span"]["request_id"], "req-observability-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_the_ingress_and_every_consumer_down_to_the_smtp_call() {
    let kafka = support::kafka(&support::brokers().await);
    let otlp = OtlpReceiver::start().await;
    let smtp = SmtpServer::start("traced").await;
    let dir = support::test_dir(&format!("otlp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = |name: &str| format!("sqlite://{}", dir.join(name).display());
    let index = dir.join("index").display().to_string();
    let smtp_url = smtp.url();
    // Logs quiet: spans are exported whatever RUST_LOG says.
    let traced = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("RUST_LOG", "error"),
    ];
    let with = |more: &[(&'static str, &str)]| {
        let mut env: Vec<(&str, String)> =
            traced.iter().map(|(k, v)| (*k, v.to_string())).collect();
        env.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
        env
    };
    let start = |service: &'static str, database: String, env: Vec<(&'static str, String)>| {
        let kafka = kafka.clone();
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            HeraldProcess::start(service, &kafka, &database, &env).await
        }
    };
    let ingress = start("ingress", sqlite("ingress.db"), with(&[])).await;
    let audit = start("audit-log", sqlite("audit.db"), with(&[])).await;
    let notifier = start(
        "notifications",
        sqlite("notifications.db"),
        with(&[("SMTP_URL", &smtp_url)]),
    )
    .await;
    let search = start(
        "search-indexer",
        "sqlite::memory:".to_string(),
        with(&[("SEARCH_INDEX_DIR", &index), ("SEARCH_COMMIT_MS", "100")]),
    )
    .await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let user = uuid::Uuid::new_v4();
    let response = support::client()
        .post(format!("{}/api/v1/events", ingress.base))
        .bearer_auth(support::token("traced", &["user", "service"]))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&json!({"type": "user.registered", "data": {
            "user_id": user, "email": format!("traced.{}@example.com", user.simple()),
            "display_name": "Traced", "locale": "en", "time_zone": "Europe/Paris"
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{:?}", response.text().await);
    assert_eq!(smtp.wait_for(1, Duration::from_secs(60)).await.len(), 1);

    let consumers = [
        "herald-audit-log",
        "herald-notifications",
        "herald-search-indexer",
    ];
    let complete = |spans: &[Span]| {
        let ours: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
        let served: HashSet<&str> = ours.iter().map(|s| s.service.as_str()).collect();
        ours.iter().any(|s| s.name == "email send")
            && served.contains("herald-ingress")
            && consumers.iter().all(|c| served.contains(c))
    };
    let spans = otlp.wait_until(Duration::from_secs(30), complete).await;
    let ours: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let find = |service: &str, kind: u64| {
        ours.iter()
            .find(|s| s.service == service && s.kind == kind)
            .unwrap_or_else(|| panic!("no span of kind {kind} from {service} in {ours:#?}"))
    };

    eprintln!(
        "{} spans in the trace: {:?}",
        ours.len(),
        ours.iter()
            .map(|s| (&s.service, &s.name))
            .collect::<Vec<_>>()
    );
    // The request: a server span, child of the caller's span; the produce span under it.
    let request = find("herald-ingress", 2);
    assert_eq!(request.name, "POST /api/v1/events");
    assert_eq!(request.parent_span_id, "b7ad6b7169203331");
    assert_eq!(
        request.attributes["http.response.status_code"],
        json!("202")
    );
    let produce = find("herald-ingress", 4);
    assert_eq!(produce.parent_span_id, request.span_id);
    // The traceresponse names the request's span.
    let traceresponse = response.headers()["traceresponse"].to_str().unwrap();
    assert_eq!(
        traceresponse,
        format!("00-{trace_id}-{}-01", request.span_id)
    );

    // Each consumer's processing is a child of the produce span, in its own process.
    for consumer in consumers {
        let process = find(consumer, 5);
        assert_eq!(process.parent_span_id, produce.span_id, "{consumer}");
        assert!(process.name.ends_with("users process"), "{}", process.name);
    }
    // Down to the SMTP call, inside the notifier's processing.
    let notify = find("herald-notifications", 5);
    let send = ours
        .iter()
        .find(|s| s.name == "email send")
        .expect("the SMTP call is a span");
    assert_eq!(send.parent_span_id, notify.span_id);
    assert_eq!(send.kind, 3);

    for process in [ingress, audit, notifier, search] {
        process.terminate().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_dead_letters_is_one_alert_and_one_summary() {
    let app = support::TestIngress::start_default().await;
    let webhook = Webhook::start().await;
    let dir = support::test_dir(&format!("dlq-alerts-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite://{}", dir.join("audit.db").display());
    let audit = HeraldProcess::start(
        "audit-log",
        &app.kafka,
        &database,
        &[
            ("ALERT_WEBHOOK_URL", &webhook.url),
            ("ALERT_WINDOW_SECS", "3"),
        ],
    )
    .await;
    let orders = app.kafka.topic("orders");
    let publisher = Publisher::new(&app.kafka, Duration::from_secs(10)).unwrap();
    let garbage: Vec<OutgoingRecord> = (0..20)
        .map(|i| OutgoingRecord {
            topic: orders.as_str().into(),
            key: format!("poison-{i}").into_bytes(),
            payload: b"\x00\x01 not avro at all".to_vec(),
            timestamp_ms: platform::clock::now_us() / 1000,
            headers: vec![],
        })
        .collect();
    publisher.publish_all(&garbage).await.unwrap();

    let texts = webhook
        .wait_for(2, Duration::from_secs(60), Duration::from_secs(4))
        .await;
    eprintln!("alerts: {texts:#?}");
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert!(
        texts[0].starts_with(&format!(
            "herald-audit-log: audit-log dead-lettered an event from {orders}. "
        )),
        "{}",
        texts[0]
    );
    assert!(
        texts[0].contains("`herald dlq list audit-log` shows it and why"),
        "{}",
        texts[0]
    );
    assert!(
        texts[1].starts_with(&format!(
            "herald-audit-log: 19 more dead letters of audit-log from {orders} in the last 3 s"
        )),
        "{}",
        texts[1]
    );
    assert_eq!(
        audit.metric("herald_consumer_dead_lettered_total").await,
        20.0
    );
    audit.terminate().await;
}

/// The trace id a request names in its `traceparent`, and the request id it sends.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REQUEST_ID: &str = "req-sentry-1";
/// What must appear in no event: the client's password, the database's, the token secret.
const CLIENT_PASSWORD: &str = "canary-Password-7731";

#[tokio::test]
async fn a_server_error_reaches_sentry_with_its_trace_release_and_environment_and_no_secret() {
    let sentry = SentryStandIn::start().await;
    let webhook = Webhook::start().await;
    let kafka = support::kafka(&support::brokers().await);
    let database = support::audit::fresh_postgres().await;
    let auth = HeraldProcess::start(
        "auth",
        &kafka,
        &database,
        &[
            ("SENTRY_DSN", &sentry.dsn),
            ("SENTRY_ENVIRONMENT", "staging"),
            ("ALERT_WEBHOOK_URL", &webhook.url),
        ],
    )
    .await;
    // The store breaks in a way nobody planned for: a fault of ours, answered 500.
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    sqlx::query("ALTER TABLE auth_accounts RENAME TO auth_accounts_gone")
        .execute(&pool)
        .await
        .unwrap();
    let answer = support::client()
        .post(format!("{}/api/v1/auth/register", auth.base))
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .header("x-request-id", REQUEST_ID)
        .json(&json!({"email": "sentry@example.com", "password": CLIENT_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 500);

    let events = sentry.wait_for_events(1, Duration::from_secs(30)).await;
    // One error, once: nothing else in the process logged at ERROR.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let envelopes = sentry.envelopes();
    for envelope in &envelopes {
        eprintln!(
            "envelope to project {} ({}): {:#}, items {:#?}",
            envelope.project, envelope.auth, envelope.header, envelope.items
        );
    }
    assert_eq!(sentry.events().len(), 1, "{events:#?}");
    let event = &events[0];
    assert!(is_error(event), "{event}");
    assert_eq!(
        event["release"],
        format!("herald@{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(event["environment"], "staging");
    assert_eq!(event["tags"]["service"], "herald-auth");
    assert_eq!(event["tags"]["trace_id"], TRACE_ID, "links to its trace");
    assert_eq!(
        event["contexts"]["trace"]["trace_id"], TRACE_ID,
        "Sentry's own trace too"
    );
    assert_eq!(event["tags"]["request_id"], REQUEST_ID);
    assert_eq!(event["logger"], "platform::problem");
    let text = event.to_string();
    assert!(text.contains("internal error"), "{text}");
    assert!(text.contains("auth_accounts"), "the cause is there: {text}");
    let envelope = &envelopes[0];
    assert_eq!(envelopes.len(), 1);
    // The same id, hyphenated in the envelope's header and not in the event.
    assert_eq!(
        envelope.header["event_id"]
            .as_str()
            .unwrap()
            .replace('-', ""),
        event["event_id"].as_str().unwrap()
    );
    assert_eq!(
        envelope.items.len(),
        1,
        "the event alone: no session, no attachment"
    );
    assert_eq!(envelope.items[0].0["type"], "event");
    assert_eq!(envelope.project, "42");
    assert!(envelope.auth.starts_with("Sentry "), "{}", envelope.auth);
    assert!(
        envelope.auth.contains("sentry_key=herald-key"),
        "{}",
        envelope.auth
    );
    for envelope in &envelopes {
        let raw = String::from_utf8_lossy(&envelope.raw);
        for secret in [CLIENT_PASSWORD, support::SECRET, "herald:herald@"] {
            assert!(!raw.contains(secret), "{secret} reached sentry: {raw}");
        }
    }
    // The alert webhook stays, beside it.
    let alerts = webhook
        .wait_for(1, Duration::from_secs(30), Duration::from_millis(200))
        .await;
    assert!(
        alerts[0].contains("500 on POST /api/v1/auth/register"),
        "{alerts:?}"
    );
    auth.terminate().await;
}

/// Sentry leaves out `level` when it is `error`, its default.
fn is_error(event: &Value) -> bool {
    event.get("level").is_none_or(|level| level == "error")
}

/// Set in the child process of the panic test: it runs the scenario, the parent checks it.
const PANIC_CHILD: &str = "HERALD_TEST_SENTRY_PANIC_CHILD";

#[tokio::test]
async fn a_panic_reaches_sentry_with_its_trace_and_its_secrets_cut_out() {
    let sentry = SentryStandIn::start().await;
    // The telemetry is the process's: a child process of this test binary sets it up.
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sentry_panic_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(PANIC_CHILD, "1")
        .env("SENTRY_DSN", &sentry.dsn)
        .env("SENTRY_ENVIRONMENT", "ci")
        .env("SENTRY_RELEASE", "herald@test")
        .output()
        .await
        .unwrap();
    assert!(
        child.status.success(),
        "{}",
        String::from_utf8_lossy(&child.stderr)
    );
    let events = sentry.wait_for_events(2, Duration::from_secs(10)).await;
    eprintln!("events: {events:#?}");
    assert_eq!(events.len(), 2, "the panic, and the error logged after it");
    let panic = events
        .iter()
        .find(|e| e["exception"]["values"][0]["mechanism"]["type"] == "panic")
        .expect("a panic event");
    assert_eq!(panic["level"], "fatal");
    assert_eq!(panic["release"], "herald@test");
    assert_eq!(panic["environment"], "ci");
    assert_eq!(panic["tags"]["service"], "reports");
    assert_eq!(panic["tags"]["trace_id"], TRACE_ID);
    assert_eq!(
        panic["exception"]["values"][0]["value"],
        "cannot reach postgres://herald:[redacted]@db:5432/herald"
    );
    let error = events.iter().find(|e| is_error(e)).expect("an error event");
    assert_eq!(error["tags"]["trace_id"], TRACE_ID);
    let fields = error.to_string();
    assert!(
        !fields.contains("123456"),
        "the OTP field is redacted: {fields}"
    );
    assert!(fields.contains("[redacted]"), "{fields}");
    assert!(fields.contains("order-17"), "other fields stay: {fields}");
    for envelope in sentry.envelopes() {
        let raw = String::from_utf8_lossy(&envelope.raw);
        assert!(!raw.contains("hunter2"), "{raw}");
    }
}

/// The child of the test above: a panic and an error inside a traced span, with secrets in
/// them. Run alone (without its variable) it does nothing.
#[test]
fn sentry_panic_child() {
    if std::env::var(PANIC_CHILD).is_err() {
        return;
    }
    platform::telemetry::init("reports");
    let span = tracing::info_span!("batch", trace_id = TRACE_ID);
    let panicked = std::thread::spawn(move || {
        let _inside = span.enter();
        std::panic::catch_unwind(|| {
            panic!("cannot reach postgres://herald:hunter2@db:5432/herald");
        })
        .unwrap_err();
        tracing::error!(otp_code = "123456", order = "order-17", "handler gave up");
    })
    .join();
    assert!(panicked.is_ok());
    platform::telemetry::shutdown();
}
