//! Where the audit log lives: PostgreSQL when several instances share it, the embedded SQLite
//! file for one. Same trait, same SQL (sqlx types it per database).

use std::collections::HashSet;

use async_trait::async_trait;
use platform::db::Database;
use platform::with_pool;
use serde::Serialize;
use serde_json::Value;
use sqlx::QueryBuilder;
use uuid::Uuid;

use crate::chain::{self, Entry, GENESIS, Head, StoredRow};

/// A database failure: transient for the consumer (it retries in place).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit store: {0}")]
    Db(#[from] sqlx::Error),
    #[error("audit store migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// What the store holds cannot be read as it was written (a bug, or a hand edit).
    #[error("audit store: {0}")]
    Unreadable(String),
}

/// Filters of an audit query; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub actor: Option<String>,
    pub event_type: Option<String>,
    pub key: Option<String>,
    /// Inclusive, microseconds since the epoch (`occurred_at`).
    pub from_us: Option<i64>,
    /// Exclusive.
    pub to_us: Option<i64>,
}

/// A position in `(occurred_at, event id)` order, for keyset pagination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub occurred_at_us: i64,
    pub event_id: Uuid,
}

impl Position {
    /// An opaque cursor for clients.
    pub fn to_cursor(self) -> String {
        format!("{}_{}", self.occurred_at_us, self.event_id.simple())
    }

    pub fn from_cursor(cursor: &str) -> Option<Self> {
        let (at, id) = cursor.split_once('_')?;
        Some(Self {
            occurred_at_us: at.parse().ok()?,
            event_id: Uuid::try_parse(id).ok()?,
        })
    }
}

/// Which way a listing runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

/// One stored event with its place in the chain, as the API and exports show it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    #[serde(flatten)]
    pub event: Value,
    pub audit: ChainPosition,
    #[serde(skip)]
    pub position: Position,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainPosition {
    pub chain: String,
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
}

