//! Aggregates as actors: given/when/then of an example domain (a bank account), idempotent
//! commands across passivation and store restarts, serialized concurrent commands, optimistic
//! concurrency against outside writes, panics in user code, and snapshot equivalence.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tidings::aggregate::testing::{AggregateTest, TempStore};
use tidings::aggregate::{
    is_framework_record, load, replay, Aggregate, AggregateConfig, AggregateError,
    AggregateRegistry, CommandEnvelope, REFUSED_TYPE, UNCHANGED_TYPE,
};
use tidings::store::{
    AppendResult, EventData, EventStore, ExpectedVersion, Filter, HeadWatch, ReadBatch,
    RecordedEvent, SledEventStore, Snapshot, StateWrite, StoreError, VerifyReport,
};
use tidings::DomainEvent;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The example domain: a bank account.

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, DomainEvent)]
enum AccountEvent {
    Opened {
        owner: String,
    },
    Deposited {
        cents: u64,
    },
    Withdrawn {
        cents: u64,
    },
    /// Its `apply` panics: a bug planted for the tests.
    Poisoned,
}

#[derive(Clone, Debug)]
enum AccountCommand {
    Open {
        owner: String,
    },
    Deposit {
        cents: u64,
    },
    Withdraw {
        cents: u64,
    },
    /// Accepted with no events.
    Touch,
    /// `handle` panics.
    Explode,
    /// Produces an event whose `apply` panics.
    Poison,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
enum AccountError {
    NotOpen,
    AlreadyOpen,
    ZeroAmount,
    InsufficientFunds { balance: u64, requested: u64 },
}

impl fmt::Display for AccountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for AccountError {}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: u64,
    deposits: u64,
}

impl Aggregate for Account {
    const CATEGORY: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn handle(&self, command: AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand::*;
        match command {
            Open { owner } if self.owner.is_none() => Ok(vec![AccountEvent::Opened { owner }]),
            Open { .. } => Err(AccountError::AlreadyOpen),
            _ if self.owner.is_none() => Err(AccountError::NotOpen),
            Deposit { cents: 0 } | Withdraw { cents: 0 } => Err(AccountError::ZeroAmount),
            Deposit { cents } => Ok(vec![AccountEvent::Deposited { cents }]),
            Withdraw { cents } if cents > self.balance => Err(AccountError::InsufficientFunds {
                balance: self.balance,
                requested: cents,
            }),
            Withdraw { cents } => Ok(vec![AccountEvent::Withdrawn { cents }]),
            Touch => Ok(vec![]),
            Explode => panic!("explode: a bug in handle"),
            Poison => Ok(vec![
                AccountEvent::Deposited { cents: 1 },
                AccountEvent::Poisoned,
            ]),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened { owner } => self.owner = Some(owner.clone()),
            AccountEvent::Deposited { cents } => {
                self.balance += cents;
                self.deposits += 1;
            }
            AccountEvent::Withdrawn { cents } => self.balance -= cents,
            AccountEvent::Poisoned => panic!("poisoned: a bug in apply"),
        }
    }
}

fn open(owner: &str) -> AccountCommand {
    AccountCommand::Open {
        owner: owner.into(),
    }
}

fn deposit(cents: u64) -> AccountCommand {
    AccountCommand::Deposit { cents }
}

fn withdraw(cents: u64) -> AccountCommand {
    AccountCommand::Withdraw { cents }
}

async fn stream(store: &dyn EventStore, id: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(&format!("account-{id}"), 1, 100_000)
        .await
        .unwrap()
}

/// Waits (polling, at most `limit`) until `check` holds.
async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        actix::clock::sleep(Duration::from_millis(5)).await;
    }
    true
}

// ---------------------------------------------------------------------------------------------
// Given / when / then: the logic alone.

#[test]
fn an_account_opens_once() {
    AggregateTest::<Account>::given_no_previous_events()
        .when(open("ada"))
        .then_expect_events(vec![AccountEvent::Opened {
            owner: "ada".into(),
        }]);
    AggregateTest::<Account>::given([AccountEvent::Opened {
        owner: "ada".into(),
    }])
    .when(open("bob"))
    .then_expect_error(AccountError::AlreadyOpen);
}

