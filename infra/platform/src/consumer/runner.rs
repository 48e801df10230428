//! The group member: one thread polls Kafka (and so runs the rebalance callbacks), hands
//! records to one task per partition, stores the offsets those tasks report as done, and
//! commits.
//!
//! Polling happens on a thread of its own because a revocation must wait, inside
//! librdkafka's callback, for the revoked partitions' tasks to finish and their offsets to
//! be committed; blocking there must not block the async runtime the tasks run on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use events::Codec;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::worker::{DeadLetters, Shared, Worker};
use super::{ConsumerArgs, Handler, Resume};
use crate::kafka::{KafkaArgs, KafkaSetupError, Publisher, ReadRecord as Record};

/// Batches each partition's task may have waiting. A full buffer pauses the partition, and
/// librdkafka drops what it had prefetched for a paused partition and fetches it again after
/// the resume: with one batch of room, pauses were constant and the audit log drained a
/// backlog at 8,000 to 12,000 events/s with the machine mostly idle; with four, 16,000 to
/// 20,000 events/s, for a few MB more.
const BUFFERED_BATCHES: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the consumer thread stopped unexpectedly")]
    ThreadLost,
}

/// A consumer group member running one handler over some topics.
pub struct Runner {
    group: String,
    topics: Vec<String>,
    kafka: KafkaArgs,
    args: ConsumerArgs,
    codec: Arc<Codec>,
    handler: Arc<dyn Handler>,
}

impl Runner {
    /// `name` names the consumer (`audit-log`); the group is `args.group` or the topic
    /// prefix followed by the name. `topics` are full topic names.
    pub fn new(
        name: &str,
        topics: Vec<String>,
        kafka: &KafkaArgs,
        args: &ConsumerArgs,
        codec: Arc<Codec>,
        handler: Arc<dyn Handler>,
    ) -> Self {
        let group = args
            .group
            .clone()
            .unwrap_or_else(|| format!("{}{name}", kafka.topic_prefix));
        Self {
            group,
            topics,
            kafka: kafka.clone(),
            args: args.clone(),
            codec,
            handler,
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The group's dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        format!("{}.dlq", self.group)
    }

    /// Runs until `shutdown` is cancelled, then drains and commits within the deadline.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunnerError> {
        let dlq = self.dead_letter_topic();
        crate::kafka::ensure_topics(&self.kafka, std::slice::from_ref(&dlq), Default::default())
            .await?;
        let shared = Arc::new(Shared {
            handler: self.handler,
            codec: self.codec,
            dead_letters: DeadLetters {
                publisher: Publisher::new(&self.kafka, Duration::from_secs(10))?,
                topic: dlq,
                group: self.group.clone(),
                dlq_name: self
                    .group
                    .strip_prefix(&self.kafka.topic_prefix)
                    .unwrap_or(&self.group)
                    .to_string(),
            },
            max_batch: self.args.max_batch.max(1),
            max_backoff: Duration::from_millis(self.args.max_backoff_ms),
            in_flight: tokio::sync::Semaphore::new(self.args.max_in_flight.max(1)),
        });
        let context = Context {
            shared,
            runtime: Handle::current(),
            deadline: self.args.shutdown_deadline(),
            partitions: Mutex::new(HashMap::new()),
        };
        let config = group_config(&self.kafka, &self.args, &self.group)?;
        let consumer: BaseConsumer<Context> = config.create_with_context(context)?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(group = %self.group, topics = ?self.topics, "consumer started");
        let (done_tx, done_rx) = oneshot::channel();
        let group = self.group.clone();
        // Dropping this future stops the polling thread too: a dropped consumer never keeps
        // the process alive or its partitions held.
        let shutdown = shutdown.child_token();
        let _stop_on_drop = shutdown.clone().drop_guard();
        let runtime = Handle::current();
        std::thread::Builder::new()
            .name(format!("poll-{group}"))
            .spawn(move || {
                // The handler is dropped on this thread, with the consumer; whatever it
                // holds may spawn on the runtime when dropped (a connection pool closing).
                let _runtime = runtime.enter();
                poll_until(&consumer, &shutdown);
                consumer.context().finish(&consumer);
                drop(consumer);
                let _ = done_tx.send(());
            })
            .map_err(|_| RunnerError::ThreadLost)?;
        done_rx.await.map_err(|_| RunnerError::ThreadLost)?;
        tracing::info!(%group, "consumer stopped");
        Ok(())
    }
}

