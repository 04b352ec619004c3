//! Process managers (sagas): long-running business processes that react to the events of
//! several aggregates, keep one durable state per instance, and send commands.
//!
//! A process manager is a type with `#[derive(ProcessManager)]`, an impl of [`ProcessManager`]
//! (its state, its commands, and how to send them), and one [`Reacts<E>`] impl per event type it
//! lists. The derive makes it an [`EventHandler`], so it runs
//! as a durable subscription: started, stopped, retried, parked, leased across processes like
//! any other. For each event:
//!
//! 1. [`Reacts::correlate`] names the instance the event belongs to (a `transfer_id`), or `None`
//!    to ignore it;
//! 2. the instance's state is loaded (a fresh `State::default()` for a new one), and
//!    [`Reacts::react`] changes it and asks for [`Steps`]: commands to send, deadlines to set or
//!    cancel, or the end of the instance;
//! 3. each command is sent through [`ProcessManager::send`] with an id derived from the event
//!    and the step's name, so a redelivered event sends the same ids and every aggregate answers
//!    with its first answer (accepted or refused, see docs/aggregates.md); a refusal is handed to
//!    [`ProcessManager::refused`], which may ask for more steps (a compensation);
//! 4. the instance's new state, its deadlines, or its removal are written through the
//!    subscription's context, and so committed **with the checkpoint**: exactly once.
//!
//! A deadline ("if nothing happened by T, send X") is part of the instance's state, so it
//! survives restarts. [`DeadlineTimer`] appends a `$tidings.DeadlineDue` record when one is
//! due; the process manager's subscription handles it like any event, sending the command once
//! (a deadline cancelled or already fired in between is ignored).
//!
//! The guide, with a complete money transfer, is `docs/process-managers.md`.

mod timer;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::CommandEnvelope;
use crate::event::DomainEvent;
use crate::store::RecordedEvent;
use crate::subscription::{EventContext, EventHandler, HandlerError, HandlerFailure};

pub use self::timer::{DeadlineTimer, DeadlineTimerHandle};

/// The type of the framework record that says a deadline of a process manager is due.
pub const DEADLINE_DUE_TYPE: &str = "$tidings.DeadlineDue";

/// How many rounds of [`ProcessManager::refused`] one event may cause (a refusal whose
/// compensation is refused, and so on) before the event fails.
pub const MAX_REFUSAL_DEPTH: usize = 8;

/// The longest correlation key (instance id), in bytes: it is part of state keys, which are
/// bounded by [`MAX_STATE_KEY_LEN`](crate::store::MAX_STATE_KEY_LEN). A longer one, or one with a
/// NUL byte (the separator in deadline keys), fails the event.
pub const MAX_INSTANCE_LEN: usize = 512;

/// The longest deadline name, in bytes. A longer one fails the event.
pub const MAX_DEADLINE_NAME_LEN: usize = 256;

/// The answer of the aggregate a process manager sent a command to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dispatched {
    /// Accepted (now, or answered from history).
    Accepted,
    /// Refused by the aggregate's rules (now, or remembered from before); the text says why.
    Refused(String),
}

impl Dispatched {
    /// The answer for the result of [`AggregateRegistry::execute`](crate::aggregate::AggregateRegistry::execute):
    /// `Accepted`, `Refused` for a refusal (also a remembered one), and an error, which fails
    /// the event (it is retried or parked by the subscription's policy), for everything else.
    pub fn from_result<T, E: std::error::Error + Send + Sync + 'static>(
        result: Result<T, crate::aggregate::AggregateError<E>>,
    ) -> Result<Self, HandlerError> {
        use crate::aggregate::AggregateError;
        match result {
            Ok(_) => Ok(Dispatched::Accepted),
            Err(AggregateError::Rejected(e)) => Ok(Dispatched::Refused(e.to_string())),
            Err(AggregateError::RejectedBefore { message, .. }) => Ok(Dispatched::Refused(message)),
            Err(other) => Err(Box::new(other)),
        }
    }
}

