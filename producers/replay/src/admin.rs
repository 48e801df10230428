//! Operators' views over HTTP, for the console and for scripts: every consumer group's lag,
//! per partition, in records and in seconds (`GET /api/v1/admin/consumers`), as `herald lag`
//! prints it. Admin only.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use platform::auth::Authenticator;
use platform::kafka::KafkaArgs;
use platform::kafka::groups::{self, Group, GroupError, PartitionLag};
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
    pub auth: Arc<Authenticator>,
}

/// The views as a service of the process that serves them.
pub struct Service(pub Arc<Admin>);

impl platform::service::Service for Service {
    fn name(&self) -> &'static str {
        "operations"
    }

    fn routes(&self) -> Router {
        Router::new()
            .route("/api/v1/admin/consumers", get(consumers))
            .with_state(self.0.clone())
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> platform::service::Work {
        Box::pin(async move {
            shutdown.cancelled().await;
            Ok(())
        })
    }
}

async fn consumers(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Problem> {
    let principal = admin.auth.authenticate(&headers)?;
    if !principal.roles.iter().any(|role| role == "admin") {
        return Err(Problem::forbidden("the consumers' lag is for admins"));
    }
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
