//! What is searchable: events projected to documents (pure). Each document is one entity
//! (a user, an order, a message, a campaign) under a stable id (`order:o-1`), with a title,
//! a body, a few `name:value` fields for filters, an owner and a visibility.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who may find a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Every signed-in user (a user's display name, a campaign).
    Public,
    /// Its owner and admins (an order, a message).
    Owner,
    /// Admins only.
    Admin,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Owner => "owner",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Public, Self::Owner, Self::Admin]
            .into_iter()
            .find(|v| v.as_str() == text)
    }
}

/// One searchable entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    pub kind: String,
    pub title: String,
    pub body: String,
    pub owner: Option<String>,
    pub visibility: Visibility,
    /// `(name, value)` pairs to filter on (`status`, `currency`).
    pub fields: Vec<(String, String)>,
    /// When the entity last changed (the event's occurred_at), Unix milliseconds.
    pub updated_at_ms: i64,
    /// Whose personal data it holds: erasing one of them removes it (see [`subjects`]).
    #[serde(default)]
    pub subjects: Vec<String>,
}

impl Document {
    fn set_field(&mut self, name: &str, value: &str) {
        self.fields.retain(|(n, _)| n != name);
        self.fields.push((name.to_string(), value.to_string()));
        self.fields.sort();
    }
}

/// What one event does to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The whole document, replacing any earlier one.
    Put(Document),
    /// Changes to a document the index holds (nothing if it holds none).
    Amend {
        id: String,
        title: Option<String>,
        body_suffix: Option<String>,
        fields: Vec<(String, String)>,
        updated_at_ms: i64,
    },
    /// The entity is gone: the document disappears from every search.
    Remove { id: String },
}

impl Change {
    pub fn id(&self) -> &str {
        match self {
            Self::Put(document) => &document.id,
            Self::Amend { id, .. } | Self::Remove { id } => id,
        }
    }

    /// The document after this change, given the one the index holds (`None`: removed or
    /// never seen).
    pub fn apply(self, current: Option<Document>) -> Option<Document> {
        match self {
            Self::Put(document) => Some(document),
            Self::Remove { .. } => None,
            Self::Amend {
                title,
                body_suffix,
                fields,
                updated_at_ms,
                ..
            } => {
                let mut document = current?;
                if let Some(title) = title {
                    document.title = title;
                }
                if let Some(suffix) = body_suffix {
                    document.body = format!("{} {suffix}", document.body).trim().to_string();
                }
                for (name, value) in &fields {
                    document.set_field(name, value);
                }
                document.updated_at_ms = updated_at_ms;
                Some(document)
            }
        }
    }
}

/// The event types the index follows.
pub const EVENT_TYPES: [&str; 7] = [
    "user.registered",
    "user.profile_updated",
    "user.deleted",
    "order.placed",
    "order.shipped",
    "message.sent",
    "campaign.launched",
];

/// What an event changes in the index (pure); nothing for other event types or events
/// without the id their entity needs.
pub fn project(event_type: &str, data: &Value, occurred_at_ms: i64) -> Option<Change> {
    let text = |field: &str| data.get(field).and_then(Value::as_str);
    let document = |kind: &str, id: &str, title: String, body: String| Document {
        id: format!("{kind}:{id}"),
        kind: kind.to_string(),
        title,
        body,
        owner: None,
        visibility: Visibility::Owner,
        fields: Vec::new(),
        updated_at_ms: occurred_at_ms,
        subjects: Vec::new(),
    };
    Some(match event_type {
        "user.registered" => {
            let user = text("user_id")?;
            // Only what every user may see of another: the display name.
            let mut d = document(
                "user",
                user,
                text("display_name")?.to_string(),
                String::new(),
            );
            d.owner = Some(user.to_string());
            d.visibility = Visibility::Public;
            Change::Put(d)
        }
        "user.profile_updated" => Change::Amend {
            id: format!("user:{}", text("user_id")?),
            title: text("display_name").map(str::to_string),
            body_suffix: None,
            fields: Vec::new(),
            updated_at_ms: occurred_at_ms,
        },
        "user.deleted" => Change::Remove {
            id: format!("user:{}", text("user_id")?),
        },
        "order.placed" => {
            let order = text("order_id")?;
            let skus: Vec<&str> = data
                .get("items")
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(|i| i["sku"].as_str()).collect())
                .unwrap_or_default();
            let mut d = document("order", order, format!("Order {order}"), skus.join(" "));
            d.owner = text("customer_id").map(str::to_string);
            d.set_field("status", "placed");
            if let Some(currency) = text("currency") {
                d.set_field("currency", currency);
            }
            Change::Put(d)
        }
        "order.shipped" => Change::Amend {
            id: format!("order:{}", text("order_id")?),
            title: None,
            body_suffix: text("carrier").map(|c| {
                format!(
                    "shipped with {c} {}",
                    text("tracking_number").unwrap_or_default()
                )
                .trim()
                .to_string()
            }),
            fields: vec![("status".into(), "shipped".into())],
            updated_at_ms: occurred_at_ms,
        },
        "message.sent" => {
            let id = text("message_id")?;
            let conversation = text("conversation_id").unwrap_or_default();
            let mut d = document(
                "message",
                id,
                format!("Message in {conversation}"),
                text("body").unwrap_or_default().to_string(),
            );
            d.owner = text("recipient_id").map(str::to_string);
            d.set_field("conversation", conversation);
            Change::Put(d)
        }
        "campaign.launched" => {
            let id = text("campaign_id")?;
            let title = format!(
                "{}: {}",
                text("name").unwrap_or(id),
                text("subject").unwrap_or_default()
            );
            let mut d = document(
                "campaign",
                id,
                title,
                text("body").unwrap_or_default().to_string(),
            );
            d.visibility = Visibility::Public;
            Change::Put(d)
        }
        _ => return None,
    })
}

