//! The store with personal data encrypted at rest: a [`NotifyStore`] in front of another
//! that keeps a user's email, phone and name, and each delivery's address, held message
//! and provider detail, encrypted under the user's data key (`platform::privacy`).
//!
//! An erasure destroys that key, so nothing readable is left of the person, whether in the
//! rows, in the old row versions PostgreSQL keeps until it vacuums, or in a database's
//! write-ahead log and backups. What a key no longer opens reads as gone: no contact
//! detail, and [`ERASED`] for an address. A delivery to someone erased meanwhile is skipped
//! rather than recorded or sent. Deliveries to a raw address (a rule's list, no user) have
//! no subject and stay as they are.

use std::sync::Arc;

use async_trait::async_trait;
use platform::privacy::{ERASED, Privacy, PrivacyError, Revealed};
use uuid::Uuid;

use crate::domain::{Channel, DeliveryKey, Intent, Outcome, PromotionalHistory, Status};
use crate::parked::Parked;
use crate::preferences::Preferences;
use crate::store::{
    Begun, Claimed, DeliveryFilter, DeliveryRow, Device, NotifyStore, StoreError, UserChange,
    UserRecord,
};

/// Why a delivery to an erased user is skipped.
const ERASED_USER: &str = "user erased";

pub struct Sealed {
    inner: Arc<dyn NotifyStore>,
    privacy: Arc<Privacy>,
}

impl Sealed {
    pub fn new(inner: Arc<dyn NotifyStore>, privacy: Arc<Privacy>) -> Self {
        Self { inner, privacy }
    }

    /// `value`, `subject`'s `field`, as stored: `None` once the subject was erased. Without
    /// a subject, as it is.
    async fn seal(
        &self,
        subject: Option<&str>,
        field: &str,
        value: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some(subject) = subject else {
            return Ok(Some(value.to_string()));
        };
        match self.privacy.protect(subject, field, value).await {
            Ok(sealed) => Ok(Some(sealed)),
            Err(PrivacyError::Erased) => Ok(None),
            Err(err) => Err(keys(err)),
        }
    }

    async fn seal_opt(
        &self,
        subject: &str,
        field: &str,
        value: Option<&String>,
    ) -> Result<Option<String>, StoreError> {
        match value {
            Some(value) => self.seal(Some(subject), field, value).await,
            None => Ok(None),
        }
    }

    /// A stored value read back: `None` once its subject was erased.
    async fn open(
        &self,
        subject: Option<&str>,
        field: &str,
        stored: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some(subject) = subject else {
            return Ok(Some(stored.to_string()));
        };
        match self.privacy.reveal(subject, field, stored).await {
            Ok(Revealed::Plain(plain)) => Ok(Some(plain)),
            Ok(Revealed::Erased) => Ok(None),
            Err(err) => Err(keys(err)),
        }
    }

    async fn open_opt(
        &self,
        subject: &str,
        field: &str,
        stored: Option<String>,
    ) -> Result<Option<String>, StoreError> {
        match stored {
            Some(stored) => self.open(Some(subject), field, &stored).await,
            None => Ok(None),
        }
    }

    /// `intent` with its address as stored; `None` once its user was erased.
    async fn sealed_intent(&self, intent: &Intent) -> Result<Option<Intent>, StoreError> {
        let address = self
            .seal(intent.user_id.as_deref(), "address", &intent.address)
            .await?;
        Ok(address.map(|address| Intent {
            address,
            ..intent.clone()
        }))
    }

    /// Records a delivery to an erased user as skipped, with no address.
    async fn skip_erased(&self, intent: &Intent, now_us: i64) -> Result<(), StoreError> {
        let gone = Intent {
            address: ERASED.to_string(),
            ..intent.clone()
        };
        self.inner
            .settle(&gone, Status::Skipped, ERASED_USER, now_us)
            .await
    }

