//! Starting what the tests and the benchmarks run, one way for both (benches/common includes
//! this file): the Apache Kafka broker they share, and `herald` processes on port 0 whose
//! address is read from what they announce.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::OnceCell;

static BROKER: OnceCell<String> = OnceCell::const_new();

/// The shared broker: KAFKA_BROKERS when set (the test command starts one), else a broker
/// under target/herald-test started on first use and left running for the next binary.
pub async fn brokers() -> String {
    BROKER
        .get_or_init(|| async {
            if let Ok(brokers) = std::env::var("KAFKA_BROKERS") {
                return brokers;
            }
            let broker = platform::broker::LocalBroker::start(&test_dir("kafka"), None)
                .await
                .expect("starting the test broker");
            broker.bootstrap()
        })
        .await
        .clone()
}

static SEARCH_NODE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// The OpenSearch node the tests share: `TEST_OPENSEARCH_URL` when set (the test command
/// starts one), else one started here in target/herald-test/opensearch and left running
/// for the next test binary.
pub async fn opensearch_url() -> String {
    SEARCH_NODE
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("TEST_OPENSEARCH_URL") {
                return url;
            }
            let node = platform::search_node::LocalSearchNode::start(&test_dir("opensearch"))
                .await
                .expect("starting the test search node (Java 17 and Maven fetch it)");
            node.url()
        })
        .await
        .clone()
}

/// A folder of its own under target/herald-test.
pub fn test_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("herald-test")
        .join(name)
}

/// Spawns `command` (a `herald` subcommand listening on port 0), waits up to `within` for
/// the address it announces, and keeps draining its standard output so it never blocks on a
/// full pipe. Killed when the child is dropped.
pub async fn announced(mut command: Command, within: Duration) -> (Child, String) {
    command.stdout(Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().expect("herald starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = announced_address(&mut lines, within).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

/// The address a `herald` process announces on its standard output ("HTTP API on ...").
pub async fn announced_address(
    lines: &mut Lines<BufReader<ChildStdout>>,
    within: Duration,
) -> String {
    loop {
        let line = tokio::time::timeout(within, lines.next_line())
            .await
            .expect("herald printed no address in time")
            .unwrap()
            .expect("herald exited before it was ready");
        if let Some(rest) = line.split("HTTP API on ").nth(1) {
            return rest.split_whitespace().next().unwrap().to_string();
        }
    }
}
