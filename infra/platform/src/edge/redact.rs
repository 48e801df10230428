//! What request logs may show: secrets in JSON bodies and headers are replaced before
//! anything is written.

use serde_json::Value;

pub const REDACTED: &str = "[redacted]";

/// Whether a JSON key or header name holds a secret: passwords, tokens, one-time codes,
/// links carrying a token, credentials and cookies.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const PARTS: [&str; 9] = [
        "password",
        "token",
        "secret",
        "otp",
        "authorization",
        "cookie",
        "api_key",
        "apikey",
        "credential",
    ];
    PARTS.iter().any(|part| name.contains(part))
        || name == "code"
        || name.ends_with("_code")
        || name == "link"
}

/// `value` with every secret field's value replaced, at any depth.
pub fn redact_json(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let value = if is_secret_name(key) {
                        Value::String(REDACTED.into())
                    } else {
                        redact_json(value)
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact_json).collect()),
        other => other.clone(),
    }
}

/// A body as it may be logged: JSON with its secrets replaced; anything else is described,
/// never shown, since a secret in it could not be found.
pub fn loggable_body(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return String::new();
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => redact_json(&value).to_string(),
        Err(_) => format!("<{} bytes, not JSON: not shown>", bytes.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_replaced_at_any_depth_and_the_rest_is_kept() {
        let body = json!({
            "email": "a@example.com",
            "password": "hunter2-canary",
            "new_password": "x",
            "refresh_token": "rt",
            "nested": [{"otp_code": "123456", "code": "654321", "name": "kept"}],
            "Authorization": "Bearer x",
        });
        let shown = redact_json(&body);
        assert_eq!(shown["email"], "a@example.com");
        assert_eq!(shown["nested"][0]["name"], "kept");
        for secret in [
            "hunter2-canary",
            "rt",
            "123456",
            "654321",
            "Bearer x",
            "\"x\"",
        ] {
            assert!(!shown.to_string().contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn bodies_that_are_not_json_are_never_shown() {
        assert_eq!(
            loggable_body(b"password=hunter2"),
            "<16 bytes, not JSON: not shown>"
        );
        assert_eq!(
            loggable_body(br#"{"token":"t"}"#),
            r#"{"token":"[redacted]"}"#
        );
    }
}
