//! The requests of a PostgreSQL store, one function per [`EventStore`](crate::store::EventStore)
//! method, each on a pooled connection.
//!
//! Every global read of events goes through the read horizon: only rows whose writing
//! transaction is older than every running transaction
//! (`xid < pg_snapshot_xmin(pg_current_snapshot())`) are returned, and the durable head is the
//! highest such position. Positions are handed out in transaction-id order (see the `append`
//! function in `schema.rs`), so every position at or below the head belongs to a finished
//! transaction: a reader never passes a row that could still commit.
//! Reads of one stream go through the horizon too, so that they never return a position above
//! the head (the same promise as the embedded store's).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use tracing::Instrument;
use uuid::Uuid;

use super::errors::pg_error;
use super::Shared;
use crate::store::codec::{Header, PageBuilder};
use crate::store::{
    AppendResult, CheckpointInfo, EventData, ExpectedVersion, Filter, Lease, Metadata, ReadBatch,
    RecordedEvent, Result, Snapshot, StateWrite, StoreError, StreamInfo, VerifyReport,
    READ_PAGE_BYTES,
};

/// The read horizon of the statement that uses it: transactions below it are finished.
const HORIZON: &str = "pg_snapshot_xmin(pg_current_snapshot())";

/// The columns of an event, in the order [`push_row`] reads them.
const EVENT_COLUMNS: &str = "e.position, e.stream_id, e.stream_version, e.category, \
     e.event_type, e.schema_version, e.event_id, e.correlation_id, e.causation_id, \
     e.timestamp_micros, e.payload, e.metadata::text";

/// The column `bytes_before`: the bytes of the page's rows before this one, in `order`, so
/// that a page ends at the row that brings them to [`READ_PAGE_BYTES`]. `size` is a row's
/// bytes, the same as [`RecordedEvent::page_bytes`] and
/// [`state_entry_bytes`](crate::store::state_entry_bytes) (`octet_length` reads a stored value's
/// length without fetching it).
fn bytes_before(size: &str, order: &str) -> String {
    format!(
        "coalesce(sum({size}) OVER (ORDER BY {order} \
         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS bytes_before"
    )
}

/// An event's bytes in a page (see [`bytes_before`]): its metadata counts its keys and values
/// ([`metadata_bytes`](crate::store::metadata_bytes)), read only for events that have any.
const EVENT_BYTES: &str = "octet_length(e.payload) + octet_length(e.stream_id) \
     + octet_length(e.category) + octet_length(e.event_type) \
     + CASE WHEN e.metadata IS NULL THEN 0 ELSE (SELECT coalesce(sum(octet_length(m.k) \
         + octet_length(m.v)), 0) FROM jsonb_each_text(e.metadata) AS m(k, v)) END";

/// A state entry's bytes in a page (see [`bytes_before`]).
const ENTRY_BYTES: &str = "octet_length(key) + octet_length(value)";

/// The statements of one schema, built once at open.
pub struct Sql {
    append: String,
    append_batch: String,
    horizon: String,
    head: String,
    committed_head: String,
    read_stream: String,
    stream_version: String,
    committed_version: String,
    read_all: String,
    read_all_categories: String,
    read_all_types: String,
    read_all_both: String,
    save_checkpoint: String,
    load_checkpoint: String,
    insert_checkpoint: String,
    update_checkpoint: String,
    put_state: String,
    delete_state: String,
    load_state: String,
    scan_state_bounded: String,
    scan_state_open: String,
    save_snapshot: String,
    load_snapshot: String,
    list_streams: String,
    list_checkpoints: String,
    s: String,
}

impl Sql {
    /// The statements for the schema `s` (already quoted).
    pub fn new(s: &str) -> Self {
        let by_position = bytes_before(EVENT_BYTES, "e.position");
        let by_version = bytes_before(EVENT_BYTES, "e.stream_version");
        let by_key = bytes_before(ENTRY_BYTES, "key");
        let read_all = |filter: &str| {
            format!(
                "WITH h AS MATERIALIZED (SELECT coalesce((SELECT max(position) FROM {s}.events \
                                            WHERE xid < {HORIZON}), 0) AS head) \
                 SELECT h.head, {EVENT_COLUMNS} FROM h LEFT JOIN LATERAL ( \
                     SELECT * FROM (SELECT e.*, {by_position} \
                         FROM {s}.events e \
                         WHERE e.position >= $1 AND e.position <= least(h.head, $3) {filter} \
                         ORDER BY e.position LIMIT $2) e \
                     WHERE e.bytes_before < {READ_PAGE_BYTES} ORDER BY e.position) e ON true"
            )
        };
        Sql {
            append: format!(
                "SELECT o_actual, o_first, o_xid, o_snapshot \
                 FROM {s}.append_v8($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text[]::jsonb[])"
            ),
            append_batch: format!(
                "SELECT o_actual, o_first, o_xid, o_snapshot \
                 FROM {s}.append_batch_v8($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                                          $11::text[]::jsonb[])"
            ),
            horizon: format!("SELECT {HORIZON}::text"),
            head: format!(
                "SELECT coalesce(max(position), 0) FROM {s}.events WHERE xid < {HORIZON}"
            ),
            committed_head: format!("SELECT coalesce(max(position), 0) FROM {s}.events"),
            read_stream: format!(
                "SELECT {EVENT_COLUMNS} FROM ( \
                     SELECT e.*, {by_version} \
                     FROM {s}.events e \
                     WHERE e.stream_id = $1 AND e.stream_version >= $2 AND e.xid < {HORIZON} \
                     ORDER BY e.stream_version LIMIT $3) e \
                 WHERE e.bytes_before < {READ_PAGE_BYTES} ORDER BY e.stream_version"
            ),
            stream_version: format!(
                "SELECT coalesce(max(stream_version), 0), coalesce(max(position), 0) \
                 FROM {s}.events WHERE stream_id = $1 AND xid < {HORIZON}"
            ),
            committed_version: format!(
                "SELECT coalesce(max(stream_version), 0) FROM {s}.events WHERE stream_id = $1"
            ),
            read_all: read_all(""),
            read_all_categories: read_all("AND e.category = ANY($4)"),
            read_all_types: read_all("AND e.event_type = ANY($4)"),
            read_all_both: read_all("AND e.category = ANY($4) AND e.event_type = ANY($5)"),
            save_checkpoint: format!(
                "INSERT INTO {s}.checkpoints (name, position, updated_micros) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE \
                 SET position = excluded.position, updated_micros = excluded.updated_micros"
            ),
            load_checkpoint: format!("SELECT position FROM {s}.checkpoints WHERE name = $1"),
            insert_checkpoint: format!(
                "INSERT INTO {s}.checkpoints (name, position, updated_micros) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING"
            ),
            update_checkpoint: format!(
                "UPDATE {s}.checkpoints SET position = $2, updated_micros = $3 \
                 WHERE name = $1 AND position = $4"
            ),
            put_state: format!(
                "INSERT INTO {s}.state (consumer, key, value) \
                 SELECT $1, k, v FROM unnest($2::bytea[], $3::bytea[]) AS t(k, v) \
                 ON CONFLICT (consumer, key) DO UPDATE SET value = excluded.value"
            ),
            delete_state: format!(
                "DELETE FROM {s}.state WHERE consumer = $1 AND key = ANY($2::bytea[])"
            ),
            load_state: format!("SELECT value FROM {s}.state WHERE consumer = $1 AND key = $2"),
            scan_state_bounded: format!(
                "SELECT key, value FROM ( \
                     SELECT key, value, {by_key} \
                     FROM {s}.state \
                     WHERE consumer = $1 AND key >= $2 AND key < $4 ORDER BY key LIMIT $3) t \
                 WHERE bytes_before < {READ_PAGE_BYTES} ORDER BY key"
            ),
            scan_state_open: format!(
                "SELECT key, value FROM ( \
                     SELECT key, value, {by_key} \
                     FROM {s}.state \
                     WHERE consumer = $1 AND key >= $2 ORDER BY key LIMIT $3) t \
                 WHERE bytes_before < {READ_PAGE_BYTES} ORDER BY key"
            ),
            // Several processes may save snapshots of one stream: one of an older version that
            // arrives late does not replace a newer one of the same schema version.
            save_snapshot: format!(
                "INSERT INTO {s}.snapshots (stream_id, stream_version, schema_version, payload) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (stream_id) DO UPDATE \
                 SET stream_version = excluded.stream_version, \
                     schema_version = excluded.schema_version, payload = excluded.payload \
                 WHERE {s}.snapshots.stream_version <= excluded.stream_version \
                    OR {s}.snapshots.schema_version <> excluded.schema_version"
            ),
            load_snapshot: format!(
                "SELECT stream_version, schema_version, payload FROM {s}.snapshots \
                 WHERE stream_id = $1"
            ),
            // A skip scan over the (stream_id, stream_version) index: one index descent per
            // stream, however many events each has.
            list_streams: format!(
                "WITH RECURSIVE ids(stream_id) AS ( \
                     (SELECT stream_id FROM {s}.events WHERE stream_id > $1 \
                      ORDER BY stream_id LIMIT 1) \
                     UNION ALL \
                     SELECT (SELECT e.stream_id FROM {s}.events e \
                             WHERE e.stream_id > ids.stream_id ORDER BY e.stream_id LIMIT 1) \
                     FROM ids WHERE ids.stream_id IS NOT NULL) \
                 SELECT ids.stream_id, l.stream_version, l.position FROM ids \
                 CROSS JOIN LATERAL (SELECT e.stream_version, e.position FROM {s}.events e \
                     WHERE e.stream_id = ids.stream_id AND e.xid < {HORIZON} \
                     ORDER BY e.stream_version DESC LIMIT 1) l \
                 WHERE ids.stream_id IS NOT NULL LIMIT $2"
            ),
            list_checkpoints: format!(
                "SELECT name, position FROM {s}.checkpoints WHERE name > $1 \
                 ORDER BY name LIMIT $2"
            ),
            s: s.to_owned(),
        }
    }
}

