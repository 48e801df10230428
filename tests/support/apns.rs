//! A stand-in for Apple's APNs provider API, which cannot run here. It checks what APNs does:
//! HTTP/2, the provider token (ES256, key id, team id, fresh `iat`), the topic, push type and
//! payload shape. Device tokens starting with `dead` are answered 410 Unregistered.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Version};
use axum::routing::post;
use serde_json::{Value, json};

pub const KEY_ID: &str = "KEY1234567";
pub const TEAM_ID: &str = "TEAM123456";
pub const TOPIC: &str = "com.example.herald";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/platform/tests/keys");

pub struct ApnsStandIn {
    pub base: String,
    sends: Arc<Mutex<Vec<Value>>>,
}

/// Why APNs would refuse the request, if it would.
fn refusal(
    version: Version,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<(StatusCode, &'static str)> {
    if version != Version::HTTP_2 {
        return Some((StatusCode::BAD_REQUEST, "BadRequest: HTTP/2 only"));
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let Some(token) = header("authorization")
        .strip_prefix("bearer ")
        .or_else(|| header("authorization").strip_prefix("Bearer "))
    else {
        return Some((StatusCode::FORBIDDEN, "MissingProviderToken"));
    };
    let public = std::fs::read(format!("{KEYS}/ec-public.pem")).unwrap();
    let key = jsonwebtoken::DecodingKey::from_ec_pem(&public).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_required_spec_claims::<&str>(&[]);
    validation.validate_exp = false;
    validation.validate_aud = false;
    let Ok(decoded) = jsonwebtoken::decode::<Value>(token, &key, &validation) else {
        return Some((StatusCode::FORBIDDEN, "InvalidProviderToken"));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = decoded.claims["iat"].as_u64().unwrap_or(0);
    if decoded.header.kid.as_deref() != Some(KEY_ID)
        || decoded.claims["iss"] != TEAM_ID
        || iat + 3600 < now
        || iat > now + 60
    {
        return Some((StatusCode::FORBIDDEN, "InvalidProviderToken"));
    }
    if header("apns-topic") != TOPIC {
        return Some((StatusCode::BAD_REQUEST, "DeviceTokenNotForTopic"));
    }
    if header("apns-push-type") != "alert" {
        return Some((StatusCode::BAD_REQUEST, "InvalidPushType"));
    }
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        return Some((StatusCode::BAD_REQUEST, "PayloadEmpty"));
    };
    let alert = &payload["aps"]["alert"];
    if !(alert["title"].is_string() && alert["body"].is_string()) {
        return Some((StatusCode::BAD_REQUEST, "BadRequest: no alert"));
    }
    None
}

async fn send(
    State(sends): State<Arc<Mutex<Vec<Value>>>>,
    Path(device): Path<String>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, axum::Json<Value>) {
    if let Some((status, reason)) = refusal(version, &headers, &body) {
        return (status, axum::Json(json!({"reason": reason})));
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    sends.lock().unwrap().push(json!({
        "device": device,
        "collapse_id": header("apns-collapse-id"),
        "priority": header("apns-priority"),
        "payload": serde_json::from_slice::<Value>(&body).unwrap(),
    }));
    if device.starts_with("dead") {
        return (
            StatusCode::GONE,
            axum::Json(json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000_u64})),
        );
    }
    (StatusCode::OK, axum::Json(Value::Null))
}

impl ApnsStandIn {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let sends = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/3/device/{device}", post(send))
            .with_state(sends.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, sends }
    }

    /// The environment that points `herald notifications` at this stand-in.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("APNS_KEY_FILE", format!("{KEYS}/ec-private.pem")),
            ("APNS_KEY_ID", KEY_ID.into()),
            ("APNS_TEAM_ID", TEAM_ID.into()),
            ("APNS_TOPIC", TOPIC.into()),
            ("APNS_ENDPOINT", self.base.clone()),
        ]
    }

    /// Every request APNs accepted the shape of, in order.
    pub fn sends(&self) -> Vec<Value> {
        self.sends.lock().unwrap().clone()
    }
}
