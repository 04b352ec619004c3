//! The process that `tests/tests/crash.rs` kills with SIGKILL.
//!
//! - `crash_child append DIR`: 16 tasks append to their own streams until killed, printing
//!   `ACK <stream> <first_version> <count> <first_position>` (flushed) after each acknowledged
//!   append. Stops by itself after [`MAX_APPENDS`] appends or [`MAX_RUN`].
//! - `crash_child open DIR`: opens the store, prints `OPENED <head>` and exits.
//!
//! Every payload describes itself (see [`payload`]), so the parent can check each event's content
//! and that every append is all-or-nothing, acknowledged or not.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::store::{EventData, EventStore, ExpectedVersion, SledEventStore};
use tidings_tests::support::{die, payload};

/// Concurrent appending tasks.
const TASKS: usize = 16;
/// Streams per task, appended to in turn.
const STREAMS_PER_TASK: usize = 4;
/// The child stops by itself after this many appends...
const MAX_APPENDS: u64 = 200_000;
/// ... or after this long.
const MAX_RUN: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("append"), Some(dir)) => append(Path::new(dir)),
        (Some("open"), Some(dir)) => {
            let store = SledEventStore::open(dir).unwrap_or_else(|e| die(&e));
            let mut out = std::io::stdout().lock();
            writeln!(out, "OPENED {}", store.head())
                .and_then(|()| out.flush())
                .ok();
        }
        _ => die(&"usage: crash_child append|open DIR"),
    }
}

/// The `append` mode: appends from [`TASKS`] tasks until killed or bounded.
fn append(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&e));
    runtime.block_on(async {
        let store = SledEventStore::open(dir).unwrap_or_else(|e| die(&e));
        let appends = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + MAX_RUN;
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| tokio::spawn(run_task(store.clone(), task, appends.clone(), deadline)))
            .collect();
        for t in tasks {
            t.await.unwrap_or_else(|e| die(&e));
        }
    });
}

/// One task: appends batches of 1 to 4 events to its streams in turn, each with the exact
/// expected version, and acknowledges each on stdout.
async fn run_task(store: SledEventStore, task: usize, appends: Arc<AtomicU64>, deadline: Instant) {
    let streams: Vec<String> = (0..STREAMS_PER_TASK)
        .map(|k| format!("crash-{task}-{k}"))
        .collect();
    let mut versions = Vec::with_capacity(streams.len());
    for s in &streams {
        versions.push(store.stream_version(s).await.unwrap_or_else(|e| die(&e)));
    }
    let mut n = 0usize;
    while appends.fetch_add(1, Ordering::Relaxed) < MAX_APPENDS && Instant::now() < deadline {
        let k = n % streams.len();
        let count = 1 + (n * 7 + task) % 4;
        n += 1;
        let (stream, current) = (&streams[k], versions[k]);
        let events = (0..count)
            .map(|i| {
                let body = payload(stream, current + 1 + i as u64, i, count);
                EventData::new("CrashTestAppended", body.into_bytes())
            })
            .collect();
        let result = store
            .append(stream, ExpectedVersion::Exact(current), events)
            .await
            .unwrap_or_else(|e| die(&e));
        if result.stream_version != current + count as u64
            || result.last_position + 1 - result.first_position != count as u64
        {
            die(&format!(
                "append of {count} to {stream} at {current} gave {result:?}"
            ));
        }
        versions[k] = result.stream_version;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ACK {stream} {} {count} {}",
            current + 1,
            result.first_position
        )
        .and_then(|()| out.flush())
        .unwrap_or_else(|e| die(&e));
    }
}
