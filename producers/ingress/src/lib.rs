//! The ingress: HTTP in, Avro events on Kafka out.
//!
//! `POST /api/v1/events` takes one event or a batch, authenticates the caller (JWT), checks
//! the publish policy, validates every event strictly against its Avro schema, stamps the
//! envelope (the actor comes from the token, never the body), encodes and publishes. It
//! answers 202 only after the broker acknowledged every event of the request; when the
//! broker is down or slow it answers 503 with Retry-After within the publish deadline.
//! With an `Idempotency-Key`, retries publish nothing new (see [`idempotency`]).

pub mod admission;
mod answer;
mod catalog_api;
pub use catalog_api::openapi;
mod events_api;
pub mod idempotency;
mod personal;
pub mod policy;
mod prepare;
pub use prepare::TimeWindow;
pub mod sink;

/// Shared with every service's API; re-exported where the ingress first defined them.
pub use platform::{auth, problem};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use events::{Catalog, Codec};
use platform::contract::ContractArgs;
use platform::kafka::{KafkaArgs, TopicOverrides};
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use crate::admission::InFlight;
use crate::auth::{AuthArgs, Authenticator};
use crate::idempotency::IdempotencyStore;
use crate::policy::PublishPolicy;
use crate::problem::Problem;
use crate::sink::EventSink;

/// `herald ingress` settings. Every field is a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct IngressArgs {
    #[command(flatten)]
    pub auth: AuthArgs,
    /// How long a publish may wait for the broker's acknowledgement before the request is
    /// answered 503 (milliseconds).
    #[arg(long, env = "PUBLISH_DEADLINE_MS", default_value_t = 5000)]
    pub publish_deadline_ms: u64,
    /// Largest number of events in one request.
    #[arg(long, env = "MAX_BATCH_EVENTS", default_value_t = 1000)]
    pub max_batch_events: usize,
    /// Largest request body in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Bytes of request bodies the ingress holds while their events wait for the broker;
    /// a request beyond it gets 503 with Retry-After at once. Bounds memory under overload:
    /// the process holds about three times this (bodies, encoded events, librdkafka's
    /// copies) on top of its resting size.
    #[arg(long, env = "MAX_IN_FLIGHT_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_in_flight_bytes: usize,
    /// Whole-request timeout (milliseconds); longer than the publish deadline.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    #[command(flatten)]
    pub topics: TopicOverrides,
    /// How long Idempotency-Key records are kept (hours).
    #[arg(long, env = "IDEMPOTENCY_TTL_HOURS", default_value_t = 24)]
    pub idempotency_ttl_hours: u64,
    /// How far in the past an event's `occurred_at` may be, in days (older is refused with
    /// 422): backfills fit, year 0000 does not.
    #[arg(long, env = "OCCURRED_AT_MAX_AGE_DAYS", default_value_t = 3650)]
    pub occurred_at_max_age_days: u64,
    /// How far in the future an event's `occurred_at` may be, in seconds: the clock skew
    /// allowed to clients.
    #[arg(long, env = "OCCURRED_AT_MAX_AHEAD_SECS", default_value_t = 300)]
    pub occurred_at_max_ahead_secs: u64,
    /// Publish policy file (TOML); the built-in one (producers/ingress/publish-policy.toml)
    /// when unset.
    #[arg(long, env = "PUBLISH_POLICY_FILE")]
    pub publish_policy_file: Option<PathBuf>,
    #[command(flatten)]
    pub contract: ContractArgs,
}

/// Size and time limits of the API.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_body_bytes: usize,
    pub max_in_flight_bytes: usize,
    pub publish_deadline: Duration,
    pub request_timeout: Duration,
    pub idempotency_ttl: Duration,
    /// The window an event's `occurred_at` must fall in, around the time it is received.
    pub occurred_at: TimeWindow,
}

/// Everything a request needs.
pub struct AppState {
    pub codec: Codec,
    pub policy: PublishPolicy,
    /// Shared with the edge in front, so a token is checked once per process.
    pub auth: Arc<Authenticator>,
    pub sink: Arc<dyn EventSink>,
    pub store: Arc<dyn IdempotencyStore>,
    pub limits: Limits,
    /// Built from `limits.max_in_flight_bytes`.
    pub in_flight: InFlight,
    pub topics: Topics,
    /// Encrypts personal fields per data subject before they are published; `None`: they
    /// are published as sent.
    pub privacy: Option<Arc<platform::privacy::Privacy>>,
}

/// The Kafka name of each aggregate's topic, prefix and all, made once: a request names them
/// for every event it carries.
pub struct Topics {
    kafka: KafkaArgs,
    names: HashMap<String, Arc<str>>,
}

impl Topics {
    pub fn new(kafka: &KafkaArgs, catalog: &Catalog) -> Self {
        let names = catalog
            .topics()
            .into_iter()
            .map(|topic| (topic.to_string(), kafka.topic(topic).into()))
            .collect();
        Self {
            kafka: kafka.clone(),
            names,
        }
    }

    /// The topic `aggregate`'s events go to.
    pub fn name(&self, aggregate: &str) -> Arc<str> {
        match self.names.get(aggregate) {
            Some(name) => name.clone(),
            // Not reached while the names come from the catalog the events are checked
            // against; a name made here rather than a panic if a caller ever mixes catalogs.
            None => self.kafka.topic(aggregate).into(),
        }
    }
}

