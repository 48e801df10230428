//! Live delivery across the replicas of the notifications service, through Redis.
//!
//! A user's stream is held by the replica they connected to, while their events are planned
//! by whichever replica consumes the partition. So every replica:
//!
//! - **tells where its users are**: a sorted set per user (`<namespace>live:user:<id>`)
//!   holds the replicas that have a stream of theirs, each scored with when that ends
//!   unless renewed: set at once when a user's first stream opens, renewed every
//!   [`RENEW`], removed when their last stream closes. A replica that dies stops renewing,
//!   and its entries lapse within [`LAPSE`];
//! - **listens on one channel** (`<namespace>live`) for messages to users, delivers each to
//!   the streams it holds, and, when asked, says so on a reply list.
//!
//! A message planned for a user connected elsewhere is published there. When no stream of
//! this replica took it, the planner waits a moment for another replica to say it did;
//! without that it fails as a closed stream, and its retry goes as push, as it does for a
//! user with no open stream anywhere. Without Redis a replica knows its own streams only.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::live::{LiveHub, LiveMessage, PresenceChange};

/// How often a replica renews the presence of its users.
pub const RENEW: Duration = Duration::from_secs(5);
/// How long a presence lasts unrenewed.
pub const LAPSE: Duration = Duration::from_secs(15);
/// How long a planner waits for another replica to take a message. An acknowledgement
/// later than this makes the message's retry decide again (push, or live once more: a
/// client tells a repeat by its event id).
const ACK_WAIT: Duration = Duration::from_secs(3);

/// A message for a user, as published on the channel.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    user: String,
    message: LiveMessage,
    /// The replica that published it (it delivered to its own streams already).
    from: String,
    /// Where a replica that delivered it says so, when the publisher waits to know.
    reply: Option<String>,
}

pub struct LiveNetwork {
    client: redis::Client,
    redis: ConnectionManager,
    hub: Arc<LiveHub>,
    /// This replica's name in presence sets and replies.
    replica: String,
    /// Keys' and channel's prefix: one deployment's, apart from another's on the same Redis.
    namespace: String,
}

impl LiveNetwork {
    /// Connects to Redis at `url`; keys start with `namespace` (the deployment's topic
    /// prefix, so deployments sharing a Redis do not meet).
    pub async fn connect(
        url: &str,
        hub: Arc<LiveHub>,
        namespace: &str,
    ) -> redis::RedisResult<Arc<Self>> {
        let client = redis::Client::open(url)?;
        let redis = ConnectionManager::new(client.clone()).await?;
        Ok(Arc::new(Self {
            client,
            redis,
            hub,
            replica: uuid::Uuid::new_v4().to_string(),
            namespace: format!("herald:{namespace}live"),
        }))
    }

    fn presence_key(&self, user: &str) -> String {
        format!("{}:user:{user}", self.namespace)
    }

    fn channel(&self) -> String {
        self.namespace.clone()
    }

    fn now_ms() -> i64 {
        jiff::Timestamp::now().as_millisecond()
    }

    /// Whether another replica holds a stream of `user`'s now.
    pub async fn connected_elsewhere(&self, user: &str) -> redis::RedisResult<bool> {
        let mut redis = self.redis.clone();
        let holders: Vec<String> = redis
            .zrangebyscore(self.presence_key(user), Self::now_ms(), "+inf")
            .await?;
        Ok(holders.iter().any(|replica| *replica != self.replica))
    }

