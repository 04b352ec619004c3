//! Crash test of the NATS JetStream relay: a child process (`src/bin/nats_relay_child.rs`)
//! appends events while its relay publishes them, and is killed with SIGKILL at a random moment
//! (after a random number of acknowledged appends), again and again. A last run drains the
//! relay to the head. Then a consumer reads the JetStream stream back: every event of the store
//! is there exactly once (no message id, no position twice: the republished events after each
//! kill's checkpoint were absorbed by JetStream's de-duplication), each stream's events in order,
//! nothing missing.
//!
//! `TIDINGS_NATS_CRASH_CYCLES` (default 20) sets the number of kills. Skips loudly without a
//! NATS server unless `TIDINGS_REQUIRE_NATS=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use rand::Rng;
use tidings::broker::headers;
use tidings::store::{EventStore, Filter};
use tidings_tests::nats::{self, header, TestStream};
use tidings_tests::support::{close, env_or, open, runtime, LineChild};

const CHILD: &str = env!("CARGO_BIN_EXE_nats_relay_child");

fn spawn(dir: &std::path::Path, js: &TestStream, mode: &str) -> LineChild {
    LineChild::spawn(
        Command::new(CHILD)
            .arg(dir)
            .arg(nats::url())
            .arg(&js.prefix)
            .arg(mode),
        "nats_relay_child",
    )
}

/// Takes lines until one starts with `prefix` (at most `within`); panics on `FAILED`.
fn wait_line(child: &LineChild, prefix: &str, within: Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match child.lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(line) if line.starts_with("FAILED") => panic!("the child's relay failed: {line}"),
            Ok(_) => {}
            Err(e) => panic!("no {prefix} line from the child in {within:?}: {e}"),
        }
    }
}

#[test]
fn relay_killed_at_random_moments_publishes_every_event_exactly_once_in_stream_order() {
    if !nats::available("relay crash loop") {
        return;
    }
    let cycles = env_or("TIDINGS_NATS_CRASH_CYCLES", 20);
    let js = TestStream::create("relay_crash", |_| {});
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let broker = rt.block_on(nats::connect());
    let mut rng = rand::thread_rng();
    // Kills after which the stream held events beyond the stored checkpoint: those were
    // published again by the next run, and de-duplicated.
    let mut republished = 0u64;
    for cycle in 0..cycles {
        let child = spawn(dir.path(), &js, "append");
        wait_line(&child, "STARTED", Duration::from_secs(30));
        let acks = rng.gen_range(1..60);
        for _ in 0..acks {
            wait_line(&child, "ACK", Duration::from_secs(30));
        }
        let ended = child.kill();
        assert!(
            ended.stderr.trim().is_empty() || !ended.stderr.contains("panicked"),
            "cycle {cycle}: {}",
            ended.stderr
        );
        let store = open(dir.path());
        let checkpoint = rt
            .block_on(store.load_checkpoint("relay"))
            .unwrap()
            .unwrap_or(0);
        close(store);
        let in_stream = rt.block_on(async {
            let mut stream = broker.jetstream().get_stream(&js.name).await.unwrap();
            stream.info().await.unwrap().state.messages
        });
        assert!(in_stream >= checkpoint, "cycle {cycle}: the checkpoint {checkpoint} passed unpublished events ({in_stream} in the stream)");
        if in_stream > checkpoint {
            republished += 1;
        }
    }
    let child = spawn(dir.path(), &js, "drain");
    let done = wait_line(&child, "DONE", Duration::from_secs(60));
    let ended = child.kill();
    assert!(
        ended.status.success() || ended.status.code().is_none(),
        "{}",
        ended.stderr
    );

    let store = open(dir.path());
    let events = rt.block_on(async {
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let page = store.read_all(from, 1000, &Filter::all()).await.unwrap();
            let end = page.is_end();
            out.extend(page.events);
            from = page.next_position;
            if end {
                return out;
            }
        }
    });
    close(store);
    assert_eq!(done, format!("DONE {}", events.len()));
    let messages = rt.block_on(js.messages(&broker, Duration::from_secs(30)));
    let mut ids = BTreeSet::new();
    let mut positions = BTreeSet::new();
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for m in &messages {
        let id = header(m, headers::MSG_ID).unwrap();
        let position: u64 = header(m, headers::POSITION).unwrap().parse().unwrap();
        assert!(ids.insert(id.to_owned()), "message id {id} twice");
        assert!(positions.insert(position), "position {position} twice");
        let e = &events[position as usize - 1];
        assert_eq!(
            (e.event_id.to_string().as_str(), &e.payload[..]),
            (id, m.payload.as_ref())
        );
        let last = versions.entry(e.stream_id.to_string()).or_insert(0);
        assert_eq!(
            e.stream_version,
            *last + 1,
            "stream {} out of order at {position}",
            e.stream_id
        );
        *last = e.stream_version;
    }
    assert_eq!(
        messages.len(),
        events.len(),
        "every event published, none twice"
    );
    println!(
        "{cycles} kills, {} events, {} messages; {republished} kills left published events beyond \
         the checkpoint, which were published again and de-duplicated",
        events.len(),
        messages.len()
    );
    assert!(
        republished > 0 || cycles < 5,
        "no kill landed between a publish and its checkpoint commit"
    );
}
