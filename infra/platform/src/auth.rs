//! Bearer-token authentication: JWTs signed with HS256 (a shared development secret), RS256
//! or ES256 (a PEM public key, a JWKS file, or a JWKS served by the auth service and
//! fetched again every `--jwt-jwks-refresh-secs`, and early when a token names a key not
//! seen yet). The algorithm is pinned per key, `exp`, `iss`, `aud` and `sub` are required,
//! `nbf` is checked, 60 s of clock skew are allowed.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// Token verification settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// Shared secret for HS256 tokens (development). `herald up` generates one under the
    /// data folder when none is given.
    #[arg(long, env = "JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<SecretString>,
    /// PEM file with the RSA or EC public key of RS256/ES256 tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// The algorithm of --jwt-public-key-file tokens: RS256 or ES256.
    #[arg(long, env = "JWT_ALGORITHM", default_value = "RS256")]
    pub jwt_algorithm: String,
    /// JWKS file (JSON Web Key Set); each key needs `kid` and `alg`.
    #[arg(long, env = "JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// JWKS URL (the auth service's /.well-known/jwks.json), fetched at start and again
    /// every --jwt-jwks-refresh-secs.
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Seconds between two fetches of --jwt-jwks-url; the auth service publishes a new key
    /// at least twice this long before signing with it.
    #[arg(long, env = "JWT_JWKS_REFRESH_SECS", default_value_t = 60)]
    pub jwt_jwks_refresh_secs: u64,
    /// Required `iss` claim.
    #[arg(long, env = "JWT_ISSUER", default_value = "herald")]
    pub jwt_issuer: String,
    /// Required `aud` claim.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "herald")]
    pub jwt_audience: String,
}

impl AuthArgs {
    /// HS256 with `secret`, issuer and audience `herald`: what `herald up` runs with.
    pub fn hs256(secret: &str) -> Self {
        Self {
            jwt_hs256_secret: Some(SecretString::from(secret.to_string())),
            jwt_public_key_file: None,
            jwt_algorithm: "RS256".into(),
            jwt_jwks_file: None,
            jwt_jwks_url: None,
            jwt_jwks_refresh_secs: 60,
            jwt_issuer: "herald".into(),
            jwt_audience: "herald".into(),
        }
    }
}

/// Who is calling: the token's subject and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub roles: Vec<String>,
    /// When the token stops being valid (Unix seconds): a long-lived response (a stream)
    /// ends then, and the client comes back with a fresh token.
    pub expires_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    iss: String,
    /// A string or an array of strings (RFC 7519); jsonwebtoken checks it.
    aud: serde_json::Value,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
}

struct VerifyKey {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(
        "no token verification key configured: set JWT_JWKS_URL (the auth service's JWKS), \
         JWT_HS256_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE"
    )]
    NoKeys,
    #[error("JWT_JWKS_URL: {0}")]
    JwksUrl(String),
    #[error("unsupported JWT algorithm {0:?}: use RS256 or ES256 for public keys")]
    Algorithm(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the HS256 secret must be at least 32 bytes")]
    WeakSecret,
}

/// Where a JWKS that changes comes from: the auth service's URL, or its store in process.
#[async_trait::async_trait]
pub trait JwksSource: Send + Sync + 'static {
    async fn fetch(&self) -> Result<Vec<u8>, String>;
}

/// A JWKS served over HTTP.
pub struct HttpJwks {
    url: String,
    client: reqwest::Client,
}

impl HttpJwks {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }
}

#[async_trait::async_trait]
impl JwksSource for HttpJwks {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|err| format!("GET {}: {err}", self.url))?;
        if !response.status().is_success() {
            return Err(format!("GET {}: {}", self.url, response.status()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|err| format!("GET {}: {err}", self.url))?;
        Ok(body.to_vec())
    }
}

/// Keys of a JWKS that is fetched again from time to time.
struct Fetched {
    keys: RwLock<Vec<VerifyKey>>,
    /// Rung when a token names a kid not known yet. Its own Arc, so the fetching task waits
    /// on it without keeping the keys (and itself) alive once the authenticator is gone.
    unknown_kid: Arc<tokio::sync::Notify>,
    /// Emptied when the set of keys changes, so a withdrawn key's tokens stop working.
    verified: Arc<Verified>,
}

