//! Deciding what to send for an event: pure functions of the event, the rule, what the
//! service knows of the recipient, and the clock. Sending and recording are elsewhere.

use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::{Category, Channel, Device, UserRecord};
pub use crate::domain::{DeliveryKey, Intent, PromotionalHistory, Status};
use crate::preferences::Preferences;
use crate::push;
use crate::rules::Rule;
use crate::templates::{Rendered, Templates};
use crate::unsubscribe::Unsubscribe;

/// Who a rule addresses in one event, once looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "one short-lived value per rule and event; boxing buys nothing"
)]
pub enum Resolved {
    /// `Audience::User`: the id from the event and what the projection knows of it.
    User {
        user_id: String,
        record: Option<UserRecord>,
        /// Active push devices (looked up only for rules with push or live).
        devices: Vec<Device>,
        preferences: Preferences,
        /// What the daily cap counts (promotional rules).
        promotional: PromotionalHistory,
        /// Live or push (rules with the live channel).
        presence: Presence,
    },
    Addresses(Vec<String>),
    /// The event lacks the field the rule names (or it has the wrong type), or names an
    /// order never placed.
    Missing(String),
}

impl Resolved {
    /// The one phone number in `field`.
    pub fn phone_in(field: &str, data: &Value) -> Self {
        match data.get(field).and_then(Value::as_str) {
            Some(phone) => Self::Addresses(vec![phone.trim().to_string()]),
            None => Self::Missing(format!("the event has no phone number in {field:?}")),
        }
    }

    pub fn addresses_in(field: &str, data: &Value) -> Self {
        match data.get(field).and_then(Value::as_array) {
            Some(list) => Self::Addresses(
                list.iter()
                    .filter_map(Value::as_str)
                    .map(|a| a.trim().to_ascii_lowercase())
                    .collect(),
            ),
            None => Self::Missing(format!("the event has no address list in {field:?}")),
        }
    }
}

/// What decides whether a `live` message goes on the user's stream or as a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Presence {
    /// The user has a stream open now.
    pub connected: bool,
    /// The live delivery of this event, if an earlier attempt recorded one.
    pub earlier: Option<Status>,
}

impl Presence {
    /// Whether the message goes live (else as push). Once recorded, the choice stands: a
    /// redelivery never sends the other way as well, whoever is connected by then.
    pub fn goes_live(self) -> bool {
        match self.earlier {
            Some(Status::Skipped) => false,
            Some(Status::Sent | Status::Failed | Status::Dead | Status::Deferred) => true,
            Some(Status::Sending | Status::Retrying) | None => self.connected,
        }
    }
}

/// One decision about one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Send {
        intent: Intent,
        /// Where it goes: the email address or phone number, the device's [`push::address`]
        /// (which the log does not keep in full), or the user id of a live message.
        to: String,
        /// The user's display name, for the email's To header.
        name: Option<String>,
        message: Rendered,
    },
    /// Record now, send when the user's quiet hours end (`until_us`).
    Defer {
        intent: Intent,
        to: String,
        name: Option<String>,
        message: Rendered,
        until_us: i64,
    },
    /// Record without sending.
    Skip { intent: Intent, reason: String },
    /// The recipient is not known yet (the users topic is behind this one): handle the
    /// event again once they are, or once the grace has passed.
    Wait { user_id: String },
}

/// The event, as planning needs it.
pub struct EventView<'a> {
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub occurred_at: &'a str,
    pub data: &'a Value,
    /// How long ago the ingress received it.
    pub age: Duration,
}

/// What the running service can do, for planning.
pub struct Capabilities<'a> {
    pub templates: &'a Templates,
    /// Channels with a provider configured.
    pub channels: &'a [Channel],
    /// How long an unknown user is waited for before the delivery is skipped.
    pub recipient_grace: Duration,
    /// Most promotional messages a user gets in 24 hours.
    pub promotional_cap: i64,
    /// The time planning happens at, for quiet hours.
    pub now: jiff::Timestamp,
    /// Signs the one-click unsubscribe links of promotional email.
    pub unsubscribe: Option<&'a Unsubscribe>,
}

