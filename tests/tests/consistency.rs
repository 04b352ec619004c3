//! Read-your-writes: waiting after a command until subscriptions have handled its events
//! (Commanded's strong consistency), settling every subscription, and the errors that name who
//! is behind, stopped or failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::aggregate::testing::TempStore;
use tidings::aggregate::{
    Aggregate, AggregateConfig, AggregateRegistry, CommandEnvelope, NeverRejected,
};
use tidings::store::EventStore as _;
use tidings::subscription::{
    position_of, Among, EventContext, FailurePolicy, HandleEvent, HandlerError, SubscriptionConfig,
    SubscriptionState, Subscriptions, WaitError,
};
use tidings::{async_trait, DomainEvent, EventHandler};
use tidings_tests::support::PATIENCE;
use tokio::sync::{mpsc, Semaphore};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
enum LedgerEvent {
    Posted { cents: u64 },
}

#[derive(Default, Serialize, Deserialize)]
struct Ledger {
    total: u64,
}

impl Aggregate for Ledger {
    const CATEGORY: &'static str = "ledger";
    type Command = u64;
    type Event = LedgerEvent;
    type Error = NeverRejected;

    fn handle(&self, cents: u64) -> Result<Vec<LedgerEvent>, NeverRejected> {
        Ok(if cents == 0 {
            vec![]
        } else {
            vec![LedgerEvent::Posted { cents }]
        })
    }

    fn apply(&mut self, event: &LedgerEvent) {
        let LedgerEvent::Posted { cents } = event;
        self.total += cents;
    }
}

/// A projection that adds up every posting, one event at a time through a gate the test opens.
#[derive(EventHandler)]
#[event_handler(name = "totals", events(LedgerEvent))]
struct Totals {
    total: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
    entered: mpsc::UnboundedSender<u64>,
}

#[async_trait]
impl HandleEvent<LedgerEvent> for Totals {
    async fn handle(
        &mut self,
        event: LedgerEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let _ = self.entered.send(ctx.event().position);
        self.gate.acquire().await.expect("gate open").forget();
        let LedgerEvent::Posted { cents } = event;
        self.total.fetch_add(cents, Ordering::SeqCst);
        Ok(())
    }
}

/// Reacts to each posting on ledger `src` by posting the same amount to ledger `mirror`: a
/// chain, so that settling means waiting for reactions to reactions.
#[derive(EventHandler)]
#[event_handler(name = "mirror", events(LedgerEvent))]
struct Mirror {
    ledgers: AggregateRegistry<Ledger>,
}

#[async_trait]
impl HandleEvent<LedgerEvent> for Mirror {
    async fn handle(
        &mut self,
        event: LedgerEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        if ctx.event().stream_id != "ledger-src" {
            return Ok(());
        }
        let LedgerEvent::Posted { cents } = event;
        let command = CommandEnvelope::caused_by(ctx.event(), "mirror", cents);
        self.ledgers
            .execute("mirror", command)
            .await
            .map_err(|e| HandlerError::from(e.to_string()))?;
        Ok(())
    }
}

/// Fails on every posting above 1 000 cents.
#[derive(EventHandler)]
#[event_handler(name = "picky", events(LedgerEvent))]
struct Picky;

#[async_trait]
impl HandleEvent<LedgerEvent> for Picky {
    async fn handle(
        &mut self,
        event: LedgerEvent,
        _: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let LedgerEvent::Posted { cents } = event;
        if cents > 1_000 {
            return Err("too much".into());
        }
        Ok(())
    }
}

struct Fixture {
    _temp: TempStore,
    ledgers: AggregateRegistry<Ledger>,
    subscriptions: Subscriptions,
    total: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
    entered: mpsc::UnboundedReceiver<u64>,
}

