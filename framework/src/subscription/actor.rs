//! The subscription actor and the registry that starts and stops subscriptions by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, oneshot, watch};

use super::control;
use super::distributed::{DistributedHandle, Partition};
use super::failure::{
    parked_in_store, preview_reset_in_store, request_replay_in_store, reset_in_store,
    skip_in_store, ControlError, ParkedEvent, ReplayOutcome, ResetPreview, ResetTo,
};
use super::handler::EventHandler;
use super::name::{SubscriptionName, SubscriptionNameError};
use super::runner::{Command, Runner};
use super::status::{StatusCell, SubscriptionState, SubscriptionStatus};
use super::wait::{position_of, wait_all, Among, WaitError};
use super::SubscriptionConfig;
use crate::aggregate::CommandOutcome;
use crate::store::{EventStore, IntoEventStore, Lease, StoreError};
use futures_util::future::BoxFuture;

/// Asks a subscription to stop after the event it is handling, saving its checkpoint.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Asks a subscription for its status.
#[derive(Debug, Message)]
#[rtype(result = "SubscriptionStatus")]
pub struct GetStatus;

/// The actor that runs one subscription. Made by [`Subscriptions::start`].
pub struct SubscriptionActor<H: EventHandler> {
    runner: Option<Box<Runner<H>>>,
    stop: watch::Sender<bool>,
    status: StatusCell,
}

impl<H: EventHandler> std::fmt::Debug for SubscriptionActor<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionActor")
            .field("status", &self.status.get())
            .finish_non_exhaustive()
    }
}

impl<H: EventHandler> Actor for SubscriptionActor<H> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(runner) = self.runner.take() {
            // The loop owns the handler; when it ends (stopped or failed) the actor stops.
            runner
                .run()
                .into_actor(self)
                .map(|(), _actor, ctx| ctx.stop())
                .spawn(ctx);
        }
    }
}

impl<H: EventHandler> Drop for SubscriptionActor<H> {
    fn drop(&mut self) {
        // If the actor went away from outside (its arbiter or System shut down), the loop was
        // dropped mid-way: say so, so that nobody waits for it forever.
        self.status.update(|s| {
            if !matches!(
                s.state,
                SubscriptionState::Stopped | SubscriptionState::Failed(_)
            ) {
                s.state = SubscriptionState::Failed(
                    "the subscription's actor was dropped before its loop finished".into(),
                );
            }
        });
    }
}

impl<H: EventHandler> Handler<Stop> for SubscriptionActor<H> {
    type Result = ();

    fn handle(&mut self, _: Stop, _: &mut Self::Context) {
        self.stop.send_replace(true);
    }
}

impl<H: EventHandler> Handler<GetStatus> for SubscriptionActor<H> {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.status.get())
    }
}

/// A running subscription, as seen from outside: its status, and a way to stop it.
#[derive(Clone, Debug)]
pub struct SubscriptionHandle {
    name: SubscriptionName,
    stop: watch::Sender<bool>,
    status: StatusCell,
    commands: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Replay { stream, .. } => write!(f, "Replay({stream:?})"),
            Command::Skip { position, .. } => write!(f, "Skip({position})"),
            Command::Flush { .. } => write!(f, "Flush"),
        }
    }
}

impl SubscriptionHandle {
    /// The subscription's name (the one it was started under).
    pub fn name(&self) -> &SubscriptionName {
        &self.name
    }

    /// Its status now.
    pub fn status(&self) -> SubscriptionStatus {
        self.status.get()
    }