/// Tokens verified already, with their principal. A client sends the same token for its
/// whole life (minutes), and a request is authenticated twice (the edge, then the handler):
/// a signature is checked once per token instead of once per use. An entry is used only
/// before its token's `exp`; the map is emptied when it reaches its bound.
#[derive(Default)]
struct Verified {
    map: std::sync::Mutex<std::collections::HashMap<String, Principal>>,
    /// Moves on each change of the key set: a check that began before a change does not
    /// store its result after it.
    generation: std::sync::atomic::AtomicU64,
}

const VERIFIED_BOUND: usize = 10_000;

impl Verified {
    fn get(&self, token: &str, now: u64) -> Option<Principal> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token).filter(|p| now < p.expires_at).cloned()
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stores a result of a check that began at `generation`, unless the keys changed since.
    fn put(&self, token: &str, principal: &Principal, generation: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation() != generation {
            return;
        }
        if map.len() >= VERIFIED_BOUND {
            map.clear();
        }
        map.insert(token.to_string(), principal.clone());
    }

    /// Forgets everything: the keys changed.
    fn clear(&self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        map.clear();
    }
}

/// Verifies bearer tokens against the configured keys.
pub struct Authenticator {
    keys: Vec<VerifyKey>,
    fetched: Option<Arc<Fetched>>,
    verified: Arc<Verified>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn validation(args: &AuthArgs, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[&args.jwt_issuer]);
    v.set_audience(&[&args.jwt_audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.validate_nbf = true;
    v.leeway = 60;
    v
}

/// The keys of a JWKS document; each needs a `kid` and an `alg` of RS256 or ES256.
fn jwks_keys(args: &AuthArgs, bytes: &[u8]) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|err| format!("not a JWKS: {err}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| "a key has no kid".to_string())?;
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::try_from(a).ok())
            .filter(|a| matches!(a, Algorithm::RS256 | Algorithm::ES256))
            .ok_or_else(|| format!("key {kid} needs alg RS256 or ES256"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|err| err.to_string())?;
        keys.push(VerifyKey {
            kid: Some(kid),
            key,
            validation: validation(args, alg),
        });
    }
    Ok(keys)
}

impl AuthArgs {
    /// Whether these settings give keys to verify tokens with: the key files are read and
    /// decoded, a JWKS URL is parsed but not fetched (`herald check`).
    pub fn check(&self) -> Result<(), AuthSetupError> {
        let authenticator = Authenticator::from_static_args(self)?;
        match &self.jwt_jwks_url {
            Some(url) => crate::net::check_http_url(url).map_err(AuthSetupError::JwksUrl),
            None if authenticator.keys.is_empty() => Err(AuthSetupError::NoKeys),
            None => Ok(()),
        }
    }
}

impl Authenticator {
    pub fn from_args(args: &AuthArgs) -> Result<Self, AuthSetupError> {
        let mut authenticator = Self::from_static_args(args)?;
        if let Some(url) = &args.jwt_jwks_url {
            authenticator = authenticator.with_jwks_source(args, Arc::new(HttpJwks::new(url)));
        }
        if authenticator.keys.is_empty() && authenticator.fetched.is_none() {
            return Err(AuthSetupError::NoKeys);
        }
        Ok(authenticator)
    }

    /// Also trusts the keys of the JWKS `source` gives, fetched now and every
    /// `--jwt-jwks-refresh-secs` by a task that ends when the authenticator is dropped.
    /// Until the first fetch succeeds only the other keys verify.
    pub fn with_jwks_source(mut self, args: &AuthArgs, source: Arc<dyn JwksSource>) -> Self {
        let fetched = Arc::new(Fetched {
            keys: RwLock::new(Vec::new()),
            unknown_kid: Arc::new(tokio::sync::Notify::new()),
            verified: self.verified.clone(),
        });
        let refresh = Duration::from_secs(args.jwt_jwks_refresh_secs.max(1));
        tokio::spawn(keep_fetching(
            Arc::downgrade(&fetched),
            source,
            args.clone(),
            refresh,
        ));
        self.fetched = Some(fetched);
        self
    }

