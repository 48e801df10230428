//! The analyst and operator commands: `replay`, `lag`, `reprocess`. Each is a thin shell
//! over the `replay` crate and `platform::kafka`; the Kafka work blocks, so it runs on a
//! blocking thread.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use platform::contract::ContractArgs;
use platform::kafka::KafkaArgs;
use platform::kafka::groups;
use replay::ReplayArgs;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Args)]
pub struct ReplayCommand {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    #[command(flatten)]
    contract: ContractArgs,
    #[command(flatten)]
    replay: ReplayArgs,
}

#[derive(Debug, Args)]
pub struct LagCommand {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    /// One group, by its name without the topic prefix (default: every group of the prefix).
    #[arg(long)]
    group: Option<String>,
    /// Print again every `--interval` seconds until interrupted.
    #[arg(long)]
    watch: bool,
    #[arg(long, default_value_t = 2)]
    interval: u64,
}

#[derive(Debug, Args)]
pub struct ReprocessCommand {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    /// The consumer group, by its name without the topic prefix (`audit-log`, `reports`).
    group: String,
    /// Where its consumers start reading again (RFC 3339).
    #[arg(long)]
    from: String,
}

fn needs_brokers(kafka: &KafkaArgs, command: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        kafka.brokers.is_some(),
        "herald {command} needs KAFKA_BROKERS (the cluster to read), or a `herald up` running \
         on this machine with this data folder (HERALD_DATA_DIR, default `data`)"
    );
    Ok(())
}

pub async fn replay(command: ReplayCommand) -> anyhow::Result<()> {
    needs_brokers(&command.kafka, "replay")?;
    let catalog = Arc::new(command.contract.catalog()?);
    let codec = command
        .contract
        .codec(catalog.clone(), &command.kafka)
        .await?;
    let started = Instant::now();
    let mut args = command.replay;
    args.reveal = crate::privacy::for_tool(&command.contract)
        .await?
        .map(|privacy| platform::privacy::BlockingRevealer::new(privacy, catalog));
    let summary = tokio::task::spawn_blocking(move || {
        let summary = replay::replay(&command.kafka, &codec, &args)?;
        if args.dry_run {
            print!("{}", replay::counts_table(&summary));
        }
        anyhow::Ok(summary)
    })
    .await
    .context("the replay stopped unexpectedly")??;
    eprintln!("herald replay: {}", replay::rate(&summary, started));
    Ok(())
}

