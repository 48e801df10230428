//! JSON text straight to Avro binary, for data that fits its schema.
//!
//! [`crate::json::from_json`] goes from JSON text to a JSON tree, then to an Avro value, then
//! to bytes, and names every field that does not fit. Most requests fit. For them, a [`Plan`]
//! reads the text once and writes Avro bytes as it goes: building and freeing the two trees
//! was about a third of the ingress's CPU per event.
//!
//! A plan only answers "fits, here are the bytes" or "no". On no, the caller runs `from_json`
//! for the pointers and messages. So a plan may refuse what `from_json` accepts (a union of
//! several types, a map, a field given twice, records nested deeper than the plan goes) but
//! never accepts what it refuses, and what it accepts encodes to the bytes `from_json` and
//! [`crate::binary::encode`] give. The tests hold it to both.

use std::fmt;

use apache_avro::Schema;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::binary::{bytes, long, uuid};
use crate::json::{self, Names};

/// A data schema compiled for direct encoding: references resolved, defaults encoded once.
#[derive(Debug)]
pub struct Plan {
    fields: Vec<Field>,
    /// The key field's index: a string or a UUID.
    key: usize,
}

#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    String,
    Bytes,
    Fixed(usize),
    Uuid,
    TimestampMillis,
    TimestampMicros,
    Date,
    Enum(Vec<String>),
    Array(Box<Node>),
    Record(Vec<Field>),
    /// A union with at most one branch besides null: the branch indexes on the wire.
    Union {
        null: Option<i64>,
        other: Option<(i64, Box<Node>)>,
    },
    /// Left to `from_json`: no value of it is accepted here.
    Refuse,
}

#[derive(Debug)]
struct Field {
    name: String,
    node: Node,
    /// The encoded default, written when the field is absent.
    default: Option<Vec<u8>>,
}

/// Records wider than this are left to `from_json`: a field's presence is one bit of a u64.
const MAX_FIELDS: usize = 64;
/// How many nodes a plan may hold, and how deep they nest: a recursive schema is unrolled
/// only this far, deeper data is left to from_json.
const MAX_NODES: usize = 4096;
const MAX_DEPTH: usize = 32;

impl Plan {
    /// The plan of a record schema keyed by `key_field` (a string or UUID field); `None` when
    /// the schema is not such a record.
    pub fn new(schema: &Schema, names: &Names, key_field: &str) -> Option<Self> {
        let mut budget = MAX_NODES;
        let Node::Record(fields) = compile(schema, names, &mut budget, 0) else {
            return None;
        };
        let key = fields.iter().position(|f| f.name == key_field)?;
        matches!(fields[key].node, Node::String | Node::Uuid).then_some(Self { fields, key })
    }

    /// Appends the Avro binary of `data`, the JSON text of a data object, to `out` and returns
    /// its aggregate id, as written and canonical (a UUID in lower case). `None`: the data does
    /// not fit, or not in a way this module handles; `out` is then back to its length before
    /// the call.
    pub fn encode(&self, data: &str, out: &mut Vec<u8>) -> Option<String> {
        let start = out.len();
        let mut deserializer = serde_json::Deserializer::from_str(data);
        let key = self
            .seed(out)
            .deserialize(&mut deserializer)
            .and_then(|key| deserializer.end().map(|()| key));
        if key.is_err() {
            out.truncate(start);
        }
        key.ok()
    }

    /// [`Plan::encode`] for a data object read as part of a larger text, such as a request
    /// body, so the object is read once, not once to find its end and again to encode it.
    pub fn seed<'a>(&'a self, out: &'a mut Vec<u8>) -> DataSeed<'a> {
        DataSeed { plan: self, out }
    }
}

/// Reading a data object through this appends its Avro binary to `out` and gives its
/// aggregate id, as [`Plan::encode`] does. An error stands for `encode`'s `None`: the data
/// does not fit, or not in a way this module handles, and `out` may hold part of it.
pub struct DataSeed<'a> {
    plan: &'a Plan,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for DataSeed<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let mut key = None;
        deserializer.deserialize_map(Root {
            plan: self.plan,
            out: self.out,
            key: &mut key,
        })?;
        key.filter(|key| !key.is_empty()).ok_or_else(refused)
    }
}

