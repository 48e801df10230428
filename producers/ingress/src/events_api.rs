//! `POST /api/v1/events`.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use events::Envelope;
use platform::kafka::{OutgoingRecord, PublishError};
use platform::trace::TraceContext;
use serde::Deserialize;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use uuid::{ContextV7, Timestamp, Uuid};

use crate::AppState;
use crate::admission::Admitted;
use crate::answer::{self, Landed};
use crate::auth::Principal;
use crate::idempotency::{Claim, Claimed, StoreError, StoredResponse};
use crate::prepare::{Prepared, Shape, check_events, prepare, prepare_text};
use crate::problem::Problem;

#[derive(Debug, Deserialize)]
pub struct Params {
    #[serde(default)]
    validate_only: bool,
}

const MAX_KEY_LEN: usize = 255;

pub async fn post_events(
    State(state): State<Arc<AppState>>,
    Query(params): Query<Params>,
    request: Request,
) -> Response {
    match handle(&state, params, request).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn handle(state: &AppState, params: Params, request: Request) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let principal = state.auth.authenticate(&parts.headers)?;
    // Held until the answer: a request that waits for the broker keeps its share.
    let (body, _admitted) = admit_and_read(state, &parts.headers, body).await?;
    let idempotency_key = idempotency_key(&parts.headers)?;
    let (shape, mut prepared, tree) = read_events(state, &principal, &body)?;
    check_events(
        shape,
        &prepared,
        (&state.policy, &principal),
        jiff::Timestamp::now(),
        state.limits.occurred_at,
    )?;
    if params.validate_only {
        let body = serde_json::json!({"valid": true, "events": prepared.len()});
        return Ok((StatusCode::OK, axum::Json(body)).into_response());
    }
    if let Some(privacy) = &state.privacy {
        crate::personal::protect(privacy, &principal, shape, &mut prepared).await?;
    }
    // The request's span, started by the edge (a child of the caller's traceparent, or a new
    // trace), is the parent of the produce span, whose context every record carries.
    let trace = parts
        .extensions
        .get::<TraceContext>()
        .copied()
        .unwrap_or_else(|| TraceContext::for_request(&parts.headers));
    let Some(key) = idempotency_key else {
        let (ids, received_at) = stamp(prepared.len());
        let attempt = Attempt {
            ids,
            received_at,
            idempotency_key: None,
            trace,
        };
        let response = publish(state, &principal, shape, prepared, attempt).await?;
        return Ok(response.into_response());
    };
    // The hash is of the JSON tree, so key order and spacing do not make another request: a
    // body that took the text path is parsed again here (it parsed once, so this cannot fail).
    let request_hash = hash(&match tree {
        Some(tree) => tree,
        None => parse_json(&body)?,
    });
    let request = Idempotent {
        key,
        request_hash,
        trace,
    };
    publish_once(state, &principal, (shape, prepared), request).await
}

/// The events of a body, checked against the catalog and the caller's rights. Most bodies
/// fit: read once, straight to Avro. The rest go through the JSON tree (returned), which
/// names everything that is wrong.
fn read_events(
    state: &AppState,
    principal: &Principal,
    body: &[u8],
) -> Result<(Shape, Vec<Prepared>, Option<Json>), Problem> {
    let (catalog, policy, max_events) = (state.catalog(), &state.policy, state.limits.max_events);
    if let Some((shape, prepared)) = prepare_text(catalog, policy, principal, body, max_events) {
        return Ok((shape, prepared, None));
    }
    let tree = parse_json(body)?;
    let (shape, prepared) = prepare(catalog, policy, principal, &tree, max_events)?;
    Ok((shape, prepared, Some(tree)))
}

/// A request that carries an Idempotency-Key.
struct Idempotent {
    key: String,
    request_hash: String,
    trace: TraceContext,
}

