//! `herald audit verify`: every chain, row by row, against its hashes and its head.

use crate::chain::{Failure, Head, Verifier};
use crate::store::{AuditStore, StoreError};

/// Rows read per query while walking a chain.
const PAGE: u32 = 5000;
/// How many times a walk follows a chain that grows while it is walked.
const FOLLOW: usize = 10;

/// The outcome of a verification: what was checked and the first fault of each bad chain.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub chains: usize,
    pub rows: u64,
    pub failures: Vec<Failure>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

pub async fn verify(store: &dyn AuditStore) -> Result<Report, StoreError> {
    let mut report = Report::default();
    for (chain, head) in store.chains().await? {
        report.chains += 1;
        match verify_chain(store, &chain, &head.unwrap_or_else(Head::genesis)).await? {
            Ok(rows) => report.rows += rows,
            Err(failure) => report.failures.push(failure),
        }
    }
    Ok(report)
}

async fn verify_chain(
    store: &dyn AuditStore,
    chain: &str,
    head: &Head,
) -> Result<Result<u64, Failure>, StoreError> {
    let mut verifier = Verifier::new(chain);
    let mut after = 0;
    let mut head = head.clone();
    // A live log grows during the walk: rows past the head read at the start are checked
    // too, against the head as stored when the walk reaches the end, read again until the
    // two meet (a row appended by hand past the real head never does).
    for _ in 0..FOLLOW {
        loop {
            let rows = store.rows(chain, after, PAGE).await?;
            let Some(last) = rows.last() else {
                break;
            };
            after = last.seq;
            for row in &rows {
                if let Err(failure) = verifier.check(row) {
                    return Ok(Err(failure));
                }
            }
        }
        if after <= head.seq {
            break;
        }
        match store.head(chain).await? {
            Some(fresh) if fresh.seq > head.seq => head = fresh,
            _ => break,
        }
    }
    Ok(verifier.finish(&head))
}
