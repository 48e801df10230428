//! What runs when: reports, once per period, and maintenance jobs, once per fire time, each
//! on a cron schedule in a time zone (`consumers/reports/reports.toml` or `REPORTS_FILE`).
//!
//! A report covers whole periods (hours, days or ISO weeks in its zone). A period is due at
//! the first fire time of the report's cron at or after the period's end, and every due
//! period within the catch-up window that has no finished run is run, so periods missed while
//! every replica was down come out on the next start, each once. Periods are enumerated as
//! instants between consecutive wall-clock boundaries: the hour clocks skip is an empty
//! period (not run), and the hour they repeat belongs to one two-hour period, so a change of
//! clocks neither skips nor repeats one.

use std::path::Path;

use jiff::civil::{Date, DateTime, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Deserialize;

use crate::cron::Cron;

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("the schedule file: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("{kind} {name:?}: {reason}")]
    Invalid {
        kind: &'static str,
        name: String,
        reason: String,
    },
}

/// The unit a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Covers {
    Hour,
    Day,
    /// ISO weeks, Monday to Monday.
    Week,
}

/// One period of one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// The period's name in its zone: `2026-11-22T10` (hour), `2026-11-22` (day),
    /// `2026-W47` (week).
    pub id: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Covers {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
        }
    }

    /// The wall-clock boundary at or before `civil`.
    fn floor(self, civil: DateTime) -> DateTime {
        match self {
            Self::Hour => civil.date().at(civil.hour(), 0, 0, 0),
            Self::Day => civil.date().at(0, 0, 0, 0),
            Self::Week => {
                let back = i64::from(civil.date().weekday().to_monday_zero_offset());
                civil
                    .date()
                    .checked_sub(back.days())
                    .unwrap_or(civil.date())
                    .at(0, 0, 0, 0)
            }
        }
    }

    fn step(self, boundary: DateTime) -> DateTime {
        let span = match self {
            Self::Hour => 1.hour(),
            Self::Day => 1.day(),
            Self::Week => 7.days(),
        };
        boundary.checked_add(span).unwrap_or(DateTime::MAX)
    }

    fn name(self, start: DateTime) -> String {
        match self {
            Self::Hour => start.strftime("%Y-%m-%dT%H").to_string(),
            Self::Day => start.strftime("%Y-%m-%d").to_string(),
            Self::Week => {
                let week = start.date().iso_week_date();
                format!("{}-W{:02}", week.year(), week.week())
            }
        }
    }

    fn period(self, start: DateTime, zone: &TimeZone) -> Period {
        let instant = |civil: DateTime| {
            zone.to_ambiguous_timestamp(civil)
                .compatible()
                .unwrap_or(Timestamp::MAX)
        };
        Period {
            id: self.name(start),
            start: instant(start),
            end: instant(self.step(start)),
        }
    }

    /// The non-empty periods that end in `(after, until]`, oldest first.
    pub fn ending_between(
        self,
        after: Timestamp,
        until: Timestamp,
        zone: &TimeZone,
    ) -> Vec<Period> {
        let mut boundary = self.floor(zone.to_datetime(after));
        // Step back one unit: the period ending just after `after` starts before it.
        boundary = match self {
            Self::Hour => boundary.checked_sub(1.hour()),
            Self::Day => boundary.checked_sub(1.day()),
            Self::Week => boundary.checked_sub(7.days()),
        }
        .unwrap_or(boundary);
        let mut periods = Vec::new();
        loop {
            let period = self.period(boundary, zone);
            if period.end > until {
                return periods;
            }
            if period.end > after && period.start < period.end {
                periods.push(period);
            }
            boundary = self.step(boundary);
        }
    }

    /// The period named `id` (as [`Period::id`] writes it).
    pub fn parse(self, id: &str, zone: &TimeZone) -> Result<Period, String> {
        let expected = match self {
            Self::Hour => "YYYY-MM-DDTHH",
            Self::Day => "YYYY-MM-DD",
            Self::Week => "YYYY-Www",
        };
        let bad = || format!("{id:?} is not a period of this report: expected {expected}");
        let start: DateTime = match self {
            Self::Hour => format!("{id}:00").parse().map_err(|_| bad())?,
            Self::Day => id.parse::<Date>().map_err(|_| bad())?.at(0, 0, 0, 0),
            Self::Week => {
                let (year, week) = id.split_once("-W").ok_or_else(bad)?;
                let year: i16 = year.parse().map_err(|_| bad())?;
                let week: i8 = week.parse().map_err(|_| bad())?;
                jiff::civil::ISOWeekDate::new(year, week, Weekday::Monday)
                    .map_err(|_| bad())?
                    .date()
                    .at(0, 0, 0, 0)
            }
        };
        if self.floor(start) != start || self.name(start) != id {
            return Err(bad());
        }
        Ok(self.period(start, zone))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    report: Vec<ReportEntry>,
    #[serde(default)]
    job: Vec<JobEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportEntry {
    name: String,
    title: Option<String>,
    cron: String,
    #[serde(default = "utc")]
    time_zone: String,
    covers: Covers,
    #[serde(default)]
    recipients: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobEntry {
    name: String,
    cron: String,
    #[serde(default = "utc")]
    time_zone: String,
}

fn utc() -> String {
    "UTC".into()
}

/// A report on its schedule.
#[derive(Debug, Clone)]
pub struct Report {
    pub name: String,
    pub title: String,
    pub cron: Cron,
    pub zone: TimeZone,
    pub covers: Covers,
    pub recipients: Vec<String>,
}

impl Report {
    /// The periods due by `now` that ended after `since`: those whose first fire time at or
    /// after their end has come.
    pub fn due(&self, since: Timestamp, now: Timestamp) -> Vec<Period> {
        self.covers
            .ending_between(since, now, &self.zone)
            .into_iter()
            .filter(|period| {
                let just_before = period.end - jiff::SignedDuration::from_nanos(1);
                self.cron
                    .next_after(just_before, &self.zone)
                    .is_some_and(|fire| fire <= now)
            })
            .collect()
    }
}

/// The maintenance jobs, each a fixed task on a schedule of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Stored reports past `REPORTS_RETENTION_DAYS`.
    PurgeReports,
    /// The aggregates' record of seen events, past `REPORTS_SEEN_RETENTION_DAYS`.
    PurgeSeenEvents,
}

/// Jobs of earlier versions, now each run by the service whose data it purges: a schedule
/// naming one still loads, with a warning.
const RETIRED: [(&str, &str); 2] = [
    (
        "purge-idempotency-keys",
        "the ingress purges its own expired keys, hourly",
    ),
    (
        "purge-soft-deleted",
        "notifications purges its deleted users and devices (NOTIFY_SOFT_DELETE_RETENTION_DAYS); the aggregates' seen events are job purge-seen-events",
    ),
];

impl Task {
    const ALL: [(&'static str, Task); 2] = [
        ("purge-reports", Task::PurgeReports),
        ("purge-seen-events", Task::PurgeSeenEvents),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, task)| *task == self)
            .map_or("", |(name, _)| name)
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub task: Task,
    pub cron: Cron,
    pub zone: TimeZone,
}

impl Job {
    /// The latest fire time in `(since, now]`: one run however many were missed.
    pub fn due(&self, since: Timestamp, now: Timestamp) -> Option<Timestamp> {
        self.cron.between(since, now, &self.zone).pop()
    }
}

/// Everything scheduled.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub reports: Vec<Report>,
    pub jobs: Vec<Job>,
}

