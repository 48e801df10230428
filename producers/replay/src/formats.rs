//! The output formats, each a [`Sink`] over any writer: JSON lines, CSV (RFC 4180, `data` as
//! JSON text), an Avro object container file and a Parquet file. All hold [`COLUMNS`];
//! times are RFC 3339 text in JSON lines and CSV, and UTC microsecond timestamps in Avro
//! (`timestamp-micros`) and Parquet (`TIMESTAMP(MICROS, true)`), which DuckDB, pandas and
//! pyarrow read as timestamps. Memory stays bounded: Avro writes a block at a time, Parquet a
//! row group of [`PARQUET_ROW_GROUP`] rows at a time.

use std::io::Write;
use std::sync::Arc;

use apache_avro::types::Value as Avro;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use events::DecodedText;
use platform::kafka::ReadRecord;

use crate::row::{COLUMNS, Row};

/// Rows per Parquet row group (give or take a batch): what one holds in memory before it is
/// written.
pub const PARQUET_ROW_GROUP: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
    Avro,
    Parquet,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing Avro: {0}")]
    Avro(#[from] Box<apache_avro::Error>),
    #[error("writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

impl From<apache_avro::Error> for SinkError {
    fn from(err: apache_avro::Error) -> Self {
        Self::Avro(Box::new(err))
    }
}

/// Where rows go.
pub trait Sink {
    /// Writes a batch, encoded by an [`Encoder`] for this sink's format.
    fn write(&mut self, batch: Encoded) -> Result<(), SinkError>;
    /// Writes what is buffered and the format's trailer.
    fn finish(self: Box<Self>) -> Result<(), SinkError>;
}

/// A batch encoded for another format than the sink's: a mistake in the caller.
fn mismatched() -> SinkError {
    SinkError::Io(std::io::Error::other("a batch encoded for another format"))
}

pub type Output = Box<dyn Write + Send>;

pub fn sink(format: Format, out: Output) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match format {
        Format::Jsonl => Box::new(Jsonl(std::io::BufWriter::new(out))),
        Format::Csv => Box::new(Csv::new(out)?),
        Format::Avro => Box::new(AvroFile::new(out)?),
        Format::Parquet => Box::new(ParquetFile::new(out)?),
    })
}

/// A batch's kept events, encoded on the thread that decoded them for the format at hand:
/// each event is then freed on the thread that made it, which is what glibc's allocator is
/// fast at.
pub enum Encoded {
    /// Nothing to write (a dry run).
    Nothing,
    /// JSON lines or CSV: the lines, one after the other.
    Lines(Vec<u8>),
    /// Parquet: the events as columns.
    Columns(Box<Columns>),
    /// Avro: the batch's records and, for each kept one, its index and event.
    Rows(Vec<ReadRecord>, Vec<(usize, DecodedText)>),
}

/// Encodes a batch's kept events one by one into an [`Encoded`].
pub struct Encoder(Encoding);

enum Encoding {
    Nothing,
    Lines {
        format: Format,
        lines: Vec<u8>,
        /// The batch's size, to make room for its lines at the first one's length.
        records: usize,
    },
    Columns(Box<ColumnsBuilder>),
    Rows(Vec<(usize, DecodedText)>),
}

impl Encoder {
    /// For a batch of `records` records; a dry run encodes nothing.
    pub fn new(format: Format, dry_run: bool, records: usize) -> Self {
        Self(match format {
            _ if dry_run => Encoding::Nothing,
            Format::Jsonl | Format::Csv => Encoding::Lines {
                format,
                lines: Vec::new(),
                records,
            },
            Format::Parquet => Encoding::Columns(Box::default()),
            Format::Avro => Encoding::Rows(Vec::new()),
        })
    }

