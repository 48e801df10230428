//! Starting services: alone (`herald ingress`) or all together (`herald up`).

use std::future::Future;
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
use reports::ReportsArgs;
use search_indexer::SearchArgs;
use tokio_util::sync::CancellationToken;

/// Settings shared by `herald up` and each service.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
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

pub async fn up(mut args: ServiceArgs) -> anyhow::Result<()> {
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
    let result = serve(args, Defaults::Development).await;
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

pub async fn ingress(args: ServiceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.kafka.brokers.is_some(),
        "herald ingress needs KAFKA_BROKERS (or use `herald up`, which starts a local broker)"
    );
    serve(args, Defaults::Production).await
}

/// `herald up` is for one machine and fills in what is missing; a service started alone
/// must be configured, so a forgotten secret is an error rather than a generated key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defaults {
    Development,
    Production,
}

async fn serve(mut args: ServiceArgs, defaults: Defaults) -> anyhow::Result<()> {
    platform::metrics::install();
    let shutdown = platform::shutdown::on_signal();
    let auth = &args.ingress.auth;
    if defaults == Defaults::Development
        && auth.jwt_hs256_secret.is_none()
        && auth.jwt_public_key_file.is_none()
        && auth.jwt_jwks_file.is_none()
    {
        let dev = crate::DevSecretArgs {
            data_dir: args.store.data_dir.clone(),
            jwt_hs256_secret: None,
        };
        args.ingress.auth.jwt_hs256_secret = Some(crate::dev_secret(&dev)?);
        tracing::info!(
            "using the development HS256 secret of the data folder; `herald token` signs with it"
        );
    }
    if defaults == Defaults::Development && args.ingress.contract.sealing_key.is_none() {
        args.ingress.contract.sealing_key = Some(crate::dev_sealing_key(&args.store.data_dir)?);
    }
    let listener =
        platform::http::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr()?;
    if defaults == Defaults::Development && args.ingress.auth.jwt_jwks_url.is_none() {
        // The auth service runs in this process: everything verifies its tokens too.
        args.ingress.auth.jwt_jwks_url =
            Some(format!("http://{}/.well-known/jwks.json", reachable(local)));
    }
    let db = args.store.connect().await?;
    let store = Arc::new(SqlStore::new(db.clone()).await?);
    // One verifier for the edge, the ingress and every consumer of this process.
    let verify = Arc::new(Authenticator::from_args(&args.ingress.auth)?);
    let state =
        Arc::new(ingress::connect(&args.ingress, &args.kafka, store, verify.clone()).await?);
    let mut router = ingress::router(state.clone());
    let mut consumers = Vec::new();
    if defaults == Defaults::Development {
        let accounts = auth::Service::connect(
            db.clone(),
            &args.kafka,
            &args.ingress.contract,
            &args.ingress.auth,
            &args.accounts,
            auth::Setup {
                redis_url: args.edge.redis_url.as_deref(),
                topics: args.ingress.topics,
            },
        )
        .await?;
        router = router.merge(accounts.router());
        tokio::spawn(accounts.relay.run(shutdown.clone()));
        // `herald up` runs every consumer in this process; deployed, each runs on its own.
        let auth = verify.clone();
        let audit = audit_log::Service::connect(
            db.clone(),
            &args.kafka,
            &args.ingress.contract,
            &args.consumer,
            auth.clone(),
        )
        .await?;
        router = router.merge(audit.router());
        consumers.push(spawn_consumer(
            audit.runner.run(shutdown.clone()),
            shutdown.clone(),
        ));
        let mut notify = args.notify.clone();
        if notify.smtp_url.is_none() && notify.email_outbox.is_none() {
            let outbox = args.store.data_dir.join("outbox");
            tracing::info!(outbox = %outbox.display(), "no SMTP_URL: emails are written as .eml files");
            notify.email_outbox = Some(outbox);
        }
        if notify.unsubscribe_secret.is_none() {
            let dev = crate::DevSecretArgs {
                data_dir: args.store.data_dir.clone(),
                jwt_hs256_secret: None,
            };
            notify.unsubscribe_secret = Some(crate::dev_secret(&dev)?);
        }
        notify
            .public_url
            .get_or_insert_with(|| format!("http://{}", reachable(local)));
        let notifications = notifications::Service::connect(
            db.clone(),
            &args.kafka,
            &args.ingress.contract,
            &args.consumer,
            auth.clone(),
            &notify,
        )
        .await?;
        router = router.merge(notifications.router());
        tokio::spawn(notifications.notifier.release_deferred(shutdown.clone()));
        consumers.push(spawn_consumer(
            notifications.runner.run(shutdown.clone()),
            shutdown.clone(),
        ));
        let search = search_indexer::Service::connect(
            &args.kafka,
            &args.ingress.contract,
            &args.consumer,
            auth.clone(),
            &args.search,
            args.store.data_dir.join("search"),
        )
        .await?;
        router = router.merge(search.router());
        consumers.push(spawn_consumer(
            search.run(shutdown.clone()),
            shutdown.clone(),
        ));
        let reports = reports::Service::connect(
            db.clone(),
            &args.kafka,
            &args.ingress.contract,
            &args.consumer,
            auth,
            &args.reports,
        )
        .await?;
        router = router.merge(reports.router());
        tokio::spawn(reports.scheduler.clone().run(shutdown.clone()));
        consumers.push(spawn_consumer(
            reports.runner.run(shutdown.clone()),
            shutdown.clone(),
        ));
    }
    let router = router
        .merge(crate::reference::router(state.catalog()))
        .route("/metrics", axum::routing::get(metrics));
    let router = Arc::new(Edge::new(&args.edge, Some(verify)).await?).wrap(router)?;
    let brokers = args.kafka.brokers.clone().unwrap_or_default();
    tracing::info!(http = %local, kafka = %brokers, "herald is ready");
    println!("herald: HTTP API on http://{local}  (kafka: {brokers})");
    platform::http::serve(listener, router, shutdown, args.edge.serve_options()).await?;
    state.sink.drain(Duration::from_secs(5)).await;
    for consumer in consumers {
        consumer.await.context("consumer task")??;
    }
    tracing::info!("stopped");
    Ok(())
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
    anyhow::ensure!(
        args.kafka.brokers.is_some(),
        "herald auth needs KAFKA_BROKERS (or use `herald up`, which runs it too)"
    );
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
    platform::metrics::install();
    let shutdown = platform::shutdown::on_signal();
    let listener =
        platform::http::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr()?;
    // The service's own verifier: the configured keys and its own JWKS, from its store.
    let verify = service.authenticator();
    let router = service
        .router()
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", axum::routing::get(metrics));
    let router = Arc::new(Edge::new(&args.edge, Some(verify)).await?).wrap(router)?;
    tracing::info!(http = %local, "auth is ready");
    println!("herald auth: HTTP API on http://{local}");
    let relay = tokio::spawn(service.relay.run(shutdown.clone()));
    platform::http::serve(
        listener,
        router,
        shutdown.clone(),
        args.edge.serve_options(),
    )
    .await?;
    shutdown.cancel();
    relay.await.context("outbox relay")?;
    Ok(())
}

