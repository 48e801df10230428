//! `GET /api/v1/audit`: the audit log for admins, newest first, with cursor pagination.
//!
//! Query parameters (all optional): `actor`, `type`, `key`, `from` and `to` (RFC 3339,
//! `from` inclusive, `to` exclusive, on `occurred_at`), `limit` (1 to 1000, default 100) and
//! `cursor` (the `next_cursor` of the previous page). Without a token: 401; with a token
//! without the `admin` role: 403; an unknown or malformed parameter: 400.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use platform::auth::Authenticator;
use platform::openapi::{Api, Operation};
use platform::problem::{self, Problem};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::chain::micros;
use crate::store::{AuditRecord, AuditStore, Filter, Order, Position};

/// The role allowed to read the audit log.
pub const ADMIN_ROLE: &str = "admin";
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub struct AuditApi {
    pub store: Arc<dyn AuditStore>,
    pub auth: Arc<Authenticator>,
    /// Shows personal fields in plain text, or as erased (the store keeps the ciphertext,
    /// which the chain hashes); `None`: as stored.
    pub privacy: Option<Arc<platform::privacy::Privacy>>,
    pub catalog: Arc<events::Catalog>,
    /// Held while a verification walks the chains: one at a time.
    pub verifying: Arc<tokio::sync::Mutex<()>>,
    /// The last verification's outcome.
    pub verified: tokio::sync::Mutex<Option<crate::integrity::Verified>>,
}

pub fn router(state: Arc<AuditApi>) -> Router {
    Router::new()
        .route("/api/v1/audit", get(list))
        .route("/api/v1/audit/chains", get(crate::integrity::chains))
        .route("/api/v1/audit/verify", post(crate::integrity::verify))
        .with_state(state)
        .layer(axum::middleware::map_response(
            problem::problem_for_bare_errors,
        ))
}

/// The audit log's part of the OpenAPI document: every route `router` serves.
pub fn openapi() -> Api {
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    // An empty value is taken as absent, as `parse` does.
    let time = json!({"anyOf": [{"type": "string", "format": "date-time"}, {"const": ""}]});
    let record = json!({
        "type": "object",
        "description": "One event as the audit log stored it (its envelope, its place in the log and its data; keys as written below) and its place in the hash chain",
        "required": ["event_id", "event_type", "occurred_at", "received_at", "actor", "source",
                     "idempotency_key", "topic", "partition", "offset", "key", "schema_version",
                     "traceparent", "data", "audit"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid"},
            "event_type": {"type": "string", "description": "such as order.placed"},
            "occurred_at": {"type": "string", "format": "date-time"},
            "received_at": {"type": "string", "format": "date-time"},
            "actor": {"type": "string", "description": "the verified token's subject"},
            "source": {"type": "string"},
            "idempotency_key": {"type": ["string", "null"]},
            "topic": {"type": "string"},
            "partition": {"type": "integer", "minimum": 0},
            "offset": {"type": "integer", "minimum": 0},
            "key": {"type": ["string", "null"], "description": "the record key: the aggregate id"},
            "schema_version": {"type": "integer", "description": "the schema version the event was written with"},
            "traceparent": {"type": ["string", "null"], "description": "W3C trace context, when the producer sent one"},
            "data": {"type": "object", "description": "the payload, in the newest schema version of its event type"},
            "audit": schema("AuditChainPosition"),
        }
    });
    let hash = json!({"type": "string", "pattern": "^[0-9a-f]{64}$"});
    let position = json!({
        "type": "object",
        "description": "Where the row sits in its chain (one per topic-partition): hash = SHA-256(prev_hash ‖ canonical content)",
        "required": ["chain", "seq", "prev_hash", "hash"],
        "properties": {
            "chain": {"type": "string", "description": "<topic>/<partition>"},
            "seq": {"type": "integer", "minimum": 1},
            "prev_hash": hash,
            "hash": hash,
        }
    });
    Api {
        tag: "audit",
        description: "Every domain event, once, in an append-only hash-chained log that shows tampering, for admins to query.",
        operations: vec![
            Operation::get("/api/v1/audit", "The audit log, newest first")
                .describe("Stored events newest first (by occurred_at, then event id), narrowed by every filter given, a page at a time: next_cursor, when not null, asks for the page after this one. An unknown parameter, or one given twice, is a 400; an empty value counts as absent.")
                .bearer("admin role")
                .query("actor", json!({"type": "string"}), "only events of this actor (token subject)")
                .query("type", json!({"type": "string"}), "only events of this type, such as order.placed")
                .query("key", json!({"type": "string"}), "only events of this aggregate (record key)")
                .query("from", time.clone(), "RFC 3339: only events that occurred at or after this time")
                .query("to", time, "RFC 3339, later than from: only events that occurred before this time")
                .query(
                    "limit",
                    json!({"anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                                     {"const": ""}],
                           "default": DEFAULT_LIMIT}),
                    "most events in the page (empty: the default)",
                )
                .query(
                    "cursor",
                    json!({"type": "string",
                           "pattern": "^([+-]?0*[0-9]{1,18}_[0-9a-fA-F]{32})?$"}),
                    "the next_cursor of the previous page, as is (empty: the first page)",
                )
                .ok(200, "A page of events", json!({
                    "type": "object",
                    "required": ["items", "next_cursor"],
                    "properties": {
                        "items": {"type": "array", "items": schema("AuditRecord")},
                        "next_cursor": {"type": ["string", "null"],
                                        "description": "the cursor of the next page; null on the last page"},
                    }
                }))
                .problem(400, "A parameter is unknown, given twice or malformed: limit not a whole number from 1 to 1000, from or to not an RFC 3339 time, from not earlier than to, or a cursor this API did not give out")
                .problem(403, "The token lacks the admin role"),
        ]
        .into_iter()
        .chain(crate::integrity::operations())
        .collect(),
        schemas: vec![("AuditRecord", record), ("AuditChainPosition", position)],
    }
}

