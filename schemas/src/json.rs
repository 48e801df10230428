//! Strict conversion between JSON and Avro values, driven by a schema.
//!
//! The ingress accepts JSON; the wire carries Avro. [`from_json`] accepts exactly the JSON
//! that fits the schema: no unknown fields, no missing required ones, integers in range, enum
//! symbols, canonical UUIDs, RFC 3339 timestamps. It reports every bad field at once, each
//! with its JSON pointer, so a client can fix a request in one round trip. [`to_json`] is its
//! inverse, used to show decoded events.

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema, UnionSchema};
use apache_avro::types::Value;
use jiff::Timestamp;
use jiff::civil::Date;
use serde_json::{Map, Number, Value as Json};
use uuid::Uuid;

/// Named types of a schema by full name, to follow references.
pub type Names = HashMap<String, Schema>;

/// One field that does not fit the schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// RFC 6901 JSON pointer into the request body.
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pointer, self.message)
    }
}

/// Every named type (record, enum, fixed) inside `schema`, by full name.
pub fn collect_names(schema: &Schema) -> Names {
    fn walk(schema: &Schema, names: &mut Names) {
        match schema {
            Schema::Record(record) => {
                names.insert(record.name.fullname(None), schema.clone());
                for field in &record.fields {
                    walk(&field.schema, names);
                }
            }
            Schema::Enum(e) => {
                names.insert(e.name.fullname(None), schema.clone());
            }
            Schema::Fixed(f) => {
                names.insert(f.name.fullname(None), schema.clone());
            }
            Schema::Array(a) => walk(&a.items, names),
            Schema::Map(m) => walk(&m.types, names),
            Schema::Union(u) => u.variants().iter().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    let mut names = Names::new();
    walk(schema, &mut names);
    names
}

/// Converts `json` to an Avro value of `schema`, or names every field that does not fit.
/// Pointers start with `base` (e.g. `/data` or `/events/3/data`).
pub fn from_json(
    schema: &Schema,
    names: &Names,
    json: &Json,
    base: &str,
) -> Result<Value, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut pointer = base.to_string();
    let value = Converter {
        names,
        errors: &mut errors,
        default: false,
    }
    .convert(schema, json, &mut pointer);
    match value {
        Some(value) if errors.is_empty() => Ok(value),
        _ => Err(errors),
    }
}

struct Converter<'a> {
    names: &'a Names,
    errors: &'a mut Vec<FieldError>,
    /// Converting a schema's `default`, which Avro writes in its own JSON encoding: there a
    /// timestamp or a date is a number, where a request gives it as text.
    default: bool,
}

