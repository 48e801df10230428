//! Starting services: each alone with its own settings (`herald audit-log`), or all of them
//! in one process (`herald up`). Either way a service is built by its crate and run by
//! `platform::service::run`, which merges the routes and owns every task; `herald up` is the
//! list in [`all`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ingress::IngressArgs;
use ingress::idempotency::SqlStore;
use notifications::NotifyArgs;
use platform::auth::{AuthArgs, Authenticator};
use platform::broker::LocalBroker;
use platform::consumer::ConsumerArgs;
use platform::contract::ContractArgs;
use platform::db::{Database, redact_url};
use platform::edge::{Edge, EdgeArgs};
use platform::kafka::KafkaArgs;
use platform::service::Service;
use reports::ReportsArgs;
use search_indexer::SearchArgs;
use tokio_util::sync::CancellationToken;

/// `herald up` settings: every service's, on one port.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Address of the HTTP API (every service's routes on one port).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Port of the local broker the first time `herald up` starts it.
    #[arg(long, env = "HERALD_KAFKA_PORT", default_value_t = 9092)]
    pub local_kafka_port: u16,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub ingress: IngressArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub notify: NotifyArgs,
    #[command(flatten)]
    pub search: SearchArgs,
    #[command(flatten)]
    pub reports: ReportsArgs,
    #[command(flatten)]
    pub accounts: auth::AccountsArgs,
    #[command(flatten)]
    pub streams: replay::stream::StreamArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
}

/// `herald ingress` settings.
#[derive(Debug, Clone, Args)]
pub struct IngressServiceArgs {
    /// Address of the ingress API, the API reference, /healthz and /metrics.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where idempotency keys are kept.
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub ingress: IngressArgs,
    #[command(flatten)]
    pub streams: replay::stream::StreamArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
}

/// `herald auth` settings.
#[derive(Debug, Clone, Args)]
pub struct AuthServiceArgs {
    /// Address of the auth API, /.well-known/jwks.json, /healthz and /metrics.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8085")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub contract: ContractArgs,
    #[command(flatten)]
    pub accounts: auth::AccountsArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub topics: platform::kafka::TopicOverrides,
    #[command(subcommand)]
    pub action: Option<AuthAction>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuthAction {
    /// Start a signing-key rotation: the new key is published now and signs after
    /// SIGNING_KEY_LEAD_SECS; the old keys leave the JWKS once their tokens have expired.
    RotateKey,
    /// Give an account a role (how the first admin is made).
    SetRole {
        /// The account's email.
        #[arg(long)]
        email: String,
        /// user or admin.
        #[arg(long)]
        role: String,
    },
}

/// `herald audit-log` settings.
#[derive(Debug, Clone, Args)]
pub struct AuditLogArgs {
    /// Address of the audit query API, /healthz and /metrics.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub contract: ContractArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
}

/// `herald notifications` settings.
#[derive(Debug, Clone, Args)]
pub struct NotificationsArgs {
    /// Address of the notifications API, /healthz and /metrics.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub contract: ContractArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub notify: NotifyArgs,
    #[command(subcommand)]
    pub action: Option<NotificationsAction>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum NotificationsAction {
    /// Rebuild the recipients and orders the service knows from the users and orders
    /// topics, sending nothing (after a restore from an older backup, or a lost database).
    RebuildProjection,
}

/// `herald search-indexer` settings.
#[derive(Debug, Clone, Args)]
pub struct SearchIndexerArgs {
    /// Address of the search API, /healthz and /metrics.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8083")]
    pub listen: SocketAddr,
    /// Folder for local data; the index defaults to `<data>/search`.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub contract: ContractArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub search: SearchArgs,
    #[command(subcommand)]
    pub action: Option<SearchAction>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum SearchAction {
    /// Build a fresh index from the start of the topics beside the live one, and make it
    /// current once it has caught up (a running indexer switches to it; queries never see a
    /// half-built index).
    Reindex,
}

/// `herald reports` settings.
#[derive(Debug, Clone, Args)]
pub struct ReportsServiceArgs {
    /// Address of the reports API, /healthz and /metrics.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8084")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub contract: ContractArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub edge: EdgeArgs,
    #[command(flatten)]
    pub reports: ReportsArgs,
    #[command(subcommand)]
    pub action: Option<ReportsAction>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ReportsAction {
    /// Produce one period of one report now (once, like a scheduled run: a period produced
    /// already is not produced again).
    Run {
        /// The report's name in the schedule.
        report: String,
        /// The period: 2026-11-22T10 (hour), 2026-11-21 (day) or 2026-W47 (week), in the
        /// report's time zone.
        #[arg(long)]
        period: String,
    },
}

/// Where a service keeps its data.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Folder for all local data: broker logs, SQLite database, generated secrets.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// postgres://... for several replicas; default: a SQLite file in the data folder.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl StoreArgs {
    /// DATABASE_URL, or the SQLite file of the data folder.
    pub fn url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("herald.db").display()))
    }

