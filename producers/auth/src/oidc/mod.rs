//! Sign-in with OpenID Connect providers: the authorization code flow with PKCE (RFC 7636),
//! against any number of configured providers at once.
//!
//! `GET /api/v1/auth/oidc/{provider}/start` makes a flow: `state`, `nonce` and a PKCE
//! verifier, kept in the store for [`FLOW_TTL`] under the state's digest, plus a random
//! binding kept in a cookie of the browser that started it. It redirects the browser to the
//! provider. The provider sends it back to `.../callback?code&state&iss`, which:
//! 1. takes the flow (once: a replayed callback finds nothing) and checks that it is this
//!    provider's, unexpired, and started by this browser (the cookie), which stops an
//!    attacker from signing a victim into the attacker's account;
//! 2. checks `iss`, when the provider sends it, against the provider (RFC 9207: a response
//!    from another provider is refused before its code goes anywhere);
//! 3. redeems the code at the provider's token endpoint with the verifier;
//! 4. verifies the ID token ([`verify`]) against the provider's published keys;
//! 5. finds the Herald account ([`decide`]) and answers Herald's own tokens, as a password
//!    login does.
//!
//! Providers are described by their issuer: the discovery document and the keys are fetched
//! when first needed and kept (the keys fetched again when a token names an unknown one, at
//! most once per [`JWKS_REFETCH`]); the issuer in the document must be the configured one.

pub mod verify;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::tokens::new_secret;

/// How long a started sign-in may take at the provider.
pub const FLOW_TTL: Duration = Duration::from_secs(600);
/// The provider's keys are fetched again for an unknown `kid` at most this often.
pub const JWKS_REFETCH: Duration = Duration::from_secs(30);
/// Calls to a provider give up after this long.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// The discovery document is fetched again after this long (a provider may move endpoints).
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// The provider's keys are fetched again after this long.
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// After a provider failed to answer, sign-ins with it are refused (503) for this long
/// without calling it.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// One provider as configured (`OIDC_PROVIDERS_FILE`, a TOML file with `[[providers]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// In the routes: `/api/v1/auth/oidc/{name}/start`. Lowercase letters, digits, `-`.
    pub name: String,
    /// The issuer identifier; `{issuer}/.well-known/openid-configuration` is its discovery
    /// document.
    pub issuer: String,
    pub client_id: String,
    /// The client secret, or `client_secret_file` naming a file that holds it.
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// This service's callback as registered at the provider:
    /// `https://<public address>/api/v1/auth/oidc/{name}/callback`.
    pub redirect_uri: String,
    /// Scopes asked for; `openid` is added when missing.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile"].map(String::from).to_vec()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvidersFile {
    #[serde(default)]
    providers: Vec<ProviderConfig>,
}

/// A provider's settings, checked, with its secret read.
#[derive(Clone)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    pub client_id: String,
    client_secret: String,
    pub redirect_uri: String,
    pub scopes: String,
    /// Whether the callback is served over HTTPS: the binding cookie is then `Secure`.
    pub secure: bool,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Reads and checks the providers file; each error names the provider and the field.
pub fn read_providers(path: &Path) -> anyhow::Result<Vec<Provider>> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        anyhow::anyhow!("OIDC_PROVIDERS_FILE: cannot read {}: {err}", path.display())
    })?;
    let file: ProvidersFile = toml::from_str(&text)
        .map_err(|err| anyhow::anyhow!("OIDC_PROVIDERS_FILE {}: {err}", path.display()))?;
    let mut seen = std::collections::HashSet::new();
    file.providers
        .into_iter()
        .map(|config| {
            let name = config.name.clone();
            anyhow::ensure!(
                seen.insert(name.clone()),
                "OIDC provider {name:?} is configured twice"
            );
            check(config).map_err(|err| anyhow::anyhow!("OIDC provider {name:?}: {err}"))
        })
        .collect()
}

