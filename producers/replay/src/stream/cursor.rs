//! A stream's cursor: where a reader of one topic stands, as the next offset of every
//! partition, signed by the deployment so a client can hold it but not make one up.
//!
//! Any replica that shares the key resumes from it: the cursor is the whole state of a
//! stream, and no replica keeps a session. `v1.<positions>.<tag>`, where positions is
//! base64url of `topic;partition:offset,...` and tag the first 16 bytes of its
//! HMAC-SHA-256.

use std::collections::BTreeMap;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Cursors longer than this are refused unread.
const MAX_LEN: usize = 4096;
const TAG_LEN: usize = 16;

/// Where a stream stands: the next offset to read in each partition of `topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub topic: String,
    pub positions: BTreeMap<i32, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error(
        "the cursor is not one this deployment made (malformed, altered or signed with another key)"
    )]
    Forged,
    #[error("the cursor is for the topic {0:?}, not this one")]
    OtherTopic(String),
}

/// Signs and checks cursors.
pub struct CursorKey(hmac::Key);

impl CursorKey {
    /// The key of a deployment's secret (any length; every replica must hold the same).
    pub fn new(secret: &[u8]) -> Self {
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            b"herald stream cursor v1",
        );
        Self(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
    }

    pub fn sign(&self, cursor: &Cursor) -> String {
        let positions: Vec<String> = cursor
            .positions
            .iter()
            .map(|(partition, offset)| format!("{partition}:{offset}"))
            .collect();
        let body = URL_SAFE_NO_PAD.encode(format!("{};{}", cursor.topic, positions.join(",")));
        let tag = hmac::sign(&self.0, body.as_bytes());
        format!(
            "v1.{body}.{}",
            URL_SAFE_NO_PAD.encode(&tag.as_ref()[..TAG_LEN])
        )
    }

    /// The cursor `text` holds, if this key signed it, for `topic`.
    pub fn open(&self, text: &str, topic: &str) -> Result<Cursor, CursorError> {
        if text.len() > MAX_LEN {
            return Err(CursorError::Forged);
        }
        let mut parts = text.split('.');
        let (Some("v1"), Some(body), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CursorError::Forged);
        };
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| CursorError::Forged)?;
        let expected = hmac::sign(&self.0, body.as_bytes());
        // Compared in constant time: a client learns nothing from how long a refusal takes.
        if tag.len() != TAG_LEN
            || aws_lc_rs::constant_time::verify_slices_are_equal(
                &expected.as_ref()[..TAG_LEN],
                &tag,
            )
            .is_err()
        {
            return Err(CursorError::Forged);
        }
        let plain = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or(CursorError::Forged)?;
        let cursor = parse(&plain).ok_or(CursorError::Forged)?;
        if cursor.topic != topic {
            return Err(CursorError::OtherTopic(cursor.topic));
        }
        Ok(cursor)
    }
}

fn parse(plain: &str) -> Option<Cursor> {
    let (topic, positions) = plain.split_once(';')?;
    let mut parsed = BTreeMap::new();
    for position in positions.split(',').filter(|p| !p.is_empty()) {
        let (partition, offset) = position.split_once(':')?;
        let (partition, offset) = (partition.parse().ok()?, offset.parse().ok()?);
        if partition < 0 || offset < 0 || parsed.insert(partition, offset).is_some() {
            return None;
        }
    }
    Some(Cursor {
        topic: topic.to_string(),
        positions: parsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> Cursor {
        Cursor {
            topic: "orders".into(),
            positions: BTreeMap::from([(0, 12), (1, 0), (2, 7_000_000_000)]),
        }
    }

    #[test]
    fn a_signed_cursor_opens_with_the_same_key_for_its_topic_only() {
        let key = CursorKey::new(b"deployment secret");
        let text = key.sign(&cursor());
        assert_eq!(key.open(&text, "orders"), Ok(cursor()));
        assert_eq!(
            key.open(&text, "users"),
            Err(CursorError::OtherTopic("orders".into()))
        );
        let other = CursorKey::new(b"another deployment");
        assert_eq!(other.open(&text, "orders"), Err(CursorError::Forged));
    }

    #[test]
    fn an_altered_or_made_up_cursor_is_forged() {
        let key = CursorKey::new(b"deployment secret");
        let text = key.sign(&cursor());
        let (head, tag) = text.rsplit_once('.').unwrap();
        // The positions of a later point, with the old tag.
        let moved = Cursor {
            positions: BTreeMap::from([(0, 99)]),
            ..cursor()
        };
        let moved_body = key.sign(&moved);
        let moved_body = moved_body.split('.').nth(1).unwrap();
        for forged in [
            format!("v1.{moved_body}.{tag}"),
            format!("{head}.AAAAAAAAAAAAAAAAAAAAAA"),
            format!("{head}."),
            format!("v2{}", &text[2..]),
            "v1..".to_string(),
            "".to_string(),
            "v1.x.y.z".to_string(),
            "x".repeat(5000),
        ] {
            assert_eq!(
                key.open(&forged, "orders"),
                Err(CursorError::Forged),
                "{forged}"
            );
        }
        // Well signed, but not positions.
        for body in ["orders", "orders;0:x", "orders;-1:3", "orders;0:1,0:2"] {
            let body = URL_SAFE_NO_PAD.encode(body);
            let tag = hmac::sign(&key.0, body.as_bytes());
            let text = format!(
                "v1.{body}.{}",
                URL_SAFE_NO_PAD.encode(&tag.as_ref()[..TAG_LEN])
            );
            assert_eq!(
                key.open(&text, "orders"),
                Err(CursorError::Forged),
                "{body}"
            );
        }
    }
}
