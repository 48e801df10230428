//! What the contract says of an event's data beyond its schema: whose event it is, and the
//! domain rules Avro cannot state (amounts that add up, quantities above zero).
//!
//! Both are declared in the schema's `herald` attribute (`"owner": "customer_id"`,
//! `"rules": ["order-amounts"]`) and read from the data's Avro binary, which every way into
//! the ingress produces: one check serves the JSON tree and the direct encoder alike, and
//! reads only the fields a rule asks for, in place, with no allocation.

use apache_avro::Schema;
use apache_avro::schema::InnerDecimalSchema;

use crate::binary::{DecodeError, read_blocks as blocks, read_bytes, read_long, read_str, take};
use crate::json::{FieldError, Names};

/// Whose an event is: the party it belongs to, who alone may publish it as a `user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A top-level string or UUID field of the data holds the owner's id (`customer_id`).
    Field(String),
    /// Whoever publishes it: the envelope's actor, stamped from the token (a message's
    /// sender).
    Actor,
}

impl Owner {
    /// As the `herald` attribute writes it: a field's name, or `@actor`.
    pub fn as_str(&self) -> &str {
        match self {
            Owner::Field(name) => name,
            Owner::Actor => ACTOR,
        }
    }
}

pub(crate) const ACTOR: &str = "@actor";

/// How a sealed value begins (`platform::seal` writes and opens them; the contract only
/// tells them apart from plain text).
pub const SEALED_PREFIX: &str = "sealed:v1:";

/// A domain rule: a name the schema refers to and the check it stands for.
#[derive(Debug)]
pub struct Rule {
    pub name: &'static str,
    /// What the rule asks, for the catalog endpoint.
    pub says: &'static str,
    check: fn(Value<'_>, &mut Vec<(String, String)>),
}

/// Every rule a schema may name.
pub(crate) const RULES: &[Rule] = &[Rule {
    name: "order-amounts",
    says: "at least one item; every quantity at least 1; no negative price or total; \
           total_cents equal to the sum of quantity × unit_price_cents; currency an ISO 4217 code",
    check: order_amounts,
}];

pub(crate) fn rule(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|rule| rule.name == name)
}

/// What reading an event's data found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataFacts<'a> {
    /// The owner field's value, when the event type names a field as its owner.
    pub owner: Option<&'a str>,
}

/// Reads `avro`, the binary of a data record of `schema`, for its owner field and checks
/// `rules`; broken rules are named by pointers under `base`.
pub(crate) fn check<'a>(
    schema: &'a Schema,
    names: &'a Names,
    (owner, rules, sealed): (Option<&Owner>, &[&'static Rule], &[String]),
    avro: &'a [u8],
    base: &str,
) -> Result<DataFacts<'a>, Vec<FieldError>> {
    let record = Value {
        schema,
        names,
        bytes: avro,
    };
    let owner = match owner {
        Some(Owner::Field(field)) => record.field(field).and_then(Value::text),
        _ => None,
    };
    let mut broken = Vec::new();
    for field in sealed {
        let text = record.field(field).and_then(Value::text);
        if text.is_some_and(|value| !value.starts_with(SEALED_PREFIX)) {
            broken.push((
                format!("/{field}"),
                "carries a live secret, and the log is kept for good: seal it with the sealing key \
                 before publishing (see the README's security section)"
                    .into(),
            ));
        }
    }
    for rule in rules {
        (rule.check)(record, &mut broken);
    }
    if broken.is_empty() {
        Ok(DataFacts { owner })
    } else {
        Err(broken
            .into_iter()
            .map(|(at, message)| FieldError {
                pointer: format!("{base}{at}"),
                message,
            })
            .collect())
    }
}

/// A value of `schema` at the front of `bytes`, read only where a rule asks: nothing is
/// decoded ahead or copied, so a check costs no allocation. Bytes that do not fit the schema
/// read as absent (they come from this crate's own encoders).
#[derive(Clone, Copy)]
struct Value<'a> {
    schema: &'a Schema,
    names: &'a Names,
    bytes: &'a [u8],
}

