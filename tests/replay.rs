//! `herald replay`, `herald lag` and `herald reprocess` against the real broker: the events of
//! a time window come out exactly, in every format, as outside readers see them; a running
//! consumer is not disturbed; a stopped one is moved back and rebuilds without duplicates.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::process::{HERALD, HeraldProcess};
use support::{TestIngress, test_dir, token};
use uuid::Uuid;

/// Runs `herald <args>` against the test's cluster and prefix.
async fn herald(app: &TestIngress, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(HERALD)
        .args(args)
        .env("KAFKA_BROKERS", app.kafka.brokers.as_deref().unwrap())
        .env("TOPIC_PREFIX", &app.kafka.topic_prefix)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn at(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

/// An export read back by DuckDB, fastavro or the json module.
async fn read_back(format: &str, path: &std::path::Path) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/read_export.py");
    let output = tokio::process::Command::new("python3")
        .arg(script)
        .arg(format)
        .arg(path)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{format}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&output.stdout).unwrap()
}

async fn post_orders(app: &TestIngress, ids: std::ops::Range<usize>, tag: &str) {
    for n in ids {
        let response = app
            .post(
                &token("shop", &["service"]),
                &support::order(&format!("{tag}-{n}")),
            )
            .await;
        assert_eq!(response.status(), 202);
    }
}

async fn committed(app: &TestIngress, group: &str) -> HashMap<(String, i32), i64> {
    platform::kafka::committed_offsets(&app.kafka, group, &app.topics())
        .await
        .unwrap()
}

