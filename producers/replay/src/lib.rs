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

pub mod admin;
pub mod console;
pub mod dlq;
pub mod formats;
pub mod ops;
pub mod row;
pub mod stream;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use events::Codec;
use platform::kafka::range::RangeReader;
use platform::kafka::{KafkaArgs, ReadRecord};

use crate::formats::{Format, Sink};

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
    /// Shows personal fields in plain text, or as erased, when the deployment's keys are at
    /// hand (PRIVACY_KEY_FILE); without, they are written as the log holds them.
    #[arg(skip)]
    pub reveal: Option<platform::privacy::BlockingRevealer>,
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
    /// Counts one event written; the map's few keys are compared in place, not built per
    /// event.
    fn count(&mut self, topic: &str, event_type: &str) {
        self.written += 1;
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

    /// Adds another summary's counts to this one's.
    fn add(&mut self, other: &Summary) {
        self.read += other.read;
        self.written += other.written;
        for (key, n) in &other.by_type {
            *self.by_type.entry(key.clone()).or_default() += n;
        }
    }
}

/// Records read, decoded and written at a time.
const BATCH: usize = 4_096;

/// What decoding made of a batch.
struct DecodedBatch {
    /// What the batch held and kept, by topic and type.
    summary: Summary,
    encoded: formats::Encoded,
}

/// Decodes a batch, keeps the events the filters let through, and encodes them for the
/// output format. Pure: it runs on any of the decoding threads.
fn decode_batch(
    records: Vec<ReadRecord>,
    codec: &Codec,
    args: &ReplayArgs,
) -> anyhow::Result<DecodedBatch> {
    let mut encoder = formats::Encoder::new(args.format, args.dry_run, records.len());
    let mut summary = Summary {
        read: records.len() as u64,
        ..Summary::default()
    };
    for (index, record) in records.iter().enumerate() {
        if !args.keys.is_empty() {
            let key = record.key.as_deref().map(String::from_utf8_lossy);
            if !key.is_some_and(|k| args.keys.iter().any(|wanted| *wanted == k)) {
                continue;
            }
        }
        let payload = record.payload.as_deref().unwrap_or_default();
        let mut decoded = codec.decode_text(payload).with_context(|| {
            format!(
                "the record at offset {} of {} partition {} does not decode with the \
                 schemas at hand (SCHEMAS_DIR, SCHEMA_REGISTRY_URL)",
                record.offset, record.topic, record.partition
            )
        })?;
        if !args.types.is_empty() && !args.types.contains(&decoded.envelope.event_type) {
            continue;
        }
        if let Some(reveal) = &args.reveal
            && let Some(revealed) = reveal.reveal_text(
                &decoded.envelope.event_type,
                &decoded.envelope.actor,
                &decoded.data,
            )?
        {
            decoded.data = revealed;
        }
        summary.count(&record.topic, &decoded.envelope.event_type);
        encoder.add(index, record, decoded);
    }
    Ok(DecodedBatch {
        summary,
        encoded: encoder.finish(records),
    })
}