#[derive(Debug, Serialize)]
struct Page {
    items: Vec<AuditRecord>,
    next_cursor: Option<String>,
}

async fn list(
    State(state): State<Arc<AuditApi>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Page>, Problem> {
    let principal = state.auth.authenticate(&headers)?;
    if !principal.roles.iter().any(|role| role == ADMIN_ROLE) {
        return Err(Problem::forbidden(format!(
            "the audit log needs the {ADMIN_ROLE} role"
        )));
    }
    let request = parse(&uri)?;
    let mut items = state
        .store
        .list(
            &request.filter,
            Order::NewestFirst,
            request.after,
            request.limit + 1,
        )
        .await
        .map_err(|err| {
            tracing::warn!(%err, "audit query failed");
            Problem::unavailable("the audit store is not reachable", 5)
        })?;
    let next_cursor = if items.len() > request.limit as usize {
        items.truncate(request.limit as usize);
        items.last().map(|r| r.position.to_cursor())
    } else {
        None
    };
    if let Some(privacy) = &state.privacy {
        for item in &mut items {
            reveal(privacy, &state.catalog, &mut item.event).await?;
        }
    }
    Ok(Json(Page { items, next_cursor }))
}

/// What the audit log holds about a person, for their export: the events they did and the
/// events about them (keyed by their id), the newest thousand of each, personal fields
/// revealed (or erased).
#[async_trait::async_trait]
impl platform::export::Exporter for AuditApi {
    async fn export(&self, subject: &str) -> Result<serde_json::Value, Problem> {
        let unavailable = |err: crate::store::StoreError| {
            tracing::warn!(%err, "audit query failed");
            Problem::unavailable("the audit store is not reachable", 5)
        };
        let mut parts = serde_json::Map::new();
        for (name, filter) in [
            (
                "done_by",
                Filter {
                    actor: Some(subject.to_string()),
                    ..Filter::default()
                },
            ),
            (
                "about",
                Filter {
                    key: Some(subject.to_string()),
                    ..Filter::default()
                },
            ),
        ] {
            let mut items = self
                .store
                .list(&filter, Order::NewestFirst, None, 1000)
                .await
                .map_err(unavailable)?;
            if let Some(privacy) = &self.privacy {
                for item in &mut items {
                    reveal(privacy, &self.catalog, &mut item.event).await?;
                }
            }
            let events: Vec<serde_json::Value> = items.into_iter().map(|item| item.event).collect();
            parts.insert(name.to_string(), events.into());
        }
        Ok(parts.into())
    }
}

/// Reveals the personal fields of a stored event: plain text, or erased. A value that does
/// not open (damaged) is shown as stored: the chain's verification is what judges it.
async fn reveal(
    privacy: &platform::privacy::Privacy,
    catalog: &events::Catalog,
    event: &mut serde_json::Value,
) -> Result<(), Problem> {
    let event_type = event["event_type"].as_str().unwrap_or_default().to_string();
    let actor = event["actor"].as_str().unwrap_or_default().to_string();
    let Some(schema) = catalog.latest(&event_type) else {
        return Ok(());
    };
    let Some(data) = event.get_mut("data") else {
        return Ok(());
    };
    let mut revealed = data.clone();
    match privacy.reveal_data(schema, &actor, &mut revealed).await {
        Ok(()) => *data = revealed,
        Err(platform::privacy::PrivacyError::Store(err)) => {
            tracing::warn!(%err, "the personal-data key store is unreachable");
            return Err(Problem::unavailable(
                "the personal-data key store is not reachable",
                5,
            ));
        }
        Err(err) => tracing::warn!(%err, event_type, "a personal field does not open"),
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    actor: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    key: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A checked audit query.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub filter: Filter,
    pub after: Option<Position>,
    pub limit: u32,
}

/// Reads the query string; every problem is a 400 naming the parameter.
pub fn parse(uri: &Uri) -> Result<Request, Problem> {
    let Query(params) = Query::<Params>::try_from_uri(uri)
        .map_err(|err| Problem::bad_request(format!("query string: {}", err.body_text())))?;
    let present = |value: Option<String>| value.filter(|v| !v.is_empty());
    let limit = problem::limit_param(params.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = match present(params.cursor) {
        None => None,
        Some(cursor) => Some(Position::from_cursor(&cursor).ok_or_else(|| {
            Problem::bad_request("cursor is not one this API gave out (use next_cursor as is)")
        })?),
    };
    let filter = Filter {
        actor: text_param("actor", present(params.actor))?,
        event_type: text_param("type", present(params.event_type))?,
        key: text_param("key", present(params.key))?,
        from_us: time_param("from", present(params.from))?,
        to_us: time_param("to", present(params.to))?,
    };
    if let (Some(from), Some(to)) = (filter.from_us, filter.to_us)
        && from >= to
    {
        return Err(Problem::bad_request("from must be earlier than to"));
    }
    Ok(Request {
        filter,
        after,
        limit,
    })
}

/// A value compared as text: no record holds a control character there, and PostgreSQL
/// refuses a NUL in a query, so one is a 400 rather than a failed store call.
fn text_param(name: &str, value: Option<String>) -> Result<Option<String>, Problem> {
    match value {
        Some(text) if text.chars().any(char::is_control) => Err(Problem::bad_request(format!(
            "{name} must not hold control characters"
        ))),
        value => Ok(value),
    }
}

/// An RFC 3339 time as microseconds since the epoch.
pub fn time_param(name: &str, value: Option<String>) -> Result<Option<i64>, Problem> {
    value
        .map(|text| {
            events::parse_timestamp(&text).map(micros).ok_or_else(|| {
                Problem::bad_request(format!(
                    "{name} must be an RFC 3339 time such as 2026-11-22T10:00:00Z"
                ))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(query: &str) -> Uri {
        format!("/api/v1/audit?{query}").parse().unwrap()
    }

    #[test]
    fn a_full_query_is_read() {
        let request = parse(&uri(
            "actor=alice&type=order.placed&key=o-1&from=2026-11-22T10:00:00Z&to=2026-11-23T00:00:00%2B01:00&limit=5",
        ))
        .unwrap();
        assert_eq!(request.limit, 5);
        assert_eq!(request.filter.actor.as_deref(), Some("alice"));
        assert_eq!(request.filter.event_type.as_deref(), Some("order.placed"));
        assert_eq!(request.filter.from_us, Some(1_795_341_600_000_000));
        assert!(request.after.is_none());
    }

    #[test]
    fn no_parameters_means_the_newest_hundred() {
        let request = parse(&"/api/v1/audit".parse().unwrap()).unwrap();
        assert_eq!(request.limit, 100);
        assert_eq!(request.filter, Filter::default());
    }

    #[test]
    fn bad_parameters_are_named() {
        for (query, needle) in [
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("from=yesterday", "from"),
            ("to=2026-13-01T00:00:00Z", "to"),
            ("cursor=abc", "cursor"),
            ("actr=alice", "actr"),
            ("actor=al%00ice", "actor"),
            ("key=%0D%0A", "key"),
            (
                "from=2026-11-23T00:00:00Z&to=2026-11-22T00:00:00Z",
                "earlier",
            ),
        ] {
            let problem = parse(&uri(query)).unwrap_err();
            assert_eq!(problem.status, 400, "{query}");
            assert!(
                problem.detail.contains(needle),
                "{query}: {}",
                problem.detail
            );
        }
    }

    #[test]
    fn cursors_round_trip() {
        let position = Position {
            occurred_at_us: 1_795_341_600_000_001,
            event_id: uuid::Uuid::now_v7(),
        };
        let request = parse(&uri(&format!("cursor={}", position.to_cursor()))).unwrap();
        assert_eq!(request.after, Some(position));
    }
}
