//! Sealing live secrets (a sign-in code, a password-reset link) before they cross the log.
//!
//! Event topics are kept for good and read by many: the audit log, the search indexer, replay
//! and tail. A field the schema marks as sealed (`"herald": {"sealed": ["code"]}`) therefore
//! holds only ciphertext on the log, and only a service given the sealing key (the one that
//! delivers the secret: notifications) can open it.
//!
//! A sealed value is text, so the schema's field stays a string:
//! `sealed:v1:<key id>:<base64url(nonce ‖ AES-256-GCM ciphertext ‖ tag)>`. The key id is the
//! first 8 hex digits of the key's SHA-256, so a reader holding another key says so instead
//! of failing opaquely. The additional data is `<event type>/<field>`: a sealed value moved
//! into another field or event type does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

pub use events::SEALED_PREFIX;

/// Bytes of a sealing key.
pub const KEY_LEN: usize = 32;

/// The key that seals and opens marked fields.
pub struct SealingKey {
    id: String,
    key: LessSafeKey,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKey").field("id", &self.id).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "SEALING_KEY must be 32 bytes in base64 (make one with `openssl rand -base64 32`), \
         not {0}"
    )]
    BadKey(String),
    #[error("the value is not sealed (it does not start with {SEALED_PREFIX})")]
    NotSealed,
    #[error("sealed with key {0}, and this service holds key {1}: give it the same SEALING_KEY")]
    OtherKey(String, String),
    #[error("the sealed value is damaged or was moved from another field")]
    Damaged,
}

impl SealingKey {
    /// A key from its base64 text (standard or URL-safe alphabet, padded or not).
    pub fn from_base64(text: &SecretString) -> Result<Self, SealError> {
        let text = text.expose_secret().trim();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| SealError::BadKey("text that is not base64".into()))?;
        Self::from_bytes(&raw)
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Self, SealError> {
        if raw.len() != KEY_LEN {
            return Err(SealError::BadKey(format!("{} bytes", raw.len())));
        }
        let digest = Sha256::digest(raw);
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        let key = UnboundKey::new(&AES_256_GCM, raw)
            .map_err(|_| SealError::BadKey("a key AES-256 refuses".into()))?;
        Ok(Self {
            id,
            key: LessSafeKey::new(key),
        })
    }

