//! Partitioned subscriptions: N copies of a handler working concurrently, the events spread over
//! them by stream. Per stream the order holds, the checkpoint never passes an unhandled event,
//! and state kept through the context stays exactly-once, also when partitions share keys.
//! (The SIGKILL test is `partitioned_workers_killed_at_random_moments_...` in
//! `subscription_crash.rs`.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings_tests::support::reached;

use tidings::store::{EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{
    subscription_status_from_store, EventContext, FailurePolicy, HandleEvent, HandlerError,
    SubscriptionConfig, SubscriptionState, Subscriptions,
};
use tidings::{async_trait, DomainEvent, EventHandler};
use tidings_tests::domain::OrderEvent;

/// The order value the handler fails on while broken.
const POISON: u64 = 13;

/// Shared by the copies of the handler.
#[derive(Clone, Default)]
struct Probe {
    /// (stream, position) of each handled event, in the order handled.
    seen: Arc<Mutex<Vec<(String, u64)>>>,
    /// Events being handled right now, and the most at once.
    in_flight: Arc<AtomicU64>,
    most_in_flight: Arc<AtomicU64>,
    /// While true, poison orders fail.
    broken: Arc<AtomicBool>,
    /// Also keep a total over all streams (a key every partition writes).
    shared_total: bool,
    /// Write a key under the framework's reserved prefix.
    write_reserved: bool,
}

impl Probe {
    fn by_stream(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (stream, position) in self.seen.lock().unwrap().iter() {
            out.entry(stream.clone()).or_default().push(*position);
        }
        out
    }
}

/// Counts orders per stream (and, if asked, in total) in its exactly-once state; waits a little
/// on each, as a handler that calls another service does.
#[derive(Clone, EventHandler)]
#[event_handler(name = "orders", events(OrderEvent))]
struct Orders(Probe);

#[async_trait]
impl HandleEvent<OrderEvent> for Orders {
    async fn handle(
        &mut self,
        event: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let probe = &self.0;
        let now = probe.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        probe.most_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        probe.in_flight.fetch_sub(1, Ordering::SeqCst);
        if matches!(event, OrderEvent::OrderPlaced { cents: POISON })
            && probe.broken.load(Ordering::SeqCst)
        {
            return Err("poison order".into());
        }
        let stream = ctx.event().stream_id.to_string();
        let key = format!("stream/{stream}").into_bytes();
        let n: u64 = ctx.get_json(&key).await?.unwrap_or(0);
        ctx.put_json(&key, &(n + 1))?;
        if probe.shared_total {
            let total: u64 = ctx.get_json(b"total").await?.unwrap_or(0);
            ctx.put_json(b"total", &(total + 1))?;
        }
        if probe.write_reserved {
            ctx.put(b"\0tidings/status", b"oops".to_vec());
        }
        probe
            .seen
            .lock()
            .unwrap()
            .push((stream, ctx.event().position));
        Ok(())
    }
}

fn open(dir: &std::path::Path) -> Arc<SledEventStore> {
    Arc::new(SledEventStore::open(dir).unwrap())
}

/// Appends `per_stream` orders to each of `streams` streams, interleaved; returns (stream,
/// position) of each, in order.
async fn fill(store: &SledEventStore, streams: u64, per_stream: u64) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for i in 0..per_stream {
        for s in 0..streams {
            let stream = format!("order-{s}");
            let data = OrderEvent::OrderPlaced { cents: 100 + i }
                .to_event_data()
                .unwrap();
            let position = store
                .append(&stream, ExpectedVersion::Any, vec![data])
                .await
                .unwrap()
                .first_position;
            out.push((stream, position));
        }
    }
    out
}

async fn value(store: &SledEventStore, key: &[u8]) -> u64 {
    let bytes = store.load_state("orders", key).await.unwrap();
    bytes.map_or(0, |b| serde_json::from_slice(&b).unwrap())
}

/// What each stream should hold: its positions, in order.
fn expected(events: &[(String, u64)]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (stream, position) in events {
        out.entry(stream.clone()).or_default().push(*position);
    }
    out
}

#[actix::test]
async fn partitions_work_concurrently_keep_each_stream_in_order_and_count_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let events = fill(&store, 8, 40).await;
    let probe = Probe::default();
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_partitioned(Orders(probe.clone()), 4, SubscriptionConfig::default())
        .unwrap();
    let status = reached(&handle, store.head()).await;
    assert_eq!(status.partitions, 4);
    assert_eq!(status.events_handled, events.len() as u64);
    assert_eq!(probe.by_stream(), expected(&events), "per-stream order");
    assert!(
        probe.most_in_flight.load(Ordering::SeqCst) > 1,
        "the partitions never handled two events at once"
    );
    let status = handle.stop().await;
    assert_eq!(status.checkpoint, store.head());
    for s in 0..8 {
        assert_eq!(
            value(&store, format!("stream/order-{s}").as_bytes()).await,
            40
        );
    }
    // Another run starts after the checkpoint: nothing is handled twice.
    probe.seen.lock().unwrap().clear();
    let more = fill(&store, 8, 5).await;
    let handle = subs
        .start_partitioned(Orders(probe.clone()), 4, SubscriptionConfig::default())
        .unwrap();
    let status = reached(&handle, store.head()).await;
    assert_eq!(probe.by_stream(), expected(&more));
    assert_eq!(
        status.events_handled,
        (events.len() + more.len()) as u64,
        "totals carry over from the status record"
    );
    handle.stop().await;
    for s in 0..8 {
        assert_eq!(
            value(&store, format!("stream/order-{s}").as_bytes()).await,
            45
        );
    }
}