/// A process manager: its per-instance state, its commands, and how it sends them.
///
/// Implement it by hand; `#[derive(ProcessManager)]` adds the routing of events (see the module
/// docs and `docs/process-managers.md`).
#[crate::async_trait]
pub trait ProcessManager: EventHandler {
    /// The durable state of one instance. A new instance starts from `Default`.
    type State: Default + Serialize + DeserializeOwned + Send + Sync;
    /// The commands it sends (usually an enum over the aggregates it drives). Serializable,
    /// since a deadline keeps its command in the instance's state.
    type Command: Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync;

    /// Sends one command to the aggregate that takes it and returns its answer. The envelope's
    /// id is derived from the event and the step: send it as it is (with `execute`, never
    /// `execute_fresh`), so that a redelivery gets the first answer.
    ///
    /// An error fails the event: the subscription retries it and parks it by its policy.
    async fn send(
        &mut self,
        command: CommandEnvelope<Self::Command>,
    ) -> Result<Dispatched, HandlerError>;

    /// A command sent by the step `step` was refused (`reason`). Changes the state and asks for
    /// more steps (a compensation, an end). Default: nothing, the instance goes on.
    fn refused(
        &self,
        state: &mut Self::State,
        step: &str,
        reason: &str,
        steps: &mut Steps<Self::Command>,
    ) {
        let _ = (state, step, reason, steps);
    }
}

/// How a process manager reacts to events of type `E`.
pub trait Reacts<E: DomainEvent>: ProcessManager {
    /// The instance `event` belongs to (its correlation key, such as a transfer id), or `None`
    /// when the process has nothing to do with it.
    fn correlate(event: &E) -> Option<String>;

    /// Decides: changes the instance's state and asks for steps. Must depend only on the state
    /// and the event (a redelivered event is reacted to again, from the same committed state).
    fn react(&self, state: &mut Self::State, event: E, steps: &mut Steps<Self::Command>);
}

/// What a reaction asks for: commands to send, deadlines to set or cancel, the end.
#[derive(Debug)]
pub struct Steps<C> {
    instance: String,
    at: SystemTime,
    sends: Vec<(String, C)>,
    /// Deadlines set and cancelled, in the order asked for.
    deadlines: Vec<DeadlineOp<C>>,
    finished: bool,
}

/// A change to an instance's deadlines.
#[derive(Debug)]
enum DeadlineOp<C> {
    Schedule(String, u64, C),
    Cancel(String),
}

impl<C> Steps<C> {
    fn new(instance: &str, at: SystemTime) -> Self {
        Steps {
            instance: instance.to_owned(),
            at,
            sends: Vec::new(),
            deadlines: Vec::new(),
            finished: false,
        }
    }

    /// The instance (correlation key) reacting.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// When the event being reacted to was recorded: the clock to set deadlines by (a
    /// redelivered event has the same time, so a reaction stays deterministic; the wall clock
    /// would not).
    pub fn event_time(&self) -> SystemTime {
        self.at
    }

    /// Sends `command` as the step named `step`. The command id derives from the event's id,
    /// the process manager's name and `step` ([`command_id`]): give each command of one
    /// reaction its own step name. A deadline's command is sent as step
    /// `"deadline:{name}:{due in microseconds}"` (the name [`ProcessManager::refused`] sees).
    pub fn send(&mut self, step: &str, command: C) {
        self.sends.push((step.to_owned(), command));
    }

    /// Sends `command` at `at` unless the deadline `name` is cancelled (or set again) first.
    /// Durable: it fires after a restart too, once.
    pub fn schedule(&mut self, name: &str, at: SystemTime, command: C) {
        let micros = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_micros() as u64;
        self.deadlines
            .push(DeadlineOp::Schedule(name.to_owned(), micros, command));
    }

    /// Cancels the deadline `name` of this instance, if set.
    pub fn cancel(&mut self, name: &str) {
        self.deadlines.push(DeadlineOp::Cancel(name.to_owned()));
    }

