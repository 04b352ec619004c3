//! Subscriptions under failure: retries with backoff, ordered parking per stream, replay and skip
//! of parked events, reset of the checkpoint, and the status kept in the store.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tidings_tests::support::reached;

use tidings::store::{EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{
    subscription_status_from_store, ControlError, EventContext, FailurePolicy, HandleEvent,
    HandlerError, ResetTo, SubscriptionConfig, SubscriptionState, Subscriptions,
};
use tidings::{async_trait, DomainEvent, EventHandler};
use tidings_tests::domain::OrderEvent;
use tidings_tests::support::{close, env_or, runtime, LineChild};

const PARKING_CHILD: &str = env!("CARGO_BIN_EXE_parking_child");

/// The order value that the handler cannot handle while it is broken.
const POISON: u64 = 13;

/// Shared between the handler instances of one test.
#[derive(Clone, Default)]
struct Probe {
    /// Positions handled, in order.
    seen: Arc<Mutex<Vec<u64>>>,
    /// Attempts at a poison event.
    poison_attempts: Arc<AtomicU64>,
    /// While true, the handler fails on poison events.
    broken: Arc<AtomicBool>,
    /// Otherwise, it fails on this many more attempts at poison events (a transient failure).
    transient: Arc<AtomicU64>,
    /// While true, the next attempt at a poison event panics (once).
    panic_once: Arc<AtomicBool>,
}

impl Probe {
    fn broken() -> Self {
        let probe = Probe::default();
        probe.broken.store(true, Ordering::SeqCst);
        probe
    }

    fn seen(&self) -> Vec<u64> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// Records each order it handles and counts them in its (exactly-once) state.
#[derive(EventHandler)]
#[event_handler(name = "orders", events(OrderEvent))]
struct Orders(Probe);

#[async_trait]
impl HandleEvent<OrderEvent> for Orders {
    async fn handle(
        &mut self,
        event: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if let OrderEvent::OrderPlaced { cents: POISON } = event {
            self.0.poison_attempts.fetch_add(1, Ordering::SeqCst);
            if self.0.panic_once.swap(false, Ordering::SeqCst) {
                panic!("a bug met the poison order");
            }
            if self.0.broken.load(Ordering::SeqCst) {
                return Err("poison order".into());
            }
            let transient = &self.0.transient;
            if transient
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err("gateway timeout".into());
            }
        }
        let count: u64 = ctx.get_json(b"count").await?.unwrap_or(0);
        ctx.put_json(b"count", &(count + 1))?;
        self.0.seen.lock().unwrap().push(ctx.event().position);
        Ok(())
    }
}

fn config() -> SubscriptionConfig {
    SubscriptionConfig::default().failure_policy(FailurePolicy::retry_then_park(
        3,
        Duration::from_millis(1),
        Duration::from_millis(4),
    ))
}

/// Appends one order of `cents` to `stream`; returns its position.
async fn order(store: &SledEventStore, stream: &str, cents: u64) -> u64 {
    let data = OrderEvent::OrderPlaced { cents }.to_event_data().unwrap();
    store
        .append(stream, ExpectedVersion::Any, vec![data])
        .await
        .unwrap()
        .first_position
}

fn open(dir: &std::path::Path) -> Arc<SledEventStore> {
    Arc::new(SledEventStore::open(dir).unwrap())
}

async fn count(store: &SledEventStore) -> u64 {
    let bytes = store.load_state("orders", b"count").await.unwrap();
    bytes.map_or(0, |b| serde_json::from_slice(&b).unwrap())
}

#[actix::test]
async fn a_poison_event_is_retried_then_parked_with_the_rest_of_its_stream_and_replayed_in_order_after_a_fix(
) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a1 = order(&store, "order-a", 1).await;
    let poison = order(&store, "order-a", POISON).await;
    let b1 = order(&store, "order-b", 2).await;
    let a2 = order(&store, "order-a", 3).await;
    let b2 = order(&store, "order-b", 4).await;
    let a3 = order(&store, "order-a", 5).await;

    let probe = Probe::broken();
    let subs = Subscriptions::new(store.clone());
    let handle = subs.start_with(Orders(probe.clone()), config()).unwrap();
    let status = reached(&handle, store.head()).await;

    // Retried max_retries times after the first attempt, then parked.
    assert_eq!(probe.poison_attempts.load(Ordering::SeqCst), 4);
    assert_eq!(status.retries, 3);
    // The other stream went on; the poison's stream waits behind it, in order.
    assert_eq!(probe.seen(), vec![a1, b1, b2]);
    let parked = subs.parked("orders").await.unwrap();
    let positions: Vec<u64> = parked.iter().map(|p| p.position).collect();
    assert_eq!(positions, vec![poison, a2, a3]);
    assert!(parked.iter().all(|p| p.stream_id == "order-a"));
    assert!(
        parked[0].reason.contains("poison order"),
        "{}",
        parked[0].reason
    );
    assert!(parked[0].reason.contains(&format!("position {poison}")));
    assert!(parked[1].reason.contains("earlier event of its stream"));
    assert_eq!(parked[0].event_type, "OrderPlaced");

    // Later events of the parked stream are parked too; other streams are handled live.
    let a4 = order(&store, "order-a", 6).await;
    let b3 = order(&store, "order-b", 7).await;
    let status = reached(&handle, b3).await;
    assert_eq!(probe.seen(), vec![a1, b1, b2, b3]);
    assert_eq!((status.parked, status.parked_streams), (4, 1));
    assert_eq!(status.state, SubscriptionState::Parked);
    assert_eq!(status.lag(), 0);

    // Through the store (as another process sees it), after the loop committed.
    handle.flush().await.unwrap();
    let stored = subscription_status_from_store(&*store, "orders")
        .await
        .unwrap()
        .expect("a status record");
    assert_eq!(stored.checkpoint, b3);
    assert_eq!(
        (stored.retries, stored.parked, stored.parked_streams),
        (3, 4, 1)
    );
    assert_eq!(stored.lag(), 0);
    assert_eq!(store.load_checkpoint("orders").await.unwrap(), Some(b3));

    // The fix ships: replay handles the parked events in order, and the stream is free again.
    probe.broken.store(false, Ordering::SeqCst);
    let outcome = subs.replay_parked("orders", "order-a").await.unwrap();
    assert_eq!((outcome.handled, outcome.still_parked), (4, 0));
    assert_eq!(probe.seen(), vec![a1, b1, b2, b3, poison, a2, a3, a4]);
    assert!(subs.parked("orders").await.unwrap().is_empty());
    let a5 = order(&store, "order-a", 8).await;
    let status = reached(&handle, a5).await;
    assert_eq!(probe.seen().last(), Some(&a5));
    assert_eq!((status.parked, status.parked_streams), (0, 0));

    // The exactly-once count saw each event once.
    handle.stop().await;
    assert_eq!(count(&store).await, 9);
    // A stopped subscription's handle does nothing, and says why.
    assert!(
        matches!(handle.flush().await, Err(ControlError::NotRunning(name)) if name == "orders")
    );
    assert!(matches!(
        handle.replay_parked("order-a").await,
        Err(ControlError::NotRunning(_))
    ));
    assert!(matches!(
        handle.skip_parked(a5).await,
        Err(ControlError::NotRunning(_))
    ));
    let stored = subscription_status_from_store(&*store, "orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, SubscriptionState::Stopped);
    assert_eq!(
        (stored.checkpoint, stored.parked, stored.retries),
        (a5, 0, 3)
    );
}

#[actix::test]
async fn a_transient_failure_is_retried_with_backoff_and_handled_in_place_without_parking() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a1 = order(&store, "order-a", 1).await;
    let poison = order(&store, "order-a", POISON).await;
    let a2 = order(&store, "order-a", 2).await;

    let probe = Probe::default();
    probe.transient.store(2, Ordering::SeqCst);
    let subs = Subscriptions::new(store.clone());
    let config = SubscriptionConfig::default().failure_policy(FailurePolicy::retry_then_park(
        3,
        Duration::from_millis(20),
        Duration::from_millis(30),
    ));
    let started = std::time::Instant::now();
    let handle = subs.start_with(Orders(probe.clone()), config).unwrap();
    let status = reached(&handle, a2).await;
    // Pauses of at least half of 20 ms, then half of min(40, 30) ms (the jitter is the rest).
    assert!(started.elapsed() >= Duration::from_millis(25));
    assert_eq!(probe.poison_attempts.load(Ordering::SeqCst), 3);
    assert_eq!((status.retries, status.parked), (2, 0));
    assert_eq!(probe.seen(), vec![a1, poison, a2]);
    assert!(subs.parked("orders").await.unwrap().is_empty());
    handle.stop().await;
    assert_eq!(count(&store).await, 3);
}

