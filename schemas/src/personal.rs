//! Personal data in the contract: `herald.personal` names whom an event type's data is about
//! (its data subject) and which of its fields hold personal data about them:
//!
//! ```json
//! "herald": {..., "personal": {"subject": "user_id", "fields": ["email", "display_name", "phone"]}}
//! ```
//!
//! The subject is a top-level string or UUID field of the data, or `@actor` (the publisher,
//! such as a message's sender). The marks live in the `herald` attribute, which the Avro
//! specification's canonical form leaves out: marking a field changes neither the wire schema's
//! fingerprint nor any reader's view of it.
//!
//! A mark is a promise to protect the field, so the catalog refuses one it could not keep:
//! only strings and nullable strings can be protected (their value can become an opaque
//! string in the same schema), and neither the key (Kafka keys are not encrypted), the
//! subject, the owner (both are needed in clear to find and to check an event) nor a sealed
//! field (already protected otherwise) can be marked.

use apache_avro::Schema;
use apache_avro::schema::RecordSchema;
use serde_json::Value as Json;

use crate::rules::{ACTOR, Owner};

/// Whom an event type's data is about, and its fields that hold personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Personal {
    pub subject: Owner,
    pub fields: Vec<String>,
}

/// What the catalog needs to know of a schema to check its marks.
pub(crate) struct Marked<'a> {
    pub record: &'a RecordSchema,
    pub key_field: &'a str,
    pub owner: Option<&'a Owner>,
    pub sealed: &'a [String],
}

/// Reads `herald.personal`; `Ok(None)` when it is absent. The error says what to change.
pub(crate) fn parse(value: &Json, schema: &Marked<'_>) -> Result<Option<Personal>, String> {
    let object = match value {
        Json::Null => return Ok(None),
        Json::Object(object) => object,
        _ => {
            return Err(
                "herald.personal must be an object: {\"subject\": ..., \"fields\": [...]}".into(),
            );
        }
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "subject" | "fields"))
    {
        return Err(format!(
            "herald.personal: {unknown:?} is not a setting (subject, fields)"
        ));
    }
    let subject = match object.get("subject").and_then(Json::as_str) {
        Some(ACTOR) => Owner::Actor,
        Some(name) => {
            let field = schema.record.fields.iter().find(|f| f.name == name);
            if !field.is_some_and(|f| matches!(f.schema, Schema::String | Schema::Uuid(_))) {
                return Err(format!(
                    "herald.personal.subject {name:?} must be a string or uuid field of the data, or \"@actor\""
                ));
            }
            Owner::Field(name.to_string())
        }
        None => {
            return Err(
                "herald.personal.subject must name the field holding whom the data is about, or \"@actor\""
                    .into(),
            );
        }
    };
    let Some(names) = object.get("fields").and_then(Json::as_array) else {
        return Err("herald.personal.fields must be a list of field names".into());
    };
    if names.is_empty() {
        return Err("herald.personal.fields is empty: leave herald.personal out instead".into());
    }
    let mut fields: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let name = name
            .as_str()
            .ok_or("herald.personal.fields must hold field names")?;
        check_field(name, &subject, schema)?;
        if fields.iter().any(|f| f == name) {
            return Err(format!("herald.personal.fields names {name:?} twice"));
        }
        fields.push(name.to_string());
    }
    Ok(Some(Personal { subject, fields }))
}

/// Whether `name` can be protected; the reason when it cannot.
fn check_field(name: &str, subject: &Owner, schema: &Marked<'_>) -> Result<(), String> {
    let refuse = |why: &str| Err(format!("herald.personal.fields: {name:?} {why}"));
    let Some(field) = schema.record.fields.iter().find(|f| f.name == name) else {
        return refuse("is not a field of the data");
    };
    if !is_protectable(&field.schema) {
        return refuse(
            "is not a string or a nullable string, the only kinds that can be protected",
        );
    }
    if name == schema.key_field {
        return refuse("is the key field, which Kafka keeps in clear");
    }
    if matches!(subject, Owner::Field(s) if s == name) {
        return refuse("is the subject, which must stay readable to find the subject's key");
    }
    if matches!(schema.owner, Some(Owner::Field(o)) if o == name) {
        return refuse("is the owner field, which must stay readable to check who may publish");
    }
    if schema.sealed.iter().any(|s| s == name) {
        return refuse("is sealed already (herald.sealed)");
    }
    Ok(())
}

/// A string, or a union of null and a string.
fn is_protectable(schema: &Schema) -> bool {
    match schema {
        Schema::String => true,
        Schema::Union(union) => {
            let variants = union.variants();
            variants.len() == 2
                && variants.iter().any(|v| matches!(v, Schema::Null))
                && variants.iter().any(|v| matches!(v, Schema::String))
        }
        _ => false,
    }
}
