//! The index: tantivy (Lucene's design: BM25, fuzzy and phrase queries) in one folder.
//!
//! Exactly once without a second store: every commit carries, in tantivy's commit payload,
//! the next offset of every partition whose events it contains. At start the consumer
//! resumes each partition there (from the beginning for a partition the index has never
//! seen), so a crash loses nothing (what was not committed is read again) and applies
//! nothing twice (what was committed is not). Commits are batched by time: a document is
//! searchable one commit interval after its event is read.
//!
//! Each document keeps the log position of the event that last changed it ([`Version`]);
//! an event older than that is ignored. A removed entity stays as a tombstone (never
//! returned), so a late older event cannot bring it back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use platform::consumer::{Event, Resume};
use serde::{Deserialize, Serialize};
use tantivy::collector::{Count, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, QueryParser, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TEXT, Value as _,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::documents::{Change, Document, Step, Version, Visibility, next_state, step};

/// The writer's indexing memory: one thread, flushed to a segment when full.
const WRITER_MEMORY: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("search index: {0}")]
    Failed(String),
    /// Another writer holds the index (a reindex finishing, or a second service on the same
    /// folder): try again once it has stopped.
    #[error("search index {0}: another process is writing it")]
    Busy(String),
}

impl From<tantivy::TantivyError> for IndexError {
    fn from(err: tantivy::TantivyError) -> Self {
        Self::Failed(err.to_string())
    }
}

/// Why a search has no answer.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query's mistake, said so the caller can fix it (a 400).
    #[error("{0}")]
    Query(String),
    /// The index failed (a 503).
    #[error("search index: {0}")]
    Failed(String),
}

#[derive(Clone, Copy)]
struct Fields {
    id: Field,
    kind: Field,
    title: Field,
    body: Field,
    owner: Field,
    visibility: Field,
    facets: Field,
    updated_at: Field,
    deleted: Field,
    /// The document and its version as JSON, stored only.
    source: Field,
    /// Whose personal data the document holds (indexed only).
    subjects: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fields = Fields {
        id: builder.add_text_field("id", STRING | STORED),
        kind: builder.add_text_field("kind", STRING),
        title: builder.add_text_field("title", TEXT | STORED),
        body: builder.add_text_field("body", TEXT | STORED),
        owner: builder.add_text_field("owner", STRING),
        visibility: builder.add_text_field("visibility", STRING),
        facets: builder.add_text_field("facets", STRING),
        updated_at: builder.add_i64_field("updated_at", INDEXED | FAST),
        deleted: builder.add_u64_field("deleted", INDEXED),
        source: builder.add_text_field("source", STORED),
        subjects: builder.add_text_field("subjects", STRING),
    };
    (builder.build(), fields)
}

/// What the index holds for one id: the document (none: removed) and who last changed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    document: Option<Document>,
    version: Version,
}

/// The commit payload.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Payload {
    /// `"<topic>/<partition>"` to the next offset to read.
    offsets: BTreeMap<String, i64>,
}

struct Writing {
    writer: IndexWriter,
    /// Changed since the last commit (not visible to the reader yet).
    pending: HashMap<String, Stored>,
    offsets: BTreeMap<String, i64>,
    dirty: bool,
    /// Someone's documents were removed since the last commit: it merges the segments.
    erased: bool,
}

pub struct SearchIndex {
    index: Index,
    fields: Fields,
    reader: IndexReader,
    writing: Mutex<Writing>,
    committed: Mutex<BTreeMap<String, i64>>,
    dir: PathBuf,
}

/// Who is searching.
pub struct Caller<'a> {
    pub subject: &'a str,
    pub admin: bool,
}

/// One search.
pub struct SearchRequest<'a> {
    pub q: &'a str,
    pub kind: Option<&'a str>,
    /// `name:value` filters, all required.
    pub fields: &'a [String],
    pub limit: usize,
    pub offset: usize,
}

#[derive(Debug, Serialize)]
pub struct Hit {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    /// The best fragment of the body, matches in `<b>`; HTML-escaped.
    pub snippet: String,
    pub fields: BTreeMap<String, String>,
    pub updated_at_ms: i64,
    pub score: f32,
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<Hit>,
    /// Matches in all, for this caller.
    pub total: usize,
}

/// Counts for operators.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub documents: u64,
    pub removed: u64,
    pub segments: usize,
    pub bytes: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is completed or not begun.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How the index names a partition in its offsets.
pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