#[actix::test]
async fn a_replay_that_fails_again_keeps_the_stream_parked_and_skip_drops_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let poison = order(&store, "order-a", POISON).await;
    let a2 = order(&store, "order-a", 2).await;
    let b1 = order(&store, "order-b", 3).await;

    let probe = Probe::broken();
    let subs = Subscriptions::new(store.clone());
    let handle = subs.start_with(Orders(probe.clone()), config()).unwrap();
    reached(&handle, b1).await;
    assert_eq!(probe.seen(), vec![b1]);

    // Still broken: the replay fails on the first event, which stays parked with the rest.
    let outcome = subs.replay_parked("orders", "order-a").await.unwrap();
    assert_eq!((outcome.handled, outcome.still_parked), (0, 2));
    assert_eq!(probe.poison_attempts.load(Ordering::SeqCst), 8);
    let positions: Vec<u64> = subs
        .parked("orders")
        .await
        .unwrap()
        .iter()
        .map(|p| p.position)
        .collect();
    assert_eq!(positions, vec![poison, a2]);

    // Skip the poison event: the next one of its stream stays parked until replayed.
    assert!(subs.skip_parked("orders", poison).await.unwrap());
    assert!(!subs.skip_parked("orders", poison).await.unwrap());
    let a3 = order(&store, "order-a", 4).await;
    reached(&handle, a3).await;
    let positions: Vec<u64> = subs
        .parked("orders")
        .await
        .unwrap()
        .iter()
        .map(|p| p.position)
        .collect();
    assert_eq!(positions, vec![a2, a3]);
    assert_eq!(probe.seen(), vec![b1]);

    let outcome = subs.replay_parked("orders", "order-a").await.unwrap();
    assert_eq!((outcome.handled, outcome.still_parked), (2, 0));
    assert_eq!(probe.seen(), vec![b1, a2, a3]);
    let status = handle.stop().await;
    assert_eq!((status.parked, status.parked_streams), (0, 0));
    assert_eq!(count(&store).await, 3);
}

