//! Process managers: the money transfer of `tidings_tests::transfer` (debit, credit, compensate),
//! a refusal that stays a refusal when the process's events are delivered again, instances that
//! end, and durable deadlines that fire once, also after a restart and with two timers.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tidings::aggregate::{
    Aggregate, AggregateConfig, AggregateRegistry, CommandEnvelope, NeverRejected,
};
use tidings::process::{instance_state, DeadlineTimer, Dispatched, ProcessManager, Reacts, Steps};
use tidings::store::{EventStore, SledEventStore};
use tidings::subscription::{HandlerError, ResetTo, Subscriptions};
use tidings::{async_trait, DomainEvent, ProcessManager};
use tidings_tests::support::PATIENCE;
use tidings_tests::transfer::{Account, AccountCommand, Transfer, TransferCommand, Transfers};

struct Bank {
    store: Arc<SledEventStore>,
    accounts: AggregateRegistry<Account>,
    transfers: AggregateRegistry<Transfer>,
    subscriptions: Subscriptions,
}

fn bank(store: SledEventStore) -> Bank {
    let accounts = AggregateRegistry::start(store.clone(), AggregateConfig::default());
    let transfers = AggregateRegistry::start(store.clone(), AggregateConfig::default());
    let store = Arc::new(store);
    let subscriptions = Subscriptions::new(store.clone());
    subscriptions
        .start(Transfers {
            accounts: accounts.clone(),
            transfers: transfers.clone(),
        })
        .unwrap();
    Bank {
        store,
        accounts,
        transfers,
        subscriptions,
    }
}

impl Bank {
    async fn deposit(&self, account: &str, cents: u64) {
        let deposit = AccountCommand::Deposit {
            cents,
            transfer: None,
        };
        self.accounts.execute_fresh(account, deposit).await.unwrap();
    }

    async fn transfer(&self, id: &str, from: &str, to: &str, cents: u64) {
        let request = TransferCommand::Request {
            id: id.into(),
            from: from.into(),
            to: to.into(),
            cents,
        };
        self.transfers.execute_fresh(id, request).await.unwrap();
    }

    async fn balance(&self, account: &str) -> u64 {
        self.accounts.query(account, |a| a.balance).await.unwrap()
    }

    /// The transfer's events, by type name.
    async fn history(&self, id: &str) -> Vec<String> {
        self.store
            .read_stream(&format!("transfer-{id}"), 1, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type.to_string())
            .collect()
    }
}

#[actix::test]
async fn a_transfer_moves_the_money_and_its_instance_ends() {
    let dir = tempfile::tempdir().unwrap();
    let bank = bank(SledEventStore::open(dir.path()).unwrap());
    bank.deposit("a", 100).await;
    bank.transfer("t1", "a", "b", 60).await;
    bank.subscriptions.settle(PATIENCE).await.unwrap();
    assert_eq!((bank.balance("a").await, bank.balance("b").await), (40, 60));
    assert_eq!(
        bank.history("t1").await,
        ["TransferRequested", "TransferCompleted"]
    );
    // The instance ended: its state is gone.
    bank.subscriptions.stop_all().await;
    let state = instance_state::<Transfers>(&*bank.store, "t1")
        .await
        .unwrap();
    assert_eq!(state, None);
}

/// The issue's case through a process manager: a transfer declined for lack of money is
/// delivered again (here: the process's checkpoint and state reset to the beginning, as a crash
/// before its commit would) after a deposit arrived. It must stay declined: the debit's id
/// derives from the event and the step, and the account remembers its refusal.
#[actix::test]
async fn a_declined_transfer_stays_declined_when_its_events_are_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let bank = bank(SledEventStore::open(dir.path()).unwrap());
    bank.deposit("a", 10).await;
    bank.transfer("t2", "a", "b", 50).await;
    bank.subscriptions.settle(PATIENCE).await.unwrap();
    assert_eq!(
        bank.history("t2").await,
        ["TransferRequested", "TransferDeclined"]
    );
    bank.deposit("a", 100).await;

    bank.subscriptions.stop("transfers").await;
    bank.subscriptions
        .reset("transfers", ResetTo::Beginning, true)
        .await
        .unwrap();
    bank.subscriptions
        .start(Transfers {
            accounts: bank.accounts.clone(),
            transfers: bank.transfers.clone(),
        })
        .unwrap();
    bank.subscriptions.settle(PATIENCE).await.unwrap();
    assert_eq!((bank.balance("a").await, bank.balance("b").await), (110, 0));
    assert_eq!(
        bank.history("t2").await,
        ["TransferRequested", "TransferDeclined"],
        "declined once, never debited"
    );
    bank.subscriptions.stop_all().await;
}

