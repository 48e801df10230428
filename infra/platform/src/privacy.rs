//! Personal data encrypted per data subject, so that it can be erased from a log that keeps
//! everything (crypto-shredding).
//!
//! Each data subject (an account, a customer: what the contract's `herald.personal.subject`
//! names) has a data key of its own, AES-256-GCM, made the first time something of theirs is
//! protected. A protected field is text, so the schema's string stays a string:
//! `personal:v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`, with the subject and the
//! field as additional data (a value moved to another subject or field does not open).
//!
//! Data keys are stored wrapped by a key-encryption key (KEK), never in clear: the KEK file
//! holds one base64 key per line, the first wraps new keys and every one unwraps, so a
//! rotation ([`Privacy::rotate`]) rewraps key by key and loses nothing if it stops halfway.
//!
//! Erasing a subject ([`Privacy::erase`]) deletes their data key: every copy of their
//! protected fields, on the log, in stores that keep ciphertext and in backups, becomes
//! unreadable together, and reads of it answer [`Revealed::Erased`] rather than an error.
//! Processes keep unwrapped keys in memory for [`CACHE_TTL`] at most, so an erasure reaches
//! every process within that time. An erased subject gets no new key: protecting for them is
//! refused ([`PrivacyError::Erased`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;

use crate::db::Database;
use crate::seal::{KEY_LEN, SealError, SealingKey};
use crate::with_pool;

/// How a protected value begins.
pub const PROTECTED_PREFIX: &str = "personal:v1:";
/// What readers show in place of a field whose subject was erased.
pub const ERASED: &str = "[erased]";
/// The event that says a subject was erased (its `user_id` names them).
pub const ERASURE_EVENT: &str = "user.erased";
/// How long a process keeps a subject's unwrapped key (or their erasure) in memory.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Subjects whose keys one process keeps in memory at most.
const CACHE_CAPACITY: usize = 10_000;
/// The additional data of a wrapped key, beside the subject.
const WRAPPED_KEY: &str = "privacy-data-key";
/// Names no account or actor ([`is_subject_id`] refuses the prefix, so nobody erases it):
/// the subject whose key, stored and wrapped like every other, makes the keyed digests of
/// [`Privacy::digest`].
const RESERVED_PREFIX: &str = "herald:";
const LOOKUP_SUBJECT: &str = "herald:lookup";

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error(
        "the key-encryption key file {0} is unusable: {1}; it holds one key per line, 32 bytes \
         in base64 (`openssl rand -base64 32`)"
    )]
    KekFile(String, String),
    #[error("the subject's data was erased: nothing new is protected for them")]
    Erased,
    #[error(
        "a data key is wrapped by key-encryption key {0}, which the key file does not hold: \
         add it back to the file (a rotation keeps old keys until it has rewrapped everything)"
    )]
    UnknownKek(String),
    #[error("a protected value or a wrapped key is damaged or was moved: {0}")]
    Damaged(#[from] SealError),
    #[error("the event names no data subject: its {0} is missing or not a string")]
    NoSubject(String),
    #[error("the key store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("the key store's migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The key-encryption keys, read from their file: the first wraps, any unwraps.
pub struct Keks {
    keys: Vec<SealingKey>,
}

impl std::fmt::Debug for Keks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ids only: SealingKey shows nothing else.
        f.debug_list().entries(&self.keys).finish()
    }
}

