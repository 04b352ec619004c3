//! Durable subscriptions: catch-up, the switch to live under racing appends, downtime, stop and
//! start by name, panics, failures, exactly-once state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tidings_tests::support::{live, reached};

use tidings::store::{EventData, EventStore, ExpectedVersion, Filter, SledEventStore};
use tidings::subscription::{
    EventContext, HandleEvent, HandlerError, SubscriptionConfig, SubscriptionState, Subscriptions,
};
use tidings::{async_trait, DomainEvent, EventHandler};
use tidings_tests::domain::{Audited, OrderEvent, PaymentEvent};

/// What a recording handler saw: positions in the order handled.
type Seen = Arc<Mutex<Vec<u64>>>;

/// Records every order and payment event it gets.
#[derive(EventHandler)]
#[event_handler(name = "recorder", events(OrderEvent, PaymentEvent))]
struct Recorder {
    seen: Seen,
    /// While this holds true, each order event waits (a subscription held behind the others).
    held: Option<Arc<AtomicBool>>,
}

#[async_trait]
impl HandleEvent<OrderEvent> for Recorder {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if let Some(held) = &self.held {
            while held.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        self.seen.lock().unwrap().push(ctx.event().position);
        Ok(())
    }
}

#[async_trait]
impl HandleEvent<PaymentEvent> for Recorder {
    async fn handle(
        &mut self,
        _: PaymentEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push(ctx.event().position);
        Ok(())
    }
}

/// Records payments only, under another name.
#[derive(EventHandler)]
#[event_handler(name = "payments-only", events(PaymentEvent))]
struct PaymentsOnly {
    seen: Seen,
}

#[async_trait]
impl HandleEvent<PaymentEvent> for PaymentsOnly {
    async fn handle(
        &mut self,
        _: PaymentEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push(ctx.event().position);
        Ok(())
    }
}

/// A copy of what was seen (so that no lock is held across an await).
fn taken(seen: &Seen) -> Vec<u64> {
    seen.lock().unwrap().clone()
}

fn open() -> (Arc<SledEventStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    (store, dir)
}

fn event(i: u64) -> EventData {
    match i % 3 {
        0 => OrderEvent::OrderPlaced { cents: i }
            .to_event_data()
            .unwrap(),
        1 => PaymentEvent::PaymentVerified { cents: i }
            .to_event_data()
            .unwrap(),
        _ => Audited {
            note: format!("n{i}"),
        }
        .to_event_data()
        .unwrap(),
    }
}

/// Appends `count` events from `start`, in appends of 1 to 3, over 10 streams.
async fn append_many(store: &SledEventStore, start: u64, count: u64) {
    let mut i = start;
    while i < start + count {
        let n = (1 + i % 3).min(start + count - i);
        let events = (i..i + n).map(event).collect();
        store
            .append(&format!("mixed-{}", i % 10), ExpectedVersion::Any, events)
            .await
            .unwrap();
        i += n;
    }
}

/// The positions of every order and payment event in the log, read independently.
async fn expected_positions(store: &SledEventStore, from: u64) -> Vec<u64> {
    let filter = Filter::all().event_types(
        OrderEvent::EVENT_TYPES
            .iter()
            .chain(PaymentEvent::EVENT_TYPES)
            .copied(),
    );
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let page = store.read_all(next, 1000, &filter).await.unwrap();
        out.extend(page.events.iter().map(|e| e.position));
        next = page.next_position;
        if page.is_end() {
            return out;
        }
    }
}

#[actix::test]
async fn catch_up_then_live_with_appends_racing_the_switch_skips_and_repeats_nothing() {
    let (store, _dir) = open();
    append_many(&store, 0, 3_000).await;
    let subs = Subscriptions::new(store.clone());
    let seen = Seen::default();
    let handle = subs
        .start_with(
            Recorder {
                seen: seen.clone(),
                held: None,
            },
            SubscriptionConfig::default().batch_size(64),
        )
        .unwrap();
    // Appends race the catch-up, the switch to live, and live processing.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for round in 0..30u64 {
                append_many(&store, 3_000 + round * 100, 100).await;
                tokio::task::yield_now().await;
            }
        })
    };
    writer.await.unwrap();
    reached(&handle, store.head()).await;
    let status = live(&handle).await;
    assert_eq!(status.handled_up_to, store.head(), "{status:?}");
    assert_eq!(taken(&seen), expected_positions(&store, 1).await);
    let stopped = handle.stop().await;
    assert_eq!(stopped.state, SubscriptionState::Stopped);
    assert_eq!(
        store.load_checkpoint("recorder").await.unwrap(),
        Some(store.head())
    );
}