/// A statement's parameters.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs `sql` as a statement prepared once per connection, and returns its rows.
pub(super) async fn rows(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.query(&statement, params).await.map_err(pg_error)
}

/// [`rows`] for a statement that returns exactly one row.
pub(super) async fn one(client: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<Row> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.query_one(&statement, params).await.map_err(pg_error)
}

/// [`rows`] for a statement that returns at most one row.
pub(super) async fn maybe(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.query_opt(&statement, params).await.map_err(pg_error)
}

/// Runs `sql` as a cached statement and returns how many rows it changed.
pub(super) async fn execute(
    client: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<u64> {
    let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
    client.execute(&statement, params).await.map_err(pg_error)
}

/// A `u64` position or version as PostgreSQL's `bigint` (saturating: nothing is stored above).
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A count as a `LIMIT`.
fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored `bigint` that must not be negative.
pub(super) fn unsigned(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::DamagedMetadata {
        what: what.to_owned(),
        reason: format!("negative value {v}"),
    })
}

/// A position to store: refused above `bigint`.
fn storable(position: u64, what: &str) -> Result<i64> {
    i64::try_from(position).map_err(|_| {
        StoreError::InvalidInput(format!("{what} {position} is above the largest position"))
    })
}

/// A checkpoint as stored: any `u64`, its bits in a `bigint` (the column is compared only for
/// equality).
fn checkpoint_bits(position: u64) -> i64 {
    i64::from_ne_bytes(position.to_ne_bytes())
}

/// A stored checkpoint back as the `u64` it was.
fn checkpoint_value(bits: i64) -> u64 {
    u64::from_ne_bytes(bits.to_ne_bytes())
}

/// The wall clock in microseconds since the Unix epoch.
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Adds the event in the columns [`EVENT_COLUMNS`] of `row`, starting at column `at`, to `page`:
/// its strings and payload are borrowed from the row and copied into the page's buffers, so a
/// page of rows costs no allocation per field (decision 63).
fn push_row(row: &Row, at: usize, page: &mut PageBuilder) -> Result<()> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
        row.try_get(i).map_err(|e| StoreError::Damaged {
            position: 0,
            reason: format!("column {i} of an event row: {e}"),
        })
    }
    let position: i64 = get(row, at)?;
    let damaged = |reason: String| StoreError::Damaged {
        position: position.max(0) as u64,
        reason,
    };
    let version: i64 = get(row, at + 2)?;
    let schema_version: i32 = get(row, at + 5)?;
    let timestamp: i64 = get(row, at + 9)?;
    let header = Header {
        position: u64::try_from(position).map_err(|_| damaged("negative position".into()))?,
        stream_id: get(row, at + 1)?,
        stream_version: u64::try_from(version)
            .map_err(|_| damaged(format!("negative stream version {version}")))?,
        category: get(row, at + 3)?,
        event_type: get(row, at + 4)?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| damaged(format!("negative schema version {schema_version}")))?,
        event_id: get(row, at + 6)?,
        correlation_id: get(row, at + 7)?,
        causation_id: get(row, at + 8)?,
        timestamp_micros: u64::try_from(timestamp)
            .map_err(|_| damaged(format!("negative timestamp {timestamp}")))?,
    };
    let payload: &[u8] = get(row, at + 10)?;
    let metadata = match get::<Option<&str>>(row, at + 11)? {
        None => Metadata::new(),
        Some(json) => serde_json::from_str(json)
            .map_err(|e| damaged(format!("metadata is not an object of strings: {e}")))?,
    };
    page.push(&header, payload, metadata);
    Ok(())
}

/// An event's metadata as the store's `metadata` column takes it: a JSON object, or NULL for
/// none.
fn metadata_json(metadata: &Metadata) -> Option<String> {
    if metadata.is_empty() {
        return None;
    }
    // A map of strings always encodes.
    Some(serde_json::to_string(metadata).expect("encode metadata"))
}