impl Keks {
    /// Reads the key file: one base64 key per line, blank lines and `#` comments ignored.
    pub fn read(path: &Path) -> Result<Self, PrivacyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|err| PrivacyError::KekFile(shown.clone(), err.to_string()))?;
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .enumerate()
            .map(|(n, line)| {
                SealingKey::from_base64(&SecretString::from(line)).map_err(|err| {
                    PrivacyError::KekFile(shown.clone(), format!("line {}: {err}", n + 1))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(PrivacyError::KekFile(shown, "it holds no key".into()));
        }
        Ok(Self { keys })
    }

    /// Puts a new key first in the file at `path`, keeping the others after it (to unwrap
    /// until everything is rewrapped); answers the new key's id. The file is replaced whole,
    /// never left half-written.
    pub fn prepend_new_key(path: &Path) -> Result<String, PrivacyError> {
        use secrecy::ExposeSecret as _;
        let shown = path.display().to_string();
        let old = std::fs::read_to_string(path)
            .map_err(|err| PrivacyError::KekFile(shown.clone(), err.to_string()))?;
        Self::read(path)?;
        let key = SealingKey::generate();
        let id = SealingKey::from_base64(&key)?.id().to_string();
        let next = path.with_extension("new");
        let _ = std::fs::remove_file(&next);
        write_private(&next, &format!("{}\n{old}", key.expose_secret()))
            .and_then(|()| std::fs::rename(&next, path))
            .map_err(|err| PrivacyError::KekFile(shown, err.to_string()))?;
        Ok(id)
    }

    /// Writes a file with one new key, unless `path` exists (`herald up`'s data folder).
    pub fn create_file(path: &Path) -> std::io::Result<bool> {
        use secrecy::ExposeSecret as _;
        if path.exists() {
            return Ok(false);
        }
        let key = SealingKey::generate();
        write_private(path, &format!("{}\n", key.expose_secret()))?;
        Ok(true)
    }

    /// The key that wraps new data keys.
    pub fn current(&self) -> &SealingKey {
        &self.keys[0]
    }

    fn wrap(&self, subject: &str, key: &[u8; KEY_LEN]) -> String {
        self.current()
            .seal(WRAPPED_KEY, subject, &URL_SAFE_NO_PAD.encode(key))
    }

    /// The data key `wrapped` holds, opened with the KEK that wrapped it.
    fn raw(&self, subject: &str, wrapped: &str) -> Result<[u8; KEY_LEN], PrivacyError> {
        let damaged = || PrivacyError::Damaged(SealError::Damaged);
        let id = kek_id(wrapped).ok_or_else(damaged)?;
        let kek = self
            .keys
            .iter()
            .find(|k| k.id() == id)
            .ok_or_else(|| PrivacyError::UnknownKek(id.to_string()))?;
        let text = kek.open(WRAPPED_KEY, subject, wrapped)?;
        URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .and_then(|raw| <[u8; KEY_LEN]>::try_from(raw).ok())
            .ok_or_else(damaged)
    }
}

/// The id of the KEK that wrapped `wrapped` (`sealed:v1:<id>:...`).
fn kek_id(wrapped: &str) -> Option<&str> {
    wrapped
        .strip_prefix(crate::seal::SEALED_PREFIX)?
        .split_once(':')
        .map(|(id, _)| id)
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// A subject's key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Wrapped by a KEK.
    Live(String),
    Erased,
}

/// Where data keys are kept: a table every service's database shares.
#[async_trait::async_trait]
pub trait KeyStore: Send + Sync {
    async fn get(&self, subject: &str) -> Result<Option<Stored>, PrivacyError>;
    /// Stores each `(subject, wrapped)` unless something is stored for the subject already,
    /// in one transaction; answers what is stored now for each, in order (another process
    /// may have made a subject's key first).
    async fn create_all(
        &self,
        keys: &[(String, String)],
        now_us: i64,
    ) -> Result<Vec<Stored>, PrivacyError>;
    /// Deletes the subject's key for good; `false` if it was erased already or never made
    /// (an erased subject is remembered either way).
    async fn erase(&self, subject: &str, now_us: i64) -> Result<bool, PrivacyError>;
    /// Up to `limit` live keys wrapped by another KEK than `kek_id`.
    async fn wrapped_by_others(
        &self,
        kek_id: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, PrivacyError>;
    /// Replaces `old` by `new` for `subject`, if `old` is still what is stored.
    async fn rewrap(&self, subject: &str, old: &str, new: &str) -> Result<bool, PrivacyError>;
}

/// The key store in the deployment's database (`privacy_keys`).
pub struct SqlKeyStore {
    db: Database,
}

impl SqlKeyStore {
    pub async fn new(db: Database) -> Result<Self, PrivacyError> {
        crate::db::migrate(
            &db,
            sqlx::migrate!("./migrations/postgres"),
            sqlx::migrate!("./migrations/sqlite"),
        )
        .await?;
        Ok(Self { db })
    }
}

fn stored(row: Option<(Option<String>,)>) -> Option<Stored> {
    row.map(|(wrapped,)| wrapped.map_or(Stored::Erased, Stored::Live))
}

#[async_trait::async_trait]
impl KeyStore for SqlKeyStore {
    async fn get(&self, subject: &str) -> Result<Option<Stored>, PrivacyError> {
        let row: Option<(Option<String>,)> = with_pool!(&self.db, pool => {
            sqlx::query_as("SELECT wrapped FROM privacy_keys WHERE subject = $1")
                .bind(subject)
                .fetch_optional(pool)
                .await?
        });
        Ok(stored(row))
    }

    async fn create_all(
        &self,
        keys: &[(String, String)],
        now_us: i64,
    ) -> Result<Vec<Stored>, PrivacyError> {
        let insert = "INSERT INTO privacy_keys (subject, wrapped, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (subject) DO NOTHING";
        let select = "SELECT wrapped FROM privacy_keys WHERE subject = $1";
        let rows: Vec<Option<(Option<String>,)>> = with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for (subject, wrapped) in keys {
                sqlx::query(insert)
                    .bind(subject)
                    .bind(wrapped)
                    .bind(now_us)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut rows = Vec::with_capacity(keys.len());
            for (subject, _) in keys {
                rows.push(sqlx::query_as(select).bind(subject).fetch_optional(&mut *tx).await?);
            }
            tx.commit().await?;
            rows
        });
        rows.into_iter()
            .map(|row| stored(row).ok_or(PrivacyError::Store(sqlx::Error::RowNotFound)))
            .collect()
    }

    async fn erase(&self, subject: &str, now_us: i64) -> Result<bool, PrivacyError> {
        Ok(with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let erased = sqlx::query(
                "UPDATE privacy_keys SET wrapped = NULL, erased_at = $2 \
                 WHERE subject = $1 AND wrapped IS NOT NULL",
            )
            .bind(subject)
            .bind(now_us)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            sqlx::query(
                "INSERT INTO privacy_keys (subject, wrapped, created_at, erased_at) \
                 VALUES ($1, NULL, $2, $2) ON CONFLICT (subject) DO NOTHING",
            )
            .bind(subject)
            .bind(now_us)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            // The wrapped key must not outlive its row in the write-ahead log either.
            self.db.forget_deleted();
            erased
        }))
    }

    async fn wrapped_by_others(
        &self,
        kek_id: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, PrivacyError> {
        let current = format!("{}{kek_id}:%", crate::seal::SEALED_PREFIX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as(
                "SELECT subject, wrapped FROM privacy_keys \
                 WHERE wrapped IS NOT NULL AND wrapped NOT LIKE $1 ORDER BY subject LIMIT $2",
            )
            .bind(&current)
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }

    async fn rewrap(&self, subject: &str, old: &str, new: &str) -> Result<bool, PrivacyError> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query("UPDATE privacy_keys SET wrapped = $3 WHERE subject = $1 AND wrapped = $2")
                .bind(subject)
                .bind(old)
                .bind(new)
                .execute(pool)
                .await?
                .rows_affected()
                == 1
        }))
    }
}

