//! Error alerts to a chat webhook: 5xx responses and dead letters, as Slack-compatible JSON
//! (`{"text": ...}`, which Slack, Mattermost, Rocket.Chat and Teams workflows accept).
//!
//! An incident must send a few messages, not thousands. Alerts are grouped by what failed (a
//! route, a consumer group): the first of a group goes out at once, the others of its window
//! are counted and summed up in one message when the window closes. Whatever the groups, at
//! most `ALERT_MAX_PER_WINDOW` lines leave per window (lines due at the same moment share one
//! post); the rest are folded into one line. A stopping process posts what it still holds.
//! Messages name what failed and where to look, never the failure's detail: a reason can hold
//! a recipient's address, which has no business in a chat.
//!
//! Configured by `ALERT_WEBHOOK_URL` (or `ALERT_WEBHOOK_URL_FILE`, since the URL is a secret),
//! `ALERT_WINDOW_SECS` (default 300) and `ALERT_MAX_PER_WINDOW` (default 10). Raising never
//! blocks the request or the consumer that failed: a full queue drops the alert and counts it
//! (`herald_alerts_dropped_total`).
//!
//! Webhook or not, the process keeps its last [`RECENT`] alerts in memory, newest first, for
//! the operator console ([`recent`]).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Something an operator should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    /// A 5xx answer.
    ServerError {
        method: String,
        route: String,
        status: u16,
        request_id: String,
    },
    /// An event a consumer could not apply, now in its dead-letter topic.
    DeadLetter {
        /// The group as `herald dlq` takes it.
        group: String,
        topic: String,
    },
    /// A consumer's handler panicked on an event (retried, then dead-lettered): a bug to fix.
    HandlerPanic {
        /// The group as `herald dlq` takes it.
        group: String,
        topic: String,
    },
}

impl Alert {
    /// What failed: alerts with the same group are one incident.
    fn group(&self) -> String {
        match self {
            Alert::ServerError { method, route, .. } => format!("5xx on {method} {route}"),
            Alert::DeadLetter { group, topic, .. } => {
                format!("dead letters of {group} from {topic}")
            }
            Alert::HandlerPanic { group, topic } => format!("panics in {group} on {topic}"),
        }
    }

    fn describe(&self) -> String {
        match self {
            Alert::ServerError {
                method,
                route,
                status,
                request_id,
            } => format!("{status} on {method} {route} (request {request_id})"),
            Alert::DeadLetter { group, topic } => format!(
                "{group} dead-lettered an event from {topic}. \
                 `herald dlq list {group}` shows it and why; `herald dlq redrive {group}` after the fix"
            ),
            Alert::HandlerPanic { group, topic } => format!(
                "{group} panicked handling an event from {topic}; it is retried, then dead-lettered. \
                 The log line \"handler panicked\" has the message"
            ),
        }
    }
}

/// How alerts become messages.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub window: Duration,
    pub max_per_window: usize,
}

#[derive(Debug)]
struct Incident {
    opened: Instant,
    more: u64,
    /// The latest alert after the first, described in the summary.
    last: Option<Alert>,
}

/// The grouping and rate-limiting, without clocks or I/O: what to send, given what happened
/// and when.
#[derive(Debug)]
pub struct Grouper {
    policy: Policy,
    incidents: HashMap<String, Incident>,
    window_started: Instant,
    sent: usize,
    held_back: u64,
}

impl Grouper {
    pub fn new(policy: Policy, now: Instant) -> Self {
        Self {
            policy,
            incidents: HashMap::new(),
            window_started: now,
            sent: 0,
            held_back: 0,
        }
    }

    /// An alert happened: the message to send now, if any.
    pub fn observe(&mut self, alert: &Alert, now: Instant) -> Option<String> {
        let mut out = self.close(now);
        let group = alert.group();
        match self.incidents.get_mut(&group) {
            Some(incident) => {
                incident.more += 1;
                incident.last = Some(alert.clone());
            }
            None => {
                self.incidents.insert(
                    group,
                    Incident {
                        opened: now,
                        more: 0,
                        last: None,
                    },
                );
                out.extend(self.budget(alert.describe()));
            }
        }
        join(&out)
    }