impl AppState {
    pub fn catalog(&self) -> &Arc<Catalog> {
        self.codec.catalog()
    }
}

impl IngressArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_events: self.max_batch_events,
            max_body_bytes: self.max_body_bytes,
            max_in_flight_bytes: self.max_in_flight_bytes,
            publish_deadline: Duration::from_millis(self.publish_deadline_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            idempotency_ttl: Duration::from_secs(self.idempotency_ttl_hours * 3600),
            occurred_at: TimeWindow {
                before: Duration::from_secs(self.occurred_at_max_age_days.saturating_mul(86_400)),
                after: Duration::from_secs(self.occurred_at_max_ahead_secs),
            },
        }
    }

    /// Whether the ingress's own settings hold together with `catalog`, connecting to
    /// nothing (`herald check` calls it, and so does [`connect`]); the publish policy.
    pub fn check(&self, catalog: &Catalog) -> anyhow::Result<PublishPolicy> {
        let policy = self.policy().context("PUBLISH_POLICY_FILE")?;
        policy
            .check_owners(catalog)
            .context("PUBLISH_POLICY_FILE")?;
        let limits = self.limits();
        anyhow::ensure!(
            limits.publish_deadline < limits.request_timeout,
            "PUBLISH_DEADLINE_MS must be shorter than REQUEST_TIMEOUT_MS, or requests time out before the broker can answer"
        );
        anyhow::ensure!(
            InFlight::holds(limits.max_in_flight_bytes, limits.max_body_bytes),
            "MAX_IN_FLIGHT_BYTES must be at least MAX_BODY_BYTES plus {} bytes, or the largest \
             request could never be admitted",
            admission::REQUEST_OVERHEAD_BYTES
        );
        self.topics.check().map_err(anyhow::Error::msg)?;
        Ok(policy)
    }

    pub fn policy(&self) -> anyhow::Result<PublishPolicy> {
        match &self.publish_policy_file {
            None => Ok(PublishPolicy::embedded()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(PublishPolicy::parse(&text)?)
            }
        }
    }
}

/// Connects to what the ingress needs (broker, database, registry) and creates missing topics.
pub async fn connect(
    args: &IngressArgs,
    kafka: &KafkaArgs,
    store: Arc<dyn IdempotencyStore>,
    auth: Arc<Authenticator>,
    privacy: Option<Arc<platform::privacy::Privacy>>,
) -> anyhow::Result<AppState> {
    let catalog = Arc::new(args.contract.catalog()?);
    let policy = args.check(&catalog)?;
    let limits = args.limits();
    let topics: Vec<String> = catalog
        .topics()
        .into_iter()
        .map(|t| kafka.topic(t))
        .collect();
    platform::kafka::ensure_topics(kafka, &topics, args.topics)
        .await
        .context("creating topics")?;
    let codec = args.contract.codec(catalog, kafka).await?;
    let publisher = platform::kafka::Publisher::new(kafka, limits.publish_deadline)?;
    Ok(AppState {
        topics: Topics::new(kafka, codec.catalog()),
        codec,
        policy,
        auth,
        sink: Arc::new(publisher),
        store,
        in_flight: InFlight::new(limits.max_in_flight_bytes),
        limits,
        privacy,
    })
}

/// The ingress API as a value, so tests call it without a socket.
pub fn router(state: Arc<AppState>) -> Router {
    let timeout = state.limits.request_timeout;
    Router::new()
        .route("/api/v1/event-types", get(catalog_api::event_types))
        .route("/api/v1/schemas", get(catalog_api::schemas))
        .route("/api/v1/schemas/{fingerprint}", get(catalog_api::schema))
        .route("/api/v1/events", post(events_api::post_events))
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                "no such route",
            )
        })
        .with_state(state)
        .layer(axum::middleware::map_response(
            problem::problem_for_bare_errors,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
}

/// The ingress as a service: its routes; ready while the broker answers; the hourly purge of
/// its expired idempotency keys; at shutdown, what the broker has not acknowledged yet is
/// flushed for a while.
pub struct Service {
    state: Arc<AppState>,
}

impl Service {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl platform::service::Service for Service {
    fn name(&self) -> &'static str {
        "ingress"
    }

    fn routes(&self) -> Router {
        router(self.state.clone())
    }

    fn probe(&self) -> Option<Arc<dyn platform::service::Probe>> {
        Some(Arc::new(BrokerProbe(self.state.clone())))
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> platform::service::Work {
        Box::pin(async move {
            let store = self.state.store.clone();
            let jobs = platform::jobs::Jobs::new().every(
                "purge-idempotency-keys",
                Duration::from_secs(3600),
                move || {
                    let store = store.clone();
                    async move { Ok(store.purge_expired(jiff::Timestamp::now()).await?) }
                },
            );
            jobs.run(shutdown.clone()).await;
            self.state.sink.drain(Duration::from_secs(5)).await;
            Ok(())
        })
    }
}

/// Ready while the Kafka cluster answers.
struct BrokerProbe(Arc<AppState>);

#[async_trait::async_trait]
impl platform::service::Probe for BrokerProbe {
    async fn ready(&self) -> Result<(), Problem> {
        if self.0.sink.ready().await {
            Ok(())
        } else {
            Err(Problem::unavailable(
                "the Kafka cluster is not reachable",
                5,
            ))
        }
    }
}
