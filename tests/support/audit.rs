//! What the audit-log tests share: a fresh PostgreSQL database per test, a steady stream of
//! events of every type, and counts of rows.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use platform::kafka::KafkaArgs;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;
use uuid::Uuid;

use super::{SECRET, TestIngress};

/// A new, empty database on the test PostgreSQL server; its URL.
pub async fn fresh_postgres() -> String {
    let admin = std::env::var("TEST_POSTGRES_URL")
        .expect("TEST_POSTGRES_URL must point at a PostgreSQL database: run infra/scripts/test.sh");
    let name = format!("audit_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let pool = PgPool::connect(&admin)
        .await
        .expect("test PostgreSQL reachable");
    // The name is generated here from hex digits: nothing to inject.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("creating a test database");
    pool.close().await;
    let (base, _) = admin
        .rsplit_once('/')
        .expect("a database URL ends in /name");
    format!("{base}/{name}")
}

/// An event of each type in turn, with keys that spread over every partition.
pub fn mixed_event(catalog: &events::Catalog, i: usize) -> Value {
    let types: Vec<_> = catalog.event_types().collect();
    let schema = types[i % types.len()];
    let mut data = schema.example.clone();
    let uuid_keyed = data[&schema.key_field]
        .as_str()
        .is_some_and(|k| Uuid::try_parse(k).is_ok());
    data[&schema.key_field] = if uuid_keyed {
        json!(Uuid::from_u128(0x5eed_0000_0000_0000 + i as u128))
    } else {
        json!(format!("k-{i}"))
    };
    json!({"type": schema.event_type, "data": data})
}

/// Posts `batches` batches of `per_batch` mixed events, `pause` apart; returns the ids of
/// every acknowledged event (a request that failed acknowledged nothing).
pub async fn publish(
    app: &TestIngress,
    token: &str,
    batches: usize,
    per_batch: usize,
    pause: Duration,
) -> Vec<Uuid> {
    let catalog = app.state.catalog().clone();
    let mut acked = Vec::new();
    for b in 0..batches {
        let events: Vec<Value> = (0..per_batch)
            .map(|i| mixed_event(&catalog, b * per_batch + i))
            .collect();
        let response = app.post(token, &json!({ "events": events })).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(
            status == 202 || status == 503,
            "publishing failed: {status} {}",
            body.to_string().chars().take(300).collect::<String>()
        );
        if status == 202 {
            for event in body["events"].as_array().unwrap() {
                acked.push(Uuid::parse_str(event["event_id"].as_str().unwrap()).unwrap());
            }
        }
        tokio::time::sleep(pause).await;
    }
    acked
}

/// The rows of the events clients posted: Herald's services publish events of their own
/// (actors `herald-*`: the notification service's delivery outcomes), which a test that
/// counts what it wrote does not expect.
const SELECT_CLIENT_EVENTS: &str = "SELECT id FROM audit_log WHERE actor NOT LIKE 'herald-%'";

/// Every audit row's event id of a client's event, with how many rows carry it.
pub async fn rows_by_id(database_url: &str) -> HashMap<Uuid, usize> {
    let db = platform::db::Database::connect(database_url).await.unwrap();
    let ids: Vec<(Uuid,)> = platform::with_pool!(&db, pool => {
        sqlx::query_as(SELECT_CLIENT_EVENTS).fetch_all(pool).await.unwrap()
    });
    let mut counts = HashMap::new();
    for (id,) in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

/// Waits until every id in `expected` has a row (panics after `within`); the rows then.
pub async fn wait_for_rows(
    database_url: &str,
    expected: &HashSet<Uuid>,
    within: Duration,
) -> HashMap<Uuid, usize> {
    super::eventually(within, "a row of every expected event", || async {
        let rows = rows_by_id(database_url).await;
        let missing = expected.iter().filter(|id| !rows.contains_key(*id)).count();
        if missing == 0 {
            Ok(rows)
        } else {
            Err(format!(
                "{missing} of {} events without a row, {} rows",
                expected.len(),
                rows.values().sum::<usize>()
            ))
        }
    })
    .await
}

/// Waits for a row of every event in `expected`, then counts (missing, extra): events with no
/// row, and rows beyond one per expected event (rows of no expected event; the primary key
/// makes two rows of one event impossible).
pub async fn missing_and_extra(
    database_url: &str,
    expected: &HashSet<Uuid>,
    within: Duration,
) -> (usize, usize) {
    let rows = wait_for_rows(database_url, expected, within).await;
    let missing = expected.iter().filter(|id| !rows.contains_key(id)).count();
    let extra = rows.values().sum::<usize>() - (expected.len() - missing);
    (missing, extra)
}

/// Counts of a run: (events acknowledged, rows, duplicated ids, missing ids). The primary
/// key makes a duplicated id impossible to store: a consumer that tried would fail its batch
/// over and over, which shows as missing rows, so `missing` and `rows == events` are the
/// checks that can fail; the duplicate count is reported for the record.
pub fn tally(acked: &[Uuid], rows: &HashMap<Uuid, usize>) -> (usize, usize, usize, usize) {
    let total_rows = rows.values().sum();
    let duplicates = rows.values().filter(|n| **n > 1).count();
    let missing = acked.iter().filter(|id| !rows.contains_key(id)).count();
    (acked.len(), total_rows, duplicates, missing)
}

/// The audit log in this process, on `db`, with the test token secret.
pub async fn in_process(
    db: platform::db::Database,
    kafka: &KafkaArgs,
    consumer: &platform::consumer::ConsumerArgs,
) -> audit_log::Service {
    let auth =
        platform::auth::Authenticator::from_args(&platform::auth::AuthArgs::hs256(SECRET)).unwrap();
    audit_log::Service::connect(
        db,
        kafka,
        &platform::contract::ContractArgs::default(),
        consumer,
        std::sync::Arc::new(auth),
    )
    .await
    .unwrap()
}

/// The local PostgreSQL cluster, stopped until dropped.
pub struct Outage {
    cluster: Vec<String>,
}

impl Outage {
    pub fn begin() -> Self {
        let listing = std::process::Command::new("pg_lsclusters")
            .arg("-h")
            .output()
            .expect("pg_lsclusters (the test PostgreSQL is Debian's; run infra/scripts/test.sh)");
        let listing = String::from_utf8(listing.stdout).unwrap();
        let cluster: Vec<String> = listing
            .split_whitespace()
            .take(2)
            .map(str::to_string)
            .collect();
        let outage = Self { cluster };
        outage.ctl("stop");
        outage
    }

    fn ctl(&self, action: &str) {
        let status = std::process::Command::new("pg_ctlcluster")
            .args(&self.cluster)
            .args([action, "-m", "fast"])
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctlcluster {action}");
    }

    pub fn end(self) {}
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.ctl("start");
    }
}
