//! Consumer groups seen from outside: their state, their lag, and moving their offsets.
//!
//! Nothing here joins a group: offsets are read with the group's id and, for a reset,
//! committed as a simple (memberless) client, which the broker accepts only while the group
//! has no members. Every function blocks: call it from a blocking thread.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaArgs, KafkaSetupError, watermarks};

/// A consumer group as the cluster describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// `Stable`, `Empty`, `PreparingRebalance`, ...
    pub state: String,
    pub members: usize,
}

/// How far one group is behind on one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// The next offset the group will read.
    pub committed: i64,
    pub end: i64,
    /// Records not read yet.
    pub lag: i64,
    /// Age of the oldest record not read yet; zero when nothing is behind, `None` when that
    /// record could not be fetched in time.
    pub lag_seconds: Option<f64>,
}

/// One partition's offset before and after a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub topic: String,
    pub partition: i32,
    pub before: i64,
    pub after: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("no consumer group {0:?} on the cluster (`herald lag` lists them)")]
    Unknown(String),
    #[error(
        "group {group:?} has {members} live member(s) (state {state}): stop its consumers first, \
         its offsets can only be moved while nobody reads with them"
    )]
    Live {
        group: String,
        members: usize,
        state: String,
    },
    #[error("group {0:?} has no committed offsets: there is nothing to move")]
    NothingCommitted(String),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
}

impl From<rdkafka::error::KafkaError> for GroupError {
    fn from(err: rdkafka::error::KafkaError) -> Self {
        Self::Kafka(KafkaSetupError::Client(err))
    }
}

