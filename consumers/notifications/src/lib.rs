//! Notifications: events become emails, pushes and SMS, each at most once per event, channel
//! and recipient.
//!
//! The consumer reads the topics the rules name plus the users topic (its own projection of
//! email, phone, locale). For each event, [`delivery::plan`] decides (pure) what to send to
//! whom; each send is recorded as intent in the delivery log before the provider is called
//! and with its outcome after. A redelivered or replayed event finds its rows settled and
//! sends nothing; a crash between a send and its outcome leaves a row in `sending`, which the
//! next attempt sends again and counts (`herald_notifications_repeated_total`): at most that
//! one message can repeat, and the provider gets the same Message-ID both times.

pub mod api;
pub mod apns;
pub mod delivery;
pub mod domain;
pub mod email;
pub mod live;
pub mod network;
pub mod outcomes;
pub mod parked;
pub mod preferences;
pub mod provider;
pub mod push;
pub mod quiet;
pub mod rules;
pub mod sealed;
pub mod sms;
pub mod socket;
pub mod store;
pub mod templates;
pub mod unsubscribe;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use anyhow::Context as _;
use async_trait::async_trait;
use events::{Catalog, SchemaVersion};
use futures_util::StreamExt;
use platform::auth::Authenticator;
use platform::consumer::{ConsumerArgs, Event, Handler, HandlerError, OrRetry, Runner};
use platform::contract::ContractArgs;
use platform::db::Database;
use platform::kafka::KafkaArgs;
use platform::seal::SealingKey;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::delivery::{
    Capabilities, DeliveryKey, EventView, Intent, Presence, PromotionalHistory, Resolved, Status,
    Step,
};
use crate::email::{Email, EmailProvider};
use crate::live::{LiveHub, LiveMessage};
use crate::provider::SendError;
use crate::push::{PushMessage, PushProvider};
use crate::rules::{Audience, Category, Channel, ORDER_PLACED, Rule, Rules};
use crate::sms::{Route, SmsProvider, SmsRoutes};
use crate::store::{Begun, Claimed, NotifyStore, StoreError, UserChange};
use crate::templates::{Rendered, Templates};
use crate::unsubscribe::Unsubscribe;

/// The consumer's name: its group is the topic prefix followed by this.
pub const NAME: &str = "notifications";
/// The event type whose topic carries the users the projection follows.
const USERS_EVENT: &str = "user.registered";

/// `herald notifications` settings (also flattened into `herald up`).
#[derive(Debug, Clone, clap::Args)]
pub struct NotifyArgs {
    /// The SMTP server as a URL: `smtp://127.0.0.1:2525` (plain), `smtp://user:pass@host:587?tls=required`
    /// (STARTTLS), `smtps://user:pass@host:465` (TLS).
    #[arg(long, env = "SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<SecretString>,
    /// Without an SMTP server: a folder to write each email to as an .eml file (`herald up`
    /// uses `<data>/outbox`).
    #[arg(long, env = "NOTIFY_EMAIL_OUTBOX")]
    pub email_outbox: Option<PathBuf>,
    /// The From of every email.
    #[arg(
        long,
        env = "NOTIFY_EMAIL_FROM",
        default_value = "Herald <no-reply@herald.localhost>"
    )]
    pub email_from: String,
    /// A second SMTP server, same URL form: takes over when the first keeps failing.
    #[arg(long, env = "SMTP_FALLBACK_URL", hide_env_values = true)]
    pub smtp_fallback_url: Option<SecretString>,
    /// SMTP connections kept open and used at once (per server).
    #[arg(long, env = "SMTP_POOL_SIZE", default_value_t = 8)]
    pub smtp_pool_size: u32,
    /// A Google service-account key file (JSON) of the Firebase project: turns on push through
    /// FCM's HTTP v1 API.
    #[arg(long, env = "FCM_SERVICE_ACCOUNT_FILE")]
    pub fcm_service_account_file: Option<PathBuf>,
    /// FCM's API root (a stand-in in tests).
    #[arg(long, env = "FCM_ENDPOINT", default_value = push::DEFAULT_ENDPOINT)]
    pub fcm_endpoint: String,
    /// Apple's .p8 key file (token authentication): with APNS_KEY_ID, APNS_TEAM_ID and
    /// APNS_TOPIC, iOS devices with APNs tokens are pushed to through APNs directly.
    #[arg(long, env = "APNS_KEY_FILE")]
    pub apns_key_file: Option<PathBuf>,
    #[arg(long, env = "APNS_KEY_ID")]
    pub apns_key_id: Option<String>,
    #[arg(long, env = "APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,
    /// The iOS app's bundle id.
    #[arg(long, env = "APNS_TOPIC")]
    pub apns_topic: Option<String>,
    /// APNs' API root: production, `https://api.sandbox.push.apple.com` for development
    /// builds, or a stand-in in tests.
    #[arg(long, env = "APNS_ENDPOINT", default_value = apns::DEFAULT_ENDPOINT)]
    pub apns_endpoint: String,
    /// Twilio account SID: with SMS_TWILIO_AUTH_TOKEN and a sender, turns on SMS.
    #[arg(long, env = "SMS_TWILIO_ACCOUNT_SID")]
    pub sms_twilio_account_sid: Option<String>,
    #[arg(long, env = "SMS_TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub sms_twilio_auth_token: Option<SecretString>,
    /// The SMS gateway's API root (a stand-in in tests).
    #[arg(long, env = "SMS_ENDPOINT", default_value = sms::TWILIO_ENDPOINT)]
    pub sms_endpoint: String,
    /// Sender (number, alphanumeric id or Messaging Service SID) of transactional SMS.
    #[arg(long, env = "SMS_TRANSACTIONAL_FROM")]
    pub sms_transactional_from: Option<String>,
    /// Sender of promotional SMS; never used for transactional ones, nor the reverse.
    #[arg(long, env = "SMS_PROMOTIONAL_FROM")]
    pub sms_promotional_from: Option<String>,
    /// Transactional SMS per second, at most.
    #[arg(long, env = "SMS_TRANSACTIONAL_PER_SEC", default_value_t = 10.0)]
    pub sms_transactional_per_sec: f64,
    /// Promotional SMS per second, at most.
    #[arg(long, env = "SMS_PROMOTIONAL_PER_SEC", default_value_t = 1.0)]
    pub sms_promotional_per_sec: f64,
    /// Rules file (TOML); default: the starter rules.
    #[arg(long, env = "NOTIFY_RULES_FILE")]
    pub rules_file: Option<PathBuf>,
    /// Templates file (TOML); default: the starter templates.
    #[arg(long, env = "NOTIFY_TEMPLATES_FILE")]
    pub templates_file: Option<PathBuf>,
    /// Attempts of one delivery before it is given up and its event dead-lettered.
    #[arg(long, env = "NOTIFY_MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: i32,
    /// Most promotional messages (all channels) one user gets in 24 hours.
    #[arg(long, env = "NOTIFY_PROMOTIONAL_DAILY_CAP", default_value_t = 3)]
    pub promotional_daily_cap: i64,
    /// Sends in flight at once within one batch of events.
    #[arg(long, env = "NOTIFY_SEND_CONCURRENCY", default_value_t = 32)]
    pub send_concurrency: usize,
    /// How long an event waits for its recipient to appear in the users topic before its
    /// delivery is skipped as "unknown user".
    #[arg(long, env = "NOTIFY_RECIPIENT_GRACE_SECS", default_value_t = 60)]
    pub recipient_grace_secs: u64,
    /// Deleted users' records and deactivated devices are kept this long after their last
    /// change, then purged (job purge-soft-deleted, daily).
    #[arg(long, env = "NOTIFY_SOFT_DELETE_RETENTION_DAYS", default_value_t = 30)]
    pub soft_delete_retention_days: u64,
    /// Signs the one-click unsubscribe links of promotional email (32+ random bytes); needed
    /// when a rule sends promotional email. `herald up` uses its development secret.
    #[arg(long, env = "NOTIFY_UNSUBSCRIBE_SECRET", hide_env_values = true)]
    pub unsubscribe_secret: Option<SecretString>,
    /// Where users reach this service's API, for links in messages (default: the address it
    /// listens on).
    #[arg(long, env = "NOTIFY_PUBLIC_URL")]
    pub public_url: Option<String>,
}