fn compile(schema: &Schema, names: &Names, budget: &mut usize, depth: usize) -> Node {
    if *budget == 0 || depth > MAX_DEPTH {
        return Node::Refuse;
    }
    *budget -= 1;
    let depth = depth + 1;
    match schema {
        Schema::Null => Node::Null,
        Schema::Boolean => Node::Boolean,
        Schema::Int => Node::Int,
        Schema::Long => Node::Long,
        Schema::Float => Node::Float,
        Schema::Double => Node::Double,
        Schema::String => Node::String,
        Schema::Bytes => Node::Bytes,
        Schema::Fixed(fixed) => Node::Fixed(fixed.size),
        Schema::Uuid(_) => Node::Uuid,
        Schema::TimestampMillis => Node::TimestampMillis,
        Schema::TimestampMicros => Node::TimestampMicros,
        Schema::Date => Node::Date,
        Schema::Enum(e) => Node::Enum(e.symbols.clone()),
        Schema::Array(array) => Node::Array(Box::new(compile(&array.items, names, budget, depth))),
        Schema::Record(record) if record.fields.len() <= MAX_FIELDS => Node::Record(
            record
                .fields
                .iter()
                .map(|field| Field {
                    name: field.name.clone(),
                    node: compile(&field.schema, names, budget, depth),
                    default: field.default.as_ref().and_then(|default| {
                        let value = json::default_value(&field.schema, names, default)?;
                        let mut encoded = Vec::new();
                        crate::binary::encode(&value, &field.schema, names, &mut encoded).ok()?;
                        Some(encoded)
                    }),
                })
                .collect(),
        ),
        Schema::Union(union) => {
            let variants = union.variants();
            let null = variants
                .iter()
                .position(|v| matches!(v, Schema::Null))
                .map(|i| i as i64);
            let mut others = variants
                .iter()
                .enumerate()
                .filter(|(_, v)| !matches!(v, Schema::Null));
            match (others.next(), others.next()) {
                (None, _) => Node::Union { null, other: None },
                (Some((i, only)), None) => Node::Union {
                    null,
                    other: Some((i as i64, Box::new(compile(only, names, budget, depth)))),
                },
                // from_json tries each branch in turn: left to it.
                (Some(_), Some(_)) => Node::Refuse,
            }
        }
        Schema::Ref { name } => match names.get(&name.fullname(None)) {
            Some(schema) => compile(schema, names, budget, depth),
            None => Node::Refuse,
        },
        // Maps (from_json keeps the last of repeated keys), decimals, durations...
        _ => Node::Refuse,
    }
}

fn refused<E: de::Error>() -> E {
    E::custom("left to from_json")
}

/// The data object itself: a record that also yields its key field's text.
struct Root<'a> {
    plan: &'a Plan,
    out: &'a mut Vec<u8>,
    key: &'a mut Option<String>,
}

impl<'de> Visitor<'de> for Root<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a data object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let mut text = None;
        record(
            &self.plan.fields,
            map,
            self.out,
            Some((self.plan.key, &mut text)),
        )?;
        let text = text.ok_or_else(refused::<A::Error>)?;
        // A request's `key` is compared with the key field as written, and the topic is keyed
        // by the canonical form: a UUID written in upper case is left to from_json's path.
        if matches!(self.plan.fields[self.plan.key].node, Node::Uuid)
            && text.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(refused());
        }
        *self.key = Some(text);
        Ok(())
    }
}

