//! The append paths under test: tidings' store and the baselines, driven the same way.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tempfile::TempDir;
use tidings::store::{EventStore, ExpectedVersion, PostgresConfig, SledEventStore};

use crate::baseline::postgres::{BareInsert, Schema, Server};
use crate::baseline::{self, Append, GroupWriter};
use crate::data::{self, Payloads};

/// Which store an append workload writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// tidings' sled event store.
    Tidings,
    /// SQLite, WAL, synchronous=FULL, same group commit.
    Sqlite,
    /// raw sled, the same keys, same group commit.
    RawSled,
    /// one file, write + fdatasync per group.
    RawFile,
    /// one file pre-allocated in 64 MiB steps, `pwrite` at the tail + fdatasync per group: the
    /// physical limit of one write and one device wait per group (a growing file also pays for
    /// its size metadata on each fdatasync).
    PresizedFile,
    /// tidings' PostgreSQL event store.
    Postgres,
    /// bare `INSERT`s on the same server, one transaction per append.
    PgInsert,
}

impl Engine {
    /// The engines that store in a local directory, tidings first.
    pub const EMBEDDED: [Engine; 4] = [
        Engine::Tidings,
        Engine::Sqlite,
        Engine::RawSled,
        Engine::RawFile,
    ];

    /// The engines of W1 on a local disk, tidings first: [`EMBEDDED`](Self::EMBEDDED) and the
    /// pre-sized file limit.
    pub const W1_EMBEDDED: [Engine; 5] = [
        Engine::Tidings,
        Engine::Sqlite,
        Engine::RawSled,
        Engine::RawFile,
        Engine::PresizedFile,
    ];

    /// The engines on a PostgreSQL server, tidings first.
    pub const POSTGRES: [Engine; 2] = [Engine::Postgres, Engine::PgInsert];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Tidings => "tidings",
            Engine::Sqlite => "SQLite WAL FULL",
            Engine::RawSled => "raw sled",
            Engine::RawFile => "raw file+fdatasync",
            Engine::PresizedFile => "pre-sized file limit",
            Engine::Postgres => "tidings PostgreSQL",
            Engine::PgInsert => "PG bare INSERT",
        }
    }

    /// Parses the [short form](Engine::arg) of an embedded engine (used by the child process of
    /// W6).
    pub fn from_arg(s: &str) -> Option<Engine> {
        match s {
            "tidings" => Some(Engine::Tidings),
            "sqlite" => Some(Engine::Sqlite),
            "sled" => Some(Engine::RawSled),
            "file" => Some(Engine::RawFile),
            "presized" => Some(Engine::PresizedFile),
            _ => None,
        }
    }

    /// The short form.
    pub fn arg(self) -> &'static str {
        match self {
            Engine::Tidings => "tidings",
            Engine::Sqlite => "sqlite",
            Engine::RawSled => "sled",
            Engine::RawFile => "file",
            Engine::PresizedFile => "presized",
            Engine::Postgres => "postgres",
            Engine::PgInsert => "pg-insert",
        }
    }

    /// Opens a fresh store of this engine: an embedded one in a new temporary directory, a
    /// PostgreSQL one in a new schema of `server`, with `connections` connections.
    pub fn open_fresh(
        self,
        s: &crate::Settings,
        server: Option<&Server>,
        connections: usize,
    ) -> Result<Fresh, String> {
        let Some(server) = server.filter(|_| Engine::POSTGRES.contains(&self)) else {
            let dir = s.tempdir()?;
            let sink = Sink::open(self, dir.path())?;
            return Ok(Fresh {
                sink,
                _dir: Some(dir),
                _schema: None,
            });
        };
        let schema = server.schema();
        let sink = match self {
            Engine::Postgres => Sink::Store(Arc::new(
                PostgresConfig::new(server.url.clone())
                    .schema(schema.name.clone())
                    .pool_size(connections)
                    .open_blocking()
                    .map_err(|e| e.to_string())?,
            )),
            _ => Sink::Bare(Arc::new(BareInsert::create(server, &schema, connections)?)),
        };
        Ok(Fresh {
            sink,
            _dir: None,
            _schema: Some(schema),
        })
    }
}

/// A fresh store, open for appends, and where it lives: a temporary directory or a schema of
/// its own on the server, removed after the store is closed (fields drop in order).
pub struct Fresh {
    /// The store.
    pub sink: Sink,
    _dir: Option<TempDir>,
    _schema: Option<Schema>,
}

impl Fresh {
    /// Closes the store, then removes its directory or schema.
    pub fn close(self) {
        self.sink.close();
    }
}

/// An open store of one engine, ready for appends.
#[derive(Clone)]
pub enum Sink {
    /// One of tidings' stores.
    Store(Arc<dyn EventStore>),
    /// A baseline behind its group writer.
    Group(Arc<GroupWriter>),
    /// The bare PostgreSQL baseline.
    Bare(Arc<BareInsert>),
}

