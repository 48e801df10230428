//! The OpenSearch backend (`SEARCH_BACKEND=opensearch`): the same documents, the same
//! queries and answers as the embedded index, kept in a search cluster that grows past one
//! machine.
//!
//! - **Exactly one state per event.** The indexer writes with the Bulk API, each document
//!   versioned by its event's position ([`bulk`]): an older write never overwrites a newer
//!   one, removals are versioned tombstones, and writing a batch again writes the same
//!   states. A change that amends a document reads the stored one first (one `_mget` per
//!   batch).
//! - **Offsets after the writes.** The handler answers only once every item of the batch is
//!   written (or superseded); the runner stores the offsets after that. Items the cluster
//!   could not take (overloaded, a shard moving) are sent again alone, with backoff; items
//!   that break the mapping make the batch fail as permanent, and the runner isolates the
//!   event and dead-letters it.
//! - **Bounded memory.** A batch's writes go in bulk requests of at most
//!   `OPENSEARCH_BULK_BYTES`; the backlog waits in Kafka.
//! - **Failover.** Requests go to the configured nodes in turn, and to the next when one does
//!   not answer. A search answers only from every shard: when some are missing (a red
//!   cluster) it is a 503 with Retry-After, never a partial page.
//!
//! Queries go to an alias (`OPENSEARCH_INDEX`, default `<topic prefix>herald-search`); the
//! documents live in an index `<alias>-<n>` behind it, made from a template whose mappings
//! and metadata come from the catalog.

pub mod bulk;
pub mod query;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use platform::consumer::{Event, Handler, HandlerError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::documents::{Change, Document, Step, Version, next_state, step};
use crate::index::{Caller, Page, SearchError, SearchRequest, Stats};
use bulk::{Item, Write};

/// `SEARCH_BACKEND=opensearch` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct OpenSearchArgs {
    /// The cluster's nodes, comma-separated (`http://10.0.0.5:9200,http://10.0.0.6:9200`):
    /// requests go to them in turn, and to the next when one does not answer.
    #[arg(long = "opensearch-url", env = "OPENSEARCH_URL", value_delimiter = ',')]
    pub urls: Vec<reqwest::Url>,
    /// User for HTTP basic authentication, when the cluster asks for one.
    #[arg(long, env = "OPENSEARCH_USERNAME")]
    pub opensearch_username: Option<String>,
    /// Its password (or OPENSEARCH_PASSWORD_FILE, a mounted secret).
    #[arg(long, env = "OPENSEARCH_PASSWORD")]
    pub opensearch_password: Option<SecretString>,
    /// The alias searches go to; each build of the index is `<alias>-<n>` behind it.
    /// Default: the topic prefix followed by `herald-search`.
    #[arg(long, env = "OPENSEARCH_INDEX")]
    pub opensearch_index: Option<String>,
    /// Primary shards of a new index.
    #[arg(long, env = "OPENSEARCH_SHARDS", default_value_t = 1)]
    pub opensearch_shards: u32,
    /// Replicas of each shard in a new index (1: a node can be lost).
    #[arg(long, env = "OPENSEARCH_REPLICAS", default_value_t = 1)]
    pub opensearch_replicas: u32,
    /// How often what was written becomes searchable, in milliseconds (the index's
    /// `refresh_interval`): the embedded index commits every 250 ms.
    #[arg(long, env = "OPENSEARCH_REFRESH_MS", default_value_t = 250)]
    pub opensearch_refresh_ms: u64,
    /// The largest bulk request, in bytes: with the consumer's batch, what bounds the
    /// indexer's memory whatever the backlog.
    #[arg(long, env = "OPENSEARCH_BULK_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub opensearch_bulk_bytes: usize,
}

/// How long a node that did not answer is tried last.
const NODE_REST: Duration = Duration::from_secs(5);

/// A request the cluster did not answer, or answered with a failure of its own.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no OpenSearch node answered: {0}")]
    Unreachable(String),
    #[error("OpenSearch answered {status}: {reason}")]
    Refused { status: u16, reason: String },
}

/// The nodes of one cluster, spoken to over HTTP.
pub struct Cluster {
    http: reqwest::Client,
    urls: Vec<reqwest::Url>,
    next: AtomicUsize,
    /// Until when each node is passed over after it did not answer (a node that does not
    /// refuse connections would cost every request the connect timeout).
    resting: Vec<std::sync::Mutex<Option<std::time::Instant>>>,
    username: Option<String>,
    password: Option<SecretString>,
}

