//! The auth tables on PostgreSQL or SQLite. Every change to an account and the event that
//! tells of it commit in one transaction (the outbox); the relay publishes afterwards.

use std::sync::Arc;

use platform::db::Database;
use platform::privacy::{Privacy, PrivacyError};
use platform::with_pool;

use crate::at_rest::AtRest;

use crate::oidc::StoredFlow;
use crate::tokens::StoredKey;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an account with this email exists")]
    EmailTaken,
    #[error("another account has verified this phone")]
    PhoneTaken,
    #[error("auth store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("auth store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The personal columns could not be sealed or opened: the key store is down
    /// ([`PrivacyError::Store`], transient), or the account was erased meanwhile
    /// ([`PrivacyError::Erased`]: as if it were gone).
    #[error("auth store: personal data keys: {0}")]
    Privacy(#[from] PrivacyError),
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub display_name: String,
    pub phone: Option<String>,
    pub locale: String,
    pub time_zone: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    /// When a code sent to `phone` came back; `None` while the phone is unverified.
    pub phone_verified_at: Option<i64>,
}

/// An event to publish, already encoded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxRecord {
    pub event_id: String,
    pub topic: String,
    pub record_key: String,
    pub payload: Vec<u8>,
    pub event_type: String,
    pub created_at: i64,
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// It was live: it is now used, and `next` (already stored) replaces it.
    Rotated { account_id: String },
    /// It had been used before: its whole family is now revoked.
    Reused,
    /// Unknown, expired or revoked.
    Invalid,
}

/// A profile change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileChange {
    pub display_name: Option<String>,
    pub phone: Option<String>,
    pub locale: Option<String>,
    pub time_zone: Option<String>,
}

#[derive(sqlx::FromRow)]
struct RefreshRow {
    family_id: String,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
    expires_at: i64,
}

/// Links an identity to an account; a link to an account since deleted is replaced.
const LINK_IDENTITY: &str = "INSERT INTO auth_identities (issuer, subject, account_id, created_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (issuer, subject) DO UPDATE SET account_id = excluded.account_id, created_at = excluded.created_at";

const ACCOUNT_COLUMNS: &str = "id, email, password_hash, role, display_name, phone, locale, time_zone, created_at, updated_at, deleted_at, phone_verified_at";

pub struct SqlStore {
    db: Database,
    at_rest: AtRest,
}

