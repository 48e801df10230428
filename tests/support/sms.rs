//! A stand-in for an SMS gateway speaking Twilio's Messages API, which cannot run here. It
//! checks what Twilio would: HTTP basic auth with the account SID and auth token, the
//! account in the path, and a form with To, a sender and Body; it records every message.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

pub const ACCOUNT_SID: &str = "ACtest0001";
pub const AUTH_TOKEN: &str = "canary-sms-auth-token-5150";
/// base64 of `ACtest0001:canary-sms-auth-token-5150`.
const BASIC: &str = "Basic QUN0ZXN0MDAwMTpjYW5hcnktc21zLWF1dGgtdG9rZW4tNTE1MA==";

/// One message as the gateway received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Texted {
    pub to: String,
    pub from: String,
    pub body: String,
    pub idempotency_key: String,
}

pub struct SmsStandIn {
    pub base: String,
    seen: Arc<Mutex<Vec<Texted>>>,
}

async fn messages(
    State(seen): State<Arc<Mutex<Vec<Texted>>>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    if header("authorization") != BASIC || account != ACCOUNT_SID {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"code": 20003, "message": "Authenticate"})),
        );
    }
    let fields = super::form_fields(&body);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (Some(to), Some(from), Some(text)) = (
        field("To"),
        field("From").or_else(|| field("MessagingServiceSid")),
        field("Body"),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"code": 21604, "message": "A field is missing"})),
        );
    };
    if !to.starts_with('+') {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"code": 21211, "message": "Invalid 'To' Phone Number"})),
        );
    }
    let mut seen = seen.lock().unwrap();
    seen.push(Texted {
        to,
        from,
        body: text,
        idempotency_key: header("idempotency-key"),
    });
    (
        StatusCode::CREATED,
        axum::Json(json!({"sid": format!("SM{:032}", seen.len()), "status": "queued"})),
    )
}

impl SmsStandIn {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(messages),
            )
            .with_state(seen.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, seen }
    }

    pub fn texted(&self) -> Vec<Texted> {
        self.seen.lock().unwrap().clone()
    }
}