/// The handler: plans and makes the deliveries of a batch of events.
pub struct Notifier {
    store: Arc<dyn NotifyStore>,
    rules: Rules,
    templates: Templates,
    email: Option<Arc<dyn EmailProvider>>,
    push: Option<Arc<dyn PushProvider>>,
    sms: Option<SmsRoutes>,
    live: Arc<LiveHub>,
    /// The other replicas' streams, when they share a Redis (set once, at start).
    network: std::sync::OnceLock<Arc<network::LiveNetwork>>,
    unsubscribe: Option<Arc<Unsubscribe>>,
    channels: Vec<Channel>,
    concurrency: usize,
    recipient_grace: Duration,
    max_attempts: i32,
    promotional_cap: i64,
    opener: Opener,
}

/// Opens the sealed fields (live secrets: codes, links) of the events this service delivers,
/// only in memory and only to render them: they are stored nowhere here.
pub struct Opener {
    pub key: Option<Arc<SealingKey>>,
    /// The event types with sealed fields that some rule delivers.
    pub sealed: HashMap<String, Arc<SchemaVersion>>,
    /// Reveals personal fields, where the deployment protects them. Like sealed fields,
    /// they are revealed only in memory: an event parked for later keeps its ciphertext.
    pub revealer: Option<platform::consumer::Revealer>,
}

impl Opener {
    /// `events` with every sealed field opened; borrowed as they are when none has one. A
    /// value that does not open (another key, tampered) rejects the batch, and the runtime
    /// then finds and dead-letters the event at fault.
    fn open<'a>(&self, events: &'a [Event]) -> Result<Cow<'a, [Event]>, HandlerError> {
        if !events
            .iter()
            .any(|e| self.sealed.contains_key(&e.envelope.event_type))
        {
            return Ok(Cow::Borrowed(events));
        }
        let mut opened = events.to_vec();
        for event in &mut opened {
            let Some(schema) = self.sealed.get(&event.envelope.event_type) else {
                continue;
            };
            let key = self
                .key
                .as_ref()
                .ok_or_else(|| HandlerError::Reject("no sealing key to open the event".into()))?;
            key.open_fields(schema, &mut event.data)
                .map_err(|err| HandlerError::Reject(format!("a sealed field: {err}").into()))?;
        }
        Ok(Cow::Owned(opened))
    }
}

/// Where messages leave: each channel's provider (none: that channel's deliveries are
/// skipped), the hub of open streams, and the signer of unsubscribe links.
pub struct Outlets {
    pub email: Option<Arc<dyn EmailProvider>>,
    pub push: Option<Arc<dyn PushProvider>>,
    pub sms: Option<SmsRoutes>,
    pub live: Arc<LiveHub>,
    pub unsubscribe: Option<Arc<Unsubscribe>>,
}

impl Notifier {
    pub fn new(
        store: Arc<dyn NotifyStore>,
        rules: Rules,
        templates: Templates,
        outlets: Outlets,
        opener: Opener,
        args: &NotifyArgs,
    ) -> Self {
        let Outlets {
            email,
            push,
            sms,
            live,
            unsubscribe,
        } = outlets;
        let channels = email
            .iter()
            .map(|_| Channel::Email)
            .chain(push.iter().map(|_| Channel::Push))
            .chain(sms.iter().map(|_| Channel::Sms))
            .chain([Channel::Live])
            .collect();
        Self {
            store,
            rules,
            templates,
            email,
            push,
            sms,
            live,
            network: std::sync::OnceLock::new(),
            unsubscribe,
            channels,
            concurrency: args.send_concurrency.max(1),
            recipient_grace: Duration::from_secs(args.recipient_grace_secs),
            max_attempts: args.max_attempts.max(1),
            promotional_cap: args.promotional_daily_cap,
            opener,
        }
    }

