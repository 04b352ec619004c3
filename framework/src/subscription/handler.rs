//! The handler side of a subscription: `HandleEvent<E>`, `EventHandler` and the context.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::event::{DomainEvent, EventDecodeError};
use crate::store::{EventStore, Filter, RecordedEvent, StateWrite, StoreError};

/// What a handler returns when it cannot handle an event. Any error type converts into it.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where a subscription starts the first time it runs (when it has no checkpoint yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartFrom {
    /// From the first event in the store.
    #[default]
    Beginning,
    /// From the first event appended after the subscription starts.
    End,
    /// From this global position (inclusive).
    Position(u64),
}

/// Handles events of the domain event type `E`.
///
/// A handler type implements `HandleEvent<E>` for each event type it lists in
/// `#[derive(EventHandler)]`; the derive routes each recorded event to the right impl.
#[async_trait]
pub trait HandleEvent<E: DomainEvent>: Send {
    /// Handles one event. Returning an error is never a silent skip: by the subscription's
    /// `FailurePolicy` it either stops the subscription at this event (its checkpoint stays
    /// before it), or retries it with backoff and then parks it with the rest of its stream.
    async fn handle(&mut self, event: E, ctx: &mut EventContext<'_>) -> Result<(), HandlerError>;
}

/// A handler error that says the event is not at fault: something the handler needs (a message
/// broker, another service) is unreachable for now.
///
/// The event is tried again after a growing pause until it succeeds or the subscription is
/// stopped, whatever the [`FailurePolicy`](super::FailurePolicy): it is never parked, skipped or
/// failed for this, and later events wait behind it (as for a store that is unavailable).
///
/// ```
/// use tidings::subscription::{HandlerError, Unavailable};
/// let e: HandlerError = Unavailable("the broker did not answer".into()).into();
/// assert!(e.is::<Unavailable>());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("unavailable for now: {0}")]
pub struct Unavailable(pub HandlerError);

/// A handler error that says trying again cannot help (for example a message that the broker
/// refuses as too large): the event fails at once, without the policy's retries, and is parked
/// with its stream under `RetryThenPark` (or stops the subscription under `Stop`).
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub HandlerError);

/// Why a handler could not handle an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerFailure {
    /// The payload does not decode as the type the handler lists: written by another schema.
    #[error(transparent)]
    Decode(#[from] EventDecodeError),
    /// The handler returned an error.
    #[error("handler failed: {0}")]
    Handler(HandlerError),
    /// Reading or writing the subscription's state failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The handler wrote a key under the framework's reserved prefix (`\0tidings/`).
    #[error("handler wrote the reserved state key {0:?}: keys starting with \\0tidings/ belong to the framework")]
    ReservedKey(String),
}

/// A type that handles a subscription's events: what `#[derive(EventHandler)]` implements.
///
/// After a panic the subscription runs again from its checkpoint with the same handler value, as
/// the panic left it: keep state that must be exact in the store (through [`EventContext`]), not
/// in the handler's fields.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::subscription::{EventContext, HandleEvent, HandlerError};
/// use tidings::{async_trait, DomainEvent, EventHandler};
///
/// #[derive(Clone, Debug, Serialize, Deserialize, DomainEvent)]
/// enum OrderEvent {
///     OrderPlaced { cents: u64 },
///     OrderCancelled,
/// }
///
/// /// Counts orders: an exactly-once projection, its state kept in the store.
/// #[derive(EventHandler)]
/// #[event_handler(name = "order-counter", events(OrderEvent))]
/// struct OrderCounter;
///
/// #[async_trait]
/// impl HandleEvent<OrderEvent> for OrderCounter {
///     async fn handle(&mut self, event: OrderEvent, ctx: &mut EventContext<'_>) -> Result<(), HandlerError> {
///         let placed: u64 = ctx.get_json(b"placed").await?.unwrap_or(0);
///         if let OrderEvent::OrderPlaced { .. } = event {
///             ctx.put_json(b"placed", &(placed + 1))?;
///         }
///         Ok(())
///     }
/// }
/// # use tidings::subscription::EventHandler as _;
/// # assert_eq!(OrderCounter::NAME, "order-counter");
/// ```
#[async_trait]
pub trait EventHandler: Send + 'static {
    /// The subscription's default name: stable across releases, since the checkpoint is stored
    /// under it. A valid [`SubscriptionName`](super::SubscriptionName) (the derive checks it).
    /// To run the handler under another name, or under several at once, set
    /// [`SubscriptionConfig::name`](super::SubscriptionConfig::name) when starting it; the
    /// handler sees the name it runs under in [`EventContext::subscription`].
    const NAME: &'static str;

    /// Every event type name the handler handles.
    fn event_types() -> Vec<&'static str>;

    /// Where the subscription starts the first time. Default: the beginning.
    fn start_from() -> StartFrom {
        StartFrom::Beginning
    }

    /// Whether [`Subscriptions::start_partitioned`](super::Subscriptions::start_partitioned)
    /// may run it with several partitions. `false` for a process manager, whose instances take
    /// events from several streams while partitions are chosen by stream. Default `true`.
    fn partitionable() -> bool {
        true
    }

    /// The store filter: only these events are read, and no other payload is copied.
    fn filter() -> Filter {
        Filter::all().event_types(Self::event_types())
    }

    /// Decodes `event` and hands it to the matching `HandleEvent` impl.
    async fn dispatch(
        &mut self,
        event: &RecordedEvent,
        ctx: &mut EventContext<'_>,
    ) -> Result<(), HandlerFailure>;
}

