//! Where accepted events go. The ingress only needs "publish these records and tell me
//! where they landed, or fail"; Kafka is one implementation, memory another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use platform::kafka::{Delivery, OutgoingRecord, PublishError, Publisher};

#[async_trait]
pub trait EventSink: Send + Sync {
    /// `Ok` only when every record is durable, with deliveries in input order.
    async fn publish(&self, records: &[OutgoingRecord]) -> Result<Vec<Delivery>, PublishError>;
    /// Whether publishing can work right now.
    async fn ready(&self) -> bool;
    /// Waits for anything still queued, at shutdown.
    async fn drain(&self, _timeout: Duration) {}
}

#[async_trait]
impl EventSink for Publisher {
    async fn publish(&self, records: &[OutgoingRecord]) -> Result<Vec<Delivery>, PublishError> {
        let started = std::time::Instant::now();
        let result = self.publish_all(records).await;
        let outcome = match &result {
            Ok(_) => "acknowledged",
            Err(PublishError::Unknown) => "unknown",
            Err(_) => "refused",
        };
        // From handing a request's records to the producer to the broker's last ack.
        metrics::histogram!("herald_kafka_produce_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn ready(&self) -> bool {
        self.is_reachable(Duration::from_secs(1)).await
    }

    async fn drain(&self, timeout: Duration) {
        self.flush(timeout).await;
    }
}

/// Records kept in memory, one partition per topic, offsets counting from 0.
#[derive(Debug, Default)]
pub struct MemorySink {
    records: Mutex<Vec<(OutgoingRecord, Delivery)>>,
    offline: AtomicBool,
    acks_lost: AtomicBool,
}

impl MemorySink {
    /// While offline, publishing fails with an unknown outcome, as with a broker away.
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    /// While set, records are stored but the outcome is unknown, as when the broker wrote
    /// them and the acknowledgement was lost.
    pub fn set_acks_lost(&self, lost: bool) {
        self.acks_lost.store(lost, Ordering::SeqCst);
    }

    pub fn records(&self) -> Vec<(OutgoingRecord, Delivery)> {
        self.records.lock().expect("sink lock").clone()
    }
}

#[async_trait]
impl EventSink for MemorySink {
    async fn publish(&self, records: &[OutgoingRecord]) -> Result<Vec<Delivery>, PublishError> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(PublishError::Unknown);
        }
        let mut stored = self.records.lock().expect("sink lock");
        let mut next: HashMap<Arc<str>, i64> = HashMap::new();
        for (record, delivery) in stored.iter() {
            next.insert(record.topic.clone(), delivery.offset + 1);
        }
        let deliveries = records
            .iter()
            .map(|record| {
                let offset = next.entry(record.topic.clone()).or_insert(0);
                let delivery = Delivery {
                    partition: 0,
                    offset: *offset,
                };
                *offset += 1;
                stored.push((record.clone(), delivery));
                delivery
            })
            .collect();
        if self.acks_lost.load(Ordering::SeqCst) {
            return Err(PublishError::Unknown);
        }
        Ok(deliveries)
    }

    async fn ready(&self) -> bool {
        !self.offline.load(Ordering::SeqCst)
    }
}
