//! A subscription runs once across processes: several processes (`src/bin/lease_child.rs`)
//! start the same subscription on one PostgreSQL schema; one holds its lease and runs it, the
//! others wait as standbys. These tests kill the holder with SIGKILL at random moments, or pause
//! it with SIGSTOP past its lease, while a writer appends, and then check from the store and
//! from what every process printed:
//!
//! - **nothing skipped**: every event of the log was handled by some process;
//! - **exactly once**: the projection's committed state counts every position once;
//! - **per-stream order**: under one holder (one fencing token), each stream's events were
//!   handled in version order without a gap;
//! - **fencing**: the fencing token committed with each position never goes down with
//!   position (a holder that lost the lease never committed after the next one took over),
//!   and no two processes held the same token.
//!
//! `TIDINGS_PG_FAILOVER_CYCLES` (default 20) sets the number of kills. Needs the test server
//! (`tidings_tests::pg`); skips loudly without one.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tidings::store::{EventStore, PostgresEventStore};
use tidings_tests::pg::{self, Schema};
use tidings_tests::support::{env_or, LineChild};

const CHILD: &str = env!("CARGO_BIN_EXE_lease_child");

/// The subscription's name in the child.
const NAME: &str = "failover";

/// The lease's time-to-live in the children.
const TTL: Duration = Duration::from_millis(600);

/// The longest a test waits for a condition that must come true.
const PATIENCE: Duration = Duration::from_secs(90);

/// Streams the writer appends to.
const STREAMS: u64 = 6;

/// One handled event as a child printed it.
#[derive(Clone, Debug)]
struct Handled {
    token: u64,
    position: u64,
    stream: String,
    version: u64,
}

/// A running child and everything it printed so far.
struct Proc {
    child: LineChild,
    pid: u32,
    lines: Vec<String>,
}

impl Proc {
    fn spawn(schema: &Schema) -> Proc {
        let child = LineChild::spawn(
            Command::new(CHILD)
                .arg(pg::url())
                .arg(schema.name())
                .env("TIDINGS_LEASE_TTL_MS", TTL.as_millis().to_string()),
            "lease_child",
        );
        let pid = child.process.id();
        Proc {
            child,
            pid,
            lines: Vec::new(),
        }
    }

    /// Takes the lines printed since the last call.
    fn pump(&mut self) {
        while let Ok(line) = self.child.lines.try_recv() {
            assert!(!line.starts_with("FAILED"), "child {}: {line}", self.pid);
            self.lines.push(line);
        }
    }

