//! The figures reports are made of, kept as events arrive (never recomputed from the log):
//! events per type, signups, orders and order value per currency, notification outcomes per
//! channel and status (from `notification.settled`), each per UTC hour, and
//! which users were active in each hour (so a report counts distinct users over any range).
//!
//! A user is active in an hour when they are the actor of an event in it (the verified token
//! subject that posted it); Herald's own services (actors `herald-*`, such as the
//! `report.generated` events of this service) are not users. Every event counts once: the store records each `event_id` it
//! applied in the same transaction as the figures, and skips one it has seen.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

pub const EVENTS: &str = "events";
pub const SIGNUPS: &str = "signups";
pub const ORDERS: &str = "orders";
/// Keyed `channel/status`.
pub const NOTIFICATIONS: &str = "notifications";
/// Actors of events Herald's services publish themselves.
pub const SERVICE_ACTORS: &str = "herald-";

/// One counter: a metric, in one UTC hour (its start, in Unix seconds), for one key (the
/// event type, the currency, or empty).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Counter {
    pub metric: &'static str,
    pub hour: i64,
    pub key: String,
}

/// How many, and the sum of a value (order value in cents).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub count: i64,
    pub sum: i64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.count += other.count;
        self.sum += other.sum;
    }
}

/// What some events add, merged: one row per counter however many events touch it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Additions {
    pub counters: BTreeMap<Counter, Tally>,
    /// (hour, user id)
    pub active: BTreeSet<(i64, String)>,
}

/// The start of the UTC hour holding `unix_seconds`.
pub fn hour_of(unix_seconds: i64) -> i64 {
    unix_seconds.div_euclid(3600) * 3600
}

impl Additions {
    /// Adds one event (pure).
    pub fn add(&mut self, event_type: &str, occurred_at: i64, actor: &str, data: &Value) {
        let hour = hour_of(occurred_at);
        let mut count = |metric, key: &str, sum| {
            *self
                .counters
                .entry(Counter {
                    metric,
                    hour,
                    key: key.to_string(),
                })
                .or_default() += Tally { count: 1, sum };
        };
        count(EVENTS, event_type, 0);
        match event_type {
            "user.registered" => count(SIGNUPS, "", 0),
            "order.placed" => {
                let currency = data.get("currency").and_then(Value::as_str).unwrap_or("");
                let value = data.get("total_cents").and_then(Value::as_i64).unwrap_or(0);
                count(ORDERS, currency, value);
            }
            "notification.settled" => {
                let field = |name| data.get(name).and_then(Value::as_str).unwrap_or("");
                count(
                    NOTIFICATIONS,
                    &format!("{}/{}", field("channel"), field("status")),
                    0,
                );
            }
            _ => {}
        }
        if !actor.is_empty() && !actor.starts_with(SERVICE_ACTORS) {
            self.active.insert((hour, actor.to_string()));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn events_add_to_their_hour_merged() {
        let mut add = Additions::default();
        let order = json!({"currency": "EUR", "total_cents": 450});
        add.add("order.placed", 7_200, "alice", &order);
        add.add("order.placed", 7_300, "alice", &order);
        add.add("user.registered", 10_799, "bob", &json!({}));
        // A service's own event counts as an event, and its actor not as a user.
        add.add("report.generated", 7_400, "herald-reports", &json!({}));
        add.add(
            "order.placed",
            -1,
            "carol",
            &json!({"currency": "USD", "total_cents": 100}),
        );
        let tally = |metric, hour, key: &str| {
            add.counters
                .get(&Counter {
                    metric,
                    hour,
                    key: key.into(),
                })
                .copied()
        };
        assert_eq!(
            tally(ORDERS, 7_200, "EUR"),
            Some(Tally { count: 2, sum: 900 })
        );
        assert_eq!(tally(EVENTS, 7_200, "order.placed").unwrap().count, 2);
        assert_eq!(tally(EVENTS, 7_200, "user.registered").unwrap().count, 1);
        assert_eq!(tally(EVENTS, 7_200, "report.generated").unwrap().count, 1);
        assert_eq!(tally(SIGNUPS, 7_200, "").unwrap().count, 1);
        // Before 1970 still falls in the hour that holds it.
        assert_eq!(tally(ORDERS, -3_600, "USD").unwrap().sum, 100);
        assert_eq!(
            add.active.len(),
            3,
            "alice, bob and carol, not herald-reports"
        );
    }
}