    async fn sealed_change(&self, change: &UserChange) -> Result<UserChange, StoreError> {
        Ok(match change {
            UserChange::Registered(record) => {
                let id = &record.user_id;
                UserChange::Registered(UserRecord {
                    email: self.seal_opt(id, "email", record.email.as_ref()).await?,
                    phone: self.seal_opt(id, "phone", record.phone.as_ref()).await?,
                    display_name: self
                        .seal_opt(id, "display_name", record.display_name.as_ref())
                        .await?,
                    ..record.clone()
                })
            }
            UserChange::Updated {
                user_id,
                email,
                phone,
                display_name,
                locale,
                time_zone,
            } => UserChange::Updated {
                email: self.seal_opt(user_id, "email", email.as_ref()).await?,
                phone: self.seal_opt(user_id, "phone", phone.as_ref()).await?,
                display_name: self
                    .seal_opt(user_id, "display_name", display_name.as_ref())
                    .await?,
                user_id: user_id.clone(),
                locale: locale.clone(),
                time_zone: time_zone.clone(),
            },
            other => other.clone(),
        })
    }

    /// The detail of a delivery's outcome as stored (none once its user was erased).
    async fn sealed_detail(
        &self,
        intent: &Intent,
        detail: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        match detail {
            Some(detail) => self.seal(intent.user_id.as_deref(), "detail", detail).await,
            None => Ok(None),
        }
    }
}

/// The key store failed: transient, as a database failure is.
fn keys(err: PrivacyError) -> StoreError {
    match err {
        PrivacyError::Store(err) => StoreError::Db(err),
        other => StoreError::Unreadable(other.to_string()),
    }
}

#[async_trait]
impl NotifyStore for Sealed {
    async fn apply_users(&self, changes: &[UserChange]) -> Result<(), StoreError> {
        let mut sealed = Vec::with_capacity(changes.len());
        for change in changes {
            sealed.push(self.sealed_change(change).await?);
        }
        self.inner.apply_users(&sealed).await
    }

    async fn user(&self, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        let Some(record) = self.inner.user(user_id).await? else {
            return Ok(None);
        };
        Ok(Some(UserRecord {
            email: self.open_opt(user_id, "email", record.email).await?,
            phone: self.open_opt(user_id, "phone", record.phone).await?,
            display_name: self
                .open_opt(user_id, "display_name", record.display_name)
                .await?,
            ..record
        }))
    }

    async fn apply_orders(&self, orders: &[(String, String)]) -> Result<(), StoreError> {
        self.inner.apply_orders(orders).await
    }

    async fn order_customer(&self, order_id: &str) -> Result<Option<String>, StoreError> {
        self.inner.order_customer(order_id).await
    }

    async fn opted_in(&self, channels: &[Channel]) -> Result<Vec<String>, StoreError> {
        self.inner.opted_in(channels).await
    }

    async fn register_device(&self, device: &Device) -> Result<(), StoreError> {
        self.inner.register_device(device).await
    }

    async fn remove_device(&self, user_id: &str, token: &str) -> Result<bool, StoreError> {
        self.inner.remove_device(user_id, token).await
    }

    async fn devices(&self, user_id: &str) -> Result<Vec<Device>, StoreError> {
        self.inner.devices(user_id).await
    }

    async fn deactivate_device(&self, token: &str) -> Result<(), StoreError> {
        self.inner.deactivate_device(token).await
    }

    async fn preferences(&self, user_id: &str) -> Result<Preferences, StoreError> {
        self.inner.preferences(user_id).await
    }

    async fn set_preferences(
        &self,
        user_id: &str,
        preferences: &Preferences,
    ) -> Result<(), StoreError> {
        self.inner.set_preferences(user_id, preferences).await
    }

    async fn promotional_history(
        &self,
        user_id: &str,
        event_id: Uuid,
        since_us: i64,
    ) -> Result<PromotionalHistory, StoreError> {
        self.inner
            .promotional_history(user_id, event_id, since_us)
            .await
    }

    async fn defer(
        &self,
        intent: &Intent,
        payload: &str,
        not_before_us: i64,
        now_us: i64,
    ) -> Result<(), StoreError> {
        let user = intent.user_id.as_deref();
        let (Some(sealed), Some(payload)) = (
            self.sealed_intent(intent).await?,
            self.seal(user, "payload", payload).await?,
        ) else {
            return self.skip_erased(intent, now_us).await;
        };
        self.inner
            .defer(&sealed, &payload, not_before_us, now_us)
            .await
    }

    async fn claim_due(
        &self,
        now_us: i64,
        stale_us: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut opened = Vec::new();
        for mut claim in self.inner.claim_due(now_us, stale_us, limit).await? {
            let user = claim.intent.user_id.clone();
            let user = user.as_deref();
            let address = self.open(user, "address", &claim.intent.address).await?;
            let payload = self.open(user, "payload", &claim.payload).await?;
            let (Some(address), Some(payload)) = (address, payload) else {
                self.skip_erased(&claim.intent, now_us).await?;
                continue;
            };
            claim.intent.address = address;
            claim.payload = payload;
            opened.push(claim);
        }
        Ok(opened)
    }