    /// Whether it has stopped or failed.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.status.get().state,
            SubscriptionState::Stopped | SubscriptionState::Failed(_)
        )
    }

    /// Stops it after the event in hand, and waits until its checkpoint is saved.
    pub async fn stop(&self) -> SubscriptionStatus {
        self.stop.send_replace(true);
        self.finished().await
    }

    /// Sends an operation to the running loop and waits for its answer;
    /// [`ControlError::NotRunning`] if the loop is gone (stopped or failed), in which case
    /// nothing was done.
    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ControlError>>) -> Command,
    ) -> Result<T, ControlError> {
        let not_running = || ControlError::NotRunning(self.name.to_string());
        if self.is_finished() {
            return Err(not_running());
        }
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).map_err(|_| not_running())?;
        answer.await.map_err(|_| not_running())?
    }

    /// Handles the parked events of `stream` again, in order (after a fix), through the running
    /// subscription. [`ControlError::NotRunning`] if it is not running (use
    /// [`Subscriptions::replay_parked`], which works on a stopped one too);
    /// [`ControlError::Standby`] if another process runs it.
    pub async fn replay_parked(&self, stream: &str) -> Result<ReplayOutcome, ControlError> {
        let stream = stream.to_owned();
        self.send(|reply| Command::Replay { stream, reply }).await
    }

    /// Drops the parked event at `position`, through the running subscription; whether one was
    /// parked there. [`ControlError::NotRunning`] if it is not running (use
    /// [`Subscriptions::skip_parked`]); [`ControlError::Standby`] if another process runs it.
    pub async fn skip_parked(&self, position: u64) -> Result<bool, ControlError> {
        self.send(|reply| Command::Skip { position, reply }).await
    }

    /// Commits what the running subscription has pending (so that the store shows it).
    /// [`ControlError::NotRunning`] if it is not running (what it handled is committed then);
    /// [`ControlError::Standby`] if another process runs it (which commits on its own).
    pub async fn flush(&self) -> Result<(), ControlError> {
        self.send(|reply| Command::Flush { reply }).await
    }

    /// Asks it to stop after the event in hand, without waiting (see [`stop`](Self::stop)).
    pub(crate) fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until it has stopped or failed.
    pub async fn finished(&self) -> SubscriptionStatus {
        let mut updates = self.status.watch();
        loop {
            let status = updates.borrow_and_update().clone();
            if matches!(
                status.state,
                SubscriptionState::Stopped | SubscriptionState::Failed(_)
            ) {
                return status;
            }
            if updates.changed().await.is_err() {
                return self.status.get();
            }
        }
    }

    /// A receiver woken by the status's updates (the progress of a page at a time; see `StatusCell`).
    pub(crate) fn watch(&self) -> watch::Receiver<SubscriptionStatus> {
        self.status.watch()
    }

    /// Waits until it has handled every event up to `position` (handled, filtered out, or
    /// parked) **and committed** its checkpoint there (asking it to commit at once rather than
    /// at its next `commit_interval`), at most `timeout`; returns its status then. State it
    /// keeps through the context is then in the store.
    ///
    /// A subscription that stops or fails before getting there is an error at once
    /// ([`WaitError::Stopped`], [`WaitError::Failed`]), and the deadline is
    /// [`WaitError::Timeout`] with its status. Woken by its progress: no polling. One that stands
    /// by here while another process runs it is never reached this way: use
    /// [`Subscriptions::wait_until_handled`], which reads its stored checkpoint.
    pub async fn wait_until_handled(
        &self,
        position: u64,
        timeout: Duration,
    ) -> Result<SubscriptionStatus, WaitError> {
        wait_all(std::slice::from_ref(self), None, position, timeout).await?;
        Ok(self.status())
    }
}

/// Starts, stops and reports on the subscriptions of one store, by name (see
/// [`SubscriptionName`]: a handler type's `NAME` unless started under another one).
///
/// Must be used inside an actix `System` (each subscription is an actor on the current arbiter).
#[derive(Clone)]
pub struct Subscriptions {
    store: Arc<dyn EventStore>,
    running: Arc<Mutex<HashMap<SubscriptionName, SubscriptionHandle>>>,
    /// One lock per name: held by a running loop for its whole life, and by an operation on a
    /// stopped subscription's stored checkpoint, so that the two never interleave.
    guards: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// The distributed subscriptions started here, by name (their partitions are in `running`).
    distributed: Arc<Mutex<HashMap<SubscriptionName, DistributedHandle>>>,
}

