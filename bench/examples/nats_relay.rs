//! The NATS JetStream relay against a bare async-nats publish loop, in the same run (issue 19).
//!
//! ```text
//! cargo run --release -p tidings-bench --example nats_relay              # 20 000 events, 5 rounds
//! cargo run --release -p tidings-bench --example nats_relay -- --quick   # a smoke test
//! ```
//!
//! The store is filled first with `EVENTS` events over `STREAMS` streams (~200-byte payloads).
//! Each round then publishes them twice, each time to a new JetStream stream (file storage,
//! deleted afterwards), with the same subjects, headers and payloads and the same
//! acknowledgement mode (each publish awaits JetStream's ack, at most 256 in flight):
//!
//! - **bare**: async-nats alone, reading nothing, remembering nothing (`buffer_unordered(256)`
//!   over the publishes);
//! - **relay**: tidings' relay (256 lanes, pages of 4 096 events) from its first checkpoint to
//!   the head: reading the log, one message in flight per stream, its checkpoint committed.
//!
//! It prints events per second of each, and the ratio relay / bare of each round (the two run
//! back to back, so a round's ratio is paired), then the median ratio. The bare loop's
//! publish-to-ack latency (p50, p99) is printed too. NATS: `TIDINGS_BENCH_NATS_URL`, else
//! `nats://127.0.0.1:4222`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tidings::broker::nats::async_nats::jetstream::stream;
use tidings::broker::nats::{NatsBroker, NatsPublisher, NatsRelay, RelayConfig, RelaySpec};
use tidings::broker::SubjectTemplate;
use tidings::store::{EventData, EventStore, ExpectedVersion, Filter, SledEventStore};
use tidings::subscription::{SubscriptionConfig, Subscriptions};

struct BenchRelay;
impl RelaySpec for BenchRelay {
    const NAME: &'static str = "bench-relay";
}

const IN_FLIGHT: usize = 256;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (events, streams, rounds) = if quick {
        (2_000, 200, 2)
    } else {
        (20_000, 1_000, 5)
    };
    actix::System::new().block_on(run(events, streams, rounds));
}

async fn run(events: u64, streams: u64, rounds: usize) {
    let url =
        std::env::var("TIDINGS_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let broker = match NatsBroker::connect(&url, Duration::from_secs(5)).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("!!!!!!!! NATS at {url} is not reachable ({e}): benchmark SKIPPED !!!!!!!!");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    // Fill the store: 64 events per append, round-robin over the streams.
    let mut i = 0;
    while i < events {
        let appends: Vec<_> = (0..64.min(events - i))
            .map(|k| {
                let n = i + k;
                let payload = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(180));
                (
                    format!("order-{}", n % streams),
                    EventData::new("OrderPlaced", payload.into_bytes()),
                )
            })
            .collect();
        for (stream, e) in appends {
            store
                .append(&stream, ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
        }
        i += 64;
    }
    let head = store.head();
    println!("NATS relay benchmark: {head} events over {streams} streams, {rounds} rounds, {IN_FLIGHT} in flight");
    println!(
        "{:>5} {:>12} {:>12} {:>7} {:>10} {:>10}",
        "round", "bare ev/s", "relay ev/s", "ratio", "bare p50", "bare p99"
    );
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let tag = format!("{}_{round}", std::process::id());
        // bare
        let (bare_name, bare_prefix) = (format!("BENCH_BARE_{tag}"), format!("bb{tag}"));
        create(&broker, &bare_name, &bare_prefix).await;
        let subjects =
            SubjectTemplate::parse(&format!("{bare_prefix}.{{category}}.{{event_type}}")).unwrap();
        let publisher = NatsPublisher::new(&broker, subjects, Duration::from_secs(10), "bench");
        let all = read_all(&store).await;
        let js = broker.jetstream().clone();
        let started = Instant::now();
        let mut latencies: Vec<Duration> = futures_util::stream::iter(all.iter())
            .map(|e| {
                let (subject, headers) = publisher.message(e).unwrap();
                let payload = bytes::Bytes::copy_from_slice(&e.payload);
                let js = js.clone();
                async move {
                    let t = Instant::now();
                    js.publish_with_headers(subject, headers, payload)
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                    t.elapsed()
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let bare = head as f64 / started.elapsed().as_secs_f64();
        drop(all);
        delete(&broker, &bare_name).await;
        latencies.sort();
        let p =
            |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];

        // relay
        let (relay_name, relay_prefix) = (format!("BENCH_RELAY_{tag}"), format!("br{tag}"));
        create(&broker, &relay_name, &relay_prefix).await;
        let subs = Subscriptions::new(store.clone());
        // A fresh start: the checkpoint of the previous round is removed.
        subs.reset(
            BenchRelay::NAME,
            tidings::subscription::ResetTo::Beginning,
            true,
        )
        .await
        .ok();
        let subjects =
            SubjectTemplate::parse(&format!("{relay_prefix}.{{category}}.{{event_type}}")).unwrap();
        let config = RelayConfig::new(subjects)
            .lanes(IN_FLIGHT)
            .subscription(SubscriptionConfig::default().batch_size(4096));
        let started = Instant::now();
        let relay = NatsRelay::<BenchRelay>::new(&broker, config)
            .start(&subs)
            .unwrap();
        let status = relay
            .wait_until_handled(head, std::time::Duration::from_secs(3600))
            .await
            .expect("the relay publishes every event");
        let relayed = head as f64 / started.elapsed().as_secs_f64();
        assert_eq!(status.parked, 0);
        relay.stop().await;
        let stored = broker
            .jetstream()
            .get_stream(&relay_name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages;
        assert_eq!(stored, head, "the relay published every event once");
        delete(&broker, &relay_name).await;

        let ratio = relayed / bare;
        ratios.push(ratio);
        println!(
            "{round:>5} {bare:>12.0} {relayed:>12.0} {ratio:>6.2}x {:>10.2?} {:>10.2?}",
            p(0.5),
            p(0.99)
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio relay / bare: {:.2}x (target >= 0.80x)",
        ratios[ratios.len() / 2]
    );
}

async fn read_all(store: &SledEventStore) -> Vec<tidings::store::RecordedEvent> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 4096, &Filter::all()).await.unwrap();
        let end = page.is_end();
        from = page.next_position;
        out.extend(page.events);
        if end {
            return out;
        }
    }
}

async fn create(broker: &NatsBroker, name: &str, prefix: &str) {
    broker
        .jetstream()
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn delete(broker: &NatsBroker, name: &str) {
    broker.jetstream().delete_stream(name).await.unwrap();
}
