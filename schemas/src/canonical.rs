//! The Avro specification's Parsing Canonical Form and its CRC-64-AVRO fingerprint, written
//! from the specification ("Schema Resolution" › "Parsing Canonical Form for Schemas") rather
//! than taken from a library: single-object encoding names a schema by this fingerprint, and
//! every reader (Java's `BinaryMessageDecoder`, fastavro) computes it the specification's way.
//! The tests pin it to the specification's own examples.
//!
//! The form, from a schema's JSON: primitives as bare names (a logical type is stripped to the
//! type it annotates: `{"type":"long","logicalType":"timestamp-micros"}` is `"long"`); named
//! types by full name, defined at first use and named alone after; only `name`, `type`,
//! `fields`, `symbols`, `items`, `values` and `size`, in that order; no white space.

use std::collections::HashSet;

use serde_json::Value;

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// The Parsing Canonical Form of `schema` (its JSON).
pub fn parsing_canonical_form(schema: &Value) -> String {
    let mut out = String::new();
    write(schema, "", &mut HashSet::new(), &mut out);
    out
}

/// CRC-64-AVRO (Rabin) of `bytes`, as the specification defines it.
pub fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let table: [u64; 256] = std::array::from_fn(|i| {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
        }
        fp
    });
    bytes.iter().fold(EMPTY, |fp, byte| {
        (fp >> 8) ^ table[((fp ^ u64::from(*byte)) & 0xff) as usize]
    })
}

/// The 8 bytes single-object encoding carries: the fingerprint of the canonical form,
/// little-endian.
pub fn fingerprint(schema: &Value) -> [u8; 8] {
    crc64_avro(parsing_canonical_form(schema).as_bytes()).to_le_bytes()
}

/// A named type's full name: its name when dotted, else qualified by its own namespace or
/// the enclosing one.
fn full_name(name: &str, namespace: Option<&str>, enclosing: &str) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    match namespace.unwrap_or(enclosing) {
        "" => name.to_string(),
        space => format!("{space}.{name}"),
    }
}

/// The namespace a full name gives the types defined inside it.
fn namespace_of(full: &str) -> &str {
    full.rsplit_once('.').map_or("", |(space, _)| space)
}

fn write_string(text: &str, out: &mut String) {
    // serde_json writes a string with UTF-8 left as it is and only what JSON requires
    // escaped, which is what [STRINGS] asks for.
    out.push_str(&Value::String(text.to_string()).to_string());
}

