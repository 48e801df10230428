//! The consumer runtime: a consumer is a [`Handler`]; the runtime owns Kafka.
//!
//! What it guarantees (DESIGN.md, "Delivery semantics"):
//! - at-least-once: an offset is stored only after the handler said the effect of that record
//!   (and of every earlier record of its partition) is durable; stored offsets are committed
//!   every second, on revocation and on shutdown;
//! - order: each partition is handled by one task, in offset order; partitions run in parallel;
//! - a transient failure ([`HandlerError::Retry`]) is retried in place with capped, jittered
//!   exponential backoff, never skipped; a permanent one ([`HandlerError::Reject`]) or a record
//!   that does not decode goes to the group's dead-letter topic `<group>.dlq` with headers
//!   naming the error, the original position and the attempt count, and the partition moves on;
//! - shutdown: fetching stops, in-flight batches finish, offsets are committed synchronously,
//!   all within one deadline; a handler stuck past it is abandoned (its records are redelivered
//!   to the next owner, never lost).
//!
//! Handlers receive batches of consecutive events of one partition, so a store can write a
//! batch in one transaction. They must be idempotent by `event_id`: after a crash or a
//! rebalance the same events can arrive again.

mod backoff;
pub mod health;
mod revealing;
mod runner;
mod worker;

use std::fmt::Display;
use std::time::Duration;

use async_trait::async_trait;
pub use backoff::backoff;
use events::Envelope;
pub use revealing::{Revealer, Revealing};
pub use runner::{Runner, RunnerError};

/// One event as a handler sees it: plain data, no Kafka types.
#[derive(Debug, Clone)]
pub struct Event {
    /// The full topic name (with any prefix).
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record key: the aggregate id.
    pub key: Option<String>,
    pub envelope: Envelope,
    /// The payload, resolved to the newest schema version of its event type.
    pub data: serde_json::Value,
    /// The schema version the event was written with.
    pub written_with: u32,
    /// W3C trace context from the record headers, when the producer sent one.
    pub traceparent: Option<String>,
}

/// How the runtime must treat a failed batch. Chosen at each `?` with [`OrRetry`] or
/// [`OrReject`], never by a blanket `From`.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Transient (database away, timeout): try the same batch again later.
    #[error("transient: {0}")]
    Retry(#[source] Cause),
    /// Permanent (the event can never be applied): dead-letter it and move on.
    #[error("permanent: {0}")]
    Reject(#[source] Cause),
}

/// Why a batch failed, with the whole chain of causes: shown as `outer: inner: innermost`
/// (in logs and in the dead-letter record's header), and kept as the error's source.
#[derive(Debug)]
pub struct Cause(Box<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self(cause.into())
    }
}

impl Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            // An error that shows its source in its own message is not repeated.
            let text = cause.to_string();
            if !shown.ends_with(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&shown)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<String> for Cause {
    fn from(text: String) -> Self {
        Self(text.into())
    }
}

impl From<&str> for Cause {
    fn from(text: &str) -> Self {
        Self(text.into())
    }
}

/// `.or_retry()?`: this failure is transient.
pub trait OrRetry<T> {
    fn or_retry(self) -> Result<T, HandlerError>;
}

/// `.or_reject()?`: this failure is permanent for the event at hand.
pub trait OrReject<T> {
    fn or_reject(self) -> Result<T, HandlerError>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>> OrRetry<T> for Result<T, E> {
    fn or_retry(self) -> Result<T, HandlerError> {
        self.map_err(|err| HandlerError::Retry(Cause::new(err)))
    }
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>> OrReject<T> for Result<T, E> {
    fn or_reject(self) -> Result<T, HandlerError> {
        self.map_err(|err| HandlerError::Reject(Cause::new(err)))
    }
}

/// A consumer's business logic.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Applies consecutive events of one partition. `Ok` means every effect is durable. On
    /// `Reject` for a batch of several events the runtime retries them one by one to find the
    /// event at fault, so a handler need not.
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError>;

    /// Where a newly assigned partition starts. A handler that keeps its own offsets
    /// atomically with its effects (the search index, in its commits) answers from them;
    /// the default is the group's committed offset. Called on the polling thread: answer
    /// from memory.
    fn resume_from(&self, _topic: &str, _partition: i32) -> Resume {
        Resume::Committed
    }
}

/// Where a partition starts when assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The group's committed offset (the earliest without one).
    Committed,
    /// The partition's first record.
    Beginning,
    /// This offset.
    At(i64),
}

