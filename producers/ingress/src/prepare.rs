//! From a request body to events ready to encode: shape, event types, publish policy and
//! schema validation. Pure: no I/O, so every rule is tested directly.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use events::json::FieldError;
use events::{AvroValue, Catalog, SchemaVersion};
use jiff::Timestamp;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::auth::Principal;
use crate::policy::PublishPolicy;
use crate::problem::Problem;

/// One validated event of a request.
#[derive(Debug)]
pub struct Prepared {
    pub schema: Arc<SchemaVersion>,
    /// The aggregate id: the Kafka key.
    pub key: String,
    /// The Avro binary of the event's data record.
    pub data: Vec<u8>,
    pub occurred_at: Option<Timestamp>,
    /// Borrowed when it is the default: most events name none.
    pub source: Cow<'static, str>,
}

/// How far before and after the time a request is received its events may have occurred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub before: std::time::Duration,
    pub after: std::time::Duration,
}

/// Refuses events whose `occurred_at` is outside `window` around `now` (422, naming each by
/// its pointer): a timestamp far from now is a client's bug, and years such as 0000 or 9999
/// are more than common readers of the topics (Python's datetime, JavaScript's Date) hold.
fn check_occurred_at(
    shape: Shape,
    prepared: &[Prepared],
    now: Timestamp,
    window: TimeWindow,
) -> Result<(), Problem> {
    let earliest = now.checked_sub(window.before).unwrap_or(Timestamp::MIN);
    let latest = now.checked_add(window.after).unwrap_or(Timestamp::MAX);
    let errors: Vec<FieldError> = prepared
        .iter()
        .enumerate()
        .filter(|(_, p)| p.occurred_at.is_some_and(|t| t < earliest || t > latest))
        .map(|(i, _)| {
            let at = match shape {
                Shape::Single => "/occurred_at".to_string(),
                Shape::Batch => format!("/events/{i}/occurred_at"),
            };
            field(
                &at,
                &format!(
                    "must be within {} days before and {} s after the time of the request",
                    window.before.as_secs() / 86_400,
                    window.after.as_secs()
                ),
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid(errors))
    }
}

/// Checks what the contract asks of prepared events beyond their schemas, for the whole
/// request (a batch is refused whole):
/// - each event's domain rules (422, by pointer);
/// - whose each event is: a caller publishing only as a `user` must be its owner (403 naming
///   the owner field's pointer), so no one publishes on someone else's behalf;
/// - `occurred_at` within `window` of `now` (422).
pub fn check_events(
    shape: Shape,
    prepared: &[Prepared],
    (policy, principal): (&PublishPolicy, &Principal),
    now: Timestamp,
    window: TimeWindow,
) -> Result<(), Problem> {
    check_occurred_at(shape, prepared, now, window)?;
    let mut broken = Vec::new();
    let mut not_theirs = Vec::new();
    for (i, event) in prepared.iter().enumerate() {
        let schema = &event.schema;
        let as_user = schema.owner_field().is_some()
            && policy.only_as_user(&principal.roles, &schema.event_type, &schema.topic);
        if schema.rules.is_empty() && schema.sealed.is_empty() && !as_user {
            continue;
        }
        let base = match shape {
            Shape::Single => "/data".to_string(),
            Shape::Batch => format!("/events/{i}/data"),
        };
        match schema.check_data(&event.data, &base) {
            Err(errors) => broken.extend(errors),
            Ok(facts) if as_user && facts.owner != Some(principal.subject.as_str()) => {
                let owner = schema.owner_field().unwrap_or_default();
                not_theirs.push(field(
                    &pointer(&base, owner),
                    "must be your own id (the token's subject): you may publish only your own events",
                ));
            }
            Ok(_) => {}
        }
    }
    if !broken.is_empty() {
        return Err(Problem::invalid(broken));
    }
    if !not_theirs.is_empty() {
        let detail = format!(
            "{} of the events belong to someone else; nothing was published",
            not_theirs.len()
        );
        return Err(Problem::forbidden(detail).with_errors(not_theirs));
    }
    Ok(())
}

/// Whether the body was one event or a batch: the response mirrors it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Single,
    Batch,
}

