//! Rate limits: fixed windows counted per caller (the token's subject, or the client's IP
//! for anonymous calls), in this process or in Redis so every replica counts together.
//!
//! A window opens at a caller's first request and lasts the configured period; the
//! `limit + 1`-th request in it is refused with the time left until it closes. Windows are
//! exact and cheap (one INCR); the price is that a caller can spend two limits in quick
//! succession across a window's end.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::net::{IpRange, in_any};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

mod link;

use link::{Arg, Link, Reply};

/// A limit: `count` requests per `window`, written `100/day`, `5/10m`, `60/1m`, `10/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub window: Duration,
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a rate like 100/day, 5/10m, 60/1m or 10/s");
        let (count, per) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        let split = per.find(|c: char| !c.is_ascii_digit()).unwrap_or(per.len());
        let (n, unit) = per.split_at(split);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| bad())?
        };
        let unit_secs = match unit {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        if count == 0 || n == 0 {
            return Err(format!(
                "{text:?}: a rate needs a count and a period above zero"
            ));
        }
        Ok(Self {
            count,
            window: Duration::from_secs(n * unit_secs),
        })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}s", self.count, self.window.as_secs())
    }
}

/// A route's own limit: `POST /api/v1/auth/login=5/10m` (the path as routed, with its
/// `{parameters}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRate {
    pub method: String,
    pub path: String,
    pub rate: Rate,
}

impl std::str::FromStr for RouteRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a route limit like `POST /api/v1/auth/login=5/10m`");
        let (route, rate) = text.rsplit_once('=').ok_or_else(bad)?;
        let (method, path) = route.trim().split_once(' ').ok_or_else(bad)?;
        let path = path.trim();
        if !path.starts_with('/') {
            return Err(bad());
        }
        Ok(Self {
            method: method.trim().to_ascii_uppercase(),
            path: path.to_string(),
            rate: rate.parse()?,
        })
    }
}

/// Where a count landed in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    /// Requests in the window, this one included.
    pub used: u64,
    /// Time until the window closes.
    pub resets_in: Duration,
}

/// What to answer, from a count: pure, so its edges are tested without clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Whole seconds until the window closes, rounded up: waiting that long is enough.
    pub reset_secs: u64,
    /// The window's length.
    pub window_secs: u64,
}

pub fn verdict(rate: Rate, count: Count) -> Verdict {
    let reset_secs = count.resets_in.as_millis().div_ceil(1000).max(1) as u64;
    Verdict {
        allowed: count.used <= rate.count,
        limit: rate.count,
        remaining: rate.count.saturating_sub(count.used),
        reset_secs,
        window_secs: rate.window.as_secs(),
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the last address
/// in X-Forwarded-For (all its lines, in order) that is not itself a trusted proxy. A hop that
/// does not parse ends the walk at the last one believed, since what lies left of it was
/// written by someone not trusted.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpRange]) -> IpAddr {
    if !in_any(trusted, peer) {
        return peer;
    }
    let Some(list) = forwarded_for else {
        return peer;
    };
    let mut believed = peer;
    for hop in list.split(',').rev() {
        match parse_hop(hop) {
            Some(ip) if in_any(trusted, ip) => believed = ip,
            Some(ip) => return ip,
            None => return believed,
        }
    }
    believed
}

/// `1.2.3.4`, `1.2.3.4:5555`, `::1` or `[::1]:80`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Counters kept in this process.
#[derive(Default)]
pub struct LocalCounters {
    windows: Mutex<HashMap<String, (u64, Instant)>>,
}

impl LocalCounters {
    pub fn hit(&self, key: &str, window: Duration, now: Instant) -> Count {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (_, ends)| *ends > now);
        }
        // Looked up by &str first: a key is allocated once per window, not per request.
        if !windows.contains_key(key) {
            windows.insert(key.to_string(), (0, now + window));
        }
        let entry = windows.get_mut(key).expect("inserted above");
        if entry.1 <= now {
            *entry = (0, now + window);
        }
        entry.0 += 1;
        Count {
            used: entry.0,
            resets_in: entry.1 - now,
        }
    }
}

/// Counters in Redis, shared by every replica.
///
/// A round trip per request would cost the ingress a tenth of its throughput, so hits that
/// arrive while earlier ones are on their way go together: one transaction counts a batch,
/// and a batch's hits on one key become one INCRBY whose counts are dealt out in arrival
/// order ([`merge`], [`deal`]). Every request still gets a count of its own, exactly what one
/// INCR each would have given, so a limit shared by replicas stays exact. An idle edge sends
/// each hit at once; a batch forms only while a transaction is already waiting, so a hit
/// waits at most one round trip more.
///
/// The transaction is plain commands in MULTI/EXEC (`SET key 0 PX window NX`, `INCRBY`,
/// `PTTL` per key): Redis runs them in under half the time of the same steps as a Lua
/// script (its INFO commandstats said 8.8 µs per EVALSHA here). It goes over a connection of
/// the counters' own ([`link`]).
pub struct RedisCounters {
    hits: mpsc::Sender<Hit>,
}

