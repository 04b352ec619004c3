//! The messages between the registry handle, the registry actor and aggregate actors.

use actix::{Addr, Message};

use super::actor::AggregateActor;
use super::{Aggregate, AggregateError, CommandEnvelope, CommandOutcome};

/// Decide a command (to an aggregate actor).
pub(crate) struct Execute<A: Aggregate> {
    pub envelope: CommandEnvelope<A::Command>,
    /// Record a refusal or an acceptance with no events, so that the id gets the same answer
    /// again (false for a fresh id nobody can send again).
    pub remember: bool,
}

impl<A: Aggregate> Message for Execute<A> {
    type Result = Result<CommandOutcome, AggregateError<A::Error>>;
}

/// Run a read-only function on the state (to an aggregate actor).
pub(crate) struct Query<A: Aggregate, R> {
    #[allow(clippy::type_complexity)]
    pub f: Box<dyn FnOnce(&A, u64) -> R + Send>,
}

impl<A: Aggregate, R: Send + 'static> Message for Query<A, R> {
    type Result = Result<R, AggregateError<A::Error>>;
}

/// Stop now (to an aggregate actor): passivation, eviction or shutdown.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Passivate;

/// The address of the instance for an id, starting it if needed (to the registry).
pub(crate) struct Lookup<A: Aggregate> {
    pub id: String,
    pub _marker: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> Message for Lookup<A> {
    type Result = Addr<AggregateActor<A>>;
}

/// An instance has been idle for the idle timeout (to the registry).
pub(crate) struct Idle<A: Aggregate> {
    pub id: String,
    pub generation: u64,
    pub addr: Addr<AggregateActor<A>>,
}

impl<A: Aggregate> Message for Idle<A> {
    type Result = ();
}

/// Stop the instance of an id now, if it is running (to the registry).
#[derive(Message)]
#[rtype(result = "bool")]
pub(crate) struct PassivateId {
    pub id: String,
}

/// Stop every instance and the registry (to the registry).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;