    /// A new random key, as base64 text (for `herald up`'s data folder).
    pub fn generate() -> SecretString {
        let mut raw = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut raw).expect("the system's random source works");
        SecretString::from(base64::engine::general_purpose::STANDARD.encode(raw))
    }

    /// The key's id, as it appears in what it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `plain`, the value of `field` in an event of `event_type`.
    pub fn seal(&self, event_type: &str, field: &str, plain: &str) -> String {
        self.seal_as(SEALED_PREFIX, event_type, field, plain)
    }

    /// [`SealingKey::seal`] under another prefix (`platform::privacy`'s), with `context` and
    /// `field` as the additional data: the text is built once, in one buffer.
    pub fn seal_as(&self, prefix: &str, context: &str, field: &str, plain: &str) -> String {
        let mut buffer = Vec::with_capacity(NONCE_LEN + plain.len() + AES_256_GCM.tag_len());
        buffer.resize(NONCE_LEN, 0);
        // A random 96-bit nonce from the thread's CSPRNG (ChaCha, seeded and reseeded from
        // the system): a fraction of the cost of the system's generator per call, which
        // ingesting personal fields makes on every event.
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut buffer);
        let nonce = Nonce::try_assume_unique_for_key(&buffer).expect("NONCE_LEN bytes");
        buffer.extend_from_slice(plain.as_bytes());
        let mut aad = String::with_capacity(context.len() + 1 + field.len());
        aad.push_str(context);
        aad.push('/');
        aad.push_str(field);
        let (_, text) = buffer.split_at_mut(NONCE_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(aad.as_bytes()), text)
            .expect("AES-256-GCM seals any length a string has");
        buffer.extend_from_slice(tag.as_ref());
        let mut sealed =
            String::with_capacity(prefix.len() + self.id.len() + 1 + buffer.len().div_ceil(3) * 4);
        sealed.push_str(prefix);
        sealed.push_str(&self.id);
        sealed.push(':');
        URL_SAFE_NO_PAD.encode_string(&buffer, &mut sealed);
        sealed
    }

    pub fn open(&self, event_type: &str, field: &str, sealed: &str) -> Result<String, SealError> {
        let rest = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SealError::NotSealed)?;
        let (id, body) = rest.split_once(':').ok_or(SealError::Damaged)?;
        if id != self.id {
            return Err(SealError::OtherKey(id.to_string(), self.id.clone()));
        }
        let mut bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SealError::Damaged)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Damaged);
        }
        let mut sealed = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| SealError::Damaged)?;
        let aad = format!("{event_type}/{field}");
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut sealed)
            .map_err(|_| SealError::Damaged)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Damaged)
    }

    /// Seals, in place, every field `schema` marks as sealed in `data` (an event's data as
    /// JSON) that is a string not sealed already.
    pub fn seal_fields(&self, schema: &events::SchemaVersion, data: &mut serde_json::Value) {
        for field in &schema.sealed {
            if let Some(serde_json::Value::String(value)) = data.get_mut(field)
                && !value.starts_with(SEALED_PREFIX)
            {
                *value = self.seal(&schema.event_type, field, value);
            }
        }
    }

    /// Opens, in place, every sealed field of an event's data.
    pub fn open_fields(
        &self,
        schema: &events::SchemaVersion,
        data: &mut serde_json::Value,
    ) -> Result<(), SealError> {
        for field in &schema.sealed {
            if let Some(serde_json::Value::String(value)) = data.get_mut(field) {
                *value = self.open(&schema.event_type, field, value)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealingKey {
        SealingKey::from_base64(&SealingKey::generate()).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_only_with_its_key_for_its_field() {
        let key = key();
        let sealed = key.seal("otp.requested", "code", "482913");
        assert!(sealed.starts_with(SEALED_PREFIX), "{sealed}");
        assert!(!sealed.contains("482913"));
        assert_eq!(
            key.open("otp.requested", "code", &sealed).unwrap(),
            "482913"
        );
        // Each sealing differs (a fresh nonce): equal codes cannot be told apart on the log.
        assert_ne!(sealed, key.seal("otp.requested", "code", "482913"));
        assert!(matches!(
            key.open("otp.requested", "phone", &sealed),
            Err(SealError::Damaged)
        ));
        assert!(matches!(
            self::key().open("otp.requested", "code", &sealed),
            Err(SealError::OtherKey(..))
        ));
        // One bit of the ciphertext flipped.
        let (head, body) = sealed.rsplit_once(':').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
        bytes[NONCE_LEN] ^= 1;
        let tampered = format!("{head}:{}", URL_SAFE_NO_PAD.encode(bytes));
        assert!(matches!(
            key.open("otp.requested", "code", &tampered),
            Err(SealError::Damaged)
        ));
        assert!(matches!(
            key.open("otp.requested", "code", "482913"),
            Err(SealError::NotSealed)
        ));
    }

    #[test]
    fn hostile_sealed_text_never_panics() {
        let key = key();
        let prefix = format!("{SEALED_PREFIX}{}:", key.id());
        for body in [
            "",
            "A",
            "!!!!",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            &"A".repeat(100_000),
        ] {
            assert!(key.open("t.t", "f", &format!("{prefix}{body}")).is_err());
        }
        assert!(key.open("t.t", "f", SEALED_PREFIX).is_err());
    }

    #[test]
    fn keys_of_the_wrong_size_or_alphabet_are_refused() {
        for bad in ["", "short", "not base64 at all!", &"A".repeat(44)] {
            assert!(
                SealingKey::from_base64(&SecretString::from(bad.to_string())).is_err(),
                "{bad}"
            );
        }
    }
}
