//! Errors to Sentry (or anything that speaks its protocol: GlitchTip, self-hosted Sentry).
//!
//! With `SENTRY_DSN` (or `SENTRY_DSN_FILE`) set, every ERROR log event and every panic of the
//! process becomes a Sentry event, sent through the official `sentry` crate and its `tracing`
//! integration from a thread of its own (a full queue drops events, it never blocks a
//! request). Each event carries:
//! - `release` (`SENTRY_RELEASE`, default `herald@<version>`) and `environment`
//!   (`SENTRY_ENVIRONMENT`, default `production`);
//! - tags `service` (the subcommand), and the `trace_id` and `request_id` of the request or
//!   consumer batch it happened in, so an error links to its trace and its log lines;
//! - the event's own fields, as `extra`.
//!
//! Nothing else goes: no breadcrumbs (they would mix other requests' lines into an event), no
//! spans (traces go to OpenTelemetry), no client addresses. Before an event leaves, every
//! field, tag and context whose name marks a secret (the names the request log redacts:
//! password, token, secret, otp, authorization, cookie, credential, code...) is replaced, at
//! any depth, and a password written into a URL (`scheme://user:password@host`) is cut out
//! of every text, the error messages and the panic's included.
//!
//! `SENTRY_SAMPLE_RATE` (0 to 1, default 1) keeps that share of events. The alert webhook is
//! separate and unchanged.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sentry::protocol::{Event, Map, Value};
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::edge::redact::{REDACTED, is_secret_name};

static GUARD: OnceLock<sentry::ClientInitGuard> = OnceLock::new();

/// Starts the Sentry client when a DSN is configured (its panic integration with it), and
/// answers the layers that feed it: one that remembers the spans' trace and request ids, and
/// sentry's own that turns ERROR events into Sentry events. `None` when no DSN is set.
pub fn layers<S>(service: &str) -> anyhow::Result<Option<impl Layer<S> + Send + Sync + use<S>>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(dsn) = dsn()? else {
        return Ok(None);
    };
    let release = std::env::var("SENTRY_RELEASE")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| format!("herald@{}", env!("CARGO_PKG_VERSION")));
    let environment = std::env::var("SENTRY_ENVIRONMENT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "production".to_string());
    let sample_rate = match std::env::var("SENTRY_SAMPLE_RATE") {
        Ok(rate) => rate
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                anyhow::anyhow!("SENTRY_SAMPLE_RATE must be a number from 0 to 1, not {rate:?}")
            })?,
        Err(_) => 1.0,
    };
    let mut options = sentry::ClientOptions::default();
    options.dsn = Some(dsn);
    options.release = Some(Cow::Owned(release));
    options.environment = Some(Cow::Owned(environment));
    options.max_breadcrumbs = 0;
    options.send_default_pii = false;
    // Called on the thread that captures the event, inside the span it happened in.
    let mut options = options.sample_rate(sample_rate);
    options.before_send = Some(Arc::new(|mut event| {
        if let Some(ids) = current_ids() {
            ids.tag(&mut event);
        }
        Some(scrub(event))
    }));
    let guard = sentry::init(options);
    let service = service.to_string();
    sentry::configure_scope(|scope| scope.set_tag("service", &service));
    let _ = GUARD.set(guard);
    // Spans at info and above carry the ids; only ERROR events are reported. Fixed per
    // call site, so every other event costs nothing more than without Sentry.
    let wanted = tracing_subscriber::filter::filter_fn(|metadata| {
        if metadata.is_span() {
            *metadata.level() <= tracing::Level::INFO
        } else {
            *metadata.level() == tracing::Level::ERROR
        }
    })
    .with_max_level_hint(tracing::Level::INFO);
    Ok(Some(
        Ids.and_then(sentry::integrations::tracing::ErrorLayer::new())
            .with_filter(wanted),
    ))
}

/// Sends what is queued, within `deadline`; call once, before the process exits.
pub fn flush(deadline: Duration) {
    if let Some(guard) = GUARD.get()
        && !guard.flush(Some(deadline))
    {
        eprintln!("sentry: events still queued at the flush deadline were dropped");
    }
}

fn dsn() -> anyhow::Result<Option<sentry::types::Dsn>> {
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let text = match (set("SENTRY_DSN"), set("SENTRY_DSN_FILE")) {
        (Some(_), Some(_)) => {
            anyhow::bail!("SENTRY_DSN and SENTRY_DSN_FILE are both set: set one of them")
        }
        (Some(dsn), None) => dsn,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|err| anyhow::anyhow!("SENTRY_DSN_FILE: cannot read {path}: {err}"))?,
        (None, None) => return Ok(None),
    };
    // The DSN holds the project's key: the error names the variable, never the value.
    text.trim().parse().map(Some).map_err(|_| {
        anyhow::anyhow!(
            "SENTRY_DSN is not a Sentry DSN (https://<key>@<host>/<project id>); \
             copy it from the project's Client Keys settings"
        )
    })
}

/// The ids of the span the current thread is in, or of its nearest parent that has them.
fn current_ids() -> Option<SpanIds> {
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = registry.span(id)?;
            span.scope()
                .find_map(|span| span.extensions().get::<SpanIds>().cloned())
        })
        .flatten()
}

/// The ids a span was given, kept for the events inside it.
#[derive(Default, Clone)]
struct SpanIds {
    trace_id: Option<String>,
    request_id: Option<String>,
}

