//! The catalog and the OpenAPI document, both generated from the schemas folder, so they
//! cannot drift from what the ingress accepts.

use std::sync::Arc;

use apache_avro::Schema;
use axum::Json;
use axum::extract::State;
use events::{Catalog, SchemaVersion};
use platform::openapi::{Api, Operation};
use serde_json::{Value, json};

use crate::AppState;

/// `GET /api/v1/event-types`
pub async fn event_types(State(state): State<Arc<AppState>>) -> Json<Value> {
    let types: Vec<Value> = state
        .catalog()
        .event_types()
        .map(|v| {
            json!({
                "type": v.event_type,
                "version": v.version,
                "topic": v.topic,
                "key_field": v.key_field,
                "doc": v.doc,
                "publish_roles": state.policy.allowed_roles(&v.event_type, &v.topic),
                // Who reads its events over HTTP (GET /api/v1/streams/{topic}); a user, only
                // their own.
                "read_roles": v.readers,
                // Whose an event is: a `user` publishes only events whose owner is them.
                "owner": v.owner.as_ref().map(events::Owner::as_str),
                "rules": v.rules.iter().map(|rule| json!({"name": rule.name, "says": rule.says})).collect::<Vec<_>>(),
                // Whom the data is about, and its fields of personal data.
                "personal": v.personal.as_ref().map(|p| json!({
                    "subject": p.subject.as_str(),
                    "fields": p.fields,
                })),
                "schema": v.payload_json,
                "example": v.example,
            })
        })
        .collect();
    Json(json!({ "event_types": types }))
}