impl std::fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<SubscriptionName> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        f.debug_struct("Subscriptions")
            .field("started", &names)
            .finish_non_exhaustive()
    }
}

/// Why a subscription could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A subscription of that name is already running in this registry: stop it first.
    #[error("subscription {0:?} is already running")]
    AlreadyRunning(SubscriptionName),
    /// The handler cannot run with several partitions (a process manager: one instance's
    /// events come from several streams, and partitions are chosen by stream).
    #[error("subscription {0:?} cannot run partitioned; start it with one partition")]
    NotPartitionable(SubscriptionName),
    /// The handler's [`EventHandler::NAME`] is not a valid subscription name (a hand-written
    /// impl; the derive checks it when it compiles): fix it, or start it under a valid name
    /// with [`SubscriptionConfig::name`].
    #[error("the handler's name is not a valid subscription name")]
    InvalidName(#[from] SubscriptionNameError),
    /// The name has the shape of a partition of a distributed subscription (`NAME.pNNofM`):
    /// started alone, it would share that partition's checkpoint, state and lease.
    #[error(
        "{0:?} is the name of a partition of a distributed subscription (NAME.pNNofM); start \
         that with Subscriptions::start_distributed, or give this subscription another name"
    )]
    PartitionName(SubscriptionName),
    /// A distributed subscription needs 1 to `max` partitions
    /// ([`MAX_PARTITIONS`](super::MAX_PARTITIONS)): start it with a number in that range.
    #[error("distributed subscription {name:?} cannot have {requested} partitions (1 to {max})")]
    Partitions {
        /// The subscription.
        name: SubscriptionName,
        /// The number of partitions asked for.
        requested: u32,
        /// The most it can have.
        max: u32,
    },
}

impl Subscriptions {
    /// A registry over `store` (a store, an `Arc` of one or an `Arc<dyn EventStore>`: see
    /// [`IntoEventStore`]).
    pub fn new(store: impl IntoEventStore) -> Self {
        Subscriptions {
            store: store.into_event_store(),
            running: Arc::default(),
            guards: Arc::default(),
            distributed: Arc::default(),
        }
    }