impl SpanIds {
    fn tag(&self, event: &mut Event<'static>) {
        if let Some(trace_id) = &self.trace_id {
            event.tags.insert("trace_id".into(), trace_id.clone());
            // Sentry's own trace context, which its UI links by, gets the same id (it makes
            // up one of its own otherwise).
            if let Ok(id) = trace_id.parse::<sentry::protocol::TraceId>()
                && let Some(sentry::protocol::Context::Trace(trace)) =
                    event.contexts.get_mut("trace")
            {
                trace.trace_id = id;
            }
        }
        if let Some(request_id) = &self.request_id {
            event.tags.insert("request_id".into(), request_id.clone());
        }
    }
}

impl Visit for SpanIds {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "trace_id" if !value.is_empty() => self.trace_id = Some(value.to_string()),
            "request_id" => self.request_id = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "trace_id" | "request_id") {
            // `%value` fields arrive here; their Debug is their Display.
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

/// Remembers the `trace_id` and `request_id` fields of spans that have them.
struct Ids;

impl<S> Layer<S> for Ids
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let fields = attrs.metadata().fields();
        if fields.field("trace_id").is_none() && fields.field("request_id").is_none() {
            return;
        }
        let mut ids = SpanIds::default();
        attrs.record(&mut ids);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(ids);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(ids) = span.extensions_mut().get_mut::<SpanIds>()
        {
            values.record(ids);
        }
    }
}

/// `event` with its secrets taken out (see the module docs).
pub fn scrub(mut event: Event<'static>) -> Event<'static> {
    scrub_map(&mut event.extra);
    for (name, value) in event.tags.iter_mut() {
        if is_secret_name(name) {
            *value = REDACTED.to_string();
        } else {
            scrub_text(value);
        }
    }
    for (_, context) in event.contexts.iter_mut() {
        if let sentry::protocol::Context::Other(map) = context {
            scrub_map(map);
        }
    }
    if let Some(message) = event.message.as_mut() {
        scrub_text(message);
    }
    if let Some(entry) = event.logentry.as_mut() {
        scrub_text(&mut entry.message);
        entry.params.iter_mut().for_each(scrub_value);
    }
    for exception in event.exception.values.iter_mut() {
        if let Some(value) = exception.value.as_mut() {
            scrub_text(value);
        }
    }
    event.breadcrumbs.values.clear();
    event.request = None;
    event.user = None;
    event
}

fn scrub_map(map: &mut Map<String, Value>) {
    scrub_entries(map.iter_mut());
}

fn scrub_entries<'a>(entries: impl Iterator<Item = (&'a String, &'a mut Value)>) {
    for (name, value) in entries {
        if is_secret_name(name) {
            *value = Value::String(REDACTED.to_string());
        } else {
            scrub_value(value);
        }
    }
}

fn scrub_value(value: &mut Value) {
    match value {
        Value::String(text) => scrub_text(text),
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        Value::Object(map) => scrub_entries(map.iter_mut()),
        _ => {}
    }
}

/// Cuts the password out of every `scheme://user:password@` in `text`.
fn scrub_text(text: &mut String) {
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        // The authority ends at the first of these; a password cannot hold them unescaped.
        let end = text[start..]
            .find(['/', ' ', '\n', '"', '\'', '?', '#', '>'])
            .map_or(text.len(), |e| start + e);
        let authority = &text[start..end];
        from = end;
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
        {
            let password = start + colon + 1..start + at;
            text.replace_range(password.clone(), REDACTED);
            from = password.start + REDACTED.len() + (end - password.end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(text: &str) -> String {
        let mut text = text.to_string();
        scrub_text(&mut text);
        text
    }

    #[test]
    fn passwords_in_urls_are_cut_out_and_the_rest_is_kept() {
        assert_eq!(
            scrubbed("connecting to postgres://herald:hunter2@db:5432/herald failed"),
            "connecting to postgres://herald:[redacted]@db:5432/herald failed"
        );
        assert_eq!(
            scrubbed("a redis://:s3cret@cache and smtp://me:pw@mail?x=1"),
            "a redis://:[redacted]@cache and smtp://me:[redacted]@mail?x=1"
        );
        assert_eq!(
            scrubbed("http://example.com/a@b no user"),
            "http://example.com/a@b no user"
        );
        assert_eq!(scrubbed("https://user@host/"), "https://user@host/");
        assert_eq!(scrubbed("://:@ and ://a:@b"), "://:@ and ://a:@b");
        assert_eq!(scrubbed("no url at all"), "no url at all");
    }

    #[test]
    fn secret_fields_are_replaced_at_any_depth() {
        let mut event = Event::new();
        event.extra.insert("password".into(), "hunter2".into());
        event.extra.insert(
            "body".into(),
            serde_json::json!({"user": {"otp_code": "123456", "name": "Bob"}, "list": [{"token": "t"}]}),
        );
        event
            .extra
            .insert("db".into(), "postgres://u:pw@h/d".into());
        event.tags.insert("api_key".into(), "k".into());
        event.message = Some("login with password at sqlite://x:y@z".into());
        let event = scrub(event);
        assert_eq!(event.extra["password"], REDACTED);
        assert_eq!(event.extra["body"]["user"]["otp_code"], REDACTED);
        assert_eq!(event.extra["body"]["user"]["name"], "Bob");
        assert_eq!(event.extra["body"]["list"][0]["token"], REDACTED);
        assert_eq!(event.extra["db"], "postgres://u:[redacted]@h/d");
        assert_eq!(event.tags["api_key"], REDACTED);
        assert_eq!(
            event.message.as_deref(),
            Some("login with password at sqlite://x:[redacted]@z")
        );
    }
}
