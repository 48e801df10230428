//! Which event contract a service speaks: the schemas (built in, or a folder of `.avsc`
//! files) and the wire framing (single-object, or Confluent with a schema registry). Shared by
//! the ingress, which writes events, and every consumer, which reads them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use events::{Catalog, Codec, SchemaVersion, WireFormat};

use crate::db::Database;
use crate::kafka::KafkaArgs;
use crate::privacy::{Keks, Privacy, SqlKeyStore};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ContractArgs {
    /// A folder of .avsc files to use instead of the schemas built into the binary.
    #[arg(long, env = "SCHEMAS_DIR")]
    pub schemas_dir: Option<PathBuf>,
    /// Confluent-compatible schema registry: when set, events use the Confluent wire format
    /// and schemas are registered at start-up.
    #[arg(long, env = "SCHEMA_REGISTRY_URL", hide_env_values = true)]
    pub schema_registry_url: Option<String>,
    /// The key that seals live secrets on the log (OTP codes, reset links): 32 bytes in
    /// base64 (`openssl rand -base64 32`), or a file with SEALING_KEY_FILE. Needed by the
    /// services that write them (auth) and deliver them (notifications), and by no other.
    #[arg(long, env = "SEALING_KEY", hide_env_values = true)]
    pub sealing_key: Option<secrecy::SecretString>,
    /// The key-encryption key file of personal data: one key per line, 32 bytes in base64,
    /// the first wrapping new data keys (see `platform::privacy`). When set, the services
    /// that publish personal fields encrypt them per data subject and the consumers that
    /// need them decrypt them; without it they travel in plain text. `herald up` makes one in
    /// the data folder.
    #[arg(long, env = "PRIVACY_KEY_FILE")]
    pub privacy_key_file: Option<PathBuf>,
    /// Where the data subjects' keys are kept: a database every service of the deployment
    /// shares (default: the service's own DATABASE_URL).
    #[arg(long, env = "PRIVACY_DATABASE_URL", hide_env_values = true)]
    pub privacy_database_url: Option<String>,
    /// The privacy of the process, built once by `herald up` so that every service of it
    /// shares one cache (an erasure is then seen by all of them at once).
    #[arg(skip)]
    pub shared_privacy: Option<SharedPrivacy>,
}

/// A built [`Privacy`], carried in settings.
#[derive(Clone)]
pub struct SharedPrivacy(pub Arc<Privacy>);

impl std::fmt::Debug for SharedPrivacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedPrivacy")
    }
}

impl ContractArgs {
    /// Whether these settings load, connecting to nothing (`herald check`): the catalog,
    /// the registry's URL (not dialled) and the sealing key, which `sealing_for` (the
    /// service's reason, as for [`Self::sealing_key`]) requires. Returns the catalog.
    pub fn check(&self, sealing_for: Option<&str>) -> anyhow::Result<Catalog> {
        let catalog = self.catalog().context("SCHEMAS_DIR")?;
        if let Some(url) = &self.schema_registry_url {
            crate::net::check_http_url(url)
                .map_err(|reason| anyhow::anyhow!("SCHEMA_REGISTRY_URL: {reason}"))?;
        }
        match sealing_for {
            Some(who) => {
                self.sealing_key(who)?;
            }
            None if self.sealing_key.is_some() => {
                self.sealing_key("")?;
            }
            None => {}
        }
        if let Some(file) = &self.privacy_key_file {
            Keks::read(file).context("PRIVACY_KEY_FILE")?;
        }
        if let Some(url) = &self.privacy_database_url {
            Database::check_url(url).context("PRIVACY_DATABASE_URL")?;
        }
        Ok(catalog)
    }

    /// The sealing key, required by a service that seals or opens (`who` says which, for
    /// the message when it is missing).
    pub fn sealing_key(&self, who: &str) -> anyhow::Result<Arc<crate::seal::SealingKey>> {
        let text = self.sealing_key.as_ref().with_context(|| {
            format!(
                "SEALING_KEY (or SEALING_KEY_FILE) is not set: {who}; give the auth and \
                 notifications services the same key (`openssl rand -base64 32`)"
            )
        })?;
        Ok(Arc::new(crate::seal::SealingKey::from_base64(text)?))
    }

    /// The personal-data keys, when PRIVACY_KEY_FILE is set: in PRIVACY_DATABASE_URL, else
    /// in `db` (the service's database); a service without one needs PRIVACY_DATABASE_URL.
    pub async fn privacy(&self, db: Option<&Database>) -> anyhow::Result<Option<Arc<Privacy>>> {
        if let Some(SharedPrivacy(privacy)) = &self.shared_privacy {
            return Ok(Some(privacy.clone()));
        }
        let Some(file) = &self.privacy_key_file else {
            return Ok(None);
        };
        let db = match (&self.privacy_database_url, db) {
            (Some(url), _) => Database::connect(url)
                .await
                .context("PRIVACY_DATABASE_URL")?,
            (None, Some(db)) => db.clone(),
            (None, None) => anyhow::bail!(
                "PRIVACY_DATABASE_URL is not set: this service has no database of its own to \
                 find the data subjects' keys in; point it at the database the other services \
                 keep them in"
            ),
        };
        let store = SqlKeyStore::new(db).await?;
        Ok(Some(Arc::new(Privacy::from_file(file, Arc::new(store))?)))
    }