/// Every delivery one rule makes for one event (pure).
pub fn plan(
    rule: &Rule,
    event: &EventView<'_>,
    who: Resolved,
    can: &Capabilities<'_>,
) -> Vec<Step> {
    let planner = Planner { rule, event, can };
    match who {
        Resolved::Missing(reason) => planner.skip_all("", None, &reason),
        Resolved::Addresses(addresses) => planner.to_addresses(&addresses),
        Resolved::User {
            user_id,
            record,
            devices,
            preferences,
            promotional,
            presence,
        } => {
            let Some(user) = record else {
                if event.age < can.recipient_grace {
                    return vec![Step::Wait { user_id }];
                }
                return planner.skip_all(&user_id, Some(&user_id), "unknown user");
            };
            let recipient = Recipient {
                user_id: &user_id,
                user: &user,
                devices: &devices,
                preferences: &preferences,
            };
            let mut promotional_left = can.promotional_cap - promotional.others(event.event_id);
            let mut steps = Vec::new();
            for &channel in &rule.channels {
                steps.extend(planner.to_user(
                    &recipient,
                    channel,
                    presence,
                    &promotional,
                    &mut promotional_left,
                ));
            }
            steps
        }
    }
}

/// One rule applied to one event: what every decision of [`plan`] reads.
struct Planner<'a> {
    rule: &'a Rule,
    event: &'a EventView<'a>,
    can: &'a Capabilities<'a>,
}

/// A known user a rule addresses.
struct Recipient<'a> {
    user_id: &'a str,
    user: &'a UserRecord,
    devices: &'a [Device],
    preferences: &'a Preferences,
}

/// Where one message goes: the delivery's recipient key, the address the log keeps, and
/// the destination the channel sends to.
struct Target {
    recipient: String,
    address: String,
    to: String,
}

