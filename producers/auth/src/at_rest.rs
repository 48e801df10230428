//! How an account's personal columns (email, display name, phone) are kept in the auth
//! tables.
//!
//! With privacy on (a key-encryption key file), each is encrypted under the account's own
//! data key, as its events are on the log. An erasure destroys that key, so nothing
//! readable is left, whether in the row, in the old row versions a database keeps until it
//! vacuums, or in its write-ahead log and backups. Sign-in finds an account by a keyed
//! digest of its email or phone ([`Privacy::digest`]) instead.
//!
//! With privacy off, the columns and their digests are the values themselves.

use std::sync::Arc;

use platform::privacy::{Privacy, PrivacyError, Revealed};

use crate::store::{Account, StoreError};

/// The personal columns as a row stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedColumns {
    pub email: String,
    pub email_lookup: String,
    pub display_name: String,
    pub phone: Option<String>,
    pub phone_lookup: Option<String>,
}

/// Seals and opens the personal columns of accounts (see the module's documentation).
#[derive(Clone, Default)]
pub struct AtRest(Option<Arc<Privacy>>);

impl AtRest {
    pub fn sealed(privacy: Arc<Privacy>) -> Self {
        Self(Some(privacy))
    }

    pub fn is_sealed(&self) -> bool {
        self.0.is_some()
    }

    /// What the account is found by: `field`'s value, as a digest.
    pub async fn lookup(&self, field: &str, value: &str) -> Result<String, StoreError> {
        match &self.0 {
            Some(privacy) => Ok(privacy.digest(field, value).await?),
            None => Ok(value.to_string()),
        }
    }

    /// `value`, the account `id`'s `field`, as stored. [`PrivacyError::Erased`] when the
    /// account was erased: nothing new is kept about them.
    pub async fn seal(&self, id: &str, field: &str, value: &str) -> Result<String, StoreError> {
        match &self.0 {
            Some(privacy) => Ok(privacy.protect(id, field, value).await?),
            None => Ok(value.to_string()),
        }
    }

    /// A stored value read back; empty once the account was erased.
    async fn open(&self, id: &str, field: &str, stored: &str) -> Result<String, StoreError> {
        match &self.0 {
            Some(privacy) => Ok(match privacy.reveal(id, field, stored).await? {
                Revealed::Plain(plain) => plain,
                Revealed::Erased => String::new(),
            }),
            None => Ok(stored.to_string()),
        }
    }

    /// The personal columns of `account` (in plain text), as its row stores them.
    pub async fn seal_account(&self, account: &Account) -> Result<SealedColumns, StoreError> {
        let id = &account.id;
        let phone = match &account.phone {
            Some(phone) => Some((
                self.seal(id, "phone", phone).await?,
                self.lookup("phone", phone).await?,
            )),
            None => None,
        };
        Ok(SealedColumns {
            email: self.seal(id, "email", &account.email).await?,
            email_lookup: self.lookup("email", &account.email).await?,
            display_name: self.seal(id, "display_name", &account.display_name).await?,
            phone_lookup: phone.as_ref().map(|(_, lookup)| lookup.clone()),
            phone: phone.map(|(sealed, _)| sealed),
        })
    }

    /// `stored`, a row as read, with its personal columns in plain text.
    pub async fn open_account(&self, mut stored: Account) -> Result<Account, StoreError> {
        let id = stored.id.clone();
        stored.email = self.open(&id, "email", &stored.email).await?;
        stored.display_name = self.open(&id, "display_name", &stored.display_name).await?;
        stored.phone = match stored.phone.take() {
            Some(phone) => Some(self.open(&id, "phone", &phone).await?).filter(|p| !p.is_empty()),
            None => None,
        };
        Ok(stored)
    }
}

/// Whether a store failure is the account's erasure (a write that raced with it).
pub fn is_erased(err: &StoreError) -> bool {
    matches!(err, StoreError::Privacy(PrivacyError::Erased))
}
