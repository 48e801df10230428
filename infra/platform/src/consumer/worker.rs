//! One task per assigned partition: takes records in offset order, hands decoded batches to
//! the handler, dead-letters what cannot be applied, and publishes how far it got.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use events::Codec;
use futures_util::FutureExt as _;
use metrics::{Counter, Gauge, Histogram};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{Event, Handler, HandlerError, backoff, dlq_headers};
use crate::kafka::{OutgoingRecord, Publisher, ReadRecord as Record};
use crate::trace::TraceContext;

/// Where records that cannot be applied go.
pub(super) struct DeadLetters {
    pub publisher: Publisher,
    pub topic: String,
    pub group: String,
    /// The group as `herald dlq` takes it: without the topic prefix.
    pub dlq_name: String,
}

/// Everything a partition task shares with the others.
pub(super) struct Shared {
    pub handler: Arc<dyn Handler>,
    pub codec: Arc<Codec>,
    pub dead_letters: DeadLetters,
    pub max_batch: usize,
    pub max_backoff: Duration,
    /// Batches decoded and handled at once, over all partitions: what bounds memory (a
    /// partition waiting for a permit holds only its raw records).
    pub in_flight: tokio::sync::Semaphore,
}

/// The task of one partition. `progress` holds the next offset to commit (-1: none yet).
pub(super) struct Worker {
    pub shared: Arc<Shared>,
    pub topic: String,
    pub partition: i32,
    pub rx: mpsc::Receiver<Record>,
    pub progress: Arc<AtomicI64>,
    /// Finish the batch at hand, take no more.
    pub stop: CancellationToken,
    /// Give up even in the middle of a retry (the shutdown deadline passed).
    pub abort: CancellationToken,
}

/// The shutdown deadline passed while a batch was still failing: its records stay
/// uncommitted and go to whoever owns the partition next.
struct Aborted;

enum Outcome {
    Applied,
    Rejected { reason: String, attempts: u32 },
}

/// Attempts at a batch whose handler panics before the panic counts as the events' fault.
pub(super) const PANIC_ATTEMPTS: u32 = 3;

struct Meters {
    processed: Counter,
    panics: Counter,
    dead_lettered: Counter,
    retried: Counter,
    latency: Histogram,
    freshness: Gauge,
}

impl Meters {
    fn new(group: &str, topic: &str, partition: i32) -> Self {
        let labels = [
            ("group", group.to_string()),
            ("topic", topic.to_string()),
            ("partition", partition.to_string()),
        ];
        Self {
            processed: metrics::counter!("herald_consumer_processed_total", &labels),
            panics: metrics::counter!("herald_consumer_handler_panics_total", &labels),
            dead_lettered: metrics::counter!("herald_consumer_dead_lettered_total", &labels),
            retried: metrics::counter!("herald_consumer_retried_total", &labels),
            latency: metrics::histogram!("herald_consumer_handler_seconds", &labels),
            freshness: metrics::gauge!("herald_consumer_freshness_seconds", &labels),
        }
    }
}

impl Worker {
    pub async fn run(mut self) {
        let meters = Meters::new(&self.shared.dead_letters.group, &self.topic, self.partition);
        let mut batch = Vec::with_capacity(self.shared.max_batch);
        loop {
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                record = self.rx.recv() => match record {
                    Some(record) => record,
                    None => return,
                },
            };
            // The batch is taken only once it may run: a partition waiting for its turn holds
            // one record beyond its channel, not a batch more.
            let _permit = tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                permit = self.shared.in_flight.acquire() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            batch.push(first);
            while batch.len() < self.shared.max_batch {
                match self.rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
            let records = std::mem::take(&mut batch);
            if self.process(records, &meters).await.is_err() {
                tracing::warn!(
                    topic = %self.topic,
                    partition = self.partition,
                    "shutdown deadline passed with a batch still failing; it stays uncommitted"
                );
                return;
            }
        }
    }

    fn next_offset(&self) -> i64 {
        self.progress.load(Ordering::Acquire)
    }

    fn advance(&self, offset: i64) {
        self.progress.store(offset + 1, Ordering::Release);
    }

    /// Applies a batch in offset order: runs of decodable records go to the handler together,
    /// undecodable ones to the dead-letter topic in between.
    async fn process(&self, records: Vec<Record>, meters: &Meters) -> Result<(), Aborted> {
        let mut run: Vec<(Record, Event)> = Vec::with_capacity(records.len());
        for record in records {
            // Already applied in this assignment (a refetch after pause or seek).
            if record.offset < self.next_offset() {
                continue;
            }
            match self.decode(&record) {
                Ok(event) => run.push((record, event)),
                Err(reason) => {
                    self.apply(std::mem::take(&mut run), meters).await?;
                    self.dead_letter(&record, &reason, 1, meters).await?;
                }
            }
        }
        self.apply(run, meters).await
    }