/// After Redis fails (an error, or no answer within [`ANSWER_WITHIN`]), hits are let through
/// without asking it for this long: a Redis that stopped answering then costs one batch in
/// each such span a timeout, and the rest nothing, instead of every batch waiting its turn
/// for a timeout of its own while requests queue behind it.
const RESPITE: Duration = Duration::from_secs(1);
/// How long a transaction (or a reconnection) may take before Redis counts as failed.
const ANSWER_WITHIN: Duration = Duration::from_millis(500);
/// Hits counted by one transaction at most.
const MAX_BATCH: usize = 512;
/// Turns a batch lets other tasks take while they keep adding hits to it.
const MAX_YIELDS: usize = 4;

struct Hit {
    key: String,
    window: Duration,
    reply: oneshot::Sender<Result<Count, redis::RedisError>>,
}

impl RedisCounters {
    /// Checks that Redis answers at `url`, then counts there.
    pub async fn connect(url: &str) -> Result<Self, redis::RedisError> {
        let info = redis::Client::open(url)?.get_connection_info().clone();
        let link = within(ANSWER_WITHIN, Link::open(&info)).await?;
        let (hits, queue) = mpsc::channel(MAX_BATCH);
        tokio::spawn(send_batches(queue, info, link));
        Ok(Self { hits })
    }

    pub async fn hit(&self, key: &str, window: Duration) -> Result<Count, redis::RedisError> {
        let gone =
            || redis::RedisError::from((redis::ErrorKind::Client, "rate-limit batcher stopped"));
        let (reply, answer) = oneshot::channel();
        let hit = Hit {
            key: key.to_owned(),
            window,
            reply,
        };
        self.hits.send(hit).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Takes the queued hits a batch at a time, one transaction at Redis at once: a batch forms
/// while the one before is on its way, so the busier the edge, the larger the batches. (With
/// up to four at once, under the edge benchmark's load batches held 3.3 hits on average
/// against 7.8, and the limiter cost the ingress 11 to 12 µs of CPU per request against 7.5
/// to 9.9.) A failed link is dropped, since a late answer would be read as the next one's,
/// and opened again after the respite. Ends when the counters are dropped.
async fn send_batches(mut queue: mpsc::Receiver<Hit>, info: redis::ConnectionInfo, link: Link) {
    let mut link = Some(link);
    let mut failing: Option<(Instant, redis::RedisError)> = None;
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Requests often arrive together (one acknowledgement from Kafka answers many, and
        // their clients send again at once), and the first hit wakes this task before the
        // others had their turn to run: let them run first, for as long as they bring hits,
        // so those join this transaction instead of waiting for it to end.
        for _ in 0..MAX_YIELDS {
            tokio::task::yield_now().await;
            let before = batch.len();
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(hit) => batch.push(hit),
                    Err(_) => break,
                }
            }
            if batch.len() == before {
                break;
            }
        }
        let hits = std::mem::take(&mut batch);
        if let Some((until, err)) = &failing
            && Instant::now() < *until
        {
            reply_all(hits, err);
            continue;
        }
        let started = Instant::now();
        match count_over(link.take(), &info, &hits).await {
            Ok((open, counts)) => {
                link = Some(open);
                failing = None;
                metrics::histogram!("herald_rate_limit_batch_hits").record(counts.len() as f64);
                metrics::histogram!("herald_rate_limit_transaction_seconds")
                    .record(started.elapsed().as_secs_f64());
                for (hit, count) in hits.into_iter().zip(counts) {
                    let _ = hit.reply.send(Ok(count));
                }
            }
            Err(err) => {
                reply_all(hits, &err);
                failing = Some((Instant::now() + RESPITE, err));
            }
        }
    }
}