/// Encodes a record's fields in schema order whatever their order in the JSON, and keeps the
/// text of field `key.0` in `key.1` when asked for.
fn record<'de, A: MapAccess<'de>>(
    fields: &[Field],
    mut map: A,
    out: &mut Vec<u8>,
    mut key: Option<(usize, &mut Option<String>)>,
) -> Result<(), A::Error> {
    let start = out.len();
    let mut seen = 0u64;
    // Fields below `next` came in schema order and sit at out[start..prefix_end].
    let mut next = 0;
    let mut prefix_end = start;
    // Fields that came out of order: (index, range in out).
    let mut later: Vec<(usize, usize, usize)> = Vec::new();
    while let Some(index) = map.next_key_seed(FieldName(fields))? {
        let bit = 1u64 << index;
        if seen & bit != 0 {
            // from_json keeps the last of a repeated field: left to it.
            return Err(refused());
        }
        seen |= bit;
        let from = out.len();
        let node = &fields[index].node;
        match &mut key {
            Some((at, text)) if *at == index => map.next_value_seed(KeyText {
                enc: Enc { node, out },
                text,
            })?,
            _ => map.next_value_seed(Enc { node, out })?,
        }
        if later.is_empty() && index == next {
            next += 1;
            prefix_end = out.len();
        } else {
            later.push((index, from, out.len()));
        }
    }
    if later.is_empty() {
        for field in &fields[next..] {
            out.extend_from_slice(field.default.as_deref().ok_or_else(refused)?);
        }
    } else {
        // Out of order (a client that sorts its keys, say): the tail again, in schema order.
        let tail = out.split_off(prefix_end);
        for (index, field) in fields.iter().enumerate().skip(next) {
            match later.iter().find(|(i, _, _)| *i == index) {
                Some(&(_, from, to)) => {
                    out.extend_from_slice(&tail[from - prefix_end..to - prefix_end]);
                }
                None => out.extend_from_slice(field.default.as_deref().ok_or_else(refused)?),
            }
        }
    }
    Ok(())
}

/// The key field's value: encoded like any other, its text kept.
struct KeyText<'a, 'k> {
    enc: Enc<'a>,
    text: &'k mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for KeyText<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyText<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the aggregate id")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        *self.text = Some(s.to_string());
        self.enc.visit_str(s)
    }
}

/// A field name, as its index in the record.
struct FieldName<'a>(&'a [Field]);

impl<'de> DeserializeSeed<'de> for FieldName<'_> {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldName<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<usize, E> {
        self.0
            .iter()
            .position(|f| f.name == name)
            .ok_or_else(refused)
    }
}

/// One value of `node`, encoded onto `out`.
struct Enc<'a> {
    node: &'a Node,
    out: &'a mut Vec<u8>,
}

impl<'a> Enc<'a> {
    /// For a value that is not null: a union writes its branch and encodes as that branch.
    fn branch(self) -> Self {
        match self.node {
            Node::Union {
                other: Some((index, node)),
                ..
            } => {
                long(*index, self.out);
                Enc {
                    node,
                    out: self.out,
                }
            }
            _ => self,
        }
    }