/// Defaults of [`ConsumerArgs`], shared by its flags and its `Default`.
mod defaults {
    pub const MAX_BATCH: usize = 128;
    pub const MAX_IN_FLIGHT: usize = 8;
    pub const SHUTDOWN_MS: u64 = 10_000;
    pub const SESSION_TIMEOUT_MS: u64 = 10_000;
    pub const PREFETCH_KB: u64 = 128;
    pub const MAX_BACKOFF_MS: u64 = 30_000;
}

/// Settings of one consumer group member. Every consumer service flattens this.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// Consumer group id; default: the topic prefix followed by the consumer's name. Every
    /// process with the same group shares the partitions.
    #[arg(long, env = "CONSUMER_GROUP")]
    pub group: Option<String>,
    /// Most events of one partition handed to the handler at once; each partition buffers
    /// four batches. Memory grows with it times the partitions assigned.
    #[arg(long, env = "CONSUMER_MAX_BATCH", default_value_t = defaults::MAX_BATCH)]
    pub max_batch: usize,
    /// Batches handled at once over all partitions (bounds memory and database load).
    #[arg(long, env = "CONSUMER_MAX_IN_FLIGHT", default_value_t = defaults::MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// How long a stopping consumer may take to finish in-flight work and commit.
    #[arg(long, env = "CONSUMER_SHUTDOWN_MS", default_value_t = defaults::SHUTDOWN_MS)]
    pub shutdown_ms: u64,
    /// Group session timeout: how soon a crashed member's partitions move to the others.
    #[arg(long, env = "CONSUMER_SESSION_TIMEOUT_MS", default_value_t = defaults::SESSION_TIMEOUT_MS)]
    pub session_timeout_ms: u64,
    /// Records prefetched from the broker per partition, in KiB: with many partitions this is
    /// most of the consumer's memory.
    #[arg(long, env = "CONSUMER_PREFETCH_KB", default_value_t = defaults::PREFETCH_KB)]
    pub prefetch_kb: u64,
    /// Longest wait between two retries of a failing batch.
    #[arg(long, env = "CONSUMER_MAX_BACKOFF_MS", default_value_t = defaults::MAX_BACKOFF_MS)]
    pub max_backoff_ms: u64,
}

impl Default for ConsumerArgs {
    fn default() -> Self {
        Self {
            group: None,
            max_batch: defaults::MAX_BATCH,
            max_in_flight: defaults::MAX_IN_FLIGHT,
            shutdown_ms: defaults::SHUTDOWN_MS,
            session_timeout_ms: defaults::SESSION_TIMEOUT_MS,
            prefetch_kb: defaults::PREFETCH_KB,
            max_backoff_ms: defaults::MAX_BACKOFF_MS,
        }
    }
}

impl ConsumerArgs {
    pub fn shutdown_deadline(&self) -> Duration {
        Duration::from_millis(self.shutdown_ms)
    }
}

/// Record headers the runtime writes on dead letters.
pub mod dlq_headers {
    pub const ERROR: &str = "herald.dlq.error";
    pub const TOPIC: &str = "herald.dlq.topic";
    pub const PARTITION: &str = "herald.dlq.partition";
    pub const OFFSET: &str = "herald.dlq.offset";
    pub const ATTEMPTS: &str = "herald.dlq.attempts";
    pub const GROUP: &str = "herald.dlq.group";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_its_whole_cause() {
        let failed: Result<(), anyhow::Error> =
            Err(anyhow::Error::new(std::io::Error::other("disk full")).context("writing the row"));
        let HandlerError::Retry(cause) = failed.or_retry().unwrap_err() else {
            panic!("not a retry");
        };
        assert_eq!(cause.to_string(), "writing the row: disk full");
        let source = std::error::Error::source(&cause).expect("the cause is kept, typed");
        assert_eq!(source.to_string(), "disk full");
        // A message that already shows its source is not repeated.
        #[derive(Debug, thiserror::Error)]
        #[error("store: {0}")]
        struct Store(#[from] std::io::Error);
        let failed: Result<(), Store> = Err(std::io::Error::other("disk full").into());
        assert_eq!(
            failed.or_retry().unwrap_err().to_string(),
            "transient: store: disk full"
        );
        let rejected: Result<(), String> = Err("no such order".into());
        assert_eq!(
            rejected.or_reject().unwrap_err().to_string(),
            "permanent: no such order"
        );
    }
}