/// Counts a batch over `link`, or over a new one when the last failed; the link is given
/// back only while its replies are still in step with its requests. A link that waited
/// idle may have been closed by Redis (a restart, its `timeout`), which shows at its first
/// use: then the batch is tried once more on a new link, rather than let through uncounted
/// with the second's respite after it. (Had Redis run the transaction before the link
/// dropped, its hits count twice: a limit reached a little early, never one passed.)
async fn count_over(
    link: Option<Link>,
    info: &redis::ConnectionInfo,
    hits: &[Hit],
) -> Result<(Link, Vec<Count>), redis::RedisError> {
    if let Some(mut link) = link {
        match within(ANSWER_WITHIN, count_batch(&mut link, hits)).await {
            Ok(counts) => return Ok((link, counts)),
            Err(err) if !err.is_connection_dropped() => return Err(err),
            Err(_) => {}
        }
    }
    let mut link = within(ANSWER_WITHIN, Link::open(info)).await?;
    let counts = within(ANSWER_WITHIN, count_batch(&mut link, hits)).await?;
    Ok((link, counts))
}

async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, redis::RedisError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("Redis did not answer within {} ms", limit.as_millis()),
        )))
    })
}

/// Counts a batch in one transaction: each hit's count, in order.
async fn count_batch(link: &mut Link, batch: &[Hit]) -> Result<Vec<Count>, redis::RedisError> {
    let merged = merge(batch.iter().map(|hit| hit.key.as_str()));
    let window_ms = |slot: usize| batch[merged.firsts[slot]].window.as_millis() as u64;
    link.multi();
    for (slot, &first) in merged.firsts.iter().enumerate() {
        let key = batch[first].key.as_str();
        link.queue(&[
            Arg::Text("SET"),
            Arg::Text(key),
            Arg::Int(0),
            Arg::Text("PX"),
            Arg::Int(window_ms(slot)),
            Arg::Text("NX"),
        ]);
        link.queue(&[
            Arg::Text("INCRBY"),
            Arg::Text(key),
            Arg::Int(merged.hits[slot]),
        ]);
        link.queue(&[Arg::Text("PTTL"), Arg::Text(key)]);
    }
    let replies = link.exec(3 * merged.hits.len()).await?;
    let mut used = Vec::with_capacity(merged.hits.len());
    let mut resets_in = Vec::with_capacity(merged.hits.len());
    for (slot, replies) in replies.chunks(3).enumerate() {
        let (count, ttl) = match replies {
            [
                Reply::Status | Reply::Bulk(None),
                Reply::Int(count),
                Reply::Int(ttl),
            ] => (*count, *ttl),
            // A key holding something else than a counter, written by someone else.
            _ => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "a rate-limit counter could not be counted",
                    format!("{:?}: {replies:?}", batch[merged.firsts[slot]].key),
                )));
            }
        };
        used.push(count.max(0) as u64);
        let ttl_ms = match ttl {
            ttl if ttl >= 0 => ttl as u64,
            // A counter without an expiry (written by hand, or by a client that died between
            // steps) would never reset: give it the window now.
            _ => {
                link.multi();
                link.queue(&[
                    Arg::Text("PEXPIRE"),
                    Arg::Text(&batch[merged.firsts[slot]].key),
                    Arg::Int(window_ms(slot)),
                ]);
                link.exec(1).await?;
                window_ms(slot)
            }
        };
        resets_in.push(Duration::from_millis(ttl_ms));
    }
    Ok(deal(&merged, &used)
        .into_iter()
        .zip(&merged.slots)
        .map(|(used, &slot)| Count {
            used,
            resets_in: resets_in[slot],
        })
        .collect())
}

fn reply_all(batch: Vec<Hit>, err: &redis::RedisError) {
    for hit in batch {
        let _ = hit.reply.send(Err(err.clone()));
    }
}

/// A batch's hits merged by key.
#[derive(Debug, PartialEq, Eq)]
struct Merged {
    /// Each hit's key, as an index into `firsts` and `hits`.
    slots: Vec<usize>,
    /// Each key's first hit, in the order keys were first seen.
    firsts: Vec<usize>,
    /// Each key's number of hits.
    hits: Vec<u64>,
}

fn merge<'a>(keys: impl IntoIterator<Item = &'a str>) -> Merged {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut merged = Merged {
        slots: Vec::new(),
        firsts: Vec::new(),
        hits: Vec::new(),
    };
    for (index, key) in keys.into_iter().enumerate() {
        let slot = *seen.entry(key).or_insert_with(|| {
            merged.firsts.push(index);
            merged.hits.push(0);
            merged.firsts.len() - 1
        });
        merged.hits[slot] += 1;
        merged.slots.push(slot);
    }
    merged
}

