//! Operators' views over HTTP, for the console and for scripts, admin only:
//!
//! - every consumer group's lag, per partition, in records and in seconds
//!   (`GET /api/v1/admin/consumers`), as `herald lag` prints it;
//! - a group's dead letters, decoded, and redriving them
//!   (`GET /api/v1/admin/dead-letters/{group}`, `POST .../redrive`), as `herald dlq` does.
//!   A redrive names the letters the operator saw and confirmed, by their place on the
//!   dead-letter topic: a letter redriven since (a stale page) or one that does not exist (a
//!   forged request) refuses the whole request, and nothing is published;
//! - the alerts this process raised lately: its 5xx answers, its dead letters and handler
//!   panics (`GET /api/v1/admin/alerts`), as the alert webhook words them.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use events::Codec;
use platform::auth::Authenticator;
use platform::kafka::KafkaArgs;
use platform::kafka::groups::{self, Group, GroupError, PartitionLag};

use crate::dlq::{DeadLetters, Letter};
use platform::openapi::{Api, Operation};
use platform::problem::Problem;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// How long the broker has to answer each question.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The groups of this deployment (their names start with its topic prefix), or the one
/// named `only` (a full name), each with its lag on every partition it has committed on.
/// Blocking: call it from a blocking thread.
pub fn gather_lag(
    kafka: &KafkaArgs,
    only: Option<&str>,
) -> Result<Vec<(Group, Vec<PartitionLag>)>, GroupError> {
    let mut rows = Vec::new();
    for group in groups::list(kafka, TIMEOUT)? {
        let wanted = match only {
            Some(name) => group.name == name,
            None => group.name.starts_with(&kafka.topic_prefix),
        };
        if wanted {
            let lags = groups::lag(kafka, &group.name, TIMEOUT)?;
            rows.push((group, lags));
        }
    }
    if let Some(name) = only
        && rows.is_empty()
    {
        return Err(GroupError::Unknown(name.to_string()));
    }
    Ok(rows)
}

