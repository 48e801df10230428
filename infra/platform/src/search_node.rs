//! Local OpenSearch nodes for one machine: the tests and the benchmarks of the search
//! indexer's OpenSearch backend run on the engine a deployment would use, fetched from Maven
//! Central like the Kafka broker ([`crate::broker`]), not from a container.
//!
//! Maven Central has the server and its modules but not the release's launcher, so a small
//! one (`infra/search-node/src/SearchNode.java`) starts a node with the modules the indexer
//! needs (the HTTP transport, the analyzers, painless) on its class path. The jars and the
//! compiled launcher are kept in the cache folder (`HERALD_CACHE_DIR`, default
//! `~/.cache/herald`). A node lives in a folder of its own: `node.json` (ports and pid),
//! `node.log` and its data, so its indices survive a restart and a second start reuses a
//! running node. Its JVM options come from `OPENSEARCH_JAVA_OPTS` when set, the variable
//! OpenSearch's own scripts read.
//!
//! A cluster ([`LocalSearchCluster`]) is nodes `node-1`, `node-2`... of one folder: node 1
//! is the cluster manager and holds data, the others hold data only. Losing a data node
//! keeps the cluster (its replicas are promoted); losing node 1 loses the cluster manager.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::broker::{cache_dir, fetch_jars, free_port, require, signal, tail};

/// The pinned OpenSearch release: the newest line that runs on Java 17.
pub const OPENSEARCH_VERSION: &str = "2.19.6";
const POM: &str = include_str!("../../search-node/pom.xml");
const LAUNCHER: &str = include_str!("../../search-node/src/SearchNode.java");
const LOG4J: &str = "status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.node.name = org.opensearch.node.Node
logger.node.level = INFO
";
const JAVA_OPTS: &str = "-Xms512m -Xmx512m -XX:+UseG1GC -XX:TieredStopAtLevel=1 \
     -Djava.awt.headless=true -Dfile.encoding=UTF-8";
const CLUSTER_NAME: &str = "herald-local";

#[derive(Debug, thiserror::Error)]
pub enum SearchNodeError {
    #[error("{0}")]
    Setup(String),
    #[error("fetching OpenSearch {OPENSEARCH_VERSION} failed (see {log}): {reason}")]
    Install { log: PathBuf, reason: String },
    #[error(
        "the search node did not become ready within {seconds} s; last lines of {log}:\n{tail}"
    )]
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

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SearchNodeError {
    let context = context.into();
    move |source| SearchNodeError::Io { context, source }
}

fn setup(err: &crate::broker::BrokerError) -> SearchNodeError {
    SearchNodeError::Setup(err.to_string())
}

/// The folder holding `libs/` (the jars) and `classes/` (the launcher), made when missing.
pub fn install() -> Result<PathBuf, SearchNodeError> {
    let root = cache_dir().join(format!("opensearch-{OPENSEARCH_VERSION}"));
    if root.join(".complete").exists() {
        return Ok(root);
    }
    require(
        "java",
        "install a Java 17+ JDK (Debian: openjdk-17-jdk-headless)",
    )
    .map_err(|e| setup(&e))?;
    require(
        "javac",
        "install a Java 17+ JDK (Debian: openjdk-17-jdk-headless)",
    )
    .map_err(|e| setup(&e))?;
    require("mvn", "install Maven (Debian: maven)").map_err(|e| setup(&e))?;
    tracing::info!(version = OPENSEARCH_VERSION, dir = %root.display(), "fetching opensearch with maven");
    let log = root.join("install.log");
    let libs = fetch_jars(POM, &root, &log).map_err(|reason| SearchNodeError::Install {
        log: log.clone(),
        reason,
    })?;
    let javac_log =
        std::fs::File::create(root.join("javac.log")).map_err(io("creating the javac log"))?;
    let source = root.join("SearchNode.java");
    std::fs::write(&source, LAUNCHER).map_err(io("writing the launcher"))?;
    let status = Command::new("javac")
        .arg("-cp")
        .arg(libs.join("*"))
        .arg("-d")
        .arg(root.join("classes"))
        .arg(&source)
        .stdin(Stdio::null())
        .stdout(javac_log.try_clone().map_err(io("javac log"))?)
        .stderr(javac_log)
        .status()
        .map_err(io("running javac"))?;
    if !status.success() {
        return Err(SearchNodeError::Install {
            log: root.join("javac.log"),
            reason: format!("javac exited with {status}"),
        });
    }
    std::fs::write(root.join(".complete"), OPENSEARCH_VERSION)
        .map_err(io("marking the install"))?;
    Ok(root)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    http_port: u16,
    transport_port: u16,
    pid: Option<u32>,
    /// The settings it was started with, to start it again the same way.
    settings: Vec<String>,
}

/// One OpenSearch node on 127.0.0.1.
#[derive(Debug)]
pub struct LocalSearchNode {
    dir: PathBuf,
    http_port: u16,
    pid: u32,
    /// Set when this process started the node and so must reap it.
    child: Mutex<Option<Child>>,
}