    fn decode(&self, record: &Record) -> Result<Event, String> {
        let payload = record
            .payload
            .as_deref()
            .ok_or("the record has no payload")?;
        let decoded = self
            .shared
            .codec
            .decode(payload)
            .map_err(|err| format!("undecodable: {err}"))?;
        let key = match &record.key {
            None => None,
            Some(bytes) => Some(
                String::from_utf8(bytes.clone())
                    .map_err(|_| "the record key is not UTF-8".to_string())?,
            ),
        };
        let traceparent = record
            .header("traceparent")
            .and_then(|value| std::str::from_utf8(value).ok())
            .map(str::to_string);
        Ok(Event {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            key,
            envelope: decoded.envelope,
            data: decoded.data,
            written_with: decoded.written_with.version,
            traceparent,
        })
    }

    /// Applies a run of decoded events; if the handler rejects the run, applies them one by
    /// one so only the event at fault is dead-lettered.
    async fn apply(&self, run: Vec<(Record, Event)>, meters: &Meters) -> Result<(), Aborted> {
        let Some((last, _)) = run.last() else {
            return Ok(());
        };
        let last_offset = last.offset;
        let (records, events): (Vec<Record>, Vec<Event>) = run.into_iter().unzip();
        match self.attempt(&events, meters).await? {
            Outcome::Applied => {
                self.advance(last_offset);
                return Ok(());
            }
            Outcome::Rejected { reason, attempts } if events.len() == 1 => {
                return self
                    .dead_letter(&records[0], &reason, attempts, meters)
                    .await;
            }
            Outcome::Rejected { .. } => {}
        }
        for (record, event) in records.iter().zip(events) {
            match self.attempt(std::slice::from_ref(&event), meters).await? {
                Outcome::Applied => self.advance(record.offset),
                Outcome::Rejected { reason, attempts } => {
                    self.dead_letter(record, &reason, attempts, meters).await?;
                }
            }
        }
        Ok(())
    }

    /// Calls the handler until it applies or rejects the events, waiting between transient
    /// failures, in a span that continues the trace of the first event with a traceparent (and
    /// links the others'), so the handler's own spans (SMTP, HTTP, SQL) belong to the request
    /// that caused them.
    async fn attempt(&self, events: &[Event], meters: &Meters) -> Result<Outcome, Aborted> {
        let span = tracing::info_span!(
            "process",
            otel.name = %format_args!("{} process", self.topic),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.destination.name = %self.topic,
            messaging.destination.partition.id = self.partition,
            messaging.consumer.group.name = %self.shared.dead_letters.group,
            messaging.kafka.offset = events.first().map(|e| e.offset),
            messaging.batch.message_count = events.len(),
            trace_id = tracing::field::Empty,
        );
        let mut parents = events
            .iter()
            .filter_map(|event| event.traceparent.as_deref().and_then(TraceContext::parse));
        let parent = parents.next();
        let trace = TraceContext::continue_in(&span, parent);
        // The records of one request share a traceparent: each other span is linked once.
        let mut linked: Vec<TraceContext> = Vec::new();
        for other in parents {
            if Some(other) != parent && !linked.contains(&other) && linked.len() < 128 {
                linked.push(other);
            }
        }
        TraceContext::link(&span, linked);
        span.record("trace_id", trace.trace_id_hex());
        let outcome = self
            .attempt_traced(events, meters)
            .instrument(span.clone())
            .await;
        if let Ok(Outcome::Rejected { .. }) = outcome {
            span.record("otel.status_code", "error");
        }
        outcome
    }

