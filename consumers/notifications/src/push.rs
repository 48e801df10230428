//! Push through Firebase Cloud Messaging's HTTP v1 API (Android, web, and iOS unless APNs is
//! configured: see [`crate::apns`] and [`PushRoutes`]).
//!
//! Authentication is a Google service account: a JWT signed with its private key is traded at
//! its `token_uri` for an OAuth2 access token (scope firebase.messaging), cached until a minute
//! before it expires. The legacy server-key API is gone and not supported. FCM has no
//! idempotency key; every message carries `herald_delivery` in its data so an app can drop a
//! repeat.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::provider::SendError;
pub use crate::provider::{PushMessage, PushProvider};

pub const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// Where a push goes, as one string: the device's platform and token (`ios:<token>`), so
/// that a held delivery keeps both.
pub fn address(platform: &str, token: &str) -> String {
    format!("{platform}:{token}")
}

/// The platforms a device registers as.
pub const PLATFORMS: [&str; 3] = ["android", "ios", "web"];

/// The platform and token of an [`address`]. A bare FCM token (which may itself hold ':',
/// as in messages held by quiet hours before addresses named the platform) has no platform.
pub fn split_address(to: &str) -> (&str, &str) {
    match to.split_once(':') {
        Some((platform, token)) if PLATFORMS.contains(&platform) => (platform, token),
        _ => ("", to),
    }
}

/// Push by platform: iOS devices with an APNs token through APNs when it is configured, every
/// other device (and iOS apps that registered an FCM token) through FCM. Takes
/// [`address`]es.
pub struct PushRoutes {
    pub fcm: Option<Arc<dyn PushProvider>>,
    pub apns: Option<Arc<dyn PushProvider>>,
}

#[async_trait]
impl PushProvider for PushRoutes {
    async fn send(&self, to: &str, message: &PushMessage) -> Result<&str, SendError> {
        let (platform, token) = split_address(to);
        let provider = match platform {
            "ios" if crate::apns::is_device_token(token) => self.apns.as_ref(),
            _ => self.fcm.as_ref(),
        };
        match provider {
            Some(provider) => provider.send(token, message).await,
            None => Err(SendError::Permanent(format!(
                "no push provider for this {platform} device's token (configure FCM or APNs)"
            ))),
        }
    }
}

/// The fields of a service-account key file this needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PushSetupError {
    #[error("reading the FCM service account file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the FCM service account's private_key is not an RSA key in PEM form")]
    Key,
    #[error("building the HTTP client: {0}")]
    Client(String),
}

pub struct Fcm {
    http: reqwest::Client,
    account: ServiceAccount,
    key: EncodingKey,
    endpoint: String,
    token: Mutex<Option<(String, Instant)>>,
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl Fcm {
    pub fn from_file(path: &Path, endpoint: &str) -> Result<Self, PushSetupError> {
        let read = |reason: String| PushSetupError::Read {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        // serde_json's message names the line and column, never the key material.
        let account: ServiceAccount =
            serde_json::from_str(&text).map_err(|e| read(e.to_string()))?;
        Self::new(account, endpoint)
    }

    pub fn new(account: ServiceAccount, endpoint: &str) -> Result<Self, PushSetupError> {
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|_| PushSetupError::Key)?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| PushSetupError::Client(e.to_string()))?;
        Ok(Self {
            http,
            account,
            key,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: Mutex::new(None),
        })
    }

    async fn access_token(&self) -> Result<String, SendError> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let assertion = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &Assertion {
                iss: &self.account.client_email,
                scope: SCOPE,
                aud: &self.account.token_uri,
                iat: now,
                exp: now + 3600,
            },
            &self.key,
        )
        .map_err(|e| SendError::Permanent(format!("signing the FCM token request: {e}")))?;
        let response = self
            .http
            .post(&self.account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| SendError::Transient(format!("FCM token endpoint: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(SendError::Transient(format!(
                "FCM token endpoint answered {status}"
            )));
        }
        #[derive(Deserialize)]
        struct Granted {
            access_token: String,
            expires_in: u64,
        }
        let granted: Granted = response
            .json()
            .await
            .map_err(|e| SendError::Transient(format!("FCM token endpoint: {e}")))?;
        let until = Instant::now() + Duration::from_secs(granted.expires_in.saturating_sub(60));
        *cached = Some((granted.access_token.clone(), until));
        Ok(granted.access_token)
    }
}