    /// Who one rule addresses in one event: one recipient, or every opted-in user.
    async fn resolve(&self, rule: &Rule, event: &Event) -> Result<Vec<Resolved>, HandlerError> {
        let field_text = |field: &str| event.data.get(field).and_then(Value::as_str);
        Ok(match &rule.to {
            Audience::User(field) => vec![match field_text(field) {
                Some(user_id) => self.recipient(rule, event, user_id).await?,
                None => Resolved::Missing(format!("the event has no user id in {field:?}")),
            }],
            Audience::CustomerOfOrder(field) => vec![match field_text(field) {
                None => Resolved::Missing(format!("the event has no order id in {field:?}")),
                Some(order_id) => match self.store.order_customer(order_id).await.or_retry()? {
                    Some(customer) => self.recipient(rule, event, &customer).await?,
                    // order.placed goes to the same partition first (both are keyed by
                    // the order id), so waiting cannot bring it.
                    None => Resolved::Missing(format!("unknown order {order_id}")),
                },
            }],
            Audience::Addresses(field) => vec![Resolved::addresses_in(field, &event.data)],
            Audience::Phone(field) => vec![Resolved::phone_in(field, &event.data)],
            Audience::OptedIn => {
                let users = self.store.opted_in(&rule.channels).await.or_retry()?;
                let mut all = Vec::with_capacity(users.len());
                for user_id in &users {
                    all.push(self.recipient(rule, event, user_id).await?);
                }
                all
            }
        })
    }

    /// What planning needs to know of one user for one rule.
    async fn recipient(
        &self,
        rule: &Rule,
        event: &Event,
        user_id: &str,
    ) -> Result<Resolved, HandlerError> {
        let wants = |channel| rule.channels.contains(&channel);
        Ok(Resolved::User {
            user_id: user_id.to_string(),
            record: self.store.user(user_id).await.or_retry()?,
            devices: if wants(Channel::Push) || wants(Channel::Live) {
                self.store.devices(user_id).await.or_retry()?
            } else {
                Vec::new()
            },
            preferences: self.store.preferences(user_id).await.or_retry()?,
            promotional: if rule.category == Category::Promotional {
                let day_ago = now_us() - 86_400_000_000;
                self.store
                    .promotional_history(user_id, event.envelope.event_id, day_ago)
                    .await
                    .or_retry()?
            } else {
                PromotionalHistory::default()
            },
            presence: if wants(Channel::Live) {
                let key = DeliveryKey {
                    event_id: event.envelope.event_id,
                    channel: Channel::Live,
                    recipient: user_id.to_string(),
                };
                Presence {
                    connected: self.is_connected(user_id).await,
                    earlier: self.store.status(&key).await.or_retry()?,
                }
            } else {
                Presence::default()
            },
        })
    }

    /// Carries out one decision; `Err` only for what must be tried again.
    async fn execute(&self, step: Step) -> Result<(), HandlerError> {
        match step {
            // The handler parks such events before any step runs.
            Step::Wait { user_id } => Err(HandlerError::Retry(
                format!("user {user_id} is not known yet").into(),
            )),
            Step::Defer {
                intent,
                to,
                name,
                message,
                until_us,
            } => {
                count(&intent, Status::Deferred);
                let held = serde_json::to_string(&Held { to, name, message }).map_err(|err| {
                    HandlerError::Reject(format!("holding a message: {err}").into())
                })?;
                self.store
                    .defer(&intent, &held, until_us, now_us())
                    .await
                    .or_retry()
            }
            Step::Skip { intent, reason } => {
                count(&intent, Status::Skipped);
                self.store
                    .settle(&intent, Status::Skipped, &reason, now_us())
                    .await
                    .or_retry()
            }
            Step::Send {
                intent,
                to,
                name,
                message,
            } => self.send(intent, to, name, message).await,
        }
    }

