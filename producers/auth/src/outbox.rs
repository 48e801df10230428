//! The transactional outbox: events are encoded and stored in the transaction that changes
//! the account, and the relay publishes them afterwards. A crash before the commit leaves
//! neither the change nor its event; a crash after it leaves the event in the outbox for
//! the next relay. A crash between the broker's acknowledgement and the delete publishes the
//! event again with the same `event_id`, which every consumer deduplicates.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use platform::contract::{EmitError, Emitter};
use platform::kafka::{OutgoingRecord, Publisher};
use platform::privacy::{Privacy, PrivacyError};
use platform::seal::SealingKey;
use serde_json::Value as Json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::{OutboxRecord, SqlStore};

/// Turns an event into an outbox row, encoded like every other event.
pub struct EventWriter {
    emitter: Emitter,
    /// Seals the fields that carry live secrets before they are encoded (outbox rows are
    /// copies of the log); without it such events cannot be written.
    sealing: Option<Arc<SealingKey>>,
    /// Encrypts personal fields for their data subject before they are encoded; `None`:
    /// they are written as they are.
    privacy: Option<Arc<Privacy>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Emit(#[from] EmitError),
    #[error("{0} carries a live secret, and SEALING_KEY is not set to seal it")]
    NoSealingKey(String),
    #[error("protecting the personal fields of {0}: {1}")]
    Privacy(String, #[source] PrivacyError),
}

pub const SOURCE: &str = "auth";

impl EventWriter {
    pub fn new(
        emitter: Emitter,
        sealing: Option<Arc<SealingKey>>,
        privacy: Option<Arc<Privacy>>,
    ) -> Self {
        Self {
            emitter,
            sealing,
            privacy,
        }
    }

    /// The outbox row of `event_type` about aggregate `key`, done by `actor`.
    pub async fn record(
        &self,
        event_type: &str,
        key: &str,
        actor: &str,
        data: &Json,
        now: jiff::Timestamp,
    ) -> Result<OutboxRecord, WriteError> {
        let mut data = Cow::Borrowed(data);
        if let Some(schema) = self.emitter.schema(event_type)
            && !schema.sealed.is_empty()
        {
            let key = self
                .sealing
                .as_ref()
                .ok_or_else(|| WriteError::NoSealingKey(event_type.into()))?;
            key.seal_fields(schema, data.to_mut());
        }
        if let Some(privacy) = &self.privacy
            && let Some(schema) = self.emitter.schema(event_type)
            && schema.personal.is_some()
        {
            privacy
                .protect_data(schema, actor, data.to_mut())
                .await
                .map_err(|err| WriteError::Privacy(event_type.into(), err))?;
        }
        let event_id = Uuid::now_v7();
        let at = micros(now);
        let record = self
            .emitter
            .record_by(actor, event_type, event_id, key, &data, at)?;
        Ok(OutboxRecord {
            event_id: event_id.to_string(),
            topic: record.topic.to_string(),
            record_key: key.into(),
            payload: record.payload,
            event_type: event_type.into(),
            created_at: at,
        })
    }
}

/// Publishes the outbox, oldest first, and deletes what the broker acknowledged.
pub struct Relay {
    store: Arc<SqlStore>,
    publisher: Publisher,
    /// Rung after a commit that queued events, so they leave at once rather than at the
    /// next poll.
    pub wake: Arc<Notify>,
    pub lease: Duration,
}

const BATCH: i64 = 200;
const POLL: Duration = Duration::from_secs(1);

impl Relay {
    pub fn new(store: Arc<SqlStore>, publisher: Publisher) -> Self {
        Self {
            store,
            publisher,
            wake: Arc::new(Notify::new()),
            lease: Duration::from_secs(15),
        }
    }

    /// Relays until `shutdown`; a failure is logged and tried again after a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.pass().await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => pause = Duration::from_millis(100),
                Err(err) => {
                    tracing::warn!(
                        err = format!("{err:#}"),
                        "outbox relay failed; trying again"
                    );
                    pause = (pause * 2).min(Duration::from_secs(5));
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Publishes one batch; how many events left.
    pub async fn pass(&self) -> anyhow::Result<usize> {
        let now = now_us();
        let rows = self
            .store
            .claim_outbox(now, now + self.lease.as_micros() as i64, BATCH)
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let records: Vec<OutgoingRecord> = rows
            .iter()
            .map(|row| {
                OutgoingRecord::event(
                    row.topic.as_str(),
                    row.record_key.clone().into_bytes(),
                    row.payload.clone(),
                    &row.event_type,
                    &row.event_id,
                    row.created_at / 1000,
                )
            })
            .collect();
        self.publisher.publish_all(&records).await?;
        let ids: Vec<String> = rows.into_iter().map(|row| row.event_id).collect();
        self.store.delete_outbox(&ids).await?;
        metrics::counter!("herald_auth_outbox_published_total").increment(ids.len() as u64);
        Ok(ids.len())
    }
}

/// Unix microseconds, how the auth tables keep time.
pub use platform::clock::{micros, now_us};
