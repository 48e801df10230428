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
    kafka: KafkaArgs,
    #[command(flatten)]
    contract: ContractArgs,
    #[command(flatten)]
    replay: ReplayArgs,
}

#[derive(Debug, Args)]
pub struct LagCommand {
    #[command(flatten)]
    kafka: KafkaArgs,
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
    kafka: KafkaArgs,
    /// The consumer group, by its name without the topic prefix (`audit-log`, `reports`).
    group: String,
    /// Where its consumers start reading again (RFC 3339).
    #[arg(long)]
    from: String,
}

fn needs_brokers(kafka: &KafkaArgs, command: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        kafka.brokers.is_some(),
        "herald {command} needs KAFKA_BROKERS (the cluster to read)"
    );
    Ok(())
}

pub async fn replay(command: ReplayCommand) -> anyhow::Result<()> {
    needs_brokers(&command.kafka, "replay")?;
    let catalog = Arc::new(command.contract.catalog()?);
    let codec = command.contract.codec(catalog, &command.kafka).await?;
    let started = Instant::now();
    let args = command.replay;
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
            let mut rows = Vec::new();
            for group in groups::list(&kafka, TIMEOUT)? {
                let wanted = match &only {
                    Some(name) => group.name == *name,
                    None => group.name.starts_with(&kafka.topic_prefix),
                };
                if wanted {
                    let lags = groups::lag(&kafka, &group.name, TIMEOUT)?;
                    rows.push((group, lags));
                }
            }
            if let Some(name) = only
                && rows.is_empty()
            {
                return Err(groups::GroupError::Unknown(name).into());
            }
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