    /// Time passed: the summaries of incidents whose window closed.
    pub fn tick(&mut self, now: Instant) -> Option<String> {
        join(&self.close(now))
    }

    /// The process stops: the summaries of every open incident, and what was held back, at
    /// once and whatever the budget.
    pub fn drain(&mut self) -> Option<String> {
        let mut out: Vec<String> = self
            .incidents
            .drain()
            .filter_map(|(group, incident)| summary(&group, &incident, self.policy.window))
            .collect();
        if self.held_back > 0 {
            out.push(format!(
                "{} more alert messages were held back: see the metrics and logs",
                std::mem::take(&mut self.held_back)
            ));
        }
        join(&out)
    }

    fn close(&mut self, now: Instant) -> Vec<String> {
        let mut out = self.roll(now);
        let window = self.policy.window;
        let closed: Vec<String> = self
            .incidents
            .iter()
            .filter(|(_, i)| now.duration_since(i.opened) >= window)
            .map(|(group, _)| group.clone())
            .collect();
        for group in closed {
            let incident = self.incidents.remove(&group).expect("listed");
            if let Some(summary) = summary(&group, &incident, window) {
                out.extend(self.budget(summary));
            }
        }
        out
    }

    /// Starts a new budget window when the last one is over, announcing what it held back.
    fn roll(&mut self, now: Instant) -> Vec<String> {
        if now.duration_since(self.window_started) < self.policy.window {
            return Vec::new();
        }
        self.window_started = now;
        self.sent = 0;
        let held_back = std::mem::take(&mut self.held_back);
        if held_back == 0 {
            return Vec::new();
        }
        self.sent = 1;
        vec![format!(
            "{held_back} more alert messages were held back in the last {} s: see the metrics and logs",
            self.policy.window.as_secs()
        )]
    }

    fn budget(&mut self, message: String) -> Option<String> {
        if self.sent >= self.policy.max_per_window {
            self.held_back += 1;
            return None;
        }
        self.sent += 1;
        Some(message)
    }
}

/// "n more of the group", when the incident had more than its first alert.
fn summary(group: &str, incident: &Incident, window: Duration) -> Option<String> {
    let last = incident.last.as_ref()?;
    Some(format!(
        "{} more {group} in the last {} s; the last: {}",
        incident.more,
        window.as_secs(),
        last.describe()
    ))
}

fn join(messages: &[String]) -> Option<String> {
    (!messages.is_empty()).then(|| messages.join("\n"))
}

static QUEUE: OnceLock<mpsc::Sender<Alert>> = OnceLock::new();
static SENDER: Mutex<Option<(CancellationToken, tokio::task::JoinHandle<()>)>> = Mutex::new(None);

/// How many alerts the process remembers for the console.
pub const RECENT: usize = 100;

static REMEMBERED: Mutex<std::collections::VecDeque<Recent>> =
    Mutex::new(std::collections::VecDeque::new());

/// An alert as the console lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recent {
    pub at: String,
    /// `server_error`, `dead_letter` or `handler_panic`.
    pub kind: &'static str,
    /// What failed, grouped as the webhook groups it.
    pub what: String,
    /// The alert in words, with where to look.
    pub detail: String,
}

/// The alerts this process raised lately, newest first.
pub fn recent() -> Vec<Recent> {
    REMEMBERED
        .lock()
        .expect("not poisoned")
        .iter()
        .cloned()
        .collect()
}

fn remember(alert: &Alert) {
    let kind = match alert {
        Alert::ServerError { .. } => "server_error",
        Alert::DeadLetter { .. } => "dead_letter",
        Alert::HandlerPanic { .. } => "handler_panic",
    };
    let mut remembered = REMEMBERED.lock().expect("not poisoned");
    remembered.push_front(Recent {
        at: jiff::Timestamp::now().to_string(),
        kind,
        what: alert.group(),
        detail: alert.describe(),
    });
    remembered.truncate(RECENT);
}

