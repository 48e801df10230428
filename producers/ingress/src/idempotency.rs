//! Idempotency keys: a client that retries a request with the same `Idempotency-Key` gets
//! the first answer and publishes nothing new.
//!
//! A key is claimed before publishing, with the event ids the request will use. If the
//! outcome is unknown (broker timeout, crash), the claim's lock expires and a retry
//! re-publishes with the *same* event ids, so consumers, who deduplicate by event id, apply
//! it once. Records live for a configured time (24 h by default) and survive restarts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use platform::clock;
use platform::db::Database;
use platform::with_pool;
use uuid::Uuid;

/// A stored record of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The attempt that holds (or last held) the lock.
    pub attempt: Uuid,
    pub request_hash: String,
    pub event_ids: Vec<Uuid>,
    pub received_at: Timestamp,
    pub response: Option<StoredResponse>,
    pub locked_until: Timestamp,
    pub expires_at: Timestamp,
}

/// The answer given the first time, replayed to retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

/// What a request carrying a key asks to reserve.
#[derive(Debug, Clone)]
pub struct Claim {
    /// Identifies this try, so a stale try cannot unlock a newer one's claim.
    pub attempt: Uuid,
    pub principal: String,
    pub key: String,
    pub request_hash: String,
    pub event_ids: Vec<Uuid>,
    pub received_at: Timestamp,
    /// How long the claim blocks concurrent retries: longer than the publish deadline.
    pub lease: Duration,
    pub ttl: Duration,
}

/// What the request must do, decided from the stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// First use of the key (or the old record expired): publish with the claim's ids.
    New,
    /// An earlier attempt did not finish: publish again with its ids and time.
    Resume {
        event_ids: Vec<Uuid>,
        received_at: Timestamp,
    },
    /// Already done: answer this.
    Replay(StoredResponse),
    /// The key was used with another body.
    Mismatch,
    /// Another attempt with this key is publishing right now.
    InProgress { retry_after: Duration },
}