    pub async fn connect(&self) -> anyhow::Result<Database> {
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        let url = self.url();
        let db = Database::connect(&url).await?;
        tracing::info!(database = %redact_url(&url), "database connected");
        Ok(db)
    }
}

pub async fn up(mut args: UpArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.store.data_dir)
        .with_context(|| format!("creating {}", args.store.data_dir.display()))?;
    let broker = match &args.kafka.brokers {
        Some(brokers) => {
            tracing::info!(%brokers, "using the configured kafka cluster");
            None
        }
        None => {
            let broker = LocalBroker::start(
                &args.store.data_dir.join("kafka"),
                Some(args.local_kafka_port),
            )
            .await?;
            args.kafka.brokers = Some(broker.bootstrap());
            Some(broker)
        }
    };
    // The local broker is brought back whenever it dies, for as long as the services run.
    let watching = CancellationToken::new();
    let supervisor = broker.map(|broker| tokio::spawn(broker.supervise(watching.clone())));
    let result = up_services(args).await;
    watching.cancel();
    if let Some(supervisor) = supervisor {
        let broker = supervisor.await.context("local broker supervisor")?;
        if broker.owned() {
            tracing::info!("stopping the local kafka broker");
            broker.stop(Duration::from_secs(30)).await;
        }
    }
    result
}

/// Every service in this process, with what `herald up` fills in for one machine: the data
/// folder's secrets, an outbox folder for emails, its own auth service's JWKS.
async fn up_services(mut args: UpArgs) -> anyhow::Result<()> {
    let data_dir = args.store.data_dir.clone();
    let auth = &args.ingress.auth;
    if auth.jwt_hs256_secret.is_none()
        && auth.jwt_public_key_file.is_none()
        && auth.jwt_jwks_file.is_none()
    {
        args.ingress.auth.jwt_hs256_secret = Some(crate::dev_secret(&dev_secret_of(&data_dir))?);
        tracing::info!(
            "using the development HS256 secret of the data folder; `herald token` signs with it"
        );
    }
    if args.ingress.contract.sealing_key.is_none() {
        args.ingress.contract.sealing_key = Some(crate::dev_sealing_key(&data_dir)?);
    }
    if args.streams.stream_cursor_key.is_none() {
        args.streams.stream_cursor_key = Some(crate::dev_key(&data_dir, "stream-cursor-key")?);
    }
    if args.ingress.contract.privacy_key_file.is_none() {
        args.ingress.contract.privacy_key_file =
            Some(crate::privacy::ensure_data_folder_key_file(&data_dir)?);
    }
    let listener = bind(args.listen)?;
    let local = reachable(listener.local_addr()?);
    // The auth service runs in this process: everything verifies its tokens too.
    args.ingress
        .auth
        .jwt_jwks_url
        .get_or_insert_with(|| format!("http://{local}/.well-known/jwks.json"));
    if args.notify.smtp_url.is_none() && args.notify.email_outbox.is_none() {
        let outbox = data_dir.join("outbox");
        tracing::info!(outbox = %outbox.display(), "no SMTP_URL: emails are written as .eml files");
        args.notify.email_outbox = Some(outbox);
    }
    if args.notify.unsubscribe_secret.is_none() {
        args.notify.unsubscribe_secret = Some(crate::dev_secret(&dev_secret_of(&data_dir))?);
    }
    args.notify
        .public_url
        .get_or_insert_with(|| format!("http://{local}"));
    let db = args.store.connect().await?;
    // One privacy for every service of this process: an erasure is seen by all at once.
    if let Some(privacy) = args.ingress.contract.privacy(Some(&db)).await? {
        args.ingress.contract.shared_privacy = Some(platform::contract::SharedPrivacy(privacy));
    }
    // One verifier for the edge, the ingress and every consumer of this process.
    let verify = Arc::new(Authenticator::from_args(&args.ingress.auth)?);
    let services = all(&args, db, verify.clone()).await?;
    let serving = serving(listener, &args.edge, verify).await?;
    let brokers = args.kafka.brokers.clone().unwrap_or_default();
    tracing::info!(http = %local, kafka = %brokers, "herald is ready");
    println!("herald: HTTP API on http://{local}  (kafka: {brokers})");
    print!("{}", banner(local, &data_dir));
    platform::service::run(serving, services).await
}

