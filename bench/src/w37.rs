//! W3 (subscription catch-up) and W7 (per-stream reads), on the [`Dataset`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::SeedableRng;
use tidings::store::{EventStore, Filter, SledEventStore};
use tidings::subscription::{
    EventContext, HandleEvent, HandlerError, SubscriptionConfig, Subscriptions,
};
use tidings::{async_trait, EventHandler};

use crate::baseline;
use crate::data::{self, BenchEvent, OneInTen, STREAMS};
use crate::dataset::Dataset;
use crate::engines::Engine;
use crate::report::{Better, Row, Target};
use crate::w12::runtime;
use crate::Settings;

/// Handles every event and does nothing with it (the framework still reads and decodes it).
#[derive(EventHandler)]
#[event_handler(name = "bench-noop", events(BenchEvent))]
pub struct NoOp;

#[async_trait]
impl HandleEvent<BenchEvent> for NoOp {
    async fn handle(
        &mut self,
        _event: BenchEvent,
        _ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// The same, under another name and with another checkpoint (for the tuned configuration).
#[derive(EventHandler)]
#[event_handler(name = "bench-noop-tuned", events(BenchEvent))]
pub struct NoOpTuned;

#[async_trait]
impl HandleEvent<BenchEvent> for NoOpTuned {
    async fn handle(
        &mut self,
        _event: BenchEvent,
        _ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Handles one type in ten (`T0`); the others are filtered out by the store.
#[derive(EventHandler)]
#[event_handler(name = "bench-one-in-ten", events(OneInTen))]
pub struct TenPercent;

#[async_trait]
impl HandleEvent<OneInTen> for TenPercent {
    async fn handle(
        &mut self,
        _event: OneInTen,
        _ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The 1 000 streams out of 10 000 that W7 reads, drawn once (seeded): the same for every
/// engine.
pub fn w7_picks() -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(7);
    sample(&mut rng, STREAMS as usize, 1000)
        .iter()
        .map(|i| data::stream_name(i as u64))
        .collect()
}

/// Reads the whole log of `store` with `read_all` pages of 1 000 and no filter, and checks that
/// it saw `n` events; returns the seconds it took.
pub async fn read_all_pages(store: &dyn EventStore, n: u64) -> Result<f64, String> {
    let start = Instant::now();
    let (mut next, mut seen) = (1, 0u64);
    loop {
        let page = store
            .read_all(next, 1000, &Filter::all())
            .await
            .map_err(err)?;
        seen += page.events.len() as u64;
        next = page.next_position;
        if page.is_end() {
            break;
        }
    }
    if seen != n {
        return Err(format!("W3: read_all saw {seen} of {n} events"));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// W7: full histories of 1 000 random streams out of 10 000, one after another.
pub fn w7(s: &Settings, d: &Dataset, rows: &mut Vec<Row>) -> Result<(), String> {
    let picks = w7_picks();
    let rt = runtime()?;
    let store = SledEventStore::open(d.tidings.path()).map_err(err)?;
    let read_tidings = || -> Result<(u64, f64), String> {
        rt.block_on(async {
            let start = Instant::now();
            let mut n = 0u64;
            for stream in &picks {
                n += store
                    .read_stream(stream, 1, usize::MAX)
                    .await
                    .map_err(err)?
                    .len() as u64;
            }
            Ok((n, start.elapsed().as_secs_f64()))
        })
    };
    read_tidings()?; // warm the page cache, as for SQLite below
    let (t_events, t_secs) = read_tidings()?;
    drop(store);

    let conn = baseline::sqlite::open(d.sqlite.path()).map_err(err)?;
    let read_sqlite = || -> Result<(u64, f64), String> {
        let start = Instant::now();
        let mut n = 0u64;
        for stream in &picks {
            n += baseline::sqlite::read_stream(&conn, stream)
                .map_err(err)?
                .len() as u64;
        }
        Ok((n, start.elapsed().as_secs_f64()))
    };
    read_sqlite()?;
    let (s_events, s_secs) = read_sqlite()?;
    if t_events != s_events {
        return Err(format!(
            "W7: tidings read {t_events} events, SQLite {s_events}"
        ));
    }
    s.log(format_args!(
        "W7 tidings {:.0} streams/s, SQLite {:.0} streams/s ({t_events} events)",
        1000.0 / t_secs,
        1000.0 / s_secs
    ));
    rows.push(Row::vs(
        "W7",
        format!(
            "1000 of 10000 streams, {} events each on average",
            t_events / 1000
        ),
        "streams/s",
        Better::Higher,
        1000.0 / t_secs,
        Engine::Sqlite.name(),
        1000.0 / s_secs,
        Target::RatioAtLeast(0.5),
    ));
    Ok(())
}

/// W3: reading the whole log (store pages, and subscriptions with a no-op handler and with a
/// handler of one type in ten), beside a warm range scan of the same keys with raw sled.
pub fn w3(s: &Settings, d: &Dataset, rows: &mut Vec<Row>) -> Result<(), String> {
    let n = d.events;
    let store = SledEventStore::open(d.tidings.path()).map_err(err)?;
    if store.head() != n {
        return Err(format!(
            "W3: the store holds {} events, expected {n}",
            store.head()
        ));
    }
    let rt = runtime()?;
    // Store level: pages of 1 000 with no filter, twice (the second is warm).
    let read_all = || rt.block_on(read_all_pages(&store, n));
    read_all()?;
    let t_read_all = read_all()?;
    s.log(format_args!(
        "W3 read_all {:.0} events/s",
        n as f64 / t_read_all
    ));

    // Subscriptions, in an actix system.
    let store = Arc::new(store);
    let shared: Arc<dyn EventStore> = store.clone();
    let subs = actix::System::new().block_on(async move {
        let subscriptions = Subscriptions::new(shared);
        let catch_up = |handle: tidings::subscription::SubscriptionHandle, start: Instant| async move {
            let status = match handle.wait_until_handled(n, std::time::Duration::from_secs(3600)).await {
                Ok(status) => status,
                Err(e) => return Err(format!("W3: subscription {}: {e}", handle.name())),
            };
            let secs = start.elapsed().as_secs_f64();
            let stopped = handle.stop().await;
            if status.handled_up_to < n {
                return Err(format!("W3: subscription {} ended at {} of {n}: {:?}", handle.name(), status.handled_up_to, stopped.state));
            }
            Ok::<_, String>(secs)
        };
        let start = Instant::now();
        let h = subscriptions.start(NoOp).map_err(err)?;
        let noop = catch_up(h, start).await?;
        let start = Instant::now();
        let tuned = SubscriptionConfig::default().batch_size(1000).commit_every(100_000).commit_interval(Duration::from_secs(1));
        let h = subscriptions.start_with(NoOpTuned, tuned).map_err(err)?;
        let noop_tuned = catch_up(h, start).await?;
        let start = Instant::now();
        let h = subscriptions.start(TenPercent).map_err(err)?;
        let ten = catch_up(h, start).await?;
        subscriptions.stop_all().await;
        Ok::<_, String>((noop, noop_tuned, ten))
    })?;
    let (t_noop, t_tuned, t_ten) = subs;
    s.log(format_args!(
        "W3 subscriptions: no-op {:.0}/s, no-op tuned {:.0}/s, 10 % {:.0}/s",
        n as f64 / t_noop,
        n as f64 / t_tuned,
        n as f64 / t_ten
    ));
    drop(store);

    // raw sled: a warm range scan of the same log keys (the second of two scans).
    let raw = raw_log_scan(d, n)?;
    s.log(format_args!(
        "W3 raw log warm scan {:.0} events/s",
        n as f64 / raw
    ));

    // SQLite: all rows in position order, warm.
    let conn = baseline::sqlite::open(d.sqlite.path()).map_err(err)?;
    baseline::sqlite::scan(&conn, |_| true).map_err(err)?;
    let start = Instant::now();
    let seen = baseline::sqlite::scan(&conn, |_| true).map_err(err)?;
    let t_sqlite = start.elapsed().as_secs_f64();
    if seen != n {
        return Err(format!("W3: SQLite scan saw {seen} of {n}"));
    }

    let rate = |secs: f64| n as f64 / secs;
    let raw_rate = rate(raw);
    let mut add = |case: &str, secs: f64| {
        let case = format!("{n} events, {case}");
        rows.push(Row::vs(
            "W3",
            &case,
            "events/s",
            Better::Higher,
            rate(secs),
            "raw log warm scan",
            raw_rate,
            Target::RatioAtLeast(0.5),
        ));
        rows.push(Row::alone(
            "W3",
            &case,
            "events/s",
            Better::Higher,
            rate(secs),
            Target::ValueAtLeast(1_000_000.0),
        ));
    };
    add("store read_all, pages of 1000", t_read_all);
    add("subscription, no-op handler, default config", t_noop);
    add(
        "subscription, no-op, batch 1000, commit every 100k/1 s",
        t_tuned,
    );
    add("subscription, handler of 1 type in 10", t_ten);
    rows.push(Row::vs(
        "W3",
        format!("{n} events, store read_all vs SQLite scan"),
        "events/s",
        Better::Higher,
        rate(t_read_all),
        Engine::Sqlite.name(),
        rate(t_sqlite),
        Target::None,
    ));
    Ok(())
}

/// Seconds for the second of two sequential reads of tidings' event log (the store's
/// `log/*.seg` files, after the store closed), 1 MiB at a time, walking each record's 32-byte
/// header (`body_len` at bytes 4..8, little-endian; records padded to 8 bytes) and copying each
/// body out: the least a reader must do to hand an event over from the same bytes; no checksum,
/// no decoding.
fn raw_log_scan(d: &Dataset, n: u64) -> Result<f64, String> {
    use std::io::Read;
    let mut segments: Vec<std::path::PathBuf> = std::fs::read_dir(d.tidings.path().join("log"))
        .map_err(err)?
        .map(|e| e.map(|e| e.path()).map_err(err))
        .collect::<Result<_, _>>()?;
    segments.retain(|p| p.extension().is_some_and(|x| x == "seg"));
    segments.sort();
    let scan = || -> Result<f64, String> {
        let start = Instant::now();
        let mut seen = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for path in &segments {
            let mut file = std::fs::File::open(path).map_err(err)?;
            // Skip the 64-byte segment header.
            file.read_exact(&mut [0u8; 64]).map_err(err)?;
            let (mut filled, mut at) = (0usize, 0usize);
            loop {
                // Keep the unread tail, then fill the buffer.
                buf.copy_within(at..filled, 0);
                filled -= at;
                at = 0;
                let read = file.read(&mut buf[filled..]).map_err(err)?;
                filled += read;
                let mut ended = read == 0;
                while at + 32 <= filled {
                    let len = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4"));
                    if buf[at] == 0 {
                        ended = true; // the never-written rest of the segment
                        break;
                    }
                    let framed = (32 + len as usize).div_ceil(8) * 8;
                    if at + framed > filled {
                        if framed > buf.len() {
                            buf.resize(framed, 0);
                        }
                        break;
                    }
                    std::hint::black_box(buf[at + 32..at + 32 + len as usize].to_vec());
                    seen += 1;
                    at += framed;
                }
                if ended {
                    break;
                }
            }
        }
        if seen != n {
            return Err(format!("raw log scan saw {seen} of {n} events"));
        }
        Ok(start.elapsed().as_secs_f64())
    };
    scan()?;
    scan()
}
