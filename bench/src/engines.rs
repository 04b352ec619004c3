//! The append paths under test: tidings' store and the baselines, driven the same way.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tidings::store::{EventStore, ExpectedVersion, SledEventStore};

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
}

impl Engine {
    /// Every engine, tidings first.
    pub const ALL: [Engine; 4] = [
        Engine::Tidings,
        Engine::Sqlite,
        Engine::RawSled,
        Engine::RawFile,
    ];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Tidings => "tidings",
            Engine::Sqlite => "SQLite WAL FULL",
            Engine::RawSled => "raw sled",
            Engine::RawFile => "raw file+fdatasync",
        }
    }

    /// Parses [`name`](Engine::name)'s short form (used by the child process of W6).
    pub fn from_arg(s: &str) -> Option<Engine> {
        match s {
            "tidings" => Some(Engine::Tidings),
            "sqlite" => Some(Engine::Sqlite),
            "sled" => Some(Engine::RawSled),
            "file" => Some(Engine::RawFile),
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
        }
    }
}

/// An open store of one engine, ready for appends.
#[derive(Clone)]
pub enum Sink {
    /// tidings.
    Tidings(Arc<SledEventStore>),
    /// A baseline behind its group writer.
    Group(Arc<GroupWriter>),
}

impl Sink {
    /// Opens a fresh store of `engine` in `dir`.
    pub fn open(engine: Engine, dir: &Path) -> Result<Sink, String> {
        Ok(match engine {
            Engine::Tidings => Sink::Tidings(Arc::new(
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
            Sink::Tidings(store) => {
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
        }
        Ok(p.events)
    }

    /// Closes the store (waits for its writer).
    pub fn close(self) {
        match self {
            Sink::Tidings(store) => {
                // The last clone closes the store (its writer thread stops, files are released).
                drop(store);
            }
            Sink::Group(w) => {
                if let Ok(w) = Arc::try_unwrap(w) {
                    w.close();
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
    let tasks: Vec<_> = (0..writers)
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
    for t in tasks {
        let (w, a, l) = t.await.map_err(|e| e.to_string())??;
        run.events += w;
        run.appends += a;
        run.latencies.extend(l);
    }
    run.seconds = start.elapsed().as_secs_f64();
    Ok(run)
}
