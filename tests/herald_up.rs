//! The README's first command, as a user runs it: `herald up` with nothing configured starts
//! its own Apache Kafka broker under the data folder, serves the API, runs the consumers
//! (audit log, notifications writing emails to the data folder), accepts a token from
//! `herald token`, and on SIGTERM stops the broker it started.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

fn herald(data: &std::path::Path) -> Command {
    let mut command = Command::new(HERALD);
    command
        .env_remove("KAFKA_BROKERS")
        .env_remove("JWT_HS256_SECRET")
        .env_remove("DATABASE_URL")
        .env("HERALD_DATA_DIR", data)
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("HERALD_KAFKA_PORT", "0")
        .env("RUST_LOG", "warn");
    command
}

#[tokio::test]
async fn herald_up_runs_the_whole_system_from_an_empty_data_folder() {
    let data = support::test_dir(&format!("up-{}", uuid::Uuid::new_v4().simple()));
    let mut up = herald(&data)
        .arg("up")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let base = support::announced_address(&mut lines, Duration::from_secs(180)).await;
    eprintln!("herald up ready in {:?} at {base}", started.elapsed());

    let token = herald(&data)
        .args(["token", "--sub", "alice", "--role", "user"])
        .output()
        .await
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let response = support::client()
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(&token)
        .json(&support::order("o-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();

    // The audit log runs inside `herald up` too: the event shows up for an admin.
    let admin = herald(&data)
        .args(["token", "--sub", "root", "--role", "admin"])
        .output()
        .await
        .unwrap();
    let admin = String::from_utf8(admin.stdout).unwrap().trim().to_string();
    let row = support::eventually(
        Duration::from_secs(60),
        "the event in the audit log",
        || async {
            let page: serde_json::Value = support::client()
                .get(format!("{base}/api/v1/audit"))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            // Newest first, and the reports service may have announced a report since.
            let items = page["items"].as_array().cloned().unwrap_or_default();
            items
                .into_iter()
                .find(|row| row["event_id"] == accepted["event_id"])
                .ok_or_else(|| format!("not among {page}"))
        },
    )
    .await;
    assert_eq!(row["actor"], "alice");
    // And search, with its index in the data folder: alice finds her order.
    support::eventually(Duration::from_secs(60), "the order in search", || async {
        let found: serde_json::Value = support::client()
            .get(format!("{base}/api/v1/search?q=tea"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if found["items"][0]["id"] == "order:o-1" {
            Ok(())
        } else {
            Err(format!("the order is not searchable: {found}"))
        }
    })
    .await;
    assert!(data.join("search").join("gen-1").join("meta.json").exists());
    // And reports: on start, the starter schedule catches up the days that ended within its
    // window (yesterday at least).
    let csv = support::eventually(Duration::from_secs(60), "a daily report", || async {
        let listed: serde_json::Value = support::client()
            .get(format!("{base}/api/v1/reports?report=daily-activity"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match listed["items"][0]["csv"].as_str() {
            Some(csv) => Ok(csv.to_string()),
            None => Err(format!("no daily report was produced: {listed}")),
        }
    })
    .await;
    let csv = support::client()
        .get(format!("{base}{csv}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    // So do notifications: with no SMTP_URL, the welcome email lands in the data folder.
    let service = herald(&data)
        .args(["token", "--sub", "accounts", "--role", "service"])
        .output()
        .await
        .unwrap();
    let service = String::from_utf8(service.stdout)
        .unwrap()
        .trim()
        .to_string();
    let response = support::client()
        .post(format!("{base}/api/v1/events"))
        .bearer_auth(&service)
        .json(&serde_json::json!({"type": "user.registered", "data": {
            "user_id": uuid::Uuid::new_v4(), "email": "newcomer@example.com",
            "display_name": "Newcomer"
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let outbox = data.join("outbox");
    // The welcome email, and the daily report's announcement emailed to its recipients.
    let (email, report_email) = support::eventually(
        Duration::from_secs(60),
        "the welcome and report emails",
        || async {
            let emails: Vec<String> = std::fs::read_dir(&outbox)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                        .filter_map(|p| std::fs::read_to_string(p).ok())
                        .collect()
                })
                .unwrap_or_default();
            let find = |needle: &str| emails.iter().find(|e| e.contains(needle)).cloned();
            match (
                find("newcomer@example.com"),
                find("Subject: Report daily-activity is ready"),
            ) {
                (Some(welcome), Some(report)) => Ok((welcome, report)),
                _ => Err(format!(
                    "no welcome and report emails among {} .eml files in {}",
                    emails.len(),
                    outbox.display()
                )),
            }
        },
    )
    .await;
    assert!(
        report_email.contains("To: ops@example.com"),
        "{report_email}"
    );
    assert!(
        email.contains("To: Newcomer <newcomer@example.com>"),
        "{email}"
    );
    assert!(
        email.contains("Subject: Welcome to Herald, Newcomer"),
        "{email}"
    );

    let metrics = support::client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("herald_consumer_processed_total"),
        "{metrics}"
    );

    // The tools find the data folder's broker by themselves, as `herald token` its secret.
    let tail = herald(&data)
        .args(["tail", "orders"])
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&tail.stdout);
    assert!(
        tail.status.success() && printed.contains("o-1"),
        "herald tail without KAFKA_BROKERS: {printed}\n{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    assert!(
        data.join("kafka").join("kraft").exists(),
        "the broker's log is not under the data folder"
    );
    assert!(
        data.join("herald.db").exists(),
        "the SQLite store is not under the data folder"
    );

    let broker: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("kafka").join("broker.json")).unwrap(),
    )
    .unwrap();
    let broker_pid = broker["pid"].as_u64().unwrap();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(up.id().unwrap().to_string())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), up.wait())
        .await
        .expect("herald up did not stop")
        .unwrap();
    assert!(exit.success(), "{exit}");
    assert!(
        !std::path::Path::new(&format!("/proc/{broker_pid}")).exists(),
        "the broker herald up started is still running"
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test]
async fn herald_ingress_without_a_token_key_refuses_to_start() {
    let data = support::test_dir(&format!("nokey-{}", uuid::Uuid::new_v4().simple()));
    let output = herald(&data)
        .arg("ingress")
        .env("KAFKA_BROKERS", support::brokers().await)
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no token verification key configured"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// `MAX_CONNECTIONS` reaches the binary's listener: with one slot, a second client waits until
/// the first closes its connection.
#[tokio::test]
async fn herald_ingress_keeps_at_most_max_connections_open() {
    let data = support::test_dir(&format!("cap-{}", uuid::Uuid::new_v4().simple()));
    let prefix = format!("cap{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut ingress = herald(&data)
        .arg("ingress")
        .env("KAFKA_BROKERS", support::brokers().await)
        .env("TOPIC_PREFIX", &prefix)
        .env("JWT_HS256_SECRET", support::SECRET)
        .env("MAX_CONNECTIONS", "1")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(ingress.stdout.take().unwrap()).lines();
    let base = support::announced_address(&mut lines, Duration::from_secs(60)).await;
    let healthz = |within| {
        support::client()
            .get(format!("{base}/healthz"))
            .timeout(within)
            .send()
    };
    // Holds the only slot without sending a byte.
    let first = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let early = healthz(Duration::from_secs(1)).await;
    assert!(early.is_err(), "answered past the cap: {early:?}");
    drop(first);
    let answer = healthz(Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let _ = ingress.kill().await;
    let _ = std::fs::remove_dir_all(&data);
}

/// Where a test's `herald up` logs, beside its data folder.
fn data_log(data: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(data).unwrap();
    data.join("herald-up.log")
}

/// The pid of the broker `herald up` runs for `data` (its `broker.json`).
fn broker_pid(data: &std::path::Path) -> u32 {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("kafka/broker.json")).unwrap())
            .unwrap();
    state["pid"].as_u64().unwrap() as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_up_brings_its_broker_back_after_each_kill_9_losing_nothing() {
    let data = support::test_dir(&format!("heal-{}", uuid::Uuid::new_v4().simple()));
    let mut up = herald(&data)
        .arg("up")
        .env("TOPIC_PREFIX", "heal.")
        // One user posts all the load: past the default per-user limit it would be refused.
        .env("RATE_LIMIT_USER", "100000000/1m")
        .stdout(Stdio::piped())
        // The broker's deaths are logged as errors, as they should be: kept out of the
        // test's output, in the data folder.
        .stderr(std::fs::File::create(data_log(&data)).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let base = support::announced_address(&mut lines, Duration::from_secs(180)).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let token = herald(&data)
        .args(["token", "--sub", "alice", "--role", "user"])
        .output()
        .await
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();

    // Four clients post orders all along; each acknowledged event id is kept.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for client in 0..4 {
        let (base, token, stop) = (base.clone(), token.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = support::client();
            let (mut acked, mut refused) = (Vec::new(), 0usize);
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let sent = http
                    .post(format!("{base}/api/v1/events"))
                    .bearer_auth(&token)
                    .json(&support::order(&format!("o-{client}-{i}")))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        acked.push(body["event_id"].as_str().unwrap().to_string());
                    }
                    Ok(r) => {
                        assert!(
                            r.status() == 503,
                            "a request got {} while the broker was away",
                            r.status()
                        );
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => refused += 1,
                }
            }
            (acked, refused)
        }));
    }

    let http = support::client();
    let ready = |http: reqwest::Client, base: String| async move {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let mut recoveries = Vec::new();
    for kill in 1..=3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pid = broker_pid(&data);
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let at = Instant::now();
        // Not ready while the broker is away.
        support::eventually(
            Duration::from_secs(30),
            &format!("/readyz other than 200 after kill {kill}"),
            || async {
                match ready(http.clone(), base.clone()).await {
                    200 => Err("/readyz stayed 200"),
                    _ => Ok(()),
                }
            },
        )
        .await;
        // Ready again, on a new broker process.
        support::eventually(
            Duration::from_secs(120).saturating_sub(at.elapsed()),
            &format!("herald up bringing its broker back after kill {kill}"),
            || async {
                match ready(http.clone(), base.clone()).await {
                    200 => Ok(()),
                    status => Err(format!("/readyz {status}")),
                }
            },
        )
        .await;
        assert_ne!(broker_pid(&data), pid, "a new broker process");
        recoveries.push(at.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let (mut acked, mut refused) = (Vec::new(), 0);
    for client in clients {
        let (a, r) = client.await.unwrap();
        acked.extend(a);
        refused += r;
    }

    // Every acknowledged event is on the topic, once.
    let port = {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(data.join("kafka/broker.json")).unwrap())
                .unwrap();
        state["port"].as_u64().unwrap()
    };
    let kafka = platform::kafka::KafkaArgs {
        brokers: Some(format!("127.0.0.1:{port}")),
        properties: vec![],
        topic_prefix: "heal.".into(),
        topics_file: None,
    };
    let on_topic: Vec<String> = support::read(&kafka, "orders")
        .await
        .into_iter()
        .map(|(_, decoded)| decoded.envelope.event_id.to_string())
        .collect();
    let unique: std::collections::HashSet<&String> = on_topic.iter().collect();
    let lost = acked.iter().filter(|id| !unique.contains(id)).count();
    eprintln!(
        "3 kills: {} acknowledged, {refused} refused or cut, {lost} lost, {} on the topic \
         ({} duplicates); ready again after {recoveries:?}",
        acked.len(),
        on_topic.len(),
        on_topic.len() - unique.len()
    );
    assert!(
        acked.len() > 100,
        "too little load to tell: {}",
        acked.len()
    );
    assert_eq!(lost, 0, "acknowledged events lost");

    // SIGTERM stops the broker this process restarted too.
    let pid = broker_pid(&data);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &up.id().unwrap().to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(60), up.wait()).await;
    support::eventually(
        Duration::from_secs(30),
        "the broker stopping with herald up",
        || async {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                Err(format!("the broker outlived herald up: /proc/{pid} exists"))
            } else {
                Ok(())
            }
        },
    )
    .await;
}
