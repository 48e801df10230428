//! Bearer-token authentication: JWTs signed with HS256 (a shared development secret), RS256
//! or ES256 (a PEM public key or a JWKS file). The algorithm is pinned per key, `exp`, `iss`,
//! `aud` and `sub` are required, `nbf` is checked, 60 s of clock skew are allowed.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
        "no token verification key configured: set JWT_HS256_SECRET, JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE"
    )]
    NoKeys,
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

/// Verifies bearer tokens against the configured keys.
pub struct Authenticator {
    keys: Vec<VerifyKey>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Authenticator {
    pub fn from_args(args: &AuthArgs) -> Result<Self, AuthSetupError> {
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.set_issuer(&[&args.jwt_issuer]);
            v.set_audience(&[&args.jwt_audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            v.validate_nbf = true;
            v.leeway = 60;
            v
        };
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
            let set: JwkSet = serde_json::from_slice(&read(path)?)
                .map_err(|err| bad(format!("not a JWKS: {err}")))?;
            for jwk in &set.keys {
                let kid = jwk
                    .common
                    .key_id
                    .clone()
                    .ok_or_else(|| bad("a key has no kid".into()))?;
                let alg = jwk
                    .common
                    .key_algorithm
                    .and_then(|a| Algorithm::try_from(a).ok())
                    .filter(|a| matches!(a, Algorithm::RS256 | Algorithm::ES256))
                    .ok_or_else(|| bad(format!("key {kid} needs alg RS256 or ES256")))?;
                let key = DecodingKey::from_jwk(jwk).map_err(|err| bad(err.to_string()))?;
                keys.push(VerifyKey {
                    kid: Some(kid),
                    key,
                    validation: validation(alg),
                });
            }
        }
        if keys.is_empty() {
            return Err(AuthSetupError::NoKeys);
        }
        Ok(Self { keys })
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

    fn verify(&self, token: &str) -> Result<Principal, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "malformed token".to_string())?;
        let candidates = self.keys.iter().filter(|k| {
            k.validation.algorithms.contains(&header.alg)
                && (header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
        });
        let mut last = format!("no key for algorithm {:?}", header.alg);
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => {
                    if data.claims.sub.is_empty() {
                        return Err("the sub claim is empty".into());
                    }
                    return Ok(Principal {
                        subject: data.claims.sub,
                        roles: data.claims.roles,
                        expires_at: data.claims.exp,
                    });
                }
                Err(err) => last = describe(&err),
            }
        }
        Err(last)
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
