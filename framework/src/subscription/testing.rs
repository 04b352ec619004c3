//! A test kit for event handlers and process managers: given events, when handled, then this
//! state was written, these commands were sent, or this error was returned.
//!
//! [`HandlerTest`] hands each event to the handler's own [`EventHandler::dispatch`] (the
//! derive's routing, and for a process manager the framework's correlation, instance state,
//! deadlines and refusals), through an [`EventContext`] built as the subscription runner builds
//! it: reads see the writes of earlier events, an event's writes are kept only if it succeeds, a
//! write under the reserved prefix fails the event, and an event the handler's
//! [`filter`](EventHandler::filter) leaves out is not handed to it at all. What is left out:
//! the store on disk (a read-only one in memory stands in, holding the given events and state),
//! actix, retries and parking (the first failing event ends the run, as under
//! [`FailurePolicy::Stop`](super::FailurePolicy::Stop), and the outcome says which
//! [`FailureKind`] the runner would see), and panics (they fail the test).
//!
//! A process manager's commands are not passed to its [`ProcessManager::send`]: they are
//! recorded, with their ids, and answered `Accepted` unless the test [refuses](HandlerTest::refuse)
//! their step, so a saga is tested without the aggregates it drives.
//!
//! It is `async` like handlers are: run it under `#[tokio::test]` or `#[actix_rt::test]` (no
//! actix `System` is needed).

use std::collections::BTreeMap;
use std::fmt::{Debug, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use super::handler::{merge, EventContext, EventHandler, HandlerFailure, StateBatch};
use super::runner::{is_final, is_transient};
use crate::aggregate::CommandEnvelope;
use crate::event::DomainEvent;
use crate::process::{decode_instance, instance_state_key, ProcessManager, Recorded, Recording};
use crate::store::{
    category_of, AppendResult, EventData, EventStore, ExpectedVersion, Filter, HeadWatch,
    ReadBatch, RecordedEvent, Snapshot, StateWrite, StoreError, VerifyReport,
};

/// The stream of events given without one.
pub const DEFAULT_STREAM: &str = "test-1";

/// The timestamp of the event at position 1 (2026-01-01T00:00:00Z); each later position is one
/// second later, so that process managers' deadlines are deterministic.
pub const FIRST_EVENT_TIME_MICROS: u64 = 1_767_225_600_000_000;

/// How the subscription runner treats a handler's failure (see docs/subscriptions.md, Failures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// Something the handler needs is unreachable ([`Unavailable`](super::Unavailable), a
    /// transient store error): retried until it succeeds, never parked.
    Unavailable,
    /// An ordinary error: retried by the [`FailurePolicy`](super::FailurePolicy), then parked
    /// (or the subscription stops, under `Stop`).
    Retryable,
    /// Trying again cannot help ([`Refused`](super::Refused), an event that does not decode, a
    /// write to a reserved key): fails at once, parked (or stops) without retries.
    Refused,
}

impl FailureKind {
    /// The kind of `failure`, as the runner decides it.
    pub fn of(failure: &HandlerFailure) -> Self {
        if matches!(failure, HandlerFailure::ReservedKey(_)) || is_final(failure) {
            FailureKind::Refused
        } else if is_transient(failure) {
            FailureKind::Unavailable
        } else {
            FailureKind::Retryable
        }
    }
}

/// Given events, when handled by a handler, then check what it did.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::prelude::*;
/// use tidings::subscription::testing::{FailureKind, HandlerTest};
/// use tidings::subscription::Refused;
///
/// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
/// enum OrderEvent {
///     OrderPlaced { cents: u64 },
///     OrderCancelled,
/// }
///
/// #[derive(Debug, EventHandler)]
/// #[event_handler(name = "totals", events(OrderEvent))]
/// struct Totals;
///
/// #[async_trait]
/// impl HandleEvent<OrderEvent> for Totals {
///     async fn handle(&mut self, event: OrderEvent, ctx: &mut EventContext<'_>) -> Result<(), HandlerError> {
///         let total: u64 = ctx.get_json(b"total").await?.unwrap_or(0);
///         match event {
///             OrderEvent::OrderPlaced { cents } => ctx.put_json(b"total", &(total + cents))?,
///             OrderEvent::OrderCancelled if total == 0 => {
///                 return Err(Refused("nothing to cancel".into()).into())
///             }
///             OrderEvent::OrderCancelled => ctx.delete(b"total"),
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// HandlerTest::new(Totals)
///     .given([OrderEvent::OrderPlaced { cents: 1250 }])
///     .when(OrderEvent::OrderPlaced { cents: 750 })
///     .run()
///     .await
///     .then_ok()
///     .then_read(b"total")
///     .then_state_json(b"total", &2000);
///
/// HandlerTest::new(Totals)
///     .when(OrderEvent::OrderCancelled)
///     .run()
///     .await
///     .then_error(FailureKind::Refused)
///     .then_no_state(b"total");
/// # }
/// ```
pub struct HandlerTest<H: EventHandler> {
    handler: H,
    name: String,
    events: Vec<RecordedEvent>,
    /// How many of `events` are given (the rest are `when`).
    given: usize,
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    refusals: BTreeMap<String, String>,
}

