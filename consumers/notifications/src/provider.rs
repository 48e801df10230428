//! What every provider (SMTP, FCM) answers when a send fails, so the delivery log and the
//! consumer treat them alike.

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