/// A transaction id (xid8) as the server prints it.
fn parse_xid(text: &str) -> Result<u64> {
    text.parse().map_err(|_| {
        StoreError::engine_message(format!("postgres returned a bad transaction id {text:?}"))
    })
}

/// The durable head: the highest position below the read horizon.
pub async fn read_head(client: &tokio_postgres::Client, sql: &Sql) -> Result<u64> {
    let row = client.query_one(&sql.head, &[]).await.map_err(pg_error)?;
    unsigned(row.get(0), "durable head")
}

/// The highest committed position, readable or not yet (an older transaction may still hold
/// the horizon below it): what the head will reach once the transactions running now finish.
pub async fn read_committed_head(client: &tokio_postgres::Client, sql: &Sql) -> Result<u64> {
    let row = client
        .query_one(&sql.committed_head, &[])
        .await
        .map_err(pg_error)?;
    unsigned(row.get(0), "committed head")
}

/// The read horizon now: every transaction id below it is finished.
async fn horizon(client: &tokio_postgres::Client, sql: &Sql) -> Result<u64> {
    let row = client
        .query_one(&sql.horizon, &[])
        .await
        .map_err(pg_error)?;
    parse_xid(row.get(0))
}

/// Waits until transaction `xid` (committed) is below the read horizon, then moves the head to
/// `last`; gives up with a warning after the visibility timeout (the events are durable, but
/// global readers see them only once the transactions that hold the horizon back finish).
///
/// `older`, when known, lists the transactions older than `xid` that were running when it took
/// its id (see [`Finished`](super::finished::Finished)): once each has finished, so has every
/// transaction below `xid`, and the wait ends without asking the server. Those of this
/// process's own writes end while it waits (each wakes it); for the others it reads the
/// horizon: at once when no write of this process is running (nothing here will end them), else
/// after a pause, which doubles up to 50 ms.
/// Holds no connection while it waits: each look at the horizon takes one from the pool for
/// that one query.
async fn wait_visible(shared: &Shared, xid: u64, older: Option<&[u64]>, last: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + shared.config.visibility_timeout;
    let mut head = shared.watch();
    // Subscribed before the first check, so that no end between the check and the wait is missed.
    let mut ended = shared.finished.subscribe();
    let mut listening = older.is_some();
    let mut pause = Duration::from_millis(1);
    let mut look_at = match older {
        Some(_) if shared.finished.any_running() => tokio::time::Instant::now() + pause,
        _ => tokio::time::Instant::now(),
    };
    loop {
        if older.is_some_and(|older| shared.finished.all(older)) {
            break;
        }
        if tokio::time::Instant::now() >= look_at {
            // A look that fails (no connection free, a lost one) is tried again until the
            // deadline: the append must not return before its events are readable.
            let looked = match shared.client().await {
                Ok(client) => horizon(&client, &shared.sql).await,
                Err(e) => Err(e),
            };
            match looked {
                Ok(h) if h > xid => break,
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "could not read the horizon; trying again"),
            }
            look_at = tokio::time::Instant::now() + pause;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        if head.current() >= last {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                schema = %shared.config.schema,
                position = last,
                "an append is durable but not yet readable: a transaction older than it is \
                 still running (visibility timeout reached)"
            );
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep_until(look_at.min(deadline)) => {}
            _ = head.wait_for(last) => return Ok(()),
            changed = ended.changed(), if listening => {
                // (The sender lives as long as `shared`: an error cannot happen.)
                listening = changed.is_ok();
            }
        }
    }
    shared.bump_head(last);
    Ok(())
}

/// The most appends one batch carries (see [`committer`]).
const MAX_BATCH_APPENDS: usize = 64;
/// The most events one batch carries (a batch takes at least one append, however large).
const MAX_BATCH_EVENTS: usize = 1024;
/// The most payload bytes one batch carries (a batch takes at least one append).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// One append waiting for a committer.
pub(super) struct Pending {
    stream: String,
    expected: ExpectedVersion,
    events: Vec<EventData>,
    reply: oneshot::Sender<Result<AppendResult>>,
}

/// See [`EventStore::append`](crate::store::EventStore::append).
///
/// # Group commit
///
/// Appends queue for the store's committers ([`PostgresConfig::committers`](super::PostgresConfig::committers)
/// tasks, each on a connection of the pool while it commits). A committer takes the first
/// append waiting and, with it, every other one already waiting (of other streams, up to
/// [`MAX_BATCH_APPENDS`], [`MAX_BATCH_EVENTS`] and [`MAX_BATCH_BYTES`]), and commits them in
/// one transaction through the schema's `append_batch` function: each append is checked
/// against its own stream's version, and those that pass take one block of positions together.
/// So under load many appends share one commit, as they share one fsync on the embedded store;
/// alone, an append goes through `append` as before. Each caller still gets its own result, and
/// only once its events are durable and readable.
pub async fn append(
    shared: &Shared,
    stream: String,
    expected: ExpectedVersion,
    events: Vec<EventData>,
) -> Result<AppendResult> {
    for e in &events {
        i32::try_from(e.schema_version).map_err(|_| {
            StoreError::InvalidInput(format!("schema version {} is too large", e.schema_version))
        })?;
    }
    let (reply, answer) = oneshot::channel();
    shared
        .appends
        .send(Pending {
            stream,
            expected,
            events,
            reply,
        })
        .map_err(|_| StoreError::Closed)?;
    answer.await.map_err(|_| StoreError::Closed)?
}

/// A committer: takes batches of waiting appends and commits each, until the store is dropped
/// (its runtime stops this task).
pub async fn committer(shared: Arc<Shared>) {
    let mut carried: Option<Pending> = None;
    loop {
        let mut batch = Vec::new();
        match carried.take() {
            // An append left over from the last batch goes first, without waiting for the
            // queue: another committer may be waiting on it for appends that will not come
            // until this one is answered.
            Some(first) => {
                batch.push(first);
                if let Ok(mut queue) = shared.queue.try_lock() {
                    carried = fill(&mut queue, &mut batch);
                }
            }
            None => {
                let mut queue = shared.queue.lock().await;
                let Some(first) = queue.recv().await else {
                    return;
                };
                batch.push(first);
                carried = fill(&mut queue, &mut batch);
            }
        }
        if batch.len() == 1 {
            let Some(p) = batch.pop() else { continue };
            append_and_answer(&shared, p).await;
        } else {
            commit_batch(&shared, batch).await;
        }
    }
}

/// Adds the appends already waiting to `batch` (one per stream, within the batch's bounds);
/// returns one that must wait for the next batch (a second append of a stream in it).
fn fill(
    queue: &mut tokio::sync::mpsc::UnboundedReceiver<Pending>,
    batch: &mut Vec<Pending>,
) -> Option<Pending> {
    let mut streams: HashSet<String> = batch.iter().map(|p| p.stream.clone()).collect();
    let mut events: usize = batch.iter().map(|p| p.events.len()).sum();
    let mut bytes: usize = batch
        .iter()
        .flat_map(|p| &p.events)
        .map(|e| e.payload.len())
        .sum();
    while batch.len() < MAX_BATCH_APPENDS && events < MAX_BATCH_EVENTS && bytes < MAX_BATCH_BYTES {
        let Ok(next) = queue.try_recv() else {
            break;
        };
        if !streams.insert(next.stream.clone()) {
            // One batch checks each stream's version once.
            return Some(next);
        }
        events += next.events.len();
        bytes += next.events.iter().map(|e| e.payload.len()).sum::<usize>();
        batch.push(next);
    }
    None
}

