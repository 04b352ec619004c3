//! The PostgreSQL workloads: W1, W3 and W7 for tidings' `PostgresEventStore`, each beside bare
//! SQL on the same server in the same run ([`crate::baseline::postgres`]).
//!
//! - W1: the appends of the embedded W1 ([`append_rounds`]), store against bare `INSERT`s, both
//!   with `min(writers, 16)` connections (16 is the store's default `pool_size`).
//! - W7 and W3 read a data set of 1 M events put in the store with `import` (the same appends as
//!   the embedded data set, in order): the store's `read_stream` / `read_all` against plain
//!   `SELECT`s of the store's own table, so both read the same rows, pages and indexes.

use std::time::Instant;

use tidings::store::{EventStore, PostgresConfig, PostgresEventStore, RecordedEvent};

use crate::baseline::postgres::{BareReader, Schema, Server};
use crate::data::{self, Payloads, STREAMS, TYPES};
use crate::engines::Engine;
use crate::report::{median, Better, Row, Target};
use crate::w12::{append_rounds, runtime};
use crate::w37::{read_all_pages, w7_picks};
use crate::Settings;

/// The most connections each side of W1 gets: the store's default `pool_size`.
pub const CONNECTIONS: usize = 16;

/// Events per `import` call when loading the data set.
const IMPORT_BATCH: usize = 10_000;

/// The name of the baseline of W7.
const BARE_STREAM: &str = "PG bare SELECT by stream";
/// The name of the baseline of W3 (keyset pages, as `read_all` reads).
const BARE_PAGES: &str = "PG bare SELECT, pages";
/// The name of W3's second baseline (one streamed statement).
const BARE_SCAN: &str = "PG bare SELECT, 1 stmt";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Opens the store in `schema` of `server` with its default settings.
fn open_store(server: &Server, schema: &str) -> Result<PostgresEventStore, String> {
    PostgresConfig::new(server.url.clone())
        .schema(schema)
        .open_blocking()
        .map_err(err)
}

/// W1 on PostgreSQL: the store against bare `INSERT`s at 1, 16 and 256 writers.
pub fn w1(s: &Settings, server: &Server, rows: &mut Vec<Row>) -> Result<(), String> {
    for writers in [1u64, 16, 256] {
        let connections = CONNECTIONS.min(writers as usize);
        let events = s.pg_w1_events(writers);
        let rounds = append_rounds(
            s,
            &Engine::POSTGRES,
            Some(server),
            writers,
            events,
            connections,
        )?;
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        let case = format!(
            "PostgreSQL: {writers} writer{}, {connections} connection{}, {} events",
            plural(writers),
            plural(connections as u64),
            events
        );
        rows.push(rounds.row(&case, Engine::PgInsert, Target::RatioAtLeast(0.8)));
    }
    Ok(())
}

/// The store holding the data set of W3 and W7 on the server.
pub struct PgDataset {
    /// The store's schema (dropped with the data set).
    pub schema: Schema,
    /// Events in it.
    pub events: u64,
}

