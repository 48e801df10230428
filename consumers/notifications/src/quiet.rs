//! Quiet hours: a daily window in the user's time zone when promotional messages wait.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use serde::{Deserialize, Serialize};

/// `{"start": "22:00", "end": "07:00"}`: from start (inclusive) to end (exclusive), local
/// time; a window whose end is before its start runs over midnight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    pub start: String,
    pub end: String,
}

impl QuietHours {
    /// The window's problem, if any.
    pub fn check(&self) -> Result<(), String> {
        let start = parse(&self.start)?;
        let end = parse(&self.end)?;
        if start == end {
            return Err("quiet_hours start and end must differ".into());
        }
        Ok(())
    }

    /// When the window that holds `now` ends (pure): `None` outside the window. A time zone
    /// the tz database does not know counts as UTC.
    pub fn until(&self, time_zone: &str, now: Timestamp) -> Option<Timestamp> {
        let (start, end) = (parse(&self.start).ok()?, parse(&self.end).ok()?);
        let zone = TimeZone::get(time_zone).unwrap_or(TimeZone::UTC);
        let local: Zoned = now.to_zoned(zone);
        let time = local.time();
        let inside = if start < end {
            start <= time && time < end
        } else {
            time >= start || time < end
        };
        if !inside {
            return None;
        }
        // The end is later today, or tomorrow when the window runs over midnight.
        let mut day = local.date();
        if time >= end {
            day = day.checked_add(1.day()).ok()?;
        }
        day.to_datetime(end)
            .to_zoned(local.time_zone().clone())
            .ok()
            .map(|z| z.timestamp())
    }
}

fn parse(text: &str) -> Result<Time, String> {
    let bad = || format!("{text:?} is not a time of day as HH:MM");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn night() -> QuietHours {
        QuietHours {
            start: "22:00".into(),
            end: "07:00".into(),
        }
    }

    #[test]
    fn a_window_over_midnight_holds_until_its_end_in_the_users_zone() {
        // 03:00 in Paris (UTC+1 in November) is 02:00 UTC: held until 07:00 Paris.
        assert_eq!(
            night().until("Europe/Paris", at("2026-11-22T02:00:00Z")),
            Some(at("2026-11-22T06:00:00Z"))
        );
        // 23:30 Paris: until 07:00 the next day.
        assert_eq!(
            night().until("Europe/Paris", at("2026-11-22T22:30:00Z")),
            Some(at("2026-11-23T06:00:00Z"))
        );
        // Noon: not quiet.
        assert_eq!(
            night().until("Europe/Paris", at("2026-11-22T11:00:00Z")),
            None
        );
        // The end itself is outside.
        assert_eq!(night().until("UTC", at("2026-11-22T07:00:00Z")), None);
    }

    #[test]
    fn a_daytime_window_and_an_unknown_zone() {
        let lunch = QuietHours {
            start: "12:00".into(),
            end: "13:30".into(),
        };
        assert_eq!(
            lunch.until("Nowhere/Atlantis", at("2026-11-22T12:10:00Z")),
            Some(at("2026-11-22T13:30:00Z"))
        );
        assert_eq!(lunch.until("UTC", at("2026-11-22T13:30:00Z")), None);
    }

    #[test]
    fn malformed_windows_are_named() {
        for (start, end) in [
            ("7:00", "08:00"),
            ("24:00", "08:00"),
            ("07:60", "08:00"),
            ("08:00", "08:00"),
        ] {
            let window = QuietHours {
                start: start.into(),
                end: end.into(),
            };
            assert!(window.check().is_err(), "{start}-{end}");
        }
        assert!(night().check().is_ok());
    }
}