/// The decision, as a pure function of the stored record.
pub fn decide(record: &Record, request_hash: &str, now: Timestamp) -> Decision {
    if record.expires_at <= now {
        Decision::Expired
    } else if record.request_hash != request_hash {
        Decision::Claimed(Claimed::Mismatch)
    } else if let Some(response) = &record.response {
        Decision::Claimed(Claimed::Replay(response.clone()))
    } else if record.locked_until > now {
        let wait = record.locked_until.duration_since(now).as_secs().max(1) as u64;
        Decision::Claimed(Claimed::InProgress {
            retry_after: Duration::from_secs(wait),
        })
    } else {
        Decision::Claimed(Claimed::Resume {
            event_ids: record.event_ids.clone(),
            received_at: record.received_at,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Treat as absent: overwrite with the new claim.
    Expired,
    Claimed(Claimed),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("idempotency store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("idempotency store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// What the store holds cannot be read as it was written (a bug, or a hand edit).
    #[error("idempotency store: {0}")]
    Unreadable(String),
    /// The store did not answer within the deadline.
    #[error("idempotency store: no answer within {0:?}")]
    TimedOut(std::time::Duration),
}

impl StoreError {
    /// The store did not answer within `deadline`.
    pub fn timed_out(deadline: std::time::Duration) -> Self {
        Self::TimedOut(deadline)
    }
}

#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims the key, or says what was recorded for it.
    async fn claim(&self, claim: &Claim) -> Result<Claimed, StoreError>;
    /// Records the answer of a finished request.
    async fn complete(
        &self,
        principal: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError>;
    /// Ends the lock `attempt` holds after it failed, so a retry may resume at once.
    async fn release(&self, principal: &str, key: &str, attempt: Uuid) -> Result<(), StoreError>;
    /// Deletes records that expired before `now`; returns how many.
    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError>;
}

/// `duration` after `now`, or the end of time for a duration past it.
fn after(now: Timestamp, duration: Duration) -> Timestamp {
    now.checked_add(duration).unwrap_or(Timestamp::MAX)
}

fn new_record(claim: &Claim, now: Timestamp) -> Record {
    Record {
        attempt: claim.attempt,
        request_hash: claim.request_hash.clone(),
        event_ids: claim.event_ids.clone(),
        received_at: claim.received_at,
        response: None,
        locked_until: after(now, claim.lease),
        expires_at: after(now, claim.ttl),
    }
}

/// Keys in process memory: for tests and single-process runs without a database.
#[derive(Debug, Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<(String, String), Record>>,
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(&self, claim: &Claim) -> Result<Claimed, StoreError> {
        let now = Timestamp::now();
        let mut records = self.records.lock().expect("store lock");
        let slot = (claim.principal.clone(), claim.key.clone());
        let decision = records
            .get(&slot)
            .map(|r| decide(r, &claim.request_hash, now));
        Ok(match decision {
            None | Some(Decision::Expired) => {
                records.insert(slot, new_record(claim, now));
                Claimed::New
            }
            Some(Decision::Claimed(claimed)) => {
                if let Claimed::Resume { .. } = claimed {
                    let record = records.get_mut(&slot).expect("present");
                    record.locked_until = after(now, claim.lease);
                    record.attempt = claim.attempt;
                }
                claimed
            }
        })
    }

    async fn complete(
        &self,
        principal: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        let mut records = self.records.lock().expect("store lock");
        if let Some(record) = records.get_mut(&(principal.to_string(), key.to_string())) {
            record.response.get_or_insert_with(|| response.clone());
        }
        Ok(())
    }

    async fn release(&self, principal: &str, key: &str, attempt: Uuid) -> Result<(), StoreError> {
        let mut records = self.records.lock().expect("store lock");
        if let Some(record) = records.get_mut(&(principal.to_string(), key.to_string()))
            && record.attempt == attempt
            && record.response.is_none()
        {
            record.locked_until = Timestamp::now();
        }
        Ok(())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut records = self.records.lock().expect("store lock");
        let before = records.len();
        records.retain(|_, record| record.expires_at > now);
        Ok((before - records.len()) as u64)
    }
}

/// Keys in PostgreSQL or SQLite, shared by every ingress replica on the same database.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Database,
}

impl SqlStore {
    /// Connects and applies this crate's migrations.
    pub async fn new(db: Database) -> Result<Self, StoreError> {
        let postgres = sqlx::migrate!("./migrations/postgres");
        let sqlite = sqlx::migrate!("./migrations/sqlite");
        platform::db::migrate(&db, postgres, sqlite).await?;
        Ok(Self { db })
    }
}

/// Times are stored as microseconds since the epoch (`*_us`), as every table stores them.
type Row = (
    Uuid,
    String,
    String,
    i64,
    Option<i32>,
    Option<String>,
    i64,
    i64,
);

fn row_to_record(row: Row) -> Result<Record, StoreError> {
    let (attempt, request_hash, ids, received_at, status, body, locked_until, expires_at) = row;
    let event_ids: Vec<Uuid> = serde_json::from_str(&ids)
        .map_err(|err| StoreError::Unreadable(format!("stored event ids unreadable: {err}")))?;
    let response = match (status, body) {
        (Some(status), Some(body)) => Some(StoredResponse {
            status: status as u16,
            body,
        }),
        _ => None,
    };
    Ok(Record {
        attempt,
        request_hash,
        event_ids,
        received_at: clock::at(received_at),
        response,
        locked_until: clock::at(locked_until),
        expires_at: clock::at(expires_at),
    })
}

/// The claim transaction, written once for both databases (they differ in the row lock:
/// PostgreSQL needs `FOR UPDATE`, SQLite serialises writers anyway).
macro_rules! sql_claim {
    ($pool:expr, $claim:expr, $select:expr) => {{
        let claim = $claim;
        let now = Timestamp::now();
        let record = new_record(claim, now);
        let ids = serde_json::to_string(&record.event_ids).expect("uuids serialise");
        let mut tx = $pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (id, principal, idempotency_key, request_hash, event_ids, \
             received_at_us, locked_until_us, expires_at_us, attempt_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (principal, idempotency_key) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(&claim.principal)
        .bind(&claim.key)
        .bind(&record.request_hash)
        .bind(&ids)
        .bind(record.received_at.as_microsecond())
        .bind(record.locked_until.as_microsecond())
        .bind(record.expires_at.as_microsecond())
        .bind(claim.attempt)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            tx.commit().await?;
            return Ok(Claimed::New);
        }
        let row: Row = sqlx::query_as($select)
            .bind(&claim.principal)
            .bind(&claim.key)
            .fetch_one(&mut *tx)
            .await?;
        let stored = row_to_record(row)?;
        let claimed = match decide(&stored, &claim.request_hash, now) {
            Decision::Expired => {
                sqlx::query(
                    "UPDATE idempotency_keys SET request_hash = $3, event_ids = $4, received_at_us = $5, \
                     response_status = NULL, response_body = NULL, locked_until_us = $6, expires_at_us = $7, \
                     updated_at_us = $8, attempt_id = $9 WHERE principal = $1 AND idempotency_key = $2",
                )
                .bind(&claim.principal)
                .bind(&claim.key)
                .bind(&record.request_hash)
                .bind(&ids)
                .bind(record.received_at.as_microsecond())
                .bind(record.locked_until.as_microsecond())
                .bind(record.expires_at.as_microsecond())
                .bind(now.as_microsecond())
                .bind(claim.attempt)
                .execute(&mut *tx)
                .await?;
                Claimed::New
            }
            Decision::Claimed(claimed @ Claimed::Resume { .. }) => {
                sqlx::query(
                    "UPDATE idempotency_keys SET locked_until_us = $3, updated_at_us = $4, attempt_id = $5 \
                     WHERE principal = $1 AND idempotency_key = $2",
                )
                .bind(&claim.principal)
                .bind(&claim.key)
                .bind(record.locked_until.as_microsecond())
                .bind(now.as_microsecond())
                .bind(claim.attempt)
                .execute(&mut *tx)
                .await?;
                claimed
            }
            Decision::Claimed(claimed) => claimed,
        };
        tx.commit().await?;
        Ok(claimed)
    }};
}

const SELECT: &str = "SELECT attempt_id, request_hash, event_ids, received_at_us, response_status, response_body, \
     locked_until_us, expires_at_us FROM idempotency_keys WHERE principal = $1 AND idempotency_key = $2";
const SELECT_FOR_UPDATE: &str = "SELECT attempt_id, request_hash, event_ids, received_at_us, response_status, \
     response_body, locked_until_us, expires_at_us FROM idempotency_keys \
     WHERE principal = $1 AND idempotency_key = $2 FOR UPDATE";

#[async_trait]
impl IdempotencyStore for SqlStore {
    async fn claim(&self, claim: &Claim) -> Result<Claimed, StoreError> {
        match &self.db {
            Database::Postgres(pool) => sql_claim!(pool, claim, SELECT_FOR_UPDATE),
            Database::Sqlite(pool) => sql_claim!(pool, claim, SELECT),
        }
    }

    async fn complete(
        &self,
        principal: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), StoreError> {
        // The first completion wins: a stale attempt that also succeeded published the same ids.
        let sql = "UPDATE idempotency_keys SET response_status = $3, response_body = $4, \
                   updated_at_us = $5 WHERE principal = $1 AND idempotency_key = $2 \
                   AND response_status IS NULL";
        let now = clock::now_us();
        let status = i32::from(response.status);
        with_pool!(&self.db, pool => {
            sqlx::query(sql)
                .bind(principal)
                .bind(key)
                .bind(status)
                .bind(&response.body)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn release(&self, principal: &str, key: &str, attempt: Uuid) -> Result<(), StoreError> {
        let sql = "UPDATE idempotency_keys SET locked_until_us = $3, updated_at_us = $3 \
                   WHERE principal = $1 AND idempotency_key = $2 AND attempt_id = $4 \
                   AND response_status IS NULL";
        let now = clock::now_us();
        with_pool!(&self.db, pool => {
            sqlx::query(sql).bind(principal).bind(key).bind(now).bind(attempt).execute(pool).await?;
        });
        Ok(())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let sql = "DELETE FROM idempotency_keys WHERE expires_at_us < $1";
        let removed = with_pool!(&self.db, pool => {
            sqlx::query(sql).bind(now.as_microsecond()).execute(pool).await?.rows_affected()
        });
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hash: &str, now: Timestamp) -> Record {
        Record {
            attempt: Uuid::nil(),
            request_hash: hash.into(),
            event_ids: vec![Uuid::nil()],
            received_at: now,
            response: None,
            locked_until: now + Duration::from_secs(10),
            expires_at: now + Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_finished_request_is_replayed() {
        let now = Timestamp::now();
        let mut r = record("h", now);
        r.response = Some(StoredResponse {
            status: 202,
            body: "{}".into(),
        });
        assert!(matches!(
            decide(&r, "h", now),
            Decision::Claimed(Claimed::Replay(_))
        ));
    }

    #[test]
    fn another_body_with_the_same_key_is_a_mismatch() {
        let now = Timestamp::now();
        assert_eq!(
            decide(&record("h", now), "other", now),
            Decision::Claimed(Claimed::Mismatch)
        );
    }

    #[test]
    fn a_locked_claim_is_in_progress_and_an_expired_lock_resumes_with_the_same_ids() {
        let now = Timestamp::now();
        let r = record("h", now);
        assert!(matches!(
            decide(&r, "h", now),
            Decision::Claimed(Claimed::InProgress { .. })
        ));
        let later = now + Duration::from_secs(11);
        assert_eq!(
            decide(&r, "h", later),
            Decision::Claimed(Claimed::Resume {
                event_ids: vec![Uuid::nil()],
                received_at: now
            })
        );
    }

    #[test]
    fn an_expired_record_is_as_good_as_absent_whatever_its_body() {
        let now = Timestamp::now();
        let r = record("h", now);
        assert_eq!(
            decide(&r, "other", now + Duration::from_secs(3601)),
            Decision::Expired
        );
    }
}
