//! SMS: a provider interface, one real HTTP provider (Twilio's Messages API), and two routes
//! that cannot mix.
//!
//! Transactional traffic (codes, receipts) and promotional traffic (campaigns) leave with
//! their own sender id and their own rate budget, as carriers require. The separation is in
//! the types: an [`Sms`] is made for one kind of traffic, a [`Route`] takes only messages of
//! its own kind, and the one place that turns a rule's category into a kind is the exhaustive
//! match in [`SmsRoutes::send`]. A promotional message has no way onto the transactional
//! route.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::provider::SendError;
use crate::rules::Category;

pub const TWILIO_ENDPOINT: &str = "https://api.twilio.com";

/// The kinds of SMS traffic.
pub trait Kind: Send + Sync + 'static {
    const NAME: &'static str;
}

pub struct Transactional;
pub struct Promotional;

impl Kind for Transactional {
    const NAME: &'static str = "transactional";
}

impl Kind for Promotional {
    const NAME: &'static str = "promotional";
}

/// One SMS, bound to its kind of traffic.
pub struct Sms<K: Kind> {
    pub to: String,
    pub body: String,
    /// The same for every attempt of one delivery.
    pub idempotency_key: String,
    kind: PhantomData<K>,
}

impl<K: Kind> Sms<K> {
    pub fn new(to: &str, body: &str, idempotency_key: &str) -> Self {
        Self {
            to: to.to_string(),
            body: body.to_string(),
            idempotency_key: idempotency_key.to_string(),
            kind: PhantomData,
        }
    }
}

/// A gateway that sends one SMS.
#[async_trait]
pub trait SmsProvider: Send + Sync {
    fn name(&self) -> &str;
    async fn send(
        &self,
        from: &str,
        to: &str,
        body: &str,
        idempotency_key: &str,
    ) -> Result<(), SendError>;
}

/// At most `per_second` messages a second, in bursts of at most that many.
pub struct Budget {
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl Budget {
    pub fn new(per_second: f64) -> Self {
        let per_second = per_second.max(0.01);
        Self {
            per_second,
            state: Mutex::new((per_second, Instant::now())),
        }
    }

    /// Waits for a token.
    pub async fn take(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let (tokens, at) = *state;
                let now = Instant::now();
                let tokens = refill(tokens, now - at, self.per_second);
                if tokens >= 1.0 {
                    *state = (tokens - 1.0, now);
                    return;
                }
                *state = (tokens, now);
                Duration::from_secs_f64((1.0 - tokens) / self.per_second)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Tokens after `elapsed` (pure): capped at one second's worth.
fn refill(tokens: f64, elapsed: Duration, per_second: f64) -> f64 {
    (tokens + elapsed.as_secs_f64() * per_second).min(per_second.max(1.0))
}

/// A sender id and a budget for one kind of traffic.
pub struct Route<K: Kind> {
    provider: Arc<dyn SmsProvider>,
    sender: String,
    budget: Budget,
    kind: PhantomData<K>,
}

impl<K: Kind> Route<K> {
    pub fn new(provider: Arc<dyn SmsProvider>, sender: &str, per_second: f64) -> Self {
        Self {
            provider,
            sender: sender.to_string(),
            budget: Budget::new(per_second),
            kind: PhantomData,
        }
    }

    /// Sends a message of this route's kind (and only of it).
    pub async fn send(&self, sms: &Sms<K>) -> Result<&str, SendError> {
        self.budget.take().await;
        self.provider
            .send(&self.sender, &sms.to, &sms.body, &sms.idempotency_key)
            .await
            .map(|()| self.provider.name())
    }
}

pub struct SmsRoutes {
    pub transactional: Option<Route<Transactional>>,
    pub promotional: Option<Route<Promotional>>,
}

impl SmsRoutes {
    pub async fn send(
        &self,
        category: Category,
        to: &str,
        body: &str,
        idempotency_key: &str,
    ) -> Result<&str, SendError> {
        let missing =
            |kind: &str| SendError::Permanent(format!("no {kind} SMS route is configured"));
        match category {
            Category::Transactional => match &self.transactional {
                Some(route) => route.send(&Sms::new(to, body, idempotency_key)).await,
                None => Err(missing(Transactional::NAME)),
            },
            Category::Promotional => match &self.promotional {
                Some(route) => route.send(&Sms::new(to, body, idempotency_key)).await,
                None => Err(missing(Promotional::NAME)),
            },
        }
    }
}

/// Twilio's Messages API: form-encoded, HTTP basic auth with the account SID and auth token.
/// A sender starting with `MG` is a Messaging Service SID, anything else a number or
/// alphanumeric sender id. The idempotency key goes in an `Idempotency-Key` header for
/// gateways that honour one.
pub struct Twilio {
    http: reqwest::Client,
    endpoint: String,
    account_sid: String,
    auth_token: SecretString,
}

impl Twilio {
    pub fn new(
        endpoint: &str,
        account_sid: &str,
        auth_token: SecretString,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            account_sid: account_sid.to_string(),
            auth_token,
        })
    }
}

/// How a Twilio answer is treated (pure): 2xx sent; 401/403 (credentials), 429 and 5xx
/// transient; other 4xx (an invalid or unsubscribed number) permanent.
pub fn classify(status: u16, body: &Value) -> Result<(), SendError> {
    let code = body["code"]
        .as_i64()
        .map(|c| format!(" (code {c})"))
        .unwrap_or_default();
    let reason = format!("SMS gateway {status}{code}");
    match status {
        200..=299 => Ok(()),
        401 | 403 | 429 | 500..=599 => Err(SendError::Transient(reason)),
        _ => Err(SendError::Permanent(reason)),
    }
}

#[async_trait]
impl SmsProvider for Twilio {
    fn name(&self) -> &str {
        "twilio"
    }

