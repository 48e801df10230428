//! Erasing a person (a data subject): what `DELETE /api/v1/me`, the admin route, the
//! retention job and `herald privacy erase` do.
//!
//! In this order, so that a stop anywhere leaves nothing readable and a second run finishes:
//! 1. their data key is destroyed (`platform::privacy`): every copy of their personal fields,
//!    on the log, in the audit log and in backups, is unreadable from now on;
//! 2. in one transaction, their account's personal columns are blanked, what hangs off it
//!    (sessions, codes, reset links, linked identities, rate-limit counts) is deleted, and
//!    `user.deleted` (when the account was live) and `user.erased` enter the outbox;
//! 3. the relay publishes them, and each consumer deletes what it derived (its projection,
//!    devices, preferences, delivery addresses, search documents).

use serde::Serialize;
use serde_json::json;

use crate::AuthState;
use crate::outbox::{WriteError, now_us};
use crate::store::StoreError;
use crate::tokens::digest;

/// What an erasure did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Erased {
    pub subject: String,
    /// A data key was destroyed now (false: none was ever made, or it was destroyed before).
    pub key_destroyed: bool,
    /// The subject has an account, now blanked.
    pub account_erased: bool,
    /// Personal fields are encrypted in this deployment: without PRIVACY_KEY_FILE the log's
    /// copies stay readable, and only the derived copies go.
    pub log_protected: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error("the personal-data key store: {0}; the erasure can be run again")]
    Keys(#[from] platform::privacy::PrivacyError),
    #[error("the accounts database: {0}; the erasure can be run again")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Erases `subject` for `reason` (said in the `user.erased` event), done by `actor`.
pub async fn erase(
    state: &AuthState,
    subject: &str,
    reason: &str,
    actor: &str,
) -> Result<Erased, EraseError> {
    let key_destroyed = match &state.privacy {
        Some(privacy) => privacy.erase(subject).await?,
        None => false,
    };
    let account = state.store.account(subject).await?;
    let at = jiff::Timestamp::now();
    let mut events = Vec::with_capacity(2);
    let data = json!({"user_id": subject, "reason": reason});
    if account.as_ref().is_some_and(|a| a.deleted_at.is_none()) {
        events.push(
            state
                .writer
                .record("user.deleted", subject, actor, &data, at)
                .await?,
        );
    }
    events.push(
        state
            .writer
            .record(platform::privacy::ERASURE_EVENT, subject, actor, &data, at)
            .await?,
    );
    // The rate-limit counts are kept by digest of the route and the address.
    let mut targets = Vec::new();
    if let Some(account) = &account {
        for route in ["register", "login", "forgot"] {
            targets.push(digest(&format!("{route}:{}", account.email)));
        }
        if let Some(phone) = &account.phone {
            targets.push(digest(&format!("otp-request:{phone}")));
        }
    }
    let account_erased = state
        .store
        .erase_account(subject, now_us(), &targets, &events)
        .await?;
    state.relay_wake.notify_one();
    tracing::info!(
        subject,
        key_destroyed,
        account_erased,
        reason,
        "personal data erased"
    );
    Ok(Erased {
        subject: subject.to_string(),
        key_destroyed,
        account_erased,
        log_protected: state.privacy.is_some(),
    })
}

/// Erases the people of accounts deleted more than `after` ago and not erased yet (deleted
/// before erasure existed, or by a path that only deletes): the retention job. Answers how
/// many.
pub async fn erase_deleted(
    state: &AuthState,
    after: std::time::Duration,
) -> Result<u64, EraseError> {
    let before = now_us().saturating_sub(i64::try_from(after.as_micros()).unwrap_or(i64::MAX));
    let mut erased = 0;
    loop {
        let due = state.store.deleted_unerased(before, 100).await?;
        if due.is_empty() {
            return Ok(erased);
        }
        for id in due {
            erase(
                state,
                &id,
                "retention period of a deleted account",
                "herald-auth",
            )
            .await?;
            erased += 1;
        }
    }
}

/// What the auth service holds about a person, for their export: their account (without
/// its password hash), the sign-in identities linked to it and their sessions.
pub struct AccountExport(pub std::sync::Arc<AuthState>);

#[async_trait::async_trait]
impl platform::export::Exporter for AccountExport {
    async fn export(&self, subject: &str) -> Result<serde_json::Value, platform::problem::Problem> {
        let store = &self.0.store;
        let unavailable = |err: StoreError| crate::api::store_error(&err);
        let Some(account) = store.account(subject).await.map_err(unavailable)? else {
            return Ok(serde_json::Value::Null);
        };
        let (identities, sessions) = store.held_about(subject).await.map_err(unavailable)?;
        let mut profile = crate::api::profile_json(&account);
        profile["deleted"] = account.deleted_at.is_some().into();
        Ok(json!({
            "account": profile,
            "linked_identities": identities
                .into_iter()
                .map(|(issuer, subject, at)| json!({"issuer": issuer, "subject": subject, "linked_at_us": at}))
                .collect::<Vec<_>>(),
            "sessions": sessions
                .into_iter()
                .map(|(created, expires)| json!({"created_at_us": created, "expires_at_us": expires}))
                .collect::<Vec<_>>(),
        }))
    }
}
