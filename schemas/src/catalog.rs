//! The catalog of event types, loaded from `.avsc` files.
//!
//! A file `<event_type>.v<N>.avsc` holds version N of the event type's `data` record, with a
//! `herald` attribute naming its topic, key field and an example. The wire schema of a
//! version is the envelope's fields followed by `data` (see schemas/README.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::schema_compatibility::SchemaCompatibility;
use serde_json::{Value as Json, json};

use crate::direct::{DataSeed, Plan};
use crate::json::{self, Names};
use crate::personal::Personal;
use crate::rules::{self, DataFacts, Owner, Rule, StringSpan};

/// The 8-byte CRC-64-AVRO fingerprint of a wire schema's canonical form, as it appears in
/// single-object encoding (little-endian).
pub type Fingerprint = [u8; 8];

const ENVELOPE_FILE: &str = "_envelope.avsc";

/// One version of one event type.
#[derive(Debug)]
pub struct SchemaVersion {
    pub event_type: String,
    pub version: u32,
    /// The aggregate topic, without any deployment prefix.
    pub topic: String,
    /// The `data` field whose value is the record's Kafka key.
    pub key_field: String,
    pub doc: Option<String>,
    /// A `data` object that validates; served by the catalog endpoint.
    pub example: Json,
    /// The file as written: what analysts read.
    pub payload_json: Json,
    /// Envelope plus data: what is on the wire.
    pub wire_json: Json,
    pub wire: Schema,
    /// The Avro specification's fingerprint of the wire schema: what is written.
    pub fingerprint: Fingerprint,
    /// The fingerprint records written before 2026-12-06 carry (apache-avro 0.22's
    /// canonical form); read as an alias of [`Self::fingerprint`]. Equal to it for schemas
    /// without logical types.
    pub legacy_fingerprint: Fingerprint,
    pub(crate) data_schema: Schema,
    /// Named types of the wire schema (which holds the data schema's too).
    pub(crate) names: Names,
    /// The data schema compiled for encoding JSON text directly.
    plan: Option<Plan>,
    /// Whose an event of this type is (`herald.owner`); `None`: it changes another party's
    /// state, and no `user` may publish it.
    pub owner: Option<Owner>,
    /// Domain rules its data keeps (`herald.rules`).
    pub rules: Vec<&'static Rule>,
    /// Fields that carry a live secret (`herald.sealed`): on the log they hold only a value
    /// sealed for the service that delivers it (see `platform::seal`).
    pub sealed: Vec<String>,
    /// Whom the data is about and its fields of personal data (`herald.personal`, see
    /// [`crate::personal`]).
    pub personal: Option<Personal>,
    /// The roles that may read events of this type over HTTP (`herald.readers`): each reads
    /// every event of the type, but `user`, who reads only their own. By default
    /// [`DEFAULT_READERS`], and `user` too when the type has an owner.
    pub readers: Vec<String>,
}

/// Who reads a type's events when its schema does not say.
pub const DEFAULT_READERS: [&str; 3] = ["admin", "analyst", "service"];

impl SchemaVersion {
    /// The schema of the `data` record, for [`json::from_json`].
    pub fn data_schema(&self) -> &Schema {
        &self.data_schema
    }

    /// Validates a `data` object; errors carry JSON pointers under `base`.
    pub fn validate(
        &self,
        data: &Json,
        base: &str,
    ) -> Result<apache_avro::types::Value, Vec<json::FieldError>> {
        json::from_json(&self.data_schema, &self.names, data, base)
    }

    /// Appends the Avro binary of a `data` object given as JSON text and returns its
    /// aggregate id, when the data fits the schema. `None` says only "not here": call
    /// [`SchemaVersion::validate`] for what is wrong, or for data that fits in a way only it
    /// handles (see `direct`). `out` is left as it was on `None`.
    pub fn encode_json(&self, data: &str, out: &mut Vec<u8>) -> Option<String> {
        self.plan.as_ref()?.encode(data, out)
    }

    /// [`SchemaVersion::encode_json`] for a data object inside a larger JSON text (see
    /// [`DataSeed`]); `None` when this schema has no direct plan.
    pub fn data_seed<'a>(&'a self, out: &'a mut Vec<u8>) -> Option<DataSeed<'a>> {
        Some(self.plan.as_ref()?.seed(out))
    }

