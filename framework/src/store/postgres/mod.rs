//! The event store on PostgreSQL: the same [`EventStore`] as the embedded default, on a server
//! that several processes and machines share (feature `postgres`).
//!
//! See docs/postgres.md for the schema, what is guaranteed and how to operate it. In short:
//!
//! - **Appends** are one call of a PL/pgSQL function per append, committed with PostgreSQL's
//!   own durability (`synchronous_commit` is forced on for the store's connections). The
//!   expected-version check runs under a per-stream transaction lock, and a unique
//!   `(stream_id, stream_version)` constraint backs it.
//! - **Global order.** Positions come from a sequence, taken together with the writing
//!   transaction's id (xid8) under a short lock shared by all writers, so position order is
//!   transaction-id order. A global read returns only rows whose transaction is older than
//!   every transaction still running (`xid < pg_snapshot_xmin(pg_current_snapshot())`), so it
//!   never passes a position whose writer is still open, and a single `u64` checkpoint never
//!   skips an event. Positions are increasing and, unless a writer fails between taking its
//!   positions and committing, gap-free.
//! - **Acknowledged means durable and readable**: an append returns once its transaction is
//!   committed *and* its events are below the read horizon (the durable head, like Kafka's
//!   high-water mark), so a read after an acknowledged append sees it.
//! - **Live delivery**: each append sends a `NOTIFY`; a background task listens and moves the
//!   head. A notification is only a wake-up: the head is always read from the table, and a poll
//!   every [`PostgresConfig::poll_interval`] covers a lost one.
//!
//! ```no_run
//! use tidings::store::{EventData, EventStore, ExpectedVersion, PostgresConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tidings::store::StoreError> {
//! let store = PostgresConfig::new("postgres://app@127.0.0.1/shop")
//!     .schema("tidings")
//!     .open()
//!     .await?;
//! let placed = EventData::new("OrderPlaced", br#"{"total":42}"#.to_vec());
//! store.append("order-1", ExpectedVersion::NoStream, vec![placed]).await?;
//! # Ok(())
//! # }
//! ```

mod errors;
mod finished;
mod keys;
mod lease;
mod ops;
mod schema;
mod tracker;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use tokio_postgres::NoTls;
use tracing::Instrument;

use self::errors::pool_error;
use self::keys::Keys;
pub use self::schema::SCHEMA_VERSION;
use super::spans;
use super::{
    AppendResult, CheckpointInfo, EventData, EventStore, ExpectedVersion, Filter, HeadWatch, Lease,
    LeaseAttempt, LeaseHolder, LeaseInfo, ReadBatch, RecordedEvent, Result, Snapshot, StateWrite,
    StoreError, StreamInfo, VerifyReport,
};

/// How many times a request that may run twice is tried on lost connections.
const IDEMPOTENT_ATTEMPTS: u32 = 3;

/// The schema used when none is named.
pub const DEFAULT_SCHEMA: &str = "tidings";

/// The longest schema name accepted (PostgreSQL's identifiers hold 63 bytes; the notification
/// channel adds a prefix).
pub const MAX_SCHEMA_LEN: usize = 48;