    /// Loads the catalog: the built-in schemas, or those of --schemas-dir.
    pub fn catalog(&self) -> anyhow::Result<Catalog> {
        let Some(dir) = &self.schemas_dir else {
            return Ok(Catalog::embedded()?);
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "avsc") {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                files.push((name, text));
            }
        }
        Ok(Catalog::from_files(files)?)
    }

    /// The codec of `catalog`. With a registry, every schema version is registered (which
    /// returns the existing id when it is known), so writers and readers agree on ids.
    pub async fn codec(&self, catalog: Arc<Catalog>, kafka: &KafkaArgs) -> anyhow::Result<Codec> {
        let format = match &self.schema_registry_url {
            None => WireFormat::SingleObject,
            Some(url) => {
                let mut ids = HashMap::new();
                for version in catalog.all_versions() {
                    let subject = format!("{}-{}", kafka.topic(&version.topic), wire_name(version));
                    let id =
                        crate::registry::register(url, &subject, &version.wire_json.to_string())
                            .await?;
                    ids.insert(version.fingerprint, id);
                }
                WireFormat::Confluent { ids }
            }
        };
        Ok(Codec::new(catalog, format))
    }
}

/// The record's full name: subjects follow the TopicRecordNameStrategy, since one topic
/// carries several event types.
fn wire_name(version: &SchemaVersion) -> String {
    let name = version.wire_json["name"].as_str().unwrap_or_default();
    format!("herald.events.{name}")
}

/// Encodes the events a service raises itself (a report is ready, a notification settled),
/// exactly as the ingress encodes a client's: validated against the catalog's newest
/// version, in the contract's wire framing, with the headers every tool reads.
pub struct Emitter {
    catalog: Arc<Catalog>,
    codec: Arc<Codec>,
    kafka: KafkaArgs,
    /// The service's name: the envelope's `source`, and its actor as `herald-{source}`.
    source: &'static str,
}

/// Why an event could not be encoded: a contract the code does not match, never the
/// input of a client. Fix the schema or the code; retrying does not help.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("the schemas lack {0}")]
    UnknownType(String),
    #[error("{event_type} does not fit its schema at {fields}")]
    Invalid { event_type: String, fields: String },
    #[error("encoding {0}")]
    Encode(#[from] events::CodecError),
}

impl Emitter {
    pub fn new(
        catalog: Arc<Catalog>,
        codec: Arc<Codec>,
        kafka: &KafkaArgs,
        source: &'static str,
    ) -> Self {
        Self {
            catalog,
            codec,
            kafka: kafka.clone(),
            source,
        }
    }

    /// The newest version of `event_type`'s schema, if the catalog has it.
    pub fn schema(&self, event_type: &str) -> Option<&Arc<SchemaVersion>> {
        self.catalog.latest(event_type)
    }

    /// The record of one `event_type` event about aggregate `key`, which happened at
    /// `occurred_at_us`, done by the service itself (actor `herald-{source}`). `event_id` is
    /// the caller's: derived from what the event says when the same fact may be emitted
    /// twice, so consumers count it once.
    pub fn record(
        &self,
        event_type: &str,
        event_id: uuid::Uuid,
        key: &str,
        data: &serde_json::Value,
        occurred_at_us: i64,
    ) -> Result<crate::kafka::OutgoingRecord, EmitError> {
        let actor = format!("herald-{}", self.source);
        self.record_by(&actor, event_type, event_id, key, data, occurred_at_us)
    }

    /// As [`Self::record`], done by `actor` (a user the service acts for).
    pub fn record_by(
        &self,
        actor: &str,
        event_type: &str,
        event_id: uuid::Uuid,
        key: &str,
        data: &serde_json::Value,
        occurred_at_us: i64,
    ) -> Result<crate::kafka::OutgoingRecord, EmitError> {
        let schema = self
            .schema(event_type)
            .ok_or_else(|| EmitError::UnknownType(event_type.into()))?;
        // The field paths only: values may be secrets.
        let value = schema
            .validate(data, "")
            .map_err(|errors| EmitError::Invalid {
                event_type: event_type.into(),
                fields: errors
                    .iter()
                    .map(|e| e.pointer.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let now = crate::clock::now_us();
        let envelope = events::Envelope {
            event_id,
            event_type: event_type.into(),
            occurred_at: crate::clock::at(occurred_at_us),
            received_at: crate::clock::at(now),
            actor: actor.into(),
            source: self.source.into(),
            idempotency_key: None,
        };
        let payload = self.codec.encode(schema, &envelope, &value)?;
        Ok(crate::kafka::OutgoingRecord::event(
            self.kafka.topic(&schema.topic),
            key.as_bytes().to_vec(),
            payload,
            event_type,
            &event_id.to_string(),
            now / 1000,
        ))
    }
}
