//! Avro binary encoding of values that [`crate::json::from_json`] built, and decoding of
//! records read with the schema they were written with straight to JSON.
//!
//! apache-avro's writers rebuild a table of the schema's named types on every call (about a
//! tenth of the ingress's CPU per event); the catalog already holds that table, so encoding
//! here is a plain walk of value and schema. Reading is the same walk over bytes: a replay
//! decodes millions of records, and going through apache-avro's generic values and then to
//! JSON took most of its time. Schema resolution (a record written with an older version)
//! stays with apache-avro. The codec's tests check both directions against apache-avro.

use apache_avro::Schema;
use apache_avro::types::Value;
use serde_json::Number;

use crate::Envelope;
use crate::json::{Names, date_json, timestamp_json};

#[derive(Debug, thiserror::Error)]
#[error("value does not fit its schema at {0}")]
pub struct EncodeError(&'static str);

/// Appends the Avro binary form of `value` (of `schema`) to `out`.
pub fn encode(
    value: &Value,
    schema: &Schema,
    names: &Names,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match (schema, value) {
        (Schema::Ref { name }, _) => {
            let schema = names
                .get(&name.fullname(None))
                .ok_or(EncodeError("unknown named type"))?;
            encode(value, schema, names, out)
        }
        (_, Value::Null) => Ok(()),
        (_, Value::Boolean(b)) => {
            out.push(u8::from(*b));
            Ok(())
        }
        (_, Value::Int(i) | Value::Date(i)) => {
            long(i64::from(*i), out);
            Ok(())
        }
        (_, Value::Long(i) | Value::TimestampMillis(i) | Value::TimestampMicros(i)) => {
            long(*i, out);
            Ok(())
        }
        (_, Value::Float(f)) => {
            out.extend_from_slice(&f.to_le_bytes());
            Ok(())
        }
        (_, Value::Double(f)) => {
            out.extend_from_slice(&f.to_le_bytes());
            Ok(())
        }
        (_, Value::String(s)) => {
            bytes(s.as_bytes(), out);
            Ok(())
        }
        (Schema::Uuid(_), Value::Uuid(u)) => {
            uuid(u, out);
            Ok(())
        }
        (_, Value::Bytes(b)) => {
            bytes(b, out);
            Ok(())
        }
        (_, Value::Fixed(_, b)) => {
            out.extend_from_slice(b);
            Ok(())
        }
        (_, Value::Enum(index, _)) => {
            long(i64::from(*index), out);
            Ok(())
        }
        (Schema::Union(union), Value::Union(index, inner)) => {
            let branch = union
                .variants()
                .get(*index as usize)
                .ok_or(EncodeError("union branch"))?;
            long(i64::from(*index), out);
            encode(inner, branch, names, out)
        }
        (Schema::Array(array), Value::Array(items)) => {
            if !items.is_empty() {
                long(items.len() as i64, out);
                for item in items {
                    encode(item, &array.items, names, out)?;
                }
            }
            out.push(0);
            Ok(())
        }
        (Schema::Map(map), Value::Map(entries)) => {
            if !entries.is_empty() {
                long(entries.len() as i64, out);
                for (key, item) in entries {
                    bytes(key.as_bytes(), out);
                    encode(item, &map.types, names, out)?;
                }
            }
            out.push(0);
            Ok(())
        }
        (Schema::Record(record), Value::Record(fields)) => {
            if record.fields.len() != fields.len() {
                return Err(EncodeError("record field count"));
            }
            for (field, (_, value)) in record.fields.iter().zip(fields) {
                encode(value, &field.schema, names, out)?;
            }
            Ok(())
        }
        _ => Err(EncodeError("unsupported value")),
    }
}

/// Appends the envelope's fields (`schemas/avro/_envelope.avsc`), in order: the front of
/// every wire record.
pub fn envelope(envelope: &Envelope, out: &mut Vec<u8>) {
    let micros = |at: jiff::Timestamp| at.as_microsecond();
    uuid(&envelope.event_id, out);
    bytes(envelope.event_type.as_bytes(), out);
    long(micros(envelope.occurred_at), out);
    long(micros(envelope.received_at), out);
    bytes(envelope.actor.as_bytes(), out);
    bytes(envelope.source.as_bytes(), out);
    match &envelope.idempotency_key {
        None => long(0, out),
        Some(key) => {
            long(1, out);
            bytes(key.as_bytes(), out);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("record does not fit its writer schema: {0}")]
pub struct DecodeError(pub &'static str);

/// Reads one value of `schema` from the front of `input`, writes it to `out` as the JSON
/// text of what [`crate::json::to_json`] gives for it, and advances `input` past it.
pub fn write_json(
    schema: &Schema,
    names: &Names,
    input: &mut &[u8],
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    match schema {
        Schema::Ref { name } => {
            let schema = names
                .get(&name.fullname(None))
                .ok_or(DecodeError("unknown named type"))?;
            write_json(schema, names, input, out)?;
        }
        Schema::Null => out.extend_from_slice(b"null"),
        Schema::Boolean => match take(input, 1)? {
            [0] => out.extend_from_slice(b"false"),
            [1] => out.extend_from_slice(b"true"),
            _ => return Err(DecodeError("boolean out of range")),
        },
        Schema::Int => {
            let i =
                i32::try_from(read_long(input)?).map_err(|_| DecodeError("int out of range"))?;
            write_value(out, &i);
        }
        Schema::Long => write_value(out, &read_long(input)?),
        Schema::Date => {
            let days =
                i32::try_from(read_long(input)?).map_err(|_| DecodeError("date out of range"))?;
            write_value(out, &date_json(days));
        }
        Schema::TimestampMillis => {
            write_value(
                out,
                &timestamp_json(i128::from(read_long(input)?) * 1_000_000),
            );
        }
        Schema::TimestampMicros => {
            write_value(out, &timestamp_json(i128::from(read_long(input)?) * 1_000));
        }
        Schema::Float => {
            let b: [u8; 4] = take(input, 4)?.try_into().expect("4 bytes");
            write_value(out, &Number::from_f64(f64::from(f32::from_le_bytes(b))));
        }
        Schema::Double => {
            let b: [u8; 8] = take(input, 8)?.try_into().expect("8 bytes");
            write_value(out, &Number::from_f64(f64::from_le_bytes(b)));
        }
        Schema::String => write_value(out, read_str(input)?),
        Schema::Uuid(_) => {
            let uuid =
                uuid::Uuid::try_parse(read_str(input)?).map_err(|_| DecodeError("not a UUID"))?;
            write_value(
                out,
                uuid.hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            );
        }
        Schema::Bytes => write_value(out, &latin1(read_bytes(input)?)),
        Schema::Fixed(fixed) => write_value(out, &latin1(take(input, fixed.size)?)),
        Schema::Enum(e) => {
            let symbol = usize::try_from(read_long(input)?)
                .ok()
                .and_then(|i| e.symbols.get(i))
                .ok_or(DecodeError("enum index out of range"))?;
            write_value(out, symbol);
        }
        Schema::Union(union) => {
            let branch = usize::try_from(read_long(input)?)
                .ok()
                .and_then(|i| union.variants().get(i))
                .ok_or(DecodeError("union branch out of range"))?;
            write_json(branch, names, input, out)?;
        }
        Schema::Array(array) => {
            out.push(b'[');
            let mut first = true;
            read_blocks(input, |input| {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                write_json(&array.items, names, input, out)
            })?;
            out.push(b']');
        }
        Schema::Map(map) => {
            // Keys in order, like serde_json's own maps, so both decoders agree.
            let mut entries = std::collections::BTreeMap::new();
            read_blocks(input, |input| {
                let key = read_str(input)?;
                let mut value = Vec::new();
                write_json(&map.types, names, input, &mut value)?;
                entries.insert(key, value);
                Ok(())
            })?;
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, key);
                out.push(b':');
                out.extend_from_slice(&value);
            }
            out.push(b'}');
        }
        Schema::Record(record) => {
            out.push(b'{');
            for (i, field) in record.fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, field.name.as_str());
                out.push(b':');
                write_json(&field.schema, names, input, out)?;
            }
            out.push(b'}');
        }
        _ => return Err(DecodeError("a type Herald schemas do not use")),
    }
    Ok(())
}

