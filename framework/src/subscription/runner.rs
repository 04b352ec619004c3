//! The subscription loop: catch up from the checkpoint, follow the durable head, commit.
//!
//! There is no separate "live" channel: the loop always reads the log by position, up to the
//! durable head, and when it reaches the head it waits for the head to move. So the switch from
//! catching up to live cannot skip or repeat an event however appends race it (the failure mode
//! of push-based designs, commanded/eventstore#327).

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::failure::{
    encode_parked, parked_in_store, parked_key, parked_stream_key, parked_streams_in_store,
    replay_key, replay_requests_in_store, status_write, ControlError, FailurePolicy, ParkedEvent,
    ReplayOutcome,
};
use super::handler::{drain, merge, EventContext, EventHandler, HandlerFailure, StateBatch};
use super::status::{StatusCell, SubscriptionState};
use super::{StartFrom, SubscriptionConfig};
use crate::panic::panic_message;
use crate::store::{EventStore, Filter, RecordedEvent, StoreError};

/// An operation on parked events, applied by the running loop (so that it is fenced and ordered
/// with the loop's own commits).
pub(crate) enum Command {
    /// Handle a parked stream's events again, in order.
    Replay {
        stream: String,
        reply: oneshot::Sender<Result<ReplayOutcome, ControlError>>,
    },
    /// Drop one parked event.
    Skip {
        position: u64,
        reply: oneshot::Sender<Result<bool, ControlError>>,
    },
    /// Commit what is pending now.
    Flush {
        reply: oneshot::Sender<Result<(), ControlError>>,
    },
}

/// The result of handling one event, retries included.
enum Attempt {
    Handled(StateBatch),
    Failed(HandlerFailure),
    Panicked(String),
    /// A stop was requested during a backoff pause.
    Stopped,
}

/// Why one run of the loop ended without a stop request.
enum Fault {
    /// The handler panicked at `position`: restart from the checkpoint.
    Panicked { position: u64, message: String },
    /// Something the subscription cannot get past.
    Fatal(String),
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Self {
        Fault::Fatal(format!("store error: {e}"))
    }
}

pub(crate) struct Runner<H: EventHandler> {
    pub handler: H,
    pub store: Arc<dyn EventStore>,
    pub config: SubscriptionConfig,
    pub status: StatusCell,
    pub stop: watch::Receiver<bool>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub commands_open: bool,
    /// Streams with parked events (loaded from the store at each run).
    pub parked_streams: BTreeSet<String>,
}

