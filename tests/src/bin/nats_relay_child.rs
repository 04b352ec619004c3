//! The process that `tests/tests/nats_relay_crash.rs` kills with SIGKILL while a NATS JetStream
//! relay runs in it and events are appended.
//!
//! `nats_relay_child DIR URL PREFIX append` opens the store in `DIR`, starts the relay
//! `"relay"` (subjects `PREFIX.{category}.{event_type}`, 8 lanes, a checkpoint commit every 5
//! events or 10 ms, so that kills often land between an acknowledged publish and the commit that
//! covers it) and appends events (1 to 3 at a time, to 12 streams), printing `ACK <last
//! position>` (flushed) for each acknowledged append.
//!
//! `nats_relay_child DIR URL PREFIX drain` appends nothing and exits with status 0, after
//! printing `DONE <head>`, once the relay's checkpoint is at the head.
//!
//! It prints `STARTED <head>` once the relay is started, `FAILED <reason>` (status 3) if the
//! relay fails, and stops by itself after [`MAX_RUN`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::broker::nats::{NatsBroker, NatsRelay, RelayConfig, RelaySpec};
use tidings::broker::SubjectTemplate;
use tidings::store::{EventData, EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{SubscriptionConfig, SubscriptionState, Subscriptions};
use tidings_tests::support::{die, say};

/// The child stops by itself after this long.
const MAX_RUN: Duration = Duration::from_secs(60);
/// Streams the `append` mode writes to.
const STREAMS: u64 = 12;

struct Relay;
impl RelaySpec for Relay {
    const NAME: &'static str = "relay";
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, dir, url, prefix, mode] if mode == "append" || mode == "drain" => {
            actix::System::new().block_on(run(Path::new(dir), url, prefix, mode == "append"));
        }
        _ => die(&"usage: nats_relay_child DIR URL PREFIX append|drain"),
    }
}

async fn run(dir: &Path, url: &str, prefix: &str, append: bool) {
    let deadline = Instant::now() + MAX_RUN;
    let store = Arc::new(SledEventStore::open(dir).unwrap_or_else(|e| die(&e)));
    let broker = NatsBroker::connect(url, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| die(&e));
    let subjects = SubjectTemplate::parse(&format!("{prefix}.{{category}}.{{event_type}}"))
        .unwrap_or_else(|e| die(&e));
    let config = RelayConfig::new(subjects).lanes(8).subscription(
        SubscriptionConfig::default()
            .batch_size(64)
            .commit_every(5)
            .commit_interval(Duration::from_millis(10)),
    );
    let subs = Subscriptions::new(store.clone());
    let relay = NatsRelay::<Relay>::new(&broker, config)
        .start(&subs)
        .unwrap_or_else(|e| die(&e));
    say(format_args!("STARTED {}", store.head()));
    if append {
        actix::spawn(append_until(store.clone(), deadline));
    }
    while Instant::now() < deadline {
        let status = relay.status();
        if let SubscriptionState::Failed(reason) = &status.state {
            say(format_args!("FAILED {reason}"));
            std::process::exit(3);
        }
        if !append && status.checkpoint >= store.head() {
            say(format_args!("DONE {}", store.head()));
            relay.stop().await;
            std::process::exit(0);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.stop().await;
}

async fn append_until(store: Arc<SledEventStore>, deadline: Instant) {
    let mut i = store.head();
    while Instant::now() < deadline {
        let n = 1 + i % 3;
        let stream = format!("order-{}", (i * 7) % STREAMS);
        let events = (0..n)
            .map(|k| EventData::new("Happened", format!("{{\"i\":{}}}", i + k).into_bytes()))
            .collect();
        match store.append(&stream, ExpectedVersion::Any, events).await {
            Ok(r) => say(format_args!("ACK {}", r.last_position)),
            Err(e) => die(&e),
        }
        i += n;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
