//! What the contract says of an event's data beyond its schema: whose event it is, and the
//! domain rules Avro cannot state (amounts that add up, quantities above zero).
//!
//! Both are declared in the schema's `herald` attribute (`"owner": "customer_id"`,
//! `"rules": ["order-amounts"]`) and read from the data's Avro binary, which every way into
//! the ingress produces: one check serves the JSON tree and the direct encoder alike, and
//! reading the binary allocates only for records and arrays, never for strings.

use apache_avro::Schema;
use apache_avro::schema::{InnerDecimalSchema, RecordSchema};

use crate::binary::{DecodeError, read_long, read_str};
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
    check: fn(&Record<'_>, &mut Vec<(String, String)>),
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
    let mut input = avro;
    let datum = read(schema, names, &mut input, 0).map_err(|err| {
        vec![FieldError {
            pointer: base.to_string(),
            message: format!("unreadable data: {}", err.0),
        }]
    })?;
    let Datum::Record(record) = datum else {
        return Err(vec![FieldError {
            pointer: base.to_string(),
            message: "the data is not a record".into(),
        }]);
    };
    let owner = match owner {
        Some(Owner::Field(field)) => record.text(field),
        _ => None,
    };
    let mut broken = Vec::new();
    for field in sealed {
        if record
            .text(field)
            .is_some_and(|value| !value.starts_with(SEALED_PREFIX))
        {
            broken.push((
                format!("/{field}"),
                "carries a live secret, and the log is kept for good: seal it with the sealing key \
                 before publishing (see the README's security section)"
                    .into(),
            ));
        }
    }
    for rule in rules {
        (rule.check)(&record, &mut broken);
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

/// A value read from Avro binary, its strings borrowed from the input.
#[derive(Debug)]
enum Datum<'a> {
    Null,
    Long(i64),
    Text(&'a str),
    Array(Vec<Datum<'a>>),
    Record(Record<'a>),
    /// Booleans, floating point numbers, bytes, fixed, enums and maps: no rule reads them
    /// yet.
    Other,
}

/// A record's fields, in schema order.
#[derive(Debug)]
struct Record<'a> {
    schema: &'a RecordSchema,
    fields: Vec<Datum<'a>>,
}

impl<'a> Record<'a> {
    fn get(&self, name: &str) -> Option<&Datum<'a>> {
        let index = self.schema.fields.iter().position(|f| f.name == name)?;
        self.fields.get(index)
    }

    fn long(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            Datum::Long(n) => Some(*n),
            _ => None,
        }
    }

    fn text(&self, name: &str) -> Option<&'a str> {
        match self.get(name)? {
            Datum::Text(text) => Some(text),
            _ => None,
        }
    }

    fn array(&self, name: &str) -> Option<&[Datum<'a>]> {
        match self.get(name)? {
            Datum::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// Nesting deeper than this is refused rather than followed (a recursive schema).
const MAX_DEPTH: usize = 64;

fn read<'a>(
    schema: &'a Schema,
    names: &'a Names,
    input: &mut &'a [u8],
    depth: usize,
) -> Result<Datum<'a>, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError("nested too deep"));
    }
    let depth = depth + 1;
    Ok(match schema {
        Schema::Null => Datum::Null,
        Schema::Boolean => {
            take(input, 1)?;
            Datum::Other
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
        | Schema::LocalTimestampNanos => Datum::Long(read_long(input)?),
        Schema::Float => {
            take(input, 4)?;
            Datum::Other
        }
        Schema::Double => {
            take(input, 8)?;
            Datum::Other
        }
        Schema::String | Schema::Uuid(_) => Datum::Text(read_str(input)?),
        Schema::Decimal(decimal) => {
            match &decimal.inner {
                InnerDecimalSchema::Fixed(fixed) => take(input, fixed.size)?,
                InnerDecimalSchema::Bytes => read_bytes(input)?,
            };
            Datum::Other
        }
        Schema::Bytes | Schema::BigDecimal => {
            read_bytes(input)?;
            Datum::Other
        }
        Schema::Fixed(fixed) => {
            take(input, fixed.size)?;
            Datum::Other
        }
        Schema::Duration(_) => {
            take(input, 12)?;
            Datum::Other
        }
        Schema::Enum(_) => {
            read_long(input)?;
            Datum::Other
        }
        Schema::Array(array) => {
            let mut items = Vec::new();
            blocks(input, |input| {
                items.push(read(&array.items, names, input, depth)?);
                Ok(())
            })?;
            Datum::Array(items)
        }
        Schema::Map(map) => {
            blocks(input, |input| {
                read_str(input)?;
                read(&map.types, names, input, depth)?;
                Ok(())
            })?;
            Datum::Other
        }
        Schema::Union(union) => {
            let branch = usize::try_from(read_long(input)?)
                .ok()
                .and_then(|i| union.variants().get(i))
                .ok_or(DecodeError("union branch out of range"))?;
            read(branch, names, input, depth)?
        }
        Schema::Record(record) => {
            let mut fields = Vec::with_capacity(record.fields.len());
            for field in &record.fields {
                fields.push(read(&field.schema, names, input, depth)?);
            }
            Datum::Record(Record {
                schema: record,
                fields,
            })
        }
        Schema::Ref { name } => {
            let named = names
                .get(&name.fullname(None))
                .ok_or(DecodeError("unknown named type"))?;
            read(named, names, input, depth)?
        }
    })
}

fn read_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let len = usize::try_from(read_long(input)?).map_err(|_| DecodeError("negative length"))?;
    take(input, len)
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if input.len() < n {
        return Err(DecodeError("record ends early"));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

/// Array and map items come in blocks, each a count then the items, ended by a count of 0.
fn blocks<'a>(
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
        let count = count.unsigned_abs();
        if count > input.len() as u64 + 1 {
            return Err(DecodeError("block count beyond the record"));
        }
        for _ in 0..count {
            item(input)?;
        }
    }
}

/// `order-amounts`: an order's amounts are whole and agree with each other.
fn order_amounts(order: &Record<'_>, broken: &mut Vec<(String, String)>) {
    let items = order.array("items").unwrap_or_default();
    if items.is_empty() {
        broken.push(("/items".into(), "an order needs at least one item".into()));
    }
    let mut sum: i128 = 0;
    for (i, item) in items.iter().enumerate() {
        let Datum::Record(item) = item else { continue };
        let quantity = item.long("quantity").unwrap_or(0);
        let price = item.long("unit_price_cents").unwrap_or(0);
        if quantity < 1 {
            broken.push((format!("/items/{i}/quantity"), "must be at least 1".into()));
        }
        if price < 0 {
            broken.push((
                format!("/items/{i}/unit_price_cents"),
                "must not be negative".into(),
            ));
        }
        sum += i128::from(quantity) * i128::from(price);
    }
    let total = order.long("total_cents").unwrap_or(0);
    if total < 0 {
        broken.push(("/total_cents".into(), "must not be negative".into()));
    } else if i128::from(total) != sum && broken.is_empty() {
        broken.push((
            "/total_cents".into(),
            format!("must be the sum of the items' quantity × unit_price_cents: {sum}"),
        ));
    }
    let currency = order.text("currency").unwrap_or_default();
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
