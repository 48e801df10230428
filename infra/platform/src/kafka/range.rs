//! Reading a time range of some topics without a consumer group.
//!
//! Partitions are assigned directly (no group joins, nothing is committed), so a read can
//! neither move nor pause a live consumer. Each partition is read from the first record at or
//! after `from` to the first record at or after `to` (what the log's time index answers), and
//! records whose timestamp falls outside `[from, to)` are dropped on the way, so the bounds are
//! exact even where producers' clocks made timestamps step back a little. The end of each
//! partition is fixed when the read starts: records appended later are not waited for.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaArgs, KafkaSetupError, ReadRecord, watermarks};

/// What a range read covers, by partition: `[start, end)` offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// Why a range cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    #[error("no topic {missing:?} on the cluster (it has: {existing})")]
    UnknownTopic { missing: String, existing: String },
    #[error("the range is empty: from ({from_ms} ms) must be before to ({to_ms} ms)")]
    Inverted { from_ms: i64, to_ms: i64 },
    /// A position is no longer (or not yet) in the partition: its records were deleted by
    /// retention, or the topic was made anew.
    #[error(
        "partition {partition} holds offsets {low} to {high} now; the position {offset} is \
         outside them (deleted by retention, or the topic was recreated)"
    )]
    Stale {
        partition: i32,
        offset: i64,
        low: i64,
        high: i64,
    },
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
}

impl RangeError {
    /// Whether a position fell out of its partition while reading (retention deleted what
    /// it pointed at): the read cannot go on from there.
    pub fn is_out_of_range(&self) -> bool {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        matches!(
            self,
            Self::Kafka(KafkaSetupError::Client(KafkaError::MessageConsumption(
                RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange
            )))
        )
    }
}

/// Where a [`RangeReader::follow`] starts on each partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// After the last record there is now: only what comes next.
    End,
    /// At the first record at or after this time (ms since the epoch).
    Time(i64),
    /// At these next offsets, by partition; a partition not named starts at its first record
    /// (it was added after the positions were taken).
    Offsets(std::collections::BTreeMap<i32, i64>),
}

impl From<rdkafka::error::KafkaError> for RangeError {
    fn from(err: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(KafkaSetupError::Client(err))
    }
}

/// A blocking reader of `[from, to)` of some topics: call [`RangeReader::next_batch`] until it
/// answers `None`. Memory is bounded by librdkafka's fetch buffers and one batch, whatever the
/// range's size. Use it from a blocking thread.
pub struct RangeReader {
    consumer: BaseConsumer,
    plan: Vec<Planned>,
    /// Partitions not finished yet, and the offset each ends before. A list: there are
    /// few, and it is looked up for every record without building a key.
    remaining: Vec<((String, i32), i64)>,
    from_ms: i64,
    to_ms: i64,
    headers: bool,
}

impl RangeReader {
    /// Looks up where the range starts and ends on every partition of `topics` (full names)
    /// and assigns the partitions that have records in it.
    pub fn open(
        args: &KafkaArgs,
        topics: &[String],
        from_ms: i64,
        to_ms: i64,
        timeout: Duration,
    ) -> Result<Self, RangeError> {
        if from_ms >= to_ms {
            return Err(RangeError::Inverted { from_ms, to_ms });
        }
        let consumer = Self::consumer(args)?;
        let partitions = Self::partitions(&consumer, topics, timeout)?;
        let at = |ms: i64| -> Result<TopicPartitionList, RangeError> {
            let mut list = TopicPartitionList::new();
            for (topic, partition) in &partitions {
                list.add_partition_offset(topic, *partition, Offset::Offset(ms))?;
            }
            Ok(consumer.offsets_for_times(list, timeout)?)
        };
        let (starts, ends) = (at(from_ms)?, at(to_ms)?);
        let mut plan = Vec::new();
        for (topic, partition) in &partitions {
            let (_, high) = watermarks(&consumer, topic, *partition, timeout)?;
            // No record at or after the time: the partition's end.
            let offset_in = |list: &TopicPartitionList| match list
                .find_partition(topic, *partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => offset.min(high),
                _ => high,
            };
            let (start, end) = (offset_in(&starts), offset_in(&ends));
            if start < end {
                plan.push(Planned {
                    topic: topic.clone(),
                    partition: *partition,
                    start,
                    end,
                });
            }
        }
        Self::assigned(consumer, plan, from_ms, to_ms)
    }

