//! Topics on the cluster, as the topics file declares them ([`crate::topics`]): created
//! when missing, drift reported at start, and the whole difference shown (`herald topics
//! plan`) or made good (`herald topics apply`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use super::{KafkaArgs, KafkaSetupError};
use crate::topics::{Change, Declared, Observed, Spec};

/// What a deployment's own settings change from the topics file, for the topics a service
/// creates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Args)]
pub struct TopicOverrides {
    /// Partitions of the topics this service creates, instead of the topics file's.
    #[arg(long = "topic-partitions", env = "TOPIC_PARTITIONS")]
    pub partitions: Option<i32>,
    /// Replicas of the topics this service creates, instead of the topics file's.
    #[arg(long = "topic-replication", env = "TOPIC_REPLICATION")]
    pub replication: Option<i32>,
}

impl TopicOverrides {
    /// Whether the overrides given are possible.
    pub fn check(&self) -> Result<(), String> {
        if self.partitions.is_some_and(|p| p < 1) || self.replication.is_some_and(|r| r < 1) {
            return Err("TOPIC_PARTITIONS and TOPIC_REPLICATION must be at least 1".into());
        }
        Ok(())
    }

    fn apply(self, spec: &mut Spec) {
        if let Some(partitions) = self.partitions {
            spec.partitions = partitions;
        }
        if let Some(replication) = self.replication {
            spec.replication_factor = replication;
            spec.min_insync_replicas = spec.min_insync_replicas.min(replication);
        }
    }
}

/// One topic of a plan: its full name and what it takes.
#[derive(Debug, Clone)]
pub struct TopicPlan {
    pub topic: String,
    pub changes: Vec<Change>,
}

/// Creates the missing `topics` as the topics file declares them (with `overrides`), and
/// logs a warning for each existing one that differs from it; existing topics are not
/// changed (that is `herald topics apply`).
pub async fn ensure_topics(
    args: &KafkaArgs,
    topics: &[String],
    overrides: TopicOverrides,
) -> Result<(), KafkaSetupError> {
    let plans = plan(args, topics, overrides).await?;
    let mut created = Vec::new();
    for topic in &plans {
        match topic.changes.first() {
            Some(Change::Create(_)) => created.push(topic.clone()),
            Some(_) => {
                let drift: Vec<String> = topic.changes.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    topic = %topic.topic,
                    drift = %drift.join("; "),
                    "the topic differs from the topics file; `herald topics plan` shows it, \
                     `herald topics apply` makes it so"
                );
            }
            None => {}
        }
    }
    apply(args, &created).await?;
    wait_for_leaders(args, topics).await
}

/// The difference between `topics` on the cluster and the topics file.
pub async fn plan(
    args: &KafkaArgs,
    topics: &[String],
    overrides: TopicOverrides,
) -> Result<Vec<TopicPlan>, KafkaSetupError> {
    let declared = Declared::load(args.topics_file.as_deref())?;
    let unique: BTreeSet<&String> = topics.iter().collect();
    let mut specs = Vec::new();
    for topic in unique {
        let name = topic.strip_prefix(&args.topic_prefix).unwrap_or(topic);
        let mut spec = declared.spec(name)?.clone();
        overrides.apply(&mut spec);
        specs.push((topic.clone(), spec));
    }
    let (brokers, observed) = observe(args, specs.iter().map(|(t, _)| t.clone()).collect()).await?;
    Ok(specs
        .into_iter()
        .map(|(topic, spec)| {
            let changes = crate::topics::plan(&spec, observed.get(&topic), brokers);
            if let Some(Change::Create(made)) = changes.first()
                && made.replication_factor < spec.replication_factor
            {
                tracing::warn!(
                    %topic,
                    replicas = made.replication_factor,
                    declared = spec.replication_factor,
                    "the cluster has fewer brokers than the topic's declared replicas; it gets one \
                     replica per broker"
                );
            }
            TopicPlan { topic, changes }
        })
        .collect())
}

/// The leader (a broker id) of each partition of `topic`; -1 where it has none.
pub async fn leaders(args: &KafkaArgs, topic: &str) -> Result<BTreeMap<i32, i32>, KafkaSetupError> {
    let consumer: BaseConsumer = args.client_config()?.create()?;
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| (p.id(), p.leader())))
            .collect())
    })
    .await
    .expect("metadata task panicked")
}

/// Every topic of the cluster with `args`'s prefix, by full name.
pub async fn existing(args: &KafkaArgs) -> Result<Vec<String>, KafkaSetupError> {
    let consumer: BaseConsumer = args.client_config()?.create()?;
    let prefix = args.topic_prefix.clone();
    tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|name| name.starts_with(&prefix) && !name.starts_with("__"))
            .collect())
    })
    .await
    .expect("metadata task panicked")
}

