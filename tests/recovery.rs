//! Recovery, as an operator would do it after losing a store:
//! - the audit log's database and the search index are destroyed, and rebuilt from the
//!   topics alone (`herald audit rebuild`, then the consumers started again; the search index
//!   rebuilds from its own offsets when its folder is empty): the same chain heads, the same
//!   documents;
//! - what the topics do not hold (accounts and their password hashes, signing keys) comes
//!   back from `herald backup` / `herald restore`, on PostgreSQL and on SQLite, and the
//!   account signs in again.
//!
//! `RECOVERY_EVENTS` sets how many events the rebuild replays (1,000 by default; the figures
//! per 100,000 events in RELIABILITY.md come from `RECOVERY_EVENTS=100000`).

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::postgres::PgPool;
use support::process::{HERALD, HeraldProcess};
use support::{TestIngress, token};

/// Every chain's head: (chain, last seq, last hash).
async fn heads(database_url: &str) -> Vec<(String, i64, String)> {
    let pool = PgPool::connect(database_url).await.unwrap();
    let heads =
        sqlx::query_as("SELECT chain, last_seq, last_hash FROM audit_chains ORDER BY chain")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    heads
}

async fn documents(search: &str) -> u64 {
    support::search_stats(search).await["documents"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until `count` gives `want` (panics after `within`); how long it took.
async fn reaches<F, Fut>(want: u64, within: Duration, count: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let started = Instant::now();
    support::eventually(within, &format!("a count of {want}"), || async {
        let now = count().await;
        if now == want {
            Ok(())
        } else {
            Err(format!("stuck at {now} of {want}"))
        }
    })
    .await;
    started.elapsed()
}

async fn row_count(database_url: &str) -> u64 {
    support::audit::rows_by_id(database_url)
        .await
        .values()
        .sum::<usize>() as u64
}

fn herald(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(HERALD)
        .args(args)
        .env_remove("DATABASE_URL")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_and_the_search_index_are_rebuilt_from_the_log_alone() {
    let events: usize = std::env::var("RECOVERY_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let app = Arc::new(TestIngress::start_default().await);
    let kafka = app.kafka.clone();
    let lost = support::audit::fresh_postgres().await;
    let dir = support::test_dir(&format!("recovery-{}", uuid::Uuid::new_v4().simple()));
    let index = dir.join("index").display().to_string();
    let search_env = [
        ("SEARCH_INDEX_DIR", index.as_str()),
        ("SEARCH_COMMIT_MS", "100"),
    ];
    let audit = HeraldProcess::start("audit-log", &kafka, &lost, &[]).await;
    let search = HeraldProcess::start("search-indexer", &kafka, &lost, &search_env).await;

    let writer = token("recovery-writer", &["service", "admin"]);
    let per_batch = 500.min(events);
    let acked =
        support::audit::publish(&app, &writer, events / per_batch, per_batch, Duration::ZERO).await;
    assert_eq!(
        acked.len(),
        events / per_batch * per_batch,
        "every batch acknowledged"
    );
    let ids: HashSet<uuid::Uuid> = acked.iter().copied().collect();
    let (missing, _) =
        support::audit::missing_and_extra(&lost, &ids, Duration::from_secs(300)).await;
    assert_eq!(missing, 0);
    // The index has caught up once its count stops moving at the end of the topics.
    let mut before_docs = documents(&search.base).await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = documents(&search.base).await;
        if now == before_docs && now > 0 {
            break;
        }
        before_docs = now;
    }
    let before_heads = heads(&lost).await;
    assert!(!before_heads.is_empty());
    audit.terminate().await;
    search.terminate().await;

    // The losses: a new, empty database; the index folder gone.
    let rebuilt = support::audit::fresh_postgres().await;
    std::fs::remove_dir_all(dir.join("index")).unwrap();
    let brokers = kafka.brokers.clone().unwrap();
    let env = [
        ("KAFKA_BROKERS", brokers.as_str()),
        ("TOPIC_PREFIX", kafka.topic_prefix.as_str()),
    ];
    // Into the old database, which still holds the log: refused.
    let (refused, said) = herald(
        &["audit", "rebuild"],
        &[env[0], env[1], ("DATABASE_URL", lost.as_str())],
    );
    assert!(!refused && said.contains("empty database"), "{said}");
    let (rebuilt_ok, said) = herald(
        &["audit", "rebuild"],
        &[env[0], env[1], ("DATABASE_URL", rebuilt.as_str())],
    );
    assert!(rebuilt_ok, "{said}");

    let started = Instant::now();
    let audit = HeraldProcess::start("audit-log", &kafka, &rebuilt, &[]).await;
    reaches(events as u64, Duration::from_secs(600), || {
        row_count(&rebuilt)
    })
    .await;
    let audit_took = started.elapsed();
    let started = Instant::now();
    let search = HeraldProcess::start("search-indexer", &kafka, &rebuilt, &search_env).await;
    reaches(before_docs, Duration::from_secs(600), || {
        documents(&search.base)
    })
    .await;
    let search_took = started.elapsed();

    assert_eq!(
        heads(&rebuilt).await,
        before_heads,
        "the chains rebuilt as they were"
    );
    let (verified, said) = herald(&["audit", "verify"], &[("DATABASE_URL", rebuilt.as_str())]);
    assert!(verified, "{said}");
    let per_100k = |took: Duration| took.as_secs_f64() * 100_000.0 / events as f64;
    eprintln!(
        "recovery: {events} events; audit log rebuilt in {:.1} s ({:.0} s per 100,000), {} \
         chains with the same heads; search index rebuilt in {:.1} s ({:.0} s per 100,000), \
         {before_docs} documents",
        audit_took.as_secs_f64(),
        per_100k(audit_took),
        before_heads.len(),
        search_took.as_secs_f64(),
        per_100k(search_took)
    );
    audit.terminate().await;
    search.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An account registered, the database backed up, lost, restored into an empty one: the
/// account signs in again with its password, and tokens verify with the restored keys.
async fn backup_and_restore_sign_in(database: String, restored: String, dir: &std::path::Path) {
    let kafka = support::kafka(&support::brokers().await);
    let auth = HeraldProcess::start("auth", &kafka, &database, &[]).await;
    let email = format!("backup-{}@example.com", uuid::Uuid::new_v4().simple());
    let password = "correct horse battery staple";
    let client = support::client();
    let registered = client
        .post(format!("{}/api/v1/auth/register", auth.base))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    let file = dir.join("herald.backup");
    let (ok, said) = herald(
        &["backup", "--output", file.to_str().unwrap()],
        &[("DATABASE_URL", database.as_str())],
    );
    assert!(ok, "{said}");
    auth.terminate().await;

    let (ok, said) = herald(
        &["restore", "--input", file.to_str().unwrap()],
        &[("DATABASE_URL", restored.as_str())],
    );
    assert!(ok, "{said}");
    // Never over a database in use.
    let (again, said) = herald(
        &["restore", "--input", file.to_str().unwrap()],
        &[("DATABASE_URL", restored.as_str())],
    );
    assert!(!again && said.contains("empty"), "{said}");
    let auth = HeraldProcess::start("auth", &kafka, &restored, &[]).await;
    let login: Value = client
        .post(format!("{}/api/v1/auth/login", auth.base))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = login["access_token"]
        .as_str()
        .expect("signed in after the restore");
    let me = client
        .get(format!("{}/api/v1/me", auth.base))
        .bearer_auth(access)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    auth.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_backup_restored_into_an_empty_database_signs_the_account_in() {
    let dir = support::test_dir(&format!("backup-pg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = support::audit::fresh_postgres().await;
    let restored = support::audit::fresh_postgres().await;
    backup_and_restore_sign_in(database, restored, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_backup_restored_into_a_new_data_folder_signs_the_account_in() {
    let dir = support::test_dir(&format!("backup-sqlite-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("lost")).unwrap();
    let database = format!("sqlite://{}?mode=rwc", dir.join("lost/herald.db").display());
    let restored = format!("sqlite://{}", dir.join("new/herald.db").display());
    backup_and_restore_sign_in(database, restored, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The notifications' projection of users (recipients' addresses): as the database held it.
async fn projection(database_url: &str) -> Vec<(String, Option<String>, Option<String>, bool)> {
    let pool = PgPool::connect(database_url).await.unwrap();
    let rows = sqlx::query_as(
        "SELECT user_id, email, display_name, deleted FROM notify_users ORDER BY user_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

async fn count(database_url: &str, table: &str) -> i64 {
    let pool = PgPool::connect(database_url).await.unwrap();
    // The table name is one of this file's constants.
    let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifications_projection_is_rebuilt_from_the_log_sending_nothing() {
    let app = TestIngress::start_default().await;
    let kafka = app.kafka.clone();
    let database = support::audit::fresh_postgres().await;
    let smtp = support::smtp::SmtpServer::start("projection").await;
    let notifications = HeraldProcess::start(
        "notifications",
        &kafka,
        &database,
        &[("SMTP_URL", smtp.url().as_str())],
    )
    .await;
    let writer = token("projection-writer", &["service", "admin"]);
    let users = 40;
    let events: Vec<Value> = (0..users)
        .map(|i| support::ledger::registrations(7, i).1)
        .collect();
    let registered = app.post(&writer, &json!({ "events": events })).await;
    assert_eq!(registered.status(), 202);
    let settle = Instant::now();
    support::eventually(Duration::from_secs(120), "the welcome emails", || async {
        let received = smtp.received().len();
        if received >= users as usize {
            Ok(())
        } else {
            Err(format!("{received} of {users} welcome emails"))
        }
    })
    .await;
    // Then some change: a new name for one, a deletion for another.
    let first = support::ledger::registrations(7, 0).0;
    let second = support::ledger::registrations(7, 1).0;
    let changes = json!({"events": [
        {"type": "user.profile_updated", "data": {"user_id": first, "display_name": "Renamed"}},
        {"type": "user.deleted", "data": {"user_id": second}},
    ]});
    assert_eq!(app.post(&writer, &changes).await.status(), 202);
    support::eventually(
        Duration::from_secs(120).saturating_sub(settle.elapsed()),
        "the deletion applied",
        || async {
            if projection(&database).await.iter().any(|row| row.3) {
                Ok(())
            } else {
                Err("the deletion never applied")
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    notifications.terminate().await;
    let before = projection(&database).await;
    assert!(before.iter().any(|row| row.2.as_deref() == Some("Renamed")));
    let (deliveries, emails) = (
        count(&database, "notify_deliveries").await,
        smtp.received().len(),
    );

    // The projection lost (as a restore from an older backup would leave it).
    let pool = PgPool::connect(&database).await.unwrap();
    sqlx::query("TRUNCATE notify_users, notify_orders")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let brokers = kafka.brokers.clone().unwrap();
    let (ok, said) = herald(
        &["notifications", "rebuild-projection"],
        &[
            ("KAFKA_BROKERS", brokers.as_str()),
            ("TOPIC_PREFIX", kafka.topic_prefix.as_str()),
            ("DATABASE_URL", database.as_str()),
        ],
    );
    assert!(ok, "{said}");
    assert_eq!(projection(&database).await, before, "{said}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&database, "notify_deliveries").await, deliveries);
    assert_eq!(smtp.received().len(), emails, "the rebuild sent something");
    eprintln!("recovery: {said}");
}

/// The reports' aggregates: every counter and the active users per hour.
async fn aggregates(database_url: &str) -> (Vec<(String, i64, String, i64, i64)>, i64) {
    let pool = PgPool::connect(database_url).await.unwrap();
    let counters = sqlx::query_as(
        "SELECT metric, hour, key, count, total FROM report_counters ORDER BY metric, hour, key",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let (active,): (i64,) = sqlx::query_as("SELECT count(*) FROM report_active")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    (counters, active)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_aggregates_are_rebuilt_by_replaying_the_topics_into_emptied_tables() {
    let app = TestIngress::start_default().await;
    let kafka = app.kafka.clone();
    let database = support::audit::fresh_postgres().await;
    let reports = HeraldProcess::start("reports", &kafka, &database, &[]).await;
    let writer = token("aggregates-writer", &["service", "admin"]);
    support::audit::publish(&app, &writer, 4, 250, Duration::ZERO).await;
    // Settled: the count of applied events stops moving.
    let mut seen = -1;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = count(&database, "report_seen").await;
        if now == seen && now > 0 {
            break;
        }
        seen = now;
    }
    reports.terminate().await;
    let before = aggregates(&database).await;
    assert!(!before.0.is_empty());

    let pool = PgPool::connect(&database).await.unwrap();
    sqlx::query("TRUNCATE report_seen, report_counters, report_active")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let brokers = kafka.brokers.clone().unwrap();
    let (ok, said) = herald(
        &["reprocess", "reports", "--from", "1970-01-01T00:00:00Z"],
        &[
            ("KAFKA_BROKERS", brokers.as_str()),
            ("TOPIC_PREFIX", kafka.topic_prefix.as_str()),
        ],
    );
    assert!(ok, "{said}");
    let reports = HeraldProcess::start("reports", &kafka, &database, &[]).await;
    support::eventually(Duration::from_secs(120), "the replay", || async {
        let now = count(&database, "report_seen").await;
        if now >= seen {
            Ok(())
        } else {
            Err(format!("the replay stalled at {now} of {seen}"))
        }
    })
    .await;
    assert_eq!(aggregates(&database).await, before);
    reports.terminate().await;
}
