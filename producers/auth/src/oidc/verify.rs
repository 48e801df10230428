//! Checking a provider's ID token (OpenID Connect Core 1.0, 3.1.3.7): its signature by a key
//! of the provider's JWKS, then issuer, audience, authorized party, expiry, issue time and
//! nonce. The keys are given; the time is the system clock's.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Clock skew allowed between the provider and this process.
pub const LEEWAY_SECS: u64 = 60;

/// The claims Herald uses from a verified ID token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub email: Option<String>,
    /// Only `true` when the provider says so; absent counts as unverified.
    pub email_verified: bool,
    pub name: Option<String>,
}

/// Why an ID token is refused; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the ID token is not a JWT")]
    Malformed,
    #[error(
        "the ID token is signed with {0:?}, which is not accepted (an asymmetric algorithm is)"
    )]
    Algorithm(Algorithm),
    #[error("the ID token names a key the provider does not publish")]
    UnknownKey,
    #[error("the ID token's signature does not verify")]
    Signature,
    #[error("the ID token comes from another issuer than the provider")]
    Issuer,
    #[error("the ID token was issued to another client")]
    Audience,
    #[error("the ID token has expired")]
    Expired,
    #[error("the ID token lacks a required claim or has one of the wrong type: {0}")]
    Claims(String),
    #[error("the ID token's nonce is not the one this sign-in sent")]
    Nonce,
}

/// The algorithms a provider may sign with: asymmetric ones only, so that a token can never be
/// checked with a public key taken as a shared secret.
const ACCEPTED: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    /// Required by OpenID Connect; `jsonwebtoken` checks only its own spec claims, so serde
    /// refuses a token without it, and [`verify`] one issued in the future.
    iat: u64,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<EmailVerified>,
    #[serde(default)]
    name: Option<String>,
    /// One audience or several (already checked to include us).
    #[serde(default)]
    aud: serde_json::Value,
}

/// Some providers send `email_verified` as the string "true".
#[derive(Deserialize)]
#[serde(untagged)]
enum EmailVerified {
    Bool(bool),
    Text(String),
}

/// Verifies `token` as an ID token of `issuer` for `client_id`, signed by a key of `keys`,
/// carrying `nonce`.
pub fn verify(
    token: &str,
    keys: &JwkSet,
    issuer: &str,
    client_id: &str,
    nonce: &str,
) -> Result<Identity, Refusal> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
    if !ACCEPTED.contains(&header.alg) {
        return Err(Refusal::Algorithm(header.alg));
    }
    let jwk = find_key(keys, header.kid.as_deref(), header.alg).ok_or(Refusal::UnknownKey)?;
    let key = decoding_key(jwk, header.alg).ok_or(Refusal::UnknownKey)?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = LEEWAY_SECS;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    let claims: Claims = jsonwebtoken::decode(token, &key, &validation)
        .map_err(|err| {
            use jsonwebtoken::errors::ErrorKind as E;
            match err.kind() {
                E::InvalidSignature | E::InvalidEcdsaKey | E::InvalidRsaKey(_) => {
                    Refusal::Signature
                }
                E::InvalidIssuer => Refusal::Issuer,
                E::InvalidAudience => Refusal::Audience,
                E::ExpiredSignature | E::ImmatureSignature => Refusal::Expired,
                E::MissingRequiredClaim(claim) => Refusal::Claims(claim.clone()),
                E::Json(_) => Refusal::Claims("iss, sub, aud, exp and iat".into()),
                _ => Refusal::Malformed,
            }
        })?
        .claims;
    // Several audiences: the token must have been issued to us (Core 3.1.3.7, items 4 and 5).
    let audiences = claims.aud.as_array().map_or(1, Vec::len);
    if audiences > 1 && claims.azp.as_deref() != Some(client_id) {
        return Err(Refusal::Audience);
    }
    if let Some(azp) = &claims.azp
        && azp != client_id
    {
        return Err(Refusal::Audience);
    }
    let now = jsonwebtoken::get_current_timestamp();
    if claims.iat > now + LEEWAY_SECS {
        return Err(Refusal::Claims("iat (issued in the future)".into()));
    }
    if claims.nonce.as_deref() != Some(nonce) {
        return Err(Refusal::Nonce);
    }
    if claims.sub.is_empty() || claims.sub.len() > 255 {
        return Err(Refusal::Claims("sub (1 to 255 characters)".into()));
    }
    let email_verified = matches!(claims.email_verified, Some(EmailVerified::Bool(true)))
        || matches!(&claims.email_verified, Some(EmailVerified::Text(t)) if t == "true");
    Ok(Identity {
        issuer: claims.iss,
        subject: claims.sub,
        email: claims.email,
        email_verified,
        name: claims.name,
    })
}

/// The key the header names; without a `kid`, the one key that fits the algorithm.
fn find_key<'a>(keys: &'a JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => keys.find(kid),
        None => {
            let mut fitting = keys.keys.iter().filter(|k| fits(k, alg));
            let only = fitting.next()?;
            fitting.next().is_none().then_some(only)
        }
    }
}

/// Whether `jwk` is a key for `alg`: the same family, and for ECDSA the curve the algorithm
/// is defined on (`DecodingKey::from_jwk` does not check it).
fn fits(jwk: &Jwk, alg: Algorithm) -> bool {
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512)
        | (AlgorithmParameters::RSA(_), Algorithm::PS256) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