/// One wire schema version as `/api/v1/schemas` lists it.
fn schema_summary(v: &SchemaVersion) -> Value {
    json!({
        "fingerprint": hex(&v.fingerprint),
        "event_type": v.event_type,
        "version": v.version,
        "topic": v.topic,
        // What records written before the specification's fingerprint carry: still read.
        "legacy_fingerprint": (v.legacy_fingerprint != v.fingerprint).then(|| hex(&v.legacy_fingerprint)),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET /api/v1/schemas`: every wire schema version (envelope plus data, what a record on a
/// topic is), with the fingerprint single-object encoding carries (the 8 bytes after `C3 01`,
/// in hex as they are on the wire).
pub async fn schemas(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut versions: Vec<&Arc<SchemaVersion>> = state.catalog().all_versions().collect();
    versions.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
    let items: Vec<Value> = versions.into_iter().map(|v| schema_summary(v)).collect();
    Json(json!({ "schemas": items }))
}

/// `GET /api/v1/schemas/{fingerprint}`: one wire schema, by its fingerprint (16 hex digits,
/// the current or a legacy one).
pub async fn schema(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(fingerprint): axum::extract::Path<String>,
) -> Result<Json<Value>, crate::problem::Problem> {
    // Hex digits only: `from_str_radix` would also take a sign.
    let bytes: Option<[u8; 8]> = (fingerprint.len() == 16
        && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()))
    .then(|| {
        let mut out = [0u8; 8];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(fingerprint.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(out)
    })
    .flatten();
    let Some(bytes) = bytes else {
        return Err(crate::problem::Problem::bad_request(
            "a fingerprint is 16 hexadecimal digits, as GET /api/v1/schemas lists them",
        ));
    };
    let version = state.catalog().by_fingerprint(&bytes).ok_or_else(|| {
        crate::problem::Problem::not_found(format!(
            "no wire schema has the fingerprint {fingerprint}: GET /api/v1/schemas lists them"
        ))
    })?;
    let mut body = schema_summary(version);
    body["schema"] = version.wire_json.clone();
    Ok(Json(body))
}

/// The ingress's part of the OpenAPI document: every route `router` serves, with each event
/// type of `catalog` as one shape of the events body.
pub fn openapi(catalog: &Catalog) -> Api {
    let events: Vec<Value> = catalog.event_types().map(|v| event_schema(v)).collect();
    let schema = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let wire_summary = json!({
        "type": "object",
        "required": ["fingerprint", "event_type", "version", "topic", "legacy_fingerprint"],
        "properties": {
            "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{16}$",
                            "description": "CRC-64-AVRO of the Parsing Canonical Form, as the 8 bytes after C3 01 on the wire"},
            "event_type": {"type": "string"},
            "version": {"type": "integer"},
            "topic": {"type": "string"},
            "legacy_fingerprint": {"type": ["string", "null"], "pattern": "^[0-9a-f]{16}$",
                                   "description": "the fingerprint records written before 0.1 carry; still read"},
        }
    });
    let mut wire_schema = wire_summary.clone();
    wire_schema["required"]
        .as_array_mut()
        .into_iter()
        .for_each(|r| r.push("schema".into()));
    wire_schema["properties"]["schema"] = json!({"type": "object", "description": "the Avro record on the topic: envelope plus data"});
    let accepted = json!({
        "type": "object",
        "required": ["event_id", "event_type", "topic", "partition", "offset"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid"}, "event_type": {"type": "string"},
            "topic": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}}
    });
    Api {
        tag: "events",
        description: "Publish domain events, each validated against its Avro schema and durable in Kafka before the answer; the catalog and wire schemas that describe them.",
        operations: vec![
            Operation::get("/api/v1/event-types", "The event catalog")
                .describe("Every event type with its topic, key field, the roles that may publish it, the roles that may read it (GET /api/v1/streams/{topic}; a user, only their own events), its owner field, its rules, its personal data (the data subject's field and the fields that hold personal data about them), its data schema and an example the ingress accepts.")
                .ok(200, "The catalog", json!({
                    "type": "object", "required": ["event_types"],
                    "properties": {"event_types": {"type": "array", "items": {
                        "type": "object",
                        "required": ["type", "version", "topic", "key_field", "publish_roles", "read_roles", "schema", "example"],
                        "properties": {
                            "type": {"type": "string"}, "version": {"type": "integer"},
                            "topic": {"type": "string"}, "key_field": {"type": "string"},
                            "doc": {"type": ["string", "null"]},
                            "publish_roles": {"type": "array", "items": {"type": "string"}},
                            "read_roles": {"type": "array", "items": {"type": "string"}},
                            "owner": {"type": ["string", "null"]},
                            "rules": {"type": "array", "items": {"type": "object"}},
                            "personal": {"oneOf": [{"type": "null"}, {
                                "type": "object", "required": ["subject", "fields"],
                                "properties": {
                                    "subject": {"type": "string", "description": "the data field naming whom the data is about, or @actor"},
                                    "fields": {"type": "array", "items": {"type": "string"}}}}]},
                            "schema": {"type": "object"}, "example": {"type": "object"}}}}}
                })),
            Operation::get("/api/v1/schemas", "Every wire schema version")
                .describe("What a record on a topic is (the envelope plus the event's data), with the fingerprint single-object encoding carries, for readers such as Java Avro or fastavro.")
                .ok(200, "Every version, by event type then version", json!({
                    "type": "object", "required": ["schemas"],
                    "properties": {"schemas": {"type": "array", "items": schema("WireSchemaSummary")}}
                })),
            Operation::get("/api/v1/schemas/{fingerprint}", "One wire schema, by fingerprint")
                .path_param("fingerprint", json!({"type": "string", "pattern": "^[0-9a-fA-F]{16}$"}),
                            "16 hexadecimal digits: the current fingerprint or a legacy one")
                .ok(200, "The schema", schema("WireSchema"))
                .problem(400, "The fingerprint is not 16 hexadecimal digits")
                .problem(404, "No wire schema has this fingerprint"),
            Operation::post("/api/v1/events", "Publish one event or a batch")
                .describe("Answers 202 only once the broker acknowledged every event (acks=all); a batch is all or nothing. With an Idempotency-Key, a retry of the same body answers the first answer again.")
                .bearer("a role the event type's publish_roles names; a `user` publishes only events they own")
                .query("validate_only", json!({"type": "boolean"}), "check the body and publish nothing")
                .header("Idempotency-Key", json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}),
                        "a retry with the same key and body answers the first answer, and publishes nothing again")
                .json_body(json!({"oneOf": [schema("Event"), schema("Batch")]}))
                .ok(202, "Every event is durable in Kafka", json!({"oneOf": [
                    accepted.clone(),
                    {"type": "object", "required": ["events"], "properties": {"events": {"type": "array", "items": accepted}}}]}))
                .ok(200, "validate_only: the body is valid, nothing was published", json!({
                    "type": "object", "required": ["valid", "events"],
                    "properties": {"valid": {"const": true}, "events": {"type": "integer"}}}))
                .problem(400, "A malformed Idempotency-Key or query")
                .problem(403, "The caller's role may not publish this event type, or a `user` posted an event they do not own")
                .problem(409, "A request with the same Idempotency-Key is in progress")
                .problem(413, "More events in a batch than allowed, or an event too large for the broker")
                .problem(422, "Fields that do not match the schema or a rule, by JSON pointer; or an Idempotency-Key reused with another body")
                .problem(503, "The event log is unavailable (nothing published)"),
        ],
        schemas: vec![
            ("Event", json!({"oneOf": events})),
            ("Batch", json!({"type": "object", "additionalProperties": false, "required": ["events"],
                             "properties": {"events": {"type": "array", "minItems": 1, "items": schema("Event")}}})),
            ("WireSchemaSummary", wire_summary),
            ("WireSchema", wire_schema),
        ],
    }
}

fn event_schema(version: &SchemaVersion) -> Value {
    let mut data = json_schema(version.data_schema());
    // The key field is the aggregate id the topic is keyed by: never empty.
    if data["properties"][&version.key_field]["type"] == "string" {
        data["properties"][&version.key_field]["minLength"] = 1.into();
    }
    json!({
        "title": version.event_type,
        "type": "object",
        "additionalProperties": false,
        "required": ["type", "data"],
        "properties": {
            "type": {"const": version.event_type},
            "key": {"type": "string", "description": format!("optional; must equal data.{}", version.key_field)},
            "occurred_at": {"type": "string", "format": "date-time",
                            "description": "when it happened: at most OCCURRED_AT_MAX_AGE_DAYS old and OCCURRED_AT_MAX_AHEAD_SECS ahead, else 422"},
            "source": {"type": "string", "maxLength": 100},
            "data": data,
        },
        "example": {"type": version.event_type, "data": version.example},
    })
}

/// The JSON Schema of the JSON the ingress accepts for an Avro schema.
fn json_schema(schema: &Schema) -> Value {
    match schema {
        Schema::Null => json!({"type": "null"}),
        Schema::Boolean => json!({"type": "boolean"}),
        Schema::Int => json!({"type": "integer", "minimum": i32::MIN, "maximum": i32::MAX}),
        Schema::Long => json!({"type": "integer"}),
        Schema::Float | Schema::Double => json!({"type": "number"}),
        Schema::String | Schema::Bytes | Schema::Fixed(_) => json!({"type": "string"}),
        Schema::Uuid(_) => json!({"type": "string", "format": "uuid"}),
        Schema::TimestampMillis | Schema::TimestampMicros => {
            json!({"type": "string", "format": "date-time"})
        }
        Schema::Date => json!({"type": "string", "format": "date"}),
        Schema::Enum(e) => json!({"type": "string", "enum": e.symbols}),
        Schema::Array(a) => json!({"type": "array", "items": json_schema(&a.items)}),
        Schema::Map(m) => json!({"type": "object", "additionalProperties": json_schema(&m.types)}),
        Schema::Union(u) => {
            json!({"anyOf": u.variants().iter().map(json_schema).collect::<Vec<_>>()})
        }
        Schema::Record(r) => {
            let properties: serde_json::Map<String, Value> = r
                .fields
                .iter()
                .map(|f| (f.name.clone(), json_schema(&f.schema)))
                .collect();
            let required: Vec<&str> = r
                .fields
                .iter()
                .filter(|f| f.default.is_none())
                .map(|f| f.name.as_str())
                .collect();
            json!({"type": "object", "additionalProperties": false, "properties": properties, "required": required})
        }
        _ => json!({}),
    }
}
