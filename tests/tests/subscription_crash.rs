//! Crash tests of durable subscriptions: a child process (`src/bin/subscription_child.rs`) runs
//! an at-least-once handler ("alo", whose effect is a `SEEN <position>` line on stdout) and an
//! exactly-once projection ("eo", counting events and summing positions in its subscription
//! state) and is killed with SIGKILL, during catch-up or during live processing with appends
//! racing. After every kill the store must show:
//!
//! - "eo": its state counts exactly the order and payment events at or below its checkpoint
//!   (count, sum of positions, per-stream counts): nothing missed, nothing counted twice;
//! - "alo": every order and payment event at or below its checkpoint was SEEN by some run
//!   (nothing skipped), and each run SEEN exactly the events after the checkpoint it started
//!   from, in order, without a gap;
//! - every append the child acknowledged is in the store, whole.
//!
//! The projection also prints `EO <position>` for each event it handles, which shows that it too
//! handled exactly the events after its checkpoint, in order, and how much handled but
//! uncommitted work the kills threw away (and the next run redid without counting it twice).
//! Each test ends with a run left to catch up to the head, after which both checkpoints are at
//! the head and every event was SEEN and counted.
//!
//! `TIDINGS_SUB_CRASH_CYCLES` (default 10) sets the number of kills per test; run with
//! `--nocapture` to see the figures, and with `TIDINGS_SUB_CRASH_TRACE=1` for a line per kill.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::Rng;
use tidings::store::{EventStore, ExpectedVersion, Filter, SledEventStore};
use tidings::DomainEvent;
use tidings_tests::domain::{mixed_event, OrderEvent, PaymentEvent};
use tidings_tests::support::{close, env_or, open, runtime, LineChild};

const CHILD: &str = env!("CARGO_BIN_EXE_subscription_child");

/// Appends `count` mixed events from 16 concurrent tasks, each appending 1 to 3 events at a time
/// to one of 4 streams (concurrent appends share the store's group commits, which keeps it
/// quick).
async fn populate(store: &SledEventStore, count: u64) {
    const TASKS: u64 = 16;
    let base = store.head();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let (mut i, end) = (task * count / TASKS, (task + 1) * count / TASKS);
                while i < end {
                    let n = (1 + (i + task) % 3).min(end - i);
                    let events = (i..i + n).map(|k| mixed_event(base + k)).collect();
                    let stream = format!("bulk-{}", task % 4);
                    store
                        .append(&stream, ExpectedVersion::Any, events)
                        .await
                        .unwrap();
                    i += n;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.head(), base + count);
}

/// When the parent kills the child.
/// The longest a child may take to print `STARTED` before a [`Until::Delay`] kill comes anyway.
const START_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Until {
    /// This long after it printed `STARTED` (its store open and both subscriptions started),
    /// so that where the kill lands does not depend on how long the open took on a loaded
    /// machine; or after [`START_LIMIT`] without `STARTED` (unless it exits first).
    Delay(Duration),
    /// Once it prints `COMMITTED` (both subscriptions committed at the head they started at),
    /// waiting at most this long.
    Committed(Duration),
}

/// What a killed child did.
#[derive(Debug, Default)]
struct Run {
    status: Option<ExitStatus>,
    /// Positions of the `SEEN` lines ("alo"), in order.
    seen: Vec<u64>,
    /// Positions of the `EO` lines ("eo"), in order.
    eo_handled: Vec<u64>,
    /// Acknowledged appends: first and last position.
    acks: Vec<(u64, u64)>,
    /// Whether it printed `STARTED`, `LIVE alo`, `LIVE eo` and `COMMITTED`.
    started: bool,
    alo_live: bool,
    eo_live: bool,
    committed: bool,
    stderr: String,
}

impl Run {
    fn killed(&self) -> bool {
        self.status.and_then(|s| s.signal()) == Some(libc::SIGKILL)
    }