impl Cluster {
    pub fn new(args: &OpenSearchArgs) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !args.urls.is_empty(),
            "SEARCH_BACKEND=opensearch needs OPENSEARCH_URL (the cluster's nodes, comma-separated)"
        );
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            resting: args
                .urls
                .iter()
                .map(|_| std::sync::Mutex::new(None))
                .collect(),
            urls: args.urls.clone(),
            next: AtomicUsize::new(0),
            username: args.opensearch_username.clone(),
            password: args.opensearch_password.clone(),
        })
    }

    /// Sends a request to the nodes in turn until one answers; its status and JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&'static str, String)>,
    ) -> Result<(u16, Value), ClusterError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = std::time::Instant::now();
        let resting = |at: usize| {
            self.resting[at]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some_and(|until| now < until)
        };
        // Nodes that answered lately first; resting ones last, in case they are back.
        let mut order: Vec<usize> = (0..self.urls.len())
            .map(|i| (start + i) % self.urls.len())
            .collect();
        order.sort_by_key(|at| resting(*at));
        let mut failures = Vec::new();
        for at in order {
            let base = &self.urls[at];
            let url = format!("{}{}", base.as_str().trim_end_matches('/'), path);
            let mut request = self.http.request(method.clone(), &url);
            if let Some(user) = &self.username {
                request = request.basic_auth(
                    user,
                    self.password
                        .as_ref()
                        .map(|p| p.expose_secret().to_string()),
                );
            }
            if let Some((content_type, body)) = &body {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, *content_type)
                    .body(body.clone());
            }
            match request.send().await {
                Ok(response) => {
                    *self.resting[at]
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                    let status = response.status().as_u16();
                    let body = response.json::<Value>().await.unwrap_or(Value::Null);
                    return Ok((status, body));
                }
                Err(err) => {
                    let base = shown(base);
                    let err = err.without_url();
                    tracing::warn!(node = %base, %err, "an opensearch node did not answer; trying the next");
                    metrics::counter!("herald_search_node_failovers_total").increment(1);
                    *self.resting[at]
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(std::time::Instant::now() + NODE_REST);
                    failures.push(format!("{base}: {err}"));
                }
            }
        }
        Err(ClusterError::Unreachable(failures.join("; ")))
    }

    /// Like [`Self::send`], a 2xx answer's body or the failure.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClusterError> {
        let (status, answer) = self
            .send(
                method,
                path,
                body.map(|b| ("application/json", b.to_string())),
            )
            .await?;
        if (200..300).contains(&status) {
            Ok(answer)
        } else {
            Err(ClusterError::Refused {
                status,
                reason: reason(&answer),
            })
        }
    }
}