pub async fn lag(command: LagCommand) -> anyhow::Result<()> {
    needs_brokers(&command.kafka, "lag")?;
    loop {
        let kafka = command.kafka.clone();
        let only = command.group.as_ref().map(|g| kafka.topic(g));
        let table = tokio::task::spawn_blocking(move || {
            let rows = replay::admin::gather_lag(&kafka, only.as_deref())?;
            anyhow::Ok(replay::ops::lag_table(&rows))
        })
        .await
        .context("the lag reader stopped unexpectedly")??;
        print!("{table}");
        if !command.watch {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(command.interval.max(1))) => println!(),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

pub async fn reprocess(command: ReprocessCommand) -> anyhow::Result<()> {
    needs_brokers(&command.kafka, "reprocess")?;
    let at = replay::parse_time("--from", &command.from)?;
    let group = command.kafka.topic(&command.group);
    let kafka = command.kafka.clone();
    let moves =
        tokio::task::spawn_blocking(move || groups::reset_to_time(&kafka, &group, at, TIMEOUT))
            .await
            .context("the reset stopped unexpectedly")??;
    print!("{}", replay::ops::moves_table(&moves));
    println!(
        "herald reprocess: {} starts again from {}; consumers that keep offsets of their own \
         (the search index) rebuild with `herald search-indexer reindex` instead",
        command.group, command.from
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct TailCommand {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    #[command(flatten)]
    contract: ContractArgs,
    /// The topic, by its name without the prefix (`orders`).
    topic: String,
    /// Keep printing events as they arrive, until interrupted.
    #[arg(long)]
    follow: bool,
    /// How many of the newest events of each partition to print first.
    #[arg(long, default_value_t = 10)]
    last: i64,
    /// Only events of these types (repeat or separate with commas).
    #[arg(long = "type", value_delimiter = ',')]
    types: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DlqCommand {
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    #[command(flatten)]
    contract: ContractArgs,
    #[command(subcommand)]
    action: DlqAction,
}

#[derive(Debug, clap::Subcommand)]
enum DlqAction {
    /// The group's dead letters: the event, where it came from, why it failed, whether it
    /// was redriven.
    List {
        /// The consumer group, by its name without the topic prefix (`audit-log`).
        group: String,
    },
    /// Publish dead letters again to their original topic, each once.
    Redrive {
        group: String,
        /// The dead letter of this event.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        event_id: Option<String>,
        /// Every dead letter not redriven yet.
        #[arg(long)]
        all: bool,
    },
}

pub async fn tail(command: TailCommand) -> anyhow::Result<()> {
    needs_brokers(&command.kafka, "tail")?;
    let catalog = Arc::new(command.contract.catalog()?);
    let codec = command
        .contract
        .codec(catalog.clone(), &command.kafka)
        .await?;
    let reveal = crate::privacy::for_tool(&command.contract)
        .await?
        .map(|privacy| platform::privacy::BlockingRevealer::new(privacy, catalog));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopper = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stopper.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use std::io::Write;
        let topic = command.kafka.topic(&command.topic);
        let mut reader = platform::kafka::range::RangeReader::tail(
            &command.kafka,
            &[topic],
            command.last,
            command.follow,
            TIMEOUT,
        )?;
        let mut out = std::io::stdout().lock();
        while let Some(batch) = reader.next_batch(500)? {
            for record in batch {
                let payload = record.payload.as_deref().unwrap_or_default();
                let line = match codec.decode_text(payload) {
                    Ok(mut decoded) => {
                        if !command.types.is_empty()
                            && !command.types.contains(&decoded.envelope.event_type)
                        {
                            continue;
                        }
                        if let Some(reveal) = &reveal
                            && let Some(revealed) = reveal.reveal_text(
                                &decoded.envelope.event_type,
                                &decoded.envelope.actor,
                                &decoded.data,
                            )?
                        {
                            decoded.data = revealed;
                        }
                        replay::row::Row::new(&record, &decoded).to_json()
                    }
                    Err(err) => serde_json::json!({
                        "topic": record.topic, "partition": record.partition,
                        "offset": record.offset, "undecodable": err.to_string(),
                    }),
                };
                writeln!(out, "{line}")?;
            }
            out.flush()?;
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
        }
        Ok(())
    })
    .await
    .context("the tail stopped unexpectedly")?
}

pub async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    use replay::dlq::Choice;
    needs_brokers(&command.kafka, "dlq")?;
    let catalog = Arc::new(command.contract.catalog()?);
    let codec = command.contract.codec(catalog, &command.kafka).await?;
    let group = match &command.action {
        DlqAction::List { group } | DlqAction::Redrive { group, .. } => group.clone(),
    };
    let dead = replay::dlq::DeadLetters::read(&command.kafka, &codec, &group).await?;
    let choice = match command.action {
        DlqAction::List { .. } => {
            print!("{}", replay::dlq::list_table(&dead.letters, &dead.redriven));
            return Ok(());
        }
        DlqAction::Redrive {
            event_id: Some(id), ..
        } => Choice::EventId(id),
        DlqAction::Redrive { .. } => Choice::All,
    };
    let chosen = replay::dlq::choose(&dead.letters, &dead.redriven, &choice)?;
    if chosen.is_empty() {
        println!("herald dlq redrive: no dead letter of {group} is waiting; nothing to do");
        return Ok(());
    }
    let places = dead.redrive(&command.kafka, &chosen).await?;
    for (letter, place) in chosen.iter().zip(places) {
        println!(
            "herald dlq redrive: {} ({}) published again to {}/{place}",
            letter.mark(),
            letter.event_id.as_deref().unwrap_or("undecodable"),
            letter.topic
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct TopicsCommand {
    #[command(subcommand)]
    action: TopicsAction,
    #[command(flatten)]
    pub(crate) kafka: KafkaArgs,
    #[command(flatten)]
    contract: ContractArgs,
}

#[derive(Debug, Clone, Copy, clap::Subcommand)]
enum TopicsAction {
    /// Print how the cluster's topics differ from the topics file; change nothing.
    Plan,
    /// Make the cluster's topics as the topics file declares them: create the missing, add
    /// partitions, set configs. Never deletes data or lowers partitions; replicas are only
    /// reported (raising them moves data: kafka-reassign-partitions.sh).
    Apply,
}

/// `herald topics plan|apply`: every event topic of the catalog, and every topic of the
/// prefix the topics file declares (dead letters and their redrive marks).
pub async fn topics(command: TopicsCommand) -> anyhow::Result<()> {
    use platform::kafka::admin;
    let kafka = &command.kafka;
    let declared = platform::topics::Declared::load(kafka.topics_file.as_deref())?;
    let catalog = command.contract.catalog()?;
    let mut names: Vec<String> = catalog
        .topics()
        .into_iter()
        .map(|t| kafka.topic(t))
        .collect();
    for existing in admin::existing(kafka).await? {
        let name = existing
            .strip_prefix(&kafka.topic_prefix)
            .unwrap_or(&existing);
        if declared.spec(name).is_ok() {
            names.push(existing);
        } else {
            println!("{existing}: not declared in the topics file; left alone");
        }
    }
    names.sort();
    names.dedup();
    let plans = admin::plan(kafka, &names, Default::default()).await?;
    let action = match command.action {
        TopicsAction::Plan => "plan",
        TopicsAction::Apply => "apply",
    };
    let mut pending = 0;
    for plan in &plans {
        if plan.changes.is_empty() {
            println!("{}: as declared", plan.topic);
        }
        for change in &plan.changes {
            let mark = match (change.applied(), command.action) {
                (false, _) => "reported only",
                (true, TopicsAction::Plan) => "to do",
                (true, TopicsAction::Apply) => "done",
            };
            println!("{}: {change} [{mark}]", plan.topic);
            pending += usize::from(change.applied());
        }
    }
    if let TopicsAction::Apply = command.action {
        admin::apply(kafka, &plans).await?;
    }
    println!(
        "herald topics {action}: {} topics, {pending} changes {}",
        plans.len(),
        match command.action {
            TopicsAction::Plan => "to make (`herald topics apply` makes them)",
            TopicsAction::Apply => "made",
        }
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct SchemasCommand {
    #[command(subcommand)]
    action: SchemasAction,
    #[command(flatten)]
    contract: ContractArgs,
}

#[derive(Debug, clap::Subcommand)]
enum SchemasAction {
    /// Write every wire schema version (the envelope and its data: what a record on a topic
    /// is) as DIR/<event type>.v<version>.avsc, for standard Avro readers.
    Export {
        /// The folder to write into (made when missing).
        dir: std::path::PathBuf,
    },
}

/// `herald schemas export DIR`.
pub fn schemas(command: &SchemasCommand) -> anyhow::Result<()> {
    let SchemasAction::Export { dir } = &command.action;
    let catalog = command.contract.catalog()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = 0;
    for version in catalog.all_versions() {
        let path = dir.join(format!("{}.v{}.avsc", version.event_type, version.version));
        let text = serde_json::to_string_pretty(&version.wire_json)?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        let hex: String = version
            .fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        println!("{}  {hex}", path.display());
        written += 1;
    }
    println!(
        "herald schemas export: {written} wire schemas in {}",
        dir.display()
    );
    Ok(())
}