impl PgDataset {
    /// Imports `s.big_events()` events into a fresh store: the appends that 256 writers make in
    /// the embedded data set, in the order of their numbers, in batches of 10 000; then
    /// `VACUUM ANALYZE`, as autovacuum would after such a load (so that it does not start during
    /// the measurements).
    pub fn build(s: &Settings, server: &Server) -> Result<PgDataset, String> {
        let schema = server.schema();
        let store = open_store(server, &schema.name)?;
        let start = Instant::now();
        let payloads = Payloads::new();
        let mut versions = vec![0u64; STREAMS as usize];
        let mut batch: Vec<RecordedEvent> = Vec::with_capacity(IMPORT_BATCH + 3);
        let (mut position, mut head) = (0u64, 0u64);
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(err)?
            .as_micros() as u64;
        let rt = runtime()?;
        for k in appends_of(s.big_events(), 256) {
            let p = data::plan(k, STREAMS);
            let stream_id = data::stream_name(p.stream);
            for i in 0..p.events {
                position += 1;
                versions[p.stream as usize] += 1;
                let t = ((3 * k + i as u64) % 10) as usize;
                let data = tidings::store::EventData::new(TYPES[t], payloads.get(t).to_vec());
                batch.push(
                    RecordedEvent::new(
                        position,
                        stream_id.clone(),
                        versions[p.stream as usize],
                        data,
                    )
                    .with_timestamp_micros(micros + position),
                );
            }
            if batch.len() >= IMPORT_BATCH {
                head = rt
                    .block_on(store.import(std::mem::take(&mut batch)))
                    .map_err(err)?;
            }
        }
        if !batch.is_empty() {
            head = rt.block_on(store.import(batch)).map_err(err)?;
        }
        drop(store);
        if head != position {
            return Err(format!(
                "data set: imported up to {head}, expected {position}"
            ));
        }
        let loaded = start.elapsed().as_secs_f64();
        let vacuum = Instant::now();
        crate::baseline::postgres::execute(
            server,
            &format!("VACUUM ANALYZE \"{}\".events", schema.name),
        )?;
        s.log(format_args!(
            "PostgreSQL data set: {position} events imported in {loaded:.1} s ({:.0} events/s), \
             VACUUM ANALYZE {:.1} s",
            position as f64 / loaded,
            vacuum.elapsed().as_secs_f64()
        ));
        Ok(PgDataset {
            schema,
            events: position,
        })
    }
}

/// The numbers of the appends that [`crate::engines::drive`] makes for `events` events from
/// `writers` writers, in increasing order.
fn appends_of(events: u64, writers: u64) -> Vec<u64> {
    let per_writer = (events / writers).max(1);
    let mut ks = Vec::new();
    for w in 0..writers {
        let (mut written, mut k) = (0u64, w);
        while written < per_writer {
            written += data::plan(k, STREAMS).events as u64;
            ks.push(k);
            k += writers;
        }
    }
    ks.sort_unstable();
    ks
}

/// A timed read: returns the seconds it took.
type Timed<'a> = &'a mut dyn FnMut() -> Result<f64, String>;

