//! Document states as Bulk API actions, and what each item of the answer means (pure).
//!
//! Every write is versioned by the position of the event that made it: version = offset + 1,
//! `version_type=external_gte`. Each document is made and changed by the events of one
//! aggregate, keyed by its id, so by one partition, whose offsets order them. OpenSearch
//! refuses a write whose version is below the stored one (409): a redelivered or replayed
//! older event never rolls a document back, and the same event written twice (a retried
//! batch) writes the same state again. A removed document is kept as a tombstone at its
//! version, so removals are versioned too and an older event cannot bring it back.

use serde_json::{Value, json};

use crate::documents::{Document, Version};

/// One document state to write: the document (`None`: removed) as of `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub id: String,
    pub document: Option<Document>,
    pub version: Version,
}

/// The external version of a write made by the event at `version`.
pub fn external_version(version: &Version) -> u64 {
    u64::try_from(version.offset + 1).unwrap_or(0)
}

/// The stored source of `write`: the searchable fields at the top, the whole document and
/// its version for answers and for the next change.
pub fn source(write: &Write) -> Value {
    match &write.document {
        None => json!({"deleted": true, "version": write.version, "document": null}),
        Some(d) => json!({
            "deleted": false,
            "kind": d.kind,
            "title": d.title,
            "body": d.body,
            "owner": d.owner,
            "visibility": d.visibility.as_str(),
            "facets": d.fields.iter().map(|(n, v)| format!("{n}:{v}")).collect::<Vec<_>>(),
            "subjects": d.subjects,
            "updated_at_ms": d.updated_at_ms,
            "version": write.version,
            "document": d,
        }),
    }
}

/// Newline-delimited Bulk API bodies for `writes` into `index`, each at most `max_bytes`
/// (a single larger write goes alone), with the positions in `writes` of the items of each.
pub fn bodies(index: &str, writes: &[Write], max_bytes: usize) -> Vec<(String, Vec<usize>)> {
    let mut bodies = Vec::new();
    let mut body = String::new();
    let mut members = Vec::new();
    for (at, write) in writes.iter().enumerate() {
        let action = json!({"index": {
            "_index": index,
            "_id": write.id,
            "version": external_version(&write.version),
            "version_type": "external_gte",
        }});
        let item = format!("{action}\n{}\n", source(write));
        if !body.is_empty() && body.len() + item.len() > max_bytes {
            bodies.push((std::mem::take(&mut body), std::mem::take(&mut members)));
        }
        body.push_str(&item);
        members.push(at);
    }
    if !body.is_empty() {
        bodies.push((body, members));
    }
    bodies
}

/// What became of one item of a bulk answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// Written.
    Written,
    /// A newer state is stored already: nothing to do.
    Superseded,
    /// The cluster could not take it now (overloaded, a shard moving): write it again.
    Retry(String),
    /// It can never be written (it breaks the mapping): dead-letter its event.
    Poison(String),
}

/// Reads one item of a bulk answer (`{"index": {"status": ..., "error": ...}}`).
pub fn item(answer: &Value) -> Item {
    let result = &answer["index"];
    let status = result["status"].as_u64().unwrap_or(0);
    let kind = result["error"]["type"].as_str().unwrap_or_default();
    let reason = || {
        format!(
            "{status} {kind}: {}",
            result["error"]["reason"].as_str().unwrap_or_default()
        )
    };
    match status {
        200..=299 => Item::Written,
        409 => Item::Superseded,
        400 if !kind.contains("index_closed") => Item::Poison(reason()),
        // Overloaded (429, es_rejected_execution_exception), a shard unavailable or moving
        // (503, 5xx), the index missing for a moment (404): the same write will do later.
        _ => Item::Retry(reason()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::Visibility;

    fn write(id: &str, offset: i64, document: bool) -> Write {
        Write {
            id: id.into(),
            document: document.then(|| Document {
                id: id.into(),
                kind: "order".into(),
                title: "Order o-1".into(),
                body: "tea".into(),
                owner: Some("alice".into()),
                visibility: Visibility::Owner,
                fields: vec![("status".into(), "placed".into())],
                updated_at_ms: 5,
                subjects: vec![],
            }),
            version: Version {
                topic: "orders".into(),
                partition: 0,
                offset,
                occurred_at_ms: 5,
            },
        }
    }

    #[test]
    fn each_write_is_versioned_by_its_events_offset_and_a_removal_is_a_tombstone() {
        let bodies = bodies(
            "herald-search-1",
            &[write("order:o-1", 41, true), write("order:o-2", 0, false)],
            1 << 20,
        );
        assert_eq!(bodies.len(), 1);
        let lines: Vec<Value> = bodies[0]
            .0
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["index"]["version"], 42);
        assert_eq!(lines[0]["index"]["version_type"], "external_gte");
        assert_eq!(lines[1]["facets"], json!(["status:placed"]));
        assert_eq!(lines[1]["document"]["id"], "order:o-1");
        assert_eq!(lines[2]["index"]["version"], 1);
        assert_eq!(lines[3]["deleted"], true);
        assert_eq!(lines[3]["document"], Value::Null);
    }

    #[test]
    fn bodies_stay_under_their_size_and_know_their_items() {
        let writes: Vec<Write> = (0..10)
            .map(|i| write(&format!("order:{i}"), i, true))
            .collect();
        let one = bodies("i", &writes[..1], usize::MAX)[0].0.len();
        let split = bodies("i", &writes, one * 3);
        assert_eq!(split.len(), 4);
        assert!(split.iter().all(|(body, _)| body.len() <= one * 3 + 10));
        let members: Vec<usize> = split.iter().flat_map(|(_, m)| m.clone()).collect();
        assert_eq!(members, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn an_overloaded_cluster_is_retried_a_mapping_conflict_is_poison_an_older_write_is_done() {
        let answer = |status: u64, kind: &str| json!({"index": {"status": status, "error": {"type": kind, "reason": "r"}}});
        assert_eq!(item(&json!({"index": {"status": 201}})), Item::Written);
        assert_eq!(
            item(&answer(409, "version_conflict_engine_exception")),
            Item::Superseded
        );
        assert!(matches!(
            item(&answer(429, "es_rejected_execution_exception")),
            Item::Retry(_)
        ));
        assert!(matches!(
            item(&answer(503, "unavailable_shards_exception")),
            Item::Retry(_)
        ));
        assert!(matches!(
            item(&answer(400, "mapper_parsing_exception")),
            Item::Poison(_)
        ));
        assert!(matches!(
            item(&answer(400, "illegal_argument_exception")),
            Item::Poison(_)
        ));
    }
}
