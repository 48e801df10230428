//! Sign-in through OpenID Connect providers, over HTTP (the protocol is in [`crate::oidc`]):
//! - `GET /api/v1/auth/oidc/providers`: the configured providers and where each starts;
//! - `GET /api/v1/auth/oidc/{provider}/start`: 303 to the provider, with the flow's binding
//!   cookie;
//! - `GET /api/v1/auth/oidc/{provider}/callback?code&state`: where the provider sends the
//!   browser back; answers a Herald session as a password login does.
//!
//! Every refusal is a 4xx problem that creates and links nothing; a provider that cannot be
//! reached is a 503 with Retry-After.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use platform::openapi::Operation;
use platform::problem::Problem;
use serde_json::json;
use uuid::Uuid;

use crate::AuthState;
use crate::api::{self, Answer};
use crate::oidc::{self, Decision, Flow, ProviderError, Refused, StoredFlow};
use crate::outbox::now_us;
use crate::store::{Account, StoreError};
use crate::tokens::digest;

/// The cookie that ties a sign-in to the browser that started it (scoped to the provider's
/// path, so flows with two providers do not meet).
const BINDING_COOKIE: &str = "herald_oidc";
/// The longest `code` or `state` taken: providers' codes are well under 1 KiB.
const MAX_PARAM: usize = 2048;

/// `GET /api/v1/auth/oidc/providers`.
pub async fn providers(State(state): State<Arc<AuthState>>) -> Response {
    let providers: Vec<_> = state
        .providers
        .names()
        .map(|name| json!({"name": name, "start": format!("/api/v1/auth/oidc/{name}/start")}))
        .collect();
    axum::Json(json!({ "providers": providers })).into_response()
}

fn client<'a>(state: &'a AuthState, name: &str) -> Result<&'a Arc<oidc::Client>, Problem> {
    state.providers.get(name).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-provider",
            "Unknown sign-in provider",
            "no sign-in provider has this name; GET /api/v1/auth/oidc/providers lists them",
        )
    })
}

fn provider_error(err: ProviderError) -> Problem {
    match err {
        ProviderError::CodeRefused(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "code-refused",
            "Sign-in code refused",
            "the provider refused the authorization code: it was used before, has expired, or was not issued for this sign-in; start again",
        ),
        ProviderError::Unavailable(reason) | ProviderError::Misbehaving(reason) => {
            tracing::warn!(%reason, "sign-in provider unavailable");
            Problem::unavailable(
                "the sign-in provider is not reachable now; retry shortly",
                5,
            )
        }
    }
}

/// `GET /api/v1/auth/oidc/{provider}/start`.
pub async fn start(State(state): State<Arc<AuthState>>, Path(name): Path<String>) -> Answer {
    let client = client(&state, &name)?;
    let flow = Flow::new();
    let location = client
        .authorization_url(&flow)
        .await
        .map_err(provider_error)?;
    let now = now_us();
    let stored = StoredFlow {
        provider: name.clone(),
        nonce: flow.nonce.clone(),
        verifier: flow.verifier.clone(),
        binding_hash: digest(&flow.binding),
        expires_at: now + oidc::FLOW_TTL.as_micros() as i64,
    };
    state
        .store
        .put_flow(&digest(&flow.state), &stored, now)
        .await
        .map_err(|e| api::store_error(&e))?;
    let cookie = format!(
        "{BINDING_COOKIE}={}; Path=/api/v1/auth/oidc/{name}/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        flow.binding,
        oidc::FLOW_TTL.as_secs(),
        if client.provider.secure {
            "; Secure"
        } else {
            ""
        },
    );
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(|_| {
            provider_error(ProviderError::Misbehaving(
                "its authorization endpoint is not a valid header".into(),
            ))
        })?,
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        headers.insert(header::SET_COOKIE, cookie);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    metrics::counter!("herald_auth_oidc_started_total", "provider" => name).increment(1);
    Ok(response)
}

