//! Database pools chosen by URL: `postgres://...` for deployments with several replicas,
//! `sqlite://path` for the embedded single-node default.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

/// A connection pool to one of the two supported databases.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL scheme in {0:?}: use postgres:// or sqlite://")]
    UnsupportedScheme(String),
    #[error("the database URL {0} does not parse: {1}")]
    BadUrl(String, String),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] sqlx::Error),
}

impl Database {
    /// Whether `url` is one [`Self::connect`] can use, connecting to nothing (`herald
    /// check`). A bad URL's error never shows its password.
    pub fn check_url(url: &str) -> Result<(), DbError> {
        let bad = |err: sqlx::Error| {
            DbError::BadUrl(redact_url(url), err.to_string().replace(url, "<the URL>"))
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            sqlx::postgres::PgConnectOptions::from_str(url).map_err(bad)?;
        } else if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url).map_err(bad)?;
        } else {
            return Err(DbError::UnsupportedScheme(redact_url(url)));
        }
        Ok(())
    }

    pub async fn connect(url: &str) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            Ok(Self::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // What is deleted is overwritten, not left in free pages: an erased person's
                // data must not outlive its rows.
                .pragma("secure_delete", "ON")
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                // SQLite rolls a transaction back by itself on some errors (a full disk). The
                // ROLLBACK sqlx then sends fails, its count of open transactions stays at one,
                // and the connection's next transaction becomes a savepoint that never
                // commits: writes reported done, never durable. Such a connection is closed
                // (which rolls back whatever it holds) rather than reused. The ping first lets
                // a dropped transaction's queued ROLLBACK run.
                .after_release(|conn, _| {
                    Box::pin(async move {
                        conn.ping().await?;
                        Ok(!conn.is_in_transaction())
                    })
                })
                .connect_with(options)
                .await?;
            Ok(Self::Sqlite(pool))
        } else {
            Err(DbError::UnsupportedScheme(redact_url(url)))
        }
    }
}

/// Applies a crate's migrations (one set per database, from `sqlx::migrate!`). Every crate's
/// migrations share the bookkeeping table, so versions recorded by others are not errors. Two
/// processes starting together on one SQLite file can race to record the same migration
/// (PostgreSQL serialises them with a lock): the loser tries again and finds it applied.
impl Database {
    /// After rows of personal data were deleted or blanked: moves what SQLite's write-ahead
    /// log still holds of them into the database file, where secure_delete has zeroed them,
    /// and empties the log file. In the background, and without waiting on other
    /// connections (a checkpoint that waits holds every writer back): tried each second for
    /// a minute until no reader or writer is in the way. PostgreSQL reclaims dead rows by
    /// its own vacuum; its WAL segments are recycled, not zeroed (see docs/privacy.md).
    pub fn forget_deleted(&self) {
        let Self::Sqlite(pool) = self else {
            return;
        };
        let pool = pool.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                match checkpoint(&pool).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(err) => {
                        tracing::warn!(%err, "emptying the write-ahead log after an erasure failed");
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tracing::warn!(
                "the write-ahead log stayed busy for a minute after an erasure: it is emptied at a later checkpoint"
            );
        });
    }
}

/// One `wal_checkpoint(TRUNCATE)` that gives up at once when busy: whether it completed.
async fn checkpoint(pool: &SqlitePool) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let outcome = async {
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut *conn)
            .await?;
        let done: (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query("PRAGMA busy_timeout = 5000")
            .execute(&mut *conn)
            .await?;
        Ok::<_, sqlx::Error>(done.0 == 0)
    }
    .await;
    if outcome.is_err() {
        // Its busy timeout may be left at zero: the pool opens another instead.
        drop(conn.detach());
    }
    outcome
}

pub async fn migrate(
    db: &Database,
    mut postgres: sqlx::migrate::Migrator,
    mut sqlite: sqlx::migrate::Migrator,
) -> Result<(), sqlx::migrate::MigrateError> {
    postgres.set_ignore_missing(true);
    sqlite.set_ignore_missing(true);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match db {
            Database::Postgres(pool) => postgres.run(pool).await,
            Database::Sqlite(pool) => sqlite.run(pool).await,
        };
        match result {
            Err(err) if attempt < 5 => {
                tracing::debug!(%err, attempt, "migrations raced, trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            result => return result,
        }
    }
}

/// Runs `$body` with `$pool` bound to whichever pool a [`Database`] has: the query text is
/// the same for both (`$1` placeholders work in SQLite too), but sqlx types it per database.
#[macro_export]
macro_rules! with_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Database::Postgres($pool) => $body,
            $crate::db::Database::Sqlite($pool) => $body,
        }
    };
}

/// The URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that fills the database (here: past `max_page_count`, as a full disk would)
    /// makes SQLite roll the transaction back by itself; then a statement fails that SQLite
    /// does not roll back for. Every transaction committed afterwards must be visible to a
    /// new connection.
    #[tokio::test]
    async fn writes_after_transactions_sqlite_rolled_back_itself_are_durable() {
        let path = std::env::temp_dir().join(format!("herald-db-{}.db", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}", path.display());
        let Database::Sqlite(pool) = Database::connect(&url).await.unwrap() else {
            unreachable!("a sqlite URL")
        };
        sqlx::query("CREATE TABLE t (x BLOB)")
            .execute(&pool)
            .await
            .unwrap();
        for _ in 0..8 {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("PRAGMA max_page_count = 8")
                .execute(&mut *tx)
                .await
                .unwrap();
            let full = sqlx::query("INSERT INTO t VALUES (zeroblob(100000))")
                .execute(&mut *tx)
                .await;
            assert!(full.is_err(), "the insert should not fit");
        }
        // An error SQLite does not roll back for: sqlx rolls back to its savepoint.
        for _ in 0..8 {
            let mut tx = pool.begin().await.unwrap();
            let missing = sqlx::query("INSERT INTO missing VALUES (1)")
                .execute(&mut *tx)
                .await;
            assert!(missing.is_err());
        }
        for _ in 0..20 {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("PRAGMA max_page_count = 1073741823")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("INSERT INTO t VALUES (x'01')")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let Database::Sqlite(other) = Database::connect(&url).await.unwrap() else {
            unreachable!("a sqlite URL")
        };
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
            .fetch_one(&other)
            .await
            .unwrap();
        assert_eq!(rows, 20);
        pool.close().await;
        other.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://herald:s3cret@127.0.0.1/herald"),
            "postgres://herald:***@127.0.0.1/herald"
        );
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
