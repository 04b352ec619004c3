//! The process that `tests/tests/crash.rs` kills with SIGKILL.
//!
//! - `crash_child append DIR`: 16 tasks append to their own streams until killed, printing
//!   `ACK <stream> <first_version> <count> <first_position>` (flushed) after each acknowledged
//!   append. Stops by itself after [`MAX_APPENDS`] appends or [`MAX_RUN`].
//! - `crash_child open DIR`: opens the store, prints `OPENED <head>` and exits.
//! - `crash_child fill DIR BYTES`: appends events of BYTES bytes one at a time until an append
//!   fails (the parent runs it with a file size limit), printing `ACK <position>` after each,
//!   then `FAILED <error>`, `CLOSED` once `close` returned and `DROPPED` once the last handle is
//!   dropped, and exits 0. Stops by itself after [`MAX_RUN`].
//! - `crash_child verify DIR`: opens the store, verifies it and reads every event, prints
//!   `VERIFIED <head> <events read> <problems found>` and exits.
//!
//! Every payload describes itself (see [`payload`]), so the parent can check each event's content
//! and that every append is all-or-nothing, acknowledged or not.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::store::{EventData, EventStore, ExpectedVersion, SledConfig, SledEventStore};
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
            let store = open(dir);
            let mut out = std::io::stdout().lock();
            writeln!(out, "OPENED {}", store.head())
                .and_then(|()| out.flush())
                .ok();
        }
        (Some("verify"), Some(dir)) => verify(Path::new(dir)),
        (Some("fill"), Some(dir)) => {
            let bytes = args.get(3).and_then(|b| b.parse().ok());
            fill(
                Path::new(dir),
                bytes.unwrap_or_else(|| die(&"fill DIR BYTES")),
            )
        }
        _ => die(&"usage: crash_child append|open DIR, or fill DIR BYTES"),
    }
}

/// Opens the store with a small table of runs in memory: the stream index writes a file every
/// [`INDEX_TABLE_RUNS`] appends and merges files in the background, so that kills also land in
/// those writes and merges.
fn open(dir: impl AsRef<Path>) -> SledEventStore {
    SledConfig::new(dir.as_ref())
        .index_table_runs(INDEX_TABLE_RUNS)
        .open()
        .unwrap_or_else(|e| die(&e))
}

/// See [`open`].
const INDEX_TABLE_RUNS: usize = 4;

/// Prints `line` on stdout, flushed.
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .unwrap_or_else(|e| die(&e));
}

/// The `fill` mode: appends `bytes`-byte events until an append fails, then closes and drops
/// the store, saying how far it got.
fn fill(dir: &Path, bytes: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&e));
    runtime.block_on(async {
        let store = open(dir);
        let deadline = Instant::now() + MAX_RUN;
        let mut version = store
            .stream_version("fill")
            .await
            .unwrap_or_else(|e| die(&e));
        while Instant::now() < deadline {
            let event = EventData::new("Filled", vec![b'f'; bytes]);
            match store
                .append("fill", ExpectedVersion::Exact(version), vec![event])
                .await
            {
                Ok(result) => {
                    version = result.stream_version;
                    say(format_args!("ACK {}", result.first_position));
                    if result.first_position == 1 {
                        limit_file_size();
                    }
                }
                Err(e) => {
                    say(format_args!("FAILED {e}"));
                    break;
                }
            }
        }
        store.close().await;
        say(format_args!("CLOSED"));
        drop(store);
    });
    drop(runtime);
    say(format_args!("DROPPED"));
}

/// Sets the file size limit (`RLIMIT_FSIZE`) to `TIDINGS_FSIZE_AFTER_FIRST` bytes, if set: what
/// `fill` does once the event log has allocated its first segment.
fn limit_file_size() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let Some(limit) = std::env::var("TIDINGS_FSIZE_AFTER_FIRST")
        .ok()
        .and_then(|v| v.parse().ok())
    else {
        return;
    };
    let maximum = getrlimit(Resource::Fsize).maximum;
    setrlimit(
        Resource::Fsize,
        Rlimit {
            current: Some(limit),
            maximum,
        },
    )
    .unwrap_or_else(|e| die(&e));
}

/// The `verify` mode: what `tidings verify` and `tidings export` do, through the library.
fn verify(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&e));
    runtime.block_on(async {
        let store = open(dir);
        let report = store.verify().await.unwrap_or_else(|e| die(&e));
        let (mut from, mut read) = (1, 0);
        loop {
            let page = store
                .read_all(from, 16, &tidings::store::Filter::all())
                .await
                .unwrap_or_else(|e| die(&e));
            read += page.events.len();
            from = page.next_position;
            if page.is_end() {
                break;
            }
        }
        say(format_args!(
            "VERIFIED {} {read} {}",
            store.head(),
            report.problems.len()
        ));
    });
}

/// The `append` mode: appends from [`TASKS`] tasks until killed or bounded.
fn append(dir: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&e));
    runtime.block_on(async {
        let store = open(dir);
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