    /// The keys given by file or secret only; possibly none.
    pub fn from_static_args(args: &AuthArgs) -> Result<Self, AuthSetupError> {
        let validation = |alg| validation(args, alg);
        let mut keys = Vec::new();
        if let Some(secret) = &args.jwt_hs256_secret {
            let secret = secret.expose_secret().as_bytes();
            if secret.len() < 32 {
                return Err(AuthSetupError::WeakSecret);
            }
            keys.push(VerifyKey {
                kid: None,
                key: DecodingKey::from_secret(secret),
                validation: validation(Algorithm::HS256),
            });
        }
        if let Some(path) = &args.jwt_public_key_file {
            let pem = read(path)?;
            let bad_key = |err: jsonwebtoken::errors::Error| AuthSetupError::Key {
                path: path.clone(),
                reason: err.to_string(),
            };
            let (key, alg) = match args.jwt_algorithm.as_str() {
                "RS256" => (
                    DecodingKey::from_rsa_pem(&pem).map_err(bad_key)?,
                    Algorithm::RS256,
                ),
                "ES256" => (
                    DecodingKey::from_ec_pem(&pem).map_err(bad_key)?,
                    Algorithm::ES256,
                ),
                other => return Err(AuthSetupError::Algorithm(other.to_string())),
            };
            keys.push(VerifyKey {
                kid: None,
                key,
                validation: validation(alg),
            });
        }
        if let Some(path) = &args.jwt_jwks_file {
            let bad = |reason: String| AuthSetupError::Key {
                path: path.clone(),
                reason,
            };
            keys.extend(jwks_keys(args, &read(path)?).map_err(bad)?);
        }
        Ok(Self {
            keys,
            fetched: None,
            verified: Arc::default(),
        })
    }

    /// The caller of a request, or the 401 to answer.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Problem> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("missing Authorization: Bearer token"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Problem::unauthorized("the Authorization header must be `Bearer <token>`")
            })?;
        self.verify(token).map_err(Problem::unauthorized)
    }

    /// Verifies a bare token (without `Bearer `).
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if let Some(principal) = self.verified.get(token, now) {
            return Ok(principal);
        }
        let generation = self.verified.generation();
        let verified = self.verify_signature(token);
        if let Ok(principal) = &verified {
            self.verified.put(token, principal, generation);
        }
        verified
    }

    fn verify_signature(&self, token: &str) -> Result<Principal, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "malformed token".to_string())?;
        let fits = |k: &&VerifyKey| {
            k.validation.algorithms.contains(&header.alg)
                && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        };
        let mut last = format!("no key for algorithm {:?}", header.alg);
        if let Some(result) = verify_with(self.keys.iter().filter(fits), token, &mut last) {
            return result;
        }
        if let Some(fetched) = &self.fetched {
            let keys = fetched.keys.read().unwrap_or_else(|e| e.into_inner());
            if let Some(result) = verify_with(keys.iter().filter(fits), token, &mut last) {
                return result;
            }
            if header.kid.is_some() && !keys.iter().any(|k| k.kid == header.kid) {
                fetched.unknown_kid.notify_one();
                last = "unknown signing key (kid)".into();
            }
        }
        Err(last)
    }
}

/// Tries each candidate key; `None` when none fits (the reason of the last refusal is in
/// `last`).
fn verify_with<'a>(
    candidates: impl Iterator<Item = &'a VerifyKey>,
    token: &str,
    last: &mut String,
) -> Option<Result<Principal, String>> {
    for key in candidates {
        match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
            Ok(data) => {
                if data.claims.sub.is_empty() {
                    return Some(Err("the sub claim is empty".into()));
                }
                return Some(Ok(Principal {
                    subject: data.claims.sub,
                    roles: data.claims.roles,
                    expires_at: data.claims.exp,
                }));
            }
            Err(err) => *last = describe(&err),
        }
    }
    None
}

/// Fetches the JWKS now, then every `refresh`, and at most every 5 s sooner when a token
/// names an unknown kid; a failed fetch keeps the keys it had and tries again in 1 s.
async fn keep_fetching(
    fetched: Weak<Fetched>,
    source: Arc<dyn JwksSource>,
    args: AuthArgs,
    refresh: Duration,
) {
    const EARLIEST: Duration = Duration::from_secs(5);
    let mut last_fetch: Option<Instant> = None;
    loop {
        let Some(strong) = fetched.upgrade() else {
            return;
        };
        let wait = match source
            .fetch()
            .await
            .and_then(|bytes| jwks_keys(&args, &bytes))
        {
            Ok(keys) => {
                last_fetch = Some(Instant::now());
                tracing::debug!(keys = keys.len(), "jwks fetched");
                let mut known = strong.keys.write().unwrap_or_else(|e| e.into_inner());
                let kids =
                    |keys: &[VerifyKey]| keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>();
                if kids(&known) != kids(&keys) {
                    strong.verified.clear();
                }
                *known = keys;
                drop(known);
                refresh
            }
            Err(err) => {
                tracing::warn!(%err, "cannot fetch the jwks; keeping the keys known so far");
                Duration::from_secs(1)
            }
        };
        let unknown_kid = strong.unknown_kid.clone();
        drop(strong);
        let woken = async { unknown_kid.notified().await };
        let early = tokio::time::timeout(wait, woken).await.is_ok();
        if early && let Some(at) = last_fetch {
            // Tokens naming unknown keys (forged ones too) trigger at most one fetch per
            // EARLIEST, never more often than the regular refresh would.
            tokio::time::sleep(EARLIEST.min(wait).saturating_sub(at.elapsed())).await;
        }
    }
}