#[test]
fn deposits_and_withdrawals_follow_the_balance() {
    let history = [
        AccountEvent::Opened {
            owner: "ada".into(),
        },
        AccountEvent::Deposited { cents: 100 },
    ];
    let state = AggregateTest::<Account>::given(history.clone())
        .when(withdraw(40))
        .then_expect_events(vec![AccountEvent::Withdrawn { cents: 40 }]);
    assert_eq!(state.balance, 60);
    AggregateTest::<Account>::given(history.clone())
        .when(withdraw(101))
        .then_expect_error(AccountError::InsufficientFunds {
            balance: 100,
            requested: 101,
        });
    AggregateTest::<Account>::given(history)
        .when(deposit(0))
        .then_expect_error_matching(|e| matches!(e, AccountError::ZeroAmount));
    AggregateTest::<Account>::given_no_previous_events()
        .when(deposit(5))
        .then_expect_error(AccountError::NotOpen);
}

#[test]
#[should_panic(expected = "the command produced other events")]
fn the_test_kit_reports_unexpected_events() {
    AggregateTest::<Account>::given([AccountEvent::Opened {
        owner: "ada".into(),
    }])
    .when(deposit(5))
    .then_expect_events(vec![AccountEvent::Deposited { cents: 6 }]);
}

// ---------------------------------------------------------------------------------------------
// Idempotence.

#[actix::test]
async fn the_same_command_id_twice_records_one_set_of_events() {
    let temp = TempStore::new().unwrap();
    let accounts = temp.registry::<Account>(AggregateConfig::default());
    accounts.execute_fresh("a1", open("ada")).await.unwrap();

    let correlation = Uuid::now_v7();
    let command = CommandEnvelope::new(deposit(10)).correlated_with(correlation);
    let first = accounts.execute("a1", command.clone()).await.unwrap();
    let second = accounts.execute("a1", command.clone()).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.recorded, second.recorded);
    assert_eq!(first.recorded.unwrap().first_version, 2);

    let events = stream(temp.store(), "a1").await;
    assert_eq!(events.len(), 2, "the duplicate recorded nothing");
    assert_eq!(events[1].causation_id, Some(command.command_id));
    assert_eq!(events[1].correlation_id, Some(correlation));
    // Without a correlation id, the command id is the correlation id.
    assert_eq!(events[0].correlation_id, events[0].causation_id);
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 10);
    accounts.shutdown().await;
}

#[actix::test]
async fn idempotence_survives_passivation_and_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let command = CommandEnvelope::new(deposit(25));
    let outcome;
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        let accounts =
            AggregateRegistry::<Account>::start(store.clone(), AggregateConfig::default());
        accounts.execute_fresh("a1", open("ada")).await.unwrap();
        outcome = accounts.execute("a1", command.clone()).await.unwrap();
        // Passivate: the next command rebuilds the actor from the store.
        assert!(accounts.passivate("a1").await);
        assert!(
            eventually(Duration::from_secs(60), || accounts.stats().live_instances
                == 0)
            .await
        );
        let again = accounts.execute("a1", command.clone()).await.unwrap();
        assert!(again.duplicate, "duplicate after passivation");
        assert_eq!(again.recorded, outcome.recorded);
        accounts.shutdown().await;
        store.close().await;
    }
    // A new process, in effect: reopen the store, start a new registry.
    let store = SledEventStore::open(dir.path()).unwrap();
    let accounts = AggregateRegistry::<Account>::start(store.clone(), AggregateConfig::default());
    let again = accounts.execute("a1", command.clone()).await.unwrap();
    assert!(again.duplicate, "duplicate after reopening the store");
    assert_eq!(again.recorded, outcome.recorded);
    assert_eq!(stream(&store, "a1").await.len(), 2);
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 25);
    accounts.shutdown().await;
}

