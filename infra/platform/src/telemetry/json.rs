//! The JSON log line: one object per event, written straight into the line's buffer.
//!
//! `{"timestamp":…,"level":…,"message":…, <the event's fields>, "target":…, "span":{"name":…,
//! <the current span's fields>}}`. A span's fields are formatted once, as a JSON fragment,
//! when the span starts, and a field recorded later is appended to it: nothing is parsed back.
//! The `otel.*` fields name things for the trace exporter only and are left out.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as JSON lines (see the module's documentation).
pub struct JsonLine;

/// Formats a span's fields as a JSON fragment (`"a":1,"b":"x"`), appending on `record`.
pub struct SpanFields;

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = Fields::new(&mut writer, true);
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut visitor = Fields::new(&mut writer, first);
        fields.record(&mut visitor);
        visitor.result
    }
}

impl<S> FormatEvent<S, SpanFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, SpanFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(
            writer,
            r#"{{"timestamp":"{:.6}","level":"{}""#,
            jiff::Timestamp::now(),
            meta.level()
        )?;
        let mut visitor = Fields::new(&mut writer, false);
        event.record(&mut visitor);
        visitor.result?;
        writer.write_str(r#","target":"#)?;
        string(&mut writer, meta.target())?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(r#","span":{"name":"#)?;
            string(&mut writer, span.name())?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<SpanFields>>()
                && !fields.fields.is_empty()
            {
                writer.write_char(',')?;
                writer.write_str(&fields.fields)?;
            }
            writer.write_char('}')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes each field as `"name":value`, a comma before each but the first.
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl<'a, 'w> Fields<'a, 'w> {
    fn new(out: &'a mut Writer<'w>, first: bool) -> Self {
        Self {
            out,
            first,
            result: Ok(()),
        }
    }

    /// Writes the field's name and colon; false for a field left out (or after an error).
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.result.is_err() || name.starts_with("otel.") {
            return false;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        if !std::mem::take(&mut self.first) {
            self.result = self.out.write_char(',');
        }
        self.result = self
            .result
            .and_then(|()| string(self.out, name))
            .and_then(|()| self.out.write_char(':'));
        self.result.is_ok()
    }

    fn value(&mut self, field: &Field, write: impl FnOnce(&mut Writer<'w>) -> fmt::Result) {
        if self.key(field) {
            self.result = write(self.out);
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.value(field, |out| string(out, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.value(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.value(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.value(field, |out| write!(out, "{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.value(field, |out| write!(out, "{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.value(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those are written as strings.
        self.value(field, |out| {
            if value.is_finite() {
                write!(out, "{value}")
            } else {
                write!(out, "\"{value}\"")
            }
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.value(field, |out| quoted(out, format_args!("{value}")));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.value(field, |out| quoted(out, format_args!("{value:?}")));
    }
}

/// `text` as a JSON string.
fn string(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(text)?;
    out.write_char('"')
}

/// What `value` formats to, as a JSON string (errors and `Debug` values).
fn quoted(out: &mut impl fmt::Write, value: fmt::Arguments<'_>) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_fmt(value)?;
    out.write_char('"')
}

/// Escapes what passes through it for the inside of a JSON string.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, byte) in text.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f | 0x7f => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = String::new();
        string(&mut out, text).unwrap();
        out
    }

    /// What the fmt layer writes, kept for the test to read.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_the_event_and_its_span() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .fmt_fields(SpanFields)
                .event_format(JsonLine),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                otel.name = "POST /api/v1/events",
                http.route = "/api/v1/events",
                request_id = "req-1",
                trace_id = tracing::field::Empty,
            );
            span.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            let _entered = span.enter();
            let err = std::io::Error::other("broken \"pipe\"");
            tracing::info!(status = 202_u16, latency_ms = 1.5, ok = true, %err, "request");
        });
        tracing::subscriber::with_default(
            tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .with_writer({
                        let writer = lines.clone();
                        move || writer.clone()
                    })
                    .fmt_fields(SpanFields)
                    .event_format(JsonLine),
            ),
            || tracing::warn!(ratio = f64::NAN, "outside a span"),
        );
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect();
        assert_eq!(parsed.len(), 2, "{text}");
        let line = &parsed[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "request");
        assert_eq!(line["status"], 202);
        assert_eq!(line["latency_ms"], 1.5);
        assert_eq!(line["ok"], true);
        assert_eq!(line["err"], "broken \"pipe\"");
        assert_eq!(line["span"]["name"], "request");
        assert_eq!(line["span"]["request_id"], "req-1");
        assert_eq!(line["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["span"]["http.route"], "/api/v1/events");
        assert!(line["span"].get("otel.name").is_none(), "{line}");
        assert!(
            jiff::Timestamp::from_str(line["timestamp"].as_str().unwrap()).is_ok(),
            "{line}"
        );
        assert_eq!(parsed[1]["ratio"], "NaN");
        assert!(parsed[1].get("span").is_none());
    }

    #[test]
    fn strings_are_escaped_as_json_reads_them() {
        for text in [
            "plain",
            "a \"quote\"",
            "back\\slash",
            "line\nbreak\ttab\r",
            "\u{1}\u{7f}",
            "é 😀",
        ] {
            let parsed: String = serde_json::from_str(&escaped(text)).unwrap();
            assert_eq!(parsed, text);
        }
    }
}
