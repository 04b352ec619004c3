//! The NATS JetStream outbox relay (feature `nats`): every event published once, each stream in
//! order, with its metadata in headers; JetStream's de-duplication absorbs a republish; a message
//! the broker refuses is parked with its stream; a broker outage is waited out.
//!
//! Each test creates a JetStream stream of its own and deletes it. Without a NATS server the
//! tests skip loudly, unless `TIDINGS_REQUIRE_NATS=1`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::broker::nats::{NatsBroker, NatsRelay, RelayConfig, RelaySpec};
use tidings::broker::{headers, SubjectTemplate};
use tidings::store::{
    EventData, EventStore, ExpectedVersion, Filter, RecordedEvent, SledEventStore,
};
use tidings::subscription::{
    FailurePolicy, ResetTo, SubscriptionConfig, SubscriptionHandle, SubscriptionState,
    Subscriptions,
};
use tidings_tests::nats::{self, header, TestStream};

struct AllEvents;
impl RelaySpec for AllEvents {
    const NAME: &'static str = "relay-all";
}

struct OrdersOnly;
impl RelaySpec for OrdersOnly {
    const NAME: &'static str = "relay-orders";
    fn filter() -> Filter {
        Filter::all().categories(["order"])
    }
}

fn event(kind: &str, n: u64, size: usize) -> EventData {
    let mut payload = format!("{{\"n\":{n},\"pad\":\"").into_bytes();
    payload.resize(payload.len() + size, b'x');
    payload.extend_from_slice(b"\"}");
    EventData::new(kind, payload)
        .with_correlation_id(uuid::Uuid::now_v7())
        .with_causation_id(uuid::Uuid::now_v7())
        .with_metadata("tenant", format!("t{}", n % 3))
        .with_metadata("user id", "ada")
        .with_metadata(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
}

/// Appends `per_stream` events to each of `streams`, interleaved, one append each.
async fn append_interleaved(store: &SledEventStore, streams: &[&str], per_stream: u64) {
    for n in 0..per_stream {
        for stream in streams {
            store
                .append(stream, ExpectedVersion::Any, vec![event("Happened", n, 16)])
                .await
                .unwrap();
        }
    }
}

/// Waits until the relay's checkpoint reaches `position` (bounded).
async fn wait_checkpoint(handle: &SubscriptionHandle, position: u64, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = handle.status();
    while last.checkpoint < position {
        assert!(
            Instant::now() < deadline,
            "the relay did not reach {position} in {within:?}: {last:?}"
        );
        if let SubscriptionState::Failed(reason) = &last.state {
            panic!("the relay failed: {reason}");
        }
        let _ = handle.flush().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        last = handle.status();
    }
}

/// Checks that `messages` are exactly `events`, once each, in order, with their headers.
fn assert_published(
    messages: &[tidings::broker::nats::async_nats::jetstream::Message],
    events: &[RecordedEvent],
    prefix: &str,
) {
    let by_id: BTreeMap<String, &RecordedEvent> =
        events.iter().map(|e| (e.event_id.to_string(), e)).collect();
    assert_eq!(messages.len(), events.len(), "one message per event");
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for m in messages {
        let id = header(m, headers::MSG_ID).expect("a message id");
        assert!(seen.insert(id.to_owned()), "message id {id} twice");
        let e = by_id
            .get(id)
            .unwrap_or_else(|| panic!("unknown message id {id}"));
        assert_eq!(
            m.subject.as_str(),
            format!("{prefix}.{}.{}", e.category, e.event_type)
        );
        assert_eq!(m.payload, e.payload);
        assert_eq!(
            header(m, headers::POSITION),
            Some(e.position.to_string().as_str())
        );
        assert_eq!(header(m, headers::STREAM), Some(e.stream_id.as_str()));
        assert_eq!(
            header(m, headers::STREAM_VERSION),
            Some(e.stream_version.to_string().as_str())
        );
        assert_eq!(header(m, headers::EVENT_TYPE), Some(e.event_type.as_str()));
        assert_eq!(header(m, headers::CATEGORY), Some(e.category.as_str()));
        assert_eq!(header(m, headers::SCHEMA_VERSION), Some("1"));
        assert_eq!(
            header(m, headers::CORRELATION_ID),
            e.correlation_id.map(|c| c.to_string()).as_deref()
        );
        assert_eq!(
            header(m, headers::CAUSATION_ID),
            e.causation_id.map(|c| c.to_string()).as_deref()
        );
        assert_eq!(
            header(m, headers::TIMESTAMP),
            Some(e.timestamp_micros.to_string().as_str())
        );
        // The metadata, each key as a header (the trace context under its W3C names).
        for (key, value) in &e.metadata {
            assert_eq!(
                header(m, &headers::metadata_header(key)),
                Some(value.as_str()),
                "metadata {key}"
            );
        }
        // Per stream, the broker holds the stream's events in order.
        let last = versions.entry(e.stream_id.to_string()).or_insert(0);
        assert_eq!(
            e.stream_version,
            *last + 1,
            "stream {} out of order",
            e.stream_id
        );
        *last = e.stream_version;
    }
}

async fn all_events(store: &SledEventStore, filter: &Filter) -> Vec<RecordedEvent> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = store.read_all(from, 1000, filter).await.unwrap();
        out.extend(page.events.iter().cloned());
        from = page.next_position;
        if page.is_end() {
            return out;
        }
    }
}

