//! Seeing a request: its trace id from the edge to the Kafka headers, its log line, its
//! metrics. Real broker, a `herald ingress` process.

mod support;

use serde_json::Value;
use support::process::HeraldProcess;

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

    // The event carries the span the response named.
    let records = support::read(&kafka, "orders").await;
    let (record, _) = records
        .iter()
        .find(|(_, d)| d.data["order_id"] == "observed")
        .expect("the event is in Kafka");
    assert_eq!(record.header("traceparent"), Some(span.as_bytes()));

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
