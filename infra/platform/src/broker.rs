//! A local Apache Kafka broker for one machine: `herald up` and the tests run on the same
//! broker production uses, fetched from Maven Central instead of a container.
//!
//! The broker's jars are fetched once into a cache folder (`HERALD_CACHE_DIR`, default
//! `~/.cache/herald`) with Maven and the pom in `infra/broker/pom.xml`. A broker lives in a
//! folder of its own: `server.properties`, `broker.json` (ports and pid), `broker.log` and the
//! KRaft log directory, so topics survive a restart and a second start reuses a running broker.
//! Its JVM options come from `KAFKA_HEAP_OPTS` and `KAFKA_JVM_PERFORMANCE_OPTS` when set, the
//! variables Kafka's own scripts read.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The pinned Apache Kafka release.
pub const KAFKA_VERSION: &str = "4.2.1";
const POM: &str = include_str!("../../broker/pom.xml");
const LOG4J: &str = "status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
";

/// How often [`LocalBroker::supervise`] looks at the broker's process.
const WATCH_EVERY: Duration = Duration::from_secs(1);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{tool} is needed to run the local Kafka broker but was not found on PATH: {hint}")]
    MissingTool {
        tool: &'static str,
        hint: &'static str,
    },
    #[error("fetching Apache Kafka {KAFKA_VERSION} with Maven failed (see {log}): {reason}")]
    Install { log: PathBuf, reason: String },
    #[error("formatting the broker's log directory failed: {0}")]
    Format(String),
    #[error("the broker did not become ready within {seconds} s; last lines of {log}:\n{tail}")]
    NotReady {
        seconds: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
    let context = context.into();
    move |source| BrokerError::Io { context, source }
}

/// Where downloaded things are kept between runs.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HERALD_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("herald")
}

/// The folder of the broker's jars, fetched with Maven when missing.
pub fn install() -> Result<PathBuf, BrokerError> {
    let root = cache_dir().join(format!("kafka-{KAFKA_VERSION}"));
    let libs = root.join("libs");
    if libs.join(".complete").exists() {
        return Ok(libs);
    }
    require(
        "java",
        "install a Java 17+ runtime (Debian: openjdk-17-jre-headless)",
    )?;
    require("mvn", "install Maven (Debian: maven)")?;
    tracing::info!(version = KAFKA_VERSION, dir = %libs.display(), "fetching apache kafka with maven");
    let log = root.join("maven.log");
    fetch_jars(POM, &root, &log).map_err(|reason| BrokerError::Install { log, reason })?;
    Ok(libs)
}

/// Fetches the runtime jars `pom` names into `<root>/libs` with Maven, staged in
/// `libs.partial` and moved in place whole with a `.complete` mark, so a fetch that stopped
/// half-way is never used; Maven's output goes to `log`. Why it failed, in words.
pub(crate) fn fetch_jars(pom: &str, root: &Path, log: &Path) -> Result<PathBuf, String> {
    fn failed(what: &str) -> impl FnOnce(std::io::Error) -> String + use<'_> {
        move |err| format!("{what}: {err}")
    }
    std::fs::create_dir_all(root).map_err(failed("creating the cache folder"))?;
    let pom_file = root.join("pom.xml");
    std::fs::write(&pom_file, pom).map_err(failed("writing the pom"))?;
    let staging = root.join("libs.partial");
    let _ = std::fs::remove_dir_all(&staging);
    let log_file = std::fs::File::create(log).map_err(failed("creating the maven log"))?;
    let status = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom_file)
        .arg("dependency:copy-dependencies")
        .arg(format!("-DoutputDirectory={}", staging.display()))
        .arg("-DincludeScope=runtime")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(failed("the maven log"))?)
        .stderr(log_file)
        .status()
        .map_err(failed("running mvn"))?;
    if !status.success() {
        return Err(format!("mvn exited with {status}"));
    }
    std::fs::write(staging.join(".complete"), "").map_err(failed("marking the jars"))?;
    let libs = root.join("libs");
    let _ = std::fs::remove_dir_all(&libs);
    std::fs::rename(&staging, &libs).map_err(failed("moving the jars in place"))?;
    Ok(libs)
}