    /// Adds the batch's record `index` and its event.
    pub fn add(&mut self, index: usize, record: &ReadRecord, decoded: DecodedText) {
        match &mut self.0 {
            Encoding::Nothing => {}
            Encoding::Lines {
                format,
                lines,
                records,
            } => {
                let first = lines.is_empty();
                append_line(*format, &Row::new(record, &decoded), lines);
                if first {
                    // Room for the batch, so the buffer is not copied over and over.
                    lines.reserve(lines.len() * *records * 5 / 4);
                }
            }
            Encoding::Columns(columns) => columns.push(&Row::new(record, &decoded)),
            Encoding::Rows(kept) => kept.push((index, decoded)),
        }
    }

    /// The encoded batch; `records` are kept only where the rows need them.
    pub fn finish(self, records: Vec<ReadRecord>) -> Encoded {
        match self.0 {
            Encoding::Nothing => Encoded::Nothing,
            Encoding::Lines { lines, .. } => Encoded::Lines(lines),
            Encoding::Columns(columns) => Encoded::Columns(Box::new(columns.build())),
            Encoding::Rows(kept) => Encoded::Rows(records, kept),
        }
    }
}

/// Appends a row as one line of JSON lines or CSV, newline included.
fn append_line(format: Format, row: &Row<'_>, out: &mut Vec<u8>) {
    match format {
        Format::Csv => out.extend_from_slice(csv_line(row).as_bytes()),
        _ => row.write_json_line(out),
    }
    out.push(b'\n');
}

/// Writes a batch's lines.
fn write_lines(out: &mut impl Write, batch: Encoded) -> Result<(), SinkError> {
    match batch {
        Encoded::Lines(lines) => Ok(out.write_all(&lines)?),
        Encoded::Nothing => Ok(()),
        _ => Err(mismatched()),
    }
}

struct Jsonl(std::io::BufWriter<Output>);

impl Sink for Jsonl {
    fn write(&mut self, batch: Encoded) -> Result<(), SinkError> {
        write_lines(&mut self.0, batch)
    }

    fn finish(mut self: Box<Self>) -> Result<(), SinkError> {
        self.0.flush()?;
        Ok(())
    }
}

struct Csv(std::io::BufWriter<Output>);

impl Csv {
    fn new(out: Output) -> Result<Self, SinkError> {
        let mut out = std::io::BufWriter::new(out);
        writeln!(out, "{}", COLUMNS.join(","))?;
        Ok(Self(out))
    }
}

/// A CSV field: quoted when it holds a comma, a quote or a line break, quotes doubled.
fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
}

fn csv_line(row: &Row<'_>) -> String {
    let mut id = [0u8; 36];
    let fields = [
        csv_field(row.topic),
        row.partition.to_string().into(),
        row.offset.to_string().into(),
        csv_field(row.key.as_deref().unwrap_or("")),
        csv_field(row.event_id_text(&mut id)),
        csv_field(row.event_type),
        crate::row::rfc3339(row.occurred_at_us).into(),
        crate::row::rfc3339(row.received_at_us).into(),
        csv_field(row.actor),
        csv_field(row.source),
        csv_field(row.idempotency_key.unwrap_or("")),
        csv_field(row.data),
    ];
    fields.join(",")
}

impl Sink for Csv {
    fn write(&mut self, batch: Encoded) -> Result<(), SinkError> {
        write_lines(&mut self.0, batch)
    }

    fn finish(mut self: Box<Self>) -> Result<(), SinkError> {
        self.0.flush()?;
        Ok(())
    }
}

const AVRO_SCHEMA: &str = r#"{
  "type": "record", "name": "HeraldEvent", "namespace": "herald.export",
  "doc": "One event replayed from Herald's log: its place in the log, its envelope, its data as JSON.",
  "fields": [
    {"name": "topic", "type": "string"},
    {"name": "partition", "type": "int"},
    {"name": "offset", "type": "long"},
    {"name": "key", "type": ["null", "string"]},
    {"name": "event_id", "type": "string"},
    {"name": "event_type", "type": "string"},
    {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "received_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "actor", "type": "string"},
    {"name": "source", "type": "string"},
    {"name": "idempotency_key", "type": ["null", "string"]},
    {"name": "data", "type": "string"}
  ]
}"#;

