//! Which events notify whom, on which channels: the rules file.
//!
//! A rule names an event type, a template, a category and channels, and says who receives
//! it (`to`): the user whose id is in a field of the event, the customer of the order named
//! in a field, the email addresses or phone number in a field, or every opted-in user
//! (promotional campaigns). The starter rules are
//! `consumers/notifications/rules.toml`; `NOTIFY_RULES_FILE` replaces them.

use std::collections::HashMap;
use std::path::Path;

use events::Catalog;
use serde::Deserialize;

pub use crate::domain::{Category, Channel};
use crate::templates::Templates;

/// The event type whose `order_id` and `customer_id` tell who placed an order.
pub const ORDER_PLACED: &str = "order.placed";

/// The starter rules, compiled in.
pub const DEFAULT_RULES: &str = include_str!("../rules.toml");

/// Who receives a rule's notification.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// The user whose id is in this field of the event's data.
    User(String),
    /// The email addresses in this field (an array of strings) of the event's data.
    Addresses(String),
    /// The phone number (E.164) in this field of the event's data: SMS only.
    Phone(String),
    /// The customer who placed the order whose id is in this field (known from the
    /// order.placed events the service has seen).
    CustomerOfOrder(String),
    /// Every user who opted in to the rule's category and channel.
    OptedIn,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub event: String,
    pub template: String,
    pub category: Category,
    pub channels: Vec<Channel>,
    pub to: Audience,
    /// A field of the event listing channel names: the event is sent on those of the rule's
    /// channels it lists (a campaign chooses its channels).
    #[serde(default)]
    pub channels_from: Option<String>,
}

impl Rule {
    /// The rule's channels for one event: all, or those the event's `channels_from` field
    /// lists.
    pub fn channels_for(&self, data: &serde_json::Value) -> Vec<Channel> {
        let Some(field) = &self.channels_from else {
            return self.channels.clone();
        };
        let listed: Vec<Channel> = data
            .get(field)
            .and_then(serde_json::Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(serde_json::Value::as_str)
                    .filter_map(Channel::parse)
                    .collect()
            })
            .unwrap_or_default();
        self.channels
            .iter()
            .copied()
            .filter(|c| listed.contains(c))
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<Rule>,
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("reading the rules file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the rules are not valid TOML of the expected shape: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("rule {index} ({event}): {reason}; fix the rules file")]
    Invalid {
        index: usize,
        event: String,
        reason: String,
    },
}

/// The rules, by event type.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    by_event: HashMap<String, Vec<Rule>>,
}

