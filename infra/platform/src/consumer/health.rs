//! Whether every partition assigned to this process is being consumed, for `/readyz`.
//!
//! A handler's panic is caught and treated as a failure (retried, then dead-lettered), so a
//! partition's worker ends only on a bug in the runtime itself. If one does, its partition
//! stops moving while the group still looks healthy to the broker: the process says so here,
//! and its readiness check fails, so an orchestrator restarts it.

use std::collections::BTreeSet;
use std::sync::Mutex;

static LOST: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn name(group: &str, topic: &str, partition: i32) -> String {
    format!("{group} {topic}[{partition}]")
}

pub(super) fn worker_lost(group: &str, topic: &str, partition: i32) {
    LOST.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name(group, topic, partition));
}

/// The partition was revoked or the consumer stopped: it is no longer this process's.
pub(super) fn worker_gone(group: &str, topic: &str, partition: i32) {
    LOST.lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&name(group, topic, partition));
}

/// Partitions assigned to this process whose worker stopped (`group topic[partition]`);
/// empty when every assigned partition is consumed.
pub fn lost_partitions() -> Vec<String> {
    LOST.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect()
}

/// What `/readyz` answers for the consumers in this process: ready, or 503 naming the
/// partitions no longer consumed (an orchestrator then restarts the process, and the group
/// hands them to a live member).
pub fn readiness() -> Result<(), crate::problem::Problem> {
    let lost = lost_partitions();
    if lost.is_empty() {
        Ok(())
    } else {
        let detail = format!("partitions no longer consumed: {}", lost.join(", "));
        Err(crate::problem::Problem::unavailable(detail, 5))
    }
}