    async fn send(
        &self,
        intent: Intent,
        to: String,
        name: Option<String>,
        message: Rendered,
    ) -> Result<(), HandlerError> {
        let attempt = match self.store.begin(&intent, now_us()).await.or_retry()? {
            Begun::Settled(Status::Dead) => {
                return Err(HandlerError::Reject(
                    format!(
                        "the {} delivery to {} was given up",
                        intent.key.channel.as_str(),
                        intent.key.recipient
                    )
                    .into(),
                ));
            }
            Begun::Settled(_) => return Ok(()),
            Begun::Send { attempt, .. } if attempt > self.max_attempts => {
                let detail = format!("gave up after {} attempts", self.max_attempts);
                count(&intent, Status::Dead);
                self.store
                    .finish(&intent, Status::Dead, None, Some(&detail), now_us())
                    .await
                    .or_retry()?;
                return Err(HandlerError::Reject(
                    format!(
                        "the {} delivery to {}: {detail}",
                        intent.key.channel.as_str(),
                        intent.key.recipient
                    )
                    .into(),
                ));
            }
            Begun::Send {
                attempt,
                outcome_unknown,
            } => {
                if outcome_unknown {
                    metrics::counter!("herald_notifications_repeated_total", "channel" => intent.key.channel.as_str())
                        .increment(1);
                    tracing::warn!(
                        event_id = %intent.key.event_id,
                        channel = intent.key.channel.as_str(),
                        recipient = %intent.key.recipient,
                        attempt,
                        "an earlier attempt stopped before its outcome was recorded: sending again"
                    );
                }
                attempt
            }
        };
        let channel = intent.key.channel.as_str();
        let span = tracing::info_span!(
            "deliver",
            otel.name = %format_args!("{channel} send"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            herald.channel = channel,
            herald.event_id = %intent.key.event_id,
            herald.attempt = attempt,
        );
        let sent = self
            .deliver(&intent, &to, name, message)
            .instrument(span.clone())
            .await;
        if sent.is_err() {
            span.record("otel.status_code", "error");
        }
        let (status, provider, detail, result) = self.outcome(&intent, &to, sent).await?;
        count(&intent, status);
        self.record(&intent, status, provider, detail.as_deref())
            .await;
        result
    }

    /// Records an attempt's outcome, retrying in place for as long as the store fails: the
    /// provider may have the message already, and failing the batch would send it again.
    async fn record(
        &self,
        intent: &Intent,
        status: Status,
        provider: Option<&str>,
        detail: Option<&str>,
    ) {
        let mut attempt = 0;
        while let Err(err) = self
            .store
            .finish(intent, status, provider, detail, now_us())
            .await
        {
            attempt += 1;
            tracing::warn!(
                %err,
                event_id = %intent.key.event_id,
                channel = intent.key.channel.as_str(),
                "could not record a delivery's outcome; retrying, so it is not sent again"
            );
            let wait = platform::consumer::backoff(attempt, Duration::from_secs(5), 1.0);
            tokio::time::sleep(wait).await;
        }
    }

    /// Hands one message to its provider.
    /// Whether the user holds a stream open here or, through Redis, on another replica.
    async fn is_connected(&self, user_id: &str) -> bool {
        if self.live.is_connected(user_id) {
            return true;
        }
        let Some(network) = self.network.get() else {
            return false;
        };
        network
            .connected_elsewhere(user_id)
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(%err, "live presence unreadable in Redis; this replica's streams only");
                false
            })
    }

    async fn deliver(
        &self,
        intent: &Intent,
        to: &str,
        name: Option<String>,
        message: Rendered,
    ) -> Result<&str, SendError> {
        let delivery = intent.key.idempotency_key();
        if intent.key.channel == Channel::Live {
            let Rendered::Push { title, body } = message else {
                return Err(SendError::Permanent("not a live message".into()));
            };
            let message = LiveMessage {
                event_id: intent.key.event_id.to_string(),
                event_type: intent.event_type.clone(),
                title,
                body,
            };
            let here = self.live.deliver(to, &message);
            let elsewhere = match self.network.get() {
                Some(network) => network
                    .deliver_elsewhere(to, &message, here == 0)
                    .await
                    .unwrap_or_else(|err| {
                        tracing::warn!(%err, "a live message not passed to the other replicas");
                        false
                    }),
                None => false,
            };
            return match (here, elsewhere) {
                (0, false) => Err(SendError::Transient("the user's stream closed".into())),
                (0, true) => Ok("stream, on another replica"),
                _ => Ok("stream"),
            };
        }
        match (message, &self.email, &self.push) {
            (Rendered::Sms { text }, _, _) if self.sms.is_some() => {
                let routes = self.sms.as_ref().expect("checked");
                routes.send(intent.category, to, &text, &delivery).await
            }
            (
                Rendered::Email {
                    subject,
                    text,
                    html,
                    list_unsubscribe,
                },
                Some(email),
                _,
            ) => {
                let message = Email {
                    to: to.to_string(),
                    to_name: name,
                    subject,
                    text,
                    html,
                    message_id: format!("<{delivery}@herald>"),
                    list_unsubscribe,
                };
                email.send(&message).await
            }
            (Rendered::Push { title, body }, _, Some(push)) => {
                let message = PushMessage {
                    title,
                    body,
                    data: BTreeMap::from([
                        ("event_id".to_string(), intent.key.event_id.to_string()),
                        ("event_type".to_string(), intent.event_type.clone()),
                        ("herald_delivery".to_string(), delivery),
                    ]),
                };
                push.send(to, &message).await
            }
            // Planning sends only on channels that have a provider.
            _ => Err(SendError::Permanent("no provider for this channel".into())),
        }
    }

    /// What a provider's answer means for the log and for the batch.
    async fn outcome<'a>(
        &self,
        intent: &Intent,
        to: &str,
        sent: Result<&'a str, SendError>,
    ) -> Result<Outcome<'a>, HandlerError> {
        Ok(match sent {
            Ok(name) => (Status::Sent, Some(name), None, Ok(())),
            Err(SendError::Permanent(reason)) => (Status::Failed, None, Some(reason), Ok(())),
            Err(SendError::Unregistered(reason)) => {
                if intent.key.channel == Channel::Push {
                    let (_, token) = push::split_address(to);
                    self.store.deactivate_device(token).await.or_retry()?;
                }
                (Status::Failed, None, Some(reason), Ok(()))
            }
            Err(SendError::Transient(reason)) => (
                Status::Retrying,
                None,
                Some(reason.clone()),
                Err(HandlerError::Retry(
                    format!("{} provider: {reason}", intent.key.channel.as_str()).into(),
                )),
            ),
        })
    }

    /// Sends deferred deliveries as they fall due, and runs parked events once their
    /// recipient is known, until `shutdown`. A transient failure
    /// holds the delivery again (30 s, doubling); out of attempts it is dead. A claim whose
    /// outcome never came (a crash) is taken again after a minute and counted as repeated.
    pub async fn release_deferred(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.release_parked().await {
                tracing::warn!(%err, "releasing parked events failed");
            }
            let now = now_us();
            let claimed = match self.store.claim_due(now, now - 60_000_000, 100).await {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::warn!(%err, "claiming deferred notifications failed");
                    continue;
                }
            };
            for claim in claimed {
                if let Err(err) = self.release(claim).await {
                    tracing::warn!(%err, "releasing a deferred notification failed");
                }
            }
        }
    }

    async fn release(&self, claim: Claimed) -> Result<(), HandlerError> {
        let Claimed {
            intent,
            payload,
            attempt,
            outcome_unknown,
        } = claim;
        if outcome_unknown {
            metrics::counter!("herald_notifications_repeated_total", "channel" => intent.key.channel.as_str())
                .increment(1);
        }
        let held: Held = match serde_json::from_str(&payload) {
            Ok(held) => held,
            Err(err) => {
                let detail = format!("unreadable deferred payload: {err}");
                return self
                    .store
                    .finish(&intent, Status::Failed, None, Some(&detail), now_us())
                    .await
                    .or_retry();
            }
        };
        let sent = self
            .deliver(&intent, &held.to, held.name, held.message)
            .await;
        let (status, provider, detail, _) = self.outcome(&intent, &held.to, sent).await?;
        if status == Status::Retrying {
            let detail = detail.unwrap_or_default();
            if attempt >= self.max_attempts {
                count(&intent, Status::Dead);
                let detail = format!("gave up after {attempt} attempts: {detail}");
                return self
                    .store
                    .finish(&intent, Status::Dead, None, Some(&detail), now_us())
                    .await
                    .or_retry();
            }
            let wait = 30_000_000_i64 << (attempt - 1).clamp(0, 8);
            return self
                .store
                .reschedule(&intent, now_us() + wait, &detail, now_us())
                .await
                .or_retry();
        }
        count(&intent, status);
        self.record(&intent, status, provider, detail.as_deref())
            .await;
        Ok(())
    }
}