/// Inserts the outbox rows in the transaction `$tx`.
macro_rules! enqueue {
    ($tx:expr, $events:expr) => {
        for event in $events {
            sqlx::query(
                "INSERT INTO auth_outbox (event_id, topic, record_key, payload, event_type, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&event.event_id)
            .bind(&event.topic)
            .bind(&event.record_key)
            .bind(&event.payload)
            .bind(&event.event_type)
            .bind(event.created_at)
            .execute(&mut *$tx)
            .await?;
        }
    };
}

impl SqlStore {
    pub async fn new(db: Database) -> Result<Self, StoreError> {
        platform::db::migrate(
            &db,
            sqlx::migrate!("./migrations/postgres"),
            sqlx::migrate!("./migrations/sqlite"),
        )
        .await?;
        Ok(Self {
            db,
            at_rest: AtRest::default(),
        })
    }

    /// The store with the personal columns encrypted (see [`crate::at_rest`]); the rows
    /// written in plain text before are sealed now, a batch at a time.
    pub async fn with_privacy(mut self, privacy: Arc<Privacy>) -> Result<Self, StoreError> {
        self.at_rest = AtRest::sealed(privacy);
        self.seal_plain_rows().await?;
        Ok(self)
    }

    /// Seals the personal columns of the accounts that hold them in plain text (written
    /// with privacy off, or before it existed). Rows are taken in id order, so one that
    /// cannot be sealed (its subject's key was destroyed by an erasure that stopped before
    /// blanking the row; running the erasure again finishes it) is passed over.
    async fn seal_plain_rows(&self) -> Result<(), StoreError> {
        let select = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM auth_accounts WHERE id > $1 AND erased_at IS NULL \
             AND email NOT LIKE 'personal:v1:%' ORDER BY id LIMIT 200"
        );
        let update = "UPDATE auth_accounts SET email = $2, email_lookup = $3, display_name = $4, \
             phone = $5, phone_lookup = $6 WHERE id = $1 AND email = $7";
        let mut after = String::new();
        let mut sealed = 0;
        loop {
            let rows: Vec<Account> = with_pool!(&self.db, pool => {
                sqlx::query_as(sqlx::AssertSqlSafe(select.as_str())).bind(&after).fetch_all(pool).await?
            });
            let Some(last) = rows.last() else {
                break;
            };
            after = last.id.clone();
            for account in rows {
                let columns = match self.at_rest.seal_account(&account).await {
                    Ok(columns) => columns,
                    Err(StoreError::Privacy(PrivacyError::Erased)) => continue,
                    Err(err) => return Err(err),
                };
                with_pool!(&self.db, pool => {
                    sqlx::query(update)
                        .bind(&account.id)
                        .bind(&columns.email)
                        .bind(&columns.email_lookup)
                        .bind(&columns.display_name)
                        .bind(&columns.phone)
                        .bind(&columns.phone_lookup)
                        .bind(&account.email)
                        .execute(pool)
                        .await?;
                });
                sealed += 1;
            }
        }
        if sealed > 0 {
            tracing::info!(
                sealed,
                "account rows written in plain text are now encrypted"
            );
            self.db.forget_deleted();
        }
        Ok(())
    }

    /// A row as read, opened.
    async fn opened(&self, row: Option<Account>) -> Result<Option<Account>, StoreError> {
        match row {
            Some(row) => Ok(Some(self.at_rest.open_account(row).await?)),
            None => Ok(None),
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Creates the account and queues its event, together.
    pub async fn register(
        &self,
        account: &Account,
        event: &OutboxRecord,
    ) -> Result<(), StoreError> {
        self.insert_account(account, event, None).await
    }

    /// Creates an account that signs in through an external identity, links the identity,
    /// and queues the account's event, together.
    pub async fn register_linked(
        &self,
        account: &Account,
        event: &OutboxRecord,
        issuer: &str,
        subject: &str,
    ) -> Result<(), StoreError> {
        self.insert_account(account, event, Some((issuer, subject)))
            .await
    }

    /// The account, the identity linked to it if any (issuer, subject), and its event, in one
    /// transaction. An email a live account holds: [`StoreError::EmailTaken`].
    async fn insert_account(
        &self,
        account: &Account,
        event: &OutboxRecord,
        identity: Option<(&str, &str)>,
    ) -> Result<(), StoreError> {
        let sealed = self.at_rest.seal_account(account).await?;
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO auth_accounts (id, email, password_hash, role, display_name, phone, locale, time_zone, created_at, updated_at, email_lookup, phone_lookup) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(&account.id)
            .bind(&sealed.email)
            .bind(&account.password_hash)
            .bind(&account.role)
            .bind(&sealed.display_name)
            .bind(&sealed.phone)
            .bind(&account.locale)
            .bind(&account.time_zone)
            .bind(account.created_at)
            .bind(account.updated_at)
            .bind(&sealed.email_lookup)
            .bind(&sealed.phone_lookup)
            .execute(&mut *tx)
            .await;
            match inserted {
                Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
                    return Err(StoreError::EmailTaken)
                }
                other => other?,
            };
            if let Some((issuer, subject)) = identity {
                sqlx::query(LINK_IDENTITY)
                    .bind(issuer)
                    .bind(subject)
                    .bind(&account.id)
                    .bind(account.created_at)
                    .execute(&mut *tx)
                    .await?;
            }
            enqueue!(tx, [event]);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Links an external identity to the live account of the email its provider verified
    /// (replacing a link to a deleted account). The provider has just proved who holds the
    /// address, which the account's password never did: anyone could have registered it. So
    /// in the same transaction the password is removed (`no_password`), every session ends
    /// and pending reset links die; the holder sets a password again through a reset link.
    /// Answers whether the account had a password.
    pub async fn link_by_email(
        &self,
        issuer: &str,
        subject: &str,
        account_id: &str,
        no_password: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(LINK_IDENTITY)
                .bind(issuer)
                .bind(subject)
                .bind(account_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let had_password = sqlx::query(
                "UPDATE auth_accounts SET password_hash = $2, updated_at = $3 \
                 WHERE id = $1 AND password_hash <> $2",
            )
            .bind(account_id)
            .bind(no_password)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if had_password {
                sqlx::query("UPDATE auth_refresh_tokens SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL")
                    .bind(account_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM auth_reset_tokens WHERE account_id = $1 AND used_at IS NULL")
                    .bind(account_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            had_password
        }))
    }

    /// The live account an external identity is linked to.
    pub async fn account_by_identity(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<Account>, StoreError> {
        let columns = ACCOUNT_COLUMNS
            .split(", ")
            .map(|c| format!("a.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {columns} FROM auth_identities i JOIN auth_accounts a ON a.id = i.account_id \
             WHERE i.issuer = $1 AND i.subject = $2 AND a.deleted_at IS NULL"
        );
        let row = with_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(issuer)
                .bind(subject)
                .fetch_optional(pool)
                .await?
        });
        self.opened(row).await
    }

    /// Keeps a started sign-in until its callback; drops the expired ones on the way.
    pub async fn put_flow(
        &self,
        state_hash: &str,
        flow: &StoredFlow,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query("DELETE FROM auth_oidc_flows WHERE expires_at < $1")
                .bind(now)
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO auth_oidc_flows (state_hash, provider, nonce, verifier, binding_hash, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(state_hash)
            .bind(&flow.provider)
            .bind(&flow.nonce)
            .bind(&flow.verifier)
            .bind(&flow.binding_hash)
            .bind(flow.expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Takes the sign-in of this state: once, whoever asks first.
    pub async fn take_flow(&self, state_hash: &str) -> Result<Option<StoredFlow>, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as(
                "DELETE FROM auth_oidc_flows WHERE state_hash = $1 \
                 RETURNING provider, nonce, verifier, binding_hash, expires_at",
            )
            .bind(state_hash)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn account(&self, id: &str) -> Result<Option<Account>, StoreError> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM auth_accounts WHERE id = $1");
        let row = with_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(pool).await?
        });
        self.opened(row).await
    }

    /// The live account with this email.
    pub async fn account_by_email(&self, email: &str) -> Result<Option<Account>, StoreError> {
        let lookup = self.at_rest.lookup("email", email).await?;
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM auth_accounts WHERE email_lookup = $1 AND deleted_at IS NULL"
        );
        let row = with_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(&lookup).fetch_optional(pool).await?
        });
        self.opened(row).await
    }

    /// The live account that verified this phone.
    pub async fn account_by_phone(&self, phone: &str) -> Result<Option<Account>, StoreError> {
        let lookup = self.at_rest.lookup("phone", phone).await?;
        let sql = format!(
            "SELECT {ACCOUNT_COLUMNS} FROM auth_accounts WHERE phone_lookup = $1 AND phone_verified_at IS NOT NULL AND deleted_at IS NULL"
        );
        let row = with_pool!(&self.db, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(&lookup).fetch_optional(pool).await?
        });
        self.opened(row).await
    }

    /// Marks the account's phone verified, if it is still `phone`. `Ok(false)`: the phone
    /// changed meanwhile. A phone another live account has verified is a conflict
    /// ([`StoreError::PhoneTaken`]): one verified phone, one account.
    pub async fn verify_phone(&self, id: &str, phone: &str, now: i64) -> Result<bool, StoreError> {
        let lookup = self.at_rest.lookup("phone", phone).await?;
        let done = with_pool!(&self.db, pool => {
            sqlx::query(
                "UPDATE auth_accounts SET phone_verified_at = $3, updated_at = $3 \
                 WHERE id = $1 AND phone_lookup = $2 AND deleted_at IS NULL",
            )
            .bind(id)
            .bind(&lookup)
            .bind(now)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        });
        match done {
            Ok(rows) => Ok(rows == 1),
            Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
                Err(StoreError::PhoneTaken)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Applies a profile change and queues its event, together.
    pub async fn update_profile(
        &self,
        id: &str,
        change: &ProfileChange,
        now: i64,
        event: &OutboxRecord,
    ) -> Result<bool, StoreError> {
        let sealed = async {
            let mut sealed = (None, None, None);
            if let Some(name) = &change.display_name {
                sealed.0 = Some(self.at_rest.seal(id, "display_name", name).await?);
            }
            if let Some(phone) = &change.phone {
                sealed.1 = Some(self.at_rest.seal(id, "phone", phone).await?);
                sealed.2 = Some(self.at_rest.lookup("phone", phone).await?);
            }
            Ok::<_, StoreError>(sealed)
        };
        let (display_name, phone, phone_lookup) = match sealed.await {
            Ok(sealed) => sealed,
            // Erased since it was read: as gone as the deleted account the update misses.
            Err(err) if crate::at_rest::is_erased(&err) => return Ok(false),
            Err(err) => return Err(err),
        };
        Ok(with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE auth_accounts SET display_name = COALESCE($2, display_name), \
                 phone_verified_at = CASE WHEN $7 IS NULL OR $7 = phone_lookup THEN phone_verified_at END, \
                 phone = COALESCE($3, phone), phone_lookup = COALESCE($7, phone_lookup), \
                 locale = COALESCE($4, locale), \
                 time_zone = COALESCE($5, time_zone), updated_at = $6 \
                 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(id)
            .bind(&display_name)
            .bind(&phone)
            .bind(&change.locale)
            .bind(&change.time_zone)
            .bind(now)
            .bind(&phone_lookup)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 1 {
                enqueue!(tx, [event]);
                tx.commit().await?;
            }
            done == 1
        }))
    }

    /// Soft-deletes the account, revokes its sessions and queues `user.deleted`, together.
    pub async fn soft_delete(
        &self,
        id: &str,
        now: i64,
        event: &OutboxRecord,
    ) -> Result<bool, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE auth_accounts SET deleted_at = $2, updated_at = $2 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 1 {
                sqlx::query("UPDATE auth_refresh_tokens SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                enqueue!(tx, [event]);
                tx.commit().await?;
            }
            done == 1
        }))
    }

    /// Erases what the account holds about its person, in one transaction with `events`
    /// (whatever the account's state, and whether or not there is one): its personal
    /// columns blanked and the account deleted, its sessions, codes, reset links, linked
    /// sign-in identities and the rate-limit counts of `limit_targets` gone. Answers whether
    /// an account was erased (one erased before counts again: an erasure is repeatable).
    pub async fn erase_account(
        &self,
        id: &str,
        now: i64,
        limit_targets: &[String],
        events: &[OutboxRecord],
    ) -> Result<bool, StoreError> {
        let blank = "UPDATE auth_accounts SET email = '', password_hash = $3, display_name = '', \
             phone = NULL, phone_verified_at = NULL, email_lookup = NULL, phone_lookup = NULL, deleted_at = COALESCE(deleted_at, $2), \
             erased_at = $2, updated_at = $2 WHERE id = $1";
        let owned = [
            "DELETE FROM auth_refresh_tokens WHERE account_id = $1",
            "DELETE FROM auth_codes WHERE account_id = $1",
            "DELETE FROM auth_reset_tokens WHERE account_id = $1",
            "DELETE FROM auth_otp_attempts WHERE account_id = $1",
            "DELETE FROM auth_identities WHERE account_id = $1",
        ];
        Ok(with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let erased = sqlx::query(blank)
                .bind(id)
                .bind(now)
                .bind(crate::password::NO_PASSWORD)
                .execute(&mut *tx)
                .await?
                .rows_affected() == 1;
            for sql in owned {
                sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            }
            for target in limit_targets {
                sqlx::query("DELETE FROM auth_limit_hits WHERE target = $1")
                    .bind(target)
                    .execute(&mut *tx)
                    .await?;
            }
            enqueue!(tx, events);
            tx.commit().await?;
            self.db.forget_deleted();
            erased
        }))
    }

    /// The sign-in identities linked to an account (issuer, subject, when) and its live
    /// sessions (created, expires), for its person's export.
    #[allow(clippy::type_complexity)]
    pub async fn held_about(
        &self,
        id: &str,
    ) -> Result<(Vec<(String, String, i64)>, Vec<(i64, i64)>), StoreError> {
        let identities = "SELECT issuer, subject, created_at FROM auth_identities \
             WHERE account_id = $1 ORDER BY created_at";
        let sessions = "SELECT created_at, expires_at FROM auth_refresh_tokens \
             WHERE account_id = $1 AND used_at IS NULL AND revoked_at IS NULL ORDER BY created_at";
        Ok(with_pool!(&self.db, pool => {
            (
                sqlx::query_as(identities).bind(id).fetch_all(pool).await?,
                sqlx::query_as(sessions).bind(id).fetch_all(pool).await?,
            )
        }))
    }

    /// Accounts deleted before `before` and not erased yet, up to `limit`.
    pub async fn deleted_unerased(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let sql = "SELECT id FROM auth_accounts WHERE deleted_at IS NOT NULL AND deleted_at < $1 \
             AND erased_at IS NULL ORDER BY deleted_at LIMIT $2";
        let rows: Vec<(String,)> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(before).bind(limit).fetch_all(pool).await?
        });
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn set_role(&self, id: &str, role: &str, now: i64) -> Result<bool, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query("UPDATE auth_accounts SET role = $2, updated_at = $3 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .bind(role)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected() == 1
        }))
    }

    /// Sets a new password hash and revokes every session of the account.
    pub async fn set_password(&self, id: &str, hash: &str, now: i64) -> Result<bool, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query("UPDATE auth_accounts SET password_hash = $2, updated_at = $3 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .bind(hash)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("UPDATE auth_refresh_tokens SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            // A reset link asked for before no longer resets the new password.
            sqlx::query("DELETE FROM auth_reset_tokens WHERE account_id = $1 AND used_at IS NULL")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            done == 1
        }))
    }

    pub async fn insert_refresh(
        &self,
        token_hash: &str,
        family_id: &str,
        account_id: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO auth_refresh_tokens (token_hash, family_id, account_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(token_hash)
            .bind(family_id)
            .bind(account_id)
            .bind(now)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Uses a refresh token once: marks it used and stores `next_hash` in its family, or,
    /// when it was used already, revokes the family. The mark is the transaction's first
    /// statement, a conditional write: of two concurrent uses one rotates and the other
    /// counts as reuse, on PostgreSQL (row lock) and on SQLite (the write lock is taken first,
    /// so no read snapshot has to be upgraded).
    pub async fn use_refresh(
        &self,
        token_hash: &str,
        next_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<Refreshed, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let marked: Option<(String, String)> = sqlx::query_as(
                "UPDATE auth_refresh_tokens SET used_at = $2 \
                 WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
                 RETURNING family_id, account_id",
            )
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((family, account_id)) = marked {
                sqlx::query(
                    "INSERT INTO auth_refresh_tokens (token_hash, family_id, account_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(next_hash)
                .bind(&family)
                .bind(&account_id)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(Refreshed::Rotated { account_id });
            }
            let row: Option<RefreshRow> = sqlx::query_as(
                "SELECT family_id, used_at, revoked_at, expires_at FROM auth_refresh_tokens WHERE token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
            match row {
                Some(row) if row.used_at.is_some() && row.revoked_at.is_none() && row.expires_at > now => {
                    sqlx::query("UPDATE auth_refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL")
                        .bind(&row.family_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Refreshed::Reused
                }
                _ => Refreshed::Invalid,
            }
        }))
    }

    /// Revokes the family of a refresh token (logout). Whether the token was known.
    pub async fn revoke_family_of(&self, token_hash: &str, now: i64) -> Result<bool, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query(
                "UPDATE auth_refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND family_id = \
                 (SELECT family_id FROM auth_refresh_tokens WHERE token_hash = $1)",
            )
            .bind(token_hash)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected() > 0
        }))
    }

    /// Replaces the account's live code for `purpose`, and queues the event carrying it.
    pub async fn put_code(
        &self,
        account_id: &str,
        purpose: &str,
        code_hash: &str,
        now: i64,
        expires_at: i64,
        event: &OutboxRecord,
    ) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            // One statement: two requests at once both succeed, the later code wins.
            sqlx::query(
                "INSERT INTO auth_codes (account_id, purpose, code_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (account_id, purpose) DO UPDATE SET code_hash = $3, created_at = $4, expires_at = $5",
            )
            .bind(account_id)
            .bind(purpose)
            .bind(code_hash)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            enqueue!(tx, [event]);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records an OTP attempt unless `limit` attempts were made since `since`; returns the
    /// times of the attempts in the window (this one included when it was recorded) and
    /// whether it was. Attempts on one account are serialised (a row lock on PostgreSQL,
    /// the single writer on SQLite), so concurrent guesses cannot slip past the limit.
    pub async fn record_attempt(
        &self,
        account_id: &str,
        now: i64,
        since: i64,
        limit: usize,
    ) -> Result<(bool, Vec<i64>), StoreError> {
        let attempts_sql =
            "SELECT at FROM auth_otp_attempts WHERE account_id = $1 AND at > $2 ORDER BY at";
        let insert_sql = "INSERT INTO auth_otp_attempts (account_id, at) VALUES ($1, $2)";
        let result = match &self.db {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT id FROM auth_accounts WHERE id = $1 FOR UPDATE")
                    .bind(account_id)
                    .execute(&mut *tx)
                    .await?;
                let mut times: Vec<i64> = sqlx::query_scalar(attempts_sql)
                    .bind(account_id)
                    .bind(since)
                    .fetch_all(&mut *tx)
                    .await?;
                let allowed = times.len() < limit;
                if allowed {
                    sqlx::query(insert_sql)
                        .bind(account_id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    times.push(now);
                }
                tx.commit().await?;
                (allowed, times)
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                // The write first: it takes SQLite's one write lock before the count.
                sqlx::query(insert_sql)
                    .bind(account_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let times: Vec<i64> = sqlx::query_scalar(attempts_sql)
                    .bind(account_id)
                    .bind(since)
                    .fetch_all(&mut *tx)
                    .await?;
                if times.len() <= limit {
                    tx.commit().await?;
                    (true, times)
                } else {
                    tx.rollback().await?;
                    (false, times.into_iter().filter(|t| *t != now).collect())
                }
            }
        };
        Ok(result)
    }

    /// Counts an attempt against `target` (a digest naming a route and an account) and
    /// answers how many were made since `since`, this one included, and whether it is within
    /// `limit`. A refused attempt is not counted, and attempts older than `since` are
    /// forgotten. Attempts on one target are serialised (an advisory lock on PostgreSQL, the
    /// single writer on SQLite), so concurrent ones cannot slip past the limit.
    pub async fn hit_limit(
        &self,
        target: &str,
        now: i64,
        since: i64,
        limit: usize,
    ) -> Result<(bool, Vec<i64>), StoreError> {
        let forget_sql = "DELETE FROM auth_limit_hits WHERE target = $1 AND at <= $2";
        let times_sql = "SELECT at FROM auth_limit_hits WHERE target = $1 ORDER BY at";
        let insert_sql = "INSERT INTO auth_limit_hits (target, at) VALUES ($1, $2)";
        Ok(with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            if matches!(self.db, Database::Postgres(_)) {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(target)
                    .execute(&mut *tx)
                    .await?;
            }
            // The write first: on SQLite it takes the one write lock before the count.
            sqlx::query(forget_sql).bind(target).bind(since).execute(&mut *tx).await?;
            let mut times: Vec<i64> = sqlx::query_scalar(times_sql)
                .bind(target)
                .fetch_all(&mut *tx)
                .await?;
            let allowed = times.len() < limit;
            if allowed {
                sqlx::query(insert_sql).bind(target).bind(now).execute(&mut *tx).await?;
                times.push(now);
            }
            tx.commit().await?;
            (allowed, times)
        }))
    }

    /// Takes the live code for `purpose` if `code_hash` matches: a code works once.
    pub async fn take_code(
        &self,
        account_id: &str,
        purpose: &str,
        code_hash: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query("DELETE FROM auth_codes WHERE account_id = $1 AND purpose = $2 AND code_hash = $3 AND expires_at > $4")
                .bind(account_id)
                .bind(purpose)
                .bind(code_hash)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected() == 1
        }))
    }

    /// Stores a password-reset link and queues the event that mails it, together.
    pub async fn put_reset(
        &self,
        token_hash: &str,
        account_id: &str,
        now: i64,
        expires_at: i64,
        event: &OutboxRecord,
    ) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO auth_reset_tokens (token_hash, account_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
                .bind(token_hash)
                .bind(account_id)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
            enqueue!(tx, [event]);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Uses a reset link once; the account it is for.
    pub async fn use_reset(
        &self,
        token_hash: &str,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar(
                "UPDATE auth_reset_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING account_id",
            )
            .bind(token_hash)
            .bind(now)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as(
                "SELECT kid, private_pkcs8, public_jwk, created_at, active_from, retire_at FROM auth_signing_keys ORDER BY active_from",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Adds `key`, and schedules the retirement of every key not yet scheduled.
    pub async fn add_signing_key(
        &self,
        key: &StoredKey,
        retire_old_at: Option<i64>,
    ) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            if let Some(at) = retire_old_at {
                sqlx::query("UPDATE auth_signing_keys SET retire_at = $1 WHERE retire_at IS NULL")
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "INSERT INTO auth_signing_keys (kid, private_pkcs8, public_jwk, created_at, active_from, retire_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&key.kid)
            .bind(&key.private_pkcs8)
            .bind(&key.public_jwk)
            .bind(key.created_at)
            .bind(key.active_from)
            .bind(key.retire_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Leases up to `limit` outbox rows, oldest first, to one relay until `lease_until`;
    /// returned in the order they were written. On PostgreSQL rows another relay is claiming
    /// are skipped, and the lease is tested again on the row locked; SQLite has one writer.
    pub async fn claim_outbox(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        const RETURNING: &str =
            "RETURNING event_id, topic, record_key, payload, event_type, created_at";
        let mut rows: Vec<OutboxRecord> = match &self.db {
            Database::Postgres(pool) => {
                let sql = format!(
                    "UPDATE auth_outbox SET claimed_until = $2 WHERE claimed_until < $1 AND event_id IN \
                     (SELECT event_id FROM auth_outbox WHERE claimed_until < $1 ORDER BY created_at, event_id LIMIT $3 \
                     FOR UPDATE SKIP LOCKED) {RETURNING}"
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(lease_until)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
            Database::Sqlite(pool) => {
                let sql = format!(
                    "UPDATE auth_outbox SET claimed_until = $2 WHERE event_id IN \
                     (SELECT event_id FROM auth_outbox WHERE claimed_until < $1 ORDER BY created_at, event_id LIMIT $3) {RETURNING}"
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(lease_until)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
        };
        // RETURNING has no order: an account's events must leave in the order written.
        rows.sort_by(|a, b| (a.created_at, &a.event_id).cmp(&(b.created_at, &b.event_id)));
        Ok(rows)
    }

    pub async fn delete_outbox(&self, event_ids: &[String]) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for id in event_ids {
                sqlx::query("DELETE FROM auth_outbox WHERE event_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM auth_outbox").fetch_one(pool).await?
        }))
    }

    pub async fn app_version(
        &self,
        platform: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        Ok(with_pool!(&self.db, pool => {
            sqlx::query_as("SELECT latest, minimum FROM app_versions WHERE platform = $1")
                .bind(platform)
                .fetch_optional(pool)
                .await?
        }))
    }

    pub async fn set_app_version(
        &self,
        platform: &str,
        latest: &str,
        minimum: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO app_versions (platform, latest, minimum, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (platform) DO UPDATE SET latest = $2, minimum = $3, updated_at = $4",
            )
            .bind(platform)
            .bind(latest)
            .bind(minimum)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite() -> SqlStore {
        let path = std::env::temp_dir().join(format!("herald-auth-{}.db", uuid::Uuid::new_v4()));
        let db = Database::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        SqlStore::new(db).await.unwrap()
    }

    fn account(id: &str, email: &str) -> Account {
        Account {
            id: id.into(),
            email: email.into(),
            password_hash: "h".into(),
            role: "user".into(),
            display_name: "A".into(),
            phone: Some("+15550100".into()),
            locale: "en".into(),
            time_zone: "UTC".into(),
            created_at: 1,
            updated_at: 1,
            deleted_at: None,
            phone_verified_at: None,
        }
    }

    fn event(id: &str) -> OutboxRecord {
        OutboxRecord {
            event_id: id.into(),
            topic: "users".into(),
            record_key: "k".into(),
            payload: vec![1, 2, 3],
            event_type: "user.registered".into(),
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn an_account_and_its_event_commit_together_or_not_at_all() {
        let store = sqlite().await;
        store
            .register(&account("a", "a@x.io"), &event("e1"))
            .await
            .unwrap();
        // Same email: refused, and its event is not queued either.
        let taken = store.register(&account("b", "a@x.io"), &event("e2")).await;
        assert!(matches!(taken, Err(StoreError::EmailTaken)));
        assert_eq!(store.outbox_len().await.unwrap(), 1);
        assert!(store.account("b").await.unwrap().is_none());
        // A claimed row is leased: another relay does not get it until the lease ends.
        let claimed = store.claim_outbox(10, 100, 10).await.unwrap();
        assert_eq!(claimed, [event("e1")]);
        assert!(store.claim_outbox(50, 150, 10).await.unwrap().is_empty());
        assert_eq!(store.claim_outbox(101, 200, 10).await.unwrap().len(), 1);
        store.delete_outbox(&["e1".into()]).await.unwrap();
        assert_eq!(store.outbox_len().await.unwrap(), 0);
        // A deleted account frees its email.
        assert!(store.soft_delete("a", 5, &event("e3")).await.unwrap());
        store
            .register(&account("c", "a@x.io"), &event("e4"))
            .await
            .unwrap();
    }

    fn privacy() -> Arc<Privacy> {
        use base64::Engine as _;
        let file = std::env::temp_dir().join(format!("herald-kek-{}", uuid::Uuid::new_v4()));
        let kek = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        std::fs::write(&file, format!("{kek}\n")).unwrap();
        let keks = platform::privacy::Keks::read(&file).unwrap();
        let keys = Arc::new(platform::privacy::MemoryKeyStore::default());
        Arc::new(Privacy::new(keks, keys))
    }

    #[tokio::test]
    async fn sealed_personal_columns_are_found_by_digest_and_read_back_until_the_erasure() {
        let plain = sqlite().await;
        plain
            .register(&account("a", "a@x.io"), &event("e1"))
            .await
            .unwrap();
        let privacy = privacy();
        // Rows written in plain text are sealed when privacy comes on.
        let store = SqlStore::new(plain.database().clone())
            .await
            .unwrap()
            .with_privacy(privacy.clone())
            .await
            .unwrap();
        store
            .register(&account("b", "b@x.io"), &event("e2"))
            .await
            .unwrap();
        let rows: Vec<(String, String, String, Option<String>, String)> = with_pool!(store.database(), pool => {
            sqlx::query_as("SELECT id, email, display_name, phone, email_lookup FROM auth_accounts ORDER BY id")
                .fetch_all(pool)
                .await
                .unwrap()
        });
        for (id, email, name, phone, lookup) in &rows {
            for sealed in [email, name, phone.as_ref().unwrap()] {
                assert!(sealed.starts_with("personal:v1:"), "{id}: {sealed}");
            }
            assert!(!lookup.contains("x.io"), "{id}: {lookup}");
        }
        assert_eq!(
            store.account("a").await.unwrap().unwrap(),
            account("a", "a@x.io")
        );
        let found = store.account_by_email("b@x.io").await.unwrap().unwrap();
        assert_eq!(found.id, "b");
        let taken = store.register(&account("c", "a@x.io"), &event("e3")).await;
        assert!(matches!(taken, Err(StoreError::EmailTaken)));
        // The phone: verified, found, kept verified by a change that leaves it as it is.
        assert!(store.verify_phone("a", "+15550100", 2).await.unwrap());
        assert_eq!(
            store
                .account_by_phone("+15550100")
                .await
                .unwrap()
                .unwrap()
                .id,
            "a"
        );
        let rename = ProfileChange {
            display_name: Some("Ann".into()),
            phone: Some("+15550100".into()),
            ..Default::default()
        };
        assert!(
            store
                .update_profile("a", &rename, 3, &event("e4"))
                .await
                .unwrap()
        );
        let renamed = store.account("a").await.unwrap().unwrap();
        assert_eq!(
            (renamed.display_name.as_str(), renamed.phone_verified_at),
            ("Ann", Some(2))
        );
        // Once the key is destroyed, nothing reads, and nothing new is written.
        privacy.erase("a").await.unwrap();
        let erased = store.account("a").await.unwrap().unwrap();
        assert_eq!(
            (
                erased.email.as_str(),
                erased.display_name.as_str(),
                erased.phone
            ),
            ("", "", None)
        );
        assert!(
            !store
                .update_profile("a", &rename, 4, &event("e5"))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn a_refresh_token_works_once_and_its_reuse_revokes_the_family() {
        let store = sqlite().await;
        store
            .register(&account("a", "a@x.io"), &event("e1"))
            .await
            .unwrap();
        store.insert_refresh("t1", "f", "a", 0, 1000).await.unwrap();
        assert_eq!(
            store.use_refresh("t1", "t2", 10, 1000).await.unwrap(),
            Refreshed::Rotated {
                account_id: "a".into()
            }
        );
        assert_eq!(
            store.use_refresh("t1", "t3", 20, 1000).await.unwrap(),
            Refreshed::Reused
        );
        // t2 was live; the reuse of t1 revoked it with its whole family.
        assert_eq!(
            store.use_refresh("t2", "t4", 30, 1000).await.unwrap(),
            Refreshed::Invalid
        );
        assert_eq!(
            store.use_refresh("nope", "t5", 30, 1000).await.unwrap(),
            Refreshed::Invalid
        );
        store.insert_refresh("old", "g", "a", 0, 5).await.unwrap();
        assert_eq!(
            store.use_refresh("old", "t6", 5, 1000).await.unwrap(),
            Refreshed::Invalid
        );
    }

    #[tokio::test]
    async fn the_sixth_attempt_in_the_window_is_not_recorded_and_is_refused() {
        let store = sqlite().await;
        store
            .register(&account("a", "a@x.io"), &event("e1"))
            .await
            .unwrap();
        for at in 1..=5 {
            let (allowed, times) = store.record_attempt("a", at, 0, 5).await.unwrap();
            assert!(allowed);
            assert_eq!(times.len() as i64, at);
        }
        let (allowed, times) = store.record_attempt("a", 6, 0, 5).await.unwrap();
        assert!(!allowed);
        assert_eq!(times, [1, 2, 3, 4, 5]);
        // Once the first attempt leaves the window, one more is allowed.
        let (allowed, _) = store.record_attempt("a", 12, 1, 5).await.unwrap();
        assert!(allowed);
        // A code is taken once, and only before it expires.
        store
            .put_code("a", "login", "h", 0, 100, &event("e2"))
            .await
            .unwrap();
        assert!(!store.take_code("a", "login", "wrong", 10).await.unwrap());
        assert!(store.take_code("a", "login", "h", 10).await.unwrap());
        assert!(!store.take_code("a", "login", "h", 11).await.unwrap());
        store
            .put_code("a", "login", "h", 0, 100, &event("e3"))
            .await
            .unwrap();
        assert!(!store.take_code("a", "login", "h", 100).await.unwrap());
    }
}