/// What a protected value is to a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revealed {
    Plain(String),
    /// Its subject was erased: the value is gone for good.
    Erased,
}

/// A subject's data key, ready to protect with (from [`Privacy::keys_for`]).
#[derive(Clone)]
pub struct SubjectKey(Arc<SealingKey>);

/// A subject's key as a process remembers it.
#[derive(Clone)]
enum Known {
    Key(Arc<SealingKey>),
    Erased,
}

/// Protects and reveals personal fields, keeping subjects' keys a short while.
pub struct Privacy {
    keks: std::sync::RwLock<(Arc<Keks>, Instant)>,
    /// Where the KEKs were read from, read again after a rotation elsewhere (see
    /// [`Privacy::keks`]).
    kek_file: Option<std::path::PathBuf>,
    store: Arc<dyn KeyStore>,
    cache: Mutex<HashMap<String, (Known, Instant)>>,
    /// The key of [`Privacy::digest`], read (or made) once.
    lookup: tokio::sync::OnceCell<aws_lc_rs::hmac::Key>,
}

impl Privacy {
    pub fn new(keks: Keks, store: Arc<dyn KeyStore>) -> Self {
        Self {
            keks: std::sync::RwLock::new((Arc::new(keks), Instant::now())),
            kek_file: None,
            store,
            cache: Mutex::default(),
            lookup: tokio::sync::OnceCell::new(),
        }
    }

    /// With the KEKs of `file`, which it reads again every [`CACHE_TTL`] and whenever it
    /// meets a key wrapped by a KEK it does not hold: a rotation (`herald privacy
    /// rotate-key`) reaches running processes without a restart.
    pub fn from_file(file: &Path, store: Arc<dyn KeyStore>) -> Result<Self, PrivacyError> {
        let mut privacy = Self::new(Keks::read(file)?, store);
        privacy.kek_file = Some(file.to_path_buf());
        Ok(privacy)
    }

    /// The KEKs, read again from their file when they are older than [`CACHE_TTL`] or
    /// `stale` (an unknown KEK was met). A file that no longer reads keeps the ones held.
    fn keks(&self, stale: bool) -> Arc<Keks> {
        let (keks, at) = self
            .keks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(file) = &self.kek_file else {
            return keks;
        };
        if !stale && at.elapsed() < CACHE_TTL {
            return keks;
        }
        let fresh = match Keks::read(file) {
            Ok(fresh) => Arc::new(fresh),
            Err(err) => {
                tracing::warn!(%err, "the key-encryption key file no longer reads; keeping the keys read before");
                keks
            }
        };
        *self.keks.write().unwrap_or_else(PoisonError::into_inner) =
            (fresh.clone(), Instant::now());
        fresh
    }

    /// The data key `wrapped` holds, reading the KEK file again once if its KEK is not among
    /// those held.
    fn raw_key(&self, subject: &str, wrapped: &str) -> Result<[u8; KEY_LEN], PrivacyError> {
        match self.keks(false).raw(subject, wrapped) {
            Err(PrivacyError::UnknownKek(_)) if self.kek_file.is_some() => {
                self.keks(true).raw(subject, wrapped)
            }
            other => other,
        }
    }

    fn unwrap_key(&self, subject: &str, wrapped: &str) -> Result<SealingKey, PrivacyError> {
        Ok(SealingKey::from_bytes(&self.raw_key(subject, wrapped)?)?)
    }

    /// A keyed digest (HMAC-SHA-256) of `value` for `purpose`: what a store keeps to find a
    /// personal value it holds only encrypted, such as the account of an email at sign-in.
    /// The same value and purpose give the same digest in every process sharing the key
    /// store; without the key, a digest tells nothing, not even by trying likely values.
    pub async fn digest(&self, purpose: &str, value: &str) -> Result<String, PrivacyError> {
        use aws_lc_rs::hmac;
        let key = self
            .lookup
            .get_or_try_init(|| async {
                let stored = match self.store.get(LOOKUP_SUBJECT).await? {
                    Some(stored) => stored,
                    None => {
                        let mut raw = [0u8; KEY_LEN];
                        aws_lc_rs::rand::fill(&mut raw).expect("the system's random source works");
                        let wrapped = self.keks(false).wrap(LOOKUP_SUBJECT, &raw);
                        let made = [(LOOKUP_SUBJECT.to_string(), wrapped)];
                        let mut stored =
                            self.store.create_all(&made, crate::clock::now_us()).await?;
                        stored.pop().unwrap_or(Stored::Erased)
                    }
                };
                let Stored::Live(wrapped) = stored else {
                    return Err(PrivacyError::Erased);
                };
                // Derived, so the stored key never serves two algorithms.
                let raw = self.raw_key(LOOKUP_SUBJECT, &wrapped)?;
                let derived = hmac::sign(
                    &hmac::Key::new(hmac::HMAC_SHA256, &raw),
                    b"herald lookup digest v1",
                );
                Ok(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
            })
            .await?;
        let mut context = hmac::Context::with_key(key);
        context.update(purpose.as_bytes());
        context.update(&[0]);
        context.update(value.as_bytes());
        Ok(URL_SAFE_NO_PAD.encode(context.sign().as_ref()))
    }

    fn cached(&self, subject: &str) -> Option<Known> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache
            .get(subject)
            .filter(|(_, at)| at.elapsed() < CACHE_TTL)
            .map(|(known, _)| known.clone())
    }

