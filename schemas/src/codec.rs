//! Avro binary on the wire, in one of two framings:
//! - single-object encoding (`C3 01`, 8-byte schema fingerprint): resolvable from the
//!   schemas folder alone, the default;
//! - the Confluent wire format (`00`, 4-byte schema id): when a schema registry is
//!   configured, so Confluent-ecosystem readers can decode Herald topics.
//!
//! Decoding accepts both, whatever the configured writer framing.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use jiff::Timestamp;
use serde_json::Value as Json;
use uuid::Uuid;

use crate::{Catalog, Envelope, Fingerprint, SchemaVersion, json};

const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
const CONFLUENT_MAGIC: u8 = 0;

/// How encoded events are framed.
#[derive(Debug, Clone, Default)]
pub enum WireFormat {
    #[default]
    SingleObject,
    /// Schema ids as registered in a schema registry, by wire-schema fingerprint.
    Confluent { ids: HashMap<Fingerprint, u32> },
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("record too short or without a known magic byte: not a Herald event")]
    UnknownFraming,
    #[error("schema fingerprint {0:02x?} is not in the catalog: deploy the schema first")]
    UnknownFingerprint(Fingerprint),
    #[error("schema id {0} is not known to this codec: register the schema first")]
    UnknownSchemaId(u32),
    #[error("{event_type} v{version} has no schema id: register it with the schema registry")]
    Unregistered { event_type: String, version: u32 },
    #[error("avro: {0}")]
    Avro(#[from] apache_avro::Error),
    #[error(transparent)]
    Encode(#[from] crate::binary::EncodeError),
    #[error(transparent)]
    Decode(#[from] crate::binary::DecodeError),
    #[error("the record decoded but its envelope is malformed: {0}")]
    BadEnvelope(&'static str),
}

/// A decoded event: its envelope, the schema it was written with, and its data as JSON,
/// resolved to the newest version of its event type.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub envelope: Envelope,
    pub written_with: Arc<SchemaVersion>,
    pub data: Json,
}

/// A decoded event with its data as JSON text (an object, keys in schema order).
#[derive(Debug, Clone)]
pub struct DecodedText {
    pub envelope: Envelope,
    pub written_with: Arc<SchemaVersion>,
    pub data: String,
}

#[derive(Debug, Clone)]
pub struct Codec {
    catalog: Arc<Catalog>,
    format: WireFormat,
    by_id: HashMap<u32, Fingerprint>,
}

impl Codec {
    pub fn new(catalog: Arc<Catalog>, format: WireFormat) -> Self {
        let by_id = match &format {
            WireFormat::SingleObject => HashMap::new(),
            WireFormat::Confluent { ids } => ids.iter().map(|(fp, id)| (*id, *fp)).collect(),
        };
        Self {
            catalog,
            format,
            by_id,
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Encodes an event; `data` must come from [`SchemaVersion::validate`] of `schema`.
    pub fn encode(
        &self,
        schema: &SchemaVersion,
        envelope: &Envelope,
        data: &Value,
    ) -> Result<Vec<u8>, CodecError> {
        let mut encoded = Vec::with_capacity(128);
        schema.encode_value(data, &mut encoded)?;
        self.encode_bytes(schema, envelope, &encoded)
    }

    /// Encodes an event whose data is already Avro binary of `schema`'s data record, from
    /// [`SchemaVersion::encode_json`] or [`SchemaVersion::encode_value`].
    pub fn encode_bytes(
        &self,
        schema: &SchemaVersion,
        envelope: &Envelope,
        data: &[u8],
    ) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(96 + data.len());
        match &self.format {
            WireFormat::SingleObject => {
                out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
                out.extend_from_slice(&schema.fingerprint);
            }
            WireFormat::Confluent { ids } => {
                let id = ids
                    .get(&schema.fingerprint)
                    .ok_or_else(|| CodecError::Unregistered {
                        event_type: schema.event_type.clone(),
                        version: schema.version,
                    })?;
                out.push(CONFLUENT_MAGIC);
                out.extend_from_slice(&id.to_be_bytes());
            }
        }
        // The wire record is the envelope's fields, then data (schemas/README.md).
        crate::binary::envelope(envelope, &mut out);
        out.extend_from_slice(data);
        Ok(out)
    }

    /// Decodes either framing.
    pub fn decode(&self, bytes: &[u8]) -> Result<Decoded, CodecError> {
        let decoded = self.decode_text(bytes)?;
        Ok(Decoded {
            data: serde_json::from_str(&decoded.data)
                .map_err(|_| CodecError::BadEnvelope("data"))?,
            envelope: decoded.envelope,
            written_with: decoded.written_with,
        })
    }

    /// Decodes either framing, the data as JSON text: what exports write, without building
    /// a JSON value per event.
    pub fn decode_text(&self, bytes: &[u8]) -> Result<DecodedText, CodecError> {
        let (writer, mut body) = self.writer_schema(bytes)?;
        let latest = self
            .catalog
            .latest(&writer.event_type)
            .filter(|latest| latest.version != writer.version);
        let Some(latest) = latest else {
            return decode_current(writer, body);
        };
        let value = GenericDatumReader::builder(&writer.wire)
            .reader_schema(&latest.wire)
            .build()?
            .read_value(&mut body)?;
        let Value::Record(fields) = value else {
            return Err(CodecError::BadEnvelope("not a record"));
        };
        let mut fields: HashMap<String, Value> = fields.into_iter().collect();
        let envelope = Envelope {
            event_id: match fields.remove("event_id") {
                Some(Value::Uuid(id)) => id,
                Some(Value::String(s)) => {
                    Uuid::try_parse(&s).map_err(|_| CodecError::BadEnvelope("event_id"))?
                }
                _ => return Err(CodecError::BadEnvelope("event_id")),
            },
            event_type: string(fields.remove("event_type"))
                .ok_or(CodecError::BadEnvelope("event_type"))?,
            occurred_at: timestamp(fields.remove("occurred_at"))
                .ok_or(CodecError::BadEnvelope("occurred_at"))?,
            received_at: timestamp(fields.remove("received_at"))
                .ok_or(CodecError::BadEnvelope("received_at"))?,
            actor: string(fields.remove("actor")).ok_or(CodecError::BadEnvelope("actor"))?,
            source: string(fields.remove("source")).ok_or(CodecError::BadEnvelope("source"))?,
            idempotency_key: string(fields.remove("idempotency_key")),
        };
        let data = fields
            .remove("data")
            .map(|v| json::to_json(&v).to_string())
            .ok_or(CodecError::BadEnvelope("data"))?;
        Ok(DecodedText {
            envelope,
            written_with: writer.clone(),
            data,
        })
    }

    fn writer_schema<'b>(
        &self,
        bytes: &'b [u8],
    ) -> Result<(&Arc<SchemaVersion>, &'b [u8]), CodecError> {
        match bytes {
            [0xC3, 0x01, rest @ ..] if rest.len() >= 8 => {
                let mut fp = [0u8; 8];
                fp.copy_from_slice(&rest[..8]);
                let schema = self
                    .catalog
                    .by_fingerprint(&fp)
                    .ok_or(CodecError::UnknownFingerprint(fp))?;
                Ok((schema, &rest[8..]))
            }
            [CONFLUENT_MAGIC, a, b, c, d, rest @ ..] => {
                let id = u32::from_be_bytes([*a, *b, *c, *d]);
                let fp = self.by_id.get(&id).ok_or(CodecError::UnknownSchemaId(id))?;
                let schema = self
                    .catalog
                    .by_fingerprint(fp)
                    .ok_or(CodecError::UnknownFingerprint(*fp))?;
                Ok((schema, rest))
            }
            _ => Err(CodecError::UnknownFraming),
        }
    }
}

/// Decodes a record written with the newest version of its type: no resolution, one walk
/// of schema and bytes, the data written straight to JSON text.
fn decode_current(writer: &Arc<SchemaVersion>, mut body: &[u8]) -> Result<DecodedText, CodecError> {
    use crate::binary::{read_long, read_str, write_json};
    let Schema::Record(record) = &writer.wire else {
        return Err(CodecError::BadEnvelope("not a record"));
    };
    let input = &mut body;
    let (mut event_id, mut event_type, mut occurred_at, mut received_at) = (None, None, None, None);
    let (mut actor, mut source, mut idempotency_key, mut data) = (None, None, None, None);
    let at = |micros: i64| Timestamp::from_microsecond(micros).ok();
    for field in &record.fields {
        match (field.name.as_str(), &field.schema) {
            ("event_id", Schema::Uuid(_) | Schema::String) => {
                event_id = Uuid::try_parse(read_str(input)?).ok();
            }
            ("event_type", Schema::String) => event_type = Some(read_str(input)?.to_owned()),
            ("occurred_at", Schema::TimestampMicros | Schema::Long) => {
                occurred_at = at(read_long(input)?);
            }
            ("received_at", Schema::TimestampMicros | Schema::Long) => {
                received_at = at(read_long(input)?);
            }
            ("actor", Schema::String) => actor = Some(read_str(input)?.to_owned()),
            ("source", Schema::String) => source = Some(read_str(input)?.to_owned()),
            ("idempotency_key", Schema::Union(union)) => {
                let branch = usize::try_from(read_long(input)?)
                    .ok()
                    .and_then(|i| union.variants().get(i));
                idempotency_key = match branch {
                    Some(Schema::Null) => None,
                    Some(Schema::String) => Some(read_str(input)?.to_owned()),
                    _ => return Err(CodecError::BadEnvelope("idempotency_key")),
                };
            }
            ("data", schema) => {
                let mut text = Vec::with_capacity(2 * input.len());
                write_json(schema, &writer.names, input, &mut text)?;
                data = Some(String::from_utf8(text).expect("JSON written as UTF-8"));
            }
            (_, schema) => write_json(schema, &writer.names, input, &mut Vec::new())?,
        }
    }
    Ok(DecodedText {
        envelope: Envelope {
            event_id: event_id.ok_or(CodecError::BadEnvelope("event_id"))?,
            event_type: event_type.ok_or(CodecError::BadEnvelope("event_type"))?,
            occurred_at: occurred_at.ok_or(CodecError::BadEnvelope("occurred_at"))?,
            received_at: received_at.ok_or(CodecError::BadEnvelope("received_at"))?,
            actor: actor.ok_or(CodecError::BadEnvelope("actor"))?,
            source: source.ok_or(CodecError::BadEnvelope("source"))?,
            idempotency_key,
        },
        written_with: writer.clone(),
        data: data.ok_or(CodecError::BadEnvelope("data"))?,
    })
}

/// The wire record: the envelope's fields, then `data` (schemas/README.md).
fn string(value: Option<Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s),
        Value::Union(_, inner) => string(Some(*inner)),
        _ => None,
    }
}

