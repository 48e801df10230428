//! The audit log: every domain event, once, in an append-only table that shows tampering.
//!
//! `herald audit-log` consumes every domain topic (its own consumer group) and appends each
//! event, envelope and payload as canonical JSON, to `audit_log`: one row per `event_id`, so
//! a redelivered or replayed event changes nothing. Rows are hash-chained per
//! topic-partition ([`chain`]); `herald audit verify` walks every chain and names the first
//! row that was altered, removed or reordered. Admins query it over HTTP
//! (`GET /api/v1/audit`, [`api`]) and export time ranges as JSON lines ([`export`]).

pub mod api;
pub mod chain;
pub mod export;
pub mod integrity;
pub mod store;
pub mod verify;

use std::sync::Arc;
use tracing::Instrument as _;

use async_trait::async_trait;
use platform::auth::Authenticator;
use platform::consumer::{ConsumerArgs, Event, Handler, HandlerError, OrRetry, Runner};
use platform::contract::ContractArgs;
use platform::db::Database;
use platform::kafka::KafkaArgs;
use tokio::sync::{mpsc, oneshot};

use tokio_util::sync::CancellationToken;

use crate::chain::{Entry, chain_name};
use crate::store::AuditStore;

/// The consumer's name: its group is the topic prefix followed by this.
pub const NAME: &str = "audit-log";

/// Most entries written in one transaction.
const MAX_GROUP: usize = 5000;

/// The handler: a batch of one partition becomes rows of that partition's chain.
///
/// Batches of all partitions go through one writer task that puts whatever is waiting into
/// one transaction (group commit): a commit costs a disk flush, so fewer, larger commits
/// drain a backlog several times faster than one commit per partition batch, without
/// buffering more per partition. Each batch is acknowledged only after the commit that holds
/// it.
pub struct AuditLog {
    writer: mpsc::Sender<Pending>,
}

struct Pending {
    chain: String,
    entries: Vec<Entry>,
    done: oneshot::Sender<Result<(), String>>,
}

impl AuditLog {
    /// Starts the writer task (on the current runtime).
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        let (writer, pending) = mpsc::channel(256);
        tokio::spawn(write_groups(store, pending));
        Self { writer }
    }
}

async fn write_groups(store: Arc<dyn AuditStore>, mut pending: mpsc::Receiver<Pending>) {
    while let Some(first) = pending.recv().await {
        let mut size = first.entries.len();
        let mut group = vec![first];
        while size < MAX_GROUP {
            match pending.try_recv() {
                Ok(next) => {
                    size += next.entries.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let (batches, waiting): (Vec<_>, Vec<_>) = group
            .into_iter()
            .map(|p| ((p.chain, p.entries), p.done))
            .unzip();
        let result = store
            .append_all(batches)
            .await
            .map_err(|err| err.to_string());
        for done in waiting {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(Clone::clone));
        }
    }
}

#[async_trait]
impl Handler for AuditLog {
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let (done, result) = oneshot::channel();
        let pending = Pending {
            chain: chain_name(&first.topic, first.partition),
            entries: events.iter().map(Entry::from_event).collect(),
            done,
        };
        // The writer appends batches of several partitions in one transaction.
        let span = tracing::info_span!("append", otel.kind = "client", entries = events.len());
        async {
            self.writer.send(pending).await.or_retry()?;
            result.await.or_retry()?.or_retry()
        }
        .instrument(span)
        .await
    }
}

/// The audit log's parts, connected: its consumer and its query API.
pub struct Service {
    pub runner: Runner,
    pub store: Arc<dyn AuditStore>,
    pub api: Arc<api::AuditApi>,
}

impl Service {
    /// Migrates the store and prepares the consumer of every topic of the catalog.
    pub async fn connect(
        db: Database,
        kafka: &KafkaArgs,
        contract: &ContractArgs,
        consumer: &ConsumerArgs,
        auth: Arc<Authenticator>,
    ) -> anyhow::Result<Self> {
        let privacy = contract.privacy(Some(&db)).await?;
        let store: Arc<dyn AuditStore> = Arc::new(store::SqlStore::new(db).await?);
        let catalog = Arc::new(contract.catalog()?);
        let topics = catalog
            .topics()
            .into_iter()
            .map(|t| kafka.topic(t))
            .collect();
        let codec = Arc::new(contract.codec(catalog.clone(), kafka).await?);
        let handler = Arc::new(AuditLog::new(store.clone()));
        let runner = Runner::new(NAME, topics, kafka, consumer, codec, handler);
        Ok(Self {
            runner,
            api: Arc::new(api::AuditApi {
                store: store.clone(),
                auth,
                privacy,
                catalog,
                verifying: Default::default(),
                verified: Default::default(),
            }),
            store,
        })
    }

    pub fn router(&self) -> axum::Router {
        api::router(self.api.clone())
    }
}

/// The audit log as a service: its query API, and its consumer.
impl platform::service::Service for Service {
    fn name(&self) -> &'static str {
        "audit-log"
    }

    fn routes(&self) -> axum::Router {
        self.router()
    }

    fn exporter(&self) -> Option<Arc<dyn platform::export::Exporter>> {
        Some(self.api.clone())
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> platform::service::Work {
        Box::pin(async move { Ok(self.runner.run(shutdown).await?) })
    }
}
