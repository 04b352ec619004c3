//! A test kit for aggregates: given/when/then on the logic alone, and a temporary store to run
//! an aggregate's registry on.

use std::fmt::Debug;
use std::path::Path;

use uuid::Uuid;

use super::{Aggregate, AggregateConfig, AggregateRegistry};
use crate::event::DomainEvent;
use crate::store::{category_of, RecordedEvent, SledEventStore, StoreError};

/// Given/when/then for an aggregate's logic, with no store and no actors.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::aggregate::testing::AggregateTest;
/// use tidings::aggregate::Aggregate;
/// use tidings::DomainEvent;
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
/// enum DoorEvent {
///     Opened,
///     Closed,
/// }
///
/// #[derive(Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
/// #[error("the door is already {0}")]
/// struct Already(String);
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Door {
///     open: bool,
/// }
///
/// impl Aggregate for Door {
///     const CATEGORY: &'static str = "door";
///     type Command = bool; // true: open it
///     type Event = DoorEvent;
///     type Error = Already;
///     fn handle(&self, open: bool) -> Result<Vec<DoorEvent>, Already> {
///         match (self.open, open) {
///             (false, true) => Ok(vec![DoorEvent::Opened]),
///             (true, false) => Ok(vec![DoorEvent::Closed]),
///             (true, true) => Err(Already("open".into())),
///             (false, false) => Err(Already("closed".into())),
///         }
///     }
///     fn apply(&mut self, event: &DoorEvent) {
///         self.open = matches!(event, DoorEvent::Opened);
///     }
/// }
///
/// AggregateTest::<Door>::given_no_previous_events()
///     .when(true)
///     .then_expect_events(vec![DoorEvent::Opened]);
/// AggregateTest::<Door>::given([DoorEvent::Opened])
///     .when(true)
///     .then_expect_error(Already("open".into()));
/// let door = AggregateTest::<Door>::given([DoorEvent::Opened])
///     .when(false)
///     .then_expect_events(vec![DoorEvent::Closed]);
/// assert!(!door.open);
/// ```
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> std::fmt::Debug for AggregateTest<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateTest")
            .field("aggregate", &A::CATEGORY)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from the state after `events` (applied in order).
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(&event);
        }
        AggregateTest { state }
    }

    /// Starts from the state before any event.
    pub fn given_no_previous_events() -> Self {
        Self::given([])
    }

    /// Decides `command` on the given state.
    pub fn when(self, command: A::Command) -> AggregateTestOutcome<A> {
        let result = self.state.handle(command);
        AggregateTestOutcome {
            state: self.state,
            result,
        }
    }
}

/// The result of [`AggregateTest::when`], to check with a `then_...` method.
pub struct AggregateTestOutcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> std::fmt::Debug for AggregateTestOutcome<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let result = match &self.result {
            Ok(events) => Ok(events.len()),
            Err(e) => Err(e),
        };
        f.debug_struct("AggregateTestOutcome")
            .field("aggregate", &A::CATEGORY)
            .field("events", &result)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> AggregateTestOutcome<A> {
    /// Asserts that the command was accepted with exactly `expected` events, that each event
    /// survives the trip through the store's encoding (`to_event_data` and `from_recorded`),
    /// and returns the state after applying them.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
        A::Error: Debug,
    {
        let events = match self.result {
            Ok(events) => events,
            Err(e) => panic!("expected events {expected:?}, but the command was rejected: {e:?}"),
        };
        assert_eq!(events, expected, "the command produced other events");
        for event in &events {
            let decoded = round_trip::<A::Event>(event);
            assert_eq!(
                &decoded, event,
                "the event changes on its way through the store's encoding"
            );
        }
        let mut state = self.state;
        for event in &events {
            state.apply(event);
        }
        state
    }

    /// Asserts that the command was rejected with `expected`.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Event: Debug,
        A::Error: PartialEq + Debug,
    {
        match self.result {
            Ok(events) => panic!("expected error {expected:?}, but got events {events:?}"),
            Err(e) => assert_eq!(e, expected, "the command was rejected with another error"),
        }
    }

    /// Asserts that the command was rejected with an error for which `check` returns `true`.
    #[track_caller]
    pub fn then_expect_error_matching(self, check: impl FnOnce(&A::Error) -> bool)
    where
        A::Event: Debug,
        A::Error: Debug,
    {
        match self.result {
            Ok(events) => panic!("expected an error, but got events {events:?}"),
            Err(e) => assert!(check(&e), "the error {e:?} does not match"),
        }
    }

    /// The decision itself, for checks the methods above do not cover.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

#[track_caller]
fn round_trip<E: DomainEvent>(event: &E) -> E {
    let data = event
        .to_event_data()
        .unwrap_or_else(|e| panic!("event {:?} does not encode: {e}", event.event_type()));
    let recorded = RecordedEvent {
        position: 1,
        stream_id: "test-1".into(),
        stream_version: 1,
        category: category_of("test-1").into(),
        event_type: data.event_type.into(),
        schema_version: data.schema_version,
        event_id: Uuid::nil(),
        correlation_id: None,
        causation_id: None,
        timestamp_micros: 0,
        payload: data.payload.into(),
        metadata: Default::default(),
    };
    E::from_recorded(&recorded).unwrap_or_else(|e| panic!("{e}"))
}

/// A [`SledEventStore`] in a temporary directory, deleted when this is dropped: to run
/// aggregates (or anything else) against a real store in tests.
///
/// ```
/// use tidings::aggregate::testing::TempStore;
/// use tidings::store::EventStore;
///
/// let temp = TempStore::new().unwrap();
/// assert_eq!(temp.store().head(), 0);
/// ```
#[derive(Debug)]
pub struct TempStore {
    store: SledEventStore,
    // Dropped after the store (fields drop in order).
    dir: tempfile::TempDir,
}

impl TempStore {
    /// Opens a new, empty store in a fresh temporary directory.
    pub fn new() -> Result<Self, StoreError> {
        let dir = tempfile::tempdir()?;
        let store = SledEventStore::open(dir.path())?;
        Ok(TempStore { store, dir })
    }

    /// The store (cheap to clone).
    pub fn store(&self) -> &SledEventStore {
        &self.store
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts a registry of `A` on this store (inside a running actix `System`).
    pub fn registry<A: Aggregate>(&self, config: AggregateConfig) -> AggregateRegistry<A> {
        AggregateRegistry::start(self.store.clone(), config)
    }
}

/// The test kit for event handlers and process managers (in
/// [`subscription::testing`](crate::subscription::testing)), here beside the aggregates' kit.
pub use crate::subscription::testing::{
    FailureKind, HandlerOutcome, HandlerTest, ScheduledDeadline, SentCommand,
};