pub(crate) fn require(tool: &'static str, hint: &'static str) -> Result<(), BrokerError> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
    if found {
        Ok(())
    } else {
        Err(BrokerError::MissingTool { tool, hint })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct State {
    port: u16,
    controller_port: u16,
    pid: Option<u32>,
}

/// A single-node KRaft broker (broker and controller in one JVM) on 127.0.0.1.
#[derive(Debug)]
pub struct LocalBroker {
    dir: PathBuf,
    port: u16,
    pid: u32,
    /// Set when this process started the broker and so must reap it.
    child: Mutex<Option<Child>>,
}

impl LocalBroker {
    /// Starts the broker of `dir`, or adopts it when it is already running. A broker that
    /// ran in `dir` before keeps its ports; a new one takes `preferred_port` when free.
    pub async fn start(dir: &Path, preferred_port: Option<u16>) -> Result<Self, BrokerError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::start_blocking(&dir, preferred_port))
            .await
            .expect("broker start task panicked")
    }

    fn start_blocking(dir: &Path, preferred_port: Option<u16>) -> Result<Self, BrokerError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io("resolving the broker folder"))?;
        if let Some(broker) = Self::running(&dir) {
            tracing::info!(
                port = broker.port,
                pid = broker.pid,
                "reusing the running local kafka broker"
            );
            broker.wait_ready(Duration::from_secs(60))?;
            return Ok(broker);
        }
        let previous = read_state(&dir);
        let libs = install()?;
        let (port, controller_port) = match previous {
            Some(state) => (state.port, state.controller_port),
            None => (
                preferred_port
                    .filter(|p| *p != 0 && port_is_free(*p))
                    .map_or_else(free_port, Ok)?,
                free_port()?,
            ),
        };
        let node = Node {
            id: 1,
            port,
            controller_port,
            quorum: Quorum::Standalone,
        };
        let broker = Self::launch(&dir, &libs, &node)?;
        if let Err(err) = broker.wait_ready(Duration::from_secs(90)) {
            // A broker that never became ready must not linger holding 512 MB and its ports.
            broker.kill();
            return Err(err);
        }
        Ok(broker)
    }

    /// Writes `node`'s settings in `dir`, formats its log directory the first time, and
    /// starts its JVM; does not wait for it to be ready.
    fn launch(dir: &Path, libs: &Path, node: &Node<'_>) -> Result<Self, BrokerError> {
        let properties = dir.join("server.properties");
        std::fs::write(&properties, server_properties(dir, node))
            .map_err(io("writing server.properties"))?;
        std::fs::write(dir.join("log4j2.properties"), LOG4J)
            .map_err(io("writing log4j2.properties"))?;
        if !dir.join("kraft").join("meta.properties").exists() {
            format_storage(libs, &properties, &node.quorum)?;
        }
        let child = spawn_java(dir, libs)?;
        let pid = child.id();
        write_state(
            dir,
            State {
                port: node.port,
                controller_port: node.controller_port,
                pid: Some(pid),
            },
        )?;
        tracing::info!(port = node.port, node = node.id, pid, dir = %dir.display(), "started local kafka broker");
        Ok(Self {
            dir: dir.to_path_buf(),
            port: node.port,
            pid,
            child: Mutex::new(Some(child)),
        })
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Whether this process started the broker (and so should stop it).
    pub fn owned(&self) -> bool {
        self.child.lock().expect("broker lock").is_some()
    }

    /// Asks the broker to stop (SIGTERM) and waits up to `deadline`, then kills it.
    pub async fn stop(&self, deadline: Duration) {
        signal(self.pid, "-TERM");
        let until = Instant::now() + deadline;
        while self.alive() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.alive() {
            tracing::warn!(pid = self.pid, "broker did not stop in time; killing it");
            self.kill();
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&self) {
        signal(self.pid, "-KILL");
        let until = Instant::now() + Duration::from_secs(10);
        while self.alive() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the broker holds its connections but answers nothing, as a long GC pause or
    /// a frozen VM would. For fault tests.
    pub fn pause(&self) {
        signal(self.pid, "-STOP");
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        signal(self.pid, "-CONT");
    }

    /// Starts the broker again in the same folder, with the same settings and ports (a
    /// cluster's node rejoins its cluster).
    pub async fn restart(&mut self) -> Result<(), BrokerError> {
        let dir = self.dir.clone();
        let fresh = tokio::task::spawn_blocking(move || Self::relaunch(&dir))
            .await
            .expect("broker restart task panicked")?;
        *self = fresh;
        Ok(())
    }

    /// The broker `dir`'s state names, when its process runs (started by another process,
    /// which reaps it).
    fn running(dir: &Path) -> Option<Self> {
        let state = read_state(dir)?;
        let pid = state.pid.filter(|pid| is_kafka_process(*pid))?;
        Some(Self {
            dir: dir.to_path_buf(),
            port: state.port,
            pid,
            child: Mutex::new(None),
        })
    }

    fn relaunch(dir: &Path) -> Result<Self, BrokerError> {
        if let Some(broker) = Self::running(dir) {
            return Ok(broker);
        }
        let libs = install()?;
        let child = spawn_java(dir, &libs)?;
        let state = read_state(dir).ok_or_else(|| BrokerError::Io {
            context: format!("reading {}", dir.join("broker.json").display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let pid = child.id();
        write_state(
            dir,
            State {
                pid: Some(pid),
                ..state
            },
        )?;
        let broker = Self {
            dir: dir.to_path_buf(),
            port: state.port,
            pid,
            child: Mutex::new(Some(child)),
        };
        if let Err(err) = broker.wait_ready(Duration::from_secs(90)) {
            broker.kill();
            return Err(err);
        }
        Ok(broker)
    }

    /// Keeps the broker running until `shutdown`, then hands it back: a broker that dies (an
    /// OOM kill, a stray `kill -9`) is reaped and started again in the same folder on the
    /// same ports, with backoff from 1 s to 30 s while starting fails. Each restart is
    /// logged and counted (`herald_local_broker_restarts_total`); clients reconnect by
    /// themselves, and the ingress's `/readyz` answers 503 until the broker is back.
    pub async fn supervise(mut self, shutdown: CancellationToken) -> Self {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return self,
                () = tokio::time::sleep(WATCH_EVERY) => {}
            }
            if self.alive() {
                continue;
            }
            tracing::error!(
                pid = self.pid,
                port = self.port,
                "the local kafka broker stopped; starting it again"
            );
            let mut backoff = Duration::from_secs(1);
            loop {
                match self.restart().await {
                    Ok(()) => {
                        metrics::counter!("herald_local_broker_restarts_total").increment(1);
                        tracing::warn!(
                            pid = self.pid,
                            port = self.port,
                            "the local kafka broker runs again"
                        );
                        break;
                    }
                    Err(err) => {
                        tracing::error!(%err, retry_in_secs = backoff.as_secs(), "starting the local kafka broker again failed");
                        tokio::select! {
                            () = shutdown.cancelled() => return self,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
                    }
                }
            }
        }
    }

    /// Whether the broker's process runs; a child of this process that ended is reaped.
    fn alive(&self) -> bool {
        if let Some(child) = self.child.lock().expect("broker lock").as_mut() {
            return matches!(child.try_wait(), Ok(None));
        }
        is_kafka_process(self.pid)
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), BrokerError> {
        let until = Instant::now() + limit;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while Instant::now() < until {
            if !self.alive() {
                break;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && crate::kafka::cluster_has_brokers(&self.bootstrap())
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self.dir.join("broker.log");
        Err(BrokerError::NotReady {
            seconds: limit.as_secs(),
            tail: tail(&log, 20),
            log,
        })
    }
}

/// Several KRaft nodes on loopback, each broker and controller, in folders `node-1`,
/// `node-2`... of one folder, whose `cluster.json` keeps the cluster id and every node's
/// ports: a replicated cluster on one machine, for the fault suite and `herald broker start
/// --nodes 3`.
#[derive(Debug)]
pub struct LocalCluster {
    nodes: Vec<LocalBroker>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Layout {
    cluster_id: String,
    /// (port, controller port) of node 1, 2...
    nodes: Vec<(u16, u16)>,
}

impl LocalCluster {
    /// Starts the `size` nodes of `dir` (reusing those that run) and waits until each is
    /// ready and the cluster counts all of them.
    pub async fn start(dir: &Path, size: usize) -> Result<Self, BrokerError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::start_blocking(&dir, size))
            .await
            .expect("cluster start task panicked")
    }

    fn start_blocking(dir: &Path, size: usize) -> Result<Self, BrokerError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io("resolving the cluster folder"))?;
        let layout_file = dir.join("cluster.json");
        let layout = match std::fs::read_to_string(&layout_file)
            .ok()
            .and_then(|text| serde_json::from_str::<Layout>(&text).ok())
            .filter(|layout| layout.nodes.len() == size)
        {
            Some(layout) => layout,
            None => {
                // Held together until all are known, so no two nodes draw the same port.
                let listeners = (0..size * 2)
                    .map(|_| TcpListener::bind("127.0.0.1:0"))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(io("finding free ports"))?;
                let ports: Vec<u16> = listeners
                    .iter()
                    .map(|l| l.local_addr().map(|a| a.port()))
                    .collect::<Result<_, _>>()
                    .map_err(io("finding free ports"))?;
                let layout = Layout {
                    cluster_id: cluster_id(),
                    nodes: ports.chunks(2).map(|p| (p[0], p[1])).collect(),
                };
                std::fs::write(
                    &layout_file,
                    serde_json::to_string(&layout).expect("layout serialises"),
                )
                .map_err(io("writing cluster.json"))?;
                layout
            }
        };
        let voters = layout
            .nodes
            .iter()
            .enumerate()
            .map(|(i, (_, controller))| format!("{}@127.0.0.1:{controller}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let libs = install()?;
        let mut nodes = Vec::new();
        for (i, (port, controller_port)) in layout.nodes.iter().enumerate() {
            let node_dir = dir.join(format!("node-{}", i + 1));
            std::fs::create_dir_all(&node_dir)
                .map_err(io(format!("creating {}", node_dir.display())))?;
            let node = match LocalBroker::running(&node_dir) {
                Some(node) => node,
                None => LocalBroker::launch(
                    &node_dir,
                    &libs,
                    &Node {
                        id: i + 1,
                        port: *port,
                        controller_port: *controller_port,
                        quorum: Quorum::Voters {
                            voters: &voters,
                            cluster_id: &layout.cluster_id,
                            size,
                        },
                    },
                )?,
            };
            nodes.push(node);
        }
        let cluster = Self { nodes };
        // The nodes elect a controller among themselves: each is ready only once a majority
        // runs, so all are started before any is waited for.
        let ready = cluster
            .nodes
            .iter()
            .try_for_each(|node| node.wait_ready(Duration::from_secs(120)))
            .and_then(|()| cluster.wait_complete(Duration::from_secs(60)));
        if let Err(err) = ready {
            cluster.kill_all();
            return Err(err);
        }
        Ok(cluster)
    }

    /// Waits until the cluster's metadata lists every node.
    fn wait_complete(&self, limit: Duration) -> Result<(), BrokerError> {
        let until = Instant::now() + limit;
        while crate::kafka::brokers_in_cluster(&self.bootstrap()) < self.nodes.len() {
            if Instant::now() > until {
                return Err(BrokerError::NotReady {
                    seconds: limit.as_secs(),
                    log: self.nodes[0].dir.join("broker.log"),
                    tail: "not every node joined the cluster".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Every node's address, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(LocalBroker::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `id` (1, 2...), to kill, pause or restart.
    pub fn node(&mut self, id: usize) -> &mut LocalBroker {
        &mut self.nodes[id - 1]
    }

    /// The id of the node at `port`.
    pub fn node_at(&self, port: u16) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .map(|i| i + 1)
    }

    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Stops every node at once (see [`stop_dir`]).
    pub async fn stop(&self, deadline: Duration) {
        futures_util::future::join_all(self.nodes.iter().map(|node| node.stop(deadline))).await;
    }

    /// SIGCONT then SIGKILL to every node, as a test's cleanup.
    pub fn kill_all(&self) {
        for node in &self.nodes {
            node.resume();
            node.kill();
        }
    }
}

/// The bootstrap servers of the broker (`kafka/`) or cluster (`kafka-cluster/`) that
/// `herald up` or `herald broker start` runs for `data_dir` on this machine, if one runs: so
/// the tools find it by themselves, as `herald token` finds the data folder's secret.
pub fn local_bootstrap(data_dir: &Path) -> Option<String> {
    if let Some(broker) = LocalBroker::running(&data_dir.join("kafka")) {
        return Some(broker.bootstrap());
    }
    let cluster = data_dir.join("kafka-cluster");
    let mut nodes: Vec<PathBuf> = std::fs::read_dir(&cluster)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("node-"))
        })
        .collect();
    nodes.sort();
    let running: Vec<String> = nodes
        .iter()
        .filter_map(|node| LocalBroker::running(node))
        .map(|broker| broker.bootstrap())
        .collect();
    (!running.is_empty()).then(|| running.join(","))
}

/// Stops the broker recorded in `dir`, if it runs. For `herald broker stop`.
pub async fn stop_dir(dir: &Path, deadline: Duration) -> bool {
    if dir.join("cluster.json").exists() {
        // All at once: the last node of a cluster stopped one by one has no quorum left to
        // shut down in order with, and would wait out the deadline.
        let nodes: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("node-"))
            })
            .collect();
        let stopped = futures_util::future::join_all(
            nodes.iter().map(|node| Box::pin(stop_dir(node, deadline))),
        )
        .await;
        return stopped.into_iter().any(|s| s);
    }
    let Some(broker) = LocalBroker::running(dir) else {
        return false;
    };
    broker.stop(deadline).await;
    true
}

/// The broker's JVM on the settings of `dir`, logging to its `broker.log`.
fn spawn_java(dir: &Path, libs: &Path) -> Result<Child, BrokerError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .map_err(io("opening broker.log"))?;
    Command::new("java")
        .args(jvm_options("KAFKA_HEAP_OPTS", HEAP_OPTS))
        .args(jvm_options("KAFKA_JVM_PERFORMANCE_OPTS", PERFORMANCE_OPTS))
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(libs.join("*"))
        .arg("kafka.Kafka")
        .arg(dir.join("server.properties"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(io("broker log"))?)
        .stderr(log)
        // Its own process group: a terminal's ctrl-c reaches herald, which stops the broker
        // in order, rather than both at once.
        .process_group(0)
        .spawn()
        .map_err(io("starting java"))
}

/// One node of a local cluster: its id, ports and how it finds the controllers.
struct Node<'a> {
    id: usize,
    port: u16,
    controller_port: u16,
    quorum: Quorum<'a>,
}

enum Quorum<'a> {
    /// One node, its own controller (a dynamic quorum of one).
    Standalone,
    /// Every node is a controller too: `id@host:port,...` of all of them.
    Voters {
        voters: &'a str,
        cluster_id: &'a str,
        size: usize,
    },
}

fn server_properties(dir: &Path, node: &Node<'_>) -> String {
    let (port, controller_port, id) = (node.port, node.controller_port, node.id);
    let (quorum, replicas, min_isr) = match &node.quorum {
        Quorum::Standalone => (
            format!("controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}"),
            1,
            1,
        ),
        Quorum::Voters { voters, size, .. } => (
            format!(
                "controller.quorum.voters={voters}\n\
                 default.replication.factor={}\n\
                 min.insync.replicas={}\n\
                 unclean.leader.election.enable=false",
                (*size).min(3),
                (*size).min(3).min(2)
            ),
            (*size).min(3),
            (*size).min(3).min(2),
        ),
    };
    format!(
        "# Written by herald: a KRaft node (broker and controller) on loopback.
process.roles=broker,controller
node.id={id}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
{quorum}
log.dirs={kraft}
num.partitions=6
auto.create.topics.enable=false
offsets.topic.replication.factor={replicas}
offsets.topic.num.partitions=12
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
# Fewer threads than Kafka's defaults (3 and 8) for a broker sharing a small machine: on two
# cores, 1 and 2 gave a producer 4% more throughput and a lower p99 than 2 and 4 (README).
num.network.threads=1
num.io.threads=2
# The log cleaner's key map lives on the heap for the broker's life: Kafka's default of
# 128 MiB was most of what the heap held, and G1 kept marking it (pauses up to 34 ms). 16 MiB
# holds about 700,000 keys per cleaning pass, plenty for one machine (README).
log.cleaner.dedupe.buffer.size=16777216
",
        kraft = dir.join("kraft").display()
    )
}

/// The broker's heap: small, for one machine shared with the services.
const HEAP_OPTS: &str = "-Xms128m -Xmx512m";
/// G1 with short pauses, and only the JVM's first compiler tier: less compiling on two
/// shared cores at each start, and with the full JIT the measured p99 was no better (README,
/// "Figures"), nor with ZGC.
const PERFORMANCE_OPTS: &str =
    "-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:TieredStopAtLevel=1 -Djava.awt.headless=true";

/// The JVM options in the environment variable `name`, as Kafka's own start scripts read
/// them, or `default`.
fn jvm_options(name: &str, default: &str) -> Vec<String> {
    options_or(std::env::var(name).ok().as_deref(), default)
}

/// `set` split on white space when it holds any option, else `default`: a variable replaces
/// its default whole, so that two garbage collectors are never asked for at once.
fn options_or(set: Option<&str>, default: &str) -> Vec<String> {
    set.filter(|value| !value.trim().is_empty())
        .unwrap_or(default)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn format_storage(libs: &Path, properties: &Path, quorum: &Quorum<'_>) -> Result<(), BrokerError> {
    let mut command = Command::new("java");
    command
        .args(["-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp"])
        .arg(libs.join("*"))
        .arg("kafka.tools.StorageTool")
        .arg("format");
    match quorum {
        Quorum::Standalone => command.args(["--standalone", "-t", &cluster_id()]),
        // Static voters: every node formatted with the one cluster id.
        Quorum::Voters { cluster_id, .. } => command.args(["-t", cluster_id]),
    };
    let output = command
        .arg("-c")
        .arg(properties)
        .stdin(Stdio::null())
        .output()
        .map_err(io("running the kafka storage tool"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BrokerError::Format(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// A KRaft cluster id: 16 random bytes in URL-safe base64 without padding.
///
/// One id in 64 would start with '-', which the storage tool's argument
/// parser reads as an option; like Kafka's own `Uuid.randomUuid`, such ids
/// are drawn again.
fn cluster_id() -> String {
    loop {
        let id = url_safe_base64(uuid::Uuid::new_v4().into_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn url_safe_base64(bytes: [u8; 16]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits: u32 = 0;
    let mut count = 0;
    let mut out = String::with_capacity(22);
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        count += 8;
        while count >= 6 {
            count -= 6;
            out.push(ALPHABET[((bits >> count) & 63) as usize] as char);
        }
    }
    if count > 0 {
        out.push(ALPHABET[((bits << (6 - count)) & 63) as usize] as char);
    }
    out
}

fn read_state(dir: &Path) -> Option<State> {
    let text = std::fs::read_to_string(dir.join("broker.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(dir: &Path, state: State) -> Result<(), BrokerError> {
    let text = serde_json::to_string(&state).expect("state serialises");
    std::fs::write(dir.join("broker.json"), text).map_err(io("writing broker.json"))
}

fn is_kafka_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("kafka.Kafka"))
}

pub(crate) fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub(crate) fn free_port() -> Result<u16, BrokerError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jvm_options_replace_their_default_whole_when_set() {
        assert_eq!(
            options_or(None, HEAP_OPTS),
            ["-Xms128m", "-Xmx512m"],
            "unset: the default"
        );
        assert_eq!(options_or(Some("  "), HEAP_OPTS), ["-Xms128m", "-Xmx512m"]);
        assert_eq!(
            options_or(
                Some(" -XX:+UseZGC  -Djava.awt.headless=true "),
                PERFORMANCE_OPTS
            ),
            ["-XX:+UseZGC", "-Djava.awt.headless=true"],
            "nothing of G1 is left to clash with the collector asked for"
        );
    }

    #[test]
    fn cluster_ids_are_22_url_safe_characters_never_starting_with_a_dash() {
        for _ in 0..2_000 {
            let id = cluster_id();
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'), "{id}");
            assert!(
                id.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
        }
    }

    #[test]
    fn base64_matches_the_known_encoding() {
        assert_eq!(url_safe_base64([0xfb; 16]), "-_v7-_v7-_v7-_v7-_v7-w");
        assert_eq!(url_safe_base64([0; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
    }

    #[test]
    fn the_pom_pins_the_same_kafka_version() {
        assert!(POM.contains(&format!("<kafka.version>{KAFKA_VERSION}</kafka.version>")));
    }
}
