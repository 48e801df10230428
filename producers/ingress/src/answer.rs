//! The 202 answer: where each accepted event landed.
//!
//! Written by hand rather than through serde: a batch's answer has a line of five members
//! for each event, and serde's string escaping and number formatting of them were a few percent
//! of the ingress's CPU under load. The text is the JSON serde writes for the same members
//! (tested).

use std::fmt::Write;

use uuid::Uuid;

use crate::prepare::Shape;

/// Where one accepted event landed.
#[derive(Debug, Clone, Copy)]
pub struct Landed<'a> {
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// About what one event's line of the answer takes, with a prefixed topic name: the answer
/// is sized up front, as growing it by doubling copies it several times.
const BYTES_PER_EVENT: usize = 160;

/// The answer's JSON text: a single event's line for a single event, `{"events": [...]}` in
/// input order for a batch.
pub fn write<'a>(shape: Shape, landed: impl ExactSizeIterator<Item = Landed<'a>>) -> String {
    let mut out = String::with_capacity(BYTES_PER_EVENT * landed.len() + 16);
    match shape {
        // A single event's request has exactly one.
        Shape::Single => {
            for event in landed.take(1) {
                line(&mut out, &event);
            }
        }
        Shape::Batch => {
            out.push_str(r#"{"events":["#);
            for (n, event) in landed.enumerate() {
                if n > 0 {
                    out.push(',');
                }
                line(&mut out, &event);
            }
            out.push_str("]}");
        }
    }
    out
}

fn line(out: &mut String, event: &Landed<'_>) {
    out.push_str(r#"{"event_id":""#);
    out.push_str(
        event
            .event_id
            .hyphenated()
            .encode_lower(&mut Uuid::encode_buffer()),
    );
    out.push_str(r#"","event_type":"#);
    string(out, event.event_type);
    out.push_str(r#","topic":"#);
    string(out, event.topic);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        r#","partition":{},"offset":{}}}"#,
        event.partition, event.offset
    );
}

/// A JSON string. Event types and topic names are plain ASCII and go as they are; anything
/// else is escaped by serde_json.
fn string(out: &mut String, text: &str) {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if plain {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(text).to_string());
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;

    /// What serde writes for the same members, in the same order.
    #[derive(Serialize)]
    struct Accepted<'a> {
        event_id: Uuid,
        event_type: &'a str,
        topic: &'a str,
        partition: i32,
        offset: i64,
    }

    #[derive(Serialize)]
    struct AcceptedBatch<'a> {
        events: Vec<Accepted<'a>>,
    }

    fn by_serde<'a>(event: &Landed<'a>) -> Accepted<'a> {
        Accepted {
            event_id: event.event_id,
            event_type: event.event_type,
            topic: event.topic,
            partition: event.partition,
            offset: event.offset,
        }
    }

    fn landed() -> Vec<Landed<'static>> {
        let id = |text| Uuid::parse_str(text).unwrap();
        vec![
            Landed {
                event_id: id("0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11"),
                event_type: "order.placed",
                topic: "herald.orders",
                partition: 5,
                offset: 0,
            },
            Landed {
                event_id: id("01a2408d-b7cb-70b9-a2cc-75c293e63c89"),
                event_type: "odd \"type\"\\ with\nall",
                topic: "tópico",
                partition: -1,
                offset: i64::MAX,
            },
            Landed {
                event_id: Uuid::nil(),
                event_type: "",
                topic: "with space\u{1}and\u{7f}",
                partition: i32::MAX,
                offset: i64::MIN,
            },
            Landed {
                event_id: Uuid::max(),
                event_type: "\u{1f}\t/",
                topic: "t",
                partition: i32::MIN,
                offset: -1,
            },
        ]
    }

    #[test]
    fn a_single_events_answer_is_what_serde_writes() {
        for event in landed() {
            let expected = serde_json::to_string(&by_serde(&event)).unwrap();
            assert_eq!(write(Shape::Single, [event].into_iter()), expected);
        }
    }

    #[test]
    fn a_batch_answer_is_what_serde_writes_in_input_order() {
        let events = landed();
        let expected = AcceptedBatch {
            events: events.iter().map(by_serde).collect(),
        };
        let text = write(Shape::Batch, events.iter().copied());
        assert_eq!(text, serde_json::to_string(&expected).unwrap());
        assert_eq!(write(Shape::Batch, std::iter::empty()), r#"{"events":[]}"#);
    }
}
