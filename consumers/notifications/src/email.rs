//! Email providers: SMTP (lettre, pooled connections, STARTTLS/TLS and auth from the URL) or
//! an outbox folder of .eml files for a machine without a mail server.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

pub use crate::provider::SendError;

/// An email ready to go.
#[derive(Debug, Clone)]
pub struct Email {
    pub to: String,
    pub to_name: Option<String>,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
    /// The same for every attempt of one delivery, so a receiving system can tell a repeat.
    pub message_id: String,
    /// Promotional email: the one-click unsubscribe link (RFC 8058).
    pub list_unsubscribe: Option<String>,
}

#[async_trait]
pub trait EmailProvider: Send + Sync {
    /// Sends; on success, the name of the provider that accepted it (for the delivery log).
    async fn send(&self, email: &Email) -> Result<&str, SendError>;
}

#[derive(Debug, thiserror::Error)]
pub enum EmailSetupError {
    #[error(
        "SMTP_URL is not a valid lettre SMTP URL (smtp://, smtps:// or smtp://...?tls=required): {0}"
    )]
    Url(String),
    #[error(
        "the sender address {0:?} is not a valid mailbox (e.g. \"Herald <no-reply@example.com>\")"
    )]
    From(String),
    #[error("creating the email outbox {path}: {source}")]
    Outbox {
        path: String,
        source: std::io::Error,
    },
}

/// A recipient's name as a header may carry it. lettre panics on some control characters in
/// a mailbox's name (a CR or LF), so a name with any is refused here, ending that one
/// delivery as failed instead of the partition's task.
fn mailbox_name(name: &str) -> Result<String, SendError> {
    if name.chars().any(char::is_control) {
        return Err(SendError::Permanent(
            "the recipient's name has control characters".into(),
        ));
    }
    Ok(name.to_string())
}

/// A subject as a header may carry it: a template can bring user text with line breaks and
/// other control characters into it; each becomes a space.
fn subject_text(subject: &str) -> String {
    subject
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn build(from: &Mailbox, email: &Email) -> Result<Message, SendError> {
    if email.to.chars().any(char::is_control) {
        return Err(SendError::Permanent(
            "invalid recipient address: it has control characters".into(),
        ));
    }
    let address = email
        .to
        .parse()
        .map_err(|err| SendError::Permanent(format!("invalid recipient address: {err}")))?;
    let name = email.to_name.as_deref().map(mailbox_name).transpose()?;
    let to = Mailbox::new(name, address);
    let text = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(email.text.clone());
    let body = match &email.html {
        None => MultiPart::mixed().singlepart(text),
        Some(html) => MultiPart::alternative().singlepart(text).singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(html.clone()),
        ),
    };
    let mut message = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject_text(&email.subject))
        .message_id(Some(email.message_id.clone()));
    if let Some(link) = &email.list_unsubscribe
        && !link.chars().any(char::is_control)
    {
        message = message
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{link}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ));
    }
    message
        .multipart(body)
        .map_err(|err| SendError::Permanent(format!("building the message: {err}")))
}

pub fn parse_from(from: &str) -> Result<Mailbox, EmailSetupError> {
    from.parse()
        .map_err(|_| EmailSetupError::From(from.to_string()))
}

/// SMTP with a pool of connections.
pub struct Smtp {
    name: String,
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl Smtp {
    pub fn new(
        name: &str,
        url: &SecretString,
        from: Mailbox,
        pool_size: u32,
    ) -> Result<Self, EmailSetupError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
            // The error can quote the URL, password included: say only what kind it is.
            .map_err(|err| EmailSetupError::Url(kind_of(&err)))?
            .timeout(Some(Duration::from_secs(10)))
            .pool_config(PoolConfig::new().max_size(pool_size))
            .build();
        Ok(Self {
            name: name.to_string(),
            from,
            transport,
        })
    }
}

fn kind_of(err: &lettre::transport::smtp::Error) -> String {
    if err.is_client() {
        "malformed URL".into()
    } else {
        "unsupported URL".into()
    }
}

#[async_trait]
impl EmailProvider for Smtp {
    async fn send(&self, email: &Email) -> Result<&str, SendError> {
        let message = build(&self.from, email)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(&self.name),
            Err(err) if err.is_permanent() => Err(SendError::Permanent(err.to_string())),
            Err(err) => Err(SendError::Transient(err.to_string())),
        }
    }
}

