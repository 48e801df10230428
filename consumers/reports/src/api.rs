//! `GET /api/v1/reports?report=&limit=` lists stored reports, newest first;
//! `GET /api/v1/reports/{id}.csv` and `/{id}.html` download one. Roles admin or analyst.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use platform::auth::Authenticator;
use platform::openapi::{Api, Operation};
use platform::problem::{self, Problem};
use serde::Serialize;
use serde_json::json;
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

/// The reports service's part of the OpenAPI document: every route `router` serves.
pub fn openapi() -> Api {
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let listing = json!({
        "type": "object",
        "description": "One stored report: which report, which period, and where to download it",
        "required": ["report_id", "report", "period", "period_start", "period_end", "created_at",
                     "csv", "html"],
        "properties": {
            "report_id": {"type": "string", "format": "uuid"},
            "report": {"type": "string", "description": "the report's name in the schedule"},
            "period": {"type": "string",
                       "description": "the period's name in the report's zone: 2026-11-22T10 (hour), 2026-11-22 (day) or 2026-W47 (week)"},
            "period_start": {"type": "string", "format": "date-time"},
            "period_end": {"type": "string", "format": "date-time", "description": "exclusive"},
            "created_at": {"type": "string", "format": "date-time"},
            "csv": {"type": "string", "description": "the path of its CSV: /api/v1/reports/<report_id>.csv"},
            "html": {"type": "string", "description": "the path of its page: /api/v1/reports/<report_id>.html"},
        }
    });
    // What `Uuid::parse_str` reads: simple, hyphenated, braced or URN.
    let hyphenated = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
    let file = format!(
        "^([0-9a-fA-F]{{32}}|{hyphenated}|\\{{{hyphenated}\\}}|urn:uuid:{hyphenated})\\.(csv|html)$"
    );
    let text = json!({"type": "string"});
    Api {
        tag: "reports",
        description: "Scheduled reports, made exactly once per period from aggregates kept from the event stream, to list and download.",
        operations: vec![
            Operation::get(BASE, "Stored reports, newest first")
                .describe("Every stored report (until the retention period purges it), newest first, optionally of one report only. Parameter values are compared as sent, without percent-decoding. An unknown parameter is a 400; one given twice counts once, the last.")
                .bearer("admin or analyst role")
                .query("report", json!({"type": "string"}), "only this report (its name in the schedule)")
                .query(
                    "limit",
                    json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
                    "most reports in the answer",
                )
                .ok(200, "The stored reports", json!({
                    "type": "object",
                    "required": ["items"],
                    "properties": {"items": {"type": "array", "items": schema("ReportListing")}}
                }))
                .problem(400, "An unknown parameter, or limit not a whole number from 1 to 500")
                .problem(403, "The token lacks the admin or analyst role"),
            Operation::get("/api/v1/reports/{file}", "Download one stored report")
                .describe("<report id>.csv is the report's figures as CSV, sent as an attachment; <report id>.html is the same as a static page (no scripts, nothing loaded from elsewhere), sent inline.")
                .bearer("admin or analyst role")
                .path_param(
                    "file",
                    json!({"type": "string", "pattern": file}),
                    "<report id>.csv or <report id>.html, the report id as report_id of the listing",
                )
                .content_types(
                    200,
                    "The report: text/csv for .csv, text/html for .html (UTF-8)",
                    &[("text/csv", text.clone()), ("text/html", text)],
                )
                .problem(400, "file is not <report id>.csv or <report id>.html")
                .problem(403, "The token lacks the admin or analyst role")
                .problem(404, "No stored report has this id (never made, or purged after the retention period)"),
        ],
        schemas: vec![("ReportListing", listing)],
    }
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
