//! What was sent: `GET /api/v1/notifications?event_id=` for admins (every delivery one event
//! made) and `GET /api/v1/me/notifications` for the caller's own, newest first. Both take
//! `limit` (1 to 500, default 100). No token: 401; not an admin: 403; a missing, malformed or
//! unknown parameter: 400.
//!
//! The caller's push devices: `POST /api/v1/devices` `{"token": "...", "platform":
//! "android"|"ios"|"web"}` registers one (201; again: active again, and a token moves to the
//! user who registers it last); `DELETE /api/v1/devices/{token}` removes one of the caller's
//! (204; 404 if it is not theirs).
//!
//! The caller's preferences: `GET /api/v1/me/notification-preferences` answers every switch
//! (`{"transactional": {"email": true, "push": true, "sms": true}, "promotional": {...}}`);
//! `PUT` replaces them (a channel left out takes its category's default: transactional on,
//! promotional off).
//!
//! The caller's live stream: `GET /api/v1/stream` (server-sent events) carries one
//! `notification` event per `live` message while it is open (data: `{"event_id",
//! "event_type", "title", "body"}`, id: the event id), and a comment every 15 s to keep
//! proxies from closing it. It ends when the caller's token expires. A user with a stream open gets `live` messages there; without
//! one, as push. What was missed while away is in `/api/v1/me/notifications`.
//!
//! One-click unsubscribe (no login; the link is signed, see [`crate::unsubscribe`]):
//! `POST /api/v1/unsubscribe/{token}` turns the user's promotional email off (200);
//! `GET` answers a page with the button that posts. An unknown or forged token: 404.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{self, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};

use crate::preferences::Preferences;
use axum::{Json, Router};
use platform::auth::Authenticator;
use platform::openapi::{Api, Operation};
use platform::problem::{self, Problem};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::live::LiveHub;
use crate::rules::Channel;
use crate::socket;
use crate::store::{DeliveryFilter, DeliveryRow, Device, NotifyStore};
use crate::unsubscribe::Unsubscribe;

pub const ADMIN_ROLE: &str = "admin";
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 500;
/// FCM registration tokens are about 160 characters; APNs tokens 64.
const MAX_TOKEN_LEN: usize = 4096;

pub struct NotificationsApi {
    pub store: Arc<dyn NotifyStore>,
    pub auth: Arc<Authenticator>,
    pub live: Arc<LiveHub>,
    pub unsubscribe: Option<Arc<Unsubscribe>>,
}

pub fn router(state: Arc<NotificationsApi>) -> Router {
    Router::new()
        .route("/api/v1/notifications", get(by_event))
        .route("/api/v1/me/notifications", get(mine))
        .route(
            "/api/v1/me/notification-preferences",
            get(get_preferences).put(put_preferences),
        )
        .route("/api/v1/devices", post(register_device))
        .route("/api/v1/devices/{token}", delete(remove_device))
        .route("/api/v1/stream", get(stream))
        .route(
            "/api/v1/unsubscribe/{token}",
            get(unsubscribe_page).post(unsubscribe),
        )
        .with_state(state)
        .layer(axum::middleware::map_response(
            problem::problem_for_bare_errors,
        ))
}