impl<H: EventHandler> Debug for HandlerTest<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerTest")
            .field("subscription", &self.name)
            .field("given", &self.given)
            .field("when", &(self.events.len() - self.given))
            .field("state", &self.state.len())
            .finish_non_exhaustive()
    }
}

impl<H: EventHandler> HandlerTest<H> {
    /// A test of `handler`, run as the subscription [`EventHandler::NAME`], with no events and
    /// no state yet.
    pub fn new(handler: H) -> Self {
        HandlerTest {
            handler,
            name: H::NAME.to_owned(),
            events: Vec::new(),
            given: 0,
            state: BTreeMap::new(),
            refusals: BTreeMap::new(),
        }
    }

    /// Runs the handler under the subscription name `name` instead (what
    /// [`EventContext::subscription`] says).
    #[must_use]
    pub fn named(mut self, name: super::SubscriptionName) -> Self {
        self.name = name.to_string();
        self
    }

    /// State the subscription had committed before the first event.
    #[must_use]
    pub fn with_state(mut self, key: &[u8], value: Vec<u8>) -> Self {
        self.state.insert(key.to_vec(), value);
        self
    }

    /// [`with_state`](Self::with_state) with a value encoded as JSON (as
    /// [`EventContext::put_json`] does).
    #[must_use]
    pub fn with_state_json<T: Serialize + ?Sized>(self, key: &[u8], value: &T) -> Self {
        let bytes = serde_json::to_vec(value).expect("the given state does not encode as JSON");
        self.with_state(key, bytes)
    }

    /// Events handled before the ones under test, in stream [`DEFAULT_STREAM`]: they build the
    /// handler's state, must succeed, and what they sent is not reported.
    #[must_use]
    pub fn given<E: DomainEvent>(self, events: impl IntoIterator<Item = E>) -> Self {
        self.given_in(DEFAULT_STREAM, events)
    }

    /// [`given`](Self::given) in stream `stream`.
    #[must_use]
    pub fn given_in<E: DomainEvent>(
        mut self,
        stream: &str,
        events: impl IntoIterator<Item = E>,
    ) -> Self {
        assert_eq!(
            self.given,
            self.events.len(),
            "given events come before the events under test (`when`)"
        );
        for event in events {
            self.push(stream, &event);
        }
        self.given = self.events.len();
        self
    }

    /// The event under test, in stream [`DEFAULT_STREAM`]. May be called more than once: the
    /// events are handled in order, and the outcome reports on all of them.
    #[must_use]
    pub fn when<E: DomainEvent>(self, event: E) -> Self {
        self.when_in(DEFAULT_STREAM, event)
    }

    /// [`when`](Self::when) in stream `stream`.
    #[must_use]
    pub fn when_in<E: DomainEvent>(mut self, stream: &str, event: E) -> Self {
        self.push(stream, &event);
        self
    }

    /// Changes the metadata of the event added last (its correlation id, timestamp, stream...).
    /// Its position stays as assigned.
    #[must_use]
    pub fn with_metadata(mut self, change: impl FnOnce(&mut RecordedEvent)) -> Self {
        let last = self
            .events
            .last_mut()
            .expect("with_metadata changes the event added last: add one first");
        let position = last.position;
        let stream = last.stream_id.clone();
        change(last);
        last.position = position;
        if last.stream_id != stream {
            last.category = category_of(&last.stream_id).into();
        }
        self
    }

    /// Answers the process manager's commands sent as step `step` with a refusal (`reason`),
    /// as an aggregate would: [`ProcessManager::refused`] sees it. Every other command is
    /// accepted.
    #[must_use]
    pub fn refuse(mut self, step: &str, reason: &str) -> Self {
        self.refusals.insert(step.to_owned(), reason.to_owned());
        self
    }

    fn push<E: DomainEvent>(&mut self, stream: &str, event: &E) {
        let data = event
            .to_event_data()
            .unwrap_or_else(|e| panic!("event {:?} does not encode: {e}", event.event_type()));
        let position = self.events.len() as u64 + 1;
        let stream_version =
            self.events.iter().filter(|e| e.stream_id == stream).count() as u64 + 1;
        self.events.push(RecordedEvent {
            position,
            stream_id: stream.into(),
            stream_version,
            category: category_of(stream).into(),
            event_type: data.event_type.into(),
            schema_version: data.schema_version,
            event_id: Uuid::from_u128(u128::from(position)),
            correlation_id: None,
            causation_id: None,
            timestamp_micros: FIRST_EVENT_TIME_MICROS + (position - 1) * 1_000_000,
            payload: data.payload.into(),
            metadata: Default::default(),
        });
    }