    /// The lock of subscription `name`.
    fn guard(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.guards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Starts `handler` with the default settings.
    pub fn start<H: EventHandler>(&self, handler: H) -> Result<SubscriptionHandle, StartError> {
        self.start_with(handler, SubscriptionConfig::default())
    }

    /// Starts `handler` with `config`: it resumes from its checkpoint (or its `StartFrom` the
    /// first time), catches up, then follows the log live.
    ///
    /// It runs under [`SubscriptionConfig::name`] when set, else under `H::NAME`: one handler
    /// type can run as several subscriptions at once, each under its own name, with its own
    /// checkpoint, state, status, parked events and lease.
    ///
    /// ```no_run
    /// # use tidings::subscription::{EventHandler, StartError, SubscriptionConfig, SubscriptionName, Subscriptions};
    /// # fn example<H: EventHandler>(subscriptions: &Subscriptions, totals: H, rebuild: H) -> Result<(), Box<dyn std::error::Error>> {
    /// subscriptions.start(totals)?; // as "totals", its NAME
    /// let v2 = SubscriptionConfig::default().name(SubscriptionName::new("totals-v2")?);
    /// subscriptions.start_with(rebuild, v2)?; // from the beginning, beside it
    /// # Ok(()) }
    /// ```
    pub fn start_with<H: EventHandler>(
        &self,
        handler: H,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionHandle, StartError> {
        self.launch(vec![handler], config, None)
    }

    /// Starts `handler` with `partitions` copies of it working concurrently, the events spread
    /// over them by stream: the events of one stream always go to the same copy, in order.
    ///
    /// The checkpoint never passes an event that is not handled, and state kept through
    /// [`EventContext`](super::EventContext) stays exactly-once. Give each stream its own state
    /// keys to keep the partitions parallel: when events of different partitions touch the same
    /// key in one page, the rest of that page is handled one event at a time (correct, slower).
    /// Useful when handling waits on I/O (a payment gateway, another service); the partitions
    /// share the subscription's actor and thread.
    pub fn start_partitioned<H: EventHandler + Clone>(
        &self,
        handler: H,
        partitions: usize,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionHandle, StartError> {
        if partitions > 1 && !H::partitionable() {
            return Err(StartError::NotPartitionable(Self::name_of::<H>(&config)?));
        }
        let handlers = vec![handler; partitions.max(1)];
        self.launch(handlers, config, None)
    }

    /// The store the subscriptions run on.
    pub(super) fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The distributed subscriptions started here.
    pub(super) fn distributed(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SubscriptionName, DistributedHandle>> {
        self.distributed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a subscription of that name runs here.
    pub(super) fn is_running(&self, name: &str) -> bool {
        self.running(name).is_some()
    }

    /// The name a subscription of `H` started with `config` runs under.
    pub(super) fn name_of<H: EventHandler>(
        config: &SubscriptionConfig,
    ) -> Result<SubscriptionName, StartError> {
        match &config.name {
            Some(name) => Ok(name.clone()),
            None => Ok(SubscriptionName::new(H::NAME)?),
        }
    }

    /// Starts a subscription's loop with `handlers` (its in-process partitions); with
    /// `partition`, as that partition of a distributed subscription, handling only its streams.
    pub(super) fn launch<H: EventHandler>(
        &self,
        handlers: Vec<H>,
        config: SubscriptionConfig,
        partition: Option<Partition>,
    ) -> Result<SubscriptionHandle, StartError> {
        let name = Self::name_of::<H>(&config)?;
        if partition.is_none() && super::distributed::is_partition_name(name.as_str()) {
            return Err(StartError::PartitionName(name));
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.get(&name).is_some_and(|h| !h.is_finished()) {
            return Err(StartError::AlreadyRunning(name));
        }
        let (stop, stop_rx) = watch::channel(false);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let status = StatusCell::new(&name);
        status.update(|s| {
            s.partitions = handlers.len() as u64;
            s.partition_of = partition;
        });
        let runner = Runner {
            name: name.clone(),
            handlers,
            store: self.store.clone(),
            config,
            status: status.clone(),
            stop: stop_rx,
            commands: commands_rx,
            commands_open: true,
            parked_streams: Default::default(),
            guard: self.guard(&name),
            cache: Default::default(),
            serial_pages: 0,
            holder: crate::store::LeaseHolder::this_process(),
            lease: None,
            lost: None,
            partition,
            in_flight: None,
        };
        SubscriptionActor {
            runner: Some(Box::new(runner)),
            stop: stop.clone(),
            status: status.clone(),
        }
        .start();
        let handle = SubscriptionHandle {
            name: name.clone(),
            stop,
            status,
            commands,
        };
        running.insert(name, handle.clone());
        Ok(handle)
    }

    /// The running (or last run) subscription of that name.
    pub fn get(&self, name: &str) -> Option<SubscriptionHandle> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Stops the subscription of that name and waits for its checkpoint to be saved.
    pub async fn stop(&self, name: &str) -> Option<SubscriptionStatus> {
        let handle = self.get(name)?;
        Some(handle.stop().await)
    }

    /// The status of every subscription started here, by name.
    pub fn statuses(&self) -> Vec<SubscriptionStatus> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = running.values().map(SubscriptionHandle::status).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Takes the lock of a STOPPED subscription, for an operation on its stored checkpoint;
    /// `None` if it is running (or was started meanwhile: go through its loop then).
    ///
    /// A running loop holds the lock for its whole life, so this never waits for it: it tries
    /// the lock and, while someone else holds it (a loop that is starting or ending, or another
    /// operation), looks again shortly.
    async fn lock_stopped(&self, name: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let lock = self.guard(name);
        loop {
            if self.running(name).is_some() {
                return None;
            }
            if let Ok(guard) = lock.clone().try_lock_owned() {
                // Started between the check and the lock? Then go through its loop.
                return self.running(name).is_none().then_some(guard);
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// The running subscription of that name, if it is running.
    fn running(&self, name: &str) -> Option<SubscriptionHandle> {
        self.get(name).filter(|h| !h.is_finished())
    }

    /// The parked events of subscription `name`, in position order: through the running
    /// subscription (after committing what it has pending), or from the store when it is stopped.
    pub async fn parked(&self, name: &str) -> Result<Vec<ParkedEvent>, ControlError> {
        if let Some(handle) = self.running(name) {
            match handle.flush().await {
                // A standby here: the holder commits on its own; a loop that just ended
                // committed.
                Err(ControlError::Standby(_) | ControlError::NotRunning(_)) => {}
                flushed => flushed?,
            }
        }
        Ok(parked_in_store(&*self.store, name).await?)
    }

    /// Handles the parked events of `stream` again, in order, after a fix. Those handled leave
    /// the parked list; if one fails again it stays parked with the rest behind it. When the
    /// subscription is stopped the replay is recorded (atomically, fenced by its checkpoint) and
    /// runs when it starts (`deferred` in the outcome).
    ///
    /// When another process runs the subscription (it holds its lease, on PostgreSQL), the
    /// request goes to that process through the store and this waits for its answer (see
    /// [`ControlError::Queued`] when it does not come in time).
    pub async fn replay_parked(
        &self,
        name: &str,
        stream: &str,
    ) -> Result<ReplayOutcome, ControlError> {
        let operation = control::Operation::Replay {
            stream: stream.to_owned(),
        };
        let (store, owned) = (self.store.clone(), (name.to_owned(), stream.to_owned()));
        self.on_parked(
            name,
            |handle| {
                let stream = owned.1.clone();
                Box::pin(async move { handle.replay_parked(&stream).await })
            },
            operation,
            |reply| match reply {
                control::Reply::Replayed {
                    handled,
                    still_parked,
                } => Some(ReplayOutcome {
                    handled,
                    still_parked,
                    deferred: false,
                }),
                _ => None,
            },
            |lease| {
                let (store, (name, stream)) = (store.clone(), owned.clone());
                Box::pin(async move {
                    let waiting =
                        request_replay_in_store(&*store, &name, lease.as_ref(), &stream).await?;
                    Ok(ReplayOutcome {
                        handled: 0,
                        still_parked: waiting,
                        deferred: waiting > 0,
                    })
                })
            },
        )
        .await
    }

    /// Drops the parked event at `position` (it is never handled). If later events of its stream
    /// are parked they stay parked until replayed. Returns false if none is parked there. When
    /// another process runs the subscription, the request goes to it as for
    /// [`replay_parked`](Self::replay_parked).
    pub async fn skip_parked(&self, name: &str, position: u64) -> Result<bool, ControlError> {
        let (store, owned) = (self.store.clone(), name.to_owned());
        self.on_parked(
            name,
            |handle| Box::pin(async move { handle.skip_parked(position).await }),
            control::Operation::Skip { position },
            |reply| match reply {
                control::Reply::Skipped(skipped) => Some(skipped),
                _ => None,
            },
            |lease| {
                let (store, name) = (store.clone(), owned.clone());
                Box::pin(
                    async move { skip_in_store(&*store, &name, lease.as_ref(), position).await },
                )
            },
        )
        .await
    }

    /// Carries out an operation on the parked events of subscription `name` where it must run:
    /// through its loop when it runs here (`local`); through the store when another process
    /// holds its lease (`operation`, whose reply `from_reply` reads); on the stored state when
    /// no process runs it (`stopped`, under its lease for the moment, when the store has
    /// leases). While it changes hands (a standby here, nobody holding the lease) it looks again
    /// shortly, for at most [`control::REPLY_TIMEOUT`].
    async fn on_parked<T>(
        &self,
        name: &str,
        local: impl Fn(SubscriptionHandle) -> BoxFuture<'static, Result<T, ControlError>>,
        operation: control::Operation,
        from_reply: impl Fn(control::Reply) -> Option<T>,
        stopped: impl Fn(Option<Lease>) -> BoxFuture<'static, Result<T, StoreError>>,
    ) -> Result<T, ControlError> {
        let deadline = tokio::time::Instant::now() + control::REPLY_TIMEOUT;
        loop {
            if let Some(handle) = self.running(name) {
                match local(handle).await {
                    Err(ControlError::Standby(_) | ControlError::NotRunning(_)) => {}
                    result => return result,
                }
            }
            if let Some(holder) = control::holder_elsewhere(&*self.store, name).await? {
                let reply = control::send(&*self.store, name, &holder, operation.clone()).await?;
                return match reply {
                    control::Reply::Failed(reason) => Err(ControlError::Failed(reason)),
                    other => from_reply(other.clone())
                        .ok_or_else(|| ControlError::Failed(format!("unexpected reply {other:?}"))),
                };
            }
            if let Some(_stopped) = self.lock_stopped(name).await {
                let lease = match control::lease_for_operation(&*self.store, name).await {
                    Ok(lease) => lease,
                    // A process took it meanwhile: send it the operation.
                    Err(ControlError::RunningElsewhere { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let done = stopped(lease.clone()).await;
                control::release(&*self.store, lease).await;
                return Ok(done?);
            }
            // Running here as a standby while the lease changes hands: look again shortly.
            if tokio::time::Instant::now() >= deadline {
                return Err(handover_too_long(name));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Moves the checkpoint of the STOPPED subscription `name` (fenced commit), so that it
    /// handles again (or skips) events when it starts. With `clear_state`, the handler's state
    /// (not its parked events) is deleted in the same commit: without it an exactly-once
    /// projection replays onto its existing state. Returns the new checkpoint.
    pub async fn reset(
        &self,
        name: &str,
        to: ResetTo,
        clear_state: bool,
    ) -> Result<u64, ControlError> {
        let Some(_stopped) = self.lock_stopped(name).await else {
            return Err(ControlError::Running(name.to_owned()));
        };
        let lease = control::lease_for_operation(&*self.store, name).await?;
        let reset = reset_in_store(&*self.store, name, lease.as_ref(), to, clear_state).await;
        control::release(&*self.store, lease).await;
        Ok(reset?)
    }

    /// What [`reset`](Self::reset) with the same arguments would do, without doing it (a dry
    /// run): the checkpoint before and after, the head, and how many entries of the handler's
    /// state it would delete. Refused as the reset would be: [`ControlError::Running`] while it
    /// runs here, [`ControlError::RunningElsewhere`] while another process holds its lease.
    /// `Ok(None)` when the store has no checkpoint of that name.
    ///
    /// Takes no lock and no lease, so the reset itself may find things moved on (a subscription
    /// started meanwhile is refused then; events appended meanwhile raise the head).
    pub async fn reset_preview(
        &self,
        name: &str,
        to: ResetTo,
        clear_state: bool,
    ) -> Result<Option<ResetPreview>, ControlError> {
        if self.running(name).is_some() {
            return Err(ControlError::Running(name.to_owned()));
        }
        if let Some(info) = control::holder_elsewhere(&*self.store, name).await? {
            return Err(ControlError::RunningElsewhere {
                name: name.to_owned(),
                holder: info.holder.to_string(),
            });
        }
        Ok(preview_reset_in_store(&*self.store, name, to, clear_state).await?)
    }

    /// The subscriptions a wait among `among` is for: every one started here and not stopped
    /// on purpose, or the named ones (each must have been started here).
    fn among(&self, among: &Among) -> Result<Vec<SubscriptionHandle>, WaitError> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match among {
            Among::All => Ok(running
                .values()
                .filter(|h| h.status().state != SubscriptionState::Stopped)
                .cloned()
                .collect()),
            Among::Named(names) => names
                .iter()
                .map(|name| {
                    running
                        .get(name.as_str())
                        .cloned()
                        .ok_or_else(|| WaitError::NotStarted(name.clone()))
                })
                .collect(),
        }
    }

    /// Waits until the subscriptions `among` have handled every event up to `position` and
    /// committed their checkpoint there (asked to commit at once), at most `timeout`
    /// (Commanded's strong consistency, for a position): a projection's state in the store
    /// shows the events when it returns.
    ///
    /// Returns as soon as the last of them gets there (woken by their progress, not polling).
    /// A subscription that stops or fails first is an error at once; at the deadline the error
    /// names each one still behind, with its status. A subscription that stands by here while
    /// another process runs it is done when its stored checkpoint reaches `position` (the holder
    /// commits it within its `commit_interval`).
    pub async fn wait_until_handled(
        &self,
        position: u64,
        among: Among,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let handles = self.among(&among)?;
        wait_all(&handles, Some(&*self.store), position, timeout).await
    }

    /// Read-your-writes after a command: waits until the subscriptions `among` have handled the
    /// events `outcome` recorded (also when it was answered from history), at most `timeout`.
    /// A command that recorded no events returns at once.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use tidings::aggregate::{Aggregate, AggregateRegistry, CommandEnvelope};
    /// # use tidings::subscription::{Among, Subscriptions};
    /// # async fn example<A: Aggregate>(
    /// #     registry: AggregateRegistry<A>,
    /// #     subscriptions: Subscriptions,
    /// #     command: A::Command,
    /// # ) -> Result<(), Box<dyn std::error::Error>> {
    /// let outcome = registry.execute("o-1", CommandEnvelope::new(command)).await?;
    /// subscriptions
    ///     .wait_for_command(&outcome, Among::named(["order-view"]), Duration::from_secs(5))
    ///     .await?;
    /// // The order view now shows what the command did.
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_for_command(
        &self,
        outcome: &CommandOutcome,
        among: Among,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        self.wait_until_handled(position_of(outcome), among, timeout)
            .await
    }

    /// Waits until every subscription started here (and not stopped on purpose) is idle at the
    /// head: each has handled every event up to the head, and the head did not move meanwhile
    /// (a reaction's commands append events that other subscriptions then handle). Returns that
    /// head. For tests, and to shut down with nothing in flight. A subscription that fails is
    /// an error at once; at the deadline the error names each one still behind.
    pub async fn settle(&self, timeout: Duration) -> Result<u64, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let handles = self.among(&Among::All)?;
            let head = handles
                .iter()
                .map(|h| h.status().head)
                .fold(self.store.head(), u64::max);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            wait_all(&handles, Some(&*self.store), head, left).await?;
            if self.store.head() <= head {
                return Ok(head);
            }
            if tokio::time::Instant::now() >= deadline {
                // Every one got to `head`, but reactions keep the head moving.
                let moved = self.store.head();
                return Err(WaitError::Timeout {
                    position: moved,
                    waited: timeout,
                    behind: handles
                        .iter()
                        .map(SubscriptionHandle::status)
                        .filter(|s| s.checkpoint < moved)
                        .collect(),
                });
            }
        }
    }

    /// Stops every subscription and waits for each: the distributed ones first (each gives its
    /// member lease up, then stops its partitions), then the others.
    pub async fn stop_all(&self) {
        let distributed: Vec<DistributedHandle> = self.distributed().values().cloned().collect();
        for d in distributed {
            d.stop().await;
        }
        let handles: Vec<_> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for h in handles {
            h.stop().await;
        }
    }
}

/// The error of an operation that found the subscription changing hands for too long (a
/// standby here, and no process holding the lease).
fn handover_too_long(name: &str) -> ControlError {
    ControlError::Failed(format!(
        "subscription {name:?} is changing hands (a standby runs here, no process holds it); \
         try again"
    ))
}