/// Reads, decodes and hands over every batch in order, as a pipeline: one thread reads,
/// `threads` decode (most of a replay's work), and the calling thread gets the batches back
/// in the order they were read. Each queue holds a few batches, so memory stays bounded.
fn pipeline(
    mut next_batch: impl FnMut() -> anyhow::Result<Option<Vec<ReadRecord>>> + Send,
    codec: &Codec,
    args: &ReplayArgs,
    mut each: impl FnMut(DecodedBatch) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let threads = args
        .decoders
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
        .max(1);
    std::thread::scope(|scope| {
        let (to_decode, batches) = std::sync::mpsc::sync_channel::<(u64, Vec<ReadRecord>)>(threads);
        let (to_write, decoded) = std::sync::mpsc::sync_channel(threads);
        let read_errors = to_write.clone();
        scope.spawn(move || {
            for seq in 0u64.. {
                match next_batch() {
                    Ok(Some(batch)) => {
                        if to_decode.send((seq, batch)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(err) => {
                        let _ = read_errors.send((seq, Err(err)));
                        return;
                    }
                }
            }
        });
        // The decoders share the queue of batches; a decoder stops when either queue closes.
        let batches = std::sync::Arc::new(std::sync::Mutex::new(batches));
        for _ in 0..threads {
            let (batches, to_write) = (batches.clone(), to_write.clone());
            scope.spawn(move || {
                loop {
                    let next = batches.lock().map(|queue| queue.recv());
                    let Ok(Ok((seq, records))) = next else {
                        return;
                    };
                    if to_write
                        .send((seq, decode_batch(records, codec, args)))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        drop((batches, to_write));
        let mut waiting = BTreeMap::new();
        let mut next = 0;
        for (seq, batch) in decoded {
            waiting.insert(seq, batch);
            while let Some(batch) = waiting.remove(&next) {
                each(batch?)?;
                next += 1;
            }
        }
        Ok(())
    })
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
    let next_batch = || Ok(reader.next_batch(BATCH)?);
    pipeline(next_batch, codec, args, |batch| {
        progress.inc(batch.summary.read);
        summary.add(&batch.summary);
        if let Some(sink) = &mut sink {
            sink.write(batch.encoded)?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use clap::Parser;
    use events::{Catalog, Envelope, WireFormat};
    use jiff::Timestamp;
    use uuid::Uuid;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReplayArgs,
    }

    fn args(decoders: usize) -> ReplayArgs {
        Cli::parse_from([
            "replay",
            "--topics",
            "orders",
            "--from",
            "2026-01-01T00:00:00Z",
            "--to",
            "2027-01-01T00:00:00Z",
            "--decoders",
            &decoders.to_string(),
        ])
        .args
    }

    fn codec() -> Codec {
        Codec::new(
            Arc::new(Catalog::embedded().unwrap()),
            WireFormat::SingleObject,
        )
    }

    /// Batches of `size` order.placed records with offsets counting up from 0.
    fn batches(codec: &Codec, count: usize, size: usize) -> Vec<Vec<ReadRecord>> {
        let schema = codec.catalog().latest("order.placed").unwrap().clone();
        let value = schema.validate(&schema.example, "").unwrap();
        let envelope = Envelope {
            event_id: Uuid::now_v7(),
            event_type: "order.placed".into(),
            occurred_at: Timestamp::UNIX_EPOCH,
            received_at: Timestamp::UNIX_EPOCH,
            actor: "alice".into(),
            source: "test".into(),
            idempotency_key: None,
        };
        let payload = codec.encode(&schema, &envelope, &value).unwrap();
        (0..count)
            .map(|b| {
                (0..size)
                    .map(|i| ReadRecord {
                        topic: "orders".into(),
                        partition: 0,
                        offset: (b * size + i) as i64,
                        key: None,
                        payload: Some(payload.clone()),
                        timestamp_ms: Some(0),
                        headers: Vec::new(),
                    })
                    .collect()
            })
            .collect()
    }

    fn source(
        batches: Vec<Vec<ReadRecord>>,
    ) -> impl FnMut() -> anyhow::Result<Option<Vec<ReadRecord>>> + Send {
        let mut batches = batches.into_iter();
        move || Ok(batches.next())
    }

    #[test]
    fn batches_come_back_in_the_order_they_were_read() {
        let codec = codec();
        for decoders in [1, 3] {
            let mut offsets = Vec::new();
            pipeline(
                source(batches(&codec, 40, 7)),
                &codec,
                &args(decoders),
                |batch| {
                    let formats::Encoded::Lines(lines) = batch.encoded else {
                        panic!("JSON lines are encoded as lines");
                    };
                    assert!(lines.ends_with(b"}\n"));
                    assert_eq!(batch.summary.written, 7);
                    for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                        let line: serde_json::Value = serde_json::from_slice(line).unwrap();
                        offsets.push(line["offset"].as_i64().unwrap());
                    }
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(offsets, (0..280).collect::<Vec<_>>());
        }
    }

    #[test]
    fn an_undecodable_record_stops_the_replay_naming_it() {
        let codec = codec();
        let mut batches = batches(&codec, 10, 5);
        batches[4][2].payload = Some(b"not avro".to_vec());
        let err = pipeline(source(batches), &codec, &args(2), |_| Ok(())).unwrap_err();
        assert!(
            format!("{err:#}").contains("offset 22 of orders partition 0 does not decode"),
            "{err:#}"
        );
    }

    #[test]
    fn a_failing_writer_or_reader_stops_everything_without_hanging() {
        let codec = codec();
        let endless = {
            let batch = batches(&codec, 1, 3).remove(0);
            move || Ok(Some(batch.clone()))
        };
        let mut written = 0;
        let err = pipeline(endless, &codec, &args(2), |_| {
            written += 1;
            if written == 5 {
                anyhow::bail!("disk full");
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");

        let mut calls = 0;
        let failing = || {
            calls += 1;
            if calls == 3 {
                anyhow::bail!("broker gone");
            }
            Ok(Some(batches(&codec, 1, 2).remove(0)))
        };
        let err = pipeline(failing, &codec, &args(2), |_| Ok(())).unwrap_err();
        assert_eq!(err.to_string(), "broker gone");
    }
}
