//! Herald services as users run them: `herald <service>` processes that can be killed.

use std::time::{Duration, Instant};

use platform::kafka::KafkaArgs;
use tokio::process::{Child, Command};

use super::{SEALING_KEY, SECRET, UNSUBSCRIBE_SECRET, client};

/// The built-in auth route limits, raised out of the way.
pub const RELAXED_ROUTE_LIMITS: &str = "POST /api/v1/auth/register=100000/1m;POST /api/v1/auth/login=100000/1m;POST /api/v1/auth/otp/request=100000/1m;POST /api/v1/auth/otp/verify=100000/1m;POST /api/v1/auth/password/forgot=100000/1m;POST /api/v1/auth/password/reset=100000/1m";

pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// A `herald <service>` process on port 0, announced address read from its stdout.
pub struct HeraldProcess {
    child: Child,
    pub base: String,
}

impl HeraldProcess {
    pub async fn start(
        service: &str,
        kafka: &KafkaArgs,
        database_url: &str,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(service, kafka, database_url, env, None).await
    }

    /// The same, with everything it logs (stderr) written to `log`.
    pub async fn start_logging(
        service: &str,
        kafka: &KafkaArgs,
        database_url: &str,
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Self {
        Self::spawn(service, kafka, database_url, env, Some(log)).await
    }

    async fn spawn(
        service: &str,
        kafka: &KafkaArgs,
        database_url: &str,
        env: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Self {
        let mut command = Command::new(HERALD);
        command
            .arg(service)
            .env("KAFKA_BROKERS", kafka.brokers.as_deref().unwrap())
            .env("TOPIC_PREFIX", &kafka.topic_prefix)
            .env("DATABASE_URL", database_url)
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("JWT_HS256_SECRET", SECRET)
            .env("NOTIFY_UNSUBSCRIBE_SECRET", UNSUBSCRIBE_SECRET)
            .env("SEALING_KEY", SEALING_KEY)
            // Tests drive many accounts from one address: the built-in auth limits are tested
            // on their own (tests/hostile.rs); a test may set its own.
            .env("RATE_LIMIT_ROUTES", RELAXED_ROUTE_LIMITS)
            .env("LOGIN_LIMIT_PER_ACCOUNT", "100000/1m")
            .env("OTP_REQUEST_LIMIT_PER_PHONE", "100000/1m")
            .env("PASSWORD_FORGOT_LIMIT_PER_ACCOUNT", "100000/1m")
            .env("REGISTER_LIMIT_PER_EMAIL", "100000/1m")
            .env("NOTIFY_PUBLIC_URL", "https://herald.test")
            .env("CONSUMER_SESSION_TIMEOUT_MS", "6000")
            .env("CONSUMER_MAX_BACKOFF_MS", "1000")
            .env("RUST_LOG", "warn")
            // Every test's requests come from 127.0.0.1 and may share one Redis: limits are
            // tested where a test sets its own.
            .env("RATE_LIMIT_ANONYMOUS", "1000000/1m")
            .env("RATE_LIMIT_USER", "1000000/1m");
        for (key, value) in env {
            command.env(key, value);
        }
        if let Some(log) = log {
            command.stderr(std::fs::File::create(log).expect("log file"));
        }
        let (child, base) = super::announced(command, Duration::from_secs(60)).await;
        Self { child, base }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// SIGKILL: no chance to finish or commit anything.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, then the exit status and how long the process took to exit.
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().expect("still running").to_string();
        let started = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("herald did not exit within 60 s of SIGTERM")
            .unwrap();
        (status, started.elapsed())
    }

    /// The process's /metrics text.
    pub async fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A metric summed over its label sets, from /metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