fn config(stream: &TestStream) -> RelayConfig {
    let subjects =
        SubjectTemplate::parse(&format!("{}.{{category}}.{{event_type}}", stream.prefix)).unwrap();
    RelayConfig::new(subjects).lanes(8).subscription(
        SubscriptionConfig::default()
            .commit_interval(Duration::from_millis(20))
            .failure_policy(FailurePolicy::retry_then_park(
                1,
                Duration::from_millis(10),
                Duration::from_millis(10),
            )),
    )
}

#[actix::test]
async fn every_event_is_published_once_in_stream_order_with_its_metadata_and_a_replay_is_absorbed()
{
    if !nats::available("relay publishes once") {
        return;
    }
    let js = TestStream::create("relay_once", |_| {});
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    append_interleaved(&store, &["order-1", "order-2", "payment-1", "order-3"], 50).await;
    let broker = nats::connect().await;
    let subs = Subscriptions::new(store.clone());

    let relay = NatsRelay::<AllEvents>::new(&broker, config(&js))
        .start(&subs)
        .unwrap();
    // Live appends while it catches up.
    append_interleaved(&store, &["order-1", "payment-2"], 25).await;
    wait_checkpoint(&relay, store.head(), Duration::from_secs(30)).await;
    let events = all_events(&store, &Filter::all()).await;
    assert_eq!(events.len(), 250);
    assert_published(
        &js.messages(&broker, Duration::from_secs(10)).await,
        &events,
        &js.prefix,
    );

    // Republishing everything (a reset, as after losing the checkpoint) leaves one copy of each.
    subs.stop(AllEvents::NAME).await;
    subs.reset(AllEvents::NAME, ResetTo::Beginning, false)
        .await
        .unwrap();
    let relay = NatsRelay::<AllEvents>::new(&broker, config(&js))
        .start(&subs)
        .unwrap();
    wait_checkpoint(&relay, store.head(), Duration::from_secs(30)).await;
    assert_published(
        &js.messages(&broker, Duration::from_secs(10)).await,
        &events,
        &js.prefix,
    );
    let status = relay.stop().await;
    assert_eq!(
        (status.parked, status.events_handled >= 250),
        (0, true),
        "{status:?}"
    );
}

#[actix::test]
async fn the_filter_selects_what_is_published() {
    if !nats::available("relay filter") {
        return;
    }
    let js = TestStream::create("relay_filter", |_| {});
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    append_interleaved(&store, &["order-1", "payment-1", "order-2"], 10).await;
    // A remembered refusal in an order stream: selected by the filter, never published.
    let refusal = EventData::new(
        tidings::aggregate::REFUSED_TYPE,
        br#"{"message":"no"}"#.to_vec(),
    );
    store
        .append(
            "order-1",
            tidings::store::ExpectedVersion::Any,
            vec![refusal],
        )
        .await
        .unwrap();
    let broker = nats::connect().await;
    let subs = Subscriptions::new(store.clone());
    let relay = NatsRelay::<OrdersOnly>::new(&broker, config(&js))
        .start(&subs)
        .unwrap();
    wait_checkpoint(&relay, store.head(), Duration::from_secs(30)).await;
    let mut orders = all_events(&store, &OrdersOnly::filter()).await;
    assert_eq!(orders.len(), 21);
    orders.retain(|e| !tidings::aggregate::is_framework_record(&e.event_type));
    assert_eq!(orders.len(), 20);
    assert_published(
        &js.messages(&broker, Duration::from_secs(10)).await,
        &orders,
        &js.prefix,
    );
    relay.stop().await;
}