/// A store, the ledger aggregate and the `totals` projection with its gate closed.
fn fixture() -> Fixture {
    let temp = TempStore::new().unwrap();
    let ledgers = temp.registry::<Ledger>(AggregateConfig::default());
    let subscriptions = Subscriptions::new(Arc::new(temp.store().clone()));
    let total = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, entered) = mpsc::unbounded_channel();
    subscriptions
        .start(Totals {
            total: total.clone(),
            gate: gate.clone(),
            entered: entered_tx,
        })
        .unwrap();
    Fixture {
        _temp: temp,
        ledgers,
        subscriptions,
        total,
        gate,
        entered,
    }
}

#[actix::test]
async fn the_wait_after_a_command_returns_once_the_projection_has_handled_it() {
    let mut f = fixture();
    let outcome = f
        .ledgers
        .execute("a", CommandEnvelope::new(5))
        .await
        .unwrap();
    let position = position_of(&outcome);
    assert!(position > 0);

    let wait = f
        .subscriptions
        .wait_for_command(&outcome, Among::named(["totals"]), PATIENCE);
    tokio::pin!(wait);
    // The projection holds the command's event, blocked on its gate: the wait must not be done.
    assert_eq!(f.entered.recv().await, Some(position));
    assert!(
        tokio::time::timeout(Duration::ZERO, &mut wait)
            .await
            .is_err(),
        "the wait returned before the projection handled the event"
    );
    f.gate.add_permits(1);
    wait.await.unwrap();
    assert_eq!(f.total.load(Ordering::SeqCst), 5, "read your write");

    // Answered from history: the same positions, already handled, so at once.
    let again = f
        .ledgers
        .execute("a", CommandEnvelope::with_id(outcome.command_id, 5))
        .await
        .unwrap();
    assert!(again.duplicate);
    f.subscriptions
        .wait_for_command(&again, Among::All, Duration::ZERO)
        .await
        .unwrap();
    // A command that recorded no events has nothing to wait for.
    let nothing = f.ledgers.execute_fresh("a", 0).await.unwrap();
    assert_eq!(position_of(&nothing), 0);
    f.subscriptions
        .wait_for_command(&nothing, Among::All, Duration::ZERO)
        .await
        .unwrap();
    f.subscriptions.stop_all().await;
}

#[actix::test]
async fn a_wait_that_times_out_names_the_subscription_behind() {
    let mut f = fixture();
    let outcome = f.ledgers.execute_fresh("a", 7).await.unwrap();
    assert!(f.entered.recv().await.is_some());
    match f
        .subscriptions
        .wait_for_command(&outcome, Among::All, Duration::from_millis(100))
        .await
    {
        Err(WaitError::Timeout {
            position, behind, ..
        }) => {
            assert_eq!(position, position_of(&outcome));
            let names: Vec<&str> = behind.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["totals"]);
            assert!(behind[0].handled_up_to < position);
            let text = WaitError::Timeout {
                position,
                waited: Duration::ZERO,
                behind,
            }
            .to_string();
            assert!(text.contains("totals"), "{text}");
        }
        other => panic!("expected a timeout naming totals, got {other:?}"),
    }
    f.gate.add_permits(1);
    f.subscriptions.settle(PATIENCE).await.unwrap();
    f.subscriptions.stop_all().await;
}