fn describe(err: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
        ErrorKind::InvalidAlgorithm => "algorithm not allowed".into(),
        _ => "invalid token".into(),
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, AuthSetupError> {
    std::fs::read(path).map_err(|source| AuthSetupError::Read {
        path: path.clone(),
        source,
    })
}

/// A development token signed with the HS256 secret (`herald token`).
pub fn mint_hs256(
    secret: &SecretString,
    subject: &str,
    roles: &[String],
    issuer: &str,
    audience: &str,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: subject.to_string(),
        roles: roles.to_vec(),
        iss: issuer.to_string(),
        aud: serde_json::Value::String(audience.to_string()),
        exp: now + ttl.as_secs(),
        nbf: Some(now),
        iat: Some(now),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

    fn args() -> AuthArgs {
        AuthArgs::hs256(SECRET)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    fn token_with(claims: &serde_json::Value, alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_minted_token_verifies_with_its_roles() {
        let auth = Authenticator::from_args(&args()).unwrap();
        let secret = SecretString::from(SECRET);
        let token = mint_hs256(
            &secret,
            "alice",
            &["user".into()],
            "herald",
            "herald",
            Duration::from_secs(60),
        )
        .unwrap();
        let p = auth.authenticate(&bearer(&token)).unwrap();
        assert_eq!(p.subject, "alice");
        assert_eq!(p.roles, ["user"]);
        assert!(p.expires_at > now());
    }

    #[test]
    fn expired_wrong_audience_future_and_unsigned_tokens_are_refused() {
        let auth = Authenticator::from_args(&args()).unwrap();
        let base =
            serde_json::json!({"sub": "a", "iss": "herald", "aud": "herald", "exp": now() + 600});
        let mut expired = base.clone();
        expired["exp"] = (now() - 120).into();
        let mut wrong_aud = base.clone();
        wrong_aud["aud"] = "other".into();
        let mut future = base.clone();
        future["nbf"] = (now() + 600).into();
        let mut no_sub = base.clone();
        no_sub.as_object_mut().unwrap().remove("sub");
        for (claims, reason) in [
            (expired, "token expired"),
            (wrong_aud, "wrong audience"),
            (future, "token not valid yet (nbf)"),
            (no_sub, "missing claim sub"),
        ] {
            let err = auth
                .authenticate(&bearer(&token_with(&claims, Algorithm::HS256)))
                .unwrap_err();
            assert_eq!(err.status, 401);
            assert_eq!(err.detail, reason);
        }
        // alg pinned: HS384 with the same secret is not accepted
        let err = auth
            .authenticate(&bearer(&token_with(&base, Algorithm::HS384)))
            .unwrap_err();
        assert_eq!(err.status, 401);
        // "alg":"none" forgery
        let forged = format!("eyJhbGciOiJub25lIn0.{}.", "eyJzdWIiOiJhIn0");
        assert_eq!(auth.authenticate(&bearer(&forged)).unwrap_err().status, 401);
    }

    #[test]
    fn an_audience_array_is_accepted_when_it_names_us() {
        let auth = Authenticator::from_args(&args()).unwrap();
        let claims = serde_json::json!({"sub": "a", "iss": "herald", "aud": ["other", "herald"], "exp": now() + 600});
        assert_eq!(
            auth.authenticate(&bearer(&token_with(&claims, Algorithm::HS256)))
                .unwrap()
                .subject,
            "a"
        );
        let claims =
            serde_json::json!({"sub": "a", "iss": "herald", "aud": ["other"], "exp": now() + 600});
        assert_eq!(
            auth.authenticate(&bearer(&token_with(&claims, Algorithm::HS256)))
                .unwrap_err()
                .detail,
            "wrong audience"
        );
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires_and_within_a_bound() {
        let verified = Verified::default();
        let principal = Principal {
            subject: "a".into(),
            roles: vec![],
            expires_at: 100,
        };
        verified.put("t", &principal, verified.generation());
        assert_eq!(verified.get("t", 99), Some(principal.clone()));
        assert_eq!(verified.get("t", 100), None, "used after its exp");
        assert_eq!(verified.get("other", 50), None);
        for i in 0..VERIFIED_BOUND {
            verified.put(&i.to_string(), &principal, verified.generation());
        }
        assert_eq!(verified.get("t", 50), None, "the bound empties the map");
        // a check that began before the keys changed does not store its result
        let began = verified.generation();
        verified.clear();
        verified.put("late", &principal, began);
        assert_eq!(verified.get("late", 50), None);
        // and a token that fails is never remembered
        let auth = Authenticator::from_args(&args()).unwrap();
        assert!(auth.verify("nope").is_err());
        assert!(auth.verified.get("nope", 0).is_none());
    }

    #[test]
    fn a_missing_or_malformed_header_is_401() {
        let auth = Authenticator::from_args(&args()).unwrap();
        assert_eq!(
            auth.authenticate(&HeaderMap::new()).unwrap_err().status,
            401
        );
        let mut basic = HeaderMap::new();
        basic.insert("authorization", HeaderValue::from_static("Basic YTpi"));
        assert_eq!(auth.authenticate(&basic).unwrap_err().status, 401);
    }

    #[test]
    fn short_secrets_are_refused_at_start() {
        let mut a = args();
        a.jwt_hs256_secret = Some(SecretString::from("short"));
        assert!(matches!(
            Authenticator::from_args(&a),
            Err(AuthSetupError::WeakSecret)
        ));
    }

    fn keys_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
    }

    fn signed(alg: Algorithm, kid: Option<&str>, private_pem: &str, sub: &str) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        let pem = std::fs::read(keys_dir().join(private_pem)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let claims = serde_json::json!({"sub": sub, "roles": ["service"], "iss": "herald", "aud": "herald", "exp": now() + 600});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn public_key_args(file: &str, alg: &str) -> AuthArgs {
        AuthArgs {
            jwt_hs256_secret: None,
            jwt_public_key_file: Some(keys_dir().join(file)),
            jwt_algorithm: alg.into(),
            ..args()
        }
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_their_pem_public_keys() {
        let rsa = Authenticator::from_args(&public_key_args("rsa-public.pem", "RS256")).unwrap();
        let token = signed(Algorithm::RS256, None, "rsa-private.pem", "auth-service");
        assert_eq!(
            rsa.authenticate(&bearer(&token)).unwrap().subject,
            "auth-service"
        );
        let ec = Authenticator::from_args(&public_key_args("ec-public.pem", "ES256")).unwrap();
        let token = signed(Algorithm::ES256, None, "ec-private.pem", "auth-service");
        assert_eq!(ec.authenticate(&bearer(&token)).unwrap().roles, ["service"]);
        // an ES256 token is no good where RS256 is pinned
        assert_eq!(rsa.authenticate(&bearer(&token)).unwrap_err().status, 401);
    }

    #[test]
    fn an_hs256_token_signed_with_the_public_key_is_refused() {
        // the classic algorithm confusion: the public key used as an HMAC secret
        let rsa = Authenticator::from_args(&public_key_args("rsa-public.pem", "RS256")).unwrap();
        let public = std::fs::read(keys_dir().join("rsa-public.pem")).unwrap();
        let claims = serde_json::json!({"sub": "mallory", "iss": "herald", "aud": "herald", "exp": now() + 600});
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&public),
        )
        .unwrap();
        let err = rsa.authenticate(&bearer(&forged)).unwrap_err();
        assert_eq!(err.detail, "no key for algorithm HS256");
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        let jwks = AuthArgs {
            jwt_hs256_secret: None,
            jwt_jwks_file: Some(keys_dir().join("jwks.json")),
            ..args()
        };
        let auth = Authenticator::from_args(&jwks).unwrap();
        for (alg, kid, pem) in [
            (Algorithm::RS256, "rsa-1", "rsa-private.pem"),
            (Algorithm::ES256, "ec-1", "ec-private.pem"),
        ] {
            let token = signed(alg, Some(kid), pem, kid);
            assert_eq!(auth.authenticate(&bearer(&token)).unwrap().subject, kid);
        }
        let unknown = signed(Algorithm::RS256, Some("rsa-2"), "rsa-private.pem", "x");
        assert_eq!(
            auth.authenticate(&bearer(&unknown)).unwrap_err().status,
            401
        );
    }
}
