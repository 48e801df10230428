//! The fault suite's bookkeeping. A [`Load`] posts events the way clients do and keeps every
//! request as the client saw it: ok (2xx), failed (refused: nothing may be written) or unknown
//! (503, a timeout, a dropped connection: it may or may not be written). After the fault heals,
//! a fresh reader drains the topic and [`Tally::of`] compares the two: acknowledged events
//! lost, records written twice, per-key order broken, refused events written anyway.
//!
//! Each request carries an `Idempotency-Key` (`c<client>-<n>`) that the envelope keeps, so a
//! record names its request whatever its outcome. Clients never retry here: a second record
//! of one request can only come from below the HTTP layer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::kafka::KafkaArgs;
use tokio_util::sync::CancellationToken;

/// A request's outcome as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A definite refusal (4xx other than 408/429): nothing may have been written.
    Failed(u16),
    /// 503, 408, 429, 5xx, a timeout or a broken connection: written or not, nobody knows.
    Unknown(String),
}

/// One request of a load.
#[derive(Debug, Clone)]
pub struct Sent {
    pub idempotency_key: String,
    pub key: String,
    /// The request's place in its client's sequence; a client sends one at a time, so for
    /// one key a higher `seq` was sent after every lower one was answered.
    pub seq: u64,
    pub outcome: Outcome,
    pub latency: Duration,
    pub answered_at: Instant,
    /// A 503 that says when to come back.
    pub retry_after: bool,
}

/// One record as a fresh reader found it, in partition and offset order.
#[derive(Debug, Clone)]
pub struct Written {
    pub event_id: uuid::Uuid,
    pub idempotency_key: String,
    pub key: String,
    pub partition: i32,
    pub offset: i64,
}

/// What a fault did to the requests of a load.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub sent: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Unknown outcomes that were written after all (once or more).
    pub unknown_written: usize,
    pub records: usize,
    /// Answered 2xx, not in the log.
    pub lost: usize,
    /// Refused, yet in the log.
    pub failed_written: usize,
    /// Records beyond the first of one request.
    pub duplicate_records: usize,
    /// Pairs of one key's records (first copies) in the log in another order than sent.
    pub order_violations: usize,
    /// Records no request of the load accounts for.
    pub strangers: usize,
}

impl Tally {
    pub fn of(sent: &[Sent], written: &[Written]) -> Self {
        let mut tally = Tally {
            sent: sent.len(),
            records: written.len(),
            ..Tally::default()
        };
        let requests: HashMap<&str, &Sent> = sent
            .iter()
            .map(|s| (s.idempotency_key.as_str(), s))
            .collect();
        let mut copies: HashMap<&str, usize> = HashMap::new();
        // Per key, the sequence numbers of first copies in log order.
        let mut by_key: BTreeMap<&str, Vec<(i32, i64, u64)>> = BTreeMap::new();
        for record in written {
            let Some(request) = requests.get(record.idempotency_key.as_str()) else {
                tally.strangers += 1;
                continue;
            };
            let count = copies.entry(&record.idempotency_key).or_default();
            *count += 1;
            if *count > 1 {
                tally.duplicate_records += 1;
            } else {
                by_key.entry(&record.key).or_default().push((
                    record.partition,
                    record.offset,
                    request.seq,
                ));
            }
        }
        for request in sent {
            let written = copies.contains_key(request.idempotency_key.as_str());
            match request.outcome {
                Outcome::Ok => {
                    tally.ok += 1;
                    tally.lost += usize::from(!written);
                }
                Outcome::Failed(_) => {
                    tally.failed += 1;
                    tally.failed_written += usize::from(written);
                }
                Outcome::Unknown(_) => {
                    tally.unknown += 1;
                    tally.unknown_written += usize::from(written);
                }
            }
        }
        for records in by_key.values_mut() {
            records.sort_unstable();
            tally.order_violations += records.windows(2).filter(|w| w[0].2 > w[1].2).count();
        }
        tally
    }

    /// Whether the delivery promise held: nothing acknowledged lost, nothing twice, no key
    /// out of order, nothing refused written.
    pub fn holds(&self) -> bool {
        self.lost == 0
            && self.duplicate_records == 0
            && self.order_violations == 0
            && self.failed_written == 0
            && self.strangers == 0
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests {} (ok {}, failed {}, unknown {} of which written {}), records {}: \
             lost {}, duplicate records {}, order violations {}, refused but written {}, \
             strangers {}",
            self.sent,
            self.ok,
            self.failed,
            self.unknown,
            self.unknown_written,
            self.records,
            self.lost,
            self.duplicate_records,
            self.order_violations,
            self.failed_written,
            self.strangers
        )
    }
}

/// The requests answered 2xx that no record holds, each with the records of its key: what
/// to look at when a run loses one.
pub fn lost<'a>(sent: &'a [Sent], written: &'a [Written]) -> Vec<(&'a Sent, Vec<&'a Written>)> {
    let keys: std::collections::HashSet<&str> =
        written.iter().map(|w| w.idempotency_key.as_str()).collect();
    sent.iter()
        .filter(|s| s.outcome == Outcome::Ok && !keys.contains(s.idempotency_key.as_str()))
        .map(|s| (s, written.iter().filter(|w| w.key == s.key).collect()))
        .collect()
}

