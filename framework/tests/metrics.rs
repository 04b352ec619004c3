//! The metrics tidings records, read back through a recorder on `metrics_util`'s registry,
//! installed as the global recorder of this test binary (its own process). The tests share it,
//! so they run one at a time ([`SERIAL`]) and compare values with those before their work.
//!
//! Not `metrics_util::debugging::DebuggingRecorder`: its snapshots consume what they read
//! (counters and gauges go back to 0, histograms are emptied), so a gauge set to 0 and a gauge
//! not touched since the last read would look alike, and waiting for the lag to reach 0 could
//! not be told from reading it twice. The registry below keeps every value, as an exporter does.

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use support::{Ping, Tally};
use tidings::aggregate::{AggregateConfig, AggregateRegistry, CommandEnvelope};
use tidings::metrics as m;
use tidings::store::{EventStore, ExpectedVersion, Filter, SledEventStore};
use tidings::subscription::{
    EventContext, FailurePolicy, HandleEvent, HandlerError, SubscriptionConfig, Subscriptions,
};
use tidings::{async_trait, DomainEvent, EventHandler};

/// The tests share the global recorder: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a wait on a condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// Keeps every metric's value where the test can read it without changing it.
struct Kept(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for Kept {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

/// Installs the recorder once (before any store opens: handles are taken at open).
fn registry() -> &'static Registry<Key, AtomicStorage> {
    static REGISTRY: OnceLock<Arc<Registry<Key, AtomicStorage>>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let registry = Arc::new(Registry::atomic());
        metrics::set_global_recorder(Kept(registry.clone()))
            .expect("the only recorder of this binary");
        m::describe_metrics();
        registry
    })
}

/// Every metric's value now, by name and labels ("k=v" sorted, comma-separated).
#[derive(Debug, Default)]
struct Read {
    counters: HashMap<(String, String), u64>,
    gauges: HashMap<(String, String), f64>,
    histograms: HashMap<(String, String), Vec<f64>>,
}

fn id(key: &Key) -> (String, String) {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    (key.name().to_owned(), labels.join(","))
}

fn read() -> Read {
    let registry = registry();
    Read {
        counters: (registry.get_counter_handles().iter())
            .map(|(k, v)| (id(k), v.load(Ordering::SeqCst)))
            .collect(),
        gauges: (registry.get_gauge_handles().iter())
            .map(|(k, v)| (id(k), f64::from_bits(v.load(Ordering::SeqCst))))
            .collect(),
        histograms: (registry.get_histogram_handles().iter())
            .map(|(k, v)| (id(k), v.data()))
            .collect(),
    }
}

impl Read {
    fn counter(&self, name: &str, labels: &str) -> u64 {
        let key = (name.to_owned(), labels.to_owned());
        self.counters.get(&key).copied().unwrap_or(0)
    }

    fn gauge(&self, name: &str, labels: &str) -> Option<f64> {
        self.gauges
            .get(&(name.to_owned(), labels.to_owned()))
            .copied()
    }

    fn samples(&self, name: &str, labels: &str) -> Vec<f64> {
        let key = (name.to_owned(), labels.to_owned());
        self.histograms.get(&key).cloned().unwrap_or_default()
    }

    /// The samples of a histogram recorded since `before`.
    fn new_samples(&self, before: &Read, name: &str, labels: &str) -> Vec<f64> {
        let old = before.samples(name, labels).len();
        self.samples(name, labels)[old..].to_vec()
    }
}

/// Waits until `check` holds (woken every few milliseconds); panics after [`PATIENCE`].
async fn until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const SLED: &str = "backend=sled";

