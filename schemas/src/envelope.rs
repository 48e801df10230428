use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

/// The fields every event carries beside its data (`schemas/avro/_envelope.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Envelope {
    /// UUID v7: time-ordered, and the deduplication key of every consumer.
    pub event_id: Uuid,
    pub event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The verified token's subject; never taken from a request body.
    pub actor: String,
    pub source: String,
    pub idempotency_key: Option<String>,
}