#[actix::test]
async fn a_state_key_shared_by_partitions_still_counts_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let events = fill(&store, 6, 30).await;
    let probe = Probe {
        shared_total: true,
        ..Probe::default()
    };
    let subs = Subscriptions::new(store.clone());
    let config = SubscriptionConfig::default().batch_size(32);
    let handle = subs
        .start_partitioned(Orders(probe.clone()), 3, config.clone())
        .unwrap();
    reached(&handle, events.len() as u64 / 2).await;
    handle.stop().await;
    let handle = subs
        .start_partitioned(Orders(probe.clone()), 3, config)
        .unwrap();
    reached(&handle, store.head()).await;
    handle.stop().await;
    assert_eq!(value(&store, b"total").await, events.len() as u64);
    for s in 0..6 {
        assert_eq!(
            value(&store, format!("stream/order-{s}").as_bytes()).await,
            30
        );
    }
}

#[actix::test]
async fn a_poison_event_parks_its_stream_while_the_other_partitions_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut events = fill(&store, 4, 10).await;
    let poison = OrderEvent::OrderPlaced { cents: POISON }
        .to_event_data()
        .unwrap();
    let at = store
        .append("order-2", ExpectedVersion::Any, vec![poison])
        .await
        .unwrap()
        .first_position;
    events.extend(fill(&store, 4, 5).await);
    let probe = Probe::default();
    probe.broken.store(true, Ordering::SeqCst);
    let subs = Subscriptions::new(store.clone());
    let config = SubscriptionConfig::default().failure_policy(FailurePolicy::retry_then_park(
        2,
        Duration::from_millis(1),
        Duration::from_millis(2),
    ));
    let handle = subs
        .start_partitioned(Orders(probe.clone()), 4, config)
        .unwrap();
    let status = reached(&handle, store.head()).await;
    assert_eq!(status.state, SubscriptionState::Parked);
    assert_eq!((status.parked, status.parked_streams), (6, 1));
    let parked: Vec<u64> = subs
        .parked("orders")
        .await
        .unwrap()
        .iter()
        .map(|p| p.position)
        .collect();
    let later: Vec<u64> = events
        .iter()
        .filter(|(s, p)| s == "order-2" && *p > at)
        .map(|(_, p)| *p)
        .collect();
    assert_eq!(parked, [vec![at], later.clone()].concat());
    let mut want = expected(&events);
    want.get_mut("order-2").unwrap().retain(|p| *p < at);
    assert_eq!(probe.by_stream(), want, "other streams went on");

    // After the fix the stream is replayed in order, through the running subscription.
    probe.broken.store(false, Ordering::SeqCst);
    probe.seen.lock().unwrap().clear();
    let outcome = subs.replay_parked("orders", "order-2").await.unwrap();
    assert_eq!((outcome.handled, outcome.still_parked), (6, 0));
    let replayed: Vec<u64> = probe.seen.lock().unwrap().iter().map(|s| s.1).collect();
    assert_eq!(replayed, [vec![at], later].concat());
    let status = handle.stop().await;
    assert_eq!(status.parked, 0);
    assert_eq!(value(&store, b"stream/order-2").await, 16);
}

#[actix::test]
async fn under_the_stop_policy_partitions_stop_at_the_failing_event_and_commit_only_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut events = fill(&store, 4, 20).await;
    let poison = OrderEvent::OrderPlaced { cents: POISON }
        .to_event_data()
        .unwrap();
    let at = store
        .append("order-1", ExpectedVersion::Any, vec![poison])
        .await
        .unwrap()
        .first_position;
    events.extend(fill(&store, 4, 20).await);
    let probe = Probe::default();
    probe.broken.store(true, Ordering::SeqCst);
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_partitioned(Orders(probe.clone()), 4, SubscriptionConfig::default())
        .unwrap();
    let status = handle.finished().await;
    let SubscriptionState::Failed(reason) = &status.state else {
        panic!("{status:?}")
    };
    assert!(reason.contains(&format!("position {at}")), "{reason}");
    assert_eq!(store.load_checkpoint("orders").await.unwrap(), Some(at - 1));
    // The state holds exactly the events before the failing one, whatever the other
    // partitions had handled beyond it.
    let before = expected(&events.into_iter().filter(|e| e.1 < at).collect::<Vec<_>>());
    for (stream, positions) in before {
        let key = format!("stream/{stream}");
        assert_eq!(
            value(&store, key.as_bytes()).await,
            positions.len() as u64,
            "{stream}"
        );
    }
    let stored = subscription_status_from_store(&*store, "orders")
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(stored.state, SubscriptionState::Failed(_)));
}

#[actix::test]
async fn a_handler_that_writes_a_reserved_key_fails_the_event_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, 1, 3).await;
    let probe = Probe {
        write_reserved: true,
        ..Probe::default()
    };
    let subs = Subscriptions::new(store.clone());
    let handle = subs.start(Orders(probe)).unwrap();
    let status = handle.finished().await;
    let SubscriptionState::Failed(reason) = &status.state else {
        panic!("{status:?}")
    };
    assert!(reason.contains("reserved state key"), "{reason}");
    assert!(reason.contains("position 1"), "{reason}");
    assert_eq!(store.load_checkpoint("orders").await.unwrap(), Some(0));
}
