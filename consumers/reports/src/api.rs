//! `GET /api/v1/reports?report=&limit=` lists stored reports, newest first;
//! `GET /api/v1/reports/{id}.csv` and `/{id}.html` download one. Roles admin or analyst.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use platform::auth::Authenticator;
use platform::problem::{self, Problem};
use serde::Serialize;
use uuid::Uuid;

use crate::store::{Listed, SqlStore};

const ROLES: [&str; 2] = ["admin", "analyst"];
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;
pub const BASE: &str = "/api/v1/reports";

pub struct ReportsApi {
    pub store: Arc<SqlStore>,
    pub auth: Arc<Authenticator>,
}

pub fn router(state: Arc<ReportsApi>) -> Router {
    Router::new()
        .route(BASE, get(list))
        .route("/api/v1/reports/{file}", get(download))
        .with_state(state)
        .layer(axum::middleware::map_response(
            problem::problem_for_bare_errors,
        ))
}

fn allowed(state: &ReportsApi, headers: &HeaderMap) -> Result<(), Problem> {
    let principal = state.auth.authenticate(headers)?;
    if principal.roles.iter().any(|r| ROLES.contains(&r.as_str())) {
        Ok(())
    } else {
        Err(Problem::forbidden("reports need the admin or analyst role"))
    }
}

fn unavailable(err: impl std::fmt::Display) -> Problem {
    tracing::warn!(%err, "reports query failed");
    Problem::unavailable("the reports store is not reachable", 5)
}

#[derive(Serialize)]
struct Page {
    items: Vec<Listed>,
}

async fn list(
    State(state): State<Arc<ReportsApi>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Page>, Problem> {
    allowed(&state, &headers)?;
    let mut report = None;
    let mut limit = DEFAULT_LIMIT;
    for pair in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "report" => report = Some(value.to_string()),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        Problem::bad_request(format!("limit must be 1 to {MAX_LIMIT}"))
                    })?;
            }
            other => {
                return Err(Problem::bad_request(format!(
                    "unknown parameter {other:?}: use report and limit"
                )));
            }
        }
    }
    let items = state
        .store
        .list(report.as_deref(), limit, BASE)
        .await
        .map_err(unavailable)?;
    Ok(Json(Page { items }))
}

async fn download(
    State(state): State<Arc<ReportsApi>>,
    headers: HeaderMap,
    Path(file): Path<String>,
) -> Result<Response, Problem> {
    allowed(&state, &headers)?;
    let (id, csv) = match (file.strip_suffix(".csv"), file.strip_suffix(".html")) {
        (Some(id), _) => (id, true),
        (_, Some(id)) => (id, false),
        _ => {
            return Err(Problem::bad_request(
                "ask for <report id>.csv or <report id>.html",
            ));
        }
    };
    let id = Uuid::parse_str(id)
        .map_err(|_| Problem::bad_request(format!("{id:?} is not a report id")))?;
    let output = state
        .store
        .output(id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no report {id}"),
            )
        })?;
    let name = format!("{}-{}", output.report, output.period);
    let (kind, body, disposition) = if csv {
        (
            "text/csv; charset=utf-8",
            output.csv,
            format!("attachment; filename=\"{name}.csv\""),
        )
    } else {
        (
            "text/html; charset=utf-8",
            output.html,
            format!("inline; filename=\"{name}.html\""),
        )
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            // The page is static: no scripts run in it, and nothing from elsewhere loads.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'".to_string(),
            ),
        ],
        body,
    )
        .into_response())
}
