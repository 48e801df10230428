//! Herald's event contract: the Avro schemas of `schemas/avro`, the envelope every event
//! carries, strict JSON validation against a schema, and the wire codecs.
//!
//! This crate does no I/O. What it guarantees:
//! - a [`Catalog`] only loads if every schema parses, names its topic and key field, and its
//!   example validates; versions of one event type share topic and key;
//! - [`json::from_json`] accepts exactly the JSON that fits the schema and names the JSON
//!   pointer of every field that does not;
//! - [`Codec::decode`] reads whatever [`Codec::encode`] wrote, with any schema version in the
//!   catalog, resolved to the newest version of its event type.

mod binary;
pub mod canonical;
mod catalog;
mod codec;
mod direct;
mod envelope;
pub mod json;
pub mod personal;
mod rules;

pub use apache_avro::types::Value as AvroValue;
pub use catalog::{Catalog, CatalogError, CompatibilityError, Fingerprint, SchemaVersion};
pub use codec::{Codec, CodecError, Decoded, DecodedText, WireFormat};
pub use direct::DataSeed;
pub use envelope::Envelope;
pub use json::parse_timestamp;
pub use personal::Personal;
pub use rules::{DataFacts, Owner, Rule, SEALED_PREFIX, StringSpan};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}