    fn remember(&self, subject: &str, known: Known) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(subject.to_string(), (known, Instant::now()));
    }

    fn known(&self, subject: &str, stored: &Stored) -> Result<Known, PrivacyError> {
        let known = match stored {
            Stored::Live(wrapped) => Known::Key(Arc::new(self.unwrap_key(subject, wrapped)?)),
            Stored::Erased => Known::Erased,
        };
        self.remember(subject, known.clone());
        Ok(known)
    }

    /// The subject's key, made if they have none yet (`create`).
    async fn key(&self, subject: &str, create: bool) -> Result<Option<Known>, PrivacyError> {
        if let Some(known) = self.cached(subject) {
            return Ok(Some(known));
        }
        if let Some(stored) = self.store.get(subject).await? {
            return self.known(subject, &stored).map(Some);
        }
        if !create {
            return Ok(None);
        }
        Ok(self.create(&[subject]).await?.pop())
    }

    /// Makes (and keeps) a key for each of `subjects`, in one write of the store; answers
    /// what each has now (another process may have made one first, or erased them).
    async fn create(&self, subjects: &[&str]) -> Result<Vec<Known>, PrivacyError> {
        let keks = self.keks(false);
        let keys: Vec<(String, String)> = subjects
            .iter()
            .map(|subject| {
                let mut raw = [0u8; KEY_LEN];
                aws_lc_rs::rand::fill(&mut raw).expect("the system's random source works");
                (subject.to_string(), keks.wrap(subject, &raw))
            })
            .collect();
        let stored = self.store.create_all(&keys, crate::clock::now_us()).await?;
        subjects
            .iter()
            .zip(&stored)
            .map(|(subject, stored)| self.known(subject, stored))
            .collect()
    }

    /// The keys of `subjects`, to protect many fields with ([`Privacy::protect_avro_with`]):
    /// those in memory as they are, and for the others one write of the store that makes
    /// the keys of those who have none (a batch of events about many new people costs one
    /// transaction, not one each). `None` for a subject who was erased.
    pub async fn keys_for(
        &self,
        subjects: &[&str],
    ) -> Result<Vec<Option<SubjectKey>>, PrivacyError> {
        let mut known: Vec<Option<Known>> = subjects.iter().map(|s| self.cached(s)).collect();
        let missing: Vec<&str> = subjects
            .iter()
            .zip(&known)
            .filter(|(_, known)| known.is_none())
            .map(|(subject, _)| *subject)
            .collect();
        if !missing.is_empty() {
            let mut made = self.create(&missing).await?.into_iter();
            for slot in known.iter_mut().filter(|k| k.is_none()) {
                *slot = made.next();
            }
        }
        Ok(known
            .into_iter()
            .map(|known| match known {
                Some(Known::Key(key)) => Some(SubjectKey(key)),
                _ => None,
            })
            .collect())
    }

    /// `plain`, the value of `field` about `subject`, encrypted with the subject's key.
    pub async fn protect(
        &self,
        subject: &str,
        field: &str,
        plain: &str,
    ) -> Result<String, PrivacyError> {
        match self.key(subject, true).await? {
            Some(Known::Key(key)) => Ok(protect_with(&key, subject, field, plain)),
            _ => Err(PrivacyError::Erased),
        }
    }

    /// A field's value as a reader may see it: a protected value decrypted, or
    /// [`Revealed::Erased`] once its subject was erased; any other text as it is.
    pub async fn reveal(
        &self,
        subject: &str,
        field: &str,
        text: &str,
    ) -> Result<Revealed, PrivacyError> {
        if !is_protected(text) {
            return Ok(Revealed::Plain(text.to_string()));
        }
        match self.key(subject, false).await? {
            Some(Known::Key(key)) => Ok(Revealed::Plain(reveal_with(&key, subject, field, text)?)),
            // No key was ever stored: the value was protected with one since erased from a
            // restored store, or in another deployment. Either way nothing can read it.
            Some(Known::Erased) | None => Ok(Revealed::Erased),
        }
    }

    /// Deletes the subject's key: everything protected for them becomes unreadable.
    /// `false`: nothing was protected for them, or they were erased before.
    pub async fn erase(&self, subject: &str) -> Result<bool, PrivacyError> {
        let erased = self.store.erase(subject, crate::clock::now_us()).await?;
        self.remember(subject, Known::Erased);
        Ok(erased)
    }

    /// Treats the subject as erased in this process from now on, without asking the store:
    /// what a consumer does on an erasure event, so that no key it still holds in memory
    /// reveals anything of theirs after it.
    pub fn forget(&self, subject: &str) {
        self.remember(subject, Known::Erased);
    }

    /// Rewraps every data key with the first key of the key file, in batches; answers how
    /// many were rewrapped. Run again after an interruption: keys already rewrapped are
    /// skipped, and until the end the old KEK must stay in the file.
    pub async fn rotate(&self) -> Result<usize, PrivacyError> {
        let keks = self.keks(true);
        let current = keks.current().id().to_string();
        let mut done = 0;
        loop {
            let batch = self.store.wrapped_by_others(&current, 500).await?;
            if batch.is_empty() {
                return Ok(done);
            }
            for (subject, old) in batch {
                let new = keks.wrap(&subject, &keks.raw(&subject, &old)?);
                if self.store.rewrap(&subject, &old, &new).await? {
                    done += 1;
                }
            }
        }
    }
}

