//! A real SMTP server on loopback (Python's aiosmtpd, `smtp_server.py`), and what it received.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct SmtpServer {
    _child: Child,
    pub port: u16,
    messages: PathBuf,
}

/// One accepted message.
#[derive(Debug, Clone, Deserialize)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// The raw message.
    pub content: String,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub message_id: String,
    pub text: Option<String>,
    pub html: Option<String>,
}

impl SmtpServer {
    pub async fn start(name: &str) -> Self {
        let dir = super::test_dir("smtp");
        std::fs::create_dir_all(&dir).unwrap();
        let messages = dir.join(format!("{name}-{}.jsonl", uuid::Uuid::new_v4().simple()));
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&messages)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs (infra/scripts/services.sh installs aiosmtpd)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the SMTP server announces its port within 20 s")
            .unwrap()
            .expect("the SMTP server started (is aiosmtpd installed?)")
            .trim()
            .parse()
            .unwrap();
        Self {
            _child: child,
            port,
            messages,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        let text = std::fs::read_to_string(&self.messages).unwrap_or_default();
        // The server may be writing a line as it is read: only whole lines count.
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Waits until at least `n` messages arrived; returns them all.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Received> {
        super::eventually(within, &format!("{n} emails"), || async {
            let received = self.received();
            if received.len() >= n {
                Ok(received)
            } else {
                Err(format!("{} emails", received.len()))
            }
        })
        .await
    }

    /// While refusing, every message gets 451 (a transient failure).
    pub fn refuse(&self, refusing: bool) {
        let flag = self.messages.with_extension("jsonl.reject");
        if refusing {
            std::fs::write(flag, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }
}

/// How many messages reached each recipient.
pub fn by_recipient(received: &[Received]) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for message in received {
        for to in &message.rcpt_tos {
            *counts.entry(to.clone()).or_default() += 1;
        }
    }
    counts
}