/// Writes each email as `<id>.eml` in a folder: `herald up` without an SMTP server.
pub struct Outbox {
    from: Mailbox,
    transport: AsyncFileTransport<Tokio1Executor>,
}

impl Outbox {
    pub fn new(dir: PathBuf, from: Mailbox) -> Result<Self, EmailSetupError> {
        std::fs::create_dir_all(&dir).map_err(|source| EmailSetupError::Outbox {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            from,
            transport: AsyncFileTransport::new(dir),
        })
    }
}

#[async_trait]
impl EmailProvider for Outbox {
    async fn send(&self, email: &Email) -> Result<&str, SendError> {
        let message = build(&self.from, email)?;
        self.transport
            .send(message)
            .await
            .map(|_| "outbox")
            .map_err(|err| SendError::Transient(err.to_string()))
    }
}

/// A primary provider and a secondary that takes over when the primary keeps failing:
/// every transient failure of the primary is retried on the secondary at once, and after
/// [`Failover::TRIP_AFTER`] failures in a row the secondary goes first for
/// [`Failover::BYPASS`], so a dead primary does not cost every message a timeout. A permanent
/// failure (a bad address) is not tried elsewhere.
pub struct Failover {
    primary: Arc<dyn EmailProvider>,
    secondary: Arc<dyn EmailProvider>,
    /// Transient failures of the primary in a row.
    failures: AtomicU32,
    /// Until then (ms since the epoch), the secondary goes first.
    bypass_until_ms: AtomicU64,
}

impl Failover {
    pub const TRIP_AFTER: u32 = 3;
    pub const BYPASS: Duration = Duration::from_secs(30);

    pub fn new(primary: Arc<dyn EmailProvider>, secondary: Arc<dyn EmailProvider>) -> Self {
        Self {
            primary,
            secondary,
            failures: AtomicU32::new(0),
            bypass_until_ms: AtomicU64::new(0),
        }
    }

    fn note_primary(&self, result: &Result<&str, SendError>, now_ms: u64) {
        match result {
            Err(SendError::Transient(_)) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= Self::TRIP_AFTER {
                    self.bypass_until_ms
                        .store(now_ms + Self::BYPASS.as_millis() as u64, Ordering::Relaxed);
                }
            }
            _ => self.failures.store(0, Ordering::Relaxed),
        }
    }
}

