//! Email providers: SMTP (lettre, pooled connections, STARTTLS/TLS and auth from the URL) or
//! an outbox folder of .eml files for a machine without a mail server.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

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
}

/// How a failed send must be treated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (connection refused, timeout, 4xx).
    #[error("transient: {0}")]
    Transient(String),
    /// Never retry (malformed address, 5xx such as an unknown mailbox).
    #[error("permanent: {0}")]
    Permanent(String),
}

#[async_trait]
pub trait EmailProvider: Send + Sync {
    /// For the delivery log: which provider sent it.
    fn name(&self) -> &str;
    async fn send(&self, email: &Email) -> Result<(), SendError>;
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

fn build(from: &Mailbox, email: &Email) -> Result<Message, SendError> {
    let address = email
        .to
        .parse()
        .map_err(|err| SendError::Permanent(format!("invalid recipient address: {err}")))?;
    let to = Mailbox::new(email.to_name.clone(), address);
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
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(email.subject.clone())
        .message_id(Some(email.message_id.clone()))
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
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, email: &Email) -> Result<(), SendError> {
        let message = build(&self.from, email)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
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
    fn name(&self) -> &str {
        "outbox"
    }

    async fn send(&self, email: &Email) -> Result<(), SendError> {
        let message = build(&self.from, email)?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|err| SendError::Transient(err.to_string()))
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
        }
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
    fn a_malformed_address_is_permanent() {
        let from = parse_from("no-reply@herald.localhost").unwrap();
        assert!(matches!(
            build(&from, &email("not an address")),
            Err(SendError::Permanent(_))
        ));
        assert!(parse_from("nope").is_err());
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