#[actix::test]
async fn a_subscription_stopped_while_10_000_events_are_appended_gets_exactly_those_in_order() {
    let (store, _dir) = open();
    let subs = Subscriptions::new(store.clone());
    append_many(&store, 0, 300).await;
    let first = Seen::default();
    let handle = subs
        .start(Recorder {
            seen: first.clone(),
            held: None,
        })
        .unwrap();
    reached(&handle, store.head()).await;
    // The stock service goes down...
    subs.stop("recorder").await.unwrap();
    let down_at = store.head();
    // ...while 10 000 events are appended (in appends of 100, to keep the test quick)...
    for chunk in 0..100u64 {
        let events = (0..100).map(|i| event(10_000 + chunk * 100 + i)).collect();
        store
            .append(&format!("bulk-{}", chunk % 7), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    assert_eq!(store.head(), down_at + 10_000);
    // ...and comes back: it gets exactly what it missed, in order.
    let second = Seen::default();
    let handle = subs
        .start(Recorder {
            seen: second.clone(),
            held: None,
        })
        .unwrap();
    reached(&handle, store.head()).await;
    let first = first.lock().unwrap().clone();
    let all = expected_positions(&store, 1).await;
    assert_eq!(first, all[..first.len()]);
    assert_eq!(first.last(), all.iter().rfind(|p| **p <= down_at));
    assert_eq!(
        taken(&second),
        expected_positions(&store, down_at + 1).await
    );
    assert!(second.lock().unwrap().len() > 6_000);
    handle.stop().await;
}

#[actix::test]
async fn subscriptions_run_side_by_side_each_at_its_own_pace_and_by_name() {
    let (store, _dir) = open();
    append_many(&store, 0, 600).await;
    let subs = Subscriptions::new(store.clone());
    let (slow_seen, fast_seen) = (Seen::default(), Seen::default());
    // The slow one is held until the fast one is at the head: no race with the machine's load.
    let held = Arc::new(AtomicBool::new(true));
    let slow = subs
        .start_with(
            Recorder {
                seen: slow_seen.clone(),
                held: Some(held.clone()),
            },
            SubscriptionConfig::default().batch_size(16),
        )
        .unwrap();
    let fast = subs
        .start(PaymentsOnly {
            seen: fast_seen.clone(),
        })
        .unwrap();
    reached(&fast, store.head()).await;
    let slow_progress = slow.status().handled_up_to;
    assert!(
        slow_progress < store.head(),
        "the slow one should still be behind ({slow_progress})"
    );
    assert!(
        subs.start(PaymentsOnly {
            seen: Seen::default()
        })
        .is_err(),
        "a second instance of a running name"
    );
    let names: Vec<String> = subs.statuses().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["payments-only", "recorder"]);
    held.store(false, Ordering::SeqCst);
    reached(&slow, store.head()).await;
    assert_eq!(taken(&slow_seen), expected_positions(&store, 1).await);
    let payments: Vec<u64> = {
        let mut v = Vec::new();
        let mut next = 1;
        loop {
            let page = store
                .read_all(
                    next,
                    1000,
                    &Filter::all().event_types(PaymentEvent::EVENT_TYPES.iter().copied()),
                )
                .await
                .unwrap();
            v.extend(page.events.iter().map(|e| e.position));
            next = page.next_position;
            if page.is_end() {
                break v;
            }
        }
    };
    assert_eq!(taken(&fast_seen), payments);
    subs.stop_all().await;
}

/// Panics the first time it meets position `panic_at`.
#[derive(EventHandler)]
#[event_handler(name = "panicky", events(OrderEvent, PaymentEvent))]
struct Panicky {
    seen: Seen,
    panic_at: u64,
    panicked: Arc<AtomicBool>,
}

#[async_trait]
impl HandleEvent<OrderEvent> for Panicky {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let position = ctx.event().position;
        if position == self.panic_at && !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("boom at {position}");
        }
        self.seen.lock().unwrap().push(position);
        Ok(())
    }
}

#[async_trait]
impl HandleEvent<PaymentEvent> for Panicky {
    async fn handle(
        &mut self,
        _: PaymentEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push(ctx.event().position);
        Ok(())
    }
}