impl Rules {
    /// Reads `path`, or the starter rules without one, and checks every rule against the
    /// event catalog and the templates, so a typo stops the service at start rather than
    /// silently sending nothing.
    pub fn load(
        path: Option<&Path>,
        catalog: &Catalog,
        templates: &Templates,
    ) -> Result<Self, RulesError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| RulesError::Read {
                path: path.display().to_string(),
                source,
            })?,
            None => DEFAULT_RULES.to_string(),
        };
        Self::parse(&text, catalog, templates)
    }

    pub fn parse(text: &str, catalog: &Catalog, templates: &Templates) -> Result<Self, RulesError> {
        let file: RulesFile = toml::from_str(text)?;
        let mut by_event: HashMap<String, Vec<Rule>> = HashMap::new();
        for (index, rule) in file.rule.into_iter().enumerate() {
            let invalid = |reason: String| RulesError::Invalid {
                index: index + 1,
                event: rule.event.clone(),
                reason,
            };
            let schema = catalog
                .latest(&rule.event)
                .ok_or_else(|| invalid("no such event type in the schemas".into()))?;
            let field = match &rule.to {
                Audience::User(field)
                | Audience::Addresses(field)
                | Audience::Phone(field)
                | Audience::CustomerOfOrder(field) => Some(field),
                Audience::OptedIn => None,
            };
            for field in field.into_iter().chain(rule.channels_from.as_ref()) {
                if schema.example.get(field.as_str()).is_none() {
                    return Err(invalid(format!("the event has no field {field:?}")));
                }
            }
            if rule.to == Audience::OptedIn && rule.category != Category::Promotional {
                return Err(invalid(
                    "\"opted_in\" reaches users who opted in to promotional messages: \
                     the category must be \"promotional\""
                        .into(),
                ));
            }
            if matches!(rule.to, Audience::CustomerOfOrder(_))
                && catalog.latest(ORDER_PLACED).is_none()
            {
                return Err(invalid(format!(
                    "customers are known from {ORDER_PLACED} events, which the schemas lack"
                )));
            }
            if rule.channels.is_empty() {
                return Err(invalid("no channels".into()));
            }
            if rule.channels.contains(&Channel::Live) && rule.channels.contains(&Channel::Push) {
                return Err(invalid(
                    "live already goes as push to users who are not connected: \
                     list one of the two"
                        .into(),
                ));
            }
            if rule.channels.contains(&Channel::Live) && rule.category == Category::Promotional {
                return Err(invalid(
                    "live is for transactional rules: promotional messages wait out quiet \
                     hours, and a message held that long no longer belongs on a live stream"
                        .into(),
                ));
            }
            if matches!(rule.to, Audience::Addresses(_)) && rule.channels != [Channel::Email] {
                return Err(invalid(
                    "a list of addresses can only be emailed (channels = [\"email\"])".into(),
                ));
            }
            if matches!(rule.to, Audience::Phone(_)) && rule.channels != [Channel::Sms] {
                return Err(invalid(
                    "a phone number can only be texted (channels = [\"sms\"])".into(),
                ));
            }
            for channel in &rule.channels {
                templates
                    .check(&rule.template, *channel)
                    .map_err(&invalid)?;
            }
            by_event.entry(rule.event.clone()).or_default().push(rule);
        }
        Ok(Self { by_event })
    }

    pub fn for_event(&self, event_type: &str) -> &[Rule] {
        self.by_event.get(event_type).map_or(&[], Vec::as_slice)
    }

    /// Whether some rule emails promotional messages (which need unsubscribe links).
    pub fn sends_promotional_email(&self) -> bool {
        self.by_event.values().flatten().any(|rule| {
            rule.category == Category::Promotional && rule.channels.contains(&Channel::Email)
        })
    }

    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.by_event.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Rules, RulesError> {
        let catalog = Catalog::embedded().unwrap();
        Rules::parse(text, &catalog, &Templates::embedded().unwrap())
    }

    #[test]
    fn the_starter_rules_load() {
        let catalog = Catalog::embedded().unwrap();
        let rules = Rules::load(None, &catalog, &Templates::embedded().unwrap()).unwrap();
        let welcome = &rules.for_event("user.registered")[0];
        assert_eq!(welcome.template, "welcome");
        assert_eq!(welcome.to, Audience::User("user_id".into()));
        assert!(rules.for_event("order.placed").len() == 1);
        assert!(rules.for_event("user.deleted").is_empty());
    }

    #[test]
    fn every_starter_rule_renders_its_example_event() {
        let catalog = Catalog::embedded().unwrap();
        let templates = Templates::embedded().unwrap();
        let rules = Rules::load(None, &catalog, &templates).unwrap();
        let user = serde_json::json!({
            "display_name": "Alice",
            "email": "a@example.com",
            "unsubscribe_url": "https://api.example.com/api/v1/unsubscribe/t"
        });
        for event_type in rules.event_types() {
            let example = &catalog.latest(event_type).unwrap().example;
            for rule in rules.for_event(event_type) {
                for channel in &rule.channels {
                    let context = serde_json::json!({"data": example, "user": user});
                    templates
                        .render(&rule.template, "en", *channel, &context)
                        .unwrap_or_else(|err| panic!("{event_type}: {err}"));
                    templates
                        .render(&rule.template, "fr", *channel, &context)
                        .unwrap_or_else(|err| panic!("{event_type} (fr): {err}"));
                }
            }
        }
    }

    #[test]
    fn mistakes_are_named() {
        let unknown_event = load(
            "[[rule]]\nevent='order.lost'\ntemplate='welcome'\ncategory='transactional'\nchannels=['email']\nto={user='user_id'}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            unknown_event.contains("no such event type"),
            "{unknown_event}"
        );
        let unknown_field = load(
            "[[rule]]\nevent='user.registered'\ntemplate='welcome'\ncategory='transactional'\nchannels=['email']\nto={user='nobody'}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            unknown_field.contains("no field \"nobody\""),
            "{unknown_field}"
        );
        let unknown_template = load(
            "[[rule]]\nevent='user.registered'\ntemplate='nope'\ncategory='transactional'\nchannels=['email']\nto={user='user_id'}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            unknown_template.contains("no template"),
            "{unknown_template}"
        );
        let phone_by_email = load(
            "[[rule]]\nevent='otp.requested'\ntemplate='otp'\ncategory='transactional'\nchannels=['email']\nto={phone='phone'}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            phone_by_email.contains("can only be texted"),
            "{phone_by_email}"
        );
        let campaign_to_all = load(
            "[[rule]]\nevent='campaign.launched'\ntemplate='campaign'\ncategory='transactional'\nchannels=['push']\nto='opted_in'",
        )
        .unwrap_err()
        .to_string();
        assert!(
            campaign_to_all.contains("must be \"promotional\""),
            "{campaign_to_all}"
        );
        let live_and_push = load(
            "[[rule]]\nevent='message.sent'\ntemplate='message'\ncategory='transactional'\nchannels=['live', 'push']\nto={user='recipient_id'}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            live_and_push.contains("list one of the two"),
            "{live_and_push}"
        );
        let promotional_live = load(
            "[[rule]]\nevent='message.sent'\ntemplate='message'\ncategory='promotional'\nchannels=['live']\nto={user='recipient_id'}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            promotional_live.contains("live is for transactional rules"),
            "{promotional_live}"
        );
        let typo = load("[[rule]]\nevnt='user.registered'").unwrap_err();
        assert!(matches!(typo, RulesError::Parse(_)));
    }

    #[test]
    fn a_campaign_goes_on_the_channels_it_lists_that_the_rule_allows() {
        let catalog = Catalog::embedded().unwrap();
        let rules = Rules::load(None, &catalog, &Templates::embedded().unwrap()).unwrap();
        let campaign = &rules.for_event("campaign.launched")[0];
        assert!(rules.sends_promotional_email());
        let channels = |data| campaign.channels_for(&data);
        assert_eq!(
            channels(serde_json::json!({"channels": ["push", "email", "fax"]})),
            [Channel::Email, Channel::Push]
        );
        assert!(channels(serde_json::json!({"channels": []})).is_empty());
        assert!(channels(serde_json::json!({})).is_empty());
    }
}