    async fn attempt_traced(&self, events: &[Event], meters: &Meters) -> Result<Outcome, Aborted> {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let started = Instant::now();
            // A panicking handler is a failure like any other: the task, and with it the
            // partition, lives on.
            let handled = std::panic::AssertUnwindSafe(self.shared.handler.handle(events));
            let result = tokio::select! {
                biased;
                () = self.abort.cancelled() => return Err(Aborted),
                result = handled.catch_unwind() => result.unwrap_or_else(|panic| {
                    self.panicked(events, &*panic, attempts, meters)
                }),
            };
            meters.latency.record(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    meters.processed.increment(events.len() as u64);
                    if let Some(last) = events.last() {
                        let age = jiff::Timestamp::now().duration_since(last.envelope.occurred_at);
                        meters.freshness.set(age.as_secs_f64());
                    }
                    return Ok(Outcome::Applied);
                }
                Err(HandlerError::Reject(reason)) => {
                    let reason = reason.to_string();
                    return Ok(Outcome::Rejected { reason, attempts });
                }
                Err(HandlerError::Retry(reason)) => {
                    meters.retried.increment(1);
                    let wait = backoff(attempts, self.shared.max_backoff, rand::random::<f64>());
                    tracing::warn!(
                        topic = %self.topic,
                        partition = self.partition,
                        offset = events.first().map(|e| e.offset),
                        attempts,
                        ?wait,
                        %reason,
                        "handler failed, retrying in place"
                    );
                    self.pause(wait).await?;
                }
            }
        }
    }

    /// What a handler's panic means: retried in place like a transient failure, up to
    /// [`PANIC_ATTEMPTS`] attempts, then a rejection (a panic that repeats is the event's, and
    /// goes to the dead-letter topic rather than holding the partition for good).
    fn panicked(
        &self,
        events: &[Event],
        panic: &(dyn std::any::Any + Send),
        attempts: u32,
        meters: &Meters,
    ) -> Result<(), HandlerError> {
        meters.panics.increment(1);
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        tracing::error!(
            topic = %self.topic,
            partition = self.partition,
            offset = events.first().map(|e| e.offset),
            attempts,
            %message,
            "handler panicked"
        );
        crate::alerts::raise(crate::alerts::Alert::HandlerPanic {
            group: self.shared.dead_letters.dlq_name.clone(),
            topic: self.topic.clone(),
        });
        let reason = format!("the handler panicked: {message}");
        if attempts >= PANIC_ATTEMPTS {
            Err(HandlerError::Reject(reason.into()))
        } else {
            Err(HandlerError::Retry(reason.into()))
        }
    }

    async fn pause(&self, wait: Duration) -> Result<(), Aborted> {
        tokio::select! {
            () = self.abort.cancelled() => Err(Aborted),
            () = tokio::time::sleep(wait) => Ok(()),
        }
    }

    /// Publishes the record, as it was, to the dead-letter topic and moves past it. A
    /// dead-letter topic that cannot be written is retried like a failing handler: the
    /// partition never moves past a record that is neither applied nor dead-lettered.
    async fn dead_letter(
        &self,
        record: &Record,
        reason: &str,
        attempts: u32,
        meters: &Meters,
    ) -> Result<(), Aborted> {
        let dead = &self.shared.dead_letters;
        let mut headers: Vec<_> = record
            .headers
            .iter()
            .map(|(name, value)| (name.clone().into(), value.clone()))
            .collect();
        headers.extend([
            (dlq_headers::ERROR.into(), reason.as_bytes().to_vec()),
            (dlq_headers::TOPIC.into(), record.topic.clone().into_bytes()),
            (
                dlq_headers::PARTITION.into(),
                record.partition.to_string().into_bytes(),
            ),
            (
                dlq_headers::OFFSET.into(),
                record.offset.to_string().into_bytes(),
            ),
            (
                dlq_headers::ATTEMPTS.into(),
                attempts.to_string().into_bytes(),
            ),
            (dlq_headers::GROUP.into(), dead.group.clone().into_bytes()),
        ]);
        let letter = OutgoingRecord {
            topic: dead.topic.as_str().into(),
            key: record.key.clone().unwrap_or_default(),
            payload: record.payload.clone().unwrap_or_default(),
            timestamp_ms: record
                .timestamp_ms
                .unwrap_or_else(|| crate::clock::now_us() / 1000),
            headers,
        };
        let mut tries = 0u32;
        loop {
            tries += 1;
            match dead
                .publisher
                .publish_all(std::slice::from_ref(&letter))
                .await
            {
                Ok(_) => break,
                Err(err) => {
                    let wait = backoff(tries, self.shared.max_backoff, rand::random::<f64>());
                    tracing::warn!(%err, topic = %dead.topic, ?wait, "dead-letter topic not writable, retrying");
                    self.pause(wait).await?;
                }
            }
        }
        meters.dead_lettered.increment(1);
        crate::alerts::raise(crate::alerts::Alert::DeadLetter {
            group: dead.dlq_name.clone(),
            topic: record.topic.clone(),
        });
        tracing::warn!(
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            attempts,
            %reason,
            "sent to dlq"
        );
        self.advance(record.offset);
        Ok(())
    }
}
