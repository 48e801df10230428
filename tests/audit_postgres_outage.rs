//! PostgreSQL stopped under a running audit log: no offset is committed past an event whose
//! row is not written, and when the database returns the consumer catches up by itself.
//!
//! A test binary of its own: it stops the shared PostgreSQL server, and cargo runs test
//! binaries one after another, so no other test sees the outage.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use platform::consumer::ConsumerArgs;
use platform::db::Database;
use support::audit::{Outage, fresh_postgres, publish, tally, wait_for_rows};
use support::{TestIngress, token};
use uuid::Uuid;

async fn rows_per_chain(url: &str) -> HashMap<String, i64> {
    let db = Database::connect(url).await.unwrap();
    let rows: Vec<(String, i64)> = platform::with_pool!(&db, pool => {
        sqlx::query_as("SELECT chain, COUNT(*) FROM audit_log GROUP BY chain")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_offset_passes_an_unwritten_row_while_postgres_is_down() {
    let app = TestIngress::start_default().await;
    let kafka = app.kafka.clone();
    let writer = token("outage-test", &["user", "admin", "service"]);
    let db = fresh_postgres().await;
    let consumer_args = ConsumerArgs {
        max_backoff_ms: 1000,
        ..ConsumerArgs::default()
    };
    let service = support::audit::in_process(
        Database::connect(&db).await.unwrap(),
        &kafka,
        &consumer_args,
    )
    .await;
    let group = service.runner.group().to_string();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(service.runner.run(shutdown.clone()));

    let mut acked = publish(&app, &writer, 10, 100, Duration::ZERO).await;
    let before: HashSet<Uuid> = acked.iter().copied().collect();
    let rows = wait_for_rows(&db, &before, Duration::from_secs(60)).await;
    assert_eq!(rows.len(), 1000);
    let written = rows_per_chain(&db).await;

    let outage = Outage::begin();
    let started = Instant::now();
    acked.extend(publish(&app, &writer, 10, 100, Duration::ZERO).await);
    let topics = app.topics();
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let committed = platform::kafka::committed_offsets(&kafka, &group, &topics)
            .await
            .unwrap();
        for ((topic, partition), offset) in committed {
            let chain = format!("{topic}/{partition}");
            let rows = written.get(&chain).copied().unwrap_or(0);
            assert!(
                offset <= rows,
                "{chain}: committed offset {offset} passes the {rows} rows written"
            );
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    outage.end();
    eprintln!(
        "database down for {:?}, {samples} samples of committed offsets, none past a written row",
        started.elapsed()
    );

    let expected: HashSet<Uuid> = acked.iter().copied().collect();
    let rows = wait_for_rows(&db, &expected, Duration::from_secs(90)).await;
    let (events, total, duplicates, missing) = tally(&acked, &rows);
    eprintln!(
        "after the outage: events {events}, rows {total}, duplicates {duplicates}, missing {missing}"
    );
    assert_eq!((events, total, duplicates, missing), (2000, 2000, 0, 0));
    shutdown.cancel();
    consumer.await.unwrap().unwrap();
    let committed = platform::kafka::committed_offsets(&kafka, &group, &topics)
        .await
        .unwrap();
    assert_eq!(
        committed.values().sum::<i64>(),
        2000,
        "everything committed at the end"
    );
}
