//! Scheduled reports end to end: events posted at the real ingress, two real `herald
//! reports` processes on one PostgreSQL database (one with its wall clock five minutes
//! behind, see `support/wall_clock_skew.c`), a run left behind by a dead replica, a restart after a gap, and the
//! output checked against what was posted.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::postgres::PgPool;
use support::audit::fresh_postgres;
use support::process::{HERALD, HeraldProcess};
use support::{TestIngress, client, test_dir, token};
use uuid::Uuid;

/// The clock the scheduler reads runs this far ahead of the real one, so hours end now.
const AHEAD_HOURS: i64 = 3;

/// The preload that moves a process's wall clock, built with the system's C compiler.
fn wall_clock_skew() -> String {
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/wall_clock_skew.c"
    );
    let library = test_dir("reports").join("wall_clock_skew.so");
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(source)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc)");
    assert!(built.success(), "{source} did not compile");
    library.display().to_string()
}

struct Setup {
    app: TestIngress,
    /// Where each replica's log goes.
    dir: std::path::PathBuf,
    database: String,
    schedule: String,
    report: String,
}

impl Setup {
    async fn replica(&self, name: &str, ahead_hours: i64, extra: &[(&str, &str)]) -> HeraldProcess {
        let offset = (ahead_hours * 3600).to_string();
        let mut env = vec![
            ("REPORTS_FILE", self.schedule.as_str()),
            ("REPORTS_CLOCK_OFFSET_SECS", offset.as_str()),
            ("REPORTS_CATCH_UP_HOURS", "6"),
            ("REPORTS_TICK_MS", "200"),
            ("REPORTS_REPLICA", name),
        ];
        env.extend_from_slice(extra);
        let log = self.dir.join(format!("{name}-{ahead_hours}.log"));
        HeraldProcess::start_logging("reports", &self.app.kafka, &self.database, &env, &log).await
    }

    async fn runs(&self) -> Vec<(String, String, i32, String)> {
        let pool = PgPool::connect(&self.database).await.unwrap();
        let rows = sqlx::query_as(
            "SELECT period, status, attempts, claimed_by FROM report_runs \
             WHERE report = $1 ORDER BY period",
        )
        .bind(&self.report)
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows
    }

    /// Waits until every run is done and `want(periods)` holds.
    /// The runs, once `want` accepts them and every one is done.
    async fn settled(
        &self,
        want: impl Fn(&[(String, String, i32, String)]) -> bool,
    ) -> Vec<(String, String, i32, String)> {
        support::eventually(Duration::from_secs(90), "the runs settling", || async {
            let runs = self.runs().await;
            if want(&runs) && runs.iter().all(|(_, status, _, _)| status == "done") {
                Ok(runs)
            } else {
                Err(format!("{runs:?}"))
            }
        })
        .await
    }