async fn metrics() -> String {
    platform::metrics::render()
}

/// `herald audit-log`: the consumer and its query API.
pub async fn audit_log(args: AuditLogArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.kafka.brokers.is_some(),
        "herald audit-log needs KAFKA_BROKERS (or use `herald up`, which runs it too)"
    );
    platform::metrics::install();
    let verify = Arc::new(Authenticator::from_args(&args.auth)?);
    let db = args.store.connect().await?;
    let audit = audit_log::Service::connect(
        db,
        &args.kafka,
        &args.contract,
        &args.consumer,
        verify.clone(),
    )
    .await?;
    let router = audit.router();
    let runner = audit.runner;
    let group = runner.group().to_string();
    serve_consumer(
        "audit-log",
        args.listen,
        (&args.edge, verify),
        &group,
        router,
        |shutdown| runner.run(shutdown),
    )
    .await
}

/// `herald notifications`: the consumer and its API.
pub async fn notifications(args: NotificationsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.kafka.brokers.is_some(),
        "herald notifications needs KAFKA_BROKERS (or use `herald up`, which runs it too)"
    );
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
    platform::metrics::install();
    let verify = Arc::new(Authenticator::from_args(&args.auth)?);
    let db = args.store.connect().await?;
    let notifications = notifications::Service::connect(
        db,
        &args.kafka,
        &args.contract,
        &args.consumer,
        verify.clone(),
        &args.notify,
    )
    .await?;
    let router = notifications.router();
    let release = CancellationToken::new();
    tokio::spawn(notifications.notifier.release_deferred(release.clone()));
    let runner = notifications.runner;
    let group = runner.group().to_string();
    let served = serve_consumer(
        "notifications",
        args.listen,
        (&args.edge, verify),
        &group,
        router,
        |shutdown| runner.run(shutdown),
    )
    .await;
    release.cancel();
    served
}

