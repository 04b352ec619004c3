//! Subscription names chosen at run time: one handler type runs as several subscriptions (a
//! rebuild side by side, `totals-v2` beside `totals`), each with its own checkpoint, state,
//! status, parked events and lease, on the embedded store and on PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings::store::{EventData, EventStore, ExpectedVersion, SledEventStore};
use tidings::subscription::{
    parked_in_store, subscription_status_from_store, Among, EventContext, FailurePolicy,
    HandleEvent, HandlerError, Refused, StartError, SubscriptionConfig, SubscriptionName,
    SubscriptionState, Subscriptions,
};
use tidings::{async_trait, DomainEvent, EventHandler};
use tidings_tests::domain::OrderEvent;
use tidings_tests::pg::Schema;
use tidings_tests::support::PATIENCE;

/// Positions handled, in order (in memory).
type Seen = Arc<Mutex<Vec<u64>>>;

/// An exactly-once projection that counts order events in its state (`count`), and refuses
/// the events of one stream (`poison`), which are parked.
#[derive(Clone, EventHandler)]
#[event_handler(name = "totals", events(OrderEvent))]
struct Totals {
    poison: &'static str,
    seen: Seen,
}

#[async_trait]
impl HandleEvent<OrderEvent> for Totals {
    async fn handle(
        &mut self,
        _: OrderEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if ctx.event().stream_id == self.poison {
            return Err(
                Refused(format!("{} refuses {}", ctx.subscription(), self.poison).into()).into(),
            );
        }
        let count: u64 = ctx.get_json(b"count").await?.unwrap_or(0);
        ctx.put_json(b"count", &(count + 1))?;
        self.seen.lock().unwrap().push(ctx.event().position);
        Ok(())
    }
}

fn totals(poison: &'static str) -> (Totals, Seen) {
    let seen = Seen::default();
    (
        Totals {
            poison,
            seen: seen.clone(),
        },
        seen,
    )
}

fn config(name: Option<&str>) -> SubscriptionConfig {
    let config = SubscriptionConfig::default()
        .commit_every(1)
        .failure_policy(FailurePolicy::retry_then_park(
            0,
            Duration::from_millis(1),
            Duration::from_millis(1),
        ));
    match name {
        Some(name) => config.name(SubscriptionName::new(name).unwrap()),
        None => config,
    }
}

/// Appends one order event to each of `order-0`, `order-1`, `order-2`, `rounds` times; returns
/// the head.
async fn append_rounds(store: &dyn EventStore, rounds: u64) -> u64 {
    let mut head = 0;
    for round in 0..rounds {
        for stream in ["order-0", "order-1", "order-2"] {
            let event: EventData = OrderEvent::OrderPlaced { cents: round }
                .to_event_data()
                .unwrap();
            let result = store
                .append(stream, ExpectedVersion::Any, vec![event])
                .await
                .unwrap();
            head = result.last_position;
        }
    }
    head
}

async fn count(store: &dyn EventStore, name: &str) -> u64 {
    let bytes = store.load_state(name, b"count").await.unwrap().unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn parked_streams(store: &dyn EventStore, name: &str) -> Vec<String> {
    let mut streams: Vec<String> = parked_in_store(store, name)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.stream_id)
        .collect();
    streams.dedup();
    streams
}

