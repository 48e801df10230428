//! Delivery outcomes as events: each notification that reaches an outcome on a channel (sent,
//! failed for good, skipped, dead) is published as a `notification.settled` event, so other
//! services (reports counts them) learn of it from the log rather than from this service's
//! tables.
//!
//! The delivery log is the outbox. A row records the `updated_at_us` of the outcome last
//! published; the relay publishes every settled row whose outcome changed since, then
//! records it. A crash between the broker's acknowledgement and that record publishes the
//! outcome again, and every replica's relay may publish the same outcome: its `event_id` is
//! derived from the outcome (event, channel, recipient, status, attempts), so consumers count
//! it once. A delivery redriven from the dead-letter topic that is then sent is two
//! outcomes, dead and then sent, as it happened.

use std::sync::Arc;
use std::time::Duration;

use platform::contract::Emitter;
use platform::kafka::Publisher;
use tokio_util::sync::CancellationToken;

pub use crate::domain::{OUTCOME_EVENT as EVENT_TYPE, Outcome};
use crate::store::NotifyStore;

/// Outcomes published per round; a full round is followed by the next at once.
const BATCH: u32 = 500;
/// How long after an outcome it is published, at most, when the broker is up.
const EVERY: Duration = Duration::from_secs(1);

/// Publishes settled outcomes from the delivery log until shutdown.
pub struct Relay {
    pub store: Arc<dyn NotifyStore>,
    pub emitter: Emitter,
    pub publisher: Publisher,
}

impl Relay {
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let pause = match self.round().await {
                Ok(published) if published == BATCH as usize => Duration::ZERO,
                Ok(_) => EVERY,
                Err(error) => {
                    tracing::warn!(
                        error = %format!("{error:#}"),
                        "delivery outcomes not published yet; trying again"
                    );
                    EVERY * 5
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Publishes one batch of unpublished outcomes; returns how many.
    pub async fn round(&self) -> anyhow::Result<usize> {
        let outcomes = self.store.unpublished_outcomes(BATCH).await?;
        if outcomes.is_empty() {
            return Ok(0);
        }
        let records = outcomes
            .iter()
            .map(|outcome| {
                self.emitter.record(
                    EVENT_TYPE,
                    outcome.event_id(),
                    &outcome.key.event_id.to_string(),
                    &outcome.data(),
                    outcome.settled_at_us,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.publisher.publish_all(&records).await?;
        self.store.outcomes_published(&outcomes).await?;
        metrics::counter!("herald_notify_outcomes_published_total").increment(records.len() as u64);
        Ok(outcomes.len())
    }
}
