//! A handler that sees personal fields in plain text: what a consumer that needs them (a
//! recipient's address, a name to index) puts around its own. A consumer that only keeps
//! events (the audit log) does without, and so keeps the ciphertext.

use std::sync::Arc;

use async_trait::async_trait;
use events::Catalog;

use super::{Event, Handler, HandlerError, OrReject as _, OrRetry as _, Resume};
use crate::privacy::{ERASURE_EVENT, Privacy, PrivacyError};

/// Reveals the personal fields of each event before `inner` sees it: the plain text, or
/// [`crate::privacy::ERASED`] once its subject was erased. An erasure event makes this
/// process forget the subject's key at once, before any later event is revealed.
pub struct Revealing {
    privacy: Arc<Privacy>,
    catalog: Arc<Catalog>,
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
                privacy,
                catalog,
                inner,
            }),
            None => inner,
        }
    }

    fn marked(&self, event: &Event) -> bool {
        self.catalog
            .latest(&event.envelope.event_type)
            .is_some_and(|schema| schema.personal.is_some())
    }
}

#[async_trait]
impl Handler for Revealing {
    async fn handle(&self, events: &[Event]) -> Result<(), HandlerError> {
        for event in events {
            if event.envelope.event_type == ERASURE_EVENT
                && let Some(subject) = event.data.get("user_id").and_then(|s| s.as_str())
            {
                self.privacy.forget(subject);
            }
        }
        if !events.iter().any(|event| self.marked(event)) {
            return self.inner.handle(events).await;
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
                // The key store away, or a key-encryption key missing from the file: both
                // mend without the event changing.
                Err(err @ (PrivacyError::Store(_) | PrivacyError::UnknownKek(_))) => {
                    return Err(err).or_retry();
                }
                Err(err) => return Err(err).or_reject(),
            }
        }
        self.inner.handle(&revealed).await
    }

    fn resume_from(&self, topic: &str, partition: i32) -> Resume {
        self.inner.resume_from(topic, partition)
    }
}