/// Whom an event's data is about, by its schema's `herald.personal.subject`; `None` when the
/// schema marks nothing.
pub fn subject_of<'a>(
    schema: &'a events::SchemaVersion,
    actor: &'a str,
    data: &'a serde_json::Value,
) -> Result<Option<&'a str>, PrivacyError> {
    let Some(personal) = &schema.personal else {
        return Ok(None);
    };
    match &personal.subject {
        events::Owner::Actor => Ok(Some(actor)),
        events::Owner::Field(field) => data
            .get(field)
            .and_then(serde_json::Value::as_str)
            .map(Some)
            .ok_or_else(|| PrivacyError::NoSubject(field.clone())),
    }
}

/// The fields `schema` marks personal, and whom `data` is about; `None` when it marks none.
fn marked<'a>(
    schema: &'a events::SchemaVersion,
    actor: &str,
    data: &serde_json::Value,
) -> Result<Option<(&'a [String], String)>, PrivacyError> {
    Ok(match (&schema.personal, subject_of(schema, actor, data)?) {
        (Some(personal), Some(subject)) => Some((&personal.fields, subject.to_string())),
        _ => None,
    })
}

impl Privacy {
    /// Protects, in place, every personal field `schema` marks in `data` (an event's data as
    /// JSON) that holds a string; `actor` is the event's actor. Every one, even text that
    /// looks protected: a client's `personal:v1:...` is its own text, and encrypted like any
    /// other it reads back as it was sent rather than as a damaged value.
    pub async fn protect_data(
        &self,
        schema: &events::SchemaVersion,
        actor: &str,
        data: &mut serde_json::Value,
    ) -> Result<(), PrivacyError> {
        let Some((fields, subject)) = marked(schema, actor, data)? else {
            return Ok(());
        };
        for field in fields {
            if let Some(serde_json::Value::String(value)) = data.get_mut(field) {
                *value = self.protect(&subject, field, value).await?;
            }
        }
        Ok(())
    }

    /// Whom `avro`, an event's encoded data (of `schema`), is about; `None` when the type
    /// marks nothing.
    pub fn subject_in_avro<'a>(
        schema: &events::SchemaVersion,
        actor: &'a str,
        avro: &'a [u8],
    ) -> Result<Option<&'a str>, PrivacyError> {
        let Some(personal) = &schema.personal else {
            return Ok(None);
        };
        let events::Owner::Field(field) = &personal.subject else {
            return Ok(Some(actor));
        };
        let spans = schema
            .string_spans(avro, &[field.as_str()])
            .map_err(|_| PrivacyError::Damaged(SealError::Damaged))?;
        match spans.first().and_then(Option::as_ref) {
            Some(span) => std::str::from_utf8(&avro[span.text.clone()])
                .map(Some)
                .map_err(|_| PrivacyError::Damaged(SealError::Damaged)),
            None => Err(PrivacyError::NoSubject(field.clone())),
        }
    }

    /// `avro`, an event's encoded data (of `schema`), about `subject` (from
    /// [`Privacy::subject_in_avro`]), with every personal field protected with `key` (from
    /// [`Privacy::keys_for`]) in its binary, the rest untouched: what the ingress publishes.
    /// Every value is protected, as by [`Privacy::protect_data`].
    pub fn protect_avro_with(
        key: &SubjectKey,
        schema: &events::SchemaVersion,
        subject: &str,
        avro: &[u8],
    ) -> Result<Vec<u8>, PrivacyError> {
        let Some(personal) = &schema.personal else {
            return Ok(avro.to_vec());
        };
        let names: Vec<&str> = personal.fields.iter().map(String::as_str).collect();
        let spans = schema
            .string_spans(avro, &names)
            .map_err(|_| PrivacyError::Damaged(SealError::Damaged))?;
        let mut protected = Vec::with_capacity(names.len());
        for (field, span) in names.iter().zip(spans) {
            if let Some(span) = span {
                let plain = std::str::from_utf8(&avro[span.text.clone()])
                    .map_err(|_| SealError::Damaged)?;
                let value = protect_with(&key.0, subject, field, plain);
                protected.push((span, value));
            }
        }
        let replaced: Vec<(events::StringSpan, &str)> = protected
            .iter()
            .map(|(span, value)| (span.clone(), value.as_str()))
            .collect();
        Ok(events::SchemaVersion::with_strings(avro, &replaced))
    }

    /// Reveals, in place, every protected field of an event's data: its plain text, or
    /// [`ERASED`] once its subject was erased.
    pub async fn reveal_data(
        &self,
        schema: &events::SchemaVersion,
        actor: &str,
        data: &mut serde_json::Value,
    ) -> Result<(), PrivacyError> {
        let Some((fields, subject)) = marked(schema, actor, data)? else {
            return Ok(());
        };
        for field in fields {
            if let Some(serde_json::Value::String(value)) = data.get_mut(field) {
                *value = match self.reveal(&subject, field, value).await? {
                    Revealed::Plain(plain) => plain,
                    Revealed::Erased => ERASED.to_string(),
                };
            }
        }
        Ok(())
    }
}

/// Reveals for code that runs outside the async runtime (a replay's decoding threads),
/// waiting on the runtime it was made in.
#[derive(Clone)]
pub struct BlockingRevealer {
    privacy: Arc<Privacy>,
    catalog: Arc<events::Catalog>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for BlockingRevealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockingRevealer")
    }
}

