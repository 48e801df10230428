//! The chains' state and their verification over HTTP, for admins (the console's audit
//! panel):
//!
//! - `GET /api/v1/audit/chains`: every chain's head (its last row and hash) and the outcome
//!   of the last verification this process ran;
//! - `POST /api/v1/audit/verify`: walks every chain now, as `herald audit verify` does, and
//!   answers with the outcome. One verification at a time per process: a second request
//!   while one runs is a 409 rather than a second walk over the whole log.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use platform::openapi::Operation;
use platform::problem::Problem;
use serde_json::{Value, json};

use crate::api::{ADMIN_ROLE, AuditApi};
use crate::verify::Report;

/// The last verification's outcome, kept for the chains' view.
#[derive(Debug, Clone)]
pub struct Verified {
    pub at: jiff::Timestamp,
    pub seconds: f64,
    pub report: Report,
}

/// What the API answers for a verification (pure).
pub fn verified_json(verified: &Verified) -> Value {
    json!({
        "verified_at": verified.at.to_string(),
        "seconds": verified.seconds,
        "passed": verified.report.passed(),
        "chains": verified.report.chains,
        "rows": verified.report.rows,
        "failures": verified.report.failures.iter().map(|failure| json!({
            "chain": failure.chain,
            "seq": failure.seq,
            "event_id": failure.event_id,
            "offset": failure.offset,
            "fault": failure.to_string(),
        })).collect::<Vec<_>>(),
    })
}

fn admin_only(state: &AuditApi, headers: &HeaderMap) -> Result<(), Problem> {
    let principal = state.auth.authenticate(headers)?;
    if principal.roles.iter().any(|role| role == ADMIN_ROLE) {
        Ok(())
    } else {
        Err(Problem::forbidden(format!(
            "the audit log needs the {ADMIN_ROLE} role"
        )))
    }
}

fn unavailable(err: &crate::store::StoreError) -> Problem {
    tracing::warn!(%err, "audit query failed");
    Problem::unavailable("the audit store is not reachable", 5)
}

pub async fn chains(
    State(state): State<Arc<AuditApi>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    admin_only(&state, &headers)?;
    let chains = state
        .store
        .chains()
        .await
        .map_err(|err| unavailable(&err))?;
    let last = state.verified.lock().await.clone();
    Ok(Json(json!({
        "chains": chains.iter().map(|(chain, head)| match head {
            Some(head) => json!({"chain": chain, "rows": head.seq, "head": head.hash, "offset": head.offset}),
            None => json!({"chain": chain, "rows": null, "head": null, "offset": null}),
        }).collect::<Vec<_>>(),
        "last_verification": last.as_ref().map(verified_json),
    })))
}

pub async fn verify(
    State(state): State<Arc<AuditApi>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    admin_only(&state, &headers)?;
    let Ok(walking) = state.verifying.clone().try_lock_owned() else {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "verification-running",
            "A verification is running",
            "the audit log is being verified already; its outcome shows in GET /api/v1/audit/chains when it ends",
        )
        .with_retry_after(5));
    };
    // The walk goes on, and its outcome is kept, even when the caller stops waiting.
    let walk = {
        let state = state.clone();
        tokio::spawn(async move {
            let _walking = walking;
            let started = std::time::Instant::now();
            let report = crate::verify::verify(state.store.as_ref()).await?;
            let verified = Verified {
                at: jiff::Timestamp::now(),
                seconds: started.elapsed().as_secs_f64(),
                report,
            };
            if !verified.report.passed() {
                tracing::error!(
                    failing = verified.report.failures.len(),
                    chains = verified.report.chains,
                    "the audit log was tampered with"
                );
            }
            let body = verified_json(&verified);
            *state.verified.lock().await = Some(verified);
            Ok::<_, crate::store::StoreError>(body)
        })
    };
    let body = walk
        .await
        .map_err(|err| Problem::internal(&err))?
        .map_err(|err| unavailable(&err))?;
    Ok(Json(body))
}

/// These routes' part of the API reference.
pub fn operations() -> Vec<Operation> {
    let outcome = json!({"type": "object", "required": ["verified_at", "seconds", "passed", "chains", "rows", "failures"], "properties": {
        "verified_at": {"type": "string", "format": "date-time"},
        "seconds": {"type": "number", "description": "how long the walk took"},
        "passed": {"type": "boolean"},
        "chains": {"type": "integer"}, "rows": {"type": "integer", "description": "rows checked in the chains that passed"},
        "failures": {"type": "array", "items": {"type": "object", "required": ["chain", "seq", "fault"], "properties": {
            "chain": {"type": "string"}, "seq": {"type": "integer"},
            "event_id": {"type": ["string", "null"]}, "offset": {"type": ["integer", "null"]},
            "fault": {"type": "string", "description": "the first fault of the chain, in words"}}}}}});
    vec![
        Operation::get("/api/v1/audit/chains", "The hash chains' state")
            .bearer("admin role")
            .describe("Every chain (one per topic-partition) with its head: how many rows, the last row's hash, the last offset applied. And the outcome of the last verification this process ran, or null.")
            .ok(200, "The chains", json!({"type": "object", "required": ["chains", "last_verification"], "properties": {
                "chains": {"type": "array", "items": {"type": "object", "required": ["chain", "rows", "head", "offset"], "properties": {
                    "chain": {"type": "string"}, "rows": {"type": ["integer", "null"]},
                    "head": {"type": ["string", "null"]}, "offset": {"type": ["integer", "null"]}}}},
                "last_verification": {"anyOf": [outcome, {"type": "null"}]}}}))
            .problem(403, "The token lacks the admin role")
            .problem(503, "The audit store is not reachable"),
        Operation::post("/api/v1/audit/verify", "Verify the hash chains now")
            .bearer("admin role")
            .describe("Walks every chain row by row against its hashes and its head, as `herald audit verify` does, and answers with the outcome: `passed` false names each failing chain's first fault. It reads the whole log: one at a time.")
            .ok(200, "The outcome", outcome)
            .problem(403, "The token lacks the admin role")
            .problem(409, "A verification is running already")
            .problem(503, "The audit store is not reachable"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Failure, Fault};

    #[test]
    fn a_failed_verification_names_each_chain_and_its_fault_in_words() {
        let verified = Verified {
            at: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            seconds: 0.5,
            report: Report {
                chains: 3,
                rows: 40,
                failures: vec![Failure {
                    chain: "orders/1".into(),
                    seq: 7,
                    event_id: None,
                    offset: None,
                    fault: Fault::HeadMismatch,
                }],
            },
        };
        let body = verified_json(&verified);
        assert_eq!(body["passed"], false);
        assert_eq!(body["chains"], 3);
        assert_eq!(body["failures"][0]["chain"], "orders/1");
        assert_eq!(
            body["failures"][0]["fault"],
            "chain orders/1 row 7: the last row's hash differs from the chain head"
        );
    }
}