fn write(schema: &Value, enclosing: &str, defined: &mut HashSet<String>, out: &mut String) {
    match schema {
        Value::String(name) => {
            if PRIMITIVES.contains(&name.as_str()) {
                write_string(name, out);
            } else {
                // A reference to a named type.
                write_string(&full_name(name, None, enclosing), out);
            }
        }
        Value::Array(branches) => {
            out.push('[');
            for (i, branch) in branches.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(branch, enclosing, defined, out);
            }
            out.push(']');
        }
        Value::Object(object) => {
            let kind = object.get("type").cloned().unwrap_or(Value::Null);
            let Value::String(kind) = kind else {
                // `{"type": {...}}`: the inner schema is the schema.
                return write(&kind, enclosing, defined, out);
            };
            match kind.as_str() {
                "record" | "error" | "enum" | "fixed" => {
                    let name = object
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let namespace = object.get("namespace").and_then(Value::as_str);
                    let full = full_name(name, namespace, enclosing);
                    if !defined.insert(full.clone()) {
                        return write_string(&full, out);
                    }
                    out.push_str("{\"name\":");
                    write_string(&full, out);
                    out.push_str(",\"type\":");
                    write_string(if kind == "error" { "record" } else { &kind }, out);
                    match kind.as_str() {
                        "enum" => {
                            out.push_str(",\"symbols\":[");
                            let symbols = object.get("symbols").and_then(Value::as_array);
                            for (i, symbol) in symbols.into_iter().flatten().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                write_string(symbol.as_str().unwrap_or_default(), out);
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            let size = object.get("size").and_then(Value::as_u64).unwrap_or(0);
                            out.push_str(&format!(",\"size\":{size}"));
                        }
                        _ => {
                            out.push_str(",\"fields\":[");
                            let inner = namespace_of(&full);
                            let fields = object.get("fields").and_then(Value::as_array);
                            for (i, field) in fields.into_iter().flatten().enumerate() {
                                if i > 0 {
                                    out.push(',');
                                }
                                out.push_str("{\"name\":");
                                write_string(
                                    field
                                        .get("name")
                                        .and_then(Value::as_str)
                                        .unwrap_or_default(),
                                    out,
                                );
                                out.push_str(",\"type\":");
                                write(
                                    field.get("type").unwrap_or(&Value::Null),
                                    inner,
                                    defined,
                                    out,
                                );
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                }
                "array" => {
                    out.push_str("{\"type\":\"array\",\"items\":");
                    write(
                        object.get("items").unwrap_or(&Value::Null),
                        enclosing,
                        defined,
                        out,
                    );
                    out.push('}');
                }
                "map" => {
                    out.push_str("{\"type\":\"map\",\"values\":");
                    write(
                        object.get("values").unwrap_or(&Value::Null),
                        enclosing,
                        defined,
                        out,
                    );
                    out.push('}');
                }
                // A primitive, with or without a logical type: its bare name.
                primitive => write(
                    &Value::String(primitive.to_string()),
                    enclosing,
                    defined,
                    out,
                ),
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The specification's own examples (Avro's `share/test/data/schema-tests.txt`, the
    /// fingerprints as Java's `SchemaNormalization.parsingFingerprint64` gives them), and
    /// canonical forms fastavro agrees with.
    #[test]
    fn canonical_forms_and_fingerprints_match_the_specification() {
        let primitives: [(&str, u64); 8] = [
            ("null", 7_195_948_357_588_979_594),
            ("boolean", 11_476_012_395_585_140_580),
            ("int", 8_247_732_601_305_521_295),
            ("long", 15_011_871_142_588_980_663),
            ("float", 5_583_340_709_985_441_680),
            ("double", 10_265_170_025_261_012_350),
            ("bytes", 5_746_618_253_357_095_269),
            ("string", 10_304_597_078_529_344_455),
        ];
        for (name, expected) in primitives {
            for schema in [json!(name), json!({"type": name})] {
                assert_eq!(parsing_canonical_form(&schema), format!("\"{name}\""));
                assert_eq!(
                    crc64_avro(parsing_canonical_form(&schema).as_bytes()),
                    expected
                );
            }
        }
        let cases = [
            (
                json!({"type": "fixed", "name": "F", "namespace": "x.y", "size": 16, "doc": "d", "aliases": ["g"]}),
                r#"{"name":"x.y.F","type":"fixed","size":16}"#,
                3_600_938_578_473_418_882u64,
            ),
            (
                json!({"type": "enum", "name": "E", "symbols": ["A", "B"], "doc": "x", "default": "A"}),
                r#"{"name":"E","type":"enum","symbols":["A","B"]}"#,
                12_542_751_487_039_468_373,
            ),
            (
                json!({"type": "array", "items": {"type": "long", "logicalType": "timestamp-millis"}}),
                r#"{"type":"array","items":"long"}"#,
                6_059_251_950_232_166_001,
            ),
            (
                json!({"type": "map", "values": "string"}),
                r#"{"type":"map","values":"string"}"#,
                9_713_866_774_919_136_626,
            ),
            (
                json!(["null", {"type": "string", "logicalType": "uuid"}]),
                r#"["null","string"]"#,
                10_972_442_280_899_560_605,
            ),
            (
                json!({"type": "record", "name": "R", "namespace": "n", "doc": "d", "fields": [
                    {"name": "a", "type": "int", "default": 1, "doc": "x"},
                    {"name": "b", "type": {"type": "record", "name": "S", "fields": [{"name": "c", "type": "R"}]}},
                    {"name": "d", "type": "n.S"},
                    {"name": "e", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}},
                    {"name": "f", "type": {"type": "fixed", "name": "other.D", "size": 2, "logicalType": "decimal", "precision": 4}}
                ]}),
                r#"{"name":"n.R","type":"record","fields":[{"name":"a","type":"int"},{"name":"b","type":{"name":"n.S","type":"record","fields":[{"name":"c","type":"n.R"}]}},{"name":"d","type":"n.S"},{"name":"e","type":"bytes"},{"name":"f","type":{"name":"other.D","type":"fixed","size":2}}]}"#,
                10_706_638_481_090_948_971,
            ),
        ];
        for (schema, form, expected) in cases {
            assert_eq!(parsing_canonical_form(&schema), form);
            assert_eq!(crc64_avro(form.as_bytes()), expected, "{form}");
        }
    }
}