    /// Handles the given events, then the events under test, in order, and returns what
    /// happened. Panics if a given event fails (or the handler panics).
    pub async fn run(self) -> HandlerOutcome<H> {
        let HandlerTest {
            mut handler,
            name,
            events,
            given,
            state,
            refusals,
        } = self;
        let store = KitStore::new(name.clone(), events.clone(), state.clone());
        let filter = H::filter();
        let committed = StateBatch::new();
        let mut pending = StateBatch::new();
        let mut outcome = HandlerOutcome {
            handler: None,
            state: BTreeMap::new(),
            reads: Vec::new(),
            handled: Vec::new(),
            skipped: Vec::new(),
            error: None,
            steps: Vec::new(),
        };
        for (i, event) in events.iter().enumerate() {
            let under_test = i >= given;
            // The runner reads through the store with the handler's filter: an event it leaves
            // out never reaches the handler.
            if !filter.matches(&event.category, &event.event_type) {
                if under_test {
                    outcome.skipped.push(event.position);
                }
                continue;
            }
            let mut ctx = EventContext {
                name: &name,
                event,
                store: &store,
                pending: &pending,
                round: None,
                committed: &committed,
                writes: StateBatch::new(),
                reads: Some(Default::default()),
                reserved: None,
                fencing_token: None,
                recording: Some(Recording {
                    refusals: refusals.clone(),
                    steps: Vec::new(),
                }),
            };
            let result = handler.dispatch(event, &mut ctx).await;
            let writes = std::mem::take(&mut ctx.writes);
            let reads = ctx
                .reads
                .take()
                .map(|r| r.into_inner().unwrap_or_else(|p| p.into_inner()))
                .unwrap_or_default();
            let recorded = ctx.recording.take().map(|r| r.steps).unwrap_or_default();
            let result = match (result, ctx.reserved.take()) {
                (_, Some(key)) => Err(HandlerFailure::ReservedKey(
                    String::from_utf8_lossy(&key).into_owned(),
                )),
                (result, None) => result,
            };
            if !under_test {
                if let Err(failure) = result {
                    panic!(
                        "the given event at position {} ({}) failed: {failure}",
                        event.position, event.event_type
                    );
                }
                merge(&mut pending, writes);
                continue;
            }
            for key in reads {
                if !outcome.reads.contains(&key) {
                    outcome.reads.push(key);
                }
            }
            // Commands sent before a failure were sent (a retry sends them again, same ids).
            outcome.steps.extend(recorded);
            match result {
                Ok(()) => {
                    merge(&mut pending, writes);
                    outcome.handled.push(event.position);
                }
                Err(failure) => {
                    // As under `FailurePolicy::Stop`: the failing event's writes are dropped,
                    // and nothing after it is handled.
                    outcome.error = Some((event.position, failure));
                    break;
                }
            }
        }
        let mut state = state;
        for (key, value) in pending {
            match value {
                Some(value) => state.insert(key, value),
                None => state.remove(&key),
            };
        }
        outcome.state = state;
        outcome.handler = Some(handler);
        outcome
    }
}

/// What happened in a [`HandlerTest`]: check it with the `then_...` methods (each panics with
/// expected and actual values when the check fails, and returns the outcome for more checks).
pub struct HandlerOutcome<H> {
    handler: Option<H>,
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    reads: Vec<Vec<u8>>,
    handled: Vec<u64>,
    skipped: Vec<u64>,
    error: Option<(u64, HandlerFailure)>,
    steps: Vec<Recorded>,
}