const ITEM_FIELDS: [&str; 5] = ["type", "key", "data", "occurred_at", "source"];
const DEFAULT_SOURCE: &str = "api";
const MAX_SOURCE_LEN: usize = 100;

/// The common case in one pass over the body text: every event well formed, of a known type
/// the principal may publish, its data fitting the schema. `None` for anything else, and
/// [`prepare`] then says what is wrong (or takes what this leaves to it, such as fields out
/// of the usual shapes, or a member given twice). Whatever this accepts, `prepare` accepts
/// alike (tested).
///
/// An event whose `type` comes before its `data`, as in the API's examples, has its data
/// encoded as it is read; one with `data` first has it read once to find its end and again to
/// encode it, the type being unknown until then.
pub fn prepare_text(
    catalog: &Catalog,
    policy: &PublishPolicy,
    principal: &Principal,
    body: &[u8],
    max_events: usize,
) -> Option<(Shape, Vec<Prepared>)> {
    let checks = Checks {
        catalog,
        policy,
        principal,
        max_events,
        last_allowed: Cell::new(None),
    };
    // UTF-8 checked once for the whole body, not string by string as it is read.
    let body = std::str::from_utf8(body).ok()?;
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let prepared = deserializer.deserialize_map(BodyVisitor(&checks)).ok()?;
    deserializer.end().ok()?;
    Some(prepared)
}

/// What [`prepare_text`] checks events against.
struct Checks<'c> {
    catalog: &'c Catalog,
    policy: &'c PublishPolicy,
    principal: &'c Principal,
    max_events: usize,
    /// The type the last event named, found and allowed: a batch's events are mostly of one
    /// type, so most of them skip the catalog's and the policy's lookups.
    last_allowed: Cell<Option<&'c Arc<SchemaVersion>>>,
}

impl<'c> Checks<'c> {
    /// The newest schema of the event type `name`, if the principal may publish it.
    fn allowed_type(&self, name: &str) -> Option<&'c Arc<SchemaVersion>> {
        if let Some(schema) = self.last_allowed.get()
            && schema.event_type == name
        {
            return Some(schema);
        }
        let schema = self.catalog.latest(name)?;
        let allowed = self
            .policy
            .allows(&self.principal.roles, &schema.event_type, &schema.topic);
        allowed.then(|| {
            self.last_allowed.set(Some(schema));
            schema
        })
    }
}

/// Whether `source`, when an event names one, is 1 to `MAX_SOURCE_LEN` bytes.
fn fits_source(source: &str) -> bool {
    !source.is_empty() && source.len() <= MAX_SOURCE_LEN
}

/// Any error of the text path: it only says "not here".
fn not_here<E: de::Error>() -> E {
    E::custom("left to the tree")
}

/// A member name of a body or an event; `Other` for any name neither has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Member {
    Events,
    Type,
    Key,
    Data,
    OccurredAt,
    Source,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    "events" => Member::Events,
                    "type" => Member::Type,
                    "key" => Member::Key,
                    "data" => Member::Data,
                    "occurred_at" => Member::OccurredAt,
                    "source" => Member::Source,
                    _ => Member::Other,
                })
            }
        }
        deserializer.deserialize_str(Name)
    }
}

/// The body: `{"events": [...]}` and nothing else, or one event.
struct BodyVisitor<'t, 'c>(&'t Checks<'c>);

impl<'de> Visitor<'de> for BodyVisitor<'_, '_> {
    type Value = (Shape, Vec<Prepared>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event or a batch")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let checks = self.0;
        match map.next_key::<Member>()?.ok_or_else(not_here)? {
            Member::Events => {
                let prepared = map.next_value_seed(EventsSeed(checks))?;
                match map.next_key::<Member>()? {
                    None => Ok((Shape::Batch, prepared)),
                    Some(_) => Err(not_here()),
                }
            }
            // One event is a request of one: refused where no event is allowed, as in `prepare`.
            _ if checks.max_events == 0 => Err(not_here()),
            first => Ok((
                Shape::Single,
                vec![EventText::read(checks, Some(first), map)?],
            )),
        }
    }
}