/// What the provider sent back, read by hand so that each fault gets its own answer.
#[derive(Default)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

impl Callback {
    fn parse(query: Option<&str>) -> Result<Self, Problem> {
        let mut callback = Callback::default();
        let query = query.unwrap_or_default();
        if query.len() > 4 * MAX_PARAM {
            return Err(bad("invalid-callback", "the callback's query is too long"));
        }
        // Decoded as a form; a query that is not one reads as empty (code and state missing).
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
        for (key, value) in pairs {
            let slot = match key.as_str() {
                "code" => &mut callback.code,
                "state" => &mut callback.state,
                "iss" => &mut callback.iss,
                "error" => &mut callback.error,
                _ => continue,
            };
            if slot.is_some() {
                return Err(bad("invalid-callback", format!("{key} is given twice")));
            }
            if value.is_empty() || value.len() > MAX_PARAM {
                return Err(bad(
                    "invalid-callback",
                    format!("{key} must be 1 to {MAX_PARAM} characters"),
                ));
            }
            *slot = Some(value);
        }
        Ok(callback)
    }
}

fn bad(kind: &str, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::BAD_REQUEST, kind, "Sign-in refused", detail)
}

/// The binding cookie's value, if the browser sent it.
fn binding(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == BINDING_COOKIE).then(|| value.to_string())
        })
}

/// `GET /api/v1/auth/oidc/{provider}/callback`.
pub async fn callback(
    State(state): State<Arc<AuthState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Answer {
    let client = client(&state, &name)?;
    let outcome = sign_in(&state, client, &headers, query.as_deref()).await;
    let label = match &outcome {
        Ok(_) => "signed_in".to_string(),
        Err(problem) => problem
            .kind
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string(),
    };
    metrics::counter!("herald_auth_oidc_total", "provider" => name.clone(), "outcome" => label)
        .increment(1);
    let mut response = outcome?;
    // The flow is over: the browser forgets its binding.
    let expired = format!(
        "{BINDING_COOKIE}=; Path=/api/v1/auth/oidc/{name}/; Max-Age=0; HttpOnly; SameSite=Lax"
    );
    if let Ok(cookie) = HeaderValue::from_str(&expired) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

async fn sign_in(
    state: &AuthState,
    client: &oidc::Client,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Answer {
    let provider = &client.provider;
    let callback = Callback::parse(query)?;
    if let Some(error) = callback.error {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        return Err(bad(
            "provider-refused",
            format!("the provider ended the sign-in: {error}"),
        ));
    }
    let (Some(code), Some(flow_state)) = (callback.code, callback.state) else {
        return Err(bad(
            "invalid-callback",
            "the callback needs code and state, as the provider sends them",
        ));
    };
    let unknown = || {
        bad(
            "invalid-state",
            "no sign-in is under way with this state: it was used, has expired or was never started here; start again",
        )
    };
    let flow = state
        .store
        .take_flow(&digest(&flow_state))
        .await
        .map_err(|e| api::store_error(&e))?
        .ok_or_else(unknown)?;
    if flow.provider != provider.name || flow.expires_at < now_us() {
        return Err(unknown());
    }
    if binding(headers).map(|b| digest(&b)) != Some(flow.binding_hash) {
        return Err(bad(
            "browser-mismatch",
            "this sign-in was started in another browser, or its cookie is gone; start again from this browser",
        ));
    }
    // RFC 9207: a response that names another issuer is refused before its code is used.
    if let Some(iss) = &callback.iss
        && *iss != provider.issuer
    {
        return Err(bad(
            "wrong-issuer",
            "the response comes from another issuer than this provider",
        ));
    }
    let id_token = client
        .redeem(&code, &flow.verifier)
        .await
        .map_err(provider_error)?;
    let identity = client
        .verify(&id_token, &flow.nonce)
        .await
        .map_err(provider_error)?
        .map_err(|refusal| bad("invalid-id-token", refusal.to_string()))?;
    let linked = state
        .store
        .account_by_identity(&identity.issuer, &identity.subject)
        .await
        .map_err(|e| api::store_error(&e))?;
    let email = identity
        .email
        .as_deref()
        .and_then(|e| api::normalize_email(e).ok());
    let by_email = match (&linked, &email) {
        (None, Some(email)) => state
            .store
            .account_by_email(email)
            .await
            .map_err(|e| api::store_error(&e))?,
        _ => None,
    };
    let decision = oidc::decide(
        linked.as_ref().map(|a| a.id.as_str()),
        email.as_deref(),
        identity.email_verified,
        by_email.as_ref().map(|a| a.id.as_str()),
    );
    let account = match decision {
        Decision::SignIn(_) => linked.expect("decided on a linked account"),
        Decision::Link(_) => {
            let account = by_email.expect("decided on the email's account");
            let had_password = state
                .store
                .link_by_email(
                    &identity.issuer,
                    &identity.subject,
                    &account.id,
                    crate::password::NO_PASSWORD,
                    now_us(),
                )
                .await
                .map_err(|e| api::store_error(&e))?;
            tracing::info!(account = %account.id, provider = %provider.name, had_password, "external identity linked by verified email");
            account
        }
        Decision::Create { email } => create(state, &identity, email).await?,
        Decision::Refuse(Refused::UnverifiedEmailTaken) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "email-unverified",
                "Email not verified by the provider",
                format!(
                    "an account with this email exists, and {} does not say the email is verified: sign in with the account's password instead",
                    provider.name
                ),
            ));
        }
        Decision::Refuse(Refused::NoVerifiedEmail) => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "no-verified-email",
                "No verified email",
                format!(
                    "{} gave no verified email address, which a new account needs; allow the email scope, or verify the address there",
                    provider.name
                ),
            ));
        }
    };
    api::session(state, &account).await
}

