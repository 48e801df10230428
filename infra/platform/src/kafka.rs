//! Kafka clients: the publisher used by producers, topic administration, and a reader that
//! drains topics without a consumer group (tests, tools); [`range`] reads a time range,
//! [`groups`] looks at and moves consumer groups.

pub mod admin;
pub mod groups;
pub mod range;

pub use admin::{TopicOverrides, ensure_topics};

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

/// How to reach the Kafka cluster. Shared by every service.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers, comma-separated (host:port). Unset: `herald up` starts a local
    /// Apache Kafka broker under the data folder.
    #[arg(long = "kafka-brokers", env = "KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// Extra librdkafka client properties as key=value, comma-separated, e.g.
    /// security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512.
    #[arg(
        long = "kafka-property",
        env = "KAFKA_PROPERTIES",
        value_delimiter = ','
    )]
    pub properties: Vec<String>,
    /// Prefix of every topic name, so several deployments (or tests) share one cluster.
    #[arg(long, env = "TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
    /// How the cluster keeps each topic (partitions, replicas, retention): a file like
    /// infra/topics.toml, which is built in and used when this is unset.
    #[arg(long, env = "TOPICS_FILE")]
    pub topics_file: Option<std::path::PathBuf>,
}

impl KafkaArgs {
    /// The full topic name of an aggregate topic.
    pub fn topic(&self, aggregate: &str) -> String {
        format!("{}{aggregate}", self.topic_prefix)
    }

    /// Whether `key` is among the extra properties, whatever its value.
    fn names_property(&self, key: &str) -> bool {
        self.properties.iter().any(|property| {
            property
                .split_once('=')
                .is_some_and(|(k, _)| k.trim() == key)
        })
    }

    /// Whether `key=value` is among the extra properties.
    fn has_property(&self, key: &str, value: &str) -> bool {
        self.properties.iter().any(|property| {
            property
                .split_once('=')
                .is_some_and(|(k, v)| k.trim() == key && v.trim() == value)
        })
    }

    /// Whether the brokers are named and every KAFKA_PROPERTIES entry is one librdkafka
    /// takes, connecting to nothing (`herald check`).
    pub fn check(&self) -> Result<(), KafkaSetupError> {
        self.client_config()?.create_native_config()?;
        Ok(())
    }

    pub(crate) fn client_config(&self) -> Result<ClientConfig, KafkaSetupError> {
        let brokers = self.brokers.as_deref().ok_or(KafkaSetupError::NoBrokers)?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", "herald")
            // Java clients hash keys with murmur2: use it so a key lands on the same
            // partition whoever produced it.
            .set("partitioner", "murmur2_random")
            // librdkafka backs off up to 10 s between reconnects by default: after a broker
            // restart that is up to 10 s of 503s for nothing. One second is still gentle.
            .set("reconnect.backoff.max.ms", "1000");
        // An empty KAFKA_PROPERTIES (or a trailing comma) sets nothing.
        for property in self.properties.iter().filter(|p| !p.trim().is_empty()) {
            let (key, value) = property
                .split_once('=')
                .ok_or_else(|| KafkaSetupError::BadProperty(property.chars().take(12).collect()))?;
            config.set(key.trim(), value.trim());
        }
        Ok(config)
    }
}

impl KafkaArgs {
    /// Settings of a consumer in `group` (which it joins only if it subscribes). Offsets are
    /// never committed automatically unless the caller turns that on.
    pub(crate) fn consumer_config(&self, group: &str) -> Result<ClientConfig, KafkaSetupError> {
        let mut config = self.client_config()?;
        // A producer setting: librdkafka warns when a consumer carries it.
        config.remove("partitioner");
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        Ok(config)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("no Kafka brokers configured: set KAFKA_BROKERS")]
    NoBrokers,
    #[error("a kafka property is not key=value (it starts {0:?}); values are not shown")]
    BadProperty(String),
    #[error("kafka client: {0}")]
    Client(#[from] KafkaError),
    #[error("creating topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error(transparent)]
    Topics(#[from] crate::topics::TopicsError),
    #[error(
        "{0} was not read to its end in time: the broker answered too slowly; retry, or read \
         less at once"
    )]
    Incomplete(String),
}

