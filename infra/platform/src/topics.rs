//! Topics as code: how the cluster keeps each topic, declared in `infra/topics.toml` (built
//! in; `TOPICS_FILE` replaces it), and the difference between that and a cluster, decided
//! here without I/O. [`crate::kafka::ensure_topics`] creates what is missing and warns of
//! drift; `herald topics plan` prints the difference, `herald topics apply` makes it so.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

const EMBEDDED: &str = include_str!("../../topics.toml");

/// Kafka's value for "kept for good".
const FOREVER_MS: i64 = -1;

#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    #[error("topics file: {0}")]
    Parse(String),
    #[error("topics file: topic {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error(
        "topic {0} is not declared in the topics file (infra/topics.toml): declare its \
         partitions and retention there"
    )]
    Undeclared(String),
}

/// How the cluster keeps one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub partitions: i32,
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
    /// Milliseconds; -1 is for good.
    pub retention_ms: i64,
    pub cleanup_policy: String,
}

impl Spec {
    /// The spec as it applies on a cluster of `brokers`: no more replicas than brokers, and
    /// no more in-sync replicas required than replicas.
    pub fn on(&self, brokers: i32) -> Self {
        let replication_factor = self.replication_factor.min(brokers.max(1));
        Self {
            replication_factor,
            min_insync_replicas: self.min_insync_replicas.min(replication_factor),
            ..self.clone()
        }
    }

    /// The topic-level configs Herald sets, as Kafka names them.
    pub fn configs(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("cleanup.policy", self.cleanup_policy.clone()),
            ("min.insync.replicas", self.min_insync_replicas.to_string()),
            ("retention.ms", self.retention_ms.to_string()),
        ])
    }
}

/// The topics file, parsed.
#[derive(Debug, Clone)]
pub struct Declared {
    entries: Vec<(String, Spec)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    defaults: Defaults,
    topic: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    replication_factor: i32,
    min_insync_replicas: i32,
    cleanup_policy: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    partitions: i32,
    retention: String,
    replication_factor: Option<i32>,
    min_insync_replicas: Option<i32>,
    cleanup_policy: Option<String>,
}

impl Declared {
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED).expect("the built-in topics file is valid (tested)")
    }

    /// The file at `path`, or the built-in one.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, TopicsError> {
        match path {
            None => Ok(Self::embedded()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    TopicsError::Parse(format!("reading {}: {err}", path.display()))
                })?;
                Self::parse(&text)
            }
        }
    }

    pub fn parse(text: &str) -> Result<Self, TopicsError> {
        let file: File = toml::from_str(text).map_err(|err| TopicsError::Parse(err.to_string()))?;
        let mut entries = Vec::new();
        for entry in file.topic {
            let invalid = |reason: &str| TopicsError::Invalid {
                name: entry.name.clone(),
                reason: reason.to_string(),
            };
            let spec = Spec {
                partitions: entry.partitions,
                replication_factor: entry
                    .replication_factor
                    .unwrap_or(file.defaults.replication_factor),
                min_insync_replicas: entry
                    .min_insync_replicas
                    .unwrap_or(file.defaults.min_insync_replicas),
                retention_ms: retention_ms(&entry.retention).map_err(|r| invalid(&r))?,
                cleanup_policy: entry
                    .cleanup_policy
                    .unwrap_or_else(|| file.defaults.cleanup_policy.clone()),
            };
            if spec.partitions < 1 || spec.replication_factor < 1 {
                return Err(invalid(
                    "partitions and replication_factor must be at least 1",
                ));
            }
            if spec.min_insync_replicas < 1 || spec.min_insync_replicas > spec.replication_factor {
                return Err(invalid(
                    "min_insync_replicas must be from 1 to replication_factor",
                ));
            }
            if !matches!(
                spec.cleanup_policy.as_str(),
                "delete" | "compact" | "compact,delete" | "delete,compact"
            ) {
                return Err(invalid(
                    "cleanup_policy is delete, compact or compact,delete",
                ));
            }
            if entries.iter().any(|(name, _)| *name == entry.name) {
                return Err(invalid("declared twice"));
            }
            entries.push((entry.name, spec));
        }
        Ok(Self { entries })
    }

    /// The spec of `name` (without the topic prefix): its own entry, else the longest
    /// `*.suffix` entry it ends with.
    pub fn spec(&self, name: &str) -> Result<&Spec, TopicsError> {
        if let Some((_, spec)) = self.entries.iter().find(|(n, _)| n == name) {
            return Ok(spec);
        }
        self.entries
            .iter()
            .filter_map(|(pattern, spec)| {
                let suffix = pattern.strip_prefix('*')?;
                (name.len() > suffix.len() && name.ends_with(suffix)).then_some((suffix, spec))
            })
            .max_by_key(|(suffix, _)| suffix.len())
            .map(|(_, spec)| spec)
            .ok_or_else(|| TopicsError::Undeclared(name.to_string()))
    }

    /// The names declared without a wildcard.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !name.starts_with('*'))
    }
}