impl SearchIndex {
    /// Opens the index in `dir`, or creates it. An index that cannot be opened (corrupt,
    /// or of another schema) is moved aside and rebuilt from the log.
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| IndexError::Failed(format!("creating {}: {e}", dir.display())))?;
        match Self::open_in(dir) {
            Ok(index) => Ok(index),
            Err(err @ IndexError::Busy(_)) => Err(err),
            Err(err) => {
                let aside = dir
                    .with_extension(format!("unreadable-{}", jiff::Timestamp::now().as_second()));
                tracing::error!(
                    dir = %dir.display(), aside = %aside.display(), %err,
                    "the search index cannot be opened: moved aside, rebuilding it from the log"
                );
                std::fs::rename(dir, &aside).map_err(|e| {
                    IndexError::Failed(format!("moving {} aside: {e}", dir.display()))
                })?;
                std::fs::create_dir_all(dir)
                    .map_err(|e| IndexError::Failed(format!("creating {}: {e}", dir.display())))?;
                Self::open_in(dir)
            }
        }
    }

    fn open_in(dir: &Path) -> Result<Self, IndexError> {
        let (schema, fields) = schema();
        let directory = MmapDirectory::open(dir).map_err(|e| IndexError::Failed(e.to_string()))?;
        let index = Index::open_or_create(directory, schema)?;
        let payload: Payload = match index.load_metas()?.payload {
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| IndexError::Failed(format!("commit payload: {e}")))?,
            None => Payload::default(),
        };
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(|err| match err {
                tantivy::TantivyError::LockFailure(..) => {
                    IndexError::Busy(dir.display().to_string())
                }
                other => other.into(),
            })?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            index,
            fields,
            reader,
            writing: Mutex::new(Writing {
                writer,
                pending: HashMap::new(),
                offsets: payload.offsets.clone(),
                dirty: false,
                erased: false,
            }),
            committed: Mutex::new(payload.offsets),
            dir: dir.to_path_buf(),
        })
    }

    /// Where a partition's events resume: after the last committed one, or from the start.
    pub fn resume_from(&self, topic: &str, partition: i32) -> Resume {
        match lock(&self.committed).get(&partition_key(topic, partition)) {
            Some(next) => Resume::At(*next),
            None => Resume::Beginning,
        }
    }

    /// The next offset of every partition the last commit covers, by `"<topic>/<partition>"`.
    pub fn committed_offsets(&self) -> BTreeMap<String, i64> {
        lock(&self.committed).clone()
    }

    /// Applies consecutive events of one partition (visible after the next [`commit`]).
    ///
    /// [`commit`]: Self::commit
    pub fn apply(&self, events: &[Event]) -> Result<(), IndexError> {
        let mut writing = lock(&self.writing);
        for event in events {
            let key = partition_key(&event.topic, event.partition);
            if writing
                .offsets
                .get(&key)
                .is_some_and(|next| event.offset < *next)
            {
                continue; // read again after a rebalance; already applied
            }
            match step(event) {
                Some(Step::Erase(subject)) => self.forget(&mut writing, &subject),
                Some(Step::Change(changed)) => {
                    let (change, version) = *changed;
                    self.change(&mut writing, change, version)?;
                }
                None => {}
            }
            writing.offsets.insert(key, event.offset + 1);
            writing.dirty = true;
        }
        Ok(())
    }

    /// Removes every document that holds `subject`'s personal data, for good: the next
    /// commit merges the segments, so their text leaves the index's files too.
    fn forget(&self, writing: &mut Writing, subject: &str) {
        writing
            .writer
            .delete_term(Term::from_field_text(self.fields.subjects, subject));
        writing.pending.retain(|_, stored| {
            !stored
                .document
                .as_ref()
                .is_some_and(|d| d.subjects.iter().any(|s| s == subject))
        });
        writing.erased = true;
    }

    fn change(
        &self,
        writing: &mut Writing,
        change: Change,
        version: Version,
    ) -> Result<(), IndexError> {
        let id = change.id().to_string();
        let current = match writing.pending.get(&id) {
            Some(stored) => Some(stored.clone()),
            None => self.lookup(&id)?,
        };
        let Some(document) = next_state(
            change,
            &version,
            current.as_ref().map(|c| (c.document.clone(), &c.version)),
        ) else {
            return Ok(());
        };
        let stored = Stored { document, version };
        writing
            .writer
            .delete_term(Term::from_field_text(self.fields.id, &id));
        writing
            .writer
            .add_document(self.to_tantivy(&id, &stored)?)?;
        writing.pending.insert(id, stored);
        Ok(())
    }

    fn to_tantivy(&self, id: &str, stored: &Stored) -> Result<TantivyDocument, IndexError> {
        let f = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.id, id);
        doc.add_text(
            f.source,
            serde_json::to_string(stored).map_err(|e| IndexError::Failed(e.to_string()))?,
        );
        match &stored.document {
            None => doc.add_u64(f.deleted, 1),
            Some(d) => {
                doc.add_u64(f.deleted, 0);
                doc.add_text(f.kind, &d.kind);
                doc.add_text(f.title, &d.title);
                doc.add_text(f.body, &d.body);
                if let Some(owner) = &d.owner {
                    doc.add_text(f.owner, owner);
                }
                doc.add_text(f.visibility, d.visibility.as_str());
                for (name, value) in &d.fields {
                    doc.add_text(f.facets, format!("{name}:{value}"));
                }
                for subject in &d.subjects {
                    doc.add_text(f.subjects, subject);
                }
                doc.add_i64(f.updated_at, d.updated_at_ms);
            }
        }
        Ok(doc)
    }

    /// The documents of the last commit that hold `subject`'s personal data, `limit` at
    /// most (their export).
    pub fn held_about(&self, subject: &str, limit: usize) -> Result<Vec<Document>, IndexError> {
        let searcher = self.reader.searcher();
        let query = TermQuery::new(
            Term::from_field_text(self.fields.subjects, subject),
            IndexRecordOption::Basic,
        );
        let mut documents = Vec::new();
        for (_, address) in searcher.search(&query, &TopDocs::with_limit(limit).order_by_score())? {
            let doc: TantivyDocument = searcher.doc(address)?;
            let Some(source) = doc.get_first(self.fields.source).and_then(|v| v.as_str()) else {
                continue;
            };
            let stored: Stored = serde_json::from_str(source)
                .map_err(|e| IndexError::Failed(format!("a stored document: {e}")))?;
            documents.extend(stored.document);
        }
        Ok(documents)
    }

    /// What the last commit holds for `id`.
    fn lookup(&self, id: &str) -> Result<Option<Stored>, IndexError> {
        let searcher = self.reader.searcher();
        let query = TermQuery::new(
            Term::from_field_text(self.fields.id, id),
            IndexRecordOption::Basic,
        );
        let Some((_, address)) = searcher
            .search(&query, &TopDocs::with_limit(1).order_by_score())?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let doc: TantivyDocument = searcher.doc(address)?;
        let source = doc
            .get_first(self.fields.source)
            .and_then(|v| v.as_str())
            .ok_or_else(|| IndexError::Failed(format!("document {id} has no source")))?;
        serde_json::from_str(source)
            .map(Some)
            .map_err(|e| IndexError::Failed(format!("document {id}: {e}")))
    }

    /// Makes what was applied durable and searchable, with the offsets it reaches. Answers
    /// whether there was anything to commit.
    pub fn commit(&self) -> Result<bool, IndexError> {
        let mut writing = lock(&self.writing);
        if !writing.dirty {
            return Ok(false);
        }
        let payload = serde_json::to_string(&Payload {
            offsets: writing.offsets.clone(),
        })
        .map_err(|e| IndexError::Failed(e.to_string()))?;
        let mut prepared = writing.writer.prepare_commit()?;
        prepared.set_payload(&payload);
        prepared.commit()?;
        if std::mem::take(&mut writing.erased) {
            // A deleted document stays in its segment's files until the segment is merged:
            // an erased person's text is rewritten away now rather than at some later merge.
            let segments = self.index.searchable_segment_ids()?;
            if !segments.is_empty() {
                writing.writer.merge(&segments).wait()?;
            }
            writing.writer.garbage_collect_files().wait()?;
        }
        self.reader.reload()?;
        writing.pending.clear();
        writing.dirty = false;
        *lock(&self.committed) = writing.offsets.clone();
        Ok(true)
    }

    /// Searches what the caller may see. A query the index cannot run (`title:*` asks for a
    /// field's existence, which only fast fields answer) is the caller's error, never the
    /// server's.
    pub fn search(
        &self,
        request: &SearchRequest<'_>,
        caller: &Caller<'_>,
    ) -> Result<Page, SearchError> {
        let f = self.fields;
        let text = request.q.trim();
        if text.is_empty() {
            return Err(SearchError::Query(
                "q is empty: say what to search for".into(),
            ));
        }
        let mut exact = QueryParser::for_index(&self.index, vec![f.title, f.body]);
        exact.set_conjunction_by_default();
        exact.set_field_boost(f.title, 2.0);
        let mut fuzzy = QueryParser::for_index(&self.index, vec![f.title, f.body]);
        fuzzy.set_conjunction_by_default();
        fuzzy.set_field_fuzzy(f.title, true, 1, true);
        fuzzy.set_field_fuzzy(f.body, true, 1, true);
        let parsed = exact
            .parse_query(text)
            .map_err(|e| SearchError::Query(format!("q: {e}")))?;
        let mut matching: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Should, parsed.box_clone())];
        // Typos and prefixes: the same words one edit away or continued, ranked below exact.
        if let Ok(near) = fuzzy.parse_query(text) {
            matching.push((Occur::Should, Box::new(BoostQuery::new(near, 0.5))));
        }
        let term = |field, value: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, value),
                IndexRecordOption::Basic,
            ))
        };
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, Box::new(BooleanQuery::new(matching))),
            (
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_u64(f.deleted, 0),
                    IndexRecordOption::Basic,
                )),
            ),
        ];
        if let Some(kind) = request.kind {
            clauses.push((Occur::Must, term(f.kind, kind)));
        }
        for filter in request.fields {
            if !filter.contains(':') {
                return Err(SearchError::Query(format!(
                    "field filter {filter:?} must be name:value (status:shipped)"
                )));
            }
            clauses.push((Occur::Must, term(f.facets, filter)));
        }
        if !caller.admin {
            let own = BooleanQuery::new(vec![
                (Occur::Must, term(f.visibility, Visibility::Owner.as_str())),
                (Occur::Must, term(f.owner, caller.subject)),
            ]);
            clauses.push((
                Occur::Must,
                Box::new(BooleanQuery::new(vec![
                    (
                        Occur::Should,
                        term(f.visibility, Visibility::Public.as_str()),
                    ),
                    (Occur::Should, Box::new(own)),
                ])),
            ));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let unavailable = classify;
        let (top, total) = searcher
            .search(
                &query,
                &(
                    TopDocs::with_limit(request.limit)
                        .and_offset(request.offset)
                        .order_by_score(),
                    Count,
                ),
            )
            .map_err(unavailable)?;
        let mut snippets =
            SnippetGenerator::create(&searcher, &*parsed, f.body).map_err(unavailable)?;
        snippets.set_max_num_chars(160);
        let mut items = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address).map_err(unavailable)?;
            let Some(Stored {
                document: Some(document),
                ..
            }) = doc
                .get_first(f.source)
                .and_then(|v| v.as_str())
                .and_then(|s| serde_json::from_str(s).ok())
            else {
                continue;
            };
            let snippet = snippets.snippet_from_doc(&doc).to_html();
            items.push(Hit {
                id: document.id,
                kind: document.kind,
                title: document.title,
                snippet,
                fields: document.fields.into_iter().collect(),
                updated_at_ms: document.updated_at_ms,
                score,
            });
        }
        Ok(Page { items, total })
    }

    pub fn stats(&self) -> Result<Stats, IndexError> {
        let searcher = self.reader.searcher();
        let count = |value: u64| {
            searcher.search(
                &TermQuery::new(
                    Term::from_field_u64(self.fields.deleted, value),
                    IndexRecordOption::Basic,
                ),
                &Count,
            )
        };
        let bytes = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        Ok(Stats {
            documents: count(0)? as u64,
            removed: count(1)? as u64,
            segments: searcher.segment_readers().len(),
            bytes,
        })
    }
}