    /// Waits until it printed a line that `matches` (after the first `skip` lines).
    fn wait_line(&mut self, what: &str, skip: usize, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.pump();
            if let Some(line) = self.lines.iter().skip(skip).find(|l| matches(l)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.process.try_wait() {
                panic!(
                    "child {} exited ({status}) while waiting for {what}",
                    self.pid
                );
            }
            assert!(
                Instant::now() < deadline,
                "child {} never printed {what}",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// How many events it printed as handled.
    fn handled_count(&mut self) -> usize {
        self.pump();
        self.lines
            .iter()
            .filter(|l| l.starts_with("HANDLED "))
            .count()
    }

    /// Waits until it handled `more` events beyond those it had handled when called.
    fn wait_handled(&mut self, more: usize) {
        let target = self.handled_count() + more;
        let deadline = Instant::now() + PATIENCE;
        while self.handled_count() < target {
            assert!(
                Instant::now() < deadline,
                "child {} stopped handling events",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL; returns every line it printed.
    fn kill(mut self) -> Vec<String> {
        self.pump();
        let ended = self.child.kill();
        self.lines.extend(ended.rest);
        self.lines
    }

    /// Sends `signal` (`STOP`, `CONT`) with kill(1).
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }
}

fn token_of(line: &str, prefix: &str) -> Option<u64> {
    line.strip_prefix(prefix)?.trim().parse().ok()
}

fn parse_handled(line: &str) -> Option<Handled> {
    let mut parts = line.strip_prefix("HANDLED ")?.split(' ');
    Some(Handled {
        token: parts.next()?.parse().ok()?,
        position: parts.next()?.parse().ok()?,
        stream: parts.next()?.to_owned(),
        version: parts.next()?.parse().ok()?,
    })
}

/// Stops the writer, waits until the holder committed its checkpoint at the head, kills every
/// child, and checks the invariants of the module's documentation over everything printed.
fn finish(
    store: &PostgresEventStore,
    stop: &AtomicBool,
    writer: std::thread::JoinHandle<u64>,
    procs: Vec<Proc>,
    mut printed: Vec<(u32, Vec<String>)>,
) {
    stop.store(true, Ordering::Relaxed);
    let appended = writer.join().expect("the writer");
    let head = pg::blocking(async {
        let head = store
            .read_all(1, 1, &tidings::store::Filter::all())
            .await
            .unwrap()
            .head;
        let deadline = Instant::now() + PATIENCE;
        while store.load_checkpoint(NAME).await.unwrap().unwrap_or(0) < head {
            assert!(
                Instant::now() < deadline,
                "the holder never reached the head {head}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
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

    // Exactly once, nothing skipped: one count per position, each 1.
    let counts = pg::committed_state(store, NAME, "count/");
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "the projection's committed positions"
    );
    let repeated: Vec<_> = counts.iter().filter(|(_, &c)| c != 1).collect();
    assert!(repeated.is_empty(), "counted more than once: {repeated:?}");

    // Fencing: the tokens committed never go down with position.
    let tokens = pg::committed_state(store, NAME, "token/");
    let mut highest = 0;
    for (position, token) in &tokens {
        assert!(
            *token >= highest,
            "position {position} was committed under token {token} after token {highest}: a \
             holder committed after it lost the lease"
        );
        highest = *token;
    }

    // Every event handled by some process; per-stream order under each token; no two
    // processes with one token.
    let mut holders: HashMap<u64, u32> = HashMap::new();
    let mut handled_positions = BTreeSet::new();
    let mut by_token_stream: HashMap<(u32, u64, String), u64> = HashMap::new();
    let mut total = 0usize;
    for (pid, lines) in &printed {
        for line in lines {
            if let Some(token) = token_of(line, "HOLDING ") {
                if let Some(other) = holders.insert(token, *pid) {
                    assert_eq!(
                        other, *pid,
                        "processes {other} and {pid} both held token {token}"
                    );
                }
            }
            if let Some(h) = parse_handled(line) {
                total += 1;
                handled_positions.insert(h.position);
                let key = (*pid, h.token, h.stream.clone());
                if let Some(previous) = by_token_stream.insert(key, h.version) {
                    // Within one holder's run a stream goes on by one; a run that restarted
                    // from the checkpoint (after a lost store) goes back, never forward.
                    assert!(
                        h.version == previous + 1 || h.version <= previous,
                        "process {pid} (token {}) handled {} version {} after version {previous}",
                        h.token,
                        h.stream,
                        h.version
                    );
                }
            }
        }
    }
    let missing: Vec<u64> = (1..=head)
        .filter(|p| !handled_positions.contains(p))
        .collect();
    assert!(missing.is_empty(), "never handled: {missing:?}");
    eprintln!(
        "{head} events; {total} handled by {} processes under {} tokens ({} handled again \
         after a takeover)",
        printed.len(),
        holders.len(),
        total as u64 - head
    );
}

/// Twenty (`TIDINGS_PG_FAILOVER_CYCLES`) times: the holder is killed with SIGKILL after a
/// random number of events, the standby takes over, and a new standby starts.
#[test]
fn killing_the_holder_hands_the_subscription_to_the_standby() {
    let Some(schema) = Schema::fresh("failover_kill") else {
        return;
    };
    let store = Arc::new(schema.open(|c| c));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = pg::start_writer(store.clone(), stop.clone(), STREAMS, "order-f");
    let cycles = env_or("TIDINGS_PG_FAILOVER_CYCLES", 20);
    let mut rng = rand::thread_rng();
    let mut printed = Vec::new();

    let mut holder = Proc::spawn(&schema);
    holder.wait_line("HOLDING", 0, |l| l.starts_with("HOLDING "));
    let mut standby = Proc::spawn(&schema);
    standby.wait_line("STANDBY", 0, |l| l.starts_with("STANDBY "));
    let mut takeovers = Vec::new();
    for _ in 0..cycles {
        holder.wait_handled(rng.gen_range(1..40));
        let seen = standby.lines.len();
        let killed_at = Instant::now();
        let pid = holder.pid;
        printed.push((pid, holder.kill()));
        standby.wait_line("HOLDING after the kill", seen, |l| {
            l.starts_with("HOLDING ")
        });
        takeovers.push(killed_at.elapsed());
        holder = standby;
        standby = Proc::spawn(&schema);
        standby.wait_line("STANDBY", 0, |l| l.starts_with("STANDBY "));
    }
    takeovers.sort();
    if let (Some(first), Some(last)) = (takeovers.first(), takeovers.last()) {
        eprintln!(
            "{cycles} takeovers after SIGKILL (lease {TTL:?}): fastest {first:?}, median {:?}, \
             slowest {last:?}",
            takeovers[takeovers.len() / 2]
        );
    }
    finish(&store, &stop, writer, vec![holder, standby], printed);
}

/// The holder is paused (SIGSTOP) past its lease: the standby takes over and goes on; when the
/// paused process resumes it finds its lease gone and stands by, and nothing it handled after
/// the takeover is committed.
#[test]
fn a_paused_holder_cannot_commit_after_the_standby_took_over() {
    let Some(schema) = Schema::fresh("failover_pause") else {
        return;
    };
    let store = Arc::new(schema.open(|c| c));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = pg::start_writer(store.clone(), stop.clone(), STREAMS, "order-f");
    let mut paused = Proc::spawn(&schema);
    let first = paused.wait_line("HOLDING", 0, |l| l.starts_with("HOLDING "));
    let mut standby = Proc::spawn(&schema);
    standby.wait_line("STANDBY", 0, |l| l.starts_with("STANDBY "));
    for round in 0..3 {
        paused.wait_handled(10 + round * 7);
        let seen = standby.lines.len();
        paused.signal("STOP");
        standby.wait_line("HOLDING after the pause", seen, |l| {
            l.starts_with("HOLDING ")
        });
        standby.wait_handled(30);
        let resumed_from = paused.lines.len();
        paused.signal("CONT");
        paused.wait_line("STANDBY after resuming", resumed_from, |l| {
            l.starts_with("STANDBY ")
        });
        // Swap: the new holder is paused next.
        std::mem::swap(&mut paused, &mut standby);
    }
    assert!(first.starts_with("HOLDING "));
    finish(&store, &stop, writer, vec![paused, standby], Vec::new());
}
