//! The accounts API under `/api/v1`, and `/.well-known/jwks.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use platform::auth::Principal;
use platform::edge::rate::Rate;
use platform::openapi::{Api, Operation};
use platform::problem::Problem;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};
use uuid::Uuid;

use crate::outbox::{micros, now_us};
use crate::store::{Account, ProfileChange, Refreshed, StoreError};
use crate::tokens::{self, digest, new_secret};
use crate::{AuthState, versions};

pub(crate) type Answer = Result<Response, Problem>;

/// OTP verification: at most this many attempts per account in the window, from any IP.
pub const OTP_ATTEMPTS: usize = 5;
pub const OTP_WINDOW: Duration = Duration::from_secs(600);

/// Counts an attempt on `route` against one target account (an email or a phone), whatever
/// address or token it comes with; past `rate`, 429 with Retry-After. The target is stored
/// as a digest, so the count holds no personal data.
async fn limit_target(
    state: &AuthState,
    route: &str,
    target: &str,
    rate: Rate,
) -> Result<(), Problem> {
    let us = now_us();
    let window = i64::try_from(rate.window.as_micros()).unwrap_or(i64::MAX);
    let limit = usize::try_from(rate.count).unwrap_or(usize::MAX);
    let (allowed, times) = state
        .store
        .hit_limit(
            &digest(&format!("{route}:{target}")),
            us,
            us - window,
            limit,
        )
        .await
        .map_err(|e| store_error(&e))?;
    if allowed {
        return Ok(());
    }
    let oldest = times.first().copied().unwrap_or(us);
    let retry = ((oldest + window - us).max(0) as u64)
        .div_ceil(1_000_000)
        .max(1);
    metrics::counter!("herald_auth_limited_total", "route" => route.to_string()).increment(1);
    Err(Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "Too many requests",
        format!(
            "at most {} attempts per {} s for one account; try again in {retry} s",
            rate.count,
            rate.window.as_secs()
        ),
    )
    .with_retry_after(retry))
}

/// A store that cannot be reached is a 503 the client retries; anything else is a fault of
/// ours, logged and answered 500.
pub(crate) fn store_error(err: &StoreError) -> Problem {
    use sqlx::Error as E;
    match err {
        StoreError::Db(E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_)) => {
            tracing::warn!(%err, "auth store unreachable");
            Problem::unavailable("the account store is not reachable; retry shortly", 5)
        }
        StoreError::Privacy(platform::privacy::PrivacyError::Store(_)) => {
            tracing::warn!(%err, "personal data key store unreachable");
            Problem::unavailable(
                "the personal data key store is not reachable; retry shortly",
                5,
            )
        }
        _ => Problem::internal(err),
    }
}

/// Whether `text` can be looked up at all: PostgreSQL's text holds no NUL, so no stored
/// value has one, and asking the store would fail rather than find nothing.
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// The body as `T`; the message names the problem but never echoes a value (it may be a
/// password).
fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, Problem> {
    serde_json::from_slice(bytes).map_err(|err| {
        let text = err.to_string();
        let at = format!("line {} column {}", err.line(), err.column());
        let detail = match err.classify() {
            serde_json::error::Category::Data
                if text.starts_with("missing field") || text.starts_with("unknown field") =>
            {
                text.split(" at line").next().unwrap_or(&text).to_string()
            }
            serde_json::error::Category::Data => {
                format!("a field has the wrong type ({at})")
            }
            _ => format!("the body is not valid JSON ({at})"),
        };
        Problem::bad_request(detail)
    })
}

fn invalid(field: &str, message: impl Into<String>) -> Problem {
    Problem::invalid(vec![events::json::FieldError {
        pointer: format!("/{field}"),
        message: message.into(),
    }])
}

fn json_response(status: StatusCode, value: &Json) -> Response {
    (status, axum::Json(value)).into_response()
}

fn is_admin(principal: &Principal) -> bool {
    principal.roles.iter().any(|r| r == "admin")
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn rfc3339_us(us: i64) -> String {
    Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// An email as stored: trimmed and lower-cased; refused unless it looks deliverable.
pub fn normalize_email(email: &str) -> Result<String, Problem> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !email.contains(char::is_whitespace)
                && !email.contains(is_forbidden_char)
                && domain.matches('@').count() == 0
        });
    if valid {
        Ok(email)
    } else {
        Err(invalid("email", "not an email address"))
    }
}

fn check_phone(phone: &str) -> Result<(), Problem> {
    let digits = phone.strip_prefix('+').unwrap_or_default();
    if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(invalid("phone", "an E.164 number: + and 8 to 15 digits"))
    }
}

fn check_time_zone(zone: &str) -> Result<(), Problem> {
    if jiff::tz::TimeZone::get(zone).is_ok() {
        Ok(())
    } else {
        Err(invalid("time_zone", "not an IANA time zone name"))
    }
}

/// Characters no free-text account field may hold: control characters (CR and LF split
/// headers and log lines, NUL ends C strings) and the bidirectional overrides and isolates,
/// which make a name display as something else than it is.
fn is_forbidden_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), Problem> {
    let len = value.trim().chars().count();
    if len == 0 || len > max {
        return Err(invalid(field, format!("between 1 and {max} characters")));
    }
    if value.chars().any(is_forbidden_char) {
        return Err(invalid(
            field,
            "control characters and bidirectional overrides are not allowed",
        ));
    }
    Ok(())
}

pub(crate) fn profile_json(account: &Account) -> Json {
    json!({
        "id": account.id,
        "email": account.email,
        "display_name": account.display_name,
        "phone": account.phone,
        "phone_verified": account.phone_verified_at.is_some(),
        "locale": account.locale,
        "time_zone": account.time_zone,
        "role": account.role,
        "created_at": rfc3339_us(account.created_at),
        "updated_at": rfc3339_us(account.updated_at),
    })
}

#[derive(Deserialize)]
pub struct Register {
    email: String,
    password: String,
    display_name: Option<String>,
    phone: Option<String>,
    locale: Option<String>,
    time_zone: Option<String>,
}