#[actix::test]
async fn a_handler_panic_restarts_from_the_checkpoint_and_leaves_others_running() {
    let (store, _dir) = open();
    append_many(&store, 0, 300).await;
    let expected = expected_positions(&store, 1).await;
    let panic_at = expected
        .iter()
        .copied()
        .find(|p| *p > 150 && store_type_is_order(*p))
        .unwrap_or(expected[100]);
    let subs = Subscriptions::new(store.clone());
    let seen = Seen::default();
    let other = Seen::default();
    let panicky = subs
        .start_with(
            Panicky {
                seen: seen.clone(),
                panic_at,
                panicked: Arc::default(),
            },
            SubscriptionConfig::default().restart_backoff(Duration::from_millis(1)),
        )
        .unwrap();
    let bystander = subs
        .start(PaymentsOnly {
            seen: other.clone(),
        })
        .unwrap();
    reached(&panicky, store.head()).await;
    let status = live(&panicky).await;
    assert_eq!(status.restarts, 1, "{status:?}");
    // Nothing skipped: after the restart it went on from its checkpoint, in order, and the
    // panicking event was handled (once it no longer panics).
    let mut deduped = seen.lock().unwrap().clone();
    deduped.dedup();
    assert_eq!(deduped, expected);
    assert!(seen.lock().unwrap().contains(&panic_at));
    reached(&bystander, store.head()).await;
    assert_eq!(bystander.status().restarts, 0);
    assert!(!other.lock().unwrap().is_empty());
    subs.stop_all().await;
}

fn store_type_is_order(position: u64) -> bool {
    // `append_many` gives event i the type by i % 3 and position i + 1.
    (position - 1).is_multiple_of(3)
}

/// Fails (returns an error) at one position.
#[derive(EventHandler)]
#[event_handler(name = "failing", events(OrderEvent))]
struct Failing {
    fail_at: u64,
}

#[async_trait]
impl HandleEvent<OrderEvent> for Failing {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if ctx.event().position == self.fail_at {
            return Err("payment gateway said no".into());
        }
        Ok(())
    }
}

