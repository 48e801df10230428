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
        let micros = |at: jiff::Timestamp| at.as_microsecond();
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

    /// Appends the row as one line of JSON (no newline), written by hand: the column names
    /// are constants, the event id and times need no escaping, and `data`, already JSON
    /// text, is appended as it is. A serializer spent a tenth of a replay's time on this.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let mut id = [0u8; 36];
        let mut time = [0u8; 27];
        out.extend_from_slice(b"{\"topic\":");
        json_string(out, self.topic);
        write!(
            out,
            ",\"partition\":{},\"offset\":{}",
            self.partition, self.offset
        )
        .expect("writing to memory cannot fail");
        out.extend_from_slice(b",\"key\":");
        json_optional(out, self.key.as_deref());
        out.extend_from_slice(b",\"event_id\":\"");
        out.extend_from_slice(self.event_id_text(&mut id).as_bytes());
        out.extend_from_slice(b"\",\"event_type\":");
        json_string(out, self.event_type);
        out.extend_from_slice(b",\"occurred_at\":\"");
        out.extend_from_slice(format_micros(self.occurred_at_us, &mut time));
        out.extend_from_slice(b"\",\"received_at\":\"");
        out.extend_from_slice(format_micros(self.received_at_us, &mut time));
        out.extend_from_slice(b"\",\"actor\":");
        json_string(out, self.actor);
        out.extend_from_slice(b",\"source\":");
        json_string(out, self.source);
        out.extend_from_slice(b",\"idempotency_key\":");
        json_optional(out, self.idempotency_key);
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(self.data.as_bytes());
        out.push(b'}');
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

/// `text` as a JSON string: copied as it is when nothing in it needs escaping (the usual
/// case), else escaped by serde_json, whose escapes are exactly these bytes.
fn json_string(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(out, text).expect("writing to memory cannot fail");
    }
}

fn json_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => json_string(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// `2026-11-01T00:00:00.123456Z`: always six decimals, so text sorts as time does.
pub fn rfc3339(micros: i64) -> String {
    let mut out = [0u8; 27];
    String::from_utf8_lossy(format_micros(micros, &mut out)).into_owned()
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
        let mut line = Vec::new();
        row.write_json_line(&mut line);
        let parsed: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed, row.to_json());

        // Text that needs escaping is escaped as serde_json escapes it.
        let odd = "a \"quote\", a \\ and a \u{1} and é";
        let row = Row {
            key: Some(odd.into()),
            actor: odd,
            idempotency_key: Some(odd),
            ..row
        };
        let mut line = Vec::new();
        row.write_json_line(&mut line);
        let parsed: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed, row.to_json());
        assert!(
            String::from_utf8(line)
                .unwrap()
                .contains(&serde_json::to_string(odd).unwrap())
        );
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