/// A batch's events: at least one, at most `max_events`.
struct EventsSeed<'t, 'c>(&'t Checks<'c>);

impl<'de> DeserializeSeed<'de> for EventsSeed<'_, '_> {
    type Value = Vec<Prepared>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'_, '_> {
    type Value = Vec<Prepared>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let checks = self.0;
        let mut prepared = Vec::new();
        while let Some(event) = seq.next_element_seed(EventSeed(checks))? {
            if prepared.len() == checks.max_events {
                return Err(not_here());
            }
            prepared.push(event);
        }
        if prepared.is_empty() {
            return Err(not_here());
        }
        Ok(prepared)
    }
}

/// One event of a batch.
struct EventSeed<'t, 'c>(&'t Checks<'c>);

impl<'de> DeserializeSeed<'de> for EventSeed<'_, '_> {
    type Value = Prepared;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Prepared, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed<'_, '_> {
    type Value = Prepared;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Prepared, A::Error> {
        EventText::read(self.0, None, map)
    }
}

/// An event's members as they are read. For the optional ones, the outer `None` is "not seen
/// yet", so a member given twice is caught, and the inner one a JSON null.
#[derive(Default)]
struct EventText<'c, 'de> {
    schema: Option<&'c Arc<SchemaVersion>>,
    key: Option<Option<Cow<'de, str>>>,
    data: Option<Data<'de>>,
    occurred_at: Option<Option<Cow<'de, str>>>,
    source: Option<Option<Cow<'de, str>>>,
}

/// An event's data: encoded as read when its type came first, else its text.
enum Data<'de> {
    Encoded { avro: Vec<u8>, key: String },
    Text(&'de RawValue),
}

impl<'c, 'de> EventText<'c, 'de> {
    /// An event from its members: `first`, when its name was read already, then the rest.
    fn read<A: MapAccess<'de>>(
        checks: &Checks<'c>,
        first: Option<Member>,
        mut map: A,
    ) -> Result<Prepared, A::Error> {
        let mut event = Self::default();
        if let Some(member) = first {
            event.take(checks, member, &mut map)?;
        }
        while let Some(member) = map.next_key()? {
            event.take(checks, member, &mut map)?;
        }
        event.finish()
    }

    /// Reads the value of `member`; a member given twice, or one an event does not have,
    /// is left to the tree.
    fn take<A: MapAccess<'de>>(
        &mut self,
        checks: &Checks<'c>,
        member: Member,
        map: &mut A,
    ) -> Result<(), A::Error> {
        match member {
            Member::Type if self.schema.is_none() => {
                let name: Cow<'de, str> = map.next_value::<Borrowed<'de>>()?.0;
                self.schema = Some(checks.allowed_type(&name).ok_or_else(not_here)?);
            }
            Member::Data if self.data.is_none() => {
                self.data = Some(match self.schema {
                    Some(schema) => {
                        let mut avro = Vec::with_capacity(128);
                        let seed = schema.data_seed(&mut avro).ok_or_else(not_here)?;
                        let key = map.next_value_seed(seed)?;
                        Data::Encoded { avro, key }
                    }
                    None => Data::Text(map.next_value()?),
                });
            }
            Member::Key if self.key.is_none() => self.key = Some(optional(map)?),
            Member::OccurredAt if self.occurred_at.is_none() => {
                self.occurred_at = Some(optional(map)?);
            }
            Member::Source if self.source.is_none() => self.source = Some(optional(map)?),
            _ => return Err(not_here()),
        }
        Ok(())
    }

    fn finish<E: de::Error>(self) -> Result<Prepared, E> {
        let schema = self.schema.ok_or_else(not_here)?;
        let (data, key) = match self.data.ok_or_else(not_here)? {
            Data::Encoded { avro, key } => (avro, key),
            Data::Text(raw) => {
                let raw = raw.get();
                let mut avro = Vec::with_capacity(raw.len());
                let key = schema.encode_json(raw, &mut avro).ok_or_else(not_here)?;
                (avro, key)
            }
        };
        if self.key.flatten().is_some_and(|k| k != key) {
            return Err(not_here());
        }
        let occurred_at = match self.occurred_at.flatten() {
            Some(at) => Some(events::parse_timestamp(&at).ok_or_else(not_here)?),
            None => None,
        };
        let source = match self.source.flatten() {
            None => Cow::Borrowed(DEFAULT_SOURCE),
            Some(s) if fits_source(&s) => Cow::Owned(s.into_owned()),
            Some(_) => return Err(not_here()),
        };
        Ok(Prepared {
            schema: schema.clone(),
            key,
            data,
            occurred_at,
            source,
        })
    }
}

