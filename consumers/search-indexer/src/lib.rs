//! Search: the events of users, orders, messages and campaigns projected into an embedded
//! inverted index (tantivy), and the API that queries it.
//!
//! Every replica consumes the whole stream into its own index, in its own consumer group
//! (`search-indexer-<replica>`), so adding replicas scales queries. The index keeps its
//! consumer's offsets in its own commits ([`index`]): a crash neither loses nor re-applies
//! an event. The index folder holds generations ([`generations`]): `herald search-indexer
//! reindex` builds a new one beside the live one, and the service switches to it.

pub mod api;
pub mod documents;
pub mod generations;
pub mod index;
pub mod opensearch;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use events::Codec;
use platform::auth::Authenticator;
use platform::consumer::{ConsumerArgs, Event, Handler, HandlerError, OrRetry, Resume, Runner};
use platform::contract::ContractArgs;
use platform::kafka::KafkaArgs;
use tokio_util::sync::CancellationToken;

use crate::generations::Generations;
use crate::index::{IndexError, SearchIndex, partition_key};

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
    /// Where the documents are kept: `embedded` (an index in SEARCH_INDEX_DIR, on this
    /// machine) or `opensearch` (a cluster at OPENSEARCH_URL, shared by every replica).
    #[arg(long, env = "SEARCH_BACKEND", value_enum, default_value_t = Backend::Embedded)]
    pub backend: Backend,
    #[command(flatten)]
    pub opensearch: opensearch::OpenSearchArgs,
}

/// Where the documents are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Embedded,
    #[value(name = "opensearch")]
    OpenSearch,
}

impl SearchArgs {
    /// Whether the settings can work, creating nothing (`herald check`): the index folder
    /// (`default_dir` unless SEARCH_INDEX_DIR is set) can be read, a folder not made yet is
    /// fine; with the OpenSearch backend, its nodes are named.
    pub fn check(&self, default_dir: &Path) -> anyhow::Result<()> {
        match self.backend {
            Backend::Embedded => {
                let dir = self.index_dir.as_deref().unwrap_or(default_dir);
                Generations::new(dir)
                    .current()
                    .map(drop)
                    .map_err(|err| anyhow::anyhow!("SEARCH_INDEX_DIR: {err}"))
            }
            Backend::OpenSearch => {
                anyhow::ensure!(
                    !self.opensearch.urls.is_empty(),
                    "OPENSEARCH_URL: SEARCH_BACKEND=opensearch needs the cluster's nodes"
                );
                anyhow::ensure!(
                    self.opensearch.opensearch_password.is_none()
                        || self.opensearch.opensearch_username.is_some(),
                    "OPENSEARCH_PASSWORD is set and OPENSEARCH_USERNAME is not"
                );
                Ok(())
            }
        }
    }
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
        let span = tracing::info_span!("index", otel.kind = "client", documents = events.len());
        // The span covers the work on the blocking thread, not the wait for it.
        tokio::task::spawn_blocking(move || span.in_scope(|| index.apply(&events)))
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

/// The generation being served, swapped whole under running queries.
pub struct LiveIndex {
    current: RwLock<(u64, Arc<SearchIndex>)>,
}

impl LiveIndex {
    fn new(generation: u64, index: SearchIndex) -> Self {
        Self {
            current: RwLock::new((generation, Arc::new(index))),
        }
    }

    /// The index to query; a query keeps the one it started with.
    pub fn get(&self) -> Arc<SearchIndex> {
        self.read().1.clone()
    }

    pub fn generation(&self) -> u64 {
        self.read().0
    }

