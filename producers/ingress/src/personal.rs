//! Personal fields leave the ingress encrypted: each event's fields that its schema marks
//! (`herald.personal`) are protected for its data subject before the event is encoded, so
//! the log, and every copy of it, holds only ciphertext (see `platform::privacy`).

use events::json::FieldError;
use platform::privacy::{Privacy, PrivacyError};

use crate::auth::Principal;
use crate::prepare::{Prepared, Shape};
use crate::problem::Problem;

fn data_pointer(shape: Shape, index: usize) -> String {
    match shape {
        Shape::Single => "/data".to_string(),
        Shape::Batch => format!("/events/{index}/data"),
    }
}

/// Protects the marked fields of every event of a request, in place. A request about a
/// person who was erased is refused whole (422): nothing new is kept about them.
pub async fn protect(
    privacy: &Privacy,
    principal: &Principal,
    shape: Shape,
    prepared: &mut [Prepared],
) -> Result<(), Problem> {
    // Whom each event is about, and their keys, fetched (or made) together: each field is
    // then protected with a key at hand.
    let mut subjects: Vec<&str> = Vec::new();
    let mut whose = Vec::with_capacity(prepared.len());
    for (index, event) in prepared.iter().enumerate() {
        let subject = match Privacy::subject_in_avro(&event.schema, &principal.subject, &event.data)
        {
            Ok(subject) => subject,
            Err(PrivacyError::NoSubject(field)) => {
                return Err(Problem::invalid(vec![FieldError {
                    pointer: format!("{}/{field}", data_pointer(shape, index)),
                    message: "names whom the personal data is about: a string is required".into(),
                }]));
            }
            // The data was encoded from what the request held: it reads.
            Err(err) => return Err(Problem::internal(&err)),
        };
        whose.push(subject.map(
            |subject| match subjects.iter().position(|s| *s == subject) {
                Some(at) => at,
                None => {
                    subjects.push(subject);
                    subjects.len() - 1
                }
            },
        ));
    }
    if subjects.is_empty() {
        return Ok(());
    }
    let keys = match privacy.keys_for(&subjects).await {
        Ok(keys) => keys,
        Err(PrivacyError::Store(err)) => {
            tracing::warn!(%err, "the personal-data key store is unreachable; answering 503");
            return Err(Problem::unavailable(
                "the personal-data key store did not answer; nothing was published",
                1,
            ));
        }
        Err(err) => return Err(Problem::internal(&err)),
    };
    let mut protected = Vec::with_capacity(prepared.len());
    for (index, (event, at)) in prepared.iter().zip(&whose).enumerate() {
        let Some(at) = *at else {
            protected.push(None);
            continue;
        };
        let Some(key) = &keys[at] else {
            return Err(Problem::invalid(vec![FieldError {
                pointer: data_pointer(shape, index),
                message: "is about a person whose personal data was erased: nothing more \
                          about them is kept"
                    .into(),
            }]));
        };
        let data = Privacy::protect_avro_with(key, &event.schema, subjects[at], &event.data)
            .map_err(|err| Problem::internal(&err))?;
        protected.push(Some(data));
    }
    for (event, data) in prepared.iter_mut().zip(protected) {
        if let Some(data) = data {
            event.data = data;
        }
    }
    Ok(())
}