    /// Ends the instance: its state and deadlines are deleted (after this reaction's commands
    /// are sent). A later event that correlates to it starts a new instance from `Default`.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Whether [`finish`](Self::finish) was asked for.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

/// One instance as stored: its state and its deadlines.
#[derive(Serialize, Deserialize)]
#[serde(bound = "S: Serialize + DeserializeOwned, C: Serialize + DeserializeOwned")]
struct Instance<S, C> {
    state: S,
    /// Deadline name → (due, in microseconds since the epoch; command).
    #[serde(default)]
    deadlines: BTreeMap<String, (u64, C)>,
}

/// The payload of a [`DEADLINE_DUE_TYPE`] record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadlineDue {
    pub process: String,
    pub instance: String,
    pub name: String,
    pub at: u64,
}

fn instance_key(instance: &str) -> Vec<u8> {
    let mut key = b"i/".to_vec();
    key.extend_from_slice(instance.as_bytes());
    key
}

/// The deadline index: `d/{due:020}/{instance}\0{name}`, in due order.
pub(crate) const DEADLINE_PREFIX: &[u8] = b"d/";

fn deadline_key(at: u64, instance: &str, name: &str) -> Vec<u8> {
    format!("d/{at:020}/{instance}\0{name}").into_bytes()
}

/// The id of the command that process manager `process` sends as step `step` of its reaction
/// to `event`: a UUIDv5 of the event's id and `"{process}/{step}"`, so that two process managers
/// reacting to one event with the same step name send different commands.
pub fn command_id(process: &str, event: &RecordedEvent, step: &str) -> Uuid {
    envelope(process, event, step, ()).command_id
}

/// The envelope of `command`, sent by process manager `process` as step `step` of its
/// reaction to `event`: [`CommandEnvelope::caused_by`] with the step named `"{process}/{step}"`.
fn envelope<C>(process: &str, event: &RecordedEvent, step: &str, command: C) -> CommandEnvelope<C> {
    CommandEnvelope::caused_by(event, &format!("{process}/{step}"), command)
}

/// Handles one event of type `E` for process manager `P`: what `#[derive(ProcessManager)]`
/// calls. Not meant to be called directly.
#[doc(hidden)]
pub async fn handle_event<P: Reacts<E>, E: DomainEvent>(
    manager: &mut P,
    event: E,
    ctx: &mut EventContext<'_>,
) -> Result<(), HandlerFailure> {
    let Some(instance) = P::correlate(&event) else {
        return Ok(());
    };
    if instance.is_empty() || instance.len() > MAX_INSTANCE_LEN || instance.contains('\0') {
        return Err(HandlerFailure::Handler(
            format!(
                "process {:?}: a correlation key must be 1 to {MAX_INSTANCE_LEN} bytes without \
                 NUL, got {} bytes",
                ctx.subscription(),
                instance.len()
            )
            .into(),
        ));
    }
    let mut stored = load::<P>(ctx, &instance).await?;
    let mut steps = Steps::new(&instance, ctx.event().timestamp());
    // A panic here is a handler panic: the subscription restarts from its checkpoint.
    manager.react(&mut stored.state, event, &mut steps);
    let source = ctx.event().clone();
    run(manager, ctx, &source, &instance, stored, steps).await
}

/// Handles a [`DEADLINE_DUE_TYPE`] record for process manager `P`: sends the deadline's command
/// if the instance still has that deadline, due at that time. Not meant to be called directly.
#[doc(hidden)]
pub async fn handle_deadline<P: ProcessManager>(
    manager: &mut P,
    ctx: &mut EventContext<'_>,
) -> Result<(), HandlerFailure> {
    let record = ctx.event().clone();
    let due: DeadlineDue = serde_json::from_slice(&record.payload).map_err(|e| {
        HandlerFailure::Handler(format!("a {DEADLINE_DUE_TYPE} record does not decode: {e}").into())
    })?;
    // Due records name the subscription that set the deadline: the process manager may run
    // under several names, each with its own instances and deadlines.
    if due.process != ctx.subscription() {
        return Ok(());
    }
    let stored = load::<P>(ctx, &due.instance).await?;
    let command = match stored.deadlines.get(&due.name) {
        Some((at, command)) if *at == due.at => command.clone(),
        // Cancelled, set again, fired already, or the instance ended: nothing to do.
        _ => return Ok(()),
    };
    let mut steps = Steps::new(&due.instance, record.timestamp());
    // Fired: removed in the commit that sends its command.
    steps.cancel(&due.name);
    // The step name makes the command id: one per deadline and due time, whichever record of
    // it fires first.
    steps.send(&format!("deadline:{}:{}", due.name, due.at), command);
    run(manager, ctx, &record, &due.instance, stored, steps).await
}

