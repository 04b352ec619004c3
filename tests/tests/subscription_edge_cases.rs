//! Edge cases of subscription control and partitioned workers found in review: operations on a
//! running subscription are refused, not queued; the status record after a stop in a restart
//! backoff; partitions reported at once; deferred replays in a partitioned subscription; a key
//! shared by partitions, also when a stale read makes an event fail.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tidings_tests::support::{reached, PATIENCE};

use tidings::store::{EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{
    subscription_status_from_store, ControlError, EventContext, FailurePolicy, HandleEvent,
    HandlerError, ResetTo, SubscriptionConfig, SubscriptionState, Subscriptions,
};
use tidings::{async_trait, DomainEvent, EventHandler};
use tidings_tests::domain::OrderEvent;

#[derive(Clone, Default)]
struct Probe {
    handled: Arc<AtomicU64>,
    /// While true, every event panics.
    panic: Arc<AtomicBool>,
    /// While true, every event fails (handler error).
    fail: Arc<AtomicBool>,
}

#[derive(Clone, EventHandler)]
#[event_handler(name = "scratch", events(OrderEvent))]
struct Scratch(Probe);

#[async_trait]
impl HandleEvent<OrderEvent> for Scratch {
    async fn handle(
        &mut self,
        _event: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if self.0.panic.load(Ordering::SeqCst) {
            panic!("scratch panic");
        }
        if self.0.fail.load(Ordering::SeqCst) {
            return Err("scratch failure".into());
        }
        let key = format!("stream/{}", ctx.event().stream_id).into_bytes();
        let n: u64 = ctx.get_json(&key).await?.unwrap_or(0);
        ctx.put_json(&key, &(n + 1))?;
        self.0.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn fill(store: &SledEventStore, streams: u64, per_stream: u64) {
    for i in 0..per_stream {
        for s in 0..streams {
            let data = OrderEvent::OrderPlaced { cents: 100 + i }
                .to_event_data()
                .unwrap();
            store
                .append(&format!("order-{s}"), ExpectedVersion::Any, vec![data])
                .await
                .unwrap();
        }
    }
}

/// A reset of a running subscription is refused with `ControlError::Running` (also once its loop
/// holds the per-name lock), not queued behind the loop.
#[actix::test]
async fn reset_of_a_running_subscription_is_refused_not_hung() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    fill(&store, 2, 5).await;
    let subs = Subscriptions::new(store.clone());
    let handle = subs.start(Scratch(Probe::default())).unwrap();
    // The loop holds the lock now.
    reached(&handle, store.head()).await;
    // A refusal is immediate; the bound only catches a reset that waits for the loop (a hang),
    // and is generous so that a loaded machine does not fail the test.
    let reset =
        tokio::time::timeout(PATIENCE, subs.reset("scratch", ResetTo::Beginning, false)).await;
    let refused = matches!(reset, Ok(Err(ControlError::Running(_))));
    handle.stop().await;
    assert!(
        refused,
        "reset of a running subscription was not refused: {reset:?}"
    );
}

/// A refused reset does not go through later, when the subscription stops.
#[actix::test]
async fn a_refused_reset_does_not_apply_itself_when_the_subscription_stops_later() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    fill(&store, 2, 5).await;
    let subs = Subscriptions::new(store.clone());
    let handle = subs.start(Scratch(Probe::default())).unwrap();
    reached(&handle, store.head()).await;
    let s2 = subs.clone();
    let mut reset =
        tokio::spawn(async move { s2.reset("scratch", ResetTo::Beginning, false).await });
    // Stop once the reset has answered (refused), however slow the machine; a reset that waits
    // for the loop instead is still pending at the bound, and the stop below lets it through.
    let answered = tokio::time::timeout(PATIENCE, &mut reset).await;
    handle.stop().await;
    let result = match answered {
        Ok(result) => Ok(result),
        Err(_) => tokio::time::timeout(PATIENCE, reset).await,
    };
    let checkpoint = store.load_checkpoint("scratch").await.unwrap();
    assert_eq!(
        checkpoint,
        Some(store.head()),
        "a reset requested while running moved the checkpoint after the stop: {result:?}"
    );
    assert!(
        matches!(result, Ok(Ok(Err(ControlError::Running(_))))),
        "the reset of a running subscription was not refused: {result:?}"
    );
}

/// The status says how many partitions at once (docs/subscriptions.md's example).
#[actix::test]
async fn partitions_are_reported_right_after_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_partitioned(Scratch(Probe::default()), 8, SubscriptionConfig::default())
        .unwrap();
    let partitions = handle.status().partitions;
    handle.stop().await;
    assert_eq!(partitions, 8);
}