struct AvroFile {
    writer: apache_avro::Writer<'static, Output>,
}

impl AvroFile {
    fn new(out: Output) -> Result<Self, SinkError> {
        // The writer borrows its schema for its whole life: one schema per process.
        static SCHEMA: std::sync::OnceLock<apache_avro::Schema> = std::sync::OnceLock::new();
        let schema = match SCHEMA.get() {
            Some(schema) => schema,
            None => {
                let parsed = apache_avro::Schema::parse_str(AVRO_SCHEMA)?;
                SCHEMA.get_or_init(|| parsed)
            }
        };
        Ok(Self {
            writer: apache_avro::Writer::new(schema, out)?,
        })
    }
}

fn optional(text: Option<&str>) -> Avro {
    match text {
        Some(text) => Avro::Union(1, Box::new(Avro::String(text.to_string()))),
        None => Avro::Union(0, Box::new(Avro::Null)),
    }
}

impl Sink for AvroFile {
    fn write(&mut self, batch: Encoded) -> Result<(), SinkError> {
        match batch {
            Encoded::Rows(records, kept) => {
                for (index, decoded) in &kept {
                    self.append(&Row::new(&records[*index], decoded))?;
                }
                Ok(())
            }
            Encoded::Nothing => Ok(()),
            _ => Err(mismatched()),
        }
    }

    fn finish(self: Box<Self>) -> Result<(), SinkError> {
        let mut out = self.writer.into_inner()?;
        out.flush()?;
        Ok(())
    }
}

impl AvroFile {
    fn append(&mut self, row: &Row<'_>) -> Result<(), SinkError> {
        let record = Avro::Record(vec![
            ("topic".into(), Avro::String(row.topic.to_owned())),
            ("partition".into(), Avro::Int(row.partition)),
            ("offset".into(), Avro::Long(row.offset)),
            ("key".into(), optional(row.key.as_deref())),
            ("event_id".into(), Avro::String(row.event_id.to_string())),
            ("event_type".into(), Avro::String(row.event_type.to_owned())),
            (
                "occurred_at".into(),
                Avro::TimestampMicros(row.occurred_at_us),
            ),
            (
                "received_at".into(),
                Avro::TimestampMicros(row.received_at_us),
            ),
            ("actor".into(), Avro::String(row.actor.to_owned())),
            ("source".into(), Avro::String(row.source.to_owned())),
            ("idempotency_key".into(), optional(row.idempotency_key)),
            ("data".into(), Avro::String(row.data.to_owned())),
        ]);
        self.writer.append_value(record)?;
        Ok(())
    }
}

const PARQUET_SCHEMA: &str = "message herald_event {
  REQUIRED BYTE_ARRAY topic (UTF8);
  REQUIRED INT32 partition;
  REQUIRED INT64 offset;
  OPTIONAL BYTE_ARRAY key (UTF8);
  REQUIRED BYTE_ARRAY event_id (UTF8);
  REQUIRED BYTE_ARRAY event_type (UTF8);
  REQUIRED INT64 occurred_at (TIMESTAMP(MICROS,true));
  REQUIRED INT64 received_at (TIMESTAMP(MICROS,true));
  REQUIRED BYTE_ARRAY actor (UTF8);
  REQUIRED BYTE_ARRAY source (UTF8);
  OPTIONAL BYTE_ARRAY idempotency_key (UTF8);
  REQUIRED BYTE_ARRAY data (JSON);
}";

/// Rows as Parquet columns: a row group's, or a batch's built on the thread that decoded it.
#[derive(Default)]
pub struct Columns {
    topic: Vec<ByteArray>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    key: Vec<ByteArray>,
    key_defined: Vec<i16>,
    event_id: Vec<ByteArray>,
    event_type: Vec<ByteArray>,
    occurred_at: Vec<i64>,
    received_at: Vec<i64>,
    actor: Vec<ByteArray>,
    source: Vec<ByteArray>,
    idempotency_key: Vec<ByteArray>,
    idempotency_key_defined: Vec<i16>,
    data: Vec<ByteArray>,
}

