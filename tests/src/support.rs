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

/// Drops `store`, then waits until sled's `db` file is unlocked (at most 60 s, generous for a
/// loaded machine), returning how long the lock outlived the store. sled 0.34.7 can keep the
/// file open in a background thread after the store is dropped. `SledEventStore::open` rides
/// this out (it retries sled's lock for up to 2 s once it holds `tidings.lock`); the wait stays
/// so that the figures show how often and how long it happens.
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
            dropped.elapsed() < Duration::from_secs(60),
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

/// A child process whose stdout arrives as whole lines on a channel (a line cut by a kill has
/// no newline and is dropped) and whose stderr is collected.
pub struct LineChild {
    /// The process (for `try_wait`).
    pub process: std::process::Child,
    /// Its stdout, one whole line at a time, without the newline.
    pub lines: std::sync::mpsc::Receiver<String>,
    stdout: std::thread::JoinHandle<()>,
    stderr: std::thread::JoinHandle<String>,
}

/// What a [`LineChild`] left when it was killed (or had exited).
pub struct Ended {
    /// How it ended.
    pub status: std::process::ExitStatus,
    /// The lines it printed that were not taken from [`LineChild::lines`] before the kill.
    pub rest: Vec<String>,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

impl LineChild {
    /// Spawns `command` with stdout and stderr piped; `what` names it in panics.
    pub fn spawn(command: &mut std::process::Command, what: &str) -> Self {
        use std::io::{BufRead, Read};
        use std::process::Stdio;
        let mut process = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let mut out = std::io::BufReader::new(process.stdout.take().expect("piped stdout"));
        let mut err = process.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        let stdout = std::thread::spawn(move || {
            let mut line = Vec::new();
            while out.read_until(b'\n', &mut line).unwrap_or(0) > 0 && line.ends_with(b"\n") {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if tx.send(text).is_err() {
                    break;
                }
                line.clear();
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        LineChild {
            process,
            lines,
            stdout,
            stderr,
        }
    }

    /// Sends SIGKILL (`Child::kill`; nothing if it already exited), waits for it, and returns
    /// how it ended with the lines still in the pipe.
    pub fn kill(mut self) -> Ended {
        let _ = self.process.kill();
        let status = self.process.wait().expect("wait for the child");
        let rest: Vec<String> = self.lines.into_iter().collect();
        self.stdout.join().expect("the stdout reader");
        Ended {
            status,
            rest,
            stderr: self.stderr.join().expect("the stderr reader"),
        }
    }
}

/// How long a test waits for a subscription before it fails: far above what any wait takes on a
/// fully loaded machine, so that only a real hang fails it.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Waits until `handle` has handled `position`, or has stopped or failed first; returns its
/// status then, for the test to inspect. Panics after [`PATIENCE`].
pub async fn reached(
    handle: &tidings::subscription::SubscriptionHandle,
    position: u64,
) -> tidings::subscription::SubscriptionStatus {
    use tidings::subscription::WaitError;
    match handle.wait_until_handled(position, PATIENCE).await {
        Ok(status) => status,
        Err(WaitError::Failed { .. } | WaitError::Stopped { .. }) => handle.status(),
        Err(other) => panic!("waiting for position {position}: {other}"),
    }
}

/// Waits until `handle` says it is live at the head (it reaches that state just after handling
/// the last event: [`reached`] can return a moment before). Panics after [`PATIENCE`].
pub async fn live(
    handle: &tidings::subscription::SubscriptionHandle,
) -> tidings::subscription::SubscriptionStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = handle.status();
        if status.state == tidings::subscription::SubscriptionState::Live {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "not live after {PATIENCE:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
