//! Search: the events of users, orders, messages and campaigns projected into an embedded
//! inverted index (tantivy), and the API that queries it.
//!
//! Every replica consumes the whole stream into its own index, in its own consumer group
//! (`search-indexer-<replica>`), so adding replicas scales queries. The index keeps its
//! consumer's offsets in its own commits ([`index`]): a crash neither loses nor re-applies
//! an event.

pub mod api;
pub mod documents;
pub mod index;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use platform::auth::Authenticator;
use platform::consumer::{ConsumerArgs, Event, Handler, HandlerError, OrRetry, Resume, Runner};
use platform::contract::ContractArgs;
use platform::kafka::KafkaArgs;
use tokio_util::sync::CancellationToken;

use crate::index::SearchIndex;

/// The consumer's name; its group is the topic prefix, this and the replica id.
pub const NAME: &str = "search-indexer";

/// `herald search-indexer` settings (also flattened into `herald up`).
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// The index folder (`herald up`: `<data>/search`).
    #[arg(long, env = "SEARCH_INDEX_DIR")]
    pub index_dir: Option<PathBuf>,
    /// This replica's id: each replica has its own index and its own consumer group.
    #[arg(long, env = "SEARCH_REPLICA", default_value = "0")]
    pub replica: String,
    /// How often what was indexed becomes searchable (and durable), in milliseconds.
    #[arg(long, env = "SEARCH_COMMIT_MS", default_value_t = 250)]
    pub commit_ms: u64,
}

/// The handler: applies events to the index; the committer makes them durable.
pub struct Indexer {
    index: Arc<SearchIndex>,
}

#[async_trait]
impl Handler for Indexer {
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError> {
        let index = self.index.clone();
        let events = events.to_vec();
        tokio::task::spawn_blocking(move || index.apply(&events))
            .await
            .or_retry()?
            .or_retry()
    }

    fn resume_from(&self, topic: &str, partition: i32) -> Resume {
        self.index.resume_from(topic, partition)
    }
}

impl Indexer {
    /// Commits every `every` until `shutdown`, then once more.
    pub async fn commit_loop(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            let index = self.index.clone();
            match tokio::task::spawn_blocking(move || index.commit()).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::warn!(%err, "committing the search index failed"),
                Err(err) => tracing::warn!(%err, "the index commit stopped"),
            }
            if stopping {
                return;
            }
        }
    }
}

/// The search service's parts: its consumer, its committer and its API.
pub struct Service {
    pub runner: Runner,
    pub indexer: Arc<Indexer>,
    pub api: Arc<api::SearchApi>,
    pub commit_every: Duration,
}

impl Service {
    /// Opens (or rebuilds) the index and prepares the consumer of every topic it follows.
    pub async fn connect(
        kafka: &KafkaArgs,
        contract: &ContractArgs,
        consumer: &ConsumerArgs,
        auth: Arc<Authenticator>,
        args: &SearchArgs,
        default_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        let catalog = Arc::new(contract.catalog()?);
        let dir = args.index_dir.clone().unwrap_or(default_dir);
        let index = Arc::new(SearchIndex::open(&dir)?);
        let mut topics: Vec<String> = documents::EVENT_TYPES
            .iter()
            .filter_map(|t| catalog.latest(t))
            .map(|schema| kafka.topic(&schema.topic))
            .collect();
        topics.sort();
        topics.dedup();
        let codec = Arc::new(contract.codec(catalog, kafka).await?);
        let indexer = Arc::new(Indexer {
            index: index.clone(),
        });
        let mut consumer = consumer.clone();
        consumer
            .group
            .get_or_insert_with(|| format!("{}{NAME}-{}", kafka.topic_prefix, args.replica));
        let runner = Runner::new(NAME, topics, kafka, &consumer, codec, indexer.clone());
        Ok(Self {
            runner,
            indexer,
            api: Arc::new(api::SearchApi { index, auth }),
            commit_every: Duration::from_millis(args.commit_ms.max(10)),
        })
    }

    pub fn router(&self) -> axum::Router {
        api::router(self.api.clone())
    }
}
