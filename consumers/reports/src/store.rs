//! The reports' tables, on PostgreSQL or SQLite: the aggregates, the runs (claims with a
//! lease) and the stored output.

use platform::db::Database;
use platform::with_pool;
use serde::Serialize;
use uuid::Uuid;

use crate::aggregates::{Additions, Tally};
use crate::schedule::Period;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reports store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("reports store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// What the store holds cannot be read as it was written (a bug, or a hand edit).
    #[error("reports store: {0}")]
    Unreadable(String),
}

/// One event as the aggregates need it.
pub struct Seen<'a> {
    pub event_id: Uuid,
    pub event_type: &'a str,
    /// Unix seconds.
    pub occurred_at: i64,
    pub actor: &'a str,
    pub data: &'a serde_json::Value,
}

/// What trying to run a (report, period) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours to run: first (`attempt` 1), or taken over from a run whose lease expired.
    Run {
        report_id: Uuid,
        event_id: Uuid,
        attempt: i32,
    },
    /// Finished already.
    Done { report_id: Uuid },
    /// Another replica holds the lease.
    Held,
}

/// One stored report, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub report_id: String,
    pub report: String,
    pub period: String,
    pub period_start: String,
    pub period_end: String,
    pub created_at: String,
    pub csv: String,
    pub html: String,
}

/// A stored report's content.
pub struct Output {
    pub report: String,
    pub period: String,
    pub csv: String,
    pub html: String,
}

/// Rows of `report_counters` in a range of hours: (metric, hour, key, tally).
pub type Figures = Vec<(String, i64, String, Tally)>;

pub struct SqlStore {
    db: Database,
    /// Added to the database's clock: for drills and tests only.
    clock_offset_us: i64,
}

/// Most rows in one multi-row statement.
const CHUNK: usize = 500;