/// The scenario, on any store.
async fn two_names_one_handler_type(store: Arc<dyn EventStore>) {
    let subs = Subscriptions::new(store.clone());
    let first = append_rounds(&*store, 4).await;

    // `totals` under its derived name, parking order-1.
    let (handler, _) = totals("order-1");
    let v1 = subs.start_with(handler, config(None)).unwrap();
    assert_eq!(v1.name(), &"totals");
    v1.wait_until_handled(first, PATIENCE).await.unwrap();
    let v1_stopped = v1.stop().await;
    assert_eq!(v1_stopped.checkpoint, first);

    // More events while `totals` is down; `totals-v2` rebuilds from the beginning beside it,
    // parking order-2.
    let head = append_rounds(&*store, 2).await;
    let (handler, _) = totals("order-2");
    let v2 = subs.start_with(handler, config(Some("totals-v2"))).unwrap();
    assert_eq!(v2.name(), &"totals-v2");
    assert_eq!(v2.status().name, "totals-v2");
    // The same name twice is refused; the handler's own name is free (it is stopped).
    let (again, _) = totals("order-2");
    match subs.start_with(again, config(Some("totals-v2"))) {
        Err(StartError::AlreadyRunning(name)) => assert_eq!(name, "totals-v2"),
        other => panic!("a second totals-v2 started: {other:?}"),
    }
    subs.wait_until_handled(head, Among::named(["totals-v2"]), PATIENCE)
        .await
        .unwrap();

    // Separate checkpoints, state, parked events.
    assert_eq!(store.load_checkpoint("totals").await.unwrap(), Some(first));
    assert_eq!(
        store.load_checkpoint("totals-v2").await.unwrap(),
        Some(head)
    );
    assert_eq!(count(&*store, "totals").await, 4 * 2);
    assert_eq!(count(&*store, "totals-v2").await, 6 * 2);
    assert_eq!(parked_streams(&*store, "totals").await, ["order-1"]);
    assert_eq!(parked_streams(&*store, "totals-v2").await, ["order-2"]);
    assert_eq!(subs.parked("totals").await.unwrap().len(), 4);
    assert_eq!(subs.parked("totals-v2").await.unwrap().len(), 6);

    // Restarting `totals` under its name resumes its own checkpoint, beside `totals-v2`.
    let (handler, seen) = totals("order-1");
    let v1 = subs.start_with(handler, config(None)).unwrap();
    subs.wait_until_handled(head, Among::named(["totals", "totals-v2"]), PATIENCE)
        .await
        .unwrap();
    let handled = seen.lock().unwrap().clone();
    assert_eq!(handled.len(), 2 * 2, "only the events after its checkpoint");
    assert!(handled.iter().all(|&p| p > first), "{handled:?}");
    assert_eq!(count(&*store, "totals").await, 6 * 2);
    assert_eq!(parked_streams(&*store, "totals").await, ["order-1"]);
    assert_eq!(parked_in_store(&*store, "totals").await.unwrap().len(), 6);

    // Each one's status, in memory and stored.
    let mut names: Vec<String> = subs.statuses().into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(names, ["totals", "totals-v2"]);
    v1.stop().await;
    let v2_stopped = v2.stop().await;
    let stored_v1 = subscription_status_from_store(&*store, "totals")
        .await
        .unwrap()
        .unwrap();
    let stored_v2 = subscription_status_from_store(&*store, "totals-v2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored_v1.name, "totals");
    assert_eq!(stored_v2.name, "totals-v2");
    assert_eq!((stored_v1.checkpoint, stored_v1.parked), (head, 6));
    assert_eq!((stored_v2.checkpoint, stored_v2.parked), (head, 6));
    assert_eq!(stored_v2.events_handled, v2_stopped.events_handled);

    // Restarting `totals-v2` resumes its own checkpoint too: nothing new to handle.
    let (handler, seen) = totals("order-2");
    let v2 = subs.start_with(handler, config(Some("totals-v2"))).unwrap();
    let status = v2.wait_until_handled(head, PATIENCE).await.unwrap();
    assert_eq!(status.checkpoint, head);
    assert!(seen.lock().unwrap().is_empty());
    assert!(matches!(v2.stop().await.state, SubscriptionState::Stopped));
}

#[actix::test]
async fn one_handler_type_under_two_names_keeps_two_subscriptions_apart_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    two_names_one_handler_type(store).await;
}

#[actix::test]
async fn one_handler_type_under_two_names_keeps_two_subscriptions_apart_on_postgres() {
    let Some(schema) = Schema::fresh("one_handler_type_under_two_names") else {
        return;
    };
    let store = Arc::new(schema.open(|c| c));
    two_names_one_handler_type(store).await;
}

#[actix::test]
async fn a_handler_whose_name_is_not_valid_is_refused_with_a_typed_error() {
    /// A hand-written impl with a name the derive would refuse.
    struct Spaced;

    #[async_trait]
    impl tidings::subscription::EventHandler for Spaced {
        const NAME: &'static str = "has space";
        fn event_types() -> Vec<&'static str> {
            Vec::new()
        }
        async fn dispatch(
            &mut self,
            _: &tidings::store::RecordedEvent,
            _: &mut EventContext<'_>,
        ) -> Result<(), tidings::subscription::HandlerFailure> {
            Ok(())
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let subs = Subscriptions::new(Arc::new(SledEventStore::open(dir.path()).unwrap()));
    assert!(matches!(
        subs.start(Spaced),
        Err(StartError::InvalidName(
            tidings::subscription::SubscriptionNameError::Character { character: ' ', .. }
        ))
    ));
    // Under a valid name it runs.
    let handle = subs
        .start_with(
            Spaced,
            SubscriptionConfig::default().name("spaced".parse().unwrap()),
        )
        .unwrap();
    assert_eq!(handle.name(), &"spaced");
    handle.stop().await;
}