/// A new account for a verified external identity, with its `user.registered` event.
async fn create(
    state: &AuthState,
    identity: &oidc::verify::Identity,
    email: String,
) -> Result<Account, Problem> {
    let display_name = identity
        .name
        .as_deref()
        .map(api::clean_text)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_string());
    let us = now_us();
    let id = Uuid::now_v7().to_string();
    let account = Account {
        id: id.clone(),
        email,
        password_hash: crate::password::NO_PASSWORD.to_string(),
        role: "user".into(),
        display_name,
        phone: None,
        locale: "en".into(),
        time_zone: "UTC".into(),
        created_at: us,
        updated_at: us,
        deleted_at: None,
        phone_verified_at: None,
    };
    let event = api::registered_event(state, &account).await?;
    match state
        .store
        .register_linked(&account, &event, &identity.issuer, &identity.subject)
        .await
    {
        Ok(()) => {}
        // Another sign-in made the account of this email meanwhile: this one tries again.
        Err(StoreError::EmailTaken) => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "email-taken",
                "Email taken",
                "an account with this email was made at the same moment; start the sign-in again",
            ));
        }
        Err(err) => return Err(api::store_error(&err)),
    }
    state.relay_wake.notify_one();
    tracing::info!(account = %id, "account created by an external sign-in");
    Ok(account)
}