    /// Parses one whole line of the child's stdout.
    fn take(&mut self, line: &str) {
        let fields: Vec<&str> = line.split(' ').collect();
        let number = |s: &str| -> u64 { s.parse().unwrap_or_else(|_| panic!("line {line:?}")) };
        match fields[..] {
            ["SEEN", p] => self.seen.push(number(p)),
            ["EO", p] => self.eo_handled.push(number(p)),
            ["ACK", first, last] => self.acks.push((number(first), number(last))),
            ["STARTED", _] => self.started = true,
            ["LIVE", "alo", _] => self.alo_live = true,
            ["LIVE", "eo", _] => self.eo_live = true,
            ["COMMITTED", _] => self.committed = true,
            ["FAILED", ..] => panic!("a subscription failed in subscription_child: {line}"),
            _ => panic!("unexpected line from subscription_child: {line:?}"),
        }
    }
}

/// Runs the child on `dir` (`append`ing if asked) and SIGKILLs it as `until` says
/// (`Child::kill` sends SIGKILL on Unix; [`Run::killed`] checks the signal).
fn run_child(dir: &Path, append: bool, until: Until, partitions: usize) -> Run {
    let mut command = Command::new(CHILD);
    command.arg("run").arg(dir);
    command.env("TIDINGS_CHILD_PARTITIONS", partitions.to_string());
    if append {
        command.arg("append");
    }
    let mut child = LineChild::spawn(&mut command, "subscription_child");
    let mut run = Run::default();
    let mut deadline = Instant::now()
        + match until {
            Until::Delay(_) => START_LIMIT,
            Until::Committed(d) => d,
        };
    let mut armed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match child
            .lines
            .recv_timeout(left.min(Duration::from_millis(20)))
        {
            Ok(line) => {
                run.take(&line);
                if run.committed && matches!(until, Until::Committed(_)) {
                    break;
                }
                if let (Until::Delay(delay), true, false) = (&until, run.started, armed) {
                    armed = true;
                    deadline = Instant::now() + *delay;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if child.process.try_wait().unwrap().is_some() {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let ended = child.kill();
    run.status = Some(ended.status);
    // The lines written before the kill are still in the pipe.
    for line in &ended.rest {
        run.take(line);
    }
    run.stderr = ended.stderr;
    run
}

/// The order and payment events of the log (what both handlers get), read independently of the
/// subscriptions and kept up to date as the log grows.
#[derive(Default)]
struct Log {
    /// Every position up to here has been read.
    read_to: u64,
    /// `(position, stream)` of each order and payment event, in order.
    handled: Vec<(u64, String)>,
}

impl Log {
    async fn refresh(&mut self, store: &SledEventStore) {
        let filter = Filter::all().event_types(
            OrderEvent::EVENT_TYPES
                .iter()
                .chain(PaymentEvent::EVENT_TYPES)
                .copied(),
        );
        loop {
            let page = store.read_all(self.read_to + 1, 2048, &filter).await;
            let page = page.unwrap();
            let end = page.is_end();
            for e in page.events {
                assert!(e.position > self.read_to);
                self.handled.push((e.position, e.stream_id.to_string()));
            }
            self.read_to = page.next_position - 1;
            if end {
                break;
            }
        }
        assert_eq!(self.read_to, store.head());
    }

    /// How many handled events are at or below `position`.
    fn upto(&self, position: u64) -> usize {
        self.handled.partition_point(|(p, _)| *p <= position)
    }
}

/// What the checks have established so far, across runs.
#[derive(Default)]
struct Checker {
    /// Partitioned workers per subscription in the child (0 or 1: none): events of different
    /// streams may then be handled out of order, and "eo" keeps only per-stream keys.
    partitions: usize,
    log: Log,
    /// The checkpoints after the last kill.
    alo: u64,
    eo: u64,
    /// Every position SEEN by any run, and the number of SEEN lines.
    seen: HashSet<u64>,
    seen_lines: u64,
    /// Events "eo" handled in a run but had not committed when it was killed: work the crash
    /// threw away, which the next run redid (and must not count twice).
    eo_redone: u64,
    /// How many kills left "alo" resp. "eo" with handled but uncommitted events.
    alo_cut: u64,
    eo_cut: u64,
    /// Every acknowledged append.
    acks: Vec<(u64, u64)>,
}

/// A value of the "eo" projection's state.
async fn eo_value(store: &SledEventStore, key: &[u8]) -> u64 {
    let value = store.load_state("eo", key).await.unwrap();
    value.map_or(0, |v| serde_json::from_slice(&v).unwrap())
}

/// The "eo" projection's per-stream values under `prefix`, by stream.
async fn eo_map(store: &SledEventStore, prefix: &[u8]) -> BTreeMap<String, u64> {
    let state = store.scan_state("eo", prefix, b"", 100_000).await;
    state
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let k = String::from_utf8(k[prefix.len()..].to_vec()).unwrap();
            (k, serde_json::from_slice(&v).unwrap())
        })
        .collect()
}

impl Checker {
    /// Checks that the run's `handled` positions (of subscription `name`) are exactly the events
    /// after its starting checkpoint `from`, in order and without a gap, and that its checkpoint
    /// after the kill, `to`, does not pass an event the run did not handle. Returns how many
    /// events it handled beyond `to`.
    fn check_handled(&self, name: &str, handled: &[u64], from: u64, to: u64, cycle: u64) -> u64 {
        if self.partitions > 1 {
            return self.check_handled_by_stream(name, handled, from, to, cycle);
        }
        let after = &self.log.handled[self.log.upto(from)..];
        assert!(
            handled.len() <= after.len(),
            "cycle {cycle}: {name} handled {} events, only {} are after its checkpoint {from}",
            handled.len(),
            after.len()
        );
        for (k, (got, (expected, _))) in handled.iter().zip(after).enumerate() {
            assert_eq!(
                got, expected,
                "cycle {cycle}: event {k} {name} handled from its checkpoint {from}"
            );
        }
        let covered = self.log.upto(to) - self.log.upto(from);
        assert!(
            covered <= handled.len(),
            "cycle {cycle}: {name}'s checkpoint {to} covers {covered} events, the run handled {}",
            handled.len()
        );
        (handled.len() - covered) as u64
    }

    /// [`check_handled`](Self::check_handled) for partitioned workers: the run handled, per
    /// stream, exactly the stream's events after `from`, in order and without a gap (streams
    /// interleave freely), and every event up to its checkpoint `to` is among them.
    fn check_handled_by_stream(
        &self,
        name: &str,
        handled: &[u64],
        from: u64,
        to: u64,
        cycle: u64,
    ) -> u64 {
        let after = &self.log.handled[self.log.upto(from)..];
        let mut expected: HashMap<&str, VecDeque<u64>> = HashMap::new();
        let mut stream_of: HashMap<u64, &str> = HashMap::new();
        for (position, stream) in after {
            expected.entry(stream).or_default().push_back(*position);
            stream_of.insert(*position, stream);
        }
        for &position in handled {
            let stream = stream_of.get(&position).unwrap_or_else(|| {
                panic!("cycle {cycle}: {name} handled {position}, not after its checkpoint {from}")
            });
            let next = expected.get_mut(stream).and_then(VecDeque::pop_front);
            assert_eq!(
                next,
                Some(position),
                "cycle {cycle}: {name} handled {stream}'s events out of order or with a gap"
            );
        }
        let handled_set: HashSet<u64> = handled.iter().copied().collect();
        let covered = &after[..self.log.upto(to) - self.log.upto(from)];
        let unhandled: Vec<u64> = covered
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !handled_set.contains(p))
            .take(10)
            .collect();
        assert!(
            unhandled.is_empty(),
            "cycle {cycle}: {name}'s checkpoint {to} passes events the run did not handle: {unhandled:?}"
        );
        (handled.len() - covered.len()) as u64
    }

    /// Checks the store after `run` was killed (see the file's doc).
    async fn check(&mut self, store: &SledEventStore, run: &Run, cycle: u64) {
        self.log.refresh(store).await;
        let head = store.head();
        let alo = store.load_checkpoint("alo").await.unwrap().unwrap_or(0);
        let eo = store.load_checkpoint("eo").await.unwrap().unwrap_or(0);
        assert!(
            alo >= self.alo && eo >= self.eo,
            "cycle {cycle}: a checkpoint went back: alo {} -> {alo}, eo {} -> {eo}",
            self.alo,
            self.eo
        );
        assert!(alo <= head && eo <= head, "cycle {cycle}: beyond the head");

        // "alo": the run SEEN exactly the events after its checkpoint; nothing up to its new
        // checkpoint was skipped by any run.
        let uncommitted = self.check_handled("alo", &run.seen, self.alo, alo, cycle);
        self.alo_cut += u64::from(uncommitted > 0);
        self.seen.extend(&run.seen);
        self.seen_lines += run.seen.len() as u64;
        let missed: Vec<u64> = self.log.handled[..self.log.upto(alo)]
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !self.seen.contains(p))
            .take(10)
            .collect();
        assert!(
            missed.is_empty(),
            "cycle {cycle}: skipped below the alo checkpoint {alo}: {missed:?}"
        );

        // "eo": it handled events in order from its checkpoint, and its state reflects exactly
        // the events up to its new checkpoint, each once.
        let redone = self.check_handled("eo", &run.eo_handled, self.eo, eo, cycle);
        self.eo_redone += redone;
        self.eo_cut += u64::from(redone > 0);
        let counted = &self.log.handled[..self.log.upto(eo)];
        let sum: u64 = counted.iter().map(|(p, _)| p).sum();
        let mut per_stream: BTreeMap<String, u64> = BTreeMap::new();
        let mut sum_per_stream: BTreeMap<String, u64> = BTreeMap::new();
        for (position, stream) in counted {
            *per_stream.entry(stream.clone()).or_default() += 1;
            *sum_per_stream.entry(stream.clone()).or_default() += position;
        }
        if self.partitions <= 1 {
            assert_eq!(
                (
                    eo_value(store, b"count").await,
                    eo_value(store, b"sum").await
                ),
                (counted.len() as u64, sum),
                "cycle {cycle}: eo (count, sum) at checkpoint {eo}"
            );
        }
        assert_eq!(
            eo_map(store, b"stream/").await,
            per_stream,
            "cycle {cycle}: eo per-stream counts"
        );
        assert_eq!(
            eo_map(store, b"sum/").await,
            sum_per_stream,
            "cycle {cycle}: eo per-stream sums of positions"
        );

        // Acknowledged appends are durable and whole.
        for &(first, last) in &run.acks {
            assert!(last <= head, "cycle {cycle}: ACK {first}..={last} lost");
            let count = (last + 1 - first) as usize;
            let page = store.read_all(first, count, &Filter::all()).await.unwrap();
            let positions: Vec<u64> = page.events.iter().map(|e| e.position).collect();
            assert_eq!(
                positions,
                (first..=last).collect::<Vec<_>>(),
                "cycle {cycle}"
            );
            assert!(
                page.events
                    .iter()
                    .all(|e| e.stream_id == page.events[0].stream_id),
                "cycle {cycle}: append {first}..={last} spans streams"
            );
        }
        self.acks.extend(&run.acks);
        if tracing() {
            eprintln!(
                "cycle {cycle}: head {head}; alo {} -> {alo} SEEN {} (to {:?}, {uncommitted} \
                 uncommitted); eo {} -> {eo} handled {} ({redone} uncommitted); {} acks",
                self.alo,
                run.seen.len(),
                run.seen.last(),
                self.eo,
                run.eo_handled.len(),
                run.acks.len()
            );
        }
        (self.alo, self.eo) = (alo, eo);
    }

    /// SEEN lines beyond the first for their position: what at-least-once repeated.
    fn redeliveries(&self) -> u64 {
        self.seen_lines - self.seen.len() as u64
    }

    /// The figures for the summary line.
    fn summary(&self) -> String {
        format!(
            "{} order/payment events; alo: {} SEEN lines, {} redeliveries ({} kills cut it \
             between commits); eo: {} handled events thrown away and redone ({} kills cut it)",
            self.log.handled.len(),
            self.seen_lines,
            self.redeliveries(),
            self.alo_cut,
            self.eo_redone,
            self.eo_cut
        )
    }
}

