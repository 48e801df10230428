//! Backups of what the log does not hold: accounts and their password hashes, sessions,
//! signing keys, devices, notification preferences and the delivery log live only in the
//! database. Every read model (audit log, search index, report aggregates) is rebuilt from
//! the topics instead.
//!
//! PostgreSQL is dumped with `pg_dump --format=custom` and restored with `pg_restore`
//! (Debian's postgresql-client); the password goes to them in `PGPASSWORD`, never on their
//! command line. SQLite is copied with `VACUUM INTO`, a consistent snapshot taken while the
//! services run, and restored by putting the file in place. A restore goes only into an
//! empty database, so it never mixes with rows it would not replace.

use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use sqlx::Connection;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("unsupported database URL scheme in {0:?}: use postgres:// or sqlite://")]
    Scheme(String),
    #[error("the database URL does not parse: {0}")]
    Url(String),
    #[error("{0} already exists: back up to a new file")]
    Exists(String),
    #[error(
        "the database to restore into holds {0} tables: restore into an empty one (create it, \
         or point DATABASE_URL at a new one)"
    )]
    NotEmpty(i64),
    #[error("{tool} failed: {output}")]
    Tool { tool: &'static str, output: String },
    #[error("{tool} is needed and could not run ({err}): install postgresql-client")]
    Missing { tool: &'static str, err: String },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> BackupError {
    move |source| BackupError::Io { context, source }
}

/// Writes a backup of the database at `url` to `output` (a new file).
pub async fn backup(url: &str, output: &Path) -> Result<(), BackupError> {
    if output.exists() {
        return Err(BackupError::Exists(output.display().to_string()));
    }
    if let Some(path) = sqlite_path(url) {
        let mut conn = sqlx::SqliteConnection::connect_with(
            &sqlx::sqlite::SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?,
        )
        .await?;
        let target = output.display().to_string();
        sqlx::query("VACUUM INTO ?")
            .bind(&target)
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        return Ok(());
    }
    let (url, password) = postgres(url)?;
    let mut command = Command::new("pg_dump");
    command
        .args(["--format=custom", "--no-owner", "--no-privileges", "--file"])
        .arg(output)
        .arg("--dbname")
        .arg(&url);
    run("pg_dump", command, password.as_deref())
}

/// Restores `input` (from [`backup`]) into the empty database at `url`.
pub async fn restore(url: &str, input: &Path) -> Result<(), BackupError> {
    std::fs::metadata(input).map_err(io(format!("reading {}", input.display())))?;
    if let Some(path) = sqlite_path(url) {
        let target = Path::new(&path);
        if target.exists() {
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}")).await?;
            let (tables,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
                    .fetch_one(&mut conn)
                    .await?;
            conn.close().await?;
            if tables > 0 {
                return Err(BackupError::NotEmpty(tables));
            }
            std::fs::remove_file(target).map_err(io(format!("replacing {path}")))?;
        }
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        }
        std::fs::copy(input, target).map_err(io(format!("writing {path}")))?;
        return Ok(());
    }
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    if tables > 0 {
        return Err(BackupError::NotEmpty(tables));
    }
    let (url, password) = postgres(url)?;
    let mut command = Command::new("pg_restore");
    command
        .args([
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--dbname",
        ])
        .arg(&url)
        .arg(input);
    run("pg_restore", command, password.as_deref())
}

/// The file of a `sqlite:` URL.
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    Some(rest.split('?').next().unwrap_or(rest).to_string())
}

/// A `postgres://` URL without its password, and the password.
fn postgres(url: &str) -> Result<(String, Option<String>), BackupError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(BackupError::Scheme(crate::db::redact_url(url)));
    }
    let mut parsed = reqwest::Url::parse(url).map_err(|err| BackupError::Url(err.to_string()))?;
    let password = parsed.password().map(percent_decode);
    parsed
        .set_password(None)
        .map_err(|()| BackupError::Url("the URL has no host".into()))?;
    Ok((parsed.to_string(), password))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn run(
    tool: &'static str,
    mut command: Command,
    password: Option<&str>,
) -> Result<(), BackupError> {
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let output = command.output().map_err(|err| BackupError::Missing {
        tool,
        err: err.to_string(),
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BackupError::Tool {
            tool,
            output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_password_leaves_the_url_for_the_environment() {
        let (url, password) =
            postgres("postgres://herald:p%40ss@db:5432/herald?sslmode=require").unwrap();
        assert_eq!(url, "postgres://herald@db:5432/herald?sslmode=require");
        assert_eq!(password.as_deref(), Some("p@ss"));
        assert!(matches!(
            postgres("mysql://x@y/z"),
            Err(BackupError::Scheme(_))
        ));
        assert_eq!(
            sqlite_path("sqlite://data/herald.db?mode=rwc").as_deref(),
            Some("data/herald.db")
        );
    }

    #[tokio::test]
    async fn a_sqlite_backup_restores_into_an_empty_place_only() {
        let dir = std::env::temp_dir().join(format!("herald-backup-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("herald.db");
        let url = format!("sqlite://{}?mode=rwc", db.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE accounts (email TEXT)")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("INSERT INTO accounts VALUES ('alice@example.com')")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let file = dir.join("backup.db");
        backup(&url, &file).await.unwrap();
        assert!(matches!(
            backup(&url, &file).await,
            Err(BackupError::Exists(_))
        ));
        assert!(matches!(
            restore(&url, &file).await,
            Err(BackupError::NotEmpty(1))
        ));
        std::fs::remove_file(&db).unwrap();
        restore(&url, &file).await.unwrap();
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let (email,): (String,) = sqlx::query_as("SELECT email FROM accounts")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(email, "alice@example.com");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