/// Status, provider, detail, and what the batch does next.
type Outcome<'a> = (
    Status,
    Option<&'a str>,
    Option<String>,
    Result<(), HandlerError>,
);

/// What a deferred delivery keeps until it is sent.
#[derive(serde::Serialize, serde::Deserialize)]
struct Held {
    to: String,
    name: Option<String>,
    message: Rendered,
}

fn count(intent: &Intent, status: Status) {
    metrics::counter!(
        "herald_notifications_total",
        "channel" => intent.key.channel.as_str(),
        "status" => status.as_str()
    )
    .increment(1);
}

use platform::clock::now_us;

#[async_trait]
impl Handler for Notifier {
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError> {
        let waiting = self.apply(events).await?;
        // Events for a recipient not known yet wait aside, so no one else's messages wait
        // behind them (their deliveries are keyed by event, so a later run sends each once).
        for (event, user_id) in waiting {
            let parked = parked::Parked::of(event, &user_id);
            self.store.park(&parked).await.or_retry()?;
            metrics::counter!("herald_notifications_parked_total").increment(1);
            tracing::info!(event_id = %event.envelope.event_id, "parked until its recipient is known");
        }
        Ok(())
    }
}

impl Notifier {
    /// Applies events: their changes to users and orders, and every delivery they call for.
    /// Returns the events that wait for a recipient not known yet, none of whose deliveries
    /// ran, with who they wait for.
    async fn apply<'e>(
        &self,
        originals: &'e [Event],
    ) -> Result<Vec<(&'e Event, String)>, HandlerError> {
        let opened = self.opener.open(originals)?;
        let revealed;
        let events: &[Event] = match &self.opener.revealer {
            Some(revealer) => {
                revealed = revealer.reveal(&opened).await?;
                &revealed
            }
            None => &opened,
        };
        let changes: Vec<UserChange> = events
            .iter()
            .filter_map(|e| UserChange::from_event(&e.envelope.event_type, &e.data))
            .collect();
        if !changes.is_empty() {
            self.store.apply_users(&changes).await.or_retry()?;
        }
        let orders: Vec<(String, String)> = events
            .iter()
            .filter(|e| e.envelope.event_type == ORDER_PLACED)
            .filter_map(|e| {
                let text = |field| e.data.get(field).and_then(Value::as_str);
                Some((
                    text("order_id")?.to_string(),
                    text("customer_id")?.to_string(),
                ))
            })
            .collect();
        if !orders.is_empty() {
            self.store.apply_orders(&orders).await.or_retry()?;
        }
        let can = Capabilities {
            templates: &self.templates,
            channels: &self.channels,
            recipient_grace: self.recipient_grace,
            promotional_cap: self.promotional_cap,
            now: jiff::Timestamp::now(),
            unsubscribe: self.unsubscribe.as_deref(),
        };
        let mut steps = Vec::new();
        // Promotional messages planned in this batch, per user (one per event and channel):
        // the cap counts them too.
        let mut promotional_planned: HashMap<String, HashSet<(Uuid, Channel)>> = HashMap::new();
        let mut waiting = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let mut event_steps = Vec::new();
            let occurred_at = event.envelope.occurred_at.to_string();
            let view = EventView {
                event_id: event.envelope.event_id,
                event_type: &event.envelope.event_type,
                occurred_at: &occurred_at,
                data: &event.data,
                age: jiff::Timestamp::now()
                    .duration_since(event.envelope.received_at)
                    .try_into()
                    .unwrap_or_default(),
            };
            for rule in self.rules.for_event(&event.envelope.event_type) {
                let rule = Rule {
                    channels: rule.channels_for(&event.data),
                    ..rule.clone()
                };
                if rule.channels.is_empty() {
                    continue;
                }
                for mut who in self.resolve(&rule, event).await? {
                    if let Resolved::User {
                        user_id,
                        promotional,
                        ..
                    } = &mut who
                        && let Some(planned) = promotional_planned.get(user_id)
                    {
                        promotional.messages.extend(planned.iter().copied());
                    }
                    let planned = delivery::plan(&rule, &view, who, &can);
                    for step in &planned {
                        if let Step::Send { intent, .. } | Step::Defer { intent, .. } = step
                            && intent.category == Category::Promotional
                            && let Some(user) = &intent.user_id
                        {
                            promotional_planned
                                .entry(user.clone())
                                .or_default()
                                .insert((intent.key.event_id, intent.key.channel));
                        }
                    }
                    event_steps.extend(planned);
                }
            }
            match event_steps.iter().find_map(|step| match step {
                Step::Wait { user_id } => Some(user_id.clone()),
                _ => None,
            }) {
                Some(user_id) => waiting.push((&originals[index], user_id)),
                None => steps.extend(event_steps),
            }
        }
        // Every step runs, even when one fails: what was sent is recorded, so the retry of
        // the batch sends only what is left.
        let results: Vec<Result<(), HandlerError>> = futures_util::stream::iter(steps)
            .map(|step| self.execute(step))
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        results.into_iter().collect::<Result<(), HandlerError>>()?;
        Ok(waiting)
    }

    /// Runs parked events whose recipient is known now, or whose grace has passed (their
    /// deliveries are then skipped as "unknown user"), and unparks them.
    async fn release_parked(&self) -> Result<(), StoreError> {
        let expired =
            now_us() - i64::try_from(self.recipient_grace.as_micros()).unwrap_or(i64::MAX);
        for parked in self.store.parked_ready(expired, 100).await? {
            let event = match parked.event() {
                Ok(event) => event,
                Err(err) => {
                    tracing::error!(event_id = %parked.event_id, %err, "a parked event is unreadable; dropped");
                    self.unpark(&parked).await?;
                    continue;
                }
            };
            match self.apply(std::slice::from_ref(&event)).await {
                Ok(waiting) if waiting.is_empty() => self.unpark(&parked).await?,
                Ok(_) => {}
                Err(HandlerError::Retry(reason)) => {
                    tracing::warn!(event_id = %parked.event_id, %reason, "a parked event failed; it stays parked");
                }
                Err(HandlerError::Reject(reason)) => {
                    tracing::error!(event_id = %parked.event_id, %reason, "a parked event cannot be applied; dropped");
                    metrics::counter!("herald_notifications_parked_rejected_total").increment(1);
                    self.unpark(&parked).await?;
                }
            }
        }
        Ok(())
    }

    /// Done with a parked event, whichever way: `herald_notifications_unparked_total` against
    /// `herald_notifications_parked_total` tells how many still wait.
    async fn unpark(&self, parked: &parked::Parked) -> Result<(), StoreError> {
        self.store.unpark(&parked.event_id).await?;
        metrics::counter!("herald_notifications_unparked_total").increment(1);
        Ok(())
    }
}

