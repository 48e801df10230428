use jiff::Timestamp;
use serde::Serialize;
use uuid::Uuid;

/// The fields every event carries beside its data (`schemas/avro/_envelope.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope {
    /// UUID v7: time-ordered, and the deduplication key of every consumer.
    pub event_id: Uuid,
    pub event_type: String,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
    /// The verified token's subject; never taken from a request body.
    pub actor: String,
    pub source: String,
    pub idempotency_key: Option<String>,
}