impl LocalSearchNode {
    /// Starts the single node of `dir`, or adopts it when it already runs.
    pub async fn start(dir: &Path) -> Result<Self, SearchNodeError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            Self::start_blocking(&dir, |_, _| vec!["discovery.type=single-node".to_string()])
        })
        .await
        .expect("search node start task panicked")
    }

    /// Starts the node of `dir` with the settings `extra(http_port, transport_port)` on top
    /// of the common ones; a node that ran in `dir` before keeps its ports and settings.
    fn start_blocking(
        dir: &Path,
        extra: impl FnOnce(u16, u16) -> Vec<String>,
    ) -> Result<Self, SearchNodeError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io(format!("resolving {}", dir.display())))?;
        if let Some(node) = Self::running(&dir) {
            return Ok(node);
        }
        let state = match read_state(&dir) {
            Some(state) => state,
            None => {
                let http_port = free_port().map_err(|e| setup(&e))?;
                let transport_port = free_port().map_err(|e| setup(&e))?;
                State {
                    http_port,
                    transport_port,
                    pid: None,
                    settings: extra(http_port, transport_port),
                }
            }
        };
        Self::launch(&dir, &state)
    }

    fn launch(dir: &Path, state: &State) -> Result<Self, SearchNodeError> {
        let root = install()?;
        std::fs::write(dir.join("log4j2.properties"), LOG4J)
            .map_err(io("writing log4j2.properties"))?;
        let name = dir
            .file_name()
            .map_or_else(|| "node".to_string(), |n| n.to_string_lossy().into_owned());
        let mut settings = vec![
            format!("path.home={}", dir.display()),
            format!("path.data={}", dir.join("data").display()),
            format!("path.logs={}", dir.join("logs").display()),
            format!("http.port={}", state.http_port),
            format!("transport.port={}", state.transport_port),
            "network.host=127.0.0.1".to_string(),
            format!("cluster.name={CLUSTER_NAME}"),
            format!("node.name={name}"),
            // One machine's disk is shared by everything on it: no watermark stops indexing.
            "cluster.routing.allocation.disk.threshold_enabled=false".to_string(),
        ];
        settings.extend(state.settings.iter().cloned());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))
            .map_err(io("opening node.log"))?;
        let options = std::env::var("OPENSEARCH_JAVA_OPTS")
            .ok()
            .filter(|o| !o.trim().is_empty())
            .unwrap_or_else(|| JAVA_OPTS.to_string());
        let child = Command::new("java")
            .args(options.split_whitespace())
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                dir.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(format!(
                "{}:{}",
                root.join("classes").display(),
                root.join("libs").join("*").display()
            ))
            .arg("SearchNode")
            .args(&settings)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("node log"))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(io("starting java"))?;
        let pid = child.id();
        write_state(
            dir,
            &State {
                pid: Some(pid),
                ..state.clone()
            },
        )?;
        let node = Self {
            dir: dir.to_path_buf(),
            http_port: state.http_port,
            pid,
            child: Mutex::new(Some(child)),
        };
        if let Err(err) = node.wait_ready(Duration::from_secs(120)) {
            node.kill();
            return Err(err);
        }
        Ok(node)
    }

    /// The node `dir`'s state names, when its process runs.
    fn running(dir: &Path) -> Option<Self> {
        // The node was started with the folder's full path.
        let dir = &dir.canonicalize().ok()?;
        let state = read_state(dir)?;
        let pid = state.pid.filter(|pid| is_search_node(*pid, dir))?;
        Some(Self {
            dir: dir.to_path_buf(),
            http_port: state.http_port,
            pid,
            child: Mutex::new(None),
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// Whether this process started the node (and so stops it when dropped by the owner).
    pub fn owned(&self) -> bool {
        self.child.lock().expect("node lock").is_some()
    }

    /// Stops the node in order (SIGTERM), killing it after `deadline`.
    pub async fn stop(&self, deadline: Duration) {
        signal(self.pid, "-TERM");
        let until = Instant::now() + deadline;
        while Instant::now() < until && self.alive() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.alive() {
            self.kill();
        }
    }

    /// Kills the node at once (SIGKILL), as a crash would.
    pub fn kill(&self) {
        signal(self.pid, "-KILL");
        if let Some(child) = self.child.lock().expect("node lock").as_mut() {
            let _ = child.wait();
        }
    }

    /// Starts the node again in the same folder, with the same settings and ports.
    pub async fn restart(&mut self) -> Result<(), SearchNodeError> {
        let dir = self.dir.clone();
        let fresh = tokio::task::spawn_blocking(move || {
            let state = read_state(&dir).ok_or_else(|| {
                SearchNodeError::Setup(format!("{} holds no node.json", dir.display()))
            })?;
            Self::launch(&dir, &state)
        })
        .await
        .expect("search node restart task panicked")?;
        *self = fresh;
        Ok(())
    }

    fn alive(&self) -> bool {
        if let Some(child) = self.child.lock().expect("node lock").as_mut() {
            return matches!(child.try_wait(), Ok(None));
        }
        is_search_node(self.pid, &self.dir)
    }

    /// Until the node answers its cluster's health as yellow or green.
    fn wait_ready(&self, limit: Duration) -> Result<(), SearchNodeError> {
        let until = Instant::now() + limit;
        while Instant::now() < until && self.alive() {
            if health(self.http_port).is_some_and(|h| h == "green" || h == "yellow") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let log = self.dir.join("node.log");
        Err(SearchNodeError::NotReady {
            seconds: limit.as_secs(),
            tail: tail(&log, 20),
            log,
        })
    }
}

/// Nodes on loopback in folders `node-1`, `node-2`... of one folder: node 1 the cluster
/// manager and a data node, the others data nodes.
#[derive(Debug)]
pub struct LocalSearchCluster {
    nodes: Vec<LocalSearchNode>,
}

impl LocalSearchCluster {
    /// Starts the `size` nodes of `dir` (reusing those that run) and waits until the cluster
    /// counts all of them.
    pub async fn start(dir: &Path, size: usize) -> Result<Self, SearchNodeError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || Self::start_blocking(&dir, size))
            .await
            .expect("search cluster start task panicked")
    }

    fn start_blocking(dir: &Path, size: usize) -> Result<Self, SearchNodeError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let mut nodes: Vec<LocalSearchNode> = Vec::with_capacity(size);
        let mut manager_transport = None;
        for id in 1..=size {
            let node_dir = dir.join(format!("node-{id}"));
            let seed = manager_transport;
            let node = LocalSearchNode::start_blocking(&node_dir, |_, transport| {
                let mut settings = Vec::new();
                match seed {
                    None => {
                        settings.push("node.roles=cluster_manager,data,ingest".to_string());
                        settings.push("cluster.initial_cluster_manager_nodes=node-1".to_string());
                        settings.push(format!("discovery.seed_hosts=127.0.0.1:{transport}"));
                    }
                    Some(port) => {
                        settings.push("node.roles=data,ingest".to_string());
                        settings.push(format!("discovery.seed_hosts=127.0.0.1:{port}"));
                    }
                }
                settings
            })?;
            if manager_transport.is_none() {
                manager_transport =
                    read_state(&node_dir.canonicalize().unwrap_or(node_dir.clone()))
                        .map(|s| s.transport_port);
            }
            nodes.push(node);
        }
        let cluster = Self { nodes };
        cluster.wait_complete(Duration::from_secs(120))?;
        Ok(cluster)
    }

    fn wait_complete(&self, limit: Duration) -> Result<(), SearchNodeError> {
        let until = Instant::now() + limit;
        let first = &self.nodes[0];
        while Instant::now() < until {
            if node_count(first.http_port) == Some(self.nodes.len()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(SearchNodeError::Setup(format!(
            "the search cluster did not count its {} nodes within {} s",
            self.nodes.len(),
            limit.as_secs()
        )))
    }

    /// Every node's URL, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(LocalSearchNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&mut self, id: usize) -> &mut LocalSearchNode {
        &mut self.nodes[id - 1]
    }

    pub async fn stop(&self, deadline: Duration) {
        futures_util::future::join_all(self.nodes.iter().map(|n| n.stop(deadline))).await;
    }
}

/// Stops the node (or every node of the cluster) recorded in `dir`, if any runs. For
/// `herald search-node stop`.
pub async fn stop_dir(dir: &Path, deadline: Duration) -> bool {
    let mut stopped = false;
    if let Some(node) = LocalSearchNode::running(dir) {
        node.stop(deadline).await;
        stopped = true;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("node-"))
            && let Some(node) = LocalSearchNode::running(&path)
        {
            node.stop(deadline).await;
            stopped = true;
        }
    }
    stopped
}

/// A GET of `path` on the node at `port`: the body of a 200 answer.
fn get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// The cluster's health status as the node at `port` sees it.
fn health(port: u16) -> Option<String> {
    let body: serde_json::Value = serde_json::from_str(&get(port, "/_cluster/health")?).ok()?;
    body["status"].as_str().map(str::to_string)
}

fn node_count(port: u16) -> Option<usize> {
    let body: serde_json::Value = serde_json::from_str(&get(port, "/_cluster/health")?).ok()?;
    body["number_of_nodes"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
}

fn read_state(dir: &Path) -> Option<State> {
    let text = std::fs::read_to_string(dir.join("node.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_state(dir: &Path, state: &State) -> Result<(), SearchNodeError> {
    let text = serde_json::to_string(state).expect("state serialises");
    std::fs::write(dir.join("node.json"), text).map_err(io("writing node.json"))
}

/// Whether `pid` is the node of `dir` (a pid reused by another process, or by another
/// folder's node, is not).
fn is_search_node(pid: u32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let cmdline = String::from_utf8_lossy(&cmdline);
        cmdline.contains("SearchNode") && cmdline.contains(&format!("path.home={}", dir.display()))
    })
}
