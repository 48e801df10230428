//! `GET /api/v1/search?q=&type=&field=&limit=&cursor=` (any signed-in user): BM25-ranked
//! documents the caller may see (public ones, their own, everything for admins), with a
//! highlighted snippet. `q` takes words (all required), `"quoted phrases"`, `-excluded`
//! words and `title:word`; a word one typo away or a word's beginning also matches, ranked
//! below exact matches. `type` is one of user, order, message, campaign; `field=status:shipped`
//! (repeatable) filters on a document's fields; `limit` 1 to 100 (20); `cursor` is the
//! `next_cursor` of the previous page. A malformed query or parameter: 400 naming it.
//!
//! `GET /api/v1/search/stats` (admin): documents, removed ones kept as tombstones, segments
//! and bytes on disk.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::get;
use axum::{Json, Router};
use platform::auth::Authenticator;
use platform::openapi::{Api, Operation};
use platform::problem::{self, Problem};
use serde::Serialize;
use serde_json::json;

use crate::LiveIndex;
use crate::index::{Caller, Hit, Page, SearchError, SearchRequest, Stats};
use crate::opensearch::OpenSearchIndex;

pub const ADMIN_ROLE: &str = "admin";
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
/// Deep pages cost a full ranking each: past this, narrow the query instead.
const MAX_OFFSET: usize = 10_000;
const MAX_QUERY_LEN: usize = 500;
const KINDS: [&str; 4] = ["user", "order", "message", "campaign"];

pub struct SearchApi {
    pub searcher: Searcher,
    pub auth: Arc<Authenticator>,
}

/// Where searches are answered.
#[derive(Clone)]
pub enum Searcher {
    /// The embedded index's generation being served; a reindex swaps it under running
    /// queries.
    Embedded(Arc<LiveIndex>),
    /// An OpenSearch cluster, through the alias.
    OpenSearch(Arc<OpenSearchIndex>),
}

impl Searcher {
    /// Searches what `caller` may see.
    pub async fn search(
        &self,
        request: &SearchRequest<'_>,
        caller: &Caller<'_>,
    ) -> Result<Page, SearchError> {
        match self {
            Self::OpenSearch(index) => index.search(request, caller).await,
            Self::Embedded(live) => {
                let index = live.get();
                let (q, kind, fields) = (
                    request.q.to_string(),
                    request.kind.map(str::to_string),
                    request.fields.to_vec(),
                );
                let (limit, offset) = (request.limit, request.offset);
                let (subject, admin) = (caller.subject.to_string(), caller.admin);
                tokio::task::spawn_blocking(move || {
                    index.search(
                        &SearchRequest {
                            q: &q,
                            kind: kind.as_deref(),
                            fields: &fields,
                            limit,
                            offset,
                        },
                        &Caller {
                            subject: &subject,
                            admin,
                        },
                    )
                })
                .await
                .map_err(|_| SearchError::Failed("the search was interrupted".into()))?
            }
        }
    }

    /// Counts for operators.
    pub async fn stats(&self) -> Result<Stats, SearchError> {
        match self {
            Self::OpenSearch(index) => index.stats().await,
            Self::Embedded(live) => {
                let index = live.get();
                tokio::task::spawn_blocking(move || index.stats())
                    .await
                    .map_err(|_| SearchError::Failed("interrupted".into()))?
                    .map_err(|err| SearchError::Failed(err.to_string()))
            }
        }
    }