    /// Publishes `message` for `user` to the other replicas. With `wait`, answers whether
    /// one of them delivered it to a stream; without, `true` once it is published.
    pub async fn deliver_elsewhere(
        &self,
        user: &str,
        message: &LiveMessage,
        wait: bool,
    ) -> redis::RedisResult<bool> {
        let reply = wait.then(|| format!("{}:reply:{}", self.namespace, uuid::Uuid::new_v4()));
        let envelope = Envelope {
            user: user.to_string(),
            message: message.clone(),
            from: self.replica.clone(),
            reply: reply.clone(),
        };
        let text = serde_json::to_string(&envelope).map_err(|err| {
            redis::RedisError::from((redis::ErrorKind::Client, "encoding", err.to_string()))
        })?;
        let mut redis = self.redis.clone();
        let listeners: i64 = redis.publish(self.channel(), text).await?;
        let Some(reply) = reply else {
            return Ok(true);
        };
        // This replica listens too: nobody else heard it.
        if listeners <= 1 {
            return Ok(false);
        }
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
        while tokio::time::Instant::now() < deadline {
            let taken: Option<String> = redis.lpop(&reply, None).await?;
            if taken.is_some() {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(false)
    }

    /// Runs until `shutdown`: listens on the channel, and keeps this replica's presences.
    pub async fn run(
        self: Arc<Self>,
        changes: mpsc::UnboundedReceiver<PresenceChange>,
        shutdown: CancellationToken,
    ) {
        let listening = tokio::spawn(self.clone().listen(shutdown.clone()));
        self.clone().keep_presence(changes, shutdown).await;
        let _ = listening.await;
        // Gone: this replica's users are no longer here.
        for user in self.hub.connected_users() {
            let _ = self.leave(&user).await;
        }
    }

    async fn join(&self, user: &str) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        let until = Self::now_ms() + i64::try_from(LAPSE.as_millis()).unwrap_or(i64::MAX);
        let key = self.presence_key(user);
        let () = redis.zadd(&key, &self.replica, until).await?;
        let _: bool = redis.expire(&key, (LAPSE.as_secs() * 2) as i64).await?;
        Ok(())
    }

    async fn leave(&self, user: &str) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        let _: i64 = redis.zrem(self.presence_key(user), &self.replica).await?;
        Ok(())
    }

    async fn keep_presence(
        self: Arc<Self>,
        mut changes: mpsc::UnboundedReceiver<PresenceChange>,
        shutdown: CancellationToken,
    ) {
        let mut renew = tokio::time::interval(RENEW);
        loop {
            let done = tokio::select! {
                () = shutdown.cancelled() => return,
                change = changes.recv() => match change {
                    Some(PresenceChange::Joined(user)) => self.join(&user).await,
                    Some(PresenceChange::Left(user)) => self.leave(&user).await,
                    None => return,
                },
                _ = renew.tick() => {
                    let mut done = Ok(());
                    for user in self.hub.connected_users() {
                        done = done.and(self.join(&user).await);
                    }
                    done
                }
            };
            if let Err(err) = done {
                tracing::warn!(%err, "live presence not written to Redis; other replicas may send push instead");
            }
        }
    }

    /// Takes the channel's messages until `shutdown`, reconnecting after a failure.
    async fn listen(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let listened = tokio::select! {
                () = shutdown.cancelled() => return,
                listened = self.listen_once() => listened,
            };
            if let Err(err) = listened {
                tracing::warn!(%err, "the live channel in Redis failed; listening again shortly");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn listen_once(&self) -> redis::RedisResult<()> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.channel()).await?;
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            let Ok(envelope) = serde_json::from_str::<Envelope>(&payload) else {
                tracing::warn!("an unreadable message on the live channel was ignored");
                continue;
            };
            if envelope.from == self.replica {
                continue;
            }
            let taken = self.hub.deliver(&envelope.user, &envelope.message);
            if taken > 0
                && let Some(reply) = envelope.reply
            {
                // Said in a task of its own: the next message is not held up by this one's
                // round trips, and a failure here loses this acknowledgement only.
                let (mut redis, replica) = (self.redis.clone(), self.replica.clone());
                tokio::spawn(async move {
                    let said: redis::RedisResult<()> = async {
                        let _: i64 = redis.rpush(&reply, &replica).await?;
                        let _: bool = redis.expire(&reply, 30).await?;
                        Ok(())
                    }
                    .await;
                    if let Err(err) = said {
                        tracing::warn!(%err, "a live delivery not acknowledged in Redis");
                    }
                });
            }
        }
        Ok(())
    }
}
