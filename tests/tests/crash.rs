//! Crash tests: a child process (`src/bin/crash_child.rs`) that appends to or opens a store is
//! killed with SIGKILL, and the store must open again with every acknowledged event, whole
//! appends only, gap-free positions and versions, and nothing damaged.
//!
//! `TIDINGS_CRASH_CYCLES` (default 20) and `TIDINGS_CRASH_OPEN_CYCLES` (default 30) set the
//! number of kills; run with `--nocapture` to see the figures.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use rand::Rng;
use tidings::store::{EventData, EventStore, ExpectedVersion, Filter, SledEventStore};
use tidings_tests::support::{close, env_or, open, parse_payload, payload, runtime, LineChild};

const CHILD: &str = env!("CARGO_BIN_EXE_crash_child");

/// An acknowledged append.
#[derive(Clone, Debug)]
struct Ack {
    stream: String,
    first_version: u64,
    count: usize,
    first_position: u64,
}

/// What a killed child did.
struct Run {
    status: ExitStatus,
    acks: Vec<Ack>,
    opened: bool,
    stderr: String,
}

impl Run {
    fn killed(&self) -> bool {
        self.status.signal() == Some(libc::SIGKILL)
    }
}

/// Runs the child in `mode` on `dir` and SIGKILLs it after `delay` unless it exits first
/// (`Child::kill` sends SIGKILL on Unix; [`Run::killed`] checks the signal).
fn run_child(mode: &str, dir: &Path, delay: Duration) -> Run {
    let mut child = LineChild::spawn(Command::new(CHILD).arg(mode).arg(dir), "crash_child");
    let deadline = Instant::now() + delay;
    while Instant::now() < deadline && child.process.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(1).min(deadline - Instant::now()));
    }
    // Whole lines only: a line cut by the kill has no newline.
    let ended = child.kill();
    let mut acks = Vec::new();
    let mut opened = false;
    for line in &ended.rest {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["ACK", stream, v, n, p] => acks.push(Ack {
                stream: stream.to_owned(),
                first_version: v.parse().unwrap(),
                count: n.parse().unwrap(),
                first_position: p.parse().unwrap(),
            }),
            ["OPENED", _] => opened = true,
            _ => panic!("unexpected line from crash_child: {line:?}"),
        }
    }
    Run {
        status: ended.status,
        acks,
        opened,
        stderr: ended.stderr,
    }
}

/// How often, and for how long at most, [`close`] had to wait.
#[derive(Default)]
struct Lingering(usize, Duration);

impl std::fmt::Display for Lingering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} times (longest {:?})", self.0, self.1)
    }
}

impl Lingering {
    fn add(&mut self, waited: Duration) {
        if waited >= Duration::from_millis(1) {
            *self = Lingering(self.0 + 1, self.1.max(waited));
        }
    }
}

/// Appends `count` self-describing events to `stream` from this process.
async fn append(store: &SledEventStore, stream: &str, count: usize) -> Ack {
    let current = store.stream_version(stream).await.unwrap();
    let events = (0..count)
        .map(|i| EventData::new("T", payload(stream, current + 1 + i as u64, i, count)))
        .collect();
    let result = store
        .append(stream, ExpectedVersion::Exact(current), events)
        .await
        .unwrap();
    Ack {
        stream: stream.to_owned(),
        first_version: current + 1,
        count,
        first_position: result.first_position,
    }
}

/// What [`check_store`] has checked: the log up to `head`, and each stream's version there.
#[derive(Clone, Debug, Default)]
struct Checked {
    head: u64,
    versions: HashMap<String, u64>,
}

