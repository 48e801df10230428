//! A report's figures as CSV (one figure per line, for spreadsheets and scripts) and as an
//! HTML page with an SVG bar chart (for people), both pure.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::aggregates::Tally;

/// The figures of one part of the period (an hour of a day, a day of a week).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    pub start: Timestamp,
    pub events: BTreeMap<String, i64>,
    pub signups: i64,
    pub active_users: i64,
    /// By currency.
    pub orders: BTreeMap<String, Tally>,
}

/// Everything one run shows.
#[derive(Debug, Clone)]
pub struct ReportData {
    pub report: String,
    pub title: String,
    pub period: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub zone: TimeZone,
    pub buckets: Vec<Bucket>,
    /// Distinct over the whole period.
    pub active_users: i64,
    /// Deliveries by (channel, status) in the period; `None` when the notification
    /// service's log is not in this database.
    /// (channel, status, deliveries) settled in the period.
    pub notifications: Vec<(String, String, i64)>,
}

impl ReportData {
    fn local(&self, at: Timestamp) -> String {
        at.to_zoned(self.zone.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }

    fn total_events(bucket: &Bucket) -> i64 {
        bucket.events.values().sum()
    }
}

/// `metric,bucket_start,key,count,sum`: one line per figure; the period-wide ones (distinct
/// active users, notification outcomes) have the period's start as their bucket.
pub fn csv(data: &ReportData) -> String {
    let mut out = String::from("metric,bucket_start,key,count,sum\n");
    let mut line = |metric: &str, at: Timestamp, key: &str, count: i64, sum: Option<i64>| {
        let sum = sum.map(|s| s.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{metric},{},{},{count},{sum}",
            data.local(at),
            csv_field(key)
        );
    };
    for bucket in &data.buckets {
        for (event_type, count) in &bucket.events {
            line("events", bucket.start, event_type, *count, None);
        }
        line("signups", bucket.start, "", bucket.signups, None);
        line("active_users", bucket.start, "", bucket.active_users, None);
        for (currency, tally) in &bucket.orders {
            line(
                "orders",
                bucket.start,
                currency,
                tally.count,
                Some(tally.sum),
            );
        }
    }
    line(
        "period_active_users",
        data.start,
        "",
        data.active_users,
        None,
    );
    for (channel, status, count) in &data.notifications {
        line(
            "notifications",
            data.start,
            &format!("{channel}/{status}"),
            *count,
            None,
        );
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained page: the period, a bar chart of events per bucket, a table per bucket,
/// and the period's totals.
pub fn html(data: &ReportData) -> String {
    let mut out = String::new();
    let title = escape(&data.title);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} {period}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}</style>\
         </head><body>\n<h1>{title}</h1>\n<p>{period}: {start} to {end} ({zone})</p>\n",
        period = escape(&data.period),
        start = escape(&data.local(data.start)),
        end = escape(&data.local(data.end)),
        zone = escape(data.zone.iana_name().unwrap_or("UTC")),
    );
    out.push_str(&chart(data));
    out.push_str(
        "\n<table id=\"figures\"><tr><th>from</th><th>events</th><th>signups</th>\
         <th>active users</th><th>orders</th><th>order value</th></tr>\n",
    );
    for bucket in &data.buckets {
        let orders: i64 = bucket.orders.values().map(|t| t.count).sum();
        let value = bucket
            .orders
            .iter()
            .map(|(currency, tally)| format!("{} {}", money(tally.sum), escape(currency)))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{orders}</td><td>{value}</td></tr>",
            escape(&data.local(bucket.start)),
            ReportData::total_events(bucket),
            bucket.signups,
            bucket.active_users,
        );
    }
    out.push_str("</table>\n");
    let _ = writeln!(
        out,
        "<p>Distinct active users over the period: <b>{}</b></p>",
        data.active_users
    );
    out.push_str(
        "<table id=\"notifications\"><tr><th>channel</th><th>status</th><th>deliveries</th></tr>\n",
    );
    for (channel, status, count) in &data.notifications {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{count}</td></tr>",
            escape(channel),
            escape(status)
        );
    }
    out.push_str("</table>\n");
    out.push_str("</body></html>\n");
    out
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

/// Events per bucket as bars, scaled to the largest.
fn chart(data: &ReportData) -> String {
    const WIDTH: usize = 720;
    const HEIGHT: i64 = 200;
    let totals: Vec<i64> = data.buckets.iter().map(ReportData::total_events).collect();
    let most = totals.iter().copied().max().unwrap_or(0).max(1);
    let bar = WIDTH / totals.len().max(1);
    let mut svg = format!(
        "<svg id=\"events-chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" \
         height=\"{}\" role=\"img\" aria-label=\"events per {}\">",
        HEIGHT + 20,
        if data.buckets.len() > 7 {
            "hour"
        } else {
            "day"
        }
    );
    for (index, total) in totals.iter().enumerate() {
        let height = total * HEIGHT / most;
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{height}\" fill=\"#4a7bd0\"><title>{total}</title></rect>",
            index * bar + 1,
            HEIGHT - height,
            bar.saturating_sub(2).max(1),
        );
    }
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"{}\" font-size=\"12\">max {most} events</text></svg>",
        HEIGHT + 16
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> ReportData {
        let start: Timestamp = "2026-11-21T00:00:00Z".parse().unwrap();
        ReportData {
            report: "daily".into(),
            title: "Daily <activity>".into(),
            period: "2026-11-21".into(),
            start,
            end: "2026-11-22T00:00:00Z".parse().unwrap(),
            zone: TimeZone::UTC,
            buckets: vec![Bucket {
                start,
                events: BTreeMap::from([("order.placed".into(), 3), ("a,b".into(), 1)]),
                signups: 2,
                active_users: 2,
                orders: BTreeMap::from([(
                    "EUR".into(),
                    Tally {
                        count: 3,
                        sum: 1350,
                    },
                )]),
            }],
            active_users: 2,
            notifications: vec![("email".into(), "sent".into(), 2)],
        }
    }

    #[test]
    fn the_csv_has_one_quoted_line_per_figure() {
        let csv = csv(&data());
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "metric,bucket_start,key,count,sum");
        assert!(lines.contains(&"events,2026-11-21T00:00:00+00:00,\"a,b\",1,"));
        assert!(lines.contains(&"orders,2026-11-21T00:00:00+00:00,EUR,3,1350"));
        assert!(lines.contains(&"period_active_users,2026-11-21T00:00:00+00:00,,2,"));
        assert!(lines.contains(&"notifications,2026-11-21T00:00:00+00:00,email/sent,2,"));
    }

    #[test]
    fn the_page_escapes_and_draws_one_bar_per_bucket() {
        let html = html(&data());
        assert!(html.contains("<h1>Daily &lt;activity&gt;</h1>"));
        assert_eq!(html.matches("<rect ").count(), 1);
        assert!(html.contains("13.50 EUR"));
        assert!(html.contains("id=\"events-chart\""));
    }
}