/// `POST /api/v1/auth/register`. A `role` in the body is ignored: accounts start as users.
pub async fn register(State(state): State<Arc<AuthState>>, bytes: Bytes) -> Answer {
    let request: Register = body(&bytes)?;
    let email = normalize_email(&request.email)?;
    crate::password::check_policy(&request.password, &email)
        .map_err(|message| invalid("password", message))?;
    let display_name = request
        .display_name
        .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_string());
    check_text("display_name", &display_name, 100)?;
    if let Some(phone) = &request.phone {
        check_phone(phone)?;
    }
    let locale = request.locale.unwrap_or_else(|| "en".into());
    check_text("locale", &locale, 16)?;
    let time_zone = request.time_zone.unwrap_or_else(|| "UTC".into());
    check_time_zone(&time_zone)?;
    limit_target(
        &state,
        "register",
        &email,
        state.settings.per_account.register,
    )
    .await?;
    if state
        .store
        .account_by_email(&email)
        .await
        .map_err(|e| store_error(&e))?
        .is_some()
    {
        return Err(conflict());
    }
    let password_hash = state.hasher.hash(&request.password).await;
    let at = now();
    let us = micros(at);
    let id = Uuid::now_v7().to_string();
    let account = Account {
        id: id.clone(),
        email,
        password_hash,
        role: "user".into(),
        display_name: display_name.trim().to_string(),
        phone: request.phone,
        locale,
        time_zone,
        created_at: us,
        updated_at: us,
        deleted_at: None,
        phone_verified_at: None,
    };
    let event = registered_event(&state, &account).await?;
    match state.store.register(&account, &event).await {
        Ok(()) => {}
        Err(StoreError::EmailTaken) => return Err(conflict()),
        Err(err) => return Err(store_error(&err)),
    }
    state.relay_wake.notify_one();
    let mut response = json_response(StatusCode::CREATED, &profile_json(&account));
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/users/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The `user.registered` event of a new account, ready for the outbox.
pub(crate) async fn registered_event(
    state: &AuthState,
    account: &Account,
) -> Result<crate::store::OutboxRecord, Problem> {
    let at = Timestamp::from_microsecond(account.created_at).unwrap_or_else(|_| now());
    state
        .writer
        .record(
            "user.registered",
            &account.id,
            &account.id,
            &json!({
                "user_id": account.id,
                "email": account.email,
                "display_name": account.display_name,
                "phone": account.phone,
                "locale": account.locale,
                "time_zone": account.time_zone,
            }),
            at,
        )
        .await
        .map_err(|e| write_error(&e))
}

/// `text` as a free-text field may hold it: forbidden characters dropped, trimmed, at most
/// 100 characters (for names that come from elsewhere, such as a sign-in provider).
pub(crate) fn clean_text(text: &str) -> String {
    text.chars()
        .filter(|c| !is_forbidden_char(*c))
        .collect::<String>()
        .trim()
        .chars()
        .take(100)
        .collect::<String>()
        .trim()
        .to_string()
}

fn conflict() -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "email-taken",
        "Email taken",
        "an account with this email exists; sign in, or reset its password",
    )
}

/// An access token for `account`, signed by the key active at `us`.
async fn access_token(state: &AuthState, account: &Account, us: i64) -> Result<String, Problem> {
    let keys = state.keys().await.map_err(|e| store_error(&e))?;
    let key = tokens::signer(&keys, us).ok_or_else(|| {
        Problem::unavailable("no signing key is active yet; try again shortly", 1)
    })?;
    state
        .issuer
        .access_token(key, &account.id, &account.role, (us / 1_000_000) as u64)
        .map_err(|e| Problem::internal(&e))
}

/// A new session: an access token and the first refresh token of a new family.
pub(crate) async fn session(state: &AuthState, account: &Account) -> Answer {
    let us = now_us();
    let access = access_token(state, account, us).await?;
    let refresh = new_secret();
    let family = Uuid::now_v7().to_string();
    let expires = us + state.settings.refresh_ttl.as_micros() as i64;
    state
        .store
        .insert_refresh(&digest(&refresh), &family, &account.id, us, expires)
        .await
        .map_err(|e| store_error(&e))?;
    Ok(tokens_response(state, &access, &refresh, &account.id))
}

fn tokens_response(state: &AuthState, access: &str, refresh: &str, user_id: &str) -> Response {
    let mut response = json_response(
        StatusCode::OK,
        &json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": state.issuer.ttl.as_secs(),
            "refresh_token": refresh,
            "refresh_expires_in": state.settings.refresh_ttl.as_secs(),
            "user_id": user_id,
        }),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
pub struct Login {
    email: String,
    password: String,
}

/// `POST /api/v1/auth/login`.
pub async fn login(State(state): State<Arc<AuthState>>, bytes: Bytes) -> Answer {
    let request: Login = body(&bytes)?;
    let refused = || Problem::unauthorized("wrong email or password");
    let email = normalize_email(&request.email).map_err(|_| refused())?;
    limit_target(&state, "login", &email, state.settings.per_account.login).await?;
    let account = state
        .store
        .account_by_email(&email)
        .await
        .map_err(|e| store_error(&e))?;
    // An unknown email costs a verification too, so timing does not reveal accounts.
    let hash = account.as_ref().map(|a| a.password_hash.as_str());
    if !state.hasher.verify(&request.password, hash).await {
        return Err(refused());
    }
    let account = account.ok_or_else(refused)?;
    session(&state, &account).await
}

#[derive(Deserialize)]
pub struct RefreshBody {
    refresh_token: String,
}

/// `POST /api/v1/auth/refresh`: the token is used up and replaced; a used one presented
/// again revokes its whole family (someone else holds a copy).
pub async fn refresh(State(state): State<Arc<AuthState>>, bytes: Bytes) -> Answer {
    let request: RefreshBody = body(&bytes)?;
    let us = now_us();
    let next = new_secret();
    let expires = us + state.settings.refresh_ttl.as_micros() as i64;
    let outcome = state
        .store
        .use_refresh(&digest(&request.refresh_token), &digest(&next), us, expires)
        .await
        .map_err(|e| store_error(&e))?;
    let account_id = match outcome {
        Refreshed::Rotated { account_id } => account_id,
        Refreshed::Reused => {
            tracing::warn!("a used refresh token was presented again; its family is revoked");
            return Err(Problem::unauthorized(
                "this refresh token was used before; every session of this sign-in is revoked: sign in again",
            ));
        }
        Refreshed::Invalid => {
            return Err(Problem::unauthorized(
                "unknown, expired or revoked refresh token",
            ));
        }
    };
    let account = state
        .store
        .account(&account_id)
        .await
        .map_err(|e| store_error(&e))?
        .filter(|a| a.deleted_at.is_none())
        .ok_or_else(|| Problem::unauthorized("the account no longer exists"))?;
    let access = access_token(&state, &account, us).await?;
    Ok(tokens_response(&state, &access, &next, &account.id))
}

