//! Memory is bounded by settings, never by the size of the input (issue 16 section 3): the
//! `tidings` binary runs as a child on generated inputs, and its peak RSS must stay under a bound
//! computed from the limits (`READ_PAGE_BYTES`, `MAX_PAYLOAD_LEN`, `MAX_IMPORT_LINE_LEN`), well
//! below the input's size.
//!
//! The peak is the child's `ru_maxrss` from `wait4`, read by GNU time (`/usr/bin/time -f %M`):
//! the workspace forbids `unsafe` code, so no `wait4` binding here. The events are
//! `TIDINGS_RSS_EVENTS` (default 16) of `MAX_PAYLOAD_LEN` bytes, on PostgreSQL: on sled, sled's
//! own page cache keeps values of more than 128 KiB (its blob files) however small the cache
//! is set (docs/guarantees.md, "What is not promised"), so the bound would measure sled.

mod support;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use support::pg::Schema;
use support::TIDINGS;
use tidings::store::{MAX_PAYLOAD_LEN, READ_PAGE_BYTES};
use tidings_cli::MAX_IMPORT_LINE_LEN;

const MIB: u64 = 1024 * 1024;

/// What the binary takes whatever its input: code, runtime, connection pools, allocator slack
/// (a debug build; about 12-30 MB measured).
const BASE: u64 = 64 * MIB;

/// How the child ended and its peak RSS.
#[derive(Debug)]
struct Measured {
    code: i32,
    stderr: String,
    peak_bytes: u64,
}

/// Runs `tidings ARGS` under GNU time, output to /dev/null, and returns its peak RSS.
fn measure(args: &[&str], scratch: &Path) -> Measured {
    let report = scratch.join("time.out");
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .arg(TIDINGS)
        .args(args)
        .env_remove("TIDINGS_STORE")
        .env_remove("TIDINGS_SCHEMA")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run /usr/bin/time ({e}): these tests need GNU time (package `time`)")
        });
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    let kib: u64 = text
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("GNU time wrote no peak RSS for {args:?}: {text:?}"));
    Measured {
        code: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        peak_bytes: kib * 1024,
    }
}

fn assert_under(what: &str, m: &Measured, bound: u64, input: u64) {
    eprintln!(
        "{what}: peak RSS {} MiB (bound {} MiB, input {} MiB)",
        m.peak_bytes / MIB,
        bound / MIB,
        input / MIB
    );
    assert!(
        m.peak_bytes <= bound,
        "{what}: peak RSS {} MiB is over the bound of {} MiB (input {} MiB): {m:?}",
        m.peak_bytes / MIB,
        bound / MIB,
        input / MIB
    );
}