impl BlockingRevealer {
    /// Call it within the runtime; use it from any thread but the runtime's own.
    pub fn new(privacy: Arc<Privacy>, catalog: Arc<events::Catalog>) -> Self {
        Self {
            privacy,
            catalog,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// An event's data as JSON text with its personal fields revealed (or [`ERASED`]), and
    /// everything else as it was, in its order: `None` when there was nothing to reveal.
    pub fn reveal_text(
        &self,
        event_type: &str,
        actor: &str,
        text: &str,
    ) -> Result<Option<String>, PrivacyError> {
        let Some(schema) = self
            .catalog
            .latest(event_type)
            .filter(|schema| schema.personal.is_some())
        else {
            return Ok(None);
        };
        if !text.contains(PROTECTED_PREFIX) {
            return Ok(None);
        }
        let Ok(data) = serde_json::from_str::<serde_json::Value>(text) else {
            return Ok(None);
        };
        let Some((fields, subject)) = marked(schema, actor, &data)? else {
            return Ok(None);
        };
        let mut revealed = text.to_string();
        for field in fields {
            let Some(value) = data.get(field).and_then(|v| v.as_str()) else {
                continue;
            };
            if !is_protected(value) {
                continue;
            }
            let plain = match self
                .runtime
                .block_on(self.privacy.reveal(&subject, field, value))
            {
                Ok(Revealed::Plain(plain)) => plain,
                Ok(Revealed::Erased) => ERASED.to_string(),
                // A value that does not open is shown as the log holds it: one damaged
                // event does not stop a reader of all the others.
                Err(PrivacyError::Damaged(_)) => continue,
                Err(err) => return Err(err),
            };
            // A protected value is base64url and colons: its JSON text is itself, quoted,
            // and its random nonce makes it the only one of its kind in the text.
            revealed = revealed.replacen(
                &format!("\"{value}\""),
                &serde_json::Value::String(plain).to_string(),
                1,
            );
        }
        Ok(Some(revealed))
    }
}

/// Keys in memory: for tests, and a process that needs no database.
#[derive(Default)]
pub struct MemoryKeyStore {
    keys: Mutex<HashMap<String, Stored>>,
}

#[async_trait::async_trait]
impl KeyStore for MemoryKeyStore {
    async fn get(&self, subject: &str) -> Result<Option<Stored>, PrivacyError> {
        Ok(self.lock().get(subject).cloned())
    }

    async fn create_all(
        &self,
        keys: &[(String, String)],
        _: i64,
    ) -> Result<Vec<Stored>, PrivacyError> {
        let mut stored = self.lock();
        Ok(keys
            .iter()
            .map(|(subject, wrapped)| {
                stored
                    .entry(subject.clone())
                    .or_insert_with(|| Stored::Live(wrapped.clone()))
                    .clone()
            })
            .collect())
    }

    async fn erase(&self, subject: &str, _: i64) -> Result<bool, PrivacyError> {
        let before = self.lock().insert(subject.to_string(), Stored::Erased);
        Ok(matches!(before, Some(Stored::Live(_))))
    }

    async fn wrapped_by_others(
        &self,
        kek_id: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, PrivacyError> {
        let mut found: Vec<(String, String)> = self
            .lock()
            .iter()
            .filter_map(|(subject, stored)| match stored {
                Stored::Live(wrapped) if self::kek_id(wrapped) != Some(kek_id) => {
                    Some((subject.clone(), wrapped.clone()))
                }
                _ => None,
            })
            .collect();
        found.sort();
        found.truncate(limit);
        Ok(found)
    }

    async fn rewrap(&self, subject: &str, old: &str, new: &str) -> Result<bool, PrivacyError> {
        let mut keys = self.lock();
        match keys.get_mut(subject) {
            Some(Stored::Live(wrapped)) if wrapped == old => {
                *wrapped = new.to_string();
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

impl MemoryKeyStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stored>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `id` can name a data subject: what the contract's subject fields hold (an
/// account's id, an actor), never an empty, overlong or control-laden string, nor one of
/// the names Herald keeps for its own keys (`herald:...`). What the admin routes and the
/// command line check an id against before it reaches a store.
pub fn is_subject_id(id: &str) -> bool {
    (1..=200).contains(&id.chars().count())
        && !id.chars().any(char::is_control)
        && !id.starts_with(RESERVED_PREFIX)
}

/// Whether `text` is a protected value.
pub fn is_protected(text: &str) -> bool {
    text.starts_with(PROTECTED_PREFIX)
}

/// `sealed:v1:` and `personal:v1:` share the rest of the format.
fn protect_with(key: &SealingKey, subject: &str, field: &str, plain: &str) -> String {
    key.seal_as(PROTECTED_PREFIX, subject, field, plain)
}

fn reveal_with(
    key: &SealingKey,
    subject: &str,
    field: &str,
    text: &str,
) -> Result<String, PrivacyError> {
    let body = text
        .strip_prefix(PROTECTED_PREFIX)
        .ok_or(PrivacyError::Damaged(SealError::NotSealed))?;
    Ok(key.open(
        subject,
        field,
        &format!("{}{body}", crate::seal::SEALED_PREFIX),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret as _;

    fn key_file(dir: &Path, name: &str, keys: &[&SecretString]) -> std::path::PathBuf {
        let path = dir.join(name);
        let text: String = keys
            .iter()
            .map(|k| format!("{}\n", k.expose_secret()))
            .collect();
        std::fs::write(&path, format!("# key-encryption keys\n\n{text}")).unwrap();
        path
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "herald-privacy-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn privacy(keks: &Path, store: &Arc<dyn KeyStore>) -> Privacy {
        Privacy::new(Keks::read(keks).unwrap(), store.clone())
    }

    #[tokio::test]
    async fn digests_agree_across_processes_sharing_the_store_and_survive_a_rotation() {
        let dir = temp_dir("digest");
        let first = SealingKey::generate();
        let keks = key_file(&dir, "kek", &[&first]);
        let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::default());
        let one = privacy(&keks, &store);
        let digest = one.digest("email", "alice@example.com").await.unwrap();
        assert!(!digest.contains("alice"));
        assert_eq!(digest.len(), 43, "32 bytes in base64url");
        assert_ne!(
            digest,
            one.digest("phone", "alice@example.com").await.unwrap()
        );
        assert_ne!(
            digest,
            one.digest("email", "bob@example.com").await.unwrap()
        );
        let new = SealingKey::generate();
        let two = privacy(&key_file(&dir, "kek2", &[&new, &first]), &store);
        two.rotate().await.unwrap();
        // Another process, holding only the new key-encryption key.
        let other = privacy(&key_file(&dir, "kek3", &[&new]), &store);
        assert_eq!(
            two.digest("email", "alice@example.com").await.unwrap(),
            digest
        );
        assert_eq!(
            other.digest("email", "alice@example.com").await.unwrap(),
            digest
        );
        assert!(
            !is_subject_id(LOOKUP_SUBJECT),
            "nobody erases the digest key"
        );
    }

    #[tokio::test]
    async fn a_protected_value_opens_only_for_its_subject_and_field_until_the_subject_is_erased() {
        let dir = temp_dir("erase");
        let keks = key_file(&dir, "kek", &[&SealingKey::generate()]);
        let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::default());
        let privacy = privacy(&keks, &store);
        let email = privacy
            .protect("u-1", "email", "alice@example.com")
            .await
            .unwrap();
        assert!(is_protected(&email));
        assert!(!email.contains("alice"));
        assert_ne!(
            email,
            privacy
                .protect("u-1", "email", "alice@example.com")
                .await
                .unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(
            privacy.reveal("u-1", "email", &email).await.unwrap(),
            Revealed::Plain("alice@example.com".into())
        );
        assert!(matches!(
            privacy.reveal("u-1", "phone", &email).await,
            Err(PrivacyError::Damaged(_))
        ));
        let other = privacy
            .protect("u-2", "email", "bob@example.com")
            .await
            .unwrap();
        assert!(matches!(
            privacy.reveal("u-2", "email", &email).await,
            Err(PrivacyError::Damaged(_))
        ));
        assert_eq!(
            privacy
                .reveal("u-1", "email", "not protected")
                .await
                .unwrap(),
            Revealed::Plain("not protected".into())
        );

        // Erased: this process and a fresh one both read it as erased, and make nothing new.
        assert!(privacy.erase("u-1").await.unwrap());
        assert!(!privacy.erase("u-1").await.unwrap(), "once");
        assert_eq!(
            privacy.reveal("u-1", "email", &email).await.unwrap(),
            Revealed::Erased
        );
        let fresh = self::privacy(&keks, &store);
        assert_eq!(
            fresh.reveal("u-1", "email", &email).await.unwrap(),
            Revealed::Erased
        );
        assert!(matches!(
            fresh.protect("u-1", "email", "again@example.com").await,
            Err(PrivacyError::Erased)
        ));
        // Another subject is untouched.
        assert_eq!(
            fresh.reveal("u-2", "email", &other).await.unwrap(),
            Revealed::Plain("bob@example.com".into())
        );
        // A subject erased before anything was protected for them stays erased.
        assert!(!fresh.erase("u-3").await.unwrap());
        assert!(matches!(
            fresh.protect("u-3", "email", "c@example.com").await,
            Err(PrivacyError::Erased)
        ));
    }

    #[tokio::test]
    async fn a_rotation_rewraps_every_key_and_the_old_kek_can_then_go() {
        let dir = temp_dir("rotate");
        let (old, new) = (SealingKey::generate(), SealingKey::generate());
        let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::default());
        let before = privacy(&key_file(&dir, "old", &[&old]), &store);
        let mut values = Vec::new();
        for n in 0..1203 {
            let subject = format!("u-{n}");
            let value = before
                .protect(&subject, "name", &format!("name {n}"))
                .await
                .unwrap();
            values.push((subject, value));
        }
        before.erase("u-7").await.unwrap();
        let rotating = privacy(&key_file(&dir, "both", &[&new, &old]), &store);
        assert_eq!(rotating.rotate().await.unwrap(), 1202);
        assert_eq!(
            rotating.rotate().await.unwrap(),
            0,
            "nothing left to rewrap"
        );
        let after = privacy(&key_file(&dir, "new", &[&new]), &store);
        for (n, (subject, value)) in values.iter().enumerate() {
            let expected = if n == 7 {
                Revealed::Erased
            } else {
                Revealed::Plain(format!("name {n}"))
            };
            assert_eq!(
                after.reveal(subject, "name", value).await.unwrap(),
                expected
            );
        }
        // Without the rotation, the old KEK's absence is named.
        let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::default());
        let value = privacy(&key_file(&dir, "old2", &[&old]), &store)
            .protect("u-1", "name", "x")
            .await
            .unwrap();
        let err = privacy(&key_file(&dir, "new2", &[&new]), &store)
            .reveal("u-1", "name", &value)
            .await
            .unwrap_err();
        assert!(matches!(err, PrivacyError::UnknownKek(_)), "{err}");
    }

    #[tokio::test]
    async fn an_events_marked_fields_are_protected_for_its_subject_and_read_back_or_erased() {
        let dir = temp_dir("data");
        let keks = key_file(&dir, "kek", &[&SealingKey::generate()]);
        let store: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::default());
        let privacy = privacy(&keks, &store);
        let catalog = events::Catalog::embedded().unwrap();
        let registered = catalog.latest("user.registered").unwrap();
        let original = serde_json::json!({
            "user_id": "u-1", "email": "alice@example.com", "display_name": "Alice",
            "phone": null, "locale": "en", "time_zone": "UTC"
        });
        let mut data = original.clone();
        privacy
            .protect_data(registered, "auth", &mut data)
            .await
            .unwrap();
        assert_eq!(data["user_id"], "u-1", "the subject stays readable");
        assert_eq!(data["locale"], "en", "unmarked fields are untouched");
        assert!(data["phone"].is_null(), "a null stays null");
        for field in ["email", "display_name"] {
            assert!(
                is_protected(data[field].as_str().unwrap()),
                "{field}: {data}"
            );
        }
        privacy
            .reveal_data(registered, "auth", &mut data)
            .await
            .unwrap();
        assert_eq!(data, original);

        // Text a client sends that looks protected is its own text: encrypted like any
        // other, it reads back as sent (never as a damaged value that stops a reader).
        let mut forged = original.clone();
        forged["email"] = "personal:v1:0000:AAAA".into();
        privacy
            .protect_data(registered, "auth", &mut forged)
            .await
            .unwrap();
        assert_ne!(forged["email"], "personal:v1:0000:AAAA");
        privacy
            .reveal_data(registered, "auth", &mut forged)
            .await
            .unwrap();
        assert_eq!(forged["email"], "personal:v1:0000:AAAA");

        // A message is about its sender, the actor.
        let message = catalog.latest("message.sent").unwrap();
        let mut sent = serde_json::json!({"message_id": "m", "conversation_id": "c",
                                           "recipient_id": "bob", "body": "Lunch?"});
        privacy
            .protect_data(message, "alice-id", &mut sent)
            .await
            .unwrap();
        privacy.erase("alice-id").await.unwrap();
        let mut read = sent.clone();
        privacy
            .reveal_data(message, "alice-id", &mut read)
            .await
            .unwrap();
        assert_eq!(read["body"], ERASED);
        assert_eq!(read["recipient_id"], "bob");

        // An event without its subject cannot be protected; one of an unmarked type passes.
        let mut nameless = serde_json::json!({"email": "x@example.com"});
        assert!(matches!(
            privacy
                .protect_data(registered, "auth", &mut nameless)
                .await,
            Err(PrivacyError::NoSubject(_))
        ));
        let placed = catalog.latest("order.placed").unwrap();
        let mut order = serde_json::json!({"order_id": "o-1"});
        privacy
            .protect_data(placed, "alice", &mut order)
            .await
            .unwrap();
        assert_eq!(order, serde_json::json!({"order_id": "o-1"}));
    }

    #[test]
    fn a_bad_key_file_says_what_is_wrong() {
        let dir = temp_dir("files");
        let empty = dir.join("empty");
        std::fs::write(&empty, "# nothing\n").unwrap();
        assert!(
            Keks::read(&empty)
                .unwrap_err()
                .to_string()
                .contains("holds no key")
        );
        let bad = dir.join("bad");
        std::fs::write(&bad, "not base64!\n").unwrap();
        assert!(Keks::read(&bad).unwrap_err().to_string().contains("line 1"));
        assert!(Keks::read(&dir.join("missing")).is_err());
        let made = dir.join("made");
        assert!(Keks::create_file(&made).unwrap());
        assert!(!Keks::create_file(&made).unwrap(), "never overwritten");
        Keks::read(&made).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&made).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn the_sql_store_keeps_erases_and_rewraps_keys() {
        let dir = temp_dir("sql");
        let db = Database::connect(&format!("sqlite://{}", dir.join("keys.db").display()))
            .await
            .unwrap();
        let store = SqlKeyStore::new(db).await.unwrap();
        assert_eq!(store.get("u-1").await.unwrap(), None);
        let first = store
            .create_all(&[("u-1".into(), "sealed:v1:aaaa:x".into())], 1)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(first, Stored::Live("sealed:v1:aaaa:x".into()));
        assert_eq!(
            store
                .create_all(&[("u-1".into(), "sealed:v1:aaaa:y".into())], 2)
                .await
                .unwrap()
                .remove(0),
            first,
            "the first key stays"
        );
        store
            .create_all(&[("u-2".into(), "sealed:v1:bbbb:z".into())], 3)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            store.wrapped_by_others("aaaa", 10).await.unwrap(),
            [("u-2".to_string(), "sealed:v1:bbbb:z".to_string())]
        );
        assert!(
            store
                .rewrap("u-2", "sealed:v1:bbbb:z", "sealed:v1:aaaa:w")
                .await
                .unwrap()
        );
        assert!(
            !store
                .rewrap("u-2", "sealed:v1:bbbb:z", "sealed:v1:aaaa:v")
                .await
                .unwrap()
        );
        assert!(
            store
                .wrapped_by_others("aaaa", 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(store.erase("u-1", 4).await.unwrap());
        assert_eq!(store.get("u-1").await.unwrap(), Some(Stored::Erased));
        assert!(!store.erase("u-9", 5).await.unwrap());
        assert_eq!(store.get("u-9").await.unwrap(), Some(Stored::Erased));
        assert_eq!(
            store
                .create_all(&[("u-9".into(), "sealed:v1:aaaa:q".into())], 6)
                .await
                .unwrap()
                .remove(0),
            Stored::Erased,
            "an erased subject gets no key"
        );
    }
}
