//! A quick measurement of durable append throughput and global-log catch-up, for a first look
//! (the benchmark runner with baselines in the same run is `docs/performance.md`'s business).
//!
//! `cargo run --release -p tidings --example append_throughput [EVENTS]`
//!
//! Appends EVENTS events (default 200 000) of ~200 bytes, 1 to 3 per append, to 10 000 streams,
//! from 1, 16 and 256 concurrent writers (a fresh store each), then reads the whole log back in
//! pages of 1 000, and prints events per second for each.

use std::sync::Arc;
use std::time::Instant;

use tidings::store::{EventData, EventStore, ExpectedVersion, Filter, SledEventStore};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    // The store's writer is its own thread and reads run on the blocking pool, so one runtime
    // thread is enough to drive the writers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "{:>8} {:>12} {:>12} {:>14}",
        "writers", "appends/s", "events/s", "catch-up ev/s"
    );
    for writers in [1u64, 16, 256] {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(SledEventStore::open(dir.path())?);
        let (appends, elapsed) = runtime.block_on(append(store.clone(), writers, events))?;
        let read = runtime.block_on(catch_up(&store))?;
        println!(
            "{writers:>8} {:>12.0} {:>12.0} {:>14.0}",
            appends as f64 / elapsed,
            events as f64 / elapsed,
            events as f64 / read
        );
    }
    Ok(())
}

/// Appends `events` events from `writers` tasks; returns appends made and seconds taken.
async fn append(
    store: Arc<SledEventStore>,
    writers: u64,
    events: u64,
) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    let payload = vec![b'x'; 200];
    let per_writer = events / writers;
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, payload) = (store.clone(), payload.clone());
            tokio::spawn(async move {
                let (mut written, mut appends, mut i) = (0u64, 0u64, w);
                while written < per_writer {
                    let n = (1 + i % 3).min(per_writer - written);
                    let batch = (0..n)
                        .map(|_| EventData::new("Benchmarked", payload.clone()))
                        .collect();
                    store
                        .append(
                            &format!("bench-{}", i % 10_000),
                            ExpectedVersion::Any,
                            batch,
                        )
                        .await?;
                    written += n;
                    appends += 1;
                    i += writers;
                }
                Ok::<u64, tidings::store::StoreError>(appends)
            })
        })
        .collect();
    let mut appends = 0;
    for t in tasks {
        appends += t.await??;
    }
    Ok((appends, start.elapsed().as_secs_f64()))
}

/// Reads the whole log in pages; returns seconds taken.
async fn catch_up(store: &SledEventStore) -> Result<f64, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut next = 1;
    loop {
        let page = store.read_all(next, 1000, &Filter::all()).await?;
        next = page.next_position;
        if page.is_end() {
            return Ok(start.elapsed().as_secs_f64());
        }
    }
}
