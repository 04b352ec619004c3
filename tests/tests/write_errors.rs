//! A store whose writes fail (a full disk, here a file size limit set with the `prlimit` command
//! on a child process): the failing append gets an error, and the process then shuts down in
//! bounded time, whatever the size of the events (issue 16: with 200 KB events, dropping the
//! store hung forever inside sled's flush on drop). The store then opens again, also still under
//! the limit, for verify and reads.
//!
//! The child is `src/bin/crash_child.rs` (`fill` and `verify`), started through `sh -c` so that
//! SIGXFSZ is ignored (the write then fails with `EFBIG`, as on a full disk it fails with
//! `ENOSPC`). For `verify`, `prlimit --fsize` sets the limit from the start. `fill` sets it
//! itself (rustix's safe `setrlimit`) after its first append: the event log allocates its first
//! segment (64 MiB) then, and the limit makes the log's later writes past 600 000 bytes fail,
//! as a full disk makes them fail.

use std::process::Command;
use std::time::{Duration, Instant};

use tidings::store::{EventData, EventStore, ExpectedVersion};
use tidings_tests::support::{open, runtime, Ended, LineChild};

const CHILD: &str = env!("CARGO_BIN_EXE_crash_child");

/// The file size limit: the event log's segment passes it after a few large events.
const LIMIT: u64 = 600_000;

/// How long a child may take, at most, before it counts as hung.
const PATIENCE: Duration = Duration::from_secs(60);

/// Runs `crash_child <args>` under the file size limit, and waits for it to exit, at most
/// [`PATIENCE`]: a child still running then is killed and the test fails.
fn run_limited(args: &[&str]) -> Ended {
    let script = if args[0] == "fill" {
        "trap '' XFSZ; shift; exec \"$@\""
    } else {
        "trap '' XFSZ; limit=$1; shift; exec prlimit --fsize=\"$limit\" \"$@\""
    };
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(LIMIT.to_string())
        .arg(CHILD)
        .args(args)
        .env("TIDINGS_FSIZE_AFTER_FIRST", LIMIT.to_string());
    let mut child = LineChild::spawn(&mut command, "crash_child");
    let started = Instant::now();
    while child.process.try_wait().unwrap().is_none() {
        if started.elapsed() > PATIENCE {
            let ended = child.kill();
            panic!(
                "crash_child {args:?} still running after {PATIENCE:?}: it hung. It said {:?}, \
                 stderr: {}",
                ended.rest, ended.stderr
            );
        }
        // Polled: `Child` has no wait with a timeout.
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill()
}

/// Fills a store with events of `bytes` bytes until the limit stops it, and checks the
/// shutdown, then the store (reopened under the limit, then without it).
fn fill_then_reopen(bytes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let started = Instant::now();
    let filled = run_limited(&["fill", path, &bytes.to_string()]);
    let took = started.elapsed();
    assert!(filled.status.success(), "{bytes}: {}", filled.stderr);
    let acked: Vec<u64> = filled
        .rest
        .iter()
        .filter_map(|l| l.strip_prefix("ACK ")?.parse().ok())
        .collect();
    let failed = filled.rest.iter().find(|l| l.starts_with("FAILED "));
    let failed = failed.unwrap_or_else(|| panic!("{bytes}: no append failed: {:?}", filled.rest));
    assert!(failed.contains("the disk is full"), "{bytes}: {failed}");
    let tail: Vec<&str> = filled
        .rest
        .iter()
        .rev()
        .take(2)
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["DROPPED", "CLOSED"], "{bytes}: {:?}", filled.rest);
    assert!(!acked.is_empty(), "{bytes}: nothing was acknowledged");

    // Still under the limit: it opens, verifies and reads (what stats, verify and export do),
    // or, when sled needs to write to open it (it zeroes the rest of its last log segment after
    // a torn write, and has no read-only mode), it fails at once saying so.
    let last_acked = *acked.last().unwrap();
    let checked = run_limited(&["verify", path]);
    let under_limit = if checked.status.success() {
        let verified = checked.rest.last().expect("a VERIFIED line");
        let fields: Vec<u64> = verified
            .strip_prefix("VERIFIED ")
            .unwrap_or_else(|| panic!("{verified}"))
            .split(' ')
            .map(|f| f.parse().unwrap())
            .collect();
        assert!(
            fields[0] >= last_acked,
            "{bytes}: {verified}, acked {last_acked}"
        );
        assert_eq!(fields[1], fields[0], "{bytes}: {verified}");
        assert_eq!(fields[2], 0, "{bytes}: {verified}");
        "opened, verified and read under the limit".to_owned()
    } else {
        for words in ["disk is full", "no read-only mode", "Free some space"] {
            assert!(
                checked.stderr.contains(words),
                "{bytes}: {}",
                checked.stderr
            );
        }
        format!("refused under the limit: {}", checked.stderr.trim())
    };

    // Without the limit: every acknowledged event is there and appends work again.
    let store = open(dir.path());
    runtime().block_on(async {
        assert!(store.head() >= last_acked);
        let events = store.read_stream("fill", 1, usize::MAX).await.unwrap();
        for position in &acked {
            assert!(events
                .iter()
                .any(|e| e.position == *position && e.payload.len() == bytes));
        }
        let version = store.stream_version("fill").await.unwrap();
        let event = EventData::new("Filled", vec![1]);
        store
            .append("fill", ExpectedVersion::Exact(version), vec![event])
            .await
            .unwrap();
    });
    println!(
        "{bytes}-byte events under a {LIMIT}-byte file size limit: {} acknowledged, then \
         {failed:?}; the child closed, dropped the store and exited in {took:.1?}; {under_limit}",
        acked.len()
    );
    drop(store);
}

#[test]
fn a_write_error_with_large_events_ends_in_a_bounded_shutdown_and_the_store_opens_again() {
    fill_then_reopen(200 * 1024);
}

#[test]
fn a_write_error_with_small_events_ends_in_a_bounded_shutdown_and_the_store_opens_again() {
    fill_then_reopen(2 * 1024);
}