#[tokio::test]
async fn appends_on_sled_move_the_append_counters_and_histograms() {
    let _serial = SERIAL.lock().await;
    registry();
    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::open(dir.path()).unwrap();
    let before = read();

    // 1 000 events in 100 appends of 10, to 10 streams, 10 appends at a time.
    let mut tasks = Vec::new();
    for s in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let events = (0..10)
                    .map(|i| tidings::store::EventData::new("Ticked", format!("{i}").into_bytes()))
                    .collect();
                store
                    .append(&format!("tick-{s}"), ExpectedVersion::Any, events)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A refused append is timed but not counted.
    let refused = store
        .append(
            "tick-0",
            ExpectedVersion::NoStream,
            vec![tidings::store::EventData::new("Ticked", b"x".to_vec())],
        )
        .await;
    assert!(refused.is_err());
    assert_eq!(
        store.read_stream("tick-3", 1, 1000).await.unwrap().len(),
        100
    );
    store.read_all(1, 10, &Filter::all()).await.unwrap();
    store.read_all(11, 10, &Filter::all()).await.unwrap();

    let after = read();
    let delta = |name| after.counter(name, SLED) - before.counter(name, SLED);
    assert_eq!(delta(m::STORE_EVENTS_APPENDED), 1000);
    assert_eq!(delta(m::STORE_APPENDS), 100);
    assert_eq!(delta(m::STORE_READ_ALL_PAGES), 2);

    let latencies = after.new_samples(&before, m::STORE_APPEND_DURATION, SLED);
    assert_eq!(
        latencies.len(),
        101,
        "every append is timed, the refused one too"
    );
    assert!(
        latencies.iter().all(|s| *s > 0.0 && *s < 60.0),
        "{latencies:?}"
    );

    let group_appends = after.new_samples(&before, m::STORE_COMMIT_GROUP_APPENDS, SLED);
    let group_events = after.new_samples(&before, m::STORE_COMMIT_GROUP_EVENTS, SLED);
    assert_eq!(group_appends.len(), group_events.len());
    assert_eq!(group_appends.iter().sum::<f64>(), 100.0);
    assert_eq!(group_events.iter().sum::<f64>(), 1000.0);
    assert!(group_appends.len() <= 100);

    // One durable flush per commit group at least (the refused append's group wrote nothing).
    let commits = after.new_samples(&before, m::STORE_COMMIT_DURATION, SLED);
    assert!(commits.len() >= group_appends.len(), "{commits:?}");
    assert!(commits.iter().all(|s| *s >= 0.0));

    assert_eq!(
        after.new_samples(&before, m::STORE_STREAM_READ_EVENTS, SLED),
        vec![100.0]
    );
    store.close().await;
}

/// The event the handler always fails on (parked), and the one it fails on once (retried).
const POISON: u64 = 7;
const FLAKY: u64 = 3;

#[derive(EventHandler)]
#[event_handler(name = "metered", events(Ping))]
struct Metered {
    flaky_failures: Arc<AtomicU64>,
}

#[async_trait]
impl HandleEvent<Ping> for Metered {
    async fn handle(
        &mut self,
        event: Ping,
        _ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        match event.n {
            POISON => Err("poison".into()),
            FLAKY if self.flaky_failures.fetch_add(1, Ordering::SeqCst) == 0 => Err("flaky".into()),
            _ => Ok(()),
        }
    }
}