/// `POST /api/v1/auth/logout`: revokes the refresh token's family. Idempotent.
pub async fn logout(State(state): State<Arc<AuthState>>, bytes: Bytes) -> Answer {
    let request: RefreshBody = body(&bytes)?;
    state
        .store
        .revoke_family_of(&digest(&request.refresh_token), now_us())
        .await
        .map_err(|e| store_error(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The caller's live account.
async fn me_account(state: &AuthState, headers: &HeaderMap) -> Result<Account, Problem> {
    let principal = state.auth.authenticate(headers)?;
    state
        .store
        .account(&principal.subject)
        .await
        .map_err(|e| store_error(&e))?
        .filter(|a| a.deleted_at.is_none())
        .ok_or_else(|| Problem::unauthorized("the token's account does not exist"))
}

#[derive(Deserialize)]
pub struct ChangePassword {
    current_password: String,
    new_password: String,
}

/// `POST /api/v1/auth/password`: needs the current password; signs out every session.
pub async fn change_password(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let account = me_account(&state, &headers).await?;
    let request: ChangePassword = body(&bytes)?;
    if !state
        .hasher
        .verify(&request.current_password, Some(&account.password_hash))
        .await
    {
        return Err(Problem::forbidden("the current password is wrong"));
    }
    crate::password::check_policy(&request.new_password, &account.email)
        .map_err(|message| invalid("new_password", message))?;
    let hash = state.hasher.hash(&request.new_password).await;
    state
        .store
        .set_password(&account.id, &hash, now_us())
        .await
        .map_err(|e| store_error(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct Forgot {
    email: String,
}

/// `POST /api/v1/auth/password/forgot`: mails a one-time link if the account exists; the
/// answer is the same either way.
pub async fn forgot_password(State(state): State<Arc<AuthState>>, bytes: Bytes) -> Answer {
    let request: Forgot = body(&bytes)?;
    let email = normalize_email(&request.email)?;
    limit_target(&state, "forgot", &email, state.settings.per_account.forgot).await?;
    if let Some(account) = state
        .store
        .account_by_email(&email)
        .await
        .map_err(|e| store_error(&e))?
    {
        let token = new_secret();
        let at = now();
        let us = micros(at);
        let expires = us + state.settings.reset_ttl.as_micros() as i64;
        let link = format!("{}#token={token}", state.settings.reset_url);
        let event = state
            .writer
            .record(
                "user.password_reset_requested",
                &account.id,
                &account.id,
                &json!({
                    "user_id": account.id,
                    "email": account.email,
                    "link": link,
                    "expires_at": rfc3339_us(expires),
                }),
                at,
            )
            .await;
        // An account whose erasure is under way is as good as gone: the same answer.
        let event = match event {
            Err(crate::outbox::WriteError::Privacy(_, platform::privacy::PrivacyError::Erased)) => {
                return Ok(reset_on_its_way());
            }
            other => other.map_err(|e| write_error(&e))?,
        };
        state
            .store
            .put_reset(&digest(&token), &account.id, us, expires, &event)
            .await
            .map_err(|e| store_error(&e))?;
        state.relay_wake.notify_one();
    }
    Ok(reset_on_its_way())
}

fn reset_on_its_way() -> Response {
    json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "if an account has this email, a reset link is on its way"}),
    )
}

#[derive(Deserialize)]
pub struct Reset {
    token: String,
    new_password: String,
}

/// `POST /api/v1/auth/password/reset`: the link's token works once.
pub async fn reset_password(State(state): State<Arc<AuthState>>, bytes: Bytes) -> Answer {
    let request: Reset = body(&bytes)?;
    // The rules that need no account first, so a refused password does not burn the link.
    crate::password::check_policy(&request.new_password, "")
        .map_err(|message| invalid("new_password", message))?;
    let us = now_us();
    let account_id = state
        .store
        .use_reset(&digest(&request.token), us)
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(|| Problem::unauthorized("unknown, used or expired reset link"))?;
    let hash = state.hasher.hash(&request.new_password).await;
    state
        .store
        .set_password(&account_id, &hash, us)
        .await
        .map_err(|e| store_error(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct OtpRequest {
    phone: String,
}

/// `POST /api/v1/auth/otp/request`: texts a code to the account with this phone, if any;
/// the answer is the same either way.
pub async fn otp_request(State(state): State<Arc<AuthState>>, bytes: Bytes) -> Answer {
    let request: OtpRequest = body(&bytes)?;
    check_phone(&request.phone)?;
    limit_target(
        &state,
        "otp-request",
        &request.phone,
        state.settings.per_account.otp_request,
    )
    .await?;
    if let Some(account) = state
        .store
        .account_by_phone(&request.phone)
        .await
        .map_err(|e| store_error(&e))?
    {
        match send_code(&state, &account, &request.phone, "login").await {
            // Its erasure under way: as if no account had the phone.
            Err(problem) if problem.status() == StatusCode::UNAUTHORIZED => {}
            other => other?,
        }
    }
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "if an account has this phone, a code is on its way"}),
    ))
}

/// Texts a new one-time code for `purpose` to `phone`: the code's digest is stored and the
/// `otp.requested` event (the code sealed) queued in one transaction.
async fn send_code(
    state: &AuthState,
    account: &Account,
    phone: &str,
    purpose: &str,
) -> Result<(), Problem> {
    let code = format!("{:06}", rand::random_range(0..1_000_000u32));
    let at = now();
    let us = micros(at);
    let expires = us + state.settings.otp_ttl.as_micros() as i64;
    let event = state
        .writer
        .record(
            "otp.requested",
            &account.id,
            &account.id,
            &json!({
                "user_id": account.id,
                "phone": phone,
                "code": code,
                "purpose": purpose,
                "expires_at": rfc3339_us(expires),
            }),
            at,
        )
        .await
        .map_err(|e| write_error(&e))?;
    state
        .store
        .put_code(
            &account.id,
            purpose,
            &code_digest(&account.id, &code),
            us,
            expires,
            &event,
        )
        .await
        .map_err(|e| store_error(&e))?;
    state.relay_wake.notify_one();
    Ok(())
}

/// Counts an OTP attempt on `account` (five per ten minutes, from any address): 429 past it.
async fn otp_attempt(state: &AuthState, account: &Account) -> Result<(), Problem> {
    let us = now_us();
    let window = OTP_WINDOW.as_micros() as i64;
    let (allowed, times) = state
        .store
        .record_attempt(&account.id, us, us - window, OTP_ATTEMPTS)
        .await
        .map_err(|e| store_error(&e))?;
    if allowed {
        return Ok(());
    }
    let oldest = times.first().copied().unwrap_or(us);
    let wait_us = (oldest + window - us).max(0);
    let retry = (wait_us as u64).div_ceil(1_000_000).max(1);
    Err(Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "otp-attempts",
        "Too many attempts",
        format!("{OTP_ATTEMPTS} attempts in 10 minutes; try again in {retry} s"),
    )
    .with_retry_after(retry))
}

/// The account's phone, for verification.
fn phone_of(account: &Account) -> Result<&str, Problem> {
    account.phone.as_deref().ok_or_else(|| {
        invalid(
            "phone",
            "the account has no phone: set one with PATCH /api/v1/me",
        )
    })
}

/// `POST /api/v1/me/phone/verification`: texts a code to the account's phone. The phone signs
/// in by one-time code only once that code comes back (`POST /api/v1/me/phone/verify`).
pub async fn phone_verification(State(state): State<Arc<AuthState>>, headers: HeaderMap) -> Answer {
    let account = me_account(&state, &headers).await?;
    let phone = phone_of(&account)?;
    if account.phone_verified_at.is_some() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "phone-verified",
            "Already verified",
            "this phone is verified already",
        ));
    }
    limit_target(
        &state,
        "otp-request",
        phone,
        state.settings.per_account.otp_request,
    )
    .await?;
    send_code(&state, &account, phone, "verify_phone").await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "a code is on its way to the account's phone"}),
    ))
}

#[derive(Deserialize)]
pub struct PhoneVerify {
    code: String,
}