impl Converter<'_> {
    fn fail(&mut self, pointer: &str, message: impl Into<String>) -> Option<Value> {
        self.errors.push(FieldError {
            pointer: pointer.to_string(),
            message: message.into(),
        });
        None
    }

    fn convert(&mut self, schema: &Schema, json: &Json, ptr: &mut String) -> Option<Value> {
        match (schema, json) {
            (Schema::Array(a), Json::Array(items)) => self.array(&a.items, items, ptr),
            (Schema::Map(m), Json::Object(entries)) => self.map(&m.types, entries, ptr),
            (Schema::Record(record), Json::Object(object)) => self.record(record, object, ptr),
            (Schema::Union(union), json) => self.union(union, json, ptr),
            (Schema::Ref { name }, json) => self.reference(name, json, ptr),
            (schema, json) => self.scalar(schema, json, ptr),
        }
    }

    /// A value of a type that holds no other: a primitive, a logical type or an enum.
    fn scalar(&mut self, schema: &Schema, json: &Json, ptr: &str) -> Option<Value> {
        match (schema, json) {
            (Schema::Null, Json::Null) => Some(Value::Null),
            (Schema::Boolean, Json::Bool(b)) => Some(Value::Boolean(*b)),
            (Schema::Int, Json::Number(n)) => match n.as_i64().map(i32::try_from) {
                Some(Ok(i)) => Some(Value::Int(i)),
                _ => self.fail(
                    ptr,
                    "expected an integer between -2147483648 and 2147483647",
                ),
            },
            (Schema::Long, Json::Number(n)) => match n.as_i64() {
                Some(i) => Some(Value::Long(i)),
                None => self.fail(ptr, "expected a 64-bit integer"),
            },
            (Schema::Float, Json::Number(n)) => Some(Value::Float(n.as_f64()? as f32)),
            (Schema::Double, Json::Number(n)) => Some(Value::Double(n.as_f64()?)),
            (Schema::String, Json::String(s)) => Some(Value::String(s.clone())),
            (Schema::Bytes, Json::String(s)) => match latin1(s) {
                Some(bytes) => Some(Value::Bytes(bytes)),
                None => self.fail(ptr, "expected bytes as a string of code points 0 to 255"),
            },
            (Schema::Fixed(f), Json::String(s)) => match latin1(s) {
                Some(bytes) if bytes.len() == f.size => Some(Value::Fixed(f.size, bytes)),
                _ => self.fail(ptr, format!("expected exactly {} bytes", f.size)),
            },
            (Schema::Uuid(_), Json::String(s)) => match parse_uuid(s) {
                Some(uuid) => Some(Value::Uuid(uuid)),
                None => self.fail(ptr, "expected a UUID in its 8-4-4-4-12 hexadecimal form"),
            },
            (Schema::TimestampMillis, Json::String(s)) => match parse_timestamp(s) {
                Some(at) => Some(Value::TimestampMillis(at.as_millisecond())),
                None => self.fail(ptr, TIMESTAMP_HINT),
            },
            (Schema::TimestampMicros, Json::String(s)) => match parse_timestamp(s) {
                Some(at) => Some(Value::TimestampMicros(at.as_microsecond())),
                None => self.fail(ptr, TIMESTAMP_HINT),
            },
            (Schema::TimestampMillis, Json::Number(n)) if self.default => {
                n.as_i64().map(Value::TimestampMillis)
            }
            (Schema::TimestampMicros, Json::Number(n)) if self.default => {
                n.as_i64().map(Value::TimestampMicros)
            }
            (Schema::Date, Json::Number(n)) if self.default => n
                .as_i64()
                .and_then(|d| i32::try_from(d).ok())
                .map(Value::Date),
            (Schema::Date, Json::String(s)) => match parse_date(s) {
                Some(days) => Some(Value::Date(days)),
                None => self.fail(ptr, "expected a date like 2026-11-22"),
            },
            (Schema::Enum(e), Json::String(s)) => match e.symbols.iter().position(|sym| sym == s) {
                Some(index) => Some(Value::Enum(index as u32, s.clone())),
                None => self.fail(
                    ptr,
                    format!("{s:?} is not one of: {}", e.symbols.join(", ")),
                ),
            },
            (schema, json) => {
                let message = format!("expected {}, got {}", describe(schema), json_kind(json));
                self.fail(ptr, message)
            }
        }
    }

    fn array(&mut self, items_schema: &Schema, items: &[Json], ptr: &mut String) -> Option<Value> {
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let len = ptr.len();
            push_token(ptr, &i.to_string());
            out.push(self.convert(items_schema, item, ptr));
            ptr.truncate(len);
        }
        out.into_iter()
            .collect::<Option<Vec<_>>>()
            .map(Value::Array)
    }

    fn map(
        &mut self,
        values: &Schema,
        entries: &Map<String, Json>,
        ptr: &mut String,
    ) -> Option<Value> {
        let mut out = HashMap::with_capacity(entries.len());
        let mut ok = true;
        for (key, item) in entries {
            let len = ptr.len();
            push_token(ptr, key);
            match self.convert(values, item, ptr) {
                Some(v) => {
                    out.insert(key.clone(), v);
                }
                None => ok = false,
            }
            ptr.truncate(len);
        }
        ok.then_some(Value::Map(out))
    }

    /// Every field: an unknown one, or a required one missing, is named by its pointer.
    fn record(
        &mut self,
        record: &RecordSchema,
        object: &Map<String, Json>,
        ptr: &mut String,
    ) -> Option<Value> {
        let mut ok = true;
        for key in object.keys() {
            if !record.fields.iter().any(|f| &f.name == key) {
                let len = ptr.len();
                push_token(ptr, key);
                self.fail(ptr, "unknown field");
                ptr.truncate(len);
                ok = false;
            }
        }
        let mut out = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let len = ptr.len();
            push_token(ptr, &field.name);
            let value = match (object.get(&field.name), &field.default) {
                (Some(json), _) => self.convert(&field.schema, json, ptr),
                (None, Some(default)) => self.default_value(&field.schema, default, ptr),
                (None, None) => self.fail(ptr, "required field is missing"),
            };
            ptr.truncate(len);
            match value {
                Some(v) => out.push((field.name.clone(), v)),
                None => ok = false,
            }
        }
        ok.then_some(Value::Record(out))
    }

    /// null for a nullable union; otherwise the one other branch, or the first branch that
    /// takes the value without an error.
    fn union(&mut self, union: &UnionSchema, json: &Json, ptr: &mut String) -> Option<Value> {
        let variants = union.variants();
        if json.is_null() {
            return match variants.iter().position(|v| matches!(v, Schema::Null)) {
                Some(i) => Some(Value::Union(i as u32, Box::new(Value::Null))),
                None => self.fail(ptr, "must not be null"),
            };
        }
        let candidates: Vec<(usize, &Schema)> = variants
            .iter()
            .enumerate()
            .filter(|(_, v)| !matches!(v, Schema::Null))
            .collect();
        if let [(i, only)] = candidates.as_slice() {
            return self
                .convert(only, json, ptr)
                .map(|v| Value::Union(*i as u32, Box::new(v)));
        }
        for (i, variant) in candidates {
            let mut scratch = Vec::new();
            let value = Converter {
                names: self.names,
                errors: &mut scratch,
                default: self.default,
            }
            .convert(variant, json, &mut ptr.clone());
            if let (Some(value), true) = (value, scratch.is_empty()) {
                return Some(Value::Union(i as u32, Box::new(value)));
            }
        }
        self.fail(ptr, "matches none of the types this field allows")
    }

    fn reference(&mut self, name: &Name, json: &Json, ptr: &mut String) -> Option<Value> {
        match self.names.get(&name.fullname(None)) {
            Some(schema) => {
                let names = self.names;
                Converter {
                    names,
                    errors: self.errors,
                    default: self.default,
                }
                .convert(schema, json, ptr)
            }
            None => self.fail(
                ptr,
                format!("schema refers to unknown type {}", name.fullname(None)),
            ),
        }
    }

    /// A default is written in the schema for the field's type (for a union, its first
    /// branch), so it converts like a value in Avro's JSON encoding, with the union branch
    /// made explicit.
    fn default_value(
        &mut self,
        schema: &Schema,
        default: &Json,
        ptr: &mut String,
    ) -> Option<Value> {
        let mut avro = Converter {
            names: self.names,
            errors: self.errors,
            default: true,
        };
        match schema {
            Schema::Union(union) => {
                let first = union.variants().first()?;
                avro.convert(first, default, ptr)
                    .map(|v| Value::Union(0, Box::new(v)))
            }
            _ => avro.convert(schema, default, ptr),
        }
    }
}

