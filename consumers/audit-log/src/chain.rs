//! The hash chain, as pure functions: how events are linked when appended, and how a stored
//! chain is checked. No I/O here; the store calls these inside its transactions.
//!
//! There is one chain per topic-partition, in offset order. Each row stores the hash of the
//! row before it (`prev_hash`, [`GENESIS`] for the first) and its own
//! `hash = SHA-256(prev_hash ‖ content)`, where `content` is the canonical JSON of the event
//! and its position. Changing a row's content breaks its own hash; removing, inserting or
//! moving a row breaks the link of the row after it; removing rows at the end is caught by the
//! chain head kept beside the rows.

use std::collections::HashSet;
use std::fmt;

use jiff::Timestamp;
use platform::consumer::Event;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The `prev_hash` of a chain's first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An event as the audit log stores it, before it has a place in a chain. The columns beside
/// `content` are copies of fields inside it, kept for queries (and checked by verification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub event_id: Uuid,
    pub event_type: String,
    pub actor: String,
    pub key: Option<String>,
    /// Microseconds since the epoch.
    pub occurred_at_us: i64,
    pub offset: i64,
    /// Canonical JSON: envelope, data and position, keys sorted.
    pub content: String,
}

impl Entry {
    pub fn from_event(event: &Event) -> Self {
        let envelope = &event.envelope;
        let content = json!({
            "event_id": envelope.event_id,
            "event_type": envelope.event_type,
            "occurred_at": rfc3339(envelope.occurred_at),
            "received_at": rfc3339(envelope.received_at),
            "actor": envelope.actor,
            "source": envelope.source,
            "idempotency_key": envelope.idempotency_key,
            "topic": event.topic,
            "partition": event.partition,
            "offset": event.offset,
            "key": event.key,
            "schema_version": event.written_with,
            "traceparent": event.traceparent,
            "data": event.data,
        });
        Self {
            event_id: envelope.event_id,
            event_type: envelope.event_type.clone(),
            actor: envelope.actor.clone(),
            key: event.key.clone(),
            occurred_at_us: micros(envelope.occurred_at),
            offset: event.offset,
            content: canonical(&content),
        }
    }

    /// Reads the queryable fields back out of `content`.
    pub fn from_content(content: &str) -> Result<Self, String> {
        let value: Value =
            serde_json::from_str(content).map_err(|err| format!("content is not JSON: {err}"))?;
        let text = |field: &str| value[field].as_str().map(str::to_string);
        let occurred_at = text("occurred_at")
            .and_then(|t| events::parse_timestamp(&t))
            .ok_or("content has no occurred_at")?;
        Ok(Self {
            event_id: text("event_id")
                .and_then(|id| Uuid::try_parse(&id).ok())
                .ok_or("content has no event_id")?,
            event_type: text("event_type").ok_or("content has no event_type")?,
            actor: text("actor").ok_or("content has no actor")?,
            key: text("key"),
            occurred_at_us: micros(occurred_at),
            offset: value["offset"].as_i64().ok_or("content has no offset")?,
            content: content.to_string(),
        })
    }
}

/// Where a chain ends: the last row's sequence number and hash, and the last Kafka offset
/// applied to it (a duplicate that added no row still moves the offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
    pub offset: i64,
}

impl Head {
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_string(),
            offset: -1,
        }
    }
}

/// A row to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub entry: Entry,
}

/// The chain of a topic-partition.
pub fn chain_name(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// Decides which entries become rows and links them: entries at or before the head's offset
/// were applied before (a redelivery), entries whose event id is already stored (or seen
/// earlier in the batch) are replays. Returns the rows and the new head.
pub fn extend(head: &Head, entries: Vec<Entry>, stored: &HashSet<Uuid>) -> (Vec<Link>, Head) {
    let mut next = head.clone();
    let mut seen = HashSet::new();
    let mut links = Vec::with_capacity(entries.len());
    for entry in entries {
        if entry.offset <= next.offset {
            continue;
        }
        next.offset = entry.offset;
        if stored.contains(&entry.event_id) || !seen.insert(entry.event_id) {
            continue;
        }
        let hash = hash(&next.hash, &entry.content);
        next.seq += 1;
        links.push(Link {
            seq: next.seq,
            prev_hash: std::mem::replace(&mut next.hash, hash.clone()),
            hash,
            entry,
        });
    }
    (links, next)
}

/// `SHA-256(prev_hash ‖ content)`, lowercase hex.
pub fn hash(prev_hash: &str, content: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(prev_hash.as_bytes());
    digest.update(content.as_bytes());
    digest
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A row as read back for verification.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub entry: Entry,
}

/// What is wrong with a chain, at the first row where it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The row's content (or a column copied from it) is not what was hashed.
    Altered(String),
    /// Rows before this one are missing (sequence numbers jump).
    Removed { expected_seq: i64 },
    /// The row does not link to the one stored before it: a row was removed, inserted or
    /// moved here.
    Unlinked,
    /// Offsets go backwards: rows were reordered.
    Reordered { previous_offset: i64 },
    /// The chain ends before its head: rows were removed from the end.
    Truncated { head_seq: i64 },
    /// The head names a hash that the last row does not have.
    HeadMismatch,
}

