//! `herald audit export`: a time range as JSON lines, oldest first, each line an event with
//! its place in the chain (the same shape as the query API's items).

use std::io::Write;

use crate::store::{AuditStore, Filter, Order};

const PAGE: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
}

/// Writes every record matching `filter` to `out`; returns how many.
pub async fn export(
    store: &dyn AuditStore,
    filter: &Filter,
    out: &mut dyn Write,
) -> Result<u64, ExportError> {
    let mut after = None;
    let mut written = 0;
    loop {
        let page = store.list(filter, Order::OldestFirst, after, PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some(last.position);
        for record in &page {
            serde_json::to_writer(&mut *out, record).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            written += 1;
        }
    }
    out.flush()?;
    Ok(written)
}
