//! Reading a topic over HTTP: `GET /api/v1/streams/{topic}`, as Server-Sent Events
//! (`Accept: text/event-stream`) or as a JSON long-poll.
//!
//! Each event carries a cursor ([`cursor`]): the next offset of every partition, signed.
//! A client that comes back with it (`Last-Event-ID`, or `?cursor=`) to any replica resumes
//! where it was, with no gap and no event twice, because nothing else is kept: every request
//! reads the log afresh from the cursor's offsets, without a consumer group. `?from=` starts
//! at a time, and with neither a stream starts at the end (what comes next).
//!
//! A stream reads in a thread of its own into a buffer of `STREAM_BUFFER_EVENTS`; a client
//! that leaves it full for two seconds is cut off cleanly after what the buffer holds, and
//! resumes from its last cursor. A caller holds `STREAM_MAX_PER_CALLER` streams at most in
//! one process, and a process serves `STREAM_MAX_OPEN` at most, each on a thread of its own.

pub mod access;
pub mod cursor;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{self, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use events::{Catalog, Codec};
use platform::auth::{Authenticator, Principal};
use platform::kafka::KafkaArgs;
use platform::kafka::range::{RangeError, RangeReader, Start};
use platform::openapi::{Api, Operation};
use platform::privacy::BlockingRevealer;
use platform::problem::Problem;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use access::Reading;
use cursor::{Cursor, CursorError, CursorKey};

/// How long a broker has to answer when a stream opens.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a long-poll waits for a first event.
const MAX_WAIT_SECS: u64 = 30;
const MAX_LIMIT: usize = 1000;
/// How long a client may leave its full buffer undrained before it is cut off.
const SLOW_CLIENT: Duration = Duration::from_secs(2);

/// The streams' settings.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    /// The secret stream cursors are signed with (any text; 32 random bytes in base64 will
    /// do). Every replica serving streams must hold the same, so that a cursor from one
    /// resumes on another. Unset: the stream routes answer 503.
    #[arg(long, env = "STREAM_CURSOR_KEY", hide_env_values = true)]
    pub stream_cursor_key: Option<secrecy::SecretString>,
    /// Streams one caller may hold open in one process.
    #[arg(long, env = "STREAM_MAX_PER_CALLER", default_value_t = 5)]
    pub stream_max_per_caller: usize,
    /// Events read ahead of a client; a client that lets them pile up is disconnected and
    /// resumes from its cursor.
    #[arg(long, env = "STREAM_BUFFER_EVENTS", default_value_t = 1000)]
    pub stream_buffer_events: usize,
    /// Streams open at once in one process, all callers together (each holds a thread and
    /// a Kafka client); the next gets a 503 with Retry-After.
    #[arg(long, env = "STREAM_MAX_OPEN", default_value_t = 256)]
    pub stream_max_open: usize,
}

/// What the stream routes share.
pub struct Streams {
    kafka: KafkaArgs,
    catalog: Arc<Catalog>,
    codec: Arc<Codec>,
    revealer: Option<Arc<BlockingRevealer>>,
    key: Option<CursorKey>,
    auth: Arc<Authenticator>,
    max_per_caller: usize,
    max_open: usize,
    buffer: usize,
    open: Mutex<HashMap<String, usize>>,
    /// Cancelled at shutdown: every open stream ends.
    closing: CancellationToken,
}

impl Streams {
    pub fn new(
        args: &StreamArgs,
        kafka: &KafkaArgs,
        catalog: Arc<Catalog>,
        codec: Arc<Codec>,
        revealer: Option<BlockingRevealer>,
        auth: Arc<Authenticator>,
    ) -> Self {
        let key = args
            .stream_cursor_key
            .as_ref()
            .map(|secret| CursorKey::new(secrecy::ExposeSecret::expose_secret(secret).as_bytes()));
        Self {
            kafka: kafka.clone(),
            catalog,
            codec,
            revealer: revealer.map(Arc::new),
            key,
            auth,
            max_per_caller: args.stream_max_per_caller.max(1),
            max_open: args.stream_max_open.max(1),
            buffer: args.stream_buffer_events.max(1),
            open: Mutex::default(),
            closing: CancellationToken::new(),
        }
    }