#[actix::test]
async fn a_refused_credit_refunds_the_source_and_fails_the_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let bank = bank(SledEventStore::open(dir.path()).unwrap());
    bank.deposit("a", 100).await;
    bank.accounts
        .execute_fresh("b", AccountCommand::Close)
        .await
        .unwrap();
    bank.transfer("t3", "a", "b", 30).await;
    bank.subscriptions.settle(PATIENCE).await.unwrap();
    assert_eq!((bank.balance("a").await, bank.balance("b").await), (100, 0));
    let account_a: Vec<String> = bank
        .store
        .read_stream("account-a", 1, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type.to_string())
        .collect();
    assert_eq!(
        account_a,
        ["Deposited", "Withdrawn", "Deposited"],
        "debit, refund"
    );
    assert_eq!(
        bank.history("t3").await,
        ["TransferRequested", "TransferFailed"]
    );
    bank.subscriptions.stop_all().await;
}

// ---------------------------------------------------------------------------------------------
// Deadlines: an invoice that is not paid in time gets one reminder.

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
enum InvoiceEvent {
    Issued { id: String, remind_after_ms: u64 },
    Paid { id: String },
    Reminded,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum InvoiceCommand {
    Issue { remind_after_ms: u64 },
    Pay,
    Remind,
}

#[derive(Default, Serialize, Deserialize)]
struct Invoice {
    id: String,
}

impl Aggregate for Invoice {
    const CATEGORY: &'static str = "invoice";
    type Command = (String, InvoiceCommand);
    type Event = InvoiceEvent;
    type Error = NeverRejected;

    fn handle(&self, (id, command): Self::Command) -> Result<Vec<InvoiceEvent>, NeverRejected> {
        Ok(vec![match command {
            InvoiceCommand::Issue { remind_after_ms } => InvoiceEvent::Issued {
                id,
                remind_after_ms,
            },
            InvoiceCommand::Pay => InvoiceEvent::Paid { id },
            InvoiceCommand::Remind => InvoiceEvent::Reminded,
        }])
    }

    fn apply(&mut self, event: &InvoiceEvent) {
        if let InvoiceEvent::Issued { id, .. } = event {
            self.id = id.clone();
        }
    }
}

#[derive(Clone, ProcessManager)]
#[process_manager(name = "dunning", events(InvoiceEvent))]
struct Dunning {
    invoices: AggregateRegistry<Invoice>,
}

#[async_trait]
impl ProcessManager for Dunning {
    type State = bool;
    type Command = String; // the invoice to remind

    async fn send(&mut self, command: CommandEnvelope<String>) -> Result<Dispatched, HandlerError> {
        let id = command.command.clone();
        let remind = command.map(|id| (id, InvoiceCommand::Remind));
        Dispatched::from_result(self.invoices.execute(&id, remind).await)
    }
}

impl Reacts<InvoiceEvent> for Dunning {
    fn correlate(event: &InvoiceEvent) -> Option<String> {
        match event {
            InvoiceEvent::Issued { id, .. } | InvoiceEvent::Paid { id } => Some(id.clone()),
            InvoiceEvent::Reminded => None,
        }
    }

    fn react(&self, issued: &mut bool, event: InvoiceEvent, steps: &mut Steps<String>) {
        match event {
            InvoiceEvent::Issued {
                id,
                remind_after_ms,
            } => {
                *issued = true;
                let at = steps.event_time() + Duration::from_millis(remind_after_ms);
                steps.schedule("remind", at, id);
            }
            InvoiceEvent::Paid { .. } => {
                steps.cancel("remind");
                steps.finish();
            }
            InvoiceEvent::Reminded => {}
        }
    }
}

async fn reminders(store: &dyn EventStore, id: &str) -> usize {
    store
        .read_stream(&format!("invoice-{id}"), 1, 100)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.event_type == "Reminded")
        .count()
}