impl<H> Debug for HandlerOutcome<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerOutcome")
            .field("state", &StateView(&self.state))
            .field(
                "reads",
                &self.reads.iter().map(|k| show_key(k)).collect::<Vec<_>>(),
            )
            .field("handled", &self.handled)
            .field("skipped", &self.skipped)
            .field("error", &self.error)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl<H> HandlerOutcome<H> {
    /// The subscription's state after the run: the given state with every successful event's
    /// writes (as committed with the checkpoint).
    pub fn state(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.state
    }

    /// One value of the final state, decoded from JSON. Panics if it does not decode.
    #[track_caller]
    pub fn state_json<T: DeserializeOwned>(&self, key: &[u8]) -> Option<T> {
        self.state.get(key).map(|bytes| {
            serde_json::from_slice(bytes)
                .unwrap_or_else(|e| panic!("the state at {} does not decode: {e}", show_key(key)))
        })
    }

    /// The keys the events under test read from the state (in the order first read; a key an
    /// event had written itself is not a read).
    pub fn reads(&self) -> &[Vec<u8>] {
        &self.reads
    }

    /// The positions of the events under test that were handled successfully.
    pub fn handled(&self) -> &[u64] {
        &self.handled
    }

    /// The positions of the events under test that the handler's filter left out.
    pub fn skipped(&self) -> &[u64] {
        &self.skipped
    }

    /// The failure that ended the run, and the position of its event.
    pub fn error(&self) -> Option<(u64, &HandlerFailure)> {
        self.error.as_ref().map(|(p, f)| (*p, f))
    }

    /// The handler, as the run left it.
    pub fn handler(&self) -> &H {
        self.handler.as_ref().expect("the handler is kept")
    }

    /// Asserts that every event under test was handled without an error.
    #[track_caller]
    pub fn then_ok(&self) -> &Self {
        if let Some((position, failure)) = &self.error {
            panic!(
                "expected every event to be handled, but the event at position {position} \
                 failed ({:?}): {failure}",
                FailureKind::of(failure)
            );
        }
        self
    }

    /// Asserts that an event under test failed with an error of kind `expected`.
    #[track_caller]
    pub fn then_error(&self, expected: FailureKind) -> &Self {
        match &self.error {
            None => panic!("expected a {expected:?} error, but every event was handled"),
            Some((position, failure)) => {
                let actual = FailureKind::of(failure);
                if actual != expected {
                    panic!(
                        "the event at position {position} failed as {actual:?}, not \
                         {expected:?}: {failure}\n{}",
                        diff(&format!("{expected:?}"), &format!("{actual:?}"))
                    );
                }
            }
        }
        self
    }

    /// Asserts that an event under test failed with an error for which `check` returns `true`.
    #[track_caller]
    pub fn then_error_matching(&self, check: impl FnOnce(&HandlerFailure) -> bool) -> &Self {
        match &self.error {
            None => panic!("expected an error, but every event was handled"),
            Some((position, failure)) => assert!(
                check(failure),
                "the error of the event at position {position} does not match: {failure}"
            ),
        }
        self
    }

    /// Asserts that the final state holds `expected` at `key`, compared as JSON.
    #[track_caller]
    pub fn then_state_json<T: Serialize + ?Sized>(&self, key: &[u8], expected: &T) -> &Self {
        let expected = serde_json::to_value(expected).expect("the expected value encodes");
        let actual = self.state.get(key).map(|bytes| show_value(bytes));
        if actual.as_ref() != Some(&expected) {
            panic!(
                "the state at {} is not as expected\n{}",
                show_key(key),
                diff(&pretty(&Some(expected)), &pretty(&actual))
            );
        }
        self
    }

    /// Asserts that the final state holds exactly `expected` at `key`.
    #[track_caller]
    pub fn then_state(&self, key: &[u8], expected: &[u8]) -> &Self {
        let actual = self.state.get(key).map(Vec::as_slice);
        if actual != Some(expected) {
            panic!(
                "the state at {} is not as expected\n{}",
                show_key(key),
                diff(&format!("{:?}", Some(expected)), &format!("{actual:?}"))
            );
        }
        self
    }

    /// Asserts that the final state has nothing at `key`.
    #[track_caller]
    pub fn then_no_state(&self, key: &[u8]) -> &Self {
        if let Some(bytes) = self.state.get(key) {
            panic!(
                "expected no state at {}\n{}",
                show_key(key),
                diff("None", &pretty(&Some(show_value(bytes))))
            );
        }
        self
    }

    /// Asserts that the final state is exactly `expected`: UTF-8 keys and JSON values.
    #[track_caller]
    pub fn then_whole_state_json(&self, expected: &[(&str, serde_json::Value)]) -> &Self {
        let expected: BTreeMap<String, serde_json::Value> = expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let actual: BTreeMap<String, serde_json::Value> = self
            .state
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), show_value(v)))
            .collect();
        if expected != actual {
            panic!(
                "the state is not as expected\n{}",
                diff(&pretty(&expected), &pretty(&actual))
            );
        }
        self
    }

    /// Asserts that an event under test read `key` from the state.
    #[track_caller]
    pub fn then_read(&self, key: &[u8]) -> &Self {
        if !self.reads.iter().any(|k| k == key) {
            panic!(
                "expected a read of {}, but the handler read {:?}",
                show_key(key),
                self.reads.iter().map(|k| show_key(k)).collect::<Vec<_>>()
            );
        }
        self
    }

    /// Asserts that the handler's filter left out the events under test at these positions
    /// (and no other).
    #[track_caller]
    pub fn then_skipped(&self, positions: &[u64]) -> &Self {
        if self.skipped != positions {
            panic!(
                "other events were skipped\n{}",
                diff(&format!("{positions:?}"), &format!("{:?}", self.skipped))
            );
        }
        self
    }

    /// The handler, as the run left it.
    pub fn into_handler(self) -> H {
        self.handler.expect("the handler is kept")
    }
}

/// A command a process manager sent, as recorded by the kit.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SentCommand<C> {
    /// The instance (correlation key) that sent it.
    pub instance: String,
    /// The step name it was sent as (`"deadline:{name}:{due}"` for a deadline's command).
    pub step: String,
    /// The command with its id (derived from the event and the step), correlation and
    /// causation ids.
    pub envelope: CommandEnvelope<C>,
    /// The answer the kit gave (`Refused` for a step the test [refused](HandlerTest::refuse)).
    pub answer: crate::process::Dispatched,
}

/// A deadline a process manager set, as recorded by the kit.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ScheduledDeadline<C> {
    /// The instance that set it.
    pub instance: String,
    /// Its name.
    pub name: String,
    /// When it is due (to the microsecond).
    pub at: SystemTime,
    /// The command it sends then.
    pub command: C,
}