/// The first fault of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub chain: String,
    /// The row where the fault shows (the last row for faults at the end).
    pub seq: i64,
    pub event_id: Option<Uuid>,
    pub offset: Option<i64>,
    pub fault: Fault,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain {} row {}", self.chain, self.seq)?;
        if let (Some(id), Some(offset)) = (self.event_id, self.offset) {
            write!(f, " (event {id}, offset {offset})")?;
        }
        match &self.fault {
            Fault::Altered(what) => write!(f, ": altered: {what}"),
            Fault::Removed { expected_seq } => {
                write!(f, ": rows {expected_seq}..{} were removed", self.seq - 1)
            }
            Fault::Unlinked => write!(
                f,
                ": does not follow the row before it (a row was removed, inserted or moved)"
            ),
            Fault::Reordered { previous_offset } => write!(
                f,
                ": reordered: its offset comes before the previous row's ({previous_offset})"
            ),
            Fault::Truncated { head_seq } => write!(
                f,
                ": the chain ends here but its head says row {head_seq}: rows were removed from the end"
            ),
            Fault::HeadMismatch => write!(f, ": the last row's hash differs from the chain head"),
        }
    }
}

/// Walks one chain row by row, in `seq` order, remembering only the previous row.
#[derive(Debug)]
pub struct Verifier {
    chain: String,
    last: Head,
    rows: u64,
}

impl Verifier {
    pub fn new(chain: &str) -> Self {
        Self {
            chain: chain.to_string(),
            last: Head::genesis(),
            rows: 0,
        }
    }

    pub fn check(&mut self, row: &StoredRow) -> Result<(), Failure> {
        let fail = |fault| Failure {
            chain: self.chain.clone(),
            seq: row.seq,
            event_id: Some(row.entry.event_id),
            offset: Some(row.entry.offset),
            fault,
        };
        let expected_seq = self.last.seq + 1;
        if row.seq > expected_seq {
            return Err(fail(Fault::Removed { expected_seq }));
        }
        if hash(&row.prev_hash, &row.entry.content) != row.hash {
            return Err(fail(Fault::Altered(
                "the content does not match its hash".into(),
            )));
        }
        match Entry::from_content(&row.entry.content) {
            Err(why) => return Err(fail(Fault::Altered(why))),
            Ok(inside) if inside != row.entry => {
                return Err(fail(Fault::Altered(
                    "a column differs from the hashed content".into(),
                )));
            }
            Ok(_) => {}
        }
        if row.entry.offset <= self.last.offset {
            return Err(fail(Fault::Reordered {
                previous_offset: self.last.offset,
            }));
        }
        if row.prev_hash != self.last.hash || row.seq < expected_seq {
            return Err(fail(Fault::Unlinked));
        }
        self.last = Head {
            seq: row.seq,
            hash: row.hash.clone(),
            offset: row.entry.offset,
        };
        self.rows += 1;
        Ok(())
    }

    /// Compares the end of the chain with its head. Returns the number of rows checked.
    pub fn finish(self, head: &Head) -> Result<u64, Failure> {
        let fail = |fault| Failure {
            chain: self.chain.clone(),
            seq: self.last.seq,
            event_id: None,
            offset: None,
            fault,
        };
        if self.last.seq < head.seq {
            return Err(fail(Fault::Truncated { head_seq: head.seq }));
        }
        if self.last.seq > head.seq || self.last.hash != head.hash {
            return Err(fail(Fault::HeadMismatch));
        }
        Ok(self.rows)
    }
}