    async fn listed(&self, base: &str) -> Vec<Value> {
        let response = client()
            .get(format!(
                "{base}/api/v1/reports?report={}&limit=500",
                self.report
            ))
            .bearer_auth(token("ana", &["analyst"]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        page["items"].as_array().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_period_is_reported_once_across_skewed_replicas_with_the_posted_figures() {
    let app = TestIngress::start_default().await;
    let database = fresh_postgres().await;
    let report = format!("t-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let dir = test_dir("reports").join(&report);
    std::fs::create_dir_all(&dir).unwrap();
    let schedule = dir.join("reports.toml");
    std::fs::write(
        &schedule,
        format!(
            "[[report]]\nname = '{report}'\ntitle = 'Hourly test'\ncron = '1 * * * *'\n\
             covers = 'hour'\nrecipients = ['ops@example.com']\n"
        ),
    )
    .unwrap();
    let setup = Setup {
        app,
        dir: dir.clone(),
        database,
        schedule: schedule.display().to_string(),
        report: report.clone(),
    };

    // What is posted, all in the current UTC hour, by three actors.
    let now = jiff::Timestamp::now();
    let hour = jiff::Timestamp::from_second(now.as_second().div_euclid(3600) * 3600)
        .unwrap()
        .to_zoned(jiff::tz::TimeZone::UTC);
    let occurred = hour.timestamp().to_string();
    let actors = ["actor-a", "actor-b", "actor-c"];
    let mut events = Vec::new();
    for n in 0..5 {
        events.push((
            actors[n % 3],
            json!({"type": "user.registered", "occurred_at": occurred, "data": {
                "user_id": Uuid::new_v4(), "email": format!("r{n}@example.com"),
                "display_name": "R", "locale": "en", "time_zone": "UTC"
            }}),
        ));
    }
    for (n, (currency, cents)) in [
        ("EUR", 450),
        ("EUR", 450),
        ("EUR", 450),
        ("EUR", 450),
        ("USD", 1000),
        ("USD", 1000),
        ("USD", 1000),
    ]
    .into_iter()
    .enumerate()
    {
        events.push((
            actors[n % 3],
            json!({"type": "order.placed", "occurred_at": occurred, "data": {
                "order_id": format!("o-{n}"), "customer_id": "c-1",
                "items": [{"sku": "tea-01", "quantity": 1, "unit_price_cents": cents}],
                "total_cents": cents, "currency": currency
            }}),
        ));
    }
    // Delivery outcomes, as the notification service publishes them (its own actor, which
    // is not a user).
    for (channel, status) in [("email", "sent"), ("email", "sent"), ("push", "dead")] {
        events.push((
            "herald-notifications",
            json!({"type": "notification.settled", "occurred_at": occurred, "data": {
                "source_event_id": Uuid::new_v4().to_string(), "source_event_type": "order.placed",
                "channel": channel, "status": status, "attempts": 1, "user_id": "c-1"
            }}),
        ));
    }
    for (actor, event) in &events {
        let response = setup
            .app
            .post(&token(actor, &["user", "admin", "service"]), event)
            .await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }

    // A replica died holding the next hour's run: its lease runs out 4 s from now.
    let pool = PgPool::connect(&setup.database).await.unwrap();
    let next_hour = &hour + jiff::SignedDuration::from_hours(1);
    let next_id = format!(
        "{:04}-{:02}-{:02}T{:02}",
        next_hour.year(),
        next_hour.month(),
        next_hour.day(),
        next_hour.hour()
    );
    // The tables, as a replica makes them at start.
    let db = platform::db::Database::connect(&setup.database)
        .await
        .unwrap();
    reports::store::SqlStore::new(db, 0).await.unwrap();
    let fake_now_us = now.as_microsecond() + AHEAD_HOURS * 3_600_000_000;
    sqlx::query(
        "INSERT INTO report_runs (report, period, status, claimed_by, lease_until_us, attempts, \
         report_id, event_id, period_start_us, period_end_us, created_at_us) \
         VALUES ($1, $2, 'running', 'dead-replica', $3, 1, $4, $5, $6, $7, $8)",
    )
    .bind(&report)
    .bind(&next_id)
    .bind(fake_now_us + 4_000_000)
    .bind(Uuid::now_v7().to_string())
    .bind(Uuid::now_v7().to_string())
    .bind(next_hour.timestamp().as_microsecond())
    .bind(next_hour.timestamp().as_microsecond() + 3_600_000_000)
    .bind(fake_now_us)
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // Two replicas race for every period, one with its own clock five minutes behind: each
    // period is decided and claimed by the database's clock.
    let skew = wall_clock_skew();
    let a = setup.replica("a", AHEAD_HOURS, &[]).await;
    let b = setup
        .replica(
            "b-skewed",
            AHEAD_HOURS,
            &[("LD_PRELOAD", &skew), ("WALL_CLOCK_SKEW_SECS", "-300")],
        )
        .await;
    let this_hour = format!(
        "{:04}-{:02}-{:02}T{:02}",
        hour.year(),
        hour.month(),
        hour.day(),
        hour.hour()
    );
    // The hour holding the posted events waits for the aggregates to read them, so other
    // periods may be done before it: wait for it by name, not only for a count.
    let runs = setup
        .settled(|runs| {
            runs.len() >= 5 && runs.iter().any(|(period, _, _, _)| *period == this_hour)
        })
        .await;
    println!("runs: {runs:?}");
    assert!(runs.iter().any(|(period, _, _, _)| *period == this_hour));
    for (period, _, attempts, holder) in &runs {
        if *period == next_id {
            assert_eq!(*attempts, 2, "the dead replica's run was taken over");
            assert_ne!(holder, "dead-replica");
        } else {
            assert_eq!(*attempts, 1, "{period} ran once");
        }
    }
    let listed = setup.listed(&a.base).await;
    assert_eq!(
        listed.len(),
        runs.len(),
        "one output per period: {listed:?}"
    );
    let periods: HashSet<&str> = listed
        .iter()
        .map(|r| r["period"].as_str().unwrap())
        .collect();
    assert_eq!(periods.len(), runs.len());
    eprintln!(
        "fault scheduler-skew: two replicas, one 300 s behind, and a dead replica's run: {} \
         periods, {} outputs, {} runs taken over, 0 periods twice",
        runs.len(),
        listed.len(),
        runs.iter()
            .filter(|(_, _, attempts, _)| *attempts > 1)
            .count()
    );

    // The figures of this hour are what was posted.
    let ours = listed
        .iter()
        .find(|r| r["period"] == this_hour.as_str())
        .unwrap();
    let csv = client()
        .get(format!("{}{}", a.base, ours["csv"].as_str().unwrap()))
        .bearer_auth(token("ops", &["admin"]))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(
        csv.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = csv.text().await.unwrap();
    let figures: BTreeMap<(String, String), (String, String)> = csv
        .lines()
        .skip(1)
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            assert_eq!(cells.len(), 5, "{line}");
            (
                (cells[0].to_string(), cells[2].to_string()),
                (cells[3].to_string(), cells[4].to_string()),
            )
        })
        .collect();
    let figure = |metric: &str, key: &str| {
        figures
            .get(&(metric.to_string(), key.to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("no {metric} {key} in\n{csv}"))
    };
    assert_eq!(
        figure("events", "user.registered"),
        ("5".into(), String::new())
    );
    assert_eq!(
        figure("events", "order.placed"),
        ("7".into(), String::new())
    );
    assert_eq!(figure("signups", "").0, "5");
    assert_eq!(figure("active_users", "").0, "3");
    assert_eq!(figure("orders", "EUR"), ("4".into(), "1800".into()));
    assert_eq!(figure("orders", "USD"), ("3".into(), "3000".into()));
    assert_eq!(figure("period_active_users", "").0, "3");
    assert_eq!(figure("notifications", "email/sent").0, "2");
    assert_eq!(figure("notifications", "push/dead").0, "1");

    // The page renders in a real browser, chart included.
    let html = client()
        .get(format!("{}{}", a.base, ours["html"].as_str().unwrap()))
        .bearer_auth(token("ops", &["admin"]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let page = dir.join("report.html");
    std::fs::write(&page, &html).unwrap();
    let rendered = tokio::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .await
        .expect("chromium (Debian's): run infra/scripts/services.sh");
    let dom = String::from_utf8_lossy(&rendered.stdout);
    assert!(dom.contains("<svg id=\"events-chart\""), "{dom}");
    assert_eq!(dom.matches("<rect ").count(), 1, "one bar for the hour");
    assert!(dom.contains("Hourly test"));

    // Each run announced itself once.
    let announced: Vec<Value> = setup
        .app
        .read("reports")
        .await
        .into_iter()
        .map(|(_, decoded)| decoded.data)
        .filter(|data| data["report"] == report.as_str())
        .collect();
    let ids: HashSet<&str> = announced
        .iter()
        .map(|d| d["report_id"].as_str().unwrap())
        .collect();
    // Periods keep coming due while the test reads: later runs may be announced too.
    assert!(
        ids.len() >= runs.len(),
        "a finished run was not announced: {announced:?}"
    );
    assert_eq!(announced.len(), ids.len(), "no announcement twice");

    // The API's refusals.
    let status = |path: String, bearer: Option<String>| {
        let request = client().get(format!("{}{path}", a.base));
        let request = match bearer {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/api/v1/reports".into(), None).await, 401);
    assert_eq!(
        status("/api/v1/reports".into(), Some(token("u", &["user"]))).await,
        403
    );
    let analyst = Some(token("ana", &["analyst"]));
    assert_eq!(
        status(
            format!("/api/v1/reports/{}.csv", Uuid::new_v4()),
            analyst.clone()
        )
        .await,
        404
    );
    assert_eq!(
        status("/api/v1/reports/nope.pdf".into(), analyst.clone()).await,
        400
    );
    assert_eq!(status("/api/v1/reports?limit=0".into(), analyst).await, 400);

    // Everything down for three hours: on restart, the missed hours come out once each.
    a.terminate().await;
    b.terminate().await;
    let before = runs.len();
    let a = setup.replica("a", AHEAD_HOURS + 3, &[]).await;
    let runs = setup.settled(|runs| runs.len() >= before + 3).await;
    assert!(
        runs.iter()
            .all(|(period, _, attempts, _)| *attempts == 1 || *period == next_id)
    );
    assert_eq!(setup.listed(&a.base).await.len(), runs.len());

    // By hand: produced already, so nothing happens.
    let by_hand = tokio::process::Command::new(HERALD)
        .args(["reports", "run", &report, "--period", &this_hour])
        .env("KAFKA_BROKERS", setup.app.kafka.brokers.as_deref().unwrap())
        .env("TOPIC_PREFIX", &setup.app.kafka.topic_prefix)
        .env("DATABASE_URL", &setup.database)
        .env("REPORTS_FILE", &setup.schedule)
        .env(
            "REPORTS_CLOCK_OFFSET_SECS",
            ((AHEAD_HOURS + 3) * 3600).to_string(),
        )
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&by_hand.stdout);
    assert!(
        by_hand.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&by_hand.stderr)
    );
    assert!(
        printed.contains(&format!(
            "produced before as {}",
            ours["report_id"].as_str().unwrap()
        )),
        "{printed}"
    );
    let unknown = tokio::process::Command::new(HERALD)
        .args(["reports", "run", "no-such-report", "--period", &this_hour])
        .env("KAFKA_BROKERS", setup.app.kafka.brokers.as_deref().unwrap())
        .env("DATABASE_URL", &setup.database)
        .env("REPORTS_FILE", &setup.schedule)
        .output()
        .await
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no report \"no-such-report\""));

    let (status, _) = a.terminate().await;
    assert!(status.success(), "{status}");
    setup.app.stop().await;
}