    /// The last `last` records of every partition of `topics` and, with `follow`, every record
    /// appended after them, without end (`next_batch` answers an empty batch when nothing
    /// came for a while, so the caller can stop).
    pub fn tail(
        args: &KafkaArgs,
        topics: &[String],
        last: i64,
        follow: bool,
        timeout: Duration,
    ) -> Result<Self, RangeError> {
        let consumer = Self::consumer(args)?;
        let mut plan = Vec::new();
        for (topic, partition) in Self::partitions(&consumer, topics, timeout)? {
            let (low, high) = watermarks(&consumer, &topic, partition, timeout)?;
            let start = (high - last.max(0)).max(low);
            let end = if follow { i64::MAX } else { high };
            if start < end {
                plan.push(Planned {
                    topic,
                    partition,
                    start,
                    end,
                });
            }
        }
        Self::assigned(consumer, plan, i64::MIN, i64::MAX)
    }

    /// Every record of `topic` from `start` on, without end, and the offset each partition
    /// starts at. `next_batch` answers an empty batch when nothing came for half a second.
    pub fn follow(
        args: &KafkaArgs,
        topic: &str,
        start: &Start,
        timeout: Duration,
    ) -> Result<(Self, std::collections::BTreeMap<i32, i64>), RangeError> {
        // A position that retention deletes while the stream reads is an error, never a
        // silent jump to the end (librdkafka's default), which would skip what lay between.
        let mut config = Self::config(args)?;
        config.set("auto.offset.reset", "error");
        let consumer: BaseConsumer = config.create().map_err(KafkaSetupError::from)?;
        let partitions = Self::partitions(&consumer, &[topic.to_string()], timeout)?;
        let times = match start {
            Start::Time(ms) => {
                let mut list = TopicPartitionList::new();
                for (topic, partition) in &partitions {
                    list.add_partition_offset(topic, *partition, Offset::Offset(*ms))?;
                }
                Some(consumer.offsets_for_times(list, timeout)?)
            }
            _ => None,
        };
        let mut plan = Vec::new();
        let mut starts = std::collections::BTreeMap::new();
        for (topic, partition) in partitions {
            let (low, high) = watermarks(&consumer, &topic, partition, timeout)?;
            let at = match start {
                Start::End => high,
                Start::Time(_) => match times
                    .as_ref()
                    .and_then(|t| t.find_partition(&topic, partition))
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) => offset.clamp(low, high),
                    _ => high,
                },
                Start::Offsets(offsets) => match offsets.get(&partition) {
                    Some(&offset) if offset < low || offset > high => {
                        return Err(RangeError::Stale {
                            partition,
                            offset,
                            low,
                            high,
                        });
                    }
                    Some(&offset) => offset,
                    None => low,
                },
            };
            starts.insert(partition, at);
            plan.push(Planned {
                topic,
                partition,
                start: at,
                end: i64::MAX,
            });
        }
        Ok((Self::assigned(consumer, plan, i64::MIN, i64::MAX)?, starts))
    }

    fn consumer(args: &KafkaArgs) -> Result<BaseConsumer, RangeError> {
        Ok(Self::config(args)?
            .create()
            .map_err(KafkaSetupError::from)?)
    }

    /// The reader's client settings: bulk reads with a bounded prefetch. librdkafka's
    /// defaults keep up to 100,000 records per partition queued and fetch up to 50 MB at a
    /// time, hundreds of megabytes over a few partitions; small fetches (2 MB, 512 kB per
    /// partition) read as fast here and keep a replay's memory near 100 MB whatever its
    /// range. A full queue pauses fetching for fetch.queue.backoff.ms (a second by default):
    /// at a bulk reader's pace the queue drains long before, and the reader would sit idle.
    /// KAFKA_PROPERTIES may set any of these otherwise.
    fn config(args: &KafkaArgs) -> Result<ClientConfig, KafkaSetupError> {
        let mut config = args.consumer_config("herald-range-reader-unused")?;
        for (key, value) in [
            ("fetch.max.bytes", "2097152"),
            ("fetch.message.max.bytes", "524288"),
            ("queued.min.messages", "5000"),
            ("queued.max.messages.kbytes", "8192"),
            ("fetch.queue.backoff.ms", "5"),
        ] {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        Ok(config)
    }

    /// Every partition of `topics`; an unknown topic is an error naming those that exist.
    fn partitions(
        consumer: &BaseConsumer,
        topics: &[String],
        timeout: Duration,
    ) -> Result<Vec<(String, i32)>, RangeError> {
        let metadata = consumer.fetch_metadata(None, timeout)?;
        let mut partitions = Vec::new();
        for topic in topics {
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                let mut existing: Vec<&str> = metadata
                    .topics()
                    .iter()
                    .map(|t| t.name())
                    .filter(|name| !name.starts_with("__"))
                    .collect();
                existing.sort_unstable();
                return Err(RangeError::UnknownTopic {
                    missing: topic.clone(),
                    existing: existing.join(", "),
                });
            };
            for p in found.partitions() {
                partitions.push((topic.clone(), p.id()));
            }
        }
        Ok(partitions)
    }

    fn assigned(
        consumer: BaseConsumer,
        plan: Vec<Planned>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Self, RangeError> {
        let mut assignment = TopicPartitionList::new();
        for p in &plan {
            assignment.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.start))?;
        }
        consumer.assign(&assignment)?;
        let remaining = plan
            .iter()
            .map(|p| ((p.topic.clone(), p.partition), p.end))
            .collect();
        Ok(Self {
            consumer,
            plan,
            remaining,
            from_ms,
            to_ms,
            headers: true,
        })
    }

    /// Leaves records' headers unread: a bulk reader that has no use for them saves copying
    /// each one.
    pub fn without_headers(mut self) -> Self {
        self.headers = false;
        self
    }

    /// What the read covers, by partition.
    pub fn plan(&self) -> &[Planned] {
        &self.plan
    }

    /// How many records the plan's offsets span (the records in the range, give or take
    /// those whose timestamps step outside it).
    pub fn span(&self) -> u64 {
        self.plan
            .iter()
            .map(|p| u64::try_from(p.end - p.start).unwrap_or(0))
            .sum()
    }

    /// Up to `max` records, in offset order within each partition: fewer when none came for
    /// half a second (possibly none); `None` once every partition has reached its end.
    pub fn next_batch(&mut self, max: usize) -> Result<Option<Vec<ReadRecord>>, RangeError> {
        let mut batch = Vec::new();
        while batch.len() < max && !self.remaining.is_empty() {
            let Some(message) = self.consumer.poll(Duration::from_millis(500)) else {
                // Quiet: a partition whose last records before its end were compacted away
                // has nothing more to deliver, though its position has reached the end.
                self.finish_reached()?;
                break;
            };
            let message = match message {
                Ok(message) => message,
                // What was read before the error is delivered first: the consumer's position
                // is past it already. The error is the next call's, if it lasts.
                Err(err) if !batch.is_empty() => {
                    tracing::debug!(%err, "a read failed after part of a batch");
                    break;
                }
                Err(err) => return Err(err.into()),
            };
            let slot = self.remaining.iter().position(|((topic, partition), _)| {
                *partition == message.partition() && topic == message.topic()
            });
            let Some(slot) = slot else {
                continue;
            };
            let end = self.remaining[slot].1;
            if message.offset() + 1 >= end {
                let ((topic, partition), _) = self.remaining.swap_remove(slot);
                // Stop fetching what is beyond the range.
                let mut done = TopicPartitionList::new();
                done.add_partition(&topic, partition);
                self.consumer.pause(&done)?;
            }
            if message.offset() >= end {
                continue;
            }
            let record = ReadRecord::read(&message, self.headers);
            if record
                .timestamp_ms
                .is_some_and(|ms| ms >= self.from_ms && ms < self.to_ms)
            {
                batch.push(record);
            }
        }
        if batch.is_empty() && self.remaining.is_empty() {
            return Ok(None);
        }
        Ok(Some(batch))
    }

    fn finish_reached(&mut self) -> Result<(), RangeError> {
        let position = self.consumer.position()?;
        self.remaining.retain(|((topic, partition), end)| {
            !matches!(
                position.find_partition(topic, *partition).map(|e| e.offset()),
                Some(Offset::Offset(at)) if at >= *end
            )
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(properties: &[&str]) -> KafkaArgs {
        KafkaArgs {
            brokers: Some("127.0.0.1:9092".into()),
            properties: properties.iter().map(|p| (*p).to_owned()).collect(),
            topic_prefix: String::new(),
            topics_file: None,
        }
    }

    #[test]
    fn the_prefetch_is_bounded_unless_kafka_properties_say_otherwise() {
        let config = RangeReader::config(&args(&[])).unwrap();
        assert_eq!(config.get("fetch.max.bytes"), Some("2097152"));
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("8192"));

        let config = RangeReader::config(&args(&["fetch.max.bytes=1048576", ""])).unwrap();
        assert_eq!(config.get("fetch.max.bytes"), Some("1048576"));
        assert_eq!(config.get("queued.min.messages"), Some("5000"));
    }

    #[test]
    fn a_property_without_a_value_is_refused_without_showing_it() {
        let err = RangeReader::config(&args(&["sasl.password"])).unwrap_err();
        assert!(matches!(err, KafkaSetupError::BadProperty(ref start) if start == "sasl.passwor"));
    }
}
