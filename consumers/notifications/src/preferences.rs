//! What a user agreed to receive: per category and channel. Transactional messages are on
//! unless the user turns a channel off; promotional ones are off until the user turns a
//! channel on (an explicit opt-in).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quiet::QuietHours;
use crate::rules::{Category, Channel};

/// The document of `GET`/`PUT /api/v1/me/notification-preferences`:
/// `{"transactional": {"email": true, ...}, "promotional": {"email": false, ...}}`. A channel
/// left out has its category's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    #[serde(default)]
    pub transactional: BTreeMap<Channel, bool>,
    #[serde(default)]
    pub promotional: BTreeMap<Channel, bool>,
    /// When promotional messages wait, in the user's time zone; transactional ones never do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<QuietHours>,
}

/// The channels a user can switch (live delivery follows push).
pub const SWITCHABLE: [Channel; 3] = [Channel::Email, Channel::Push, Channel::Sms];

impl Preferences {
    /// Whether `category` may use `channel` for this user (pure).
    pub fn allows(&self, category: Category, channel: Channel) -> bool {
        let channel = match channel {
            Channel::Live => Channel::Push,
            other => other,
        };
        match category {
            Category::Transactional => *self.transactional.get(&channel).unwrap_or(&true),
            Category::Promotional => *self.promotional.get(&channel).unwrap_or(&false),
        }
    }

    /// Every switch spelled out, defaults included: what `GET` answers.
    pub fn effective(&self) -> Self {
        let all = |category| {
            SWITCHABLE
                .iter()
                .map(|&c| (c, self.allows(category, c)))
                .collect()
        };
        Self {
            transactional: all(Category::Transactional),
            promotional: all(Category::Promotional),
            quiet_hours: self.quiet_hours.clone(),
        }
    }

    /// A `PUT` body's problem, if any: `live` is not a switch of its own.
    pub fn check(&self) -> Result<(), String> {
        let live = self
            .transactional
            .keys()
            .chain(self.promotional.keys())
            .any(|c| *c == Channel::Live);
        if live {
            return Err("live follows push: set push instead".into());
        }
        match &self.quiet_hours {
            Some(window) => window.check(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_is_opt_out_and_promotional_opt_in() {
        let none = Preferences::default();
        assert!(none.allows(Category::Transactional, Channel::Email));
        assert!(!none.allows(Category::Promotional, Channel::Email));
        let chosen: Preferences = serde_json::from_str(
            r#"{"transactional": {"sms": false}, "promotional": {"email": true}}"#,
        )
        .unwrap();
        assert!(!chosen.allows(Category::Transactional, Channel::Sms));
        assert!(chosen.allows(Category::Transactional, Channel::Push));
        assert!(chosen.allows(Category::Promotional, Channel::Email));
        assert!(!chosen.allows(Category::Promotional, Channel::Push));
        assert!(!chosen.allows(Category::Promotional, Channel::Live));
        let effective = chosen.effective();
        assert_eq!(effective.promotional.len(), 3);
        assert!(!effective.transactional[&Channel::Sms]);
    }

    #[test]
    fn unknown_fields_channels_and_live_are_refused() {
        assert!(serde_json::from_str::<Preferences>(r#"{"marketing": {}}"#).is_err());
        assert!(serde_json::from_str::<Preferences>(r#"{"promotional": {"fax": true}}"#).is_err());
        let live: Preferences = serde_json::from_str(r#"{"promotional": {"live": true}}"#).unwrap();
        assert!(live.check().is_err());
    }
}