/// The expected version as the SQL functions take it.
fn expected_arg(expected: ExpectedVersion) -> i64 {
    match expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream => 0,
        ExpectedVersion::Exact(v) => big(v),
    }
}

/// Commits several appends (of different streams) in one transaction and answers each.
async fn commit_batch(shared: &Arc<Shared>, batch: Vec<Pending>) {
    let span = crate::store::spans::commit("postgres", batch.len());
    commit_batch_in(shared, batch, &span)
        .instrument(span.clone())
        .await
}

/// [`commit_batch`] inside its span, which it fills in.
async fn commit_batch_in(shared: &Arc<Shared>, batch: Vec<Pending>, span: &tracing::Span) {
    let client = match shared.client().await {
        Ok(client) => client,
        Err(e) => {
            let message = crate::store::error_chain(&e);
            for p in batch {
                let error = if e.is_transient() {
                    StoreError::Unavailable(message.clone())
                } else {
                    StoreError::engine_message(message.clone())
                };
                let _ = p.reply.send(Err(error));
            }
            return;
        }
    };
    let n: usize = batch.iter().map(|p| p.events.len()).sum();
    let mut streams = Vec::with_capacity(batch.len());
    let mut categories = Vec::with_capacity(batch.len());
    let mut expected = Vec::with_capacity(batch.len());
    let mut counts = Vec::with_capacity(batch.len());
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schema_versions = Vec::with_capacity(n);
    let mut correlations = Vec::with_capacity(n);
    let mut causations = Vec::with_capacity(n);
    let mut payloads: Vec<&[u8]> = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    for p in &batch {
        streams.push(p.stream.as_str());
        categories.push(crate::store::category_of(&p.stream));
        expected.push(expected_arg(p.expected));
        counts.push(i32::try_from(p.events.len()).unwrap_or(i32::MAX));
        for e in &p.events {
            ids.push(e.event_id);
            types.push(e.event_type.as_str());
            schema_versions.push(i32::try_from(e.schema_version).unwrap_or(i32::MAX));
            correlations.push(e.correlation_id);
            causations.push(e.causation_id);
            payloads.push(&e.payload[..]);
            metadata.push(metadata_json(&e.metadata));
        }
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
        &streams,
        &categories,
        &expected,
        &counts,
        &ids,
        &types,
        &schema_versions,
        &correlations,
        &causations,
        &payloads,
        &metadata,
    ];
    let mut running = None;
    let outcome = match client.prepare_cached(&shared.sql.append_batch).await {
        Ok(append) => {
            let started = std::time::Instant::now();
            running = Some(shared.finished.start());
            let appended = client.query_one(&append, &params).await;
            if appended.is_ok() {
                shared.metrics.committed(started.elapsed());
            }
            appended
        }
        Err(e) => Err(e),
    };
    let row = match outcome {
        Ok(done) => done,
        Err(e) => {
            drop(running);
            // The function releases the positions lock when it fails holding it; the
            // connection is closed anyway (see `append_one`).
            drop(deadpool_postgres::Object::take(client));
            let error = pg_error(e);
            if error.is_transient() {
                let message = error.to_string();
                for p in batch {
                    let _ = p.reply.send(Err(StoreError::Unavailable(message.clone())));
                }
            } else {
                // Nothing was written (the transaction failed): each append again on its own,
                // so that whatever failed fails only its own caller.
                for p in batch {
                    append_and_answer(shared, p).await;
                }
            }
            return;
        }
    };
    drop(client);
    let decoded = (|| {
        let actual: Vec<i64> = row.try_get(0).map_err(pg_error)?;
        let first: Vec<Option<i64>> = row.try_get(1).map_err(pg_error)?;
        let xid: Option<String> = row.try_get(2).map_err(pg_error)?;
        let snapshot: Option<String> = row.try_get(3).map_err(pg_error)?;
        if actual.len() != batch.len() || first.len() != batch.len() {
            return Err(StoreError::engine_message(
                "postgres append_batch returned the wrong number of results",
            ));
        }
        let xid = xid.as_deref().map(parse_xid).transpose()?;
        let older = match xid {
            Some(xid) => older_than(snapshot.as_deref(), xid)?,
            None => Vec::new(),
        };
        Ok((actual, first, xid, older))
    })();
    if let (Some(running), Ok((_, _, Some(xid), _))) = (running.as_mut(), &decoded) {
        running.finished_as(*xid);
    }
    // The transaction has ended (the answer comes after the commit): appends that wait for it
    // may go.
    drop(running);
    let (actual, first, xid, older) = match decoded {
        Ok(decoded) => decoded,
        Err(e) => {
            let message = crate::store::error_chain(&e);
            for p in batch {
                let _ = p
                    .reply
                    .send(Err(StoreError::engine_message(message.clone())));
            }
            return;
        }
    };
    let (mut accepted, mut events) = (0usize, 0usize);
    let mut results = Vec::with_capacity(batch.len());
    let mut last_of_batch = 0u64;
    for (i, p) in batch.iter().enumerate() {
        let was = u64::try_from(actual[i]).unwrap_or(0);
        let count = p.events.len() as u64;
        let result = match first[i] {
            None => Err(StoreError::WrongExpectedVersion {
                stream: p.stream.clone(),
                expected: p.expected,
                actual: was,
            }),
            Some(first) => {
                let first = u64::try_from(first).unwrap_or(0);
                last_of_batch = last_of_batch.max(first + count - 1);
                accepted += 1;
                events += p.events.len();
                Ok(AppendResult {
                    first_position: first,
                    last_position: first + count - 1,
                    stream_version: was + count,
                })
            }
        };
        results.push(result);
    }
    if accepted > 0 {
        shared.metrics.group(accepted, events);
    }
    span.record("appends", accepted);
    span.record("events", events);
    let answers: Vec<_> = batch.into_iter().map(|p| p.reply).zip(results).collect();
    match xid {
        Some(xid) => {
            shared.announce(last_of_batch);
            let visible = Visible {
                older,
                xid,
                last: last_of_batch,
            };
            answer_when_visible(shared, visible, answers);
        }
        // Every append was refused: nothing to wait for.
        None => {
            for (reply, result) in answers {
                let _ = reply.send(result);
            }
        }
    }
}