/// Where the kills landed: before `STARTED`, or with each subscription catching up (before it
/// had handled every event up to the head it started at) or live.
#[derive(Debug, Default)]
struct Kills {
    before_start: u64,
    both_catching_up: u64,
    only_eo_catching_up: u64,
    only_alo_catching_up: u64,
    both_live: u64,
}

impl Kills {
    fn add(&mut self, run: &Run) {
        match (run.started, run.alo_live, run.eo_live) {
            (false, _, _) => self.before_start += 1,
            (true, false, false) => self.both_catching_up += 1,
            (true, true, false) => self.only_eo_catching_up += 1,
            (true, false, true) => self.only_alo_catching_up += 1,
            (true, true, true) => self.both_live += 1,
        }
    }

    /// Kills while at least one subscription was catching up.
    fn catching_up(&self) -> u64 {
        self.both_catching_up + self.only_eo_catching_up + self.only_alo_catching_up
    }
}

/// Runs the child once more until both subscriptions have committed at the head, kills it, and
/// checks that the whole log is covered: "alo" SEEN every event, "eo" counted every one once.
fn finish(dir: &Path, rt: &tokio::runtime::Runtime, checker: &mut Checker, cycle: u64) {
    let run = run_child(
        dir,
        false,
        Until::Committed(Duration::from_secs(30)),
        checker.partitions,
    );
    assert!(
        run.committed && run.killed(),
        "the last run did not catch up ({:?}): {}",
        run.status,
        run.stderr
    );
    let store = open(dir);
    rt.block_on(checker.check(&store, &run, cycle));
    let head = store.head();
    assert_eq!((checker.alo, checker.eo), (head, head), "not caught up");
    assert_eq!(checker.seen.len(), checker.log.handled.len());
    // Every acknowledged append of every run is still there.
    for &(first, last) in &checker.acks {
        let page = rt
            .block_on(store.read_all(first, 1, &Filter::all()))
            .unwrap();
        assert_eq!(page.events.first().map(|e| e.position), Some(first));
        assert!(last <= head);
    }
    close(store);
}