/// The value of an absent field with a `default` in the schema, as `from_json` fills it in.
pub(crate) fn default_value(schema: &Schema, names: &Names, default: &Json) -> Option<Value> {
    let mut errors = Vec::new();
    let value = Converter {
        names,
        errors: &mut errors,
        default: false,
    }
    .default_value(schema, default, &mut String::new());
    value.filter(|_| errors.is_empty())
}

const TIMESTAMP_HINT: &str = "expected an RFC 3339 timestamp like 2026-11-22T09:30:00Z";

/// Appends `token` to `pointer` as one reference token, escaped as RFC 6901 says (`~` as
/// `~0`, `/` as `~1`), so a member named `a/b` is not read as two levels.
pub fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

pub(crate) fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

pub(crate) fn parse_uuid(s: &str) -> Option<Uuid> {
    // Only the hyphenated form: braces, URNs and bare hex would not round-trip as typed.
    (s.len() == 36).then(|| Uuid::try_parse(s).ok()).flatten()
}

/// An RFC 3339 timestamp (`2026-11-22T09:30:00Z`, `2026-11-22t09:30:00.5+01:00`), and
/// nothing of the wider ISO 8601 the parser would also take (no week dates, no missing
/// seconds, no time zone annotations), so what is accepted is what the docs say.
pub fn parse_timestamp(s: &str) -> Option<Timestamp> {
    is_rfc3339(s.as_bytes()).then(|| s.parse().ok()).flatten()
}