/// Whether the primary goes first (pure).
pub fn primary_first(bypass_until_ms: u64, now_ms: u64) -> bool {
    now_ms >= bypass_until_ms
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[async_trait]
impl EmailProvider for Failover {
    async fn send(&self, email: &Email) -> Result<&str, SendError> {
        let now = now_ms();
        let primary_first = primary_first(self.bypass_until_ms.load(Ordering::Relaxed), now);
        let (first, second) = if primary_first {
            (&self.primary, &self.secondary)
        } else {
            (&self.secondary, &self.primary)
        };
        let result = first.send(email).await;
        if primary_first {
            self.note_primary(&result, now);
        }
        let first_reason = match result {
            Err(SendError::Transient(reason)) => reason,
            done => return done,
        };
        let result = second.send(email).await;
        if !primary_first {
            self.note_primary(&result, now);
        }
        match result {
            Err(SendError::Transient(reason)) => Err(SendError::Transient(format!(
                "both providers failed: {first_reason}; {reason}"
            ))),
            done => done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(to: &str) -> Email {
        Email {
            to: to.into(),
            to_name: Some("Alice".into()),
            subject: "Hi".into(),
            text: "plain".into(),
            html: Some("<p>html</p>".into()),
            message_id: "<abc@herald>".into(),
            list_unsubscribe: None,
        }
    }

    #[test]
    fn a_promotional_email_carries_the_one_click_unsubscribe_headers() {
        let from = parse_from("no-reply@herald.localhost").unwrap();
        let mut promotional = email("alice@example.com");
        promotional.list_unsubscribe =
            Some("https://api.example.com/api/v1/unsubscribe/t0k".into());
        let raw = String::from_utf8(build(&from, &promotional).unwrap().formatted()).unwrap();
        assert!(
            raw.contains("List-Unsubscribe: <https://api.example.com/api/v1/unsubscribe/t0k>"),
            "{raw}"
        );
        assert!(
            raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
            "{raw}"
        );
    }

    #[test]
    fn builds_a_multipart_message_with_a_stable_message_id() {
        let from = parse_from("Herald <no-reply@herald.localhost>").unwrap();
        let raw = String::from_utf8(
            build(&from, &email("alice@example.com"))
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(raw.contains("Message-ID: <abc@herald>"), "{raw}");
        assert!(
            raw.contains("To: \"Alice\" <alice@example.com>")
                || raw.contains("To: Alice <alice@example.com>"),
            "{raw}"
        );
        assert!(raw.contains("multipart/alternative"), "{raw}");
    }

    #[test]
    fn hostile_names_subjects_and_addresses_fail_the_delivery_and_never_panic() {
        let from = parse_from("no-reply@herald.localhost").unwrap();
        let long = "x".repeat(1 << 20);
        let hostile = [
            "Eve\r\nBcc: x@evil.example",
            "Eve\nBcc: x@evil.example",
            "Eve\0",
            "\u{1b}[31mred",
            "\u{202e}evil\u{202c}",
            "\u{7f}",
            "\"quoted\" <a@b.c>",
            long.as_str(),
            "",
        ];
        for text in hostile {
            let mut message = email("ok@example.com");
            message.to_name = Some(text.to_string());
            message.subject = format!("Welcome {text}");
            let built = build(&from, &message);
            if text.chars().any(char::is_control) {
                assert!(
                    matches!(built, Err(SendError::Permanent(_))),
                    "{:?}",
                    &text[..text.len().min(40)]
                );
            } else if let Ok(message) = built {
                let raw = String::from_utf8_lossy(&message.formatted()).to_string();
                assert!(!raw.contains("\nBcc:"), "a header was injected");
            }
            for to in [text, "a@b.c\r\nBcc: x@evil.example", "@", "a@"] {
                assert!(
                    build(&from, &email(to)).is_err(),
                    "{:?}",
                    &to[..to.len().min(40)]
                );
            }
        }
    }

    #[test]
    fn a_malformed_address_is_permanent() {
        let from = parse_from("no-reply@herald.localhost").unwrap();
        assert!(matches!(
            build(&from, &email("not an address")),
            Err(SendError::Permanent(_))
        ));
        assert!(parse_from("nope").is_err());
    }

    /// Answers from a script, counting calls.
    struct Scripted {
        name: &'static str,
        answer: Result<(), SendError>,
        calls: AtomicU32,
    }

    #[async_trait]
    impl EmailProvider for Scripted {
        async fn send(&self, _: &Email) -> Result<&str, SendError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            self.answer.clone().map(|()| self.name)
        }
    }

    fn scripted(name: &'static str, answer: Result<(), SendError>) -> Arc<Scripted> {
        Arc::new(Scripted {
            name,
            answer,
            calls: AtomicU32::new(0),
        })
    }

    #[tokio::test]
    async fn the_secondary_takes_over_and_then_goes_first() {
        let down = || Err(SendError::Transient("connection refused".into()));
        let primary = scripted("primary", down());
        let secondary = scripted("secondary", Ok(()));
        let failover = Failover::new(primary.clone(), secondary.clone());
        for _ in 0..Failover::TRIP_AFTER {
            assert_eq!(
                failover.send(&email("a@example.com")).await,
                Ok("secondary")
            );
        }
        assert_eq!(primary.calls.load(Ordering::Relaxed), Failover::TRIP_AFTER);
        // Tripped: the primary is no longer asked first.
        assert_eq!(
            failover.send(&email("a@example.com")).await,
            Ok("secondary")
        );
        assert_eq!(primary.calls.load(Ordering::Relaxed), Failover::TRIP_AFTER);

        let both_down = Failover::new(scripted("p", down()), scripted("s", down()));
        assert!(matches!(
            both_down.send(&email("a@example.com")).await,
            Err(SendError::Transient(reason)) if reason.starts_with("both providers failed")
        ));
        let bad_address = scripted("p", Err(SendError::Permanent("550 no such user".into())));
        let untouched = scripted("s", Ok(()));
        let failover = Failover::new(bad_address, untouched.clone());
        assert!(matches!(
            failover.send(&email("a@example.com")).await,
            Err(SendError::Permanent(_))
        ));
        assert_eq!(untouched.calls.load(Ordering::Relaxed), 0);
        assert!(primary_first(1000, 1000));
        assert!(!primary_first(1001, 1000));
    }

    #[test]
    fn a_bad_url_does_not_echo_the_password() {
        let url = SecretString::from("smtp://user:hunter2@exa mple.com:bad");
        let from = parse_from("no-reply@herald.localhost").unwrap();
        let Err(err) = Smtp::new("primary", &url, from, 4) else {
            panic!("accepted")
        };
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