impl<'a> Value<'a> {
    /// The value itself: a reference followed, a union's branch chosen.
    fn resolved(self) -> Option<Self> {
        let mut value = self;
        for _ in 0..MAX_DEPTH {
            match value.schema {
                Schema::Ref { name } => value.schema = value.names.get(&name.fullname(None))?,
                Schema::Union(union) => {
                    let mut bytes = value.bytes;
                    let branch = usize::try_from(read_long(&mut bytes).ok()?).ok()?;
                    value.schema = union.variants().get(branch)?;
                    value.bytes = bytes;
                }
                _ => return Some(value),
            }
        }
        None
    }

    /// A record's field `name`.
    fn field(self, name: &str) -> Option<Self> {
        let value = self.resolved()?;
        let Schema::Record(record) = value.schema else {
            return None;
        };
        let mut bytes = value.bytes;
        for field in &record.fields {
            if field.name == name {
                return Some(Value {
                    schema: &field.schema,
                    names: value.names,
                    bytes,
                });
            }
            skip(&field.schema, value.names, &mut bytes, 0).ok()?;
        }
        None
    }

    /// Calls `each` with every field of a record, in schema order, in one pass.
    fn each_field(self, mut each: impl FnMut(&str, Value<'a>)) {
        let Some(value) = self.resolved() else { return };
        let Schema::Record(record) = value.schema else {
            return;
        };
        let mut bytes = value.bytes;
        for field in &record.fields {
            each(
                &field.name,
                Value {
                    schema: &field.schema,
                    names: value.names,
                    bytes,
                },
            );
            if skip(&field.schema, value.names, &mut bytes, 0).is_err() {
                return;
            }
        }
    }

    fn long(self) -> Option<i64> {
        let value = self.resolved()?;
        match value.schema {
            Schema::Int | Schema::Long => read_long(&mut { value.bytes }).ok(),
            _ => None,
        }
    }

    fn text(self) -> Option<&'a str> {
        let value = self.resolved()?;
        match value.schema {
            Schema::String | Schema::Uuid(_) => read_str(&mut { value.bytes }).ok(),
            _ => None,
        }
    }

    /// Calls `each` with every item of an array, in order; how many there were.
    fn each_item(self, mut each: impl FnMut(usize, Value<'a>)) -> usize {
        let Some(value) = self.resolved() else {
            return 0;
        };
        let Schema::Array(array) = value.schema else {
            return 0;
        };
        let mut count = 0;
        let mut bytes = value.bytes;
        let _ = blocks(&mut bytes, |input| {
            each(
                count,
                Value {
                    schema: &array.items,
                    names: value.names,
                    bytes: input,
                },
            );
            count += 1;
            skip(&array.items, value.names, input, 0)
        });
        count
    }
}

/// Where a string sits in a record's binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringSpan {
    /// Where its length prefix begins.
    pub start: usize,
    /// Its text.
    pub text: std::ops::Range<usize>,
}

/// Where the named top-level string fields of a data record sit in `avro`: for each of
/// `fields`, its span, `None` when it is null or the record has no such string field.
pub(crate) fn string_spans(
    schema: &Schema,
    names: &Names,
    avro: &[u8],
    fields: &[&str],
) -> Result<Vec<Option<StringSpan>>, DecodeError> {
    let Schema::Record(record) = schema else {
        return Err(DecodeError("not a record"));
    };
    let mut spans = vec![None; fields.len()];
    let mut input = avro;
    let at = |input: &[u8]| avro.len() - input.len();
    for field in &record.fields {
        let Some(slot) = fields.iter().position(|f| *f == field.name) else {
            skip(&field.schema, names, &mut input, 0)?;
            continue;
        };
        let schema = match &field.schema {
            Schema::Union(union) => usize::try_from(read_long(&mut input)?)
                .ok()
                .and_then(|i| union.variants().get(i))
                .ok_or(DecodeError("union branch out of range"))?,
            other => other,
        };
        // A UUID is a string on the wire (`skip` reads it as one too).
        if matches!(schema, Schema::String | Schema::Uuid(_)) {
            let start = at(input);
            let text = read_bytes(&mut input)?;
            let end = at(input);
            spans[slot] = Some(StringSpan {
                start,
                text: end - text.len()..end,
            });
        } else {
            skip(schema, names, &mut input, 0)?;
        }
    }
    Ok(spans)
}