/// `YYYY-MM-DD(T|t| )HH:MM:SS(.fraction)?(Z|z|+HH:MM|-HH:MM)`, by shape.
fn is_rfc3339(s: &[u8]) -> bool {
    let digits = |range: std::ops::Range<usize>| {
        s.get(range)
            .is_some_and(|part| part.iter().all(u8::is_ascii_digit))
    };
    let at = |i: usize, allowed: &[u8]| s.get(i).is_some_and(|c| allowed.contains(c));
    let shaped = digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt ")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19);
    if !shaped {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &fraction[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// A date as `YYYY-MM-DD`, in days since 1970-01-01 (Avro's `date`).
pub fn parse_date(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shaped {
        return None;
    }
    let date: Date = s.parse().ok()?;
    Some(date.since(EPOCH).ok()?.get_days())
}

const EPOCH: Date = jiff::civil::date(1970, 1, 1);

fn describe(schema: &Schema) -> String {
    match schema {
        Schema::Null => "null".into(),
        Schema::Boolean => "a boolean".into(),
        Schema::Int | Schema::Long => "an integer".into(),
        Schema::Float | Schema::Double => "a number".into(),
        Schema::String | Schema::Bytes | Schema::Fixed(_) => "a string".into(),
        Schema::Uuid(_) => "a UUID string".into(),
        Schema::TimestampMillis | Schema::TimestampMicros => "an RFC 3339 timestamp string".into(),
        Schema::Date => "a date string".into(),
        Schema::Enum(e) => format!("one of: {}", e.symbols.join(", ")),
        Schema::Array(_) => "an array".into(),
        Schema::Map(_) | Schema::Record(_) => "an object".into(),
        other => format!(
            "a value of Avro type {:?}",
            apache_avro::schema::SchemaKind::from(other)
        ),
    }
}

fn json_kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The JSON form of an Avro value: the inverse of [`from_json`] for the types it accepts.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Date(days) => date_json(*days),
        Value::Long(i) => Json::from(*i),
        Value::Float(f) => Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number),
        Value::Double(f) => Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::String(s) | Value::Enum(_, s) => Json::String(s.clone()),
        Value::Bytes(b) | Value::Fixed(_, b) => {
            Json::String(b.iter().map(|&c| char::from(c)).collect())
        }
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::TimestampMillis(ms) => timestamp_json(i128::from(*ms) * 1_000_000),
        Value::TimestampMicros(us) => timestamp_json(i128::from(*us) * 1_000),
        Value::Union(_, inner) => to_json(inner),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Value::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect::<Map<String, Json>>(),
        ),
        other => Json::String(format!("{other:?}")),
    }
}

pub(crate) fn date_json(days: i32) -> Json {
    let date = jiff::Span::new()
        .try_days(days)
        .ok()
        .and_then(|span| EPOCH.checked_add(span).ok());
    date.map_or(Json::Null, |d| Json::String(d.to_string()))
}