#[actix::test]
async fn a_message_the_broker_refuses_is_parked_with_the_rest_of_its_stream() {
    if !nats::available("relay parks too large") {
        return;
    }
    // The stream refuses messages over 2 KiB; the server's max_payload (1 MiB by default) is
    // checked by the client before sending.
    let js = TestStream::create("relay_too_large", |c| c.max_message_size = 2048);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let broker = nats::connect().await;
    let over_max_payload = broker.max_payload() + 10;
    for (stream, size) in [
        ("order-big", 16),
        ("order-big", 4096),              // refused by the stream
        ("order-big", 16),                // waits behind it
        ("order-huge", over_max_payload), // refused by the server's max_payload
        ("order-small", 16),
        ("order-small", 16),
    ] {
        store
            .append(
                stream,
                ExpectedVersion::Any,
                vec![event("Happened", 0, size)],
            )
            .await
            .unwrap();
    }
    let subs = Subscriptions::new(store.clone());
    let relay = NatsRelay::<AllEvents>::new(&broker, config(&js))
        .start(&subs)
        .unwrap();
    wait_checkpoint(&relay, store.head(), Duration::from_secs(30)).await;
    let status = relay.status();
    assert_eq!((status.parked, status.parked_streams), (3, 2), "{status:?}");
    let parked = subs.parked(AllEvents::NAME).await.unwrap();
    assert_eq!(
        parked.iter().map(|p| p.position).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert!(parked[0].reason.contains("refused"), "{}", parked[0].reason);
    assert!(parked[2].reason.contains("refused"), "{}", parked[2].reason);
    let messages = js.messages(&broker, Duration::from_secs(10)).await;
    let positions: Vec<&str> = messages
        .iter()
        .map(|m| header(m, headers::POSITION).unwrap())
        .collect();
    assert_eq!(positions, ["1", "5", "6"]);
    relay.stop().await;
}

/// A TCP proxy to the NATS server that the test can cut (every connection dropped, new ones
/// refused) and restore: a broker outage without stopping the shared server.
struct Proxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    _thread: std::thread::JoinHandle<()>,
}

impl Proxy {
    fn start() -> Self {
        let upstream = nats::url().trim_start_matches("nats://").to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let mut cut_rx = cut_rx;
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        // The test is over (the sender is gone).
                        r = cut_rx.changed() => if r.is_err() { return } else { continue },
                    };
                    let mut rx = cut_rx.clone();
                    let Ok((mut client, _)) = accepted else {
                        continue;
                    };
                    if *cut_rx.borrow() {
                        continue; // refused while cut: dropped at once
                    }
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = rx.wait_for(|cut| *cut) => {}
                        }
                    });
                }
            });
        });
        Proxy {
            port,
            cut,
            _thread: thread,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

#[actix::test]
async fn a_broker_outage_is_waited_out_and_then_everything_is_published_in_order() {
    if !nats::available("relay broker outage") {
        return;
    }
    let js = TestStream::create("relay_outage", |_| {});
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let broker = NatsBroker::connect(&proxy.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let subs = Subscriptions::new(store.clone());
    let relay =
        NatsRelay::<AllEvents>::new(&broker, config(&js).ack_timeout(Duration::from_millis(300)))
            .start(&subs)
            .unwrap();
    append_interleaved(&store, &["order-1", "order-2"], 10).await;
    wait_checkpoint(&relay, store.head(), Duration::from_secs(30)).await;
    let before = store.head();

    proxy.set_cut(true);
    append_interleaved(&store, &["order-1", "order-2", "payment-1"], 10).await;
    // For three acknowledgement timeouts (and the reconnections they span) the relay waits:
    // nothing parked, nothing skipped, not failed, and its lag stays.
    let watch_until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < watch_until {
        // (No flush here: the loop answers it between events, after the outage.)
        let s = relay.status();
        assert!(
            s.checkpoint < store.head(),
            "published through a cut broker: {s:?}"
        );
        assert_eq!((s.parked, s.parked_streams), (0, 0), "{s:?}");
        assert!(
            !matches!(
                s.state,
                SubscriptionState::Failed(_) | SubscriptionState::Stopped
            ),
            "{s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = relay.status();
    assert!(
        during.lag() >= store.head() - before - 2,
        "the lag grows during the outage: {during:?}"
    );

    proxy.set_cut(false);
    wait_checkpoint(&relay, store.head(), Duration::from_secs(60)).await;
    let events = all_events(&store, &Filter::all()).await;
    let direct = NatsBroker::connect(&nats::url(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_published(
        &js.messages(&direct, Duration::from_secs(10)).await,
        &events,
        &js.prefix,
    );
    let status = relay.stop().await;
    assert_eq!(status.parked, 0, "{status:?}");
}
