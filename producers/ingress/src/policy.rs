//! Who may publish what: a role set per event type, topic, or by default. Loaded from a
//! TOML file (`publish-policy.toml` is the default); the decision is a pure function.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

const DEFAULT_POLICY: &str = include_str!("../publish-policy.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishPolicy {
    default: BTreeSet<String>,
    #[serde(default)]
    topics: BTreeMap<String, BTreeSet<String>>,
    #[serde(default)]
    event_types: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, thiserror::Error)]
#[error("publish policy: {0}")]
pub struct PolicyError(String);

impl PublishPolicy {
    pub fn embedded() -> Self {
        Self::parse(DEFAULT_POLICY).expect("the embedded publish policy parses")
    }

    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|err| PolicyError(err.to_string()))
    }

    /// The roles allowed to publish `event_type` on `topic`: the most specific rule wins.
    pub fn allowed_roles(&self, event_type: &str, topic: &str) -> &BTreeSet<String> {
        self.event_types
            .get(event_type)
            .or_else(|| self.topics.get(topic))
            .unwrap_or(&self.default)
    }

    pub fn allows(&self, roles: &[String], event_type: &str, topic: &str) -> bool {
        let allowed = self.allowed_roles(event_type, topic);
        roles.iter().any(|role| allowed.contains(role))
    }

    /// Whether a caller with `roles` publishes `event_type` only as a `user`, and so only on
    /// their own behalf: no other role of theirs is allowed it.
    pub fn only_as_user(&self, roles: &[String], event_type: &str, topic: &str) -> bool {
        let allowed = self.allowed_roles(event_type, topic);
        !roles
            .iter()
            .any(|role| role != USER && allowed.contains(role))
    }

    /// Refuses a policy that lets users publish an event type whose schema names no owner:
    /// a user could then publish it on anyone's behalf.
    pub fn check_owners(&self, catalog: &events::Catalog) -> Result<(), PolicyError> {
        let unowned: Vec<&str> = catalog
            .event_types()
            .filter(|v| {
                v.owner.is_none() && self.allowed_roles(&v.event_type, &v.topic).contains(USER)
            })
            .map(|v| v.event_type.as_str())
            .collect();
        if unowned.is_empty() {
            Ok(())
        } else {
            Err(PolicyError(format!(
                "users may publish {unowned:?}, whose schemas name no owner (herald.owner); \
                 give them one or leave them to service and admin"
            )))
        }
    }
}

/// The role that publishes only on its own behalf.
pub const USER: &str = "user";

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(list: &[&str]) -> Vec<String> {
        list.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn users_publish_orders_and_messages_only() {
        let policy = PublishPolicy::embedded();
        let user = roles(&["user"]);
        assert!(policy.allows(&user, "order.placed", "orders"));
        assert!(policy.allows(&user, "message.sent", "messages"));
        assert!(!policy.allows(&user, "user.registered", "users"));
        assert!(!policy.allows(&user, "otp.requested", "otp"));
        assert!(!policy.allows(&user, "campaign.launched", "campaigns"));
    }

    #[test]
    fn campaign_launches_need_an_admin_and_account_events_a_service() {
        let policy = PublishPolicy::embedded();
        assert!(policy.allows(&roles(&["admin"]), "campaign.launched", "campaigns"));
        assert!(!policy.allows(&roles(&["service"]), "campaign.launched", "campaigns"));
        assert!(policy.allows(&roles(&["service"]), "user.registered", "users"));
        assert!(!policy.allows(&roles(&["admin"]), "otp.requested", "otp"));
    }

    #[test]
    fn users_publish_only_event_types_that_name_an_owner() {
        let policy = PublishPolicy::embedded();
        let catalog = events::Catalog::embedded().unwrap();
        policy.check_owners(&catalog).unwrap();
        assert!(!policy.allows(&roles(&["user"]), "order.shipped", "orders"));
        let loose = PublishPolicy::parse("default = [\"user\"]").unwrap();
        let err = loose.check_owners(&catalog).unwrap_err().to_string();
        assert!(err.contains("order.shipped"), "{err}");
        assert!(policy.only_as_user(&roles(&["user"]), "order.placed", "orders"));
        assert!(!policy.only_as_user(&roles(&["user", "service"]), "order.placed", "orders"));
        assert!(policy.only_as_user(&roles(&["user", "analyst"]), "order.placed", "orders"));
    }

    #[test]
    fn unknown_topics_fall_back_to_the_default() {
        let policy = PublishPolicy::embedded();
        assert!(policy.allows(&roles(&["service"]), "invoice.paid", "invoices"));
        assert!(!policy.allows(&roles(&["user", "analyst"]), "invoice.paid", "invoices"));
    }

    #[test]
    fn a_misspelt_section_is_an_error() {
        assert!(PublishPolicy::parse("default = []\n[topic]\norders = []").is_err());
    }
}
