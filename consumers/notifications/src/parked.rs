//! Events set aside until their recipient is known.
//!
//! The users topic can be behind another (an order placed by a user whose registration the
//! service has not read yet). Retrying such an event in place would hold its whole partition,
//! everyone else's messages with it, for as long as the grace lasts; instead it is parked (as
//! it came, its sealed fields still sealed) and the partition goes on. It runs again once the
//! user is known, or once the grace has passed, when its deliveries are skipped as "unknown
//! user". Deliveries are keyed by event, channel and recipient, so however often an event
//! runs, each message is sent once.

use jiff::Timestamp;
use platform::consumer::Event;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A parked event, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub event_id: String,
    /// The user it waits for.
    pub user_id: String,
    /// When the ingress received it (the grace counts from then), Unix microseconds.
    pub received_at_us: i64,
    /// The event, as JSON ([`Stored`]).
    pub event: String,
}

/// What an event keeps while parked.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<String>,
    event_id: Uuid,
    event_type: String,
    occurred_at: Timestamp,
    received_at: Timestamp,
    actor: String,
    source: String,
    idempotency_key: Option<String>,
    data: serde_json::Value,
    written_with: u32,
    traceparent: Option<String>,
}

impl Parked {
    pub fn of(event: &Event, user_id: &str) -> Self {
        let envelope = &event.envelope;
        let stored = Stored {
            topic: event.topic.clone(),
            partition: event.partition,
            offset: event.offset,
            key: event.key.clone(),
            event_id: envelope.event_id,
            event_type: envelope.event_type.clone(),
            occurred_at: envelope.occurred_at,
            received_at: envelope.received_at,
            actor: envelope.actor.clone(),
            source: envelope.source.clone(),
            idempotency_key: envelope.idempotency_key.clone(),
            data: event.data.clone(),
            written_with: event.written_with,
            traceparent: event.traceparent.clone(),
        };
        Self {
            event_id: envelope.event_id.to_string(),
            user_id: user_id.to_string(),
            received_at_us: envelope.received_at.as_microsecond(),
            event: serde_json::to_string(&stored).expect("an event serializes"),
        }
    }

    /// The event again.
    pub fn event(&self) -> Result<Event, serde_json::Error> {
        let stored: Stored = serde_json::from_str(&self.event)?;
        Ok(Event {
            topic: stored.topic,
            partition: stored.partition,
            offset: stored.offset,
            key: stored.key,
            envelope: events::Envelope {
                event_id: stored.event_id,
                event_type: stored.event_type,
                occurred_at: stored.occurred_at,
                received_at: stored.received_at,
                actor: stored.actor,
                source: stored.source,
                idempotency_key: stored.idempotency_key,
            },
            data: stored.data,
            written_with: stored.written_with,
            traceparent: stored.traceparent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_event_comes_back_as_it_went() {
        let at = Timestamp::from_second(1_700_000_000).unwrap();
        let event = Event {
            topic: "orders".into(),
            partition: 3,
            offset: 42,
            key: Some("o-1".into()),
            envelope: events::Envelope {
                event_id: Uuid::now_v7(),
                event_type: "order.placed".into(),
                occurred_at: at,
                received_at: at,
                actor: "alice".into(),
                source: "api".into(),
                idempotency_key: Some("k".into()),
            },
            data: serde_json::json!({"order_id": "o-1", "customer_id": "alice\r\n\u{0}"}),
            written_with: 1,
            traceparent: None,
        };
        let parked = Parked::of(&event, "alice");
        assert_eq!(parked.received_at_us, 1_700_000_000_000_000);
        let back = parked.event().unwrap();
        assert_eq!(format!("{back:?}"), format!("{event:?}"));
    }
}
