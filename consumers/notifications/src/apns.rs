//! Push to iOS devices straight through Apple's APNs provider API (HTTP/2), with token
//! authentication: a short JWT (ES256, the team's .p8 key) in every request, made again every
//! 50 minutes (APNs refuses tokens older than an hour and new ones more often than every 20
//! minutes).
//!
//! APNs has no idempotency key. Each message carries `apns-collapse-id` set to the
//! delivery's stable key, so a repeated send (after a crash) replaces the first on the device
//! instead of showing twice, and `herald_delivery` in its payload for the app.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::provider::{PushMessage, PushProvider, SendError};

pub const DEFAULT_ENDPOINT: &str = "https://api.push.apple.com";
/// How long one provider token is used.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ApnsSetupError {
    #[error("reading the APNs key file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the APNs key file is not an EC (P-256) private key in PEM form (Apple's .p8)")]
    Key,
    #[error("building the HTTP/2 client: {0}")]
    Client(String),
}

/// What identifies this sender to Apple.
#[derive(Debug, Clone)]
pub struct ApnsAccount {
    /// The key's id (10 characters, from the developer account).
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id: the `apns-topic` of every message.
    pub topic: String,
}

pub struct Apns {
    http: reqwest::Client,
    account: ApnsAccount,
    key: EncodingKey,
    endpoint: String,
    token: Mutex<Option<(String, Instant)>>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl Apns {
    pub fn from_file(
        path: &Path,
        account: ApnsAccount,
        endpoint: &str,
    ) -> Result<Self, ApnsSetupError> {
        let pem = std::fs::read(path).map_err(|e| ApnsSetupError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::new(&pem, account, endpoint)
    }

    pub fn new(pem: &[u8], account: ApnsAccount, endpoint: &str) -> Result<Self, ApnsSetupError> {
        let key = EncodingKey::from_ec_pem(pem).map_err(|_| ApnsSetupError::Key)?;
        // APNs speaks HTTP/2 only.
        let http = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ApnsSetupError::Client(e.to_string()))?;
        Ok(Self {
            http,
            account,
            key,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: Mutex::new(None),
        })
    }

    async fn provider_token(&self) -> Result<String, SendError> {
        let mut cached = self.token.lock().await;
        if let Some((token, made)) = cached.as_ref()
            && made.elapsed() < TOKEN_LIFETIME
        {
            return Ok(token.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.account.key_id.clone());
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: &self.account.team_id,
            iat,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| SendError::Permanent(format!("signing the APNs token: {e}")))?;
        *cached = Some((token.clone(), Instant::now()));
        Ok(token)
    }
}

/// Whether a token is an APNs device token (hexadecimal) rather than an FCM registration
/// token, which an iOS app that uses FCM registers instead.
pub fn is_device_token(token: &str) -> bool {
    !token.is_empty() && token.chars().all(|c| c.is_ascii_hexdigit())
}

/// How an APNs answer is treated (pure): see Apple's "Handling notification responses".
pub fn classify(status: u16, body: &Value) -> Result<(), SendError> {
    let reason = body["reason"].as_str().unwrap_or("");
    let detail = format!("APNs {status} {reason}").trim_end().to_string();
    match (status, reason) {
        (200, _) => Ok(()),
        (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
            Err(SendError::Unregistered(detail))
        }
        // An expired or refused provider token, a misconfigured key: retried (and dead-lettered
        // if it lasts), so the messages wait for the fix rather than being dropped.
        (403 | 429 | 500..=599, _) => Err(SendError::Transient(detail)),
        _ => Err(SendError::Permanent(detail)),
    }
}

/// The message's APNs payload: the alert, and the data as custom keys beside `aps`.
fn payload(message: &PushMessage) -> Value {
    let mut body = json!({"aps": {
        "alert": {"title": message.title, "body": message.body},
        "sound": "default",
    }});
    for (key, value) in &message.data {
        body[key] = Value::String(value.clone());
    }
    body
}

#[async_trait]
impl PushProvider for Apns {
    async fn send(&self, device_token: &str, message: &PushMessage) -> Result<&str, SendError> {
        let token = self.provider_token().await?;
        let mut request = self
            .http
            .post(format!("{}/3/device/{device_token}", self.endpoint))
            .bearer_auth(token)
            .header("apns-topic", &self.account.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .json(&payload(message));
        if let Some(delivery) = message.data.get("herald_delivery") {
            request = request.header("apns-collapse-id", delivery);
        }
        let response = request
            .send()
            .await
            // The URL holds the device token, which the log keeps only as a hash.
            .map_err(|e| SendError::Transient(format!("APNs: {}", e.without_url())))?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status == 403 {
            // Made again on the next send.
            *self.token.lock().await = None;
        }
        classify(status, &answer).map(|()| "apns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_answers_are_classified() {
        assert_eq!(classify(200, &Value::Null), Ok(()));
        assert!(matches!(
            classify(410, &json!({"reason": "Unregistered"})),
            Err(SendError::Unregistered(r)) if r == "APNs 410 Unregistered"
        ));
        assert!(matches!(
            classify(400, &json!({"reason": "BadDeviceToken"})),
            Err(SendError::Unregistered(_))
        ));
        assert!(matches!(
            classify(400, &json!({"reason": "PayloadTooLarge"})),
            Err(SendError::Permanent(_))
        ));
        for status in [403, 429, 500, 503] {
            assert!(matches!(
                classify(status, &Value::Null),
                Err(SendError::Transient(_))
            ));
        }
    }

    #[test]
    fn the_payload_puts_data_beside_aps() {
        let message = PushMessage {
            title: "T".into(),
            body: "B".into(),
            data: [("event_id".to_string(), "e-1".to_string())].into(),
        };
        assert_eq!(
            payload(&message),
            json!({"aps": {"alert": {"title": "T", "body": "B"}, "sound": "default"}, "event_id": "e-1"})
        );
    }

    #[test]
    fn a_key_that_is_not_ec_is_refused_without_echoing_it() {
        let account = ApnsAccount {
            key_id: "K".into(),
            team_id: "T".into(),
            topic: "app".into(),
        };
        let pem = b"-----BEGIN PRIVATE KEY-----\nsecret-material\n-----END PRIVATE KEY-----";
        let Err(err) = Apns::new(pem, account, DEFAULT_ENDPOINT) else {
            panic!("accepted")
        };
        assert!(!err.to_string().contains("secret-material"));
    }
}
