//! The accounts API under `/api/v1`, and `/.well-known/jwks.json`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use platform::auth::Principal;
use platform::edge::rate::Rate;
use platform::problem::Problem;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value as Json, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::outbox::{micros, now_us};
use crate::store::{Account, ProfileChange, Refreshed, StoreError};
use crate::tokens::{self, digest, new_secret};
use crate::{AuthState, versions};

type Answer = Result<Response, Problem>;

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

fn store_error(err: &StoreError) -> Problem {
    Problem::internal(err)
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

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn rfc3339_us(us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
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

fn profile_json(account: &Account) -> Json {
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
    let event = state
        .writer
        .record(
            "user.registered",
            &id,
            &id,
            &json!({
                "user_id": id,
                "email": account.email,
                "display_name": account.display_name,
                "phone": account.phone,
                "locale": account.locale,
                "time_zone": account.time_zone,
            }),
            at,
        )
        .map_err(|e| Problem::internal(&e))?;
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
async fn session(state: &AuthState, account: &Account) -> Answer {
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
            .map_err(|e| Problem::internal(&e))?;
        state
            .store
            .put_reset(&digest(&token), &account.id, us, expires, &event)
            .await
            .map_err(|e| store_error(&e))?;
        state.relay_wake.notify_one();
    }
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "if an account has this email, a reset link is on its way"}),
    ))
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
        send_code(&state, &account, &request.phone, "login").await?;
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
        .map_err(|e| Problem::internal(&e))?;
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
        .map_err(|e| Problem::internal(&e))?;
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

/// `DELETE /api/v1/me`: a soft delete (deleted_at), sessions revoked, user.deleted published.
pub async fn delete_me(State(state): State<Arc<AuthState>>, headers: HeaderMap) -> Answer {
    let account = me_account(&state, &headers).await?;
    let at = now();
    let event = state
        .writer
        .record(
            "user.deleted",
            &account.id,
            &account.id,
            &json!({"user_id": account.id, "reason": "requested by user"}),
            at,
        )
        .map_err(|e| Problem::internal(&e))?;
    state
        .store
        .soft_delete(&account.id, micros(at), &event)
        .await
        .map_err(|e| store_error(&e))?;
    state.relay_wake.notify_one();
    Ok(StatusCode::NO_CONTENT.into_response())
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
    let account = state
        .store
        .account(&id)
        .await
        .map_err(|e| store_error(&e))?
        .filter(|a| a.deleted_at.is_none())
        .ok_or_else(not_found)?;
    Ok(json_response(StatusCode::OK, &profile_json(&account)))
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