async fn load<P: ProcessManager>(
    ctx: &EventContext<'_>,
    instance: &str,
) -> Result<Instance<P::State, P::Command>, HandlerFailure> {
    let stored: Option<Instance<P::State, P::Command>> = ctx
        .get_json(&instance_key(instance))
        .await
        .map_err(HandlerFailure::Handler)?;
    Ok(stored.unwrap_or_else(|| Instance {
        state: P::State::default(),
        deadlines: BTreeMap::new(),
    }))
}

/// Sends the steps' commands (and the steps that refusals ask for), then writes the instance.
async fn run<P: ProcessManager>(
    manager: &mut P,
    ctx: &mut EventContext<'_>,
    source: &RecordedEvent,
    instance: &str,
    mut stored: Instance<P::State, P::Command>,
    mut steps: Steps<P::Command>,
) -> Result<(), HandlerFailure> {
    let mut finished = false;
    for depth in 0.. {
        if depth > MAX_REFUSAL_DEPTH {
            return Err(HandlerFailure::Handler(
                format!(
                    "process {:?}, instance {instance:?}: more than {MAX_REFUSAL_DEPTH} rounds \
                     of refusals for one event",
                    ctx.subscription()
                )
                .into(),
            ));
        }
        for op in steps.deadlines.drain(..) {
            match op {
                DeadlineOp::Schedule(name, at, command) => {
                    if name.len() > MAX_DEADLINE_NAME_LEN {
                        return Err(HandlerFailure::Handler(
                            format!(
                                "process {:?}: a deadline name must be at most \
                                 {MAX_DEADLINE_NAME_LEN} bytes, got {}",
                                ctx.subscription(),
                                name.len()
                            )
                            .into(),
                        ));
                    }
                    if let Some(recording) = ctx.recording.as_mut() {
                        recording.record(Recorded::Scheduled {
                            instance: instance.to_owned(),
                            name: name.clone(),
                            at,
                            command: to_json(&command)?,
                        });
                    }
                    if let Some((old, _)) = stored.deadlines.insert(name.clone(), (at, command)) {
                        ctx.delete(&deadline_key(old, instance, &name));
                    }
                    ctx.put(&deadline_key(at, instance, &name), Vec::new());
                }
                DeadlineOp::Cancel(name) => {
                    if let Some(recording) = ctx.recording.as_mut() {
                        recording.record(Recorded::Cancelled {
                            instance: instance.to_owned(),
                            name: name.clone(),
                        });
                    }
                    if let Some((old, _)) = stored.deadlines.remove(&name) {
                        ctx.delete(&deadline_key(old, instance, &name));
                    }
                }
            }
        }
        finished |= steps.finished;
        let mut next = Steps::new(instance, source.timestamp());
        for (step, command) in steps.sends.drain(..) {
            let command = envelope(ctx.subscription(), source, &step, command);
            let answer = match ctx.recording.as_mut() {
                // Under the test kit: recorded, and answered as the test says.
                Some(recording) => recording.send(instance, &step, command)?,
                None => manager
                    .send(command)
                    .await
                    .map_err(HandlerFailure::Handler)?,
            };
            match answer {
                Dispatched::Accepted => {}
                Dispatched::Refused(reason) => {
                    manager.refused(&mut stored.state, &step, &reason, &mut next);
                }
            }
        }
        if next.sends.is_empty() && next.deadlines.is_empty() && !next.finished {
            break;
        }
        steps = next;
    }
    if finished {
        if let Some(recording) = ctx.recording.as_mut() {
            recording.record(Recorded::Finished {
                instance: instance.to_owned(),
            });
        }
        for (name, (at, _)) in std::mem::take(&mut stored.deadlines) {
            ctx.delete(&deadline_key(at, instance, &name));
        }
        ctx.delete(&instance_key(instance));
    } else {
        ctx.put_json(&instance_key(instance), &stored)
            .map_err(HandlerFailure::Handler)?;
    }
    Ok(())
}