    async fn send(
        &self,
        from: &str,
        to: &str,
        body: &str,
        idempotency_key: &str,
    ) -> Result<(), SendError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.endpoint, self.account_sid
        );
        let sender = if from.starts_with("MG") {
            "MessagingServiceSid"
        } else {
            "From"
        };
        let response = self
            .http
            .post(url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .header("Idempotency-Key", idempotency_key)
            .form(&[("To", to), (sender, from), ("Body", body)])
            .send()
            .await
            // reqwest's error names the URL, never the form: the body stays out of logs.
            .map_err(|e| SendError::Transient(format!("SMS gateway: {e}")))?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        classify(status, &answer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    #[derive(Default)]
    struct Recording(StdMutex<Vec<(String, String)>>);

    #[async_trait]
    impl SmsProvider for Recording {
        fn name(&self) -> &str {
            "recording"
        }
        async fn send(&self, from: &str, to: &str, _: &str, _: &str) -> Result<(), SendError> {
            self.0.lock().unwrap().push((from.into(), to.into()));
            Ok(())
        }
    }

    #[tokio::test]
    async fn each_category_leaves_on_its_own_route_only() {
        let gateway = Arc::new(Recording::default());
        let routes = SmsRoutes {
            transactional: Some(Route::new(gateway.clone(), "HeraldTx", 100.0)),
            promotional: Some(Route::new(gateway.clone(), "HeraldPromo", 100.0)),
        };
        routes
            .send(Category::Transactional, "+1555", "code", "k1")
            .await
            .unwrap();
        routes
            .send(Category::Promotional, "+1556", "sale", "k2")
            .await
            .unwrap();
        assert_eq!(
            *gateway.0.lock().unwrap(),
            [
                ("HeraldTx".to_string(), "+1555".to_string()),
                ("HeraldPromo".to_string(), "+1556".to_string())
            ]
        );
        let transactional_only = SmsRoutes {
            transactional: Some(Route::new(gateway.clone(), "HeraldTx", 100.0)),
            promotional: None,
        };
        assert!(matches!(
            transactional_only
                .send(Category::Promotional, "+1556", "sale", "k3")
                .await,
            Err(SendError::Permanent(reason)) if reason == "no promotional SMS route is configured"
        ));
        assert_eq!(gateway.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn budgets_refill_up_to_one_second() {
        assert_eq!(refill(0.0, Duration::from_millis(500), 10.0), 5.0);
        assert_eq!(refill(9.0, Duration::from_secs(5), 10.0), 10.0);
        assert_eq!(refill(0.5, Duration::from_secs(1), 0.5), 1.0);
    }

    #[tokio::test]
    async fn a_budget_spaces_out_sends() {
        let budget = Budget::new(20.0);
        let started = Instant::now();
        for _ in 0..30 {
            budget.take().await;
        }
        // 20 at once, then 10 more at 20 a second.
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn gateway_answers_are_classified() {
        assert_eq!(classify(201, &Value::Null), Ok(()));
        assert!(matches!(
            classify(400, &serde_json::json!({"code": 21211})),
            Err(SendError::Permanent(r)) if r == "SMS gateway 400 (code 21211)"
        ));
        assert!(matches!(
            classify(429, &Value::Null),
            Err(SendError::Transient(_))
        ));
        assert!(matches!(
            classify(401, &Value::Null),
            Err(SendError::Transient(_))
        ));
        assert!(matches!(
            classify(503, &Value::Null),
            Err(SendError::Transient(_))
        ));
    }
}
