//! The notification service's own vocabulary: what a message is (its channel and category),
//! who it goes to (users and their devices), and what the delivery log keys and records. The
//! store, the rules, the planner and the channels all speak it; it depends on none of them.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Transactional messages are what a user asked for or must know (receipts, codes); they
/// ignore quiet hours and caps. Promotional ones need an explicit opt-in and use their own
/// SMS route and budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Transactional,
    Promotional,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transactional => "transactional",
            Self::Promotional => "promotional",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Transactional, Self::Promotional]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Push,
    Sms,
    /// To the user's open stream if connected, push otherwise.
    Live,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Push => "push",
            Self::Sms => "sms",
            Self::Live => "live",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Email, Self::Push, Self::Sms, Self::Live]
            .into_iter()
            .find(|c| c.as_str() == text)
    }
}

/// The delivery log's key: one message per event, channel and recipient, ever.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub event_id: Uuid,
    pub channel: Channel,
    /// A user id, or the address itself for rules that list raw addresses.
    pub recipient: String,
}

impl DeliveryKey {
    /// A stable id for providers that deduplicate (the email Message-ID, an idempotency
    /// key): the same delivery always carries the same one.
    pub fn idempotency_key(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.event_id.as_bytes());
        hash.update(self.channel.as_str().as_bytes());
        hash.update([0]);
        hash.update(self.recipient.as_bytes());
        let digest = hash.finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What is recorded before a delivery is attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub key: DeliveryKey,
    pub user_id: Option<String>,
    /// Email address, phone number or device; empty when there is none.
    pub address: String,
    pub event_type: String,
    pub template: String,
    pub category: Category,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Intent recorded, outcome not yet: if found so later, the attempt's fate is unknown.
    Sending,
    /// The last attempt failed transiently; the next one sends again.
    Retrying,
    Sent,
    /// Permanently (bad address, rejected by the provider): never retried.
    Failed,
    /// Decided without sending (no address, no provider for the channel, user deleted).
    Skipped,
    /// Transient failures until the attempts ran out: the event went to the dead-letter
    /// topic, and goes there again whenever it is handled again.
    Dead,
    /// Held by the user's quiet hours; the release loop sends it when they end.
    Deferred,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Retrying => "retrying",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Dead => "dead",
            Self::Deferred => "deferred",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Sending,
            Self::Retrying,
            Self::Sent,
            Self::Failed,
            Self::Skipped,
            Self::Dead,
            Self::Deferred,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Settled deliveries are never attempted again by the consumer (a deferred one is the
    /// release loop's).
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Self::Sent | Self::Failed | Self::Skipped | Self::Dead | Self::Deferred
        )
    }
}

/// A user's promotional messages in the last 24 hours, as the daily cap counts them: one per
/// event and channel, however many devices a push reached.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromotionalHistory {
    /// Sent, being sent or held.
    pub messages: HashSet<(Uuid, Channel)>,
}

impl PromotionalHistory {
    /// Messages of events other than `event_id`.
    pub(crate) fn others(&self, event_id: Uuid) -> i64 {
        let count = self.messages.iter().filter(|(e, _)| *e != event_id).count();
        i64::try_from(count).unwrap_or(i64::MAX)
    }

    /// Whether `event_id` already went out on `channel` (or began to) in an earlier
    /// attempt: the cap let it through then, and a redelivery keeps to that.
    pub(crate) fn began(&self, event_id: Uuid, channel: Channel) -> bool {
        self.messages.contains(&(event_id, channel))
    }
}

/// What the service knows of a user, from the users topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct UserRecord {
    pub user_id: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub display_name: Option<String>,
    pub locale: String,
    pub time_zone: String,
    pub deleted: bool,
}

/// A registered push device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Device {
    pub token: String,
    pub user_id: String,
    pub platform: String,
    pub active: bool,
}

/// The event type of a delivery's outcome (see `outcomes`).
pub const OUTCOME_EVENT: &str = "notification.settled";

/// One delivery's outcome, as the delivery log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub key: DeliveryKey,
    pub user_id: Option<String>,
    pub event_type: String,
    pub status: Status,
    pub attempts: i32,
    pub provider: Option<String>,
    pub settled_at_us: i64,
}

impl Outcome {
    /// The same for every publication of this outcome, by any replica.
    pub fn event_id(&self) -> Uuid {
        let digest = Sha256::new()
            .chain_update(OUTCOME_EVENT)
            .chain_update([0])
            .chain_update(self.key.event_id.as_bytes())
            .chain_update(self.key.channel.as_str())
            .chain_update([0])
            .chain_update(&self.key.recipient)
            .chain_update([0])
            .chain_update(self.status.as_str())
            .chain_update(self.attempts.to_be_bytes())
            .finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    /// The event's `data`: who and how, never the address it went to.
    pub fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "source_event_id": self.key.event_id.to_string(),
            "source_event_type": self.event_type,
            "channel": self.key.channel.as_str(),
            "status": self.status.as_str(),
            "attempts": self.attempts,
            "provider": self.provider,
            "user_id": self.user_id,
        })
    }
}

#[cfg(test)]
mod outcome_tests {
    use super::*;

    fn outcome(status: Status, attempts: i32) -> Outcome {
        Outcome {
            key: DeliveryKey {
                event_id: Uuid::from_u128(7),
                channel: Channel::Email,
                recipient: "alice".into(),
            },
            user_id: Some("alice".into()),
            event_type: "order.placed".into(),
            status,
            attempts,
            provider: Some("smtp".into()),
            settled_at_us: 1,
        }
    }

    #[test]
    fn one_outcome_has_one_event_id_and_another_outcome_another() {
        let sent = outcome(Status::Sent, 1);
        assert_eq!(sent.event_id(), outcome(Status::Sent, 1).event_id());
        assert_eq!(sent.event_id().get_version_num(), 8);
        assert_ne!(sent.event_id(), outcome(Status::Dead, 1).event_id());
        assert_ne!(sent.event_id(), outcome(Status::Sent, 2).event_id());
    }

    #[test]
    fn the_event_fits_its_schema_and_names_no_address() {
        let catalog = events::Catalog::embedded().unwrap();
        let schema = catalog.latest(OUTCOME_EVENT).unwrap();
        let data = outcome(Status::Sent, 1).data();
        schema.validate(&data, "").unwrap();
        assert!(!data.to_string().contains('@'));
    }
}
