//! The auth service: accounts, sessions and one-time codes, producing the `users` and `otp`
//! events.
//!
//! Guarantees:
//! - An account and the event that tells of it commit together (a transactional outbox,
//!   [`outbox`]): no user without `user.registered`, no event without its user.
//! - Passwords are argon2id at OWASP's parameters ([`password`]); refresh tokens, reset links
//!   and codes are stored as hashes only; none of them is ever logged.
//! - Access tokens are RS256 JWTs with a `kid`; `/.well-known/jwks.json` publishes the keys,
//!   and a rotation publishes the next key before it signs ([`tokens`]), so verifiers that
//!   refresh the JWKS never see a token they cannot check.
//! - A refresh token works once; presenting it again revokes its whole family.
//! - OTP verification allows five attempts per account per ten minutes, from any IP.
//! - Sign-in through OpenID Connect providers ([`oidc`]) links each external identity to one
//!   account, by an email only when the provider verified it; a refused sign-in creates and
//!   links nothing.

mod api;
pub mod at_rest;
pub mod erase;
pub mod oidc;
pub mod outbox;
pub mod password;
mod sign_in;
pub mod store;
pub mod tokens;
pub mod versions;

pub use api::openapi;

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use events::Catalog;
use platform::auth::{AuthArgs, Authenticator, JwksSource};
use platform::contract::ContractArgs;
use platform::db::Database;
use platform::edge::rate::Rate;
use platform::kafka::{KafkaArgs, Publisher};
use tokio::sync::Notify;

use crate::outbox::{EventWriter, Relay, now_us};
use tokio_util::sync::CancellationToken;

use crate::store::{SqlStore, StoreError};
use crate::tokens::{Issuer, Rotation, StoredKey};

/// `herald auth` settings (also used by `herald up`).
#[derive(Debug, Clone, clap::Args)]
pub struct AccountsArgs {
    /// Lifetime of access tokens (seconds).
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    pub access_token_ttl_secs: u64,
    /// Lifetime of refresh tokens (days); each refresh replaces the token.
    #[arg(long, env = "REFRESH_TOKEN_TTL_DAYS", default_value_t = 30)]
    pub refresh_token_ttl_days: u64,
    /// How long a new signing key is published before it signs (seconds): at least twice
    /// the verifiers' JWT_JWKS_REFRESH_SECS.
    #[arg(long, env = "SIGNING_KEY_LEAD_SECS", default_value_t = 120)]
    pub signing_key_lead_secs: u64,
    /// Lifetime of an OTP (seconds).
    #[arg(long, env = "OTP_TTL_SECS", default_value_t = 300)]
    pub otp_ttl_secs: u64,
    /// Lifetime of a password-reset link (minutes).
    #[arg(long, env = "PASSWORD_RESET_TTL_MINUTES", default_value_t = 30)]
    pub password_reset_ttl_minutes: u64,
    /// The app's password-reset page; the link mailed is this with `#token=...`.
    #[arg(
        long,
        env = "PASSWORD_RESET_URL",
        default_value = "http://localhost:8080/reset-password"
    )]
    pub password_reset_url: String,
    /// Login attempts per account (email), from any address with any token: one account's
    /// password is not guessed from many addresses.
    #[arg(long, env = "LOGIN_LIMIT_PER_ACCOUNT", default_value = "10/10m")]
    pub login_limit_per_account: Rate,
    /// Sign-in codes texted per phone number: a phone is not flooded, nor SMS spent.
    #[arg(long, env = "OTP_REQUEST_LIMIT_PER_PHONE", default_value = "3/10m")]
    pub otp_request_limit_per_phone: Rate,
    /// Password-reset links mailed per account.
    #[arg(
        long,
        env = "PASSWORD_FORGOT_LIMIT_PER_ACCOUNT",
        default_value = "3/10m"
    )]
    pub password_forgot_limit_per_account: Rate,
    /// Registrations tried per email address.
    #[arg(long, env = "REGISTER_LIMIT_PER_EMAIL", default_value = "5/10m")]
    pub register_limit_per_email: Rate,
    /// OpenID Connect providers to sign in with: a TOML file of `[[providers]]`, each with
    /// name, issuer, client_id, client_secret (or client_secret_file), redirect_uri and
    /// optionally scopes (see docs/services/auth.md). Unset: password and code sign-in only.
    #[arg(long, env = "OIDC_PROVIDERS_FILE")]
    pub oidc_providers_file: Option<std::path::PathBuf>,
    /// How long a deleted account that was not erased at once is kept before its person is
    /// erased for good (days; job erase-deleted-accounts, hourly).
    #[arg(long, env = "ERASE_DELETED_AFTER_DAYS", default_value_t = 30)]
    pub erase_deleted_after_days: u64,
}