/// `herald up`: every service. Adding a service is one line here.
async fn all(
    args: &UpArgs,
    db: Database,
    verify: Arc<Authenticator>,
) -> anyhow::Result<Vec<Box<dyn Service>>> {
    let (kafka, contract, consumer) = (&args.kafka, &args.ingress.contract, &args.consumer);
    let ingress = ingress_state(&args.ingress, kafka, &db, verify.clone()).await?;
    let accounts = auth::Setup {
        redis_url: args.edge.redis_url.as_deref(),
        topics: args.ingress.topics,
    };
    let search_dir = args.store.data_dir.join("search");
    let (streams, views) = readers(
        &args.streams,
        &args.ingress,
        kafka,
        &db,
        &ingress,
        verify.clone(),
    )
    .await?;
    Ok(vec![
        Box::new(crate::reference::service(ingress.catalog())),
        Box::new(streams),
        Box::new(views),
        Box::new(ingress::Service::new(ingress)),
        Box::new(
            auth::Service::connect(
                db.clone(),
                kafka,
                contract,
                &args.ingress.auth,
                &args.accounts,
                accounts,
            )
            .await?,
        ),
        Box::new(
            audit_log::Service::connect(db.clone(), kafka, contract, consumer, verify.clone())
                .await?,
        ),
        Box::new(
            notifications::Service::connect(
                db.clone(),
                kafka,
                contract,
                consumer,
                verify.clone(),
                &args.notify,
            )
            .await?,
        ),
        Box::new(
            search_indexer::Service::connect(
                kafka,
                contract,
                consumer,
                verify.clone(),
                &args.search,
                search_dir,
            )
            .await?,
        ),
        Box::new(
            reports::Service::connect(db, kafka, contract, consumer, verify, &args.reports).await?,
        ),
    ])
}

fn dev_secret_of(data_dir: &std::path::Path) -> crate::DevSecretArgs {
    crate::DevSecretArgs {
        data_dir: data_dir.to_path_buf(),
        jwt_hs256_secret: None,
    }
}

/// The ingress's state: its idempotency store in `db`, its producer, its catalog.
async fn ingress_state(
    args: &IngressArgs,
    kafka: &KafkaArgs,
    db: &Database,
    verify: Arc<Authenticator>,
) -> anyhow::Result<Arc<ingress::AppState>> {
    let store = Arc::new(SqlStore::new(db.clone()).await?);
    let privacy = args.contract.privacy(Some(db)).await?;
    Ok(Arc::new(
        ingress::connect(args, kafka, store, verify, privacy).await?,
    ))
}

/// What reads the log over HTTP beside the ingress, with its catalog and one codec: the
/// event streams (personal fields revealed with the same keys) and the operators' views
/// (lag, dead letters).
async fn readers(
    args: &replay::stream::StreamArgs,
    ingress: &IngressArgs,
    kafka: &KafkaArgs,
    db: &Database,
    state: &ingress::AppState,
    verify: Arc<Authenticator>,
) -> anyhow::Result<(replay::stream::Service, replay::admin::Service)> {
    let catalog = state.catalog().clone();
    let codec = Arc::new(ingress.contract.codec(catalog.clone(), kafka).await?);
    let revealer = ingress
        .contract
        .privacy(Some(db))
        .await?
        .map(|privacy| platform::privacy::BlockingRevealer::new(privacy, catalog.clone()));
    let streams = replay::stream::Streams::new(
        args,
        kafka,
        catalog,
        codec.clone(),
        revealer,
        verify.clone(),
    );
    let views = replay::admin::Admin {
        kafka: kafka.clone(),
        codec,
        auth: verify,
        redriving: tokio::sync::Mutex::default(),
    };
    Ok((
        replay::stream::Service(Arc::new(streams)),
        replay::admin::Service(Arc::new(views)),
    ))
}

/// `herald ingress`: the ingress and the API reference. Started alone it must be
/// configured: a forgotten secret is an error rather than a generated key.
pub async fn ingress(args: IngressServiceArgs) -> anyhow::Result<()> {
    needs_brokers(&args.kafka, "ingress")?;
    let db = args.store.connect().await?;
    let verify = Arc::new(Authenticator::from_args(&args.ingress.auth)?);
    let state = ingress_state(&args.ingress, &args.kafka, &db, verify.clone()).await?;
    let (streams, views) = readers(
        &args.streams,
        &args.ingress,
        &args.kafka,
        &db,
        &state,
        verify.clone(),
    )
    .await?;
    let services: Vec<Box<dyn Service>> = vec![
        Box::new(crate::reference::service(state.catalog())),
        Box::new(streams),
        Box::new(views),
        Box::new(ingress::Service::new(state)),
    ];
    alone("ingress", args.listen, &args.edge, verify, services).await
}