#[actix::test]
async fn a_subscription_shows_handled_retried_parked_skipped_and_its_lag_going_to_0() {
    let _serial = SERIAL.lock().await;
    registry();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let mut poison_position = 0;
    for n in 0..10u64 {
        // Each on its own stream: the parked one holds back no other.
        let data = Ping { n }.to_event_data().unwrap();
        let r = store
            .append(&format!("ping-{n}"), ExpectedVersion::Any, vec![data])
            .await
            .unwrap();
        if n == POISON {
            poison_position = r.first_position;
        }
    }
    let head = store.head();
    let label = "subscription=metered";

    let subs = Subscriptions::new(store.clone());
    let policy =
        FailurePolicy::retry_then_park(1, Duration::from_millis(1), Duration::from_millis(2));
    let config = SubscriptionConfig::default().failure_policy(policy.clone());
    let handler = Metered {
        flaky_failures: Arc::new(AtomicU64::new(0)),
    };
    let handle = subs.start_with(handler, config).unwrap();
    handle.wait_until_handled(head, PATIENCE).await.unwrap();
    handle.flush().await.unwrap();

    // Caught up: both lags fall to 0 (the loop gets to the head just after the last event).
    until("the lag to fall to 0", || async {
        let now = read();
        now.gauge(m::SUBSCRIPTION_LAG_EVENTS, label) == Some(0.0)
            && now.gauge(m::SUBSCRIPTION_LAG_SECONDS, label) == Some(0.0)
    })
    .await;
    let now = read();
    assert_eq!(now.counter(m::SUBSCRIPTION_EVENTS_HANDLED, label), 9);
    // The flaky event once, the poison once before it was parked (max_retries 1).
    assert_eq!(now.counter(m::SUBSCRIPTION_RETRIES, label), 2);
    assert_eq!(now.counter(m::SUBSCRIPTION_EVENTS_PARKED, label), 1);
    assert_eq!(now.counter(m::SUBSCRIPTION_EVENTS_SKIPPED, label), 0);
    assert_eq!(now.counter(m::SUBSCRIPTION_RESTARTS, label), 0);
    assert_eq!(
        now.gauge(m::SUBSCRIPTION_CHECKPOINT, label),
        Some(head as f64)
    );

    assert!(handle.skip_parked(poison_position).await.unwrap());
    assert_eq!(read().counter(m::SUBSCRIPTION_EVENTS_SKIPPED, label), 1);

    // Behind again: 5 events appended while it is stopped are 5 of lag once it looks.
    handle.stop().await;
    for n in 100..105u64 {
        let data = Ping { n }.to_event_data().unwrap();
        store
            .append("ping-late", ExpectedVersion::Any, vec![data])
            .await
            .unwrap();
    }
    let handler = Metered {
        flaky_failures: Arc::new(AtomicU64::new(1)),
    };
    let handle = subs
        .start_with(
            handler,
            SubscriptionConfig::default().failure_policy(policy),
        )
        .unwrap();
    handle
        .wait_until_handled(store.head(), PATIENCE)
        .await
        .unwrap();
    until("the lag to fall to 0 again", || async {
        let now = read();
        now.gauge(m::SUBSCRIPTION_LAG_EVENTS, label) == Some(0.0)
            && now.gauge(m::SUBSCRIPTION_LAG_SECONDS, label) == Some(0.0)
            && now.counter(m::SUBSCRIPTION_EVENTS_HANDLED, label) == 14
    })
    .await;
    handle.stop().await;
}

#[actix::test]
async fn aggregate_commands_show_up_with_their_outcome() {
    let _serial = SERIAL.lock().await;
    registry();
    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::open(dir.path()).unwrap();
    let tallies = AggregateRegistry::<Tally>::start(store.clone(), AggregateConfig::default());
    let label = "aggregate=tally";
    let outcome = |o: &str| format!("aggregate=tally,outcome={o}");

    let command = CommandEnvelope::new(5);
    let first = tallies.execute("t1", command.clone()).await.unwrap();
    let again = tallies.execute("t1", command).await.unwrap();
    assert!(again.duplicate && !first.duplicate);
    assert!(tallies.execute_fresh("t1", 0).await.is_err());
    assert_eq!(tallies.query("t1", |t| t.total).await.unwrap(), 5);

    let now = read();
    assert_eq!(now.counter(m::AGGREGATE_COMMANDS, &outcome("accepted")), 1);
    assert_eq!(now.counter(m::AGGREGATE_COMMANDS, &outcome("duplicate")), 1);
    assert_eq!(now.counter(m::AGGREGATE_COMMANDS, &outcome("rejected")), 1);
    assert_eq!(now.counter(m::AGGREGATE_COMMANDS, &outcome("failed")), 0);
    assert_eq!(now.counter(m::AGGREGATE_COMMANDS_FROM_HISTORY, label), 1);
    assert_eq!(
        now.counter(m::AGGREGATE_LOADS, "aggregate=tally,source=events"),
        1
    );
    // The second and third commands and the query found the state in memory.
    assert_eq!(now.counter(m::AGGREGATE_STATE_HITS, label), 3);
    assert_eq!(now.gauge(m::AGGREGATE_INSTANCES_LIVE, label), Some(1.0));

    tallies.shutdown().await;
    until("the instance to stop", || async {
        read().gauge(m::AGGREGATE_INSTANCES_LIVE, label) == Some(0.0)
    })
    .await;
    store.close().await;
}
