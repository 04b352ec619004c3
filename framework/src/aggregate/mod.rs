//! Aggregates: the write side. Each decides from its own history whether a command is accepted,
//! and records the outcome as events.
//!
//! An [`Aggregate`] is plain logic (`handle` decides, `apply` changes state). An
//! [`AggregateRegistry`] runs one actix actor per live aggregate instance: it starts instances on
//! demand, rebuilds them from the latest snapshot plus the events after it, serializes their
//! commands, makes commands idempotent by command id, retries on optimistic-concurrency
//! conflicts, saves snapshots, passivates idle instances, bounds how many stay in memory, and
//! restarts an instance whose code panicked. The guide is `docs/aggregates.md`.

mod actor;
mod config;
mod envelope;
mod error;
mod load;
mod messages;
mod registry;
pub mod testing;
mod window;

pub use self::config::AggregateConfig;
pub use self::envelope::CommandEnvelope;
pub use self::error::{AggregateError, CommandOutcome, CommandResult, NeverRejected, Recorded};
pub use self::load::{load, replay, stream_id, Loaded};
pub use self::registry::{AggregateRegistry, RegistryStats};
pub use self::window::{
    is_framework_record, Decision, ProcessedCommands, REFUSED_TYPE, UNCHANGED_TYPE,
};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::DomainEvent;

/// An aggregate: a consistency boundary that decides commands from its own history.
///
/// - [`handle`](Aggregate::handle) holds the business rules: given the current state and a
///   command, it returns the events that happened, or an error. No I/O, no side effects: it may
///   run again for the same command after a concurrency conflict.
/// - [`apply`](Aggregate::apply) changes the state by one event, with no decisions: it also runs
///   when the aggregate is rebuilt from its history, where events cannot be refused.
///
/// The state is `Default` (the state before any event) and serde-serializable (snapshots).
/// Instances are identified by a string id; their events live in the stream
/// `"{CATEGORY}-{id}"`, so `CATEGORY` is the stream category.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::aggregate::Aggregate;
/// use tidings::DomainEvent;
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
/// enum CounterEvent {
///     Incremented { by: u64 },
/// }
///
/// #[derive(Clone, Debug)]
/// enum CounterCommand {
///     Increment { by: u64 },
/// }
///
/// #[derive(Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
/// #[error("cannot increment by zero")]
/// struct ZeroIncrement;
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter {
///     value: u64,
/// }
///
/// impl Aggregate for Counter {
///     const CATEGORY: &'static str = "counter";
///     type Command = CounterCommand;
///     type Event = CounterEvent;
///     type Error = ZeroIncrement;
///
///     fn handle(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, ZeroIncrement> {
///         match command {
///             CounterCommand::Increment { by: 0 } => Err(ZeroIncrement),
///             CounterCommand::Increment { by } => Ok(vec![CounterEvent::Incremented { by }]),
///         }
///     }
///
///     fn apply(&mut self, event: &CounterEvent) {
///         match event {
///             CounterEvent::Incremented { by } => self.value += by,
///         }
///     }
/// }
///
/// // The logic runs without a store or actors:
/// let mut counter = Counter::default();
/// for event in counter.handle(CounterCommand::Increment { by: 2 }).unwrap() {
///     counter.apply(&event);
/// }
/// assert_eq!(counter.value, 2);
/// assert!(counter.handle(CounterCommand::Increment { by: 0 }).is_err());
/// ```
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + 'static {
    /// The aggregate type, used as the stream category: non-empty, without `-`.
    const CATEGORY: &'static str;

    /// The version of the state's serialized shape, stored with snapshots. Raise it when the
    /// state's shape changes: snapshots of another version are ignored and the state is
    /// rebuilt from the events (and the next snapshot has the new version).
    const SNAPSHOT_VERSION: u32 = 1;

    /// The commands the aggregate accepts. `Clone` because a command is decided again after a
    /// concurrency conflict.
    type Command: Clone + Send + 'static;

    /// The events the aggregate records.
    type Event: DomainEvent;

    /// The aggregate's own rejection of a command.
    ///
    /// Serializable because a refusal is remembered: a command refused once (with an id the
    /// caller chose, see [`CommandEnvelope`]) is answered with the same refusal when it is sent
    /// again, even after the state changed and after a restart. The refusal is kept as JSON in
    /// the aggregate's stream.
    type Error: std::error::Error + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Decides a command: the events that happen, or why the command is refused. Business
    /// rules only; no I/O.
    ///
    /// The aggregate's id is not an argument: the state is the id's history, so an aggregate
    /// whose rules or events need its id keeps it in its state, taken from the event that
    /// created it (the creating command carries it); its stream is `"{CATEGORY}-{id}"`.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Changes the state by one event. State changes only, no decisions.
    fn apply(&mut self, event: &Self::Event);
}

/// The guide's examples are compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/aggregates.md")]
pub struct AggregatesGuide;