/// What the handler test kit ([`crate::subscription::testing`]) records of a process manager's
/// steps instead of sending its commands. Commands are kept as JSON (they are serializable, and
/// need not be `'static`); the kit decodes them back.
#[derive(Debug, Default)]
pub(crate) struct Recording {
    /// The answers to give, by step name: a refusal's reason (any other step is accepted).
    pub refusals: BTreeMap<String, String>,
    /// What the reactions asked for, in order.
    pub steps: Vec<Recorded>,
}

/// One recorded step.
#[derive(Debug, Clone)]
pub(crate) enum Recorded {
    Sent {
        instance: String,
        step: String,
        envelope: CommandEnvelope<serde_json::Value>,
        answer: Dispatched,
    },
    Scheduled {
        instance: String,
        name: String,
        at: u64,
        command: serde_json::Value,
    },
    Cancelled {
        instance: String,
        name: String,
    },
    Finished {
        instance: String,
    },
}

impl Recording {
    fn record(&mut self, step: Recorded) {
        self.steps.push(step);
    }

    fn send<C: Serialize>(
        &mut self,
        instance: &str,
        step: &str,
        command: CommandEnvelope<C>,
    ) -> Result<Dispatched, HandlerFailure> {
        let answer = match self.refusals.get(step) {
            Some(reason) => Dispatched::Refused(reason.clone()),
            None => Dispatched::Accepted,
        };
        let json = to_json(&command.command)?;
        let envelope = command.map(|_| json);
        self.record(Recorded::Sent {
            instance: instance.to_owned(),
            step: step.to_owned(),
            envelope,
            answer: answer.clone(),
        });
        Ok(answer)
    }
}

fn to_json<C: Serialize>(command: &C) -> Result<serde_json::Value, HandlerFailure> {
    serde_json::to_value(command).map_err(|e| HandlerFailure::Handler(Box::new(e)))
}

/// The key of an instance's state (for the test kit).
pub(crate) fn instance_state_key(instance: &str) -> Vec<u8> {
    instance_key(instance)
}

/// Decodes an instance's stored state (for the test kit).
pub(crate) fn decode_instance<P: ProcessManager>(
    bytes: &[u8],
) -> Result<P::State, serde_json::Error> {
    serde_json::from_slice::<Instance<P::State, P::Command>>(bytes).map(|i| i.state)
}

/// The state of instance `instance` of process manager `P` as last committed, or `None` when
/// there is none (never started, or finished). For tests and operators. For a process manager
/// run under a name of its own ([`SubscriptionConfig::name`](crate::subscription::SubscriptionConfig::name)),
/// see [`instance_state_named`].
pub async fn instance_state<P: ProcessManager>(
    store: &dyn crate::store::EventStore,
    instance: &str,
) -> Result<Option<P::State>, crate::store::StoreError> {
    instance_state_named::<P>(store, P::NAME, instance).await
}

/// The state of instance `instance` of process manager `P` run as subscription `name`, as last
/// committed, or `None` when there is none.
pub async fn instance_state_named<P: ProcessManager>(
    store: &dyn crate::store::EventStore,
    name: &str,
    instance: &str,
) -> Result<Option<P::State>, crate::store::StoreError> {
    let Some(bytes) = store.load_state(name, &instance_key(instance)).await? else {
        return Ok(None);
    };
    let stored: Instance<P::State, P::Command> =
        serde_json::from_slice(&bytes).map_err(|e| crate::store::StoreError::DamagedMetadata {
            what: format!("the state of process {name:?}, instance {instance:?}"),
            reason: e.to_string(),
        })?;
    Ok(Some(stored.state))
}

/// The guide's examples are compiled (and the transfer run) as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/process-managers.md")]
pub struct ProcessManagersGuide;
