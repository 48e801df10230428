//! Personal fields leave the ingress encrypted: each event's fields that its schema marks
//! (`herald.personal`) are protected for its data subject before the event is encoded, so
//! the log, and every copy of it, holds only ciphertext (see `platform::privacy`).

use events::json::FieldError;
use platform::privacy::{Privacy, PrivacyError};

use crate::auth::Principal;
use crate::prepare::{Prepared, Shape};
use crate::problem::Problem;

/// Protects the marked fields of every event of a request, in place. A request about a
/// person who was erased is refused whole (422): nothing new is kept about them.
pub async fn protect(
    privacy: &Privacy,
    principal: &Principal,
    shape: Shape,
    prepared: &mut [Prepared],
) -> Result<(), Problem> {
    // The keys of everyone the request is about first, in one write for those who have
    // none yet; each field is then protected with a key in memory.
    let mut subjects = Vec::new();
    for event in prepared.iter() {
        if let Ok(Some(subject)) =
            Privacy::subject_in_avro(&event.schema, &principal.subject, &event.data)
            && !subjects.contains(&subject)
        {
            subjects.push(subject);
        }
    }
    if !subjects.is_empty() {
        match privacy.prepare(&subjects).await {
            Ok(()) => {}
            Err(PrivacyError::Store(err)) => {
                tracing::warn!(%err, "the personal-data key store is unreachable; answering 503");
                return Err(Problem::unavailable(
                    "the personal-data key store did not answer; nothing was published",
                    1,
                ));
            }
            Err(err) => return Err(Problem::internal(&err)),
        }
    }
    for (index, event) in prepared.iter_mut().enumerate() {
        if event.schema.personal.is_none() {
            continue;
        }
        let at = match shape {
            Shape::Single => "/data".to_string(),
            Shape::Batch => format!("/events/{index}/data"),
        };
        match privacy
            .protect_avro(&event.schema, &principal.subject, &event.data)
            .await
        {
            Ok(Some(protected)) => event.data = protected,
            Ok(None) => {}
            Err(PrivacyError::Erased) => {
                return Err(Problem::invalid(vec![FieldError {
                    pointer: at,
                    message: "is about a person whose personal data was erased: nothing more \
                              about them is kept"
                        .into(),
                }]));
            }
            Err(PrivacyError::NoSubject(field)) => {
                return Err(Problem::invalid(vec![FieldError {
                    pointer: format!("{at}/{field}"),
                    message: "names whom the personal data is about: a string is required".into(),
                }]));
            }
            Err(PrivacyError::Store(err)) => {
                tracing::warn!(%err, "the personal-data key store is unreachable; answering 503");
                return Err(Problem::unavailable(
                    "the personal-data key store did not answer; nothing was published",
                    1,
                ));
            }
            // The data was encoded from what the request held: it reads.
            Err(err) => return Err(Problem::internal(&err)),
        }
    }
    Ok(())
}