impl<P: ProcessManager> HandlerOutcome<P> {
    fn decode(value: &serde_json::Value) -> P::Command {
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("a recorded command does not decode: {e}"))
    }

    /// The commands sent while handling the events under test, in order.
    pub fn sent(&self) -> Vec<SentCommand<P::Command>> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Recorded::Sent {
                    instance,
                    step,
                    envelope,
                    answer,
                } => Some(SentCommand {
                    instance: instance.clone(),
                    step: step.clone(),
                    envelope: envelope.clone().map(|c| Self::decode(&c)),
                    answer: answer.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The deadlines set while handling the events under test, in order.
    pub fn scheduled(&self) -> Vec<ScheduledDeadline<P::Command>> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Recorded::Scheduled {
                    instance,
                    name,
                    at,
                    command,
                } => Some(ScheduledDeadline {
                    instance: instance.clone(),
                    name: name.clone(),
                    at: UNIX_EPOCH + Duration::from_micros(*at),
                    command: Self::decode(command),
                }),
                _ => None,
            })
            .collect()
    }

    /// The deadlines cancelled while handling the events under test: (instance, name), in
    /// order. A deadline that fires is cancelled too (removed with its command's send).
    pub fn cancelled(&self) -> Vec<(String, String)> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Recorded::Cancelled { instance, name } => Some((instance.clone(), name.clone())),
                _ => None,
            })
            .collect()
    }

    /// The instances that finished while handling the events under test.
    pub fn finished(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Recorded::Finished { instance } => Some(instance.clone()),
                _ => None,
            })
            .collect()
    }

    /// The state of `instance` after the run, or `None` if it never started or finished.
    #[track_caller]
    pub fn instance_state(&self, instance: &str) -> Option<P::State> {
        self.state.get(&instance_state_key(instance)).map(|bytes| {
            decode_instance::<P>(bytes).unwrap_or_else(|e| {
                panic!("the state of instance {instance:?} does not decode: {e}")
            })
        })
    }

    /// Asserts that exactly these commands were sent, in order, as (step, command).
    #[track_caller]
    pub fn then_sent(&self, expected: &[(&str, P::Command)]) -> &Self
    where
        P::Command: PartialEq,
    {
        let actual: Vec<(String, P::Command)> = self
            .sent()
            .into_iter()
            .map(|s| (s.step, s.envelope.command))
            .collect();
        let expected: Vec<(String, P::Command)> = expected
            .iter()
            .map(|(step, c)| ((*step).to_owned(), c.clone()))
            .collect();
        if actual != expected {
            panic!(
                "other commands were sent\n{}",
                diff(&format!("{expected:#?}"), &format!("{actual:#?}"))
            );
        }
        self
    }

    /// Asserts that exactly these deadlines were set, in order, as (name, due, command).
    #[track_caller]
    pub fn then_scheduled(&self, expected: &[(&str, SystemTime, P::Command)]) -> &Self
    where
        P::Command: PartialEq,
    {
        let actual: Vec<(String, SystemTime, P::Command)> = self
            .scheduled()
            .into_iter()
            .map(|d| (d.name, d.at, d.command))
            .collect();
        let expected: Vec<(String, SystemTime, P::Command)> = expected
            .iter()
            .map(|(name, at, c)| ((*name).to_owned(), *at, c.clone()))
            .collect();
        if actual != expected {
            panic!(
                "other deadlines were set\n{}",
                diff(&format!("{expected:#?}"), &format!("{actual:#?}"))
            );
        }
        self
    }

    /// Asserts that exactly these deadlines were cancelled (by name), in order.
    #[track_caller]
    pub fn then_cancelled(&self, expected: &[&str]) -> &Self {
        let actual: Vec<String> = self.cancelled().into_iter().map(|(_, n)| n).collect();
        if actual != expected {
            panic!(
                "other deadlines were cancelled\n{}",
                diff(&format!("{expected:#?}"), &format!("{actual:#?}"))
            );
        }
        self
    }

    /// Asserts that `instance` finished (its state and deadlines are gone).
    #[track_caller]
    pub fn then_finished(&self, instance: &str) -> &Self {
        let finished = self.finished();
        if !finished.iter().any(|i| i == instance) {
            panic!("expected instance {instance:?} to finish; finished: {finished:?}");
        }
        self
    }

    /// Asserts the state of `instance` after the run (`None`: no such instance, or finished).
    #[track_caller]
    pub fn then_instance_state(&self, instance: &str, expected: Option<&P::State>) -> &Self
    where
        P::State: PartialEq + Debug,
    {
        let actual = self.instance_state(instance);
        if actual.as_ref() != expected {
            panic!(
                "the state of instance {instance:?} is not as expected\n{}",
                diff(&format!("{expected:#?}"), &format!("{actual:#?}"))
            );
        }
        self
    }
}

/// A value as JSON if it is JSON, else its bytes.
fn show_value(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| serde_json::Value::from(bytes.to_vec()))
}

fn show_key(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}

fn pretty<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

struct StateView<'a>(&'a BTreeMap<Vec<u8>, Vec<u8>>);

impl Debug for StateView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (String::from_utf8_lossy(k), show_value(v))),
            )
            .finish()
    }
}

/// A line diff of `expected` and `actual`: `-` lines only expected, `+` lines only actual.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    // Longest common subsequence, by table (the values compared are small).
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::from("--- expected\n+++ actual\n");
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            let _ = writeln!(out, "  {}", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            let _ = writeln!(out, "+ {}", b[j]);
            j += 1;
        } else {
            let _ = writeln!(out, "- {}", a[i]);
            i += 1;
        }
    }
    out
}

/// The store under a [`HandlerTest`]: in memory and read-only, with the test's events and its
/// given state. The handler's own writes go through its context, never here.
struct KitStore {
    name: String,
    events: Vec<RecordedEvent>,
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    head: watch::Sender<u64>,
}

impl KitStore {
    fn new(name: String, events: Vec<RecordedEvent>, state: BTreeMap<Vec<u8>, Vec<u8>>) -> Self {
        let (head, _) = watch::channel(events.len() as u64);
        KitStore {
            name,
            events,
            state,
            head,
        }
    }
}