/// A string member that may be null.
fn optional<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Option<Cow<'de, str>>, A::Error> {
    Ok(map
        .next_value::<Option<Borrowed<'de>>>()?
        .map(|text| text.0))
}

/// A string, borrowed from the body unless it has escapes.
struct Borrowed<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Borrowed<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Str;
        impl<'de> Visitor<'de> for Str {
            type Value = Borrowed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Borrowed(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Borrowed(Cow::Owned(s.to_string())))
            }
        }
        deserializer.deserialize_str(Str)
    }
}

/// Checks a request body. A batch is all or nothing: one bad event refuses the request.
pub fn prepare(
    catalog: &Catalog,
    policy: &PublishPolicy,
    principal: &Principal,
    body: &Json,
    max_events: usize,
) -> Result<(Shape, Vec<Prepared>), Problem> {
    let (shape, items, base) = match body {
        Json::Object(object) if object.contains_key("events") => {
            if let Some(extra) = object.keys().find(|k| *k != "events") {
                return Err(Problem::invalid(vec![field(
                    &pointer("", extra),
                    "unknown field",
                )]));
            }
            match &object["events"] {
                Json::Array(items) if items.is_empty() => {
                    return Err(Problem::invalid(vec![field(
                        "/events",
                        "a batch needs at least one event",
                    )]));
                }
                Json::Array(items) => (Shape::Batch, items.iter().collect::<Vec<_>>(), "/events/"),
                _ => {
                    return Err(Problem::invalid(vec![field(
                        "/events",
                        "expected an array of events",
                    )]));
                }
            }
        }
        Json::Object(_) => (Shape::Single, vec![body], ""),
        _ => {
            return Err(Problem::bad_request(
                "the body must be a JSON object: one event, or {\"events\": [...]}",
            ));
        }
    };
    if items.len() > max_events {
        return Err(Problem::too_large(format!(
            "{} events in one request; at most {max_events} are accepted",
            items.len()
        )));
    }

    let mut errors = Vec::new();
    let mut typed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = match shape {
            Shape::Single => String::new(),
            Shape::Batch => format!("{base}{i}"),
        };
        let (schema, mut item_errors) = check_item(catalog, item, &at);
        errors.append(&mut item_errors);
        if let Some(schema) = schema {
            typed.push((at, *item, schema));
        }
    }

    let mut refused: Vec<&str> = typed
        .iter()
        .filter(|(_, _, schema)| {
            !policy.allows(&principal.roles, &schema.event_type, &schema.topic)
        })
        .map(|(_, _, schema)| schema.event_type.as_str())
        .collect();
    if !refused.is_empty() {
        refused.dedup();
        return Err(Problem::forbidden(format!(
            "your roles ({}) may not publish {}",
            principal.roles.join(", "),
            refused.join(", ")
        )));
    }

    // Authorised: now every field of every event, so one answer lists all that is wrong.
    let mut prepared = Vec::with_capacity(typed.len());
    for (at, item, schema) in typed {
        match validate_item(&schema, item, &at) {
            Ok(p) => prepared.push(p),
            Err(mut item_errors) => errors.append(&mut item_errors),
        }
    }
    if errors.is_empty() {
        Ok((shape, prepared))
    } else {
        Err(Problem::invalid(errors))
    }
}