/// Publishes under an Idempotency-Key: the first attempt claims the key and records the
/// answer; a retry of the same body gets that answer (or resumes with the same event ids);
/// the same key with another body, or while an attempt runs, is refused.
async fn publish_once(
    state: &AppState,
    principal: &Principal,
    (shape, prepared): (Shape, Vec<Prepared>),
    request: Idempotent,
) -> Result<Response, Problem> {
    let Idempotent {
        key,
        request_hash,
        trace,
    } = request;
    let (event_ids, received_at) = stamp(prepared.len());
    let claim = Claim {
        attempt: Uuid::now_v7(),
        principal: principal.subject.clone(),
        key: key.clone(),
        request_hash,
        event_ids,
        received_at,
        lease: state.limits.publish_deadline * 2,
        ttl: state.limits.idempotency_ttl,
    };
    let (ids, received_at) = match claim_key(state, &claim).await? {
        Claimed::New => (claim.event_ids.clone(), claim.received_at),
        Claimed::Resume {
            event_ids,
            received_at,
        } => (event_ids, received_at),
        Claimed::Replay(stored) => return Ok(replay(stored)),
        refused => return Err(refusal(&refused)),
    };
    let attempt = Attempt {
        ids,
        received_at,
        idempotency_key: Some(&key),
        trace,
    };
    match publish(state, principal, shape, prepared, attempt).await {
        Ok(response) => {
            record(state, &principal.subject, &key, &response).await;
            Ok(response.into_response())
        }
        Err(problem) => {
            release(state, &principal.subject, &key, claim.attempt).await;
            Err(problem)
        }
    }
}

/// Claims the key, within the publish deadline: a store that hangs (a full disk, a lock
/// held elsewhere) must not keep the client waiting past it.
async fn claim_key(state: &AppState, claim: &Claim) -> Result<Claimed, Problem> {
    let deadline = state.limits.publish_deadline;
    match tokio::time::timeout(deadline, state.store.claim(claim)).await {
        Ok(claimed) => claimed,
        Err(_) => {
            // The claim may still be written after this answer: give it back, so the retry
            // the 503 invites is not refused as in progress.
            release(state, &claim.principal, &claim.key, claim.attempt).await;
            Err(StoreError::timed_out(deadline))
        }
    }
    .map_err(|err| {
        tracing::warn!(%err, "idempotency store unavailable");
        Problem::unavailable("the idempotency store is unavailable", 1)
    })
}

/// The answer to a claim that may not go ahead.
fn refusal(claimed: &Claimed) -> Problem {
    match claimed {
        Claimed::InProgress { retry_after } => Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-progress",
            "Request in progress",
            "a request with this Idempotency-Key is still being processed",
        )
        .with_retry_after(retry_after.as_secs()),
        _ => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "this Idempotency-Key was used with a different request body",
        ),
    }
}

/// Records the answer under the key, for retries. The events are durable already: if the
/// store fails, a retry resumes with the same ids.
async fn record(state: &AppState, principal: &str, key: &str, response: &Published) {
    let deadline = state.limits.publish_deadline;
    let stored = StoredResponse {
        status: response.status.as_u16(),
        body: response.body.clone(),
    };
    let completed = state.store.complete(principal, key, &stored);
    if let Err(err) = tokio::time::timeout(deadline, completed)
        .await
        .unwrap_or_else(|_| Err(StoreError::timed_out(deadline)))
    {
        tracing::warn!(%err, "could not record the idempotent response");
    }
}

/// Gives an idempotency key back after a failed attempt. The release runs on its own task,
/// and the answer waits for it only briefly: a store that hangs must not hold an answer past
/// the deadline, and a release that comes late only delays a retry (409, in progress).
async fn release(state: &AppState, principal: &str, key: &str, attempt: Uuid) {
    const WAIT: std::time::Duration = std::time::Duration::from_millis(250);
    let (store, principal, key) = (state.store.clone(), principal.to_string(), key.to_string());
    let released = tokio::spawn(async move {
        if let Err(err) = store.release(&principal, &key, attempt).await {
            tracing::warn!(%err, "could not release the idempotency key");
        }
    });
    if tokio::time::timeout(WAIT, released).await.is_err() {
        tracing::warn!("the idempotency store is slow to release a key; releasing it later");
    }
}

struct Published {
    status: StatusCode,
    /// JSON text.
    body: String,
}