const READ_ONLY: &str = "writes to the store (the handler test kit's store is read-only)";

#[async_trait]
impl EventStore for KitStore {
    async fn append(
        &self,
        _stream: &str,
        _expected: ExpectedVersion,
        _events: Vec<EventData>,
    ) -> Result<AppendResult, StoreError> {
        Err(StoreError::Unsupported(READ_ONLY))
    }

    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Ok(self
            .events
            .iter()
            .filter(|e| e.stream_id == stream && e.stream_version >= from_version)
            .take(max_count)
            .cloned()
            .collect())
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, StoreError> {
        Ok(self.events.iter().filter(|e| e.stream_id == stream).count() as u64)
    }

    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
        filter: &Filter,
    ) -> Result<ReadBatch, StoreError> {
        let head = self.events.len() as u64;
        let events: Vec<RecordedEvent> = self
            .events
            .iter()
            .filter(|e| e.position >= from_position)
            .filter(|e| filter.matches(&e.category, &e.event_type))
            .take(max_count)
            .cloned()
            .collect();
        let next_position = if events.len() == max_count {
            events.last().map_or(head + 1, |e| e.position + 1)
        } else {
            head.max(from_position.saturating_sub(1)) + 1
        };
        Ok(ReadBatch::new(events, next_position, head))
    }

    fn head(&self) -> u64 {
        self.events.len() as u64
    }

    fn watch_head(&self) -> HeadWatch {
        HeadWatch::new(self.head.subscribe())
    }

    async fn save_checkpoint(&self, _name: &str, _position: u64) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(READ_ONLY))
    }

    async fn load_checkpoint(&self, _name: &str) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    async fn commit_checkpoint(
        &self,
        _name: &str,
        _expected: Option<u64>,
        _position: u64,
        _state: Vec<StateWrite>,
    ) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(READ_ONLY))
    }

    async fn load_state(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok((name == self.name)
            .then(|| self.state.get(key).cloned())
            .flatten())
    }

    async fn scan_state(
        &self,
        name: &str,
        prefix: &[u8],
        from_key: &[u8],
        max_count: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        if name != self.name {
            return Ok(Vec::new());
        }
        Ok(self
            .state
            .range(from_key.to_vec()..)
            .filter(|(k, _)| k.starts_with(prefix))
            .take(max_count)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn save_snapshot(&self, _stream: &str, _snapshot: Snapshot) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(READ_ONLY))
    }

    async fn load_snapshot(&self, _stream: &str) -> Result<Option<Snapshot>, StoreError> {
        Ok(None)
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        Err(StoreError::Unsupported(
            "verify (the handler test kit's store)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::{FailureKind, HandlerTest, FIRST_EVENT_TIME_MICROS};
    use crate::aggregate::CommandEnvelope;
    use crate::process::{Dispatched, ProcessManager, Reacts, Steps};
    use crate::subscription::{
        EventContext, HandleEvent, HandlerError, Refused, SubscriptionName, Unavailable,
    };
    use crate::{async_trait, DomainEvent, EventHandler, ProcessManager};

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
    enum OrderEvent {
        Placed {
            id: String,
            cents: u64,
        },
        Cancelled {
            id: String,
        },
        /// Fails as the handler is told.
        Poison(String),
    }

    #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
    enum OtherEvent {
        Noise,
    }

    /// A projection: the total of placed orders, and each order's amount.
    #[derive(Debug, Default, EventHandler)]
    #[event_handler(name = "totals", events(OrderEvent))]
    struct Totals {
        seen: Vec<u64>,
    }

    #[async_trait]
    impl HandleEvent<OrderEvent> for Totals {
        async fn handle(
            &mut self,
            event: OrderEvent,
            ctx: &mut EventContext<'_>,
        ) -> Result<(), HandlerError> {
            self.seen.push(ctx.event().position);
            let total: u64 = ctx.get_json(b"total").await?.unwrap_or(0);
            match event {
                OrderEvent::Placed { id, cents } => {
                    ctx.put_json(b"total", &(total + cents))?;
                    ctx.put_json(format!("order/{id}").as_bytes(), &cents)?;
                }
                OrderEvent::Cancelled { id } => {
                    let key = format!("order/{id}");
                    let cents: u64 = ctx.get_json(key.as_bytes()).await?.unwrap_or(0);
                    ctx.put_json(b"total", &(total - cents))?;
                    ctx.delete(key.as_bytes());
                }
                OrderEvent::Poison(how) => {
                    // Written, then failed: the write must not survive.
                    ctx.put_json(b"total", &0)?;
                    return Err(match how.as_str() {
                        "refused" => Refused("no".into()).into(),
                        "unavailable" => Unavailable("broker down".into()).into(),
                        "reserved" => {
                            ctx.put(b"\0tidings/evil", Vec::new());
                            return Ok(());
                        }
                        _ => "plain failure".into(),
                    });
                }
            }
            Ok(())
        }
    }

    fn placed(id: &str, cents: u64) -> OrderEvent {
        OrderEvent::Placed {
            id: id.into(),
            cents,
        }
    }

    #[tokio::test]
    async fn state_reads_and_the_overlay_of_earlier_events() {
        let outcome = HandlerTest::new(Totals::default())
            .given([placed("a", 100)])
            .when(placed("b", 50))
            .when(OrderEvent::Cancelled { id: "a".into() })
            .run()
            .await;
        outcome
            .then_ok()
            .then_state_json(b"total", &50)
            .then_no_state(b"order/a")
            .then_read(b"order/a")
            .then_whole_state_json(&[("order/b", json!(50)), ("total", json!(50))]);
        assert_eq!(outcome.handled(), &[2, 3]);
        assert_eq!(outcome.reads(), &[b"total".to_vec(), b"order/a".to_vec()]);
        assert_eq!(outcome.into_handler().seen, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn given_state_is_read_through_the_store() {
        HandlerTest::new(Totals::default())
            .with_state_json(b"total", &1000)
            .with_state(b"unrelated", b"raw".to_vec())
            .when(placed("a", 1))
            .run()
            .await
            .then_state_json(b"total", &1001)
            .then_state(b"unrelated", b"raw");
    }

    #[tokio::test]
    async fn events_the_handler_does_not_take_are_skipped() {
        let outcome = HandlerTest::new(Totals::default())
            .when(OtherEvent::Noise)
            .when(placed("a", 5))
            .run()
            .await;
        outcome
            .then_ok()
            .then_skipped(&[1])
            .then_state_json(b"total", &5);
        assert_eq!(outcome.handler().seen, vec![2]);
    }

    #[tokio::test]
    async fn a_failure_drops_its_writes_and_ends_the_run() {
        let outcome = HandlerTest::new(Totals::default())
            .given([placed("a", 100)])
            .when(OrderEvent::Poison("plain".into()))
            .when(placed("b", 1))
            .run()
            .await;
        outcome
            .then_error(FailureKind::Retryable)
            .then_error_matching(|f| f.to_string().contains("plain failure"))
            .then_state_json(b"total", &100)
            .then_no_state(b"order/b");
        assert_eq!(outcome.error().map(|(p, _)| p), Some(2));
        assert!(outcome.handled().is_empty());
    }

    #[tokio::test]
    async fn failure_kinds_are_the_runners() {
        for (how, kind) in [
            ("refused", FailureKind::Refused),
            ("unavailable", FailureKind::Unavailable),
            ("reserved", FailureKind::Refused),
        ] {
            HandlerTest::new(Totals::default())
                .when(OrderEvent::Poison(how.into()))
                .run()
                .await
                .then_error(kind)
                .then_no_state(b"total");
        }
    }

    #[tokio::test]
    async fn metadata_and_names_reach_the_context() {
        #[derive(Debug, EventHandler)]
        #[event_handler(name = "meta", events(OrderEvent))]
        struct Meta;
        #[async_trait]
        impl HandleEvent<OrderEvent> for Meta {
            async fn handle(
                &mut self,
                _: OrderEvent,
                ctx: &mut EventContext<'_>,
            ) -> Result<(), HandlerError> {
                let e = ctx.event();
                let seen = format!(
                    "{} {} {} v{} {} {:?}",
                    ctx.subscription(),
                    e.position,
                    e.stream_id,
                    e.stream_version,
                    e.category,
                    e.correlation_id
                );
                ctx.put_json(format!("p{}", e.position).as_bytes(), &seen)?;
                Ok(())
            }
        }
        let correlation = uuid::Uuid::from_u128(7);
        HandlerTest::new(Meta)
            .named(SubscriptionName::new("meta-v2").unwrap())
            .given_in("order-1", [placed("a", 1)])
            .when_in("order-1", placed("a", 2))
            .with_metadata(|e| {
                e.correlation_id = Some(correlation);
                e.position = 99; // kept as assigned
            })
            .when(placed("b", 3))
            .run()
            .await
            .then_state_json(b"p1", "meta-v2 1 order-1 v1 order None")
            .then_state_json(
                b"p2",
                &format!("meta-v2 2 order-1 v2 order Some({correlation})"),
            )
            .then_state_json(b"p3", "meta-v2 3 test-1 v1 test None");
    }

    #[tokio::test]
    #[should_panic(expected = "the state at \"total\" is not as expected")]
    async fn a_wrong_state_fails_the_test() {
        HandlerTest::new(Totals::default())
            .when(placed("a", 100))
            .run()
            .await
            .then_state_json(b"total", &99);
    }

    #[tokio::test]
    #[should_panic(expected = "the event at position 1 failed")]
    async fn then_ok_fails_on_an_error() {
        HandlerTest::new(Totals::default())
            .when(OrderEvent::Poison("plain".into()))
            .run()
            .await
            .then_ok();
    }

    #[tokio::test]
    #[should_panic(expected = "failed as Retryable, not Refused")]
    async fn the_wrong_failure_kind_fails_the_test() {
        HandlerTest::new(Totals::default())
            .when(OrderEvent::Poison("plain".into()))
            .run()
            .await
            .then_error(FailureKind::Refused);
    }

    #[tokio::test]
    #[should_panic(expected = "the given event at position 1")]
    async fn a_failing_given_event_fails_the_test() {
        let _ = HandlerTest::new(Totals::default())
            .given([OrderEvent::Poison("plain".into())])
            .run()
            .await;
    }

    #[test]
    fn the_diff_marks_expected_and_actual_lines() {
        let d = super::diff("a\nb\nc", "a\nx\nc");
        assert_eq!(d, "--- expected\n+++ actual\n  a\n+ x\n- b\n  c\n");
    }

    // --- A process manager ---------------------------------------------------------------

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
    enum TransferEvent {
        Requested { id: String, cents: u64 },
        Debited { id: String },
        Ignored,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Cmd {
        Debit(String, u64),
        Credit(String, u64),
        Remind(String),
        Decline(String),
    }

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Stage {
        cents: u64,
        debited: bool,
    }

    /// Sends through the network in production; never called under the kit.
    #[derive(Debug, ProcessManager)]
    #[process_manager(name = "transfers", events(TransferEvent))]
    struct Transfers;

    #[async_trait]
    impl ProcessManager for Transfers {
        type State = Stage;
        type Command = Cmd;
        async fn send(&mut self, _: CommandEnvelope<Cmd>) -> Result<Dispatched, HandlerError> {
            panic!("the kit records commands instead of sending them")
        }
        fn refused(&self, _: &mut Stage, step: &str, reason: &str, steps: &mut Steps<Cmd>) {
            if step == "debit" {
                steps.send("decline", Cmd::Decline(reason.into()));
                steps.cancel("remind");
                steps.finish();
            }
        }
    }

    impl Reacts<TransferEvent> for Transfers {
        fn correlate(event: &TransferEvent) -> Option<String> {
            match event {
                TransferEvent::Requested { id, .. } | TransferEvent::Debited { id } => {
                    Some(id.clone())
                }
                TransferEvent::Ignored => None,
            }
        }
        fn react(&self, stage: &mut Stage, event: TransferEvent, steps: &mut Steps<Cmd>) {
            match event {
                TransferEvent::Requested { cents, .. } => {
                    stage.cents = cents;
                    steps.send("debit", Cmd::Debit("ada".into(), cents));
                    let at = steps.event_time() + Duration::from_secs(60);
                    steps.schedule("remind", at, Cmd::Remind(steps.instance().to_owned()));
                }
                TransferEvent::Debited { .. } => {
                    stage.debited = true;
                    steps.send("credit", Cmd::Credit("bob".into(), stage.cents));
                    steps.cancel("remind");
                    steps.finish();
                }
                TransferEvent::Ignored => {}
            }
        }
    }

    fn requested() -> TransferEvent {
        TransferEvent::Requested {
            id: "t1".into(),
            cents: 60,
        }
    }

    #[tokio::test]
    async fn a_process_manager_sends_schedules_and_keeps_its_state() {
        let outcome = HandlerTest::new(Transfers)
            .when(requested())
            .when(TransferEvent::Ignored)
            .run()
            .await;
        let first = SystemTime::UNIX_EPOCH + Duration::from_micros(FIRST_EVENT_TIME_MICROS);
        outcome
            .then_ok()
            .then_sent(&[("debit", Cmd::Debit("ada".into(), 60))])
            .then_scheduled(&[(
                "remind",
                first + Duration::from_secs(60),
                Cmd::Remind("t1".into()),
            )])
            .then_cancelled(&[])
            .then_instance_state(
                "t1",
                Some(&Stage {
                    cents: 60,
                    debited: false,
                }),
            );
        let sent = outcome.sent();
        assert_eq!(sent[0].instance, "t1");
        assert_eq!(sent[0].answer, Dispatched::Accepted);
        // The id the real runner would send: derived from the event and the step.
        let event_id = uuid::Uuid::from_u128(1);
        assert_eq!(sent[0].envelope.causation_id, Some(event_id));
        assert_ne!(sent[0].envelope.command_id, event_id);
    }

    #[tokio::test]
    async fn given_events_build_the_instance_and_their_steps_are_not_reported() {
        HandlerTest::new(Transfers)
            .given([requested()])
            .when(TransferEvent::Debited { id: "t1".into() })
            .run()
            .await
            .then_ok()
            .then_sent(&[("credit", Cmd::Credit("bob".into(), 60))])
            .then_scheduled(&[])
            .then_cancelled(&["remind"])
            .then_finished("t1")
            .then_instance_state("t1", None)
            .then_whole_state_json(&[]);
    }

    #[tokio::test]
    async fn a_refused_step_goes_to_refused() {
        let outcome = HandlerTest::new(Transfers)
            .refuse("debit", "too poor")
            .when(requested())
            .run()
            .await;
        outcome
            .then_ok()
            .then_sent(&[
                ("debit", Cmd::Debit("ada".into(), 60)),
                ("decline", Cmd::Decline("too poor".into())),
            ])
            .then_cancelled(&["remind"])
            .then_finished("t1");
        assert_eq!(
            outcome.sent()[0].answer,
            Dispatched::Refused("too poor".into())
        );
    }

    #[tokio::test]
    #[should_panic(expected = "other commands were sent")]
    async fn a_wrong_command_fails_the_test() {
        HandlerTest::new(Transfers)
            .when(requested())
            .run()
            .await
            .then_sent(&[("debit", Cmd::Debit("ada".into(), 61))]);
    }
}