#[actix::test]
async fn a_command_is_forgotten_once_its_first_event_leaves_the_window() {
    let temp = TempStore::new().unwrap();
    // Window of 3 events; no snapshots, then with snapshots every 2 events: same answers.
    for (id, snapshots) in [("w1", None), ("w2", Some(2))] {
        let config = AggregateConfig::default()
            .dedup_window(3)
            .snapshot_every(snapshots);
        let accounts = temp.registry::<Account>(config);
        accounts.execute_fresh(id, open("ada")).await.unwrap();
        let old = CommandEnvelope::new(deposit(1));
        accounts.execute(id, old.clone()).await.unwrap(); // version 2
        accounts.execute_fresh(id, deposit(1)).await.unwrap(); // 3
        accounts.execute_fresh(id, deposit(1)).await.unwrap(); // 4: window 2..=4
        assert!(accounts.execute(id, old.clone()).await.unwrap().duplicate);
        accounts.passivate(id).await;
        assert!(accounts.execute(id, old.clone()).await.unwrap().duplicate);
        accounts.execute_fresh(id, deposit(1)).await.unwrap(); // 5: window 3..=5
        accounts.passivate(id).await;
        let late = accounts.execute(id, old.clone()).await.unwrap();
        assert!(
            !late.duplicate,
            "outside the window the command is decided again"
        );
        assert_eq!(accounts.query(id, |a| a.balance).await.unwrap(), 5);
        accounts.shutdown().await;
    }
}

/// The issue's reproduction: a declined transfer must stay declined. A reaction refuses a
/// `caused_by` command, the aggregate's state changes (a deposit arrives), and the event is
/// redelivered: the same envelope must get the same refusal, not be decided again.
#[actix::test]
async fn a_refused_command_is_refused_again_after_the_state_changed() {
    let dir = tempfile::tempdir().unwrap();
    let cause = RecordedEvent::new(
        7,
        "transfer-t1",
        1,
        EventData::new("TransferRequested", b"{}".to_vec()),
    )
    .with_timestamp_micros(0);
    let debit = CommandEnvelope::caused_by(&cause, "debit", withdraw(50));
    let refusal = AccountError::InsufficientFunds {
        balance: 0,
        requested: 50,
    };
    {
        let store = SledEventStore::open(dir.path()).unwrap();
        let accounts =
            AggregateRegistry::<Account>::start(store.clone(), AggregateConfig::default());
        accounts.execute_fresh("a1", open("ada")).await.unwrap();
        let first = accounts.execute("a1", debit.clone()).await.unwrap_err();
        assert_eq!(first.rejection(), Some(&refusal));
        accounts.execute_fresh("a1", deposit(80)).await.unwrap();

        let again = accounts.execute("a1", debit.clone()).await.unwrap_err();
        assert_eq!(
            again.rejection(),
            Some(&refusal),
            "the same refusal, not a debit"
        );
        accounts.passivate("a1").await;
        let reloaded = accounts.execute("a1", debit.clone()).await.unwrap_err();
        assert_eq!(reloaded.rejection(), Some(&refusal), "after passivation");
        assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 80);
        accounts.shutdown().await;
        store.close().await;
    }
    // A new process, in effect.
    let store = SledEventStore::open(dir.path()).unwrap();
    let accounts = AggregateRegistry::<Account>::start(store.clone(), AggregateConfig::default());
    let restarted = accounts.execute("a1", debit.clone()).await.unwrap_err();
    assert_eq!(restarted.rejection(), Some(&refusal), "after a restart");
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 80);

    // The refusal is one framework record, caused by the command, between the domain events.
    let events = stream(&store, "a1").await;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Opened", REFUSED_TYPE, "Deposited"]);
    assert_eq!(events[1].causation_id, Some(debit.command_id));
    assert_eq!(events[1].correlation_id, debit.correlation_id);
    let payload: serde_json::Value = serde_json::from_slice(&events[1].payload).unwrap();
    assert_eq!(payload["message"], refusal.to_string());

    // A caller that means "decide again" sends a new id: now the money is there.
    let decided_again = accounts
        .execute("a1", CommandEnvelope::new(withdraw(50)))
        .await
        .unwrap();
    assert!(!decided_again.duplicate);
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 30);
    accounts.shutdown().await;
}

#[actix::test]
async fn an_acceptance_that_changed_nothing_is_remembered_too() {
    let temp = TempStore::new().unwrap();
    let accounts = temp.registry::<Account>(AggregateConfig::default());
    accounts.execute_fresh("a1", open("ada")).await.unwrap();
    let touch = CommandEnvelope::new(AccountCommand::Touch);
    let first = accounts.execute("a1", touch.clone()).await.unwrap();
    assert_eq!((first.recorded, first.duplicate), (None, false));
    accounts.passivate("a1").await;
    let second = accounts.execute("a1", touch.clone()).await.unwrap();
    assert_eq!((second.recorded, second.duplicate), (None, true));
    let events = stream(temp.store(), "a1").await;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Opened", UNCHANGED_TYPE]);
    assert!(is_framework_record(&events[1].event_type));
    accounts.shutdown().await;
}

