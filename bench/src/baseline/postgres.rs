//! PostgreSQL as a user would write an event table by hand: the baselines of the PostgreSQL
//! workloads, on the same server as tidings' `PostgresEventStore`.
//!
//! - [`BareInsert`] (W1): one `INSERT` of an append's rows per transaction (autocommit, one round
//!   trip), `synchronous_commit=on`, from a pool of as many connections as the store gets, into
//!   a table with the store's columns, a primary key and a unique (stream, version) index.
//!   Positions come from an identity column; stream versions from an in-memory cache of stream
//!   heads (as the embedded baselines do), so no read precedes the insert.
//! - [`BareReader`] (W3, W7): plain `SELECT`s of the store's own table (the same rows, pages and
//!   indexes the store reads), decoded into the same [`RecordedEvent`]s.
//!
//! Every run gets schemas of its own ([`Schema`], `bench_<pid>_<n>`), dropped afterwards. Both
//! baselines run their connections on a two-thread runtime of their own, as the store does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tidings::store::{category_of, RecordedEvent};
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement};
use uuid::Uuid;

/// The server used when neither `TIDINGS_BENCH_POSTGRES_URL` nor `TIDINGS_TEST_POSTGRES_URL` is
/// set (the test server's default).
pub const DEFAULT_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// The columns of an event in the store's table, in the order [`event`] reads them.
const COLUMNS: &str = "e.position, e.stream_id, e.stream_version, e.category, e.event_type, \
     e.schema_version, e.event_id, e.correlation_id, e.causation_id, e.timestamp_micros, \
     e.payload";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A driver error with its causes ("error connecting to server: Connection refused ...").