/// The audit log's storage.
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// Appends consecutive events of some chains, in one transaction: all rows and the new
    /// heads, or nothing. Redelivered and replayed events add no row. Returns the rows added
    /// per batch.
    async fn append_all(
        &self,
        batches: Vec<(String, Vec<Entry>)>,
    ) -> Result<Vec<usize>, StoreError>;

    /// [`AuditStore::append_all`] for one chain.
    async fn append(&self, chain: &str, entries: Vec<Entry>) -> Result<usize, StoreError> {
        let added = self.append_all(vec![(chain.to_string(), entries)]).await?;
        Ok(added.into_iter().sum())
    }

    /// Up to `limit` records after `after` in `order`.
    async fn list(
        &self,
        filter: &Filter,
        order: Order,
        after: Option<Position>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    /// Every chain, with its head when one is stored.
    async fn chains(&self) -> Result<Vec<(String, Option<Head>)>, StoreError>;

    /// One chain's head, as stored now.
    async fn head(&self, chain: &str) -> Result<Option<Head>, StoreError>;

    /// Rows of a chain with `seq > after_seq`, in `seq` order.
    async fn rows(
        &self,
        chain: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredRow>, StoreError>;
}

/// The store on PostgreSQL or SQLite.
#[derive(Debug, Clone)]
pub struct SqlStore {
    db: Database,
}

impl SqlStore {
    /// Applies this crate's migrations.
    pub async fn new(db: Database) -> Result<Self, StoreError> {
        let postgres = sqlx::migrate!("./migrations/postgres");
        let sqlite = sqlx::migrate!("./migrations/sqlite");
        platform::db::migrate(&db, postgres, sqlite).await?;
        Ok(Self { db })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }
}

/// The append transaction, written once for both databases; `$stored` and `$insert` are the
/// per-database statements (constant texts, so each is prepared once per connection). The
/// first statement writes, so SQLite takes its write lock up front (waiting its busy timeout)
/// instead of failing to upgrade a read; PostgreSQL locks the chain's head row, so two writers
/// of one chain (an old owner finishing while a rebalance moved the partition) apply one after
/// the other.
macro_rules! sql_append {
    ($pool:expr, $batches:expr, $lock:expr, $stored:path, $insert:path) => {{
        let batches: Vec<(String, Vec<Entry>)> = $batches;
        let mut added = vec![0; batches.len()];
        // Chains in name order, so two writers lock heads in the same order and never
        // deadlock.
        let mut order: Vec<usize> = (0..batches.len()).collect();
        order.sort_by(|a, b| batches[*a].0.cmp(&batches[*b].0));
        let mut batches: Vec<Option<(String, Vec<Entry>)>> =
            batches.into_iter().map(Some).collect();
        let mut tx = $pool.begin().await?;
        for index in order {
            let Some((chain, entries)) = batches[index].take() else {
                continue;
            };
            let chain = chain.as_str();
            sqlx::query(
                "INSERT INTO audit_chains (chain, last_seq, last_hash, last_offset) \
                 VALUES ($1, 0, $2, -1) ON CONFLICT (chain) DO NOTHING",
            )
            .bind(chain)
            .bind(GENESIS)
            .execute(&mut *tx)
            .await?;
            let (seq, hash, offset): (i64, String, i64) = sqlx::query_as($lock)
                .bind(chain)
                .fetch_one(&mut *tx)
                .await?;
            let head = Head { seq, hash, offset };
            let fresh: Vec<Uuid> = entries
                .iter()
                .filter(|e| e.offset > head.offset)
                .map(|e| e.event_id)
                .collect();
            let stored = $stored(&mut *tx, &fresh).await?;
            let (links, next) = chain::extend(&head, entries, &stored);
            $insert(&mut *tx, chain, &links).await?;
            if next != head {
                sqlx::query(
                    "UPDATE audit_chains SET last_seq = $2, last_hash = $3, last_offset = $4, \
                     updated_at = CURRENT_TIMESTAMP WHERE chain = $1",
                )
                .bind(chain)
                .bind(next.seq)
                .bind(&next.hash)
                .bind(next.offset)
                .execute(&mut *tx)
                .await?;
            }
            added[index] = links.len();
        }
        tx.commit().await?;
        Ok(added)
    }};
}

async fn pg_stored(
    conn: &mut sqlx::PgConnection,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let found: Vec<(Uuid,)> = sqlx::query_as("SELECT id FROM audit_log WHERE id = ANY($1)")
        .bind(ids)
        .fetch_all(conn)
        .await?;
    Ok(found.into_iter().map(|(id,)| id).collect())
}

/// All rows in one statement: the columns travel as arrays.
async fn pg_insert(
    conn: &mut sqlx::PgConnection,
    chain: &str,
    links: &[chain::Link],
) -> Result<(), sqlx::Error> {
    if links.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&chain::Link) -> String| links.iter().map(f).collect::<Vec<String>>();
    let ids: Vec<Uuid> = links.iter().map(|l| l.entry.event_id).collect();
    let seqs: Vec<i64> = links.iter().map(|l| l.seq).collect();
    let offsets: Vec<i64> = links.iter().map(|l| l.entry.offset).collect();
    let occurred: Vec<i64> = links.iter().map(|l| l.entry.occurred_at_us).collect();
    let keys: Vec<Option<String>> = links.iter().map(|l| l.entry.key.clone()).collect();
    sqlx::query(
        "INSERT INTO audit_log (id, chain, seq, kafka_offset, event_type, actor, aggregate_key, \
         occurred_at_us, content, prev_hash, hash) \
         SELECT id, $1, seq, kafka_offset, event_type, actor, aggregate_key, occurred_at_us, \
         content, prev_hash, hash FROM UNNEST($2::uuid[], $3::int8[], $4::int8[], $5::text[], \
         $6::text[], $7::text[], $8::int8[], $9::text[], $10::text[], $11::text[]) \
         AS t(id, seq, kafka_offset, event_type, actor, aggregate_key, occurred_at_us, content, \
         prev_hash, hash)",
    )
    .bind(chain)
    .bind(ids)
    .bind(seqs)
    .bind(offsets)
    .bind(column(|l| l.entry.event_type.clone()))
    .bind(column(|l| l.entry.actor.clone()))
    .bind(keys)
    .bind(occurred)
    .bind(column(|l| l.entry.content.clone()))
    .bind(column(|l| l.prev_hash.clone()))
    .bind(column(|l| l.hash.clone()))
    .execute(conn)
    .await?;
    Ok(())
}