/// A line of 2 GiB without a newline (a sparse file: no disk used) is refused naming line 1,
/// having held at most the line limit.
#[test]
fn a_line_without_an_end_is_refused_by_its_number_without_being_held() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("endless.jsonl");
    let size: u64 = 2 << 30;
    {
        let mut f = File::create(&input).unwrap();
        f.write_all(br#"{"kind":"event","payload":""#).unwrap();
        f.set_len(size).unwrap();
    }
    let store = dir.path().join("store");
    let m = measure(
        &[
            "--store",
            store.to_str().unwrap(),
            "import",
            input.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(m.code, 1, "{m:?}");
    assert!(
        m.stderr.contains("endless.jsonl:1:") && m.stderr.contains("longer than"),
        "the error names the line and says why: {m:?}"
    );
    let bound = BASE + 2 * MAX_IMPORT_LINE_LEN as u64;
    assert_under("import of a 2 GiB line", &m, bound, size);
}

/// How many events of the largest size the PostgreSQL tests write.
fn big_events() -> usize {
    std::env::var("TIDINGS_RSS_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

/// An export file of `n` events of `MAX_PAYLOAD_LEN` bytes (each payload a JSON string, written
/// verbatim), then, with `state`, a checkpoint with `n` state entries of that size (base64).
/// Returns the payload bytes it holds.
fn write_export(path: &Path, n: usize, state: bool) -> u64 {
    let mut f = BufWriter::new(File::create(path).unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
        - 1_000_000;
    let json_payload = format!("\"{}\"", "p".repeat(MAX_PAYLOAD_LEN - 2));
    for i in 0..n {
        writeln!(
            f,
            r#"{{"kind":"event","position":{},"stream_id":"big-{i}","stream_version":1,"category":"big","event_type":"Big","schema_version":1,"event_id":"{}","correlation_id":null,"causation_id":null,"timestamp_micros":{},"payload_size":{MAX_PAYLOAD_LEN},"payload_encoding":"json","payload":{json_payload}}}"#,
            i + 1,
            uuid::Uuid::new_v4(),
            now + i as u64,
        )
        .unwrap();
    }
    if state {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        writeln!(f, r#"{{"kind":"checkpoint","name":"wide","position":{n}}}"#).unwrap();
        let value = b64.encode(vec![0u8; MAX_PAYLOAD_LEN]);
        for i in 0..n {
            let key = b64.encode(format!("key-{i:06}"));
            writeln!(
                f,
                r#"{{"kind":"state","name":"wide","key":"{key}","value_encoding":"base64","value":"{value}"}}"#,
            )
            .unwrap();
        }
    }
    f.flush().unwrap();
    (n as u64) * MAX_PAYLOAD_LEN as u64 * if state { 2 } else { 1 }
}

/// Import, then `log` (with and without payloads), `read`, `export` and `verify` over `n` events
/// of the largest size and `n` state entries of that size, on PostgreSQL: each peak stays under
/// a bound from the limits, below the input's size.
#[test]
fn import_log_export_and_verify_of_the_largest_events_stay_within_the_limits() {
    let Some(schema) = Schema::fresh("import_log_export_and_verify_of_the_largest_events") else {
        return;
    };
    let n = big_events();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.jsonl");
    let payload_bytes = write_export(&input, n, true);
    let url = support::pg::url();
    let store = ["--store", url.as_str(), "--schema", schema.name()];
    let run = |args: &[&str]| {
        let all: Vec<&str> = store.iter().chain(args).copied().collect();
        let m = measure(&all, dir.path());
        assert_eq!(m.code, 0, "tidings {args:?}: {m:?}");
        m
    };
    let line = MAX_IMPORT_LINE_LEN as u64;
    let largest = MAX_PAYLOAD_LEN as u64;
    // The line, its parsed copy and its decoded payload; a batch (4 MiB plus one event) and its
    // encoding for the server.
    let import_bound = BASE + 2 * line + largest + 2 * (4 * MIB + largest);
    let m = run(&["import", input.to_str().unwrap()]);
    assert_under("import", &m, import_bound, payload_bytes);
    std::fs::remove_file(&input).unwrap();

    // A page (less than READ_PAGE_BYTES plus one event) as rows, as events, and one event's
    // output line.
    let page = READ_PAGE_BYTES as u64 + largest;
    let read_bound = BASE + 2 * page + 2 * largest;
    let m = run(&["log"]);
    assert_under("log", &m, read_bound, payload_bytes);
    let m = run(&["--payload", "log"]);
    assert_under("log --payload", &m, read_bound, payload_bytes);
    let m = run(&["--json", "--payload", "log"]);
    assert_under("log --json --payload", &m, read_bound, payload_bytes);
    let m = run(&["read", "big-0"]);
    assert_under("read", &m, read_bound, payload_bytes);
    let m = run(&["verify"]);
    assert_under("verify", &m, read_bound, payload_bytes);
    let output = dir.path().join("export.jsonl");
    let m = run(&["export", "-o", output.to_str().unwrap()]);
    assert_under("export", &m, read_bound, payload_bytes);
    let exported = std::fs::metadata(&output).unwrap().len();
    assert!(
        exported > payload_bytes,
        "the export holds every event and state entry ({exported} bytes)"
    );
}