/// Waits (reading the store) until invoice `id` got a reminder, at most [`PATIENCE`].
async fn until_reminded(store: &dyn EventStore, id: &str) {
    let deadline = Instant::now() + PATIENCE;
    while reminders(store, id).await == 0 {
        assert!(Instant::now() < deadline, "invoice {id} never reminded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn issue(after: Duration) -> InvoiceCommand {
    InvoiceCommand::Issue {
        remind_after_ms: after.as_millis() as u64,
    }
}

fn dunning(invoices: &AggregateRegistry<Invoice>) -> Dunning {
    Dunning {
        invoices: invoices.clone(),
    }
}

/// Two timers (as two processes would run) each append a due record for the same deadline
/// while the process manager is down; it then handles both and reminds once. Its events
/// delivered again from the beginning (checkpoint and state reset) remind nobody twice either.
/// A paid invoice's deadline was cancelled and never fires.
#[actix::test]
async fn a_deadline_fires_once_unless_cancelled_even_with_two_timers() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::open(dir.path()).unwrap();
    let invoices = AggregateRegistry::<Invoice>::start(store.clone(), AggregateConfig::default());
    let shared: Arc<dyn EventStore> = Arc::new(store.clone());
    let subscriptions = Subscriptions::new(shared.clone());
    subscriptions.start(dunning(&invoices)).unwrap();
    let send = |id: &'static str, command: InvoiceCommand| {
        let invoices = invoices.clone();
        async move {
            invoices
                .execute_fresh(id, (id.to_owned(), command))
                .await
                .unwrap()
        }
    };
    let issued_at = SystemTime::now();
    send("late", issue(Duration::from_millis(200))).await;
    send("paid", issue(Duration::from_millis(200))).await;
    send("paid", InvoiceCommand::Pay).await;
    // Committed (settle commits), then down: the deadlines wait in the store.
    subscriptions.settle(PATIENCE).await.unwrap();
    subscriptions.stop("dunning").await;

    let timers = [
        DeadlineTimer::start::<Dunning>(shared.clone(), Duration::from_millis(20)),
        DeadlineTimer::start::<Dunning>(shared.clone(), Duration::from_millis(20)),
    ];
    let deadline = Instant::now() + PATIENCE;
    while timers.iter().any(|t| t.fired() == 0) {
        assert!(Instant::now() < deadline, "the timers did not fire");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        SystemTime::now() >= issued_at + Duration::from_millis(200),
        "never early"
    );
    subscriptions.start(dunning(&invoices)).unwrap();
    until_reminded(&store, "late").await;
    subscriptions.settle(PATIENCE).await.unwrap();
    let fired: u64 = timers.iter().map(|t| t.fired()).sum();
    assert_eq!(fired, 2, "one due record from each timer");
    assert_eq!(
        reminders(&store, "late").await,
        1,
        "once, from two due records"
    );
    assert_eq!(
        reminders(&store, "paid").await,
        0,
        "cancelled by the payment"
    );
    for timer in timers {
        timer.stop().await;
    }

    // Everything delivered again: the deadline is set again from the same event (same due
    // time), the first due record fires it with the same command id, answered from history.
    subscriptions.stop("dunning").await;
    subscriptions
        .reset("dunning", ResetTo::Beginning, true)
        .await
        .unwrap();
    subscriptions.start(dunning(&invoices)).unwrap();
    subscriptions.settle(PATIENCE).await.unwrap();
    assert_eq!(
        reminders(&store, "late").await,
        1,
        "redelivered, still once"
    );
    assert_eq!(reminders(&store, "paid").await, 0);

    // Instances take events from several streams: partitions (chosen by stream) are refused.
    subscriptions.stop("dunning").await;
    assert!(matches!(
        subscriptions.start_partitioned(dunning(&invoices), 2, Default::default()),
        Err(tidings::subscription::StartError::NotPartitionable(name)) if name == "dunning"
    ));
    subscriptions.stop_all().await;
}