/// The polling loop: fetch, dispatch, store progress; until shutdown.
fn poll_until(consumer: &BaseConsumer<Context>, shutdown: &CancellationToken) {
    let context = consumer.context();
    while !shutdown.is_cancelled() {
        let holding = context.unpark(consumer);
        context.store_progress(consumer);
        let wait = if holding { 5 } else { 100 };
        match consumer.poll(Duration::from_millis(wait)) {
            None => {}
            Some(Ok(message)) => context.dispatch(consumer, &message),
            Some(Err(err)) => tracing::warn!(%err, "kafka consumer error"),
        }
    }
}

/// One assigned partition, seen from the polling thread.
struct Slot {
    tx: mpsc::Sender<Record>,
    progress: Arc<AtomicI64>,
    /// The last offset handed to librdkafka's offset store.
    stored: i64,
    /// The last offset handed over (to the task or to `overflow`).
    dispatched: i64,
    /// Records the partition's task had no room for, in order; while any are held the
    /// partition is paused.
    overflow: VecDeque<Record>,
    stop: CancellationToken,
    abort: CancellationToken,
    task: JoinHandle<()>,
    /// The task ended while the partition was still assigned here (reported once).
    lost: bool,
}

impl Slot {
    /// Notes, once, a task that ended while its partition is still assigned here. Handler
    /// panics are caught in the task, so this is a bug in the runtime itself; the partition
    /// no longer moves, and readiness says so ([`super::health`]).
    fn check_alive(&mut self, group: &str, topic: &str, partition: i32) {
        if self.lost || !self.task.is_finished() {
            return;
        }
        self.lost = true;
        tracing::error!(%group, %topic, partition, "a partition's worker stopped; the partition is not consumed");
        metrics::counter!("herald_consumer_workers_lost_total", "group" => group.to_string())
            .increment(1);
        super::health::worker_lost(group, topic, partition);
    }
}

struct Context {
    shared: Arc<Shared>,
    runtime: Handle,
    deadline: Duration,
    /// Touched only by the polling thread (the loop and the callbacks it runs).
    partitions: Mutex<HashMap<(String, i32), Slot>>,
}

