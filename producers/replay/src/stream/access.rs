//! Who may read which events of a stream (pure).
//!
//! The catalog decides: each type's readers (`herald.readers`; by default admin, analyst and
//! service, and user when the type has an owner) read every event of the type, but a `user`,
//! who reads only the events that are theirs (`herald.owner`). A type without an owner
//! changes another party's state (an invoice, a shipment): no `user` reads it.

use events::{Owner, SchemaVersion};

/// What a caller may read of one event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Everything,
    /// Only the events whose owner is the caller.
    TheirOwn,
    Nothing,
}

pub fn reading(roles: &[String], schema: &SchemaVersion) -> Reading {
    let reads = |role: &String| schema.readers.contains(role);
    if roles.iter().any(|role| role != "user" && reads(role)) {
        Reading::Everything
    } else if roles.iter().any(|role| role == "user" && reads(role)) && schema.owner.is_some() {
        Reading::TheirOwn
    } else {
        Reading::Nothing
    }
}

/// Whether an event of `schema` (published by `actor`, with `data`) is `subject`'s own.
pub fn is_theirs(
    schema: &SchemaVersion,
    actor: &str,
    data: &serde_json::Value,
    subject: &str,
) -> bool {
    match &schema.owner {
        Some(Owner::Actor) => actor == subject,
        Some(Owner::Field(field)) => data.get(field).and_then(|v| v.as_str()) == Some(subject),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> events::Catalog {
        events::Catalog::embedded().unwrap()
    }

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn users_read_their_own_events_of_owned_types_and_operators_read_all() {
        let catalog = catalog();
        let placed = catalog.latest("order.placed").unwrap();
        let message = catalog.latest("message.sent").unwrap();
        let unowned = catalog
            .event_types()
            .find(|schema| schema.owner.is_none())
            .expect("a type without an owner");
        assert_eq!(reading(&roles(&["user"]), placed), Reading::TheirOwn);
        assert_eq!(reading(&roles(&["user"]), unowned), Reading::Nothing);
        assert_eq!(reading(&roles(&["analyst"]), unowned), Reading::Everything);
        assert_eq!(
            reading(&roles(&["user", "admin"]), placed),
            Reading::Everything
        );
        assert_eq!(reading(&roles(&["reporter"]), placed), Reading::Nothing);
        assert_eq!(reading(&[], placed), Reading::Nothing);

        let data = serde_json::json!({"customer_id": "alice"});
        assert!(is_theirs(placed, "someone", &data, "alice"));
        assert!(!is_theirs(placed, "alice", &data, "bob"));
        assert!(!is_theirs(placed, "alice", &serde_json::json!({}), "alice"));
        assert!(is_theirs(message, "alice", &data, "alice"));
        assert!(!is_theirs(message, "bob", &data, "alice"));
    }
}