    fn number<E: de::Error>(self, int: Option<i64>, float: f64) -> Result<(), E> {
        let enc = self.branch();
        match enc.node {
            Node::Int => long(
                i64::from(
                    int.and_then(|i| i32::try_from(i).ok())
                        .ok_or_else(refused)?,
                ),
                enc.out,
            ),
            Node::Long => long(int.ok_or_else(refused)?, enc.out),
            Node::Float => enc.out.extend_from_slice(&(float as f32).to_le_bytes()),
            Node::Double => enc.out.extend_from_slice(&float.to_le_bytes()),
            _ => return Err(refused()),
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Enc<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Enc<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value of the schema")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        match self.node {
            Node::Null => Ok(()),
            Node::Union {
                null: Some(index), ..
            } => {
                long(*index, self.out);
                Ok(())
            }
            _ => Err(refused()),
        }
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        let enc = self.branch();
        match enc.node {
            Node::Boolean => {
                enc.out.push(u8::from(b));
                Ok(())
            }
            _ => Err(refused()),
        }
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<(), E> {
        self.number(Some(i), i as f64)
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<(), E> {
        self.number(i64::try_from(u).ok(), u as f64)
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<(), E> {
        self.number(None, f)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        let enc = self.branch();
        let out = enc.out;
        match enc.node {
            Node::String => bytes(s.as_bytes(), out),
            Node::Bytes => bytes(&json::latin1(s).ok_or_else(refused)?, out),
            Node::Fixed(size) => match json::latin1(s) {
                Some(b) if b.len() == *size => out.extend_from_slice(&b),
                _ => return Err(refused()),
            },
            Node::Uuid => {
                uuid(&json::parse_uuid(s).ok_or_else(refused)?, out);
            }
            Node::TimestampMillis => {
                let at = json::parse_timestamp(s).ok_or_else(refused)?;
                long(at.as_millisecond(), out);
            }
            Node::TimestampMicros => {
                let at = json::parse_timestamp(s).ok_or_else(refused)?;
                long(at.as_microsecond(), out);
            }
            Node::Date => long(i64::from(json::parse_date(s).ok_or_else(refused)?), out),
            Node::Enum(symbols) => {
                let index = symbols
                    .iter()
                    .position(|sym| sym == s)
                    .ok_or_else(refused)?;
                long(index as i64, out);
            }
            _ => return Err(refused()),
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let enc = self.branch();
        let Node::Array(items) = enc.node else {
            return Err(refused());
        };
        let out = enc.out;
        let start = out.len();
        let mut count = 0i64;
        while seq
            .next_element_seed(Enc {
                node: items,
                out: &mut *out,
            })?
            .is_some()
        {
            count += 1;
        }
        if count > 0 {
            // One block: its count goes before the items, known only now.
            let end = out.len();
            long(count, out);
            out[start..].rotate_left(end - start);
        }
        out.push(0);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let enc = self.branch();
        let Node::Record(fields) = enc.node else {
            return Err(refused());
        };
        record(fields, map, enc.out, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Catalog;
    use proptest::prelude::*;
    use serde_json::{Value as Json, json};

    /// A record with every type a plan handles, and some it leaves to from_json.
    fn every_type() -> (Schema, Names) {
        let schema = Schema::parse(&json!({
            "type": "record", "name": "Every", "namespace": "t",
            "fields": [
                {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
                {"name": "b", "type": "boolean", "default": true},
                {"name": "i", "type": "int", "default": 7},
                {"name": "l", "type": "long"},
                {"name": "f", "type": "float", "default": 1.5},
                {"name": "d", "type": "double", "default": 2.5},
                {"name": "s", "type": "string", "default": "x"},
                {"name": "by", "type": "bytes", "default": "\u{00ff}"},
                {"name": "fx", "type": {"type": "fixed", "name": "Two", "size": 2}, "default": "ab"},
                {"name": "ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                {"name": "day", "type": {"type": "int", "logicalType": "date"}},
                {"name": "ms_d", "type": {"type": "long", "logicalType": "timestamp-millis"}, "default": 1},
                {"name": "day_d", "type": {"type": "int", "logicalType": "date"}, "default": 2},
                {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "b"]}, "default": "a"},
                {"name": "opt", "type": ["null", "string"], "default": null},
                {"name": "opt_last", "type": ["string", "null"], "default": "z"},
                {"name": "arr", "type": {"type": "array", "items": "Two"}, "default": []},
                {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
                    {"name": "n", "type": "long"},
                    {"name": "again", "type": ["null", "Inner"], "default": null}
                ]}, "default": {"n": 1}},
                {"name": "m", "type": {"type": "map", "values": "long"}, "default": {}},
                {"name": "either", "type": ["null", "long", "string"], "default": null}
            ]
        }))
        .unwrap();
        let names = json::collect_names(&schema);
        (schema, names)
    }

    /// Both ways of encoding `data`: (direct, through the JSON tree).
    fn both(
        schema: &Schema,
        names: &Names,
        key: &str,
        data: &str,
    ) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let plan = Plan::new(schema, names, key).expect("a plan");
        let mut direct = vec![9];
        let direct = match plan.encode(data, &mut direct) {
            Some(_) => Some(direct[1..].to_vec()),
            None => {
                assert_eq!(direct, [9], "a refusal leaves the buffer as it was");
                None
            }
        };
        let tree = serde_json::from_str::<Json>(data)
            .ok()
            .and_then(|json| json::from_json(schema, names, &json, "").ok())
            .map(|value| {
                let mut out = Vec::new();
                crate::binary::encode(&value, schema, names, &mut out).unwrap();
                out
            });
        (direct, tree)
    }

    const ID: &str = "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11";
    const AT: &str = "2026-11-22T09:30:00Z";

    #[test]
    fn every_handled_type_encodes_as_through_the_tree() {
        let (schema, names) = every_type();
        let full = json!({"id": ID, "b": false, "i": -3, "l": 1u64 << 40, "f": 0.25,
            "d": -1e300, "s": "é\"\\n", "by": "\u{0001}\u{00e9}", "fx": "zz",
            "ms": "2026-11-22T09:30:00.123Z", "us": "2026-11-22T09:30:00.123456+02:00",
            "day": "2026-11-22", "e": "b", "opt": "o", "opt_last": null, "arr": ["ab", "cd"],
            "inner": {"again": {"n": 2, "again": null}, "n": 3}});
        for data in [
            full.to_string(),
            // Fields in another order, and with every default left out.
            format!(r#"{{"l": 5, "day": "1970-01-01", "us": "{AT}", "ms": "{AT}", "id": "{ID}"}}"#),
            format!(
                r#"{{"id": "{ID}", "l": 5, "i": 2147483647, "f": 3, "d": 18446744073709551615,
                "ms": "{AT}", "us": "{AT}", "day": "2000-02-29"}}"#
            ),
            format!(
                r#"{{"inner": {{"n": 1}}, "arr": [], "ms": "{AT}", "us": "{AT}", "day": "2026-01-01",
                "l": -1, "id": "{ID}"}}"#
            ),
        ] {
            let (direct, tree) = both(&schema, &names, "id", &data);
            let json: Json = serde_json::from_str(&data).unwrap();
            assert!(
                tree.is_some(),
                "{data} {:?}",
                json::from_json(&schema, &names, &json, "")
            );
            assert_eq!(direct, tree, "{data}");
        }
    }