impl AccountsArgs {
    /// Whether the settings hold, connecting to nothing (a start checks them too).
    pub fn check(&self) -> anyhow::Result<()> {
        platform::net::check_http_url(&self.password_reset_url)
            .map_err(|reason| anyhow::anyhow!("PASSWORD_RESET_URL: {reason}"))?;
        anyhow::ensure!(
            self.access_token_ttl_secs >= 1 && self.refresh_token_ttl_days >= 1,
            "ACCESS_TOKEN_TTL_SECS and REFRESH_TOKEN_TTL_DAYS must be at least 1"
        );
        self.oidc_providers()?;
        Ok(())
    }

    /// The configured sign-in providers, read and checked.
    pub fn oidc_providers(&self) -> anyhow::Result<Vec<oidc::Provider>> {
        match &self.oidc_providers_file {
            Some(path) => oidc::read_providers(path),
            None => Ok(Vec::new()),
        }
    }
}

impl Default for AccountsArgs {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 900,
            refresh_token_ttl_days: 30,
            signing_key_lead_secs: 120,
            otp_ttl_secs: 300,
            password_reset_ttl_minutes: 30,
            password_reset_url: "http://localhost:8080/reset-password".into(),
            login_limit_per_account: "10/10m".parse().expect("a valid rate"),
            otp_request_limit_per_phone: "3/10m".parse().expect("a valid rate"),
            password_forgot_limit_per_account: "3/10m".parse().expect("a valid rate"),
            register_limit_per_email: "5/10m".parse().expect("a valid rate"),
            oidc_providers_file: None,
            erase_deleted_after_days: 30,
        }
    }
}

pub struct Settings {
    pub refresh_ttl: Duration,
    pub otp_ttl: Duration,
    pub reset_ttl: Duration,
    pub reset_url: String,
    pub key_lead: Duration,
    /// Attempts per target account, by route.
    pub per_account: PerAccount,
}

/// Limits per target account (see [`AccountsArgs`]).
#[derive(Debug, Clone, Copy)]
pub struct PerAccount {
    pub login: Rate,
    pub otp_request: Rate,
    pub forgot: Rate,
    pub register: Rate,
}

/// Everything a request needs.
pub struct AuthState {
    store: Arc<SqlStore>,
    hasher: password::Hasher,
    writer: EventWriter,
    relay_wake: Arc<Notify>,
    issuer: Issuer,
    auth: Arc<Authenticator>,
    settings: Settings,
    versions: versions::Versions,
    keys: RwLock<(Vec<StoredKey>, Option<Instant>)>,
    providers: oidc::Providers,
    /// Destroys data keys on erasure; `None`: personal data is not encrypted here.
    privacy: Option<Arc<platform::privacy::Privacy>>,
}

/// Verifiers in other processes refresh the JWKS; this process rereads the keys as often.
const KEYS_FRESH: Duration = Duration::from_secs(5);

/// Verification leeway of `platform::auth`: a retired key outlives its tokens by this much.
const LEEWAY: Duration = Duration::from_secs(60);

impl AuthState {
    /// The signing keys, reread from the database every few seconds (another replica may
    /// have rotated them).
    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        {
            let cached = self.keys.read().unwrap_or_else(|e| e.into_inner());
            if cached.1.is_some_and(|at| at.elapsed() < KEYS_FRESH) {
                return Ok(cached.0.clone());
            }
        }
        let keys = self.store.signing_keys().await?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) =
            (keys.clone(), Some(Instant::now()));
        Ok(keys)
    }

    /// Starts a rotation: the new key and its schedule.
    async fn rotate(&self) -> Result<(String, Rotation), StoreError> {
        let now = now_us();
        let rotation = tokens::plan_rotation(now, self.settings.key_lead, self.issuer.ttl, LEEWAY);
        let key = StoredKey::generate(now, rotation.active_from);
        self.store
            .add_signing_key(&key, Some(rotation.retire_old_at))
            .await?;
        self.keys.write().unwrap_or_else(|e| e.into_inner()).1 = None;
        tracing::info!(kid = %key.kid, "signing key rotation started");
        Ok((key.kid, rotation))
    }
}

/// The published keys, read straight from the store: how this process verifies its own
/// tokens without a round trip over HTTP.
struct StoreJwks(Arc<SqlStore>);

