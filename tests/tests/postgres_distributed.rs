//! A distributed subscription across processes: several processes (`src/bin/partition_child.rs`)
//! start the same 6-partition subscription on one PostgreSQL schema while a writer appends. The
//! tests start processes, kill them with SIGKILL and stop them gracefully, wait each time until
//! the partitions are shared out again (each process runs exactly the partitions it owns, every
//! partition runs somewhere, once), and then check from the store and from what every process
//! printed:
//!
//! - **nothing skipped**: every event of the log was handled by some process;
//! - **exactly once**: the partitions' committed states count every position once, in the
//!   partition of its stream;
//! - **per-stream order**: under one holder of a partition (one process, one fencing token),
//!   each stream's events were handled in version order without a gap;
//! - **fencing**: per partition, the token committed with each position never goes down with
//!   position, and no two processes handled under the same token.
//!
//! They print how long the partitions took to be shared out again after a SIGKILL and after a
//! graceful stop. `TIDINGS_DISTRIBUTED_CYCLES` (default 1) repeats the kill / join / stop cycle.
//! Needs the test server (`tidings_tests::pg`); skips loudly without one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tidings::store::{EventStore, PostgresEventStore};
use tidings::subscription::{partition_name, partition_of, SubscriptionName};
use tidings_tests::pg::{self, Schema};
use tidings_tests::support::{env_or, LineChild};

const CHILD: &str = env!("CARGO_BIN_EXE_partition_child");

/// The distributed subscription's name in the child.
const NAME: &str = "spread";

/// Its partitions.
const N: u32 = 6;

/// The leases' time-to-live in the children of the rebalancing test.
const TTL: Duration = Duration::from_millis(600);

/// The longest a test waits for a condition that must come true.
const PATIENCE: Duration = Duration::from_secs(90);

/// Streams the writer appends to.
const STREAMS: u64 = 24;

/// One handled event as a child printed it.
#[derive(Clone, Debug)]
struct Handled {
    partition: u32,
    token: u64,
    position: u64,
    stream: String,
    version: u64,
}

fn parse_handled(line: &str) -> Option<Handled> {
    let mut parts = line.strip_prefix("HANDLED ")?.split(' ');
    Some(Handled {
        partition: parts.next()?.parse().ok()?,
        token: parts.next()?.parse().ok()?,
        position: parts.next()?.parse().ok()?,
        stream: parts.next()?.to_owned(),
        version: parts.next()?.parse().ok()?,
    })
}

/// A printed list of partitions: `0,3` or `-`.
fn parse_list(text: &str) -> Vec<u32> {
    if text == "-" {
        return Vec::new();
    }
    text.split(',').map(|p| p.parse().unwrap()).collect()
}

/// A running child and everything it printed so far.
struct Proc {
    child: LineChild,
    stdin: Option<ChildStdin>,
    pid: u32,
    lines: Vec<String>,
    /// What it printed last: (members, partitions it owns), and the partitions running.
    assigned: Option<(usize, Vec<u32>)>,
    running: Option<Vec<u32>>,
    handled: usize,
}

impl Proc {
    fn spawn(schema: &Schema, ttl: Duration) -> Proc {
        let mut child = LineChild::spawn(
            Command::new(CHILD)
                .arg(pg::url())
                .arg(schema.name())
                .env("TIDINGS_LEASE_TTL_MS", ttl.as_millis().to_string())
                .env("TIDINGS_PARTITIONS", N.to_string())
                .stdin(Stdio::piped()),
            "partition_child",
        );
        let pid = child.process.id();
        let stdin = child.process.stdin.take();
        Proc {
            child,
            stdin,
            pid,
            lines: Vec::new(),
            assigned: None,
            running: None,
            handled: 0,
        }
    }

    /// Takes the lines printed since the last call.
    fn pump(&mut self) {
        while let Ok(line) = self.child.lines.try_recv() {
            assert!(!line.starts_with("FAILED"), "child {}: {line}", self.pid);
            self.note(&line);
            self.lines.push(line);
        }
        if let Ok(Some(status)) = self.child.process.try_wait() {
            if !self.lines.iter().any(|l| l == "STOPPED") {
                panic!("child {} exited ({status}) unasked", self.pid);
            }
        }
    }