/// Settings of a [`PostgresEventStore`].
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The server to connect to: a URL (`postgres://user@host:port/db`) or libpq key-value
    /// settings (`host=... user=... dbname=...`).
    pub url: String,
    /// The schema that holds the store's tables (created if missing). Default `tidings`.
    pub schema: String,
    /// The most connections the store opens for requests (one more listens for
    /// notifications). Default 16.
    pub pool_size: usize,
    /// How often the durable head is read from the table when no notification comes (a lost
    /// notification, or a transaction outside tidings holding the read horizon back).
    /// Default 500 ms.
    pub poll_interval: Duration,
    /// The longest an append waits, after its commit, for its events to come below the read
    /// horizon (which a long transaction anywhere on the server holds back) before it returns
    /// anyway. Default 30 s.
    pub visibility_timeout: Duration,
    /// How long a request waits for a connection, and a connection attempt for the server.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// How many positions a filtered global read examines at most per call. Default 65 536.
    pub scan_window: u64,
    /// The shortest time between two notifications this process sends; appends meanwhile are
    /// announced together. Another process hears of an append at most this long after its
    /// commit (plus the notification's way). Default 5 ms.
    pub notify_interval: Duration,
    /// How many appends may commit at once (each on a connection of the pool): appends that
    /// arrive while all are busy wait and then commit together, in one transaction (group
    /// commit). Default 2, at most `pool_size`: fewer committers make larger batches (measured
    /// with the benchmark: 2 beat 1, 3, 4, 8 and 16 at 16 writers, and matched 4 at 256).
    pub committers: usize,
    /// The longest a transaction of the store may sit idle on the server (PostgreSQL's
    /// `idle_in_transaction_session_timeout` on the store's connections). A process that is
    /// paused (SIGSTOP, a debugger) inside one of its transactions would otherwise hold the read
    /// horizon back, and with it every reader of the server. Default 10 s; zero turns it off.
    pub idle_transaction_timeout: Duration,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: show only that there is one.
        f.debug_struct("PostgresConfig")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("poll_interval", &self.poll_interval)
            .field("visibility_timeout", &self.visibility_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("scan_window", &self.scan_window)
            .field("committers", &self.committers)
            .field("notify_interval", &self.notify_interval)
            .field("idle_transaction_timeout", &self.idle_transaction_timeout)
            .finish()
    }
}

/// `timeout` as PostgreSQL's milliseconds: zero stays zero (off), anything else is at least 1
/// ms and at most what the setting holds.
fn idle_timeout_millis(timeout: Duration) -> u128 {
    if timeout.is_zero() {
        0
    } else {
        timeout.as_millis().clamp(1, i32::MAX as u128)
    }
}

/// `url` with a password replaced by `***`.
fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((auth, host)) = rest.split_once('@') {
            if let Some((user, _)) = auth.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
        return url.to_owned();
    }
    url.split_whitespace()
        .map(|kv| {
            if kv.starts_with("password=") {
                "password=***"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl PostgresConfig {
    /// The default settings for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 16,
            poll_interval: Duration::from_millis(500),
            visibility_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            scan_window: 65_536,
            committers: 2,
            notify_interval: Duration::from_millis(5),
            idle_transaction_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the schema (1 to [`MAX_SCHEMA_LEN`] of `a-z`, `0-9` and `_`, not starting with a
    /// digit).
    #[must_use]
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the most connections for requests.
    #[must_use]
    pub fn pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// Sets how often the head is polled when no notification comes.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets how long an append waits for its events to become readable after its commit.
    #[must_use]
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// Sets how long to wait for a connection.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how many positions a filtered global read examines at most.
    #[must_use]
    pub fn scan_window(mut self, positions: u64) -> Self {
        self.scan_window = positions.max(1);
        self
    }

    /// Sets the shortest time between two notifications this process sends.
    #[must_use]
    pub fn notify_interval(mut self, interval: Duration) -> Self {
        self.notify_interval = interval;
        self
    }

    /// Sets how many appends may commit at once (at least 1).
    #[must_use]
    pub fn committers(mut self, committers: usize) -> Self {
        self.committers = committers.max(1);
        self
    }

    /// Sets how long a transaction of the store may sit idle on the server.
    #[must_use]
    pub fn idle_transaction_timeout(mut self, timeout: Duration) -> Self {
        self.idle_transaction_timeout = timeout;
        self
    }

    /// Connects, creates or migrates the schema, and starts following the head.
    ///
    /// Fails with [`StoreError::Unavailable`] when the server cannot be reached,
    /// [`StoreError::InvalidInput`] for a bad URL or schema name, and
    /// [`StoreError::UnsupportedFormat`] when a newer build migrated the schema.
    pub async fn open(self) -> Result<PostgresEventStore> {
        PostgresEventStore::open_with(self).await
    }

    /// [`open`](PostgresConfig::open) for code that is not async (it may also be called from
    /// inside an async runtime: the work runs on a thread of its own).
    pub fn open_blocking(self) -> Result<PostgresEventStore> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(StoreError::Io)?
                        .block_on(self.open())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// Checks a schema name as [`PostgresConfig::schema`] requires: 1 to [`MAX_SCHEMA_LEN`] of
/// lower-case ASCII letters, digits and `_`, not starting with a digit. [`StoreError::InvalidInput`]
/// otherwise.
pub fn validate_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_LEN
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "schema name must be 1 to {MAX_SCHEMA_LEN} of a-z, 0-9 and _, not starting with a \
             digit, got {schema:?}"
        )))
    }
}