/// The notifications service's part of the OpenAPI document: every route `router` serves.
pub fn openapi() -> Api {
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let limit =
        json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT});
    let limit_doc = "at most this many rows, 1 to 500 (default 100); empty counts as absent";
    let deliveries = json!({
        "type": "object", "required": ["items"],
        "properties": {"items": {"type": "array", "items": schema("Delivery")}}
    });
    // What a `PUT` accepts: `Preferences` and `QuietHours` refuse unknown fields, a channel
    // map takes only email, push and sms (`live` is refused by `check`), and a time is HH:MM.
    let switches = json!({
        "type": "object", "additionalProperties": false,
        "properties": {"email": {"type": "boolean"}, "push": {"type": "boolean"}, "sms": {"type": "boolean"}},
        "description": "a channel left out takes its category's default (transactional on, promotional off); live follows push and is refused"
    });
    let time_of_day = json!({"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$",
                             "description": "HH:MM, 24-hour, in the user's time zone"});
    let preferences_in = json!({
        "type": "object", "additionalProperties": false,
        "properties": {
            "transactional": switches,
            "promotional": switches,
            "quiet_hours": {"anyOf": [
                {"type": "object", "additionalProperties": false, "required": ["start", "end"],
                 "properties": {"start": time_of_day, "end": time_of_day},
                 "description": "start and end must differ; an end before the start runs over midnight"},
                {"type": "null"}]}
        }
    });
    let new_device = json!({
        "type": "object", "additionalProperties": false, "required": ["token", "platform"],
        "properties": {
            "token": {"type": "string", "maxLength": MAX_TOKEN_LEN, "pattern": "^\\s*\\S+\\s*$",
                      "description": "the FCM, APNs or web push token: 1 to 4096 bytes once trimmed, no whitespace inside"},
            "platform": {"type": "string", "enum": crate::push::PLATFORMS}
        }
    });
    let path_token = "The token in the path is not valid UTF-8 once percent-decoded";
    let unsubscribe_token = json!({"type": "string", "minLength": 1});
    let unknown_link = "The token is not an unsubscribe link this service signed (or no unsubscribe secret is configured)";
    let html = json!({"type": "string"});
    Api {
        tag: "notifications",
        description: "What the notification service sent (email, push, SMS and live), each user's notification preferences and push devices, their live stream, and one-click unsubscribe from promotional email.",
        operations: vec![
            Operation::get("/api/v1/notifications", "Every delivery one event made")
                .describe("Each message the event led to, one per channel and recipient, newest first, with its status and attempts.")
                .bearer("admin role")
                .required_query("event_id", json!({"type": "string", "format": "uuid",
                    "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"}),
                    "the event whose deliveries to list")
                .query("limit", limit.clone(), limit_doc)
                .ok(200, "The event's deliveries, newest first (none: an empty list)", deliveries.clone())
                .problem(400, "event_id is missing, empty or not a UUID; limit is not a whole number from 1 to 500; or a query parameter is unknown or repeated")
                .problem(403, "The caller lacks the admin role (checked before the query string); /api/v1/me/notifications shows their own"),
            Operation::get("/api/v1/me/notifications", "The caller's notifications")
                .describe("Every message sent to the caller, newest first: what was missed while no stream was open is here too.")
                .bearer("any signed-in user; sees only their own")
                .query("limit", limit, limit_doc)
                .ok(200, "The caller's deliveries, newest first (none: an empty list)", deliveries)
                .problem(400, "limit is not a whole number from 1 to 500, or a query parameter is unknown or repeated (event_id is for /api/v1/notifications)"),
            Operation::get("/api/v1/me/notification-preferences", "The caller's notification preferences")
                .describe("Every switch spelled out, defaults included: transactional channels are on and promotional ones off until the user says otherwise; quiet_hours only when set.")
                .bearer("any signed-in user; sees only their own")
                .ok(200, "The preferences in force", schema("NotificationPreferences")),
            Operation::put("/api/v1/me/notification-preferences", "Replace the caller's notification preferences")
                .describe("Replaces the whole document: a channel left out takes its category's default, and quiet_hours left out (or null) removes the window.")
                .bearer("any signed-in user; changes only their own")
                .json_body(preferences_in)
                .ok(200, "The preferences now in force, every switch spelled out", schema("NotificationPreferences"))
                .problem(400, "A channel other than email, push or sms (live follows push), an unknown field, a quiet_hours time that is not HH:MM, or a quiet_hours start equal to its end"),
            Operation::post("/api/v1/devices", "Register a push device")
                .describe("Registers the token for the caller's push messages. Registering it again makes it active again; a token registered by another user moves to the caller.")
                .bearer("any signed-in user; the device becomes theirs")
                .json_body(new_device)
                .ok(201, "Registered (again): the device, active", schema("PushDevice"))
                .problem(400, "The token is empty, longer than 4096 bytes or holds whitespace, or the platform is not android, ios or web"),
            Operation::delete("/api/v1/devices/{token}", "Remove a push device")
                .bearer("any signed-in user; removes only their own")
                .path_param("token", json!({"type": "string", "minLength": 1}), "the token as registered (trimmed)")
                .empty(204, "Removed")
                .problem(400, path_token)
                .problem(404, "The caller has no device with this token"),
            Operation::get("/api/v1/stream", "The caller's live notifications (server-sent events or a WebSocket)")
                .describe("Stays open and carries one `notification` event per live notification for the caller (id: the event id; data: JSON {event_id, event_type, title, body}), and a comment every 15 s to keep proxies from closing it. It ends when the caller's token expires (reconnect with a fresh one), or once a client that stopped reading has read the 64 messages buffered for it. While a stream is open the caller's live notifications come here instead of as push.\n\nWith `Upgrade: websocket` (HTTP/1.1) the same route answers 101 and becomes a WebSocket carrying the same messages, one text message each (the JSON above). The server pings every 15 s and drops a client silent for 40 s; frames the client sends are ignored, except that a binary frame closes with 1003 and one over 4096 bytes with 1009. Other close codes: 1001 the server is shutting down, 4401 the token expired, 4408 the client stopped reading. The 8-stream cap counts both kinds.")
                .header("Upgrade", json!({"type": "string", "enum": ["websocket"]}), "`websocket` (with `Connection: Upgrade`, `Sec-WebSocket-Key` and `Sec-WebSocket-Version: 13`) to open a WebSocket instead of an event stream")
                .bearer("any signed-in user; receives only their own")
                .content(200, "The event stream, open until the token expires or the client leaves", "text/event-stream", json!({"type": "string"}))
                .empty(101, "Switching to a WebSocket (when asked with Upgrade: websocket)")
                .problem(400, "An Upgrade header with an incomplete or invalid WebSocket handshake")
                .problem(401, "The token expires within the current second: open the stream with a fresh one")
                .problem(429, "The caller already holds 8 streams open (event streams and WebSockets together): close one first (a closed one frees its place within a keep-alive interval, 15 s)"),
            Operation::get("/api/v1/unsubscribe/{token}", "The one-click unsubscribe page")
                .describe("The page a promotional email's unsubscribe link opens: a button that posts to this same address. Fetching it changes nothing, so link scanners unsubscribe nobody.")
                .public()
                .path_param("token", unsubscribe_token.clone(), "the signed token of the email's List-Unsubscribe link")
                .content(200, "The page with the button", "text/html", html.clone())
                .problem(400, path_token)
                .problem(404, unknown_link),
            Operation::post("/api/v1/unsubscribe/{token}", "Unsubscribe from promotional email (one click)")
                .describe("Turns the linked user's promotional email off; doing it again changes nothing. Mail clients post the form List-Unsubscribe=One-Click (RFC 8058): any body, of any media type, or none, is accepted and ignored, since the signed token alone says who.")
                .public()
                .path_param("token", unsubscribe_token, "the signed token of the email's List-Unsubscribe link")
                .content(200, "Unsubscribed: a confirmation page", "text/html", html)
                .problem(400, path_token)
                .problem(404, unknown_link),
        ],
        schemas: vec![
            ("Delivery", json!({
                "type": "object",
                "description": "One message of the delivery log: per event, channel and recipient",
                "required": ["event_id", "channel", "recipient", "user_id", "address", "event_type", "template",
                             "category", "status", "attempts", "provider", "detail", "created_at_us", "updated_at_us"],
                "properties": {
                    "event_id": {"type": "string", "format": "uuid", "description": "the event that caused it"},
                    "channel": {"type": "string", "enum": ["email", "push", "sms", "live"]},
                    "recipient": {"type": "string", "description": "whom it is for: a user id, or a user's device for push"},
                    "user_id": {"type": ["string", "null"]},
                    "address": {"type": "string", "description": "where it went (email address, phone number, push token); empty when none was known"},
                    "event_type": {"type": "string"},
                    "template": {"type": "string"},
                    "category": {"type": "string", "enum": ["transactional", "promotional"]},
                    "status": {"type": "string", "enum": ["sending", "retrying", "sent", "failed", "skipped", "dead", "deferred"]},
                    "attempts": {"type": "integer", "minimum": 0},
                    "provider": {"type": ["string", "null"], "description": "who took it (smtp, fcm, apns, an SMS provider)"},
                    "detail": {"type": ["string", "null"], "description": "why it failed or was skipped or deferred"},
                    "created_at_us": {"type": "integer", "description": "Unix time in microseconds"},
                    "updated_at_us": {"type": "integer", "description": "Unix time in microseconds"}
                }
            })),
            ("PushDevice", json!({
                "type": "object",
                "required": ["token", "user_id", "platform", "active"],
                "properties": {
                    "token": {"type": "string"},
                    "user_id": {"type": "string"},
                    "platform": {"type": "string", "enum": crate::push::PLATFORMS},
                    "active": {"type": "boolean"}
                }
            })),
            ("NotificationSwitches", json!({
                "type": "object",
                "required": ["email", "push", "sms"],
                "properties": {"email": {"type": "boolean"}, "push": {"type": "boolean"}, "sms": {"type": "boolean"}},
                "description": "Whether the category may use each channel (live follows push)"
            })),
            ("QuietHours", json!({
                "type": "object",
                "required": ["start", "end"],
                "properties": {"start": {"type": "string", "description": "HH:MM"}, "end": {"type": "string", "description": "HH:MM"}},
                "description": "When promotional messages wait, in the user's time zone; an end before the start runs over midnight"
            })),
            ("NotificationPreferences", json!({
                "type": "object",
                "required": ["transactional", "promotional"],
                "properties": {
                    "transactional": schema("NotificationSwitches"),
                    "promotional": schema("NotificationSwitches"),
                    "quiet_hours": schema("QuietHours")
                }
            })),
        ],
    }
}

