//! One exported event: where it sits in the log, its envelope and its data. Every output
//! format holds the same columns, so a replay gives the same rows in each.

use events::Decoded;
use platform::kafka::ReadRecord;
use serde_json::{Value, json};

/// The columns, in order, as every format names them.
pub const COLUMNS: [&str; 12] = [
    "topic",
    "partition",
    "offset",
    "key",
    "event_id",
    "event_type",
    "occurred_at",
    "received_at",
    "actor",
    "source",
    "idempotency_key",
    "data",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub event_id: String,
    pub event_type: String,
    /// Microseconds since the epoch, UTC.
    pub occurred_at_us: i64,
    pub received_at_us: i64,
    pub actor: String,
    pub source: String,
    pub idempotency_key: Option<String>,
    pub data: Value,
}

impl Row {
    pub fn new(record: &ReadRecord, decoded: Decoded) -> Self {
        let micros = |at: time::OffsetDateTime| (at.unix_timestamp_nanos() / 1_000) as i64;
        let envelope = decoded.envelope;
        Self {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            key: record
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            event_id: envelope.event_id.to_string(),
            event_type: envelope.event_type,
            occurred_at_us: micros(envelope.occurred_at),
            received_at_us: micros(envelope.received_at),
            actor: envelope.actor,
            source: envelope.source,
            idempotency_key: envelope.idempotency_key,
            data: decoded.data,
        }
    }

    /// The row as one line of JSON (no newline), written straight from the row.
    pub fn to_json_line(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            topic: &'a str,
            partition: i32,
            offset: i64,
            key: Option<&'a str>,
            event_id: &'a str,
            event_type: &'a str,
            occurred_at: String,
            received_at: String,
            actor: &'a str,
            source: &'a str,
            idempotency_key: Option<&'a str>,
            data: &'a Value,
        }
        let line = Line {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            event_id: &self.event_id,
            event_type: &self.event_type,
            occurred_at: rfc3339(self.occurred_at_us),
            received_at: rfc3339(self.received_at_us),
            actor: &self.actor,
            source: &self.source,
            idempotency_key: self.idempotency_key.as_deref(),
            data: &self.data,
        };
        serde_json::to_vec(&line).unwrap_or_default()
    }

    /// The row as one JSON object, times in RFC 3339 with microseconds.
    pub fn to_json(&self) -> Value {
        json!({
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "occurred_at": rfc3339(self.occurred_at_us),
            "received_at": rfc3339(self.received_at_us),
            "actor": self.actor,
            "source": self.source,
            "idempotency_key": self.idempotency_key,
            "data": self.data,
        })
    }
}

/// `2026-11-01T00:00:00.123456Z`: always six decimals, so text sorts as time does.
pub fn rfc3339(micros: i64) -> String {
    let at = jiff::Timestamp::from_microsecond(micros).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{}", at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_is_the_json_object() {
        let row = Row {
            topic: "orders".into(),
            partition: 1,
            offset: 7,
            key: Some("o-1".into()),
            event_id: "e".into(),
            event_type: "order.placed".into(),
            occurred_at_us: 1,
            received_at_us: 2,
            actor: "alice".into(),
            source: "api".into(),
            idempotency_key: None,
            data: json!({"order_id": "o-1", "note": "a \"quote\""}),
        };
        let line: Value = serde_json::from_slice(&row.to_json_line()).unwrap();
        assert_eq!(line, row.to_json());
    }

    #[test]
    fn times_print_with_six_decimals_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_793_577_600_123_456),
            "2026-11-02T00:00:00.123456Z"
        );
    }
}