impl Planner<'_> {
    fn intent(
        &self,
        channel: Channel,
        recipient: &str,
        user_id: Option<&str>,
        address: &str,
    ) -> Intent {
        Intent {
            key: DeliveryKey {
                event_id: self.event.event_id,
                channel,
                recipient: recipient.to_string(),
            },
            user_id: user_id.map(str::to_string),
            address: address.to_string(),
            event_type: self.event.event_type.to_string(),
            template: self.rule.template.clone(),
            category: self.rule.category,
        }
    }

    /// The message for `intent`, or a skip naming why the template could not render.
    fn render(
        &self,
        channel: Channel,
        locale: &str,
        user: &Value,
        intent: Intent,
        to: String,
        name: Option<String>,
    ) -> Step {
        let context = json!({
            "data": self.event.data,
            "user": user,
            "event": {
                "event_id": self.event.event_id.to_string(),
                "event_type": self.event.event_type,
                "occurred_at": self.event.occurred_at,
            },
        });
        match self
            .can
            .templates
            .render(&self.rule.template, locale, channel, &context)
        {
            Ok(message) => Step::Send {
                intent,
                to,
                name,
                message,
            },
            Err(reason) => Step::Skip { intent, reason },
        }
    }

    fn skip(&self, channel: Channel, user_id: &str, reason: String) -> Step {
        Step::Skip {
            intent: self.intent(channel, user_id, Some(user_id), ""),
            reason,
        }
    }

    /// Every channel of the rule skipped, for one reason.
    fn skip_all(&self, recipient: &str, user_id: Option<&str>, reason: &str) -> Vec<Step> {
        self.rule
            .channels
            .iter()
            .map(|&channel| Step::Skip {
                intent: self.intent(channel, recipient, user_id, ""),
                reason: reason.to_string(),
            })
            .collect()
    }

    /// Addresses named in the event (no account behind them): each channel to each.
    fn to_addresses(&self, addresses: &[String]) -> Vec<Step> {
        let mut steps = Vec::new();
        for address in addresses {
            for &channel in &self.rule.channels {
                let intent = self.intent(channel, address, None, address);
                steps.push(if self.can.channels.contains(&channel) {
                    self.render(channel, "en", &json!({}), intent, address.clone(), None)
                } else {
                    Step::Skip {
                        intent,
                        reason: no_provider(channel),
                    }
                });
            }
        }
        steps
    }

    /// One channel of the rule to a known user: a skip naming why, or a message (deferred
    /// past quiet hours) to each of the user's targets on the channel.
    fn to_user(
        &self,
        recipient: &Recipient<'_>,
        channel: Channel,
        presence: Presence,
        promotional: &PromotionalHistory,
        promotional_left: &mut i64,
    ) -> Vec<Step> {
        let Recipient { user_id, user, .. } = *recipient;
        if user.deleted {
            return vec![self.skip(channel, user_id, "user deleted".into())];
        }
        let mut steps = Vec::new();
        let channel = if channel == Channel::Live && !presence.goes_live() {
            // Recorded, so that a redelivery keeps to push.
            steps.push(self.skip(Channel::Live, user_id, "not connected: sent as push".into()));
            Channel::Push
        } else {
            channel
        };
        if !self.can.channels.contains(&channel) {
            steps.push(self.skip(channel, user_id, no_provider(channel)));
            return steps;
        }
        let targets = targets(channel, recipient);
        if targets.is_empty() {
            steps.push(self.skip(channel, user_id, no_target(channel)));
            return steps;
        }
        let began = promotional.began(self.event.event_id, channel);
        if let Some(reason) = refusal(
            self.rule.category,
            channel,
            recipient.preferences,
            *promotional_left,
            began,
            self.can.promotional_cap,
        ) {
            steps.push(self.skip(channel, user_id, reason));
            return steps;
        }
        if self.rule.category == Category::Promotional {
            *promotional_left -= 1;
        }
        let unsubscribe_url = match (self.rule.category, self.can.unsubscribe) {
            (Category::Promotional, Some(signer)) => Some(signer.link(user_id)),
            _ => None,
        };
        let quiet_until = match (&self.rule.category, &recipient.preferences.quiet_hours) {
            (Category::Promotional, Some(window)) => window.until(&user.time_zone, self.can.now),
            _ => None,
        };
        let view = json!({
            "user_id": user.user_id,
            "display_name": user.display_name.clone().unwrap_or_default(),
            "email": user.email,
            "locale": user.locale,
            "unsubscribe_url": unsubscribe_url,
        });
        for target in targets {
            let intent = self.intent(channel, &target.recipient, Some(user_id), &target.address);
            let step = self.render(
                channel,
                &user.locale,
                &view,
                intent,
                target.to,
                user.display_name.clone(),
            );
            steps.push(deferred(
                with_unsubscribe(step, &unsubscribe_url),
                quiet_until,
            ));
        }
        steps
    }
}

/// Where `channel` reaches the recipient: the live stream, each push device, the email or
/// the phone on record (none: nothing to send to).
fn targets(channel: Channel, recipient: &Recipient<'_>) -> Vec<Target> {
    let user_id = recipient.user_id;
    let to = |address: &String| Target {
        recipient: user_id.to_string(),
        address: address.clone(),
        to: address.clone(),
    };
    match channel {
        Channel::Live => vec![Target {
            recipient: user_id.to_string(),
            address: "stream".into(),
            to: user_id.to_string(),
        }],
        Channel::Push => recipient
            .devices
            .iter()
            .map(|d| Target {
                recipient: format!("{user_id}/{}", device_id(&d.token)),
                address: device_label(d),
                to: push::address(&d.platform, &d.token),
            })
            .collect(),
        Channel::Email => recipient.user.email.iter().map(to).collect(),
        Channel::Sms => recipient.user.phone.iter().map(to).collect(),
    }
}

/// Why a channel with no target skips.
fn no_target(channel: Channel) -> String {
    match channel {
        Channel::Push => "no device registered".to_string(),
        _ => format!("the user has no {} address", channel.as_str()),
    }
}

/// Why the user's choices stop a message on `channel`, if they do: the channel turned off
/// (or promotional not opted in to), or the daily promotional cap reached by other events
/// (`began`: this event went out on the channel before, and a redelivery keeps to that).
fn refusal(
    category: Category,
    channel: Channel,
    preferences: &Preferences,
    promotional_left: i64,
    began: bool,
    cap: i64,
) -> Option<String> {
    if !preferences.allows(category, channel) {
        return Some(match category {
            Category::Transactional => format!("the user turned {} off", channel.as_str()),
            Category::Promotional => format!(
                "the user has not opted in to promotional {}",
                channel.as_str()
            ),
        });
    }
    (category == Category::Promotional && promotional_left <= 0 && !began)
        .then(|| format!("the daily cap of {cap} promotional messages is reached"))
}