fn write_value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("writing JSON to memory cannot fail");
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&c| char::from(c)).collect()
}

/// Array and map items come in blocks, each a count then the items, ended by a count of 0;
/// a negative count is followed by the block's size in bytes.
pub(crate) fn read_blocks<'a>(
    input: &mut &'a [u8],
    mut item: impl FnMut(&mut &'a [u8]) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    loop {
        let count = read_long(input)?;
        if count == 0 {
            return Ok(());
        }
        if count < 0 {
            read_long(input)?;
        }
        // Each item takes at least a byte, except nulls: a count beyond the input is corrupt.
        let count = count.unsigned_abs();
        if count > input.len() as u64 + 1 {
            return Err(DecodeError("block count beyond the record"));
        }
        for _ in 0..count {
            item(input)?;
        }
    }
}

pub(crate) fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if input.len() < n {
        return Err(DecodeError("record ends early"));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

/// Reads a zig-zag variable-length long.
pub fn read_long(input: &mut &[u8]) -> Result<i64, DecodeError> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let [byte, rest @ ..] = *input else {
            return Err(DecodeError("record ends early"));
        };
        *input = rest;
        z |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    Err(DecodeError("variable-length long over 10 bytes"))
}

pub(crate) fn read_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = usize::try_from(read_long(input)?).map_err(|_| DecodeError("negative length"))?;
    take(input, len)
}

/// Reads a string as UTF-8.
pub fn read_str<'a>(input: &mut &'a [u8]) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(read_bytes(input)?).map_err(|_| DecodeError("string not UTF-8"))
}

/// Zig-zag variable-length long.
pub(crate) fn long(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

pub(crate) fn bytes(b: &[u8], out: &mut Vec<u8>) {
    long(b.len() as i64, out);
    out.extend_from_slice(b);
}

/// A UUID as Avro's `uuid` logical type: a string, hyphenated, lower case.
pub(crate) fn uuid(u: &uuid::Uuid, out: &mut Vec<u8>) {
    let mut buffer = uuid::Uuid::encode_buffer();
    bytes(u.hyphenated().encode_lower(&mut buffer).as_bytes(), out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_are_zigzag_varints() {
        for (n, expected) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 1]),
        ] {
            let mut out = Vec::new();
            long(n, &mut out);
            assert_eq!(out, expected, "{n}");
        }
    }
}