    #[test]
    fn the_key_is_the_aggregate_id_as_written_and_canonical() {
        let (schema, names) = every_type();
        let plan = Plan::new(&schema, &names, "id").unwrap();
        let data = |id: &str| {
            format!(r#"{{"id": "{id}", "l": 1, "ms": "{AT}", "us": "{AT}", "day": "2026-11-22"}}"#)
        };
        assert_eq!(plan.encode(&data(ID), &mut Vec::new()).as_deref(), Some(ID));
        // Written in upper case, its text and its canonical form differ: left to from_json.
        assert_eq!(
            plan.encode(&data(&ID.to_uppercase()), &mut Vec::new()),
            None
        );
        assert!(
            Plan::new(&schema, &names, "l").is_none(),
            "only a string or UUID keys"
        );
        let catalog = Catalog::embedded().unwrap();
        let order = catalog.latest("order.placed").unwrap();
        let mut empty = order.example.clone();
        empty["order_id"] = json!("");
        let mut out = vec![1, 2];
        assert_eq!(order.encode_json(&empty.to_string(), &mut out), None);
        assert_eq!(out, [1, 2], "a refusal leaves the buffer as it was");
    }

    /// The required fields of `every_type`, with `changes` made (null removes a field).
    fn required_and(changes: &Json) -> String {
        let mut data = json!({"id": ID, "l": 1, "ms": AT, "us": AT, "day": "2026-11-22"});
        for (key, value) in changes.as_object().unwrap() {
            match value {
                Json::Null => data.as_object_mut().unwrap().remove(key),
                value => data
                    .as_object_mut()
                    .unwrap()
                    .insert(key.clone(), value.clone()),
            };
        }
        data.to_string()
    }

    #[test]
    fn what_from_json_refuses_is_refused() {
        let (schema, names) = every_type();
        for data in [
            "[]".to_string(),
            "{".to_string(),
            required_and(&json!({"l": null})),
            required_and(&json!({"unknown": 1})),
            required_and(&json!({"l": 1.5})),
            required_and(&json!({"i": 2147483648u64})),
            required_and(&json!({"l": u64::MAX})),
            required_and(&json!({"l": "1"})),
            required_and(&json!({"b": 1})),
            required_and(&json!({"f": "1"})),
            required_and(&json!({"fx": "abc"})),
            required_and(&json!({"by": "€"})),
            required_and(&json!({"e": "c"})),
            required_and(&json!({"day": "2026-02-30"})),
            required_and(&json!({"ms": "yesterday"})),
            required_and(&json!({"us": 5})),
            required_and(&json!({"arr": ["ab", 1]})),
            required_and(&json!({"arr": {}})),
            required_and(&json!({"inner": {}})),
            required_and(&json!({"inner": []})),
            required_and(&json!({"opt": 1})),
            required_and(&json!({"id": format!("{{{ID}}}")})),
            required_and(&json!({"id": ID.replace('-', "")})),
            format!("{} trailing", required_and(&json!({}))),
            format!(r#"{{"id": "{ID}", "l": 1, "ms": "{AT}", "us": "{AT}", "day": null}}"#),
        ] {
            let (direct, tree) = both(&schema, &names, "id", &data);
            assert_eq!(tree, None, "{data}");
            assert_eq!(direct, None, "{data}");
        }
    }

    #[test]
    fn what_only_from_json_handles_is_left_to_it() {
        let (schema, names) = every_type();
        for data in [
            required_and(&json!({"m": {"a": 1}})),
            required_and(&json!({"either": 3})),
            required_and(&json!({"id": ID.to_uppercase()})),
            format!(
                r#"{{"id": "{ID}", "l": 1, "ms": "{AT}", "us": "{AT}", "day": "2026-11-22", "l": 2}}"#
            ),
        ] {
            let (direct, tree) = both(&schema, &names, "id", &data);
            assert!(tree.is_some(), "{data}");
            assert_eq!(direct, None, "{data}");
        }
    }

    /// Every leaf and object of `json`, by path, to mutate one.
    fn paths(json: &Json, at: &mut Vec<String>, all: &mut Vec<Vec<String>>) {
        all.push(at.clone());
        let children: Vec<(String, &Json)> = match json {
            Json::Object(o) => o.iter().map(|(k, v)| (k.clone(), v)).collect(),
            Json::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            _ => return,
        };
        for (key, child) in children {
            at.push(key);
            paths(child, at, all);
            at.pop();
        }
    }

    fn leaf() -> impl Strategy<Value = Json> {
        prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            (-1e6f64..1e6).prop_map(Json::from),
            "\\PC{0,12}".prop_map(Json::from),
            Just(json!(ID)),
            Just(json!("2026-11-22T09:30:00Z")),
            Just(json!("sms")),
            Just(json!([])),
            Just(json!({})),
            Just(json!(["email", "push"])),
        ]
    }

    proptest! {
        /// Examples of the catalog with one part replaced, removed, or one field added:
        /// the direct encoder accepts exactly what the tree accepts, with the same bytes.
        #[test]
        fn direct_and_tree_agree_on_mutated_examples(
            which in 0usize..64, pick in any::<prop::sample::Index>(), op in 0u8..3,
            replacement in leaf(), name in "[a-z_]{1,12}",
        ) {
            let catalog = Catalog::embedded().unwrap();
            let versions: Vec<_> = catalog.all_versions().collect();
            let schema = versions[which % versions.len()];
            let mut data = schema.example.clone();
            let mut all = Vec::new();
            paths(&data, &mut Vec::new(), &mut all);
            let path = pick.get(&all).clone();
            let pointer: String = path.iter().map(|p| format!("/{p}")).collect();
            match (op, path.split_last()) {
                (0, _) | (_, None) => *data.pointer_mut(&pointer).unwrap() = replacement,
                (1, Some((last, parent))) => {
                    let parent: String = parent.iter().map(|p| format!("/{p}")).collect();
                    match data.pointer_mut(&parent).unwrap() {
                        Json::Object(o) => { o.remove(last); }
                        Json::Array(a) => { a.remove(last.parse::<usize>().unwrap()); }
                        _ => unreachable!(),
                    }
                }
                _ => if let Some(Json::Object(o)) = data.pointer_mut(&pointer) {
                    o.insert(name, replacement);
                },
            }
            let text = data.to_string();
            let mut direct = Vec::new();
            let key = schema.encode_json(&text, &mut direct);
            // An empty aggregate id fits the schema but is no key: the ingress refuses it on
            // either path.
            let keyed = data.get(&schema.key_field) != Some(&Json::from(""));
            let tree = schema.validate(&data, "").ok().filter(|_| keyed).map(|value| {
                let mut out = Vec::new();
                schema.encode_value(&value, &mut out).unwrap();
                out
            });
            prop_assert_eq!(key.is_some().then_some(direct), tree, "{}", text);
        }
    }
}
