//! Topics as code, on the real broker: a service creates its topics as infra/topics.toml
//! declares them and warns of one that drifted from it; `herald topics plan` shows the
//! drift, `herald topics apply` brings the topic back, keeping its events.

mod support;

use std::process::Command;
use std::time::Duration;

use platform::kafka::{KafkaArgs, OutgoingRecord, Publisher};
use support::process::HERALD;

/// `herald topics <action>` on `kafka`'s prefix; what it printed (it must succeed).
fn topics(kafka: &KafkaArgs, action: &str, topics_file: Option<&std::path::Path>) -> String {
    let mut command = Command::new(HERALD);
    command
        .args(["topics", action])
        .env("KAFKA_BROKERS", kafka.brokers.as_deref().unwrap())
        .env("TOPIC_PREFIX", &kafka.topic_prefix)
        .env_remove("TOPICS_FILE")
        .env_remove("SCHEMAS_DIR");
    if let Some(file) = topics_file {
        command.env("TOPICS_FILE", file);
    }
    let output = command.output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "herald topics {action}:\n{printed}"
    );
    printed
}

/// The lines `herald topics` printed about one topic.
fn about<'a>(printed: &'a str, topic: &str) -> Vec<&'a str> {
    printed
        .lines()
        .filter(|line| line.starts_with(&format!("{topic}:")))
        .collect()
}

#[tokio::test]
async fn topics_are_created_as_declared_and_drift_is_planned_and_applied_keeping_events() {
    let kafka = support::kafka(&support::brokers().await);
    let (orders, users) = (kafka.topic("orders"), kafka.topic("users"));

    // A drifted users topic, made as an older file would have: 2 partitions, kept 7 days.
    let dir = support::test_dir(&format!("topics-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let old = dir.join("old-topics.toml");
    std::fs::write(
        &old,
        "[defaults]\nreplication_factor = 1\nmin_insync_replicas = 1\ncleanup_policy = \"delete\"\n\
         [[topic]]\nname = \"users\"\npartitions = 2\nretention = \"7d\"\n",
    )
    .unwrap();
    let made = Command::new(HERALD)
        .args(["topics", "apply"])
        .env("KAFKA_BROKERS", kafka.brokers.as_deref().unwrap())
        .env("TOPIC_PREFIX", &kafka.topic_prefix)
        .env("TOPICS_FILE", &old)
        // The old file declares only users: a catalog of that topic alone.
        .env("SCHEMAS_DIR", users_only_schemas(&dir))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    // Events on it before it is brought back.
    let publisher = Publisher::new(&kafka, Duration::from_secs(30)).unwrap();
    let records: Vec<OutgoingRecord> = (0..10)
        .map(|i| OutgoingRecord {
            topic: users.as_str().into(),
            key: format!("u-{i}").into_bytes(),
            payload: b"kept".to_vec(),
            timestamp_ms: 0,
            headers: Vec::new(),
        })
        .collect();
    publisher.publish_all(&records).await.unwrap();

    // A service's start creates what is missing as declared, and warns of the drift.
    let log = dir.join("ingress.log");
    let database = format!("sqlite://{}?mode=rwc", dir.join("ingress.db").display());
    let ingress =
        support::process::HeraldProcess::start_logging("ingress", &kafka, &database, &[], &log)
            .await;
    ingress.terminate().await;
    let logged = std::fs::read_to_string(&log).unwrap();
    let warning = logged
        .lines()
        .find(|line| line.contains("differs from the topics file") && line.contains(&users))
        .unwrap_or_else(|| panic!("no drift warning for {users}:\n{logged}"));
    assert!(warning.contains("partitions 2 -> 6"), "{warning}");
    assert!(
        !logged
            .lines()
            .any(|line| line.contains("differs from the topics file") && line.contains(&orders)),
        "{logged}"
    );

    let plan = topics(&kafka, "plan", None);
    assert_eq!(
        about(&plan, &orders),
        [format!("{orders}: as declared")],
        "{plan}"
    );
    let drift = about(&plan, &users);
    assert!(
        drift
            .iter()
            .any(|l| l.contains("partitions 2 -> 6 [to do]")),
        "{plan}"
    );
    assert!(
        drift
            .iter()
            .any(|l| l.contains("retention.ms 604800000 -> -1 [to do]")),
        "{plan}"
    );
    // Plan changes nothing.
    assert_eq!(about(&topics(&kafka, "plan", None), &users), drift);

    let applied = topics(&kafka, "apply", None);
    assert!(applied.contains("[done]"), "{applied}");
    let after = topics(&kafka, "plan", None);
    assert_eq!(
        about(&after, &users),
        [format!("{users}: as declared")],
        "{after}"
    );
    // Nothing of what the topic held was lost.
    let kept = platform::kafka::read_to_end(
        &kafka,
        std::slice::from_ref(&users),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(kept.len(), 10);
    // Applying again has nothing to do.
    let again = topics(&kafka, "apply", None);
    assert!(!again.contains("[done]"), "{again}");
}

/// A schemas folder with the users topic's event types only (and the shared parts).
fn users_only_schemas(dir: &std::path::Path) -> std::path::PathBuf {
    let schemas = dir.join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/avro");
    for entry in std::fs::read_dir(source).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('_') || text.contains(r#""topic": "users""#) {
            std::fs::write(schemas.join(path.file_name().unwrap()), text).unwrap();
        }
    }
    schemas
}