    /// A place among the caller's open streams, given back when the guard drops.
    fn take_place(self: &Arc<Self>, subject: &str) -> Result<Place, Problem> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.values().sum::<usize>() >= self.max_open {
            return Err(Problem::unavailable(
                "this process serves as many streams as it may; retry shortly, or on another replica",
                5,
            ));
        }
        let held = open.entry(subject.to_string()).or_default();
        if *held >= self.max_per_caller {
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-streams",
                "Too many open streams",
                format!(
                    "you hold {} streams open already; close one first",
                    self.max_per_caller
                ),
            ));
        }
        *held += 1;
        Ok(Place {
            streams: self.clone(),
            subject: subject.to_string(),
        })
    }
}

/// One of a caller's open streams.
struct Place {
    streams: Arc<Streams>,
    subject: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self
            .streams
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = open.get_mut(&self.subject) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

/// The streams as a service of the process that serves them.
pub struct Service(pub Arc<Streams>);

impl platform::service::Service for Service {
    fn name(&self) -> &'static str {
        "streams"
    }

    fn routes(&self) -> Router {
        Router::new()
            .route("/api/v1/streams/{topic}", get(stream))
            .with_state(self.0.clone())
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> platform::service::Work {
        Box::pin(async move {
            shutdown.cancelled().await;
            self.0.closing.cancel();
            Ok(())
        })
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// The token, for a browser's `EventSource`, which cannot send an Authorization header
    /// (RFC 6750 §2.3). Herald's request log names the route, never the query.
    access_token: Option<String>,
    cursor: Option<String>,
    from: Option<String>,
    /// Event types, separated by commas.
    #[serde(rename = "type")]
    types: Option<String>,
    key: Option<String>,
    /// Long-poll: seconds to wait for a first event.
    wait: Option<u64>,
    /// Long-poll: events at most.
    limit: Option<usize>,
}

/// What a stream reads and lets through.
struct Plan {
    topic: String,
    /// The full topic name on the cluster.
    full_topic: String,
    start: Start,
    /// By event type: what the caller may read of it.
    types: HashMap<String, Reading>,
    key: Option<String>,
    subject: String,
}

/// One event on its way to a client.
struct Delivered {
    cursor: String,
    event_type: String,
    event: Value,
}

async fn stream(
    State(streams): State<Arc<Streams>>,
    Path(topic): Path<String>,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(|err| Problem::bad_request(err.body_text()))?;
    let principal = match &query.access_token {
        Some(_) if headers.contains_key(header::AUTHORIZATION) => {
            return Err(Problem::bad_request(
                "a token in both the Authorization header and access_token: send one",
            ));
        }
        Some(token) => streams
            .auth
            .verify(token)
            .map_err(|err| Problem::unauthorized(format!("access_token: {err}")))?,
        None => streams.auth.authenticate(&headers)?,
    };
    let Some(key) = &streams.key else {
        return Err(Problem::unavailable(
            "streams are not configured here: STREAM_CURSOR_KEY is not set",
            60,
        ));
    };
    let plan = plan(&streams, key, &principal, &topic, &query, &headers)?;
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let place = streams.take_place(&principal.subject)?;
    let opened = open(&streams, plan).await?;
    if sse {
        Ok(serve_sse(&streams, opened, place, &principal))
    } else {
        let wait = Duration::from_secs(query.wait.unwrap_or(20).min(MAX_WAIT_SECS));
        let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
        Ok(long_poll(opened, wait, limit, place).await)
    }
}

/// What the request asks for, checked against the catalog and the caller's roles.
fn plan(
    streams: &Streams,
    key: &CursorKey,
    principal: &Principal,
    topic: &str,
    query: &StreamQuery,
    headers: &HeaderMap,
) -> Result<Plan, Problem> {
    let of_topic: Vec<_> = streams
        .catalog
        .event_types()
        .filter(|schema| schema.topic == topic)
        .collect();
    if of_topic.is_empty() {
        return Err(Problem::not_found(format!(
            "no topic {topic:?} in the catalog (GET /api/v1/event-types lists each type's topic)"
        )));
    }
    let asked: Option<Vec<&str>> = query.types.as_deref().map(|t| {
        t.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    });
    let mut types = HashMap::new();
    for schema in &of_topic {
        if asked
            .as_ref()
            .is_some_and(|asked| !asked.contains(&schema.event_type.as_str()))
        {
            continue;
        }
        let reading = access::reading(&principal.roles, schema);
        if reading != Reading::Nothing {
            types.insert(schema.event_type.clone(), reading);
        }
    }
    if let Some(asked) = &asked {
        for name in asked {
            if !of_topic.iter().any(|schema| schema.event_type == *name) {
                return Err(Problem::bad_request(format!(
                    "no event type {name:?} on the topic {topic:?}"
                )));
            }
            if !types.contains_key(*name) {
                return Err(forbidden(format!("your roles may not read {name} events")));
            }
        }
    }
    if types.is_empty() {
        return Err(forbidden(format!(
            "your roles may read no event type of the topic {topic:?}"
        )));
    }
    let resume = headers
        .get("last-event-id")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| Problem::bad_request("Last-Event-ID is not text"))?
        .or_else(|| query.cursor.clone());
    let start = match (resume, &query.from) {
        (Some(_), Some(_)) if query.cursor.is_some() => {
            return Err(Problem::bad_request(
                "give cursor or from, not both: a cursor says where to resume already",
            ));
        }
        (Some(text), _) => {
            let cursor = key.open(&text, topic).map_err(|err| match err {
                CursorError::Forged => Problem::bad_request(err.to_string()),
                CursorError::OtherTopic(_) => Problem::bad_request(err.to_string()),
            })?;
            Start::Offsets(cursor.positions)
        }
        (None, Some(from)) => {
            let at = events::parse_timestamp(from).ok_or_else(|| {
                Problem::bad_request(format!(
                    "from must be an RFC 3339 time, such as 2026-12-01T00:00:00Z; got {from:?}"
                ))
            })?;
            Start::Time(at.as_millisecond())
        }
        (None, None) => Start::End,
    };
    if query.key.as_ref().is_some_and(|k| k.len() > 1024) {
        return Err(Problem::bad_request("key is longer than 1024 bytes"));
    }
    Ok(Plan {
        topic: topic.to_string(),
        full_topic: streams.kafka.topic(topic),
        start,
        types,
        key: query.key.clone(),
        subject: principal.subject.clone(),
    })
}

fn forbidden(detail: String) -> Problem {
    Problem::forbidden(detail)
}

/// A stream opened on the log: where it starts, and its events as they are read.
struct Opened {
    start: String,
    events: mpsc::Receiver<Delivered>,
}

/// Opens the plan's partitions at their start and reads them in a thread of its own, until
/// the client goes, its buffer fills, or the process stops.
async fn open(streams: &Arc<Streams>, plan: Plan) -> Result<Opened, Problem> {
    let kafka = streams.kafka.clone();
    let (full_topic, start) = (plan.full_topic.clone(), plan.start.clone());
    let opened = tokio::task::spawn_blocking(move || {
        RangeReader::follow(&kafka, &full_topic, &start, OPEN_TIMEOUT)
    })
    .await
    .map_err(|err| Problem::internal(&err))?;
    let (reader, starts) = match opened {
        Ok(opened) => opened,
        Err(err @ RangeError::Stale { .. }) => {
            return Err(Problem::new(
                StatusCode::GONE,
                "cursor-gone",
                "The cursor's events are gone",
                format!("{err}: start again with ?from= (a time) or without a cursor"),
            ));
        }
        Err(err) => {
            tracing::warn!(%err, "opening a stream failed");
            return Err(Problem::unavailable(
                "the event log is not reachable; retry shortly",
                5,
            ));
        }
    };
    let key = streams.key.as_ref().expect("checked by the route");
    let start = key.sign(&Cursor {
        topic: plan.topic.clone(),
        positions: starts.clone(),
    });
    let (sender, events) = mpsc::channel(streams.buffer);
    let reading = streams.clone();
    // A thread of its own, not one of the runtime's blocking pool, which every other blocking
    // task of the process shares: open streams are capped by STREAM_MAX_OPEN instead.
    std::thread::Builder::new()
        .name("herald-stream".into())
        .spawn(move || pump(&reading, reader, &plan, starts, &sender))
        .map_err(|err| Problem::internal(&err))?;
    Ok(Opened { start, events })
}

/// Reads the log into `sender` until the client goes, the buffer is full or the process
/// stops. The cursor of each event counts every record read before it, those filtered out
/// included, so a client resumes after them.
fn pump(
    streams: &Streams,
    mut reader: RangeReader,
    plan: &Plan,
    mut positions: BTreeMap<i32, i64>,
    sender: &mpsc::Sender<Delivered>,
) {
    let key = streams.key.as_ref().expect("checked by the route");
    loop {
        if sender.is_closed() || streams.closing.is_cancelled() {
            return;
        }
        let batch = match reader.next_batch(500) {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            // Retention deleted what the stream stood on: it ends, and the client's resume
            // gets a 410 that says so.
            Err(err) if err.is_out_of_range() => return,
            Err(err) => {
                // The broker went away: librdkafka reconnects; the positions stand.
                tracing::debug!(%err, "a stream's read failed; reading on");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        for record in batch {
            positions.insert(record.partition, record.offset + 1);
            let Some((event_type, event)) = admit(streams, plan, &record) else {
                continue;
            };
            let delivered = Delivered {
                cursor: key.sign(&Cursor {
                    topic: plan.topic.clone(),
                    positions: positions.clone(),
                }),
                event_type,
                event,
            };
            if !hand_over(sender, delivered) {
                return;
            }
        }
    }
}

/// Puts `delivered` in the client's buffer, waiting while the buffer is full for
/// [`SLOW_CLIENT`] at most. `false`: the client is gone, or too slow; what the buffer holds
/// is delivered, then the stream ends and the client resumes from the last cursor it got.
fn hand_over(sender: &mpsc::Sender<Delivered>, delivered: Delivered) -> bool {
    let deadline = std::time::Instant::now() + SLOW_CLIENT;
    let mut delivered = delivered;
    loop {
        match sender.try_send(delivered) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => {
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                delivered = back;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The record as the caller may see it, if it passes the stream's filters and access.
fn admit(
    streams: &Streams,
    plan: &Plan,
    record: &platform::kafka::ReadRecord,
) -> Option<(String, Value)> {
    if let Some(key) = &plan.key
        && record.key.as_deref() != Some(key.as_bytes())
    {
        return None;
    }
    let mut decoded = streams.codec.decode_text(record.payload.as_deref()?).ok()?;
    let reading = *plan.types.get(&decoded.envelope.event_type)?;
    if reading == Reading::TheirOwn {
        let schema = streams.catalog.latest(&decoded.envelope.event_type)?;
        let data: Value = serde_json::from_str(&decoded.data).ok()?;
        if !access::is_theirs(schema, &decoded.envelope.actor, &data, &plan.subject) {
            return None;
        }
    }
    if let Some(revealer) = &streams.revealer {
        match revealer.reveal_text(
            &decoded.envelope.event_type,
            &decoded.envelope.actor,
            &decoded.data,
        ) {
            Ok(Some(revealed)) => decoded.data = revealed,
            Ok(None) => {}
            // The key store is unreachable: shown as the log holds it, as replay does.
            Err(err) => tracing::warn!(%err, "a stream shows an event unrevealed"),
        }
    }
    let event = crate::row::Row::new(record, &decoded).to_json();
    Some((decoded.envelope.event_type, event))
}

fn serve_sse(
    streams: &Arc<Streams>,
    opened: Opened,
    place: Place,
    principal: &Principal,
) -> Response {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let expiry = Box::pin(tokio::time::sleep(Duration::from_secs(
        principal.expires_at.saturating_sub(now),
    )));
    let closing = streams.closing.clone();
    let state = (opened.events, expiry, closing, place);
    let events = futures_util::stream::unfold(
        state,
        |(mut events, mut expiry, closing, place)| async move {
            let delivered = tokio::select! {
                delivered = events.recv() => delivered?,
                () = &mut expiry => return None,
                () = closing.cancelled() => return None,
            };
            let event = sse::Event::default()
                .id(delivered.cursor)
                .event(delivered.event_type)
                .json_data(&delivered.event)
                .unwrap_or_else(|_| sse::Event::default().comment("unencodable event"));
            Some((Ok::<_, Infallible>(event), (events, expiry, closing, place)))
        },
    );
    // The first thing sent: where the stream starts, so a client that sees no event for a
    // while still holds a cursor.
    let start = sse::Event::default()
        .id(opened.start)
        .event("open")
        .data("{}");
    let first = futures_util::stream::once(async move { Ok::<_, Infallible>(start) });
    Sse::new(futures_util::StreamExt::chain(first, events))
        .keep_alive(sse::KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Up to `limit` events: waits `wait` for the first, then takes what is there.
async fn long_poll(mut opened: Opened, wait: Duration, limit: usize, place: Place) -> Response {
    let mut events = Vec::new();
    let mut cursor = opened.start.clone();
    if let Ok(Some(first)) = tokio::time::timeout(wait, opened.events.recv()).await {
        let mut next = Some(first);
        while let Some(delivered) = next.take() {
            cursor = delivered.cursor.clone();
            let mut event = delivered.event;
            event["cursor"] = json!(delivered.cursor);
            events.push(event);
            if events.len() >= limit {
                break;
            }
            next = tokio::time::timeout(Duration::from_millis(50), opened.events.recv())
                .await
                .ok()
                .flatten();
        }
    }
    drop(place);
    (
        StatusCode::OK,
        axum::Json(json!({"events": events, "cursor": cursor})),
    )
        .into_response()
}

/// The routes' part of the API reference.
pub fn openapi() -> Api {
    let event = json!({"type": "object", "description": "As `herald replay` writes it: topic, partition, offset, key, event_id, event_type, occurred_at, received_at, actor, source, idempotency_key, data; in a long-poll also its cursor"});
    Api {
        tag: "streams",
        description: "Events of a topic over HTTP, resumable on any replica by a signed cursor.",
        operations: vec![
            Operation::get("/api/v1/streams/{topic}", "Read a topic's events")
                .bearer("admin, analyst or service: every event; user: their own events of types that have an owner")
                .describe("With `Accept: text/event-stream`, Server-Sent Events: an `open` event with the starting cursor, then each event (its SSE `event` is the event type, its `id` the cursor after it), until the token expires; reconnect with `Last-Event-ID` to resume with no gap and no repeat. Otherwise a long-poll: waits `wait` seconds for a first event and answers up to `limit` with the cursor to ask again with. Without `cursor` or `from` a stream starts at the end.")
                .path_param("topic", json!({"type": "string"}), "the topic, by the name the catalog gives it (`orders`)")
                .query("access_token", json!({"type": "string"}), "the bearer token, for clients that cannot send headers (a browser's EventSource)")
                .query("cursor", json!({"type": "string"}), "where to resume (a cursor this deployment signed)")
                .query("from", json!({"type": "string", "format": "date-time"}), "start at the first event at or after this time")
                .query("type", json!({"type": "string"}), "only these event types, separated by commas")
                .query("key", json!({"type": "string"}), "only events with this record key")
                .query("wait", json!({"type": "integer", "minimum": 0, "maximum": MAX_WAIT_SECS}), "long-poll: seconds to wait for a first event (20)")
                .query("limit", json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}), "long-poll: events at most (100)")
                .ok(200, "The events (long-poll)", json!({"type": "object", "required": ["events", "cursor"], "properties": {"events": {"type": "array", "items": event}, "cursor": {"type": "string"}}}))
                .problem(400, "A malformed or forged cursor, an unknown type, a bad time")
                .problem(403, "Your roles may not read these events")
                .problem(404, "No such topic")
                .problem(410, "The cursor's events were deleted by retention")
                .header("Last-Event-ID", json!({"type": "string"}), "where to resume: the `id` of the last event received (an EventSource sends it when it reconnects)")
                .problem(429, "Too many open streams")
                .problem(503, "Streams are not configured, or the log is unreachable"),
        ],
        schemas: vec![],
    }
}
