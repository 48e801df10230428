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
use platform::problem::{self, Problem};
use serde::Serialize;

use crate::LiveIndex;
use crate::index::{Caller, Hit, SearchError, SearchRequest, Stats};

pub const ADMIN_ROLE: &str = "admin";
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
/// Deep pages cost a full ranking each: past this, narrow the query instead.
const MAX_OFFSET: usize = 10_000;
const MAX_QUERY_LEN: usize = 500;
const KINDS: [&str; 4] = ["user", "order", "message", "campaign"];

pub struct SearchApi {
    /// The generation being served; a reindex swaps it under running queries.
    pub live: Arc<LiveIndex>,
    pub auth: Arc<Authenticator>,
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
    let index = state.live.get();
    let admin = principal.roles.iter().any(|r| r == ADMIN_ROLE);
    let page = tokio::task::spawn_blocking(move || {
        index
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
            .map(|page| (page, params.offset, params.limit as usize))
    })
    .await
    .map_err(|_| Problem::unavailable("the search was interrupted", 1))?
    .map_err(|err| match err {
        SearchError::Query(reason) => Problem::bad_request(reason),
        SearchError::Failed(reason) => {
            tracing::warn!(%reason, "search failed");
            Problem::unavailable("the index is not readable", 5)
        }
    })?;
    let (page, offset, limit) = page;
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
    let index = state.live.get();
    tokio::task::spawn_blocking(move || index.stats())
        .await
        .map_err(|_| Problem::unavailable("interrupted", 1))?
        .map(Json)
        .map_err(|err| {
            tracing::warn!(%err, "index statistics failed");
            Problem::unavailable("the index is not readable", 5)
        })
}