/// SQLite takes rows in multi-row statements of a few fixed sizes, so a batch of any size
/// needs few statements and the statement cache holds at most four shapes.
const SQLITE_CHUNKS: [usize; 4] = [128, 32, 8, 1];

fn sqlite_chunks<T>(mut items: &[T]) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    for size in SQLITE_CHUNKS {
        while items.len() >= size {
            let (chunk, rest) = items.split_at(size);
            chunks.push(chunk);
            items = rest;
        }
    }
    chunks
}

async fn sqlite_stored(
    conn: &mut sqlx::SqliteConnection,
    ids: &[Uuid],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let mut found = HashSet::new();
    for chunk in sqlite_chunks(ids) {
        let mut select =
            QueryBuilder::<sqlx::Sqlite>::new("SELECT id FROM audit_log WHERE id IN (");
        let mut list = select.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        select.push(")");
        let rows: Vec<(Uuid,)> = select.build_query_as().fetch_all(&mut *conn).await?;
        found.extend(rows.into_iter().map(|(id,)| id));
    }
    Ok(found)
}

async fn sqlite_insert(
    conn: &mut sqlx::SqliteConnection,
    chain: &str,
    links: &[chain::Link],
) -> Result<(), sqlx::Error> {
    for chunk in sqlite_chunks(links) {
        let mut insert = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO audit_log (id, chain, seq, kafka_offset, event_type, actor, \
             aggregate_key, occurred_at_us, content, prev_hash, hash) ",
        );
        insert.push_values(chunk, |mut row, link| {
            row.push_bind(link.entry.event_id)
                .push_bind(chain)
                .push_bind(link.seq)
                .push_bind(link.entry.offset)
                .push_bind(&link.entry.event_type)
                .push_bind(&link.entry.actor)
                .push_bind(&link.entry.key)
                .push_bind(link.entry.occurred_at_us)
                .push_bind(&link.entry.content)
                .push_bind(&link.prev_hash)
                .push_bind(&link.hash);
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The listing query, written once for both databases.
macro_rules! sql_list {
    ($pool:expr, $db:ty, $filter:expr, $order:expr, $after:expr, $limit:expr) => {{
        let filter: &Filter = $filter;
        let mut query = QueryBuilder::<$db>::new(
            "SELECT id, chain, seq, occurred_at_us, content, prev_hash, hash FROM audit_log WHERE 1 = 1",
        );
        if let Some(actor) = &filter.actor {
            query.push(" AND actor = ").push_bind(actor.clone());
        }
        if let Some(event_type) = &filter.event_type {
            query.push(" AND event_type = ").push_bind(event_type.clone());
        }
        if let Some(key) = &filter.key {
            query.push(" AND aggregate_key = ").push_bind(key.clone());
        }
        if let Some(from) = filter.from_us {
            query.push(" AND occurred_at_us >= ").push_bind(from);
        }
        if let Some(to) = filter.to_us {
            query.push(" AND occurred_at_us < ").push_bind(to);
        }
        let (cmp, dir) = match $order {
            Order::NewestFirst => ("<", "DESC"),
            Order::OldestFirst => (">", "ASC"),
        };
        if let Some(after) = $after {
            let after: Position = after;
            query
                .push(format!(" AND (occurred_at_us {cmp} "))
                .push_bind(after.occurred_at_us)
                .push(" OR (occurred_at_us = ")
                .push_bind(after.occurred_at_us)
                .push(format!(" AND id {cmp} "))
                .push_bind(after.event_id)
                .push("))");
        }
        query
            .push(format!(" ORDER BY occurred_at_us {dir}, id {dir} LIMIT "))
            .push_bind(i64::from($limit));
        let rows: Vec<(Uuid, String, i64, i64, String, String, String)> =
            query.build_query_as().fetch_all($pool).await?;
        rows.into_iter()
            .map(|(id, chain, seq, occurred_at_us, content, prev_hash, hash)| {
                let event = serde_json::from_str(&content)
                    .map_err(|err| StoreError::Unreadable(format!("row {id} content unreadable: {err}")))?;
                Ok(AuditRecord {
                    event,
                    audit: ChainPosition {
                        chain,
                        seq,
                        prev_hash,
                        hash,
                    },
                    position: Position {
                        occurred_at_us,
                        event_id: id,
                    },
                })
            })
            .collect()
    }};
}

#[async_trait]
impl AuditStore for SqlStore {
    async fn append_all(
        &self,
        batches: Vec<(String, Vec<Entry>)>,
    ) -> Result<Vec<usize>, StoreError> {
        match &self.db {
            Database::Postgres(pool) => sql_append!(
                pool,
                batches,
                "SELECT last_seq, last_hash, last_offset FROM audit_chains WHERE chain = $1 FOR UPDATE",
                pg_stored,
                pg_insert
            ),
            Database::Sqlite(pool) => sql_append!(
                pool,
                batches,
                "SELECT last_seq, last_hash, last_offset FROM audit_chains WHERE chain = $1",
                sqlite_stored,
                sqlite_insert
            ),
        }
    }

    async fn list(
        &self,
        filter: &Filter,
        order: Order,
        after: Option<Position>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        match &self.db {
            Database::Postgres(pool) => {
                sql_list!(pool, sqlx::Postgres, filter, order, after, limit)
            }
            Database::Sqlite(pool) => sql_list!(pool, sqlx::Sqlite, filter, order, after, limit),
        }
    }

    async fn chains(&self) -> Result<Vec<(String, Option<Head>)>, StoreError> {
        let heads_sql =
            "SELECT chain, last_seq, last_hash, last_offset FROM audit_chains ORDER BY chain";
        let chains_sql = "SELECT DISTINCT chain FROM audit_log ORDER BY chain";
        let (heads, chains): (Vec<(String, i64, String, i64)>, Vec<(String,)>) = with_pool!(&self.db, pool => (
            sqlx::query_as(heads_sql).fetch_all(pool).await?,
            sqlx::query_as(chains_sql).fetch_all(pool).await?,
        ));
        let mut all: Vec<(String, Option<Head>)> = heads
            .into_iter()
            .map(|(chain, seq, hash, offset)| (chain, Some(Head { seq, hash, offset })))
            .collect();
        for (chain,) in chains {
            if !all.iter().any(|(known, _)| *known == chain) {
                all.push((chain, None));
            }
        }
        Ok(all)
    }

    async fn head(&self, chain: &str) -> Result<Option<Head>, StoreError> {
        let sql = "SELECT last_seq, last_hash, last_offset FROM audit_chains WHERE chain = $1";
        let head: Option<(i64, String, i64)> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql).bind(chain).fetch_optional(pool).await?
        });
        Ok(head.map(|(seq, hash, offset)| Head { seq, hash, offset }))
    }

    async fn rows(
        &self,
        chain: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredRow>, StoreError> {
        let sql = "SELECT seq, prev_hash, hash, id, event_type, actor, aggregate_key, \
                   occurred_at_us, kafka_offset, content FROM audit_log \
                   WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3";
        type Row = (
            i64,
            String,
            String,
            Uuid,
            String,
            String,
            Option<String>,
            i64,
            i64,
            String,
        );
        let rows: Vec<Row> = with_pool!(&self.db, pool => {
            sqlx::query_as(sql)
                .bind(chain)
                .bind(after_seq)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(
                    seq,
                    prev_hash,
                    hash,
                    event_id,
                    event_type,
                    actor,
                    key,
                    occurred_at_us,
                    offset,
                    content,
                )| {
                    StoredRow {
                        seq,
                        prev_hash,
                        hash,
                        entry: Entry {
                            event_id,
                            event_type,
                            actor,
                            key,
                            occurred_at_us,
                            offset,
                            content,
                        },
                    }
                },
            )
            .collect())
    }
}