/// The notification service's parts, connected: its consumer and its API.
pub struct Service {
    pub runner: Runner,
    pub api: Arc<api::NotificationsApi>,
    /// Also sends what quiet hours held: run [`Notifier::release_deferred`] beside the runner.
    pub notifier: Arc<Notifier>,
    /// The purge of its own soft-deleted records.
    pub jobs: platform::jobs::Jobs,
    /// Publishes delivery outcomes as events.
    pub outcomes: outcomes::Relay,
    /// Live delivery across replicas, and this replica's presence changes to publish.
    network: Option<(
        Arc<network::LiveNetwork>,
        tokio::sync::mpsc::UnboundedReceiver<live::PresenceChange>,
    )>,
}

/// Every setting of the service read and checked, nothing connected or created: a start
/// and `herald check` fail alike on a bad one.
struct Setup {
    catalog: Arc<Catalog>,
    templates: Templates,
    rules: Rules,
    unsubscribe: Option<Arc<Unsubscribe>>,
    email: EmailSetting,
    push: Option<Arc<dyn PushProvider>>,
    sms: Option<SmsRoutes>,
    opener: Opener,
}

/// Where emails go; an outbox folder is made only when the service starts.
enum EmailSetting {
    Provider(Arc<dyn EmailProvider>),
    Outbox(PathBuf, lettre::message::Mailbox),
    None,
}

impl Setup {
    fn read(args: &NotifyArgs, contract: &ContractArgs) -> anyhow::Result<Self> {
        let catalog = Arc::new(contract.catalog()?);
        let templates = Templates::load(args.templates_file.as_deref())?;
        let rules = Rules::load(args.rules_file.as_deref(), &catalog, &templates)?;
        Ok(Self {
            unsubscribe: unsubscribe_links(args, &rules)?,
            email: email_setting(args)?,
            push: push_routes(args)?,
            sms: sms_routes(args)?,
            opener: opener(contract, &catalog, &rules)?,
            catalog,
            templates,
            rules,
        })
    }
}

/// The signer of one-click unsubscribe links: needed, with a public URL, as soon as a rule
/// sends promotional email.
fn unsubscribe_links(args: &NotifyArgs, rules: &Rules) -> anyhow::Result<Option<Arc<Unsubscribe>>> {
    Ok(match (&args.unsubscribe_secret, &args.public_url) {
        (Some(secret), _) if secret.expose_secret().len() < 32 => {
            anyhow::bail!("NOTIFY_UNSUBSCRIBE_SECRET must be at least 32 bytes")
        }
        (Some(secret), Some(url)) => {
            unsubscribe::check_public_url(url)
                .map_err(|reason| anyhow::anyhow!("NOTIFY_PUBLIC_URL: {reason}"))?;
            Some(Arc::new(Unsubscribe::new(secret, url)))
        }
        _ if rules.sends_promotional_email() => anyhow::bail!(
            "a rule sends promotional email, which must carry a one-click unsubscribe link: \
             set NOTIFY_UNSUBSCRIBE_SECRET (32+ random bytes) and NOTIFY_PUBLIC_URL"
        ),
        _ => None,
    })
}

/// SMTP (with its fallback), an outbox folder, or no email.
fn email_setting(args: &NotifyArgs) -> anyhow::Result<EmailSetting> {
    let from = email::parse_from(&args.email_from)?;
    Ok(match (&args.smtp_url, &args.email_outbox) {
        (Some(url), _) => {
            let primary = Arc::new(
                email::Smtp::new("smtp", url, from.clone(), args.smtp_pool_size)
                    .context("SMTP_URL")?,
            );
            EmailSetting::Provider(match &args.smtp_fallback_url {
                None => primary,
                Some(fallback) => Arc::new(email::Failover::new(
                    primary,
                    Arc::new(
                        email::Smtp::new("smtp-fallback", fallback, from, args.smtp_pool_size)
                            .context("SMTP_FALLBACK_URL")?,
                    ),
                )),
            })
        }
        (None, Some(dir)) => EmailSetting::Outbox(dir.clone(), from),
        (None, None) => EmailSetting::None,
    })
}

/// Push through FCM, APNs, or both (iOS devices with an APNs token through APNs).
fn push_routes(args: &NotifyArgs) -> anyhow::Result<Option<Arc<dyn PushProvider>>> {
    let fcm: Option<Arc<dyn PushProvider>> = match &args.fcm_service_account_file {
        Some(file) => Some(Arc::new(push::Fcm::from_file(file, &args.fcm_endpoint)?)),
        None => None,
    };
    let apns: Option<Arc<dyn PushProvider>> = match (
        &args.apns_key_file,
        &args.apns_key_id,
        &args.apns_team_id,
        &args.apns_topic,
    ) {
        (Some(file), Some(key_id), Some(team_id), Some(topic)) => {
            let account = apns::ApnsAccount {
                key_id: key_id.clone(),
                team_id: team_id.clone(),
                topic: topic.clone(),
            };
            Some(Arc::new(apns::Apns::from_file(
                file,
                account,
                &args.apns_endpoint,
            )?))
        }
        (None, _, _, _) => None,
        _ => anyhow::bail!(
            "APNS_KEY_FILE needs APNS_KEY_ID, APNS_TEAM_ID and APNS_TOPIC (the app's bundle id)"
        ),
    };
    Ok(match (&fcm, &apns) {
        (None, None) => None,
        _ => Some(Arc::new(push::PushRoutes { fcm, apns })),
    })
}