fn rfc3339(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl SqlStore {
    pub async fn new(db: Database, clock_offset_us: i64) -> Result<Self, StoreError> {
        let postgres = sqlx::migrate!("./migrations/postgres");
        let sqlite = sqlx::migrate!("./migrations/sqlite");
        platform::db::migrate(&db, postgres, sqlite).await?;
        Ok(Self {
            db,
            clock_offset_us,
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The database's clock, in Unix microseconds: every replica decides periods and leases
    /// by this one clock, whatever its own says.
    pub async fn now_us(&self) -> Result<i64, StoreError> {
        let (now,): (i64,) = match &self.db {
            Database::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)",
                )
                .fetch_one(pool)
                .await?
            }
            Database::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
                )
                .fetch_one(pool)
                .await?
            }
        };
        Ok(now + self.clock_offset_us)
    }

    /// Adds the events not seen before to the aggregates, in one transaction; answers how
    /// many were new.
    pub async fn apply(&self, events: &[Seen<'_>], now_us: i64) -> Result<usize, StoreError> {
        let mut new = 0;
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let mut additions = Additions::default();
            for chunk in events.chunks(CHUNK) {
                let mut insert = sqlx::QueryBuilder::new("INSERT INTO report_seen (event_id, seen_at_us) ");
                insert.push_values(chunk, |mut row, event| {
                    row.push_bind(event.event_id.to_string()).push_bind(now_us);
                });
                insert.push(" ON CONFLICT (event_id) DO NOTHING RETURNING event_id");
                let inserted: Vec<(String,)> = insert.build_query_as().fetch_all(&mut *tx).await?;
                let inserted: std::collections::HashSet<String> =
                    inserted.into_iter().map(|(id,)| id).collect();
                for event in chunk {
                    if inserted.contains(&event.event_id.to_string()) {
                        additions.add(event.event_type, event.occurred_at, event.actor, event.data);
                        new += 1;
                    }
                }
            }
            let counters: Vec<_> = additions.counters.into_iter().collect();
            for chunk in counters.chunks(CHUNK) {
                let mut upsert = sqlx::QueryBuilder::new(
                    "INSERT INTO report_counters (metric, hour, key, count, total) ",
                );
                upsert.push_values(chunk, |mut row, (counter, tally)| {
                    row.push_bind(counter.metric)
                        .push_bind(counter.hour)
                        .push_bind(counter.key.clone())
                        .push_bind(tally.count)
                        .push_bind(tally.sum);
                });
                upsert.push(
                    " ON CONFLICT (metric, hour, key) DO UPDATE SET \
                     count = report_counters.count + excluded.count, \
                     total = report_counters.total + excluded.total",
                );
                upsert.build().execute(&mut *tx).await?;
            }
            let active: Vec<_> = additions.active.into_iter().collect();
            for chunk in active.chunks(CHUNK) {
                let mut insert = sqlx::QueryBuilder::new("INSERT INTO report_active (hour, user_id) ");
                insert.push_values(chunk, |mut row, (hour, user)| {
                    row.push_bind(*hour).push_bind(user.clone());
                });
                insert.push(" ON CONFLICT (hour, user_id) DO NOTHING");
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(new)
    }

    /// Claims `(report, period)` for `me` until `now_us + lease_us`: inserting the run
    /// claims it; a run still `running` past its lease is taken over (compare and set).
    pub async fn claim(
        &self,
        report: &str,
        period: &Period,
        me: &str,
        now_us: i64,
        lease_us: i64,
    ) -> Result<Claim, StoreError> {
        let fresh = "INSERT INTO report_runs (report, period, status, claimed_by, lease_until_us, \
             attempts, report_id, event_id, period_start_us, period_end_us, created_at_us) \
             VALUES ($1, $2, 'running', $3, $4, 1, $5, $6, $7, $8, $9) \
             ON CONFLICT (report, period) DO NOTHING";
        let take_over = "UPDATE report_runs SET claimed_by = $3, lease_until_us = $4, \
             attempts = attempts + 1 \
             WHERE report = $1 AND period = $2 AND status = 'running' AND lease_until_us < $5";
        let select = "SELECT status, report_id, event_id, attempts, claimed_by FROM report_runs \
             WHERE report = $1 AND period = $2";
        let (report_id, event_id) = (Uuid::now_v7(), Uuid::now_v7());
        let inserted = with_pool!(&self.db, pool => {
            sqlx::query(fresh)
                .bind(report)
                .bind(&period.id)
                .bind(me)
                .bind(now_us + lease_us)
                .bind(report_id.to_string())
                .bind(event_id.to_string())
                .bind(period.start.as_microsecond())
                .bind(period.end.as_microsecond())
                .bind(now_us)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if inserted == 1 {
            return Ok(Claim::Run {
                report_id,
                event_id,
                attempt: 1,
            });
        }
        let taken = with_pool!(&self.db, pool => {
            sqlx::query(take_over)
                .bind(report)
                .bind(&period.id)
                .bind(me)
                .bind(now_us + lease_us)
                .bind(now_us)
                .execute(pool)
                .await?
                .rows_affected()
        });
        let (status, report_id, event_id, attempts, holder): (String, String, String, i32, String) = with_pool!(&self.db, pool => {
            sqlx::query_as(select).bind(report).bind(&period.id).fetch_one(pool).await?
        });
        let parse = |text: &str| {
            Uuid::parse_str(text)
                .map_err(|e| StoreError::Unreadable(format!("run id {text:?}: {e}")))
        };
        Ok(match status.as_str() {
            "done" => Claim::Done {
                report_id: parse(&report_id)?,
            },
            _ if taken == 1 && holder == me => Claim::Run {
                report_id: parse(&report_id)?,
                event_id: parse(&event_id)?,
                attempt: attempts,
            },
            _ => Claim::Held,
        })
    }

    /// Stores a run's output, if `me` still holds the run; `false` when the lease was lost
    /// to another replica meanwhile (nothing is written then).
    #[expect(clippy::too_many_arguments, reason = "one row's columns")]
    pub async fn save_output(
        &self,
        report: &str,
        period: &Period,
        report_id: Uuid,
        me: &str,
        csv: &str,
        html: &str,
        now_us: i64,
    ) -> Result<bool, StoreError> {
        let held = "SELECT COUNT(*) FROM report_runs \
             WHERE report = $1 AND period = $2 AND claimed_by = $3 AND status = 'running'";
        let store = "INSERT INTO report_outputs (report_id, report, period, period_start_us, \
             period_end_us, csv, html, created_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (report_id) DO UPDATE SET csv = excluded.csv, html = excluded.html";
        Ok(with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let (holding,): (i64,) = sqlx::query_as(held)
                .bind(report)
                .bind(&period.id)
                .bind(me)
                .fetch_one(&mut *tx)
                .await?;
            if holding == 1 {
                sqlx::query(store)
                    .bind(report_id.to_string())
                    .bind(report)
                    .bind(&period.id)
                    .bind(period.start.as_microsecond())
                    .bind(period.end.as_microsecond())
                    .bind(csv)
                    .bind(html)
                    .bind(now_us)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            holding == 1
        }))
    }

    /// Marks a run done, if `me` still holds it.
    pub async fn finish(
        &self,
        report: &str,
        period: &Period,
        me: &str,
        now_us: i64,
    ) -> Result<bool, StoreError> {
        let done = "UPDATE report_runs SET status = 'done', finished_at_us = $4 \
             WHERE report = $1 AND period = $2 AND claimed_by = $3 AND status = 'running'";
        let marked = with_pool!(&self.db, pool => {
            sqlx::query(done)
                .bind(report)
                .bind(&period.id)
                .bind(me)
                .bind(now_us)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(marked == 1)
    }

    /// The counters of the hours in `[start, end)` (Unix seconds).
    pub async fn figures(&self, start: i64, end: i64) -> Result<Figures, StoreError> {
        let sql = "SELECT metric, hour, key, count, total FROM report_counters \
             WHERE hour >= $1 AND hour < $2";
        let rows: Vec<(String, i64, String, i64, i64)> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(start).bind(end).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(metric, hour, key, count, sum)| (metric, hour, key, Tally { count, sum }))
            .collect())
    }

    /// Distinct users active in the hours of `[start, end)` (Unix seconds).
    pub async fn active_users(&self, start: i64, end: i64) -> Result<i64, StoreError> {
        let sql =
            "SELECT COUNT(DISTINCT user_id) FROM report_active WHERE hour >= $1 AND hour < $2";
        let (count,): (i64,) = with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(start).bind(end).fetch_one(pool).await?
        });
        Ok(count)
    }

    /// Stored reports, newest first.
    pub async fn list(
        &self,
        report: Option<&str>,
        limit: u32,
        base: &str,
    ) -> Result<Vec<Listed>, StoreError> {
        let sql = "SELECT report_id, report, period, period_start_us, period_end_us, created_at_us \
             FROM report_outputs WHERE ($1 IS NULL OR report = $1) \
             ORDER BY created_at_us DESC, report_id DESC LIMIT $2";
        let rows: Vec<(String, String, String, i64, i64, i64)> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(report).bind(i64::from(limit)).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, report, period, start, end, created)| Listed {
                csv: format!("{base}/{id}.csv"),
                html: format!("{base}/{id}.html"),
                report_id: id,
                report,
                period,
                period_start: rfc3339(start),
                period_end: rfc3339(end),
                created_at: rfc3339(created),
            })
            .collect())
    }

    pub async fn output(&self, report_id: Uuid) -> Result<Option<Output>, StoreError> {
        let sql = "SELECT report, period, csv, html FROM report_outputs WHERE report_id = $1";
        let row: Option<(String, String, String, String)> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(report_id.to_string()).fetch_optional(pool).await?
        });
        Ok(row.map(|(report, period, csv, html)| Output {
            report,
            period,
            csv,
            html,
        }))
    }

    /// Runs by status, for tests and operators: (report, period, status, attempts).
    pub async fn runs(&self, report: &str) -> Result<Vec<(String, String, i32)>, StoreError> {
        let sql =
            "SELECT period, status, attempts FROM report_runs WHERE report = $1 ORDER BY period";
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(report).fetch_all(pool).await?
        }))
    }

    /// Deletes what `sql` selects (one `$1` bound to `before_us`); answers how many rows.
    /// A table that is not in this database removes nothing.
    pub async fn purge(&self, sql: &'static str, before_us: i64) -> Result<u64, StoreError> {
        let result = with_pool!(&self.db, pool => {
            sqlx::query(sql).bind(before_us).execute(pool).await.map(|done| done.rows_affected())
        });
        match result {
            Ok(removed) => Ok(removed),
            Err(sqlx::Error::Database(err)) if is_missing_table(err.message()) => Ok(0),
            Err(err) => Err(err.into()),
        }
    }
}