/// The lag of `rows` as the API answers it (pure): names without the topic prefix, totals.
pub fn lag_json(prefix: &str, rows: &[(Group, Vec<PartitionLag>)], at: jiff::Timestamp) -> Value {
    let groups: Vec<Value> = rows
        .iter()
        .map(|(group, partitions)| {
            let oldest = partitions
                .iter()
                .filter_map(|p| p.lag_seconds)
                .fold(0.0_f64, f64::max);
            json!({
                "group": group.name.strip_prefix(prefix).unwrap_or(&group.name),
                "state": group.state,
                "members": group.members,
                "lag": partitions.iter().map(|p| p.lag).sum::<i64>(),
                "lag_seconds": oldest,
                "committed": partitions.iter().map(|p| p.committed).sum::<i64>(),
                "partitions": partitions.iter().map(|p| json!({
                    "topic": p.topic.strip_prefix(prefix).unwrap_or(&p.topic),
                    "partition": p.partition,
                    "committed": p.committed,
                    "end": p.end,
                    "lag": p.lag,
                    "lag_seconds": p.lag_seconds,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"at": at.to_string(), "groups": groups})
}

pub struct Admin {
    pub kafka: KafkaArgs,
    pub codec: Arc<Codec>,
    pub auth: Arc<Authenticator>,
    /// One redrive at a time in this process: two requests naming the same letter cannot
    /// both find it waiting (replicas may still race; consumers absorb a repeat by event id).
    pub redriving: tokio::sync::Mutex<()>,
}

impl Admin {
    fn admin_only(&self, headers: &HeaderMap) -> Result<(), Problem> {
        let principal = self.auth.authenticate(headers)?;
        if principal.roles.iter().any(|role| role == "admin") {
            Ok(())
        } else {
            Err(Problem::forbidden("the operators' views are for admins"))
        }
    }
}

/// Marks a redrive may name at once.
const MAX_MARKS: usize = 1000;

/// The views as a service of the process that serves them.
pub struct Service(pub Arc<Admin>);

impl platform::service::Service for Service {
    fn name(&self) -> &'static str {
        "operations"
    }

    fn routes(&self) -> Router {
        Router::new()
            .route("/api/v1/admin/consumers", get(consumers))
            .route("/api/v1/admin/dead-letters/{group}", get(dead_letters))
            .route("/api/v1/admin/dead-letters/{group}/redrive", post(redrive))
            .route("/api/v1/admin/alerts", get(alerts))
            .with_state(self.0.clone())
            .merge(crate::console::routes())
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> platform::service::Work {
        Box::pin(async move {
            shutdown.cancelled().await;
            Ok(())
        })
    }
}

async fn alerts(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Problem> {
    admin.admin_only(&headers)?;
    Ok(axum::Json(json!({"alerts": platform::alerts::recent()})))
}

async fn consumers(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Problem> {
    admin.admin_only(&headers)?;
    let kafka = admin.kafka.clone();
    let rows = tokio::task::spawn_blocking(move || gather_lag(&kafka, None))
        .await
        .map_err(|err| Problem::internal(&err))?
        .map_err(|err| {
            tracing::warn!(%err, "reading the consumer groups failed");
            Problem::unavailable("the event log is not reachable; retry shortly", 5)
        })?;
    Ok(axum::Json(lag_json(
        &admin.kafka.topic_prefix,
        &rows,
        jiff::Timestamp::now(),
    )))
}

/// A group's name as the path gives it, if it can name one (the characters of a topic).
fn group_name(group: &str) -> Result<&str, Problem> {
    let fits = (1..=200).contains(&group.len())
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if fits {
        Ok(group)
    } else {
        Err(Problem::bad_request(
            "a group's name is 1 to 200 letters, digits, dots, dashes and underscores (GET /api/v1/admin/consumers lists them)",
        ))
    }
}

async fn read_letters(admin: &Admin, group: &str) -> Result<DeadLetters, Problem> {
    DeadLetters::read(&admin.kafka, &admin.codec, group)
        .await
        .map_err(|err| {
            tracing::warn!(%err, "reading dead letters failed");
            Problem::unavailable("the event log is not reachable; retry shortly", 5)
        })
}

/// One letter as the API shows it: where it came from, why it failed, the event decoded.
fn letter_json(prefix: &str, letter: &Letter, redriven: bool, codec: &Codec) -> Value {
    let event = codec.decode_text(&letter.payload).ok().map(|decoded| {
        let envelope = &decoded.envelope;
        json!({
            "event_id": envelope.event_id.to_string(),
            "event_type": envelope.event_type,
            "occurred_at": envelope.occurred_at.to_string(),
            "actor": envelope.actor,
            "source": envelope.source,
            "data": serde_json::from_str::<Value>(&decoded.data).unwrap_or(Value::Null),
        })
    });
    json!({
        "mark": letter.mark(),
        "event_id": letter.event_id,
        "event_type": letter.event_type,
        "topic": letter.topic.strip_prefix(prefix).unwrap_or(&letter.topic),
        "from": format!("{}@{}", letter.source_partition, letter.source_offset),
        "error": letter.error,
        "attempts": letter.attempts.parse::<u64>().ok(),
        "redriven": redriven,
        "event": event,
    })
}

async fn dead_letters(
    State(admin): State<Arc<Admin>>,
    Path(group): Path<String>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Problem> {
    admin.admin_only(&headers)?;
    let group = group_name(&group)?;
    let dead = read_letters(&admin, group).await?;
    let prefix = &admin.kafka.topic_prefix;
    let letters: Vec<Value> = dead
        .letters
        .iter()
        .map(|l| letter_json(prefix, l, dead.redriven.contains(&l.mark()), &admin.codec))
        .collect();
    let waiting = dead
        .letters
        .iter()
        .filter(|l| !dead.redriven.contains(&l.mark()))
        .count();
    Ok(axum::Json(
        json!({"group": group, "waiting": waiting, "letters": letters}),
    ))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveRequest {
    /// The letters to publish again, by their place on the dead-letter topic (`mark`).
    marks: Vec<String>,
}

async fn redrive(
    State(admin): State<Arc<Admin>>,
    Path(group): Path<String>,
    headers: HeaderMap,
    body: Result<axum::Json<RedriveRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<axum::Json<Value>, Problem> {
    admin.admin_only(&headers)?;
    let group = group_name(&group)?;
    let axum::Json(request) = body.map_err(|err| Problem::bad_request(err.body_text()))?;
    if request.marks.is_empty() || request.marks.len() > MAX_MARKS {
        return Err(Problem::bad_request(format!(
            "marks names 1 to {MAX_MARKS} dead letters (their `mark`)"
        )));
    }
    let _one_at_a_time = admin.redriving.lock().await;
    let dead = read_letters(&admin, group).await?;
    let chosen = choose_marks(&dead, &request.marks)?;
    let places = dead.redrive(&admin.kafka, &chosen).await.map_err(|err| {
        tracing::warn!(%err, "a redrive failed");
        Problem::unavailable(
            "the event log did not take the redrive; list the letters again and retry",
            5,
        )
    })?;
    let redriven: Vec<Value> = chosen
        .iter()
        .zip(places)
        .map(|(letter, to)| json!({"mark": letter.mark(), "event_id": letter.event_id, "to": to}))
        .collect();
    Ok(axum::Json(json!({"group": group, "redriven": redriven})))
}

/// The letters `marks` names, each waiting to be redriven; else the problem that refuses
/// the whole request (pure).
fn choose_marks<'a>(dead: &'a DeadLetters, marks: &[String]) -> Result<Vec<&'a Letter>, Problem> {
    let mut chosen: Vec<&Letter> = Vec::with_capacity(marks.len());
    for mark in marks {
        let Some(letter) = dead.letters.iter().find(|l| l.mark() == *mark) else {
            return Err(Problem::not_found(format!(
                "no dead letter {mark:?} in this group: list them again"
            )));
        };
        if dead.redriven.contains(mark) {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "already-redriven",
                "Redriven already",
                format!(
                    "dead letter {mark} was redriven since this list was read: nothing was redriven; list them again"
                ),
            ));
        }
        if letter.topic.is_empty() {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no-origin",
                "No origin",
                format!(
                    "dead letter {mark} does not say where it came from: it cannot be redriven"
                ),
            ));
        }
        if !chosen.iter().any(|c| c.mark() == *mark) {
            chosen.push(letter);
        }
    }
    Ok(chosen)
}

/// The routes' part of the API reference.
pub fn openapi() -> Api {
    let partition = json!({"type": "object", "required": ["topic", "partition", "committed", "end", "lag"], "properties": {
        "topic": {"type": "string"}, "partition": {"type": "integer"},
        "committed": {"type": "integer", "description": "the next offset the group reads"},
        "end": {"type": "integer"}, "lag": {"type": "integer", "description": "records not read yet"},
        "lag_seconds": {"type": ["number", "null"], "description": "age of the oldest record not read yet; null when it could not be read in time"}}});
    Api {
        tag: "consumers",
        description: "Operators' views of the consumer groups.",
        operations: vec![
            Operation::get("/api/v1/admin/consumers", "Consumer groups' lag")
                .bearer("admin")
                .describe("Every consumer group of this deployment with its lag on each partition it has committed on, in records and in seconds, as `herald lag` prints it. A client that asks again computes each group's throughput from the change in `committed`.")
                .ok(200, "The groups", json!({"type": "object", "required": ["at", "groups"], "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "groups": {"type": "array", "items": {"type": "object", "required": ["group", "state", "members", "lag", "committed", "partitions"], "properties": {
                        "group": {"type": "string"}, "state": {"type": "string"}, "members": {"type": "integer"},
                        "lag": {"type": "integer"}, "lag_seconds": {"type": "number"}, "committed": {"type": "integer"},
                        "partitions": {"type": "array", "items": partition}}}}}}))
                .problem(403, "Not an admin")
                .problem(503, "The event log is not reachable"),
            Operation::get("/api/v1/admin/dead-letters/{group}", "A group's dead letters")
                .bearer("admin")
                .describe("Every dead letter of the group, oldest first: its place on the dead-letter topic (`mark`), the event decoded, where it came from, the error and attempts, and whether it was redriven. A group that never dead-lettered anything has none.")
                .path_param("group", json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,200}$"}), "the consumer group, by its name without the topic prefix (`audit-log`)")
                .ok(200, "The letters", json!({"type": "object", "required": ["group", "waiting", "letters"], "properties": {
                    "group": {"type": "string"}, "waiting": {"type": "integer"},
                    "letters": {"type": "array", "items": {"type": "object", "required": ["mark", "topic", "error", "redriven"], "properties": {
                        "mark": {"type": "string"}, "event_id": {"type": ["string", "null"]}, "event_type": {"type": ["string", "null"]},
                        "topic": {"type": "string"}, "from": {"type": "string"}, "error": {"type": "string"},
                        "attempts": {"type": ["integer", "null"]}, "redriven": {"type": "boolean"},
                        "event": {"type": ["object", "null"]}}}}}}))
                .problem(400, "Not a group's name")
                .problem(403, "Not an admin")
                .problem(503, "The event log is not reachable"),
            Operation::post("/api/v1/admin/dead-letters/{group}/redrive", "Redrive dead letters")
                .bearer("admin")
                .describe("Publishes the named dead letters again to their original topics (the same event ids, which every consumer deduplicates) and records each redrive, as `herald dlq redrive` does. Name the letters seen and confirmed, by `mark`: one redriven since (a stale list) or one that does not exist refuses the whole request, and nothing is published.")
                .path_param("group", json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,200}$"}), "the consumer group, by its name without the topic prefix")
                .json_body(json!({"type": "object", "required": ["marks"], "additionalProperties": false, "properties": {
                    "marks": {"type": "array", "minItems": 1, "maxItems": MAX_MARKS, "items": {"type": "string"}}}}))
                .ok(200, "What was published again, and where", json!({"type": "object", "required": ["group", "redriven"], "properties": {
                    "group": {"type": "string"},
                    "redriven": {"type": "array", "items": {"type": "object", "properties": {
                        "mark": {"type": "string"}, "event_id": {"type": ["string", "null"]}, "to": {"type": "string"}}}}}}))
                .problem(400, "A malformed body or group name")
                .problem(403, "Not an admin")
                .problem(404, "No such dead letter in the group")
                .problem(409, "A letter was redriven since it was listed")
                .problem(422, "A letter does not say where it came from")
                .problem(503, "The event log is not reachable"),
            Operation::get("/api/v1/admin/alerts", "Recent alerts")
                .bearer("admin")
                .describe("The last alerts this process raised, newest first: its 5xx answers, the dead letters and handler panics of the consumers it runs. Kept in memory (the last 100), whether or not an alert webhook is configured; `herald up` runs every service in one process, so it sees them all.")
                .ok(200, "The alerts", json!({"type": "object", "required": ["alerts"], "properties": {
                    "alerts": {"type": "array", "items": {"type": "object", "required": ["at", "kind", "what", "detail"], "properties": {
                        "at": {"type": "string", "format": "date-time"},
                        "kind": {"enum": ["server_error", "dead_letter", "handler_panic"]},
                        "what": {"type": "string", "description": "what failed, as alerts are grouped"},
                        "detail": {"type": "string", "description": "the alert in words, with where to look"}}}}}}))
                .problem(403, "Not an admin"),
            Operation::get("/console", "The operator console")
                .public()
                .describe("A page for admins in the browser: consumer groups' lag and throughput, dead letters to browse and redrive, the audit chains and their verification, the report runs, recent alerts. The page holds no data: its script signs in with the auth service and calls the admin APIs above with the token.")
                .content(200, "The page", "text/html", json!({"type": "string"})),
            Operation::get("/console/console.js", "The console's script")
                .public()
                .content(200, "The script", "text/javascript", json!({"type": "string"})),
            Operation::get("/console/console.css", "The console's style")
                .public()
                .content(200, "The style", "text/css", json!({"type": "string"})),
        ],
        schemas: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_json_names_groups_and_topics_without_the_prefix_and_sums_them() {
        let group = Group {
            name: "t1.audit-log".into(),
            state: "Stable".into(),
            members: 2,
        };
        let lag = |partition, committed, end, seconds| PartitionLag {
            topic: "t1.orders".into(),
            partition,
            committed,
            end,
            lag: end - committed,
            lag_seconds: seconds,
        };
        let rows = vec![(group, vec![lag(0, 10, 15, Some(2.5)), lag(1, 7, 7, None)])];
        let at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let body = lag_json("t1.", &rows, at);
        assert_eq!(body["groups"][0]["group"], "audit-log");
        assert_eq!(body["groups"][0]["lag"], 5);
        assert_eq!(body["groups"][0]["committed"], 17);
        assert_eq!(body["groups"][0]["lag_seconds"], 2.5);
        assert_eq!(body["groups"][0]["partitions"][0]["topic"], "orders");
        assert_eq!(
            body["groups"][0]["partitions"][1]["lag_seconds"],
            Value::Null
        );
        assert_eq!(body["at"], "2027-01-15T08:00:00Z");
    }
}