impl<H: EventHandler> Runner<H> {
    /// Runs until stopped or failed; restarts after handler panics.
    pub async fn run(mut self) {
        let span = info_span!("subscription", name = H::NAME);
        async move {
            loop {
                match self.run_once().await {
                    Ok(()) => {
                        self.status.update(|s| s.state = SubscriptionState::Stopped);
                        info!("subscription stopped");
                        return;
                    }
                    Err(Fault::Panicked { position, message }) => {
                        let restarts = {
                            let mut n = 0;
                            self.status.update(|s| {
                                s.restarts += 1;
                                n = s.restarts;
                            });
                            n
                        };
                        error!(position, restarts, panic = %message, "handler panicked; restarting from the checkpoint");
                        if restarts > self.config.max_restarts {
                            let reason = format!(
                                "handler panicked at position {position} ({message}); gave up after {} restarts",
                                self.config.max_restarts
                            );
                            let state = SubscriptionState::Failed(reason);
                            self.record_final(state.clone()).await;
                            self.status.update(|s| s.state = state);
                            return;
                        }
                        let backoff = self.config.restart_backoff * restarts.min(10) as u32;
                        if self.sleep_or_stop(backoff).await {
                            self.status.update(|s| s.state = SubscriptionState::Stopped);
                            return;
                        }
                    }
                    Err(Fault::Fatal(reason)) => {
                        error!(reason = %reason, "subscription failed");
                        self.status.update(|s| s.state = SubscriptionState::Failed(reason));
                        return;
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Writes the status record at this instance's last committed checkpoint (fenced by it, so
    /// that a zombie instance cannot overwrite the status of a newer one), for a run that ended
    /// without a commit of its own. Best effort: the status in memory is the authority.
    async fn record_final(&self, state: SubscriptionState) {
        let current = self.status.get().checkpoint;
        let mut status = self.status.get();
        status.state = state;
        status.checkpoint = current;
        let record = status_write(&status);
        if let Err(e) = self
            .store
            .commit_checkpoint(H::NAME, Some(current), current, vec![record])
            .await
        {
            warn!(error = %e, "could not record the final status");
        }
    }

    /// Sleeps, or returns true early if a stop is requested.
    async fn sleep_or_stop(&mut self, duration: Duration) -> bool {
        if *self.stop.borrow() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(duration) => false,
            _ = self.stop.changed() => true,
        }
    }

    fn stop_requested(&self) -> bool {
        *self.stop.borrow()
    }

    /// One run from the stored checkpoint. `Ok` means stopped on request.
    async fn run_once(&mut self) -> Result<(), Fault> {
        let name = H::NAME;
        let stored = self.store.load_checkpoint(name).await?;
        let mut checkpoint = match stored {
            Some(p) => p,
            None => match H::start_from() {
                StartFrom::Beginning => 0,
                StartFrom::End => self.store.head(),
                StartFrom::Position(p) => p.saturating_sub(1),
            },
        };
        let mut committed = Committed {
            expected: stored,
            position: checkpoint,
            at: Instant::now(),
        };
        // Parked streams and events are durable: what is parked is bounded by what failed.
        self.parked_streams = parked_streams_in_store(&*self.store, name).await?;
        let parked = parked_in_store(&*self.store, name).await?.len() as u64;
        let parked_streams = self.parked_streams.len() as u64;
        let head = self.store.head();
        self.status.update(|s| {
            s.checkpoint = checkpoint;
            s.handled_up_to = checkpoint;
            s.head = head;
            s.parked = parked;
            s.parked_streams = parked_streams;
            s.state = SubscriptionState::CatchingUp;
        });
        if stored.is_none() {
            // Record where a new subscription starts, so that a restart before the first event
            // does not recompute `End` and skip what was appended meanwhile.
            let mut nothing = StateBatch::new();
            self.commit(&mut committed, checkpoint, &mut nothing)
                .await?;
        }
        // Replays requested while the subscription was stopped.
        for stream in replay_requests_in_store(&*self.store, name).await? {
            let (reply, _) = oneshot::channel();
            let mut nothing = StateBatch::new();
            self.apply(
                Command::Replay { stream, reply },
                &mut committed,
                checkpoint,
                &mut nothing,
            )
            .await?;
        }
        info!(checkpoint, "subscription started");
        let filter = H::filter();
        let mut heads = self.store.watch_head();
        let mut pending = StateBatch::new();
        let mut uncommitted = 0u64;

        loop {
            if self.stop_requested() {
                // The status cell says "stopped" only once this commit is done (whoever waits
                // for the stop relies on the checkpoint being saved); the record says it now.
                let state = Some(SubscriptionState::Stopped);
                self.commit_forced(&mut committed, checkpoint, &mut pending, state)
                    .await?;
                return Ok(());
            }
            let page = self
                .store
                .read_all(checkpoint + 1, self.config.batch_size, &filter)
                .await?;
            for event in &page.events {
                if self.stop_requested() {
                    break;
                }
                while let Ok(command) = self.commands.try_recv() {
                    self.apply(command, &mut committed, checkpoint, &mut pending)
                        .await?;
                }
                let position = event.position;
                if self.parked_streams.contains(&event.stream_id) {
                    // An earlier event of this stream is parked: this one waits behind it, in
                    // order, recorded as parked so that the checkpoint can move past it. (After
                    // a reset it may be parked already: keep its record and reason.)
                    let key = parked_key(position);
                    if !pending.contains_key(&key)
                        && self.store.load_state(name, &key).await?.is_none()
                    {
                        park(
                            &mut pending,
                            event,
                            "an earlier event of its stream is parked",
                        );
                        self.status.update(|s| s.parked += 1);
                    }
                    debug!(position, stream = %event.stream_id, "parked behind its stream");
                    checkpoint = position;
                    uncommitted += 1;
                    self.status.update(|s| s.handled_up_to = position);
                } else {
                    match self.attempt(event, &pending).await {
                        Attempt::Handled(writes) => {
                            merge(&mut pending, writes);
                            checkpoint = position;
                            uncommitted += 1;
                            self.status.update(|s| {
                                s.handled_up_to = position;
                                s.events_handled += 1;
                            });
                        }
                        Attempt::Failed(failure) => {
                            let reason = describe(position, &event.event_type, &failure);
                            if self.config.failure_policy == FailurePolicy::Stop {
                                // Save the progress before the failing event (every earlier
                                // position was handled or filtered out), then stop at it.
                                checkpoint = position - 1;
                                let state = Some(SubscriptionState::Failed(reason.clone()));
                                self.commit_forced(&mut committed, checkpoint, &mut pending, state)
                                    .await?;
                                return Err(Fault::Fatal(reason));
                            }
                            error!(position, stream = %event.stream_id, reason = %reason, "event parked with the rest of its stream");
                            park(&mut pending, event, &reason);
                            self.parked_streams.insert(event.stream_id.clone());
                            checkpoint = position;
                            uncommitted += 1;
                            self.status.update(|s| {
                                s.handled_up_to = position;
                                s.parked += 1;
                                s.parked_streams += 1;
                            });
                        }
                        Attempt::Panicked(message) => {
                            checkpoint = position - 1;
                            self.commit(&mut committed, checkpoint, &mut pending)
                                .await?;
                            return Err(Fault::Panicked { position, message });
                        }
                        Attempt::Stopped => {
                            checkpoint = position - 1;
                            break;
                        }
                    }
                }
                if uncommitted >= self.config.commit_every
                    || committed.at.elapsed() >= self.config.commit_interval
                {
                    self.commit(&mut committed, checkpoint, &mut pending)
                        .await?;
                    uncommitted = 0;
                }
            }
            if self.stop_requested() {
                continue;
            }
            // Every position before next_position has been examined, the filtered-out ones too.
            checkpoint = checkpoint.max(page.next_position - 1);
            self.status.update(|s| {
                s.head = page.head;
                s.handled_up_to = checkpoint;
            });
            if !page.is_end() {
                continue;
            }
            self.status.update(|s| s.state = SubscriptionState::Live);
            // At the head: wait for more, committing what is pending when its time comes.
            let deadline = committed.at + self.config.commit_interval;
            let dirty = checkpoint != committed.position || !pending.is_empty();
            let open = self.commands_open;
            tokio::select! {
                changed = heads.changed() => {
                    if changed.is_err() {
                        warn!("the store closed; stopping");
                        self.commit(&mut committed, checkpoint, &mut pending).await.ok();
                        return Err(Fault::Fatal("the store was closed".into()));
                    }
                }
                _ = self.stop.changed() => {}
                command = self.commands.recv(), if open => {
                    match command {
                        Some(command) => {
                            self.apply(command, &mut committed, checkpoint, &mut pending).await?;
                        }
                        None => self.commands_open = false,
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()), if dirty => {
                    self.commit(&mut committed, checkpoint, &mut pending).await?;
                    uncommitted = 0;
                }
            }
            if heads.current() > checkpoint {
                self.status
                    .update(|s| s.state = SubscriptionState::CatchingUp);
            }
        }
    }

    /// Handles one event, retrying a failure as the failure policy says.
    async fn attempt(&mut self, event: &RecordedEvent, pending: &StateBatch) -> Attempt {
        let mut retry = 0u32;
        loop {
            let mut ctx = EventContext {
                name: H::NAME,
                event,
                store: &*self.store,
                pending,
                writes: StateBatch::new(),
            };
            let span = info_span!(
                "event",
                position = event.position,
                stream = %event.stream_id,
                event_type = %event.event_type
            );
            let outcome = AssertUnwindSafe(self.handler.dispatch(event, &mut ctx))
                .catch_unwind()
                .instrument(span)
                .await;
            let writes = std::mem::take(&mut ctx.writes);
            let failure = match outcome {
                Ok(Ok(())) => return Attempt::Handled(writes),
                Err(panic) => return Attempt::Panicked(panic_message(&*panic)),
                Ok(Err(failure)) => failure,
            };
            let max_retries = match self.config.failure_policy {
                FailurePolicy::RetryThenPark { max_retries, .. } => max_retries,
                FailurePolicy::Stop => 0,
            };
            if retry >= max_retries || matches!(failure, HandlerFailure::Decode(_)) {
                return Attempt::Failed(failure);
            }
            let seed = event.position ^ (event.event_id.as_u128() as u64);
            let pause = self.config.failure_policy.backoff(retry, seed);
            retry += 1;
            warn!(position = event.position, retry, ?pause, error = %failure, "handler failed; retrying");
            self.status.update(|s| s.retries += 1);
            if self.sleep_or_stop(pause).await {
                return Attempt::Stopped;
            }
        }
    }

    /// Applies an operation on parked events: commits what is pending first, then the
    /// operation's writes in a second fenced commit at the same checkpoint.
    async fn apply(
        &mut self,
        command: Command,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
    ) -> Result<(), Fault> {
        if let Err(fault) = self.commit(committed, checkpoint, pending).await {
            let message = fault_message(&fault);
            match command {
                Command::Replay { reply, .. } => {
                    drop(reply.send(Err(ControlError::Failed(message))))
                }
                Command::Skip { reply, .. } => drop(reply.send(Err(ControlError::Failed(message)))),
                Command::Flush { reply } => drop(reply.send(Err(ControlError::Failed(message)))),
            }
            return Err(fault);
        }
        match command {
            Command::Flush { reply } => {
                let _ = reply.send(Ok(()));
                Ok(())
            }
            Command::Skip { position, reply } => {
                let result = self.skip(position, committed, checkpoint).await;
                respond(reply, result)
            }
            Command::Replay { stream, reply } => {
                let result = self.replay(&stream, committed, checkpoint).await;
                respond(reply, result)
            }
        }
    }

    async fn skip(
        &mut self,
        position: u64,
        committed: &mut Committed,
        checkpoint: u64,
    ) -> Result<bool, Fault> {
        let parked = parked_in_store(&*self.store, H::NAME).await?;
        let Some(entry) = parked.iter().find(|p| p.position == position) else {
            return Ok(false);
        };
        let mut batch = StateBatch::new();
        batch.insert(parked_key(position), None);
        let last_of_stream = !parked
            .iter()
            .any(|p| p.stream_id == entry.stream_id && p.position != position);
        if last_of_stream {
            batch.insert(parked_stream_key(&entry.stream_id), None);
            self.parked_streams.remove(&entry.stream_id);
        }
        self.status.update(|s| {
            s.parked = s.parked.saturating_sub(1);
            if last_of_stream {
                s.parked_streams = s.parked_streams.saturating_sub(1);
            }
        });
        info!(position, stream = %entry.stream_id, "parked event skipped");
        self.commit(committed, checkpoint, &mut batch).await?;
        Ok(true)
    }

    async fn replay(
        &mut self,
        stream: &str,
        committed: &mut Committed,
        checkpoint: u64,
    ) -> Result<ReplayOutcome, Fault> {
        let entries: Vec<ParkedEvent> = parked_in_store(&*self.store, H::NAME)
            .await?
            .into_iter()
            .filter(|p| p.stream_id == stream)
            .collect();
        let mut batch = StateBatch::new();
        batch.insert(replay_key(stream), None);
        let mut outcome = ReplayOutcome::default();
        let all = Filter::all();
        for (i, entry) in entries.iter().enumerate() {
            let page = self.store.read_all(entry.position, 1, &all).await?;
            let Some(event) = page
                .events
                .into_iter()
                .next()
                .filter(|e| e.position == entry.position)
            else {
                batch.insert(parked_key(entry.position), None);
                continue;
            };
            let reason = match self.attempt(&event, &batch).await {
                Attempt::Handled(writes) => {
                    merge(&mut batch, writes);
                    batch.insert(parked_key(entry.position), None);
                    outcome.handled += 1;
                    self.status.update(|s| {
                        s.events_handled += 1;
                        s.parked = s.parked.saturating_sub(1);
                    });
                    continue;
                }
                Attempt::Failed(failure) => describe(event.position, &event.event_type, &failure),
                Attempt::Panicked(message) => {
                    // Panics are not parked: commit what was handled, keep the request so that
                    // the replay goes on after the restart, and restart as for any panic.
                    batch.insert(replay_key(stream), Some(Vec::new()));
                    self.commit(committed, checkpoint, &mut batch).await?;
                    return Err(Fault::Panicked {
                        position: event.position,
                        message,
                    });
                }
                Attempt::Stopped => {
                    // Interrupted by a stop: the rest stays parked as it was, and the request is
                    // kept, so that the replay goes on at the next start.
                    batch.insert(replay_key(stream), Some(Vec::new()));
                    outcome.still_parked = (entries.len() - i) as u64;
                    break;
                }
            };
            // It failed again: it stays parked, first of its stream, with the rest behind it.
            let again = ParkedEvent {
                reason,
                parked_at: SystemTime::now(),
                ..entry.clone()
            };
            batch.insert(parked_key(entry.position), Some(encode_parked(&again)));
            outcome.still_parked = (entries.len() - i) as u64;
            break;
        }
        if outcome.still_parked == 0 && self.parked_streams.remove(stream) {
            batch.insert(parked_stream_key(stream), None);
            self.status
                .update(|s| s.parked_streams = s.parked_streams.saturating_sub(1));
        }
        info!(
            stream,
            handled = outcome.handled,
            still_parked = outcome.still_parked,
            "parked stream replayed"
        );
        self.commit(committed, checkpoint, &mut batch).await?;
        Ok(outcome)
    }

    /// Commits the checkpoint with the pending state, if anything moved.
    async fn commit(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
    ) -> Result<(), Fault> {
        if checkpoint == committed.position && pending.is_empty() && committed.expected.is_some() {
            committed.at = Instant::now();
            return Ok(());
        }
        self.commit_forced(committed, checkpoint, pending, None)
            .await
    }

    /// Commits the checkpoint with the pending state and the status record.
    async fn commit_forced(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
        state: Option<SubscriptionState>,
    ) -> Result<(), Fault> {
        let mut status = self.status.get();
        status.checkpoint = checkpoint;
        if let Some(state) = state {
            status.state = state;
        }
        let record = status_write(&status);
        pending.insert(record.key, record.value);
        let writes = drain(pending);
        match self
            .store
            .commit_checkpoint(H::NAME, committed.expected, checkpoint, writes)
            .await
        {
            Ok(()) => {
                debug!(checkpoint, "checkpoint committed");
                *committed = Committed {
                    expected: Some(checkpoint),
                    position: checkpoint,
                    at: Instant::now(),
                };
                self.status.update(|s| s.checkpoint = checkpoint);
                Ok(())
            }
            Err(StoreError::CheckpointConflict { actual, .. }) => Err(Fault::Fatal(format!(
                "another instance moved the checkpoint (to {actual:?}); this one stops"
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

/// The last commit: what the stored checkpoint is, and when it was written.
struct Committed {
    expected: Option<u64>,
    position: u64,
    at: Instant,
}

fn describe(position: u64, event_type: &str, failure: &HandlerFailure) -> String {
    format!("event at position {position} ({event_type}): {failure}")
}

/// Records `event` as parked in the pending batch (committed with the checkpoint).
fn park(pending: &mut StateBatch, event: &RecordedEvent, reason: &str) {
    let parked = ParkedEvent {
        position: event.position,
        stream_id: event.stream_id.clone(),
        event_type: event.event_type.clone(),
        reason: reason.to_owned(),
        parked_at: SystemTime::now(),
    };
    pending.insert(parked_key(event.position), Some(encode_parked(&parked)));
    pending.insert(parked_stream_key(&event.stream_id), Some(Vec::new()));
}

fn fault_message(fault: &Fault) -> String {
    match fault {
        Fault::Panicked { message, .. } => message.clone(),
        Fault::Fatal(reason) => reason.clone(),
    }
}

/// Sends an operation's result back; a fault also ends the run.
fn respond<T>(
    reply: oneshot::Sender<Result<T, ControlError>>,
    result: Result<T, Fault>,
) -> Result<(), Fault> {
    match result {
        Ok(value) => {
            let _ = reply.send(Ok(value));
            Ok(())
        }
        Err(fault) => {
            let _ = reply.send(Err(ControlError::Failed(fault_message(&fault))));
            Err(fault)
        }
    }
}