/// `execute_fresh` gives each call a fresh id that nobody can send again: its refusals and
/// empty acceptances are not recorded. With the window off, nothing is remembered either.
#[actix::test]
async fn fresh_ids_and_a_closed_window_record_no_decisions() {
    let temp = TempStore::new().unwrap();
    let accounts = temp.registry::<Account>(AggregateConfig::default());
    accounts.execute_fresh("a1", open("ada")).await.unwrap();
    let err = accounts
        .execute_fresh("a1", withdraw(50))
        .await
        .unwrap_err();
    assert!(err.rejection().is_some());
    let touch = accounts
        .execute_fresh("a1", AccountCommand::Touch)
        .await
        .unwrap();
    assert_eq!((touch.recorded, touch.duplicate), (None, false));
    assert_eq!(stream(temp.store(), "a1").await.len(), 1);
    assert!(matches!(
        accounts.execute_fresh("", deposit(1)).await,
        Err(AggregateError::InvalidId(_))
    ));
    accounts.shutdown().await;

    let forgetful = temp.registry::<Account>(AggregateConfig::default().dedup_window(0));
    let big = CommandEnvelope::new(withdraw(50));
    assert!(forgetful.execute("a1", big.clone()).await.is_err());
    forgetful.execute_fresh("a1", deposit(80)).await.unwrap();
    let retried = forgetful.execute("a1", big).await.unwrap();
    assert!(!retried.duplicate, "window 0: decided again");
    assert_eq!(stream(temp.store(), "a1").await.len(), 3);
    forgetful.shutdown().await;
}

/// A refusal leaves the window like an event does: after `dedup_window` later records the id is
/// decided again (the window rule, documented in docs/aggregates.md).
#[actix::test]
async fn a_refusal_is_forgotten_once_it_leaves_the_window() {
    let temp = TempStore::new().unwrap();
    let accounts = temp.registry::<Account>(AggregateConfig::default().dedup_window(3));
    accounts.execute_fresh("a1", open("ada")).await.unwrap(); // 1
    let big = CommandEnvelope::new(withdraw(50));
    assert!(accounts.execute("a1", big.clone()).await.is_err()); // 2: refused
    accounts.execute_fresh("a1", deposit(40)).await.unwrap(); // 3
    accounts.execute_fresh("a1", deposit(40)).await.unwrap(); // 4: window 2..=4
    assert!(
        accounts.execute("a1", big.clone()).await.is_err(),
        "in the window"
    );
    accounts.execute_fresh("a1", deposit(1)).await.unwrap(); // 5: window 3..=5
    accounts.passivate("a1").await;
    let late = accounts.execute("a1", big).await.unwrap();
    assert!(
        !late.duplicate,
        "outside the window the command is decided again"
    );
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 31);
    accounts.shutdown().await;
}

/// A remembered refusal whose error type changed shape since is not decided again: the answer
/// is `RejectedBefore` with the refusal's recorded text.
#[actix::test]
async fn a_refusal_that_no_longer_decodes_is_still_a_refusal() {
    let temp = TempStore::new().unwrap();
    let accounts = temp.registry::<Account>(AggregateConfig::default());
    accounts.execute_fresh("a1", open("ada")).await.unwrap();
    let command = CommandEnvelope::new(deposit(5));
    // What an older version of the aggregate recorded, with an error variant since removed.
    let old = EventData::new(
        REFUSED_TYPE,
        br#"{"error":"Frozen","message":"the account is frozen"}"#.to_vec(),
    )
    .with_causation_id(command.command_id);
    temp.store()
        .append("account-a1", ExpectedVersion::Exact(1), vec![old])
        .await
        .unwrap();
    accounts.passivate("a1").await;
    let sent = command.command_id;
    match accounts.execute("a1", command).await {
        Err(AggregateError::RejectedBefore {
            command_id,
            message,
            ..
        }) => {
            assert_eq!(message, "the account is frozen");
            assert_eq!(command_id, sent);
        }
        other => panic!("expected RejectedBefore, got {other:?}"),
    }
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 0);
    accounts.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Passivation, snapshots, concurrency.