    /// Serves `index` from now on; answers the one it replaces.
    fn replace(&self, generation: u64, index: SearchIndex) -> Arc<SearchIndex> {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let (_, old) = std::mem::replace(&mut *current, (generation, Arc::new(index)));
        metrics::gauge!("herald_search_generation").set(generation as f64);
        old
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (u64, Arc<SearchIndex>)> {
        // A swap is one assignment: the value is whole even if a holder panicked.
        self.current.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What consuming the stream into an index takes.
struct Stream {
    topics: Vec<String>,
    kafka: KafkaArgs,
    consumer: ConsumerArgs,
    codec: Arc<Codec>,
    /// Reveals the personal fields it indexes (a name, a message).
    privacy: Option<Arc<platform::privacy::Privacy>>,
}

impl Stream {
    async fn connect(
        kafka: &KafkaArgs,
        contract: &ContractArgs,
        consumer: &ConsumerArgs,
        replica: &str,
    ) -> anyhow::Result<Self> {
        let catalog = Arc::new(contract.catalog()?);
        let mut topics: Vec<String> = documents::EVENT_TYPES
            .iter()
            .filter_map(|t| catalog.latest(t))
            .map(|schema| kafka.topic(&schema.topic))
            .collect();
        topics.sort();
        topics.dedup();
        let codec = Arc::new(contract.codec(catalog, kafka).await?);
        let privacy = contract.privacy(None).await?;
        let mut consumer = consumer.clone();
        consumer
            .group
            .get_or_insert_with(|| format!("{}{NAME}-{replica}", kafka.topic_prefix));
        Ok(Self {
            topics,
            kafka: kafka.clone(),
            consumer,
            codec,
            privacy,
        })
    }

    fn group(&self) -> &str {
        self.consumer.group.as_deref().unwrap_or(NAME)
    }

    /// A consumer applying the stream to `indexer`, in `group`.
    fn runner(&self, indexer: Arc<dyn Handler>, group: &str) -> Runner {
        let mut consumer = self.consumer.clone();
        consumer.group = Some(group.to_string());
        Runner::new(
            NAME,
            self.topics.clone(),
            &self.kafka,
            &consumer,
            self.codec.clone(),
            platform::consumer::Revealing::wrap(
                self.privacy.clone(),
                self.codec.catalog().clone(),
                indexer,
            ),
        )
    }
}

/// The search service's parts: the index, its consumer and its API.
pub struct Service {
    kept: Kept,
    stream: Stream,
    pub api: Arc<api::SearchApi>,
}

/// Where the service keeps its documents.
enum Kept {
    /// The embedded index's generations, the live one served.
    Embedded {
        live: Arc<LiveIndex>,
        generations: Generations,
        commit_every: Duration,
    },
    /// A cluster: every replica writes the same index, the consumer group's offsets say
    /// where the indexer is.
    OpenSearch(Arc<opensearch::OpenSearchIndex>),
}

impl Service {
    /// Opens (or rebuilds) the live generation of the index and prepares the consumer of
    /// every topic it follows.
    pub async fn connect(
        kafka: &KafkaArgs,
        contract: &ContractArgs,
        consumer: &ConsumerArgs,
        auth: Arc<Authenticator>,
        args: &SearchArgs,
        default_dir: PathBuf,
    ) -> anyhow::Result<Self> {
        let stream = Stream::connect(kafka, contract, consumer, &args.replica).await?;
        let (kept, searcher) = match args.backend {
            Backend::OpenSearch => {
                let index = Arc::new(
                    opensearch::OpenSearchIndex::connect(
                        &args.opensearch,
                        &kafka.topic_prefix,
                        stream.codec.catalog(),
                    )
                    .await?,
                );
                (
                    Kept::OpenSearch(index.clone()),
                    api::Searcher::OpenSearch(index),
                )
            }
            Backend::Embedded => {
                let generations = Generations::new(&args.index_dir.clone().unwrap_or(default_dir));
                let generation = generations.live()?;
                let index = open(&generations, generation).await?;
                generations.remove_older_than(generation);
                let live = Arc::new(LiveIndex::new(generation, index));
                metrics::gauge!("herald_search_generation").set(generation as f64);
                (
                    Kept::Embedded {
                        live: live.clone(),
                        generations,
                        commit_every: Duration::from_millis(args.commit_ms.max(10)),
                    },
                    api::Searcher::Embedded(live),
                )
            }
        };
        Ok(Self {
            stream,
            api: Arc::new(api::SearchApi { searcher, auth }),
            kept,
        })
    }

    pub fn router(&self) -> axum::Router {
        api::router(self.api.clone())
    }

    pub fn group(&self) -> &str {
        self.stream.group()
    }

    /// Consumes into the index until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        match &self.kept {
            Kept::OpenSearch(index) => {
                let indexer = Arc::new(opensearch::OpenSearchIndexer(index.clone()));
                Ok(self
                    .stream
                    .runner(indexer, self.stream.group())
                    .run(shutdown)
                    .await?)
            }
            Kept::Embedded {
                live,
                generations,
                commit_every,
            } => {
                self.run_embedded(live, generations, *commit_every, shutdown)
                    .await
            }
        }
    }

    /// Consumes into the live generation until `shutdown`, committing every commit interval
    /// (and once more at the end). When a reindex names a new generation current, the
    /// consumer stops, queries move to the new generation, and the consumer starts again
    /// from the new generation's own offsets.
    async fn run_embedded(
        &self,
        live: &LiveIndex,
        generations: &Generations,
        commit_every: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let generation = live.generation();
            let indexer = Arc::new(Indexer { index: live.get() });
            let stop = shutdown.child_token();
            let committer = tokio::spawn(indexer.clone().commit_loop(commit_every, stop.clone()));
            let mut consuming = tokio::spawn(
                self.stream
                    .runner(indexer.clone(), self.stream.group())
                    .run(stop.clone()),
            );
            let next = tokio::select! {
                ended = &mut consuming => {
                    stop.cancel();
                    committer.await?;
                    return Ok(ended??);
                }
                next = next_generation(generations, generation, &shutdown) => next,
            };
            stop.cancel();
            consuming.await??;
            committer.await?;
            let Some(next) = next else {
                return Ok(());
            };
            drop(indexer);
            let index = open(generations, next).await?;
            let old = live.replace(next, index);
            tracing::info!(generation = next, "search now serves the rebuilt index");
            retire(old, generations.clone(), next);
        }
    }
}

/// Waits for `CURRENT` to name another generation than `serving`; `None` on shutdown.
async fn next_generation(
    generations: &Generations,
    serving: u64,
    shutdown: &CancellationToken,
) -> Option<u64> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            _ = tick.tick() => {}
        }
        match generations.current() {
            Ok(Some(current)) if current != serving => return Some(current),
            Ok(_) => {}
            Err(err) => tracing::warn!(%err, "cannot read which search index is current"),
        }
    }
}

