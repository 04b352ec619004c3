//! The NATS inbox under SIGKILL (issue 19): a child process (`src/bin/nats_inbox_child.rs`) runs
//! the inbox while messages are published to its JetStream stream, and is killed at random
//! moments: after an append and before its ack, between the append and the inbox's record of
//! it, or anywhere else. A last run takes every message. The store must then hold one event per
//! message, each exactly once, in the stream its subject names. (Not in publication order: a
//! message whose ack a kill prevented is delivered again after later ones, as JetStream does.)
//!
//! `TIDINGS_NATS_INBOX_KILLS` (default 12) sets the number of kills. Skips loudly without a NATS
//! server unless `TIDINGS_REQUIRE_NATS=1`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::Rng;
use tidings::broker::nats::async_nats::HeaderMap;
use tidings::store::{EventStore, Filter};
use tidings_tests::nats::{self, TestStream};
use tidings_tests::support::{close, env_or, open, runtime, LineChild};

const CHILD: &str = env!("CARGO_BIN_EXE_nats_inbox_child");
/// Messages published per kill cycle.
const PER_CYCLE: u64 = 25;
/// Subjects' last tokens: the streams the events go to.
const TOKENS: [&str; 3] = ["a", "b", "c"];

fn spawn(dir: &std::path::Path, js: &TestStream) -> LineChild {
    LineChild::spawn(
        Command::new(CHILD).arg(dir).arg(nats::url()).arg(&js.name),
        "nats_inbox_child",
    )
}

/// Takes lines until `done` accepts one (at most `within`); panics on `FAILED`.
fn wait_line(child: &LineChild, within: Duration, mut done: impl FnMut(&str) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match child.lines.recv_timeout(left) {
            Ok(line) if line.starts_with("FAILED") => panic!("the child's inbox failed: {line}"),
            Ok(line) if done(&line) => return,
            Ok(_) => {}
            Err(e) => panic!("the child did not get there in {within:?}: {e}"),
        }
    }
}

#[test]
fn an_inbox_killed_at_random_moments_appends_every_message_exactly_once() {
    if !nats::available("inbox crash loop") {
        return;
    }
    let kills = env_or("TIDINGS_NATS_INBOX_KILLS", 12);
    let js = TestStream::create("inbox_crash", |_| {});
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let broker = rt.block_on(nats::connect());
    let mut rng = rand::thread_rng();
    let publish = |i: u64| {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("m{i}").as_str());
        let subject = format!("{}.in.{}", js.prefix, TOKENS[(i % 3) as usize]);
        let broker = broker.clone();
        rt.block_on(async move {
            broker
                .jetstream()
                .publish_with_headers(subject, headers, format!("{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        });
    };
    let mut published = 0;
    for _ in 0..kills {
        let child = spawn(dir.path(), &js);
        wait_line(&child, Duration::from_secs(60), |l| l == "STARTED");
        for _ in 0..PER_CYCLE {
            publish(published);
            published += 1;
        }
        // Let it work a little, or not at all, then kill it wherever it is.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..60)));
        let ended = child.kill();
        assert!(
            !ended.rest.iter().any(|l| l.starts_with("FAILED")),
            "{:?}\n{}",
            ended.rest,
            ended.stderr
        );
    }
    // The last run takes everything.
    let child = spawn(dir.path(), &js);
    wait_line(&child, Duration::from_secs(120), |l| {
        l.strip_prefix("HEAD ")
            .and_then(|h| h.parse::<u64>().ok())
            .is_some_and(|h| h >= published)
    });
    // Then until JetStream has nothing left to deliver and no ack outstanding: every
    // redelivery of a message whose ack a kill prevented has been handled (and would show as a
    // duplicate below if the inbox had appended it again).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let info = rt.block_on(async {
            let mut consumer: tidings::broker::nats::async_nats::jetstream::consumer::PullConsumer =
                broker
                    .jetstream()
                    .get_stream(&js.name)
                    .await
                    .unwrap()
                    .get_consumer("inbox")
                    .await
                    .unwrap();
            consumer.info().await.unwrap().clone()
        });
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the inbox never acknowledged everything: {info:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill();

    let store = open(dir.path());
    let events = rt.block_on(async {
        store
            .read_all(1, 100_000, &Filter::all().event_types(["Received"]))
            .await
            .unwrap()
            .events
    });
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for e in &events {
        let i: u64 = std::str::from_utf8(&e.payload).unwrap().parse().unwrap();
        *seen.entry(i).or_default() += 1;
        assert_eq!(e.stream_id, format!("inbound-{}", TOKENS[(i % 3) as usize]));
    }
    let missing: Vec<u64> = (0..published).filter(|i| !seen.contains_key(i)).collect();
    let doubled: Vec<(&u64, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(missing.is_empty(), "messages never appended: {missing:?}");
    assert!(doubled.is_empty(), "messages appended twice: {doubled:?}");
    assert_eq!(events.len() as u64, published);
    close(store);
    println!("{kills} kills, {published} messages, each appended once");
}