/// `POST /api/v1/me/phone/verify`: the code texted by `/me/phone/verification` proves the phone
/// is the account's. One verified phone belongs to one account: 409 if another has it.
pub async fn phone_verify(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let account = me_account(&state, &headers).await?;
    let request: PhoneVerify = body(&bytes)?;
    let phone = phone_of(&account)?;
    let attempts = Rate {
        count: OTP_ATTEMPTS as u64,
        window: OTP_WINDOW,
    };
    limit_target(&state, "verify-phone", &account.id, attempts).await?;
    let us = now_us();
    let taken = state
        .store
        .take_code(
            &account.id,
            "verify_phone",
            &code_digest(&account.id, request.code.trim()),
            us,
        )
        .await
        .map_err(|e| store_error(&e))?;
    if !taken {
        return Err(invalid("code", "wrong or expired code"));
    }
    let conflict = |detail: &str| {
        Problem::new(
            StatusCode::CONFLICT,
            "phone-taken",
            "Phone not verified",
            detail.to_string(),
        )
    };
    match state.store.verify_phone(&account.id, phone, us).await {
        Ok(true) => {}
        Ok(false) => return Err(conflict("the phone changed since the code was sent")),
        Err(StoreError::PhoneTaken) => {
            return Err(conflict("another account has verified this phone"));
        }
        Err(err) => return Err(store_error(&err)),
    }
    let account = me_account(&state, &headers).await?;
    Ok(json_response(StatusCode::OK, &profile_json(&account)))
}

fn code_digest(account_id: &str, code: &str) -> String {
    digest(&format!("{account_id}:{code}"))
}

#[derive(Deserialize)]
pub struct OtpVerify {
    phone: String,
    code: String,
}

/// `POST /api/v1/auth/otp/verify`: five attempts per account per ten minutes, whatever the
/// IP; the sixth is refused even with the right code.
pub async fn otp_verify(State(state): State<Arc<AuthState>>, bytes: Bytes) -> Answer {
    let request: OtpVerify = body(&bytes)?;
    let refused = || Problem::unauthorized("wrong phone or code");
    if !storable(&request.phone) {
        return Err(refused());
    }
    let account = state
        .store
        .account_by_phone(&request.phone)
        .await
        .map_err(|e| store_error(&e))?
        .ok_or_else(refused)?;
    otp_attempt(&state, &account).await?;
    let us = now_us();
    if !state
        .store
        .take_code(
            &account.id,
            "login",
            &code_digest(&account.id, request.code.trim()),
            us,
        )
        .await
        .map_err(|e| store_error(&e))?
    {
        return Err(refused());
    }
    session(&state, &account).await
}

/// `GET /api/v1/me`.
pub async fn me(State(state): State<Arc<AuthState>>, headers: HeaderMap) -> Answer {
    let account = me_account(&state, &headers).await?;
    Ok(json_response(StatusCode::OK, &profile_json(&account)))
}

#[derive(Deserialize)]
pub struct ProfileBody {
    display_name: Option<String>,
    phone: Option<String>,
    locale: Option<String>,
    time_zone: Option<String>,
}

/// `PATCH /api/v1/me`: changes the given fields; publishes user.profile_updated.
pub async fn update_me(
    State(state): State<Arc<AuthState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    let account = me_account(&state, &headers).await?;
    let request: ProfileBody = body(&bytes)?;
    if let Some(name) = &request.display_name {
        check_text("display_name", name, 100)?;
    }
    if let Some(phone) = &request.phone {
        check_phone(phone)?;
    }
    if let Some(locale) = &request.locale {
        check_text("locale", locale, 16)?;
    }
    if let Some(zone) = &request.time_zone {
        check_time_zone(zone)?;
    }
    let change = ProfileChange {
        display_name: request.display_name.map(|n| n.trim().to_string()),
        phone: request.phone,
        locale: request.locale,
        time_zone: request.time_zone,
    };
    if change == ProfileChange::default() {
        return Err(Problem::bad_request(
            "nothing to change: give display_name, phone, locale or time_zone",
        ));
    }
    let at = now();
    let event = state
        .writer
        .record(
            "user.profile_updated",
            &account.id,
            &account.id,
            &json!({
                "user_id": account.id,
                "display_name": change.display_name,
                "phone": change.phone,
                "locale": change.locale,
                "time_zone": change.time_zone,
            }),
            at,
        )
        .await
        .map_err(|e| write_error(&e))?;
    let us = micros(at);
    state
        .store
        .update_profile(&account.id, &change, us, &event)
        .await
        .map_err(|e| store_error(&e))?;
    state.relay_wake.notify_one();
    let account = me_account(&state, &headers).await?;
    Ok(json_response(StatusCode::OK, &profile_json(&account)))
}