fn check(config: ProviderConfig) -> Result<Provider, String> {
    let name_ok = !config.name.is_empty()
        && config.name.len() <= 32
        && config
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err("name must be 1 to 32 lowercase letters, digits or '-'".into());
    }
    let issuer = reqwest::Url::parse(&config.issuer).map_err(|e| format!("issuer: {e}"))?;
    if issuer.scheme() != "https" && !is_loopback(&issuer) {
        return Err("issuer must be https:// (http:// only on loopback, for tests)".into());
    }
    if issuer.query().is_some() || issuer.fragment().is_some() {
        return Err("issuer has no query or fragment".into());
    }
    platform::net::check_http_url(&config.redirect_uri)
        .map_err(|e| format!("redirect_uri: {e}"))?;
    let redirect = reqwest::Url::parse(&config.redirect_uri).map_err(|e| e.to_string())?;
    let expected_path = format!("/api/v1/auth/oidc/{}/callback", config.name);
    if redirect.path() != expected_path || redirect.query().is_some() {
        return Err(format!(
            "redirect_uri must end in {expected_path}, with no query: it is this service's callback"
        ));
    }
    if config.client_id.is_empty() {
        return Err("client_id is empty".into());
    }
    let secret = match (config.client_secret, config.client_secret_file) {
        (Some(_), Some(_)) => {
            return Err("set client_secret or client_secret_file, not both".into());
        }
        (Some(secret), None) => secret,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| format!("client_secret_file: cannot read {}: {e}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => return Err("client_secret or client_secret_file is required".into()),
    };
    if secret.is_empty() {
        return Err("the client secret is empty".into());
    }
    let mut scopes = config.scopes;
    if !scopes.iter().any(|s| s == "openid") {
        scopes.insert(0, "openid".into());
    }
    Ok(Provider {
        secure: redirect.scheme() == "https",
        name: config.name,
        // Compared character for character (OpenID Connect Discovery 4.3): some issuers end
        // in a slash, and their tokens' `iss` too.
        issuer: config.issuer,
        client_id: config.client_id,
        client_secret: secret,
        redirect_uri: config.redirect_uri,
        scopes: scopes.join(" "),
    })
}

fn is_loopback(url: &reqwest::Url) -> bool {
    matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
}

/// The secrets of one sign-in, made at its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// Kept in the starting browser's cookie; its digest in the store.
    pub binding: String,
}

impl Flow {
    pub fn new() -> Self {
        Self {
            state: new_secret(),
            nonce: new_secret(),
            verifier: new_secret(),
            binding: new_secret(),
        }
    }

    /// The PKCE challenge (S256) of the verifier.
    pub fn challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.verifier.as_bytes()))
    }
}

impl Default for Flow {
    fn default() -> Self {
        Self::new()
    }
}

/// A flow as the store keeps it between start and callback.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredFlow {
    pub provider: String,
    pub nonce: String,
    pub verifier: String,
    pub binding_hash: String,
    pub expires_at: i64,
}

/// What a verified identity means for Herald's accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Linked before: sign into that account.
    SignIn(String),
    /// Not linked, but the provider vouches for the email of this live account: link, then
    /// sign in.
    Link(String),
    /// New: create an account with the verified email, linked.
    Create { email: String },
    /// Nothing is created or linked; the reason goes to the client.
    Refuse(Refused),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The email matches an account, but the provider does not say it is verified.
    UnverifiedEmailTaken,
    /// No verified email to make an account with.
    NoVerifiedEmail,
}

/// Links an external identity to one account: the link if there is one; else the account of
/// the email only if the provider verified it; else a new account with a verified email.
/// `linked` is the account the identity is linked to, `by_email` the live account holding
/// the identity's (normalized) email.
pub fn decide(
    linked: Option<&str>,
    email: Option<&str>,
    email_verified: bool,
    by_email: Option<&str>,
) -> Decision {
    if let Some(account) = linked {
        return Decision::SignIn(account.to_string());
    }
    match (email, by_email, email_verified) {
        (Some(_), Some(account), true) => Decision::Link(account.to_string()),
        (Some(_), Some(_), false) => Decision::Refuse(Refused::UnverifiedEmailTaken),
        (Some(email), None, true) => Decision::Create {
            email: email.to_string(),
        },
        _ => Decision::Refuse(Refused::NoVerifiedEmail),
    }
}

/// What a call to a provider met; each says what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Unreachable, slow, or answering 5xx: try again later (503).
    #[error("the sign-in provider is not reachable: {0}")]
    Unavailable(String),
    /// The provider refused the code (used, expired, or not issued for this flow) (400).
    #[error("the provider refused the authorization code: {0}")]
    CodeRefused(String),
    /// The provider answered something that is not OpenID Connect (502-like, told as 503).
    #[error("the sign-in provider answered unexpectedly: {0}")]
    Misbehaving(String),
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Default)]
struct Cache {
    discovery: Option<(Discovery, Instant)>,
    keys: Option<(JwkSet, Instant)>,
    /// The last call to the provider that failed: for [`RETRY_AFTER_FAILURE`], sign-ins
    /// are answered 503 at once instead of each waiting for a provider that is down.
    failed: Option<(Instant, String)>,
}

/// One provider and what was learnt of it.
pub struct Client {
    pub provider: Provider,
    http: reqwest::Client,
    cache: Mutex<Cache>,
}

impl Client {
    pub fn new(provider: Provider, http: reqwest::Client) -> Self {
        Self {
            provider,
            http,
            cache: Mutex::default(),
        }
    }