#[async_trait::async_trait]
impl JwksSource for StoreJwks {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let keys = self.0.signing_keys().await.map_err(|e| e.to_string())?;
        Ok(tokens::jwks(&tokens::published(&keys, now_us()))
            .to_string()
            .into_bytes())
    }
}

/// The event types the auth service publishes.
pub const PRODUCES: [&str; 5] = [
    "user.registered",
    "user.profile_updated",
    "user.deleted",
    "user.password_reset_requested",
    "otp.requested",
];

/// What the service needs from the deployment beside its own settings.
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a> {
    /// Shared counters and caches.
    pub redis_url: Option<&'a str>,
    /// Of the topics it creates when missing.
    pub topics: platform::kafka::TopicOverrides,
}

/// The auth service: its API and its outbox relay.
pub struct Service {
    pub state: Arc<AuthState>,
    pub relay: Relay,
    /// How long a deleted account waits for its erasure.
    erase_after: Duration,
}

impl Service {
    /// Connects to the database (migrating it), makes a first signing key if there is none,
    /// and prepares the relay. `auth` says how tokens are verified (issuer, audience, and
    /// any other keys, such as the development HS256 secret).
    pub async fn connect(
        db: Database,
        kafka: &KafkaArgs,
        contract: &ContractArgs,
        auth: &AuthArgs,
        args: &AccountsArgs,
        setup: Setup<'_>,
    ) -> anyhow::Result<Self> {
        args.check()?;
        let privacy = contract.privacy(Some(&db)).await?;
        let store = SqlStore::new(db).await?;
        let store = Arc::new(match &privacy {
            Some(privacy) => store.with_privacy(privacy.clone()).await?,
            None => store,
        });
        if store.signing_keys().await?.is_empty() {
            let now = now_us();
            store
                .add_signing_key(&StoredKey::generate(now, now), None)
                .await?;
        }
        let catalog: Arc<Catalog> = Arc::new(contract.catalog()?);
        let topics: Vec<String> = PRODUCES
            .iter()
            .filter_map(|t| catalog.latest(t))
            .map(|schema| kafka.topic(&schema.topic))
            .collect();
        platform::kafka::ensure_topics(kafka, &topics, setup.topics)
            .await
            .context("creating the users and otp topics")?;
        // Required to serve (see `herald auth`); the command-line tools write no secrets.
        let sealing = match &contract.sealing_key {
            Some(_) => Some(contract.sealing_key("the auth service seals codes and links")?),
            None => None,
        };
        let codec = Arc::new(contract.codec(catalog.clone(), kafka).await?);
        let publisher = Publisher::new(kafka, Duration::from_secs(10))?;
        let relay = Relay::new(store.clone(), publisher);
        let mut verify = auth.clone();
        verify.jwt_jwks_refresh_secs = KEYS_FRESH.as_secs();
        let authenticator = Authenticator::from_static_args(&verify)?
            .with_jwks_source(&verify, Arc::new(StoreJwks(store.clone())));
        let issuer = Issuer {
            issuer: auth.jwt_issuer.clone(),
            audience: auth.jwt_audience.clone(),
            ttl: Duration::from_secs(args.access_token_ttl_secs),
        };
        let state = AuthState {
            store: store.clone(),
            hasher: password::Hasher::new(),
            writer: EventWriter::new(
                platform::contract::Emitter::new(catalog, codec, kafka, outbox::SOURCE),
                sealing,
                privacy.clone(),
            ),
            relay_wake: relay.wake.clone(),
            issuer,
            auth: Arc::new(authenticator),
            settings: Settings {
                refresh_ttl: Duration::from_secs(args.refresh_token_ttl_days * 86_400),
                otp_ttl: Duration::from_secs(args.otp_ttl_secs),
                reset_ttl: Duration::from_secs(args.password_reset_ttl_minutes * 60),
                reset_url: args.password_reset_url.clone(),
                key_lead: Duration::from_secs(args.signing_key_lead_secs),
                per_account: PerAccount {
                    login: args.login_limit_per_account,
                    otp_request: args.otp_request_limit_per_phone,
                    forgot: args.password_forgot_limit_per_account,
                    register: args.register_limit_per_email,
                },
            },
            versions: versions::Versions::new(store, setup.redis_url).await?,
            keys: RwLock::new((Vec::new(), None)),
            providers: oidc::Providers::new(args.oidc_providers()?)?,
            privacy,
        };
        Ok(Self {
            state: Arc::new(state),
            relay,
            erase_after: Duration::from_secs(args.erase_deleted_after_days.saturating_mul(86_400)),
        })
    }

    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Starts a signing-key rotation from the command line.
    pub async fn rotate_key(&self) -> anyhow::Result<(String, Rotation)> {
        Ok(self.state.rotate().await?)
    }