#[actix::test]
async fn a_stopped_or_unknown_subscription_is_an_error_not_a_status() {
    let f = fixture();
    f.gate.add_permits(1_000);
    let first = f.ledgers.execute_fresh("a", 1).await.unwrap();
    f.subscriptions
        .wait_for_command(&first, Among::named(["totals"]), PATIENCE)
        .await
        .unwrap();
    f.subscriptions.stop("totals").await;
    let second = f.ledgers.execute_fresh("a", 2).await.unwrap();
    match f
        .subscriptions
        .wait_for_command(&second, Among::named(["totals"]), PATIENCE)
        .await
    {
        Err(WaitError::Stopped {
            name,
            handled_up_to,
            ..
        }) => {
            assert_eq!(name, "totals");
            assert_eq!(handled_up_to, position_of(&first));
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    // A stopped subscription is not among "all" (stopped on purpose), and the position it did
    // handle is still handled.
    f.subscriptions
        .wait_for_command(&second, Among::All, PATIENCE)
        .await
        .unwrap();
    f.subscriptions
        .wait_for_command(&first, Among::named(["totals"]), PATIENCE)
        .await
        .unwrap();
    assert!(matches!(
        f.subscriptions
            .wait_until_handled(1, Among::named(["nobody"]), PATIENCE)
            .await,
        Err(WaitError::NotStarted(name)) if name == "nobody"
    ));
}

#[actix::test]
async fn a_subscription_that_fails_ends_the_wait_at_once_with_its_reason() {
    let f = fixture();
    f.gate.add_permits(1_000);
    let handle = f
        .subscriptions
        .start_with(
            Picky,
            SubscriptionConfig::default().failure_policy(FailurePolicy::Stop),
        )
        .unwrap();
    let outcome = f.ledgers.execute_fresh("a", 5_000).await.unwrap();
    // PATIENCE: only the failure can end this wait early.
    match f
        .subscriptions
        .wait_for_command(&outcome, Among::All, PATIENCE)
        .await
    {
        Err(WaitError::Failed { name, reason, .. }) => {
            assert_eq!(name, "picky");
            assert!(reason.contains("too much"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(matches!(
        handle.status().state,
        SubscriptionState::Failed(_)
    ));
    match handle
        .wait_until_handled(position_of(&outcome), PATIENCE)
        .await
    {
        Err(WaitError::Failed { name, .. }) => assert_eq!(name, "picky"),
        other => panic!("expected Failed, got {other:?}"),
    }
    f.subscriptions.stop_all().await;
}

#[actix::test]
async fn settle_waits_for_reactions_to_reactions() {
    let f = fixture();
    f.gate.add_permits(1_000);
    f.subscriptions
        .start(Mirror {
            ledgers: f.ledgers.clone(),
        })
        .unwrap();
    for cents in 1..=20 {
        f.ledgers.execute_fresh("src", cents).await.unwrap();
    }
    let head = f.subscriptions.settle(PATIENCE).await.unwrap();
    // 20 postings and their 20 mirrors, all counted by the projection.
    assert_eq!(head, 40);
    assert_eq!(f.total.load(Ordering::SeqCst), 2 * (1..=20).sum::<u64>());
    assert_eq!(f.ledgers.query("mirror", |l| l.total).await.unwrap(), 210);
    for status in f.subscriptions.statuses() {
        assert_eq!(status.handled_up_to, head, "{status:?}");
    }
    f.subscriptions.stop_all().await;
}

/// Keeps its total in its subscription state (exactly-once), committing rarely on its own.
#[derive(EventHandler)]
#[event_handler(name = "stored-totals", events(LedgerEvent))]
struct StoredTotals;

#[async_trait]
impl HandleEvent<LedgerEvent> for StoredTotals {
    async fn handle(
        &mut self,
        event: LedgerEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerError> {
        let LedgerEvent::Posted { cents } = event;
        let total: u64 = ctx.get_json(b"total").await?.unwrap_or(0);
        ctx.put_json(b"total", &(total + cents))?;
        Ok(())
    }
}

/// Read-your-writes for state kept in the store: when the wait returns, the projection's
/// committed state shows the command, although it would commit on its own only in an hour.
#[actix::test]
async fn after_the_wait_the_projections_stored_state_shows_the_command() {
    let temp = TempStore::new().unwrap();
    let ledgers = temp.registry::<Ledger>(AggregateConfig::default());
    let subscriptions = Subscriptions::new(Arc::new(temp.store().clone()));
    let lazy = SubscriptionConfig::default()
        .commit_every(1_000_000)
        .commit_interval(Duration::from_secs(3600));
    subscriptions.start_with(StoredTotals, lazy).unwrap();
    for cents in [5, 7] {
        let outcome = ledgers.execute_fresh("a", cents).await.unwrap();
        subscriptions
            .wait_for_command(&outcome, Among::named(["stored-totals"]), PATIENCE)
            .await
            .unwrap();
    }
    let stored = temp
        .store()
        .load_state("stored-totals", b"total")
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(&b"12"[..]));
    subscriptions.stop_all().await;
}