fn timestamp(value: Option<Value>) -> Option<Timestamp> {
    match value? {
        Value::TimestampMicros(us) | Value::Long(us) => Timestamp::from_microsecond(us).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn catalog() -> Arc<Catalog> {
        Arc::new(Catalog::embedded().unwrap())
    }

    fn envelope(event_type: &str, micros: i64, key: Option<String>) -> Envelope {
        let at = Timestamp::from_microsecond(micros).unwrap();
        Envelope {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            occurred_at: at,
            received_at: at,
            actor: "alice".into(),
            source: "test".into(),
            idempotency_key: key,
        }
    }

    /// The wire record as an apache-avro value: what its writer is compared with.
    fn wire_record(envelope: &Envelope, data: Value) -> Value {
        let idempotency_key = match &envelope.idempotency_key {
            Some(key) => Value::Union(1, Box::new(Value::String(key.clone()))),
            None => Value::Union(0, Box::new(Value::Null)),
        };
        Value::Record(vec![
            ("event_id".into(), Value::Uuid(envelope.event_id)),
            (
                "event_type".into(),
                Value::String(envelope.event_type.clone()),
            ),
            (
                "occurred_at".into(),
                Value::TimestampMicros(micros(envelope.occurred_at)),
            ),
            (
                "received_at".into(),
                Value::TimestampMicros(micros(envelope.received_at)),
            ),
            ("actor".into(), Value::String(envelope.actor.clone())),
            ("source".into(), Value::String(envelope.source.clone())),
            ("idempotency_key".into(), idempotency_key),
            ("data".into(), data),
        ])
    }

    fn micros(at: Timestamp) -> i64 {
        at.as_microsecond()
    }

    fn round_trip(codec: &Codec, event_type: &str, data: &Json, env: &Envelope) -> Decoded {
        let schema = codec.catalog().latest(event_type).unwrap().clone();
        let value = schema.validate(data, "/data").unwrap();
        let bytes = codec.encode(&schema, env, &value).unwrap();
        codec.decode(&bytes).unwrap()
    }

    #[test]
    fn every_example_round_trips_in_both_framings() {
        let catalog = catalog();
        let ids = catalog
            .all_versions()
            .enumerate()
            .map(|(i, v)| (v.fingerprint, i as u32 + 100))
            .collect();
        for codec in [
            Codec::new(catalog.clone(), WireFormat::SingleObject),
            Codec::new(catalog.clone(), WireFormat::Confluent { ids }),
        ] {
            for schema in catalog.event_types() {
                let env = envelope(&schema.event_type, 1_763_800_000_123_456, None);
                let decoded = round_trip(&codec, &schema.event_type, &schema.example, &env);
                assert_eq!(decoded.envelope, env);
                let full = schema
                    .validate(&schema.example, "")
                    .map(|v| json::to_json(&v))
                    .unwrap();
                assert_eq!(decoded.data, full, "{}", schema.event_type);
            }
        }
    }

    #[test]
    fn the_encoder_writes_what_apache_avro_writes() {
        let codec = Codec::new(catalog(), WireFormat::SingleObject);
        for schema in codec.catalog().event_types() {
            for key in [None, Some("k".to_string())] {
                let env = envelope(&schema.event_type, 1_763_800_000_123_456, key);
                let value = schema.validate(&schema.example, "").unwrap();
                let ours = codec.encode(schema, &env, &value).unwrap();
                let record = wire_record(&env, value);
                let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema.wire)
                    .build()
                    .unwrap();
                let theirs = writer.write_value_to_vec(record).unwrap();
                assert_eq!(&ours[10..], &theirs[..], "{}", schema.event_type);
            }
        }
    }

    #[test]
    fn the_decoder_reads_what_apache_avro_reads() {
        let codec = Codec::new(catalog(), WireFormat::SingleObject);
        for schema in codec.catalog().all_versions() {
            for key in [None, Some("k".to_string())] {
                let env = envelope(&schema.event_type, 1_763_800_000_123_456, key);
                let value = schema.validate(&schema.example, "").unwrap();
                let bytes = codec.encode(schema, &env, &value).unwrap();
                let ours = decode_current(schema, &bytes[10..]).unwrap();
                let data: Json = serde_json::from_str(&ours.data).unwrap();
                let theirs = GenericDatumReader::builder(&schema.wire)
                    .build()
                    .unwrap()
                    .read_value(&mut &bytes[10..])
                    .unwrap();
                let theirs = json::to_json(&theirs);
                assert_eq!(data, theirs["data"], "{}", schema.event_type);
                assert_eq!(ours.envelope, env);
                for cut in 0..bytes.len() - 10 {
                    assert!(decode_current(schema, &bytes[10..10 + cut]).is_err());
                }
            }
        }
    }

    #[test]
    fn single_object_framing_carries_the_fingerprint() {
        let codec = Codec::new(catalog(), WireFormat::SingleObject);
        let schema = codec.catalog().latest("order.placed").unwrap().clone();
        let value = schema.validate(&schema.example, "").unwrap();
        let bytes = codec
            .encode(&schema, &envelope("order.placed", 0, None), &value)
            .unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(&bytes[2..10], &schema.fingerprint);
    }

    /// The specification's fingerprint of order.placed v1's wire schema, as Java's
    /// `SchemaNormalization` and fastavro compute it; records written before carry
    /// apache-avro 0.22's, and still decode.
    #[test]
    fn records_carry_the_specification_fingerprint_and_old_ones_still_decode() {
        let codec = Codec::new(catalog(), WireFormat::SingleObject);
        let schema = codec.catalog().latest("order.placed").unwrap().clone();
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(&schema.fingerprint), "f7cc5bc124cd9c97");
        assert_eq!(hex(&schema.legacy_fingerprint), "22048dcba1f02a7b");
        let value = schema.validate(&schema.example, "").unwrap();
        let mut bytes = codec
            .encode(&schema, &envelope("order.placed", 0, None), &value)
            .unwrap();
        bytes[2..10].copy_from_slice(&schema.legacy_fingerprint);
        let decoded = codec.decode(&bytes).unwrap();
        assert_eq!(decoded.written_with.fingerprint, schema.fingerprint);
        assert_eq!(decoded.data, schema.example);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let codec = Codec::new(catalog(), WireFormat::SingleObject);
        for bytes in [
            &b""[..],
            b"{}",
            &[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8],
            &[0, 0, 0, 0, 9, 1],
        ] {
            assert!(codec.decode(bytes).is_err());
        }
        let schema = codec.catalog().latest("order.placed").unwrap().clone();
        let mut truncated = SINGLE_OBJECT_MAGIC.to_vec();
        truncated.extend_from_slice(&schema.fingerprint);
        truncated.push(0x02);
        assert!(codec.decode(&truncated).is_err());
    }

    proptest! {
        #[test]
        fn orders_round_trip(
            order_id in "\\PC{1,40}",
            customer in "[a-z0-9-]{1,20}",
            items in prop::collection::vec(("[a-z0-9]{1,8}", any::<i32>(), any::<i64>()), 0..6),
            total in any::<i64>(),
            micros in 0i64..4_102_444_800_000_000,
            key in prop::option::of("[ -~]{1,64}"),
        ) {
            let codec = Codec::new(catalog(), WireFormat::SingleObject);
            let data = json!({
                "order_id": order_id, "customer_id": customer, "total_cents": total, "currency": "EUR",
                "items": items.iter().map(|(s, q, p)| json!({"sku": s, "quantity": q, "unit_price_cents": p})).collect::<Vec<_>>(),
            });
            let env = envelope("order.placed", micros, key);
            let decoded = round_trip(&codec, "order.placed", &data, &env);
            prop_assert_eq!(decoded.envelope, env);
            prop_assert_eq!(decoded.data, data);
        }

        #[test]
        fn any_bytes_after_a_known_header_decode_or_fail_without_panicking(
            body in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let codec = Codec::new(catalog(), WireFormat::SingleObject);
            for schema in codec.catalog().event_types() {
                let mut bytes = SINGLE_OBJECT_MAGIC.to_vec();
                bytes.extend_from_slice(&schema.fingerprint);
                bytes.extend_from_slice(&body);
                let _ = codec.decode(&bytes);
            }
        }

        #[test]
        fn timestamps_and_uuids_round_trip(millis in 0i64..4_102_444_800_000, id in any::<u128>()) {
            let codec = Codec::new(catalog(), WireFormat::SingleObject);
            let at = Timestamp::from_millisecond(millis).unwrap().to_string();
            let data = json!({"order_id": "o", "carrier": "c", "tracking_number": null, "shipped_at": at});
            let decoded = round_trip(&codec, "order.shipped", &data, &envelope("order.shipped", 5, None));
            prop_assert_eq!(&decoded.data, &data);
            let id = Uuid::from_u128(id).to_string();
            let data = json!({"user_id": id, "reason": null});
            let decoded = round_trip(&codec, "user.deleted", &data, &envelope("user.deleted", 5, None));
            prop_assert_eq!(decoded.data, data);
        }
    }
}