    async fn reschedule(
        &self,
        intent: &Intent,
        not_before_us: i64,
        detail: &str,
        now_us: i64,
    ) -> Result<(), StoreError> {
        let detail = self.sealed_detail(intent, Some(detail)).await?;
        self.inner
            .reschedule(
                intent,
                not_before_us,
                detail.as_deref().unwrap_or_default(),
                now_us,
            )
            .await
    }

    async fn status(&self, key: &DeliveryKey) -> Result<Option<Status>, StoreError> {
        self.inner.status(key).await
    }

    async fn begin(&self, intent: &Intent, now_us: i64) -> Result<Begun, StoreError> {
        match self.sealed_intent(intent).await? {
            Some(sealed) => self.inner.begin(&sealed, now_us).await,
            None => {
                self.skip_erased(intent, now_us).await?;
                Ok(Begun::Settled(Status::Skipped))
            }
        }
    }

    async fn finish(
        &self,
        intent: &Intent,
        status: Status,
        provider: Option<&str>,
        detail: Option<&str>,
        now_us: i64,
    ) -> Result<(), StoreError> {
        let detail = self.sealed_detail(intent, detail).await?;
        self.inner
            .finish(intent, status, provider, detail.as_deref(), now_us)
            .await
    }

    async fn settle(
        &self,
        intent: &Intent,
        status: Status,
        detail: &str,
        now_us: i64,
    ) -> Result<(), StoreError> {
        let Some(sealed) = self.sealed_intent(intent).await? else {
            return self.skip_erased(intent, now_us).await;
        };
        let detail = self.sealed_detail(intent, Some(detail)).await?;
        self.inner
            .settle(
                &sealed,
                status,
                detail.as_deref().unwrap_or(ERASED_USER),
                now_us,
            )
            .await
    }

    async fn park(&self, parked: &Parked) -> Result<(), StoreError> {
        self.inner.park(parked).await
    }

    async fn parked_ready(&self, expired_us: i64, limit: u32) -> Result<Vec<Parked>, StoreError> {
        self.inner.parked_ready(expired_us, limit).await
    }

    async fn unpark(&self, event_id: &str) -> Result<(), StoreError> {
        self.inner.unpark(event_id).await
    }

    async fn purge_soft_deleted(&self, before_us: i64) -> Result<u64, StoreError> {
        self.inner.purge_soft_deleted(before_us).await
    }

    async fn unpublished_outcomes(&self, limit: u32) -> Result<Vec<Outcome>, StoreError> {
        self.inner.unpublished_outcomes(limit).await
    }

    async fn outcomes_published(&self, outcomes: &[Outcome]) -> Result<(), StoreError> {
        self.inner.outcomes_published(outcomes).await
    }