impl Columns {
    fn len(&self) -> usize {
        self.offset.len()
    }

    /// Moves `other`'s rows after these.
    fn append(&mut self, mut other: Columns) {
        self.topic.append(&mut other.topic);
        self.partition.append(&mut other.partition);
        self.offset.append(&mut other.offset);
        self.key.append(&mut other.key);
        self.key_defined.append(&mut other.key_defined);
        self.event_id.append(&mut other.event_id);
        self.event_type.append(&mut other.event_type);
        self.occurred_at.append(&mut other.occurred_at);
        self.received_at.append(&mut other.received_at);
        self.actor.append(&mut other.actor);
        self.source.append(&mut other.source);
        self.idempotency_key.append(&mut other.idempotency_key);
        self.idempotency_key_defined
            .append(&mut other.idempotency_key_defined);
        self.data.append(&mut other.data);
    }
}

/// A text column being filled: its values one after the other in one buffer, so a row costs
/// no allocation of its own; each value becomes a slice of the buffer in [`Text::finish`].
#[derive(Default)]
struct Text {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Text {
    fn push(&mut self, value: &str) {
        self.bytes.extend_from_slice(value.as_bytes());
        self.ends.push(self.bytes.len());
    }

    fn finish(self) -> Vec<ByteArray> {
        let buffer = bytes::Bytes::from(self.bytes);
        let mut start = 0;
        self.ends
            .into_iter()
            .map(|end| {
                let value = ByteArray::from(buffer.slice(start..end));
                start = end;
                value
            })
            .collect()
    }
}

/// Builds a batch's [`Columns`] row by row.
#[derive(Default)]
struct ColumnsBuilder {
    topic: Text,
    partition: Vec<i32>,
    offset: Vec<i64>,
    key: Text,
    key_defined: Vec<i16>,
    event_id: Text,
    event_type: Text,
    occurred_at: Vec<i64>,
    received_at: Vec<i64>,
    actor: Text,
    source: Text,
    idempotency_key: Text,
    idempotency_key_defined: Vec<i16>,
    data: Text,
}

impl ColumnsBuilder {
    fn push(&mut self, row: &Row<'_>) {
        let optional = |values: &mut Text, defined: &mut Vec<i16>, value| match value {
            Some(value) => {
                values.push(value);
                defined.push(1);
            }
            None => defined.push(0),
        };
        self.topic.push(row.topic);
        self.partition.push(row.partition);
        self.offset.push(row.offset);
        optional(&mut self.key, &mut self.key_defined, row.key.as_deref());
        self.event_id.push(row.event_id_text(&mut [0u8; 36]));
        self.event_type.push(row.event_type);
        self.occurred_at.push(row.occurred_at_us);
        self.received_at.push(row.received_at_us);
        self.actor.push(row.actor);
        self.source.push(row.source);
        optional(
            &mut self.idempotency_key,
            &mut self.idempotency_key_defined,
            row.idempotency_key,
        );
        self.data.push(row.data);
    }

