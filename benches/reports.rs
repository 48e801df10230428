//! Reports against the real `herald ingress` and `herald reports` processes:
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench reports
//!
//! 1. aggregation: BENCH_EVENTS (200,000) events posted first (batches of 500, batch b posted by
//!    user b mod 1,000), their `occurred_at` spread over the ISO week 2026-W46: nine in ten
//!    `order.placed` in five currencies, one in ten `user.registered`. Then `herald reports`
//!    is started on the backlog: events aggregated per second, until its consumer has
//!    processed them all;
//! 2. the weekly report over them: `herald reports run weekly-performance --period 2026-W46`
//!    timed from the command's start to its exit (process start and connections included),
//!    and its CSV checked against the counts of what was posted.
//!
//! 3. scaling, on PostgreSQL (TEST_POSTGRES_URL): another backlog of BENCH_EVENTS (topics and
//!    database of its own) aggregated by one process, then another by two processes in one
//!    consumer group, which share the partitions.
//!
//! The store of 1 and 2 is the SQLite default (set DATABASE_URL for PostgreSQL).

mod common;

use common::{HERALD, herald, ingress_on, peak_rss_mb, post_batches, setting, token, topic_prefix};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

const USERS: usize = 1_000;
const CURRENCIES: [&str; 5] = ["EUR", "USD", "GBP", "JPY", "CHF"];
/// 2026-W46 starts on Monday 2026-11-09, 00:00 UTC.
const WEEK_START: i64 = 1_794_182_400;
const WEEK: i64 = 7 * 24 * 3600;

/// Event `n` of `total`, and what it adds to the expected figures.
fn event(n: usize, total: usize, expected: &mut BTreeMap<(String, String), (u64, u64)>) -> Value {
    let at = WEEK_START + (n as i64 * WEEK) / total as i64;
    let occurred_at = jiff::Timestamp::from_second(at).unwrap().to_string();
    let mut add = |metric: &str, key: &str, sum: u64| {
        let entry = expected
            .entry((metric.to_string(), key.to_string()))
            .or_default();
        entry.0 += 1;
        entry.1 += sum;
    };
    if n.is_multiple_of(10) {
        add("events", "user.registered", 0);
        add("signups", "", 0);
        json!({"type": "user.registered", "occurred_at": occurred_at, "data": {
            "user_id": Uuid::new_v4(), "email": format!("u{n}@example.com"),
            "display_name": "U", "locale": "en", "time_zone": "UTC"
        }})
    } else {
        let currency = CURRENCIES[n % CURRENCIES.len()];
        let cents = 100 + (n % 900) as u64;
        add("events", "order.placed", 0);
        add("orders", currency, cents);
        json!({"type": "order.placed", "key": format!("o-{n}"), "occurred_at": occurred_at,
        "data": {
            "order_id": format!("o-{n}"), "customer_id": format!("c-{}", n % USERS),
            "items": [{"sku": "tea-01", "quantity": 1, "unit_price_cents": cents}],
            "total_cents": cents, "currency": currency
        }})
    }
}