/// Each hit's own count: a key whose `n` hits brought its count to `used` gave them
/// `used - n + 1` to `used`, in the order they arrived.
fn deal(merged: &Merged, used: &[u64]) -> Vec<u64> {
    let mut next: Vec<u64> = merged
        .hits
        .iter()
        .zip(used)
        .map(|(&n, &used)| used.saturating_sub(n) + 1)
        .collect();
    merged
        .slots
        .iter()
        .map(|&slot| {
            let count = next[slot];
            next[slot] += 1;
            count
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_written_per_period() {
        let rate = |s: &str| s.parse::<Rate>().unwrap();
        assert_eq!(rate("100/day").window, Duration::from_secs(86_400));
        assert_eq!(
            rate("5/10m"),
            Rate {
                count: 5,
                window: Duration::from_secs(600)
            }
        );
        assert_eq!(rate("60/1m").window, Duration::from_secs(60));
        assert_eq!(rate("10/s").window, Duration::from_secs(1));
        assert_eq!(rate(" 3 / 2h ").window, Duration::from_secs(7200));
        for bad in ["", "5", "5/", "x/m", "5/10y", "0/m", "5/0m"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        let route: RouteRate = "post /api/v1/auth/login=5/10m".parse().unwrap();
        assert_eq!(route.method, "POST");
        assert_eq!(route.path, "/api/v1/auth/login");
        assert!("/api/v1/x=5/m".parse::<RouteRate>().is_err());
    }

    #[test]
    fn the_request_after_the_limit_is_refused_until_the_window_closes() {
        let rate: Rate = "3/10s".parse().unwrap();
        let counters = LocalCounters::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let verdicts =
            [0, 100, 200, 300].map(|ms| verdict(rate, counters.hit("k", rate.window, at(ms))));
        assert_eq!(verdicts.map(|v| v.allowed), [true, true, true, false]);
        assert_eq!(verdicts.map(|v| v.remaining), [2, 1, 0, 0]);
        // refused at 0.3 s into a 10 s window: 9.7 s left, so Retry-After 10
        assert_eq!(verdicts[3].reset_secs, 10);
        // still refused just before the window closes, allowed at its end
        assert!(!verdict(rate, counters.hit("k", rate.window, at(9_999))).allowed);
        assert!(verdict(rate, counters.hit("k", rate.window, at(10_000))).allowed);
        // other callers count apart
        assert!(verdict(rate, counters.hit("other", rate.window, at(300))).allowed);
    }

    #[test]
    fn hits_on_one_key_in_a_batch_get_the_counts_one_incr_each_would_give() {
        let merged = merge(["a", "b", "a", "c", "a"]);
        assert_eq!(merged.slots, [0, 1, 0, 2, 0]);
        assert_eq!(merged.firsts, [0, 1, 3]);
        assert_eq!(merged.hits, [3, 1, 1]);
        // a stood at 7 before the batch, b was new, c stood at 41
        assert_eq!(deal(&merged, &[10, 1, 42]), [8, 1, 9, 42, 10]);
        assert_eq!(merge([]).slots, Vec::<usize>::new());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let stranger: IpAddr = "198.51.100.2".parse().unwrap();
        let spoofed = "1.2.3.4, 203.0.113.7";
        assert_eq!(
            client_ip(stranger, Some(spoofed), &[proxy.into()]),
            stranger
        );
        // behind the proxy, the hop it added is the client; what came before is the client's word
        assert_eq!(client_ip(proxy, Some(spoofed), &[proxy.into()]), client);
        assert_eq!(client_ip(proxy, None, &[proxy.into()]), proxy);
        assert_eq!(client_ip(proxy, Some("garbage"), &[proxy.into()]), proxy);
        // the proxy's own entry with a port is still the client, not the spoofed one before it
        assert_eq!(
            client_ip(proxy, Some("6.6.6.6, 203.0.113.7:5555"), &[proxy.into()]),
            client
        );
        assert_eq!(
            client_ip(proxy, Some("6.6.6.6, [2001:db8::1]:80"), &[proxy.into()]),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // an entry that does not parse is not skipped to reach the one the client wrote
        assert_eq!(
            client_ip(proxy, Some("6.6.6.6, bad-hop"), &[proxy.into()]),
            proxy
        );
        // a range of proxies (a container network): its hops are all proxies
        let network: IpRange = "10.0.0.0/8".parse().unwrap();
        assert_eq!(
            client_ip(
                "10.9.8.7".parse().unwrap(),
                Some("6.6.6.6, 203.0.113.7, 10.0.0.1"),
                &[network]
            ),
            client
        );
        assert_eq!(client_ip(stranger, Some(spoofed), &[network]), stranger);
        // two proxies in a row: the hop before both
        let inner: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_ip(
                proxy,
                Some("6.6.6.6, 203.0.113.7, 10.0.0.2"),
                &[proxy.into(), inner.into()]
            ),
            client
        );
    }
}