#[actix::test]
async fn parked_events_survive_stop_start_and_a_reopen_of_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let probe = Probe::broken();
    let (poison, a2, before) = {
        let store = open(dir.path());
        let poison = order(&store, "order-a", POISON).await;
        let a2 = order(&store, "order-a", 2).await;
        let subs = Subscriptions::new(store.clone());
        let handle = subs.start_with(Orders(probe.clone()), config()).unwrap();
        reached(&handle, a2).await;
        handle.stop().await;
        // While stopped, parked events are read from the store.
        let before = subs.parked("orders").await.unwrap();
        assert_eq!(before.len(), 2);
        (poison, a2, before)
    };

    // Reopen the store (the actor may take a moment to let go of it).
    let store = {
        let mut tries = 0;
        loop {
            match SledEventStore::open(dir.path()) {
                Ok(s) => break Arc::new(s),
                Err(e) if tries < 200 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    };
    let subs = Subscriptions::new(store.clone());
    assert_eq!(subs.parked("orders").await.unwrap(), before);

    // Started again: the stream is still parked, so its new events are parked behind.
    let a3 = order(&store, "order-a", 3).await;
    let b1 = order(&store, "order-b", 4).await;
    let handle = subs.start_with(Orders(probe.clone()), config()).unwrap();
    let status = reached(&handle, b1).await;
    assert_eq!(probe.seen(), vec![b1]);
    assert_eq!((status.parked, status.parked_streams), (3, 1));
    handle.stop().await;

    // A replay asked for while stopped is recorded, and runs when the subscription starts.
    probe.broken.store(false, Ordering::SeqCst);
    let outcome = subs.replay_parked("orders", "order-a").await.unwrap();
    assert!(outcome.deferred);
    assert_eq!(outcome.still_parked, 3);
    let handle = subs.start_with(Orders(probe.clone()), config()).unwrap();
    let a4 = order(&store, "order-a", 5).await;
    reached(&handle, a4).await;
    assert_eq!(probe.seen(), vec![b1, poison, a2, a3, a4]);
    assert!(subs.parked("orders").await.unwrap().is_empty());
    handle.stop().await;

    // Skip works on a stopped subscription too, through the store.
    probe.broken.store(true, Ordering::SeqCst);
    let p2 = order(&store, "order-c", POISON).await;
    let handle = subs.start_with(Orders(probe.clone()), config()).unwrap();
    reached(&handle, p2).await;
    handle.stop().await;
    assert_eq!(subs.parked("orders").await.unwrap().len(), 1);
    assert!(subs.skip_parked("orders", p2).await.unwrap());
    assert!(subs.parked("orders").await.unwrap().is_empty());
    let stored = subscription_status_from_store(&*store, "orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.parked, 0);
}

#[actix::test]
async fn reset_to_beginning_position_time_and_end_replays_exactly_what_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut first = Vec::new();
    for i in 0..5 {
        first.push(order(&store, &format!("order-{i}"), 100 + i).await);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut second = Vec::new();
    for i in 0..5 {
        second.push(order(&store, &format!("order-{i}"), 200 + i).await);
    }
    let all: Vec<u64> = first.iter().chain(&second).copied().collect();

    let probe = Probe::default();
    let subs = Subscriptions::new(store.clone());
    let run = |probe: &Probe| {
        let subs = subs.clone();
        let probe = probe.clone();
        let store = store.clone();
        async move {
            probe.clear();
            let handle = subs.start_with(Orders(probe.clone()), config()).unwrap();
            reached(&handle, store.head()).await;
            handle.stop().await;
            probe.seen()
        }
    };
    assert_eq!(run(&probe).await, all);
    assert_eq!(count(&store).await, 10);

    // A reset needs the subscription stopped.
    let handle = subs.start_with(Orders(probe.clone()), config()).unwrap();
    assert!(matches!(
        subs.reset("orders", ResetTo::Beginning, false).await,
        Err(ControlError::Running(_))
    ));
    handle.stop().await;

    let cp = subs
        .reset("orders", ResetTo::Position(first[3]), false)
        .await
        .unwrap();
    assert_eq!(cp, first[3] - 1);
    assert_eq!(run(&probe).await, all[3..].to_vec());

    subs.reset("orders", ResetTo::Timestamp(t), false)
        .await
        .unwrap();
    assert_eq!(run(&probe).await, second);

    subs.reset("orders", ResetTo::End, false).await.unwrap();
    assert_eq!(run(&probe).await, Vec::<u64>::new());

    // Without clearing, an exactly-once projection replays onto its existing state...
    let before = count(&store).await;
    subs.reset("orders", ResetTo::Beginning, false)
        .await
        .unwrap();
    assert_eq!(run(&probe).await, all);
    assert_eq!(count(&store).await, before + 10);
    // ...with clear_state it is rebuilt from nothing, in the same commit as the reset.
    subs.reset("orders", ResetTo::Beginning, true)
        .await
        .unwrap();
    assert_eq!(count(&store).await, 0);
    assert_eq!(run(&probe).await, all);
    assert_eq!(count(&store).await, 10);
    let stored = subscription_status_from_store(&*store, "orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.checkpoint, stored.lag()), (store.head(), 0));
}

/// Panics on every poison order.
#[derive(EventHandler)]
#[event_handler(name = "panicky", events(OrderEvent))]
struct Panicky;

#[async_trait]
impl HandleEvent<OrderEvent> for Panicky {
    async fn handle(
        &mut self,
        event: OrderEvent,
        _: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if let OrderEvent::OrderPlaced { cents: POISON } = event {
            panic!("poison order");
        }
        Ok(())
    }
}

#[actix::test]
async fn the_status_record_in_the_store_says_failed_under_the_stop_policy_and_after_panics() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a1 = order(&store, "order-a", 1).await;
    let poison = order(&store, "order-a", POISON).await;
    order(&store, "order-b", 2).await;

    // The default policy stops at the failing event: the store says so, naming it.
    let probe = Probe::broken();
    let subs = Subscriptions::new(store.clone());
    let handle = subs.start(Orders(probe.clone())).unwrap();
    let status = handle.finished().await;
    assert!(matches!(status.state, SubscriptionState::Failed(_)));
    assert_eq!(probe.poison_attempts.load(Ordering::SeqCst), 1);
    assert_eq!(status.retries, 0);
    let stored = subscription_status_from_store(&*store, "orders")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.checkpoint, a1);
    assert_eq!(stored.state, status.state);
    assert!(subs.parked("orders").await.unwrap().is_empty());

    // Panics are restarts, not parking; after max_restarts the store says failed too.
    let config = config()
        .max_restarts(2)
        .restart_backoff(Duration::from_millis(1));
    let handle = subs.start_with(Panicky, config.clone()).unwrap();
    let status = handle.finished().await;
    assert_eq!(status.restarts, 3);
    let SubscriptionState::Failed(reason) = &status.state else {
        panic!("{status:?}");
    };
    assert!(reason.contains(&format!("position {poison}")), "{reason}");
    let stored = subscription_status_from_store(&*store, "panicky")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.checkpoint, stored.restarts), (a1, 3));
    assert_eq!(stored.state, status.state);
    assert_eq!(stored.lag(), store.head() - a1);

    // Started again, the total carries over, but the limit counts this start's restarts only:
    // it fails after 2 more restarts, not at once.
    let handle = subs.start_with(Panicky, config).unwrap();
    let status = handle.finished().await;
    assert_eq!(status.restarts, 6);
    assert!(matches!(status.state, SubscriptionState::Failed(_)));
}

