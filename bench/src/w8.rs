//! W8: the NATS JetStream relay (issue 19) against a bare async-nats publish loop with the same
//! acknowledgement mode, in the same run.
//!
//! The store is filled first with `events` events over `streams` streams (~200-byte payloads).
//! Each round then publishes them twice, each time to a new JetStream stream (file storage,
//! deleted afterwards), with the same subjects, headers and payloads and the same
//! acknowledgement mode (each publish awaits JetStream's ack, at most 256 in flight):
//!
//! - **bare**: async-nats alone, reading nothing, remembering nothing (`buffer_unordered(256)`
//!   over the publishes);
//! - **relay**: tidings' relay (256 lanes, pages of 4 096 events) from its first checkpoint to
//!   the head: reading the log, one message in flight per stream, its checkpoint committed.
//!
//! The two run back to back in each round, so a round's ratio relay ÷ bare is paired; the row
//! with the target is the median of those ratios. Publish→ack latency is each publish's time
//! from the call to JetStream's acknowledgement (the relay's through
//! `RelayConfig::on_published`), pooled over the rounds. NATS: `TIDINGS_BENCH_NATS_URL`, else
//! `nats://127.0.0.1:4222`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tidings::broker::nats::async_nats::jetstream::stream;
use tidings::broker::nats::{NatsBroker, NatsPublisher, NatsRelay, RelayConfig, RelaySpec};
use tidings::broker::SubjectTemplate;
use tidings::store::{
    EventData, EventStore, ExpectedVersion, Filter, RecordedEvent, SledEventStore,
};
use tidings::subscription::{ResetTo, SubscriptionConfig, Subscriptions};

use crate::report::{median, quantile, Better, Row, Target};
use crate::Settings;

struct BenchRelay;
impl RelaySpec for BenchRelay {
    const NAME: &'static str = "bench-relay";
}

/// Publishes in flight, for both sides (and the relay's lanes).
const IN_FLIGHT: usize = 256;

