//! What every provider (SMTP, FCM, APNs) answers when a send fails, so the delivery log and
//! the consumer treat them alike; and what a push provider is, so FCM, APNs and the routing
//! between them depend on this module rather than on each other.

use std::collections::BTreeMap;

use async_trait::async_trait;

/// How a failed send must be treated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (connection refused, timeout, SMTP 4xx, HTTP 429 or 5xx).
    #[error("transient: {0}")]
    Transient(String),
    /// Never retry (malformed address, SMTP 5xx such as an unknown mailbox, HTTP 400).
    #[error("permanent: {0}")]
    Permanent(String),
    /// The address is gone for good (an app uninstalled: FCM's UNREGISTERED): never retry,
    /// and stop sending to it.
    #[error("unregistered: {0}")]
    Unregistered(String),
}

/// One push notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    pub title: String,
    pub body: String,
    /// Delivered to the app as is (FCM data values are strings).
    pub data: BTreeMap<String, String>,
}

#[async_trait]
pub trait PushProvider: Send + Sync {
    /// Sends to one device; on success, the provider's name for the delivery log.
    async fn send(&self, device_token: &str, message: &PushMessage) -> Result<&str, SendError>;
}