/// One append through the schema's `append` function: committed, with what its answer waits
/// for.
async fn append_one(
    shared: &Shared,
    stream: String,
    expected: ExpectedVersion,
    events: Vec<EventData>,
) -> Result<(AppendResult, Visible)> {
    let client = shared.client().await?;
    let expected_arg = expected_arg(expected);
    let n = events.len();
    let mut ids = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut schema_versions = Vec::with_capacity(n);
    let mut correlations = Vec::with_capacity(n);
    let mut causations = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    for e in events {
        metadata.push(metadata_json(&e.metadata));
        ids.push(e.event_id);
        types.push(e.event_type);
        schema_versions.push(i32::try_from(e.schema_version).map_err(|_| {
            StoreError::InvalidInput(format!("schema version {} is too large", e.schema_version))
        })?);
        correlations.push(e.correlation_id);
        causations.push(e.causation_id);
        payloads.push(e.payload);
    }
    let category = crate::store::category_of(&stream).to_owned();
    let append = client
        .prepare_cached(&shared.sql.append)
        .await
        .map_err(pg_error)?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 10] = [
        &stream,
        &category,
        &expected_arg,
        &ids,
        &types,
        &schema_versions,
        &correlations,
        &causations,
        &payloads,
        &metadata,
    ];
    let started = std::time::Instant::now();
    let mut running = shared.finished.start();
    let appended = client.query_one(&append, &params).await;
    if appended.is_ok() {
        shared.metrics.committed(started.elapsed());
    }
    let row = match appended {
        Ok(row) => row,
        Err(e) => {
            drop(running);
            let unique = e.code() == Some(&SqlState::UNIQUE_VIOLATION);
            // The function releases the session lock on positions when it fails while holding
            // it; closing the connection (instead of pooling it) also covers a failure between
            // taking the lock and entering the block that releases it.
            drop(deadpool_postgres::Object::take(client));
            if unique {
                let actual = committed_version(shared, &stream).await?;
                return Err(StoreError::WrongExpectedVersion {
                    stream,
                    expected,
                    actual,
                });
            }
            return Err(pg_error(e));
        }
    };
    let xid = row
        .try_get::<_, Option<&str>>(2)
        .map_err(pg_error)?
        .map(parse_xid)
        .transpose()?;
    if let Some(xid) = xid {
        running.finished_as(xid);
    }
    // The transaction has ended (the answer comes after the commit): appends that wait for it
    // may go.
    drop(running);
    let actual = unsigned(row.get(0), "stream version")?;
    let (Some(first), Some(xid)) = (row.get::<_, Option<i64>>(1), xid) else {
        return Err(StoreError::WrongExpectedVersion {
            stream,
            expected,
            actual,
        });
    };
    let snapshot: Option<&str> = row.try_get(3).map_err(pg_error)?;
    let older = older_than(snapshot, xid)?;
    let first = unsigned(first, "position")?;
    let last = first + n as u64 - 1;
    shared.metrics.group(1, n);
    drop(client);
    shared.announce(last);
    let result = AppendResult {
        first_position: first,
        last_position: last,
        stream_version: actual,
    };
    Ok((result, Visible { older, xid, last }))
}

/// What an answer waits for after a commit: its transaction below the read horizon.
struct Visible {
    /// The transactions older than the committing one that were still running when it took its
    /// id (worked out from the append function's `o_snapshot` by [`older_than`]); when none was,
    /// its events are below every reader's horizon from its commit on, since no transaction can
    /// take an older id later.
    older: Vec<u64>,
    /// The committing transaction.
    xid: u64,
    /// The last position it wrote.
    last: u64,
}

/// The transactions older than `xid` that a snapshot (`pg_snapshot` as text,
/// `xmin:xmax:xip,...`, as the append functions return it in `o_snapshot`) counts as running:
/// those it lists below `xid`, and every id from its `xmax` (one past the newest transaction
/// that had finished) up to `xid`, which a snapshot counts as running without listing them.
/// Every older transaction not returned had finished when the snapshot was taken (migration 8;
/// migration 7 built the same list on the server). An append that took `xid` always returns
/// its snapshot: none is an error.
fn older_than(snapshot: Option<&str>, xid: u64) -> Result<Vec<u64>> {
    let Some(snapshot) = snapshot else {
        return Err(StoreError::engine_message(
            "postgres returned a transaction id without its snapshot",
        ));
    };
    let bad =
        || StoreError::engine_message(format!("postgres returned a bad snapshot {snapshot:?}"));
    let mut parts = snapshot.split(':');
    let (Some(xmin), Some(xmax), Some(xip), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (_xmin, xmax): (u64, u64) = match (xmin.parse(), xmax.parse()) {
        (Ok(xmin), Ok(xmax)) => (xmin, xmax),
        _ => return Err(bad()),
    };
    let mut older = Vec::new();
    for x in xip.split(',').filter(|x| !x.is_empty()) {
        let x: u64 = x.parse().map_err(|_| bad())?;
        if x < xid {
            older.push(x);
        }
    }
    older.extend(xmax..xid);
    Ok(older)
}

/// Answers the appends of one commit once its events are readable (or the visibility timeout
/// passed): at once when every older transaction had finished (the usual case: none was
/// running, or only this process's own commits, which ended before), otherwise in a task of its
/// own that waits for them (see [`wait_visible`]), so that the committer goes on with the next
/// batch.
fn answer_when_visible(
    shared: &Arc<Shared>,
    visible: Visible,
    answers: Vec<(oneshot::Sender<Result<AppendResult>>, Result<AppendResult>)>,
) {
    let Visible { older, xid, last } = visible;
    if shared.finished.all(&older) {
        // Readable from now on: answered at once, without a task of its own.
        shared.bump_head(last);
        for (reply, result) in answers {
            let _ = reply.send(result);
        }
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = wait_visible(&shared, xid, Some(&older), last).await {
            tracing::warn!(error = %e, position = last, "could not wait for appends to be readable");
        }
        for (reply, result) in answers {
            let _ = reply.send(result);
        }
    });
}

/// [`append_one`], answered through `reply` (once readable).
async fn append_and_answer(shared: &Arc<Shared>, p: Pending) {
    let span = crate::store::spans::commit("postgres", 1);
    let events = p.events.len();
    let outcome = append_one(shared, p.stream, p.expected, p.events)
        .instrument(span.clone())
        .await;
    if outcome.is_ok() {
        span.record("appends", 1);
        span.record("events", events);
    }
    match outcome {
        Ok((result, visible)) => answer_when_visible(shared, visible, vec![(p.reply, Ok(result))]),
        Err(e) => {
            let _ = p.reply.send(Err(e));
        }
    }
}

/// The version of `stream` counting every committed event (not only those below the horizon).
async fn committed_version(shared: &Shared, stream: &str) -> Result<u64> {
    let client = shared.client().await?;
    let row = one(&client, &shared.sql.committed_version, &[&stream]).await?;
    unsigned(row.get(0), "stream version")
}

