//! `herald`: one binary, a subcommand per service. `herald up` runs everything on one
//! machine: a local Apache Kafka broker (unless KAFKA_BROKERS is set) and every service's
//! HTTP API on one port, with all data under one folder.

mod check;
mod privacy;
mod reference;
mod services;
mod tools;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use secrecy::SecretString;

#[derive(Debug, Parser)]
#[command(name = "herald", version, about = "An event-driven backend on Kafka")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything on one machine: the local broker (unless KAFKA_BROKERS is set) and all
    /// services on one port.
    Up(services::UpArgs),
    /// The HTTP ingress alone (needs KAFKA_BROKERS).
    Ingress(services::IngressServiceArgs),
    /// Accounts, sessions, one-time codes and the JWKS (needs KAFKA_BROKERS); or rotate the
    /// signing key, or give an account a role.
    Auth(services::AuthServiceArgs),
    /// The audit-log consumer and its query API (needs KAFKA_BROKERS).
    AuditLog(services::AuditLogArgs),
    /// The notification service: emails from events, each once (needs KAFKA_BROKERS and
    /// SMTP_URL or NOTIFY_EMAIL_OUTBOX).
    Notifications(services::NotificationsArgs),
    /// The search indexer and the search API (needs KAFKA_BROKERS).
    SearchIndexer(services::SearchIndexerArgs),
    /// Aggregates, scheduled reports and maintenance jobs (needs KAFKA_BROKERS); `run` one
    /// report period by hand.
    Reports(services::ReportsServiceArgs),
    /// Write the events of a time range of some topics as JSON lines, CSV, Avro or Parquet
    /// (reads without a consumer group: live consumers are not disturbed).
    Replay(tools::ReplayCommand),
    /// Consumer groups' lag per partition, in events and in seconds.
    Lag(tools::LagCommand),
    /// Move a stopped consumer group's offsets back to a time, so its consumers read again
    /// from there.
    Reprocess(tools::ReprocessCommand),
    /// Print a topic's newest events decoded, and with --follow those that arrive.
    Tail(tools::TailCommand),
    /// List a consumer group's dead letters, or publish them again after a fix.
    Dlq(tools::DlqCommand),
    /// Check or export the audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Print a development JWT signed with the HS256 secret.
    Token(TokenArgs),
    /// Back up the database (PostgreSQL or the data folder's SQLite file) to a new file:
    /// accounts, sessions, signing keys, devices, preferences, deliveries (what the topics
    /// do not hold).
    Backup {
        #[command(flatten)]
        store: services::StoreArgs,
        /// The file to write (it must not exist).
        #[arg(long)]
        output: PathBuf,
    },
    /// Restore a backup into an empty database.
    Restore {
        #[command(flatten)]
        store: services::StoreArgs,
        /// The file `herald backup` wrote.
        #[arg(long)]
        input: PathBuf,
    },
    /// The wire schemas (envelope plus data) for standard Avro readers: `export DIR`.
    Schemas(tools::SchemasCommand),
    /// Show how the cluster's topics differ from the topics file (`plan`), or make them so
    /// (`apply`).
    Topics(tools::TopicsCommand),
    /// Check a service's settings (flags, environment, NAME_FILE secrets) as it would read
    /// them, connecting to nothing: exits 0, or 1 naming the bad setting and why.
    Check {
        #[command(subcommand)]
        service: check::Checked,
    },
    /// Erase a person's data, or rotate the key-encryption key of personal data.
    Privacy {
        #[command(subcommand)]
        action: privacy::PrivacyAction,
    },
    /// Manage the local Apache Kafka broker of a data folder.
    Broker {
        #[command(subcommand)]
        action: BrokerAction,
    },
    /// Manage local OpenSearch nodes of a data folder (for SEARCH_BACKEND=opensearch on one
    /// machine: the tests and the benchmarks).
    SearchNode {
        #[command(subcommand)]
        action: SearchNodeAction,
    },
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The token's subject (the actor of the events it publishes).
    #[arg(long)]
    sub: String,
    /// A role: user, analyst, admin or service. Repeat for several.
    #[arg(long = "role", default_value = "user")]
    roles: Vec<String>,
    /// Lifetime in minutes.
    #[arg(long, default_value_t = 60)]
    ttl_minutes: u64,
    #[command(flatten)]
    dev: DevSecretArgs,
    #[arg(long, env = "JWT_ISSUER", default_value = "herald")]
    issuer: String,
    #[arg(long, env = "JWT_AUDIENCE", default_value = "herald")]
    audience: String,
}