    /// Reads `avro`, this type's encoded data (from [`SchemaVersion::encode_json`] or
    /// [`SchemaVersion::encode_value`]), for its owner and checks its domain rules; broken
    /// rules are named by pointers under `base`.
    pub fn check_data<'a>(
        &'a self,
        avro: &'a [u8],
        base: &str,
    ) -> Result<DataFacts<'a>, Vec<json::FieldError>> {
        rules::check(
            &self.data_schema,
            &self.names,
            (self.owner.as_ref(), &self.rules, &self.sealed),
            avro,
            base,
        )
    }

    /// Where the named top-level string (or nullable string) fields sit in `avro`, this
    /// type's encoded data: each one's text as a range of `avro`, `None` when null. For
    /// rewriting a few fields without decoding the rest ([`SchemaVersion::with_strings`]).
    pub fn string_spans(
        &self,
        avro: &[u8],
        fields: &[&str],
    ) -> Result<Vec<Option<StringSpan>>, crate::CodecError> {
        Ok(rules::string_spans(
            &self.data_schema,
            &self.names,
            avro,
            fields,
        )?)
    }

    /// `avro` with the strings at `spans` (from [`SchemaVersion::string_spans`]) replaced.
    pub fn with_strings(avro: &[u8], spans: &[(StringSpan, &str)]) -> Vec<u8> {
        rules::replace_strings(avro, spans)
    }

    /// The name of the data field that holds the owner's id, when there is one.
    pub fn owner_field(&self) -> Option<&str> {
        match &self.owner {
            Some(Owner::Field(field)) => Some(field),
            _ => None,
        }
    }

    /// Appends the Avro binary of a value from [`SchemaVersion::validate`] to `out`.
    pub fn encode_value(
        &self,
        data: &apache_avro::types::Value,
        out: &mut Vec<u8>,
    ) -> Result<(), crate::CodecError> {
        Ok(crate::binary::encode(
            data,
            &self.data_schema,
            &self.names,
            out,
        )?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{file}: {reason}")]
    Invalid { file: String, reason: String },
    #[error("the schemas folder has no {ENVELOPE_FILE}")]
    NoEnvelope,
}

/// A version that cannot read what the version before it wrote.
#[derive(Debug, thiserror::Error)]
#[error("{event_type} v{reader} cannot read data written by v{writer}: {reason}")]
pub struct CompatibilityError {
    pub event_type: String,
    pub writer: u32,
    pub reader: u32,
    pub reason: String,
}

/// Every event type Herald knows, each with all its schema versions.
#[derive(Debug)]
pub struct Catalog {
    versions: BTreeMap<String, Vec<Arc<SchemaVersion>>>,
    by_fingerprint: HashMap<Fingerprint, Arc<SchemaVersion>>,
}

impl Catalog {
    /// The schemas compiled into this binary from `schemas/avro`.
    pub fn embedded() -> Result<Self, CatalogError> {
        Self::from_files(
            crate::embedded::EMBEDDED
                .iter()
                .map(|(name, text)| (name.to_string(), text.to_string())),
        )
    }

    /// Loads `(file name, contents)` pairs: every `*.avsc` of a schemas folder.
    pub fn from_files(
        files: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, CatalogError> {
        let files: BTreeMap<String, String> = files.into_iter().collect();
        let envelope = files.get(ENVELOPE_FILE).ok_or(CatalogError::NoEnvelope)?;
        let envelope = parse_json(ENVELOPE_FILE, envelope)?;
        let envelope_fields = envelope["fields"]
            .as_array()
            .cloned()
            .ok_or_else(|| invalid(ENVELOPE_FILE, "the envelope record has no fields".into()))?;

        let mut versions: BTreeMap<String, Vec<Arc<SchemaVersion>>> = BTreeMap::new();
        for (file, text) in files.iter().filter(|(name, _)| *name != ENVELOPE_FILE) {
            let version = load_version(file, text, &envelope_fields)?;
            versions
                .entry(version.event_type.clone())
                .or_default()
                .push(Arc::new(version));
        }
        let mut by_fingerprint = HashMap::new();
        for (event_type, list) in &mut versions {
            list.sort_by_key(|v| v.version);
            let first = &list[0];
            for v in list.iter() {
                if v.topic != first.topic || v.key_field != first.key_field {
                    return Err(invalid(
                        &format!("{event_type}.v{}.avsc", v.version),
                        "every version of an event type must keep its topic and key".into(),
                    ));
                }
                if let Some(other) = by_fingerprint.insert(v.fingerprint, v.clone()) {
                    return Err(invalid(
                        &format!("{event_type}.v{}.avsc", v.version),
                        format!(
                            "same wire schema as {} v{}",
                            other.event_type, other.version
                        ),
                    ));
                }
            }
        }
        // Old records name their schema by the legacy fingerprint: an alias, never in the
        // place of a current one.
        for list in versions.values() {
            for v in list {
                by_fingerprint
                    .entry(v.legacy_fingerprint)
                    .or_insert_with(|| v.clone());
            }
        }
        Ok(Self {
            versions,
            by_fingerprint,
        })
    }

    /// The newest version of an event type: what producers write.
    pub fn latest(&self, event_type: &str) -> Option<&Arc<SchemaVersion>> {
        self.versions.get(event_type).and_then(|list| list.last())
    }

    /// The newest version of every event type, by name.
    pub fn event_types(&self) -> impl Iterator<Item = &Arc<SchemaVersion>> {
        self.versions.values().filter_map(|list| list.last())
    }

    /// Every schema version of every event type.
    pub fn all_versions(&self) -> impl Iterator<Item = &Arc<SchemaVersion>> {
        self.versions.values().flatten()
    }

    pub fn by_fingerprint(&self, fingerprint: &Fingerprint) -> Option<&Arc<SchemaVersion>> {
        self.by_fingerprint.get(fingerprint)
    }

    /// The aggregate topics, without prefix.
    pub fn topics(&self) -> BTreeSet<&str> {
        self.event_types().map(|v| v.topic.as_str()).collect()
    }

    /// Each version must read data written by the one before it (backward compatibility).
    pub fn check_backward_compatibility(&self) -> Result<(), Vec<CompatibilityError>> {
        let errors: Vec<_> = self
            .versions
            .values()
            .flat_map(|list| list.windows(2))
            .filter_map(|pair| {
                let (old, new) = (&pair[0], &pair[1]);
                SchemaCompatibility::can_read(&old.wire, &new.wire)
                    .err()
                    .map(|err| CompatibilityError {
                        event_type: new.event_type.clone(),
                        writer: old.version,
                        reader: new.version,
                        reason: error_chain(&err),
                    })
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `herald.readers`, or the default for a type with `owner`.
fn readers(value: &Json, owner: Option<&Owner>) -> Result<Vec<String>, String> {
    let Json::Array(names) = value else {
        if !value.is_null() {
            return Err("herald.readers must be a list of role names".into());
        }
        let mut readers: Vec<String> = DEFAULT_READERS.iter().map(|r| r.to_string()).collect();
        if owner.is_some() {
            readers.push("user".into());
        }
        return Ok(readers);
    };
    let mut readers: Vec<String> = Vec::new();
    for name in names {
        let Some(role) = name.as_str().filter(|r| {
            !r.is_empty()
                && r.len() <= 64
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }) else {
            return Err(format!("herald.readers: {name} is not a role name"));
        };
        if readers.iter().any(|r| r == role) {
            return Err(format!("herald.readers names {role:?} twice"));
        }
        if role == "user" && owner.is_none() {
            return Err(
                "herald.readers names user, who reads only their own events: the type needs herald.owner".into(),
            );
        }
        readers.push(role.to_string());
    }
    Ok(readers)
}

fn invalid(file: &str, reason: String) -> CatalogError {
    CatalogError::Invalid {
        file: file.to_string(),
        reason,
    }
}

fn parse_json(file: &str, text: &str) -> Result<Json, CatalogError> {
    serde_json::from_str(text).map_err(|err| invalid(file, format!("not JSON: {err}")))
}

/// `order.placed.v2.avsc` -> (`order.placed`, 2)
fn parse_file_name(file: &str) -> Option<(String, u32)> {
    let stem = file.strip_suffix(".avsc")?;
    let (event_type, version) = stem.rsplit_once(".v")?;
    let version: u32 = version.parse().ok().filter(|v| *v > 0)?;
    let valid = !event_type.is_empty()
        && event_type.contains('.')
        && event_type
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
    valid.then(|| (event_type.to_string(), version))
}

fn load_version(
    file: &str,
    text: &str,
    envelope_fields: &[Json],
) -> Result<SchemaVersion, CatalogError> {
    let (event_type, version) = parse_file_name(file).ok_or_else(|| {
        invalid(
            file,
            "name it <event.type>.v<N>.avsc, in lowercase, N from 1".into(),
        )
    })?;
    let payload_json = parse_json(file, text)?;
    let herald = &payload_json["herald"];
    let topic = herald["topic"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| invalid(file, "the herald attribute must name a topic".into()))?
        .to_string();
    let key_field = herald["key"]
        .as_str()
        .ok_or_else(|| invalid(file, "the herald attribute must name a key field".into()))?
        .to_string();
    let example = herald["example"].clone();
    let owner = match &herald["owner"] {
        Json::Null => None,
        Json::String(owner) if owner == rules::ACTOR => Some(Owner::Actor),
        Json::String(field) => Some(Owner::Field(field.clone())),
        _ => {
            return Err(invalid(
                file,
                "herald.owner must be a field's name or \"@actor\"".into(),
            ));
        }
    };
    let readers =
        readers(&herald["readers"], owner.as_ref()).map_err(|reason| invalid(file, reason))?;
    let rules = match &herald["rules"] {
        Json::Null => Vec::new(),
        Json::Array(names) => names
            .iter()
            .map(|name| {
                name.as_str().and_then(rules::rule).ok_or_else(|| {
                    let known: Vec<&str> = rules::RULES.iter().map(|r| r.name).collect();
                    invalid(
                        file,
                        format!("herald.rules: {name} is not a rule; rules are {known:?}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid(
                file,
                "herald.rules must be a list of rule names".into(),
            ));
        }
    };

    let data_schema = Schema::parse(&payload_json).map_err(|err| {
        invalid(
            file,
            format!("not a valid Avro schema: {}", error_chain(&err)),
        )
    })?;
    let Schema::Record(record) = &data_schema else {
        return Err(invalid(file, "the schema must be a record".into()));
    };
    let key_schema = record
        .fields
        .iter()
        .find(|f| f.name == key_field)
        .map(|f| &f.schema)
        .ok_or_else(|| invalid(file, format!("the key field {key_field:?} is not a field")))?;
    let sealed: Vec<String> = match &herald["sealed"] {
        Json::Null => Vec::new(),
        Json::Array(names) => names
            .iter()
            .map(|name| {
                let name = name.as_str().unwrap_or_default();
                let field = record.fields.iter().find(|f| f.name == name);
                if field.is_some_and(|f| matches!(f.schema, Schema::String)) {
                    Ok(name.to_string())
                } else {
                    Err(invalid(
                        file,
                        format!("herald.sealed: {name:?} is not a string field of the data: only strings can be sealed"),
                    ))
                }
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(invalid(
                file,
                "herald.sealed must be a list of field names".into(),
            ));
        }
    };
    if let Some(Owner::Field(owner)) = &owner {
        let owner_schema = record.fields.iter().find(|f| &f.name == owner);
        if !owner_schema.is_some_and(|f| matches!(f.schema, Schema::String | Schema::Uuid(_))) {
            return Err(invalid(
                file,
                format!("the owner field {owner:?} must be a string or uuid field of the data"),
            ));
        }
    }
    if !matches!(key_schema, Schema::String | Schema::Uuid(_)) {
        return Err(invalid(
            file,
            format!("the key field {key_field:?} must be a string or uuid"),
        ));
    }
    let personal = crate::personal::parse(
        &herald["personal"],
        &crate::personal::Marked {
            record,
            key_field: &key_field,
            owner: owner.as_ref(),
            sealed: &sealed,
        },
    )
    .map_err(|reason| invalid(file, reason))?;

    let mut fields = envelope_fields.to_vec();
    fields.push(json!({"name": "data", "type": payload_json}));
    let wire_json = json!({
        "type": "record",
        "name": format!("{}Event", record.name.name()),
        "namespace": "herald.events",
        "doc": format!("{event_type} v{version}: the envelope and its data"),
        "fields": fields,
    });
    let wire = Schema::parse(&wire_json)
        .map_err(|err| invalid(file, format!("wire schema: {}", error_chain(&err))))?;
    let fingerprint = crate::canonical::fingerprint(&wire_json);
    // What records written before the specification's form carry: apache-avro 0.22's
    // canonical form keeps a logical type's `{"type": ...}`, so its fingerprint differs.
    let header = RabinFingerprintHeader::from_schema(&wire).build_header();
    let mut legacy_fingerprint = [0u8; 8];
    legacy_fingerprint.copy_from_slice(&header[2..10]);

    let names = json::collect_names(&wire);
    let plan = Plan::new(&data_schema, &names, &key_field);
    let version = SchemaVersion {
        event_type,
        version,
        topic,
        key_field,
        doc: payload_json["doc"].as_str().map(str::to_string),
        example,
        payload_json,
        wire_json,
        wire,
        fingerprint,
        legacy_fingerprint,
        data_schema,
        names,
        plan,
        owner,
        rules,
        sealed,
        personal,
        readers,
    };
    let example_fails = |errors: Vec<json::FieldError>| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        invalid(
            file,
            format!("the example does not validate: {}", list.join("; ")),
        )
    };
    let value = version
        .validate(&version.example, "/example")
        .map_err(example_fails)?;
    let mut encoded = Vec::new();
    version
        .encode_value(&value, &mut encoded)
        .map_err(|err| invalid(file, format!("the example does not encode: {err}")))?;
    version
        .check_data(&encoded, "/example")
        .map_err(example_fails)?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
        crate::embedded::EMBEDDED
            .iter()
            .chain(extra.iter())
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn strings_are_found_and_rewritten_in_place_and_the_rest_reads_as_before() {
        let catalog = Catalog::embedded().unwrap();
        let registered = catalog.latest("user.registered").unwrap();
        let data = json!({"user_id": "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11",
            "email": "é@example.com", "display_name": "Zoë", "phone": null,
            "locale": "fr", "time_zone": "Europe/Paris"});
        let mut avro = Vec::new();
        registered
            .encode_value(&registered.validate(&data, "").unwrap(), &mut avro)
            .unwrap();
        let spans = registered
            .string_spans(
                &avro,
                &["display_name", "phone", "email", "nothing", "user_id"],
            )
            .unwrap();
        assert_eq!(
            &avro[spans[4].clone().unwrap().text],
            b"0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11",
            "a UUID is a string on the wire"
        );
        assert_eq!(&avro[spans[0].clone().unwrap().text], "Zoë".as_bytes());
        assert_eq!(spans[1], None, "a null has no text");
        assert_eq!(
            &avro[spans[2].clone().unwrap().text],
            "é@example.com".as_bytes()
        );
        assert_eq!(spans[3], None, "no such field");
        // Longer text, whose length takes two bytes: every other field reads as it was.
        let long = "x".repeat(200);
        let rewritten = SchemaVersion::with_strings(
            &avro,
            &[
                (spans[2].clone().unwrap(), long.as_str()),
                (spans[0].clone().unwrap(), "Z"),
            ],
        );
        let mut input = rewritten.as_slice();
        let mut text = Vec::new();
        crate::binary::write_json(
            &registered.data_schema,
            &registered.names,
            &mut input,
            &mut text,
        )
        .unwrap();
        assert!(input.is_empty());
        let read: Json = serde_json::from_slice(&text).unwrap();
        let mut expected = data;
        expected["email"] = long.as_str().into();
        expected["display_name"] = "Z".into();
        assert_eq!(read, expected);
    }

    #[test]
    fn embedded_catalog_has_the_starter_event_types() {
        let catalog = Catalog::embedded().unwrap();
        let types: Vec<&str> = catalog
            .event_types()
            .map(|v| v.event_type.as_str())
            .collect();
        for expected in [
            "user.registered",
            "user.profile_updated",
            "user.deleted",
            "user.erased",
            "user.password_reset_requested",
            "otp.requested",
            "order.placed",
            "order.shipped",
            "message.sent",
            "campaign.launched",
            "report.generated",
            "notification.settled",
        ] {
            assert!(
                types.contains(&expected),
                "{expected} missing from {types:?}"
            );
        }
        assert_eq!(
            catalog.topics().into_iter().collect::<Vec<_>>(),
            [
                "campaigns",
                "messages",
                "notifications",
                "orders",
                "otp",
                "reports",
                "users"
            ]
        );
        assert_eq!(
            catalog.latest("order.placed").unwrap().key_field,
            "order_id"
        );
    }

    #[test]
    fn every_schema_version_reads_the_previous_one() {
        Catalog::embedded()
            .unwrap()
            .check_backward_compatibility()
            .unwrap_or_else(|errors| panic!("{errors:#?}"));
    }

    const V2_ADDS_OPTIONAL: &str = r#"{"type":"record","name":"OrderShipped","namespace":"herald.orders",
      "herald":{"topic":"orders","key":"order_id","example":{"order_id":"o","carrier":"c","shipped_at":"2026-01-01T00:00:00Z"}},
      "fields":[{"name":"order_id","type":"string"},{"name":"carrier","type":"string"},
        {"name":"tracking_number","type":["null","string"],"default":null},
        {"name":"shipped_at","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"eta_days","type":["null","int"],"default":null}]}"#;

    const V2_ADDS_REQUIRED: &str = r#"{"type":"record","name":"OrderShipped","namespace":"herald.orders",
      "herald":{"topic":"orders","key":"order_id","example":{"order_id":"o","carrier":"c","shipped_at":"2026-01-01T00:00:00Z","warehouse":"w"}},
      "fields":[{"name":"order_id","type":"string"},{"name":"carrier","type":"string"},
        {"name":"tracking_number","type":["null","string"],"default":null},
        {"name":"shipped_at","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"warehouse","type":"string"}]}"#;

    #[test]
    fn a_new_optional_field_is_backward_compatible() {
        let catalog =
            Catalog::from_files(files_with(&[("order.shipped.v2.avsc", V2_ADDS_OPTIONAL)]))
                .unwrap();
        assert_eq!(catalog.latest("order.shipped").unwrap().version, 2);
        catalog.check_backward_compatibility().unwrap();
    }

    #[test]
    fn a_new_required_field_fails_the_compatibility_check_naming_the_field() {
        let catalog =
            Catalog::from_files(files_with(&[("order.shipped.v2.avsc", V2_ADDS_REQUIRED)]))
                .unwrap();
        let errors = catalog.check_backward_compatibility().unwrap_err();
        assert_eq!(errors.len(), 1);
        let message = errors[0].to_string();
        assert!(message.contains("order.shipped v2"), "{message}");
        assert!(message.contains("warehouse"), "{message}");
    }

    #[test]
    fn a_schema_whose_example_does_not_validate_is_refused() {
        let bad = V2_ADDS_OPTIONAL.replace(r#""carrier":"c","#, "");
        let err = Catalog::from_files(files_with(&[("order.shipped.v2.avsc", bad.as_str())]))
            .unwrap_err();
        assert!(err.to_string().contains("/example/carrier"), "{err}");
    }

    /// `order.shipped` v2 with `herald.personal` set to `personal`.
    fn shipped_marked(personal: &str) -> Result<Catalog, CatalogError> {
        let marked = V2_ADDS_OPTIONAL.replace(
            r#""key":"order_id","#,
            &format!(r#""key":"order_id","personal":{personal},"#),
        );
        Catalog::from_files(files_with(&[("order.shipped.v2.avsc", marked.as_str())]))
    }

    #[test]
    fn personal_marks_are_read_and_leave_the_fingerprint_alone() {
        let plain = Catalog::from_files(files_with(&[("order.shipped.v2.avsc", V2_ADDS_OPTIONAL)]))
            .unwrap();
        let marked =
            shipped_marked(r#"{"subject":"carrier","fields":["tracking_number"]}"#).unwrap();
        let v2 = marked.latest("order.shipped").unwrap();
        assert_eq!(
            v2.personal,
            Some(Personal {
                subject: Owner::Field("carrier".into()),
                fields: vec!["tracking_number".into()],
            })
        );
        assert_eq!(
            v2.fingerprint,
            plain.latest("order.shipped").unwrap().fingerprint
        );
        let actor = shipped_marked(r#"{"subject":"@actor","fields":["carrier"]}"#).unwrap();
        assert_eq!(
            actor
                .latest("order.shipped")
                .unwrap()
                .personal
                .as_ref()
                .unwrap()
                .subject,
            Owner::Actor
        );
        // The embedded catalog's marks.
        let embedded = Catalog::embedded().unwrap();
        let registered = embedded.latest("user.registered").unwrap();
        assert_eq!(
            registered.personal.as_ref().unwrap().fields,
            ["email", "display_name", "phone"]
        );
    }

    #[test]
    fn a_mark_the_catalog_cannot_keep_is_refused_saying_why() {
        for (personal, says) in [
            (
                r#"{"subject":"carrier","fields":["shipped_at"]}"#,
                "not a string or a nullable string",
            ),
            (
                r#"{"subject":"carrier","fields":["eta_days"]}"#,
                "not a string or a nullable string",
            ),
            (
                r#"{"subject":"carrier","fields":["order_id"]}"#,
                "is the key field",
            ),
            (
                r#"{"subject":"carrier","fields":["carrier"]}"#,
                "is the subject",
            ),
            (
                r#"{"subject":"carrier","fields":["nope"]}"#,
                "is not a field of the data",
            ),
            (
                r#"{"subject":"carrier","fields":["tracking_number","tracking_number"]}"#,
                "twice",
            ),
            (r#"{"subject":"carrier","fields":[]}"#, "is empty"),
            (
                r#"{"subject":"shipped_at","fields":["carrier"]}"#,
                "must be a string or uuid field",
            ),
            (r#"{"fields":["carrier"]}"#, "must name the field"),
            (
                r#"{"subject":"carrier","fields":["tracking_number"],"keys":"x"}"#,
                "is not a setting",
            ),
            (r#"["carrier"]"#, "must be an object"),
        ] {
            let err = shipped_marked(personal).unwrap_err().to_string();
            assert!(err.contains(says), "{personal}: {err}");
        }
    }

    #[test]
    fn neither_the_owner_nor_a_sealed_field_can_be_marked() {
        let v1 = |name: &str| {
            crate::embedded::EMBEDDED
                .iter()
                .find(|(file, _)| *file == name)
                .unwrap()
                .1
        };
        let order = v1("order.placed.v1.avsc").replace(
            r#""owner": "customer_id","#,
            r#""owner": "customer_id", "personal": {"subject": "@actor", "fields": ["customer_id"]},"#,
        );
        let err = Catalog::from_files(files_with(&[("order.placed.v2.avsc", order.as_str())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is the owner field"), "{err}");
        let otp = v1("otp.requested.v1.avsc")
            .replace(r#""fields": ["phone"]"#, r#""fields": ["phone", "code"]"#);
        let err = Catalog::from_files(files_with(&[("otp.requested.v2.avsc", otp.as_str())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is sealed already"), "{err}");
    }

    #[test]
    fn readers_default_by_owner_and_a_list_is_checked() {
        let catalog = Catalog::embedded().unwrap();
        let placed = catalog.latest("order.placed").unwrap();
        assert_eq!(placed.readers, ["admin", "analyst", "service", "user"]);
        let shipped = catalog.latest("order.shipped").unwrap();
        assert_eq!(shipped.readers, ["admin", "analyst", "service"]);
        let v1 = |name: &str| {
            crate::embedded::EMBEDDED
                .iter()
                .find(|(file, _)| *file == name)
                .unwrap()
                .1
        };
        // The v1 file itself changed: a v2 with the same wire schema is refused as such.
        let with = |file: &str, from: &str, to: &str| {
            let text = v1(file).replace(from, to);
            Catalog::from_files(
                crate::embedded::EMBEDDED
                    .iter()
                    .map(|(n, t)| {
                        let t = if *n == file {
                            text.clone()
                        } else {
                            t.to_string()
                        };
                        (n.to_string(), t)
                    })
                    .collect::<Vec<(String, String)>>(),
            )
        };
        let listed = with(
            "order.placed.v1.avsc",
            r#""owner": "customer_id","#,
            r#""owner": "customer_id", "readers": ["admin", "user"],"#,
        )
        .unwrap();
        assert_eq!(
            listed.latest("order.placed").unwrap().readers,
            ["admin", "user"]
        );
        for (readers, says) in [
            (r#""readers": "admin","#, "must be a list"),
            (r#""readers": ["admin", "admin"],"#, "twice"),
            (r#""readers": ["no spaces"],"#, "not a role name"),
            (r#""readers": [""],"#, "not a role name"),
        ] {
            let err = with(
                "order.placed.v1.avsc",
                r#""owner": "customer_id","#,
                &format!(r#""owner": "customer_id", {readers}"#),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(says), "{readers}: {err}");
        }
        let err = with(
            "order.shipped.v1.avsc",
            r#""topic": "orders","#,
            r#""topic": "orders", "readers": ["user"],"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("needs herald.owner"), "{err}");
    }

    #[test]
    fn file_names_carry_type_and_version() {
        assert_eq!(
            parse_file_name("order.placed.v12.avsc"),
            Some(("order.placed".into(), 12))
        );
        assert_eq!(parse_file_name("order.placed.avsc"), None);
        assert_eq!(parse_file_name("Order.placed.v1.avsc"), None);
        assert_eq!(parse_file_name("order.placed.v0.avsc"), None);
    }
}