/// Reports an alert: remembered for the console, and posted when a webhook is configured;
/// never waits.
pub fn raise(alert: Alert) {
    remember(&alert);
    if let Some(queue) = QUEUE.get()
        && queue.try_send(alert).is_err()
    {
        metrics::counter!("herald_alerts_dropped_total").increment(1);
    }
}

/// Starts sending alerts when a webhook is configured (see the module docs). Call once, inside
/// the runtime; `service` starts every message.
pub fn start(service: &str) -> anyhow::Result<()> {
    let Some(url) = webhook_url()? else {
        return Ok(());
    };
    let number = |name: &str, default: u64| -> anyhow::Result<u64> {
        std::env::var(name).map_or(Ok(default), |v| {
            v.trim()
                .parse()
                .with_context(|| format!("{name} must be a whole number, not {v:?}"))
        })
    };
    let policy = Policy {
        window: Duration::from_secs(number("ALERT_WINDOW_SECS", 300)?.max(1)),
        max_per_window: number("ALERT_MAX_PER_WINDOW", 10)?.max(1) as usize,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the alert webhook client")?;
    let (tx, rx) = mpsc::channel(1024);
    if QUEUE.set(tx).is_ok() {
        let stop = CancellationToken::new();
        let task = tokio::spawn(send_loop(
            rx,
            policy,
            Webhook {
                client,
                url,
                service: service.to_string(),
            },
            stop.clone(),
        ));
        *SENDER.lock().expect("not poisoned") = Some((stop, task));
    }
    Ok(())
}

/// Posts what is still queued or held (open incidents' summaries), within `deadline`; call
/// once, when the process stops.
pub async fn shutdown(deadline: Duration) {
    let sender = SENDER.lock().expect("not poisoned").take();
    if let Some((stop, task)) = sender {
        stop.cancel();
        if tokio::time::timeout(deadline, task).await.is_err() {
            tracing::warn!("the alert webhook did not answer before the shutdown deadline");
        }
    }
}

fn webhook_url() -> anyhow::Result<Option<reqwest::Url>> {
    let set = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let url = match (set("ALERT_WEBHOOK_URL"), set("ALERT_WEBHOOK_URL_FILE")) {
        (Some(_), Some(_)) => anyhow::bail!(
            "ALERT_WEBHOOK_URL and ALERT_WEBHOOK_URL_FILE are both set: set one of them"
        ),
        (Some(url), None) => url,
        (None, Some(path)) => std::fs::read_to_string(path.trim())
            .with_context(|| format!("ALERT_WEBHOOK_URL_FILE: cannot read {path}"))?,
        (None, None) => return Ok(None),
    };
    // The URL is a credential: an error names the variable, never the value.
    reqwest::Url::parse(url.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .map(Some)
        .context("ALERT_WEBHOOK_URL is not an http(s) URL")
}

/// Where messages go.
struct Webhook {
    client: reqwest::Client,
    url: reqwest::Url,
    service: String,
}

impl Webhook {
    async fn post(&self, text: &str) {
        let body = serde_json::json!({ "text": format!("{}: {text}", self.service) });
        let outcome = match self.client.post(self.url.clone()).json(&body).send().await {
            Ok(response) if response.status().is_success() => "sent",
            Ok(response) => {
                tracing::warn!(status = %response.status(), "the alert webhook refused a message");
                "failed"
            }
            Err(err) => {
                tracing::warn!(err = %err.without_url(), "the alert webhook is unreachable");
                "failed"
            }
        };
        metrics::counter!("herald_alerts_total", "outcome" => outcome).increment(1);
    }
}

async fn send_loop(
    mut rx: mpsc::Receiver<Alert>,
    policy: Policy,
    webhook: Webhook,
    stop: CancellationToken,
) {
    let mut grouper = Grouper::new(policy, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            alert = rx.recv() => match alert {
                Some(alert) => grouper.observe(&alert, Instant::now()),
                None => break,
            },
            _ = tick.tick() => grouper.tick(Instant::now()),
        };
        if let Some(text) = message {
            webhook.post(&text).await;
        }
    }
    // Stopping: what is queued joins its incidents, then everything held goes out.
    let mut last = Vec::new();
    while let Ok(alert) = rx.try_recv() {
        last.extend(grouper.observe(&alert, Instant::now()));
    }
    last.extend(grouper.drain());
    if let Some(text) = join(&last) {
        webhook.post(&text).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(route: &str) -> Alert {
        Alert::ServerError {
            method: "POST".into(),
            route: route.into(),
            status: 503,
            request_id: "r".into(),
        }
    }

    const POLICY: Policy = Policy {
        window: Duration::from_secs(60),
        max_per_window: 3,
    };

    #[test]
    fn the_process_remembers_its_last_alerts_newest_first_without_a_webhook() {
        for i in 0..RECENT + 5 {
            raise(error(&format!("/remembered/{i}")));
        }
        let recent = recent();
        assert_eq!(recent.len(), RECENT);
        let ours: Vec<&Recent> = recent
            .iter()
            .filter(|r| r.what.contains("/remembered/"))
            .collect();
        assert_eq!(
            ours[0].what,
            format!("5xx on POST /remembered/{}", RECENT + 4)
        );
        assert_eq!(ours[0].kind, "server_error");
        assert!(
            ours[0].detail.starts_with("503 on POST"),
            "{}",
            ours[0].detail
        );
    }

    #[test]
    fn an_incident_is_one_message_then_one_summary() {
        let start = Instant::now();
        let mut grouper = Grouper::new(POLICY, start);
        let first = grouper.observe(&error("/a"), start).unwrap();
        assert!(first.starts_with("503 on POST /a"), "{first}");
        for s in 1..=999 {
            let at = start + Duration::from_millis(s * 50);
            assert_eq!(grouper.observe(&error("/a"), at), None);
        }
        assert_eq!(grouper.tick(start + Duration::from_secs(59)), None);
        let summary = grouper.tick(start + Duration::from_secs(60)).unwrap();
        assert!(
            summary.starts_with("999 more 5xx on POST /a in the last 60 s"),
            "{summary}"
        );
        assert_eq!(grouper.tick(start + Duration::from_secs(61)), None);
        // A later failure is a new incident.
        assert!(
            grouper
                .observe(&error("/a"), start + Duration::from_secs(62))
                .is_some()
        );
    }

    #[test]
    fn stopping_sends_every_open_summary_and_what_was_held_back() {
        let start = Instant::now();
        let mut grouper = Grouper::new(POLICY, start);
        for i in 0..5 {
            grouper.observe(&error(&format!("/{i}")), start);
            grouper.observe(&error(&format!("/{i}")), start);
        }
        let last = grouper.drain().unwrap();
        assert_eq!(last.matches("1 more 5xx on POST /").count(), 5, "{last}");
        assert!(
            last.contains("2 more alert messages were held back"),
            "{last}"
        );
        assert_eq!(grouper.drain(), None);
    }

    #[test]
    fn a_lone_alert_has_no_summary() {
        let start = Instant::now();
        let mut grouper = Grouper::new(POLICY, start);
        assert!(grouper.observe(&error("/a"), start).is_some());
        assert_eq!(grouper.tick(start + Duration::from_secs(120)), None);
    }

    #[test]
    fn groups_are_separate_and_the_window_caps_messages() {
        let start = Instant::now();
        let mut grouper = Grouper::new(POLICY, start);
        let sent: Vec<_> = (0..10)
            .filter_map(|i| grouper.observe(&error(&format!("/{i}")), start))
            .collect();
        assert_eq!(sent.len(), 3, "three groups, then the cap");
        let dead = Alert::DeadLetter {
            group: "audit-log".into(),
            topic: "orders".into(),
        };
        assert_eq!(grouper.observe(&dead, start), None, "capped too");
        // The next window starts by saying how much was held back, then the summaries are
        // none (each held-back group had a single alert).
        let next = grouper.tick(start + Duration::from_secs(60)).unwrap();
        assert!(
            next.starts_with("8 more alert messages were held back"),
            "{next}"
        );
        let dead_again = grouper
            .observe(&dead, start + Duration::from_secs(61))
            .unwrap();
        assert!(
            dead_again.contains("herald dlq list audit-log"),
            "{dead_again}"
        );
    }
}