/// Refuses a name PostgreSQL's `text` cannot hold (a NUL character), which the embedded store
/// accepts: a typed error instead of the server's encoding error.
fn storable_text(what: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(StoreError::InvalidInput(format!(
            "{what} {value:?} contains a NUL character, which PostgreSQL text cannot hold"
        )));
    }
    Ok(())
}

/// `after` cut at its first NUL: no stored name holds one, so the names after `after` are the
/// names after that prefix (NUL sorts first).
fn before_nul(after: &str) -> String {
    after.split('\0').next().unwrap_or("").to_owned()
}

/// A checked schema name as a quoted SQL identifier.
fn quote(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// What every task of a store shares: the pool, the statements, the head.
struct Shared {
    pool: Pool,
    pg: tokio_postgres::Config,
    config: PostgresConfig,
    keys: Keys,
    sql: ops::Sql,
    lease_sql: lease::LeaseSql,
    /// The head, owned by the store's handle ([`Inner`]): when the last handle goes, watchers
    /// see the store closed even while a request or the tracker still runs.
    head: Weak<watch::Sender<u64>>,
    /// The highest position this process committed, for the task that notifies other
    /// processes ([`tracker::announce`]).
    appended: watch::Sender<u64>,
    /// Names this store in the notifications it sends (so that its own listener skips them).
    instance: String,
    /// Appends waiting for a committer ([`ops::committer`]).
    appends: tokio::sync::mpsc::UnboundedSender<ops::Pending>,
    /// Where the committers take them from (one at a time takes a batch).
    queue: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<ops::Pending>>,
    /// The store's metric handles (taken at open).
    metrics: crate::metrics::StoreMetrics,
    /// This process's writes that have finished, for appends that wait for them
    /// ([`finished`]).
    finished: finished::Finished,
}

impl Shared {
    /// Moves the head forward to `position` (never back).
    fn bump_head(&self, position: u64) {
        let Some(head) = self.head.upgrade() else {
            return;
        };
        raise(&head, position);
    }

    /// Tells other processes (through one coalesced `NOTIFY`, sent outside the append's
    /// transaction) that positions up to `position` are committed.
    fn announce(&self, position: u64) {
        raise(&self.appended, position);
    }

    /// A watch on the head (closed from the start if the store is gone).
    fn watch(&self) -> HeadWatch {
        match self.head.upgrade() {
            Some(head) => HeadWatch::new(head.subscribe()),
            None => HeadWatch::new(watch::channel(0).1),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }
}

/// Moves the position `watch` holds forward to `position` (never back), waking its watchers
/// only when it moved.
fn raise(watch: &watch::Sender<u64>, position: u64) {
    watch.send_if_modified(|p| {
        if position > *p {
            *p = position;
            true
        } else {
            false
        }
    });
}

/// The runtime that runs the store's connections, shut down when the last handle goes.
struct Inner {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    head: Arc<watch::Sender<u64>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.pool.close();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An [`EventStore`] on a PostgreSQL server, in one schema.
///
/// Cheap to clone; clones share the connections. The store runs its connections on a small
/// runtime of its own (two threads), so it can be used from any async runtime, actix's
/// single-threaded arbiters included. Several processes may open the same schema at once.
#[derive(Clone)]
pub struct PostgresEventStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for PostgresEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresEventStore")
            .field("config", &self.inner.shared.config)
            .field("head", &*self.inner.head.borrow())
            .finish()
    }
}

impl PostgresEventStore {
    /// Opens the store in the default schema (`tidings`) of the server at `url`.
    pub async fn open(url: &str) -> Result<Self> {
        PostgresConfig::new(url).open().await
    }

    /// Opens the store with `config`.
    pub async fn open_with(config: PostgresConfig) -> Result<Self> {
        validate_schema(&config.schema)?;
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| StoreError::InvalidInput(format!("bad PostgreSQL URL: {e}")))?;
        let options = pg.get_options().unwrap_or("").to_owned();
        // Whatever the server's, database's or role's defaults, the store's connections run as
        // the store needs: acknowledged means durable (commits wait for the WAL flush), read
        // committed, writable, no statement or lock timeout (a cancelled request is retried as
        // transient, so one that always times out would retry forever), and no transaction left
        // idle long enough to hold the read horizon back. Settings sent at connection override
        // those of the role and database.
        pg.options(
            format!(
                "{options} -c synchronous_commit=on \
                 -c default_transaction_isolation=read\\ committed \
                 -c default_transaction_read_only=off \
                 -c statement_timeout=0 -c lock_timeout=0 \
                 -c idle_in_transaction_session_timeout={}",
                idle_timeout_millis(config.idle_transaction_timeout)
            )
            .trim(),
        );
        if pg.get_application_name().is_none() {
            pg.application_name("tidings");
        }
        pg.connect_timeout(config.connect_timeout);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tidings-postgres")
            .enable_all()
            .build()
            .map_err(StoreError::Io)?;
        let keys = Keys::new(&config.schema);
        let sql = ops::Sql::new(&quote(&config.schema));
        let lease_sql = lease::LeaseSql::new(&quote(&config.schema));
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| StoreError::InvalidInput(format!("connection pool: {e}")))?;
        let head = Arc::new(watch::channel(0).0);
        let (appends, queue) = tokio::sync::mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            pool,
            pg,
            config,
            keys,
            sql,
            lease_sql,
            head: Arc::downgrade(&head),
            appended: watch::channel(0).0,
            instance: uuid::Uuid::new_v4().simple().to_string(),
            appends,
            queue: tokio::sync::Mutex::new(queue),
            metrics: crate::metrics::StoreMetrics::new("postgres"),
            finished: finished::Finished::new(),
        });
        let opening = {
            let shared = shared.clone();
            async move {
                let mut client = shared.client().await?;
                schema::migrate(&mut client, &shared.config.schema, &shared.keys).await?;
                let head = ops::read_head(&client, &shared.sql).await?;
                shared.bump_head(head);
                Ok::<_, StoreError>(())
            }
        };
        let opened = match runtime.spawn(opening).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::engine("opening the store", e)),
        };
        if let Err(e) = opened {
            shared.pool.close();
            runtime.shutdown_background();
            return Err(e);
        }
        runtime.spawn(tracker::track(shared.clone()));
        runtime.spawn(tracker::announce(shared.clone()));
        for _ in 0..shared.config.committers.min(shared.config.pool_size).max(1) {
            runtime.spawn(ops::committer(shared.clone()));
        }
        Ok(PostgresEventStore {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                shared,
                head,
            }),
        })
    }

    /// The schema that holds the store.
    pub fn schema(&self) -> &str {
        &self.inner.shared.config.schema
    }

    /// The settings the store was opened with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.shared.config
    }

    /// [`call`](Self::call) for a request that may run twice (a read, an upsert): when the
    /// connection turns out to be lost, it runs again on another one, a few times, before
    /// [`StoreError::Unavailable`] reaches the caller. The pool only notices a connection the
    /// server closed when a request fails on it.
    async fn idempotent<T, F, Fut>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let mut attempt = 1;
        loop {
            match self.call(&work).await {
                Err(e) if e.is_transient() && attempt < IDEMPOTENT_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "request failed on a lost connection; again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Runs `work` on the store's runtime and waits for it.
    async fn call<T, F, Fut>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let runtime = self.inner.runtime.as_ref().ok_or(StoreError::Closed)?;
        match runtime.spawn(work(self.inner.shared.clone())).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult> {
        // The span exists for every append, refused ones included, and records how it ended.
        let span = spans::append("postgres", stream, events.len());
        let checked = super::validate_append(stream, &events)
            .and_then(|()| storable_text("stream id", stream))
            .and_then(|()| {
                events
                    .iter()
                    .try_for_each(|e| storable_text("event type", &e.event_type))
            });
        if let Err(refused) = checked {
            let refused = Err(refused);
            spans::appended(&span, &refused);
            return refused;
        }
        // Not through `call`: an append only queues for a committer (a task of the store's
        // runtime, alive while `self` is) and waits for its answer, so it needs no task of its
        // own there. Two fewer hops between threads per append (the whole cost of one at a time).
        let started = std::time::Instant::now();
        let result = ops::append(&self.inner.shared, stream.to_owned(), expected, events)
            .instrument(span.clone())
            .await;
        spans::appended(&span, &result);
        self.inner
            .shared
            .metrics
            .appended(started.elapsed(), &result);
        result
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        if stream.contains('\0') {
            return Ok(Vec::new()); // no such stream can exist
        }
        let span = spans::read_stream("postgres", stream, from_version);
        let stream = stream.to_owned();
        let events = self
            .idempotent(move |shared| {
                let stream = stream.clone();
                async move { ops::read_stream(&shared, &stream, from_version, max_count).await }
            })
            .instrument(span.clone())
            .await?;
        spans::returned(&span, events.len());
        self.inner.shared.metrics.stream_read(events.len());
        Ok(events)
    }

    async fn stream_version(&self, stream: &str) -> Result<u64> {
        if stream.contains('\0') {
            return Ok(0);
        }
        let stream = stream.to_owned();
        self.idempotent(move |shared| {
            let stream = stream.clone();
            async move { ops::stream_version(&shared, &stream).await }
        })
        .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
        filter: &Filter,
    ) -> Result<ReadBatch> {
        let span = spans::read_all("postgres", from_position);
        let filter = filter.clone();
        let page = self
            .idempotent(move |shared| {
                let filter = filter.clone();
                async move { ops::read_all(&shared, from_position, max_count, &filter).await }
            })
            .instrument(span.clone())
            .await?;
        spans::returned(&span, page.events.len());
        self.inner.shared.metrics.read_all_page();
        Ok(page)
    }

    fn head(&self) -> u64 {
        *self.inner.head.borrow()
    }

    fn watch_head(&self) -> HeadWatch {
        HeadWatch::new(self.inner.head.subscribe())
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        super::validate_name("consumer name", name)?;
        storable_text("consumer name", name)?;
        let name = name.to_owned();
        self.idempotent(move |shared| {
            let name = name.clone();
            async move { ops::save_checkpoint(&shared, &name, position).await }
        })
        .await
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>> {
        if name.contains('\0') {
            return Ok(None);
        }
        let name = name.to_owned();
        self.idempotent(move |shared| {
            let name = name.clone();
            async move { ops::load_checkpoint(&shared, &name).await }
        })
        .await
    }

    async fn commit_checkpoint(
        &self,
        name: &str,
        expected: Option<u64>,
        position: u64,
        state: Vec<StateWrite>,
    ) -> Result<()> {
        super::validate_commit(name, &state)?;
        storable_text("consumer name", name)?;
        let name = name.to_owned();
        self.call(move |shared| async move {
            ops::commit_checkpoint(&shared, &name, expected, position, state, None).await
        })
        .await
    }

    async fn load_state(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if name.contains('\0') {
            return Ok(None);
        }
        let (name, key) = (name.to_owned(), key.to_vec());
        self.idempotent(move |shared| {
            let (name, key) = (name.clone(), key.clone());
            async move { ops::load_state(&shared, &name, &key).await }
        })
        .await
    }

    async fn scan_state(
        &self,
        name: &str,
        prefix: &[u8],
        from_key: &[u8],
        max_count: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if name.contains('\0') {
            return Ok(Vec::new());
        }
        let (name, prefix, from_key) = (name.to_owned(), prefix.to_vec(), from_key.to_vec());
        self.idempotent(move |shared| {
            let (name, prefix, from_key) = (name.clone(), prefix.clone(), from_key.clone());
            async move { ops::scan_state(&shared, &name, &prefix, &from_key, max_count).await }
        })
        .await
    }

    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<()> {
        super::validate_name("stream id", stream)?;
        super::validate_snapshot(&snapshot)?;
        storable_text("stream id", stream)?;
        let stream = stream.to_owned();
        self.idempotent(move |shared| {
            let (stream, snapshot) = (stream.clone(), snapshot.clone());
            async move { ops::save_snapshot(&shared, &stream, snapshot).await }
        })
        .await
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        if stream.contains('\0') {
            return Ok(None);
        }
        let stream = stream.to_owned();
        self.idempotent(move |shared| {
            let stream = stream.clone();
            async move { ops::load_snapshot(&shared, &stream).await }
        })
        .await
    }

    async fn verify(&self) -> Result<VerifyReport> {
        self.idempotent(|shared| async move { ops::verify(&shared).await })
            .await
    }

    async fn list_streams(&self, after: Option<&str>, limit: usize) -> Result<Vec<StreamInfo>> {
        let after = before_nul(after.unwrap_or(""));
        self.idempotent(move |shared| {
            let after = after.clone();
            async move { ops::list_streams(&shared, &after, limit).await }
        })
        .await
    }

    async fn list_checkpoints(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CheckpointInfo>> {
        let after = before_nul(after.unwrap_or(""));
        self.idempotent(move |shared| {
            let after = after.clone();
            async move { ops::list_checkpoints(&shared, &after, limit).await }
        })
        .await
    }

    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        super::validate_import(&events)?;
        for e in &events {
            storable_text("stream id", &e.stream_id)?;
            storable_text("event type", &e.event_type)?;
        }
        self.call(move |shared| async move { ops::import(&shared, events).await })
            .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &LeaseHolder,
        ttl: Duration,
    ) -> Result<LeaseAttempt> {
        super::validate_name("lease name", name)?;
        storable_text("lease name", name)?;
        let (name, holder) = (name.to_owned(), holder.clone());
        self.call(move |shared| async move { lease::acquire(&shared, &name, &holder, ttl).await })
            .await
    }

    async fn renew_lease(&self, held: &Lease, ttl: Duration) -> Result<bool> {
        let held = held.clone();
        self.idempotent(move |shared| {
            let held = held.clone();
            async move { lease::renew(&shared, &held, ttl).await }
        })
        .await
    }

    async fn release_lease(&self, held: &Lease) -> Result<()> {
        let held = held.clone();
        self.idempotent(move |shared| {
            let held = held.clone();
            async move { lease::release(&shared, &held).await }
        })
        .await
    }

    async fn load_lease(&self, name: &str) -> Result<Option<LeaseInfo>> {
        if name.contains('\0') {
            return Ok(None);
        }
        let name = name.to_owned();
        self.idempotent(move |shared| {
            let name = name.clone();
            async move { lease::load(&shared, &name).await }
        })
        .await
    }

    async fn list_leases(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>> {
        if prefix.contains('\0') || limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = prefix.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.idempotent(move |shared| {
            let prefix = prefix.clone();
            async move { lease::list(&shared, &prefix, limit).await }
        })
        .await
    }

    async fn commit_checkpoint_fenced(
        &self,
        held: &Lease,
        name: &str,
        expected: Option<u64>,
        position: u64,
        state: Vec<StateWrite>,
    ) -> Result<()> {
        super::validate_commit(name, &state)?;
        storable_text("consumer name", name)?;
        let (name, held) = (name.to_owned(), held.clone());
        self.call(move |shared| async move {
            ops::commit_checkpoint(&shared, &name, expected, position, state, Some(&held)).await
        })
        .await
    }
}