/// Uncommitted state writes: the key's new value, or `None` for a delete.
pub(crate) type StateBatch = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What a handler can see and do while it handles one event.
///
/// State written through the context is the subscription's own (namespaced by its name) and is
/// committed atomically with the checkpoint: a projection that keeps its state here sees every
/// event's effect exactly once, also across crashes. Reads see the writes of earlier events that
/// are not committed yet.
pub struct EventContext<'a> {
    pub(crate) name: &'a str,
    pub(crate) event: &'a RecordedEvent,
    pub(crate) store: &'a dyn EventStore,
    /// Writes of earlier events, not yet committed.
    pub(crate) pending: &'a StateBatch,
    /// In a partitioned subscription: writes of earlier events of this partition in the current
    /// round (newer than `pending`).
    pub(crate) round: Option<&'a StateBatch>,
    /// Values the subscription committed lately (the store has them too): read before the
    /// store.
    pub(crate) committed: &'a StateBatch,
    /// Writes of this event; merged into `pending` only if the handler succeeds.
    pub(crate) writes: StateBatch,
    /// In a partitioned subscription: the keys this event read (to detect keys shared by
    /// partitions).
    pub(crate) reads: Option<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// The first write to a key under [`RESERVED_PREFIX`](super::RESERVED_PREFIX), refused.
    pub(crate) reserved: Option<Vec<u8>>,
    /// The generation of the subscription's lease held by this process, if any.
    pub(crate) fencing_token: Option<u64>,
    /// Under the test kit: a process manager's steps are recorded here instead of sent.
    pub(crate) recording: Option<crate::process::Recording>,
}

impl std::fmt::Debug for EventContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventContext")
            .field("subscription", &self.name)
            .field("position", &self.event.position)
            .field("stream_id", &self.event.stream_id)
            .field("event_type", &self.event.event_type)
            .field("fencing_token", &self.fencing_token)
            .field("writes", &self.writes.len())
            .finish_non_exhaustive()
    }
}

impl<'a> EventContext<'a> {
    /// The event being handled, with its metadata (position, stream, ids, timestamp).
    pub fn event(&self) -> &'a RecordedEvent {
        self.event
    }

    /// The name of the subscription the handler runs as (its `NAME`, or the name it was
    /// started under).
    pub fn subscription(&self) -> &'a str {
        self.name
    }

    /// The fencing token of the process that handles the event: the generation of the
    /// subscription's lease it holds, on a store with leases (PostgreSQL); `None` otherwise.
    ///
    /// It goes up with each process that takes the subscription over. A handler whose effects
    /// leave the store (a payment gateway, a mail server) can pass it along, so that the other
    /// side refuses requests with a lower token than one it has seen: the requests of a process
    /// that lost the lease without noticing yet (paused, cut off from the store). Tokens are
    /// comparable only within one subscription, and they fence nothing by themselves: writes
    /// through [`store`](Self::store) are not fenced (state written through the context is).
    pub fn fencing_token(&self) -> Option<u64> {
        self.fencing_token
    }

    /// The store, for reads (for example a stream's history).
    pub fn store(&self) -> &'a dyn EventStore {
        self.store
    }

    /// One value of the subscription's state, as of the events handled so far.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if let Some(reads) = &self.reads {
            reads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(key.to_vec());
        }
        let earlier = self.round.and_then(|r| r.get(key));
        let known = earlier
            .or_else(|| self.pending.get(key))
            .or_else(|| self.committed.get(key));
        if let Some(v) = known {
            return Ok(v.clone());
        }
        self.store.load_state(self.name, key).await
    }

    /// Sets a value of the subscription's state (committed with the checkpoint).
    ///
    /// Keys that start with [`RESERVED_PREFIX`](super::RESERVED_PREFIX) belong to the framework:
    /// writing one fails the event (a [`HandlerFailure::ReservedKey`]) instead of corrupting the
    /// subscription's parked events or status.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.write(key, Some(value));
    }

    /// Deletes a value of the subscription's state (committed with the checkpoint). Reserved
    /// keys are refused as for [`put`](Self::put).
    pub fn delete(&mut self, key: &[u8]) {
        self.write(key, None);
    }

    fn write(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        if key.starts_with(super::RESERVED_PREFIX) {
            self.reserved.get_or_insert_with(|| key.to_vec());
            return;
        }
        self.writes.insert(key.to_vec(), value);
    }

    /// [`get`](Self::get) and decode from JSON.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, HandlerError> {
        match self.get(key).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Encode as JSON and [`put`](Self::put).
    pub fn put_json<T: Serialize + ?Sized>(
        &mut self,
        key: &[u8],
        value: &T,
    ) -> Result<(), HandlerError> {
        self.put(key, serde_json::to_vec(value)?);
        Ok(())
    }
}

/// Moves a finished event's writes into the pending batch.
pub(crate) fn merge(pending: &mut StateBatch, writes: StateBatch) {
    pending.extend(writes);
}

/// Turns a pending batch into store writes.
pub(crate) fn drain(pending: &mut StateBatch) -> Vec<StateWrite> {
    std::mem::take(pending)
        .into_iter()
        .map(|(key, value)| StateWrite { key, value })
        .collect()
}