/// `forever`, or a whole number of `d`, `h` or `m`.
fn retention_ms(text: &str) -> Result<i64, String> {
    if text == "forever" {
        return Ok(FOREVER_MS);
    }
    let unit_ms = match text.chars().last() {
        Some('d') => 86_400_000,
        Some('h') => 3_600_000,
        Some('m') => 60_000,
        _ => {
            return Err(format!(
                "retention {text:?} is not forever, 30d, 12h or 90m"
            ));
        }
    };
    text[..text.len() - 1]
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(unit_ms))
        .ok_or_else(|| format!("retention {text:?} is not forever, 30d, 12h or 90m"))
}

/// A topic as the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub partitions: i32,
    pub replication_factor: i32,
    /// The topic-level configs Herald sets (see [`Spec::configs`]), as the cluster reports
    /// them.
    pub configs: BTreeMap<String, String>,
}

/// One difference between a topic and its spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Missing: created with the spec.
    Create(Spec),
    /// Fewer partitions than declared: added (keys then map to other partitions for new
    /// events; Kafka cannot take partitions away).
    AddPartitions { from: i32, to: i32 },
    /// A config that differs: set.
    SetConfig {
        key: &'static str,
        from: Option<String>,
        to: String,
    },
    /// Fewer replicas than declared: reported only, since raising it means moving data
    /// between brokers (`kafka-reassign-partitions.sh`).
    FewerReplicas { have: i32, want: i32 },
    /// More partitions than declared: reported only, never lowered.
    MorePartitions { have: i32, want: i32 },
}

impl Change {
    /// Whether `apply` makes this change (the others are reported only).
    pub fn applied(&self) -> bool {
        matches!(
            self,
            Change::Create(_) | Change::AddPartitions { .. } | Change::SetConfig { .. }
        )
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create(spec) => write!(
                f,
                "create: {} partitions, {} replicas, min.insync.replicas {}, retention.ms {}, \
                 cleanup.policy {}",
                spec.partitions,
                spec.replication_factor,
                spec.min_insync_replicas,
                spec.retention_ms,
                spec.cleanup_policy
            ),
            Change::AddPartitions { from, to } => write!(f, "partitions {from} -> {to}"),
            Change::SetConfig { key, from, to } => write!(
                f,
                "{key} {} -> {to}",
                from.as_deref().unwrap_or("(broker default)")
            ),
            Change::FewerReplicas { have, want } => write!(
                f,
                "replicas {have}, declared {want}: not changed here; reassign the partitions \
                 (kafka-reassign-partitions.sh)"
            ),
            Change::MorePartitions { have, want } => write!(
                f,
                "partitions {have}, declared {want}: left as they are (partitions are never lowered)"
            ),
        }
    }
}

