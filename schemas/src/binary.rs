//! Avro binary encoding of values that [`crate::json::from_json`] built.
//!
//! apache-avro's writers rebuild a table of the schema's named types on every call (about a
//! tenth of the ingress's CPU per event); the catalog already holds that table, so encoding
//! here is a plain walk of value and schema. Decoding stays with apache-avro, and the codec's
//! property tests read back with it everything written here.

use apache_avro::Schema;
use apache_avro::types::Value;

use crate::json::Names;

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
            bytes(
                u.hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer())
                    .as_bytes(),
                out,
            );
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

/// Zig-zag variable-length long.
fn long(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn bytes(b: &[u8], out: &mut Vec<u8>) {
    long(b.len() as i64, out);
    out.extend_from_slice(b);
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
