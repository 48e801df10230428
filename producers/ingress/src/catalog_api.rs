//! The catalog and the OpenAPI document, both generated from the schemas folder, so they
//! cannot drift from what the ingress accepts.

use std::sync::Arc;

use apache_avro::Schema;
use axum::Json;
use axum::extract::State;
use events::SchemaVersion;
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
                // Whose an event is: a `user` publishes only events whose owner is them.
                "owner": v.owner.as_ref().map(events::Owner::as_str),
                "rules": v.rules.iter().map(|rule| json!({"name": rule.name, "says": rule.says})).collect::<Vec<_>>(),
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

/// `GET /api/v1/openapi.json`
pub async fn openapi(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(document(state.catalog().event_types().map(Arc::as_ref)))
}

fn document<'a>(types: impl Iterator<Item = &'a SchemaVersion>) -> Value {
    let events: Vec<Value> = types.map(event_schema).collect();
    let problem = json!({"$ref": "#/components/schemas/Problem"});
    let problem_response = |description: &str| {
        json!({
            "description": description,
            "content": {"application/problem+json": {"schema": problem}}
        })
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Herald ingress", "version": "1",
                 "description": "Post domain events; each is validated against its Avro schema and published to Kafka."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Event": {"oneOf": events},
                "Batch": {"type": "object", "additionalProperties": false, "required": ["events"],
                          "properties": {"events": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Event"}}}},
                "Accepted": {"type": "object", "properties": {
                    "event_id": {"type": "string", "format": "uuid"}, "event_type": {"type": "string"},
                    "topic": {"type": "string"}, "partition": {"type": "integer"}, "offset": {"type": "integer"}}},
                "Problem": {"type": "object", "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object", "properties": {
                        "pointer": {"type": "string"}, "message": {"type": "string"}}}}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/events": {"post": {
                "summary": "Publish one event or a batch",
                "parameters": [
                    {"name": "validate_only", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 255}}
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"oneOf": [
                    {"$ref": "#/components/schemas/Event"}, {"$ref": "#/components/schemas/Batch"}]}}}},
                "responses": {
                    "202": {"description": "Every event is durable in Kafka", "content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/Accepted"},
                        {"type": "object", "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Accepted"}}}}]}}}},
                    "200": {"description": "validate_only: the request is valid"},
                    "400": problem_response("Malformed JSON or header"),
                    "401": problem_response("Missing or invalid token"),
                    "403": problem_response("A role may not publish an event type"),
                    "409": problem_response("The same Idempotency-Key is in progress"),
                    "413": problem_response("Body or batch too large"),
                    "415": problem_response("Not application/json"),
                    "422": problem_response("Fields that do not match the schema, by JSON pointer"),
                    "503": problem_response("The event log is unavailable, or the ingress is overloaded (nothing published); retry after Retry-After")
                }}},
            "/api/v1/event-types": {"get": {"summary": "The event catalog", "security": [],
                "responses": {"200": {"description": "Every event type with its schema, topic, key, roles and an example"}}}},
            "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Readiness: the broker is reachable", "security": [],
                "responses": {"200": {"description": "ready"}, "503": problem_response("not ready")}}}
        }
    })
}

fn event_schema(version: &SchemaVersion) -> Value {
    json!({
        "title": version.event_type,
        "type": "object",
        "additionalProperties": false,
        "required": ["type", "data"],
        "properties": {
            "type": {"const": version.event_type},
            "key": {"type": "string", "description": format!("optional; must equal data.{}", version.key_field)},
            "occurred_at": {"type": "string", "format": "date-time"},
            "source": {"type": "string", "maxLength": 100},
            "data": json_schema(version.data_schema()),
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
