//! The shop with a broker, run as a user would: `shop_example --publish nats://... story`
//! publishes the story's events through its outbox relay, and `shop_example watch-nats` prints
//! what arrived. Every event of the story (in the store it leaves) must arrive exactly once,
//! each stream's events in order.
//!
//! Both run as processes of their own (`shop_child` with the shop's arguments is the
//! `shop_example` program). The JetStream stream is the test's own, deleted afterwards. Without
//! a NATS server the test skips loudly, unless `TIDINGS_REQUIRE_NATS=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use tidings::store::{EventStore, Filter, SledEventStore};
use tidings_tests::nats::{self, TestStream};

const SHOP: &str = env!("CARGO_BIN_EXE_shop_child");

/// Runs the shop with `args`; expects success and returns standard output.
fn shop(args: &[&str]) -> String {
    let out = Command::new(SHOP)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the shop");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "shop_example {args:?}: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// One line of `watch-nats`: `#<seq> <subject> position <p> <stream> v<version> <payload>`.
#[derive(Debug)]
struct Seen {
    subject: String,
    position: u64,
    stream: String,
    version: u64,
}

fn parse(line: &str) -> Option<Seen> {
    let mut words = line.split_whitespace();
    words.next().filter(|w| w.starts_with('#'))?;
    let subject = words.next()?.to_owned();
    (words.next()? == "position").then_some(())?;
    let position = words.next()?.parse().ok()?;
    let stream = words.next()?.to_owned();
    let version = words.next()?.strip_prefix('v')?.parse().ok()?;
    Some(Seen {
        subject,
        position,
        stream,
        version,
    })
}

#[test]
fn the_story_published_to_nats_arrives_once_each_stream_in_order() {
    if !nats::available("shop with a broker") {
        return;
    }
    let js = TestStream::create("shop_nats", |_| {});
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shop");
    let data = data.to_str().unwrap();
    let url = nats::url();

    let story = shop(&[
        "--data-dir",
        data,
        "--publish",
        &url,
        "--nats-stream",
        &js.name,
        "--nats-prefix",
        &js.prefix,
        "story",
        "--fresh",
        "--orders",
        "8",
    ]);
    assert!(story.contains("every invariant holds."), "{story}");
    assert!(story.contains("lag 0, parked 0"), "{story}");

    let watched = shop(&["watch-nats", "--url", &url, "--stream", &js.name]);
    let seen: Vec<Seen> = watched.lines().filter_map(parse).collect();
    assert!(
        watched.contains(&format!("{} messages shown", seen.len())),
        "{watched}"
    );

    // The story's events, from the store it left (the framework's own records are not
    // published).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events = rt.block_on(async {
        let store = SledEventStore::open(data).unwrap();
        let mut all = Vec::new();
        let mut from = 1;
        loop {
            let page = store.read_all(from, 1024, &Filter::all()).await.unwrap();
            all.extend(page.events.iter().cloned());
            if page.is_end() {
                break;
            }
            from = page.next_position;
        }
        store.close().await;
        all
    });
    let expected: BTreeMap<u64, _> = events
        .iter()
        .filter(|e| !e.event_type.starts_with("$tidings."))
        .map(|e| (e.position, e))
        .collect();
    assert!(
        expected.len() > 8,
        "the story wrote events: {}",
        expected.len()
    );

    // Each event exactly once, with its stream, version and subject.
    let mut positions = BTreeSet::new();
    for s in &seen {
        assert!(
            positions.insert(s.position),
            "position {} twice: {s:?}",
            s.position
        );
        let e = expected
            .get(&s.position)
            .unwrap_or_else(|| panic!("a message for no event of the story: {s:?}"));
        assert_eq!(
            (s.stream.as_str(), s.version),
            (e.stream_id.as_str(), e.stream_version),
            "{s:?}"
        );
        let category = e.stream_id.split('-').next().unwrap();
        assert_eq!(
            s.subject,
            format!("{}.{category}.{}", js.prefix, e.event_type),
            "{s:?}"
        );
    }
    let missing: Vec<_> = expected.keys().filter(|p| !positions.contains(p)).collect();
    assert!(missing.is_empty(), "events never published: {missing:?}");

    // Each stream's events in order on the broker (the lines are in stream sequence order;
    // versions of the framework's records, not published, leave gaps).
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &seen {
        let before = last.insert(&s.stream, s.version).unwrap_or(0);
        assert!(
            s.version > before,
            "stream {} out of order: {s:?}",
            s.stream
        );
    }
}