/// An email carries the one-click unsubscribe link of a promotional message.
fn with_unsubscribe(step: Step, url: &Option<String>) -> Step {
    match step {
        Step::Send {
            intent,
            to,
            name,
            message:
                Rendered::Email {
                    subject,
                    text,
                    html,
                    ..
                },
        } => Step::Send {
            intent,
            to,
            name,
            message: Rendered::Email {
                subject,
                text,
                html,
                list_unsubscribe: url.clone(),
            },
        },
        other => other,
    }
}

/// A message held until the user's quiet hours end, when they are on.
fn deferred(step: Step, quiet_until: Option<jiff::Timestamp>) -> Step {
    match (step, quiet_until) {
        (
            Step::Send {
                intent,
                to,
                name,
                message,
            },
            Some(until),
        ) => Step::Defer {
            intent,
            to,
            name,
            message,
            until_us: until.as_microsecond(),
        },
        (step, _) => step,
    }
}

/// A short, stable id of a device token for the log's key (the token is long, and the log
/// does not keep it).
pub fn device_id(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// How the log shows a device: its platform and the token's last characters.
fn device_label(device: &Device) -> String {
    let chars: Vec<char> = device.token.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(6)..].iter().collect();
    format!("{} …{tail}", device.platform)
}

fn no_provider(channel: Channel) -> String {
    format!("no {} provider is configured", channel.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Audience;

    fn rule(channels: &[Channel], to: Audience) -> Rule {
        Rule {
            event: "user.registered".into(),
            template: "welcome".into(),
            category: Category::Transactional,
            channels: channels.to_vec(),
            to,
            channels_from: None,
        }
    }

    fn alice() -> UserRecord {
        UserRecord {
            user_id: "u-1".into(),
            email: Some("alice@example.com".into()),
            phone: None,
            display_name: Some("Alice".into()),
            locale: "fr".into(),
            time_zone: "UTC".into(),
            deleted: false,
        }
    }

    fn user(
        id: &str,
        record: Option<UserRecord>,
        preferences: Preferences,
        recent: i64,
    ) -> Resolved {
        Resolved::User {
            user_id: id.into(),
            record,
            devices: vec![],
            preferences,
            promotional: PromotionalHistory {
                messages: (1..=recent)
                    .map(|n| (Uuid::from_u128(n.unsigned_abs().into()), Channel::Email))
                    .collect(),
            },
            presence: Presence::default(),
        }
    }

    fn run(rule: &Rule, who: Resolved, age_secs: u64) -> Vec<Step> {
        let templates = Templates::embedded().unwrap();
        let data = json!({"user_id": "u-1"});
        let event = EventView {
            event_id: Uuid::nil(),
            event_type: "user.registered",
            occurred_at: "2026-11-22T10:00:00Z",
            data: &data,
            age: Duration::from_secs(age_secs),
        };
        let can = Capabilities {
            templates: &templates,
            channels: &[Channel::Email],
            recipient_grace: Duration::from_secs(60),
            promotional_cap: 2,
            now: "2026-11-22T12:00:00Z".parse().unwrap(),
            unsubscribe: None,
        };
        plan(rule, &event, who, &can)
    }

    #[test]
    fn a_known_user_gets_the_email_in_their_locale() {
        let steps = run(
            &rule(&[Channel::Email], Audience::User("user_id".into())),
            user("u-1", Some(alice()), Preferences::default(), 0),
            0,
        );
        let [
            Step::Send {
                intent, message, ..
            },
        ] = steps.as_slice()
        else {
            panic!("{steps:?}")
        };
        assert_eq!(intent.key.recipient, "u-1");
        assert_eq!(intent.address, "alice@example.com");
        assert!(
            matches!(message, Rendered::Email { subject, .. } if subject.starts_with("Bienvenue"))
        );
    }

    #[test]
    fn an_unknown_user_is_waited_for_then_skipped() {
        let r = rule(&[Channel::Email], Audience::User("user_id".into()));
        let unknown = || user("u-9", None, Preferences::default(), 0);
        assert!(matches!(
            run(&r, unknown(), 5).as_slice(),
            [Step::Wait { .. }]
        ));
        assert!(
            matches!(run(&r, unknown(), 61).as_slice(), [Step::Skip { reason, .. }] if reason == "unknown user")
        );
    }

    #[test]
    fn no_address_no_provider_or_deleted_are_skips_with_reasons() {
        let r = rule(
            &[Channel::Email, Channel::Sms],
            Audience::User("user_id".into()),
        );
        let mut no_email = alice();
        no_email.email = None;
        let steps = run(
            &r,
            user("u-1", Some(no_email), Preferences::default(), 0),
            0,
        );
        assert!(
            matches!(&steps[0], Step::Skip { reason, .. } if reason == "the user has no email address")
        );
        let mut with_phone = alice();
        with_phone.phone = Some("+15550100".into());
        let steps = run(
            &r,
            user("u-1", Some(with_phone), Preferences::default(), 0),
            0,
        );
        assert!(
            matches!(&steps[1], Step::Skip { reason, .. } if reason == "no sms provider is configured")
        );
        let mut gone = alice();
        gone.deleted = true;
        let steps = run(&r, user("u-1", Some(gone), Preferences::default(), 0), 0);
        assert!(
            steps
                .iter()
                .all(|s| matches!(s, Step::Skip { reason, .. } if reason == "user deleted"))
        );
    }

    #[test]
    fn promotional_needs_an_opt_in_and_stops_at_the_cap() {
        let mut r = rule(&[Channel::Email], Audience::User("user_id".into()));
        r.category = Category::Promotional;
        let who =
            |preferences: Preferences, recent: i64| user("u-1", Some(alice()), preferences, recent);
        let skipped = |steps: Vec<Step>| match steps.as_slice() {
            [Step::Skip { reason, .. }] => Some(reason.clone()),
            _ => None,
        };
        assert_eq!(
            skipped(run(&r, who(Preferences::default(), 0), 0)).as_deref(),
            Some("the user has not opted in to promotional email")
        );
        let opted_in: Preferences =
            serde_json::from_str(r#"{"promotional": {"email": true}}"#).unwrap();
        assert!(matches!(
            run(&r, who(opted_in.clone(), 1), 0).as_slice(),
            [Step::Send { .. }]
        ));
        assert_eq!(
            skipped(run(&r, who(opted_in.clone(), 2), 0)).as_deref(),
            Some("the daily cap of 2 promotional messages is reached")
        );
        // This event's own earlier attempts (its event id is nil here): they do not count
        // against it, and a channel it already went out on keeps going.
        let with_own = |recent: i64, own: Channel| {
            let mut who = who(opted_in.clone(), recent);
            if let Resolved::User { promotional, .. } = &mut who {
                promotional.messages.insert((Uuid::nil(), own));
            }
            who
        };
        assert!(matches!(
            run(&r, with_own(1, Channel::Push), 0).as_slice(),
            [Step::Send { .. }]
        ));
        assert!(matches!(
            run(&r, with_own(2, Channel::Email), 0).as_slice(),
            [Step::Send { .. }]
        ));
        assert!(skipped(run(&r, with_own(2, Channel::Push), 0)).is_some());
        // Transactional: on unless turned off.
        let mut t = r;
        t.category = Category::Transactional;
        let off: Preferences =
            serde_json::from_str(r#"{"transactional": {"email": false}}"#).unwrap();
        assert_eq!(
            skipped(run(&t, who(off, 0), 0)).as_deref(),
            Some("the user turned email off")
        );
    }

    #[test]
    fn quiet_hours_hold_promotional_messages_only() {
        let mut promo = rule(&[Channel::Email], Audience::User("user_id".into()));
        promo.category = Category::Promotional;
        // Planning happens at 12:00 UTC, inside 11:00 to 14:00 in alice's zone (UTC).
        let preferences: Preferences = serde_json::from_str(
            r#"{"promotional": {"email": true}, "quiet_hours": {"start": "11:00", "end": "14:00"}}"#,
        )
        .unwrap();
        let who = || user("u-1", Some(alice()), preferences.clone(), 0);
        let held = run(&promo, who(), 0);
        assert!(
            matches!(held.as_slice(), [Step::Defer { until_us, .. }] if *until_us == "2026-11-22T14:00:00Z".parse::<jiff::Timestamp>().unwrap().as_microsecond()),
            "{held:?}"
        );
        let mut receipt = promo;
        receipt.category = Category::Transactional;
        assert!(matches!(
            run(&receipt, who(), 0).as_slice(),
            [Step::Send { .. }]
        ));
    }

    #[test]
    fn live_goes_on_the_stream_of_a_connected_user_else_as_push_and_stays_decided() {
        let mut r = rule(&[Channel::Live], Audience::User("user_id".into()));
        r.template = "message".into();
        let templates = Templates::embedded().unwrap();
        let data = json!({"user_id": "u-1", "body": "Lunch?"});
        let event = EventView {
            event_id: Uuid::nil(),
            event_type: "message.sent",
            occurred_at: "2026-11-22T10:00:00Z",
            data: &data,
            age: Duration::ZERO,
        };
        let can = Capabilities {
            templates: &templates,
            channels: &[Channel::Live, Channel::Push],
            recipient_grace: Duration::from_secs(60),
            promotional_cap: 2,
            now: "2026-11-22T12:00:00Z".parse().unwrap(),
            unsubscribe: None,
        };
        let sent_on = |connected, earlier| {
            let who = Resolved::User {
                user_id: "u-1".into(),
                record: Some(alice()),
                devices: vec![Device {
                    token: "tok-1".into(),
                    user_id: "u-1".into(),
                    platform: "android".into(),
                    active: true,
                }],
                preferences: Preferences::default(),
                promotional: PromotionalHistory::default(),
                presence: Presence { connected, earlier },
            };
            plan(&r, &event, who, &can)
                .iter()
                .map(|step| match step {
                    Step::Send { intent, .. } => format!("send {}", intent.key.channel.as_str()),
                    Step::Skip { intent, .. } => format!("skip {}", intent.key.channel.as_str()),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(sent_on(true, None), ["send live"]);
        assert_eq!(sent_on(false, None), ["skip live", "send push"]);
        // Decided earlier: connecting or leaving since changes nothing.
        assert_eq!(sent_on(false, Some(Status::Sent)), ["send live"]);
        assert_eq!(
            sent_on(true, Some(Status::Skipped)),
            ["skip live", "send push"]
        );
        // The stream went away between planning and sending: decided again.
        assert_eq!(
            sent_on(false, Some(Status::Retrying)),
            ["skip live", "send push"]
        );
    }

    #[test]
    fn addresses_each_get_one_delivery_keyed_by_address() {
        let mut r = rule(&[Channel::Email], Audience::Addresses("recipients".into()));
        r.template = "report".into();
        let data = json!({"recipients": ["Ops@Example.com", "cfo@example.com"]});
        let who = Resolved::addresses_in("recipients", &data);
        let steps = run(&r, who, 0);
        let recipients: Vec<_> = steps
            .iter()
            .map(|s| match s {
                Step::Send { intent, .. } | Step::Skip { intent, .. } => {
                    intent.key.recipient.clone()
                }
                Step::Defer { .. } | Step::Wait { .. } => panic!("{s:?}"),
            })
            .collect();
        assert_eq!(recipients, ["ops@example.com", "cfo@example.com"]);
    }

    #[test]
    fn idempotency_keys_are_stable_and_distinct() {
        let key = |channel, recipient: &str| DeliveryKey {
            event_id: Uuid::nil(),
            channel,
            recipient: recipient.into(),
        };
        assert_eq!(
            key(Channel::Email, "u-1").idempotency_key(),
            key(Channel::Email, "u-1").idempotency_key()
        );
        assert_ne!(
            key(Channel::Email, "u-1").idempotency_key(),
            key(Channel::Push, "u-1").idempotency_key()
        );
        assert_eq!(key(Channel::Email, "u-1").idempotency_key().len(), 32);
    }
}