/// See [`EventStore::read_stream`](crate::store::EventStore::read_stream).
pub async fn read_stream(
    shared: &Shared,
    stream: &str,
    from_version: u64,
    max_count: usize,
) -> Result<Vec<RecordedEvent>> {
    if max_count == 0 {
        return Ok(Vec::new());
    }
    let client = shared.client().await?;
    let rows = rows(
        &client,
        &shared.sql.read_stream,
        &[&stream, &big(from_version), &limit(max_count)],
    )
    .await?;
    let mut page = PageBuilder::with_capacity(rows.len());
    for row in &rows {
        push_row(row, 0, &mut page)?;
    }
    let events = page.finish();
    // Every row returned is below the horizon, so is every position before it.
    if let Some(highest) = events.iter().map(|e| e.position).max() {
        shared.bump_head(highest);
    }
    Ok(events)
}

/// See [`EventStore::stream_version`](crate::store::EventStore::stream_version).
pub async fn stream_version(shared: &Shared, stream: &str) -> Result<u64> {
    let client = shared.client().await?;
    let row = one(&client, &shared.sql.stream_version, &[&stream]).await?;
    shared.bump_head(unsigned(row.get(1), "position")?);
    unsigned(row.get(0), "stream version")
}

/// See [`EventStore::read_all`](crate::store::EventStore::read_all).
pub async fn read_all(
    shared: &Shared,
    from_position: u64,
    max_count: usize,
    filter: &Filter,
) -> Result<ReadBatch> {
    let from = from_position.max(1);
    let client = shared.client().await?;
    // A filtered read examines a bounded window of positions, so that a filter matching
    // nothing still returns (empty, with progress) in bounded time.
    let window = shared.config.scan_window.max(max_count as u64);
    let upper = if filter.is_all() {
        u64::MAX
    } else {
        from.saturating_add(window - 1)
    };
    let sql = &shared.sql;
    let (from_arg, limit_arg, upper_arg) = (big(from), limit(max_count), big(upper));
    let (statement, params): (&str, Params) = match (&filter.categories, &filter.event_types) {
        (None, None) => (&sql.read_all, &[&from_arg, &limit_arg, &upper_arg]),
        (Some(categories), None) => (
            &sql.read_all_categories,
            &[&from_arg, &limit_arg, &upper_arg, categories],
        ),
        (None, Some(types)) => (
            &sql.read_all_types,
            &[&from_arg, &limit_arg, &upper_arg, types],
        ),
        (Some(categories), Some(types)) => (
            &sql.read_all_both,
            &[&from_arg, &limit_arg, &upper_arg, categories, types],
        ),
    };
    let rows = rows(&client, statement, params).await?;
    let mut head = 0;
    let mut page = PageBuilder::with_capacity(rows.len());
    for row in &rows {
        head = unsigned(row.get(0), "durable head")?;
        if row.get::<_, Option<i64>>(1).is_some() {
            push_row(row, 1, &mut page)?;
        }
    }
    shared.bump_head(head);
    let full = page.is_full(max_count);
    let events = page.finish();
    let next_position = match events.last() {
        Some(last) if max_count > 0 && full => last.position + 1,
        _ if max_count == 0 => from,
        // Fewer matches than asked: everything up to the window's end (or the head) was seen.
        _ => from.max(upper.min(head).saturating_add(1)),
    };
    Ok(ReadBatch {
        events,
        next_position,
        head,
    })
}

/// See [`EventStore::save_checkpoint`](crate::store::EventStore::save_checkpoint).
pub async fn save_checkpoint(shared: &Shared, name: &str, position: u64) -> Result<()> {
    let client = shared.client().await?;
    check_checkpoint(shared, &client, name, position).await?;
    let position = checkpoint_bits(position);
    execute(
        &client,
        &shared.sql.save_checkpoint,
        &[&name, &position, &now_micros()],
    )
    .await?;
    Ok(())
}

/// Refuses a checkpoint past the durable head, as every store does (conformance
/// `a_checkpoint_past_the_head_is_refused`). The head this process knows is enough for the
/// usual checkpoint (at most what it has read); above it, the head is read from the server.
async fn check_checkpoint(
    shared: &Shared,
    client: &tokio_postgres::Client,
    name: &str,
    position: u64,
) -> Result<()> {
    let known = shared.head.upgrade().map_or(0, |h| *h.borrow());
    if position <= known {
        return Ok(());
    }
    let head = read_head(client, &shared.sql).await?;
    shared.bump_head(head);
    if position > head {
        return Err(StoreError::InvalidInput(format!(
            "checkpoint {position} of {name:?} is past the head {head}: a checkpoint is a \
             position that its consumer has processed"
        )));
    }
    Ok(())
}

/// See [`EventStore::load_checkpoint`](crate::store::EventStore::load_checkpoint).
pub async fn load_checkpoint(shared: &Shared, name: &str) -> Result<Option<u64>> {
    let client = shared.client().await?;
    load_checkpoint_on(&client, &shared.sql, name).await
}

async fn load_checkpoint_on(
    client: &tokio_postgres::Client,
    sql: &Sql,
    name: &str,
) -> Result<Option<u64>> {
    let row = client
        .query_opt(&sql.load_checkpoint, &[&name])
        .await
        .map_err(pg_error)?;
    Ok(row.map(|r| checkpoint_value(r.get(0))))
}

