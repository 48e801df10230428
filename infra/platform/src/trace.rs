//! W3C trace context (`traceparent`): one trace per request, carried from the HTTP request
//! into the Kafka headers of every event it publishes, so one trace id ties a request to all
//! of its effects. The edge starts the request's span (a child of the caller's, or a new
//! trace); log lines inside it carry its trace id.
//!
//! When spans are exported (see [`crate::telemetry`]) a context is the exported span's own
//! ids, so the `traceparent` a consumer reads names a span the trace backend has; when they
//! are not, the ids are made here, so logs and Kafka headers still tie a request to its
//! effects.

use opentelemetry::KeyValue;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A span's place in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Bit 0: sampled.
    pub flags: u8,
}

impl TraceContext {
    /// Parses a `traceparent` header value; `None` unless it is well formed (lowercase hex,
    /// ids not all zero, version not `ff`), since a malformed one would break every trace
    /// downstream.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // Version 00 has exactly four parts; later versions may append more.
        if version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        hex::<1>(version)?;
        let context = Self {
            trace_id: hex(trace)?,
            span_id: hex(span)?,
            flags: hex::<1>(flags)?[0],
        };
        let zero = |bytes: &[u8]| bytes.iter().all(|b| *b == 0);
        (!zero(&context.trace_id) && !zero(&context.span_id)).then_some(context)
    }

    /// The caller's span: its `traceparent` header, when well formed.
    pub fn caller(headers: &axum::http::HeaderMap) -> Option<Self> {
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
    }

    /// The span that handles a request: a child of the caller's span, else the root of a
    /// new trace.
    pub fn for_request(headers: &axum::http::HeaderMap) -> Self {
        Self::caller(headers).map_or_else(Self::root, |parent| parent.child())
    }

    /// A new trace, sampled.
    pub fn root() -> Self {
        Self {
            trace_id: rand::random(),
            span_id: nonzero_span_id(),
            flags: 1,
        }
    }

    /// A span of the same trace whose parent is this one.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_span_id(),
            ..*self
        }
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        push_hex(&mut out, &self.trace_id);
        out.push('-');
        push_hex(&mut out, &self.span_id);
        out.push('-');
        push_hex(&mut out, &[self.flags]);
        out
    }

    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// Makes `span` continue a trace that came from another process (`parent`, from a
    /// header) or start one, and returns the context `span` passes on. Call it before the
    /// span is first entered.
    pub fn continue_in(span: &tracing::Span, parent: Option<Self>) -> Self {
        if let Some(parent) = parent
            && crate::telemetry::exporting()
        {
            // Refused only when the span is disabled; then it is not exported either.
            let _ = span.set_parent(
                opentelemetry::Context::new().with_remote_span_context(parent.span_context()),
            );
        }
        Self::exported(span).unwrap_or_else(|| parent.map_or_else(Self::root, |p| p.child()))
    }

    /// The producer span of a publish, a child of this one, and its context for the records'
    /// headers. It is made straight in the OpenTelemetry SDK, not through `tracing`: it wraps
    /// one await on the hot path of every request, and nothing logs inside it, so the
    /// `tracing` bookkeeping (a registered span, its fields, every poll entering and leaving
    /// it) would be pure cost. End it with [`Producing::end`].
    pub fn produce(&self, events: usize) -> (Self, Producing) {
        let Some(tracer) = crate::telemetry::tracer() else {
            return (self.child(), Producing(None));
        };
        let parent = opentelemetry::Context::new().with_remote_span_context(self.span_context());
        let span = tracer
            .span_builder("publish")
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.batch.message_count", events as i64),
            ])
            .start_with_context(tracer, &parent);
        let own = span.span_context();
        let context = Self {
            trace_id: own.trace_id().to_bytes(),
            span_id: own.span_id().to_bytes(),
            flags: own.trace_flags().to_u8(),
        };
        (context, Producing(Some(span)))
    }

    /// Links `span` to other traces it also works for (the other events of a batch).
    pub fn link(span: &tracing::Span, others: impl IntoIterator<Item = Self>) {
        if crate::telemetry::exporting() {
            for other in others {
                span.add_link(other.span_context());
            }
        }
    }

    fn exported(span: &tracing::Span) -> Option<Self> {
        if !crate::telemetry::exporting() {
            return None;
        }
        let context = span.context();
        let own = context.span().span_context().clone();
        own.is_valid().then(|| Self {
            trace_id: own.trace_id().to_bytes(),
            span_id: own.span_id().to_bytes(),
            flags: own.trace_flags().to_u8(),
        })
    }

    fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::NONE,
        )
    }
}

/// A producer span in flight (nothing when spans are not exported).
pub struct Producing(Option<opentelemetry_sdk::trace::Span>);

impl Producing {
    /// Ends the span, marked failed unless the broker acknowledged.
    pub fn end(self, acknowledged: bool) {
        if let Some(mut span) = self.0 {
            if !acknowledged {
                span.set_status(Status::error("not acknowledged"));
            }
            span.end();
        }
    }
}

fn nonzero_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` in lowercase hex (a table, not the formatting machinery: this runs on
/// every request).
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_well_formed_header_round_trips() {
        let context = TraceContext::parse(EXAMPLE).unwrap();
        assert_eq!(context.traceparent(), EXAMPLE);
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.flags, 1);
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "00-xyz",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        // A later version may carry more fields; the four known ones are read.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_gets_its_own_span() {
        let parent = TraceContext::parse(EXAMPLE).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        let root = TraceContext::root();
        assert_eq!(TraceContext::parse(&root.traceparent()), Some(root));
    }
}