/// What it takes to bring a topic to `spec` on a cluster of `brokers`.
pub fn plan(spec: &Spec, observed: Option<&Observed>, brokers: i32) -> Vec<Change> {
    let spec = spec.on(brokers);
    let Some(observed) = observed else {
        return vec![Change::Create(spec)];
    };
    let mut changes = Vec::new();
    if observed.partitions < spec.partitions {
        changes.push(Change::AddPartitions {
            from: observed.partitions,
            to: spec.partitions,
        });
    } else if observed.partitions > spec.partitions {
        changes.push(Change::MorePartitions {
            have: observed.partitions,
            want: spec.partitions,
        });
    }
    if observed.replication_factor < spec.replication_factor {
        changes.push(Change::FewerReplicas {
            have: observed.replication_factor,
            want: spec.replication_factor,
        });
    }
    // min.insync.replicas is bounded by the replicas the topic has, not those declared.
    let mut wanted = spec.clone();
    wanted.min_insync_replicas = spec
        .min_insync_replicas
        .min(observed.replication_factor.max(1));
    for (key, to) in wanted.configs() {
        let from = observed.configs.get(key).cloned();
        if from.as_deref() != Some(to.as_str()) {
            changes.push(Change::SetConfig { key, from, to });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(partitions: i32, replicas: i32, configs: &[(&str, &str)]) -> Observed {
        Observed {
            partitions,
            replication_factor: replicas,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_built_in_file_declares_event_topics_for_good_and_dead_letters_for_a_while() {
        let declared = Declared::embedded();
        let orders = declared.spec("orders").unwrap();
        assert_eq!(orders.retention_ms, -1);
        assert_eq!(
            (orders.replication_factor, orders.min_insync_replicas),
            (3, 2)
        );
        let dlq = declared.spec("notifications.dlq").unwrap();
        assert_eq!(dlq.retention_ms, 30 * 86_400_000);
        assert_eq!(dlq.partitions, 1);
        // the longest pattern wins
        let marks = declared.spec("notifications.dlq.redriven").unwrap();
        assert_eq!(marks.retention_ms, -1);
        assert!(matches!(
            declared.spec("scratch"),
            Err(TopicsError::Undeclared(_))
        ));
        assert!(matches!(
            declared.spec(".dlq"),
            Err(TopicsError::Undeclared(_))
        ));
    }

    #[test]
    fn every_event_topic_of_the_catalog_is_declared() {
        let declared = Declared::embedded();
        let catalog = events::Catalog::embedded().unwrap();
        for topic in catalog.topics() {
            assert!(declared.spec(topic).is_ok(), "{topic} is not declared");
        }
        let names: Vec<&str> = declared.names().collect();
        for name in names {
            assert!(
                catalog.topics().contains(&name),
                "{name} is declared but no event type uses it"
            );
        }
    }

    #[test]
    fn a_small_cluster_gets_as_many_replicas_as_it_has_brokers() {
        let spec = Declared::embedded().spec("orders").unwrap().on(1);
        assert_eq!((spec.replication_factor, spec.min_insync_replicas), (1, 1));
        let spec = Declared::embedded().spec("orders").unwrap().on(5);
        assert_eq!((spec.replication_factor, spec.min_insync_replicas), (3, 2));
    }

    #[test]
    fn plans_add_partitions_and_set_configs_but_never_lower_or_move_data() {
        let spec = Declared::embedded().spec("orders").unwrap().clone();
        assert_eq!(plan(&spec, None, 3), vec![Change::Create(spec.clone())]);
        let same = observed(
            6,
            3,
            &[
                ("cleanup.policy", "delete"),
                ("min.insync.replicas", "2"),
                ("retention.ms", "-1"),
            ],
        );
        assert!(plan(&spec, Some(&same), 3).is_empty());
        let drifted = observed(
            3,
            1,
            &[("cleanup.policy", "delete"), ("retention.ms", "604800000")],
        );
        let changes = plan(&spec, Some(&drifted), 3);
        assert_eq!(
            changes,
            vec![
                Change::AddPartitions { from: 3, to: 6 },
                Change::FewerReplicas { have: 1, want: 3 },
                Change::SetConfig {
                    key: "min.insync.replicas",
                    from: None,
                    to: "1".into()
                },
                Change::SetConfig {
                    key: "retention.ms",
                    from: Some("604800000".into()),
                    to: "-1".into()
                },
            ]
        );
        assert!(!changes[1].applied());
        let more = observed(12, 3, &[]);
        assert!(
            plan(&spec, Some(&more), 3).contains(&Change::MorePartitions { have: 12, want: 6 })
        );
    }

    #[test]
    fn a_bad_file_says_which_topic_and_why() {
        let base = "[defaults]\nreplication_factor = 3\nmin_insync_replicas = 2\ncleanup_policy = \"delete\"\n";
        for (entry, says) in [
            (
                "name = \"a\"\npartitions = 0\nretention = \"forever\"",
                "partitions",
            ),
            (
                "name = \"a\"\npartitions = 1\nretention = \"7 days\"",
                "retention",
            ),
            (
                "name = \"a\"\npartitions = 1\nretention = \"0d\"",
                "retention",
            ),
            (
                "name = \"a\"\npartitions = 1\nretention = \"1d\"\nmin_insync_replicas = 4",
                "min_insync_replicas",
            ),
            (
                "name = \"a\"\npartitions = 1\nretention = \"1d\"\ncleanup_policy = \"gc\"",
                "cleanup_policy",
            ),
        ] {
            let err = Declared::parse(&format!("{base}[[topic]]\n{entry}\n")).unwrap_err();
            assert!(err.to_string().contains(says), "{entry}: {err}");
        }
        assert!(Declared::parse("[[topic]]\nname = 1").is_err());
    }
}
