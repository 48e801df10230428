//! Analyst and operator tools over the log.
//!
//! `herald replay` reads a time range of some topics and writes the decoded events as JSON
//! lines, CSV, an Avro container file or Parquet. It assigns partitions directly, with no
//! consumer group, so it commits nothing and cannot disturb a live consumer; each partition is
//! read from the first record at or after `--from` to the last before `--to`, as the log's
//! record timestamps (the ingress's receipt time) say. A file is written under a temporary
//! name and renamed when complete: a failed replay leaves no half file behind.
//!
//! `herald lag` and `herald reprocess` look at and move consumer groups ([`ops`]).

pub mod dlq;
pub mod formats;
pub mod ops;
pub mod row;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use events::Codec;
use platform::kafka::range::RangeReader;
use platform::kafka::{KafkaArgs, ReadRecord};

use crate::formats::{Format, Sink};
use crate::row::Row;

/// `herald replay` settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Topics to read, by their names without the prefix (`orders,users`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub topics: Vec<String>,
    /// The range's start, inclusive (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long)]
    pub from: String,
    /// The range's end, exclusive (RFC 3339).
    #[arg(long)]
    pub to: String,
    /// Only events of these types (repeat or separate with commas).
    #[arg(long = "type", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Only events with these Kafka keys (repeat or separate with commas).
    #[arg(long = "key", value_delimiter = ',')]
    pub keys: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// The file to write (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Count the events per topic and type instead of writing them.
    #[arg(long)]
    pub dry_run: bool,
    /// Threads decoding records (default: one per core).
    #[arg(long)]
    pub decoders: Option<usize>,
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Records read in the range.
    pub read: u64,
    /// Events written (or counted, in a dry run) after the filters.
    pub written: u64,
    /// Events by (topic, type), after the filters.
    pub by_type: BTreeMap<(String, String), u64>,
}

impl Summary {
    /// Counts one event; the map's few keys are compared in place, not built per event.
    fn count(&mut self, topic: &str, event_type: &str) {
        let known = self
            .by_type
            .iter_mut()
            .find(|((t, e), _)| t == topic && e == event_type);
        match known {
            Some((_, n)) => *n += 1,
            None => {
                self.by_type
                    .insert((topic.to_owned(), event_type.to_owned()), 1);
            }
        }
    }
}

/// Records read, decoded and written at a time.
const BATCH: usize = 4_096;

/// A decoded row, and its line when the format has lines (encoded beside the decoding).
type Decoded<'a> = (Row<'a>, Option<Vec<u8>>);

/// Decodes a batch on every core, keeping its order, and keeps the rows the filters let
/// through, each with its line for line formats. Decoding and encoding are most of a
/// replay's work; reading and writing stay on one thread.
fn decode_all<'a>(
    batch: &'a [ReadRecord],
    codec: &Codec,
    args: &ReplayArgs,
) -> anyhow::Result<Vec<Decoded<'a>>> {
    let lines = !args.dry_run;
    let decode = |records: &'a [ReadRecord]| -> anyhow::Result<Vec<Decoded<'a>>> {
        let mut rows = Vec::with_capacity(records.len());
        for record in records {
            if !args.keys.is_empty() {
                let key = record.key.as_deref().map(String::from_utf8_lossy);
                if !key.is_some_and(|k| args.keys.iter().any(|wanted| *wanted == k)) {
                    continue;
                }
            }
            let payload = record.payload.as_deref().unwrap_or_default();
            let decoded = codec.decode_text(payload).with_context(|| {
                format!(
                    "the record at offset {} of {} partition {} does not decode with the \
                     schemas at hand (SCHEMAS_DIR, SCHEMA_REGISTRY_URL)",
                    record.offset, record.topic, record.partition
                )
            })?;
            if args.types.is_empty() || args.types.contains(&decoded.envelope.event_type) {
                let row = Row::new(record, decoded);
                let line = if lines {
                    formats::line(args.format, &row)
                } else {
                    None
                };
                rows.push((row, line));
            }
        }
        Ok(rows)
    };
    let threads = args
        .decoders
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)));
    if threads == 1 || batch.len() < 256 {
        return decode(batch);
    }
    let parts: Vec<anyhow::Result<Vec<Decoded<'a>>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = batch
            .chunks(batch.len().div_ceil(threads))
            .map(|part| scope.spawn(move || decode(part)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a decoder panicked")))
            })
            .collect()
    });
    let mut rows = Vec::with_capacity(batch.len());
    for part in parts {
        rows.extend(part?);
    }
    Ok(rows)
}