impl Context {
    fn slots(&self) -> MutexGuard<'_, HashMap<(String, i32), Slot>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, topic: &str, partition: i32) {
        let mut slots = self.slots();
        if slots.contains_key(&(topic.to_string(), partition)) {
            return;
        }
        let (tx, rx) = mpsc::channel(self.shared.max_batch * BUFFERED_BATCHES);
        let progress = Arc::new(AtomicI64::new(-1));
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let worker = Worker {
            shared: self.shared.clone(),
            topic: topic.to_string(),
            partition,
            rx,
            progress: progress.clone(),
            stop: stop.clone(),
            abort: abort.clone(),
        };
        let task = self.runtime.spawn(worker.run());
        slots.insert(
            (topic.to_string(), partition),
            Slot {
                tx,
                progress,
                stored: -1,
                dispatched: -1,
                overflow: VecDeque::new(),
                stop,
                abort,
                task,
                lost: false,
            },
        );
        metrics::gauge!("herald_consumer_assigned_partitions", "group" => self.shared.dead_letters.group.clone())
            .increment(1.0);
    }

    fn dispatch(&self, consumer: &BaseConsumer<Context>, message: &BorrowedMessage<'_>) {
        let key = (message.topic().to_string(), message.partition());
        let mut slots = self.slots();
        let Some(slot) = slots.get_mut(&key) else {
            tracing::debug!(topic = %key.0, partition = key.1, "record of a partition not assigned here");
            return;
        };
        // A refetch after a resume can repeat records already handed over.
        if message.offset() <= slot.dispatched {
            return;
        }
        slot.dispatched = message.offset();
        let record = Record::from_message(message);
        if !slot.overflow.is_empty() {
            slot.overflow.push_back(record);
            return;
        }
        match slot.tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(record)) => {
                // The task is behind: stop fetching this partition and keep what librdkafka
                // had already fetched, in order, until the task has room.
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&key.0, key.1);
                if let Err(err) = consumer.pause(&tpl) {
                    tracing::warn!(%err, "pausing a busy partition failed");
                }
                slot.overflow.push_back(record);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Moves held-back records to their tasks where there is room again and resumes the
    /// partitions whose backlog is gone (librdkafka resumes after the last record it
    /// delivered). Returns whether any partition still holds records back.
    fn unpark(&self, consumer: &BaseConsumer<Context>) -> bool {
        let mut holding = false;
        for ((topic, partition), slot) in self.slots().iter_mut() {
            if slot.overflow.is_empty() {
                continue;
            }
            while let Some(record) = slot.overflow.pop_front() {
                match slot.tx.try_send(record) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(record)) => {
                        slot.overflow.push_front(record);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => slot.overflow.clear(),
                }
            }
            if slot.overflow.is_empty() {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, *partition);
                if let Err(err) = consumer.resume(&tpl) {
                    tracing::warn!(%err, %topic, partition, "resuming a partition failed");
                }
            } else {
                holding = true;
            }
        }
        holding
    }

    /// Moves every partition's done offset into librdkafka's offset store (committed by the
    /// auto-commit timer, on revocation and at shutdown).
    fn store_progress(&self, consumer: &BaseConsumer<Context>) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), slot) in self.slots().iter_mut() {
            slot.check_alive(&self.shared.dead_letters.group, topic, *partition);
            let next = slot.progress.load(Ordering::Acquire);
            if next > slot.stored
                && tpl
                    .add_partition_offset(topic, *partition, Offset::Offset(next))
                    .is_ok()
            {
                slot.stored = next;
            }
        }
        if tpl.count() > 0
            && let Err(err) = consumer.store_offsets(&tpl)
        {
            tracing::debug!(%err, "storing offsets failed");
        }
    }

    /// Stops the tasks of some partitions (all when `which` is `None`) within the deadline
    /// and commits how far they got.
    fn stop(&self, consumer: &BaseConsumer<Context>, which: Option<&[(String, i32)]>) {
        let stopping: Vec<((String, i32), Slot)> = {
            let mut slots = self.slots();
            match which {
                None => slots.drain().collect(),
                Some(keys) => keys
                    .iter()
                    .filter_map(|key| slots.remove_entry(key))
                    .collect(),
            }
        };
        if stopping.is_empty() {
            return;
        }
        for (_, slot) in &stopping {
            slot.stop.cancel();
        }
        let until = Instant::now() + self.deadline;
        let mut commit = TopicPartitionList::new();
        for ((topic, partition), slot) in stopping {
            if slot.lost {
                super::health::worker_gone(&self.shared.dead_letters.group, &topic, partition);
            }
            let remaining = until.saturating_duration_since(Instant::now());
            let mut task = slot.task;
            let finished = self
                .runtime
                .block_on(async { tokio::time::timeout(remaining, &mut task).await.is_ok() });
            if !finished {
                slot.abort.cancel();
                let _ = self
                    .runtime
                    .block_on(tokio::time::timeout(Duration::from_secs(1), task));
            }
            let next = slot.progress.load(Ordering::Acquire);
            if next >= 0 {
                let _ = commit.add_partition_offset(&topic, partition, Offset::Offset(next));
            }
            metrics::gauge!("herald_consumer_assigned_partitions", "group" => self.shared.dead_letters.group.clone())
                .decrement(1.0);
        }
        if commit.count() > 0 {
            // Stored too: librdkafka commits stored offsets again when it closes or
            // unassigns, and an older stored offset would move the commit backwards.
            if let Err(err) = consumer.store_offsets(&commit) {
                tracing::debug!(%err, "storing final offsets failed");
            }
            match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => tracing::info!(partitions = commit.count(), "offsets committed"),
                Err(err) => {
                    tracing::warn!(%err, "committing offsets failed; the records will be delivered again");
                }
            }
        }
    }

    /// Shutdown: finish in-flight work and commit.
    fn finish(&self, consumer: &BaseConsumer<Context>) {
        self.store_progress(consumer);
        self.stop(consumer, None);
    }
}

/// The (topic, partition) pairs of a rebalance.
fn partition_keys(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        let group = &self.shared.dead_letters.group;
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(
                        "herald_consumer_lag",
                        "group" => group.clone(),
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Broker connection errors recover by themselves: not an operator's ERROR.
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for Context {
    /// librdkafka's own, but with each assigned partition's start set from
    /// [`Handler::resume_from`] first.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assigning = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        if assigning {
            for (topic, partition) in partition_keys(tpl) {
                let offset = match self.shared.handler.resume_from(&topic, partition) {
                    Resume::Committed => continue,
                    Resume::Beginning => Offset::Beginning,
                    Resume::At(offset) => Offset::Offset(offset),
                };
                if let Err(err) = tpl.set_partition_offset(&topic, partition, offset) {
                    tracing::warn!(%err, topic, partition, "setting where a partition resumes");
                }
            }
        }
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let done = match (err, cooperative) {
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, true) => {
                consumer.incremental_assign(tpl)
            }
            (RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS, false) => consumer.assign(tpl),
            (_, true) => consumer.incremental_unassign(tpl),
            (_, false) => consumer.unassign(),
        };
        if let Err(err) = done {
            tracing::warn!(%err, "applying a rebalance failed");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let keys = partition_keys(tpl);
            tracing::info!(partitions = ?keys, "partitions revoked");
            self.store_progress(consumer);
            self.stop(consumer, Some(&keys));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let keys = partition_keys(tpl);
                tracing::info!(partitions = ?keys, "partitions assigned");
                for (topic, partition) in keys {
                    self.start(&topic, partition);
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(err) => tracing::warn!(%err, "rebalance failed"),
        }
    }
}