/// The status record says `Stopped` after a stop, also one that comes during the pause before a
/// restart after a panic, and it counts that restart.
#[actix::test]
async fn the_status_record_says_stopped_after_a_stop_during_the_restart_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    fill(&store, 1, 3).await;
    let probe = Probe::default();
    probe.panic.store(true, Ordering::SeqCst);
    let subs = Subscriptions::new(store.clone());
    let config = SubscriptionConfig::default().restart_backoff(Duration::from_secs(5));
    let handle = subs.start_with(Scratch(probe), config).unwrap();
    while handle.status().restarts == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = handle.stop().await;
    assert_eq!(status.state, SubscriptionState::Stopped);
    let stored = subscription_status_from_store(&*store, "scratch")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, SubscriptionState::Stopped, "{stored:?}");
    assert!(stored.restarts >= 1, "{stored:?}");
}

/// A parked partitioned stream; stop; while it is stopped, request a replay (deferred) and
/// start it again after a fix: the deferred replay runs first and the state leaves Parked.
#[actix::test]
async fn deferred_replay_in_a_partitioned_subscription_leaves_parked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    fill(&store, 4, 3).await;
    let probe = Probe::default();
    probe.fail.store(true, Ordering::SeqCst);
    let subs = Subscriptions::new(store.clone());
    let config = SubscriptionConfig::default().failure_policy(FailurePolicy::retry_then_park(
        0,
        Duration::from_millis(1),
        Duration::from_millis(1),
    ));
    let handle = subs
        .start_partitioned(Scratch(probe.clone()), 3, config.clone())
        .unwrap();
    let status = reached(&handle, store.head()).await;
    assert_eq!((status.parked, status.parked_streams), (12, 4));
    handle.stop().await;
    for s in 0..4 {
        let outcome = subs
            .replay_parked("scratch", &format!("order-{s}"))
            .await
            .unwrap();
        assert!(outcome.deferred);
    }
    probe.fail.store(false, Ordering::SeqCst);
    let handle = subs
        .start_partitioned(Scratch(probe.clone()), 3, config)
        .unwrap();
    let status = reached(&handle, store.head()).await;
    // The replayed streams leave the parked list and the state says Live a moment after the
    // last event is handled: wait for that (or the bound), not for a fixed pause.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let status2 = loop {
        let s = handle.status();
        let settled = s.parked == 0 && s.state == SubscriptionState::Live;
        if settled || tokio::time::Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    handle.stop().await;
    assert_eq!(probe.handled.load(Ordering::SeqCst), 12, "{status:?}");
    assert_eq!(status2.parked, 0);
    assert_eq!(status2.state, SubscriptionState::Live, "{status2:?}");
}

/// Keeps a total over all streams (a key every partition writes) and records each delivery.
#[derive(Clone, Default)]
struct Deliveries(Arc<std::sync::Mutex<Vec<(String, u64)>>>);

#[derive(Clone, EventHandler)]
#[event_handler(name = "totals", events(OrderEvent))]
struct Totals(Deliveries);

#[async_trait]
impl HandleEvent<OrderEvent> for Totals {
    async fn handle(
        &mut self,
        _event: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let total: u64 = ctx.get_json(b"total").await?.unwrap_or(0);
        ctx.put_json(b"total", &(total + 1))?;
        let e = ctx.event();
        // An effect outside the store (a call to another service, say).
        self.0
             .0
            .lock()
            .unwrap()
            .push((e.stream_id.to_string(), e.position));
        Ok(())
    }
}