/// Who is at fault for an error from running a query: errors about the query's fields or
/// arguments are the caller's (400), the rest the index's (503).
fn classify(err: tantivy::TantivyError) -> SearchError {
    use tantivy::TantivyError as E;
    match err {
        E::FieldNotFound(_)
        | E::InvalidArgument(_)
        | E::SchemaError(_)
        | E::AggregationError(_) => SearchError::Query(format!("q cannot be run: {err}")),
        other => SearchError::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use events::Envelope;
    use jiff::Timestamp;
    use serde_json::{Value, json};

    use super::*;

    fn event(at: (&str, i32, i64), seconds: i64, event_type: &str, data: Value) -> Event {
        let (topic, partition, offset) = at;
        let occurred_at = Timestamp::from_second(seconds).unwrap();
        Event {
            topic: topic.into(),
            partition,
            offset,
            key: None,
            envelope: Envelope {
                event_id: uuid::Uuid::new_v4(),
                event_type: event_type.into(),
                occurred_at,
                received_at: occurred_at,
                actor: "test".into(),
                source: "test".into(),
                idempotency_key: None,
            },
            data,
            written_with: 1,
            traceparent: None,
        }
    }

    fn titles(index: &SearchIndex, q: &str, fields: &[String]) -> Vec<String> {
        let request = SearchRequest {
            q,
            kind: None,
            fields,
            limit: 10,
            offset: 0,
        };
        let caller = Caller {
            subject: "ops",
            admin: true,
        };
        let page = index.search(&request, &caller).unwrap();
        page.items.into_iter().map(|hit| hit.title).collect()
    }

    #[test]
    fn a_query_the_index_cannot_run_is_the_callers_error() {
        let dir = std::env::temp_dir().join(format!("herald-index-{}", uuid::Uuid::new_v4()));
        let index = SearchIndex::open(&dir).unwrap();
        let alice = json!({"user_id": "u-1", "display_name": "Alice Liddell"});
        index
            .apply(&[event(("users", 0, 0), 100, "user.registered", alice)])
            .unwrap();
        index.commit().unwrap();
        let long = "a ".repeat(5000);
        let hostile = [
            "title:*",
            "body:*",
            "*",
            "nope:x",
            "title:[a TO",
            "\"unclosed",
            "((((",
            "a AND",
            "title:a~9",
            "\u{0}",
            "\r\n",
            "\u{202e}",
            long.as_str(),
            "IN [",
            "-",
            "+",
            "^2",
        ];
        for q in hostile {
            let request = SearchRequest {
                q,
                kind: None,
                fields: &[],
                limit: 10,
                offset: 0,
            };
            let caller = Caller {
                subject: "ops",
                admin: false,
            };
            match index.search(&request, &caller) {
                Ok(_) | Err(SearchError::Query(_)) => {}
                Err(SearchError::Failed(reason)) => {
                    panic!(
                        "{:?} failed as the server's fault: {reason}",
                        &q[..q.len().min(30)]
                    )
                }
            }
        }
    }

    #[test]
    fn redelivered_and_out_of_order_events_never_resurrect_or_roll_back() {
        let dir = std::env::temp_dir().join(format!("herald-index-{}", uuid::Uuid::new_v4()));
        let index = SearchIndex::open(&dir).unwrap();
        let alice = json!({"user_id": "u-1", "display_name": "Alice Liddell"});
        let placed = json!({"order_id": "o-1", "customer_id": "u-1",
            "items": [{"sku": "teapot"}], "total_cents": 450, "currency": "EUR"});
        index
            .apply(&[
                event(("users", 0, 0), 100, "user.registered", alice.clone()),
                event(
                    ("users", 0, 1),
                    200,
                    "user.deleted",
                    json!({"user_id": "u-1"}),
                ),
            ])
            .unwrap();
        index
            .apply(&[
                event(("orders", 0, 0), 100, "order.placed", placed.clone()),
                event(
                    ("orders", 0, 1),
                    200,
                    "order.shipped",
                    json!({"order_id": "o-1", "carrier": "DHL", "tracking_number": "T1",
                           "shipped_at": "2026-11-22T09:30:00Z"}),
                ),
            ])
            .unwrap();
        index.commit().unwrap();
        let shipped = ["status:shipped".to_string()];
        assert!(titles(&index, "alice", &[]).is_empty());
        assert_eq!(titles(&index, "teapot", &shipped).len(), 1);

        // Redelivered (read again after a rebalance): already applied, skipped.
        index
            .apply(&[event(
                ("users", 0, 0),
                100,
                "user.registered",
                alice.clone(),
            )])
            .unwrap();
        // The same entity from another partition (a replay), older than what the index holds.
        index
            .apply(&[
                event(("users", 3, 7), 150, "user.registered", alice),
                event(("orders", 2, 9), 150, "order.placed", placed),
            ])
            .unwrap();
        index.commit().unwrap();
        assert!(
            titles(&index, "alice", &[]).is_empty(),
            "the user stays deleted"
        );
        assert_eq!(
            titles(&index, "teapot", &shipped).len(),
            1,
            "the order stays shipped"
        );
        let stats = index.stats().unwrap();
        assert_eq!((stats.documents, stats.removed), (1, 1));

        // Reopened, the index resumes after what it committed.
        drop(index);
        let index = SearchIndex::open(&dir).unwrap();
        assert_eq!(index.resume_from("users", 0), Resume::At(2));
        assert_eq!(index.resume_from("users", 3), Resume::At(8));
        assert_eq!(index.resume_from("orders", 1), Resume::Beginning);
        index
            .apply(&[event(
                ("users", 0, 1),
                200,
                "user.deleted",
                json!({"user_id": "u-1"}),
            )])
            .unwrap();
        index.commit().unwrap();
        assert_eq!(index.stats().unwrap().documents, 1);
        drop(index);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
