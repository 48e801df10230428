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
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Html;
use axum::response::sse::{self, Sse};
use axum::routing::{delete, get, post};

use crate::preferences::Preferences;
use axum::{Json, Router};
use platform::auth::Authenticator;
use platform::problem::{self, Problem};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::live::LiveHub;
use crate::rules::Channel;
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
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || token.chars().any(char::is_whitespace) {
        return Err(Problem::bad_request(format!(
            "token must be 1 to {MAX_TOKEN_LEN} characters without spaces"
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

async fn remove_device(
    State(state): State<Arc<NotificationsApi>>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<StatusCode, Problem> {
    let principal = state.auth.authenticate(&headers)?;
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

async fn stream(
    State(state): State<Arc<NotificationsApi>>,
    headers: HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<sse::Event, Infallible>>>, Problem> {
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
    let expiry = Box::pin(tokio::time::sleep(Duration::from_secs(left)));
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
        Some((Ok(event), (connection, expiry)))
    });
    Ok(Sse::new(events).keep_alive(sse::KeepAlive::new().interval(Duration::from_secs(15))))
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