/// Checks the log after `since` (from the start when `since` is empty, and then `verify` must be
/// clean too): positions run on to the head without gaps; every payload is what its own
/// description says; every append is whole; stream versions are gap-free and match
/// `stream_version`; every append in `acks` is there, at its position.
async fn check_store(store: &SledEventStore, acks: &[Ack], since: &Checked) -> Checked {
    let head = store.head();
    if since.head == 0 {
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "verify: {:?}", report.problems);
        assert_eq!(report.head, head);
    }
    let mut acked: HashMap<u64, (&str, u64, usize, usize)> = HashMap::new();
    for a in acks {
        for i in 0..a.count {
            let expected = (a.stream.as_str(), a.first_version + i as u64, i, a.count);
            acked.insert(a.first_position + i as u64, expected);
        }
    }
    let mut versions = since.versions.clone();
    // The event before, when it is not the last of its append.
    let mut unfinished: Option<(String, usize, usize)> = None;
    let mut position = since.head;
    loop {
        let page = store.read_all(position + 1, 2048, &Filter::all()).await;
        let page = page.unwrap();
        for e in &page.events {
            position += 1;
            assert_eq!(e.position, position, "gap in the log");
            let (stream, version, index, count) = parse_payload(&e.payload)
                .unwrap_or_else(|| panic!("garbled payload at {position}: {:?}", e.payload));
            let expected = payload(&stream, version, index, count);
            assert_eq!(
                e.payload,
                expected.as_bytes(),
                "wrong payload at {position}"
            );
            assert_eq!(
                (e.stream_id.as_str(), e.stream_version),
                (stream.as_str(), version)
            );
            let last = versions.entry(stream.clone()).or_default();
            assert_eq!(version, *last + 1, "version gap in {stream} at {position}");
            *last = version;
            match unfinished.take() {
                Some(prev) => assert_eq!(prev, (stream.clone(), index - 1, count), "torn append"),
                None => assert_eq!(index, 0, "append without its start at {position}"),
            }
            if index + 1 < count {
                unfinished = Some((stream.clone(), index, count));
            }
            if let Some(expected) = acked.remove(&position) {
                assert_eq!(expected, (stream.as_str(), version, index, count));
            }
        }
        if page.is_end() || page.events.is_empty() {
            break;
        }
    }
    assert_eq!(position, head, "the log does not reach the head {head}");
    assert_eq!(unfinished, None, "the last append is partial");
    assert!(acked.is_empty(), "acknowledged events lost: {acked:?}");
    for (stream, version) in &versions {
        assert_eq!(store.stream_version(stream).await.unwrap(), *version);
    }
    Checked { head, versions }
}

#[test]
fn kill_during_appends_loses_no_acknowledged_event() {
    let cycles = env_or("TIDINGS_CRASH_CYCLES", 20);
    let budget = Duration::from_secs((cycles * 3 / 2).max(30));
    let (dir, rt, started) = (tempfile::tempdir().unwrap(), runtime(), Instant::now());
    let mut acks: Vec<Ack> = Vec::new();
    let (mut checked, mut full_at, mut full_checks, mut done) = (Checked::default(), 0, 0, 0);
    let mut lingering = Lingering::default();
    while done < cycles && started.elapsed() < budget {
        let delay = Duration::from_millis(rand::thread_rng().gen_range(30..=400));
        let run = run_child("append", dir.path(), delay);
        assert!(
            run.killed(),
            "cycle {done}: crash_child ended by itself ({}): {}",
            run.status,
            run.stderr
        );
        let new_acks = acks.len();
        acks.extend(run.acks);
        done += 1;
        // A debug build checks ~30k events a second: check everything (and verify) while the
        // log is small, then each time it has grown by a quarter; in between, what is new.
        let store = open(dir.path());
        let now = if checked.head < 50_000 || checked.head >= full_at * 5 / 4 {
            (full_at, full_checks) = (checked.head, full_checks + 1);
            rt.block_on(check_store(&store, &acks, &Checked::default()))
        } else {
            rt.block_on(check_store(&store, &acks[new_acks..], &checked))
        };
        lingering.add(close(store));
        assert!(now.head >= checked.head, "events seen before are gone");
        checked = now;
    }
    let store = open(dir.path());
    let head = rt
        .block_on(check_store(&store, &acks, &Checked::default()))
        .head;
    full_checks += 1;
    println!(
        "{done} of {cycles} kills during appends in {:.1?}: {} appends acknowledged, head {head}, \
         {full_checks} full checks; sled's lock outlived the store {lingering}",
        started.elapsed(),
        acks.len()
    );
    assert!(
        done >= cycles.min(5),
        "only {done} cycles fit in {budget:?}"
    );
}