/// Whether to print a line per cycle (`TIDINGS_SUB_CRASH_TRACE=1`).
fn tracing() -> bool {
    std::env::var_os("TIDINGS_SUB_CRASH_TRACE").is_some()
}

/// Kills the child during catch-up: the log is big enough (and topped up between kills) that
/// both subscriptions are still catching up on it when the kill comes.
#[test]
fn kill_during_catch_up_skips_nothing_and_double_counts_nothing() {
    const INITIAL: u64 = 20_000;
    /// Before a cycle the log is topped up by this much if either subscription has less than
    /// this left to catch up on.
    const BACKLOG: u64 = 10_000;
    let cycles = env_or("TIDINGS_SUB_CRASH_CYCLES", 10);
    let budget = Duration::from_secs((cycles * 4).max(40));
    let (dir, rt, started) = (tempfile::tempdir().unwrap(), runtime(), Instant::now());
    let store = open(dir.path());
    rt.block_on(populate(&store, INITIAL));
    close(store);
    let mut checker = Checker::default();
    let (mut kills, mut done, mut appended) = (Kills::default(), 0, INITIAL);
    while done < cycles && started.elapsed() < budget {
        let delay = Duration::from_millis(rand::thread_rng().gen_range(100..=2000));
        let run = run_child(dir.path(), false, Until::Delay(delay), 1);
        assert!(
            run.killed(),
            "cycle {done}: subscription_child ended by itself ({:?}): {}",
            run.status,
            run.stderr
        );
        kills.add(&run);
        if tracing() {
            eprintln!("cycle {done}: killed after {delay:?}");
        }
        let store = open(dir.path());
        rt.block_on(checker.check(&store, &run, done));
        if store.head() - checker.alo.min(checker.eo) < BACKLOG {
            rt.block_on(populate(&store, BACKLOG));
            appended += BACKLOG;
        }
        close(store);
        done += 1;
    }
    let cycle_time = started.elapsed();
    finish(dir.path(), &rt, &mut checker, done);
    eprintln!(
        "catch-up: {done} of {cycles} cycles in {cycle_time:.1?} ({:.1?} with the last run to \
         the head): kills {kills:?}; {appended} events, {}",
        started.elapsed(),
        checker.summary()
    );
    assert!(
        done >= cycles.min(5),
        "only {done} cycles fit in {budget:?}"
    );
    assert!(
        kills.catching_up() * 2 >= done,
        "too few kills landed during catch-up: {kills:?}"
    );
}