/// The handler type is erased so services can hold runners of different consumers.
impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("group", &self.group)
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// The consumer's librdkafka settings for `group`.
fn group_config(
    kafka: &KafkaArgs,
    args: &ConsumerArgs,
    group: &str,
) -> Result<ClientConfig, KafkaSetupError> {
    let mut config = kafka.consumer_config(group)?;
    config
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Commits what was stored by hand, only once a record's effect is durable.
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", args.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (args.session_timeout_ms / 4).max(100).to_string(),
        )
        .set("queued.max.messages.kbytes", args.prefetch_kb.to_string())
        // librdkafka otherwise prefetches up to 100,000 records per partition.
        .set("queued.min.messages", args.max_batch.max(1).to_string())
        // With small queues the default (1 s) wait after a full queue starves the
        // partition's task; check again soon instead.
        .set("fetch.queue.backoff.ms", "20")
        .set(
            "max.partition.fetch.bytes",
            (args.prefetch_kb * 1024).to_string(),
        )
        .set("statistics.interval.ms", "5000");
    // One fetch response is at most this (librdkafka's default is 50 MB); librdkafka
    // refuses a limit below the largest record it may be sent.
    let largest_record: u64 = config
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    config.set(
        "fetch.max.bytes",
        (args.prefetch_kb * 1024 * 4)
            .max(largest_record)
            .to_string(),
    );
    Ok(config)
}

impl ConsumerArgs {
    /// Whether librdkafka takes these settings with `kafka`'s, connecting to nothing
    /// (`herald check`): a prefetch of 0 KB, say, is refused here rather than once serving.
    pub fn check(&self, kafka: &KafkaArgs) -> Result<(), KafkaSetupError> {
        group_config(kafka, self, "herald-check")?.create_native_config()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition's slot around `task`, as `Context::start` makes one.
    fn slot_of(task: JoinHandle<()>) -> Slot {
        let (tx, _rx) = mpsc::channel(1);
        Slot {
            tx,
            progress: Arc::new(AtomicI64::new(-1)),
            stored: -1,
            dispatched: -1,
            overflow: VecDeque::new(),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            task,
            lost: false,
        }
    }

    /// A worker that ends while its partition is assigned (here: a panic outside the
    /// handler's guard) makes readiness fail, naming the partition, until the partition is
    /// no longer this process's.
    #[tokio::test]
    async fn a_stopped_worker_fails_readiness_until_its_partition_goes() {
        let group = format!("g-{}", uuid::Uuid::new_v4().simple());
        let task = tokio::spawn(async { panic!("a bug in the runtime") });
        while !task.is_finished() {
            tokio::task::yield_now().await;
        }
        let mut slot = slot_of(task);
        let name = format!("{group} orders[3]");
        slot.check_alive(&group, "orders", 3);
        assert!(slot.lost);
        assert!(super::super::health::lost_partitions().contains(&name));
        let problem = super::super::health::readiness().unwrap_err();
        assert_eq!(problem.status, 503);
        assert!(problem.detail.contains(&name), "{}", problem.detail);

        super::super::health::worker_gone(&group, "orders", 3);
        assert!(!super::super::health::lost_partitions().contains(&name));
    }

    #[tokio::test]
    async fn a_running_worker_is_not_lost() {
        let group = format!("g-{}", uuid::Uuid::new_v4().simple());
        let stop = CancellationToken::new();
        let task = tokio::spawn(stop.clone().cancelled_owned());
        let mut slot = slot_of(task);
        slot.check_alive(&group, "orders", 0);
        assert!(!slot.lost);
        assert!(
            !super::super::health::lost_partitions()
                .iter()
                .any(|p| p.starts_with(&group))
        );
        stop.cancel();
    }
}