/// The NATS server.
pub fn url() -> String {
    std::env::var("TIDINGS_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Whether NATS with JetStream answers at [`url`].
pub fn reachable() -> Result<(), String> {
    let rt = crate::w12::runtime()?;
    rt.block_on(async {
        let broker = NatsBroker::connect(&url(), Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        // The account info request answers with an error where JetStream is off. (Read as
        // plain JSON: async-nats' typed account info does not decode a 2.9 server's answer.)
        let reply = broker
            .client()
            .request("$JS.API.INFO", "".into())
            .await
            .map_err(|e| format!("JetStream: {e}"))?;
        let info: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(|e| format!("JetStream: {e}"))?;
        match info.get("error") {
            None => Ok(()),
            Some(error) => Err(format!("JetStream: {error}")),
        }
    })
}

/// W8: relay throughput and publish→ack latency beside the bare loop.
pub fn w8(s: &Settings, rows: &mut Vec<Row>) -> Result<(), String> {
    let (events, streams) = if s.quick {
        (2_000, 200)
    } else {
        (20_000, 1_000)
    };
    let rounds = if s.quick { 2 } else { s.rounds.max(5) };
    // The relay runs as actix actors: a system of its own, on a thread of its own.
    let settings = (s.verbose, events, streams, rounds);
    let measured = std::thread::spawn(move || {
        actix::System::new().block_on(measure(settings.0, settings.1, settings.2, settings.3))
    })
    .join()
    .map_err(|_| "W8 panicked".to_string())??;
    let case =
        format!("{events} events over {streams} streams, {IN_FLIGHT} in flight, {rounds} rounds");
    let Measured {
        mut bare_rates,
        mut relay_rates,
        mut ratios,
        mut bare_lat,
        mut relay_lat,
    } = measured;
    rows.push(Row::vs(
        "W8",
        format!("NATS relay, {case} (median)"),
        "events/s",
        Better::Higher,
        median(&mut relay_rates),
        "bare async-nats loop",
        median(&mut bare_rates),
        Target::None,
    ));
    rows.push(Row::alone(
        "W8",
        "NATS relay ÷ bare loop, paired per round (median)",
        "ratio",
        Better::Higher,
        median(&mut ratios),
        Target::ValueAtLeast(0.8),
    ));
    bare_lat.sort_by(f64::total_cmp);
    relay_lat.sort_by(f64::total_cmp);
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        rows.push(Row::vs(
            "W8",
            format!("NATS publish→ack latency {name}"),
            "ms",
            Better::Lower,
            quantile(&relay_lat, q),
            "bare async-nats loop",
            quantile(&bare_lat, q),
            Target::None,
        ));
    }
    Ok(())
}

struct Measured {
    bare_rates: Vec<f64>,
    relay_rates: Vec<f64>,
    ratios: Vec<f64>,
    /// Milliseconds.
    bare_lat: Vec<f64>,
    relay_lat: Vec<f64>,
}

fn err(what: &str) -> impl Fn(String) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn measure(
    verbose: bool,
    events: u64,
    streams: u64,
    rounds: usize,
) -> Result<Measured, String> {
    let broker = NatsBroker::connect(&url(), Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("tidings-bench-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let store = Arc::new(SledEventStore::open(dir.path()).map_err(|e| e.to_string())?);
    // Fill the store: round-robin over the streams.
    for n in 0..events {
        let payload = format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(180));
        store
            .append(
                &format!("order-{}", n % streams),
                ExpectedVersion::Any,
                vec![EventData::new("OrderPlaced", payload.into_bytes())],
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let head = store.head();
    let all = read_all(&store).await?;
    let mut m = Measured {
        bare_rates: Vec::new(),
        relay_rates: Vec::new(),
        ratios: Vec::new(),
        bare_lat: Vec::new(),
        relay_lat: Vec::new(),
    };
    for round in 0..rounds {
        let tag = format!("{}_{round}", std::process::id());

        // bare
        let (bare_name, bare_prefix) = (format!("BENCH_BARE_{tag}"), format!("bb{tag}"));
        create(&broker, &bare_name, &bare_prefix).await?;
        let subjects =
            SubjectTemplate::parse(&format!("{bare_prefix}.{{category}}.{{event_type}}"))
                .map_err(|e| e.to_string())?;
        let publisher = NatsPublisher::new(&broker, subjects, Duration::from_secs(10), "bench");
        let js = broker.jetstream().clone();
        let started = Instant::now();
        let latencies: Vec<Result<Duration, String>> = futures_util::stream::iter(all.iter())
            .map(|e| {
                let message = publisher.message(e).map_err(|e| e.to_string());
                let payload = bytes::Bytes::copy_from_slice(&e.payload);
                let js = js.clone();
                async move {
                    let (subject, headers) = message?;
                    let t = Instant::now();
                    js.publish_with_headers(subject, headers, payload)
                        .await
                        .map_err(|e| e.to_string())?
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(t.elapsed())
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let bare = head as f64 / started.elapsed().as_secs_f64();
        let stored = count(&broker, &bare_name).await?;
        delete(&broker, &bare_name).await?;
        for l in latencies {
            m.bare_lat
                .push(l.map_err(err("bare publish"))?.as_secs_f64() * 1e3);
        }
        if stored != head {
            return Err(format!("the bare loop stored {stored} of {head} messages"));
        }

        // relay
        let (relay_name, relay_prefix) = (format!("BENCH_RELAY_{tag}"), format!("br{tag}"));
        create(&broker, &relay_name, &relay_prefix).await?;
        let subs = Subscriptions::new(store.clone());
        if round > 0 {
            // A fresh start: the checkpoint of the previous round is moved back.
            subs.reset(BenchRelay::NAME, ResetTo::Beginning, true)
                .await
                .map_err(|e| e.to_string())?;
        }
        let subjects =
            SubjectTemplate::parse(&format!("{relay_prefix}.{{category}}.{{event_type}}"))
                .map_err(|e| e.to_string())?;
        let relay_lat = Arc::new(Mutex::new(Vec::with_capacity(head as usize)));
        let lat = relay_lat.clone();
        let config = RelayConfig::new(subjects)
            .lanes(IN_FLIGHT)
            .subscription(SubscriptionConfig::default().batch_size(4096))
            .on_published(move |_, _, took| {
                lat.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(took.as_secs_f64() * 1e3);
            });
        let started = Instant::now();
        let relay = NatsRelay::<BenchRelay>::new(&broker, config)
            .start(&subs)
            .map_err(|e| e.to_string())?;
        let status = relay
            .wait_until_handled(head, Duration::from_secs(3600))
            .await
            .map_err(|e| format!("the relay did not publish every event: {e}"))?;
        let relayed = head as f64 / started.elapsed().as_secs_f64();
        relay.stop().await;
        let stored = count(&broker, &relay_name).await?;
        delete(&broker, &relay_name).await?;
        if status.parked != 0 || stored != head {
            return Err(format!(
                "the relay stored {stored} of {head} messages, parked {}",
                status.parked
            ));
        }
        m.relay_lat.extend(
            relay_lat
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..),
        );

        let ratio = relayed / bare;
        if verbose {
            eprintln!(
                "W8 round {round}: bare {bare:.0} events/s, relay {relayed:.0} events/s, {ratio:.2}x"
            );
        }
        m.bare_rates.push(bare);
        m.relay_rates.push(relayed);
        m.ratios.push(ratio);
    }
    store.close().await;
    Ok(m)
}

async fn read_all(store: &SledEventStore) -> Result<Vec<RecordedEvent>, String> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = store
            .read_all(from, 4096, &Filter::all())
            .await
            .map_err(|e| e.to_string())?;
        let end = page.is_end();
        from = page.next_position;
        out.extend(page.events);
        if end {
            return Ok(out);
        }
    }
}

async fn create(broker: &NatsBroker, name: &str, prefix: &str) -> Result<(), String> {
    broker
        .jetstream()
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("create JetStream stream {name}: {e}"))
}

async fn count(broker: &NatsBroker, name: &str) -> Result<u64, String> {
    let mut stream = broker
        .jetstream()
        .get_stream(name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .messages)
}

async fn delete(broker: &NatsBroker, name: &str) -> Result<(), String> {
    broker
        .jetstream()
        .delete_stream(name)
        .await
        .map(|_| ())
        .map_err(|e| format!("delete JetStream stream {name}: {e}"))
}