/// A record to publish.
#[derive(Debug, Clone)]
pub struct OutgoingRecord {
    /// Shared: a publisher names a handful of topics for millions of records.
    pub topic: Arc<str>,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// Milliseconds since the epoch: the record's CreateTime, used by time-range reads.
    pub timestamp_ms: i64,
    /// Names are mostly fixed (`event_id`, `traceparent`): borrowed, not allocated per record.
    pub headers: Vec<(Cow<'static, str>, Vec<u8>)>,
}

impl OutgoingRecord {
    /// An encoded event, with the `event_type` and `event_id` headers every consumer and
    /// tool reads without decoding.
    pub fn event(
        topic: impl Into<Arc<str>>,
        key: Vec<u8>,
        payload: Vec<u8>,
        event_type: &str,
        event_id: &str,
        timestamp_ms: i64,
    ) -> Self {
        // Room for a third header, the traceparent most callers add.
        let mut headers = Vec::with_capacity(3);
        headers.push(("event_type".into(), event_type.as_bytes().to_vec()));
        headers.push(("event_id".into(), event_id.as_bytes().to_vec()));
        Self {
            topic: topic.into(),
            key,
            payload,
            timestamp_ms,
            headers,
        }
    }
}

/// Where the broker stored an acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// Why a publish did not succeed, and so what the caller may tell its client.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No acknowledgement in time: the record may or may not be durable. Safe to retry
    /// with the same event ids.
    #[error("the broker did not acknowledge in time; the outcome is unknown")]
    Unknown,
    /// A record is larger than the cluster accepts: sending it again cannot help.
    #[error("a record is larger than the broker accepts")]
    TooLarge,
    /// The broker refused the record for good (topic missing, not authorised).
    #[error("the broker rejected the record: {0}")]
    Rejected(String),
}

/// The producer's defaults for throughput and latency. A request's events go out together,
/// so batches fill without waiting long; lz4 shrinks what crosses the network for little CPU.
const PRODUCER_TUNING: [(&str, &str); 3] = [
    ("linger.ms", "2"),
    ("compression.type", "lz4"),
    ("queue.buffering.max.kbytes", "65536"),
];

/// An idempotent, acks=all producer. A publish resolves only once the broker acknowledged
/// every record, or fails within the deadline.
#[derive(Clone)]
pub struct Publisher {
    producer: Arc<ThreadedProducer<Deliveries>>,
    deadline: Duration,
}

impl Publisher {
    pub fn new(args: &KafkaArgs, deadline: Duration) -> Result<Self, KafkaSetupError> {
        let mut config = args.client_config()?;
        let deadline_ms = deadline.as_millis().max(1000).to_string();
        // Off only when asked for by name: the fault suite's control run shows what it buys.
        let idempotent = !args.has_property("enable.idempotence", "false");
        if !idempotent {
            tracing::warn!(
                "enable.idempotence=false: a produce retried after a lost acknowledgement can \
                 write an event twice"
            );
        }
        config
            .set(
                "enable.idempotence",
                if idempotent { "true" } else { "false" },
            )
            .set("acks", "all")
            // librdkafka gives up on a record at the deadline, so no record outlives the
            // request that carried it and memory stays bounded while the broker is away.
            .set("message.timeout.ms", &deadline_ms);
        // Tuning, not guarantees: KAFKA_PROPERTIES may set these otherwise.
        for (key, value) in PRODUCER_TUNING {
            if !args.names_property(key) {
                config.set(key, value);
            }
        }
        let producer = config.create_with_context(Deliveries)?;
        Ok(Self {
            producer: Arc::new(producer),
            deadline,
        })
    }