/// Opens one generation; waits while another process still writes it (a reindex that has
/// just named it current and is closing it).
async fn open(generations: &Generations, generation: u64) -> anyhow::Result<SearchIndex> {
    let path = generations.path(generation);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at = path.clone();
        match tokio::task::spawn_blocking(move || SearchIndex::open(&at)).await? {
            Err(IndexError::Busy(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            opened => return Ok(opened?),
        }
    }
}

/// Removes the generations before `current` once the last query on `old` has finished.
fn retire(old: Arc<SearchIndex>, generations: Generations, current: u64) {
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(old);
        tokio::task::spawn_blocking(move || generations.remove_older_than(current)).await
    });
}

/// What `herald search-indexer reindex` did.
#[derive(Debug)]
pub struct Reindexed {
    pub generation: u64,
    pub events: i64,
    pub documents: u64,
    pub elapsed: Duration,
}

/// `herald search-indexer reindex`: builds a new generation from the start of the topics
/// beside the live one, in its own consumer group, and names it current once it holds every
/// event the topics had when it caught up. A running service switches to it; one started
/// later opens it. Stopped (`shutdown`) or failed before that, the new generation is removed
/// and the live one is untouched.
pub async fn reindex(
    kafka: &KafkaArgs,
    contract: &ContractArgs,
    consumer: &ConsumerArgs,
    args: &SearchArgs,
    default_dir: PathBuf,
    shutdown: CancellationToken,
) -> anyhow::Result<Reindexed> {
    let started = Instant::now();
    let stream = Stream::connect(kafka, contract, consumer, &args.replica).await?;
    if args.backend == Backend::OpenSearch {
        return reindex_opensearch(&stream, args, shutdown, started).await;
    }
    let generations = Generations::new(&args.index_dir.clone().unwrap_or(default_dir));
    generations.live()?;
    let generation = generations.fresh()?;
    tracing::info!(generation, dir = %generations.path(generation).display(), "building a new search index");
    let built = build(&stream, &generations, generation, args, shutdown).await;
    let (events, documents) = match built {
        Ok(counts) => counts,
        Err(err) => {
            if let Err(removing) = generations.remove(generation) {
                tracing::warn!(%removing, "cannot remove the unfinished generation");
            }
            return Err(err);
        }
    };
    generations.promote(generation)?;
    Ok(Reindexed {
        generation,
        events,
        documents,
        elapsed: started.elapsed(),
    })
}

