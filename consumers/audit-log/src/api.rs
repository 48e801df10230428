//! `GET /api/v1/audit`: the audit log for admins, newest first, with cursor pagination.
//!
//! Query parameters (all optional): `actor`, `type`, `key`, `from` and `to` (RFC 3339,
//! `from` inclusive, `to` exclusive, on `occurred_at`), `limit` (1 to 1000, default 100) and
//! `cursor` (the `next_cursor` of the previous page). Without a token: 401; with a token
//! without the `admin` role: 403; an unknown or malformed parameter: 400.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::routing::get;
use axum::{Json, Router};
use platform::auth::Authenticator;
use platform::problem::{self, Problem};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::chain::micros;
use crate::store::{AuditRecord, AuditStore, Filter, Order, Position};

/// The role allowed to read the audit log.
pub const ADMIN_ROLE: &str = "admin";
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub struct AuditApi {
    pub store: Arc<dyn AuditStore>,
    pub auth: Arc<Authenticator>,
}

pub fn router(state: Arc<AuditApi>) -> Router {
    Router::new()
        .route("/api/v1/audit", get(list))
        .with_state(state)
        .layer(axum::middleware::map_response(
            problem::problem_for_bare_errors,
        ))
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
    Ok(Json(Page { items, next_cursor }))
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
        actor: present(params.actor),
        event_type: present(params.event_type),
        key: present(params.key),
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

/// An RFC 3339 time as microseconds since the epoch.
pub fn time_param(name: &str, value: Option<String>) -> Result<Option<i64>, Problem> {
    value
        .map(|text| {
            OffsetDateTime::parse(&text, &Rfc3339)
                .map(micros)
                .map_err(|_| {
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