    /// Publishes every record; `Ok` only when all were acknowledged, in input order.
    pub async fn publish_all(
        &self,
        records: &[OutgoingRecord],
    ) -> Result<Vec<Delivery>, PublishError> {
        let deadline = tokio::time::Instant::now() + self.deadline;
        let batch = Arc::new(Batch::new(records.len()));
        for (index, record) in records.iter().enumerate() {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let slot = Box::new(Slot {
                batch: batch.clone(),
                index,
            });
            let mut base = BaseRecord::with_opaque_to(&record.topic, slot)
                .key(&record.key)
                .payload(&record.payload)
                .timestamp(record.timestamp_ms)
                .headers(headers);
            // A full local queue drains as the broker acknowledges: wait for room until the
            // deadline, as a slow broker would make a request wait anyway.
            loop {
                match self.producer.send(base) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if tokio::time::Instant::now() + QUEUE_FULL_PAUSE < deadline =>
                    {
                        base = back;
                        tokio::time::sleep(QUEUE_FULL_PAUSE).await;
                    }
                    Err((err, _)) => {
                        batch.settle(index, Err(classify(&err)));
                        break;
                    }
                }
            }
        }
        // librdkafka also gives up on the records at the deadline, but checks only about once
        // a second: the caller's deadline is kept here. A record still queued then may yet
        // be written, which is why the outcome is "unknown", not "failed".
        tokio::time::timeout_at(deadline, batch.settled())
            .await
            .map_err(|_| PublishError::Unknown)?;
        batch.outcome()
    }

    /// Whether the cluster answers a metadata request within `timeout`.
    pub async fn is_reachable(&self, timeout: Duration) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, timeout)
                .is_ok_and(|m| !m.brokers().is_empty())
        })
        .await
        .unwrap_or(false)
    }

    /// Waits until queued records are delivered or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}

fn classify(err: &KafkaError) -> PublishError {
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => PublishError::TooLarge,
        Some(
            code @ (RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::InvalidRecord),
        ) => PublishError::Rejected(code.to_string()),
        _ => PublishError::Unknown,
    }
}

/// How long a publish waits before trying again when librdkafka's local queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// The outcomes of one publish's records, filled in by librdkafka's delivery reports. One per
/// publish, not one channel and one future per record: a request of a hundred events is
/// woken once, when the last report is in.
struct Batch {
    outcomes: Mutex<Outcomes>,
    settled: tokio::sync::Notify,
}

struct Outcomes {
    each: Vec<Option<Result<Delivery, PublishError>>>,
    unsettled: usize,
}

impl Batch {
    fn new(records: usize) -> Self {
        Self {
            outcomes: Mutex::new(Outcomes {
                each: (0..records).map(|_| None).collect(),
                unsettled: records,
            }),
            settled: tokio::sync::Notify::new(),
        }
    }

    fn settle(&self, index: usize, outcome: Result<Delivery, PublishError>) {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        if outcomes.each[index].replace(outcome).is_none() {
            outcomes.unsettled -= 1;
            if outcomes.unsettled == 0 {
                // Stored if nobody waits yet: the waiter's next wait returns at once.
                self.settled.notify_one();
            }
        }
    }

    async fn settled(&self) {
        loop {
            let unsettled = self
                .outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unsettled;
            if unsettled == 0 {
                return;
            }
            self.settled.notified().await;
        }
    }

    /// Every record's delivery in input order, or the first failure.
    fn outcome(&self) -> Result<Vec<Delivery>, PublishError> {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut outcomes.each)
            .into_iter()
            .map(|outcome| outcome.unwrap_or(Err(PublishError::Unknown)))
            .collect()
    }
}

/// Which record of which publish a delivery report is about.
struct Slot {
    batch: Arc<Batch>,
    index: usize,
}