/// Every consumer group on the cluster, by name.
pub fn list(args: &KafkaArgs, timeout: Duration) -> Result<Vec<Group>, GroupError> {
    let consumer: BaseConsumer = args
        .consumer_config("herald-group-reader-unused")?
        .create()
        .map_err(KafkaSetupError::from)?;
    let groups = consumer.fetch_group_list(None, timeout)?;
    let mut found: Vec<Group> = groups
        .groups()
        .iter()
        .filter(|g| g.protocol_type() == "consumer" || g.protocol_type().is_empty())
        .map(|g| Group {
            name: g.name().to_string(),
            state: g.state().to_string(),
            members: g.members().len(),
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

fn describe(args: &KafkaArgs, group: &str, timeout: Duration) -> Result<Group, GroupError> {
    let consumer: BaseConsumer = args
        .consumer_config("herald-group-reader-unused")?
        .create()
        .map_err(KafkaSetupError::from)?;
    let groups = consumer.fetch_group_list(Some(group), timeout)?;
    groups
        .groups()
        .iter()
        .find(|g| g.name() == group && g.state() != "Dead")
        .map(|g| Group {
            name: g.name().to_string(),
            state: g.state().to_string(),
            members: g.members().len(),
        })
        .ok_or_else(|| GroupError::Unknown(group.to_string()))
}

/// The group's committed offsets, on every partition of every topic it has committed on.
fn committed(
    consumer: &BaseConsumer,
    timeout: Duration,
) -> Result<Vec<(String, i32, i64)>, GroupError> {
    let metadata = consumer.fetch_metadata(None, timeout)?;
    let mut all = TopicPartitionList::new();
    for topic in metadata.topics() {
        if topic.name().starts_with("__") {
            continue;
        }
        for p in topic.partitions() {
            all.add_partition(topic.name(), p.id());
        }
    }
    if all.count() == 0 {
        return Ok(Vec::new());
    }
    let mut found: Vec<(String, i32, i64)> = consumer
        .committed_offsets(all, timeout)?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(offset) => Some((e.topic().to_string(), e.partition(), offset)),
            _ => None,
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Lag of `group` on every partition it has committed on, in records and in seconds (the
/// age of the oldest record it has not read).
pub fn lag(
    args: &KafkaArgs,
    group: &str,
    timeout: Duration,
) -> Result<Vec<PartitionLag>, GroupError> {
    describe(args, group, timeout)?;
    let consumer: BaseConsumer = args
        .consumer_config(group)?
        .create()
        .map_err(KafkaSetupError::from)?;
    let mut lags = Vec::new();
    for (topic, partition, committed) in committed(&consumer, timeout)? {
        let (_, end) = watermarks(&consumer, &topic, partition, timeout)?;
        lags.push(PartitionLag {
            lag: (end - committed).max(0),
            topic,
            partition,
            committed,
            end,
            lag_seconds: Some(0.0),
        });
    }
    oldest_unread_ages(args, &mut lags, timeout)?;
    Ok(lags)
}

/// Fills `lag_seconds` of the partitions that are behind with the age of the record at the
/// committed offset, read without a group.
fn oldest_unread_ages(
    args: &KafkaArgs,
    lags: &mut [PartitionLag],
    timeout: Duration,
) -> Result<(), GroupError> {
    let behind: Vec<usize> = (0..lags.len()).filter(|i| lags[*i].lag > 0).collect();
    if behind.is_empty() {
        return Ok(());
    }
    let reader: BaseConsumer = args
        .consumer_config("herald-lag-reader-unused")?
        .create()
        .map_err(KafkaSetupError::from)?;
    let mut assignment = TopicPartitionList::new();
    for i in &behind {
        let l = &lags[*i];
        assignment.add_partition_offset(&l.topic, l.partition, Offset::Offset(l.committed))?;
        lags[*i].lag_seconds = None;
    }
    reader.assign(&assignment)?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut waiting: HashMap<(String, i32), usize> = behind
        .iter()
        .map(|i| ((lags[*i].topic.clone(), lags[*i].partition), *i))
        .collect();
    let deadline = std::time::Instant::now() + timeout;
    while !waiting.is_empty() && std::time::Instant::now() < deadline {
        let Some(message) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let slot = (message.topic().to_string(), message.partition());
        if let Some(i) = waiting.remove(&slot)
            && let Some(at) = message.timestamp().to_millis()
        {
            lags[i].lag_seconds = Some((now_ms - at).max(0) as f64 / 1000.0);
        }
    }
    Ok(())
}

/// Moves `group`'s offsets, on every partition it has committed on, to the first record at
/// or after `at_ms` (the partition's end when there is none), so its consumers read again
/// from there when they start. Refused while the group has members.
pub fn reset_to_time(
    args: &KafkaArgs,
    group: &str,
    at_ms: i64,
    timeout: Duration,
) -> Result<Vec<Moved>, GroupError> {
    let described = describe(args, group, timeout)?;
    if described.members > 0 {
        return Err(GroupError::Live {
            group: group.to_string(),
            members: described.members,
            state: described.state,
        });
    }
    let consumer: BaseConsumer = args
        .consumer_config(group)?
        .create()
        .map_err(KafkaSetupError::from)?;
    let before = committed(&consumer, timeout)?;
    if before.is_empty() {
        return Err(GroupError::NothingCommitted(group.to_string()));
    }
    let mut wanted = TopicPartitionList::new();
    for (topic, partition, _) in &before {
        wanted.add_partition_offset(topic, *partition, Offset::Offset(at_ms))?;
    }
    let found = consumer.offsets_for_times(wanted, timeout)?;
    let mut moves = Vec::new();
    let mut commit = TopicPartitionList::new();
    for (topic, partition, was) in before {
        let (_, end) = watermarks(&consumer, &topic, partition, timeout)?;
        let after = match found.find_partition(&topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset.min(end),
            _ => end,
        };
        commit.add_partition_offset(&topic, partition, Offset::Offset(after))?;
        moves.push(Moved {
            topic,
            partition,
            before: was,
            after,
        });
    }
    consumer.commit(&commit, CommitMode::Sync)?;
    Ok(moves)
}
