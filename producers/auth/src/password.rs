//! Passwords: the policy (pure) and argon2id hashing.
//!
//! The parameters are OWASP's first argon2id recommendation: 19 MiB of memory, 2 passes,
//! 1 lane. Hashing runs on the blocking pool, at most one per core at a time, so a burst of
//! logins queues instead of taking memory and starving the async workers.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// OWASP Password Storage Cheat Sheet: m=19456 KiB, t=2, p=1.
pub const MEMORY_KIB: u32 = 19_456;
pub const PASSES: u32 = 2;
pub const LANES: u32 = 1;

pub const MIN_LEN: usize = 10;
pub const MAX_LEN: usize = 128;

/// The most common passwords that pass the length rule (from public breach lists).
const COMMON: &[&str] = &[
    "1234567890",
    "12345678910",
    "123456789a",
    "0123456789",
    "1q2w3e4r5t",
    "1qaz2wsx3edc",
    "qwertyuiop",
    "password123",
    "password1234",
    "passw0rd123",
    "iloveyou123",
    "qwerty12345",
    "qwerty123456",
    "abcdefghij",
    "abc1234567",
    "letmein123",
    "welcome123",
    "administrator",
    "football123",
    "monkey12345",
    "sunshine123",
    "princess123",
    "dragon12345",
    "baseball123",
    "trustno1234",
    "changeme123",
];

/// Why a password is refused: the message is meant for the person choosing it.
pub fn check_policy(password: &str, email: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_LEN {
        return Err(format!(
            "the password must have at least {MIN_LEN} characters (it has {chars}); a few words make a good one"
        ));
    }
    if chars > MAX_LEN {
        return Err(format!(
            "the password must have at most {MAX_LEN} characters"
        ));
    }
    let lower = password.to_lowercase();
    if COMMON.contains(&lower.as_str()) {
        return Err("this password is among the most common ones; choose another".into());
    }
    let mut distinct: Vec<char> = lower.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 4 {
        return Err(
            "the password repeats too few characters; choose a less predictable one".into(),
        );
    }
    let local = email.split('@').next().unwrap_or_default().to_lowercase();
    if local.len() >= 4 && lower.contains(&local) {
        return Err("the password must not contain your email address".into());
    }
    Ok(())
}

/// 16 random bytes, as argon2 hashes carry them.
fn new_salt() -> SaltString {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source works");
    SaltString::encode_b64(&bytes).expect("16 bytes make a valid salt")
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None).expect("valid argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The hash of an account that has no password (made by an external sign-in): no password
/// matches it, and checking one takes as long as for any account.
pub const NO_PASSWORD: &str = "!";

/// Hashes and verifies on the blocking pool, one per core at a time.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the account does not exist, so
    /// an unknown email takes as long to refuse as a wrong password.
    decoy: Arc<String>,
}

impl Hasher {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let salt = new_salt();
        let decoy = argon2()
            .hash_password(uuid::Uuid::new_v4().to_string().as_bytes(), &salt)
            .expect("argon2 hashes a password")
            .to_string();
        Self {
            permits: Arc::new(Semaphore::new(cores)),
            decoy: Arc::new(decoy),
        }
    }

    pub async fn hash(&self, password: &str) -> String {
        let password = password.to_string();
        let _permit = self.permits.acquire().await.expect("never closed");
        tokio::task::spawn_blocking(move || {
            let salt = new_salt();
            argon2()
                .hash_password(password.as_bytes(), &salt)
                .expect("argon2 hashes a password")
                .to_string()
        })
        .await
        .expect("hashing does not panic")
    }

    /// Whether `password` matches `hash`; `None` (or [`NO_PASSWORD`]) verifies against the
    /// decoy and says no, taking as long as a real check.
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> bool {
        let hash = hash.filter(|h| *h != NO_PASSWORD);
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.decoy.to_string(), str::to_string);
        let password = password.to_string();
        let _permit = self.permits.acquire().await.expect("never closed");
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                argon2()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        known && matches
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_explains_each_refusal() {
        let email = "alice.martin@example.com";
        assert!(
            check_policy("short", email)
                .unwrap_err()
                .contains("at least 10")
        );
        assert!(
            check_policy(&"a".repeat(129), email)
                .unwrap_err()
                .contains("at most 128")
        );
        assert!(
            check_policy("Password123", email)
                .unwrap_err()
                .contains("most common")
        );
        assert!(
            check_policy("aaaaabbbbbaaaa", email)
                .unwrap_err()
                .contains("too few")
        );
        assert!(
            check_policy("my alice.martin pw", email)
                .unwrap_err()
                .contains("email")
        );
        assert!(check_policy("correct horse battery", email).is_ok());
        // length counts characters, not bytes
        assert!(check_policy("ééééééééé", email).is_err());
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only_and_is_argon2id_at_owasp_parameters() {
        let hasher = Hasher::new();
        let hash = hasher.hash("correct horse battery").await;
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(hasher.verify("correct horse battery", Some(&hash)).await);
        assert!(!hasher.verify("correct horse batterY", Some(&hash)).await);
        assert!(!hasher.verify("correct horse battery", None).await);
        assert!(!hasher.verify("x", Some("not a hash")).await);
    }
}