/// `DELETE /api/v1/me`: the account is deleted and its person erased (see [`crate::erase`]):
/// sessions end, the data key is destroyed, `user.deleted` and `user.erased` are published.
pub async fn delete_me(State(state): State<Arc<AuthState>>, headers: HeaderMap) -> Answer {
    let account = me_account(&state, &headers).await?;
    crate::erase::erase(&state, &account.id, "requested by user", &account.id)
        .await
        .map_err(|e| erase_error(&e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /api/v1/admin/subjects/{id}` (admin): erases a data subject, an account or not,
/// and answers what was done. Repeatable: a second erasure destroys nothing new.
pub async fn erase_subject(
    State(state): State<Arc<AuthState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let principal = admin(&state, &headers)?;
    if !platform::privacy::is_subject_id(&id) {
        return Err(Problem::invalid(vec![events::json::FieldError {
            pointer: "/id".into(),
            message: "a subject id is 1 to 200 printable characters".into(),
        }]));
    }
    let erased = crate::erase::erase(&state, &id, "erased by an admin", &principal.subject)
        .await
        .map_err(|e| erase_error(&e))?;
    Ok(json_response(StatusCode::OK, &json!(erased)))
}

fn erase_error(err: &crate::erase::EraseError) -> Problem {
    use crate::erase::EraseError;
    match err {
        EraseError::Write(err) => write_error(err),
        EraseError::Store(err) => store_error(err),
        EraseError::Keys(_) => {
            tracing::warn!(%err, "erasure stopped; it can be run again");
            Problem::unavailable(
                "the personal-data key store did not answer; the erasure can be retried",
                1,
            )
        }
    }
}

/// `GET /api/v1/users/{id}`: one's own account, or any for an admin; 403 otherwise.
pub async fn user(
    State(state): State<Arc<AuthState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Answer {
    let principal = state.auth.authenticate(&headers)?;
    if principal.subject != id && !is_admin(&principal) {
        return Err(Problem::forbidden(
            "only the account's owner or an admin may read it",
        ));
    }
    if !storable(&id) {
        return Err(not_found());
    }
    let account = state
        .store
        .account(&id)
        .await
        .map_err(|e| store_error(&e))?
        .filter(|a| a.deleted_at.is_none())
        .ok_or_else(not_found)?;
    Ok(json_response(StatusCode::OK, &profile_json(&account)))
}

/// Why an event could not be written: the personal-data key store away is worth a retry;
/// anything else is the deployment's to fix.
fn write_error(err: &crate::outbox::WriteError) -> Problem {
    use platform::privacy::PrivacyError;
    match err {
        crate::outbox::WriteError::Privacy(_, PrivacyError::Store(_)) => {
            tracing::warn!(err = %err, "the personal-data key store is unreachable");
            Problem::unavailable("the personal-data key store did not answer; retry", 1)
        }
        // The account's erasure is under way (its key is gone, its row not yet): it is as
        // good as gone.
        crate::outbox::WriteError::Privacy(_, PrivacyError::Erased) => {
            Problem::unauthorized("the token's account does not exist")
        }
        _ => Problem::internal(err),
    }
}

fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "no such account",
    )
}

fn admin(state: &AuthState, headers: &HeaderMap) -> Result<Principal, Problem> {
    let principal = state.auth.authenticate(headers)?;
    if !is_admin(&principal) {
        return Err(Problem::forbidden("this needs the admin role"));
    }
    Ok(principal)
}

#[derive(Deserialize)]
pub struct RoleBody {
    role: String,
}

pub const ROLES: [&str; 2] = ["user", "admin"];

/// `PUT /api/v1/admin/users/{id}/role` (admin): takes effect at the account's next token.
pub async fn set_role(
    State(state): State<Arc<AuthState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    admin(&state, &headers)?;
    let request: RoleBody = body(&bytes)?;
    if !ROLES.contains(&request.role.as_str()) {
        return Err(invalid("role", format!("one of {ROLES:?}")));
    }
    if !storable(&id) {
        return Err(not_found());
    }
    if !state
        .store
        .set_role(&id, &request.role, now_us())
        .await
        .map_err(|e| store_error(&e))?
    {
        return Err(not_found());
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"id": id, "role": request.role}),
    ))
}

/// `POST /api/v1/admin/signing-keys/rotate` (admin).
pub async fn rotate_key(State(state): State<Arc<AuthState>>, headers: HeaderMap) -> Answer {
    admin(&state, &headers)?;
    let rotation = state.rotate().await.map_err(|e| store_error(&e))?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({
            "kid": rotation.0,
            "signs_from": rfc3339_us(rotation.1.active_from),
            "old_keys_retire_at": rfc3339_us(rotation.1.retire_old_at),
        }),
    ))
}

/// `GET /.well-known/jwks.json`.
pub async fn jwks(State(state): State<Arc<AuthState>>) -> Answer {
    let keys = state.keys().await.map_err(|e| store_error(&e))?;
    let document = tokens::jwks(&tokens::published(&keys, now_us()));
    let mut response = json_response(StatusCode::OK, &document);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=30"),
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct VersionQuery {
    platform: Option<String>,
    version: Option<String>,
}

/// `GET /api/v1/app/version-check?platform=ios&version=2.0.1`.
pub async fn version_check(
    State(state): State<Arc<AuthState>>,
    Query(query): Query<VersionQuery>,
) -> Answer {
    let platform = query
        .platform
        .filter(|p| versions::valid_platform(p))
        .ok_or_else(|| {
            Problem::bad_request("give platform: ios, android, web, ... (lowercase letters)")
        })?;
    let version = query
        .version
        .as_deref()
        .and_then(versions::Version::parse)
        .ok_or_else(|| Problem::bad_request("give version as numbers with dots, like 2.0.1"))?;
    let thresholds = state
        .versions
        .get(&platform)
        .await
        .map_err(|e| store_error(&e))?;
    let advice = versions::advise(version, thresholds.as_ref());
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "platform": platform,
            "version": query.version,
            "soft_update": advice.soft_update,
            "hard_update": advice.hard_update,
            "latest": thresholds.as_ref().map(|t| t.latest.to_string()),
            "minimum": thresholds.as_ref().map(|t| t.minimum.to_string()),
        }),
    ))
}

#[derive(Deserialize)]
pub struct VersionBody {
    latest: String,
    minimum: String,
}

/// `PUT /api/v1/admin/app-versions/{platform}` (admin): takes effect at once, everywhere.
pub async fn set_versions(
    State(state): State<Arc<AuthState>>,
    Path(platform): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Answer {
    admin(&state, &headers)?;
    if !versions::valid_platform(&platform) {
        return Err(Problem::bad_request(
            "the platform is lowercase letters, digits or -",
        ));
    }
    let request: VersionBody = body(&bytes)?;
    let latest = versions::Version::parse(&request.latest)
        .ok_or_else(|| invalid("latest", "numbers with dots, like 2.1.0"))?;
    let minimum = versions::Version::parse(&request.minimum)
        .ok_or_else(|| invalid("minimum", "numbers with dots, like 2.0.0"))?;
    if minimum > latest {
        return Err(invalid("minimum", "must not be above latest"));
    }
    let thresholds = versions::Thresholds { latest, minimum };
    state
        .versions
        .set(&platform, &thresholds)
        .await
        .map_err(|e| store_error(&e))?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"platform": platform, "latest": latest.to_string(), "minimum": minimum.to_string()}),
    ))
}

// The OpenAPI description of the routes above. Its patterns spell character classes out:
// validators read a schema's `\s` as ASCII white space, where `str::trim` removes Unicode's.

/// What `is_forbidden_char` refuses.
const FORBIDDEN_CHARS: &str = r"\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069";
/// The white space `str::trim` removes that is not a control character.
const SPACE_CHARS: &str = r" \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Every character `str::trim` removes.
const TRIMMED_CHARS: &str = r"\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// The ASCII addresses `normalize_email` accepts whose local part fits a display name.
const EMAIL_PATTERN: &str = r"^[\x21-\x3f\x41-\x7e]{1,64}@[\x21-\x2d\x2f-\x3f\x41-\x7e][\x21-\x3f\x41-\x7e]*\.[\x21-\x3f\x41-\x7e]*[\x21-\x2d\x2f-\x3f\x41-\x7e]$";
/// Text of at most three distinct characters, which no password may be.
const FEW_CHARACTERS: &str = r"^([\s\S])\1*(?:([\s\S])(?:\1|\2)*(?:([\s\S])(?:\1|\2|\3)*)?)?$";
const PHONE_PATTERN: &str = r"^\+[0-9]{8,15}$";
const PLATFORM_PATTERN: &str = "^[a-z0-9-]{1,32}$";

/// What `check_text` accepts for `max` (1 to `max` characters once trimmed, none forbidden),
/// or null.
fn text_schema(max: usize, doc: &str) -> Json {
    let (f, s) = (FORBIDDEN_CHARS, SPACE_CHARS);
    json!({
        "type": ["string", "null"],
        "pattern": format!("^[{s}]*[^{s}{f}](?:[^{f}]{{0,{}}}[^{s}{f}])?[{s}]*$", max - 2),
        "description": doc,
    })
}

/// The time zone names `check_time_zone` accepts: those of the database it looks them up in.
fn time_zones() -> Vec<String> {
    let mut zones: Vec<String> = jiff::tz::db()
        .available()
        .map(|name| name.to_string())
        .collect();
    zones.push("UTC".into());
    zones.sort();
    zones.dedup();
    zones
}

/// The auth service's part of the OpenAPI document: every route `router` serves.
pub fn openapi() -> Api {
    Api {
        tag: "auth",
        description: "Accounts, sessions and one-time codes: registration, sign-in by password, texted code or an OpenID Connect provider, token refresh, profiles, roles, signing keys and the app-update check.",
        operations: [
            sessions(),
            passwords_and_codes(),
            own_account(),
            administration(),
            crate::sign_in::operations(),
        ]
        .concat(),
        schemas: schemas(),
    }
}

/// What the operations below share: schema references and schemas used more than once.
struct Shared {
    version: Json,
    platform: Json,
    account_id: Json,
    refresh_body: Json,
    role: Json,
    some_field: Vec<Json>,
}

fn schema(name: &str) -> Json {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn or_null(name: &str) -> Json {
    json!({"anyOf": [schema(name), {"type": "null"}]})
}

const SIGN_IN_503: &str = "No signing key is active yet: retry after Retry-After";
const GONE_401: &str = "the token's account was deleted";

fn shared() -> Shared {
    let version = json!({
        "type": "string",
        "pattern": format!(r"^[{TRIMMED_CHARS}]*[0-9]{{1,9}}(?:\.[0-9]{{1,9}}){{0,3}}[{TRIMMED_CHARS}]*$"),
        "description": "1 to 4 numbers of up to 9 digits, with dots (2, 2.0, 2.0.1); compared by number, so 2.0 equals 2.0.0",
    });
    let platform = json!({"type": "string", "pattern": PLATFORM_PATTERN});
    let account_id = json!({"type": "string", "minLength": 1});
    let refresh_body = json!({
        "type": "object", "required": ["refresh_token"],
        "properties": {"refresh_token": {"type": "string", "description": "as the sign-in or the last refresh gave it"}}
    });
    let role = json!({"type": "string", "enum": ROLES});
    // PATCH /me: at least one field that is not null.
    let some_field: Vec<Json> = ["display_name", "phone", "locale", "time_zone"]
        .into_iter()
        .map(|field| json!({"required": [field], "properties": {field: {"type": "string"}}}))
        .collect();
    Shared {
        version,
        platform,
        account_id,
        refresh_body,
        role,
        some_field,
    }
}

/// The keys that verify tokens, and signing up, in and out.
fn sessions() -> Vec<Operation> {
    let Shared { refresh_body, .. } = shared();
    vec![
        Operation::get("/.well-known/jwks.json", "The keys that verify access tokens")
            .describe("Every published signing key as a JSON Web Key Set: the key that signs now, a key a rotation will sign with, and older keys until the last token they signed has expired. Cacheable for 30 seconds.")
            .public()
            .ok(200, "The key set", json!({
                "type": "object", "required": ["keys"],
                "properties": {"keys": {"type": "array", "items": {
                    "type": "object", "required": ["kty", "n", "e", "kid", "alg", "use"],
                    "properties": {
                        "kty": {"const": "RSA"}, "n": {"type": "string"}, "e": {"type": "string"},
                        "kid": {"type": "string"}, "alg": {"const": "RS256"}, "use": {"const": "sig"}}}}}
            })),
        Operation::post("/api/v1/auth/register", "Create an account")
            .describe("Creates an account with the role `user` (a `role` in the body is ignored), publishes user.registered and answers it with Location: /api/v1/users/{id}. A missing or null display_name is the email's local part, locale `en`, time_zone `UTC`. A body that is not JSON, lacks a required field or has a field of the wrong type is 400; a field the rules refuse is 422 with its JSON pointer. The email is trimmed and lower-cased; the password must also not contain the email's local part.")
            .public()
            .json_body(json!({
                "type": "object", "required": ["email", "password"],
                "properties": {
                    "email": schema("AccountEmail"),
                    "password": schema("NewPassword"),
                    "display_name": text_schema(100, "1 to 100 characters once trimmed; no control characters or bidirectional overrides"),
                    "phone": or_null("PhoneNumber"),
                    "locale": text_schema(16, "1 to 16 characters once trimmed, such as en or pt-BR; no control characters"),
                    "time_zone": or_null("IanaTimeZone"),
                }
            }))
            .ok(201, "The new account", schema("Profile"))
            .problem(409, "A live account has this email")
            .problem(422, "A field the rules refuse (email, password, display_name, phone, locale or time_zone), by JSON pointer")
            .problem(429, "More than REGISTER_LIMIT_PER_EMAIL attempts for this email (5 per 10 minutes by default), from any address"),
        Operation::post("/api/v1/auth/login", "Sign in with email and password")
            .describe("Starts a session: an access token and the first refresh token of a new family.")
            .public()
            .json_body(json!({
                "type": "object", "required": ["email", "password"],
                "properties": {"email": {"type": "string"}, "password": {"type": "string"}}
            }))
            .ok(200, "A new session", schema("Session"))
            .problem(401, "Wrong email or password (also for an email that is not an address)")
            .problem(429, "More than LOGIN_LIMIT_PER_ACCOUNT attempts for this email (10 per 10 minutes by default), from any address")
            .problem(503, SIGN_IN_503),
        Operation::post("/api/v1/auth/refresh", "Trade a refresh token for a new session")
            .describe("The refresh token works once and is replaced by the answer's; a used one presented again revokes every session of its sign-in.")
            .public()
            .json_body(refresh_body.clone())
            .ok(200, "A new access token and the next refresh token", schema("Session"))
            .problem(401, "Unknown, expired or revoked refresh token; one used before (every session of its sign-in is now revoked); or its account was deleted")
            .problem(503, SIGN_IN_503),
        Operation::post("/api/v1/auth/logout", "Sign out")
            .describe("Revokes the refresh token's family: every token of this sign-in. Idempotent: an unknown token is answered the same.")
            .public()
            .json_body(refresh_body)
            .empty(204, "Signed out"),
    ]
}

/// Passwords, reset links and texted codes.
fn passwords_and_codes() -> Vec<Operation> {
    vec![
        Operation::post("/api/v1/auth/password", "Change one's password")
            .describe("Needs the current password; signs out every session of the account. The token is checked before the body. The new password must also not contain the email's local part.")
            .bearer("any signed-in account, for its own password")
            .problem(401, GONE_401)
            .json_body(json!({
                "type": "object", "required": ["current_password", "new_password"],
                "properties": {"current_password": {"type": "string"}, "new_password": schema("NewPassword")}
            }))
            .empty(204, "Changed; every session is signed out")
            .problem(403, "The current password is wrong")
            .problem(422, "The new password breaks the rules (pointer /new_password)"),
        Operation::post("/api/v1/auth/password/forgot", "Ask for a password-reset link")
            .describe("Mails a one-time link to the account with this email, if there is one; the answer is the same either way.")
            .public()
            .json_body(json!({
                "type": "object", "required": ["email"],
                "properties": {"email": schema("AccountEmail")}
            }))
            .ok(202, "If an account has this email, a link is on its way", schema("AccountNotice"))
            .problem(422, "The email is not an address")
            .problem(429, "More than PASSWORD_FORGOT_LIMIT_PER_ACCOUNT requests for this email (3 per 10 minutes by default)"),
        Operation::post("/api/v1/auth/password/reset", "Set a new password with a reset link")
            .describe("The link's token works once; every session of the account is signed out. The password rules are checked first, so a refused password does not use the link up.")
            .public()
            .json_body(json!({
                "type": "object", "required": ["token", "new_password"],
                "properties": {
                    "token": {"type": "string", "description": "the token after #token= in the mailed link"},
                    "new_password": schema("NewPassword")}
            }))
            .empty(204, "The password is changed")
            .problem(401, "Unknown, used or expired reset link")
            .problem(422, "The new password breaks the rules (pointer /new_password)"),
        Operation::post("/api/v1/auth/otp/request", "Ask for a sign-in code by SMS")
            .describe("Texts a one-time code to the account whose verified phone this is, if there is one; the answer is the same either way.")
            .public()
            .json_body(json!({
                "type": "object", "required": ["phone"],
                "properties": {"phone": schema("PhoneNumber")}
            }))
            .ok(202, "If an account has this phone, a code is on its way", schema("AccountNotice"))
            .problem(422, "The phone is not E.164")
            .problem(429, "More than OTP_REQUEST_LIMIT_PER_PHONE codes for this phone (3 per 10 minutes by default)"),
        Operation::post("/api/v1/auth/otp/verify", "Sign in with a texted code")
            .describe("Five attempts per account per ten minutes, from any address; the sixth is refused even with the right code. The phone is not checked for form: any string no account has verified is answered 401.")
            .public()
            .json_body(json!({
                "type": "object", "required": ["phone", "code"],
                "properties": {
                    "phone": schema("PhoneNumber"),
                    "code": {"type": "string", "description": "the 6 digits texted; surrounding white space is ignored"}}
            }))
            .ok(200, "A new session", schema("Session"))
            .problem(401, "Wrong phone or code: no live account has verified this phone, or the code is wrong, used or expired")
            .problem(429, "More than 5 attempts on this account in 10 minutes")
            .problem(503, SIGN_IN_503),
    ]
}

/// What an account does with itself.
fn own_account() -> Vec<Operation> {
    let Shared { some_field, .. } = shared();
    vec![
        Operation::get("/api/v1/me", "One's account")
            .bearer("the account itself")
            .problem(401, GONE_401)
            .ok(200, "The account", schema("Profile")),
        Operation::patch("/api/v1/me", "Change one's profile")
            .describe("Changes the fields given, at least one; an absent or null field stays as it is. Publishes user.profile_updated. A new phone is unverified until POST /api/v1/me/phone/verify. The token is checked before the body.")
            .bearer("the account itself")
            .problem(401, GONE_401)
            .json_body(json!({
                "type": "object",
                "properties": {
                    "display_name": text_schema(100, "1 to 100 characters once trimmed; no control characters or bidirectional overrides"),
                    "phone": or_null("PhoneNumber"),
                    "locale": text_schema(16, "1 to 16 characters once trimmed; no control characters"),
                    "time_zone": or_null("IanaTimeZone"),
                },
                "anyOf": some_field,
            }))
            .ok(200, "The account as changed", schema("Profile"))
            .problem(400, "Nothing to change: no display_name, phone, locale or time_zone that is not null")
            .problem(422, "A field the rules refuse, by JSON pointer"),
        Operation::delete("/api/v1/me", "Delete one's account and erase one's data")
            .describe("The account is deleted and its person erased (docs/privacy.md): their data key is destroyed, so every personal field of theirs on the log reads as erased; the account's email, name, phone, password, sessions and linked sign-ins are removed; user.deleted and user.erased are published, and every consumer deletes what it derived. The email is free again.")
            .bearer("the account itself")
            .problem(401, GONE_401)
            .empty(204, "Deleted"),
        Operation::post("/api/v1/me/phone/verification", "Text a code to one's phone")
            .describe("Sends a code to the account's phone; the phone signs in by code only once that code comes back to POST /api/v1/me/phone/verify. No body.")
            .bearer("the account itself")
            .problem(401, GONE_401)
            .ok(202, "A code is on its way", schema("AccountNotice"))
            .problem(409, "The phone is verified already")
            .problem(422, "The account has no phone (pointer /phone): set one with PATCH /api/v1/me")
            .problem(429, "More than OTP_REQUEST_LIMIT_PER_PHONE codes for this phone (3 per 10 minutes by default)"),
        Operation::post("/api/v1/me/phone/verify", "Verify one's phone with the texted code")
            .describe("One verified phone belongs to one live account. Five attempts per account per ten minutes. The token is checked before the body.")
            .bearer("the account itself")
            .problem(401, GONE_401)
            .json_body(json!({
                "type": "object", "required": ["code"],
                "properties": {"code": {"type": "string", "description": "the 6 digits texted; surrounding white space is ignored"}}
            }))
            .ok(200, "The account, its phone verified", schema("Profile"))
            .problem(409, "Another live account has verified this phone, or the phone changed since the code was sent")
            .problem(422, "The account has no phone (pointer /phone), or the code is wrong, used or expired (pointer /code)")
            .problem(429, "More than 5 attempts on this account in 10 minutes"),
    ]
}

/// Other accounts, roles, signing keys and the app-update thresholds.
fn administration() -> Vec<Operation> {
    let Shared {
        version,
        platform,
        account_id,
        role,
        ..
    } = shared();
    vec![
        Operation::get("/api/v1/users/{id}", "One account")
            .bearer("the account itself, or the admin role")
            .path_param("id", account_id.clone(), "the account's id")
            .ok(200, "The account", schema("Profile"))
            .problem(400, "The id is not UTF-8 once percent-decoded")
            .problem(403, "The caller is neither this account nor an admin")
            .problem(404, "No live account has this id"),
        Operation::put("/api/v1/admin/users/{id}/role", "Give an account a role")
            .describe("Takes effect at the account's next access token (its next sign-in or refresh).")
            .bearer("the admin role")
            .path_param("id", account_id, "the account's id")
            .json_body(json!({
                "type": "object", "required": ["role"],
                "properties": {"role": role}
            }))
            .ok(200, "The role is set", json!({
                "type": "object", "required": ["id", "role"],
                "properties": {"id": {"type": "string"}, "role": role}
            }))
            .problem(400, "The id is not UTF-8 once percent-decoded")
            .problem(403, "The caller lacks the admin role")
            .problem(404, "No live account has this id")
            .problem(422, "The role is not user or admin"),
        Operation::delete("/api/v1/admin/subjects/{id}", "Erase a person")
            .describe("As DELETE /api/v1/me for anyone, an account or not (a subject any schema's herald.personal names): their data key is destroyed, their account (if any) blanked, user.erased published. Repeatable: a second erasure destroys nothing new.")
            .bearer("the admin role")
            .path_param("id", json!({"type": "string", "minLength": 1, "maxLength": 200}), "the data subject: an account's id, or an actor")
            .ok(200, "What was done", json!({
                "type": "object", "required": ["subject", "key_destroyed", "account_erased", "log_protected"],
                "properties": {
                    "subject": {"type": "string"},
                    "key_destroyed": {"type": "boolean", "description": "a data key was destroyed now (false: none was ever made, or it was destroyed before)"},
                    "account_erased": {"type": "boolean"},
                    "log_protected": {"type": "boolean", "description": "personal fields are encrypted in this deployment; without, only the derived copies go"}
                }
            }))
            .problem(400, "The id is not UTF-8 once percent-decoded")
            .problem(403, "The caller lacks the admin role")
            .problem(422, "The id is empty, longer than 200 characters or holds control characters")
            .problem(503, "The key store or the accounts database did not answer; the erasure can be run again"),
        Operation::post("/api/v1/admin/signing-keys/rotate", "Rotate the token signing key")
            .describe("Publishes a new key in the JWKS at once; it signs from signs_from (SIGNING_KEY_LEAD_SECS later, so verifiers have fetched it), and the keys before it leave the JWKS at old_keys_retire_at, once every token they signed has expired. No body.")
            .bearer("the admin role")
            .ok(202, "The rotation has started", json!({
                "type": "object", "required": ["kid", "signs_from", "old_keys_retire_at"],
                "properties": {
                    "kid": {"type": "string"},
                    "signs_from": {"type": "string", "format": "date-time"},
                    "old_keys_retire_at": {"type": "string", "format": "date-time"}}
            }))
            .problem(403, "The caller lacks the admin role"),
        Operation::get("/api/v1/app/version-check", "Whether an app must or may update")
            .describe("Against the platform's thresholds: below `minimum` the app must update (hard_update), below `latest` it may (soft_update). A platform without thresholds needs no update.")
            .public()
            .required_query("platform", platform.clone(), "ios, android, web, ...: 1 to 32 lowercase letters, digits or -")
            .required_query("version", version.clone(), "the app's version")
            .ok(200, "The advice", json!({
                "type": "object",
                "required": ["platform", "version", "soft_update", "hard_update", "latest", "minimum"],
                "properties": {
                    "platform": {"type": "string"},
                    "version": {"type": "string", "description": "as given"},
                    "soft_update": {"type": "boolean"},
                    "hard_update": {"type": "boolean"},
                    "latest": {"type": ["string", "null"], "description": "null when the platform has no thresholds"},
                    "minimum": {"type": ["string", "null"]}}
            }))
            .problem(400, "platform or version is missing, repeated or not of the documented form"),
        Operation::put("/api/v1/admin/app-versions/{platform}", "Set a platform's update thresholds")
            .describe("Takes effect at once on every replica. minimum must not be above latest.")
            .bearer("the admin role")
            .path_param("platform", platform, "1 to 32 lowercase letters, digits or -")
            .json_body(json!({
                "type": "object", "required": ["latest", "minimum"],
                "properties": {"latest": version, "minimum": version}
            }))
            .ok(200, "The thresholds, as stored", json!({
                "type": "object", "required": ["platform", "latest", "minimum"],
                "properties": {"platform": {"type": "string"}, "latest": {"type": "string"}, "minimum": {"type": "string"}}
            }))
            .problem(400, "The platform is not 1 to 32 lowercase letters, digits or - (checked before the body)")
            .problem(403, "The caller lacks the admin role")
            .problem(422, "latest or minimum is not a version, or minimum is above latest"),
    ]
}

/// The named shapes the operations refer to.
fn schemas() -> Vec<(&'static str, Json)> {
    vec![
        (
            "Profile",
            json!({
                "type": "object",
                "required": ["id", "email", "display_name", "phone", "phone_verified", "locale", "time_zone", "role", "created_at", "updated_at"],
                "properties": {
                    "id": {"type": "string", "format": "uuid"},
                    "email": {"type": "string", "description": "trimmed and lower-cased"},
                    "display_name": {"type": "string"},
                    "phone": {"type": ["string", "null"], "description": "E.164, or null"},
                    "phone_verified": {"type": "boolean", "description": "whether a code texted to the phone came back; only then does it sign in by code"},
                    "locale": {"type": "string"},
                    "time_zone": {"type": "string", "description": "an IANA time zone name"},
                    "role": {"type": "string", "description": "user or admin"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"}}
            }),
        ),
        (
            "Session",
            json!({
                "type": "object",
                "required": ["access_token", "token_type", "expires_in", "refresh_token", "refresh_expires_in", "user_id"],
                "properties": {
                    "access_token": {"type": "string", "description": "an RS256 JWT, verifiable with /.well-known/jwks.json"},
                    "token_type": {"const": "Bearer"},
                    "expires_in": {"type": "integer", "minimum": 1, "description": "seconds"},
                    "refresh_token": {"type": "string", "description": "works once, at POST /api/v1/auth/refresh"},
                    "refresh_expires_in": {"type": "integer", "minimum": 1, "description": "seconds"},
                    "user_id": {"type": "string", "format": "uuid"}}
            }),
        ),
        (
            "AccountNotice",
            json!({
                "type": "object", "required": ["status"],
                "properties": {"status": {"type": "string"}}
            }),
        ),
        (
            "AccountEmail",
            json!({
                "type": "string", "maxLength": 254, "pattern": EMAIL_PATTERN,
                "description": "An email address: trimmed and lower-cased, it must have one @, a local part, and a domain with a dot that neither starts nor ends it, at most 254 bytes, no white space or control characters. The pattern spells out ASCII addresses whose local part has at most 64 characters; others meeting the rules are accepted too.",
            }),
        ),
        (
            "NewPassword",
            json!({
                "type": "string", "minLength": 10, "maxLength": 128,
                "not": {"pattern": FEW_CHARACTERS},
                "description": "10 to 128 characters, at least 4 of them distinct (ignoring case), not one of the most common passwords",
            }),
        ),
        (
            "PhoneNumber",
            json!({
                "type": "string", "pattern": PHONE_PATTERN,
                "description": "E.164: + and 8 to 15 digits",
            }),
        ),
        (
            "IanaTimeZone",
            json!({
                "type": "string", "enum": time_zones(),
                "description": "An IANA time zone name, matched ignoring ASCII case",
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_odd_ones_refused() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "a@b",
            "a@.com",
            "a b@c.com",
            "a@b.com.",
            "a\0@b.com",
            "a\u{202e}@b.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_text_with_control_characters_or_bidi_overrides_is_refused_with_its_pointer() {
        for bad in [
            "Eve\r\nBcc: x@evil.example",
            "Eve\n",
            "Eve\0",
            "\u{1b}[31m",
            "\u{7f}",
            "\u{85}",
            "a\u{202e}b",
            "a\u{2066}b",
        ] {
            let err = check_text("display_name", bad, 100).err().unwrap();
            assert_eq!(err.status, 422, "{bad:?}");
            assert_eq!(err.errors[0].pointer, "/display_name");
        }
        for good in ["Eve", "Ève Ünïcødé", "李小龙", "O'Brien-Smith", "مرحبا"] {
            assert!(check_text("display_name", good, 100).is_ok(), "{good}");
        }
    }

    #[test]
    fn body_errors_never_echo_a_value() {
        let err = body::<Login>(&Bytes::from_static(
            br#"{"email": "a@b.c", "password": 4242424242}"#,
        ))
        .err()
        .unwrap();
        assert!(!err.detail.contains("4242424242"), "{}", err.detail);
        assert!(err.detail.contains("wrong type"));
        let err = body::<Login>(&Bytes::from_static(br#"{"email": "a@b.c"}"#))
            .err()
            .unwrap();
        assert_eq!(err.detail, "missing field `password`");
        let err = body::<Login>(&Bytes::from_static(b"{nope")).err().unwrap();
        assert!(err.detail.starts_with("the body is not valid JSON"));
    }

    #[test]
    fn phones_are_e164() {
        assert!(check_phone("+15550100123").is_ok());
        for bad in ["15550100", "+1555", "+1555010012345678", "+1555-0100"] {
            assert!(check_phone(bad).is_err(), "{bad}");
        }
    }
}
