//! A stand-in for Firebase Cloud Messaging (HTTP v1) and Google's OAuth2 token endpoint, which
//! cannot run here. It checks what a real one would: the service-account JWT (RS256, issuer,
//! audience, scope) before granting a token, the bearer token and the message's shape on every
//! send. Tokens starting with `dead-` are answered 404 UNREGISTERED, like an uninstalled app.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

pub const PROJECT: &str = "herald-test";
pub const CLIENT_EMAIL: &str = "herald@herald-test.iam.gserviceaccount.com";
const ACCESS_TOKEN: &str = "ya29.stand-in-access-token";
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/infra/platform/tests/keys");

#[derive(Default)]
struct Seen {
    grants: usize,
    sends: Vec<Value>,
}

pub struct FcmStandIn {
    pub base: String,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Clone)]
struct Shared {
    base: String,
    seen: Arc<Mutex<Seen>>,
}

async fn token(State(shared): State<Shared>, body: Bytes) -> (StatusCode, axum::Json<Value>) {
    let fields = super::form_fields(&body);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let refuse = |why: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": why})),
        )
    };
    if field("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return refuse("grant_type");
    }
    let Some(assertion) = field("assertion") else {
        return refuse("no assertion");
    };
    let public = std::fs::read(format!("{KEYS}/rsa-public.pem")).unwrap();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[format!("{}/token", shared.base)]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    let claims = match jsonwebtoken::decode::<Value>(&assertion, &key, &validation) {
        Ok(data) => data.claims,
        Err(err) => return refuse(&err.to_string()),
    };
    if claims["scope"] != "https://www.googleapis.com/auth/firebase.messaging" {
        return refuse("scope");
    }
    shared.seen.lock().unwrap().grants += 1;
    (
        StatusCode::OK,
        axum::Json(
            json!({"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"}),
        ),
    )
}

async fn send(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if bearer != format!("Bearer {ACCESS_TOKEN}") {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}})),
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}})),
        );
    };
    let message = &request["message"];
    let shaped = message["token"].is_string()
        && message["notification"]["title"].is_string()
        && message["notification"]["body"].is_string()
        && message["data"]
            .as_object()
            .is_some_and(|data| data.values().all(Value::is_string));
    if !shaped {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}})),
        );
    }
    let dead = message["token"].as_str().unwrap().starts_with("dead-");
    let mut seen = shared.seen.lock().unwrap();
    seen.sends.push(request.clone());
    if dead {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
                    {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}
                ]}}),
            ),
        );
    }
    let n = seen.sends.len();
    (
        StatusCode::OK,
        axum::Json(json!({"name": format!("projects/{PROJECT}/messages/{n}")})),
    )
}

impl FcmStandIn {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = Shared {
            base: base.clone(),
            seen: seen.clone(),
        };
        let app = Router::new()
            .route("/token", post(token))
            .route(&format!("/v1/projects/{PROJECT}/messages:send"), post(send))
            .with_state(shared);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, seen }
    }

    /// A service-account key file pointing at this stand-in; its path.
    pub fn service_account_file(&self) -> String {
        let private = std::fs::read_to_string(format!("{KEYS}/rsa-private.pem")).unwrap();
        let path =
            super::test_dir("fcm").join(format!("sa-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let account = json!({
            "type": "service_account", "project_id": PROJECT, "client_email": CLIENT_EMAIL,
            "private_key": private, "token_uri": format!("{}/token", self.base),
        });
        std::fs::write(&path, account.to_string()).unwrap();
        path.display().to_string()
    }

    /// Every send request received, in order.
    pub fn sends(&self) -> Vec<Value> {
        self.seen.lock().unwrap().sends.clone()
    }

    pub fn grants(&self) -> usize {
        self.seen.lock().unwrap().grants
    }
}