/// Kills the child while it appends and both subscriptions follow the log live.
#[test]
fn kill_during_live_processing_skips_nothing_and_double_counts_nothing() {
    kill_during_live_processing(1, 1_000);
}

/// Kills the child at random moments while both subscriptions run with 4 partitioned workers,
/// catching up on a backlog and then following appends live: per stream nothing is skipped or
/// reordered, no checkpoint passes an unhandled event, and the exactly-once projection (one
/// set of keys per stream, so that the partitions work in parallel) counts every event once.
#[test]
fn partitioned_workers_killed_at_random_moments_skip_nothing_and_double_count_nothing() {
    kill_during_live_processing(4, 6_000);
}

fn kill_during_live_processing(partitions: usize, initial: u64) {
    let cycles = env_or("TIDINGS_SUB_CRASH_CYCLES", 10);
    let budget = Duration::from_secs((cycles * 3).max(30));
    let (dir, rt, started) = (tempfile::tempdir().unwrap(), runtime(), Instant::now());
    let store = open(dir.path());
    rt.block_on(populate(&store, initial));
    close(store);
    let mut checker = Checker {
        partitions,
        ..Checker::default()
    };
    let (mut kills, mut done) = (Kills::default(), 0);
    while done < cycles && started.elapsed() < budget {
        let delay = Duration::from_millis(rand::thread_rng().gen_range(200..=1500));
        let run = run_child(dir.path(), true, Until::Delay(delay), partitions);
        assert!(
            run.killed(),
            "cycle {done}: subscription_child ended by itself ({:?}): {}",
            run.status,
            run.stderr
        );
        kills.add(&run);
        if tracing() {
            eprintln!("cycle {done}: killed after {delay:?}");
        }
        let store = open(dir.path());
        rt.block_on(checker.check(&store, &run, done));
        close(store);
        done += 1;
    }
    let cycle_time = started.elapsed();
    finish(dir.path(), &rt, &mut checker, done);
    let acked: u64 = checker.acks.iter().map(|(a, b)| b + 1 - a).sum();
    eprintln!(
        "live, {partitions} partition(s): {done} of {cycles} cycles in {cycle_time:.1?} ({:.1?} with the last run to the \
         head): kills {kills:?}; {} appends acknowledged ({acked} events), head {}, {}",
        started.elapsed(),
        checker.acks.len(),
        checker.log.read_to,
        checker.summary()
    );
    assert!(
        done >= cycles.min(5),
        "only {done} cycles fit in {budget:?}"
    );
    if partitions <= 1 {
        assert!(
            kills.both_live * 2 >= done,
            "too few kills landed during live processing: {kills:?}"
        );
    }
}
