//! Cron expressions, evaluated in a time zone.
//!
//! Five fields: minute, hour, day of month, month, day of week. Each is `*`, a number, a range
//! `a-b`, a step `*/n` or `a-b/n`, or a list of those separated by commas; months and days may
//! be named (`jan`, `sun`), and day of week 7 is Sunday like 0. As in Vixie cron, when both the
//! day of month and the day of week are restricted, a day matching either one fires.
//!
//! Fire times are wall-clock times in the schedule's zone. Across a change of clocks none is
//! skipped or doubled: a time that does not exist that day (02:30 when clocks jump from 02:00
//! to 03:00) fires at the same distance after the jump (03:30), and a time that occurs twice
//! (01:30 when clocks fall back) fires once, the first time.

use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron expression {expression:?}: {reason}")]
pub struct CronError {
    expression: String,
    reason: String,
}

/// A parsed expression: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    any_day: bool,
    any_weekday: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
/// How far ahead a next fire time is looked for (a 29 February on a Monday can be 28 years
/// away; nothing useful is).
const HORIZON_DAYS: i32 = 366 * 8;

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(expression: &str) -> Result<Self, CronError> {
        let fail = |reason: String| CronError {
            expression: expression.to_string(),
            reason,
        };
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields.as_slice() else {
            return Err(fail(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                fields.len()
            )));
        };
        let minutes = field(minute, 0, 59, &[]).map_err(|r| fail(format!("minute: {r}")))?;
        let hours = field(hour, 0, 23, &[]).map_err(|r| fail(format!("hour: {r}")))?;
        let days = field(day, 1, 31, &[]).map_err(|r| fail(format!("day of month: {r}")))?;
        let months = field(month, 1, 12, &MONTHS).map_err(|r| fail(format!("month: {r}")))?;
        let mut weekdays =
            field(weekday, 0, 7, &WEEKDAYS).map_err(|r| fail(format!("day of week: {r}")))?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Self {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            any_day: day.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
        })
    }
}

/// One field as a bit set of the values it allows.
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |part: &str| -> Result<u32, String> {
        let lower = part.to_ascii_lowercase();
        if let Some(index) = names.iter().position(|name| *name == lower) {
            // Months are named from 1, weekdays from 0.
            return Ok(index as u32 + min);
        }
        let number: u32 = part
            .parse()
            .map_err(|_| format!("{part:?} is not a number{}", named(names)))?;
        if number < min || number > max {
            return Err(format!("{number} is outside {min}-{max}"));
        }
        Ok(number)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("step {step:?} must be a positive number"))?;
                (range, step)
            }
            None => (part, 1),
        };
        let (from, to) = match range {
            "*" => (min, max),
            _ => match range.split_once('-') {
                Some((from, to)) => (value(from)?, value(to)?),
                None if step > 1 => (value(range)?, max),
                None => {
                    let single = value(range)?;
                    (single, single)
                }
            },
        };
        if from > to {
            return Err(format!("range {range:?} runs backwards"));
        }
        for allowed in (from..=to).step_by(step as usize) {
            set |= 1 << allowed;
        }
    }
    Ok(set)
}

fn named(names: &[&str]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" or a name ({})", names.join(", "))
    }
}