#[actix::test]
async fn passivation_and_reload_give_the_same_state() {
    let temp = TempStore::new().unwrap();
    let config = AggregateConfig::default()
        .idle_timeout(Some(Duration::from_millis(40)))
        .snapshot_every(Some(4));
    let accounts = temp.registry::<Account>(config.clone());
    accounts.execute_fresh("a1", open("ada")).await.unwrap();
    for cents in 1..=10 {
        accounts.execute_fresh("a1", deposit(cents)).await.unwrap();
    }
    accounts.execute_fresh("a1", withdraw(7)).await.unwrap();
    let before = accounts
        .query_versioned("a1", |a, v| (a.clone(), v))
        .await
        .unwrap();
    assert_eq!(before.0.balance, 48);
    assert_eq!(before.1, 12);

    assert!(
        eventually(Duration::from_secs(60), || accounts.stats().live_instances
            == 0)
        .await,
        "the idle instance was passivated: {:?}",
        accounts.stats()
    );
    assert!(accounts.stats().passivations >= 1);
    let after = accounts
        .query_versioned("a1", |a, v| (a.clone(), v))
        .await
        .unwrap();
    assert_eq!(after, before);

    let from_snapshot = load::<Account>(temp.store(), "a1", &config).await.unwrap();
    assert_eq!(from_snapshot.from_snapshot, Some(12));
    let full = replay::<Account>(temp.store(), "a1", &config)
        .await
        .unwrap();
    assert_eq!(
        (&from_snapshot.state, from_snapshot.version),
        (&full.state, full.version)
    );
    assert_eq!(from_snapshot.processed, full.processed);
    accounts.shutdown().await;
}

#[actix::test]
async fn concurrent_commands_to_one_aggregate_lose_no_update() {
    let temp = TempStore::new().unwrap();
    let accounts = temp.registry::<Account>(AggregateConfig::default());
    accounts.execute_fresh("hot", open("ada")).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let accounts = accounts.clone();
            actix::spawn(async move {
                for _ in 0..20 {
                    accounts.execute_fresh("hot", deposit(1)).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let (balance, version) = accounts
        .query_versioned("hot", |a, v| (a.balance, v))
        .await
        .unwrap();
    assert_eq!((balance, version), (1000, 1001));
    let events = stream(temp.store(), "hot").await;
    assert_eq!(events.len(), 1001);
    accounts.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Optimistic concurrency.

#[actix::test]
async fn a_write_from_outside_makes_the_next_command_reload_and_succeed() {
    let temp = TempStore::new().unwrap();
    let accounts = temp.registry::<Account>(AggregateConfig::default());
    accounts.execute_fresh("a1", open("ada")).await.unwrap();
    accounts.execute_fresh("a1", deposit(10)).await.unwrap();
    // Someone else writes to the stream; the actor does not know.
    let outside = AccountEvent::Deposited { cents: 90 }
        .to_event_data()
        .unwrap();
    temp.store()
        .append("account-a1", ExpectedVersion::Exact(2), vec![outside])
        .await
        .unwrap();
    // Needs the outside deposit: the actor's stale state would refuse it... but the stale state
    // is never trusted past a conflict: the append fails, the actor reloads and decides again.
    let outcome = accounts.execute_fresh("a1", deposit(1)).await.unwrap();
    assert_eq!(outcome.recorded.unwrap().first_version, 4);
    accounts.execute_fresh("a1", withdraw(101)).await.unwrap();
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 0);
    accounts.shutdown().await;
}

/// A store that, before each of the next `conflicts` appends, slips in an outside event.
struct Meddling {
    inner: SledEventStore,
    conflicts: AtomicU32,
}

#[tidings::async_trait]
impl EventStore for Meddling {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        if self
            .conflicts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let meddle = AccountEvent::Deposited { cents: 1 }
                .to_event_data()
                .unwrap();
            self.inner
                .append(stream, ExpectedVersion::Any, vec![meddle])
                .await?;
        }
        self.inner.append(stream, expected, events).await
    }
    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, from, max).await
    }
    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        self.inner.stream_version(stream).await
    }
    async fn read_all(&self, from: u64, max: usize, f: &Filter) -> Result<ReadBatch, StoreError> {
        self.inner.read_all(from, max, f).await
    }
    fn head(&self) -> u64 {
        self.inner.head()
    }
    fn watch_head(&self) -> HeadWatch {
        self.inner.watch_head()
    }
    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<(), StoreError> {
        self.inner.save_checkpoint(name, position).await
    }
    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>, StoreError> {
        self.inner.load_checkpoint(name).await
    }
    async fn commit_checkpoint(
        &self,
        name: &str,
        expected: Option<u64>,
        position: u64,
        state: Vec<StateWrite>,
    ) -> Result<(), StoreError> {
        self.inner
            .commit_checkpoint(name, expected, position, state)
            .await
    }
    async fn load_state(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.load_state(name, key).await
    }
    async fn scan_state(
        &self,
        name: &str,
        prefix: &[u8],
        from_key: &[u8],
        max_count: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner
            .scan_state(name, prefix, from_key, max_count)
            .await
    }
    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(stream, snapshot).await
    }
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(stream).await
    }
    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.inner.verify().await
    }
}