/// The OpenSearch rebuild: a new index `<alias>-<n+1>` filled from the start of the topics
/// in a consumer group of its own, then the alias moved to it in one step (searches and the
/// live indexer's writes move together), then filled again up to the topics' ends after the
/// move, so an event the live indexer wrote to the old index meanwhile is not missed (a
/// write twice is the same versioned state). The old index is deleted last. Stopped or
/// failed before the move, the new index is deleted and the alias is untouched.
async fn reindex_opensearch(
    stream: &Stream,
    args: &SearchArgs,
    shutdown: CancellationToken,
    started: Instant,
) -> anyhow::Result<Reindexed> {
    let live = opensearch::OpenSearchIndex::connect(
        &args.opensearch,
        &stream.kafka.topic_prefix,
        stream.codec.catalog(),
    )
    .await?;
    let build = Arc::new(live.fresh_build().await?);
    let generation = build
        .target()
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    tracing::info!(
        index = build.target(),
        alias = live.alias(),
        "building a new search index"
    );
    // A group never used before: one left by a stopped run would resume where it stopped.
    let group = format!(
        "{}.reindex-{generation}-{}",
        stream.group(),
        jiff::Timestamp::now().as_millisecond()
    );
    let stop = shutdown.child_token();
    let indexer = Arc::new(opensearch::OpenSearchIndexer(build.clone()));
    let mut consuming = tokio::spawn(stream.runner(indexer, &group).run(stop.clone()));
    // Up to the ends seen at the start, then up to those seen after that pass, so what came
    // during the build is in before searches move.
    let mut built = Ok(true);
    for _ in 0..2 {
        built = caught_up(stream, &group, &mut consuming).await;
        if !matches!(built, Ok(true)) {
            break;
        }
    }
    let promoted = match built {
        Ok(true) => live.promote(&build).await.map_err(anyhow::Error::from),
        Ok(false) => Err(anyhow::anyhow!(
            "the rebuild was stopped before it caught up"
        )),
        Err(err) => Err(err),
    };
    let replaced = match promoted {
        Ok(replaced) => replaced,
        Err(err) => {
            stop.cancel();
            if !consuming.is_finished() {
                let _ = consuming.await;
            }
            if let Err(err) = live.delete_index(build.target()).await {
                tracing::warn!(%err, index = build.target(), "cannot delete the unfinished index");
            }
            return Err(err);
        }
    };
    tracing::info!(
        index = build.target(),
        alias = live.alias(),
        "the alias names the rebuilt index"
    );
    // The live indexer now writes here; an amendment it met before its document was built
    // was skipped. Two more passes read again everything up to the ends seen after the move,
    // then after the first of them: every event the live indexer handled before this index
    // held every document made before the move.
    let mut again = Ok(true);
    for _ in 0..2 {
        again = caught_up(stream, &group, &mut consuming).await;
        if !matches!(again, Ok(true)) {
            break;
        }
    }
    stop.cancel();
    if !consuming.is_finished() {
        consuming.await??;
    }
    anyhow::ensure!(
        matches!(again, Ok(true)),
        "the rebuilt index is live, but was stopped before reading what came during the move: \
         run the rebuild again"
    );
    for index in replaced.iter().filter(|i| *i != build.target()) {
        live.delete_index(index).await?;
    }
    let ends =
        platform::kafka::watermarks_of(&stream.kafka, &stream.topics, Duration::from_secs(30))
            .await?;
    let events = ends.values().map(|(low, high)| (high - low).max(0)).sum();
    Ok(Reindexed {
        generation,
        events,
        documents: build.refreshed_count().await?,
        elapsed: started.elapsed(),
    })
}

/// Waits until `group` has committed, on every partition, the topics' ends as they are now:
/// `true`, or `false` when `consuming` stopped first (shutdown).
async fn caught_up(
    stream: &Stream,
    group: &str,
    consuming: &mut tokio::task::JoinHandle<Result<(), platform::consumer::RunnerError>>,
) -> anyhow::Result<bool> {
    let ends =
        platform::kafka::watermarks_of(&stream.kafka, &stream.topics, Duration::from_secs(30))
            .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut reported = Instant::now();
    loop {
        tokio::select! {
            ended = &mut *consuming => {
                ended??;
                return Ok(false);
            }
            _ = tick.tick() => {}
        }
        let committed =
            platform::kafka::committed_offsets(&stream.kafka, group, &stream.topics).await?;
        let offsets: BTreeMap<String, i64> = committed
            .into_iter()
            .map(|((topic, partition), offset)| (partition_key(&topic, partition), offset))
            .collect();
        let (done, total) = progress(&ends, &offsets);
        if done >= total {
            return Ok(true);
        }
        if reported.elapsed() >= Duration::from_secs(5) {
            tracing::info!(group, done, total, "rebuilding the search index");
            reported = Instant::now();
        }
    }
}