fn needs_brokers(kafka: &KafkaArgs, service: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        kafka.brokers.is_some(),
        "herald {service} needs KAFKA_BROKERS (or use `herald up`, which starts a local broker \
         and runs every service)"
    );
    Ok(())
}

fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    platform::http::bind(listen).with_context(|| format!("binding {listen}"))
}

/// The listener behind the edge, stopped by a signal.
async fn serving(
    listener: tokio::net::TcpListener,
    edge: &EdgeArgs,
    verify: Arc<Authenticator>,
) -> anyhow::Result<platform::service::Serving> {
    Ok(platform::service::Serving {
        listener,
        edge: Arc::new(Edge::new(edge, Some(verify)).await?),
        options: edge.serve_options(),
        shutdown: platform::shutdown::on_signal(),
    })
}

/// Runs `services` of one subcommand on `listen`, announcing its address.
async fn alone(
    name: &str,
    listen: SocketAddr,
    edge: &EdgeArgs,
    verify: Arc<Authenticator>,
    services: Vec<Box<dyn Service>>,
) -> anyhow::Result<()> {
    let serving = serving(bind(listen)?, edge, verify).await?;
    let local = serving.local_addr()?;
    tracing::info!(http = %local, "{name} is ready");
    println!("herald {name}: HTTP API on http://{local}");
    platform::service::run(serving, services).await
}

/// What `herald up` prints once ready, under the address line: where to go next.
fn banner(http: SocketAddr, data_dir: &std::path::Path) -> String {
    let data = data_dir.display();
    format!(
        "  docs     http://{http}/docs  (every route; the OpenAPI document is /api/v1/openapi.json)\n\
         \x20 console  http://{http}/console  (admins; herald auth set-role --email E --role admin makes one)\n\
         \x20 metrics  http://{http}/metrics\n\
         \x20 data     {data}  (broker, database, secrets; without SMTP_URL, emails as .eml files in {data}/outbox)\n\
         \x20 token    herald token --sub alice --role user  (admin, analyst, service: --role)\n\
         \x20 tools    herald tail orders, herald lag, herald replay ...: they find this broker\n"
    )
}