#[actix::test]
async fn conflicts_are_retried_a_bounded_number_of_times() {
    let temp = TempStore::new().unwrap();
    let meddling = Arc::new(Meddling {
        inner: temp.store().clone(),
        conflicts: AtomicU32::new(0),
    });
    let config = AggregateConfig::default().conflict_retries(2);
    let accounts = AggregateRegistry::<Account>::start(meddling.clone(), config);
    accounts.execute_fresh("a1", open("ada")).await.unwrap();

    // Two conflicts: the third attempt succeeds.
    meddling.conflicts.store(2, Ordering::SeqCst);
    let command = CommandEnvelope::new(deposit(10));
    let outcome = accounts.execute("a1", command.clone()).await.unwrap();
    assert_eq!(outcome.recorded.unwrap().first_version, 4);

    // Three conflicts: gives up, records nothing for the command.
    meddling.conflicts.store(3, Ordering::SeqCst);
    let err = accounts
        .execute_fresh("a1", deposit(100))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AggregateError::Conflict { attempts: 3, ref stream } if stream == "account-a1"),
        "{err:?}"
    );
    // 1 open + 2 meddles + 1 deposit + 3 meddles.
    let events = stream(temp.store(), "a1").await;
    assert_eq!(events.len(), 7);
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 15);
    // The first command is still remembered after all the reloading.
    assert!(accounts.execute("a1", command).await.unwrap().duplicate);
    accounts.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Panics in user code.

#[actix::test]
async fn a_panicking_handle_restarts_the_actor_and_later_commands_work() {
    let temp = TempStore::new().unwrap();
    let accounts = temp.registry::<Account>(AggregateConfig::default());
    accounts.execute_fresh("a1", open("ada")).await.unwrap();
    accounts.execute_fresh("a1", deposit(5)).await.unwrap();

    // Commands queued behind the panicking one are answered after the restart.
    let queued: Vec<_> = (0..5)
        .map(|_| {
            let accounts = accounts.clone();
            actix::spawn(async move { accounts.execute_fresh("a1", deposit(1)).await })
        })
        .collect();
    let err = accounts
        .execute_fresh("a1", AccountCommand::Explode)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AggregateError::Panicked { message, .. } if message.contains("explode")),
        "{err:?}"
    );
    for task in queued {
        task.await.unwrap().unwrap();
    }
    assert_eq!(accounts.stats().restarts, 1);
    accounts.execute_fresh("a1", deposit(1)).await.unwrap();
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 11);
    assert_eq!(stream(temp.store(), "a1").await.len(), 8);
    accounts.shutdown().await;
}

#[actix::test]
async fn a_panicking_apply_records_nothing() {
    let temp = TempStore::new().unwrap();
    let accounts = temp.registry::<Account>(AggregateConfig::default());
    accounts.execute_fresh("a1", open("ada")).await.unwrap();
    let err = accounts
        .execute_fresh("a1", AccountCommand::Poison)
        .await
        .unwrap_err();
    assert!(matches!(err, AggregateError::Panicked { .. }), "{err:?}");
    // Neither of the command's two events was recorded, and the half-applied state is gone.
    assert_eq!(stream(temp.store(), "a1").await.len(), 1);
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 0);
    assert_eq!(accounts.stats().restarts, 1);
    accounts.execute_fresh("a1", deposit(2)).await.unwrap();
    assert_eq!(accounts.query("a1", |a| a.balance).await.unwrap(), 2);
    accounts.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Snapshot equivalence.