    /// What the cache holds, read under the lock, which is never held across a call to the
    /// provider.
    fn cached<T>(
        &self,
        read: impl FnOnce(&Cache) -> Option<T>,
    ) -> Result<Option<T>, ProviderError> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, reason)) = &cache.failed
            && at.elapsed() < RETRY_AFTER_FAILURE
        {
            return Err(ProviderError::Unavailable(reason.clone()));
        }
        Ok(read(&cache))
    }

    fn remember(&self, write: impl FnOnce(&mut Cache)) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        write(&mut cache);
    }

    /// Notes a failed call, so the next sign-ins fail fast for a while.
    fn failed<T>(&self, result: Result<T, ProviderError>) -> Result<T, ProviderError> {
        if let Err(ProviderError::Unavailable(reason) | ProviderError::Misbehaving(reason)) =
            &result
        {
            let reason = reason.clone();
            self.remember(|cache| cache.failed = Some((Instant::now(), reason)));
        }
        result
    }

    async fn discovery(&self) -> Result<Discovery, ProviderError> {
        let fresh = |cache: &Cache| {
            cache
                .discovery
                .as_ref()
                .filter(|(_, at)| at.elapsed() < DISCOVERY_TTL)
                .map(|(discovery, _)| discovery.clone())
        };
        if let Some(discovery) = self.cached(fresh)? {
            return Ok(discovery);
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.provider.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self.failed(self.get_json(&url).await)?;
        if discovery.issuer != self.provider.issuer {
            return self.failed(Err(ProviderError::Misbehaving(format!(
                "its discovery document names the issuer {:?}, not {:?}",
                discovery.issuer, self.provider.issuer
            ))));
        }
        self.remember(|cache| {
            cache.discovery = Some((discovery.clone(), Instant::now()));
            cache.failed = None;
        });
        Ok(discovery)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, ProviderError> {
        let response = self
            .http
            .get(url)
            .timeout(PROVIDER_TIMEOUT)
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!(
                "{url} answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(ProviderError::Misbehaving(format!(
                "{url} answered {status}"
            )));
        }
        response
            .json()
            .await
            .map_err(|e| ProviderError::Misbehaving(format!("{url}: {}", e.without_url())))
    }

    /// Where to send the browser to start `flow`.
    pub async fn authorization_url(&self, flow: &Flow) -> Result<String, ProviderError> {
        let discovery = self.discovery().await?;
        let mut url = reqwest::Url::parse(&discovery.authorization_endpoint)
            .map_err(|e| ProviderError::Misbehaving(format!("authorization_endpoint: {e}")))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.provider.client_id)
            .append_pair("redirect_uri", &self.provider.redirect_uri)
            .append_pair("scope", &self.provider.scopes)
            .append_pair("state", &flow.state)
            .append_pair("nonce", &flow.nonce)
            .append_pair("code_challenge", &flow.challenge())
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// Redeems `code` with the flow's verifier; answers the ID token.
    pub async fn redeem(&self, code: &str, verifier: &str) -> Result<String, ProviderError> {
        let discovery = self.discovery().await?;
        let redeemed = self.token_request(&discovery, code, verifier).await;
        self.failed(redeemed)
    }

    async fn token_request(
        &self,
        discovery: &Discovery,
        code: &str,
        verifier: &str,
    ) -> Result<String, ProviderError> {
        // RFC 6749 2.3.1: the id and secret are form-encoded before they are joined.
        let encode = |v: &str| form_urlencoded(v);
        let response = self
            .http
            .post(&discovery.token_endpoint)
            .timeout(PROVIDER_TIMEOUT)
            .basic_auth(
                encode(&self.provider.client_id),
                Some(encode(&self.provider.client_secret)),
            )
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.provider.redirect_uri),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(ProviderError::Unavailable(format!(
                "the token endpoint answered {status}"
            )));
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            id_token: Option<String>,
            #[serde(default)]
            error: Option<String>,
        }
        let answer: Answer = response.json().await.map_err(|e| {
            ProviderError::Misbehaving(format!("the token endpoint: {}", e.without_url()))
        })?;
        match (status.is_success(), answer.id_token, answer.error) {
            (true, Some(id_token), _) => Ok(id_token),
            (true, None, _) => Err(ProviderError::Misbehaving(
                "the token endpoint answered no id_token (is `openid` among the scopes?)".into(),
            )),
            (false, _, Some(error)) if error == "invalid_grant" => {
                Err(ProviderError::CodeRefused(error))
            }
            (false, _, error) => Err(ProviderError::Misbehaving(format!(
                "the token endpoint answered {status} {}",
                error.unwrap_or_default()
            ))),
        }
    }

    /// The provider's keys: fetched again after [`KEYS_TTL`] (a key the provider withdrew
    /// stops being trusted), or when `refresh` and the last fetch is [`JWKS_REFETCH`] old.
    pub async fn keys(&self, refresh: bool) -> Result<JwkSet, ProviderError> {
        let discovery = self.discovery().await?;
        let usable = |cache: &Cache| {
            cache
                .keys
                .as_ref()
                .filter(|(_, at)| {
                    at.elapsed() < KEYS_TTL && (!refresh || at.elapsed() < JWKS_REFETCH)
                })
                .map(|(keys, _)| keys.clone())
        };
        if let Some(keys) = self.cached(usable)? {
            return Ok(keys);
        }
        let keys: JwkSet = self.failed(self.get_json(&discovery.jwks_uri).await)?;
        self.remember(|cache| cache.keys = Some((keys.clone(), Instant::now())));
        Ok(keys)
    }

    /// Verifies `id_token` for this provider and `nonce`, fetching its keys again once if
    /// the token names a key not seen yet (the provider rotated).
    pub async fn verify(
        &self,
        id_token: &str,
        nonce: &str,
    ) -> Result<Result<verify::Identity, verify::Refusal>, ProviderError> {
        let check = |keys: &JwkSet| {
            verify::verify(
                id_token,
                keys,
                &self.provider.issuer,
                &self.provider.client_id,
                nonce,
            )
        };
        let checked = check(&self.keys(false).await?);
        if checked == Err(verify::Refusal::UnknownKey) {
            return Ok(check(&self.keys(true).await?));
        }
        Ok(checked)
    }
}

