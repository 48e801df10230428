//! One exported event: where it sits in the log, its envelope and its data. Every output
//! format holds the same columns, so a replay gives the same rows in each.

use std::borrow::Cow;

use events::DecodedText;
use platform::kafka::ReadRecord;
use serde_json::{Value, json};
use uuid::Uuid;

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

/// A row is a view of a record and its decoded event: a replay makes millions.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Cow<'a, str>>,
    pub event_id: Uuid,
    pub event_type: &'a str,
    /// Microseconds since the epoch, UTC.
    pub occurred_at_us: i64,
    pub received_at_us: i64,
    pub actor: &'a str,
    pub source: &'a str,
    pub idempotency_key: Option<&'a str>,
    /// The event's data as JSON text: every format writes it as text, so it is never parsed.
    pub data: &'a str,
}

impl<'a> Row<'a> {
    pub fn new(record: &'a ReadRecord, decoded: &'a DecodedText) -> Self {
        let micros = |at: time::OffsetDateTime| (at.unix_timestamp_nanos() / 1_000) as i64;
        let envelope = &decoded.envelope;
        Self {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            key: record.key.as_deref().map(String::from_utf8_lossy),
            event_id: envelope.event_id,
            event_type: &envelope.event_type,
            occurred_at_us: micros(envelope.occurred_at),
            received_at_us: micros(envelope.received_at),
            actor: &envelope.actor,
            source: &envelope.source,
            idempotency_key: envelope.idempotency_key.as_deref(),
            data: &decoded.data,
        }
    }

    /// The event id in its hyphenated lowercase form, without allocating.
    pub fn event_id_text<'b>(&self, buffer: &'b mut [u8; 36]) -> &'b str {
        self.event_id.hyphenated().encode_lower(buffer)
    }

    /// The row as one line of JSON (no newline), written straight from the row: the
    /// envelope's columns serialized, then `data`, already JSON text, appended as it is.
    pub fn to_json_line(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            topic: &'a str,
            partition: i32,
            offset: i64,
            key: Option<&'a str>,
            event_id: &'a str,
            event_type: &'a str,
            occurred_at: Timestamp,
            received_at: Timestamp,
            actor: &'a str,
            source: &'a str,
            idempotency_key: Option<&'a str>,
        }
        let mut id = [0u8; 36];
        let line = Line {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            event_id: self.event_id_text(&mut id),
            event_type: self.event_type,
            occurred_at: Timestamp(self.occurred_at_us),
            received_at: Timestamp(self.received_at_us),
            actor: self.actor,
            source: self.source,
            idempotency_key: self.idempotency_key,
        };
        let mut out = Vec::with_capacity(320 + self.data.len());
        serde_json::to_writer(&mut out, &line).expect("writing JSON to memory cannot fail");
        out.pop(); // the closing brace
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(self.data.as_bytes());
        out.push(b'}');
        out
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
            "data": serde_json::from_str::<Value>(self.data).unwrap_or(Value::Null),
        })
    }
}

/// `2026-11-01T00:00:00.123456Z`: always six decimals, so text sorts as time does.
pub fn rfc3339(micros: i64) -> String {
    let mut out = [0u8; 27];
    String::from_utf8_lossy(format_micros(micros, &mut out)).into_owned()
}

/// A time written as [`rfc3339`] writes it, as a JSON string.
struct Timestamp(i64);

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = [0u8; 27];
        let text = format_micros(self.0, &mut out);
        serializer.serialize_str(std::str::from_utf8(text).expect("ASCII digits"))
    }
}

/// Formats by hand: a general formatter took a tenth of a replay's time.
fn format_micros(micros: i64, out: &mut [u8; 27]) -> &[u8] {
    // Years 0 to 9999 print in this fixed width; anything else is not a log time.
    const MIN: i64 = -62_167_219_200_000_000; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z
    let micros = micros.clamp(MIN, MAX);
    let (seconds, fraction) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let mut put = |at: usize, value: i64, width: usize| {
        let mut value = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, second_of_day / 3600, 2);
    put(14, second_of_day / 60 % 60, 2);
    put(17, second_of_day % 60, 2);
    put(20, fraction, 6);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (26, b'Z'),
    ] {
        out[at] = c;
    }
    out
}

/// Year, month, day of a count of days since 1970-01-01 (the proleptic Gregorian calendar;
/// Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_is_the_json_object() {
        let data = json!({"order_id": "o-1", "note": "a \"quote\""}).to_string();
        let row = Row {
            topic: "orders",
            partition: 1,
            offset: 7,
            key: Some("o-1".into()),
            event_id: Uuid::now_v7(),
            event_type: "order.placed",
            occurred_at_us: 1,
            received_at_us: 2,
            actor: "alice",
            source: "api",
            idempotency_key: None,
            data: &data,
        };
        let line: Value = serde_json::from_slice(&row.to_json_line()).unwrap();
        assert_eq!(line, row.to_json());
    }

    #[test]
    fn times_print_as_jiff_prints_them() {
        let mut micros: i64 = -62_167_219_200_000_000;
        while micros < 253_402_300_799_999_999 {
            let at = jiff::Timestamp::from_microsecond(micros).unwrap();
            let expected = format!("{}", at.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"));
            assert_eq!(rfc3339(micros), expected, "{micros}");
            micros += 7_919_999_999_987;
        }
        assert_eq!(rfc3339(i64::MIN), "0000-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999999Z");
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
