//! Live delivery: users connected to `GET /api/v1/stream` (server-sent events, or a
//! WebSocket on the same route) get their `live` notifications on every connection they hold,
//! over either transport; whether a user is connected when an event is planned decides live
//! versus push.
//!
//! At shutdown [`LiveHub::close`] ends every stream: an event stream's response completes, a
//! WebSocket is closed with 1001 (going away), so clients reconnect to another replica at
//! once instead of waiting for a dead socket to time out.
//!
//! The hub knows this process's connections only. With several notification instances, a
//! user's stream is held by the instance they connected to, while their events are planned by
//! whichever instance consumes the partition: [`crate::network`] tells the others, through
//! Redis, who is connected here ([`LiveHub::watch`]) and brings their messages. Either way
//! the delivery log records exactly one of live or push per event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Messages one connection may have waiting before it counts as gone (a client that stopped
/// reading).
const BUFFER: usize = 64;
/// Streams one user may hold open at once (a phone, a laptop, a few tabs).
pub const MAX_STREAMS_PER_USER: usize = 8;

/// What a connected client receives as the data of one `notification` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveMessage {
    pub event_id: String,
    pub event_type: String,
    pub title: String,
    pub body: String,
}

/// Each connected user's open streams, by connection id: the sender that reaches it, or
/// `None` once it was let go for not reading (it still counts against the user's cap until
/// its connection closes).
type Streams = HashMap<String, Vec<(u64, Option<mpsc::Sender<LiveMessage>>)>>;

/// The users connected to this process, and a way to reach them.
#[derive(Default)]
pub struct LiveHub {
    users: Mutex<Streams>,
    next_id: AtomicU64,
    /// Cancelled at shutdown: every connection's next message is its end.
    closing: CancellationToken,
    /// The WebSocket sessions, which outlive the HTTP server's own drain once upgraded.
    sessions: TaskTracker,
    /// Told when a user's first stream opens and their last one closes.
    watcher: std::sync::OnceLock<mpsc::UnboundedSender<PresenceChange>>,
}

/// A user's presence in this process changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    Joined(String),
    Left(String),
}

impl LiveHub {
    /// Registers one connection of `user_id`; it is removed when the returned value drops.
    /// `None` when the user already holds [`MAX_STREAMS_PER_USER`] open, whether or not
    /// they read them.
    pub fn connect(self: &Arc<Self>, user_id: &str) -> Option<Connection> {
        let (sender, receiver) = mpsc::channel(BUFFER);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut users = self.lock();
        let streams = users.entry(user_id.to_string()).or_default();
        if streams.len() >= MAX_STREAMS_PER_USER {
            return None;
        }
        if streams.is_empty() {
            self.tell(PresenceChange::Joined(user_id.to_string()));
        }
        streams.push((id, Some(sender)));
        metrics::gauge!("herald_notifications_live_connections").increment(1);
        Some(Connection {
            hub: self.clone(),
            user_id: user_id.to_string(),
            id,
            receiver,
        })
    }