/// `base` followed by the member `name`, escaped (RFC 6901).
fn pointer(base: &str, name: &str) -> String {
    let mut pointer = base.to_string();
    events::json::push_token(&mut pointer, name);
    pointer
}

fn field(pointer: &str, message: &str) -> FieldError {
    FieldError {
        pointer: pointer.to_string(),
        message: message.to_string(),
    }
}

/// The item's shape and event type: the schema when the type is known, and what is wrong.
fn check_item(
    catalog: &Catalog,
    item: &Json,
    at: &str,
) -> (Option<Arc<SchemaVersion>>, Vec<FieldError>) {
    let Json::Object(object) = item else {
        return (None, vec![field(at, "expected an event object")]);
    };
    let mut errors: Vec<FieldError> = object
        .keys()
        .filter(|k| !ITEM_FIELDS.contains(&k.as_str()))
        .map(|k| {
            field(
                &pointer(at, k),
                "unknown field; an event has type, key, data, occurred_at and source",
            )
        })
        .collect();
    if !object.get("data").is_some_and(Json::is_object) {
        errors.push(field(
            &format!("{at}/data"),
            "required: the event's fields as an object",
        ));
    }
    let schema = match object.get("type") {
        Some(Json::String(t)) => match catalog.latest(t) {
            Some(schema) => Some(schema.clone()),
            None => {
                errors.push(field(
                    &format!("{at}/type"),
                    &format!("unknown event type {t:?}; GET /api/v1/event-types lists them"),
                ));
                None
            }
        },
        Some(_) => {
            errors.push(field(&format!("{at}/type"), "expected a string"));
            None
        }
        None => {
            errors.push(field(
                &format!("{at}/type"),
                "required: the event type, e.g. order.placed",
            ));
            None
        }
    };
    // Without a data object there is nothing to validate.
    let schema = schema.filter(|_| object.get("data").is_some_and(Json::is_object));
    (schema, errors)
}

fn validate_item(
    schema: &Arc<SchemaVersion>,
    item: &Json,
    at: &str,
) -> Result<Prepared, Vec<FieldError>> {
    let mut errors = Vec::new();
    let data = schema.validate(&item["data"], &format!("{at}/data"));
    let occurred_at = match item.get("occurred_at") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => match events::parse_timestamp(s) {
            Some(t) => Some(t),
            None => {
                errors.push(field(
                    &format!("{at}/occurred_at"),
                    "expected an RFC 3339 timestamp like 2026-11-22T09:30:00Z",
                ));
                None
            }
        },
        Some(_) => {
            errors.push(field(
                &format!("{at}/occurred_at"),
                "expected an RFC 3339 timestamp string",
            ));
            None
        }
    };
    let source = match item.get("source") {
        None | Some(Json::Null) => Cow::Borrowed(DEFAULT_SOURCE),
        Some(Json::String(s)) if fits_source(s) => Cow::Owned(s.clone()),
        Some(_) => {
            errors.push(field(
                &format!("{at}/source"),
                "expected a string of 1 to 100 characters",
            ));
            Cow::Borrowed("")
        }
    };
    let key_text = item["data"].get(&schema.key_field).and_then(Json::as_str);
    let key_pointer = format!("{at}/key");
    match (item.get("key"), key_text) {
        (None | Some(Json::Null), _) => {}
        (Some(Json::String(k)), Some(d)) if k == d => {}
        // data's own validation reports a missing key field
        (Some(_), None) => {}
        (Some(_), Some(_)) => errors.push(field(
            &key_pointer,
            &format!(
                "must equal data.{} (the aggregate id the topic is keyed by)",
                schema.key_field
            ),
        )),
    }
    let data = match data {
        Ok(data) if errors.is_empty() => data,
        Ok(_) => return Err(errors),
        Err(mut data_errors) => {
            data_errors.append(&mut errors);
            return Err(data_errors);
        }
    };
    // The key comes from the validated value, so a UUID is keyed in its canonical form
    // whatever case the client wrote it in.
    let key = aggregate_id(&data, &schema.key_field).filter(|key| !key.is_empty());
    let Some(key) = key else {
        return Err(vec![field(
            &format!("{at}/data/{}", schema.key_field),
            "must not be empty: it is the aggregate id the topic is keyed by",
        )]);
    };
    let mut encoded = Vec::with_capacity(128);
    if let Err(err) = schema.encode_value(&data, &mut encoded) {
        // validate() built the value from the schema: it always encodes.
        return Err(vec![field(&format!("{at}/data"), &err.to_string())]);
    }
    Ok(Prepared {
        schema: schema.clone(),
        key,
        data: encoded,
        occurred_at,
        source,
    })
}