#[actix::test]
async fn a_handler_error_stops_at_that_event_with_the_checkpoint_just_before_it() {
    let (store, _dir) = open();
    append_many(&store, 0, 60).await;
    let subs = Subscriptions::new(store.clone());
    let handle = subs.start(Failing { fail_at: 31 }).unwrap();
    let status = handle.finished().await;
    match &status.state {
        SubscriptionState::Failed(reason) => {
            assert!(reason.contains("position 31"), "{reason}");
            assert!(reason.contains("payment gateway said no"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(store.load_checkpoint("failing").await.unwrap(), Some(30));
}

#[actix::test]
async fn an_undecodable_payload_fails_the_subscription_naming_position_and_type() {
    let (store, _dir) = open();
    append_many(&store, 0, 6).await;
    let bad = EventData::new(
        "OrderPlaced",
        br#"{"OrderPlaced":{"cents":"lots"}}"#.to_vec(),
    );
    let at = store
        .append("order-9", ExpectedVersion::Any, vec![bad])
        .await
        .unwrap()
        .first_position;
    append_many(&store, 100, 6).await;
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start(Recorder {
            seen: Seen::default(),
            held: None,
        })
        .unwrap();
    let status = handle.finished().await;
    match &status.state {
        SubscriptionState::Failed(reason) => {
            assert!(reason.contains(&format!("position {at}")), "{reason}");
            assert!(reason.contains("OrderPlaced"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(
        store.load_checkpoint("recorder").await.unwrap(),
        Some(at - 1)
    );
}

/// An exactly-once projection: totals kept in the subscription's state.
#[derive(EventHandler)]
#[event_handler(name = "totals", events(OrderEvent, PaymentEvent))]
struct Totals;

#[async_trait]
impl HandleEvent<OrderEvent> for Totals {
    async fn handle(
        &mut self,
        event: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if let OrderEvent::OrderPlaced { cents } = event {
            let total: u64 = ctx.get_json(b"ordered").await?.unwrap_or(0);
            ctx.put_json(b"ordered", &(total + cents))?;
        }
        Ok(())
    }
}

#[async_trait]
impl HandleEvent<PaymentEvent> for Totals {
    async fn handle(
        &mut self,
        event: PaymentEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let PaymentEvent::PaymentVerified { cents } = event;
        let total: u64 = ctx.get_json(b"paid").await?.unwrap_or(0);
        ctx.put_json(b"paid", &(total + cents))?;
        Ok(())
    }
}

async fn total(store: &SledEventStore, key: &[u8]) -> u64 {
    store
        .load_state("totals", key)
        .await
        .unwrap()
        .map_or(0, |v| serde_json::from_slice(&v).unwrap())
}

#[actix::test]
async fn projection_state_is_committed_with_the_checkpoint_and_never_counted_twice() {
    let (store, _dir) = open();
    let subs = Subscriptions::new(store.clone());
    let expected = |n: u64| -> (u64, u64) {
        let ordered = (0..n).filter(|i| i % 3 == 0).sum();
        let paid = (0..n).filter(|i| i % 3 == 1).sum();
        (ordered, paid)
    };
    for round in 1..=4u64 {
        append_many(&store, (round - 1) * 250, 250).await;
        let handle = subs
            .start_with(Totals, SubscriptionConfig::default().commit_every(7))
            .unwrap();
        reached(&handle, store.head()).await;
        handle.stop().await;
        assert_eq!(
            store.load_checkpoint("totals").await.unwrap(),
            Some(store.head())
        );
        assert_eq!(
            (
                total(&store, b"ordered").await,
                total(&store, b"paid").await
            ),
            expected(round * 250)
        );
    }
}

#[actix::test]
async fn start_from_end_skips_history_and_is_remembered_before_the_first_event() {
    #[derive(EventHandler)]
    #[event_handler(
        name = "from-end",
        events(OrderEvent, PaymentEvent),
        start_from = "end"
    )]
    struct FromEnd {
        seen: Seen,
        count: Arc<AtomicU64>,
    }
    #[async_trait]
    impl HandleEvent<OrderEvent> for FromEnd {
        async fn handle(
            &mut self,
            _: OrderEvent,
            ctx: &mut EventContext<'_>,
        ) -> Result<(), HandlerError> {
            self.count.fetch_add(1, Ordering::SeqCst);
            self.seen.lock().unwrap().push(ctx.event().position);
            Ok(())
        }
    }
    #[async_trait]
    impl HandleEvent<PaymentEvent> for FromEnd {
        async fn handle(
            &mut self,
            _: PaymentEvent,
            ctx: &mut EventContext<'_>,
        ) -> Result<(), HandlerError> {
            self.seen.lock().unwrap().push(ctx.event().position);
            Ok(())
        }
    }
    let (store, _dir) = open();
    append_many(&store, 0, 90).await;
    let subs = Subscriptions::new(store.clone());
    let seen = Seen::default();
    let handle = subs
        .start(FromEnd {
            seen: seen.clone(),
            count: Arc::default(),
        })
        .unwrap();
    // Wait until it has recorded where it starts, then stop it before anything new arrives.
    while store.load_checkpoint("from-end").await.unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    handle.stop().await;
    let start = store.load_checkpoint("from-end").await.unwrap().unwrap();
    assert_eq!(start, 90);
    // Events appended while it is down are not skipped when it comes back.
    append_many(&store, 90, 30).await;
    let handle = subs
        .start(FromEnd {
            seen: seen.clone(),
            count: Arc::default(),
        })
        .unwrap();
    reached(&handle, store.head()).await;
    assert_eq!(taken(&seen), expected_positions(&store, 91).await);
    handle.stop().await;
}

/// A subscription that starts at a position beyond the head waits for it (the store refuses a
/// checkpoint past its head, so nothing is recorded until the head gets there), survives a stop
/// and a start meanwhile, and then handles exactly the events from its start position on.
#[actix::test]
async fn a_start_position_beyond_the_head_waits_for_it() {
    #[derive(EventHandler)]
    #[event_handler(name = "from-42", events(OrderEvent, PaymentEvent), start_from = "42")]
    struct From42 {
        seen: Seen,
    }
    #[async_trait]
    impl HandleEvent<OrderEvent> for From42 {
        async fn handle(
            &mut self,
            _: OrderEvent,
            ctx: &mut EventContext<'_>,
        ) -> Result<(), HandlerError> {
            self.seen.lock().unwrap().push(ctx.event().position);
            Ok(())
        }
    }
    #[async_trait]
    impl HandleEvent<PaymentEvent> for From42 {
        async fn handle(
            &mut self,
            _: PaymentEvent,
            ctx: &mut EventContext<'_>,
        ) -> Result<(), HandlerError> {
            self.seen.lock().unwrap().push(ctx.event().position);
            Ok(())
        }
    }
    let (store, _dir) = open();
    append_many(&store, 0, 10).await;
    let subs = Subscriptions::new(store.clone());
    let seen = Seen::default();
    let handle = subs.start(From42 { seen: seen.clone() }).unwrap();
    let status = reached(&handle, 10).await;
    assert!(
        !matches!(status.state, SubscriptionState::Failed(_)),
        "{status:?}"
    );
    let stopped = handle.stop().await;
    assert_eq!(stopped.state, SubscriptionState::Stopped, "{stopped:?}");
    assert_eq!(store.load_checkpoint("from-42").await.unwrap(), None);
    append_many(&store, 10, 60).await;
    let handle = subs.start(From42 { seen: seen.clone() }).unwrap();
    let status = reached(&handle, store.head()).await;
    assert!(
        !matches!(status.state, SubscriptionState::Failed(_)),
        "{status:?}"
    );
    handle.stop().await;
    assert_eq!(taken(&seen), expected_positions(&store, 42).await);
    assert_eq!(store.load_checkpoint("from-42").await.unwrap(), Some(70));
}

/// A store that counts how many events a subscription has been handed but not yet handled.
struct Metered {
    inner: SledEventStore,
    /// Events returned by `read_all` so far.
    returned: Arc<AtomicU64>,
    /// The largest `max_count` asked for.
    largest_page: Arc<AtomicU64>,
    /// Checkpoint commits asked for so far.
    commits: Arc<AtomicU64>,
    /// The commit (counted from 1) that fails, after a pause, as if the store had gone away.
    fail_commit: Option<u64>,
    /// Whether that commit is stored before it fails (its answer lost on the way).
    fail_after_storing: bool,
}

impl Metered {
    fn new(inner: SledEventStore) -> Self {
        Metered {
            inner,
            returned: Arc::default(),
            largest_page: Arc::default(),
            commits: Arc::default(),
            fail_commit: None,
            fail_after_storing: false,
        }
    }
}

#[async_trait]
impl EventStore for Metered {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> tidings::store::Result<tidings::store::AppendResult> {
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> tidings::store::Result<Vec<tidings::store::RecordedEvent>> {
        self.inner.read_stream(stream, from, max).await
    }
    async fn stream_version(&self, stream: &str) -> tidings::store::Result<u64> {
        self.inner.stream_version(stream).await
    }
    async fn read_all(
        &self,
        from: u64,
        max: usize,
        filter: &Filter,
    ) -> tidings::store::Result<tidings::store::ReadBatch> {
        self.largest_page.fetch_max(max as u64, Ordering::SeqCst);
        let page = self.inner.read_all(from, max, filter).await?;
        self.returned
            .fetch_add(page.events.len() as u64, Ordering::SeqCst);
        Ok(page)
    }
    fn head(&self) -> u64 {
        self.inner.head()
    }
    fn watch_head(&self) -> tidings::store::HeadWatch {
        self.inner.watch_head()
    }
    async fn save_checkpoint(&self, name: &str, position: u64) -> tidings::store::Result<()> {
        self.inner.save_checkpoint(name, position).await
    }
    async fn load_checkpoint(&self, name: &str) -> tidings::store::Result<Option<u64>> {
        self.inner.load_checkpoint(name).await
    }
    async fn commit_checkpoint(
        &self,
        name: &str,
        expected: Option<u64>,
        position: u64,
        state: Vec<tidings::store::StateWrite>,
    ) -> tidings::store::Result<()> {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_commit == Some(n) {
            if self.fail_after_storing {
                self.inner
                    .commit_checkpoint(name, expected, position, state)
                    .await?;
            }
            // Long enough for the loop to handle the next events meanwhile.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(tidings::store::StoreError::Unavailable(
                "the test's store lost this commit's answer".into(),
            ));
        }
        self.inner
            .commit_checkpoint(name, expected, position, state)
            .await
    }
    async fn load_state(&self, name: &str, key: &[u8]) -> tidings::store::Result<Option<Vec<u8>>> {
        self.inner.load_state(name, key).await
    }
    async fn scan_state(
        &self,
        name: &str,
        prefix: &[u8],
        from: &[u8],
        max: usize,
    ) -> tidings::store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.scan_state(name, prefix, from, max).await
    }
    async fn save_snapshot(
        &self,
        stream: &str,
        snapshot: tidings::store::Snapshot,
    ) -> tidings::store::Result<()> {
        self.inner.save_snapshot(stream, snapshot).await
    }
    async fn load_snapshot(
        &self,
        stream: &str,
    ) -> tidings::store::Result<Option<tidings::store::Snapshot>> {
        self.inner.load_snapshot(stream).await
    }
    async fn verify(&self) -> tidings::store::Result<tidings::store::VerifyReport> {
        self.inner.verify().await
    }
}

/// Counts what it handles, slowly.
#[derive(EventHandler)]
#[event_handler(name = "slow-counter", events(OrderEvent, PaymentEvent))]
struct SlowCounter {
    handled: Arc<AtomicU64>,
    returned: Arc<AtomicU64>,
    /// The most events handed out but not yet handled, seen at any event.
    most_in_flight: Arc<AtomicU64>,
}

impl SlowCounter {
    async fn count(&mut self) -> Result<(), HandlerError> {
        let handled = self.handled.fetch_add(1, Ordering::SeqCst) + 1;
        if handled.is_multiple_of(20) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let in_flight = self.returned.load(Ordering::SeqCst).saturating_sub(handled);
        self.most_in_flight.fetch_max(in_flight, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl HandleEvent<OrderEvent> for SlowCounter {
    async fn handle(
        &mut self,
        _: OrderEvent,
        _: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        self.count().await
    }
}

#[async_trait]
impl HandleEvent<PaymentEvent> for SlowCounter {
    async fn handle(
        &mut self,
        _: PaymentEvent,
        _: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        self.count().await
    }
}

#[actix::test]
async fn a_slow_handler_holds_at_most_two_pages_however_far_behind_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Metered::new(SledEventStore::open(dir.path()).unwrap()));
    let (returned, largest_page) = (store.returned.clone(), store.largest_page.clone());
    append_many(&store.inner, 0, 3_000).await;
    let subs = Subscriptions::new(store.clone());
    let (handled, most_in_flight) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let handle = subs
        .start_with(
            SlowCounter {
                handled: handled.clone(),
                returned: returned.clone(),
                most_in_flight: most_in_flight.clone(),
            },
            SubscriptionConfig::default().batch_size(50),
        )
        .unwrap();
    // Appends keep coming while it is far behind.
    append_many(&store.inner, 3_000, 1_000).await;
    reached(&handle, store.head()).await;
    handle.stop().await;
    assert_eq!(largest_page.load(Ordering::SeqCst), 50);
    assert_eq!(
        handled.load(Ordering::SeqCst),
        expected_positions(&store.inner, 1).await.len() as u64
    );
    let most = most_in_flight.load(Ordering::SeqCst);
    // The page being handled and the next, read ahead.
    assert!(
        most < 100,
        "{most} events were handed out ahead of the handler (page size 50: two pages at most)"
    );
}

#[actix::test]
async fn a_commit_that_fails_while_the_loop_handles_the_next_events_counts_nothing_twice() {
    // The commit fails without being stored, or is stored and its answer is lost.
    for fail_after_storing in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut metered = Metered::new(SledEventStore::open(dir.path()).unwrap());
        // The first commit records where the subscription starts; the third is sent after
        // 200 events and fails 50 ms later, while the loop has handled the next ones (their
        // state in the loop's cache, one more commit waiting for it).
        metered.fail_commit = Some(3);
        metered.fail_after_storing = fail_after_storing;
        let store = Arc::new(metered);
        append_many(&store.inner, 0, 3_000).await;
        let subs = Subscriptions::new(store.clone());
        let handle = subs
            .start_with(Totals, SubscriptionConfig::default().commit_every(100))
            .unwrap();
        reached(&handle, store.head()).await;
        let status = handle.stop().await;
        assert_eq!(status.state, SubscriptionState::Stopped);
        assert!(
            store.commits.load(Ordering::SeqCst) > 3,
            "the failed commit was followed by others"
        );
        // The events handled while the commit was in flight were handled again by the next
        // run (from checkpoint 100, or 200 if the failed commit was stored): more than the
        // 2 000 order and payment events of the log.
        assert!(
            status.events_handled > 2_000,
            "{} events handled: nothing was handled again after the failed commit",
            status.events_handled
        );
        assert_eq!(
            store.inner.load_checkpoint("totals").await.unwrap(),
            Some(store.head())
        );
        let ordered: u64 = (0..3_000u64).filter(|i| i % 3 == 0).sum();
        let paid: u64 = (0..3_000u64).filter(|i| i % 3 == 1).sum();
        assert_eq!(
            (
                total(&store.inner, b"ordered").await,
                total(&store.inner, b"paid").await
            ),
            (ordered, paid),
            "fail_after_storing: {fail_after_storing}"
        );
    }
}
