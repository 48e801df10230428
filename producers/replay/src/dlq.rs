//! Dead letters: what the consumer runtime put aside, and putting it back.
//!
//! A group's dead letters are on `<group>.dlq`, each the original record with headers saying
//! where it came from and why it failed. Redriving one publishes the original record again
//! to its original topic (a new offset; the same event id, which every consumer deduplicates)
//! and then records the redrive on `<group>.dlq.redriven`, keyed by the letter's place in
//! the dead-letter topic. A letter recorded there is never redriven again; a crash between
//! the publish and the record can publish it twice, which consumers absorb by event id.

use std::collections::HashSet;
use std::time::Duration;

use events::Codec;
use platform::consumer::dlq_headers;
use platform::kafka::{KafkaArgs, ReadRecord};

/// How long the broker has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A group's dead letters as they stand: every letter, and the marks of those redriven.
pub struct DeadLetters {
    pub letters: Vec<Letter>,
    pub redriven: HashSet<String>,
    topic: String,
}

impl DeadLetters {
    /// Reads `group`'s (a name without the topic prefix) dead-letter topic and its redrive
    /// records to their end.
    pub async fn read(kafka: &KafkaArgs, codec: &Codec, group: &str) -> anyhow::Result<Self> {
        let topic = format!("{}.dlq", kafka.topic(group));
        let read = |topic: String| {
            let kafka = kafka.clone();
            async move { platform::kafka::read_all(&kafka, &[topic], TIMEOUT).await }
        };
        let letters = read(topic.clone())
            .await?
            .iter()
            .map(|record| Letter::new(record, codec))
            .collect();
        let redriven = read(format!("{topic}.redriven"))
            .await?
            .into_iter()
            .filter_map(|record| record.key.map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect();
        Ok(Self {
            letters,
            redriven,
            topic,
        })
    }

    /// Publishes each of `chosen` again to its original topic, then records its redrive;
    /// answers where each went (`partition@offset`), in order.
    pub async fn redrive(
        &self,
        kafka: &KafkaArgs,
        chosen: &[&Letter],
    ) -> anyhow::Result<Vec<String>> {
        let marks_topic = format!("{}.redriven", self.topic);
        let publisher = platform::kafka::Publisher::new(kafka, Duration::from_secs(30))?;
        platform::kafka::ensure_topics(
            kafka,
            std::slice::from_ref(&marks_topic),
            Default::default(),
        )
        .await?;
        let now_ms = || platform::clock::now_us() / 1000;
        let mut places = Vec::with_capacity(chosen.len());
        for letter in chosen {
            let again = platform::kafka::OutgoingRecord {
                topic: letter.topic.as_str().into(),
                key: letter.key.clone(),
                payload: letter.payload.clone(),
                timestamp_ms: now_ms(),
                headers: letter
                    .headers
                    .iter()
                    .map(|(name, value)| (name.clone().into(), value.clone()))
                    .collect(),
            };
            let delivered = publisher
                .publish_all(std::slice::from_ref(&again))
                .await
                .map_err(|err| anyhow::anyhow!("publishing {} again: {err:?}", letter.mark()))?;
            let place = delivered
                .first()
                .map(|d| format!("{}@{}", d.partition, d.offset))
                .unwrap_or_default();
            let mark = platform::kafka::OutgoingRecord {
                topic: marks_topic.as_str().into(),
                key: letter.mark().into_bytes(),
                payload: format!("{}/{place}", letter.topic).into_bytes(),
                timestamp_ms: now_ms(),
                headers: Vec::new(),
            };
            publisher
                .publish_all(std::slice::from_ref(&mark))
                .await
                .map_err(|err| {
                    anyhow::anyhow!("recording the redrive of {}: {err:?}", letter.mark())
                })?;
            places.push(place);
        }
        Ok(places)
    }
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    /// Where it is on the dead-letter topic.
    pub partition: i32,
    pub offset: i64,
    /// The event, when the record decodes.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// Where it came from.
    pub topic: String,
    pub source_partition: String,
    pub source_offset: String,
    pub error: String,
    pub attempts: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    /// The original record's headers, without the dead-letter ones.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Letter {
    pub fn new(record: &ReadRecord, codec: &Codec) -> Self {
        let header = |name: &str| {
            record
                .header(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let payload = record.payload.clone().unwrap_or_default();
        let decoded = codec.decode(&payload).ok();
        Self {
            partition: record.partition,
            offset: record.offset,
            event_id: decoded.as_ref().map(|d| d.envelope.event_id.to_string()),
            event_type: decoded.map(|d| d.envelope.event_type),
            topic: header(dlq_headers::TOPIC),
            source_partition: header(dlq_headers::PARTITION),
            source_offset: header(dlq_headers::OFFSET),
            error: header(dlq_headers::ERROR),
            attempts: header(dlq_headers::ATTEMPTS),
            key: record.key.clone().unwrap_or_default(),
            payload,
            headers: record
                .headers
                .iter()
                .filter(|(name, _)| !name.starts_with("herald.dlq."))
                .cloned()
                .collect(),
        }
    }

    /// Its key on the redrive record: its place on the dead-letter topic.
    pub fn mark(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }
}

/// Which letters to redrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    All,
    EventId(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChoiceError {
    #[error("no dead letter of event {0} (`herald dlq list` shows them)")]
    NoSuchEvent(String),
    #[error("the dead letter of event {0} was redriven before; nothing to do")]
    AlreadyRedriven(String),
    #[error("dead letter {0} has no original topic header: it cannot be redriven")]
    NoOrigin(String),
}

/// The letters to publish again: those chosen that were not redriven before.
pub fn choose<'a>(
    letters: &'a [Letter],
    redriven: &HashSet<String>,
    choice: &Choice,
) -> Result<Vec<&'a Letter>, ChoiceError> {
    let chosen: Vec<&Letter> = match choice {
        Choice::All => letters
            .iter()
            .filter(|l| !redriven.contains(&l.mark()))
            .collect(),
        Choice::EventId(id) => {
            let matching: Vec<&Letter> = letters
                .iter()
                .filter(|l| l.event_id.as_deref() == Some(id.as_str()))
                .collect();
            if matching.is_empty() {
                return Err(ChoiceError::NoSuchEvent(id.clone()));
            }
            let fresh: Vec<&Letter> = matching
                .into_iter()
                .filter(|l| !redriven.contains(&l.mark()))
                .collect();
            if fresh.is_empty() {
                return Err(ChoiceError::AlreadyRedriven(id.clone()));
            }
            fresh
        }
    };
    if let Some(orphan) = chosen.iter().find(|l| l.topic.is_empty()) {
        return Err(ChoiceError::NoOrigin(orphan.mark()));
    }
    Ok(chosen)
}

/// `herald dlq list`: one line per letter.
pub fn list_table(letters: &[Letter], redriven: &HashSet<String>) -> String {
    let mut out = String::from("dlq\tevent_id\ttype\tfrom\tattempts\tredriven\terror\n");
    for l in letters {
        out.push_str(&format!(
            "{}\t{}\t{}\t{}/{}@{}\t{}\t{}\t{}\n",
            l.mark(),
            l.event_id.as_deref().unwrap_or("(undecodable)"),
            l.event_type.as_deref().unwrap_or("-"),
            l.topic,
            l.source_partition,
            l.source_offset,
            l.attempts,
            if redriven.contains(&l.mark()) {
                "yes"
            } else {
                "no"
            },
            l.error.replace(['\n', '\t'], " "),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(offset: i64, event: &str) -> Letter {
        Letter {
            partition: 0,
            offset,
            event_id: Some(event.into()),
            event_type: Some("user.registered".into()),
            topic: "users".into(),
            source_partition: "3".into(),
            source_offset: "17".into(),
            error: "unknown schema".into(),
            attempts: "1".into(),
            key: Vec::new(),
            payload: Vec::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_letter_is_chosen_once() {
        let letters = [letter(0, "e-1"), letter(1, "e-2")];
        let mut redriven = HashSet::new();
        assert_eq!(choose(&letters, &redriven, &Choice::All).unwrap().len(), 2);
        redriven.insert("0:0".to_string());
        let all = choose(&letters, &redriven, &Choice::All).unwrap();
        assert_eq!(all, vec![&letters[1]]);
        assert_eq!(
            choose(&letters, &redriven, &Choice::EventId("e-1".into())),
            Err(ChoiceError::AlreadyRedriven("e-1".into()))
        );
        assert_eq!(
            choose(&letters, &redriven, &Choice::EventId("e-9".into())),
            Err(ChoiceError::NoSuchEvent("e-9".into()))
        );
    }

    #[test]
    fn the_list_says_where_a_letter_came_from_and_why() {
        let table = list_table(&[letter(4, "e-1")], &HashSet::new());
        assert_eq!(
            table.lines().nth(1),
            Some("0:4\te-1\tuser.registered\tusers/3@17\t1\tno\tunknown schema")
        );
    }
}