/// JSON with object keys sorted at every level and no whitespace: one text per value,
/// whatever map order serde_json was built with.
pub fn canonical(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

pub use platform::clock::micros;

fn rfc3339(at: Timestamp) -> String {
    at.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: i64, id: u128) -> Entry {
        let content = canonical(&json!({
            "event_id": Uuid::from_u128(id),
            "event_type": "order.placed",
            "actor": "alice",
            "key": "o-1",
            "occurred_at": "2026-11-22T10:00:00Z",
            "offset": offset,
        }));
        Entry::from_content(&content).unwrap()
    }

    fn stored(links: &[Link]) -> Vec<StoredRow> {
        links
            .iter()
            .map(|l| StoredRow {
                seq: l.seq,
                prev_hash: l.prev_hash.clone(),
                hash: l.hash.clone(),
                entry: l.entry.clone(),
            })
            .collect()
    }

    fn verify(rows: &[StoredRow], head: &Head) -> Result<u64, Failure> {
        let mut verifier = Verifier::new("orders/0");
        for row in rows {
            verifier.check(row)?;
        }
        verifier.finish(head)
    }

    fn chain_of(n: i64) -> (Vec<StoredRow>, Head) {
        let entries = (0..n).map(|i| entry(i, i as u128 + 1)).collect();
        let (links, head) = extend(&Head::genesis(), entries, &HashSet::new());
        (stored(&links), head)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (rows, head) = chain_of(5);
        assert_eq!(verify(&rows, &head), Ok(5));
        assert_eq!(rows[0].prev_hash, GENESIS);
        assert_eq!(rows[1].prev_hash, rows[0].hash);
    }

    #[test]
    fn redelivered_and_replayed_events_add_no_row() {
        let (links, head) = extend(
            &Head::genesis(),
            vec![entry(0, 1), entry(1, 2)],
            &HashSet::new(),
        );
        assert_eq!(links.len(), 2);
        // Offsets 0 and 1 again (a redelivery), offset 2 carries an id stored before (a
        // replay), offset 3 repeats an id of the same batch.
        let stored: HashSet<Uuid> = [Uuid::from_u128(1)].into();
        let (again, after) = extend(
            &head,
            vec![
                entry(0, 1),
                entry(1, 2),
                entry(2, 1),
                entry(3, 3),
                entry(4, 3),
            ],
            &stored,
        );
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].seq, 3);
        assert_eq!(again[0].prev_hash, head.hash);
        assert_eq!(after.offset, 4);
        assert_eq!(after.seq, 3);
    }

    #[test]
    fn an_altered_row_is_named() {
        let (mut rows, head) = chain_of(5);
        rows[2].entry.content = rows[2].entry.content.replace("alice", "mallory");
        let failure = verify(&rows, &head).unwrap_err();
        assert_eq!(failure.seq, 3);
        assert!(matches!(failure.fault, Fault::Altered(_)));
    }

    #[test]
    fn an_altered_query_column_is_named() {
        let (mut rows, head) = chain_of(5);
        rows[1].entry.actor = "mallory".into();
        let failure = verify(&rows, &head).unwrap_err();
        assert_eq!(failure.seq, 2);
        assert!(failure.to_string().contains("column"));
    }

    #[test]
    fn a_removed_row_is_named() {
        let (mut rows, head) = chain_of(5);
        rows.remove(2);
        let failure = verify(&rows, &head).unwrap_err();
        assert_eq!(failure.seq, 4);
        assert_eq!(failure.fault, Fault::Removed { expected_seq: 3 });
    }

    #[test]
    fn a_removed_and_renumbered_row_breaks_the_link() {
        let (mut rows, head) = chain_of(5);
        rows.remove(2);
        for row in &mut rows[2..] {
            row.seq -= 1;
        }
        let failure = verify(&rows, &head).unwrap_err();
        assert_eq!(failure.seq, 3);
        assert_eq!(failure.fault, Fault::Unlinked);
    }

    #[test]
    fn swapped_rows_are_named() {
        let (mut rows, head) = chain_of(5);
        // Exchange positions 2 and 3 (seq numbers stay with the positions).
        let (a, b) = (rows[1].clone(), rows[2].clone());
        rows[1] = StoredRow { seq: 2, ..b };
        rows[2] = StoredRow { seq: 3, ..a };
        let failure = verify(&rows, &head).unwrap_err();
        assert_eq!(failure.seq, 2);
        assert_eq!(failure.fault, Fault::Unlinked);
    }

    #[test]
    fn removed_last_rows_are_caught_by_the_head() {
        let (mut rows, head) = chain_of(5);
        rows.truncate(3);
        let failure = verify(&rows, &head).unwrap_err();
        assert_eq!(failure.fault, Fault::Truncated { head_seq: 5 });
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": "\"q\""}], "c": null}});
        assert_eq!(
            canonical(&value),
            r#"{"a":{"c":null,"z":[1,{"x":"\"q\"","y":2}]},"b":1}"#
        );
    }
}