/// A key shared by partitions: the state is exact, and the only events delivered twice (by their
/// lane, then again one at a time) are the few that the lanes had handled when the first stale
/// read was seen; after that the subscription handles pages one event at a time for a while.
#[actix::test]
async fn a_shared_key_keeps_the_state_exact_and_redelivers_only_a_few_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    fill(&store, 6, 10).await;
    let deliveries = Deliveries::default();
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_partitioned(Totals(deliveries.clone()), 3, SubscriptionConfig::default())
        .unwrap();
    reached(&handle, store.head()).await;
    handle.stop().await;
    let total: u64 =
        serde_json::from_slice(&store.load_state("totals", b"total").await.unwrap().unwrap())
            .unwrap();
    assert_eq!(total, 60, "the state is exact");
    let seen = deliveries.0.lock().unwrap().clone();
    let mut last: std::collections::BTreeMap<String, u64> = Default::default();
    let mut backwards = 0;
    for (stream, position) in &seen {
        if last.get(stream).is_some_and(|p| p >= position) {
            backwards += 1;
        }
        last.insert(stream.clone(), *position);
    }
    let redelivered = seen.len() - 60;
    assert!(
        redelivered <= 6 && backwards <= redelivered,
        "{redelivered} events delivered twice, {backwards} per-stream deliveries went back"
    );
}

/// The partition of a stream (FNV-1a, as the framework computes it).
fn fnv_partition(stream: &str, n: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stream.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash % n
}

/// OrderPlaced opens a shared record; OrderCancelled (another stream) needs it and fails
/// without it: a cross-stream projection (an order and its payment, say).
#[derive(Clone, EventHandler)]
#[event_handler(name = "links", events(OrderEvent))]
struct Links;

#[async_trait]
impl HandleEvent<OrderEvent> for Links {
    async fn handle(
        &mut self,
        event: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        match event {
            OrderEvent::OrderPlaced { .. } => ctx.put_json(b"opened", &1u64)?,
            OrderEvent::OrderCancelled => {
                let opened: Option<u64> = ctx.get_json(b"opened").await?;
                if opened.is_none() {
                    return Err("nothing opened yet".into());
                }
                ctx.put_json(b"closed", &1u64)?;
            }
        }
        Ok(())
    }
}

async fn two_streams_in_two_partitions(store: &SledEventStore) {
    let a = "s-0".to_string();
    let b = (1..100)
        .map(|i| format!("s-{i}"))
        .find(|s| fnv_partition(s, 2) != fnv_partition(&a, 2))
        .unwrap();
    let placed = OrderEvent::OrderPlaced { cents: 1 }
        .to_event_data()
        .unwrap();
    store
        .append(&a, ExpectedVersion::Any, vec![placed])
        .await
        .unwrap();
    let cancelled = OrderEvent::OrderCancelled.to_event_data().unwrap();
    store
        .append(&b, ExpectedVersion::Any, vec![cancelled])
        .await
        .unwrap();
}

/// With 2 partitions, event 2 first reads the shared key without event 1's write (another
/// partition's, in the same round) and fails; the stale read is seen and the event handled again
/// after event 1, as one worker would: it is not parked.
#[actix::test]
async fn a_stale_read_that_makes_an_event_fail_is_handled_again_not_parked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    two_streams_in_two_partitions(&store).await;
    let subs = Subscriptions::new(store.clone());
    let config = SubscriptionConfig::default().failure_policy(FailurePolicy::retry_then_park(
        2,
        Duration::from_millis(1),
        Duration::from_millis(2),
    ));
    let handle = subs.start_partitioned(Links, 2, config).unwrap();
    let status = reached(&handle, store.head()).await;
    handle.stop().await;
    let closed = store.load_state("links", b"closed").await.unwrap();
    assert_eq!(status.parked, 0, "{status:?}");
    assert!(closed.is_some());
}

/// The same under the default Stop policy: it does not fail.
#[actix::test]
async fn a_stale_read_that_makes_an_event_fail_does_not_stop_the_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    two_streams_in_two_partitions(&store).await;
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_partitioned(Links, 2, SubscriptionConfig::default())
        .unwrap();
    let status = reached(&handle, store.head()).await;
    handle.stop().await;
    assert!(
        !matches!(status.state, SubscriptionState::Failed(_)),
        "{status:?}"
    );
}

/// One worker handles both (what the partitions must match).
#[actix::test]
async fn one_worker_handles_both_events_of_the_cross_stream_projection() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    two_streams_in_two_partitions(&store).await;
    let subs = Subscriptions::new(store.clone());
    let handle = subs.start(Links).unwrap();
    let status = reached(&handle, store.head()).await;
    handle.stop().await;
    assert!(
        !matches!(status.state, SubscriptionState::Failed(_)),
        "{status:?}"
    );
    assert!(store
        .load_state("links", b"closed")
        .await
        .unwrap()
        .is_some());
}