/// `herald search-indexer`: the indexer and the search API; `reindex`: a rebuild.
pub async fn search_indexer(args: SearchIndexerArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.kafka.brokers.is_some(),
        "herald search-indexer needs KAFKA_BROKERS (or use `herald up`, which runs it too)"
    );
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
    platform::metrics::install();
    let verify = Arc::new(Authenticator::from_args(&args.auth)?);
    let search = search_indexer::Service::connect(
        &args.kafka,
        &args.contract,
        &args.consumer,
        verify.clone(),
        &args.search,
        args.data_dir.join("search"),
    )
    .await?;
    let router = search.router();
    let group = search.group().to_string();
    serve_consumer(
        "search-indexer",
        args.listen,
        (&args.edge, verify),
        &group,
        router,
        |shutdown| search.run(shutdown),
    )
    .await
}

/// `herald reports`: the aggregating consumer, the scheduler and the reports API;
/// `reports run`: one period by hand.
pub async fn reports(args: ReportsServiceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.kafka.brokers.is_some(),
        "herald reports needs KAFKA_BROKERS (or use `herald up`, which runs it too)"
    );
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
    platform::metrics::install();
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
    let router = service.router();
    let runner = service.runner;
    let group = runner.group().to_string();
    let scheduler = service.scheduler.clone();
    serve_consumer(
        "reports",
        args.listen,
        (&args.edge, verify),
        &group,
        router,
        |shutdown| async move {
            tokio::spawn(scheduler.run(shutdown.clone()));
            runner.run(shutdown).await
        },
    )
    .await
}

/// Serves a consumer service alone: its API with /healthz and /metrics, and its consumer
/// (`consume`, given the shutdown signal), until a signal or until the consumer stops by
/// itself.
async fn serve_consumer<F, E>(
    name: &str,
    listen: SocketAddr,
    (edge, verify): (&EdgeArgs, Arc<Authenticator>),
    group: &str,
    router: axum::Router,
    consume: impl FnOnce(CancellationToken) -> F,
) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    let shutdown = platform::shutdown::on_signal();
    let router = router
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", axum::routing::get(consumer_ready))
        .route("/metrics", axum::routing::get(metrics));
    let router = Arc::new(Edge::new(edge, Some(verify)).await?).wrap(router)?;
    let listener = platform::http::bind(listen).with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    tracing::info!(http = %local, group, "{name} is ready");
    println!("herald {name}: HTTP API on http://{local}");
    let consumer = spawn_consumer(consume(shutdown.clone()), shutdown.clone());
    platform::http::serve(listener, router, shutdown.clone(), edge.serve_options()).await?;
    shutdown.cancel();
    consumer.await.context("consumer task")??;
    Ok(())
}

/// A consumer service is ready while every partition assigned to it is consumed.
async fn consumer_ready() -> axum::response::Response {
    use axum::response::IntoResponse;
    match platform::consumer::health::readiness() {
        Ok(()) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(problem) => problem.into_response(),
    }
}

/// Runs a consumer; when it ends by itself (an error it cannot recover from) the whole
/// process stops, so a service that no longer consumes does not look alive.
fn spawn_consumer<E>(
    consume: impl Future<Output = Result<(), E>> + Send + 'static,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>>
where
    E: Into<anyhow::Error> + Send + 'static,
{
    tokio::spawn(async move {
        let result = consume.await.map_err(Into::into);
        if let Err(err) = &result {
            tracing::error!(
                err = format!("{err:#}"),
                "consumer stopped; stopping the process"
            );
        }
        shutdown.cancel();
        result
    })
}