    fn note(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("ASSIGNED ") {
            let parts: Vec<&str> = rest.split(' ').collect();
            self.assigned = Some((parts[1].parse().unwrap(), parse_list(parts[2])));
        } else if let Some(rest) = line.strip_prefix("RUNNING ") {
            self.running = Some(parse_list(rest));
        } else if line.starts_with("HANDLED ") {
            self.handled += 1;
        }
    }

    /// SIGKILL; returns every line it printed.
    fn kill(mut self) -> Vec<String> {
        self.pump();
        let ended = self.child.kill();
        self.lines.extend(ended.rest);
        self.lines
    }

    /// Asks it to stop (a line on its stdin), waits until it has (it prints `STOPPED` once its
    /// partitions stopped and gave their leases up), and returns every line it printed.
    fn stop(mut self) -> Vec<String> {
        let mut stdin = self.stdin.take().expect("its stdin");
        stdin.write_all(b"stop\n").expect("write to the child");
        drop(stdin);
        let deadline = Instant::now() + PATIENCE;
        while !self.lines.iter().any(|l| l == "STOPPED") {
            while let Ok(line) = self.child.lines.try_recv() {
                assert!(!line.starts_with("FAILED"), "child {}: {line}", self.pid);
                self.lines.push(line);
            }
            assert!(
                Instant::now() < deadline,
                "child {} never stopped",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let ended = self.child.kill();
        self.lines.extend(ended.rest);
        self.lines
    }
}

/// Waits until the partitions are shared out over `procs` as `shares` says (how many each
/// owns, in any order): each process sees all of them as members, runs exactly the partitions
/// it owns, and every partition is owned once. Returns how long that took.
fn wait_shares(procs: &mut [Proc], shares: &[usize]) -> Duration {
    let start = Instant::now();
    let mut expected = shares.to_vec();
    expected.sort_unstable();
    loop {
        for p in procs.iter_mut() {
            p.pump();
        }
        let settled = procs.iter().all(|p| match (&p.assigned, &p.running) {
            (Some((members, assigned)), Some(running)) => {
                *members == procs.len() && assigned == running
            }
            _ => false,
        });
        if settled {
            let mut sizes: Vec<usize> = procs
                .iter()
                .map(|p| p.assigned.as_ref().unwrap().1.len())
                .collect();
            sizes.sort_unstable();
            let all: Vec<u32> = procs
                .iter()
                .flat_map(|p| p.assigned.as_ref().unwrap().1.clone())
                .collect();
            let distinct: BTreeSet<u32> = all.iter().copied().collect();
            if sizes == expected && all.len() == N as usize && distinct.len() == N as usize {
                return start.elapsed();
            }
        }
        assert!(
            start.elapsed() < PATIENCE,
            "the partitions were never shared out as {shares:?}: {:?}",
            procs
                .iter()
                .map(|p| (p.pid, p.assigned.clone(), p.running.clone()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until `procs` together handled `more` events beyond what they had handled.
fn wait_progress(procs: &mut [Proc], more: usize) {
    let total = |procs: &mut [Proc]| {
        procs
            .iter_mut()
            .map(|p| {
                p.pump();
                p.handled
            })
            .sum::<usize>()
    };
    let target = total(procs) + more;
    let deadline = Instant::now() + PATIENCE;
    while total(procs) < target {
        assert!(
            Instant::now() < deadline,
            "the processes stopped handling events"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The names of the partitions' subscriptions.
fn partition_names() -> Vec<SubscriptionName> {
    let name = SubscriptionName::new(NAME).unwrap();
    (0..N)
        .map(|p| partition_name(&name, p, N).unwrap())
        .collect()
}

/// Stops the writer, waits until every partition committed its checkpoint at the head, kills
/// every child, and checks the invariants of the module's documentation over everything
/// printed.
fn finish(
    store: &PostgresEventStore,
    stop: &AtomicBool,
    writer: std::thread::JoinHandle<u64>,
    procs: Vec<Proc>,
    mut printed: Vec<(u32, Vec<String>)>,
) {
    stop.store(true, Ordering::Relaxed);
    let appended = writer.join().expect("the writer");
    let names = partition_names();
    let head = pg::blocking(async {
        let head = store
            .read_all(1, 1, &tidings::store::Filter::all())
            .await
            .unwrap()
            .head;
        let deadline = Instant::now() + PATIENCE;
        for name in &names {
            while store.load_checkpoint(name).await.unwrap().unwrap_or(0) < head {
                assert!(
                    Instant::now() < deadline,
                    "partition {name} never reached the head {head}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        head
    });
    for p in procs {
        let pid = p.pid;
        printed.push((pid, p.kill()));
    }
    assert_eq!(
        head, appended,
        "positions are gap-free here (nothing failed)"
    );

    // Every event handled by some process, by the partition of its stream; per-stream order
    // under each holder; no two processes with one token of a partition.
    let mut stream_of: HashMap<u64, String> = HashMap::new();
    let mut holders: HashMap<(u32, u64), u32> = HashMap::new();
    let mut by_holder_stream: HashMap<(u32, u32, u64, String), u64> = HashMap::new();
    let mut total = 0usize;
    for (pid, lines) in &printed {
        for h in lines.iter().filter_map(|l| parse_handled(l)) {
            total += 1;
            assert_eq!(
                h.partition,
                partition_of(&h.stream, N),
                "{} handled by partition {}",
                h.stream,
                h.partition
            );
            stream_of.insert(h.position, h.stream.clone());
            if let Some(other) = holders.insert((h.partition, h.token), *pid) {
                assert_eq!(
                    other, *pid,
                    "processes {other} and {pid} both held partition {} under token {}",
                    h.partition, h.token
                );
            }
            let key = (*pid, h.partition, h.token, h.stream.clone());
            if let Some(previous) = by_holder_stream.insert(key, h.version) {
                // Within one holder's run a stream goes on by one; a run that restarted from
                // the checkpoint (after a lost store) goes back, never forward.
                assert!(
                    h.version == previous + 1 || h.version <= previous,
                    "process {pid} (partition {}, token {}) handled {} version {} after \
                     version {previous}",
                    h.partition,
                    h.token,
                    h.stream,
                    h.version
                );
            }
        }
    }
    let missing: Vec<u64> = (1..=head).filter(|p| !stream_of.contains_key(p)).collect();
    assert!(missing.is_empty(), "never handled: {missing:?}");

    // Exactly once: over the partitions' committed states, one count per position, each 1, in
    // the partition of its stream; the tokens committed never go down with position.
    let mut counted: BTreeMap<u64, (u32, u64)> = BTreeMap::new();
    for (p, name) in names.iter().enumerate() {
        for (position, count) in pg::committed_state(store, name.as_str(), "count/") {
            let stream = &stream_of[&position];
            assert_eq!(
                partition_of(stream, N),
                p as u32,
                "position {position} ({stream}) committed by partition {p}"
            );
            if let Some(other) = counted.insert(position, (p as u32, count)) {
                panic!(
                    "position {position} committed by partitions {} and {p}",
                    other.0
                );
            }
        }
        let mut highest = 0;
        for (position, token) in pg::committed_state(store, name.as_str(), "token/") {
            assert!(
                token >= highest,
                "partition {p}: position {position} was committed under token {token} after \
                 token {highest}: a holder committed after it lost the lease"
            );
            highest = token;
        }
    }
    assert_eq!(
        counted.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "the projection's committed positions"
    );
    let repeated: Vec<_> = counted.iter().filter(|(_, (_, c))| *c != 1).collect();
    assert!(repeated.is_empty(), "counted more than once: {repeated:?}");
    eprintln!(
        "{head} events; {total} handled by {} processes under {} (partition, token) pairs ({} \
         handled again after a takeover)",
        printed.len(),
        holders.len(),
        total as u64 - head
    );
}

/// Fastest, median and slowest of `times`.
fn summary(times: &mut [Duration]) -> String {
    times.sort();
    match (times.first(), times.last()) {
        (Some(first), Some(last)) => format!(
            "fastest {first:?}, median {:?}, slowest {last:?}",
            times[times.len() / 2]
        ),
        _ => "none".into(),
    }
}

/// Under continuous appends: 1 process runs all 6 partitions, then 3 share them 2/2/2; one is
/// killed with SIGKILL and the 2 left take its partitions over (3/3); a joiner makes it 2/2/2
/// again; one stops gracefully (3/3). `TIDINGS_DISTRIBUTED_CYCLES` repeats kill, join and stop.
#[test]
fn rebalancing_under_load_skips_nothing_and_keeps_each_stream_in_order() {
    let Some(schema) = Schema::fresh("distributed_rebalance") else {
        return;
    };
    let store = Arc::new(schema.open(|c| c.pool_size(4)));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = pg::start_writer(store.clone(), stop.clone(), STREAMS, "order-d");
    let cycles = env_or("TIDINGS_DISTRIBUTED_CYCLES", 1);
    let mut rng = rand::thread_rng();
    let mut printed = Vec::new();

    let mut procs = vec![Proc::spawn(&schema, TTL)];
    wait_shares(&mut procs, &[6]);
    wait_progress(&mut procs, 50);
    procs.push(Proc::spawn(&schema, TTL));
    procs.push(Proc::spawn(&schema, TTL));
    wait_shares(&mut procs, &[2, 2, 2]);
    let (mut takeovers, mut handovers) = (Vec::new(), Vec::new());
    for cycle in 0..cycles {
        wait_progress(&mut procs, 50);
        let victim = procs.remove(rng.gen_range(0..procs.len()));
        let killed_at = Instant::now();
        printed.push((victim.pid, victim.kill()));
        wait_shares(&mut procs, &[3, 3]);
        takeovers.push(killed_at.elapsed());

        wait_progress(&mut procs, 50);
        procs.push(Proc::spawn(&schema, TTL));
        wait_shares(&mut procs, &[2, 2, 2]);

        wait_progress(&mut procs, 50);
        let leaver = procs.remove(rng.gen_range(0..procs.len()));
        let stopped_at = Instant::now();
        printed.push((leaver.pid, leaver.stop()));
        wait_shares(&mut procs, &[3, 3]);
        handovers.push(stopped_at.elapsed());

        if cycle + 1 < cycles {
            procs.push(Proc::spawn(&schema, TTL));
            wait_shares(&mut procs, &[2, 2, 2]);
        }
    }
    wait_progress(&mut procs, 50);
    eprintln!(
        "lease {TTL:?}: {cycles} takeovers after SIGKILL (until the 2 left run all 6 \
         partitions): {}; {cycles} handovers after a graceful stop: {}",
        summary(&mut takeovers),
        summary(&mut handovers)
    );
    finish(&store, &stop, writer, procs, printed);
}

/// A member that stops gracefully gives its member lease and its partitions' leases up, so the
/// other takes them over at its next look, without waiting for a lease to expire: with a 4 s
/// lease, well before 4 s.
#[test]
fn a_member_that_stops_hands_its_partitions_over_without_waiting_for_its_leases_to_expire() {
    let Some(schema) = Schema::fresh("distributed_handover") else {
        return;
    };
    let ttl = Duration::from_secs(4);
    let store = Arc::new(schema.open(|c| c.pool_size(4)));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = pg::start_writer(store.clone(), stop.clone(), STREAMS, "order-d");
    let mut procs = vec![Proc::spawn(&schema, ttl), Proc::spawn(&schema, ttl)];
    wait_shares(&mut procs, &[3, 3]);
    wait_progress(&mut procs, 100);
    let leaver = procs.remove(0);
    let stopped_at = Instant::now();
    let printed = vec![(leaver.pid, leaver.stop())];
    let stopped = stopped_at.elapsed();
    wait_shares(&mut procs, &[6]);
    let handover = stopped_at.elapsed();
    eprintln!(
        "lease {ttl:?}, looks every {:?}: the member stopped in {stopped:?}; the other ran all \
         6 partitions {handover:?} after the stop was asked",
        ttl / 3
    );
    assert!(
        handover < ttl,
        "the handover took {handover:?}, as long as waiting for the leases to expire"
    );
    wait_progress(&mut procs, 50);
    finish(&store, &stop, writer, procs, printed);
}