    /// Gives an account a role from the command line (how the first admin is made).
    pub async fn set_role(&self, email: &str, role: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            api::ROLES.contains(&role),
            "the role must be one of {:?}",
            api::ROLES
        );
        let email = api::normalize_email(email).map_err(|p| anyhow::anyhow!(p.detail))?;
        let account = self
            .state
            .store
            .account_by_email(&email)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no live account has the email {email}"))?;
        self.state
            .store
            .set_role(&account.id, role, now_us())
            .await?;
        Ok(account.id)
    }

    /// Erases a data subject from the command line (`herald privacy erase`), and publishes
    /// what it enqueued before answering.
    pub async fn erase(&self, subject: &str, reason: &str) -> anyhow::Result<erase::Erased> {
        let erased = erase::erase(&self.state, subject, reason, "herald-cli").await?;
        self.publish_outbox().await?;
        Ok(erased)
    }

    /// Publishes what the outbox holds now (a command-line action's events).
    pub async fn publish_outbox(&self) -> anyhow::Result<()> {
        while self.relay.pass().await? > 0 {}
        Ok(())
    }

    /// Runs the retention job once now (`erase-deleted-accounts`): answers how many were
    /// erased.
    pub async fn erase_deleted(&self) -> anyhow::Result<u64> {
        Ok(erase::erase_deleted(&self.state, self.erase_after).await?)
    }

    /// How this service verifies tokens (its own keys, read from its store, and any
    /// configured): for the edge in front of it too.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.state.auth.clone()
    }

    pub fn store(&self) -> &Arc<SqlStore> {
        &self.state.store
    }
}

/// Accounts and sessions as a service: their routes, and the outbox relay that publishes
/// what the store committed.
impl platform::service::Service for Service {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn routes(&self) -> Router {
        self.router()
    }

    fn exporter(&self) -> Option<Arc<dyn platform::export::Exporter>> {
        Some(Arc::new(erase::AccountExport(self.state.clone())))
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> platform::service::Work {
        Box::pin(async move {
            let state = self.state.clone();
            let after = self.erase_after;
            let jobs = platform::jobs::Jobs::new().every(
                "erase-deleted-accounts",
                Duration::from_secs(3600),
                move || {
                    let state = state.clone();
                    async move { Ok(erase::erase_deleted(&state, after).await?) }
                },
            );
            tokio::join!(self.relay.run(shutdown.clone()), jobs.run(shutdown));
            Ok(())
        })
    }
}

/// The API as a value: `/api/v1` is one nested router, so a `/api/v2` beside it is one
/// more `nest` with the handlers that changed.
pub fn router(state: Arc<AuthState>) -> Router {
    Router::new()
        .route("/.well-known/jwks.json", get(api::jwks))
        .nest("/api/v1", v1())
        .with_state(state)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::from_fn(
            platform::problem::json_bodies_only,
        ))
        .layer(axum::middleware::map_response(
            platform::problem::problem_for_bare_errors,
        ))
}

fn v1() -> Router<Arc<AuthState>> {
    Router::new()
        .route("/auth/register", post(api::register))
        .route("/auth/login", post(api::login))
        .route("/auth/refresh", post(api::refresh))
        .route("/auth/logout", post(api::logout))
        .route("/auth/password", post(api::change_password))
        .route("/auth/password/forgot", post(api::forgot_password))
        .route("/auth/password/reset", post(api::reset_password))
        .route("/auth/otp/request", post(api::otp_request))
        .route("/auth/otp/verify", post(api::otp_verify))
        .route("/auth/oidc/providers", get(sign_in::providers))
        .route("/auth/oidc/{provider}/start", get(sign_in::start))
        .route("/auth/oidc/{provider}/callback", get(sign_in::callback))
        .route(
            "/me",
            get(api::me).patch(api::update_me).delete(api::delete_me),
        )
        .route("/me/phone/verification", post(api::phone_verification))
        .route("/me/phone/verify", post(api::phone_verify))
        .route("/users/{id}", get(api::user))
        .route("/admin/users/{id}/role", put(api::set_role))
        .route("/admin/subjects/{id}", delete(api::erase_subject))
        .route("/admin/signing-keys/rotate", post(api::rotate_key))
        .route("/app/version-check", get(api::version_check))
        .route("/admin/app-versions/{platform}", put(api::set_versions))
}