/// Runs each of `reads` once untimed (to warm the server's cache), then `rounds` rounds of all
/// of them in turn; returns the median seconds of each, in order.
fn alternate(rounds: usize, reads: &mut [Timed<'_>]) -> Result<Vec<f64>, String> {
    for read in reads.iter_mut() {
        read()?;
    }
    let mut secs = vec![Vec::new(); reads.len()];
    for _ in 0..rounds {
        for (read, xs) in reads.iter_mut().zip(&mut secs) {
            xs.push(read()?);
        }
    }
    Ok(secs.iter_mut().map(|xs| median(xs)).collect())
}

/// W7 on PostgreSQL: full histories of the 1 000 streams of the embedded W7, with `read_stream`
/// and with a bare `SELECT ... WHERE stream_id = $1 ORDER BY stream_version`.
pub fn w7(s: &Settings, server: &Server, d: &PgDataset, rows: &mut Vec<Row>) -> Result<(), String> {
    let picks = w7_picks();
    let store = open_store(server, &d.schema.name)?;
    let bare = BareReader::open(server, &d.schema.name)?;
    let rt = runtime()?;
    let (mut t_events, mut b_events) = (0u64, 0u64);
    let secs = alternate(
        s.rounds,
        &mut [
            &mut || {
                rt.block_on(async {
                    let start = Instant::now();
                    t_events = 0;
                    for stream in &picks {
                        t_events += store
                            .read_stream(stream, 1, usize::MAX)
                            .await
                            .map_err(err)?
                            .len() as u64;
                    }
                    Ok(start.elapsed().as_secs_f64())
                })
            },
            &mut || {
                rt.block_on(async {
                    let start = Instant::now();
                    b_events = 0;
                    for stream in &picks {
                        b_events += bare.stream(stream).await?.len() as u64;
                    }
                    Ok(start.elapsed().as_secs_f64())
                })
            },
        ],
    )?;
    let (t_secs, b_secs) = (secs[0], secs[1]);
    if t_events != b_events {
        return Err(format!(
            "W7: the store read {t_events} events, the bare SELECT {b_events}"
        ));
    }
    let n = picks.len() as f64;
    s.log(format_args!(
        "W7 PostgreSQL: store {:.0} streams/s, bare SELECT {:.0} streams/s ({t_events} events)",
        n / t_secs,
        n / b_secs
    ));
    rows.push(
        Row::vs(
            "W7",
            format!(
                "PostgreSQL: {} of {STREAMS} streams, {} events each on average",
                picks.len(),
                t_events / picks.len() as u64
            ),
            "streams/s",
            Better::Higher,
            n / t_secs,
            BARE_STREAM,
            n / b_secs,
            Target::RatioAtLeast(0.8),
        )
        .engine(Engine::Postgres.name()),
    );
    Ok(())
}

/// W3 on PostgreSQL: the whole log with `read_all` pages of 1 000 from position 1 to the head,
/// against bare keyset pages of 1 000 (`WHERE position >= $1 ORDER BY position LIMIT 1000`), the
/// same requests a paging reader can make, and, for information, one streamed `SELECT` of
/// everything.
pub fn w3(s: &Settings, server: &Server, d: &PgDataset, rows: &mut Vec<Row>) -> Result<(), String> {
    let n = d.events;
    let store = open_store(server, &d.schema.name)?;
    if store.head() != n {
        return Err(format!(
            "W3: the store's head is {}, expected {n}",
            store.head()
        ));
    }
    let bare = BareReader::open(server, &d.schema.name)?;
    let rt = runtime()?;
    let mut bare_pages = || {
        rt.block_on(async {
            let start = Instant::now();
            let (mut next, mut seen) = (1u64, 0u64);
            loop {
                let page = bare.page(next, 1000).await?;
                seen += page.len() as u64;
                match page.last() {
                    Some(last) if page.len() == 1000 => next = last.position + 1,
                    _ => break,
                }
            }
            if seen != n {
                return Err(format!("W3: bare pages saw {seen} of {n} events"));
            }
            Ok(start.elapsed().as_secs_f64())
        })
    };
    let mut bare_scan = || {
        rt.block_on(async {
            let start = Instant::now();
            let seen = bare.scan().await?;
            if seen != n {
                return Err(format!("W3: the bare scan saw {seen} of {n} events"));
            }
            Ok(start.elapsed().as_secs_f64())
        })
    };
    let secs = alternate(
        s.rounds,
        &mut [
            &mut || rt.block_on(read_all_pages(&store, n)),
            &mut bare_pages,
            &mut bare_scan,
        ],
    )?;
    let (t_secs, b_secs, scan_secs) = (secs[0], secs[1], secs[2]);
    let rate = |secs: f64| n as f64 / secs;
    s.log(format_args!(
        "W3 PostgreSQL: read_all {:.0} events/s, bare pages {:.0}, bare single SELECT {:.0}",
        rate(t_secs),
        rate(b_secs),
        rate(scan_secs)
    ));
    let case = format!("PostgreSQL: {n} events, store read_all, pages of 1000");
    rows.push(
        Row::vs(
            "W3",
            &case,
            "events/s",
            Better::Higher,
            rate(t_secs),
            BARE_PAGES,
            rate(b_secs),
            Target::RatioAtLeast(0.5),
        )
        .engine(Engine::Postgres.name()),
    );
    rows.push(
        Row::vs(
            "W3",
            &case,
            "events/s",
            Better::Higher,
            rate(t_secs),
            BARE_SCAN,
            rate(scan_secs),
            Target::None,
        )
        .engine(Engine::Postgres.name()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_set_makes_the_appends_of_the_embedded_one() {
        let ks = appends_of(20_000, 256);
        let events: u64 = ks
            .iter()
            .map(|&k| data::plan(k, STREAMS).events as u64)
            .sum();
        // 256 writers each stop at the first append that takes them to 78 events or more.
        assert!((19_968..19_968 + 256 * 3).contains(&events), "{events}");
        assert!(ks.windows(2).all(|w| w[0] < w[1]));
    }
}