/// See [`EventStore::commit_checkpoint`](crate::store::EventStore::commit_checkpoint): one
/// transaction that moves the checkpoint if it is still `expected` and writes the state.
pub async fn commit_checkpoint(
    shared: &Shared,
    name: &str,
    expected: Option<u64>,
    position: u64,
    state: Vec<StateWrite>,
    fence: Option<&Lease>,
) -> Result<()> {
    let position = checkpoint_bits(position);
    // The last write of each key wins, as if they were applied in order.
    let mut last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for w in state {
        last.insert(w.key, w.value);
    }
    let (mut put_keys, mut put_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in last {
        match value {
            Some(value) => {
                put_keys.push(key);
                put_values.push(value);
            }
            None => deletes.push(key),
        }
    }
    let mut client = shared.client().await?;
    // A commit that leaves the checkpoint where it is may record state above the head.
    if expected.map(checkpoint_bits) != Some(position) {
        check_checkpoint(shared, &client, name, checkpoint_value(position)).await?;
    }
    let sql = &shared.sql;
    let tx = client.transaction().await.map_err(pg_error)?;
    if let Some(lease) = fence {
        super::lease::fence(&tx, shared, lease).await?;
    }
    let now = now_micros();
    let moved = match expected {
        None => execute(&tx, &sql.insert_checkpoint, &[&name, &position, &now]).await?,
        Some(expected) => {
            let expected = checkpoint_bits(expected);
            let params: Params = &[&name, &position, &now, &expected];
            execute(&tx, &sql.update_checkpoint, params).await?
        }
    };
    if moved != 1 {
        tx.rollback().await.map_err(pg_error)?;
        let actual = load_checkpoint_on(&client, sql, name).await?;
        return Err(StoreError::CheckpointConflict {
            name: name.to_owned(),
            expected,
            actual,
        });
    }
    if !put_keys.is_empty() {
        execute(&tx, &sql.put_state, &[&name, &put_keys, &put_values]).await?;
    }
    if !deletes.is_empty() {
        execute(&tx, &sql.delete_state, &[&name, &deletes]).await?;
    }
    tx.commit().await.map_err(pg_error)
}

/// See [`EventStore::load_state`](crate::store::EventStore::load_state).
pub async fn load_state(shared: &Shared, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let client = shared.client().await?;
    let row = maybe(&client, &shared.sql.load_state, &[&name, &key]).await?;
    Ok(row.map(|r| r.get(0)))
}

/// The smallest byte string greater than every string that starts with `prefix`, if any.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// See [`EventStore::scan_state`](crate::store::EventStore::scan_state).
pub async fn scan_state(
    shared: &Shared,
    name: &str,
    prefix: &[u8],
    from_key: &[u8],
    max_count: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if max_count == 0 {
        return Ok(Vec::new());
    }
    let start = prefix.max(from_key);
    let client = shared.client().await?;
    let sql = &shared.sql;
    let max = limit(max_count);
    let rows = match prefix_end(prefix) {
        Some(end) => {
            rows(
                &client,
                &sql.scan_state_bounded,
                &[&name, &start, &max, &end],
            )
            .await?
        }
        None => rows(&client, &sql.scan_state_open, &[&name, &start, &max]).await?,
    };
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// See [`EventStore::save_snapshot`](crate::store::EventStore::save_snapshot).
pub async fn save_snapshot(shared: &Shared, stream: &str, snapshot: Snapshot) -> Result<()> {
    let version = storable(snapshot.stream_version, "snapshot version")?;
    let schema_version = i32::try_from(snapshot.schema_version).map_err(|_| {
        StoreError::InvalidInput(format!(
            "snapshot schema version {} is too large",
            snapshot.schema_version
        ))
    })?;
    let client = shared.client().await?;
    let params: Params = &[&stream, &version, &schema_version, &snapshot.payload];
    execute(&client, &shared.sql.save_snapshot, params).await?;
    Ok(())
}

/// See [`EventStore::load_snapshot`](crate::store::EventStore::load_snapshot).
pub async fn load_snapshot(shared: &Shared, stream: &str) -> Result<Option<Snapshot>> {
    let client = shared.client().await?;
    let Some(row) = maybe(&client, &shared.sql.load_snapshot, &[&stream]).await? else {
        return Ok(None);
    };
    let what = format!("snapshot of {stream:?}");
    let schema_version: i32 = row.get(1);
    Ok(Some(Snapshot {
        stream_version: unsigned(row.get(0), &what)?,
        schema_version: u32::try_from(schema_version).map_err(|_| StoreError::DamagedMetadata {
            what: what.clone(),
            reason: format!("negative schema version {schema_version}"),
        })?,
        payload: row.get(2),
    }))
}

/// How many problems of one kind `verify` lists at most.
const PROBLEMS_PER_CHECK: i64 = 100;

/// See [`EventStore::verify`](crate::store::EventStore::verify): checks, below the read horizon,
/// that every stream's versions run 1, 2, 3... in position order, that each event's category is
/// its stream id's, and that position order is transaction order.
pub async fn verify(shared: &Shared) -> Result<VerifyReport> {
    let s = &shared.sql.s;
    let mut client = shared.client().await?;
    // One snapshot for every check, read-only.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)?;
    let horizon_row = tx
        .query_one(
            &format!(
                "SELECT {HORIZON}::text, count(*), coalesce(max(position), 0) \
                 FROM {s}.events WHERE xid < {HORIZON}"
            ),
            &[],
        )
        .await
        .map_err(pg_error)?;
    let count: i64 = horizon_row.get(1);
    let head = unsigned(horizon_row.get(2), "durable head")?;
    let mut report = VerifyReport {
        events_checked: unsigned(count, "event count")?,
        index_entries_checked: 0,
        head,
        problems: Vec::new(),
    };
    let visible = format!("(SELECT * FROM {s}.events WHERE xid < {HORIZON})");
    let checks: [(&str, String); 3] = [
        (
            "stream versions",
            format!(
                "SELECT format('stream %L: event at position %s has version %s, expected %s', \
                        stream_id, position, stream_version, expected) \
                 FROM (SELECT stream_id, position, stream_version, \
                              row_number() OVER (PARTITION BY stream_id ORDER BY position) \
                                  AS expected \
                       FROM {visible} v) t \
                 WHERE stream_version <> expected ORDER BY position LIMIT {PROBLEMS_PER_CHECK}"
            ),
        ),
        (
            "categories",
            format!(
                "SELECT format('position %s: category %L is not the category of stream %L', \
                        position, category, stream_id) \
                 FROM {visible} v WHERE category <> split_part(stream_id, '-', 1) \
                 ORDER BY position LIMIT {PROBLEMS_PER_CHECK}"
            ),
        ),
        (
            "transaction order",
            format!(
                "SELECT format('position %s was written by transaction %s, after the \
                        transaction %s of position %s', position, xid, prev_xid, prev_position) \
                 FROM (SELECT position, xid, lag(xid) OVER w AS prev_xid, \
                              lag(position) OVER w AS prev_position \
                       FROM {visible} v WINDOW w AS (ORDER BY position)) t \
                 WHERE xid < prev_xid ORDER BY position LIMIT {PROBLEMS_PER_CHECK}"
            ),
        ),
    ];
    for (what, query) in &checks {
        let rows = tx.query(query.as_str(), &[]).await.map_err(|e| {
            let e = pg_error(e);
            tracing::debug!(check = what, error = %e, "verify check failed");
            e
        })?;
        report
            .problems
            .extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    // Every event took part in the per-stream check.
    report.index_entries_checked = report.events_checked;
    tx.commit().await.map_err(pg_error)?;
    shared.bump_head(head);
    Ok(report)
}

/// See [`EventStore::list_streams`](crate::store::EventStore::list_streams): streams in
/// byte order of their ids.
pub async fn list_streams(shared: &Shared, after: &str, max: usize) -> Result<Vec<StreamInfo>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let client = shared.client().await?;
    let rows = rows(&client, &shared.sql.list_streams, &[&after, &limit(max)]).await?;
    rows.iter()
        .map(|r| {
            let stream_id: String = r.get(0);
            Ok(StreamInfo {
                category: crate::store::category_of(&stream_id).to_owned(),
                version: unsigned(r.get(1), "stream version")?,
                last_position: unsigned(r.get(2), "position")?,
                stream_id,
            })
        })
        .collect()
}

/// See [`EventStore::list_checkpoints`](crate::store::EventStore::list_checkpoints).
pub async fn list_checkpoints(
    shared: &Shared,
    after: &str,
    max: usize,
) -> Result<Vec<CheckpointInfo>> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let client = shared.client().await?;
    let rows = rows(
        &client,
        &shared.sql.list_checkpoints,
        &[&after, &limit(max)],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| CheckpointInfo {
            name: r.get(0),
            position: checkpoint_value(r.get(1)),
        })
        .collect())
}

