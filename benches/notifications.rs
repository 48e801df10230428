//! Notifications against a real SMTP server on loopback (aiosmtpd, `tests/support/smtp_server.py`),
//! with the real `herald ingress` and `herald notifications` processes:
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench notifications
//!
//! 1. throughput: BENCH_EMAILS (5,000) `user.registered` events posted first, then
//!    `herald notifications` started on the backlog: welcome emails per second accepted by the
//!    server, from the first to the last;
//! 2. latency: with the service caught up, `user.registered` posted at the ingress at
//!    BENCH_RATE (100) events/s for BENCH_SECONDS (20), open loop (each request at its planned
//!    time, whatever the previous answers): time from the POST being sent to the SMTP server
//!    accepting the email, p50/p99/max.
//!
//! 3. scaling, on PostgreSQL (TEST_POSTGRES_URL): a backlog of BENCH_EMAILS drained by one
//!    process, then another backlog (topics and database of its own) by two processes in one
//!    consumer group, which share the partitions; emails per second from the first to the
//!    last, and the processes' CPU per email.
//!
//! The store of 1 and 2 is the SQLite default (set DATABASE_URL for PostgreSQL). Both clocks
//! are the machine's wall clock.

mod common;

use common::{
    SECRET, Smtp, cpu_seconds, herald, ingress_on, peak_rss_mb, percentile, setting, topic_prefix,
    wall,
};

use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

fn registered(email: &str) -> Value {
    json!({"type": "user.registered", "data": {
        "user_id": Uuid::new_v4(), "email": email, "display_name": "Bench"
    }})
}

/// `emails` user.registered events for `{tag}{n}@example.com`, in batches of 100.
async fn post_backlog(
    client: &reqwest::Client,
    ingress: &str,
    token: &str,
    tag: &str,
    emails: usize,
) {
    for chunk in (0..emails).collect::<Vec<_>>().chunks(100) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|i| registered(&format!("{tag}{i}@example.com")))
            .collect();
        let response = client
            .post(format!("{ingress}/api/v1/events"))
            .bearer_auth(token)
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let emails = setting("BENCH_EMAILS", 5000) as usize;
    let rate = setting("BENCH_RATE", 100);
    let seconds = setting("BENCH_SECONDS", 20);
    let prefix = topic_prefix("nbench");
    let dir = std::env::temp_dir().join(format!("herald-bench-notify-{}", &prefix[..14]));
    std::fs::create_dir_all(&dir).unwrap();

    let smtp = Smtp::start(&dir).await;
    let smtp_url = smtp.url.clone();

    let (_ingress, ingress, common) = ingress_on(brokers.as_str(), &prefix).await;
    let token = platform::auth::mint_hs256(
        &SecretString::from(SECRET),
        "bench",
        &["service".to_string()],
        "herald",
        "herald",
        Duration::from_secs(3600),
    )
    .unwrap();
    let client = reqwest::Client::new();

    // 1. The backlog, then the service on it.
    let started = Instant::now();
    post_backlog(&client, &ingress, &token, "b", emails).await;
    println!(
        "backlog: {emails} user.registered events posted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let database = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.join("notify.db").display()));
    let mut env = common.to_vec();
    env.extend([
        ("SMTP_URL", smtp_url.as_str()),
        ("DATABASE_URL", database.as_str()),
    ]);
    let started = Instant::now();
    let (notifier, _) = herald("notifications", &env).await;
    let pid = notifier.id().unwrap();
    let got = smtp.wait_for(emails, Duration::from_secs(600)).await;
    let total = started.elapsed().as_secs_f64();
    let first = got.iter().map(|(_, at)| *at).fold(f64::MAX, f64::min);
    let last = got.iter().map(|(_, at)| *at).fold(0.0, f64::max);
    let mut distinct: Vec<&String> = got.iter().map(|(to, _)| to).collect();
    distinct.sort();
    distinct.dedup();
    println!(
        "throughput: {} emails accepted ({} distinct) of {emails}; {:.2} s from process start \
         ({:.0} emails/s), {:.2} s first to last ({:.0} emails/s); peak RSS {:.1} MB",
        got.len(),
        distinct.len(),
        total,
        got.len() as f64 / total,
        last - first,
        got.len() as f64 / (last - first).max(0.001),
        peak_rss_mb(pid)
    );

    // 2. Open-loop latency at `rate` events/s.
    let n = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut sent = Vec::with_capacity(n);
    let mut requests = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let body = registered(&format!("l{i}@example.com"));
        sent.push(wall());
        let request = client
            .post(format!("{ingress}/api/v1/events"))
            .bearer_auth(&token)
            .json(&body)
            .send();
        requests.push(tokio::spawn(async move {
            request.await.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    let mut rejected = 0;
    for request in requests {
        if request.await.unwrap() != 202 {
            rejected += 1;
        }
    }
    let got = smtp.wait_for(emails + n, Duration::from_secs(120)).await;
    let mut latencies: Vec<f64> = got
        .iter()
        .filter_map(|(to, at)| {
            let i: usize = to.strip_prefix('l')?.split('@').next()?.parse().ok()?;
            Some((at - sent[i]) * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    println!(
        "latency at {rate} events/s for {seconds} s: {} of {n} emails ({rejected} POSTs not 202); \
         POST to SMTP acceptance p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
    drop(notifier);

    // 3. Scaling from one process to two.
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(admin) => {
            for processes in [1, 2] {
                let database = common::fresh_postgres(&admin).await;
                scaling(&brokers, &smtp, &token, &database, emails, processes).await;
            }
        }
        Err(_) => println!("scaling: skipped (TEST_POSTGRES_URL unset)"),
    }
    drop(smtp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A backlog of `emails` on topics of its own, drained by `processes` notification processes
/// in one group on `database`.
async fn scaling(
    brokers: &str,
    smtp: &Smtp,
    token: &str,
    database: &str,
    emails: usize,
    processes: usize,
) {
    let prefix = topic_prefix("nbench");
    let (_ingress, ingress, common) = ingress_on(brokers, &prefix).await;
    let client = reqwest::Client::new();
    let tag = format!("s{processes}-{}-", &prefix[6..14]);
    post_backlog(&client, &ingress, token, &tag, emails).await;
    let before = smtp.accepted().len();
    let mut env = common.to_vec();
    env.extend([("SMTP_URL", smtp.url.as_str()), ("DATABASE_URL", database)]);
    let mut notifiers = Vec::new();
    for _ in 0..processes {
        notifiers.push(herald("notifications", &env).await.0);
    }
    let got = smtp
        .wait_for(before + emails, Duration::from_secs(600))
        .await;
    let cpu: f64 = notifiers.iter().map(|n| cpu_seconds(n.id().unwrap())).sum();
    let times: Vec<f64> = got
        .iter()
        .filter(|(to, _)| to.starts_with(&tag))
        .map(|(_, at)| *at)
        .collect();
    let first = times.iter().copied().fold(f64::MAX, f64::min);
    let last = times.iter().copied().fold(0.0, f64::max);
    println!(
        "scaling, PostgreSQL, {processes} process{} in one group: {} of {emails} emails, \
         {:.2} s first to last ({:.0} emails/s), {:.0} µs of their CPU per email",
        if processes == 1 { "" } else { "es" },
        times.len(),
        last - first,
        times.len() as f64 / (last - first).max(0.001),
        cpu * 1e6 / times.len().max(1) as f64
    );
}