/// How an FCM answer is treated (pure): see FCM's `ErrorCode` reference.
pub fn classify(status: u16, body: &Value) -> Result<(), SendError> {
    let code = body["error"]["details"]
        .as_array()
        .and_then(|details| details.iter().find_map(|d| d["errorCode"].as_str()))
        .or_else(|| body["error"]["status"].as_str())
        .unwrap_or("")
        .to_string();
    let reason = format!("FCM {status} {code}").trim_end().to_string();
    match status {
        200..=299 => Ok(()),
        404 => Err(SendError::Unregistered(reason)),
        _ if code == "UNREGISTERED" => Err(SendError::Unregistered(reason)),
        401 | 429 | 500..=599 => Err(SendError::Transient(reason)),
        _ => Err(SendError::Permanent(reason)),
    }
}

#[async_trait]
impl PushProvider for Fcm {
    async fn send(&self, device_token: &str, message: &PushMessage) -> Result<&str, SendError> {
        let token = self.access_token().await?;
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.endpoint, self.account.project_id
        );
        let body = json!({"message": {
            "token": device_token,
            "notification": {"title": message.title, "body": message.body},
            "data": message.data,
        }});
        let response = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| SendError::Transient(format!("FCM: {e}")))?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status == 401 {
            // The access token was revoked or expired early: fetch a new one next time.
            *self.token.lock().await = None;
        }
        classify(status, &answer).map(|()| "fcm")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn fcm_answers_are_classified() {
        assert_eq!(
            classify(200, &json!({"name": "projects/p/messages/1"})),
            Ok(())
        );
        let unregistered = json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
        ]}});
        assert!(
            matches!(classify(404, &unregistered), Err(SendError::Unregistered(r)) if r == "FCM 404 UNREGISTERED")
        );
        assert!(matches!(
            classify(400, &json!({"error": {"status": "INVALID_ARGUMENT"}})),
            Err(SendError::Permanent(_))
        ));
        assert!(matches!(
            classify(429, &Value::Null),
            Err(SendError::Transient(_))
        ));
        assert!(matches!(
            classify(503, &Value::Null),
            Err(SendError::Transient(_))
        ));
        assert!(matches!(
            classify(401, &Value::Null),
            Err(SendError::Transient(_))
        ));
    }

    #[test]
    fn a_bad_key_is_refused_without_echoing_it() {
        let account = ServiceAccount {
            project_id: "p".into(),
            client_email: "a@p.iam.gserviceaccount.com".into(),
            private_key: "-----BEGIN PRIVATE KEY-----\nsecret-material\n-----END PRIVATE KEY-----"
                .into(),
            token_uri: "http://127.0.0.1:1/token".into(),
        };
        let Err(err) = Fcm::new(account, DEFAULT_ENDPOINT) else {
            panic!("accepted")
        };
        assert!(!err.to_string().contains("secret-material"));
    }

    /// Answers with its own name.
    struct Named(&'static str);

    #[async_trait]
    impl PushProvider for Named {
        async fn send(&self, _: &str, _: &PushMessage) -> Result<&str, SendError> {
            Ok(self.0)
        }
    }

    #[tokio::test]
    async fn ios_apns_tokens_go_to_apns_and_every_other_token_to_fcm() {
        let message = PushMessage {
            title: "t".into(),
            body: "b".into(),
            data: BTreeMap::new(),
        };
        let both = PushRoutes {
            fcm: Some(Arc::new(Named("fcm"))),
            apns: Some(Arc::new(Named("apns"))),
        };
        assert_eq!(both.send("ios:a1b2c3", &message).await, Ok("apns"));
        assert_eq!(both.send("ios:fcm-token:APA91b", &message).await, Ok("fcm"));
        assert_eq!(both.send("android:a1b2c3", &message).await, Ok("fcm"));
        assert_eq!(both.send("web:x", &message).await, Ok("fcm"));
        let fcm_only = PushRoutes {
            fcm: Some(Arc::new(Named("fcm"))),
            apns: None,
        };
        assert!(matches!(
            fcm_only.send("ios:a1b2c3", &message).await,
            Err(SendError::Permanent(_))
        ));
        assert_eq!(
            split_address("android:tok:with:colons"),
            ("android", "tok:with:colons")
        );
        assert_eq!(
            split_address("dXk2:APA91bHun4MxP5egoKMwt2KZFBaFUH"),
            ("", "dXk2:APA91bHun4MxP5egoKMwt2KZFBaFUH")
        );
    }
}