fn decoding_key(jwk: &Jwk, alg: Algorithm) -> Option<DecodingKey> {
    if !fits(jwk, alg) {
        return None;
    }
    DecodingKey::from_jwk(jwk).ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::{Value, json};

    /// A provider's signing key: RSA, generated for the test, as a JWK and a signer.
    pub(crate) struct TestKey {
        pub kid: String,
        pub jwk: Jwk,
        encoding: EncodingKey,
    }

    impl TestKey {
        pub(crate) fn rsa(kid: &str) -> Self {
            let stored = crate::tokens::StoredKey::generate(0, 0);
            let mut jwk: Value = serde_json::from_str(&stored.public_jwk).unwrap();
            jwk["kid"] = json!(kid);
            jwk["alg"] = json!("RS256");
            jwk["use"] = json!("sig");
            Self {
                kid: kid.into(),
                jwk: serde_json::from_value(jwk).unwrap(),
                encoding: stored.encoding_key().unwrap(),
            }
        }

        pub(crate) fn sign(&self, claims: &Value) -> String {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(self.kid.clone());
            jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
        }
    }

    const ISSUER: &str = "https://id.example.com";
    const CLIENT: &str = "herald";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER, "sub": "248289761001", "aud": CLIENT, "nonce": "n-1",
            "exp": now() + 300, "iat": now(), "email": "alice@example.com",
            "email_verified": true, "name": "Alice"
        })
    }

    fn with(mut claims: Value, change: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        change(claims.as_object_mut().unwrap());
        claims
    }

    #[test]
    fn a_good_token_gives_its_identity_and_every_forgery_a_reason() {
        let key = TestKey::rsa("k1");
        let other = TestKey::rsa("k1");
        let keys = JwkSet {
            keys: vec![key.jwk.clone()],
        };
        let check = |token: &str| verify(token, &keys, ISSUER, CLIENT, "n-1");
        assert_eq!(
            check(&key.sign(&claims())),
            Ok(Identity {
                issuer: ISSUER.into(),
                subject: "248289761001".into(),
                email: Some("alice@example.com".into()),
                email_verified: true,
                name: Some("Alice".into()),
            })
        );
        let refused = |claims: Value| check(&key.sign(&claims)).unwrap_err();
        assert_eq!(
            refused(with(claims(), |c| {
                c.insert("iss".into(), json!("https://evil.example.com"));
            })),
            Refusal::Issuer
        );
        assert_eq!(
            refused(with(claims(), |c| {
                c.insert("aud".into(), json!("someone-else"));
            })),
            Refusal::Audience
        );
        assert_eq!(
            refused(with(claims(), |c| {
                c.insert("aud".into(), json!([CLIENT, "someone-else"]));
            })),
            Refusal::Audience,
            "several audiences need azp"
        );
        assert!(
            check(&key.sign(&with(claims(), |c| {
                c.insert("aud".into(), json!([CLIENT, "someone-else"]));
                c.insert("azp".into(), json!(CLIENT));
            })))
            .is_ok()
        );
        assert_eq!(
            refused(with(claims(), |c| {
                c.insert("exp".into(), json!(now() - 3600));
            })),
            Refusal::Expired
        );
        assert_eq!(
            refused(with(claims(), |c| {
                c.insert("nonce".into(), json!("n-2"));
            })),
            Refusal::Nonce
        );
        assert_eq!(
            refused(with(claims(), |c| {
                c.remove("nonce");
            })),
            Refusal::Nonce
        );
        assert!(matches!(
            refused(with(claims(), |c| {
                c.remove("iat");
            })),
            Refusal::Claims(_)
        ));
        assert!(matches!(
            refused(with(claims(), |c| {
                c.insert("iat".into(), json!(now() + 3600));
            })),
            Refusal::Claims(_)
        ));
        // The same kid, another key: the signature fails.
        assert_eq!(
            check(&other.sign(&claims())).unwrap_err(),
            Refusal::Signature
        );
        // A kid the provider does not publish.
        let stranger = TestKey::rsa("k9");
        assert_eq!(
            check(&stranger.sign(&claims())).unwrap_err(),
            Refusal::UnknownKey
        );
        assert_eq!(check("not a token").unwrap_err(), Refusal::Malformed);
    }

    #[test]
    fn a_token_signed_with_the_public_key_as_a_shared_secret_is_refused() {
        let key = TestKey::rsa("k1");
        let keys = JwkSet {
            keys: vec![key.jwk.clone()],
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let AlgorithmParameters::RSA(rsa) = &key.jwk.algorithm else {
            unreachable!()
        };
        let forged = jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(rsa.n.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            verify(&forged, &keys, ISSUER, CLIENT, "n-1").unwrap_err(),
            Refusal::Algorithm(Algorithm::HS256)
        );
    }

    #[test]
    fn email_verified_counts_only_when_the_provider_says_true() {
        let key = TestKey::rsa("k1");
        let keys = JwkSet {
            keys: vec![key.jwk.clone()],
        };
        for (value, verified) in [
            (json!(true), true),
            (json!("true"), true),
            (json!(false), false),
            (json!("false"), false),
            (json!(null), false),
        ] {
            let token = key.sign(&with(claims(), |c| {
                c.insert("email_verified".into(), value.clone());
            }));
            let identity = verify(&token, &keys, ISSUER, CLIENT, "n-1").unwrap();
            assert_eq!(identity.email_verified, verified, "{value}");
        }
        let token = key.sign(&with(claims(), |c| {
            c.remove("email_verified");
        }));
        assert!(
            !verify(&token, &keys, ISSUER, CLIENT, "n-1")
                .unwrap()
                .email_verified
        );
    }
}