/// The address this process answers on, as a client on this machine can reach it.
fn reachable(local: SocketAddr) -> SocketAddr {
    let mut reachable = local;
    if reachable.ip().is_unspecified() {
        reachable.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    reachable
}

/// `herald auth`: accounts, sessions and codes, with their outbox relay; or one of its
/// administrative actions.
pub async fn auth_service(args: AuthServiceArgs) -> anyhow::Result<()> {
    needs_brokers(&args.kafka, "auth")?;
    let db = args.store.connect().await?;
    let service = auth::Service::connect(
        db,
        &args.kafka,
        &args.contract,
        &args.auth,
        &args.accounts,
        auth::Setup {
            redis_url: args.edge.redis_url.as_deref(),
            topics: args.topics,
        },
    )
    .await?;
    match &args.action {
        Some(AuthAction::RotateKey) => {
            let (kid, rotation) = service.rotate_key().await?;
            println!(
                "herald auth rotate-key: {kid} is published now and signs {} s from now",
                (rotation.active_from - auth::outbox::now_us()) / 1_000_000
            );
            return Ok(());
        }
        Some(AuthAction::SetRole { email, role }) => {
            let id = service.set_role(email, role).await?;
            println!(
                "herald auth set-role: {email} ({id}) is now {role}; it applies from the account's next token"
            );
            return Ok(());
        }
        None => {}
    }
    // Serving, it sends codes and reset links: sealed, never in plain text on the log.
    args.contract
        .sealing_key("the auth service seals the OTP codes and reset links it sends")?;
    // The service's own verifier: the configured keys and its own JWKS, from its store.
    let verify = service.authenticator();
    alone(
        "auth",
        args.listen,
        &args.edge,
        verify,
        vec![Box::new(service)],
    )
    .await
}

/// `herald audit-log`: the consumer and its query API.
pub async fn audit_log(args: AuditLogArgs) -> anyhow::Result<()> {
    needs_brokers(&args.kafka, "audit-log")?;
    let verify = Arc::new(Authenticator::from_args(&args.auth)?);
    let db = args.store.connect().await?;
    let service = audit_log::Service::connect(
        db,
        &args.kafka,
        &args.contract,
        &args.consumer,
        verify.clone(),
    )
    .await?;
    alone(
        "audit-log",
        args.listen,
        &args.edge,
        verify,
        vec![Box::new(service)],
    )
    .await
}

/// `herald notifications`: the consumer and its API; `rebuild-projection`: what it knows of
/// recipients, from the topics.
pub async fn notifications(args: NotificationsArgs) -> anyhow::Result<()> {
    needs_brokers(&args.kafka, "notifications")?;
    if let Some(NotificationsAction::RebuildProjection) = args.action {
        let db = args.store.connect().await?;
        let started = std::time::Instant::now();
        let rebuilt = notifications::rebuild_projection(db, &args.kafka, &args.contract).await?;
        println!(
            "herald notifications rebuild-projection: {} user changes and {} orders applied \
             again in {:.1} s; nothing was sent",
            rebuilt.user_changes,
            rebuilt.orders,
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    anyhow::ensure!(
        args.notify.smtp_url.is_some() || args.notify.email_outbox.is_some(),
        "herald notifications needs SMTP_URL (e.g. smtp://user:pass@mail.example.com:587?tls=required), \
         or NOTIFY_EMAIL_OUTBOX to write emails to a folder instead"
    );
    let verify = Arc::new(Authenticator::from_args(&args.auth)?);
    let db = args.store.connect().await?;
    let service = notifications::Service::connect(
        db,
        &args.kafka,
        &args.contract,
        &args.consumer,
        verify.clone(),
        &args.notify,
    )
    .await?
    .with_live_network(args.edge.redis_url.as_deref(), &args.kafka.topic_prefix)
    .await?;
    alone(
        "notifications",
        args.listen,
        &args.edge,
        verify,
        vec![Box::new(service)],
    )
    .await
}

/// `herald search-indexer`: the indexer and the search API; `reindex`: a rebuild.
pub async fn search_indexer(args: SearchIndexerArgs) -> anyhow::Result<()> {
    needs_brokers(&args.kafka, "search-indexer")?;
    if let Some(SearchAction::Reindex) = args.action {
        let done = search_indexer::reindex(
            &args.kafka,
            &args.contract,
            &args.consumer,
            &args.search,
            args.data_dir.join("search"),
            platform::shutdown::on_signal(),
        )
        .await
        .context("reindex failed; the live index is unchanged")?;
        println!(
            "herald search-indexer reindex: generation {} is current: {} events, {} documents, {:.1} s",
            done.generation,
            done.events,
            done.documents,
            done.elapsed.as_secs_f64()
        );
        return Ok(());
    }
    let verify = Arc::new(Authenticator::from_args(&args.auth)?);
    let service = search_indexer::Service::connect(
        &args.kafka,
        &args.contract,
        &args.consumer,
        verify.clone(),
        &args.search,
        args.data_dir.join("search"),
    )
    .await?;
    alone(
        "search-indexer",
        args.listen,
        &args.edge,
        verify,
        vec![Box::new(service)],
    )
    .await
}

/// `herald reports`: the aggregating consumer, the scheduler and the reports API;
/// `reports run`: one period by hand.
pub async fn reports(args: ReportsServiceArgs) -> anyhow::Result<()> {
    needs_brokers(&args.kafka, "reports")?;
    let db = args.store.connect().await?;
    if let Some(ReportsAction::Run { report, period }) = &args.action {
        let (scheduler, _, _) = reports::Service::scheduler(
            db,
            &args.kafka,
            &args.contract,
            &args.consumer,
            &args.reports,
        )
        .await?;
        match reports::run_by_hand(&scheduler, report, period).await? {
            reports::Produced::Made(id) => println!("herald reports run: produced {id}"),
            reports::Produced::Already(id) => {
                println!("herald reports run: produced before as {id}; nothing to do");
            }
            reports::Produced::Elsewhere => anyhow::bail!(
                "another replica is producing {report} {period} now; it will be there shortly"
            ),
            reports::Produced::Waiting => anyhow::bail!(
                "the aggregates have not read every event of {period} yet (is `herald reports` \
                 running?); try again once it has caught up"
            ),
        }
        return Ok(());
    }
    let verify = Arc::new(Authenticator::from_args(&args.auth)?);
    let service = reports::Service::connect(
        db,
        &args.kafka,
        &args.contract,
        &args.consumer,
        verify.clone(),
        &args.reports,
    )
    .await?;
    alone(
        "reports",
        args.listen,
        &args.edge,
        verify,
        vec![Box::new(service)],
    )
    .await
}
