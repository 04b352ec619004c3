//! Helpers shared by the crash tests and their child processes.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use tidings::store::SledEventStore;

/// The value of environment variable `name` as a number, or `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A current-thread tokio runtime for a test's own store calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// Opens the store at `dir`, panicking with the path and the error if it does not open.
pub fn open(dir: &Path) -> SledEventStore {
    SledEventStore::open(dir)
        .unwrap_or_else(|e| panic!("store at {} does not open: {e:?}", dir.display()))
}

/// Drops `store`, then waits until sled's `db` file is unlocked (at most 5 s), returning how long
/// the lock outlived the store. sled 0.34.7 can keep the file open in a background thread after
/// the store is dropped. `SledEventStore::open` rides this out (it retries sled's lock for up to
/// 2 s once it holds `tidings.lock`); the wait stays so that the figures show how often and how
/// long it happens.
pub fn close(store: SledEventStore) -> Duration {
    let db = store.path().join("db");
    drop(store);
    let dropped = Instant::now();
    while File::open(&db)
        .expect("open the store's db file")
        .try_lock()
        .is_err()
    {
        assert!(
            dropped.elapsed() < Duration::from_secs(5),
            "{} stays locked",
            db.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    dropped.elapsed()
}

/// The payload of the event at `version` of `stream`, number `index` of an append of `count`:
/// `"<stream> v<version> <index>/<count> <filler>"`, the filler being hex digits derived from the
/// rest, so that every event describes itself (see [`parse_payload`]).
pub fn payload(stream: &str, version: u64, index: usize, count: usize) -> String {
    let head = format!("{stream} v{version} {index}/{count}");
    let seed = head.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let filler: String = format!("{seed:016x}").repeat(4);
    format!("{head} {}", &filler[..8 + (version % 57) as usize])
}

/// Reads back what [`payload`] wrote: `(stream, version, index, count)`.
pub fn parse_payload(bytes: &[u8]) -> Option<(String, u64, usize, usize)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.split(' ');
    let stream = parts.next()?.to_owned();
    let version = parts.next()?.strip_prefix('v')?.parse().ok()?;
    let (index, count) = parts.next()?.split_once('/')?;
    Some((stream, version, index.parse().ok()?, count.parse().ok()?))
}

/// For the child processes of the crash tests: prints one line on stdout and flushes it at once
/// (the parent reads it even if the child is killed right after), or dies if stdout is gone.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .unwrap_or_else(|e| die(&e));
}

/// For the child processes: reports `error` on stderr, after the program's name, and exits with
/// status 2.
pub fn die(error: &dyn std::fmt::Display) -> ! {
    let program = std::env::args()
        .next()
        .and_then(|p| {
            Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "child".to_owned());
    eprintln!("{program}: {error}");
    std::process::exit(2)
}