/// Makes the changes of `plans` that are made here (see [`Change::applied`]); the first
/// failure is the error.
pub async fn apply(args: &KafkaArgs, plans: &[TopicPlan]) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = args.client_config()?.create()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let refused = |topic: String, code: RDKafkaErrorCode| KafkaSetupError::CreateTopic {
        topic,
        reason: code.to_string(),
    };
    // Configs as strings that outlive the requests borrowing them.
    let mut creates = Vec::new();
    for plan in plans {
        if let Some(Change::Create(spec)) = plan.changes.first() {
            let configs: Vec<(&'static str, String)> = spec.configs().into_iter().collect();
            creates.push((plan.topic.as_str(), spec.clone(), configs));
        }
    }
    if !creates.is_empty() {
        let new_topics: Vec<NewTopic<'_>> = creates
            .iter()
            .map(|(topic, spec, configs)| {
                let mut new = NewTopic::new(
                    topic,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                );
                for (key, value) in configs {
                    new = new.set(key, value);
                }
                new
            })
            .collect();
        for result in admin.create_topics(&new_topics, &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(refused(topic, code)),
            }
        }
    }
    let grow: Vec<NewPartitions<'_>> = plans
        .iter()
        .flat_map(|plan| {
            plan.changes.iter().filter_map(|change| match change {
                Change::AddPartitions { to, .. } => {
                    Some(NewPartitions::new(&plan.topic, usize::try_from(*to).ok()?))
                }
                _ => None,
            })
        })
        .collect();
    if !grow.is_empty() {
        for result in admin.create_partitions(&grow, &options).await? {
            result.map_err(|(topic, code)| refused(topic, code))?;
        }
    }
    for plan in plans {
        let set: Vec<(&str, &str)> = plan
            .changes
            .iter()
            .filter_map(|change| match change {
                Change::SetConfig { key, to, .. } => Some((*key, to.as_str())),
                _ => None,
            })
            .collect();
        if set.is_empty() {
            continue;
        }
        // AlterConfigs replaces a topic's whole set of overrides: keep the ones it has.
        let kept = dynamic_configs(&admin, &plan.topic).await?;
        let mut all: BTreeMap<&str, &str> =
            kept.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend(set);
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&plan.topic));
        for (key, value) in all {
            alter = alter.set(key, value);
        }
        for result in admin.alter_configs(&[alter], &options).await? {
            result.map_err(|(_, code)| refused(plan.topic.clone(), code))?;
        }
    }
    Ok(())
}

/// Every config of `topic` the cluster reports with a value: (name, value, whether it is set
/// on the topic itself rather than a broker's default).
async fn topic_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<Vec<(String, String, bool)>, KafkaSetupError> {
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    let mut configs = Vec::new();
    for resource in described {
        let resource = resource.map_err(|code| KafkaSetupError::CreateTopic {
            topic: topic.to_string(),
            reason: code.to_string(),
        })?;
        for entry in resource.entries {
            if let Some(value) = entry.value {
                configs.push((
                    entry.name,
                    value,
                    entry.source == ConfigSource::DynamicTopic,
                ));
            }
        }
    }
    Ok(configs)
}

/// The topic's configs set on it (not the broker's defaults).
async fn dynamic_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<Vec<(String, String)>, KafkaSetupError> {
    Ok(topic_configs(admin, topic)
        .await?
        .into_iter()
        .filter(|(_, _, own)| *own)
        .map(|(name, value, _)| (name, value))
        .collect())
}

/// The cluster's broker count, and how it has each of `topics` that exists.
async fn observe(
    args: &KafkaArgs,
    topics: Vec<String>,
) -> Result<(i32, BTreeMap<String, Observed>), KafkaSetupError> {
    let consumer: BaseConsumer = args.client_config()?.create()?;
    let wanted = topics.clone();
    let (brokers, shapes) = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10))?;
        let shapes: BTreeMap<String, (i32, i32)> = metadata
            .topics()
            .iter()
            .filter(|t| wanted.iter().any(|w| w == t.name()) && !t.partitions().is_empty())
            .map(|t| {
                let replicas = t
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len())
                    .min()
                    .unwrap_or(0);
                (
                    t.name().to_string(),
                    (
                        i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                        i32::try_from(replicas).unwrap_or(i32::MAX),
                    ),
                )
            })
            .collect();
        let brokers = i32::try_from(metadata.brokers().len()).unwrap_or(i32::MAX);
        Ok::<_, KafkaSetupError>((brokers, shapes))
    })
    .await
    .expect("metadata task panicked")?;
    let mut observed = BTreeMap::new();
    if shapes.is_empty() {
        return Ok((brokers, observed));
    }
    let admin: AdminClient<DefaultClientContext> = args.client_config()?.create()?;
    for (topic, (partitions, replication_factor)) in shapes {
        let configs = described_configs(&admin, &topic).await?;
        observed.insert(
            topic,
            Observed {
                partitions,
                replication_factor,
                configs,
            },
        );
    }
    Ok((brokers, observed))
}

/// The values the cluster reports for the configs the topics file sets, from whatever
/// source (the topic's own, or the broker's default).
async fn described_configs(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Result<BTreeMap<String, String>, KafkaSetupError> {
    let keys = ["cleanup.policy", "min.insync.replicas", "retention.ms"];
    Ok(topic_configs(admin, topic)
        .await?
        .into_iter()
        .filter(|(name, _, _)| keys.contains(&name.as_str()))
        .map(|(name, value, _)| (name, value))
        .collect())
}

/// A new topic's partitions get leaders a moment after creation; until then reads fail with
/// NotLeaderForPartition. Waits, so "started" means "usable".
async fn wait_for_leaders(args: &KafkaArgs, topics: &[String]) -> Result<(), KafkaSetupError> {
    let topics = topics.to_vec();
    let first = topics.first().cloned().unwrap_or_default();
    let consumer: BaseConsumer = args.client_config()?.create()?;
    let ready = tokio::task::spawn_blocking(move || {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = topics.iter().all(|topic| {
                consumer
                    .fetch_metadata(Some(topic), Duration::from_secs(5))
                    .is_ok_and(|m| {
                        m.topics().iter().all(|t| {
                            t.error().is_none()
                                && !t.partitions().is_empty()
                                && t.partitions()
                                    .iter()
                                    .all(|p| p.leader() >= 0 && p.error().is_none())
                        })
                    })
            });
            if ready || std::time::Instant::now() > until {
                return ready;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap_or(false);
    if ready {
        Ok(())
    } else {
        Err(KafkaSetupError::CreateTopic {
            topic: first,
            reason: "partitions have no leader after 30 s".into(),
        })
    }
}
