//! The service's own state: its projection of users and its delivery log. PostgreSQL when
//! several instances share it, the embedded SQLite file for one; same SQL for both.

use async_trait::async_trait;
use platform::db::Database;
use platform::with_pool;
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{Category, Channel, DeliveryKey, Intent, Outcome, PromotionalHistory, Status};
pub use crate::domain::{Device, UserRecord};
use crate::parked::Parked;
use crate::preferences::Preferences;

/// A database failure: transient for the consumer (it retries in place).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("notification store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("notification store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// What the store holds cannot be read as it was written (a bug, or a hand edit).
    #[error("notification store: {0}")]
    Unreadable(String),
    /// Another writer changed the row between two statements: the next attempt reads it anew.
    #[error("notification store: {0}")]
    Raced(&'static str),
}

/// One event of the users topic, as a change to the projection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    Registered(UserRecord),
    /// Only the fields given change.
    Updated {
        user_id: String,
        email: Option<String>,
        phone: Option<String>,
        display_name: Option<String>,
        locale: Option<String>,
        time_zone: Option<String>,
    },
    /// Contact details are dropped; the row stays so later events find the user gone.
    Deleted {
        user_id: String,
    },
    /// As deleted, and everything else kept about them goes too: devices, preferences, and
    /// the addresses and contents of their delivery log (whose keys stay, so a redelivered
    /// event still finds what it did).
    Erased {
        user_id: String,
    },
}

impl UserChange {
    /// The change an event makes, if it is a users-topic event (pure).
    pub fn from_event(event_type: &str, data: &serde_json::Value) -> Option<Self> {
        // A field whose subject was erased is no value at all.
        let text = |field: &str| {
            data.get(field)
                .and_then(|v| v.as_str())
                .filter(|v| *v != platform::privacy::ERASED)
                .map(str::to_string)
        };
        let user_id = text("user_id")?;
        match event_type {
            "user.registered" => Some(Self::Registered(UserRecord {
                user_id,
                email: text("email"),
                phone: text("phone"),
                display_name: text("display_name"),
                locale: text("locale").unwrap_or_else(|| "en".into()),
                time_zone: text("time_zone").unwrap_or_else(|| "UTC".into()),
                deleted: false,
            })),
            "user.profile_updated" => Some(Self::Updated {
                user_id,
                email: text("email"),
                phone: text("phone"),
                display_name: text("display_name"),
                locale: text("locale"),
                time_zone: text("time_zone"),
            }),
            "user.deleted" => Some(Self::Deleted { user_id }),
            platform::privacy::ERASURE_EVENT => Some(Self::Erased { user_id }),
            _ => None,
        }
    }
}

/// A row of the delivery log, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DeliveryRow {
    pub event_id: String,
    pub channel: String,
    pub recipient: String,
    pub user_id: Option<String>,
    pub address: String,
    pub event_type: String,
    pub template: String,
    pub category: String,
    pub status: String,
    pub attempts: i32,
    pub provider: Option<String>,
    pub detail: Option<String>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

/// A deferred delivery, claimed by the release loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub intent: Intent,
    /// What [`NotifyStore::defer`] stored.
    pub payload: String,
    /// Counting this one.
    pub attempt: i32,
    /// An earlier claim stopped before its outcome was recorded.
    pub outcome_unknown: bool,
}

/// Which rows of the delivery log to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryFilter {
    Event(Uuid),
    User(String),
}

/// What the log says about a delivery about to be attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begun {
    /// Intent recorded: send now. `attempt` counts from 1; `outcome_unknown` means an
    /// earlier attempt recorded intent and no outcome (a crash in between): the message may
    /// already have left, and sending again may repeat it.
    Send { attempt: i32, outcome_unknown: bool },
    /// Already settled: send nothing.
    Settled(Status),
}