/// Parses an RFC 3339 time to milliseconds since the epoch.
pub fn parse_time(flag: &str, text: &str) -> anyhow::Result<i64> {
    let at: jiff::Timestamp = text.parse().with_context(|| {
        format!("{flag} {text:?} is not an RFC 3339 time (like 2026-11-01T00:00:00Z)")
    })?;
    Ok(at.as_millisecond())
}

/// Runs a replay to its end. Blocking: call it from a blocking thread.
pub fn replay(kafka: &KafkaArgs, codec: &Codec, args: &ReplayArgs) -> anyhow::Result<Summary> {
    let from = parse_time("--from", &args.from)?;
    let to = parse_time("--to", &args.to)?;
    if from >= to {
        bail!(
            "--from ({}) must be before --to ({}): the range is empty",
            args.from,
            args.to
        );
    }
    let topics: Vec<String> = args.topics.iter().map(|t| kafka.topic(t)).collect();
    let mut reader =
        RangeReader::open(kafka, &topics, from, to, Duration::from_secs(30))?.without_headers();
    if reader.span() == 0 {
        bail!(
            "no events between {} and {} in {}",
            args.from,
            args.to,
            args.topics.join(", ")
        );
    }
    let progress = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(reader.span());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} events, {per_sec}, ETA {eta}",
            )
            .expect("a valid template"),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut output = match (&args.out, args.dry_run) {
        (_, true) => None,
        (Some(path), false) => Some(Partial::create(path)?),
        (None, false) => None,
    };
    let mut sink: Option<Box<dyn Sink>> = match (&mut output, args.dry_run) {
        (_, true) => None,
        (Some(partial), false) => Some(formats::sink(args.format, partial.writer()?)?),
        (None, false) => Some(formats::sink(args.format, Box::new(std::io::stdout()))?),
    };
    let mut summary = Summary::default();
    // Reading runs beside decoding and writing: a batch is fetched while the last one is
    // decoded. Two in the queue keep memory bounded.
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let (sender, batches) = std::sync::mpsc::sync_channel(2);
        scope.spawn(move || {
            loop {
                let batch = reader.next_batch(BATCH);
                let more = matches!(batch, Ok(Some(_)));
                if sender.send(batch).is_err() || !more {
                    break;
                }
            }
        });
        while let Some(batch) = batches
            .recv()
            .map_err(|_| anyhow::anyhow!("the reading thread stopped"))??
        {
            progress.inc(batch.len() as u64);
            summary.read += batch.len() as u64;
            for (row, line) in decode_all(&batch, codec, args)? {
                summary.count(row.topic, &row.event_type);
                summary.written += 1;
                match (&mut sink, line) {
                    (Some(sink), Some(line)) => sink.write_line(&line)?,
                    (Some(sink), None) => sink.write(row)?,
                    (None, _) => {}
                }
            }
        }
        Ok(())
    })?;
    progress.finish_and_clear();
    if let Some(sink) = sink {
        sink.finish()?;
    }
    if summary.written == 0 && !args.dry_run {
        bail!(
            "no events between {} and {} in {} match the filters ({} read)",
            args.from,
            args.to,
            args.topics.join(", "),
            summary.read
        );
    }
    if let Some(partial) = output {
        partial.complete()?;
    }
    Ok(summary)
}

/// A file written under `<name>.partial` and renamed to its name only when complete; removed
/// if dropped before.
struct Partial {
    path: PathBuf,
    partial: PathBuf,
    done: bool,
}

impl Partial {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        let partial = path.with_file_name(name);
        std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            partial,
            done: false,
        })
    }

    fn writer(&self) -> anyhow::Result<formats::Output> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.partial)
            .with_context(|| format!("cannot write {}", self.partial.display()))?;
        Ok(Box::new(file))
    }

    fn complete(mut self) -> anyhow::Result<()> {
        std::fs::rename(&self.partial, &self.path).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.partial.display(),
                self.path.display()
            )
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// The dry run's table: events per topic and type, and the total.
pub fn counts_table(summary: &Summary) -> String {
    let mut out = String::from("topic\ttype\tevents\n");
    for ((topic, event_type), count) in &summary.by_type {
        out.push_str(&format!("{topic}\t{event_type}\t{count}\n"));
    }
    out.push_str(&format!("total\t\t{}\n", summary.written));
    out
}

/// How long a replay took, for its closing line.
pub fn rate(summary: &Summary, started: Instant) -> String {
    let seconds = started.elapsed().as_secs_f64();
    format!(
        "{} events written of {} read in {seconds:.1} s ({:.0} events/s)",
        summary.written,
        summary.read,
        summary.read as f64 / seconds.max(1e-9)
    )
}