/// Consumes into `generation` until it has caught up, then closes it (releasing its writer
/// for the service). Answers the events it covers and the documents it holds.
async fn build(
    stream: &Stream,
    generations: &Generations,
    generation: u64,
    args: &SearchArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<(i64, u64)> {
    let index = Arc::new(open(generations, generation).await?);
    let indexer = Arc::new(Indexer {
        index: index.clone(),
    });
    let stop = shutdown.child_token();
    let every = Duration::from_millis(args.commit_ms.max(10));
    let committer = tokio::spawn(indexer.clone().commit_loop(every, stop.clone()));
    let group = format!("{}.reindex", stream.group());
    let mut consuming = tokio::spawn(stream.runner(indexer.clone(), &group).run(stop.clone()));
    // Caught up: every partition's events up to its end when the build looked.
    let ends =
        platform::kafka::watermarks_of(&stream.kafka, &stream.topics, Duration::from_secs(30))
            .await?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut reported = Instant::now();
    let caught_up = loop {
        tokio::select! {
            ended = &mut consuming => {
                ended??;
                break false; // stopped: shutdown
            }
            _ = tick.tick() => {}
        }
        let (done, total) = progress(&ends, &index.committed_offsets());
        if done >= total {
            break true;
        }
        if reported.elapsed() >= Duration::from_secs(5) {
            tracing::info!(generation, done, total, "rebuilding the search index");
            reported = Instant::now();
        }
    };
    stop.cancel();
    if !consuming.is_finished() {
        consuming.await??;
    }
    committer.await?;
    anyhow::ensure!(caught_up, "the rebuild was stopped before it caught up");
    let (events, _) = progress(&ends, &index.committed_offsets());
    let documents = index.stats()?.documents;
    drop(indexer);
    // The runner's tasks let go of the index as they end; the last holder closes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut index = index;
    loop {
        match Arc::try_unwrap(index) {
            Ok(owned) => {
                tokio::task::spawn_blocking(move || drop(owned)).await?;
                break;
            }
            Err(shared) if Instant::now() < deadline => {
                index = shared;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => anyhow::bail!("the rebuilt index is still in use; it was not made current"),
        }
    }
    Ok((events, documents))
}

/// Of the events between each partition's low and high watermark in `ends`, how many the
/// index's `offsets` cover, and how many there are (pure).
fn progress(
    ends: &HashMap<(String, i32), (i64, i64)>,
    offsets: &BTreeMap<String, i64>,
) -> (i64, i64) {
    ends.iter().fold(
        (0, 0),
        |(done, total), ((topic, partition), &(low, high))| {
            let next = offsets
                .get(&partition_key(topic, *partition))
                .copied()
                .unwrap_or(low);
            let covered = next.clamp(low, high.max(low)) - low;
            (done + covered, total + (high - low).max(0))
        },
    )
}

/// The search indexer as a service: the search API, and the indexer with its commits.
impl platform::service::Service for Service {
    fn name(&self) -> &'static str {
        "search-indexer"
    }

    fn routes(&self) -> axum::Router {
        self.router()
    }

    fn exporter(&self) -> Option<Arc<dyn platform::export::Exporter>> {
        Some(Arc::new(Export(self.api.searcher.clone())))
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> platform::service::Work {
        Box::pin(Service::run(*self, shutdown))
    }
}

/// What the index holds of a person's data, for their export: the documents made of it (a
/// user's name, the messages they sent), a thousand at most.
struct Export(api::Searcher);

#[async_trait::async_trait]
impl platform::export::Exporter for Export {
    async fn export(&self, subject: &str) -> Result<serde_json::Value, platform::problem::Problem> {
        let documents = self.0.held_about(subject, 1000).await.map_err(|err| {
            tracing::warn!(%err, "the search index failed an export");
            platform::problem::Problem::unavailable("the search index is not readable", 5)
        })?;
        Ok(serde_json::json!({ "documents": documents }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_the_events_each_partition_covers_up_to_its_end() {
        let ends = HashMap::from([
            (("orders".to_string(), 0), (0, 10)),
            (("orders".to_string(), 1), (5, 8)),
            (("users".to_string(), 0), (0, 0)),
        ]);
        let offsets = |pairs: &[(&str, i64)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(progress(&ends, &offsets(&[])), (0, 13));
        assert_eq!(progress(&ends, &offsets(&[("orders/0", 4)])), (4, 13));
        // Past the end counts as the end: events that came after the look.
        assert_eq!(
            progress(&ends, &offsets(&[("orders/0", 12), ("orders/1", 8)])),
            (13, 13)
        );
    }
}
