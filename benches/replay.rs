//! `herald replay` against `kcat -C` reading the same topic on the same broker, in one run:
//!
//!     KAFKA_BROKERS=127.0.0.1:9092 cargo bench --bench replay
//!
//! BENCH_EVENTS (200,000) `order.placed` events are posted through the real ingress (batches
//! of 500) to a topic of their own. Then, ROUNDS times, alternating: kcat consuming the whole
//! topic raw (`-C -e -f '%s\n'`, the payload bytes only; once with librdkafka's defaults, once
//! with a prefetch queue large enough never to fill), `herald replay` of the whole range
//! as JSON lines, and as Parquet; each writing to /dev/null, each timed by GNU time (elapsed,
//! peak RSS). Medians. Memory against the size of the range: the replay of the first fifth of
//! the range and of all of it, peak RSS of each.

mod common;

use common::{HERALD, ingress_on, post_batches, setting, token, topic_prefix};

use std::process::Stdio;

use serde_json::{Value, json};
use uuid::Uuid;

const ROUNDS: usize = 3;

/// Runs `program args` under GNU time with stdout to /dev/null: elapsed seconds, peak RSS MB.
async fn timed(program: &str, args: &[&str], env: &[(&str, &str)]) -> (f64, f64) {
    let report = std::env::temp_dir().join(format!("herald-bench-time-{}", Uuid::new_v4()));
    let mut command = tokio::process::Command::new("/usr/bin/time");
    command
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&report)
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().await.expect("GNU time runs");
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&report).unwrap();
    std::fs::remove_file(&report).ok();
    let mut figures = text.split_whitespace().map(|f| f.parse::<f64>().unwrap());
    (figures.next().unwrap(), figures.next().unwrap() / 1024.0)
}

#[tokio::main]
async fn main() {
    let brokers = std::env::var("KAFKA_BROKERS").expect("set KAFKA_BROKERS to a running broker");
    let total = setting("BENCH_EVENTS", 200_000) as usize;
    let prefix = topic_prefix("pbench");
    let (_ingress, ingress, _) = ingress_on(brokers.as_str(), &prefix).await;
    let client = reqwest::Client::new();
    let service = token("bench", "service");

    let batches: Vec<Value> = (0..total)
        .collect::<Vec<_>>()
        .chunks(500)
        .map(|chunk| {
            let events: Vec<Value> = chunk
                .iter()
                .map(|n| {
                    json!({"type": "order.placed", "key": format!("o-{n}"), "data": {
                        "order_id": format!("o-{n}"), "customer_id": format!("c-{}", n % 1000),
                        "items": [{"sku": "tea-01", "quantity": 1, "unit_price_cents": 450}],
                        "total_cents": 450, "currency": "EUR"
                    }})
                })
                .collect();
            json!({ "events": events })
        })
        .collect();
    let began = jiff::Timestamp::now();
    post_batches(&client, &ingress, &batches, |_| service.clone()).await;
    let ended = jiff::Timestamp::now();
    let (from, to) = (
        began - jiff::SignedDuration::from_secs(1),
        ended + jiff::SignedDuration::from_secs(1),
    );
    println!("posted: {total} order.placed events");

    let topic = format!("{prefix}orders");
    let (from_text, to_text) = (from.to_string(), to.to_string());
    let replay = |format: &'static str| {
        vec![
            "replay",
            "--topics",
            "orders",
            "--from",
            from_text.as_str(),
            "--to",
            to_text.as_str(),
            "--format",
            format,
        ]
    };
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("TOPIC_PREFIX", prefix.as_str()),
        ("RUST_LOG", "error"),
    ];
    // kcat twice: with librdkafka's defaults, and with a prefetch queue too large to fill.
    // With the defaults, a full queue stops fetching for a second (librdkafka 2.0, Debian's
    // kcat), so how long kcat takes depends on how often its queue happens to fill; the
    // large queue never stalls and is the honest ceiling.
    let kcat = |tuned: bool| {
        let mut args = vec![
            "-C",
            "-b",
            &brokers,
            "-t",
            &topic,
            "-e",
            "-q",
            "-o",
            "beginning",
            "-f",
            "%s\n",
        ];
        if tuned {
            args.extend([
                "-X",
                "queued.min.messages=10000000",
                "-X",
                "queued.max.messages.kbytes=2097151",
            ]);
        }
        args
    };
    let (mut raw, mut raw_tuned) = (Vec::new(), Vec::new());
    let (mut jsonl, mut parquet) = (Vec::new(), Vec::new());
    let mut rss = Vec::new();
    for round in 0..ROUNDS {
        let kcat_default = timed("kcat", &kcat(false), &[]).await;
        let kcat_tuned = timed("kcat", &kcat(true), &[]).await;
        let json_lines = timed(HERALD, &replay("jsonl"), &env).await;
        let parquet_file = timed(HERALD, &replay("parquet"), &env).await;
        println!(
            "round {}: kcat {:.2} s, kcat with a large queue {:.2} s ({:.1} MB), replay jsonl {:.2} s ({:.1} MB), replay parquet {:.2} s ({:.1} MB)",
            round + 1,
            kcat_default.0,
            kcat_tuned.0,
            kcat_tuned.1,
            json_lines.0,
            json_lines.1,
            parquet_file.0,
            parquet_file.1
        );
        raw.push(total as f64 / kcat_default.0);
        raw_tuned.push(total as f64 / kcat_tuned.0);
        jsonl.push(total as f64 / json_lines.0);
        parquet.push(total as f64 / parquet_file.0);
        rss.push((json_lines.1, parquet_file.1));
    }
    let (raw, raw_tuned, jsonl, parquet) = (
        common::median(&raw),
        common::median(&raw_tuned),
        common::median(&jsonl),
        common::median(&parquet),
    );
    println!(
        "throughput (medians of {ROUNDS}): kcat -C {raw:.0} events/s, with a large queue {raw_tuned:.0} events/s; \
         replay JSON lines {jsonl:.0} events/s ({:.0}% of kcat, {:.0}% of kcat with a large queue); \
         replay Parquet {parquet:.0} events/s ({:.0}%, {:.0}%)",
        100.0 * jsonl / raw,
        100.0 * jsonl / raw_tuned,
        100.0 * parquet / raw,
        100.0 * parquet / raw_tuned
    );

    // Memory against the range's size: a fifth of it, then all of it.
    let span_ms = ended.as_millisecond() - began.as_millisecond();
    let fifth = jiff::Timestamp::from_millisecond(began.as_millisecond() + span_ms / 5).unwrap();
    let fifth_text = fifth.to_string();
    let mut small = replay("jsonl");
    small[6] = fifth_text.as_str();
    let (_, small_rss) = timed(HERALD, &small, &env).await;
    let (_, whole_rss) = timed(HERALD, &replay("jsonl"), &env).await;
    let (_, small_parquet) = timed(
        HERALD,
        &{
            let mut p = replay("parquet");
            p[6] = fifth_text.as_str();
            p
        },
        &env,
    )
    .await;
    let (_, whole_parquet) = timed(HERALD, &replay("parquet"), &env).await;
    println!(
        "peak RSS: JSON lines {small_rss:.1} MB over the first fifth of the range, {whole_rss:.1} MB over all of it; Parquet {small_parquet:.1} MB and {whole_parquet:.1} MB"
    );
}