impl Cron {
    fn fires_on(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let by_day = self.days & (1 << date.day()) != 0;
        let by_weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => by_weekday,
            (false, true) => by_day,
            (false, false) => by_day || by_weekday,
        }
    }

    /// The first fire time strictly after `after`, in `zone`; `None` when the expression
    /// never fires (31 February) within years.
    pub fn next_after(&self, after: Timestamp, zone: &TimeZone) -> Option<Timestamp> {
        let start = zone.to_datetime(after).date();
        // A day back too: a time shifted by a change of clocks can land on the next day.
        let mut date = start.yesterday().ok()?;
        for _ in 0..HORIZON_DAYS {
            if self.fires_on(date) {
                let earliest = self
                    .times_on(date)
                    .filter_map(|civil| zone.to_ambiguous_timestamp(civil).compatible().ok())
                    .filter(|fire| *fire > after)
                    .min();
                if earliest.is_some() {
                    return earliest;
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// Every fire time in `(after, until]`, oldest first.
    pub fn between(&self, after: Timestamp, until: Timestamp, zone: &TimeZone) -> Vec<Timestamp> {
        let mut fires = Vec::new();
        let mut at = after;
        while let Some(next) = self.next_after(at, zone) {
            if next > until {
                break;
            }
            fires.push(next);
            at = next;
        }
        fires
    }

    fn times_on(&self, date: Date) -> impl Iterator<Item = DateTime> + '_ {
        (0..24i8)
            .filter(|hour| self.hours & (1 << hour) != 0)
            .flat_map(move |hour| {
                (0..60i8)
                    .filter(|minute| self.minutes & (1 << minute) != 0)
                    .map(move |minute| date.at(hour, minute, 0, 0))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, zone: &TimeZone) -> Timestamp {
        let civil: DateTime = text.parse().unwrap();
        zone.to_ambiguous_timestamp(civil).compatible().unwrap()
    }

    fn local(ts: Timestamp, zone: &TimeZone) -> String {
        zone.to_datetime(ts)
            .strftime("%a %Y-%m-%d %H:%M")
            .to_string()
    }

    #[test]
    fn fields_parse_with_ranges_steps_lists_and_names() {
        let cron: Cron = "*/15 9-17 * * mon-fri".parse().unwrap();
        let utc = TimeZone::UTC;
        // Saturday 2026-11-21 23:00: the next is Monday 09:00.
        let next = cron.next_after(at("2026-11-21T23:00", &utc), &utc).unwrap();
        assert_eq!(local(next, &utc), "Mon 2026-11-23 09:00");
        let next = cron.next_after(next, &utc).unwrap();
        assert_eq!(local(next, &utc), "Mon 2026-11-23 09:15");
        let sunday: Cron = "0 3 * * 7".parse().unwrap();
        assert_eq!(sunday, "0 3 * * SUN".parse().unwrap());
        for bad in [
            "* * * *",
            "60 * * * *",
            "* * * * mon-",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
        ] {
            assert!(bad.parse::<Cron>().is_err(), "{bad}");
        }
        let error = "0 25 * * *".parse::<Cron>().unwrap_err().to_string();
        assert!(error.contains("hour: 25 is outside 0-23"), "{error}");
    }

    #[test]
    fn day_of_month_or_day_of_week_as_in_vixie_cron() {
        let cron: Cron = "0 0 1 * fri".parse().unwrap();
        let utc = TimeZone::UTC;
        let fires = cron.between(
            at("2026-11-30T00:00", &utc),
            at("2026-12-12T00:00", &utc),
            &utc,
        );
        let days: Vec<String> = fires.iter().map(|f| local(*f, &utc)).collect();
        assert_eq!(
            days,
            [
                "Tue 2026-12-01 00:00",
                "Fri 2026-12-04 00:00",
                "Fri 2026-12-11 00:00"
            ]
        );
    }

    #[test]
    fn changes_of_clocks_neither_skip_nor_double_a_time() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        // 2026-03-29: 02:00 jumps to 03:00. 02:30 fires at 03:30, once.
        let cron: Cron = "30 2 * * *".parse().unwrap();
        let fires = cron.between(
            at("2026-03-28T00:00", &paris),
            at("2026-03-31T00:00", &paris),
            &paris,
        );
        let shown: Vec<String> = fires.iter().map(|f| local(*f, &paris)).collect();
        assert_eq!(
            shown,
            [
                "Sat 2026-03-28 02:30",
                "Sun 2026-03-29 03:30",
                "Mon 2026-03-30 02:30"
            ]
        );
        // 2026-10-25: 03:00 falls back to 02:00. 02:30 happens twice and fires once.
        let fires = cron.between(
            at("2026-10-24T00:00", &paris),
            at("2026-10-27T00:00", &paris),
            &paris,
        );
        assert_eq!(fires.len(), 3);
        // Every 30 minutes through the fall-back night: each wall time once.
        let half_hourly: Cron = "*/30 * * * *".parse().unwrap();
        let night = half_hourly.between(
            at("2026-10-25T01:00", &paris),
            at("2026-10-25T04:00", &paris),
            &paris,
        );
        let shown: Vec<String> = night.iter().map(|f| local(*f, &paris)).collect();
        assert_eq!(
            shown,
            [
                "Sun 2026-10-25 01:30",
                "Sun 2026-10-25 02:00",
                "Sun 2026-10-25 02:30",
                "Sun 2026-10-25 03:00",
                "Sun 2026-10-25 03:30",
                "Sun 2026-10-25 04:00"
            ]
        );
    }

    #[test]
    fn an_impossible_date_never_fires() {
        let cron: Cron = "0 0 31 2 *".parse().unwrap();
        assert_eq!(cron.next_after(Timestamp::UNIX_EPOCH, &TimeZone::UTC), None);
    }
}