/// What a load client sends: for client `c`'s request `seq`, the record key and the body.
pub type EventFn = fn(usize, u64) -> (String, serde_json::Value);

/// `order.placed` events over `KEYS` keys per client, taken in turn: per-key order matters.
pub fn orders<const KEYS: u64>(client: usize, seq: u64) -> (String, serde_json::Value) {
    let key = format!("k{client}-{}", seq % KEYS);
    let body = super::order(&key);
    (key, body)
}

/// `user.registered` for a new user each time, whose email address is the request's
/// idempotency key at example.test (see [`email_of`]).
pub fn registrations(client: usize, seq: u64) -> (String, serde_json::Value) {
    let user = uuid::Uuid::from_u128(((client as u128) << 64) | u128::from(seq));
    let body = serde_json::json!({"type": "user.registered", "data": {
        "user_id": user, "email": email_of(&idempotency_key(client, seq)),
        "display_name": format!("User {client}-{seq}"), "locale": "en", "time_zone": "UTC"
    }});
    (user.to_string(), body)
}

pub fn email_of(idempotency_key: &str) -> String {
    format!("{idempotency_key}@example.test")
}

fn idempotency_key(client: usize, seq: u64) -> String {
    format!("c{client}-{seq}")
}

/// Clients posting events to an ingress until stopped, one request at a time each.
pub struct Load {
    stop: CancellationToken,
    sent: Arc<Mutex<Vec<Sent>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(base: &str, token: &str, clients: usize, pause: Duration, event: EventFn) -> Self {
        let stop = CancellationToken::new();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let url = format!("{base}/api/v1/events");
        let clients = (0..clients)
            .map(|c| {
                let (url, token, stop, sent) =
                    (url.clone(), token.to_string(), stop.clone(), sent.clone());
                tokio::spawn(async move {
                    let http = super::client();
                    let mut seq = 0u64;
                    while !stop.is_cancelled() {
                        let (key, body) = event(c, seq);
                        let idempotency_key = idempotency_key(c, seq);
                        let started = Instant::now();
                        let response = http
                            .post(&url)
                            .bearer_auth(&token)
                            .header("idempotency-key", &idempotency_key)
                            .json(&body)
                            .send()
                            .await;
                        let (outcome, retry_after) = classify(response);
                        sent.lock().expect("ledger").push(Sent {
                            idempotency_key,
                            key,
                            seq,
                            outcome,
                            latency: started.elapsed(),
                            answered_at: Instant::now(),
                            retry_after,
                        });
                        seq += 1;
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            sent,
            clients,
        }
    }

    /// The requests answered so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("ledger").clone()
    }

    /// Waits until a request sent after `since` is answered 2xx; how long after `since`.
    pub async fn recovery(&self, since: Instant, within: Duration) -> Duration {
        super::eventually(within, "a 2xx", || async {
            let sent = self.sent();
            recovered_after(&sent, since).ok_or_else(|| {
                let answered = sent.iter().filter(|s| s.answered_at >= since).count();
                format!("no 2xx among {answered} requests answered since")
            })
        })
        .await
    }

    /// Stops the clients after their current request; every request they sent.
    pub async fn stop(self) -> Vec<Sent> {
        self.stop.cancel();
        for client in self.clients {
            client.await.expect("load client");
        }
        self.sent.lock().expect("ledger").clone()
    }
}

fn classify(response: reqwest::Result<reqwest::Response>) -> (Outcome, bool) {
    match response {
        Err(err) => (Outcome::Unknown(err.to_string()), false),
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let outcome = match status {
                200..=299 => Outcome::Ok,
                408 | 429 => Outcome::Unknown(status.to_string()),
                400..=499 => Outcome::Failed(status),
                _ => Outcome::Unknown(status.to_string()),
            };
            (outcome, retry_after)
        }
    }
}

/// Every record of an aggregate topic, read from the start by a reader of its own.
pub async fn drain(kafka: &KafkaArgs, aggregate: &str) -> Vec<Written> {
    super::read(kafka, aggregate)
        .await
        .into_iter()
        .map(|(record, decoded)| Written {
            event_id: decoded.envelope.event_id,
            idempotency_key: decoded.envelope.idempotency_key.unwrap_or_default(),
            key: String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned(),
            partition: record.partition,
            offset: record.offset,
        })
        .collect()
}

/// How long after `since` the first request sent after it was answered 2xx.
pub fn recovered_after(sent: &[Sent], since: Instant) -> Option<Duration> {
    sent.iter()
        .filter(|s| s.outcome == Outcome::Ok && s.answered_at - s.latency >= since)
        .map(|s| s.answered_at - since)
        .min()
}

/// The slowest answer that was not 2xx, and whether every 503 said when to retry.
pub fn slowest_failure(sent: &[Sent]) -> (Option<&Sent>, bool) {
    let failures = sent.iter().filter(|s| s.outcome != Outcome::Ok);
    let slowest = failures.clone().max_by_key(|s| s.latency);
    let honest = failures
        .filter(|s| s.outcome == Outcome::Unknown("503".into()))
        .all(|s| s.retry_after);
    (slowest, honest)
}