fn aggregate_id(data: &AvroValue, key_field: &str) -> Option<String> {
    let AvroValue::Record(fields) = data else {
        return None;
    };
    match &fields.iter().find(|(name, _)| name == key_field)?.1 {
        AvroValue::String(s) => Some(s.clone()),
        AvroValue::Uuid(u) => Some(u.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(roles: &[&str], body: &Json) -> Result<(Shape, Vec<Prepared>), Problem> {
        let principal = Principal {
            subject: "alice".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            expires_at: u64::MAX,
        };
        prepare(
            &Catalog::embedded().unwrap(),
            &PublishPolicy::embedded(),
            &principal,
            body,
            3,
        )
    }

    /// Both ways through a body: from its text, and through the JSON tree.
    fn both(roles: &[&str], body: &str) -> (Option<Vec<Json>>, Option<Vec<Json>>) {
        let principal = Principal {
            subject: "alice".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            expires_at: u64::MAX,
        };
        let (catalog, policy) = (Catalog::embedded().unwrap(), PublishPolicy::embedded());
        // What a prepared event is, comparably.
        let show = |(shape, prepared): (Shape, Vec<Prepared>)| {
            prepared
                .into_iter()
                .map(|p| {
                    json!([
                        format!("{shape:?}"),
                        p.schema.event_type,
                        p.key,
                        p.data,
                        p.occurred_at.map(|t| t.as_nanosecond().to_string()),
                        p.source
                    ])
                })
                .collect::<Vec<_>>()
        };
        let text = prepare_text(&catalog, &policy, &principal, body.as_bytes(), 3).map(show);
        let tree = serde_json::from_str(body)
            .ok()
            .and_then(|json| prepare(&catalog, &policy, &principal, &json, 3).ok())
            .map(show);
        (text, tree)
    }

    #[test]
    fn the_text_path_takes_what_the_tree_takes_alike() {
        let shipped = shipped(Some("o-1")).to_string();
        let ordered = r#"{"data": {"shipped_at": "2026-11-22T09:30:00Z", "carrier": "DHL",
            "order_id": "o-1"}, "source": "shop", "occurred_at": "2026-11-22T10:00:00+01:00",
            "type": "order.shipped"}"#;
        // Type first, as the API's examples write it: the data is encoded as it is read.
        let typed = r#"{"type": "order.shipped", "key": "o-1", "data": {"order_id": "o-1",
            "carrier": "D\u0048L", "shipped_at": "2026-11-22T09:30:00Z"}, "source": null}"#;
        for body in [
            shipped.clone(),
            ordered.to_string(),
            typed.to_string(),
            format!(r#"{{"events": [{typed}, {shipped}, {typed}]}}"#),
            format!(r#"{{"events": [{shipped}, {ordered}]}}"#),
            format!(r#"{{"events": [{shipped}, {ordered}, {shipped}]}}"#),
            r#"{"type": "user.deleted", "key": "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11",
                "data": {"user_id": "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11"}}"#
                .to_string(),
        ] {
            let (text, tree) = both(&["user", "service"], &body);
            assert!(text.is_some(), "{body}");
            assert_eq!(text, tree, "{body}");
        }
    }

    #[test]
    fn a_batch_of_mixed_types_is_checked_event_by_event() {
        // The type the event before named is remembered; each other type is looked up and
        // its policy checked again.
        let shipped = shipped(Some("o-1")).to_string();
        let deleted = r#"{"type": "user.deleted", "key": "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11",
            "data": {"user_id": "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11"}}"#;
        let mixed = format!(r#"{{"events": [{shipped}, {deleted}, {shipped}]}}"#);
        let (text, tree) = both(&["user", "service"], &mixed);
        assert!(text.is_some());
        assert_eq!(text, tree);
        // A user may publish the orders' events but not the users': neither path takes the
        // batch, though its first event alone would pass.
        assert_eq!(both(&["user"], &mixed), (None, None));
        let campaign = r#"{"type": "campaign.launched", "data": {}}"#;
        let body = format!(r#"{{"events": [{shipped}, {campaign}]}}"#);
        assert_eq!(both(&["user"], &body), (None, None));
    }

    #[test]
    fn where_no_event_is_allowed_neither_path_takes_one() {
        let principal = Principal {
            subject: "alice".into(),
            roles: vec!["user".into()],
            expires_at: u64::MAX,
        };
        let (catalog, policy) = (Catalog::embedded().unwrap(), PublishPolicy::embedded());
        let body = shipped(None);
        let text = body.to_string();
        assert!(prepare_text(&catalog, &policy, &principal, text.as_bytes(), 0).is_none());
        let refused = prepare(&catalog, &policy, &principal, &body, 0).unwrap_err();
        assert_eq!(refused.status, 413);
    }

    #[test]
    fn the_text_path_leaves_the_rest_to_the_tree() {
        let good = shipped(None).to_string();
        for (roles, body, tree_takes) in [
            // Refused by the tree, each for its own reason.
            (&["service"][..], "{".to_string(), false),
            (&["service"], "[]".to_string(), false),
            (&["analyst"], good.clone(), false),
            (&["service"], r#"{"events": []}"#.to_string(), false),
            (
                &["service"],
                format!(r#"{{"events": [{good}, {good}, {good}, {good}]}}"#),
                false,
            ),
            (
                &["service"],
                format!(r#"{{"events": [{good}], "also": 1}}"#),
                false,
            ),
            (&["service"], format!(r#"{{"events": [{good}, 1]}}"#), false),
            (
                &["service"],
                good.replace("order.shipped", "order.lost"),
                false,
            ),
            (
                &["service"],
                good.replace("DHL", "")[..].replace(r#""carrier":"","#, ""),
                false,
            ),
            (
                &["service"],
                good.replace(r#""type""#, r#""source":"","type""#),
                false,
            ),
            (
                &["service"],
                good.replace(r#""type""#, r#""occurred_at":"now","type""#),
                false,
            ),
            (
                &["service"],
                good.replace(r#""type""#, r#""key":"o-2","type""#),
                false,
            ),
            (
                &["service"],
                good.replace(r#""type""#, r#""extra":1,"type""#),
                false,
            ),
            (&["service"], good.replace("o-1", ""), false),
            // The same refusals with the type first, where the data is encoded as it is read.
            (
                &["service"],
                r#"{"type": "order.shipped", "data": {"order_id": "o-1"}}"#.to_string(),
                false,
            ),
            (
                &["service"],
                r#"{"type": "order.shipped", "data": [1]}"#.to_string(),
                false,
            ),
            (
                &["service"],
                r#"{"type": "order.shipped", "data": {"order_id": "o-1", "carrier": "DHL",
                "shipped_at": "2026-11-22T09:30:00Z", "extra": 1}}"#
                    .to_string(),
                false,
            ),
            (
                &["user"],
                r#"{"type": "campaign.launched", "data": {"campaign_id": "c-1"}}"#.to_string(),
                false,
            ),
            // The key is compared with the data's key field as written.
            (
                &["service"],
                r#"{"type": "user.deleted", "key": "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11",
                "data": {"user_id": "0190C2A0-7A3B-7CC1-9C1E-2F0D7B3A9E11"}}"#
                    .to_string(),
                false,
            ),
            // Taken by the tree, left to it here: an upper-case UUID key is compared as
            // written, and a repeated member keeps its last value.
            (
                &["service"],
                r#"{"type": "user.deleted", "key": "0190C2A0-7A3B-7CC1-9C1E-2F0D7B3A9E11",
                "data": {"user_id": "0190C2A0-7A3B-7CC1-9C1E-2F0D7B3A9E11"}}"#
                    .to_string(),
                true,
            ),
            (
                &["service"],
                good.replace(r#""type""#, r#""source":"a","source":"b","type""#),
                true,
            ),
            (
                &["service"],
                format!(r#"{{"type": "order.shipped", {}"#, &good[1..]),
                true,
            ),
        ] {
            let (text, tree) = both(roles, &body);
            assert_eq!(text, None, "{body}");
            assert_eq!(tree.is_some(), tree_takes, "{body}");
        }
    }

    fn shipped(key: Option<&str>) -> Json {
        let mut event = json!({"type": "order.shipped", "data": {"order_id": "o-1", "carrier": "DHL",
            "shipped_at": "2026-11-22T09:30:00Z"}});
        if let Some(key) = key {
            event["key"] = json!(key);
        }
        event
    }

    #[test]
    fn the_key_defaults_to_the_aggregate_id_and_must_match_it() {
        let (shape, prepared) = run(&["service"], &shipped(None)).unwrap();
        assert_eq!(shape, Shape::Single);
        assert_eq!(prepared[0].key, "o-1");
        assert_eq!(prepared[0].source, "api");
        assert!(run(&["service"], &shipped(Some("o-1"))).is_ok());
        let mut empty = shipped(None);
        empty["data"]["order_id"] = json!("");
        assert_eq!(
            run(&["service"], &empty).unwrap_err().errors[0].pointer,
            "/data/order_id"
        );
        let err = run(&["service"], &shipped(Some("o-2"))).unwrap_err();
        assert_eq!(err.errors[0].pointer, "/key");
    }

    #[test]
    fn uuid_keys_are_canonical_whatever_their_case() {
        let event = json!({"type": "user.deleted", "data": {"user_id": "0190C2A0-7A3B-7CC1-9C1E-2F0D7B3A9E11"}});
        let (_, prepared) = run(&["service"], &event).unwrap();
        assert_eq!(prepared[0].key, "0190c2a0-7a3b-7cc1-9c1e-2f0d7b3a9e11");
    }

    #[test]
    fn authorisation_is_decided_before_the_data_is_looked_at() {
        let campaign = json!({"type": "campaign.launched", "data": {"nonsense": true}});
        assert_eq!(run(&["user"], &campaign).unwrap_err().status, 403);
        assert_eq!(run(&["admin"], &campaign).unwrap_err().status, 422);
    }

    #[test]
    fn batches_are_bounded_and_never_empty() {
        assert_eq!(
            run(&["service"], &json!({"events": []}))
                .unwrap_err()
                .status,
            422
        );
        let four = json!({"events": [shipped(None), shipped(None), shipped(None), shipped(None)]});
        assert_eq!(run(&["service"], &four).unwrap_err().status, 413);
        let (shape, prepared) = run(&["service"], &json!({"events": [shipped(None)]})).unwrap();
        assert_eq!((shape, prepared.len()), (Shape::Batch, 1));
        assert_eq!(run(&["service"], &json!([1])).unwrap_err().status, 400);
        let extra = json!({"events": [shipped(None)], "also": 1});
        assert_eq!(
            run(&["service"], &extra).unwrap_err().errors[0].pointer,
            "/also"
        );
    }
}