#[derive(Debug, Serialize)]
struct Items {
    items: Vec<DeliveryRow>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    event_id: Option<String>,
    limit: Option<String>,
}

fn params(uri: &Uri) -> Result<(Params, u32), Problem> {
    let Query(params) = Query::<Params>::try_from_uri(uri)
        .map_err(|err| Problem::bad_request(format!("query string: {}", err.body_text())))?;
    let limit = problem::limit_param(params.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    Ok((params, limit))
}

async fn by_event(
    State(state): State<Arc<NotificationsApi>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Items>, Problem> {
    let principal = state.auth.authenticate(&headers)?;
    if !principal.roles.iter().any(|role| role == ADMIN_ROLE) {
        return Err(Problem::forbidden(format!(
            "the notifications of any event need the {ADMIN_ROLE} role; \
             /api/v1/me/notifications shows your own"
        )));
    }
    let (params, limit) = params(&uri)?;
    let event_id = params
        .event_id
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Problem::bad_request("event_id is required"))?;
    let event_id =
        Uuid::try_parse(&event_id).map_err(|_| Problem::bad_request("event_id must be a UUID"))?;
    list(&state, DeliveryFilter::Event(event_id), limit).await
}

async fn mine(
    State(state): State<Arc<NotificationsApi>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json<Items>, Problem> {
    let principal = state.auth.authenticate(&headers)?;
    let (params, limit) = params(&uri)?;
    if params.event_id.is_some() {
        return Err(Problem::bad_request(
            "event_id is for /api/v1/notifications (admins)",
        ));
    }
    list(&state, DeliveryFilter::User(principal.subject), limit).await
}

async fn list(
    state: &NotificationsApi,
    filter: DeliveryFilter,
    limit: u32,
) -> Result<Json<Items>, Problem> {
    let items = state.store.list(&filter, limit).await.map_err(|err| {
        tracing::warn!(%err, "notification query failed");
        Problem::unavailable("the notification store is not reachable", 5)
    })?;
    Ok(Json(Items { items }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    token: String,
    platform: String,
}

fn unavailable(err: impl std::fmt::Display) -> Problem {
    tracing::warn!(%err, "notification store failed");
    Problem::unavailable("the notification store is not reachable", 5)
}

async fn register_device(
    State(state): State<Arc<NotificationsApi>>,
    headers: HeaderMap,
    body: Result<Json<NewDevice>, JsonRejection>,
) -> Result<(StatusCode, Json<Device>), Problem> {
    let principal = state.auth.authenticate(&headers)?;
    let Json(new) = body.map_err(|err| Problem::bad_request(err.body_text()))?;
    let token = new.token.trim();
    if !token_shape(token) {
        return Err(Problem::bad_request(format!(
            "token must be 1 to {MAX_TOKEN_LEN} bytes without spaces or control characters"
        )));
    }
    if !crate::push::PLATFORMS.contains(&new.platform.as_str()) {
        return Err(Problem::bad_request(format!(
            "platform must be one of {}",
            crate::push::PLATFORMS.join(", ")
        )));
    }
    let device = Device {
        token: token.to_string(),
        user_id: principal.subject,
        platform: new.platform,
        active: true,
    };
    state
        .store
        .register_device(&device)
        .await
        .map_err(unavailable)?;
    Ok((StatusCode::CREATED, Json(device)))
}

/// Whether `token` can be a push token: what providers hand out is visible characters.
fn token_shape(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && !token.chars().any(|c| c.is_whitespace() || c.is_control())
}

async fn remove_device(
    State(state): State<Arc<NotificationsApi>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<StatusCode, Problem> {
    let principal = state.auth.authenticate(&headers)?;
    // No device has such a token: the store is not asked (PostgreSQL refuses a NUL).
    if !token_shape(&token) {
        return Err(Problem::not_found("you have no device with this token"));
    }
    let removed = state
        .store
        .remove_device(&principal.subject, &token)
        .await
        .map_err(unavailable)?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "No such device",
            "you have no device with this token",
        ))
    }
}

async fn get_preferences(
    State(state): State<Arc<NotificationsApi>>,
    headers: HeaderMap,
) -> Result<Json<Preferences>, Problem> {
    let principal = state.auth.authenticate(&headers)?;
    let preferences = state
        .store
        .preferences(&principal.subject)
        .await
        .map_err(unavailable)?;
    Ok(Json(preferences.effective()))
}

async fn put_preferences(
    State(state): State<Arc<NotificationsApi>>,
    headers: HeaderMap,
    body: Result<Json<Preferences>, JsonRejection>,
) -> Result<Json<Preferences>, Problem> {
    let principal = state.auth.authenticate(&headers)?;
    let Json(preferences) = body.map_err(|err| Problem::bad_request(err.body_text()))?;
    preferences.check().map_err(Problem::bad_request)?;
    state
        .store
        .set_preferences(&principal.subject, &preferences)
        .await
        .map_err(unavailable)?;
    Ok(Json(preferences.effective()))
}

/// The caller's live stream: a WebSocket when the request asks to upgrade, server-sent
/// events otherwise. Both are authenticated the same way, before anything is upgraded, and
/// count against the same per-user cap.
async fn stream(
    State(state): State<Arc<NotificationsApi>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Problem> {
    let principal = state.auth.authenticate(&headers)?;
    // The stream ends when the token expires; the client reconnects with a fresh one. A
    // token inside the clock-skew leeway is accepted elsewhere, but would open a stream that
    // closes at once.
    let left = principal.expires_at.saturating_sub(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    );
    if left == 0 {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "token-expired",
            "Token expired",
            "the token expires now: open the stream with a fresh one",
        ));
    }
    // Only a WebSocket upgrade: a client offering HTTP/2 (`Upgrade: h2c`) gets the stream.
    let wants_socket = headers.get_all(header::UPGRADE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("websocket"))
    });
    // A malformed upgrade is refused before it takes one of the user's places.
    let upgrade = match upgrade {
        Ok(upgrade) => Some(upgrade),
        Err(rejection) if wants_socket => {
            return Err(Problem::bad_request(format!(
                "not a valid WebSocket upgrade: {}",
                rejection.body_text()
            )));
        }
        Err(_) => None,
    };
    let connection = state.live.connect(&principal.subject).ok_or_else(|| {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-streams",
            "Too many open streams",
            format!(
                "you hold {} streams open already; close one first",
                crate::live::MAX_STREAMS_PER_USER
            ),
        )
    })?;
    let left = Duration::from_secs(left);
    if let Some(upgrade) = upgrade {
        let hub = state.live.clone();
        let session = hub.session();
        return Ok(upgrade
            .read_buffer_size(socket::READ_BUFFER)
            .max_message_size(socket::MAX_MESSAGE)
            .max_frame_size(socket::MAX_MESSAGE)
            .on_upgrade(move |websocket| async move {
                socket::session(websocket, connection, hub, left).await;
                drop(session);
            }));
    }
    let expiry = Box::pin(tokio::time::sleep(left));
    let open = (connection, expiry);
    let events = futures_util::stream::unfold(open, |(mut connection, mut expiry)| async move {
        let message = tokio::select! {
            message = connection.next() => message?,
            () = &mut expiry => return None,
        };
        let event = sse::Event::default()
            .event("notification")
            .id(message.event_id.clone())
            .json_data(&message)
            .unwrap_or_else(|_| sse::Event::default().comment("unencodable message"));
        Some((Ok::<_, Infallible>(event), (connection, expiry)))
    });
    Ok(Sse::new(events)
        .keep_alive(sse::KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The user a one-click link names, if this service signed it.
fn unsubscriber(state: &NotificationsApi, token: &str) -> Result<String, Problem> {
    state
        .unsubscribe
        .as_ref()
        .and_then(|signer| signer.verify(token))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "No such unsubscribe link",
                "this unsubscribe link is not one this service made; use the link of a recent email",
            )
        })
}

async fn unsubscribe_page(
    State(state): State<Arc<NotificationsApi>>,
    Path(token): Path<String>,
) -> Result<Html<&'static str>, Problem> {
    unsubscriber(&state, &token)?;
    // Posting to the page's own address: the token never appears in the page.
    Ok(Html(
        "<!doctype html><title>Unsubscribe</title>\
         <form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <p>Stop promotional email from us?</p><button type=\"submit\">Unsubscribe</button></form>",
    ))
}

async fn unsubscribe(
    State(state): State<Arc<NotificationsApi>>,
    Path(token): Path<String>,
) -> Result<Html<&'static str>, Problem> {
    let user_id = unsubscriber(&state, &token)?;
    let mut preferences = state
        .store
        .preferences(&user_id)
        .await
        .map_err(unavailable)?;
    preferences.promotional.insert(Channel::Email, false);
    state
        .store
        .set_preferences(&user_id, &preferences)
        .await
        .map_err(unavailable)?;
    metrics::counter!("herald_notifications_unsubscribed_total").increment(1);
    Ok(Html(
        "<!doctype html><title>Unsubscribed</title><p>You will get no more promotional email from us.</p>",
    ))
}
