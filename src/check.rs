//! `herald check <service>`: a service's whole configuration, read from the same flags,
//! environment and `NAME_FILE` secrets as `herald <service>` reads them, and checked as far
//! as it can be without connecting to anything or creating anything. A deployment file can
//! so be tried before it is deployed: the tests run this with the environment of every
//! service in docker-compose.yml and the Kubernetes manifests.
//!
//! What only a connection can tell (a broker that answers, a password the database takes, a
//! port already in use) is left to the service's start.

use anyhow::Context;
use platform::consumer::ConsumerArgs;
use platform::db::Database;
use platform::kafka::KafkaArgs;

use crate::services::{
    AuditLogArgs, AuthServiceArgs, IngressServiceArgs, NotificationsArgs, ReportsServiceArgs,
    SearchIndexerArgs, StoreArgs, UpArgs,
};

/// The service whose settings are checked, with its settings.
// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, clap::Subcommand)]
pub enum Checked {
    /// `herald up`: everything on one machine (what is missing is made at start).
    Up(UpArgs),
    /// `herald ingress`.
    Ingress(IngressServiceArgs),
    /// `herald auth`.
    Auth(AuthServiceArgs),
    /// `herald audit-log`.
    AuditLog(AuditLogArgs),
    /// `herald notifications`.
    Notifications(NotificationsArgs),
    /// `herald search-indexer`.
    SearchIndexer(SearchIndexerArgs),
    /// `herald reports`.
    Reports(ReportsServiceArgs),
}

impl Checked {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Up(_) => "up",
            Self::Ingress(_) => "ingress",
            Self::Auth(_) => "auth",
            Self::AuditLog(_) => "audit-log",
            Self::Notifications(_) => "notifications",
            Self::SearchIndexer(_) => "search-indexer",
            Self::Reports(_) => "reports",
        }
    }
}

/// Checks `checked`'s settings; the first bad one is the error, named.
pub fn check(checked: &Checked) -> anyhow::Result<()> {
    match checked {
        Checked::Up(args) => up(args),
        Checked::Ingress(args) => {
            kafka(&args.kafka)?;
            store(&args.store)?;
            args.ingress.auth.check()?;
            let catalog = args.ingress.contract.check(None)?;
            args.ingress.check(&catalog)?;
            Ok(args.edge.check()?)
        }
        Checked::Auth(args) => {
            kafka(&args.kafka)?;
            store(&args.store)?;
            // It verifies with the keys it issues: no others are needed.
            platform::auth::Authenticator::from_static_args(&args.auth)?;
            let sealing = args
                .action
                .is_none()
                .then_some("the auth service seals the OTP codes and reset links it sends");
            args.contract.check(sealing)?;
            args.accounts.check()?;
            args.topics.check().map_err(anyhow::Error::msg)?;
            Ok(args.edge.check()?)
        }
        Checked::AuditLog(args) => {
            kafka(&args.kafka)?;
            store(&args.store)?;
            args.auth.check()?;
            args.contract.check(None)?;
            consumer(&args.consumer, &args.kafka)?;
            Ok(args.edge.check()?)
        }
        Checked::Notifications(args) => {
            kafka(&args.kafka)?;
            anyhow::ensure!(
                args.notify.smtp_url.is_some() || args.notify.email_outbox.is_some(),
                "herald notifications needs SMTP_URL, or NOTIFY_EMAIL_OUTBOX to write emails \
                 to a folder instead"
            );
            store(&args.store)?;
            args.auth.check()?;
            args.contract.check(None)?;
            notifications::check(&args.notify, &args.contract)?;
            consumer(&args.consumer, &args.kafka)?;
            Ok(args.edge.check()?)
        }
        Checked::SearchIndexer(args) => {
            kafka(&args.kafka)?;
            args.auth.check()?;
            args.contract.check(None)?;
            // It has no database of its own to find the data keys in.
            anyhow::ensure!(
                args.contract.privacy_key_file.is_none()
                    || args.contract.privacy_database_url.is_some(),
                "PRIVACY_KEY_FILE is set and PRIVACY_DATABASE_URL is not: the search indexer \
                 has no database of its own to find the data keys in; give it the one the other \
                 services keep them in"
            );
            consumer(&args.consumer, &args.kafka)?;
            args.search.check(&args.data_dir.join("search"))?;
            Ok(args.edge.check()?)
        }
        Checked::Reports(args) => {
            kafka(&args.kafka)?;
            store(&args.store)?;
            args.auth.check()?;
            args.contract.check(None)?;
            args.reports.schedule()?;
            consumer(&args.consumer, &args.kafka)?;
            Ok(args.edge.check()?)
        }
    }
}

/// `herald up` makes what is missing (a broker, the secrets, an outbox): only what is given
/// is checked, with the stand-ins it would make.
fn up(args: &UpArgs) -> anyhow::Result<()> {
    let mut kafka_args = args.kafka.clone();
    kafka_args
        .brokers
        .get_or_insert_with(|| format!("127.0.0.1:{}", args.local_kafka_port));
    kafka(&kafka_args)?;
    store(&args.store)?;
    platform::auth::Authenticator::from_static_args(&args.ingress.auth)?;
    let catalog = args.ingress.contract.check(None)?;
    args.ingress.check(&catalog)?;
    consumer(&args.consumer, &kafka_args)?;
    let mut notify = args.notify.clone();
    if notify.smtp_url.is_none() {
        notify
            .email_outbox
            .get_or_insert_with(|| args.store.data_dir.join("outbox"));
    }
    let mut contract = args.ingress.contract.clone();
    if contract.sealing_key.is_none() {
        contract.sealing_key = Some(stand_in_secret());
    }
    if notify.unsubscribe_secret.is_none() {
        notify.unsubscribe_secret = Some(stand_in_secret());
    }
    notify
        .public_url
        .get_or_insert_with(|| format!("http://{}", args.listen));
    notifications::check(&notify, &contract)?;
    args.search.check(&args.store.data_dir.join("search"))?;
    args.reports.schedule()?;
    Ok(args.edge.check()?)
}

/// A well-formed secret where `herald up` would make one of its own (32 bytes, base64).
fn stand_in_secret() -> secrecy::SecretString {
    secrecy::SecretString::from("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
}

fn kafka(args: &KafkaArgs) -> anyhow::Result<()> {
    args.check()
        .context("KAFKA_BROKERS or KAFKA_PROPERTIES (see the README's deployment section)")?;
    platform::topics::Declared::load(args.topics_file.as_deref()).context("TOPICS_FILE")?;
    Ok(())
}

fn consumer(args: &ConsumerArgs, kafka: &KafkaArgs) -> anyhow::Result<()> {
    args.check(kafka)
        .context("the CONSUMER_* settings, with KAFKA_PROPERTIES")
}

fn store(args: &StoreArgs) -> anyhow::Result<()> {
    Ok(Database::check_url(&args.url())?)
}
