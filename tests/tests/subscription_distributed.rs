//! Distributed subscriptions on the embedded store: one process opens it, so every partition
//! runs here. Each partition handles exactly its streams' events, once, in order per stream,
//! with its own checkpoint and state; the whole stops and starts again where it was; a
//! partition stopped by name comes back at the next look; bad settings are typed errors.
//! (Across processes, on PostgreSQL: `postgres_distributed.rs`.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidings::store::{EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{
    partition_name, partition_of, DistributedConfig, EventContext, HandleEvent, HandlerError,
    Partition, StartError, SubscriptionConfig, SubscriptionName, SubscriptionState, Subscriptions,
    MAX_PARTITIONS,
};
use tidings::{async_trait, DomainEvent, EventHandler};
use tidings_tests::domain::OrderEvent;
use tidings_tests::support::PATIENCE;

/// Partitions of the subscriptions here.
const N: u32 = 6;

/// Records what it handled, and counts each stream's orders in its exactly-once state.
#[derive(Clone, Default, EventHandler)]
#[event_handler(name = "orders", events(OrderEvent))]
struct Orders {
    /// (partition of the subscription that handled it, stream, position), in the order handled.
    seen: Arc<Mutex<Vec<(u32, String, u64)>>>,
}

#[async_trait]
impl HandleEvent<OrderEvent> for Orders {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let stream = ctx.event().stream_id.clone();
        let key = format!("stream/{stream}").into_bytes();
        let n: u64 = ctx.get_json(&key).await?.unwrap_or(0);
        ctx.put_json(&key, &(n + 1))?;
        // The subscription's name says which partition runs it: `orders.pNNof6`.
        let name = ctx.subscription().to_owned();
        let partition: u32 = name["orders.p".len().."orders.p".len() + 2].parse()?;
        let position = ctx.event().position;
        self.seen
            .lock()
            .unwrap()
            .push((partition, stream.to_string(), position));
        Ok(())
    }
}

impl Orders {
    /// What each stream got, in the order handled.
    fn by_stream(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (_, stream, position) in self.seen.lock().unwrap().iter() {
            out.entry(stream.clone()).or_default().push(*position);
        }
        out
    }
}

fn config() -> SubscriptionConfig {
    SubscriptionConfig::default()
        .batch_size(16)
        .commit_interval(Duration::from_millis(20))
        .lease_ttl(Duration::from_millis(300))
}

/// Appends `per_stream` orders to each of `streams` streams, interleaved; returns what each
/// stream holds (its positions in order).
async fn fill(store: &SledEventStore, streams: u64, per_stream: u64) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for i in 0..per_stream {
        for s in 0..streams {
            let stream = format!("order-{s}");
            let data = OrderEvent::OrderPlaced { cents: i }
                .to_event_data()
                .unwrap();
            let position = store
                .append(&stream, ExpectedVersion::Any, vec![data])
                .await
                .unwrap()
                .first_position;
            out.entry(stream).or_default().push(position);
        }
    }
    out
}

/// The count the partition of `stream` committed for it.
async fn counted(store: &SledEventStore, stream: &str) -> u64 {
    let name = partition_name(
        &SubscriptionName::new("orders").unwrap(),
        partition_of(stream, N),
        N,
    )
    .unwrap();
    let key = format!("stream/{stream}").into_bytes();
    let bytes = store.load_state(&name, &key).await.unwrap();
    bytes.map_or(0, |b| serde_json::from_slice(&b).unwrap())
}