/// `avro` with the strings at `spans` (from [`string_spans`], none overlapping) replaced by
/// new text, length prefixes and all.
pub(crate) fn replace_strings(avro: &[u8], spans: &[(StringSpan, &str)]) -> Vec<u8> {
    let grown: usize = spans.iter().map(|(_, text)| text.len() + 10).sum();
    let mut out = Vec::with_capacity(avro.len() + grown);
    let mut ordered: Vec<&(StringSpan, &str)> = spans.iter().collect();
    ordered.sort_by_key(|(span, _)| span.start);
    let mut from = 0;
    for (span, text) in ordered {
        out.extend_from_slice(&avro[from..span.start]);
        crate::binary::bytes(text.as_bytes(), &mut out);
        from = span.text.end;
    }
    out.extend_from_slice(&avro[from..]);
    out
}

/// Nesting deeper than this is refused rather than followed (a recursive schema).
const MAX_DEPTH: usize = 64;

/// Moves `input` past one value of `schema`.
fn skip(
    schema: &Schema,
    names: &Names,
    input: &mut &[u8],
    depth: usize,
) -> Result<(), DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError("nested too deep"));
    }
    let depth = depth + 1;
    match schema {
        Schema::Null => {}
        Schema::Boolean => {
            take(input, 1)?;
        }
        Schema::Int
        | Schema::Long
        | Schema::Date
        | Schema::TimeMillis
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos
        | Schema::Enum(_) => {
            read_long(input)?;
        }
        Schema::Float => {
            take(input, 4)?;
        }
        Schema::Double => {
            take(input, 8)?;
        }
        Schema::String | Schema::Uuid(_) | Schema::Bytes | Schema::BigDecimal => {
            read_bytes(input)?;
        }
        Schema::Decimal(decimal) => match &decimal.inner {
            InnerDecimalSchema::Fixed(fixed) => {
                take(input, fixed.size)?;
            }
            InnerDecimalSchema::Bytes => {
                read_bytes(input)?;
            }
        },
        Schema::Fixed(fixed) => {
            take(input, fixed.size)?;
        }
        Schema::Duration(_) => {
            take(input, 12)?;
        }
        Schema::Array(array) => blocks(input, |input| skip(&array.items, names, input, depth))?,
        Schema::Map(map) => blocks(input, |input| {
            read_str(input)?;
            skip(&map.types, names, input, depth)
        })?,
        Schema::Union(union) => {
            let branch = usize::try_from(read_long(input)?)
                .ok()
                .and_then(|i| union.variants().get(i))
                .ok_or(DecodeError("union branch out of range"))?;
            skip(branch, names, input, depth)?;
        }
        Schema::Record(record) => {
            for field in &record.fields {
                skip(&field.schema, names, input, depth)?;
            }
        }
        Schema::Ref { name } => {
            let named = names
                .get(&name.fullname(None))
                .ok_or(DecodeError("unknown named type"))?;
            skip(named, names, input, depth)?;
        }
    }
    Ok(())
}

