//! The audit log's promise, end to end on a real broker and real PostgreSQL: every
//! acknowledged event has exactly one row through crashes, rebalances and poison records;
//! shutdown commits exactly what was written.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use audit_log::store::SqlStore;
use platform::consumer::{ConsumerArgs, dlq_headers};
use platform::db::Database;
use platform::kafka::{OutgoingRecord, Publisher};
use support::audit::{fresh_postgres, publish, tally, wait_for_rows};
use support::process::HeraldProcess;
use support::{TestIngress, token};
use uuid::Uuid;

fn writer() -> String {
    token("auditor-test", &["user", "admin", "service"])
}

async fn verify(database_url: &str) -> audit_log::verify::Report {
    let store = SqlStore::new(Database::connect(database_url).await.unwrap())
        .await
        .unwrap();
    audit_log::verify::verify(&store).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_has_one_row_through_kill_9_restarts() {
    let app = Arc::new(TestIngress::start_default().await);
    let kafka = app.kafka.clone();
    let db = fresh_postgres().await;
    let mut audit = HeraldProcess::start("audit-log", &kafka, &db, &[]).await;
    let producer = {
        let app = app.clone();
        tokio::spawn(
            async move { publish(&app, &writer(), 80, 50, Duration::from_millis(60)).await },
        )
    };
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200 + round * 400)).await;
        audit.kill9().await;
        audit = HeraldProcess::start("audit-log", &kafka, &db, &[]).await;
    }
    let acked = producer.await.unwrap();
    let expected: HashSet<Uuid> = acked.iter().copied().collect();
    let rows = wait_for_rows(&db, &expected, Duration::from_secs(120)).await;
    let (events, total, duplicates, missing) = tally(&acked, &rows);
    eprintln!(
        "kill -9 x3: events {events}, rows {total}, duplicates {duplicates}, missing {missing}"
    );
    assert_eq!(events, 4000);
    assert_eq!((duplicates, missing), (0, 0));
    assert_eq!(total, events);
    let report = verify(&db).await;
    assert!(report.passed(), "{:?}", report.failures);
    assert_eq!(report.rows as usize, events);
    audit.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_partitions_and_one_leaving_loses_nothing() {
    let app = Arc::new(TestIngress::start_default().await);
    let kafka = app.kafka.clone();
    let db = fresh_postgres().await;
    let first = HeraldProcess::start("audit-log", &kafka, &db, &[]).await;
    let second = HeraldProcess::start("audit-log", &kafka, &db, &[]).await;
    let producer = {
        let app = app.clone();
        tokio::spawn(
            async move { publish(&app, &writer(), 60, 40, Duration::from_millis(80)).await },
        )
    };
    // Both get partitions and both apply events.
    let (a, b, assigned_a, assigned_b) = support::eventually(
        Duration::from_secs(60),
        "both instances making progress",
        || async {
            let a = first.metric("herald_consumer_processed_total").await;
            let b = second.metric("herald_consumer_processed_total").await;
            let assigned_a = first.metric("herald_consumer_assigned_partitions").await;
            let assigned_b = second.metric("herald_consumer_assigned_partitions").await;
            if a > 0.0 && b > 0.0 {
                Ok((a, b, assigned_a, assigned_b))
            } else {
                Err(format!(
                    "{a} and {b} events, {assigned_a} and {assigned_b} partitions"
                ))
            }
        },
    )
    .await;
    eprintln!(
        "instance 1: {assigned_a} partitions, {a} events; instance 2: {assigned_b} partitions, {b} events"
    );
    assert_eq!(assigned_a + assigned_b, 21.0, "7 topics of 3 partitions");
    let (status, _) = first.terminate().await;
    assert!(status.success());
    let acked = producer.await.unwrap();
    let expected: HashSet<Uuid> = acked.iter().copied().collect();
    let rows = wait_for_rows(&db, &expected, Duration::from_secs(60)).await;
    let (events, total, duplicates, missing) = tally(&acked, &rows);
    eprintln!(
        "one of two left: events {events}, rows {total}, duplicates {duplicates}, missing {missing}"
    );
    assert_eq!((duplicates, missing, total), (0, 0, events));
    assert_eq!(
        second.metric("herald_consumer_assigned_partitions").await,
        21.0,
        "the remaining instance took over every partition"
    );
    assert!(verify(&db).await.passed());
    second.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_work_in_flight_commits_exactly_what_was_written() {
    let app = TestIngress::start_default().await;
    let kafka = app.kafka.clone();
    let acked = publish(&app, &writer(), 40, 500, Duration::ZERO).await;
    assert_eq!(acked.len(), 20_000);
    let db = fresh_postgres().await;
    // Small batches, so there is always a batch in flight when the signal comes.
    let audit =
        HeraldProcess::start("audit-log", &kafka, &db, &[("CONSUMER_MAX_BATCH", "50")]).await;
    support::eventually(Duration::from_secs(60), "500 events processed", || async {
        let processed = audit.metric("herald_consumer_processed_total").await;
        if processed >= 500.0 {
            Ok(())
        } else {
            Err(format!("{processed} processed"))
        }
    })
    .await;
    let (status, took) = audit.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let rows = support::audit::rows_by_id(&db).await;
    assert!(
        rows.len() < acked.len(),
        "stopped before the end of the backlog"
    );

    // Per partition: the committed offset is exactly one past the last row written.
    let topics = app.topics();
    let group = format!("{}{}", kafka.topic_prefix, audit_log::NAME);
    let committed = platform::kafka::committed_offsets(&kafka, &group, &topics)
        .await
        .unwrap();
    let database = Database::connect(&db).await.unwrap();
    let written: Vec<(String, i64, i64)> = platform::with_pool!(&database, pool => {
        sqlx::query_as("SELECT chain, COUNT(*), MAX(kafka_offset) FROM audit_log GROUP BY chain")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    eprintln!(
        "sigterm after {} of {} rows, exit in {took:?}",
        rows.len(),
        acked.len()
    );
    for (chain, count, max_offset) in &written {
        let (topic, partition) = chain.rsplit_once('/').unwrap();
        let offset = committed
            .get(&(topic.to_string(), partition.parse().unwrap()))
            .copied();
        assert_eq!(offset, Some(max_offset + 1), "chain {chain}");
        assert_eq!(*count, max_offset + 1, "chain {chain} has a row per offset");
    }
    let committed_total: i64 = committed.values().sum();
    assert_eq!(committed_total as usize, rows.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_and_later_records_still_apply() {
    let app = TestIngress::start_default().await;
    let kafka = app.kafka.clone();
    let orders = kafka.topic("orders");
    // The partition of key "o-poison", then garbage on it, then good events with that key.
    let before = app
        .post(&writer(), &support::order("o-poison"))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let partition = before["partition"].as_i64().unwrap() as i32;
    let publisher = Publisher::new(&kafka, Duration::from_secs(10)).unwrap();
    let garbage = OutgoingRecord {
        topic: orders.as_str().into(),
        key: b"o-poison".to_vec(),
        payload: b"\x00\x01 not avro at all".to_vec(),
        timestamp_ms: platform::clock::now_us() / 1000,
        headers: vec![("traceparent".into(), b"00-abc".to_vec())],
    };
    let poisoned = publisher.publish_all(&[garbage]).await.unwrap()[0];
    assert_eq!(poisoned.partition, partition, "same key, same partition");
    let mut expected = vec![Uuid::parse_str(before["event_id"].as_str().unwrap()).unwrap()];
    for _ in 0..3 {
        let after: serde_json::Value = app
            .post(&writer(), &support::order("o-poison"))
            .await
            .json()
            .await
            .unwrap();
        expected.push(Uuid::parse_str(after["event_id"].as_str().unwrap()).unwrap());
    }

    let file = support::test_dir(&format!("audit-{}.db", Uuid::new_v4().simple()));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let db = Database::connect(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
    let service = support::audit::in_process(db, &kafka, &ConsumerArgs::default()).await;
    let dlq = service.runner.dead_letter_topic();
    let store = service.store.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(service.runner.run(shutdown.clone()));

    let applied = support::eventually(
        Duration::from_secs(60),
        "every good event applied",
        || async {
            let page = store
                .list(
                    &audit_log::store::Filter::default(),
                    audit_log::store::Order::OldestFirst,
                    None,
                    100,
                )
                .await
                .unwrap();
            if page.len() >= expected.len() {
                Ok(page)
            } else {
                let ids: Vec<Uuid> = page.iter().map(|r| r.position.event_id).collect();
                Err(format!("{ids:?}"))
            }
        },
    )
    .await;
    let ids: Vec<Uuid> = applied.iter().map(|r| r.position.event_id).collect();
    assert_eq!(
        ids, expected,
        "every good event, in order, around the poison"
    );

    let letters = platform::kafka::read_to_end(&kafka, &[dlq], Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        letter.payload.as_deref(),
        Some(&b"\x00\x01 not avro at all"[..])
    );
    assert_eq!(letter.key.as_deref(), Some(&b"o-poison"[..]));
    let header = |name: &str| String::from_utf8(letter.header(name).unwrap().to_vec()).unwrap();
    assert_eq!(header(dlq_headers::TOPIC), orders);
    assert_eq!(header(dlq_headers::PARTITION), partition.to_string());
    assert_eq!(header(dlq_headers::OFFSET), poisoned.offset.to_string());
    assert_eq!(header(dlq_headers::ATTEMPTS), "1");
    assert!(
        header(dlq_headers::ERROR).contains("undecodable"),
        "{}",
        header(dlq_headers::ERROR)
    );
    assert_eq!(header("traceparent"), "00-abc", "original headers are kept");

    shutdown.cancel();
    consumer.await.unwrap().unwrap();
}