/// A node's URL as logs and errors show it: without credentials written into it.
fn shown(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// Whether `name` can name an index and an alias as they are put in URL paths: no pattern
/// (`*`, `,`), no query or path characters, and none of the names OpenSearch reserves.
pub fn index_name_is_plain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with(['_', '-', '+', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

fn reason(answer: &Value) -> String {
    answer["error"]["reason"]
        .as_str()
        .or_else(|| answer["error"].as_str())
        .unwrap_or("no reason given")
        .to_string()
}

/// The index template's body: settings, and mappings with the catalog's event types and
/// their schemas' fingerprints as metadata.
pub fn template(alias: &str, args: &OpenSearchArgs, catalog: &events::Catalog) -> Value {
    let followed: serde_json::Map<String, Value> = crate::documents::EVENT_TYPES
        .iter()
        .filter_map(|t| catalog.latest(t))
        .map(|schema| {
            (
                schema.event_type.clone(),
                json!({"topic": schema.topic, "version": schema.version,
                       "fingerprint": schema.fingerprint.iter().map(|b| format!("{b:02x}")).collect::<String>()}),
            )
        })
        .collect();
    let keyword = json!({"type": "keyword"});
    json!({
        "index_patterns": [format!("{alias}-*")],
        "template": {
            "settings": {
                "number_of_shards": args.opensearch_shards,
                "number_of_replicas": args.opensearch_replicas,
                // The API pages up to 10,000 results deep, 100 at a time.
                "max_result_window": 10_100,
                "refresh_interval": format!("{}ms", args.opensearch_refresh_ms.max(1)),
            },
            "mappings": {
                "dynamic": "strict",
                "_meta": {"event_types": followed},
                "properties": {
                    "deleted": {"type": "boolean"},
                    "kind": keyword, "owner": keyword, "visibility": keyword,
                    "facets": keyword, "subjects": keyword,
                    "title": {"type": "text"}, "body": {"type": "text"},
                    "updated_at_ms": {"type": "long"},
                    "version": {"type": "object", "enabled": false},
                    "document": {"type": "object", "enabled": false},
                },
            },
        },
    })
}

/// The OpenSearch index: where the indexer writes and the API searches.
pub struct OpenSearchIndex {
    cluster: Arc<Cluster>,
    /// What searches name: the alias.
    alias: String,
    /// What writes name: the alias, or one build's own index while it is made.
    target: String,
    bulk_bytes: usize,
}

/// How many times the items the cluster could not take are sent again within one batch
/// before the batch is left to the runner's retry.
const ITEM_ATTEMPTS: u32 = 6;

impl OpenSearchIndex {
    /// Puts the template and, when the alias names no index yet, makes the first one behind
    /// it. Writes go to the alias.
    pub async fn connect(
        args: &OpenSearchArgs,
        topic_prefix: &str,
        catalog: &events::Catalog,
    ) -> anyhow::Result<Self> {
        let cluster = Arc::new(Cluster::new(args)?);
        let alias = args
            .opensearch_index
            .clone()
            .unwrap_or_else(|| format!("{topic_prefix}herald-search"))
            .to_lowercase();
        anyhow::ensure!(
            index_name_is_plain(&alias),
            "OPENSEARCH_INDEX {alias:?} cannot name an index: lowercase letters, digits, `.`, `_` \
             and `-`, not starting with one of `_-+.`"
        );
        cluster
            .call(
                reqwest::Method::PUT,
                &format!("/_index_template/{alias}"),
                Some(template(&alias, args, catalog)),
            )
            .await?;
        let (status, _) = cluster
            .send(reqwest::Method::GET, &format!("/_alias/{alias}"), None)
            .await?;
        if status == 404 {
            let first = format!("{alias}-1");
            let (status, answer) = cluster
                .send(
                    reqwest::Method::PUT,
                    &format!("/{first}"),
                    Some((
                        "application/json",
                        json!({"aliases": {alias.clone(): {"is_write_index": true}}}).to_string(),
                    )),
                )
                .await?;
            let raced = answer["error"]["type"] == "resource_already_exists_exception";
            anyhow::ensure!(
                (200..300).contains(&status) || raced,
                "creating the search index {first}: {status} {}",
                reason(&answer)
            );
        }
        Ok(Self {
            cluster,
            target: alias.clone(),
            alias,
            bulk_bytes: args.opensearch_bulk_bytes.max(64 * 1024),
        })
    }

    pub fn alias(&self) -> &str {
        &self.alias
    }

    /// The index writes go to.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The indices the alias names now.
    pub async fn live_indices(&self) -> Result<Vec<String>, ClusterError> {
        let answer = self
            .cluster
            .call(
                reqwest::Method::GET,
                &format!("/_alias/{}", self.alias),
                None,
            )
            .await?;
        Ok(answer
            .as_object()
            .map(|indices| indices.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// A new, empty index `<alias>-<n>` (numbered after every one there is), behind no
    /// alias: the same index, writing there while it is built.
    pub async fn fresh_build(&self) -> Result<Self, ClusterError> {
        let listed = self
            .cluster
            .call(
                reqwest::Method::GET,
                &format!("/_cat/indices/{}-*?format=json&h=index", self.alias),
                None,
            )
            .await?;
        let prefix = format!("{}-", self.alias);
        let last = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| {
                row["index"]
                    .as_str()?
                    .strip_prefix(&prefix)?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        let name = format!("{prefix}{}", last + 1);
        self.cluster
            .call(reqwest::Method::PUT, &format!("/{name}"), Some(json!({})))
            .await?;
        Ok(Self {
            cluster: self.cluster.clone(),
            alias: self.alias.clone(),
            target: name,
            bulk_bytes: self.bulk_bytes,
        })
    }

    /// Points the alias at `build`'s index alone, in one step: searches and writes move
    /// together. Answers the indices it named before.
    pub async fn promote(&self, build: &Self) -> Result<Vec<String>, ClusterError> {
        let before = self.live_indices().await?;
        let mut actions = vec![json!({"add": {
            "index": build.target, "alias": self.alias, "is_write_index": true}})];
        actions.extend(
            before
                .iter()
                .filter(|index| **index != build.target)
                .map(|index| json!({"remove": {"index": index, "alias": self.alias}})),
        );
        self.cluster
            .call(
                reqwest::Method::POST,
                "/_aliases",
                Some(json!({"actions": actions})),
            )
            .await?;
        Ok(before)
    }

    /// Deletes `index` (one a promotion replaced).
    pub async fn delete_index(&self, index: &str) -> Result<(), ClusterError> {
        self.cluster
            .call(reqwest::Method::DELETE, &format!("/{index}"), None)
            .await
            .map(drop)
    }

    /// Makes what was written searchable now, and counts the documents of the index writes
    /// go to.
    pub async fn refreshed_count(&self) -> Result<u64, ClusterError> {
        self.cluster
            .call(
                reqwest::Method::POST,
                &format!("/{}/_refresh", self.target),
                None,
            )
            .await?;
        let answer = self
            .cluster
            .call(
                reqwest::Method::POST,
                &format!("/{}/_count", self.target),
                Some(json!({"query": {"term": {"deleted": false}}})),
            )
            .await?;
        Ok(answer["count"].as_u64().unwrap_or(0))
    }

    /// Applies a batch of one partition's events: every item written or superseded before
    /// it answers.
    pub async fn apply(&self, events: &[Event]) -> Result<(), HandlerError> {
        // Erasures split the batch: what came before is written, then the person's
        // documents are removed, then the rest.
        let mut segment: Vec<(Change, Version)> = Vec::new();
        let mut poison = Vec::new();
        for event in events {
            match step(event) {
                Some(Step::Erase(subject)) => {
                    poison.extend(self.write(std::mem::take(&mut segment)).await?);
                    self.erase(&subject).await?;
                }
                Some(Step::Change(changed)) => segment.push(*changed),
                None => {}
            }
        }
        poison.extend(self.write(segment).await?);
        if poison.is_empty() {
            Ok(())
        } else {
            Err(HandlerError::Reject(
                format!("OpenSearch refused a document: {}", poison.join("; ")).into(),
            ))
        }
    }

    /// Folds `changes` into document states over what is stored, and writes them. Answers
    /// the reasons of the writes that can never succeed.
    async fn write(&self, changes: Vec<(Change, Version)>) -> Result<Vec<String>, HandlerError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = changes.iter().map(|(c, _)| c.id()).collect();
        let mut states = self.stored(&ids).await?;
        // The ids written, in the order first changed.
        let mut changed: Vec<String> = Vec::new();
        for (change, version) in changes {
            let id = change.id().to_string();
            let current = states.get(&id).map(|(d, at)| (d.clone(), at));
            let Some(document) = next_state(change, &version, current) else {
                continue;
            };
            if !changed.contains(&id) {
                changed.push(id.clone());
            }
            states.insert(id, (document, version));
        }
        let writes: Vec<Write> = changed
            .into_iter()
            .filter_map(|id| {
                let (document, version) = states.remove(&id)?;
                Some(Write {
                    id,
                    document,
                    version,
                })
            })
            .collect();
        self.bulk(writes).await
    }

    /// What the index stores for `ids`: each one's document (none: removed) and version.
    async fn stored(
        &self,
        ids: &[&str],
    ) -> Result<HashMap<String, (Option<Document>, Version)>, HandlerError> {
        let answer = self
            .cluster
            .call(
                reqwest::Method::POST,
                &format!("/{}/_mget?_source_includes=document,version", self.target),
                Some(json!({"ids": ids})),
            )
            .await
            .map_err(|err| HandlerError::Retry(err.to_string().into()))?;
        // Every id answered, found or not: an entry with an error (a shard unavailable or
        // moving) or an answer that does not read is no answer, and the batch waits.
        let retry = |why: String| HandlerError::Retry(why.into());
        let docs = answer["docs"]
            .as_array()
            .filter(|docs| docs.len() == ids.len())
            .ok_or_else(|| retry(format!("_mget answered {answer:.200}")))?;
        let mut states = HashMap::new();
        for doc in docs {
            let id = doc["_id"]
                .as_str()
                .ok_or_else(|| retry("an _mget entry without an id".into()))?;
            match doc["found"].as_bool() {
                Some(false) => continue,
                Some(true) => {}
                None => return Err(retry(format!("_mget of {id}: {}", doc["error"]))),
            }
            let version: Version = serde_json::from_value(doc["_source"]["version"].clone())
                .map_err(|e| retry(format!("stored version of {id}: {e}")))?;
            let document: Option<Document> =
                serde_json::from_value(doc["_source"]["document"].clone())
                    .map_err(|e| retry(format!("stored document {id}: {e}")))?;
            states.insert(id.to_string(), (document, version));
        }
        Ok(states)
    }

    /// Writes `writes`; sends again, alone and with backoff, the items the cluster could not
    /// take. Answers the reasons of the items that can never be written.
    async fn bulk(&self, writes: Vec<Write>) -> Result<Vec<String>, HandlerError> {
        let mut left: Vec<Write> = writes;
        let mut poison = Vec::new();
        let mut wait = Duration::from_millis(100);
        for attempt in 1..=ITEM_ATTEMPTS {
            let mut again = Vec::new();
            let mut last = String::new();
            for (body, members) in bulk::bodies(&self.target, &left, self.bulk_bytes) {
                let (status, answer) = self
                    .cluster
                    .send(
                        reqwest::Method::POST,
                        "/_bulk",
                        Some(("application/x-ndjson", body)),
                    )
                    .await
                    .map_err(|err| HandlerError::Retry(err.to_string().into()))?;
                if !(200..300).contains(&status) {
                    // The whole request refused (overloaded, no cluster manager): all again.
                    last = format!("{status} {}", reason(&answer));
                    again.extend(members);
                    continue;
                }
                let items = answer["items"].as_array().cloned().unwrap_or_default();
                for (at, member) in members.into_iter().enumerate() {
                    match items
                        .get(at)
                        .map_or_else(|| Item::Retry("no answer for the item".into()), bulk::item)
                    {
                        Item::Written | Item::Superseded => {}
                        Item::Retry(why) => {
                            last = why;
                            again.push(member);
                        }
                        Item::Poison(why) => poison.push(format!("{}: {why}", left[member].id)),
                    }
                }
            }
            if again.is_empty() {
                return Ok(poison);
            }
            metrics::counter!("herald_search_bulk_retried_total").increment(again.len() as u64);
            tracing::warn!(items = again.len(), attempt, reason = %last, "opensearch could not take every item; sending those again");
            left = again.into_iter().map(|i| left[i].clone()).collect();
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(3));
        }
        Err(HandlerError::Retry(
            format!("OpenSearch did not take {} items", left.len()).into(),
        ))
    }

    /// Removes every document holding `subject`'s personal data: found by query, deleted in
    /// bulk, a thousand at a time, until none is left. (Delete-by-query lives in a module a
    /// cluster may lack; search and bulk every cluster has.)
    async fn erase(&self, subject: &str) -> Result<(), HandlerError> {
        let retry = |err: ClusterError| HandlerError::Retry(err.to_string().into());
        loop {
            // What was written a moment ago (this batch's first part, a message revealed
            // just before the erasure) is found only once refreshed.
            self.cluster
                .call(
                    reqwest::Method::POST,
                    &format!("/{}/_refresh", self.target),
                    None,
                )
                .await
                .map_err(retry)?;
            let found = self
                .cluster
                .call(
                    reqwest::Method::POST,
                    &format!("/{}/_search", self.target),
                    Some(json!({"size": 1000, "_source": false,
                                "query": {"term": {"subjects": subject}}})),
                )
                .await
                .map_err(retry)?;
            let ids: Vec<&str> = found["hits"]["hits"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|hit| hit["_id"].as_str())
                .collect();
            if ids.is_empty() {
                return Ok(());
            }
            let body: String = ids
                .iter()
                .map(|id| {
                    format!(
                        "{}\n",
                        json!({"delete": {"_index": self.target, "_id": id}})
                    )
                })
                .collect();
            let (status, answer) = self
                .cluster
                .send(
                    reqwest::Method::POST,
                    "/_bulk?refresh=true",
                    Some(("application/x-ndjson", body)),
                )
                .await
                .map_err(retry)?;
            if !(200..300).contains(&status) || answer["errors"] == true {
                let failed = answer["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|item| {
                        item["delete"]["status"]
                            .as_u64()
                            .is_some_and(|s| s >= 300 && s != 404)
                    });
                if failed.is_some() || !(200..300).contains(&status) {
                    return Err(HandlerError::Retry(
                        format!(
                            "erasing {subject}'s documents: {status} {}",
                            reason(&answer)
                        )
                        .into(),
                    ));
                }
            }
        }
    }

    /// Searches what the caller may see, from every shard or not at all.
    pub async fn search(
        &self,
        request: &SearchRequest<'_>,
        caller: &Caller<'_>,
    ) -> Result<Page, SearchError> {
        let body = query::body(request, caller)?;
        let (status, answer) = self
            .cluster
            .send(
                reqwest::Method::POST,
                &format!("/{}/_search", self.alias),
                Some(("application/json", body.to_string())),
            )
            .await
            .map_err(|err| SearchError::Failed(err.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(query::refused(status, &answer));
        }
        whole(&answer)?;
        query::page(&answer)
    }

    /// The documents holding `subject`'s personal data, `limit` at most (their export).
    pub async fn held_about(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<Document>, SearchError> {
        let answer = self
            .cluster
            .call(
                reqwest::Method::POST,
                &format!("/{}/_search", self.alias),
                Some(json!({"size": limit, "query": {"bool": {"filter": [
                    {"term": {"subjects": subject}}, {"term": {"deleted": false}}]}},
                    "_source": {"includes": ["document"]}})),
            )
            .await
            .map_err(|err| SearchError::Failed(err.to_string()))?;
        whole(&answer)?;
        Ok(answer["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|hit| serde_json::from_value(hit["_source"]["document"].clone()).ok())
            .collect())
    }

    /// Counts for operators.
    pub async fn stats(&self) -> Result<Stats, SearchError> {
        let failed = |err: ClusterError| SearchError::Failed(err.to_string());
        let path = format!("/{}/_count", self.alias);
        let count = |deleted: bool| {
            self.cluster.call(
                reqwest::Method::POST,
                &path,
                Some(json!({"query": {"term": {"deleted": deleted}}})),
            )
        };
        let documents = count(false).await.map_err(failed)?["count"]
            .as_u64()
            .unwrap_or(0);
        let removed = count(true).await.map_err(failed)?["count"]
            .as_u64()
            .unwrap_or(0);
        let stats = self
            .cluster
            .call(
                reqwest::Method::GET,
                &format!("/{}/_stats/store,segments", self.alias),
                None,
            )
            .await
            .map_err(failed)?;
        let primaries = &stats["_all"]["primaries"];
        Ok(Stats {
            documents,
            removed,
            segments: usize::try_from(primaries["segments"]["count"].as_u64().unwrap_or(0))
                .unwrap_or(0),
            bytes: primaries["store"]["size_in_bytes"].as_u64().unwrap_or(0),
        })
    }
}

/// A search answered by only some shards (a red cluster) is no answer: its page would be
/// wrong.
fn whole(answer: &Value) -> Result<(), SearchError> {
    let failed = answer["_shards"]["failed"].as_u64().unwrap_or(0);
    if failed > 0 || answer["timed_out"] == true {
        return Err(SearchError::Failed(format!(
            "{failed} shards did not answer the search"
        )));
    }
    Ok(())
}

/// The consumer's handler for the OpenSearch backend: the runner stores offsets after each
/// batch it answers.
pub struct OpenSearchIndexer(pub Arc<OpenSearchIndex>);

#[async_trait]
impl Handler for OpenSearchIndexer {
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError> {
        let span = tracing::info_span!("index", otel.kind = "client", documents = events.len());
        tracing::Instrument::instrument(self.0.apply(events), span).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_from_some_shards_only_is_refused() {
        assert!(whole(&json!({"_shards": {"total": 2, "failed": 0}, "timed_out": false})).is_ok());
        assert!(whole(&json!({"_shards": {"total": 2, "failed": 1}})).is_err());
        assert!(whole(&json!({"_shards": {"failed": 0}, "timed_out": true})).is_err());
    }
}
