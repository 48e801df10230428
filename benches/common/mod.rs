//! What the benchmarks share: settings, the real `herald` processes, percentiles, memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The broker and the `herald` processes, started as the tests start them.
#[path = "../../tests/support/start.rs"]
pub mod start;

pub const SECRET: &str = "bench-secret-of-at-least-thirty-two-bytes";
pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// A numeric setting from the environment.
#[allow(dead_code, reason = "not every benchmark has settings")]
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[allow(dead_code, reason = "some benchmarks start their processes by hand")]
/// A prefix of the benchmark's own for every topic and group: `tag`, 8 random hex digits
/// and a dot, so runs on one broker never read each other's events.
pub fn topic_prefix(tag: &str) -> String {
    format!("{tag}{}.", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

#[allow(dead_code, reason = "some benchmarks start their processes by hand")]
/// An ingress publishing to the topics under `prefix`, and the environment that gives the
/// benchmark's other processes the same broker and topics.
pub async fn ingress_on<'a>(
    brokers: &'a str,
    prefix: &'a str,
) -> (Child, String, [(&'static str, &'a str); 2]) {
    let env = [("KAFKA_BROKERS", brokers), ("TOPIC_PREFIX", prefix)];
    let (child, base) = herald("ingress", &env).await;
    (child, base, env)
}

#[allow(dead_code, reason = "some benchmarks start their processes by hand")]
/// Starts a herald service with the benchmark's secrets; returns it and the address it
/// announced.
pub async fn herald(service: &str, env: &[(&str, &str)]) -> (Child, String) {
    start::announced(herald_command(service, env), Duration::from_secs(120)).await
}

#[allow(dead_code, reason = "some benchmarks start their processes by hand")]
/// The command that starts a herald service with the benchmark's secrets and settings, and
/// `env` on top (start it with [`start::announced`]).
pub fn herald_command(service: &str, env: &[(&str, &str)]) -> Command {
    herald_command_of(HERALD, service, env)
}

#[allow(dead_code, reason = "some benchmarks start their processes by hand")]
/// [`herald_command`] with another `herald` executable (a baseline build, say).
pub fn herald_command_of(executable: &str, service: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(executable);
    command
        .arg(service)
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .env("JWT_HS256_SECRET", SECRET)
        .env("NOTIFY_UNSUBSCRIBE_SECRET", SECRET)
        .env("NOTIFY_PUBLIC_URL", "https://herald.test")
        .env(
            "SEALING_KEY",
            "YmVuY2gtc2VhbGluZy1rZXktb2YtMzItYnl0ZXMtISE=",
        )
        .env("RUST_LOG", "error")
        // Shared counters only where a benchmark asks for them.
        .env_remove("REDIS_URL")
        // Benchmarks post far more than any one user may by default.
        .env("RATE_LIMIT_USER", "1000000000/1m")
        .env("RATE_LIMIT_ANONYMOUS", "1000000000/1m")
        // Every client of a load is on this one address.
        .env("MAX_CONNECTIONS_PER_ADDRESS", "1000000");
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// The middle of `values` (the upper one of an even count); `values` keep their order.
#[allow(dead_code, reason = "not every benchmark reports medians")]
pub fn median(values: &[f64]) -> f64 {
    // Sorted apart: callers also print the values in the order they were measured.
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The `p` quantile of sorted values (nearest rank).
#[allow(dead_code, reason = "not every benchmark reports percentiles")]
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A process's peak resident memory (VmHWM), in MB.
#[allow(dead_code, reason = "not every benchmark samples a process's memory")]
pub fn peak_rss_mb(pid: u32) -> f64 {
    status_kb(pid, "VmHWM:") as f64 / 1024.0
}

/// A field of a process's /proc status given in kB (`VmRSS:`, `VmHWM:`), 0 when unreadable.
#[allow(dead_code, reason = "not every benchmark samples a process's memory")]
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// A token for `sub` with one role, signed with the benchmark's secret, valid two hours.
#[allow(dead_code, reason = "not every benchmark posts events")]
pub fn token(sub: &str, role: &str) -> String {
    platform::auth::mint_hs256(
        &secrecy::SecretString::from(SECRET),
        sub,
        &[role.to_string()],
        "herald",
        "herald",
        Duration::from_secs(7200),
    )
    .unwrap()
}

/// Posts `batches` (`{"events": [...]}` bodies) to the ingress at `base` from 8 clients at
/// once, batch `i` with the token `bearer(i)`; every answer must be 202.
#[allow(dead_code, reason = "not every benchmark posts events")]
pub async fn post_batches(
    client: &reqwest::Client,
    base: &str,
    batches: &[serde_json::Value],
    bearer: impl Fn(usize) -> String,
) {
    let url = format!("{base}/api/v1/events");
    let share = batches.len().div_ceil(8).max(1);
    let bearer = &bearer;
    futures_util::future::join_all(batches.chunks(share).enumerate().map(|(s, part)| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            for (b, batch) in part.iter().enumerate() {
                let response = client
                    .post(&url)
                    .bearer_auth(bearer(s * share + b))
                    .json(batch)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
            }
        }
    }))
    .await;
}

/// CPU time (user + system) a process has used so far, in seconds.
#[allow(dead_code, reason = "not every benchmark measures CPU")]
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name, which is in parentheses and may hold spaces
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// Now, in seconds since the epoch: the clock the SMTP server and PostgreSQL stamp with.
#[allow(dead_code, reason = "not every benchmark compares wall-clock times")]
pub fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The real SMTP server of the tests (`tests/support/smtp_server.py`, aiosmtpd) in its fast
/// mode: it records only each message's recipients and time of acceptance.
#[allow(dead_code, reason = "not every benchmark sends email")]
pub struct Smtp {
    _child: Child,
    pub url: String,
    messages: PathBuf,
}

#[allow(dead_code, reason = "not every benchmark sends email")]
impl Smtp {
    pub async fn start(dir: &Path) -> Self {
        let messages = dir.join("accepted.jsonl");
        let mut child = Command::new("python3")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py"))
            .arg(&messages)
            .arg("--fast")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with aiosmtpd (infra/scripts/services.sh installs it)");
        let port = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .next_line()
            .await
            .unwrap()
            .expect("the SMTP server announces its port");
        Self {
            _child: child,
            url: format!("smtp://127.0.0.1:{}", port.trim()),
            messages,
        }
    }

    /// Every accepted message: its first recipient and time of acceptance.
    pub fn accepted(&self) -> Vec<(String, f64)> {
        std::fs::read_to_string(&self.messages)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|v| {
                (
                    v["rcpt_tos"][0].as_str().unwrap_or_default().to_string(),
                    v["at"].as_f64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Waits until `n` messages were accepted or `within` passes; those accepted.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<(String, f64)> {
        let until = Instant::now() + within;
        loop {
            let got = self.accepted();
            if got.len() >= n || Instant::now() > until {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A new, empty database on the PostgreSQL server `admin` points at; its URL.
#[allow(dead_code, reason = "not every benchmark uses PostgreSQL")]
pub async fn fresh_postgres(admin: &str) -> String {
    let name = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let pool = sqlx::postgres::PgPool::connect(admin).await.unwrap();
    // A generated name of hex digits: nothing to inject.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (base, _) = admin.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}