fn command_strategy() -> impl Strategy<Value = (AccountCommand, bool)> {
    let command = prop_oneof![
        1 => Just(open("ada")),
        5 => (0u64..50).prop_map(deposit),
        3 => (0u64..80).prop_map(withdraw),
        1 => Just(AccountCommand::Touch),
    ];
    // The flag: resend the previous command id instead of a new one.
    (command, prop::bool::weighted(0.2))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random command sequences, with snapshots every few events and repeated command ids:
    /// loading from the latest snapshot plus the tail gives the state, version and idempotence
    /// window of a full replay, and the live actor agrees with both.
    #[test]
    fn loading_from_a_snapshot_equals_a_full_replay(
        commands in prop::collection::vec(command_strategy(), 1..40),
        every in 1u64..6,
        window in 0u64..8,
    ) {
        actix::System::new().block_on(async move {
            let temp = TempStore::new().unwrap();
            let config = AggregateConfig::default()
                .snapshot_every(Some(every))
                .dedup_window(window);
            let accounts = temp.registry::<Account>(config.clone());
            let mut last = CommandEnvelope::new(AccountCommand::Touch);
            for (command, resend) in commands {
                let envelope = if resend {
                    CommandEnvelope::with_id(last.command_id, command)
                } else {
                    CommandEnvelope::new(command)
                };
                let _ = accounts.execute("p", envelope.clone()).await;
                last = envelope;
            }
            let live = accounts.query_versioned("p", |a, v| (a.clone(), v)).await.unwrap();
            accounts.shutdown().await;

            let snap = load::<Account>(temp.store(), "p", &config).await.unwrap();
            let full = replay::<Account>(temp.store(), "p", &config).await.unwrap();
            assert_eq!(full.from_snapshot, None);
            if full.version >= every {
                assert!(snap.from_snapshot.is_some(), "a snapshot was saved and used");
            }
            assert_eq!(&snap.state, &full.state);
            assert_eq!(snap.version, full.version);
            assert_eq!(&snap.processed, &full.processed);
            assert_eq!((live.0, live.1), (full.state, full.version));
        });
    }
}

/// One step of [`every_command_id_gets_its_first_answer_again`].
#[derive(Clone, Debug)]
enum Step {
    /// A new command with a new id.
    New(AccountCommand),
    /// The command sent `n` steps before (modulo the history) again, with its id.
    Resend(usize),
    /// Passivate the aggregate: the next command reloads it (from a snapshot and the tail).
    Passivate,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => command_strategy().prop_map(|(command, _)| Step::New(command)),
        3 => (0usize..64).prop_map(Step::Resend),
        1 => Just(Step::Passivate),
    ]
}

/// The answer to compare: the recorded range, or the refusal.
type Answer = Result<Option<(u64, u64)>, String>;

fn answer(
    result: Result<tidings::aggregate::CommandOutcome, AggregateError<AccountError>>,
) -> Answer {
    match result {
        Ok(outcome) => Ok(outcome.recorded.map(|r| (r.first_version, r.last_version))),
        Err(AggregateError::Rejected(e)) => Err(e.to_string()),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Remembered decisions, as a property: with the window holding the whole stream, every id
    /// sent again gets its first answer, accepted or refused, whatever happened in between
    /// (other commands, passivation, reloading from snapshots).
    #[test]
    fn every_command_id_gets_its_first_answer_again(
        steps in prop::collection::vec(step_strategy(), 1..48),
        every in 1u64..6,
    ) {
        actix::System::new().block_on(async move {
            let temp = TempStore::new().unwrap();
            let config = AggregateConfig::default()
                .snapshot_every(Some(every))
                .dedup_window(1_000);
            let accounts = temp.registry::<Account>(config);
            let mut sent: Vec<(CommandEnvelope<AccountCommand>, Answer)> = Vec::new();
            for step in steps {
                match step {
                    Step::New(command) => {
                        let envelope = CommandEnvelope::new(command);
                        let first = answer(accounts.execute("p", envelope.clone()).await);
                        sent.push((envelope, first));
                    }
                    Step::Resend(_) if sent.is_empty() => {}
                    Step::Resend(n) => {
                        let (envelope, first) = &sent[sent.len() - 1 - n % sent.len()];
                        let again = answer(accounts.execute("p", envelope.clone()).await);
                        assert_eq!(&again, first, "{:?} answered differently", envelope.command);
                    }
                    Step::Passivate => {
                        accounts.passivate("p").await;
                    }
                }
            }
            accounts.shutdown().await;
        });
    }
}