fn pg_err(e: tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// The PostgreSQL server the workloads use.
#[derive(Clone, Debug)]
pub struct Server {
    /// Its URL.
    pub url: String,
}

impl Server {
    /// `TIDINGS_BENCH_POSTGRES_URL`, else `TIDINGS_TEST_POSTGRES_URL`, else [`DEFAULT_URL`].
    pub fn from_env() -> Server {
        let url = ["TIDINGS_BENCH_POSTGRES_URL", "TIDINGS_TEST_POSTGRES_URL"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        Server { url }
    }

    /// Whether the server answers `SELECT 1` within 10 s (the error says why not).
    pub fn reachable(&self) -> Result<(), String> {
        let rt = driver_runtime()?;
        let client = connect(&rt, &self.url)?;
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.simple_query("SELECT 1")).await
        })
        .map_err(|_| "timed out".to_string())?
        .map_err(pg_err)?;
        Ok(())
    }

    /// A fresh schema name of this run, dropped with everything in it when the guard goes.
    pub fn schema(&self) -> Schema {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Schema {
            url: self.url.clone(),
            name: format!(
                "bench_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

/// A schema of one store or baseline (`bench_<pid>_<n>`): nothing creates it here (the store
/// and [`BareInsert`] do); dropping the guard drops it with everything in it.
pub struct Schema {
    url: String,
    /// Its name (a valid unquoted identifier).
    pub name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let server = Server {
            url: self.url.clone(),
        };
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        // A store that failed mid-run may still have requests running on its own runtime: the
        // drop can deadlock with them (PostgreSQL then cancels it), so it is tried again.
        let mut dropped = execute(&server, &sql);
        for _ in 0..5 {
            if dropped.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            dropped = execute(&server, &sql);
        }
        if let Err(e) = dropped {
            eprintln!(
                "warning: could not drop PostgreSQL schema {} ({e}); drop it by hand",
                self.name
            );
        }
    }
}

/// Runs `sql` (one or more statements, no parameters) on a connection of its own.
pub fn execute(server: &Server, sql: &str) -> Result<(), String> {
    let rt = driver_runtime()?;
    let client = connect(&rt, &server.url)?;
    rt.block_on(client.batch_execute(sql)).map_err(pg_err)
}

/// A two-thread runtime that runs connections (as the store runs its own).
fn driver_runtime() -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-postgres")
        .enable_all()
        .build()
        .map_err(err)
}

/// A connection with the store's session settings (`synchronous_commit=on`), its driver on `rt`.
fn connect(rt: &Runtime, url: &str) -> Result<Client, String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(pg_err)?;
    let options = config.get_options().unwrap_or("").to_owned();
    config.options(format!("{options} -c synchronous_commit=on").trim());
    config.application_name("tidings-bench");
    config.connect_timeout(Duration::from_secs(10));
    let (client, connection) = rt.block_on(config.connect(NoTls)).map_err(pg_err)?;
    rt.spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// W1's baseline: appends as bare `INSERT`s, one transaction each, over a pool of connections.
pub struct BareInsert {
    clients: Mutex<Vec<(Client, Statement)>>,
    free: Semaphore,
    heads: Mutex<HashMap<String, u64>>,
    // Dropped last: the connections' drivers.
    runtime: Runtime,
}

impl BareInsert {
    /// Creates the table in `schema` and opens `connections` connections.
    pub fn create(server: &Server, schema: &Schema, connections: usize) -> Result<Self, String> {
        let runtime = driver_runtime()?;
        let s = format!("\"{}\"", schema.name);
        let first = connect(&runtime, &server.url)?;
        runtime
            .block_on(first.batch_execute(&format!(
                "CREATE SCHEMA {s};
                 CREATE TABLE {s}.events (
                     position         bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     xid              xid8    NOT NULL DEFAULT pg_current_xact_id(),
                     stream_id        text    COLLATE \"C\" NOT NULL,
                     stream_version   bigint  NOT NULL,
                     category         text    COLLATE \"C\" NOT NULL,
                     event_type       text    COLLATE \"C\" NOT NULL,
                     schema_version   integer NOT NULL,
                     event_id         uuid    NOT NULL,
                     correlation_id   uuid,
                     causation_id     uuid,
                     timestamp_micros bigint  NOT NULL,
                     payload          bytea   NOT NULL,
                     UNIQUE (stream_id, stream_version)
                 );"
            )))
            .map_err(pg_err)?;
        let insert = format!(
            "INSERT INTO {s}.events (stream_id, stream_version, category, event_type, \
                 schema_version, event_id, correlation_id, causation_id, timestamp_micros, payload) \
             SELECT $1, v, $2, t, sv, id, cor, cau, $3, pl \
             FROM unnest($4::bigint[], $5::text[], $6::int[], $7::uuid[], $8::uuid[], \
                         $9::uuid[], $10::bytea[]) AS u(v, t, sv, id, cor, cau, pl)"
        );
        let mut clients = Vec::with_capacity(connections.max(1));
        let mut next = Some(first);
        for _ in 0..connections.max(1) {
            let client = match next.take() {
                Some(c) => c,
                None => connect(&runtime, &server.url)?,
            };
            let statement = runtime.block_on(client.prepare(&insert)).map_err(pg_err)?;
            clients.push((client, statement));
        }
        Ok(BareInsert {
            free: Semaphore::new(clients.len()),
            clients: Mutex::new(clients),
            heads: Mutex::new(HashMap::new()),
            runtime,
        })
    }

    /// Appends `events` (type, payload) to `stream` in one transaction and waits for its commit;
    /// returns the stream's new version.
    pub async fn append(
        &self,
        stream: &str,
        events: Vec<(&'static str, Vec<u8>)>,
    ) -> Result<u64, String> {
        let n = events.len() as u64;
        let permit = self.free.acquire().await.map_err(err)?;
        let (client, statement) = self
            .clients
            .lock()
            .expect("not poisoned")
            .pop()
            .expect("a permit means a free connection");
        // Versions are reserved in memory, so concurrent appends to one stream never collide.
        let first = {
            let mut heads = self.heads.lock().expect("not poisoned");
            let head = heads.entry(stream.to_owned()).or_insert(0);
            *head += n;
            *head - n + 1
        };
        let versions: Vec<i64> = (0..n).map(|i| (first + i) as i64).collect();
        let (mut types, mut payloads) = (Vec::new(), Vec::new());
        for (t, p) in events {
            types.push(t);
            payloads.push(p);
        }
        let schema_versions = vec![1i32; n as usize];
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        let none: Vec<Option<Uuid>> = vec![None; n as usize];
        let category = category_of(stream);
        let now = now_micros();
        let params: [&(dyn ToSql + Sync); 10] = [
            &stream,
            &category,
            &now,
            &versions,
            &types,
            &schema_versions,
            &ids,
            &none,
            &none,
            &payloads,
        ];
        let done = client.execute(&statement, &params).await;
        self.clients
            .lock()
            .expect("not poisoned")
            .push((client, statement));
        drop(permit);
        done.map_err(pg_err)?;
        Ok(first + n - 1)
    }

    /// Closes the connections.
    pub fn close(self) {
        drop(self.clients);
        self.runtime.shutdown_background();
    }
}

/// The wall clock in microseconds since the Unix epoch.
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// W3's and W7's baseline: plain `SELECT`s of the store's table on one connection.
pub struct BareReader {
    client: Client,
    page: Statement,
    stream: Statement,
    all: Statement,
    // Dropped last: the connection's driver.
    _runtime: Runtime,
}

impl BareReader {
    /// Connects and prepares the statements for the table `schema.events` (the store's).
    pub fn open(server: &Server, schema: &str) -> Result<Self, String> {
        let runtime = driver_runtime()?;
        let client = connect(&runtime, &server.url)?;
        let s = format!("\"{schema}\"");
        let prepare = |sql: String| runtime.block_on(client.prepare(&sql)).map_err(pg_err);
        let page = prepare(format!(
            "SELECT {COLUMNS} FROM {s}.events e WHERE e.position >= $1 \
             ORDER BY e.position LIMIT $2"
        ))?;
        let stream = prepare(format!(
            "SELECT {COLUMNS} FROM {s}.events e WHERE e.stream_id = $1 \
             ORDER BY e.stream_version"
        ))?;
        let all = prepare(format!(
            "SELECT {COLUMNS} FROM {s}.events e ORDER BY e.position"
        ))?;
        Ok(BareReader {
            client,
            page,
            stream,
            all,
            _runtime: runtime,
        })
    }

    /// Up to `max` events from `position` on, in position order (keyset paging).
    pub async fn page(&self, position: u64, max: usize) -> Result<Vec<RecordedEvent>, String> {
        let rows = self
            .client
            .query(&self.page, &[&(position as i64), &(max as i64)])
            .await
            .map_err(pg_err)?;
        rows.iter().map(event).collect()
    }

    /// The full history of `stream`.
    pub async fn stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, String> {
        let rows = self
            .client
            .query(&self.stream, &[&stream])
            .await
            .map_err(pg_err)?;
        rows.iter().map(event).collect()
    }

    /// Reads every event in position order with one statement, rows streamed as they come;
    /// returns how many.
    pub async fn scan(&self) -> Result<u64, String> {
        let none: [&(dyn ToSql + Sync); 0] = [];
        let rows = self
            .client
            .query_raw(&self.all, none)
            .await
            .map_err(pg_err)?;
        let mut rows = std::pin::pin!(rows);
        let mut n = 0u64;
        while let Some(row) = futures_util::TryStreamExt::try_next(&mut rows)
            .await
            .map_err(pg_err)?
        {
            std::hint::black_box(event(&row)?);
            n += 1;
        }
        Ok(n)
    }
}

/// An event from a row of [`COLUMNS`] (what the store's reads build, minus its checks).
fn event(row: &Row) -> Result<RecordedEvent, String> {
    let event_type: String = row.try_get(4).map_err(pg_err)?;
    let payload: Vec<u8> = row.try_get(10).map_err(pg_err)?;
    let mut data = tidings::store::EventData::new(event_type, payload)
        .with_schema_version(row.try_get::<_, i32>(5).map_err(pg_err)? as u32)
        .with_event_id(row.try_get(6).map_err(pg_err)?);
    if let Some(id) = row.try_get(7).map_err(pg_err)? {
        data = data.with_correlation_id(id);
    }
    if let Some(id) = row.try_get(8).map_err(pg_err)? {
        data = data.with_causation_id(id);
    }
    let stream_id: String = row.try_get(1).map_err(pg_err)?;
    let category: String = row.try_get(3).map_err(pg_err)?;
    Ok(RecordedEvent::new(
        row.try_get::<_, i64>(0).map_err(pg_err)? as u64,
        stream_id,
        row.try_get::<_, i64>(2).map_err(pg_err)? as u64,
        data,
    )
    .with_category(category)
    .with_timestamp_micros(row.try_get::<_, i64>(9).map_err(pg_err)? as u64))
}