impl Sink {
    /// Opens a fresh store of the embedded `engine` in `dir`.
    pub fn open(engine: Engine, dir: &Path) -> Result<Sink, String> {
        Ok(match engine {
            Engine::Tidings => Sink::Store(Arc::new(
                SledEventStore::open(dir).map_err(|e| e.to_string())?,
            )),
            Engine::Sqlite => {
                let conn = baseline::sqlite::open(dir).map_err(|e| e.to_string())?;
                let w = baseline::sqlite::SqliteWriter::new(conn).map_err(|e| e.to_string())?;
                Sink::Group(Arc::new(GroupWriter::start(w)))
            }
            Engine::RawSled => {
                let db = baseline::sled::open(dir).map_err(|e| e.to_string())?;
                let w = baseline::sled::SledWriter::new(db, dir).map_err(|e| e.to_string())?;
                Sink::Group(Arc::new(GroupWriter::start(w)))
            }
            Engine::RawFile => Sink::Group(Arc::new(GroupWriter::start(
                baseline::file::FileWriter::create(dir).map_err(|e| e.to_string())?,
            ))),
            Engine::PresizedFile => Sink::Group(Arc::new(GroupWriter::start(
                baseline::file::FileWriter::create_presized(dir).map_err(|e| e.to_string())?,
            ))),
            Engine::Postgres | Engine::PgInsert => {
                return Err(format!("{} needs a server, not a directory", engine.name()))
            }
        })
    }

    /// Appends the `k`-th append of the workload (events get types from `3k + i`).
    pub async fn append_planned(
        &self,
        payloads: &Payloads,
        k: u64,
        streams: u64,
    ) -> Result<usize, String> {
        let p = data::plan(k, streams);
        let stream = data::stream_name(p.stream);
        match self {
            Sink::Store(store) => {
                store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        data::event_data(payloads, 3 * k, p.events),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Sink::Group(w) => {
                w.append(Append {
                    stream,
                    expected: None,
                    events: data::raw_events(payloads, 3 * k, p.events),
                })
                .await?;
            }
            Sink::Bare(b) => {
                b.append(&stream, data::raw_events(payloads, 3 * k, p.events))
                    .await?;
            }
        }
        Ok(p.events)
    }

    /// Closes the store (waits for its writer).
    pub fn close(self) {
        match self {
            Sink::Store(store) => {
                // The last clone closes the store (its writer thread stops, files are released;
                // a PostgreSQL store's connections close).
                drop(store);
            }
            Sink::Group(w) => {
                if let Ok(w) = Arc::try_unwrap(w) {
                    w.close();
                }
            }
            Sink::Bare(b) => {
                if let Ok(b) = Arc::try_unwrap(b) {
                    b.close();
                }
            }
        }
    }
}

/// What one append run measured.
pub struct Run {
    /// Events written.
    pub events: u64,
    /// Appends made.
    pub appends: u64,
    /// Seconds from the first append to the last acknowledgement.
    pub seconds: f64,
    /// Latency of each append in µs (when asked for).
    pub latencies: Vec<f64>,
}

impl Run {
    /// Events per second.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

/// Appends about `events` events from `writers` concurrent tasks (each writes `events/writers`
/// events, appends of 1–3 events over [`data::STREAMS`] streams).
pub async fn drive(
    sink: &Sink,
    payloads: Arc<Payloads>,
    writers: u64,
    events: u64,
    latencies: bool,
) -> Result<Run, String> {
    let per_writer = (events / writers).max(1);
    let start = Instant::now();
    let mut tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (sink, payloads) = (sink.clone(), payloads.clone());
            tokio::spawn(async move {
                let (mut written, mut appends, mut k) = (0u64, 0u64, w);
                let mut lat = Vec::new();
                while written < per_writer {
                    let t = Instant::now();
                    written += sink.append_planned(&payloads, k, data::STREAMS).await? as u64;
                    if latencies {
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    appends += 1;
                    k += writers;
                }
                Ok::<_, String>((written, appends, lat))
            })
        })
        .collect();
    let mut run = Run {
        events: 0,
        appends: 0,
        seconds: 0.0,
        latencies: Vec::new(),
    };
    // After a failure the other writers are cancelled and awaited, so that none still holds
    // the store when the caller closes it (and drops its directory or schema).
    let mut failure = None;
    for i in 0..tasks.len() {
        match (&mut tasks[i]).await {
            Ok(Ok((w, a, l))) => {
                run.events += w;
                run.appends += a;
                run.latencies.extend(l);
            }
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) if e.is_cancelled() => {}
            Err(e) => failure = failure.or(Some(e.to_string())),
        }
        if failure.is_some() {
            tasks[i + 1..].iter().for_each(|t| t.abort());
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    run.seconds = start.elapsed().as_secs_f64();
    Ok(run)
}