/// SMS through Twilio, on a transactional and a promotional route of their own.
fn sms_routes(args: &NotifyArgs) -> anyhow::Result<Option<SmsRoutes>> {
    Ok(
        match (&args.sms_twilio_account_sid, &args.sms_twilio_auth_token) {
            (Some(sid), Some(token)) => {
                let gateway: Arc<dyn SmsProvider> =
                    Arc::new(sms::Twilio::new(&args.sms_endpoint, sid, token.clone())?);
                Some(SmsRoutes {
                    transactional: args.sms_transactional_from.as_deref().map(|from| {
                        Route::new(gateway.clone(), from, args.sms_transactional_per_sec)
                    }),
                    promotional: args.sms_promotional_from.as_deref().map(|from| {
                        Route::new(gateway.clone(), from, args.sms_promotional_per_sec)
                    }),
                })
            }
            (None, None) => None,
            _ => anyhow::bail!(
                "SMS_TWILIO_ACCOUNT_SID and SMS_TWILIO_AUTH_TOKEN go together: set both, or neither"
            ),
        },
    )
}

/// What opens the sealed fields of the events a rule delivers (codes, links): the sealing
/// key, asked for only when such an event has a rule.
fn opener(contract: &ContractArgs, catalog: &Catalog, rules: &Rules) -> anyhow::Result<Opener> {
    let sealed: HashMap<String, Arc<SchemaVersion>> = catalog
        .event_types()
        .filter(|v| !v.sealed.is_empty() && !rules.for_event(&v.event_type).is_empty())
        .map(|v| (v.event_type.clone(), v.clone()))
        .collect();
    Ok(Opener {
        key: if sealed.is_empty() {
            None
        } else {
            Some(contract.sealing_key(
                "the notifications service opens the sealed codes and links it delivers",
            )?)
        },
        sealed,
        revealer: None,
    })
}

/// What [`rebuild_projection`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    pub user_changes: usize,
    pub orders: usize,
}

/// The service's store on `db`, with personal data encrypted at rest when privacy is on
/// (see [`sealed`]).
async fn open_store(
    db: Database,
    privacy: Option<Arc<platform::privacy::Privacy>>,
) -> Result<Arc<dyn NotifyStore>, store::StoreError> {
    let store: Arc<dyn NotifyStore> = Arc::new(store::SqlStore::new(db).await?);
    Ok(match privacy {
        Some(privacy) => Arc::new(sealed::Sealed::new(store, privacy)),
        None => store,
    })
}

/// Rebuilds the service's projections of the users and orders topics (recipients' contact
/// details, orders' customers) from the topics alone, sending nothing: for a database lost
/// or restored from a backup older than the log. Every event is applied again in each
/// partition's order, so each user ends as the log last left them.
pub async fn rebuild_projection(
    db: Database,
    kafka: &KafkaArgs,
    contract: &ContractArgs,
) -> anyhow::Result<Rebuilt> {
    let privacy = contract.privacy(Some(&db)).await?;
    let store = open_store(db, privacy.clone()).await?;
    let catalog = Arc::new(contract.catalog()?);
    let codec = contract.codec(catalog.clone(), kafka).await?;
    let mut topics: Vec<String> = [USERS_EVENT, ORDER_PLACED]
        .iter()
        .filter_map(|t| catalog.latest(t))
        .map(|schema| kafka.topic(&schema.topic))
        .collect();
    topics.dedup();
    let mut records = platform::kafka::read_all(kafka, &topics, Duration::from_secs(60)).await?;
    records
        .sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    let mut rebuilt = Rebuilt {
        user_changes: 0,
        orders: 0,
    };
    for chunk in records.chunks(500) {
        let mut changes = Vec::new();
        let mut orders = Vec::new();
        for record in chunk {
            let Some(mut decoded) = record
                .payload
                .as_deref()
                .and_then(|payload| codec.decode(payload).ok())
            else {
                // Not an event this service could ever have applied (its dead letters say so).
                continue;
            };
            if let (Some(privacy), Some(schema)) =
                (&privacy, catalog.latest(&decoded.envelope.event_type))
            {
                privacy
                    .reveal_data(schema, &decoded.envelope.actor, &mut decoded.data)
                    .await?;
            }
            let event_type = decoded.envelope.event_type.as_str();
            if let Some(change) = UserChange::from_event(event_type, &decoded.data) {
                changes.push(change);
            } else if event_type == ORDER_PLACED {
                let text = |field| decoded.data.get(field).and_then(Value::as_str);
                if let (Some(order), Some(customer)) = (text("order_id"), text("customer_id")) {
                    orders.push((order.to_string(), customer.to_string()));
                }
            }
        }
        store.apply_users(&changes).await?;
        store.apply_orders(&orders).await?;
        rebuilt.user_changes += changes.len();
        rebuilt.orders += orders.len();
    }
    Ok(rebuilt)
}

/// Whether the service would start with these settings, as far as can be told without
/// connecting to anything or creating a folder (`herald check`).
pub fn check(args: &NotifyArgs, contract: &ContractArgs) -> anyhow::Result<()> {
    Setup::read(args, contract).map(drop)
}