#[async_trait]
pub trait NotifyStore: Send + Sync {
    /// Applies changes of the users topic, in order, in one transaction.
    async fn apply_users(&self, changes: &[UserChange]) -> Result<(), StoreError>;
    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Records who placed each order: `(order_id, customer_id)`.
    async fn apply_orders(&self, orders: &[(String, String)]) -> Result<(), StoreError>;
    async fn order_customer(&self, order_id: &str) -> Result<Option<String>, StoreError>;
    /// Users not deleted who opted in to promotional messages on any of `channels`, by id.
    async fn opted_in(&self, channels: &[Channel]) -> Result<Vec<String>, StoreError>;
    /// Registers (or re-registers, active again) a device for a user; a token moves to the
    /// user who registers it last.
    async fn register_device(&self, device: &Device) -> Result<(), StoreError>;
    /// Removes a user's device; whether it was theirs.
    async fn remove_device(&self, user_id: &str, token: &str) -> Result<bool, StoreError>;
    /// The user's active devices.
    async fn devices(&self, user_id: &str) -> Result<Vec<Device>, StoreError>;
    async fn deactivate_device(&self, token: &str) -> Result<(), StoreError>;
    async fn preferences(&self, user_id: &str) -> Result<Preferences, StoreError>;
    async fn set_preferences(
        &self,
        user_id: &str,
        preferences: &Preferences,
    ) -> Result<(), StoreError>;
    /// The user's promotional messages since `since_us`, and every one of `event_id`.
    async fn promotional_history(
        &self,
        user_id: &str,
        event_id: Uuid,
        since_us: i64,
    ) -> Result<PromotionalHistory, StoreError>;
    /// Records a delivery held until `not_before_us`, with what to send (unless one is recorded
    /// already).
    async fn defer(
        &self,
        intent: &Intent,
        payload: &str,
        not_before_us: i64,
        now_us: i64,
    ) -> Result<(), StoreError>;
    /// Claims up to `limit` deferred deliveries that are due, and claimed ones whose outcome
    /// never came (stale since `stale_us`): each moves to `sending`, attempts + 1.
    async fn claim_due(
        &self,
        now_us: i64,
        stale_us: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError>;
    /// Holds a claimed delivery again until `not_before_us` (a transient failure).
    async fn reschedule(
        &self,
        intent: &Intent,
        not_before_us: i64,
        detail: &str,
        now_us: i64,
    ) -> Result<(), StoreError>;
    /// Where one delivery stands, if it was ever recorded.
    async fn status(&self, key: &DeliveryKey) -> Result<Option<Status>, StoreError>;
    /// Records the intent to send (or finds the delivery settled).
    async fn begin(&self, intent: &Intent, now_us: i64) -> Result<Begun, StoreError>;
    /// Records the outcome of an attempt.
    async fn finish(
        &self,
        intent: &Intent,
        status: Status,
        provider: Option<&str>,
        detail: Option<&str>,
        now_us: i64,
    ) -> Result<(), StoreError>;
    /// Records a delivery decided without sending (skipped), unless one is settled already.
    /// Deliveries of the same event, channel and user that were being tried are settled so
    /// too: the live message of a user no longer connected, or the pushes to the devices of a
    /// user deleted since.
    async fn settle(
        &self,
        intent: &Intent,
        status: Status,
        detail: &str,
        now_us: i64,
    ) -> Result<(), StoreError>;
    /// Sets an event aside until its recipient is known (once: parking it again keeps the
    /// first).
    async fn park(&self, parked: &Parked) -> Result<(), StoreError>;
    /// Parked events that may run now: their user is known, or they were received before
    /// `expired_us`; at most `limit`, oldest first.
    async fn parked_ready(&self, expired_us: i64, limit: u32) -> Result<Vec<Parked>, StoreError>;
    async fn unpark(&self, event_id: &str) -> Result<(), StoreError>;
    /// Deletes the records of deleted users and of deactivated devices last changed before
    /// `before_us`; how many rows.
    async fn purge_soft_deleted(&self, before_us: i64) -> Result<u64, StoreError>;
    /// Settled deliveries whose outcome is not published yet, oldest first.
    async fn unpublished_outcomes(&self, limit: u32) -> Result<Vec<Outcome>, StoreError>;
    /// Records these outcomes as published (a row that changed since keeps its new one).
    async fn outcomes_published(&self, outcomes: &[Outcome]) -> Result<(), StoreError>;
    /// Newest first.
    async fn list(
        &self,
        filter: &DeliveryFilter,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>, StoreError>;
}

pub struct SqlStore {
    db: Database,
}

impl SqlStore {
    /// Records outcomes as published, by (event id, channel, recipient, the `updated_at_us`
    /// published): a row that changed since keeps its new outcome to publish.
    async fn mark_published(
        &self,
        rows: &[(String, String, String, i64)],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let sql = "UPDATE notify_deliveries SET outcome_published_us = $4 \
             WHERE event_id = $1 AND channel = $2 AND recipient = $3 AND updated_at_us = $4";
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for (event_id, channel, recipient, at) in rows {
                sqlx::query(sql)
                    .bind(event_id)
                    .bind(channel)
                    .bind(recipient)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Connects and applies this service's migrations.
    pub async fn new(db: Database) -> Result<Self, StoreError> {
        let postgres = sqlx::migrate!("./migrations/postgres");
        let sqlite = sqlx::migrate!("./migrations/sqlite");
        platform::db::migrate(&db, postgres, sqlite).await?;
        Ok(Self { db })
    }
}

const UPSERT_USER: &str = "INSERT INTO notify_users \
     (user_id, email, phone, display_name, locale, time_zone, deleted, updated_at_us) \
     VALUES ($1, $2, $3, $4, $5, $6, FALSE, $7) \
     ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, phone = excluded.phone, \
     display_name = excluded.display_name, locale = excluded.locale, \
     time_zone = excluded.time_zone, deleted = FALSE, updated_at_us = excluded.updated_at_us";
const UPDATE_USER: &str = "UPDATE notify_users SET email = COALESCE($2, email), \
     phone = COALESCE($3, phone), display_name = COALESCE($4, display_name), \
     locale = COALESCE($5, locale), time_zone = COALESCE($6, time_zone), updated_at_us = $7 \
     WHERE user_id = $1";
const DELETE_USER: &str = "INSERT INTO notify_users (user_id, deleted, updated_at_us) \
     VALUES ($1, TRUE, $2) \
     ON CONFLICT (user_id) DO UPDATE SET email = NULL, phone = NULL, display_name = NULL, \
     deleted = TRUE, updated_at_us = excluded.updated_at_us";
/// What an erasure removes beside the user's row (see [`UserChange::Erased`]). Events
/// parked for them stay: they hold what the log holds (personal fields encrypted), and run
/// once more to be skipped as "user deleted", as every event for a deleted user is.
const ERASE_USER: [&str; 3] = [
    "DELETE FROM notify_devices WHERE user_id = $1",
    "DELETE FROM notify_preferences WHERE user_id = $1",
    "UPDATE notify_deliveries SET address = '[erased]', payload = NULL, detail = NULL \
     WHERE user_id = $1",
];
const SELECT_USER: &str = "SELECT user_id, email, phone, display_name, locale, time_zone, deleted \
     FROM notify_users WHERE user_id = $1";
const INSERT_DELIVERY: &str = "INSERT INTO notify_deliveries \
     (event_id, channel, recipient, user_id, address, event_type, template, category, status, \
      attempts, created_at_us, updated_at_us) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) \
     ON CONFLICT (event_id, channel, recipient) DO NOTHING";
const SELECT_DELIVERY: &str = "SELECT status, attempts FROM notify_deliveries \
     WHERE event_id = $1 AND channel = $2 AND recipient = $3";
const RESTART_DELIVERY: &str = "UPDATE notify_deliveries \
     SET status = 'sending', attempts = attempts + 1, updated_at_us = $5 \
     WHERE event_id = $1 AND channel = $2 AND recipient = $3 AND status = $4";
const FINISH_DELIVERY: &str = "UPDATE notify_deliveries \
     SET status = $4, provider = $5, detail = $6, updated_at_us = $7 \
     WHERE event_id = $1 AND channel = $2 AND recipient = $3";
const COLUMNS: &str = "event_id, channel, recipient, user_id, address, event_type, template, \
     category, status, attempts, provider, detail, created_at_us, updated_at_us";

/// The preference switch a channel follows (live follows push).
fn preference_channel(channel: Channel) -> Channel {
    match channel {
        Channel::Live => Channel::Push,
        other => other,
    }
}

use platform::clock::now_us;

#[async_trait]
impl NotifyStore for SqlStore {
    async fn unpublished_outcomes(&self, limit: u32) -> Result<Vec<Outcome>, StoreError> {
        // The predicate is the partial index's, word for word, so both databases use it.
        let sql = "SELECT event_id, channel, recipient, user_id, event_type, status, attempts, \
             provider, updated_at_us FROM notify_deliveries \
             WHERE status IN ('sent', 'failed', 'skipped', 'dead') \
             AND (outcome_published_us IS NULL OR outcome_published_us <> updated_at_us) \
             ORDER BY updated_at_us LIMIT $1";
        type Row = (
            String,
            String,
            String,
            Option<String>,
            String,
            String,
            i32,
            Option<String>,
            i64,
        );
        let rows: Vec<Row> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(i64::from(limit)).fetch_all(pool).await?
        });
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for (event_id, channel, recipient, user_id, event_type, status, attempts, provider, at) in
            rows
        {
            let read = (
                Uuid::try_parse(&event_id),
                Channel::parse(&channel),
                Status::parse(&status),
            );
            let (Ok(id), Some(channel_read), Some(status)) = read else {
                // Written by a version that knows a channel or status this one does not:
                // set aside, so it cannot hold back the outcomes after it.
                tracing::warn!(%event_id, %channel, %status, "an outcome this version cannot read is not published");
                unreadable.push((event_id, channel, recipient, at));
                continue;
            };
            outcomes.push(Outcome {
                key: DeliveryKey {
                    event_id: id,
                    channel: channel_read,
                    recipient,
                },
                user_id,
                event_type,
                status,
                attempts,
                provider,
                settled_at_us: at,
            });
        }
        self.mark_published(&unreadable).await?;
        Ok(outcomes)
    }

    async fn outcomes_published(&self, outcomes: &[Outcome]) -> Result<(), StoreError> {
        let rows: Vec<(String, String, String, i64)> = outcomes
            .iter()
            .map(|o| {
                (
                    o.key.event_id.to_string(),
                    o.key.channel.as_str().to_string(),
                    o.key.recipient.clone(),
                    o.settled_at_us,
                )
            })
            .collect();
        self.mark_published(&rows).await
    }

    async fn park(&self, parked: &Parked) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO notify_parked (event_id, user_id, received_at_us, event) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(&parked.event_id)
            .bind(&parked.user_id)
            .bind(parked.received_at_us)
            .bind(&parked.event)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    async fn parked_ready(&self, expired_us: i64, limit: u32) -> Result<Vec<Parked>, StoreError> {
        let rows: Vec<(String, String, i64, String)> = with_pool!(&self.db, pool => {
            sqlx::query_as(
                "SELECT p.event_id, p.user_id, p.received_at_us, p.event FROM notify_parked p \
                 WHERE p.received_at_us < $1 \
                 OR EXISTS (SELECT 1 FROM notify_users u WHERE u.user_id = p.user_id) \
                 ORDER BY p.received_at_us LIMIT $2",
            )
            .bind(expired_us)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(event_id, user_id, received_at_us, event)| Parked {
                event_id,
                user_id,
                received_at_us,
                event,
            })
            .collect())
    }

    async fn unpark(&self, event_id: &str) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query("DELETE FROM notify_parked WHERE event_id = $1")
                .bind(event_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn purge_soft_deleted(&self, before_us: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        for sql in [
            "DELETE FROM notify_users WHERE deleted = TRUE AND updated_at_us < $1",
            "DELETE FROM notify_devices WHERE active = FALSE AND updated_at_us < $1",
        ] {
            removed += with_pool!(&self.db, pool => {
                sqlx::query(sql).bind(before_us).execute(pool).await?.rows_affected()
            });
        }
        Ok(removed)
    }

    async fn apply_users(&self, changes: &[UserChange]) -> Result<(), StoreError> {
        let at = now_us();
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for change in changes {
                match change {
                    UserChange::Registered(user) => {
                        sqlx::query(UPSERT_USER)
                            .bind(&user.user_id)
                            .bind(&user.email)
                            .bind(&user.phone)
                            .bind(&user.display_name)
                            .bind(&user.locale)
                            .bind(&user.time_zone)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                    }
                    UserChange::Updated { user_id, email, phone, display_name, locale, time_zone } => {
                        sqlx::query(UPDATE_USER)
                            .bind(user_id)
                            .bind(email)
                            .bind(phone)
                            .bind(display_name)
                            .bind(locale)
                            .bind(time_zone)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                    }
                    UserChange::Deleted { user_id } => {
                        sqlx::query(DELETE_USER)
                            .bind(user_id)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                    }
                    UserChange::Erased { user_id } => {
                        sqlx::query(DELETE_USER)
                            .bind(user_id)
                            .bind(at)
                            .execute(&mut *tx)
                            .await?;
                        for sql in ERASE_USER {
                            sqlx::query(sql).bind(user_id).execute(&mut *tx).await?;
                        }
                    }
                }
            }
            tx.commit().await?;
        });
        if changes
            .iter()
            .any(|c| matches!(c, UserChange::Erased { .. }))
        {
            self.db.forget_deleted();
        }
        Ok(())
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as(SELECT_USER).bind(user_id).fetch_optional(pool).await?
        }))
    }

    async fn apply_orders(&self, orders: &[(String, String)]) -> Result<(), StoreError> {
        let sql = "INSERT INTO notify_orders (order_id, customer_id, updated_at_us) \
             VALUES ($1, $2, $3) ON CONFLICT (order_id) DO UPDATE \
             SET customer_id = excluded.customer_id, updated_at_us = excluded.updated_at_us";
        let at = now_us();
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for (order_id, customer_id) in orders {
                sqlx::query(sql)
                    .bind(order_id)
                    .bind(customer_id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn order_customer(&self, order_id: &str) -> Result<Option<String>, StoreError> {
        let sql = "SELECT customer_id FROM notify_orders WHERE order_id = $1";
        let row: Option<(String,)> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(order_id).fetch_optional(pool).await?
        });
        Ok(row.map(|(customer,)| customer))
    }

    async fn opted_in(&self, channels: &[Channel]) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT p.user_id, p.promotional_channels FROM notify_preferences p \
             JOIN notify_users u ON u.user_id = p.user_id \
             WHERE NOT u.deleted AND p.promotional_channels <> '' ORDER BY p.user_id";
        let rows: Vec<(String, String)> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql).fetch_all(pool).await?
        });
        let wanted: Vec<String> = channels
            .iter()
            .map(|&c| format!(",{},", preference_channel(c).as_str()))
            .collect();
        Ok(rows
            .into_iter()
            .filter(|(_, on)| wanted.iter().any(|c| on.contains(c.as_str())))
            .map(|(user_id, _)| user_id)
            .collect())
    }

    async fn register_device(&self, device: &Device) -> Result<(), StoreError> {
        let sql = "INSERT INTO notify_devices (token, user_id, platform, active, updated_at_us) \
             VALUES ($1, $2, $3, TRUE, $4) \
             ON CONFLICT (token) DO UPDATE SET user_id = excluded.user_id, \
             platform = excluded.platform, active = TRUE, updated_at_us = excluded.updated_at_us";
        with_pool!(&self.db, pool => {
            sqlx::query(sql)
                .bind(&device.token)
                .bind(&device.user_id)
                .bind(&device.platform)
                .bind(now_us())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn remove_device(&self, user_id: &str, token: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM notify_devices WHERE token = $1 AND user_id = $2";
        let removed = with_pool!(&self.db, pool => {
            sqlx::query(sql).bind(token).bind(user_id).execute(pool).await?.rows_affected()
        });
        Ok(removed == 1)
    }

    async fn devices(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        let sql = "SELECT token, user_id, platform, active FROM notify_devices \
             WHERE user_id = $1 AND active ORDER BY token";
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(user_id).fetch_all(pool).await?
        }))
    }

    async fn deactivate_device(&self, token: &str) -> Result<(), StoreError> {
        let sql = "UPDATE notify_devices SET active = FALSE, updated_at_us = $2 WHERE token = $1";
        with_pool!(&self.db, pool => {
            sqlx::query(sql).bind(token).bind(now_us()).execute(pool).await?;
        });
        Ok(())
    }

    async fn preferences(&self, user_id: &str) -> Result<Preferences, StoreError> {
        let sql = "SELECT document FROM notify_preferences WHERE user_id = $1";
        let document: Option<(String,)> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(user_id).fetch_optional(pool).await?
        });
        match document {
            None => Ok(Preferences::default()),
            Some((text,)) => serde_json::from_str(&text).map_err(|e| {
                StoreError::Unreadable(format!("preferences of {user_id} unreadable: {e}"))
            }),
        }
    }

    async fn set_preferences(
        &self,
        user_id: &str,
        preferences: &Preferences,
    ) -> Result<(), StoreError> {
        let sql = "INSERT INTO notify_preferences \
             (user_id, document, promotional_channels, updated_at_us) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE \
             SET document = excluded.document, \
             promotional_channels = excluded.promotional_channels, \
             updated_at_us = excluded.updated_at_us";
        let document = serde_json::to_string(preferences)
            .map_err(|e| StoreError::Unreadable(format!("preferences: {e}")))?;
        let promotional: String = crate::preferences::SWITCHABLE
            .iter()
            .filter(|&&c| preferences.allows(Category::Promotional, c))
            .map(|c| format!(",{}", c.as_str()))
            .collect();
        let promotional = if promotional.is_empty() {
            promotional
        } else {
            promotional + ","
        };
        with_pool!(&self.db, pool => {
            sqlx::query(sql)
                .bind(user_id)
                .bind(&document)
                .bind(&promotional)
                .bind(now_us())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn promotional_history(
        &self,
        user_id: &str,
        event_id: Uuid,
        since_us: i64,
    ) -> Result<PromotionalHistory, StoreError> {
        // The event's own rows count whenever they were made: they decide its redelivery.
        let sql = "SELECT DISTINCT event_id, channel FROM notify_deliveries \
             WHERE user_id = $1 AND category = 'promotional' \
             AND status IN ('sending', 'retrying', 'sent', 'deferred') \
             AND (created_at_us >= $2 OR event_id = $3)";
        let rows: Vec<(String, String)> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql)
                .bind(user_id)
                .bind(since_us)
                .bind(event_id.to_string())
                .fetch_all(pool)
                .await?
        });
        Ok(PromotionalHistory {
            messages: rows
                .iter()
                .filter_map(|(event, channel)| {
                    Some((Uuid::parse_str(event).ok()?, Channel::parse(channel)?))
                })
                .collect(),
        })
    }

    async fn defer(
        &self,
        intent: &Intent,
        payload: &str,
        not_before_us: i64,
        now_us: i64,
    ) -> Result<(), StoreError> {
        let key = &intent.key;
        let sql = "INSERT INTO notify_deliveries \
             (event_id, channel, recipient, user_id, address, event_type, template, category, \
              status, attempts, not_before_us, payload, created_at_us, updated_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'deferred', 0, $9, $10, $11, $11) \
             ON CONFLICT (event_id, channel, recipient) DO NOTHING";
        with_pool!(&self.db, pool => {
            sqlx::query(sql)
                .bind(key.event_id.to_string())
                .bind(key.channel.as_str())
                .bind(&key.recipient)
                .bind(&intent.user_id)
                .bind(&intent.address)
                .bind(&intent.event_type)
                .bind(&intent.template)
                .bind(intent.category.as_str())
                .bind(not_before_us)
                .bind(payload)
                .bind(now_us)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn claim_due(
        &self,
        now_us: i64,
        stale_us: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        let sql = "SELECT event_id, channel, recipient, user_id, address, event_type, template, \
             category, status, attempts, payload, updated_at_us FROM notify_deliveries \
             WHERE payload IS NOT NULL AND ((status = 'deferred' AND not_before_us <= $1) \
             OR (status IN ('sending', 'retrying') AND updated_at_us < $2)) \
             ORDER BY not_before_us LIMIT $3";
        type Row = (
            String,
            String,
            String,
            Option<String>,
            String,
            String,
            String,
            String,
            String,
            i32,
            String,
            i64,
        );
        let rows: Vec<Row> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql)
                .bind(now_us)
                .bind(stale_us)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        let claim = "UPDATE notify_deliveries SET status = 'sending', attempts = attempts + 1, \
             updated_at_us = $4 WHERE event_id = $1 AND channel = $2 AND recipient = $3 \
             AND status = $5 AND updated_at_us = $6";
        let mut claimed = Vec::new();
        for (
            event_id,
            channel,
            recipient,
            user_id,
            address,
            event_type,
            template,
            category,
            status,
            attempts,
            payload,
            updated,
        ) in rows
        {
            let (Ok(event_id), Some(channel), Some(category)) = (
                Uuid::try_parse(&event_id),
                Channel::parse(&channel),
                Category::parse(&category),
            ) else {
                continue;
            };
            // Another instance may claim the same row: only one update wins.
            let won = with_pool!(&self.db, pool => {
                sqlx::query(claim)
                    .bind(event_id.to_string())
                    .bind(channel.as_str())
                    .bind(&recipient)
                    .bind(now_us)
                    .bind(&status)
                    .bind(updated)
                    .execute(pool)
                    .await?
                    .rows_affected()
            });
            if won != 1 {
                continue;
            }
            claimed.push(Claimed {
                intent: Intent {
                    key: DeliveryKey {
                        event_id,
                        channel,
                        recipient,
                    },
                    user_id,
                    address,
                    event_type,
                    template,
                    category,
                },
                payload,
                attempt: attempts + 1,
                outcome_unknown: status == Status::Sending.as_str(),
            });
        }
        Ok(claimed)
    }

    async fn reschedule(
        &self,
        intent: &Intent,
        not_before_us: i64,
        detail: &str,
        now_us: i64,
    ) -> Result<(), StoreError> {
        let key = &intent.key;
        let sql = "UPDATE notify_deliveries SET status = 'deferred', not_before_us = $4, \
             detail = $5, updated_at_us = $6 \
             WHERE event_id = $1 AND channel = $2 AND recipient = $3";
        with_pool!(&self.db, pool => {
            sqlx::query(sql)
                .bind(key.event_id.to_string())
                .bind(key.channel.as_str())
                .bind(&key.recipient)
                .bind(not_before_us)
                .bind(detail)
                .bind(now_us)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn status(&self, key: &DeliveryKey) -> Result<Option<Status>, StoreError> {
        let row: Option<(String, i32)> = with_pool!(&self.db, pool => {
            sqlx::query_as(SELECT_DELIVERY)
                .bind(key.event_id.to_string())
                .bind(key.channel.as_str())
                .bind(&key.recipient)
                .fetch_optional(pool)
                .await?
        });
        row.map(|(status, _)| {
            Status::parse(&status).ok_or_else(|| {
                StoreError::Unreadable(format!("unknown delivery status {status:?}"))
            })
        })
        .transpose()
    }

    async fn begin(&self, intent: &Intent, now_us: i64) -> Result<Begun, StoreError> {
        let key = &intent.key;
        let event_id = key.event_id.to_string();
        let inserted = with_pool!(&self.db, pool => {
            sqlx::query(INSERT_DELIVERY)
                .bind(&event_id)
                .bind(key.channel.as_str())
                .bind(&key.recipient)
                .bind(&intent.user_id)
                .bind(&intent.address)
                .bind(&intent.event_type)
                .bind(&intent.template)
                .bind(intent.category.as_str())
                .bind(Status::Sending.as_str())
                .bind(1_i32)
                .bind(now_us)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if inserted == 1 {
            return Ok(Begun::Send {
                attempt: 1,
                outcome_unknown: false,
            });
        }
        let (status, attempts): (String, i32) = with_pool!(&self.db, pool => {
            sqlx::query_as(SELECT_DELIVERY)
                .bind(&event_id)
                .bind(key.channel.as_str())
                .bind(&key.recipient)
                .fetch_one(pool)
                .await?
        });
        let status = Status::parse(&status)
            .ok_or_else(|| StoreError::Unreadable(format!("unknown delivery status {status:?}")))?;
        if status.is_settled() {
            return Ok(Begun::Settled(status));
        }
        let restarted = with_pool!(&self.db, pool => {
            sqlx::query(RESTART_DELIVERY)
                .bind(&event_id)
                .bind(key.channel.as_str())
                .bind(&key.recipient)
                .bind(status.as_str())
                .bind(now_us)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if restarted != 1 {
            return Err(StoreError::Raced(
                "the delivery changed while it was being resumed",
            ));
        }
        Ok(Begun::Send {
            attempt: attempts + 1,
            outcome_unknown: status == Status::Sending,
        })
    }

    async fn finish(
        &self,
        intent: &Intent,
        status: Status,
        provider: Option<&str>,
        detail: Option<&str>,
        now_us: i64,
    ) -> Result<(), StoreError> {
        let key = &intent.key;
        with_pool!(&self.db, pool => {
            sqlx::query(FINISH_DELIVERY)
                .bind(key.event_id.to_string())
                .bind(key.channel.as_str())
                .bind(&key.recipient)
                .bind(status.as_str())
                .bind(provider)
                .bind(detail)
                .bind(now_us)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn settle(
        &self,
        intent: &Intent,
        status: Status,
        detail: &str,
        now_us: i64,
    ) -> Result<(), StoreError> {
        let key = &intent.key;
        let insert = "INSERT INTO notify_deliveries \
             (event_id, channel, recipient, user_id, address, event_type, template, category, \
              status, attempts, detail, created_at_us, updated_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $11) \
             ON CONFLICT (event_id, channel, recipient) DO NOTHING";
        let settle_tried = "UPDATE notify_deliveries SET status = $1, detail = $2, \
             updated_at_us = $3 WHERE event_id = $4 AND channel = $5 \
             AND (recipient = $6 OR user_id = $7) AND status IN ('sending', 'retrying')";
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(insert)
                .bind(key.event_id.to_string())
                .bind(key.channel.as_str())
                .bind(&key.recipient)
                .bind(&intent.user_id)
                .bind(&intent.address)
                .bind(&intent.event_type)
                .bind(&intent.template)
                .bind(intent.category.as_str())
                .bind(status.as_str())
                .bind(detail)
                .bind(now_us)
                .execute(&mut *tx)
                .await?;
            sqlx::query(settle_tried)
                .bind(status.as_str())
                .bind(detail)
                .bind(now_us)
                .bind(key.event_id.to_string())
                .bind(key.channel.as_str())
                .bind(&key.recipient)
                .bind(&intent.user_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn list(
        &self,
        filter: &DeliveryFilter,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let (column, value) = match filter {
            DeliveryFilter::Event(id) => ("event_id", id.to_string()),
            DeliveryFilter::User(user) => ("user_id", user.clone()),
        };
        // The column name is one of two constants above: nothing from the request.
        let sql = format!(
            "SELECT {COLUMNS} FROM notify_deliveries WHERE {column} = $1 \
             ORDER BY created_at_us DESC, event_id DESC, channel, recipient LIMIT $2"
        );
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .bind(&value)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    async fn store() -> SqlStore {
        let file = std::env::temp_dir().join(format!("herald-notify-{}.db", Uuid::new_v4()));
        let db = Database::connect(&format!("sqlite://{}", file.display()))
            .await
            .unwrap();
        SqlStore::new(db).await.unwrap()
    }

    fn intent(event_id: Uuid, channel: Channel, recipient: &str) -> Intent {
        Intent {
            key: DeliveryKey {
                event_id,
                channel,
                recipient: recipient.into(),
            },
            user_id: Some("u-1".into()),
            address: String::new(),
            event_type: "campaign.launched".into(),
            template: "campaign".into(),
            category: Category::Promotional,
        }
    }

    #[tokio::test]
    async fn each_outcome_is_published_until_recorded_and_an_unreadable_one_holds_nothing_back() {
        let store = store().await;
        let (sent, future, pending) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        for (id, at) in [(sent, 10), (future, 20)] {
            let intent = intent(id, Channel::Email, "u-1");
            store.settle(&intent, Status::Sent, "", at).await.unwrap();
        }
        store
            .begin(&intent(pending, Channel::Email, "u-1"), 30)
            .await
            .unwrap();
        // A row a later version wrote, with a channel this one does not know.
        with_pool!(&store.db, pool => {
            sqlx::query("UPDATE notify_deliveries SET channel = 'pigeon' WHERE event_id = $1")
                .bind(future.to_string())
                .execute(pool)
                .await
                .unwrap();
        });
        let outcomes = store.unpublished_outcomes(10).await.unwrap();
        let ids: Vec<Uuid> = outcomes.iter().map(|o| o.key.event_id).collect();
        assert_eq!(
            ids,
            [sent],
            "the settled, readable one; not the one still sending"
        );
        store.outcomes_published(&outcomes).await.unwrap();
        assert!(store.unpublished_outcomes(10).await.unwrap().is_empty());
        let set_aside: (Option<i64>,) = with_pool!(&store.db, pool => {
            sqlx::query_as("SELECT outcome_published_us FROM notify_deliveries WHERE event_id = $1")
                .bind(future.to_string())
                .fetch_one(pool)
                .await
                .unwrap()
        });
        assert_eq!(set_aside, (Some(20),), "set aside, not selected again");
        // An outcome that changes is published again.
        with_pool!(&store.db, pool => {
            sqlx::query("UPDATE notify_deliveries SET status = 'dead', updated_at_us = 40 WHERE event_id = $1")
                .bind(sent.to_string())
                .execute(pool)
                .await
                .unwrap();
        });
        let again = store.unpublished_outcomes(10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].status, again[0].settled_at_us),
            (Status::Dead, 40)
        );
    }

    #[tokio::test]
    async fn the_purge_takes_deleted_users_and_inactive_devices_past_the_deadline_only() {
        let store = store().await;
        let user = |id: &str| UserRecord {
            user_id: id.into(),
            email: Some(format!("{id}@example.com")),
            phone: None,
            display_name: None,
            locale: "en".into(),
            time_zone: "UTC".into(),
            deleted: false,
        };
        store
            .apply_users(&[
                UserChange::Registered(user("gone")),
                UserChange::Registered(user("kept")),
                UserChange::Deleted {
                    user_id: "gone".into(),
                },
            ])
            .await
            .unwrap();
        for (token, user_id) in [("old-phone", "kept"), ("phone", "kept")] {
            let device = Device {
                token: token.into(),
                user_id: user_id.into(),
                platform: "android".into(),
                active: true,
            };
            store.register_device(&device).await.unwrap();
        }
        store.deactivate_device("old-phone").await.unwrap();
        // Before the deadline reaches them, nothing goes.
        assert_eq!(
            store
                .purge_soft_deleted(now_us() - 60_000_000)
                .await
                .unwrap(),
            0
        );
        // Past it: the deleted user and the inactive device, and nothing else.
        assert_eq!(store.purge_soft_deleted(now_us() + 1).await.unwrap(), 2);
        assert!(store.user("gone").await.unwrap().is_none());
        assert!(store.user("kept").await.unwrap().is_some());
        let devices = store.devices("kept").await.unwrap();
        assert_eq!(devices.len(), 1, "{devices:?}");
        assert_eq!(devices[0].token, "phone");
    }

    #[tokio::test]
    async fn the_cap_counts_one_message_per_event_and_channel() {
        let store = store().await;
        let (earlier, this) = (Uuid::new_v4(), Uuid::new_v4());
        let sent = intent(earlier, Channel::Email, "u-1");
        store.begin(&sent, 10).await.unwrap();
        store
            .finish(&sent, Status::Sent, Some("smtp"), None, 11)
            .await
            .unwrap();
        // This event's push reached two devices before the batch failed.
        for device in ["u-1/phone", "u-1/tablet"] {
            store
                .begin(&intent(this, Channel::Push, device), 20)
                .await
                .unwrap();
        }
        let history = store.promotional_history("u-1", this, 0).await.unwrap();
        assert_eq!(
            history.messages,
            HashSet::from([(earlier, Channel::Email), (this, Channel::Push)])
        );
        // Outside the window, other events no longer count; this one's own rows still do.
        let later = store.promotional_history("u-1", this, 15).await.unwrap();
        assert_eq!(later.messages, HashSet::from([(this, Channel::Push)]));
    }

    #[tokio::test]
    async fn a_skip_settles_the_attempts_it_replaces() {
        let store = store().await;
        let event = Uuid::new_v4();
        let status = |channel, recipient: &str| {
            let key = DeliveryKey {
                event_id: event,
                channel,
                recipient: recipient.into(),
            };
            let store = &store;
            async move { store.status(&key).await.unwrap() }
        };
        // Pushes to two devices were being tried when the user was deleted.
        for device in ["u-1/phone", "u-1/tablet"] {
            store
                .begin(&intent(event, Channel::Push, device), 1)
                .await
                .unwrap();
        }
        store
            .settle(
                &intent(event, Channel::Push, "u-1"),
                Status::Skipped,
                "user deleted",
                2,
            )
            .await
            .unwrap();
        assert_eq!(
            status(Channel::Push, "u-1/phone").await,
            Some(Status::Skipped)
        );
        assert_eq!(
            status(Channel::Push, "u-1/tablet").await,
            Some(Status::Skipped)
        );
        assert_eq!(status(Channel::Push, "u-1").await, Some(Status::Skipped));
        // A live message whose stream went away is settled as skipped (sent as push).
        store
            .begin(&intent(event, Channel::Live, "u-1"), 3)
            .await
            .unwrap();
        store
            .settle(
                &intent(event, Channel::Live, "u-1"),
                Status::Skipped,
                "not connected: sent as push",
                4,
            )
            .await
            .unwrap();
        assert_eq!(status(Channel::Live, "u-1").await, Some(Status::Skipped));
        // What was sent stays sent.
        let email = intent(event, Channel::Email, "u-1");
        store.begin(&email, 5).await.unwrap();
        store
            .finish(&email, Status::Sent, Some("smtp"), None, 6)
            .await
            .unwrap();
        store
            .settle(&email, Status::Skipped, "user deleted", 7)
            .await
            .unwrap();
        assert_eq!(status(Channel::Email, "u-1").await, Some(Status::Sent));
    }
}
