//! `herald up` as a user runs it, on the tests' broker, for the tests that walk the whole
//! system through its HTTP API.

use std::time::Duration;

const HERALD: &str = env!("CARGO_BIN_EXE_herald");

/// `herald up` on the tests' broker, its data in a folder of its own; its address, its data
/// folder and the file its standard error goes to.
pub struct Up {
    /// Killed when the test ends.
    _child: tokio::process::Child,
    pub base: String,
    pub data: std::path::PathBuf,
    pub log: std::path::PathBuf,
    pub kafka: platform::kafka::KafkaArgs,
}

impl Up {
    /// Started with `env` on top of the defaults; its data folder is named after `name`.
    pub async fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let kafka = super::kafka(&super::brokers().await);
        let data = super::test_dir(&format!("{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data).unwrap();
        let log = data.join("stderr.log");
        let mut command = tokio::process::Command::new(HERALD);
        command
            .arg("up")
            .env("KAFKA_BROKERS", kafka.brokers.as_deref().unwrap())
            .env("TOPIC_PREFIX", &kafka.topic_prefix)
            .env_remove("JWT_HS256_SECRET")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("HERALD_DATA_DIR", &data)
            .env("HERALD_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            // Every request reaches its handler, rather than most of a walk from one address
            // stopping at the limits (tested on their own).
            .env("RATE_LIMITS_OFF", "true")
            .envs(env.iter().copied())
            .stderr(std::fs::File::create(&log).unwrap());
        let (child, base) = super::announced(command, Duration::from_secs(180)).await;
        Self {
            _child: child,
            base,
            data,
            log,
            kafka,
        }
    }

    pub fn token(&self, sub: &str, role: &str) -> String {
        let out = std::process::Command::new(HERALD)
            .args(["token", "--sub", sub, "--role", role])
            .env_remove("JWT_HS256_SECRET")
            .env("HERALD_DATA_DIR", &self.data)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn sealing_key(&self) -> platform::seal::SealingKey {
        let text = std::fs::read_to_string(self.data.join("sealing-key")).unwrap();
        platform::seal::SealingKey::from_base64(&secrecy::SecretString::from(text)).unwrap()
    }

    /// Fails on any panic the process logged.
    pub fn assert_no_panic(&self) {
        let logged = std::fs::read_to_string(&self.log).unwrap_or_default();
        let panics: Vec<&str> = logged.lines().filter(|l| l.contains("panicked")).collect();
        assert!(panics.is_empty(), "herald up panicked: {panics:?}");
    }
}