impl Service {
    /// Loads rules and templates, connects the email provider, migrates the store and
    /// prepares the consumer of the users topic and every topic the rules name.
    pub async fn connect(
        db: Database,
        kafka: &KafkaArgs,
        contract: &ContractArgs,
        consumer: &ConsumerArgs,
        auth: Arc<Authenticator>,
        args: &NotifyArgs,
    ) -> anyhow::Result<Self> {
        let Setup {
            catalog,
            templates,
            rules,
            unsubscribe,
            email,
            push,
            sms,
            mut opener,
        } = Setup::read(args, contract)?;
        let email: Option<Arc<dyn EmailProvider>> = match email {
            EmailSetting::Provider(provider) => Some(provider),
            EmailSetting::Outbox(dir, from) => Some(Arc::new(email::Outbox::new(dir, from)?)),
            EmailSetting::None => None,
        };
        let mut topics: Vec<String> = rules
            .event_types()
            .chain([USERS_EVENT, ORDER_PLACED])
            .filter_map(|t| catalog.latest(t))
            .map(|schema| kafka.topic(&schema.topic))
            .collect();
        topics.sort();
        topics.dedup();
        let privacy = contract.privacy(Some(&db)).await?;
        opener.revealer = privacy
            .clone()
            .map(|privacy| platform::consumer::Revealer::new(privacy, catalog.clone()));
        let store = open_store(db, privacy).await?;
        let codec = Arc::new(contract.codec(catalog.clone(), kafka).await?);
        let outcomes_topic: Vec<String> = catalog
            .latest(outcomes::EVENT_TYPE)
            .map(|schema| kafka.topic(&schema.topic))
            .into_iter()
            .collect();
        platform::kafka::ensure_topics(kafka, &outcomes_topic, Default::default())
            .await
            .context("creating the topic of delivery outcomes")?;
        let outcomes = outcomes::Relay {
            store: store.clone(),
            emitter: platform::contract::Emitter::new(catalog.clone(), codec.clone(), kafka, NAME),
            publisher: platform::kafka::Publisher::new(kafka, Duration::from_secs(10))?,
        };
        let live = Arc::new(LiveHub::default());
        let outlets = Outlets {
            email,
            push,
            sms,
            live: live.clone(),
            unsubscribe: unsubscribe.clone(),
        };
        let handler = Arc::new(Notifier::new(
            store.clone(),
            rules,
            templates,
            outlets,
            opener,
            args,
        ));
        let runner = Runner::new(NAME, topics, kafka, consumer, codec, handler.clone());
        Ok(Self {
            runner,
            outcomes,
            jobs: jobs(store.clone(), args.soft_delete_retention_days),
            api: Arc::new(api::NotificationsApi {
                store,
                auth,
                live,
                unsubscribe,
            }),
            notifier: handler,
            network: None,
        })
    }

    /// Live messages reach a user's stream on whichever replica holds it, through the Redis
    /// at `redis_url` (see [`network`]); `namespace` keeps this deployment's keys apart (its
    /// topic prefix). Without a URL, a replica knows its own streams only.
    pub async fn with_live_network(
        mut self,
        redis_url: Option<&str>,
        namespace: &str,
    ) -> anyhow::Result<Self> {
        let Some(url) = redis_url else {
            return Ok(self);
        };
        let network = network::LiveNetwork::connect(url, self.api.live.clone(), namespace)
            .await
            .context("connecting to Redis for live delivery across replicas (REDIS_URL)")?;
        let changes = self
            .api
            .live
            .watch()
            .context("the live hub is watched once")?;
        let _ = self.notifier.network.set(network.clone());
        self.network = Some((network, changes));
        Ok(self)
    }

    pub fn router(&self) -> axum::Router {
        api::router(self.api.clone())
    }
}

/// Its maintenance: deleted users' records and deactivated devices, once `retention_days`
/// past their last change.
fn jobs(store: Arc<dyn NotifyStore>, retention_days: u64) -> platform::jobs::Jobs {
    let retention =
        i64::try_from(retention_days.saturating_mul(86_400_000_000)).unwrap_or(i64::MAX);
    platform::jobs::Jobs::new().every(
        "purge-soft-deleted",
        Duration::from_secs(24 * 3600),
        move || {
            let store = store.clone();
            async move {
                Ok(store
                    .purge_soft_deleted(now_us().saturating_sub(retention))
                    .await?)
            }
        },
    )
}

/// What the service holds about a person, for their export: the contact details it
/// learned from the users topic, their devices, their preferences and the newest thousand
/// messages it sent them (address, template, outcome).
struct Export(Arc<dyn NotifyStore>);

#[async_trait::async_trait]
impl platform::export::Exporter for Export {
    async fn export(&self, subject: &str) -> Result<Value, platform::problem::Problem> {
        let unavailable = |err: StoreError| {
            tracing::warn!(%err, "the notification store failed an export");
            platform::problem::Problem::unavailable("the notification store is not reachable", 5)
        };
        let store = &self.0;
        let user = store.user(subject).await.map_err(unavailable)?;
        let devices = store.devices(subject).await.map_err(unavailable)?;
        let preferences = store.preferences(subject).await.map_err(unavailable)?;
        let deliveries = store
            .list(&store::DeliveryFilter::User(subject.to_string()), 1000)
            .await
            .map_err(unavailable)?;
        Ok(serde_json::json!({
            "contact": user,
            "devices": devices,
            "preferences": preferences,
            "deliveries": deliveries,
        }))
    }
}

/// Notifications as a service: its API, its consumer, the loop that sends what quiet hours
/// held and its maintenance jobs, stopped with the consumer.
impl platform::service::Service for Service {
    fn name(&self) -> &'static str {
        "notifications"
    }

    fn routes(&self) -> axum::Router {
        self.router()
    }

    fn exporter(&self) -> Option<Arc<dyn platform::export::Exporter>> {
        Some(Arc::new(Export(self.api.store.clone())))
    }

    fn run(self: Box<Self>, shutdown: CancellationToken) -> platform::service::Work {
        Box::pin(async move {
            let beside = shutdown.child_token();
            let releasing = tokio::spawn(self.notifier.release_deferred(beside.clone()));
            let maintaining = tokio::spawn(self.jobs.run(beside.clone()));
            let publishing = tokio::spawn(self.outcomes.run(beside.clone()));
            let networking = self
                .network
                .map(|(network, changes)| tokio::spawn(network.run(changes, beside.clone())));
            // Live streams end at the start of shutdown, so their clients reconnect to
            // another replica while this one drains.
            let live = self.api.live.clone();
            let closing = tokio::spawn({
                let stop = beside.clone();
                async move {
                    stop.cancelled().await;
                    live.close();
                    if tokio::time::timeout(Duration::from_secs(5), live.closed())
                        .await
                        .is_err()
                    {
                        tracing::warn!("websocket clients still open at the close deadline");
                    }
                }
            });
            let consumed = self.runner.run(shutdown).await;
            beside.cancel();
            releasing.await?;
            maintaining.await?;
            publishing.await?;
            closing.await?;
            if let Some(networking) = networking {
                networking.await?;
            }
            Ok(consumed?)
        })
    }
}