/// `application/x-www-form-urlencoded` of one value.
fn form_urlencoded(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(byte as char);
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Every configured provider, by name.
#[derive(Default)]
pub struct Providers(BTreeMap<String, Arc<Client>>);

impl Providers {
    pub fn new(providers: Vec<Provider>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self(
            providers
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(Client::new(p, http.clone()))))
                .collect(),
        ))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Client>> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, redirect: &str) -> ProviderConfig {
        ProviderConfig {
            name: name.into(),
            issuer: "https://accounts.example.com".into(),
            client_id: "herald".into(),
            client_secret: Some("s3cret".into()),
            client_secret_file: None,
            redirect_uri: redirect.into(),
            scopes: vec!["email".into()],
        }
    }

    #[test]
    fn a_provider_is_checked_field_by_field() {
        let good = check(config(
            "acme",
            "https://api.example.com/api/v1/auth/oidc/acme/callback",
        ))
        .unwrap();
        assert_eq!(good.scopes, "openid email");
        assert!(good.secure);
        assert!(
            check(config(
                "Acme!",
                "https://a.example/api/v1/auth/oidc/Acme!/callback"
            ))
            .unwrap_err()
            .contains("name")
        );
        assert!(
            check(config("acme", "https://api.example.com/elsewhere"))
                .unwrap_err()
                .contains("/api/v1/auth/oidc/acme/callback")
        );
        let mut plain = config("acme", "https://a.example/api/v1/auth/oidc/acme/callback");
        plain.issuer = "http://accounts.example.com".into();
        assert!(check(plain).unwrap_err().contains("https"));
        let mut no_secret = config("acme", "https://a.example/api/v1/auth/oidc/acme/callback");
        no_secret.client_secret = None;
        assert!(check(no_secret).unwrap_err().contains("client_secret"));
        // The secret never shows in Debug.
        assert!(!format!("{good:?}").contains("s3cret"));
    }

    #[test]
    fn the_challenge_is_the_s256_of_the_verifier() {
        // RFC 7636, appendix B.
        let flow = Flow {
            verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
            ..Flow::new()
        };
        assert_eq!(
            flow.challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let other = Flow::new();
        assert_ne!(other.state, other.nonce);
        assert_eq!(other.state.len(), 43);
    }

    #[test]
    fn an_identity_links_to_one_account_and_only_through_a_verified_email() {
        use Decision::*;
        let email = Some("alice@example.com");
        assert_eq!(
            decide(Some("a1"), email, false, Some("a2")),
            SignIn("a1".into())
        );
        assert_eq!(decide(None, email, true, Some("a2")), Link("a2".into()));
        assert_eq!(
            decide(None, email, false, Some("a2")),
            Refuse(Refused::UnverifiedEmailTaken)
        );
        assert_eq!(
            decide(None, email, true, None),
            Create {
                email: "alice@example.com".into()
            }
        );
        assert_eq!(
            decide(None, email, false, None),
            Refuse(Refused::NoVerifiedEmail)
        );
        assert_eq!(
            decide(None, None, true, None),
            Refuse(Refused::NoVerifiedEmail)
        );
    }

    #[test]
    fn form_encoding_escapes_everything_but_the_unreserved() {
        assert_eq!(form_urlencoded("a b:c%d/é"), "a+b%3Ac%25d%2F%C3%A9");
    }
}