impl IntoResponse for Published {
    fn into_response(self) -> Response {
        let json = HeaderValue::from_static("application/json");
        (self.status, [(header::CONTENT_TYPE, json)], self.body).into_response()
    }
}

/// One try at publishing a request's events: a retry of an unfinished idempotent request
/// reuses the ids and time of the first.
struct Attempt<'a> {
    ids: Vec<Uuid>,
    received_at: jiff::Timestamp,
    idempotency_key: Option<&'a str>,
    /// The request's trace: the parent of the produce span.
    trace: TraceContext,
}

async fn publish(
    state: &AppState,
    principal: &Principal,
    shape: Shape,
    prepared: Vec<Prepared>,
    attempt: Attempt<'_>,
) -> Result<Published, Problem> {
    let Attempt {
        ids,
        received_at,
        idempotency_key,
        trace,
    } = attempt;
    // The produce span's context goes into every record: each consumer's span is its child.
    let (produce, producing) = trace.produce(prepared.len());
    let traceparent = produce.traceparent();
    let mut records = Vec::with_capacity(prepared.len());
    let mut accepted = Vec::with_capacity(prepared.len());
    // One envelope for the request, updated for each event: its strings keep their buffers.
    let mut envelope = Envelope {
        event_id: Uuid::nil(),
        event_type: String::new(),
        occurred_at: received_at,
        received_at,
        actor: principal.subject.clone(),
        source: String::new(),
        idempotency_key: idempotency_key.map(str::to_string),
    };
    for (event, event_id) in prepared.into_iter().zip(ids) {
        envelope.event_id = event_id;
        envelope.event_type.clone_from(&event.schema.event_type);
        envelope.occurred_at = event.occurred_at.unwrap_or(received_at);
        envelope.source.clear();
        envelope.source.push_str(&event.source);
        let payload = state
            .codec
            .encode_bytes(&event.schema, &envelope, &event.data)
            .map_err(|e| Problem::internal(&e))?;
        let mut record = OutgoingRecord::event(
            state.topics.name(&event.schema.topic),
            event.key.into_bytes(),
            payload,
            &envelope.event_type,
            event_id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer()),
            received_at.as_millisecond(),
        );
        record
            .headers
            .push(("traceparent".into(), traceparent.as_bytes().to_vec()));
        accepted.push((event_id, event.schema));
        records.push(record);
    }
    let published = state.sink.publish(&records).await;
    producing.end(published.is_ok());
    let deliveries = published.map_err(|err| match err {
        PublishError::Unknown => {
            tracing::warn!(
                events = records.len(),
                "publish outcome unknown; answering 503"
            );
            Problem::unavailable(
                "the event log did not acknowledge in time; retry with the same Idempotency-Key",
                1,
            )
        }
        PublishError::TooLarge => Problem::too_large(
            "an event is larger than the event log accepts once encoded; send less data",
        ),
        PublishError::Rejected(reason) => {
            tracing::warn!(%reason, "broker rejected events");
            Problem::unavailable(format!("the event log refused the events ({reason})"), 5)
        }
    })?;
    let placed = accepted.iter().zip(&records).zip(&deliveries);
    let body = answer::write(
        shape,
        placed.map(|(((event_id, schema), record), delivery)| Landed {
            event_id: *event_id,
            event_type: &schema.event_type,
            topic: &record.topic,
            partition: delivery.partition,
            offset: delivery.offset,
        }),
    );
    Ok(Published {
        status: StatusCode::ACCEPTED,
        body,
    })
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::ACCEPTED);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// A request's event ids (UUID v7) and the time it was received, from one reading of the
/// clock rather than one per event. The ids come from one context for all the ingress's
/// events, locked once per request: they keep the order they were made in, as
/// `Uuid::now_v7` keeps it, so an id's time is `received_at` or, when a request that read
/// the clock later took the lock first, a moment after it.
fn stamp(events: usize) -> (Vec<Uuid>, jiff::Timestamp) {
    static IDS: Mutex<ContextV7> = Mutex::new(ContextV7::new());
    let now = jiff::Timestamp::now();
    let (seconds, nanos) = (
        u64::try_from(now.as_second()).unwrap_or(0),
        now.subsec_nanosecond().unsigned_abs(),
    );
    let mut ids = Vec::with_capacity(events);
    let context = IDS.lock().unwrap_or_else(PoisonError::into_inner);
    ids.extend((0..events).map(|_| Uuid::new_v7(Timestamp::from_unix(&*context, seconds, nanos))));
    drop(context);
    (ids, now)
}