/// Waits until `group` has committed the end of every partition that has records.
async fn caught_up(app: &TestIngress, group: &str) -> HashMap<(String, i32), i64> {
    support::eventually(
        Duration::from_secs(60),
        &format!("{group} catching up"),
        || async {
            let ends =
                platform::kafka::watermarks_of(&app.kafka, &app.topics(), Duration::from_secs(10))
                    .await
                    .unwrap();
            let done = committed(app, group).await;
            if ends
                .iter()
                .filter(|(_, (_, high))| *high > 0)
                .all(|(slot, (_, high))| done.get(slot) == Some(high))
            {
                Ok(done)
            } else {
                Err(format!("ends {ends:?}, committed {done:?}"))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_returns_exactly_the_window_in_every_format_and_disturbs_no_consumer() {
    let app = TestIngress::start_default().await;
    let dir = test_dir("replay").join(Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap();

    // Three windows of events on two topics, one after the other.
    post_orders(&app, 0..10, "a").await;
    post_orders(&app, 0..10, "b").await;
    for n in 0..5 {
        let response = app
            .post(
                &token("accounts", &["service"]),
                &json!({"type": "user.registered", "data": {
                    "user_id": Uuid::new_v4(), "email": format!("r{n}@example.com"),
                    "display_name": "R, \"quoted\"", "locale": "en", "time_zone": "UTC"
                }}),
            )
            .await;
        assert_eq!(response.status(), 202);
    }
    post_orders(&app, 0..10, "c").await;
    let mut records = app.read("orders").await;
    records.extend(app.read("users").await);
    let first_of = |tag: &str| {
        records
            .iter()
            .filter(|(_, d)| d.data["order_id"].as_str().unwrap_or("").starts_with(tag))
            .map(|(r, _)| r.timestamp_ms.unwrap())
            .min()
            .unwrap()
    };
    // From the first order of window b (inclusive) to the first of window c (exclusive).
    let (from, to) = (first_of("b-"), first_of("c-"));
    let expected: BTreeMap<(String, i32, i64), String> = records
        .iter()
        .filter(|(r, _)| (from..to).contains(&r.timestamp_ms.unwrap()))
        .map(|(r, d)| {
            (
                (r.topic.clone(), r.partition, r.offset),
                d.envelope.event_id.to_string(),
            )
        })
        .collect();
    assert!(expected.len() >= 15, "window b and the users: {expected:?}");
    let data: HashMap<String, Value> = records
        .iter()
        .map(|(_, d)| (d.envelope.event_id.to_string(), d.data.clone()))
        .collect();

    // A consumer that has read everything: its offsets must not move.
    let database = format!("sqlite://{}", dir.join("audit.db").display());
    let group = format!("{}{}", app.kafka.topic_prefix, audit_log::NAME);
    let audit = HeraldProcess::start("audit-log", &app.kafka, &database, &[]).await;
    let before = caught_up(&app, &group).await;

    let (from_text, to_text) = (at(from), at(to));
    let mut exports = Vec::new();
    for format in ["jsonl", "csv", "avro", "parquet"] {
        let path = dir.join(format!("window.{format}"));
        let path_text = path.display().to_string();
        let (ok, _, stderr) = herald(
            &app,
            &[
                "replay",
                "--topics",
                "orders,users",
                "--from",
                &from_text,
                "--to",
                &to_text,
                "--format",
                format,
                "--out",
                &path_text,
            ],
        )
        .await;
        assert!(ok, "{format}: {stderr}");
        assert!(
            stderr.contains(&format!("{} events written", expected.len())),
            "{stderr}"
        );
        let rows = read_back(format, &path).await;
        let got: BTreeMap<(String, i32, i64), String> = rows
            .iter()
            .map(|row| {
                (
                    (
                        row["topic"].as_str().unwrap().to_string(),
                        row["partition"].as_i64().unwrap() as i32,
                        row["offset"].as_i64().unwrap(),
                    ),
                    row["event_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got, expected, "{format}: exactly the window");
        for row in &rows {
            assert_eq!(
                row["data"],
                data[row["event_id"].as_str().unwrap()],
                "{format}"
            );
        }
        exports.push((format, rows));
    }
    for (format, rows) in &exports[1..] {
        assert_eq!(
            rows, &exports[0].1,
            "{format} holds the same rows as JSON lines"
        );
    }

    // To standard output, one type, in per-partition order.
    let (ok, stdout, stderr) = herald(
        &app,
        &[
            "replay",
            "--topics",
            "orders,users",
            "--from",
            &from_text,
            "--to",
            &to_text,
            "--type",
            "order.placed",
        ],
    )
    .await;
    assert!(ok, "{stderr}");
    let mut last: HashMap<(String, i64), i64> = HashMap::new();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10, "window b's orders only");
    for line in &lines {
        assert_eq!(line["event_type"], "order.placed");
        let slot = (
            line["topic"].as_str().unwrap().to_string(),
            line["partition"].as_i64().unwrap(),
        );
        let offset = line["offset"].as_i64().unwrap();
        assert!(last.get(&slot).is_none_or(|prev| *prev < offset));
        last.insert(slot, offset);
    }
    let (ok, stdout, _) = herald(
        &app,
        &[
            "replay",
            "--topics",
            "orders,users",
            "--from",
            &from_text,
            "--to",
            &to_text,
            "--dry-run",
        ],
    )
    .await;
    assert!(ok);
    let topic = |name: &str| app.kafka.topic(name);
    assert!(
        stdout.contains(&format!("{}\torder.placed\t10", topic("orders"))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}\tuser.registered\t5", topic("users"))),
        "{stdout}"
    );

    // Mistakes: a clear message, a failing exit, no file.
    let refused = [
        (
            vec!["--topics", "nope", "--from", &from_text, "--to", &to_text],
            "no topic",
        ),
        (
            vec!["--topics", "orders", "--from", &to_text, "--to", &from_text],
            "must be before",
        ),
        (
            vec![
                "--topics",
                "orders",
                "--from",
                "2001-01-01T00:00:00Z",
                "--to",
                "2001-01-02T00:00:00Z",
            ],
            "no events between",
        ),
        (
            vec![
                "--topics",
                "orders",
                "--from",
                "yesterday",
                "--to",
                &to_text,
            ],
            "not an RFC 3339 time",
        ),
        (
            vec![
                "--topics", "orders", "--from", &from_text, "--to", &to_text, "--type", "no.such",
            ],
            "match the filters",
        ),
    ];
    for (args, message) in refused {
        let out = dir.join("refused.csv");
        let out_text = out.display().to_string();
        let mut all = vec!["replay"];
        all.extend(args);
        all.extend(["--format", "csv", "--out", &out_text]);
        let (ok, _, stderr) = herald(&app, &all).await;
        assert!(!ok && stderr.contains(message), "{all:?}: {stderr}");
        assert!(!out.exists(), "{all:?} left a file");
        assert!(!dir.join("refused.csv.partial").exists());
    }

    // The live consumer was not moved, and no group was made by the replays.
    assert_eq!(committed(&app, &group).await, before);
    let every_group = platform::kafka::groups::list(&app.kafka, Duration::from_secs(10)).unwrap();
    assert!(
        every_group
            .iter()
            .all(|g| !g.name.contains("reader-unused")),
        "{every_group:?}"
    );
    let (ok, stdout, stderr) = herald(&app, &["lag"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&group), "{stdout}");

    // Lag: stopped, then five more orders behind.
    audit.terminate().await;
    post_orders(&app, 0..5, "d").await;
    let (ok, stdout, stderr) = herald(&app, &["lag", "--group", audit_log::NAME]).await;
    assert!(ok, "{stderr}");
    let behind: i64 = stdout
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .filter(|cells| cells[3] == topic("orders"))
        .map(|cells| cells[7].parse::<i64>().unwrap())
        .sum();
    assert_eq!(behind, 5, "{stdout}");
    assert!(!stdout.contains("\t?\n"), "every age known: {stdout}");
    let (ok, _, stderr) = herald(&app, &["lag", "--group", "no-such-group"]).await;
    assert!(!ok && stderr.contains("no consumer group"), "{stderr}");

    // Reprocess: refused while a consumer runs, then moved back while stopped; the rebuild
    // adds no row twice.
    let audit = HeraldProcess::start("audit-log", &app.kafka, &database, &[]).await;
    caught_up(&app, &group).await;
    let (ok, _, stderr) = herald(&app, &["reprocess", audit_log::NAME, "--from", &from_text]).await;
    assert!(!ok && stderr.contains("live member"), "{stderr}");
    audit.terminate().await;
    let rows_before = support::audit::rows_by_id(&database).await;
    let (ok, stdout, stderr) =
        herald(&app, &["reprocess", audit_log::NAME, "--from", &from_text]).await;
    assert!(ok, "{stderr}");
    let again: i64 = stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .and_then(|l| l.rsplit('\t').next()?.parse().ok())
        .unwrap();
    let since_from = records
        .iter()
        .filter(|(r, _)| r.timestamp_ms.unwrap() >= from)
        .count() as i64;
    assert_eq!(
        again,
        since_from + 5,
        "window b on, and the five behind: {stdout}"
    );
    let audit = HeraldProcess::start("audit-log", &app.kafka, &database, &[]).await;
    caught_up(&app, &group).await;
    let rows_after = support::audit::rows_by_id(&database).await;
    assert_eq!(rows_after, rows_before, "read again, written once");
    assert!(rows_after.values().all(|n| *n == 1));
    audit.terminate().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_redriven_after_the_fix_is_applied_once_and_tail_shows_events() {
    let app = TestIngress::start_default().await;
    let dir = test_dir("replay").join(Uuid::new_v4().simple().to_string());
    // The cause: an audit log deployed with the schemas of every event type but one.
    let partial = support::schemas_without(&dir, "user.registered");
    let database = format!("sqlite://{}", dir.join("audit.db").display());
    let partial_text = partial.display().to_string();
    let audit = HeraldProcess::start(
        "audit-log",
        &app.kafka,
        &database,
        &[("SCHEMAS_DIR", partial_text.as_str())],
    )
    .await;
    let response = app
        .post(
            &token("accounts", &["service"]),
            &json!({"type": "user.registered", "data": {
                "user_id": Uuid::new_v4(), "email": "late@example.com",
                "display_name": "Late", "locale": "en", "time_zone": "UTC"
            }}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let event_id = accepted["event_id"].as_str().unwrap().to_string();
    post_orders(&app, 0..2, "o").await;

    // The user's event is a dead letter; the orders are in the log.
    let listed = support::eventually(
        Duration::from_secs(60),
        "a dead letter and the orders in the log",
        || async {
            let (ok, stdout, stderr) = herald(&app, &["dlq", "list", audit_log::NAME]).await;
            assert!(ok, "{stderr}");
            if stdout.lines().count() == 2 && support::audit::rows_by_id(&database).await.len() == 2
            {
                Ok(stdout)
            } else {
                Err(format!("no dead letter: {stdout}"))
            }
        },
    )
    .await;
    let line: Vec<&str> = listed.lines().nth(1).unwrap().split('\t').collect();
    assert_eq!(line[1], event_id, "{listed}");
    assert_eq!(line[2], "user.registered");
    assert!(line[3].starts_with(&app.kafka.topic("users")), "{listed}");
    assert_eq!(line[5], "no");
    assert!(!line[6].is_empty(), "the error is shown: {listed}");

    // The fix: every schema. Then the redrive, and the event is applied once.
    audit.terminate().await;
    let audit = HeraldProcess::start("audit-log", &app.kafka, &database, &[]).await;
    let (ok, stdout, stderr) = herald(
        &app,
        &["dlq", "redrive", audit_log::NAME, "--event-id", &event_id],
    )
    .await;
    assert!(ok && stdout.contains("published again"), "{stdout}{stderr}");
    let id = Uuid::parse_str(&event_id).unwrap();
    support::eventually(
        Duration::from_secs(60),
        "the redriven event applied",
        || async {
            let rows = support::audit::rows_by_id(&database).await;
            if rows.contains_key(&id) {
                Ok(())
            } else {
                Err(format!("{} rows, not the redriven event", rows.len()))
            }
        },
    )
    .await;
    let (ok, _, stderr) = herald(
        &app,
        &["dlq", "redrive", audit_log::NAME, "--event-id", &event_id],
    )
    .await;
    assert!(!ok && stderr.contains("redriven before"), "{stderr}");
    let (ok, stdout, _) = herald(&app, &["dlq", "redrive", audit_log::NAME, "--all"]).await;
    assert!(ok && stdout.contains("nothing to do"), "{stdout}");
    let (_, listed, _) = herald(&app, &["dlq", "list", audit_log::NAME]).await;
    assert!(
        listed.lines().nth(1).unwrap().contains("\tyes\t"),
        "{listed}"
    );
    let (ok, _, stderr) = herald(
        &app,
        &["dlq", "redrive", audit_log::NAME, "--event-id", "nope"],
    )
    .await;
    assert!(
        !ok && stderr.contains("no dead letter of event nope"),
        "{stderr}"
    );
    // Applied once: the redrive is a second record of the event, deduplicated by its id.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = support::audit::rows_by_id(&database).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.values().all(|n| *n == 1), "{rows:?}");
    audit.terminate().await;

    // Tail: the newest events decoded, filtered by type; and one that arrives while following.
    let (ok, stdout, stderr) = herald(&app, &["tail", "orders", "--type", "order.placed"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let (ok, stdout, _) = herald(&app, &["tail", "users", "--type", "order.placed"]).await;
    assert!(ok && stdout.is_empty(), "{stdout}");
    let mut follow = tokio::process::Command::new(HERALD)
        .args(["tail", "orders", "--follow", "--last", "0"])
        .env("KAFKA_BROKERS", app.kafka.brokers.as_deref().unwrap())
        .env("TOPIC_PREFIX", &app.kafka.topic_prefix)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(follow.stdout.take().unwrap()));
    // It has assigned its partitions at their ends once it is waiting; post until one shows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut posted = 0;
    let seen = loop {
        post_orders(&app, posted..posted + 1, "f").await;
        posted += 1;
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await
        {
            break line;
        }
        assert!(Instant::now() < deadline, "tail --follow printed nothing");
    };
    let seen: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["event_type"], "order.placed");
    follow.kill().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reprocessing_the_search_indexer_leaves_the_same_documents() {
    let app = TestIngress::start_default().await;
    let dir = test_dir("replay").join(Uuid::new_v4().simple().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let started = jiff::Timestamp::now();
    post_orders(&app, 0..20, "s").await;
    let index = dir.join("index").display().to_string();
    let database = format!("sqlite://{}", dir.join("unused.db").display());
    let env = [("SEARCH_INDEX_DIR", index.as_str())];
    let admin = token("ops", &["admin"]);
    let documents = |base: String| {
        let admin = admin.clone();
        async move {
            let stats: Value = support::client()
                .get(format!("{base}/api/v1/search/stats"))
                .bearer_auth(admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            stats["documents"].as_u64().unwrap_or(0)
        }
    };
    let until = |want: u64, base: String| {
        let documents = &documents;
        async move {
            support::eventually(
                Duration::from_secs(60),
                &format!("{want} documents"),
                || async {
                    let found = documents(base.clone()).await;
                    if found == want {
                        Ok(())
                    } else {
                        Err(format!("{found} documents, not {want}"))
                    }
                },
            )
            .await;
        }
    };
    let search = HeraldProcess::start("search-indexer", &app.kafka, &database, &env).await;
    until(20, search.base.clone()).await;
    let group = platform::kafka::groups::list(&app.kafka, Duration::from_secs(10))
        .unwrap()
        .into_iter()
        .find(|g| g.name.starts_with(&app.kafka.topic("search-indexer")))
        .expect("the indexer's group")
        .name;
    search.terminate().await;
    let unprefixed = group
        .trim_start_matches(&app.kafka.topic_prefix)
        .to_string();
    let (ok, stdout, stderr) = herald(
        &app,
        &["reprocess", &unprefixed, "--from", &started.to_string()],
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    // Restarted: the same documents, and it goes on with the next one.
    let search = HeraldProcess::start("search-indexer", &app.kafka, &database, &env).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(documents(search.base.clone()).await, 20);
    post_orders(&app, 20..21, "s").await;
    until(21, search.base.clone()).await;
    search.terminate().await;
    app.stop().await;
}