pub(crate) fn timestamp_json(nanos: i128) -> Json {
    Timestamp::from_nanosecond(nanos)
        .ok()
        .map_or(Json::Null, |at| Json::String(at.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalog;
    use serde_json::json;

    fn order_placed() -> std::sync::Arc<crate::SchemaVersion> {
        Catalog::embedded()
            .unwrap()
            .latest("order.placed")
            .unwrap()
            .clone()
    }

    fn pointers(result: Result<Value, Vec<FieldError>>) -> Vec<String> {
        result.unwrap_err().into_iter().map(|e| e.pointer).collect()
    }

    #[test]
    fn every_bad_field_is_named_by_its_pointer() {
        let schema = order_placed();
        let data = json!({
            "order_id": 7,
            "items": [{"sku": "a", "quantity": 1.5, "unit_price_cents": 1, "colour": "red"}],
            "total_cents": "900",
            "currency": "EUR",
            "coupon": "X"
        });
        let mut got = pointers(schema.validate(&data, "/data"));
        got.sort();
        assert_eq!(
            got,
            [
                "/data/coupon",
                "/data/customer_id",
                "/data/items/0/colour",
                "/data/items/0/quantity",
                "/data/order_id",
                "/data/total_cents",
            ]
        );
    }

    #[test]
    fn messages_say_what_was_expected() {
        let catalog = Catalog::embedded().unwrap();
        let otp = catalog.latest("otp.requested").unwrap();
        let data = json!({"user_id": "not-a-uuid", "phone": "+1", "code": "1",
            "purpose": "dinner", "expires_at": "yesterday"});
        let errors = otp.validate(&data, "/data").unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(
                &"/data/user_id: expected a UUID in its 8-4-4-4-12 hexadecimal form".into()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(
                &"/data/purpose: \"dinner\" is not one of: login, verify_phone, password_reset"
                    .into()
            ),
            "{text:?}"
        );
        assert!(
            text.contains(&format!("/data/expires_at: {TIMESTAMP_HINT}")),
            "{text:?}"
        );
    }

    #[test]
    fn pointer_tokens_are_escaped() {
        let mut p = String::new();
        push_token(&mut p, "a/b~c");
        assert_eq!(p, "/a~1b~0c");
    }

    #[test]
    fn optional_fields_take_their_defaults() {
        let catalog = Catalog::embedded().unwrap();
        let v = catalog.latest("user.registered").unwrap();
        let data = json!({"user_id": "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11", "email": "a@b", "display_name": "A"});
        let value = v.validate(&data, "").unwrap();
        let back = to_json(&value);
        assert_eq!(back["locale"], "en");
        assert_eq!(back["phone"], Json::Null);
    }

    #[test]
    fn defaults_of_timestamps_and_dates_are_numbers_as_avro_writes_them() {
        let schema = Schema::parse(&json!({
            "type": "record", "name": "Defaults", "fields": [
                {"name": "ms", "type": {"type": "long", "logicalType": "timestamp-millis"}, "default": 1},
                {"name": "us", "type": {"type": "long", "logicalType": "timestamp-micros"}, "default": 2},
                {"name": "day", "type": {"type": "int", "logicalType": "date"}, "default": 3},
                {"name": "then", "type": {"type": "record", "name": "Then", "fields": [
                    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}
                ]}, "default": {"at": 4}}
            ]
        }))
        .unwrap();
        let names = collect_names(&schema);
        let value = from_json(&schema, &names, &json!({}), "").unwrap();
        assert_eq!(
            value,
            Value::Record(vec![
                ("ms".into(), Value::TimestampMillis(1)),
                ("us".into(), Value::TimestampMicros(2)),
                ("day".into(), Value::Date(3)),
                (
                    "then".into(),
                    Value::Record(vec![("at".into(), Value::TimestampMillis(4))])
                ),
            ])
        );
        // A request still gives a timestamp as text, never as a number.
        assert_eq!(
            pointers(from_json(&schema, &names, &json!({"ms": 5}), "")),
            ["/ms"]
        );
    }

    #[test]
    fn out_of_range_integers_are_refused() {
        let schema = order_placed();
        let mut data = schema.example.clone();
        data["items"][0]["quantity"] = json!(4_294_967_296_i64);
        assert_eq!(pointers(schema.validate(&data, "")), ["/items/0/quantity"]);
    }

    #[test]
    fn timestamps_are_rfc_3339_and_nothing_wider() {
        let at = |s| parse_timestamp(s).map(|t| t.as_microsecond());
        assert_eq!(at("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(at("1970-01-01t01:00:01.5+01:00"), Some(1_500_000));
        assert_eq!(at("1970-01-01 00:00:00.000001z"), Some(1));
        for refused in [
            "1970-01-01T00:00Z",
            "1970-01-01T00:00:00",
            "1970-01-01T00:00:00Z[UTC]",
            "19700101T000000Z",
            "1970-W01-1T00:00:00Z",
            "+001970-01-01T00:00:00Z",
            "1970-01-01T00:00:00.Z",
            "1970-01-01T00:00:00.1234567890Z",
            "1970-01-01T00:00:00+0100",
            "1970-02-30T00:00:00Z",
            "",
        ] {
            assert_eq!(at(refused), None, "{refused}");
        }
        assert_eq!(
            timestamp_json(1_500_000_000),
            Json::String("1970-01-01T00:00:01.5Z".into())
        );
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(
            parse_date("2026-11-22").map(|d| to_json(&Value::Date(d))),
            Some(json!("2026-11-22"))
        );
        assert_eq!(parse_date("2026-13-01"), None);
    }
}