/// Runs `parking_child` on `dir`: kills it with SIGKILL after `kill_after`, or (with `None`) once
/// it says it caught up. Returns whether it caught up.
fn run_parking_child(dir: &std::path::Path, kill_after: Option<Duration>) -> bool {
    let child = LineChild::spawn(
        Command::new(PARKING_CHILD).arg("run").arg(dir),
        "parking_child",
    );
    let deadline = std::time::Instant::now() + kill_after.unwrap_or(Duration::from_secs(20));
    let mut caught_up = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match child
            .lines
            .recv_timeout(left.min(Duration::from_millis(20)))
        {
            Ok(line) => {
                assert!(!line.starts_with("FAILED"), "parking_child: {line}");
                if line.starts_with("CAUGHTUP") {
                    caught_up = true;
                    if kill_after.is_none() {
                        break;
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // As the child's own stderr would have been shown.
    eprint!("{}", child.kill().stderr);
    caught_up
}

/// After any kill: every order at or below the checkpoint of a good stream is counted exactly
/// once, and every order at or below it of a `bad-` stream is parked exactly once, in order.
async fn check_parking(store: &SledEventStore, streams: &[(u64, String)]) -> u64 {
    let checkpoint = store.load_checkpoint("parking").await.unwrap().unwrap_or(0);
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut parked_expected = Vec::new();
    for (position, stream) in streams.iter().filter(|(p, _)| *p <= checkpoint) {
        if stream.starts_with("bad-") {
            parked_expected.push(*position);
        } else {
            *counts.entry(stream).or_default() += 1;
        }
    }
    for stream in ["good-0", "good-1", "good-2", "bad-0", "bad-1"] {
        let key = format!("stream/{stream}").into_bytes();
        let stored: Option<u64> = store
            .load_state("parking", &key)
            .await
            .unwrap()
            .map(|b| serde_json::from_slice(&b).unwrap());
        assert_eq!(
            stored.unwrap_or(0),
            counts.get(stream).copied().unwrap_or(0),
            "count of {stream} at checkpoint {checkpoint}"
        );
    }
    let parked = tidings::subscription::parked_in_store(store, "parking")
        .await
        .unwrap();
    let positions: Vec<u64> = parked.iter().map(|p| p.position).collect();
    assert_eq!(
        positions, parked_expected,
        "parked at checkpoint {checkpoint}"
    );
    for stream in ["bad-0", "bad-1"] {
        let mut of_stream = parked.iter().filter(|p| p.stream_id == stream);
        if let Some(first) = of_stream.next() {
            assert!(first.reason.contains("bad stream"), "{}", first.reason);
        }
        assert!(of_stream.all(|p| p.reason.contains("earlier event of its stream")));
    }
    if let Some(status) = subscription_status_from_store(store, "parking")
        .await
        .unwrap()
    {
        assert_eq!(status.checkpoint, checkpoint);
        assert_eq!(status.parked, parked_expected.len() as u64);
    }
    checkpoint
}

#[test]
fn parked_events_survive_kill_9_exactly_once_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let names = ["good-0", "bad-0", "good-1", "good-2", "bad-1"];
    let streams: Vec<(u64, String)> = rt.block_on(async {
        let store = SledEventStore::open(dir.path()).unwrap();
        let mut streams = Vec::new();
        for i in 0..1500u64 {
            let stream = names[(i * 7 % 11) as usize % names.len()];
            let position = order(&store, stream, i).await;
            streams.push((position, stream.to_owned()));
        }
        close(store);
        streams
    });
    let cycles = env_or("TIDINGS_PARK_CRASH_CYCLES", 6);
    let mut checkpoints = Vec::new();
    for cycle in 0..cycles {
        let kill_after = Duration::from_millis(60 + (cycle * 97) % 250);
        run_parking_child(dir.path(), Some(kill_after));
        let store = SledEventStore::open(dir.path()).unwrap();
        checkpoints.push(rt.block_on(check_parking(&store, &streams)));
        close(store);
    }
    assert!(
        run_parking_child(dir.path(), None),
        "the last run catches up"
    );
    let store = SledEventStore::open(dir.path()).unwrap();
    let last = rt.block_on(check_parking(&store, &streams));
    assert_eq!(last, store.head());
    eprintln!("checkpoints after each kill: {checkpoints:?}, then {last}");
    close(store);
}

#[actix::test]
async fn a_panic_during_a_replay_is_not_parked_it_restarts_and_the_replay_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let poison = order(&store, "order-a", POISON).await;
    let a2 = order(&store, "order-a", 3).await;
    let b1 = order(&store, "order-b", 2).await;
    let probe = Probe::broken();
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_with(
            Orders(probe.clone()),
            config().restart_backoff(Duration::from_millis(1)),
        )
        .unwrap();
    reached(&handle, store.head()).await;
    assert_eq!(probe.seen(), vec![b1]);
    assert_eq!(subs.parked("orders").await.unwrap().len(), 2);

    // Fixed, but the first replay attempt meets a panic: the replay is not parked again with a
    // panic as its reason; the subscription restarts and the replay goes on after it.
    probe.broken.store(false, Ordering::SeqCst);
    probe.panic_once.store(true, Ordering::SeqCst);
    let _ = subs.replay_parked("orders", "order-a").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !subs.parked("orders").await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the replay did not go on after the restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = handle.status();
    assert_eq!(status.restarts, 1, "{status:?}");
    assert_eq!(probe.seen(), vec![b1, poison, a2]);
    assert_eq!(count(&store).await, 3, "each order counted exactly once");
    handle.stop().await;
}