fn is_missing_table(message: &str) -> bool {
    message.contains("no such table") || message.contains("does not exist")
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> SqlStore {
        let file = std::env::temp_dir().join(format!("herald-reports-{}.db", Uuid::new_v4()));
        let db = Database::connect(&format!("sqlite://{}", file.display()))
            .await
            .unwrap();
        SqlStore::new(db, 0).await.unwrap()
    }

    fn period() -> Period {
        Period {
            id: "2026-11-21".into(),
            start: "2026-11-21T00:00:00Z".parse().unwrap(),
            end: "2026-11-22T00:00:00Z".parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_run_is_claimed_once_and_taken_over_only_after_its_lease() {
        let store = store().await;
        let (p, lease) = (period(), 60_000_000);
        let Claim::Run {
            report_id,
            event_id,
            attempt: 1,
        } = store.claim("daily", &p, "a", 1_000, lease).await.unwrap()
        else {
            panic!("the first claim runs");
        };
        // While a's lease lasts, b finds the run held, however often it asks.
        for now in [1_000, 30_000_000, 1_000 + lease] {
            assert_eq!(
                store.claim("daily", &p, "b", now, lease).await.unwrap(),
                Claim::Held
            );
        }
        // a died: b takes over the same report and announcement ids.
        let later = 2_000 + lease;
        assert_eq!(
            store.claim("daily", &p, "b", later, lease).await.unwrap(),
            Claim::Run {
                report_id,
                event_id,
                attempt: 2
            }
        );
        // a comes back: it holds nothing any more, so it can neither store nor finish.
        assert!(
            !store
                .save_output("daily", &p, report_id, "a", "csv", "html", later)
                .await
                .unwrap()
        );
        assert!(!store.finish("daily", &p, "a", later).await.unwrap());
        assert!(
            store
                .save_output("daily", &p, report_id, "b", "csv", "html", later)
                .await
                .unwrap()
        );
        assert!(store.finish("daily", &p, "b", later).await.unwrap());
        // Done is done, for everyone, at any time.
        assert_eq!(
            store
                .claim("daily", &p, "a", later * 10, lease)
                .await
                .unwrap(),
            Claim::Done { report_id }
        );
        assert_eq!(store.list(Some("daily"), 10, "/r").await.unwrap().len(), 1);
        assert_eq!(store.output(report_id).await.unwrap().unwrap().csv, "csv");
    }

    #[tokio::test]
    async fn an_event_seen_before_adds_nothing() {
        let store = store().await;
        let data = serde_json::json!({"currency": "EUR", "total_cents": 450});
        let order = |event_id| Seen {
            event_id,
            event_type: "order.placed",
            occurred_at: 7_300,
            actor: "alice",
            data: &data,
        };
        let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(store.apply(&[order(first)], 1).await.unwrap(), 1);
        // Redelivered alone, and again beside a new one in a batch.
        assert_eq!(store.apply(&[order(first)], 2).await.unwrap(), 0);
        assert_eq!(
            store
                .apply(&[order(first), order(second)], 3)
                .await
                .unwrap(),
            1
        );
        let figures = store.figures(7_200, 10_800).await.unwrap();
        let orders: Vec<_> = figures
            .iter()
            .filter(|(metric, ..)| metric == "orders")
            .collect();
        assert_eq!(orders.len(), 1);
        assert_eq!((orders[0].3.count, orders[0].3.sum), (2, 900));
        assert_eq!(store.active_users(7_200, 10_800).await.unwrap(), 1);
    }
}