#[derive(Debug, Clone, Args)]
pub struct DevSecretArgs {
    /// Folder for all local data: broker logs, database, generated secrets.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    #[arg(long, env = "JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<SecretString>,
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Walk every hash chain; name the first altered, removed or reordered row of each.
    /// Exit code 0: intact; 1: tampered (or unreadable).
    Verify {
        #[command(flatten)]
        store: services::StoreArgs,
    },
    /// Rebuild a lost audit log from the topics: into an empty database, with the audit-log
    /// consumers stopped, moves their group back to the start of every topic; the consumers
    /// started again then write every chain anew, row for row as before.
    Rebuild {
        #[command(flatten)]
        store: services::StoreArgs,
        #[command(flatten)]
        kafka: platform::kafka::KafkaArgs,
        /// The audit log's consumer group, without the topic prefix.
        #[arg(long, default_value = "audit-log")]
        group: String,
    },
    /// Write the events of a time range (on occurred_at) as JSON lines, oldest first.
    Export {
        #[command(flatten)]
        store: services::StoreArgs,
        /// Start, inclusive (RFC 3339). Unset: from the first event.
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (RFC 3339). Unset: to the last event.
        #[arg(long)]
        to: Option<String>,
        /// File to write; standard output when unset.
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum BrokerAction {
    /// Start the broker of the data folder (or reuse it) and print its address.
    Start {
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// Port to use the first time (the broker keeps it afterwards); any free port when taken or 0.
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// Nodes of a replicated cluster on this machine (each broker and controller, on
        /// free ports; `--port` is then unused). Prints every node's address.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// Stop the broker (or the cluster) of the data folder.
    Stop {
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum SearchNodeAction {
    /// Start the node (or the nodes) of the data folder, or reuse them, and print the URL of
    /// each.
    Start {
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
        /// Nodes of a cluster on this machine: node 1 the cluster manager, every node a data
        /// node.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
    },
    /// Stop the node (or the nodes) of the data folder.
    Stop {
        #[arg(long, env = "HERALD_DATA_DIR", default_value = "data")]
        data_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    // Every setting read from NAME can come from the file NAME_FILE names (mounted secrets).
    let args: Vec<String> = std::env::args().collect();
    let command = match platform::secrets::from_files(Cli::command(), &args) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(2);
        }
    };
    let mut cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|err| err.exit());
    if let Some(kafka) = cli.command.tool_kafka() {
        find_local_broker(kafka);
    }
    let service = cli.command.service_name();
    // A check reports on its own, and exports no traces (it may run where the collector
    // named in its settings is not reachable).
    if !matches!(cli.command, Command::Check { .. }) {
        platform::telemetry::init(service);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async move {
        platform::alerts::start(service)?;
        let outcome = match cli.command {
            Command::Up(args) => services::up(args).await,
            Command::Ingress(args) => services::ingress(args).await,
            Command::Auth(args) => services::auth_service(args).await,
            Command::AuditLog(args) => services::audit_log(args).await,
            Command::Notifications(args) => services::notifications(args).await,
            Command::SearchIndexer(args) => services::search_indexer(args).await,
            Command::Reports(args) => services::reports(args).await,
            Command::Replay(command) => tools::replay(command).await,
            Command::Lag(command) => tools::lag(command).await,
            Command::Reprocess(command) => tools::reprocess(command).await,
            Command::Tail(command) => tools::tail(command).await,
            Command::Dlq(command) => tools::dlq(command).await,
            Command::Audit { action } => audit(action).await,
            Command::Token(args) => token(&args),
            Command::Topics(command) => tools::topics(command).await,
            Command::Schemas(command) => tools::schemas(&command),
            Command::Backup { store, output } => {
                platform::backup::backup(&store.url(), &output).await?;
                println!(
                    "herald backup: {} written; `herald restore --input {}` puts it back into an \
                     empty database",
                    output.display(),
                    output.display()
                );
                Ok(())
            }
            Command::Restore { store, input } => {
                if store.database_url.is_none() {
                    std::fs::create_dir_all(&store.data_dir)
                        .with_context(|| format!("creating {}", store.data_dir.display()))?;
                }
                platform::backup::restore(&store.url(), &input).await?;
                println!(
                    "herald restore: {} restored into {}",
                    input.display(),
                    platform::db::redact_url(&store.url())
                );
                Ok(())
            }
            Command::Check { service } => {
                check::check(&service)
                    .with_context(|| format!("herald check {}", service.name()))?;
                println!(
                    "herald check {}: the settings hold (nothing was connected)",
                    service.name()
                );
                Ok(())
            }
            Command::Broker { action } => broker(action).await,
            Command::SearchNode { action } => search_node(action).await,
            Command::Privacy { action } => privacy::privacy(action).await,
        };
        platform::alerts::shutdown(Duration::from_secs(5)).await;
        outcome
    });
    platform::telemetry::shutdown();
    outcome
}

impl Command {
    /// The cluster settings of a command that reads or manages what is on the topics (not of
    /// a service: a service started alone is configured, never guessed).
    fn tool_kafka(&mut self) -> Option<&mut platform::kafka::KafkaArgs> {
        match self {
            Command::Replay(command) => Some(&mut command.kafka),
            Command::Lag(command) => Some(&mut command.kafka),
            Command::Reprocess(command) => Some(&mut command.kafka),
            Command::Tail(command) => Some(&mut command.kafka),
            Command::Dlq(command) => Some(&mut command.kafka),
            Command::Topics(command) => Some(&mut command.kafka),
            Command::Audit {
                action: AuditAction::Rebuild { kafka, .. },
            } => Some(kafka),
            Command::Notifications(args) if args.action.is_some() => Some(&mut args.kafka),
            Command::Privacy {
                action:
                    privacy::PrivacyAction::Erase { kafka, .. }
                    | privacy::PrivacyAction::EraseDeleted { kafka, .. },
            } => Some(&mut **kafka),
            _ => None,
        }
    }

    /// The name this process has in traces.
    fn service_name(&self) -> &'static str {
        match self {
            Command::Up(_) => "herald",
            Command::Ingress(_) => "herald-ingress",
            Command::Auth(_) => "herald-auth",
            Command::AuditLog(_) => "herald-audit-log",
            Command::Notifications(_) => "herald-notifications",
            Command::SearchIndexer(_) => "herald-search-indexer",
            Command::Reports(_) => "herald-reports",
            _ => "herald-cli",
        }
    }
}

/// With KAFKA_BROKERS unset, a tool on the machine where `herald up` runs reads its broker:
/// the one of the data folder (HERALD_DATA_DIR, default `data`), as `herald token` finds the
/// folder's secret.
fn find_local_broker(kafka: &mut platform::kafka::KafkaArgs) {
    if kafka.brokers.is_some() {
        return;
    }
    let data_dir =
        std::env::var_os("HERALD_DATA_DIR").map_or_else(|| PathBuf::from("data"), PathBuf::from);
    if let Some(bootstrap) = platform::broker::local_bootstrap(&data_dir) {
        eprintln!(
            "herald: KAFKA_BROKERS is unset: using the broker of {} at {bootstrap}",
            data_dir.display()
        );
        kafka.brokers = Some(bootstrap);
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<()> {
    let secret = dev_secret(&args.dev)?;
    let token = ingress::auth::mint_hs256(
        &secret,
        &args.sub,
        &args.roles,
        &args.issuer,
        &args.audience,
        Duration::from_secs(args.ttl_minutes * 60),
    )?;
    println!("{token}");
    Ok(())
}

async fn audit(action: AuditAction) -> anyhow::Result<()> {
    use audit_log::store::{AuditStore, SqlStore};
    match action {
        AuditAction::Verify { store } => {
            let store = SqlStore::new(store.connect().await?).await?;
            let report = audit_log::verify::verify(&store).await?;
            for failure in &report.failures {
                println!("FAIL {failure}");
            }
            if !report.passed() {
                anyhow::bail!(
                    "the audit log was tampered with: {} of {} chains fail",
                    report.failures.len(),
                    report.chains
                );
            }
            println!(
                "ok: {} rows in {} chains verified",
                report.rows, report.chains
            );
        }
        AuditAction::Rebuild {
            store,
            kafka,
            group,
        } => {
            anyhow::ensure!(
                kafka.brokers.is_some(),
                "herald audit rebuild needs KAFKA_BROKERS, or a `herald up` running on this \
                 machine with this data folder (HERALD_DATA_DIR)"
            );
            let store = SqlStore::new(store.connect().await?).await?;
            let chains = store.chains().await?.len();
            anyhow::ensure!(
                chains == 0,
                "the audit log's database holds {chains} chains: rebuild into an empty database \
                 (drop it, or set DATABASE_URL to a new one), or nothing would tell the rebuilt \
                 rows from the old"
            );
            let group = kafka.topic(&group);
            let name = group.clone();
            let moved = tokio::task::spawn_blocking(move || {
                platform::kafka::groups::reset_to_time(&kafka, &group, 0, Duration::from_secs(30))
            })
            .await
            .context("the reset stopped unexpectedly")?;
            match moved {
                Ok(moves) => print!("{}", replay::ops::moves_table(&moves)),
                // A group that never committed starts from the beginning anyway.
                Err(
                    platform::kafka::groups::GroupError::NothingCommitted(_)
                    | platform::kafka::groups::GroupError::Unknown(_),
                ) => {}
                Err(err) => return Err(err.into()),
            }
            println!(
                "herald audit rebuild: {name} starts from the beginning of every topic; start the \
                 audit-log consumers and they write the log anew (`herald lag` shows how far, \
                 `herald audit verify` checks it)"
            );
        }
        AuditAction::Export {
            store,
            from,
            to,
            output,
        } => {
            let filter = audit_log::store::Filter {
                from_us: time_arg("--from", from)?,
                to_us: time_arg("--to", to)?,
                ..Default::default()
            };
            let store = SqlStore::new(store.connect().await?).await?;
            let mut out: Box<dyn std::io::Write> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let written = audit_log::export::export(&store, &filter, &mut out).await?;
            eprintln!("exported {written} events");
        }
    }
    Ok(())
}

fn time_arg(flag: &str, value: Option<String>) -> anyhow::Result<Option<i64>> {
    audit_log::api::time_param(flag, value).map_err(|problem| anyhow::anyhow!(problem.detail))
}

async fn broker(action: BrokerAction) -> anyhow::Result<()> {
    match action {
        BrokerAction::Start {
            data_dir,
            port,
            nodes,
        } => {
            anyhow::ensure!(
                (1..=9).contains(&nodes),
                "--nodes is 1 to 9 (three survive the loss of one)"
            );
            let bootstrap = if nodes == 1 {
                platform::broker::LocalBroker::start(&data_dir.join("kafka"), Some(port))
                    .await?
                    .bootstrap()
            } else {
                platform::broker::LocalCluster::start(&data_dir.join("kafka-cluster"), nodes)
                    .await?
                    .bootstrap()
            };
            println!("{bootstrap}");
        }
        BrokerAction::Stop { data_dir } => {
            let deadline = Duration::from_secs(30);
            let cluster =
                platform::broker::stop_dir(&data_dir.join("kafka-cluster"), deadline).await;
            if platform::broker::stop_dir(&data_dir.join("kafka"), deadline).await || cluster {
                println!("stopped");
            } else {
                println!("no broker running in {}", data_dir.join("kafka").display());
            }
        }
    }
    Ok(())
}

async fn search_node(action: SearchNodeAction) -> anyhow::Result<()> {
    use platform::search_node::{LocalSearchCluster, LocalSearchNode, stop_dir};
    match action {
        SearchNodeAction::Start { data_dir, nodes } => {
            anyhow::ensure!((1..=5).contains(&nodes), "--nodes is 1 to 5");
            let urls = if nodes == 1 {
                LocalSearchNode::start(&data_dir.join("opensearch"))
                    .await?
                    .url()
            } else {
                LocalSearchCluster::start(&data_dir.join("opensearch-cluster"), nodes)
                    .await?
                    .urls()
            };
            println!("{urls}");
        }
        SearchNodeAction::Stop { data_dir } => {
            let deadline = Duration::from_secs(30);
            let cluster = stop_dir(&data_dir.join("opensearch-cluster"), deadline).await;
            if stop_dir(&data_dir.join("opensearch"), deadline).await || cluster {
                println!("stopped");
            } else {
                println!("no search node running in {}", data_dir.display());
            }
        }
    }
    Ok(())
}

/// The HS256 secret: the configured one, else the one generated under the data folder on
/// first use, so `herald up` and `herald token` agree without configuration.
pub fn dev_secret(args: &DevSecretArgs) -> anyhow::Result<SecretString> {
    if let Some(secret) = &args.jwt_hs256_secret {
        return Ok(secret.clone());
    }
    let path = args.data_dir.join("dev-jwt-secret");
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(SecretString::from(text.trim().to_string()));
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&path, &secret)?;
    Ok(SecretString::from(secret))
}

/// The sealing key of `herald up`: made on first use under the data folder, like the HS256
/// secret, so the auth service that seals and the notifications service that opens agree.
pub fn dev_sealing_key(data_dir: &Path) -> anyhow::Result<SecretString> {
    dev_key(data_dir, "sealing-key")
}

/// The data folder's key of this name (32 random bytes in base64), made the first time.
pub fn dev_key(data_dir: &Path, name: &str) -> anyhow::Result<SecretString> {
    let path = data_dir.join(name);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok(SecretString::from(text.trim().to_string()));
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let key = platform::seal::SealingKey::generate();
    write_private(&path, secrecy::ExposeSecret::expose_secret(&key))?;
    Ok(key)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's arguments are unique and well formed: clap checks this only when a
    /// command is parsed in a debug build, so a clash would otherwise surface at start-up.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
