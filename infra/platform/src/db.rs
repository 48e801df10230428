//! Database pools chosen by URL: `postgres://...` for deployments with several replicas,
//! `sqlite://path` for the embedded single-node default.

use std::str::FromStr;
use std::time::Duration;

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
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] sqlx::Error),
}

impl Database {
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
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
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

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://herald:s3cret@127.0.0.1/herald"),
            "postgres://herald:***@127.0.0.1/herald"
        );
        assert_eq!(redact_url("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