/// Whose personal data the document an event puts holds (its `herald.personal` subject):
/// the user a user document is, the sender of a message (`actor`).
pub fn subjects(event_type: &str, data: &Value, actor: &str) -> Vec<String> {
    match event_type {
        "user.registered" => data
            .get("user_id")
            .and_then(Value::as_str)
            .map(|user| vec![user.to_string()])
            .unwrap_or_default(),
        "message.sent" => vec![actor.to_string()],
        _ => Vec::new(),
    }
}

/// What one event does to the index, as both backends apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The person's documents go (`user.erased`).
    Erase(String),
    /// A document changes, as of the event's position.
    Change(Box<(Change, Version)>),
}

/// The step of `event`, if it touches the index (pure).
pub fn step(event: &platform::consumer::Event) -> Option<Step> {
    let event_type = event.envelope.event_type.as_str();
    let occurred_at_ms = event.envelope.occurred_at.as_millisecond();
    if event_type == platform::privacy::ERASURE_EVENT {
        let subject = event.data.get("user_id").and_then(Value::as_str)?;
        return Some(Step::Erase(subject.to_string()));
    }
    let mut change = project(event_type, &event.data, occurred_at_ms)?;
    if let Change::Put(document) = &mut change {
        document.subjects = subjects(event_type, &event.data, &event.envelope.actor);
    }
    let version = Version {
        topic: event.topic.clone(),
        partition: event.partition,
        offset: event.offset,
        occurred_at_ms,
    };
    Some(Step::Change(Box::new((change, version))))
}

/// The document after `change` at `version`, over what is stored (the document, none if
/// removed, and the version that made it): `None` when there is nothing to write, for an
/// older event or an amendment of what was never held (pure).
pub fn next_state(
    change: Change,
    version: &Version,
    current: Option<(Option<Document>, &Version)>,
) -> Option<Option<Document>> {
    if let Some((_, at)) = &current
        && !version.supersedes(at)
    {
        return None;
    }
    let amends = matches!(change, Change::Amend { .. });
    let document = change.apply(current.and_then(|(d, _)| d));
    if amends && document.is_none() {
        return None;
    }
    Some(document)
}

/// Where an event sits in the log: a document keeps the position of the event that made
/// it, so an older event (redelivered, or replayed out of order) never rolls it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// For events of different partitions, which cannot be ordered by offset.
    pub occurred_at_ms: i64,
}

impl Version {
    /// Whether an event at `self` may change a document last changed at `current`.
    pub fn supersedes(&self, current: &Version) -> bool {
        if self.topic == current.topic && self.partition == current.partition {
            self.offset > current.offset
        } else {
            self.occurred_at_ms > current.occurred_at_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_order_is_owned_by_its_customer_and_shipping_amends_it() {
        let placed = project(
            "order.placed",
            &json!({"order_id": "o-1", "customer_id": "alice",
                    "items": [{"sku": "tea-01"}, {"sku": "mug-02"}], "currency": "EUR"}),
            1,
        )
        .unwrap();
        let Change::Put(order) = placed.clone() else {
            panic!()
        };
        assert_eq!(order.id, "order:o-1");
        assert_eq!(order.owner.as_deref(), Some("alice"));
        assert_eq!(order.visibility, Visibility::Owner);
        assert_eq!(order.body, "tea-01 mug-02");
        let shipped = project(
            "order.shipped",
            &json!({"order_id": "o-1", "carrier": "DHL", "tracking_number": "JD01"}),
            2,
        )
        .unwrap();
        let after = shipped.apply(placed.apply(None)).unwrap();
        assert_eq!(after.body, "tea-01 mug-02 shipped with DHL JD01");
        assert!(
            after
                .fields
                .contains(&("status".to_string(), "shipped".to_string()))
        );
        assert_eq!(after.updated_at_ms, 2);
    }

    #[test]
    fn users_show_their_name_only_and_deletion_removes_them() {
        let Some(Change::Put(user)) = project(
            "user.registered",
            &json!({"user_id": "u-1", "display_name": "Alice", "email": "a@x.io", "phone": "+1"}),
            1,
        ) else {
            panic!()
        };
        assert_eq!(user.title, "Alice");
        assert!(!format!("{user:?}").contains("a@x.io"));
        assert_eq!(user.visibility, Visibility::Public);
        assert_eq!(
            project("user.deleted", &json!({"user_id": "u-1"}), 2),
            Some(Change::Remove {
                id: "user:u-1".into()
            })
        );
        // An amendment of a document the index never held makes nothing.
        let renamed = project(
            "user.profile_updated",
            &json!({"user_id": "u-9", "display_name": "Zed"}),
            3,
        )
        .unwrap();
        assert_eq!(renamed.apply(None), None);
        assert_eq!(project("otp.requested", &json!({"phone": "+1"}), 1), None);
    }

    #[test]
    fn an_older_event_never_supersedes_a_newer_one() {
        let at = |partition, offset, ms| Version {
            topic: "orders".into(),
            partition,
            offset,
            occurred_at_ms: ms,
        };
        assert!(at(0, 5, 0).supersedes(&at(0, 4, 9)));
        assert!(!at(0, 4, 9).supersedes(&at(0, 5, 0)));
        assert!(!at(0, 5, 0).supersedes(&at(0, 5, 0)));
        // Across partitions: by time.
        assert!(at(1, 0, 10).supersedes(&at(0, 99, 9)));
        assert!(!at(1, 0, 9).supersedes(&at(0, 0, 9)));
    }
}