#[actix::test]
async fn every_partition_runs_here_and_handles_its_streams_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let before = fill(&store, 24, 10).await;
    let orders = Orders::default();
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_distributed(orders.clone(), config(), DistributedConfig::new(N))
        .unwrap();
    // Appends race the start.
    let during = fill(&store, 24, 10).await;
    handle
        .wait_until_handled(store.head(), PATIENCE)
        .await
        .unwrap();

    assert_eq!(
        handle.assigned(),
        [0, 1, 2, 3, 4, 5],
        "one process owns all"
    );
    assert_eq!(handle.running(), [0, 1, 2, 3, 4, 5]);
    assert_eq!(
        handle.slot(),
        None,
        "no member lease on a store without leases"
    );
    assert!(handle.members().is_empty());
    let names: Vec<String> = handle
        .partition_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names[0], "orders.p00of6");
    assert_eq!(names[5], "orders.p05of6");
    let statuses = handle.statuses();
    assert_eq!(statuses.len(), 6);
    for (p, status) in statuses.iter().enumerate() {
        assert_eq!(
            status.partition_of,
            Partition::new(p as u32, N),
            "{status:?}"
        );
        assert_eq!(status.name, names[p]);
    }
    // The partitions also appear among the registry's subscriptions, by name.
    assert_eq!(
        subs.statuses()
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>(),
        names
    );

    let mut expected = before;
    for (stream, positions) in during {
        expected.entry(stream).or_default().extend(positions);
    }
    assert_eq!(
        orders.by_stream(),
        expected,
        "each event once, in order per stream"
    );
    for (partition, stream, _) in orders.seen.lock().unwrap().iter() {
        assert_eq!(
            *partition,
            partition_of(stream, N),
            "{stream} handled by partition {partition}"
        );
    }
    let used: std::collections::BTreeSet<u32> = orders
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _, _)| *p)
        .collect();
    assert!(
        used.len() > 1,
        "24 streams spread over more than one partition"
    );
    for stream in expected.keys() {
        assert_eq!(counted(&store, stream).await, 20, "{stream}");
    }
    for checkpoint in handle.checkpoints().await.unwrap() {
        assert_eq!(
            checkpoint,
            Some(store.head()),
            "every partition's checkpoint at the head"
        );
    }

    // Stopped, it leaves every checkpoint at the head; started again, it handles only what
    // came meanwhile.
    handle.stop().await;
    assert!(handle.is_finished());
    assert!(handle
        .statuses()
        .iter()
        .all(|s| s.state == SubscriptionState::Stopped));
    assert!(handle.assigned().is_empty());
    orders.seen.lock().unwrap().clear();
    let later = fill(&store, 24, 3).await;
    let handle = subs
        .start_distributed(orders.clone(), config(), DistributedConfig::new(N))
        .unwrap();
    handle
        .wait_until_handled(store.head(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(orders.by_stream(), later);
    for stream in later.keys() {
        assert_eq!(counted(&store, stream).await, 23, "{stream}");
    }
    subs.stop_all().await;
    assert!(
        handle.is_finished(),
        "stop_all stops distributed subscriptions"
    );
    assert!(handle
        .statuses()
        .iter()
        .all(|s| s.state == SubscriptionState::Stopped));
}

#[actix::test]
async fn a_partition_stopped_by_name_comes_back_at_the_next_look() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let orders = Orders::default();
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_distributed(orders.clone(), config(), DistributedConfig::new(N))
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while handle.running().len() < N as usize {
        assert!(Instant::now() < deadline, "never ran every partition");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped = subs.stop("orders.p02of6").await.unwrap();
    assert_eq!(stopped.state, SubscriptionState::Stopped);
    let appended = fill(&store, 12, 2).await;
    handle
        .wait_until_handled(store.head(), PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        orders.by_stream(),
        appended,
        "partition 2 was started again"
    );
    assert_eq!(handle.running(), [0, 1, 2, 3, 4, 5]);
    handle.stop().await;
}

#[actix::test]
async fn bad_settings_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let subs = Subscriptions::new(store.clone());
    for n in [0, MAX_PARTITIONS + 1] {
        match subs.start_distributed(Orders::default(), config(), DistributedConfig::new(n)) {
            Err(StartError::Partitions { requested, max, .. }) => {
                assert_eq!((requested, max), (n, MAX_PARTITIONS));
            }
            other => panic!("{n} partitions: {other:?}"),
        }
    }
    let long = SubscriptionName::new("o".repeat(199)).unwrap();
    match subs.start_distributed(
        Orders::default(),
        config().name(long),
        DistributedConfig::new(2),
    ) {
        Err(StartError::InvalidName(_)) => {}
        other => panic!("a partition name past the limit: {other:?}"),
    }
    let handle = subs
        .start_distributed(Orders::default(), config(), DistributedConfig::new(2))
        .unwrap();
    match subs.start_distributed(Orders::default(), config(), DistributedConfig::new(2)) {
        Err(StartError::AlreadyRunning(name)) => assert_eq!(name, "orders"),
        other => panic!("started twice: {other:?}"),
    }
    handle.stop().await;
    // Stopped, it can start again (with another count: a different set of subscriptions).
    let handle = subs
        .start_distributed(Orders::default(), config(), DistributedConfig::new(3))
        .unwrap();
    assert_eq!(handle.partition_names()[2], "orders.p02of3");
    handle.stop().await;
    // A plain subscription may not take a partition's name (it would share its checkpoint,
    // state and lease); names that only look alike are fine.
    let taken = SubscriptionName::new("orders.p02of3").unwrap();
    match subs.start_with(Orders::default(), config().name(taken)) {
        Err(StartError::PartitionName(name)) => assert_eq!(name, "orders.p02of3"),
        other => panic!("a partition's name: {other:?}"),
    }
    for free in [
        "orders.p3of3",
        "orders.pxof3",
        "orders.p02of",
        "orders.p01of2x",
    ] {
        let name = SubscriptionName::new(free).unwrap();
        let h = subs
            .start_with(Orders::default(), config().name(name))
            .unwrap_or_else(|e| panic!("{free}: {e}"));
        h.stop().await;
    }
}

/// Fails (policy `Stop`, the default) on the first event of stream `order-poison`.
#[derive(Clone, Default, EventHandler)]
#[event_handler(name = "fragile", events(OrderEvent))]
struct Fragile;

#[async_trait]
impl HandleEvent<OrderEvent> for Fragile {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if ctx.event().stream_id == "order-poison" {
            return Err("poison".into());
        }
        Ok(())
    }
}

#[actix::test]
async fn waiting_for_every_partition_ends_at_once_when_one_failed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    fill(&store, 6, 2).await;
    let poison = OrderEvent::OrderPlaced { cents: 1 };
    store
        .append(
            "order-poison",
            ExpectedVersion::Any,
            vec![poison.to_event_data().unwrap()],
        )
        .await
        .unwrap();
    let subs = Subscriptions::new(store.clone());
    let handle = subs
        .start_distributed(Fragile, config(), DistributedConfig::new(N))
        .unwrap();
    let failing = partition_name(
        &SubscriptionName::new("fragile").unwrap(),
        partition_of("order-poison", N),
        N,
    )
    .unwrap();
    let started = Instant::now();
    // A long timeout: the wait must end because the partition failed, not because time ran out.
    let err = handle
        .wait_until_handled(store.head(), Duration::from_secs(120))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "waited {:?}",
        started.elapsed()
    );
    match err {
        tidings::subscription::WaitError::Failed { name, reason, .. } => {
            assert_eq!(name, failing.to_string());
            assert!(reason.contains("poison"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    handle.stop().await;
}