    /// The changes of who is connected here, from now on (once per hub).
    pub fn watch(&self) -> Option<mpsc::UnboundedReceiver<PresenceChange>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.watcher.set(sender).ok()?;
        Some(receiver)
    }

    fn tell(&self, change: PresenceChange) {
        if let Some(watcher) = self.watcher.get() {
            let _ = watcher.send(change);
        }
    }

    /// The users with a stream open here.
    pub fn connected_users(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn is_connected(&self, user_id: &str) -> bool {
        self.lock().get(user_id).is_some_and(|streams| {
            streams
                .iter()
                .any(|(_, s)| s.as_ref().is_some_and(|s| !s.is_closed()))
        })
    }

    /// Hands `message` to every connection of `user_id`; answers how many took it (0: the
    /// user is not connected).
    ///
    /// A connection whose buffer is full has a client that stopped reading: it is let go
    /// here (its stream ends once the client has read what is buffered), so that it no
    /// longer counts as connected and the retry of this message goes as push.
    pub fn deliver(&self, user_id: &str, message: &LiveMessage) -> usize {
        let mut users = self.lock();
        let Some(streams) = users.get_mut(user_id) else {
            return 0;
        };
        let mut taken = 0;
        for (_, slot) in streams.iter_mut() {
            let Some(sender) = slot else { continue };
            if sender.try_send(message.clone()).is_ok() {
                taken += 1;
            } else {
                *slot = None;
            }
        }
        taken
    }

    /// Counts a WebSocket session until the returned value drops, so that [`LiveHub::closed`]
    /// waits for its close handshake.
    pub fn session(&self) -> TaskTrackerToken {
        self.sessions.token()
    }

    /// Ends every connection, now and from now on (shutdown).
    pub fn close(&self) {
        self.closing.cancel();
        self.sessions.close();
    }

    /// Whether [`LiveHub::close`] was called: a connection that ends now ends for shutdown.
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Returns once every WebSocket session has ended, after [`LiveHub::close`].
    pub async fn closed(&self) {
        self.sessions.wait().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One open stream; dropping it (the client went away) unregisters it.
pub struct Connection {
    hub: Arc<LiveHub>,
    user_id: String,
    id: u64,
    receiver: mpsc::Receiver<LiveMessage>,
}

impl Connection {
    /// The next message for this connection; `None` once it is let go (its client stopped
    /// reading) or the hub closes.
    pub async fn next(&mut self) -> Option<LiveMessage> {
        tokio::select! {
            biased;
            () = self.hub.closing.cancelled() => None,
            message = self.receiver.recv() => message,
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut users = self.hub.lock();
        if let Some(streams) = users.get_mut(&self.user_id) {
            streams.retain(|(id, _)| *id != self.id);
            if streams.is_empty() {
                users.remove(&self.user_id);
                self.hub.tell(PresenceChange::Left(self.user_id.clone()));
            }
        }
        metrics::gauge!("herald_notifications_live_connections").decrement(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u32) -> LiveMessage {
        LiveMessage {
            event_id: n.to_string(),
            event_type: "message.sent".into(),
            title: "t".into(),
            body: "b".into(),
        }
    }

    #[tokio::test]
    async fn every_connection_of_the_user_gets_the_message_until_it_drops() {
        let hub = Arc::new(LiveHub::default());
        assert!(!hub.is_connected("bob"));
        assert_eq!(hub.deliver("bob", &message(1)), 0);
        let mut phone = hub.connect("bob").unwrap();
        let mut laptop = hub.connect("bob").unwrap();
        let _other = hub.connect("carol").unwrap();
        assert!(hub.is_connected("bob"));
        assert_eq!(hub.deliver("bob", &message(2)), 2);
        assert_eq!(phone.next().await, Some(message(2)));
        assert_eq!(laptop.next().await, Some(message(2)));
        drop(phone);
        assert_eq!(hub.deliver("bob", &message(3)), 1);
        drop(laptop);
        assert!(!hub.is_connected("bob"));
        assert!(hub.is_connected("carol"));
    }

    #[tokio::test]
    async fn a_client_that_stopped_reading_stops_taking_messages() {
        let hub = Arc::new(LiveHub::default());
        let mut stalled = hub.connect("bob").unwrap();
        let mut reading = hub.connect("bob").unwrap();
        for n in 0..BUFFER as u32 {
            assert_eq!(hub.deliver("bob", &message(n)), 2);
            assert_eq!(reading.next().await, Some(message(n)));
        }
        // Full: the stalled one is let go, the reader still gets it.
        assert_eq!(hub.deliver("bob", &message(999)), 1);
        assert_eq!(reading.next().await, Some(message(999)));
        drop(reading);
        assert!(
            !hub.is_connected("bob"),
            "a stalled stream is not a connection"
        );
        assert_eq!(hub.deliver("bob", &message(1000)), 0);
        // What was buffered is still read, then the stream ends.
        for n in 0..BUFFER as u32 {
            assert_eq!(stalled.next().await, Some(message(n)));
        }
        assert_eq!(stalled.next().await, None);
    }

    #[tokio::test]
    async fn closing_the_hub_ends_every_connection_and_waits_for_sessions() {
        let hub = Arc::new(LiveHub::default());
        let mut stream = hub.connect("bob").unwrap();
        let session = hub.session();
        hub.deliver("bob", &message(1));
        hub.close();
        assert!(hub.is_closing());
        assert_eq!(
            stream.next().await,
            None,
            "closed, even with a message waiting"
        );
        let waiting = tokio::spawn({
            let hub = hub.clone();
            async move { hub.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a session is still open");
        drop(session);
        waiting.await.unwrap();
    }

    #[test]
    fn a_stream_let_go_for_not_reading_counts_until_it_closes() {
        let hub = Arc::new(LiveHub::default());
        let mut open: Vec<Connection> = (0..MAX_STREAMS_PER_USER)
            .map(|_| hub.connect("bob").unwrap())
            .collect();
        // None of them reads: all are let go, yet all still hold their place.
        for n in 0..=BUFFER as u32 {
            hub.deliver("bob", &message(n));
        }
        assert!(!hub.is_connected("bob"));
        assert!(hub.connect("bob").is_none(), "stalled streams still count");
        open.pop();
        assert!(hub.connect("bob").is_some());
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_streams() {
        let hub = Arc::new(LiveHub::default());
        let mut open: Vec<Connection> = (0..MAX_STREAMS_PER_USER)
            .map(|_| hub.connect("bob").unwrap())
            .collect();
        assert!(hub.connect("bob").is_none());
        assert!(hub.connect("carol").is_some());
        open.pop();
        assert!(hub.connect("bob").is_some());
    }
}