/// `order-amounts`: an order's amounts are whole and agree with each other.
fn order_amounts(order: Value<'_>, broken: &mut Vec<(String, String)>) {
    let (mut sum, mut count, mut lines_broken) = (0i128, 0, false);
    let (mut total, mut currency) = (0, "");
    order.each_field(|name, value| match name {
        "items" => {
            count = value.each_item(|i, item| {
                let (mut quantity, mut price) = (0, 0);
                item.each_field(|name, value| match name {
                    "quantity" => quantity = value.long().unwrap_or(0),
                    "unit_price_cents" => price = value.long().unwrap_or(0),
                    _ => {}
                });
                if quantity < 1 {
                    broken.push((format!("/items/{i}/quantity"), "must be at least 1".into()));
                    lines_broken = true;
                }
                if price < 0 {
                    broken.push((
                        format!("/items/{i}/unit_price_cents"),
                        "must not be negative".into(),
                    ));
                    lines_broken = true;
                }
                sum += i128::from(quantity) * i128::from(price);
            });
        }
        "total_cents" => total = value.long().unwrap_or(0),
        "currency" => currency = value.text().unwrap_or_default(),
        _ => {}
    });
    if count == 0 {
        broken.push(("/items".into(), "an order needs at least one item".into()));
        lines_broken = true;
    }
    if total < 0 {
        broken.push(("/total_cents".into(), "must not be negative".into()));
    } else if i128::from(total) != sum && !lines_broken {
        broken.push((
            "/total_cents".into(),
            format!("must be the sum of the items' quantity × unit_price_cents: {sum}"),
        ));
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        broken.push((
            "/currency".into(),
            "an ISO 4217 code: three capital letters, like EUR".into(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value as Json, json};

    use crate::Catalog;

    fn check(data: &Json) -> Result<Option<String>, Vec<String>> {
        let catalog = Catalog::embedded().unwrap();
        let schema = catalog.latest("order.placed").unwrap();
        let value = schema.validate(data, "/data").unwrap();
        let mut avro = Vec::new();
        schema.encode_value(&value, &mut avro).unwrap();
        schema
            .check_data(&avro, "/data")
            .map(|facts| facts.owner.map(str::to_string))
            .map_err(|errors| errors.into_iter().map(|e| e.pointer).collect())
    }

    fn order(items: &Json, total: i64, currency: &str) -> Json {
        json!({"order_id": "o-1", "customer_id": "alice", "items": items,
               "total_cents": total, "currency": currency})
    }

    #[test]
    fn a_sound_order_passes_and_names_its_owner() {
        let items = json!([{"sku": "a", "quantity": 2, "unit_price_cents": 450},
                           {"sku": "b", "quantity": 1, "unit_price_cents": 0}]);
        assert_eq!(check(&order(&items, 900, "EUR")), Ok(Some("alice".into())));
    }

    #[test]
    fn amounts_that_do_not_add_up_are_named_by_their_pointers() {
        let item = |q: i64, p: i64| json!([{"sku": "a", "quantity": q, "unit_price_cents": p}]);
        let cases = [
            (
                order(&item(-1, 450), -450, "EUR"),
                vec!["/data/items/0/quantity", "/data/total_cents"],
            ),
            (
                order(&item(0, 450), 0, "EUR"),
                vec!["/data/items/0/quantity"],
            ),
            (
                order(&item(1, -5), -5, "EUR"),
                vec!["/data/items/0/unit_price_cents", "/data/total_cents"],
            ),
            (order(&item(2, 450), 901, "EUR"), vec!["/data/total_cents"]),
            (order(&json!([]), 0, "EUR"), vec!["/data/items"]),
            (order(&item(1, 1), 1, "eur"), vec!["/data/currency"]),
            (order(&item(1, 1), 1, "EU\u{0}"), vec!["/data/currency"]),
        ];
        for (data, expected) in cases {
            assert_eq!(
                check(&data),
                Err(expected.iter().map(|s| s.to_string()).collect()),
                "{data}"
            );
        }
    }

    #[test]
    fn extreme_amounts_neither_overflow_nor_pass() {
        let items = json!([{"sku": "a", "quantity": i32::MAX, "unit_price_cents": i64::MAX},
                           {"sku": "b", "quantity": i32::MAX, "unit_price_cents": i64::MAX}]);
        assert_eq!(
            check(&order(&items, i64::MAX, "EUR")),
            Err(vec!["/data/total_cents".to_string()])
        );
    }
}