/// See [`EventStore::import`](crate::store::EventStore::import): one transaction that holds the
/// locks of every stream it writes and the positions lock (so no append interleaves), checks
/// that the events continue the log exactly, and inserts them.
pub async fn import(shared: &Shared, events: Vec<RecordedEvent>) -> Result<u64> {
    let s = &shared.sql.s;
    let keys = &shared.keys;
    let first = &events[0];
    storable(first.position, "import position")?;
    let last_position = first.position + events.len() as u64 - 1;
    storable(last_position, "import position")?;
    let streams: Vec<String> = events
        .iter()
        .map(|e| e.stream_id.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut client = shared.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    // Stream locks first, in one order, then the positions lock: appends take one stream lock
    // and then the positions lock, so no cycle can form.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, h) FROM \
         (SELECT DISTINCT hashtext(id) AS h FROM unnest($2::text[]) AS t(id) ORDER BY h) locks",
        &[&keys.stream_class, &streams],
    )
    .await
    .map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&keys.positions])
        .await
        .map_err(pg_error)?;
    let row = tx
        .query_one(
            &format!(
                "SELECT pg_current_xact_id()::text, \
                        (SELECT CASE WHEN is_called THEN last_value ELSE 0 END \
                         FROM {s}.positions), \
                        (SELECT timestamp_micros FROM {s}.events ORDER BY position DESC LIMIT 1)"
            ),
            &[],
        )
        .await
        .map_err(pg_error)?;
    let xid = parse_xid(row.get(0))?;
    let taken = unsigned(row.get(1), "position sequence")?;
    let last_timestamp: Option<i64> = row.get(2);
    let reject = |position: u64, reason: String| StoreError::ImportRejected { position, reason };
    if first.position != taken + 1 {
        return Err(reject(
            first.position,
            format!("expected position {} (the log's next)", taken + 1),
        ));
    }
    if let Some(ts) = last_timestamp {
        if (first.timestamp_micros as i128) < i128::from(ts) {
            return Err(reject(
                first.position,
                format!(
                    "timestamp {} is before the store's last event's {ts}",
                    first.timestamp_micros
                ),
            ));
        }
    }
    let rows = tx
        .query(
            &format!(
                "SELECT stream_id, max(stream_version) FROM {s}.events \
                 WHERE stream_id = ANY($1) GROUP BY stream_id"
            ),
            &[&streams],
        )
        .await
        .map_err(pg_error)?;
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for r in &rows {
        versions.insert(r.get(0), unsigned(r.get(1), "stream version")?);
    }
    for e in &events {
        let current = versions.entry(e.stream_id.to_string()).or_insert(0);
        if e.stream_version != *current + 1 {
            return Err(reject(
                e.position,
                format!(
                    "stream {:?} is at version {current}, so its next event is version {}, \
                     not {}",
                    e.stream_id,
                    *current + 1,
                    e.stream_version
                ),
            ));
        }
        *current += 1;
    }
    let n = events.len();
    let mut columns = ImportColumns::with_capacity(n);
    for e in events {
        columns.push(e)?;
    }
    tx.execute(
        &format!(
            "INSERT INTO {s}.events (position, xid, stream_id, stream_version, category, \
                 event_type, schema_version, event_id, correlation_id, causation_id, \
                 timestamp_micros, payload, metadata) \
             SELECT p, pg_current_xact_id(), sid, v, c, t, sv, id, cor, cau, ts, pl, md::jsonb \
             FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
                         $6::int[], $7::uuid[], $8::uuid[], $9::uuid[], $10::bigint[], \
                         $11::bytea[], $12::text[]) \
                  AS t(p, sid, v, c, t, sv, id, cor, cau, ts, pl, md)"
        ),
        &[
            &columns.positions,
            &columns.streams,
            &columns.versions,
            &columns.categories,
            &columns.types,
            &columns.schema_versions,
            &columns.ids,
            &columns.correlations,
            &columns.causations,
            &columns.timestamps,
            &columns.payloads,
            &columns.metadata,
        ],
    )
    .await
    .map_err(pg_error)?;
    let last = big(last_position);
    tx.execute(&format!("SELECT setval('{s}.positions', $1)"), &[&last])
        .await
        .map_err(pg_error)?;
    // Appends after the import take timestamps from the clock: at least the import's newest.
    let newest = columns.timestamps.last().copied().unwrap_or(0);
    tx.execute(
        &format!("SELECT setval('{s}.clock', greatest(last_value, $1)) FROM {s}.clock"),
        &[&newest],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    shared.announce(last_position);
    drop(client);
    wait_visible(shared, xid, None, last_position).await?;
    Ok(last_position)
}

/// The events of an import as one array per column.
struct ImportColumns {
    positions: Vec<i64>,
    streams: Vec<String>,
    versions: Vec<i64>,
    categories: Vec<String>,
    types: Vec<String>,
    schema_versions: Vec<i32>,
    ids: Vec<Uuid>,
    correlations: Vec<Option<Uuid>>,
    causations: Vec<Option<Uuid>>,
    timestamps: Vec<i64>,
    payloads: Vec<Vec<u8>>,
    metadata: Vec<Option<String>>,
}

impl ImportColumns {
    fn with_capacity(n: usize) -> Self {
        ImportColumns {
            positions: Vec::with_capacity(n),
            streams: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            categories: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            correlations: Vec::with_capacity(n),
            causations: Vec::with_capacity(n),
            timestamps: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, e: RecordedEvent) -> Result<()> {
        let too_large = |what: &str| StoreError::ImportRejected {
            position: e.position,
            reason: format!("{what} is too large for the store"),
        };
        self.positions.push(big(e.position));
        self.versions
            .push(storable(e.stream_version, "stream version")?);
        self.schema_versions
            .push(i32::try_from(e.schema_version).map_err(|_| too_large("schema version"))?);
        self.timestamps
            .push(i64::try_from(e.timestamp_micros).map_err(|_| too_large("timestamp"))?);
        self.streams.push(e.stream_id.into());
        self.categories.push(e.category.into());
        self.types.push(e.event_type.into());
        self.ids.push(e.event_id);
        self.correlations.push(e.correlation_id);
        self.causations.push(e.causation_id);
        self.payloads.push(e.payload.into());
        self.metadata.push(metadata_json(&e.metadata));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{older_than, prefix_end};

    #[test]
    fn older_than_lists_the_running_transactions_below_the_id_and_those_from_xmax_up_to_it() {
        // Taken after the id: nothing older running, or what the snapshot lists below it.
        assert_eq!(
            older_than(Some("100:100:"), 100).unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(
            older_than(Some("100:101:100"), 100).unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(
            older_than(Some("90:105:90,97,100,103"), 100).unwrap(),
            vec![90, 97]
        );
        // Taken before the id: every id from xmax on counts as running.
        assert_eq!(older_than(Some("95:98:95"), 100).unwrap(), vec![95, 98, 99]);
        for bad in ["", "1:2", "1:2:3:4", "x:2:", "1:y:", "1:2:3,z"] {
            assert!(
                older_than(Some(bad), 10).is_err(),
                "{bad:?} must be refused"
            );
        }
        assert!(
            older_than(None, 10).is_err(),
            "a missing snapshot must be refused"
        );
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
