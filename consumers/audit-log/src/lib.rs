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
pub mod store;
pub mod verify;

use std::sync::Arc;

use async_trait::async_trait;
use platform::auth::Authenticator;
use platform::consumer::{ConsumerArgs, Event, Handler, HandlerError, OrRetry, Runner};
use platform::contract::ContractArgs;
use platform::db::Database;
use platform::kafka::KafkaArgs;

use crate::chain::{Entry, chain_name};
use crate::store::AuditStore;

/// The consumer's name: its group is the topic prefix followed by this.
pub const NAME: &str = "audit-log";

/// The handler: a batch of one partition becomes rows of that partition's chain, in one
/// transaction.
pub struct AuditLog {
    store: Arc<dyn AuditStore>,
}

impl AuditLog {
    pub fn new(store: Arc<dyn AuditStore>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Handler for AuditLog {
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let entries = events.iter().map(Entry::from_event).collect();
        self.store
            .append(&chain_name(&first.topic, first.partition), entries)
            .await
            .or_retry()?;
        Ok(())
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
        let store: Arc<dyn AuditStore> = Arc::new(store::SqlStore::new(db).await?);
        let catalog = Arc::new(contract.catalog()?);
        let topics = catalog.topics().into_iter().map(|t| kafka.topic(t)).collect();
        let codec = Arc::new(contract.codec(catalog, kafka).await?);
        let handler = Arc::new(AuditLog::new(store.clone()));
        let runner = Runner::new(NAME, topics, kafka, consumer, codec, handler);
        Ok(Self {
            runner,
            api: Arc::new(api::AuditApi {
                store: store.clone(),
                auth,
            }),
            store,
        })
    }

    pub fn router(&self) -> axum::Router {
        api::router(self.api.clone())
    }
}