    /// The documents holding `subject`'s personal data, `limit` at most.
    pub async fn held_about(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<crate::documents::Document>, SearchError> {
        match self {
            Self::OpenSearch(index) => index.held_about(subject, limit).await,
            Self::Embedded(live) => {
                let index = live.get();
                let subject = subject.to_string();
                tokio::task::spawn_blocking(move || index.held_about(&subject, limit))
                    .await
                    .map_err(|_| SearchError::Failed("interrupted".into()))?
                    .map_err(|err| SearchError::Failed(err.to_string()))
            }
        }
    }
}

pub fn router(state: Arc<SearchApi>) -> Router {
    Router::new()
        .route("/api/v1/search", get(search))
        .route("/api/v1/search/stats", get(stats))
        .with_state(state)
        .layer(axum::middleware::map_response(
            problem::problem_for_bare_errors,
        ))
}

/// The search service's part of the OpenAPI document: every route `router` serves.
pub fn openapi() -> Api {
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let hit = json!({
        "type": "object",
        "description": "One document the caller may see, ranked by BM25",
        "required": ["id", "type", "title", "snippet", "fields", "updated_at_ms", "score"],
        "properties": {
            "id": {"type": "string", "description": "<type>:<entity id>, such as order:o-1"},
            "type": {"type": "string", "enum": KINDS},
            "title": {"type": "string"},
            "snippet": {"type": "string",
                        "description": "the best fragment of the body, HTML-escaped, matches in <b>; may be empty"},
            "fields": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "the document's filterable fields, such as status and currency"},
            "updated_at_ms": {"type": "integer", "description": "when the entity last changed, Unix milliseconds"},
            "score": {"type": "number"},
        }
    });
    let stats = json!({
        "type": "object",
        "description": "Counts of the generation being served",
        "required": ["documents", "removed", "segments", "bytes"],
        "properties": {
            "documents": {"type": "integer", "minimum": 0, "description": "documents that can be found"},
            "removed": {"type": "integer", "minimum": 0, "description": "removed entities kept as tombstones"},
            "segments": {"type": "integer", "minimum": 0},
            "bytes": {"type": "integer", "minimum": 0, "description": "the size of the index's files on disk"},
        }
    });
    Api {
        tag: "search",
        description: "Full-text search over users, orders, messages and campaigns, projected from the event stream into an embedded inverted index.",
        operations: vec![
            Operation::get("/api/v1/search", "Search the documents the caller may see")
                .describe("BM25-ranked documents with a highlighted snippet. q takes words (all required), \"quoted phrases\", -excluded words and title:word; a word one typo away or a word's beginning also matches, ranked below exact matches. next_cursor, when not null, asks for the next page; pages end at 10000 results deep. An unknown parameter, or q, type, limit or cursor given twice, is a 400.")
                .bearer("any signed-in user; sees public documents and their own, admins see every document")
                .required_query(
                    "q",
                    json!({"type": "string", "minLength": 1, "maxLength": MAX_QUERY_LEN, "pattern": "\\S"}),
                    "the words to search for: not blank, at most 500 characters",
                )
                .query("type", json!({"type": "string", "enum": KINDS}), "only documents of this type")
                .query(
                    "field",
                    json!({"type": "array", "items": {"type": "string", "pattern": ":"}}),
                    "name:value, such as status:shipped; repeatable, all must match",
                )
                .query(
                    "limit",
                    // An empty value is taken as absent, as `limit_param` does.
                    json!({"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                                     {"const": ""}],
                           "default": DEFAULT_LIMIT}),
                    "most documents in the page (empty: the default)",
                )
                .query(
                    "cursor",
                    json!({"type": "string", "pattern": "^\\+?0*([0-9]{1,4}|10000)$"}),
                    "the next_cursor of the previous page, as is",
                )
                .ok(200, "A page of matches", json!({
                    "type": "object",
                    "required": ["items", "total", "next_cursor"],
                    "properties": {
                        "items": {"type": "array", "items": schema("SearchHit")},
                        "total": {"type": "integer", "minimum": 0,
                                  "description": "matches in all that the caller may see"},
                        "next_cursor": {"type": ["string", "null"],
                                        "description": "the cursor of the next page; null on the last page"},
                    }
                }))
                .problem(400, "A parameter is unknown, given twice or malformed: q missing, blank, longer than 500 characters or not a query the parser reads (such as an unclosed quote or bracket, or a field that does not exist), type not one of user, order, message, campaign, a field filter without ':', limit not a whole number from 1 to 100, or a cursor a search did not give out")
                .problem(503, "The index cannot be read, or the search stopped before answering"),
            Operation::get("/api/v1/search/stats", "Statistics of the index being served")
                .describe("Documents, removed ones kept as tombstones, segments and bytes on disk, of the generation queries use now.")
                .bearer("admin role")
                .ok(200, "The index's counts", schema("SearchStats"))
                .problem(403, "The token lacks the admin role")
                .problem(503, "The index cannot be read"),
        ],
        schemas: vec![("SearchHit", hit), ("SearchStats", stats)],
    }
}