/// Waits until the processes behind `bases` have processed `total` events together; seconds
/// from `started` to then, and to the first one.
async fn aggregated(
    client: &reqwest::Client,
    bases: &[String],
    total: usize,
    started: Instant,
) -> (f64, f64) {
    let mut first = None;
    loop {
        let mut processed = 0.0;
        for base in bases {
            processed += metric(client, base, "herald_consumer_processed_total").await;
        }
        if processed > 0.0 && first.is_none() {
            first = Some(started.elapsed().as_secs_f64());
        }
        if processed as usize >= total {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "aggregation stalled at {processed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (started.elapsed().as_secs_f64(), first.unwrap_or(0.0))
}

/// Another backlog of `total` events on topics of its own, aggregated by `processes`
/// processes in one group on `database`.
async fn scaling(brokers: &str, schedule: &str, database: &str, total: usize, processes: usize) {
    let prefix = topic_prefix("rbench");
    let (_ingress, ingress, common) = ingress_on(brokers, &prefix).await;
    let client = reqwest::Client::new();
    let tokens = user_tokens();
    let mut expected = BTreeMap::new();
    let batches = backlog(total, &mut expected);
    post_batches(&client, &ingress, &batches, |b| tokens[b % USERS].clone()).await;
    let mut env = common.to_vec();
    env.extend([
        ("DATABASE_URL", database),
        ("REPORTS_FILE", schedule),
        ("REPORTS_CATCH_UP_HOURS", "1"),
    ]);
    let started = Instant::now();
    let mut running = Vec::new();
    for _ in 0..processes {
        running.push(herald("reports", &env).await);
    }
    let bases: Vec<String> = running.iter().map(|(_, base)| base.clone()).collect();
    let (took, first) = aggregated(&client, &bases, total, started).await;
    let cpu: f64 = running
        .iter()
        .map(|(child, _)| common::cpu_seconds(child.id().unwrap()))
        .sum();
    println!(
        "scaling, PostgreSQL, {processes} process{} in one group: {total} events aggregated \
         {took:.1} s after the first start ({:.0} events/s; {:.0} events/s from the first one); \
         CPU {cpu:.1} s",
        if processes == 1 { "" } else { "es" },
        total as f64 / took,
        total as f64 / (took - first),
    );
}

/// A token for each of the users who post the backlog.
fn user_tokens() -> Vec<String> {
    (0..USERS)
        .map(|u| token(&format!("u-{u}"), "service"))
        .collect()
}

/// `total` events in batches of 500, adding what they make to `expected`.
fn backlog(total: usize, expected: &mut BTreeMap<(String, String), (u64, u64)>) -> Vec<Value> {
    (0..total)
        .collect::<Vec<_>>()
        .chunks(500)
        .map(|chunk| {
            let events: Vec<Value> = chunk.iter().map(|n| event(*n, total, expected)).collect();
            json!({ "events": events })
        })
        .collect()
}

async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let total = setting("BENCH_EVENTS", 200_000) as usize;
    let prefix = topic_prefix("rbench");
    let dir = std::env::temp_dir().join(format!("herald-bench-reports-{}", &prefix[..14]));
    std::fs::create_dir_all(&dir).unwrap();
    let schedule = dir.join("reports.toml");
    std::fs::write(
        &schedule,
        "[[report]]\nname = 'weekly-performance'\ntitle = 'Weekly performance'\n\
         cron = '0 3 * * mon'\ncovers = 'week'\nrecipients = ['ops@example.com']\n",
    )
    .unwrap();
    let schedule = schedule.display().to_string();
    let database = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.join("reports.db").display()));
    let (_ingress, ingress, common) = ingress_on(brokers.as_str(), &prefix).await;
    let client = reqwest::Client::new();
    let tokens = user_tokens();

    // 1. The backlog, then the aggregating consumer on it.
    let started = Instant::now();
    let mut expected = BTreeMap::new();
    let batches = backlog(total, &mut expected);
    // Batch b is posted by user b % USERS.
    let users = batches.len().min(USERS) as u64;
    post_batches(&client, &ingress, &batches, |b| tokens[b % USERS].clone()).await;
    println!(
        "backlog: {total} events over 2026-W46 posted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut env = common.to_vec();
    env.extend([
        ("DATABASE_URL", database.as_str()),
        ("REPORTS_FILE", schedule.as_str()),
        ("REPORTS_CATCH_UP_HOURS", "1"),
    ]);
    let started = Instant::now();
    let (reports, base) = herald("reports", &env).await;
    let pid = reports.id().unwrap();
    let (took, first) = aggregated(&client, std::slice::from_ref(&base), total, started).await;
    println!(
        "aggregation: {total} events aggregated {took:.1} s after process start ({:.0} events/s; \
         {:.0} events/s from the first one, {first:.1} s in); peak RSS {:.1} MB",
        total as f64 / took,
        total as f64 / (took - first),
        peak_rss_mb(pid)
    );

    // 2. The weekly report over them, by hand.
    let started = Instant::now();
    let by_hand = tokio::process::Command::new(HERALD)
        .args([
            "reports",
            "run",
            "weekly-performance",
            "--period",
            "2026-W46",
        ])
        .envs(env.iter().copied())
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    let took = started.elapsed().as_secs_f64();
    let printed = String::from_utf8_lossy(&by_hand.stdout).to_string();
    assert!(
        by_hand.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&by_hand.stderr)
    );
    let id = printed
        .split_whitespace()
        .last()
        .expect("the report's id")
        .to_string();
    println!("weekly report: over {total} events, produced in {took:.2} s ({printed:?})");

    let analyst = token("ana", "analyst");
    let csv = client
        .get(format!("{base}/api/v1/reports/{id}.csv"))
        .bearer_auth(&analyst)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut found: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut active = 0;
    for line in csv.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        let count: u64 = cells[3].parse().unwrap();
        let sum: u64 = cells[4].parse().unwrap_or(0);
        match cells[0] {
            "period_active_users" => active = count,
            "events" | "signups" | "orders" => {
                let entry = found
                    .entry((cells[0].to_string(), cells[2].to_string()))
                    .or_default();
                entry.0 += count;
                entry.1 += sum;
            }
            _ => {}
        }
    }
    assert_eq!(found, expected, "the report's figures are what was posted");
    assert_eq!(
        active, users,
        "every user who posted was active in the week"
    );
    println!(
        "figures: {} rows of CSV, every count and sum equal to what was posted, {active} active users",
        csv.lines().count() - 1
    );
    drop(reports);

    // 3. Scaling from one process to two.
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(admin) => {
            for processes in [1, 2] {
                let database = common::fresh_postgres(&admin).await;
                scaling(&brokers, &schedule, &database, total, processes).await;
            }
        }
        Err(_) => println!("scaling: skipped (TEST_POSTGRES_URL unset)"),
    }
    std::fs::remove_dir_all(&dir).ok();
}