/// The operations of sign-in through providers, for the OpenAPI document.
pub fn operations() -> Vec<Operation> {
    let provider = json!({"type": "string", "minLength": 1});
    let session = json!({ "$ref": "#/components/schemas/Session" });
    vec![
        Operation::get("/api/v1/auth/oidc/providers", "The OpenID Connect providers one can sign in with")
            .describe("Each configured provider's name and where a browser starts signing in with it (none configured: an empty list).")
            .public()
            .ok(200, "The providers", json!({
                "type": "object", "required": ["providers"],
                "properties": {"providers": {"type": "array", "items": {
                    "type": "object", "required": ["name", "start"],
                    "properties": {"name": {"type": "string"}, "start": {"type": "string"}}}}}
            })),
        Operation::get("/api/v1/auth/oidc/{provider}/start", "Start signing in with a provider")
            .describe("Redirects the browser (303) to the provider's authorization endpoint, for the authorization code flow with PKCE (S256), a state and a nonce. Sets the cookie herald_oidc, which ties the sign-in to this browser; the sign-in must end within 10 minutes.")
            .public()
            .path_param("provider", provider.clone(), "a name from GET /api/v1/auth/oidc/providers")
            .empty(303, "To the provider (Location), with the binding cookie")
            .problem(404, "No provider has this name")
            .problem(429, "More than 60 sign-ins started from this address in 10 minutes (the built-in limit; RATE_LIMIT_ROUTES changes it)")
            .problem(503, "The provider's discovery document cannot be read now: retry after Retry-After"),
        Operation::get("/api/v1/auth/oidc/{provider}/callback", "Finish signing in with a provider")
            .describe("Where the provider sends the browser back. Takes the sign-in of `state` (once), checks it was started by this browser and this provider, redeems `code` with the PKCE verifier, verifies the ID token (signature by the provider's published keys, issuer, audience, expiry, nonce) and answers a session as a password login does. The identity (issuer and subject) signs into the account it is linked to; the first time, it is linked to the live account of its email only if the provider says the email is verified, or else makes a new account with that email (role user). Nothing is created or linked when any check fails.")
            .public()
            .path_param("provider", provider, "the provider the sign-in started with")
            .query("code", json!({"type": "string"}), "the authorization code, as the provider sends it")
            .query("state", json!({"type": "string"}), "the state of the sign-in, as the provider sends it back")
            .query("iss", json!({"type": "string"}), "the issuer, as the provider sends it (RFC 9207); when given, it must be the provider's")
            .query("error", json!({"type": "string"}), "the provider's reason when it ended the sign-in (such as access_denied)")
            .ok(200, "A new session", session)
            .problem(400, "The provider ended the sign-in (error); code or state missing, repeated or too long; a state unknown, used, expired or of another provider; a sign-in started in another browser; an iss of another issuer; a code the provider refused; an ID token that does not verify")
            .problem(403, "The provider gave no verified email, which a new account needs")
            .problem(404, "No provider has this name")
            .problem(409, "An account has this email and the provider does not say it is verified (sign in with its password)")
            .problem(429, "More than 60 callbacks from this address in 10 minutes (the built-in limit; RATE_LIMIT_ROUTES changes it)")
            .problem(503, "The provider or the account store cannot be reached now, or no signing key is active yet: retry after Retry-After"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callback_query_is_read_strictly() {
        let ok = Callback::parse(Some("code=abc%2Fdef&state=s+1&iss=http%3A%2F%2Fx")).unwrap();
        assert_eq!(ok.code.as_deref(), Some("abc/def"));
        assert_eq!(ok.state.as_deref(), Some("s 1"));
        assert_eq!(ok.iss.as_deref(), Some("http://x"));
        assert!(Callback::parse(Some("code=a&code=b")).is_err());
        assert!(Callback::parse(Some("code=")).is_err());
        assert!(Callback::parse(Some(&format!("code={}", "a".repeat(MAX_PARAM + 1)))).is_err());
        let odd = Callback::parse(Some("state=%zz%4&code=%FF")).unwrap();
        assert_eq!(odd.state.as_deref(), Some("%zz%4"));
        assert_eq!(odd.code.as_deref(), Some("\u{fffd}"));
        assert!(Callback::parse(None).unwrap().code.is_none());
    }

    #[test]
    fn the_binding_is_read_from_among_other_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; herald_oidc=xyz; b=2"),
        );
        assert_eq!(binding(&headers).as_deref(), Some("xyz"));
        assert_eq!(binding(&HeaderMap::new()), None);
    }
}