#[derive(Debug, Serialize)]
struct Answer {
    items: Vec<Hit>,
    total: usize,
    next_cursor: Option<String>,
}

/// The query string, every parameter checked.
struct Params {
    q: String,
    kind: Option<String>,
    fields: Vec<String>,
    limit: u32,
    offset: usize,
}

fn params(uri: &Uri) -> Result<Params, Problem> {
    let pairs: Vec<(String, String)> = match uri.query() {
        None => Vec::new(),
        Some(query) => serde_urlencoded_pairs(query)?,
    };
    let mut q = None;
    let mut kind = None;
    let mut fields = Vec::new();
    let mut limit = None;
    let mut cursor = None;
    for (name, value) in pairs {
        let once = |slot: &mut Option<String>, value: String| {
            if slot.replace(value).is_some() {
                Err(Problem::bad_request(format!("{name} is given twice")))
            } else {
                Ok(())
            }
        };
        match name.as_str() {
            "q" => once(&mut q, value)?,
            "type" => once(&mut kind, value)?,
            "limit" => once(&mut limit, value)?,
            "cursor" => once(&mut cursor, value)?,
            "field" => fields.push(value),
            other => {
                return Err(Problem::bad_request(format!(
                    "unknown parameter {other:?}: use q, type, field, limit, cursor"
                )));
            }
        }
    }
    let q = q
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| Problem::bad_request("q is required: the words to search for"))?;
    if q.chars().count() > MAX_QUERY_LEN {
        return Err(Problem::bad_request(format!(
            "q is longer than {MAX_QUERY_LEN} characters"
        )));
    }
    if let Some(kind) = &kind
        && !KINDS.contains(&kind.as_str())
    {
        return Err(Problem::bad_request(format!(
            "type must be one of {}",
            KINDS.join(", ")
        )));
    }
    let limit = problem::limit_param(limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let offset = match cursor.as_deref() {
        None => 0,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|o| *o <= MAX_OFFSET)
            .ok_or_else(|| {
                Problem::bad_request("cursor is not one a search answered; start without it")
            })?,
    };
    Ok(Params {
        q,
        kind,
        fields,
        limit,
        offset,
    })
}

/// `a=1&b=2` decoded (percent-escapes and `+`), or a 400.
fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, Problem> {
    let axum::extract::Query(pairs) = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| Problem::bad_request("the query string is malformed"))?,
    )
    .map_err(|err| Problem::bad_request(format!("query string: {}", err.body_text())))?;
    Ok(pairs)
}

async fn search(
    State(state): State<Arc<SearchApi>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Answer>, Problem> {
    let principal = state.auth.authenticate(&headers)?;
    let params = params(&uri)?;
    let admin = principal.roles.iter().any(|r| r == ADMIN_ROLE);
    let page = state
        .searcher
        .search(
            &SearchRequest {
                q: &params.q,
                kind: params.kind.as_deref(),
                fields: &params.fields,
                limit: params.limit as usize,
                offset: params.offset,
            },
            &Caller {
                subject: &principal.subject,
                admin,
            },
        )
        .await
        .map_err(|err| match err {
            SearchError::Query(reason) => Problem::bad_request(reason),
            SearchError::Failed(reason) => {
                tracing::warn!(%reason, "search failed");
                Problem::unavailable("the index is not readable", 5)
            }
        })?;
    let (offset, limit) = (params.offset, params.limit as usize);
    let next = offset + page.items.len();
    let next_cursor = (page.items.len() == limit && next < page.total && next <= MAX_OFFSET)
        .then(|| next.to_string());
    Ok(Json(Answer {
        items: page.items,
        total: page.total,
        next_cursor,
    }))
}

async fn stats(
    State(state): State<Arc<SearchApi>>,
    headers: HeaderMap,
) -> Result<Json<Stats>, Problem> {
    let principal = state.auth.authenticate(&headers)?;
    if !principal.roles.iter().any(|r| r == ADMIN_ROLE) {
        return Err(Problem::forbidden(format!(
            "index statistics need the {ADMIN_ROLE} role"
        )));
    }
    state.searcher.stats().await.map(Json).map_err(|err| {
        tracing::warn!(%err, "index statistics failed");
        Problem::unavailable("the index is not readable", 5)
    })
}