    fn build(self) -> Columns {
        Columns {
            topic: self.topic.finish(),
            partition: self.partition,
            offset: self.offset,
            key: self.key.finish(),
            key_defined: self.key_defined,
            event_id: self.event_id.finish(),
            event_type: self.event_type.finish(),
            occurred_at: self.occurred_at,
            received_at: self.received_at,
            actor: self.actor.finish(),
            source: self.source.finish(),
            idempotency_key: self.idempotency_key.finish(),
            idempotency_key_defined: self.idempotency_key_defined,
            data: self.data.finish(),
        }
    }
}

/// Rows are gathered into columns here, and each full row group is encoded, compressed and
/// written on a thread of its own, beside the decoding.
struct ParquetFile {
    columns: Columns,
    groups: Option<std::sync::mpsc::SyncSender<Columns>>,
    writer: Option<std::thread::JoinHandle<Result<(), SinkError>>>,
}

/// Columns whose values are mostly distinct: a dictionary costs time and saves nothing.
const PARQUET_PLAIN: [&str; 7] = [
    "offset",
    "key",
    "event_id",
    "occurred_at",
    "received_at",
    "idempotency_key",
    "data",
];

impl ParquetFile {
    fn new(out: Output) -> Result<Self, SinkError> {
        let schema = Arc::new(parse_message_type(PARQUET_SCHEMA)?);
        let mut properties = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by("herald replay".into());
        for column in PARQUET_PLAIN {
            properties = properties.set_column_dictionary_enabled(column.into(), false);
        }
        let mut file = SerializedFileWriter::new(out, schema, Arc::new(properties.build()))?;
        // One group queued while one is written: memory stays at a few row groups.
        let (groups, queued) = std::sync::mpsc::sync_channel::<Columns>(1);
        let writer = std::thread::spawn(move || {
            for columns in queued {
                write_group(&mut file, &columns)?;
            }
            file.into_inner()?.flush()?;
            Ok(())
        });
        Ok(Self {
            columns: Columns::default(),
            groups: Some(groups),
            writer: Some(writer),
        })
    }

    /// Hands the gathered rows to the writing thread; its error, if it stopped on one.
    fn flush_group(&mut self) -> Result<(), SinkError> {
        if self.columns.len() == 0 {
            return Ok(());
        }
        let columns = std::mem::take(&mut self.columns);
        let sent = self
            .groups
            .as_ref()
            .is_some_and(|groups| groups.send(columns).is_ok());
        if sent { Ok(()) } else { self.join() }
    }

    /// Waits for the writing thread to finish what it was given.
    fn join(&mut self) -> Result<(), SinkError> {
        self.groups = None;
        match self.writer.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(SinkError::Io(std::io::Error::other(
                "the Parquet writing thread panicked",
            ))),
            None => Err(SinkError::Io(std::io::Error::other(
                "the Parquet writing thread already stopped",
            ))),
        }
    }
}

fn write_group(writer: &mut SerializedFileWriter<Output>, c: &Columns) -> Result<(), SinkError> {
    let mut group = writer.next_row_group()?;
    let mut index = 0;
    while let Some(mut column) = group.next_column()? {
        match COLUMNS[index] {
            "partition" => {
                column
                    .typed::<Int32Type>()
                    .write_batch(&c.partition, None, None)?;
            }
            "offset" | "occurred_at" | "received_at" => {
                let values = match COLUMNS[index] {
                    "offset" => &c.offset,
                    "occurred_at" => &c.occurred_at,
                    _ => &c.received_at,
                };
                column
                    .typed::<Int64Type>()
                    .write_batch(values, None, None)?;
            }
            "key" => {
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&c.key, Some(&c.key_defined), None)?;
            }
            "idempotency_key" => {
                column.typed::<ByteArrayType>().write_batch(
                    &c.idempotency_key,
                    Some(&c.idempotency_key_defined),
                    None,
                )?;
            }
            name => {
                let values = match name {
                    "topic" => &c.topic,
                    "event_id" => &c.event_id,
                    "event_type" => &c.event_type,
                    "actor" => &c.actor,
                    "source" => &c.source,
                    _ => &c.data,
                };
                column
                    .typed::<ByteArrayType>()
                    .write_batch(values, None, None)?;
            }
        }
        column.close()?;
        index += 1;
    }
    group.close()?;
    Ok(())
}

impl Sink for ParquetFile {
    fn write(&mut self, batch: Encoded) -> Result<(), SinkError> {
        match batch {
            Encoded::Columns(columns) => self.columns.append(*columns),
            Encoded::Nothing => return Ok(()),
            _ => return Err(mismatched()),
        }
        if self.columns.len() >= PARQUET_ROW_GROUP {
            self.flush_group()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<(), SinkError> {
        self.flush_group()?;
        self.join()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
