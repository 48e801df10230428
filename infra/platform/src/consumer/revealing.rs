//! Personal fields in plain text for the consumers that need them (a recipient's address, a
//! name to index): [`Revealing`] around a handler, or [`Revealer`] inside one that must keep
//! the events as they came (to park them). A consumer that only keeps events (the audit log)
//! does without, and so keeps the ciphertext.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use events::Catalog;

use super::{Event, Handler, HandlerError, OrReject as _, OrRetry as _, Resume};
use crate::privacy::{ERASURE_EVENT, Privacy, PrivacyError};

/// Reveals the personal fields of events: the plain text, or [`crate::privacy::ERASED`] once
/// their subject was erased. An erasure event makes this process forget the subject's key at
/// once, before any later event is revealed.
pub struct Revealer {
    privacy: Arc<Privacy>,
    catalog: Arc<Catalog>,
}

impl Revealer {
    pub fn new(privacy: Arc<Privacy>, catalog: Arc<Catalog>) -> Self {
        Self { privacy, catalog }
    }

    fn marked(&self, event: &Event) -> bool {
        self.catalog
            .latest(&event.envelope.event_type)
            .is_some_and(|schema| schema.personal.is_some())
    }

    /// `events` with their personal fields revealed (borrowed when none has any). The key
    /// store away, or a key-encryption key missing from the file, is worth a retry; a value
    /// that does not open is the event's fault.
    pub async fn reveal<'a>(&self, events: &'a [Event]) -> Result<Cow<'a, [Event]>, HandlerError> {
        for event in events {
            if event.envelope.event_type == ERASURE_EVENT
                && let Some(subject) = event.data.get("user_id").and_then(|s| s.as_str())
            {
                self.privacy.forget(subject);
            }
        }
        if !events.iter().any(|event| self.marked(event)) {
            return Ok(Cow::Borrowed(events));
        }
        let mut revealed = events.to_vec();
        for event in &mut revealed {
            let Some(schema) = self.catalog.latest(&event.envelope.event_type) else {
                continue;
            };
            let outcome = self
                .privacy
                .reveal_data(schema, &event.envelope.actor, &mut event.data)
                .await;
            match outcome {
                Ok(()) => {}
                Err(err @ (PrivacyError::Store(_) | PrivacyError::UnknownKek(_))) => {
                    return Err(err).or_retry();
                }
                Err(err) => return Err(err).or_reject(),
            }
        }
        Ok(Cow::Owned(revealed))
    }
}

/// A handler behind a [`Revealer`].
pub struct Revealing {
    revealer: Revealer,
    inner: Arc<dyn Handler>,
}

impl Revealing {
    /// `inner` behind revealing, when the deployment protects personal data; as it is
    /// otherwise.
    pub fn wrap(
        privacy: Option<Arc<Privacy>>,
        catalog: Arc<Catalog>,
        inner: Arc<dyn Handler>,
    ) -> Arc<dyn Handler> {
        match privacy {
            Some(privacy) => Arc::new(Self {
                revealer: Revealer::new(privacy, catalog),
                inner,
            }),
            None => inner,
        }
    }
}

#[async_trait]
impl Handler for Revealing {
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError> {
        let revealed = self.revealer.reveal(events).await?;
        self.inner.handle(&revealed).await
    }

    fn resume_from(&self, topic: &str, partition: i32) -> Resume {
        self.inner.resume_from(topic, partition)
    }
}
