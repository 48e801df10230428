//! One-click unsubscribe (RFC 8058) for promotional email.
//!
//! Every promotional email carries `List-Unsubscribe: <{public_url}/api/v1/unsubscribe/{token}>`
//! and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`. The token is an HS256 JWT of the
//! user id with its own audience, so it proves who asked without a login and cannot be used
//! as a bearer token anywhere else. It is a pure function of the user, so the same user gets
//! the same link in every email and a link never expires (as mail clients expect).
//!
//! `POST` on the link (what mail clients send: `List-Unsubscribe=One-Click`) turns the user's
//! promotional email off; `GET` only shows a page with a button that posts, because link
//! scanners fetch every URL in a message and must not unsubscribe anyone.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The `aud` of unsubscribe tokens: no API that takes bearer tokens accepts it.
const AUDIENCE: &str = "herald-unsubscribe";
pub const PATH: &str = "/api/v1/unsubscribe";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    aud: String,
}

/// Signs and checks unsubscribe links.
pub struct Unsubscribe {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    public_url: String,
}

impl std::fmt::Debug for Unsubscribe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsubscribe")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

/// Checks `NOTIFY_PUBLIC_URL`: the links go into emails read anywhere, so it must be an
/// absolute http(s) URL of a host users can reach (not a wildcard listen address).
pub fn check_public_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text)
        .map_err(|err| format!("NOTIFY_PUBLIC_URL {text:?} is not a URL: {err}"))?;
    let reachable = url.host_str().is_some_and(|host| {
        match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            Ok(ip) => !ip.is_unspecified(),
            Err(_) => !host.is_empty(),
        }
    });
    if !matches!(url.scheme(), "http" | "https") || !reachable || url.port() == Some(0) {
        return Err(format!(
            "NOTIFY_PUBLIC_URL {text:?} must be where users reach this service, \
             like https://api.example.com"
        ));
    }
    Ok(())
}

impl Unsubscribe {
    /// `public_url`: where users reach this service's API (`https://api.example.com`).
    pub fn new(secret: &SecretString, public_url: &str) -> Self {
        let key = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["sub", "aud"]);
        validation.validate_exp = false;
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            public_url: public_url.trim_end_matches('/').to_string(),
        }
    }

    /// The user's one-click link (the same every time).
    pub fn link(&self, user_id: &str) -> String {
        let claims = Claims {
            sub: user_id.to_string(),
            aud: AUDIENCE.to_string(),
        };
        // Encoding a two-string claim set with an HMAC key cannot fail.
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default();
        format!("{}{PATH}/{token}", self.public_url)
    }

    /// The user a token was made for, if this service signed it.
    pub fn verify(&self, token: &str) -> Option<String> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims.sub)
            .filter(|sub| !sub.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_url_must_be_reachable_from_an_inbox() {
        for good in [
            "https://api.example.com",
            "http://127.0.0.1:8080",
            "https://[2001:db8::1]:8443/",
        ] {
            assert_eq!(check_public_url(good), Ok(()), "{good}");
        }
        for bad in [
            "api.example.com",
            "http://0.0.0.0:8080",
            "http://[::]:8080",
            "http://127.0.0.1:0",
            "ftp://example.com",
            "",
        ] {
            assert!(check_public_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_link_names_its_user_and_nothing_else_verifies() {
        let signer = Unsubscribe::new(&SecretString::from("s3cret"), "https://api.example.com/");
        let link = signer.link("alice");
        assert_eq!(link, signer.link("alice"));
        let token = link
            .strip_prefix("https://api.example.com/api/v1/unsubscribe/")
            .unwrap();
        assert_eq!(signer.verify(token).as_deref(), Some("alice"));
        let other = Unsubscribe::new(&SecretString::from("other"), "https://x");
        assert_eq!(other.verify(token), None);
        assert_eq!(signer.verify("not-a-token"), None);
        // A login token signed with the same secret is not an unsubscribe token.
        let login = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "alice", "aud": "herald"}),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(signer.verify(&login), None);
    }
}