    async fn list(
        &self,
        filter: &DeliveryFilter,
        limit: u32,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let mut rows = self.inner.list(filter, limit).await?;
        for row in &mut rows {
            let user = row.user_id.clone();
            let user = user.as_deref();
            row.address = self
                .open(user, "address", &row.address)
                .await?
                .unwrap_or_else(|| ERASED.to_string());
            row.detail = match row.detail.take() {
                Some(detail) => self.open(user, "detail", &detail).await?,
                None => None,
            };
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use platform::db::Database;
    use platform::privacy::{Keks, MemoryKeyStore};
    use platform::with_pool;

    use super::*;
    use crate::domain::Category;
    use crate::store::SqlStore;

    async fn stores() -> (Sealed, Database, Arc<Privacy>) {
        let dir = std::env::temp_dir().join(format!("herald-sealed-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let kek = dir.join("kek");
        Keks::create_file(&kek).unwrap();
        let privacy = Arc::new(Privacy::new(
            Keks::read(&kek).unwrap(),
            Arc::new(MemoryKeyStore::default()),
        ));
        let db = Database::connect(&format!("sqlite://{}", dir.join("n.db").display()))
            .await
            .unwrap();
        let inner = Arc::new(SqlStore::new(db.clone()).await.unwrap());
        (Sealed::new(inner, privacy.clone()), db, privacy)
    }

    fn intent(user: &str, address: &str) -> Intent {
        Intent {
            key: DeliveryKey {
                event_id: Uuid::new_v4(),
                channel: Channel::Email,
                recipient: user.into(),
            },
            user_id: Some(user.into()),
            address: address.into(),
            event_type: "message.sent".into(),
            template: "message".into(),
            category: Category::Transactional,
        }
    }

    /// Every text the database holds, column by column.
    async fn stored_text(db: &Database) -> String {
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> = with_pool!(db, pool => {
            let mut rows: Vec<(Option<String>, Option<String>, Option<String>)> =
                sqlx::query_as("SELECT email, phone, display_name FROM notify_users")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            rows.extend(
                sqlx::query_as::<_, (Option<String>, Option<String>, Option<String>)>(
                    "SELECT address, payload, detail FROM notify_deliveries",
                )
                .fetch_all(pool)
                .await
                .unwrap(),
            );
            rows
        });
        format!("{rows:?}")
    }

    #[tokio::test]
    async fn a_users_contact_and_deliveries_are_stored_sealed_and_read_back_until_erased() {
        let (store, db, privacy) = stores().await;
        let record = UserRecord {
            user_id: "u-1".into(),
            email: Some("ann@x.io".into()),
            phone: Some("+15550100".into()),
            display_name: Some("Ann Canary".into()),
            locale: "en".into(),
            time_zone: "UTC".into(),
            deleted: false,
        };
        store
            .apply_users(&[UserChange::Registered(record.clone())])
            .await
            .unwrap();
        assert_eq!(store.user("u-1").await.unwrap().unwrap(), record);
        let sent = intent("u-1", "ann@x.io");
        assert!(matches!(
            store.begin(&sent, 1).await.unwrap(),
            Begun::Send { .. }
        ));
        store
            .finish(
                &sent,
                Status::Failed,
                Some("smtp"),
                Some("550 ann@x.io unknown"),
                2,
            )
            .await
            .unwrap();
        let held = intent("u-1", "ann@x.io");
        store
            .defer(&held, "{\"hello\": \"Ann Canary\"}", 5, 3)
            .await
            .unwrap();
        let later = intent("u-1", "ann@x.io");
        store
            .defer(&later, "{\"hello\": \"Ann Canary\"}", 30, 4)
            .await
            .unwrap();
        let text = stored_text(&db).await;
        for canary in ["ann@x.io", "+15550100", "Ann Canary"] {
            assert!(!text.contains(canary), "{canary} in {text}");
        }
        let rows = store
            .list(&DeliveryFilter::User("u-1".into()), 10)
            .await
            .unwrap();
        assert!(rows.iter().all(|row| row.address == "ann@x.io"));
        assert!(
            rows.iter()
                .any(|row| row.detail.as_deref() == Some("550 ann@x.io unknown"))
        );
        let claimed = store.claim_due(10, 0, 10).await.unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].payload, "{\"hello\": \"Ann Canary\"}");
        assert_eq!(claimed[0].intent.address, "ann@x.io");

        // The key destroyed: nothing reads, and a delivery is skipped rather than recorded.
        privacy.erase("u-1").await.unwrap();
        let gone = store.user("u-1").await.unwrap().unwrap();
        assert_eq!(
            (gone.email, gone.phone, gone.display_name),
            (None, None, None)
        );
        let late = intent("u-1", "ann@x.io");
        assert_eq!(
            store.begin(&late, 20).await.unwrap(),
            Begun::Settled(Status::Skipped)
        );
        let rows = store
            .list(&DeliveryFilter::User("u-1".into()), 10)
            .await
            .unwrap();
        assert!(rows.iter().all(|row| row.address == ERASED), "{rows:?}");
        let skipped = rows
            .iter()
            .find(|row| row.event_id == late.key.event_id.to_string());
        assert_eq!(skipped.unwrap().detail.as_deref(), Some(ERASED_USER));
        // A message of theirs held since before the erasure is skipped when it comes due.
        assert!(store.claim_due(40, 0, 10).await.unwrap().is_empty());
        let rows = store
            .list(&DeliveryFilter::Event(later.key.event_id), 10)
            .await
            .unwrap();
        assert_eq!(
            (rows[0].status.as_str(), rows[0].detail.as_deref()),
            ("skipped", Some(ERASED_USER))
        );
    }
}