/// Same JSON, same hash, whatever the key order or whitespace.
fn hash(body: &Json) -> String {
    let digest = Sha256::digest(body.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(|k| Some(k.to_string()))
        .ok_or_else(|| {
            Problem::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters")
        })
}

/// Reads the body of a request the in-flight budget admits. A body of declared length is
/// admitted before it is read, so a request that is shed never holds its body: it is read
/// and dropped as it comes, which keeps the connection usable for the retry. A body of no
/// declared length (chunked) is admitted once read, by its size.
async fn admit_and_read<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(Bytes, Admitted<'a>), Problem> {
    let limit = state.limits.max_body_bytes;
    let declared = checked_length(headers, limit)?;
    if let Some(len) = declared {
        let Some(admitted) = state.in_flight.admit(len) else {
            discard(body, limit).await;
            return Err(overloaded());
        };
        return Ok((read_body(body, limit).await?, admitted));
    }
    let body = read_body(body, limit).await?;
    let admitted = state.in_flight.admit(body.len()).ok_or_else(overloaded)?;
    Ok((body, admitted))
}

/// The body's declared length, after the checks that need no byte of it: a JSON content
/// type, and a declared length within `limit`.
fn checked_length(headers: &HeaderMap, limit: usize) -> Result<Option<usize>, Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let mime = v.split(';').next().unwrap_or_default().trim();
            mime.eq_ignore_ascii_case("application/json")
        });
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the events as Content-Type: application/json",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    Ok(declared)
}

fn too_large(limit: usize) -> Problem {
    Problem::too_large(format!("the body is larger than {limit} bytes"))
}

async fn read_body(body: axum::body::Body, limit: usize) -> Result<Bytes, Problem> {
    axum::body::to_bytes(body, limit).await.map_err(|err| {
        let length_limit = std::error::Error::source(&err)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if length_limit {
            too_large(limit)
        } else {
            Problem::bad_request("the body could not be read")
        }
    })
}

/// Reads a body to its end, or to `limit` bytes, keeping none of it.
async fn discard(mut body: axum::body::Body, limit: usize) {
    use http_body_util::BodyExt;
    let mut read = 0;
    while let Some(Ok(frame)) = body.frame().await {
        read += frame.data_ref().map_or(0, Bytes::len);
        if read > limit {
            return;
        }
    }
}

/// The answer to a request beyond the in-flight budget. Nothing of it was published, and by
/// the time the client tries again the requests ahead of it have mostly been answered.
fn overloaded() -> Problem {
    metrics::counter!("herald_ingress_overloaded_total").increment(1);
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "Overloaded",
        "the ingress holds as many requests as its memory budget allows (MAX_IN_FLIGHT_BYTES); nothing was published",
    )
    .with_retry_after(1)
}

fn parse_json(body: &[u8]) -> Result<Json, Problem> {
    serde_json::from_slice(body)
        .map_err(|err| Problem::bad_request(format!("the body is not valid JSON: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requests_ids_are_version_7_distinct_and_in_the_order_made() {
        let (first, received_at) = stamp(100);
        let (second, _) = stamp(100);
        let ids: Vec<Uuid> = first.into_iter().chain(second).collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
        // Each id carries the time the request was received, to the millisecond, or later.
        let (seconds, nanos) = ids[0].get_timestamp().unwrap().to_unix();
        let millis = seconds as i128 * 1000 + nanos as i128 / 1_000_000;
        assert!(millis >= i128::from(received_at.as_millisecond()));
        assert_eq!(stamp(0).0, Vec::<Uuid>::new());
    }
}
