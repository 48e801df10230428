//! `herald privacy`: erase a data subject, rotate the key-encryption key. Both work on the
//! deployment's database and key file, beside running services or without them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use platform::auth::AuthArgs;
use platform::contract::ContractArgs;
use platform::kafka::KafkaArgs;
use platform::privacy::Keks;

use crate::services::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum PrivacyAction {
    /// Erase a person: destroy their data key (every copy of their personal fields, on the
    /// log, in the audit log and in backups, becomes unreadable), blank their account, and
    /// publish `user.erased` so every consumer deletes what it derived.
    Erase {
        /// The data subject: an account's id, or what a schema's herald.personal.subject
        /// names.
        #[arg(long)]
        subject: String,
        /// Why, as the `user.erased` event says it.
        #[arg(long, default_value = "erased by an operator")]
        reason: String,
        #[command(flatten)]
        deployment: Deployment,
        #[command(flatten)]
        kafka: Box<KafkaArgs>,
        #[command(flatten)]
        auth: Box<AuthArgs>,
    },
    /// Run the retention job once now (`erase-deleted-accounts`, hourly in the auth
    /// service): erase the people of accounts deleted more than ERASE_DELETED_AFTER_DAYS ago
    /// and not erased yet.
    EraseDeleted {
        #[command(flatten)]
        deployment: Deployment,
        #[command(flatten)]
        kafka: Box<KafkaArgs>,
        #[command(flatten)]
        auth: Box<AuthArgs>,
        #[command(flatten)]
        accounts: Box<auth::AccountsArgs>,
    },
    /// Put a new key-encryption key first in PRIVACY_KEY_FILE and rewrap every data key with
    /// it. Running services read the file again by themselves; once this has finished, the
    /// old keys can be removed from the file.
    RotateKey {
        #[command(flatten)]
        deployment: Deployment,
    },
}

/// Where the deployment keeps its data and keys.
#[derive(Debug, Clone, Args)]
pub struct Deployment {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub contract: ContractArgs,
}

impl Deployment {
    /// The data folder's key file, when PRIVACY_KEY_FILE is unset and it exists; without
    /// either, personal data is not encrypted here, and an erasure reaches the derived
    /// copies only.
    fn find_key_file(&mut self) {
        let file = data_folder_key_file(&self.store.data_dir);
        if self.contract.privacy_key_file.is_none() && file.exists() {
            self.contract.privacy_key_file = Some(file);
        }
    }

    /// The key file: PRIVACY_KEY_FILE, else the data folder's (which `herald up` made).
    fn key_file(&mut self) -> anyhow::Result<PathBuf> {
        if self.contract.privacy_key_file.is_none() {
            let file = data_folder_key_file(&self.store.data_dir);
            anyhow::ensure!(
                file.exists(),
                "PRIVACY_KEY_FILE is not set and {} does not exist: personal data is not \
                 encrypted in this deployment (set PRIVACY_KEY_FILE to the services' key file)",
                file.display()
            );
            self.contract.privacy_key_file = Some(file);
        }
        Ok(self.contract.privacy_key_file.clone().expect("set above"))
    }
}

/// The key file `herald up` makes in its data folder.
pub fn data_folder_key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("privacy-keys")
}

/// Makes the data folder's key file if there is none; answers its path.
pub fn ensure_data_folder_key_file(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let file = data_folder_key_file(data_dir);
    if Keks::create_file(&file).with_context(|| format!("creating {}", file.display()))? {
        tracing::info!(file = %file.display(), "made a key-encryption key for personal data");
    }
    Ok(file)
}

pub async fn privacy(action: PrivacyAction) -> anyhow::Result<()> {
    match action {
        PrivacyAction::Erase {
            subject,
            reason,
            mut deployment,
            kafka,
            auth,
        } => {
            deployment.find_key_file();
            let service =
                auth_service(&deployment, &kafka, &auth, &auth::AccountsArgs::default()).await?;
            let erased = service.erase(&subject, &reason).await?;
            println!(
                "herald privacy erase: {subject}: data key {}, account {}; user.erased is \
                 published, and each consumer deletes what it derived as it reads it",
                if erased.key_destroyed {
                    "destroyed"
                } else {
                    "none left (never made, or destroyed before)"
                },
                if erased.account_erased {
                    "blanked"
                } else {
                    "none"
                },
            );
            Ok(())
        }
        PrivacyAction::EraseDeleted {
            mut deployment,
            kafka,
            auth,
            accounts,
        } => {
            deployment.find_key_file();
            let service = auth_service(&deployment, &kafka, &auth, &accounts).await?;
            let erased = service.erase_deleted().await?;
            service.publish_outbox().await?;
            println!(
                "herald privacy erase-deleted: {erased} deleted account(s) past {} days erased",
                accounts.erase_deleted_after_days
            );
            Ok(())
        }
        PrivacyAction::RotateKey { mut deployment } => {
            let file = deployment.key_file()?;
            let db = deployment.store.connect().await?;
            let id = Keks::prepend_new_key(&file)?;
            let privacy = deployment
                .contract
                .privacy(Some(&db))
                .await?
                .context("PRIVACY_KEY_FILE")?;
            let rewrapped = privacy.rotate().await?;
            println!(
                "herald privacy rotate-key: {} now wraps every data key ({rewrapped} rewrapped); \
                 the keys after the first line of {} can be removed once every service has \
                 read the file again (a minute)",
                id,
                file.display()
            );
            Ok(())
        }
    }
}

/// The auth service's parts, to act on accounts from the command line.
async fn auth_service(
    deployment: &Deployment,
    kafka: &KafkaArgs,
    auth: &AuthArgs,
    accounts: &auth::AccountsArgs,
) -> anyhow::Result<auth::Service> {
    anyhow::ensure!(
        kafka.brokers.is_some(),
        "herald privacy needs KAFKA_BROKERS, to publish user.erased"
    );
    let db = deployment.store.connect().await?;
    auth::Service::connect(
        db,
        kafka,
        &deployment.contract,
        auth,
        accounts,
        auth::Setup {
            redis_url: None,
            topics: Default::default(),
        },
    )
    .await
}

/// The deployment's privacy for a tool on the log (replay, tail): PRIVACY_KEY_FILE, or the
/// key file of the data folder (HERALD_DATA_DIR, default `data`), with the keys in
/// PRIVACY_DATABASE_URL, DATABASE_URL or the data folder's database. `None` when there is no
/// key file: personal fields are then shown as the log holds them.
pub async fn for_tool(
    contract: &ContractArgs,
) -> anyhow::Result<Option<std::sync::Arc<platform::privacy::Privacy>>> {
    let mut contract = contract.clone();
    let data_dir =
        std::env::var_os("HERALD_DATA_DIR").map_or_else(|| PathBuf::from("data"), PathBuf::from);
    if contract.privacy_key_file.is_none() {
        let file = data_folder_key_file(&data_dir);
        if !file.exists() {
            return Ok(None);
        }
        contract.privacy_key_file = Some(file);
    }
    if contract.privacy_database_url.is_none() {
        contract.privacy_database_url = Some(match std::env::var("DATABASE_URL") {
            Ok(url) => url,
            Err(_) => StoreArgs {
                data_dir,
                database_url: None,
            }
            .url(),
        });
    }
    contract.privacy(None).await
}