#[actix::test]
async fn a_deadline_set_before_a_restart_fires_after_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        let invoices =
            AggregateRegistry::<Invoice>::start(store.clone(), AggregateConfig::default());
        let subscriptions = Subscriptions::new(Arc::new(store.clone()));
        subscriptions
            .start(Dunning {
                invoices: invoices.clone(),
            })
            .unwrap();
        invoices
            .execute_fresh("i1", ("i1".to_owned(), issue(Duration::from_millis(300))))
            .await
            .unwrap();
        subscriptions.settle(PATIENCE).await.unwrap();
        // Down before the deadline, with no timer running.
        subscriptions.stop_all().await;
        invoices.shutdown().await;
        store.close().await;
    }
    let store = SledEventStore::open(dir.path()).unwrap();
    assert_eq!(reminders(&store, "i1").await, 0);
    let invoices = AggregateRegistry::<Invoice>::start(store.clone(), AggregateConfig::default());
    let shared: Arc<dyn EventStore> = Arc::new(store.clone());
    let subscriptions = Subscriptions::new(shared.clone());
    subscriptions.start(Dunning { invoices }).unwrap();
    let timer = DeadlineTimer::start::<Dunning>(shared, Duration::from_millis(20));
    until_reminded(&store, "i1").await;
    subscriptions.settle(PATIENCE).await.unwrap();
    assert_eq!(reminders(&store, "i1").await, 1);
    timer.stop().await;
    subscriptions.stop_all().await;
}

#[actix::test]
async fn a_correlation_key_beyond_the_limit_fails_the_event_and_writes_nothing() {
    use tidings::store::{EventData, ExpectedVersion};
    use tidings::subscription::{FailurePolicy, SubscriptionConfig, WaitError};
    let dir = tempfile::tempdir().unwrap();
    let store = SledEventStore::open(dir.path()).unwrap();
    let invoices = AggregateRegistry::<Invoice>::start(store.clone(), AggregateConfig::default());
    let issued = InvoiceEvent::Issued {
        id: "x".repeat(tidings::process::MAX_INSTANCE_LEN + 1),
        remind_after_ms: 0,
    };
    let data: EventData = issued.to_event_data().unwrap();
    let appended = store
        .append("invoice-long", ExpectedVersion::Any, vec![data])
        .await
        .unwrap();
    let subscriptions = Subscriptions::new(Arc::new(store.clone()));
    let handle = subscriptions
        .start_with(
            Dunning { invoices },
            SubscriptionConfig::default().failure_policy(FailurePolicy::Stop),
        )
        .unwrap();
    match handle
        .wait_until_handled(appended.last_position, PATIENCE)
        .await
    {
        Err(WaitError::Failed { reason, .. }) => {
            assert!(reason.contains("correlation key"), "{reason}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(store.load_checkpoint("dunning").await.unwrap(), Some(0));
    let state = store.scan_state("dunning", b"", b"", 10).await.unwrap();
    assert!(
        state
            .iter()
            .all(|(k, _)| !k.starts_with(b"i/") && !k.starts_with(b"d/")),
        "nothing written: {state:?}"
    );
}

/// A process manager started under a name of its own keeps its instances and deadlines under
/// that name: its timer is started with that name, and a timer for the type's own name finds
/// nothing to fire.
#[actix::test]
async fn a_process_manager_under_a_runtime_name_keeps_its_instances_and_deadlines_there() {
    use tidings::process::instance_state_named;
    use tidings::subscription::{SubscriptionConfig, SubscriptionName};

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
    let invoices = AggregateRegistry::<Invoice>::start(store.clone(), AggregateConfig::default());
    let subscriptions = Subscriptions::new(store.clone());
    let config = SubscriptionConfig::default().name(SubscriptionName::new("dunning-eu").unwrap());
    let handle = subscriptions
        .start_with(dunning(&invoices), config)
        .unwrap();
    assert_eq!(handle.name(), &"dunning-eu");
    let named = DeadlineTimer::start_named("dunning-eu", store.clone(), Duration::from_millis(20));
    let default = DeadlineTimer::start::<Dunning>(store.clone(), Duration::from_millis(20));

    invoices
        .execute_fresh("i1", ("i1".into(), issue(Duration::from_millis(10))))
        .await
        .unwrap();
    until_reminded(&*store, "i1").await;
    subscriptions.settle(PATIENCE).await.unwrap();
    assert_eq!(reminders(&*store, "i1").await, 1);
    assert!(named.fired() >= 1);
    assert_eq!(
        default.fired(),
        0,
        "nothing is due under the type's own name"
    );
    named.stop().await;
    default.stop().await;
    subscriptions.stop_all().await;

    let state = instance_state_named::<Dunning>(&*store, "dunning-eu", "i1").await;
    assert_eq!(state.unwrap(), Some(true));
    assert_eq!(
        instance_state::<Dunning>(&*store, "i1").await.unwrap(),
        None
    );
    assert_eq!(store.load_checkpoint("dunning").await.unwrap(), None);
}