const STARTER: &str = include_str!("../reports.toml");

impl Schedule {
    /// `path`, or the starter schedule built into the binary.
    pub fn load(path: Option<&Path>) -> Result<Self, ScheduleError> {
        match path {
            None => Self::parse(STARTER),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ScheduleError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Self::parse(&text)
            }
        }
    }

    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let file: File = toml::from_str(text)?;
        let zone = |kind, name: &str, zone: &str| {
            TimeZone::get(zone).map_err(|_| ScheduleError::Invalid {
                kind,
                name: name.to_string(),
                reason: format!("unknown time zone {zone:?}"),
            })
        };
        let cron = |kind, name: &str, cron: &str| {
            cron.parse::<Cron>().map_err(|e| ScheduleError::Invalid {
                kind,
                name: name.to_string(),
                reason: e.to_string(),
            })
        };
        let mut reports = Vec::new();
        for entry in file.report {
            let valid_name = !entry.name.is_empty()
                && entry
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid_name || reports.iter().any(|r: &Report| r.name == entry.name) {
                return Err(ScheduleError::Invalid {
                    kind: "report",
                    name: entry.name,
                    reason: "names are unique, lowercase letters, digits and '-'".into(),
                });
            }
            reports.push(Report {
                title: entry.title.unwrap_or_else(|| entry.name.clone()),
                cron: cron("report", &entry.name, &entry.cron)?,
                zone: zone("report", &entry.name, &entry.time_zone)?,
                covers: entry.covers,
                recipients: entry.recipients,
                name: entry.name,
            });
        }
        let mut jobs = Vec::new();
        for entry in file.job {
            if let Some((name, now)) = RETIRED.iter().find(|(name, _)| *name == entry.name) {
                tracing::warn!(
                    job = name,
                    "the schedule names a job that moved: {now}; remove it"
                );
                continue;
            }
            let task = Task::ALL
                .iter()
                .find(|(name, _)| *name == entry.name)
                .map(|(_, task)| *task)
                .ok_or_else(|| ScheduleError::Invalid {
                    kind: "job",
                    name: entry.name.clone(),
                    reason: format!(
                        "no such job; the jobs are {}",
                        Task::ALL.map(|(name, _)| name).join(", ")
                    ),
                })?;
            jobs.push(Job {
                task,
                cron: cron("job", &entry.name, &entry.cron)?,
                zone: zone("job", &entry.name, &entry.time_zone)?,
            });
        }
        Ok(Self { reports, jobs })
    }

    pub fn report(&self, name: &str) -> Option<&Report> {
        self.reports.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, zone: &TimeZone) -> Timestamp {
        let civil: DateTime = text.parse().unwrap();
        zone.to_ambiguous_timestamp(civil).compatible().unwrap()
    }

    fn ids(periods: &[Period]) -> Vec<&str> {
        periods.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn a_change_of_clocks_neither_skips_nor_repeats_an_hour() {
        let paris = TimeZone::get("Europe/Paris").unwrap();
        // Spring: 02:00 jumps to 03:00; the 02 hour does not exist and is not a period.
        let spring = Covers::Hour.ending_between(
            at("2026-03-29T00:30", &paris),
            at("2026-03-29T04:30", &paris),
            &paris,
        );
        assert_eq!(
            ids(&spring),
            ["2026-03-29T00", "2026-03-29T01", "2026-03-29T03"]
        );
        // Autumn: 03:00 falls back to 02:00; the 02 hour lasts two hours.
        let autumn = Covers::Hour.ending_between(
            at("2026-10-25T00:30", &paris),
            at("2026-10-25T04:30", &paris),
            &paris,
        );
        assert_eq!(
            ids(&autumn),
            [
                "2026-10-25T00",
                "2026-10-25T01",
                "2026-10-25T02",
                "2026-10-25T03"
            ]
        );
        let two = &autumn[2];
        assert_eq!(two.end.duration_since(two.start).as_secs(), 7200);
        // Consecutive: no gap, no overlap.
        for pair in autumn.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        // A day of 23 hours.
        let day = Covers::Day.parse("2026-03-29", &paris).unwrap();
        assert_eq!(day.end.duration_since(day.start).as_secs(), 23 * 3600);
    }

    #[test]
    fn a_period_is_due_at_the_first_fire_time_after_it_ends() {
        let schedule = Schedule::parse(
            "[[report]]\nname='daily'\ncron='5 0 * * *'\ntime_zone='Europe/Paris'\ncovers='day'",
        )
        .unwrap();
        let daily = &schedule.reports[0];
        let paris = &daily.zone;
        let since = at("2026-11-19T12:00", paris);
        assert_eq!(
            ids(&daily.due(since, at("2026-11-22T00:04", paris))),
            ["2026-11-19", "2026-11-20"]
        );
        // At 00:05 the day before comes due too.
        assert_eq!(
            ids(&daily.due(since, at("2026-11-22T00:05", paris))),
            ["2026-11-19", "2026-11-20", "2026-11-21"]
        );
        let weekly =
            Schedule::parse("[[report]]\nname='weekly'\ncron='0 3 * * mon'\ncovers='week'")
                .unwrap();
        let utc = TimeZone::UTC;
        let due = weekly.reports[0].due(at("2026-11-20T00:00", &utc), at("2026-11-23T03:00", &utc));
        assert_eq!(ids(&due), ["2026-W47"]);
        assert_eq!(due[0].start, at("2026-11-16T00:00", &utc));
    }

    #[test]
    fn periods_parse_from_their_names_only() {
        let utc = TimeZone::UTC;
        let week = Covers::Week.parse("2026-W47", &utc).unwrap();
        assert_eq!(week.start, at("2026-11-16T00:00", &utc));
        assert_eq!(
            Covers::Hour.parse("2026-11-22T10", &utc).unwrap().id,
            "2026-11-22T10"
        );
        for (covers, bad) in [
            (Covers::Day, "2026-11-22T10"),
            (Covers::Hour, "2026-11-22"),
            (Covers::Week, "2026-W54"),
            (Covers::Day, "yesterday"),
        ] {
            assert!(covers.parse(bad, &utc).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_starter_schedule_loads_and_mistakes_are_named() {
        let starter = Schedule::load(None).unwrap();
        assert!(starter.report("daily-activity").is_some());
        assert_eq!(starter.jobs.len(), 2);
        let retired = Schedule::parse("[[job]]\nname='purge-idempotency-keys'\ncron='* * * * *'");
        assert!(retired.unwrap().jobs.is_empty());
        let unknown = Schedule::parse("[[job]]\nname='vacuum'\ncron='* * * * *'").unwrap_err();
        assert!(unknown.to_string().contains("no such job"), "{unknown}");
        let zone = Schedule::parse(
            "[[report]]\nname='r'\ncron='* * * * *'\ncovers='day'\ntime_zone='Mars/Base'",
        )
        .unwrap_err();
        assert!(zone.to_string().contains("unknown time zone"), "{zone}");
    }
}