/// The producer's context: delivery reports go to their publish.
struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Slot>;

    fn delivery(&self, report: &DeliveryResult<'_>, slot: Box<Slot>) {
        let outcome = match report {
            Ok(message) => Ok(Delivery {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((err, _)) => Err(classify(err)),
        };
        slot.batch.settle(slot.index, outcome);
    }
}

/// A record as read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    /// In record order; a name may repeat.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ReadRecord {
    pub(crate) fn from_message(message: &BorrowedMessage<'_>) -> Self {
        Self::read(message, true)
    }

    /// The record, with its headers only when asked for.
    pub(crate) fn read(message: &BorrowedMessage<'_>, with_headers: bool) -> Self {
        // Not even asked of librdkafka unless wanted: it parses them on request.
        let headers = with_headers
            .then(|| message.headers())
            .flatten()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            timestamp_ms: message.timestamp().to_millis(),
            headers,
        }
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_slice())
    }
}

/// Reads every record of some topics, from the start to the high watermark each partition
/// had when the read began. No consumer group: nothing is committed, nobody is disturbed.
/// What was read by `timeout`, even if not everything: for a caller that must have it all,
/// [`read_all`].
pub async fn read_to_end(
    args: &KafkaArgs,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<ReadRecord>, KafkaSetupError> {
    Ok(read_until(args, topics, timeout).await?.0)
}

/// [`read_to_end`], or [`KafkaSetupError::Incomplete`] when some partition was not read to
/// its end by `timeout`: for a caller that decides from the whole (what was redriven, a
/// projection rebuilt from the log).
pub async fn read_all(
    args: &KafkaArgs,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<ReadRecord>, KafkaSetupError> {
    match read_until(args, topics, timeout).await? {
        (records, true) => Ok(records),
        (_, false) => Err(KafkaSetupError::Incomplete(topics.join(", "))),
    }
}

/// The records read by `timeout`, and whether every partition was read to its end.
async fn read_until(
    args: &KafkaArgs,
    topics: &[String],
    timeout: Duration,
) -> Result<(Vec<ReadRecord>, bool), KafkaSetupError> {
    let config = args.consumer_config("herald-reader-unused")?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(
        move || -> Result<(Vec<ReadRecord>, bool), KafkaSetupError> {
            let consumer: BaseConsumer = config.create()?;
            let deadline = std::time::Instant::now() + timeout;
            let mut assignment = TopicPartitionList::new();
            let mut remaining: HashMap<(String, i32), i64> = HashMap::new();
            for topic in &topics {
                let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
                for t in metadata.topics() {
                    if t.error()
                        .is_some_and(|e| e != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
                    {
                        continue;
                    }
                    for p in t.partitions() {
                        let (low, high) = watermarks(&consumer, topic, p.id(), timeout)?;
                        if high > low {
                            assignment.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
                            remaining.insert((topic.clone(), p.id()), high);
                        }
                    }
                }
            }
            consumer.assign(&assignment)?;
            let mut out = Vec::new();
            while !remaining.is_empty() && std::time::Instant::now() < deadline {
                let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let message = message?;
                let slot = (message.topic().to_string(), message.partition());
                let Some(&high) = remaining.get(&slot) else {
                    continue;
                };
                if message.offset() + 1 >= high {
                    remaining.remove(&slot);
                }
                if message.offset() < high {
                    out.push(ReadRecord::from_message(&message));
                }
            }
            Ok((out, remaining.is_empty()))
        },
    )
    .await
    .expect("reader task panicked")
}

/// The low and high watermark of every partition of some topics, by (topic, partition);
/// topics that do not exist yet are left out. Reads only: no group, nothing committed.
pub async fn watermarks_of(
    args: &KafkaArgs,
    topics: &[String],
    timeout: Duration,
) -> Result<HashMap<(String, i32), (i64, i64)>, KafkaSetupError> {
    let config = args.consumer_config("herald-reader-unused")?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let mut marks = HashMap::new();
        for topic in &topics {
            let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
            for t in metadata.topics() {
                if t.error()
                    .is_some_and(|e| e != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
                {
                    continue;
                }
                for p in t.partitions() {
                    let pair = watermarks(&consumer, topic, p.id(), timeout)?;
                    marks.insert((topic.clone(), p.id()), pair);
                }
            }
        }
        Ok(marks)
    })
    .await
    .expect("watermark reader task panicked")
}

/// Whether a consumer group has read, on every partition of `topics`, every record the log
/// received before `at_ms` (record timestamps, which the ingress sets to when it received
/// the event). Reads only: it does not join the group.
pub async fn group_has_read_until(
    args: &KafkaArgs,
    group: &str,
    topics: &[String],
    at_ms: i64,
) -> Result<bool, KafkaSetupError> {
    let committed = committed_offsets(args, group, topics).await?;
    let config = args.consumer_config(group)?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let timeout = Duration::from_secs(10);
        let mut wanted = TopicPartitionList::new();
        for (topic, partition) in partitions_of(&consumer, &topics, timeout)? {
            wanted.add_partition_offset(&topic, partition, Offset::Offset(at_ms))?;
        }
        if wanted.count() == 0 {
            // None of the topics exists yet: there is nothing to have read.
            return Ok(true);
        }
        let found = consumer.offsets_for_times(wanted, timeout)?;
        for element in found.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            // The first record at or after the time; none: every record is before it.
            let needed = match element.offset() {
                Offset::Offset(offset) => offset,
                _ => watermarks(&consumer, topic, partition, timeout)?.1,
            };
            let read = committed
                .get(&(topic.to_string(), partition))
                .copied()
                .unwrap_or(0);
            if read < needed {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .expect("offset reader task panicked")
}

/// The partitions of those of `topics` that exist, from one metadata request (asking for a
/// topic that does not exist is an error, not an empty answer).
fn partitions_of(
    consumer: &BaseConsumer,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<(String, i32)>, KafkaError> {
    let metadata = consumer.fetch_metadata(None, timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|wanted| wanted == t.name()))
        .filter(|t| {
            t.error()
                .is_none_or(|e| e == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        })
        .flat_map(|t| {
            t.partitions()
                .iter()
                .map(|p| (t.name().to_string(), p.id()))
        })
        .collect())
}

/// Watermarks, retried while leadership is moving (new topic, broker restart).
fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), KafkaError> {
    let until = std::time::Instant::now() + timeout;
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
            Ok(marks) => return Ok(marks),
            Err(err) if std::time::Instant::now() < until => {
                tracing::debug!(%err, topic, partition, "watermarks not available yet");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Whether a cluster at `bootstrap` answers metadata with at least one broker (blocking).
pub(crate) fn cluster_has_brokers(bootstrap: &str) -> bool {
    brokers_in_cluster(bootstrap) > 0
}

/// How many brokers the cluster at `bootstrap` lists; 0 when it does not answer.
pub(crate) fn brokers_in_cluster(bootstrap: &str) -> usize {
    let consumer: Result<BaseConsumer, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create();
    consumer.map_or(0, |c| {
        c.fetch_metadata(None, Duration::from_secs(2))
            .map_or(0, |m| m.brokers().len())
    })
}

/// The offsets a consumer group has committed for some topics, by (topic, partition);
/// partitions without a commit are left out. Reads only: it does not join the group.
pub async fn committed_offsets(
    args: &KafkaArgs,
    group: &str,
    topics: &[String],
) -> Result<HashMap<(String, i32), i64>, KafkaSetupError> {
    let config = args.consumer_config(group)?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = config.create()?;
        let timeout = Duration::from_secs(10);
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions_of(&consumer, &topics, timeout)? {
            tpl.add_partition(&topic, partition);
        }
        if tpl.count() == 0 {
            return Ok(HashMap::new());
        }
        let committed = consumer.committed_offsets(tpl, timeout)?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some(((e.topic().to_string(), e.partition()), offset)),
                _ => None,
            })
            .collect())
    })
    .await
    .expect("offset reader task panicked")
}