#[test]
fn kill_during_open_never_leaves_an_unopenable_store() {
    let cycles = env_or("TIDINGS_CRASH_OPEN_CYCLES", 30);
    let budget = Duration::from_secs(cycles.max(30));
    let (dir, rt, started) = (tempfile::tempdir().unwrap(), runtime(), Instant::now());
    let store = open(dir.path());
    let mut acks = Vec::new();
    for i in 0..40 {
        acks.push(rt.block_on(append(&store, &format!("open-{}", i % 5), 1 + i % 4)));
    }
    let mut lingering = Lingering::default();
    lingering.add(close(store));
    // A debug build takes longer than 30 ms to start and open: kill anywhere up to a bit past
    // what one open takes here, so that every phase of open gets hit and some opens finish.
    let timer = Instant::now();
    let run = run_child("open", dir.path(), Duration::from_secs(10));
    assert!(run.opened && run.status.success(), "open: {}", run.stderr);
    let window = (timer.elapsed().as_millis() as u64 * 5 / 4).max(30);
    let (mut before_opened, mut after_opened, mut finished, mut done) = (0, 0, 0, 0);
    let mut torn_left = 0;
    while done < cycles && started.elapsed() < budget {
        let delay = Duration::from_millis(rand::thread_rng().gen_range(0..=window));
        let run = run_child("open", dir.path(), delay);
        torn_left += generating_files(dir.path());
        match (run.killed(), run.opened) {
            (true, false) => before_opened += 1,
            (true, true) => after_opened += 1,
            (false, _) if run.status.success() && run.opened => finished += 1,
            _ => panic!("cycle {done}: open failed ({}): {}", run.status, run.stderr),
        }
        // Check, and move the log on so that the next open has a sled snapshot to write.
        let store = open(dir.path());
        rt.block_on(check_store(&store, &acks, &Checked::default()));
        acks.push(rt.block_on(append(&store, &format!("open-{}", done % 5), 2)));
        lingering.add(close(store));
        done += 1;
    }
    let store = open(dir.path());
    let head = rt
        .block_on(check_store(&store, &acks, &Checked::default()))
        .head;
    println!(
        "{done} of {cycles} kills during open (0-{window} ms) in {:.1?}: {before_opened} \
         before OPENED, {after_opened} after it, {finished} finished first; \
         {torn_left} sled snapshot files left half-made; head {head}; sled's lock outlived \
         the store {lingering}",
        started.elapsed()
    );
    assert!(
        done >= cycles.min(5),
        "only {done} cycles fit in {budget:?}"
    );
}

/// How many `snap.*.generating` files (a sled snapshot being written) are in `dir`.
fn generating_files(dir: &Path) -> usize {
    let names = std::fs::read_dir(dir).unwrap();
    let names = names.map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
    names
        .filter(|n| n.starts_with("snap.") && n.ends_with(".generating"))
        .count()
}

/// The `snap.<16 hex digits>` file sled wrote in `dir`, if any.
fn find_snapshot(dir: &Path) -> Option<(PathBuf, u64)> {
    std::fs::read_dir(dir).unwrap().find_map(|entry| {
        let path = entry.unwrap().path();
        let name = path.file_name()?.to_str()?;
        let hex = name.strip_prefix("snap.").filter(|h| h.len() == 16)?;
        let lsn = u64::from_str_radix(hex, 16).ok()?;
        Some((path, lsn))
    })
}

/// A copy of the store in `from`, plus a file `name` holding `bytes`.
fn copy_with(from: &Path, name: &str, bytes: &[u8]) -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(from, dir.path());
    std::fs::write(dir.path().join(name), bytes).unwrap();
    dir
}

#[test]
fn torn_snapshot_file_from_an_interrupted_open_is_recovered() {
    let (original, rt) = (tempfile::tempdir().unwrap(), runtime());
    let store = open(original.path());
    let mut acks = Vec::new();
    for i in 0..60 {
        acks.push(rt.block_on(append(&store, &format!("torn-{}", i % 5), 1 + i % 4)));
    }
    drop(store);
    // sled writes its snapshot while recovering at open, when its log moved on since the last.
    for _ in 0..3 {
        if find_snapshot(original.path()).is_some() {
            break;
        }
        drop(open(original.path()));
    }
    let (snap, lsn) = find_snapshot(original.path()).expect("sled wrote no snap.* file");
    // What a kill between sled's write and its sync/rename leaves: a cut `.generating` file,
    // named like sled names it (snapshot.rs: `snap.{:016X}.generating`). sled sorts the file
    // names and takes the last, so a higher LSN makes it the one chosen.
    let torn_name = format!("snap.{:016X}.generating", lsn + 1);
    let full = std::fs::read(&snap).unwrap();
    let torn = &full[..full.len() / 2];

    // The reproduction: plain sled picks the torn file and refuses to open...
    let copy = copy_with(original.path(), &torn_name, torn);
    match sled::open(copy.path()) {
        Err(sled::Error::Corruption { .. }) => {}
        Err(e) => panic!("sled failed, but not with Corruption: {e:?}"),
        Ok(_) => panic!("sled opened a store whose newest snapshot file is torn"),
    }
    // ... while a copy without it opens.
    let snap_name = snap.file_name().unwrap().to_str().unwrap();
    let control = copy_with(original.path(), snap_name, &full);
    drop(sled::open(control.path()).expect("sled opens the store without the torn file"));

    // The store removes the torn file and recovers everything.
    let copy = copy_with(original.path(), &torn_name, torn);
    let store = open(copy.path());
    assert!(
        !copy.path().join(&torn_name).exists(),
        "torn file still there"
    );
    let head = rt
        .block_on(check_store(&store, &acks, &Checked::default()))
        .head;
    assert_eq!(head, acks.iter().map(|a| a.count as u64).sum::<u64>());
}
