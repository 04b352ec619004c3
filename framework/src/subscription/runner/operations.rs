//! Operations on parked events and requests from other processes, applied by the running loop
//! so that they are fenced and ordered with its own commits.

use std::time::SystemTime;

use tokio::sync::oneshot;
use tracing::{info, warn};
use uuid::Uuid;

use super::commit::Committed;
use super::step::describe;
use super::{running_state, Attempt, Command, Fault, Runner};
use crate::store::Filter;
use crate::subscription::control::{self, Operation, Reply, Request};
use crate::subscription::failure::{
    encode_parked, parked_in_store, parked_key, parked_stream_key, replay_key, ControlError,
    ParkedEvent, ReplayOutcome,
};
use crate::subscription::handler::{merge, EventHandler, StateBatch};
use crate::subscription::status::SubscriptionState;

impl<H: EventHandler> Runner<H> {
    /// Applies an operation on parked events: commits what is pending first, then the
    /// operation's writes in a second fenced commit at the same checkpoint.
    pub(super) async fn apply(
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
                let result = self.skip(position, committed, checkpoint, None).await;
                respond(reply, result)
            }
            Command::Replay { stream, reply } => {
                let result = self.replay(&stream, committed, checkpoint, None).await;
                respond(reply, result)
            }
        }?;
        self.leave_parked_state();
        Ok(())
    }

    /// After an operation on parked events: the state says `Parked` only while some are.
    pub(super) fn leave_parked_state(&self) {
        self.status.update(|s| {
            if s.state == SubscriptionState::Parked && s.parked == 0 {
                s.state = running_state(s, s.handled_up_to >= s.head);
            }
        });
    }

    /// Applies the requests other processes recorded for this subscription (see
    /// [`control`]): each in the commit that settles it, so once.
    pub(super) async fn apply_requests(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
    ) -> Result<(), Fault> {
        let requests = control::requests(&*self.store, &self.name).await?;
        if requests.is_empty() {
            return Ok(());
        }
        self.commit(committed, checkpoint, pending).await?;
        for (id, request) in requests {
            match request {
                Ok(Request { operation, by }) => {
                    info!(request = %id, by = %by, ?operation, "applying an operation sent by another process");
                    match operation {
                        Operation::Replay { stream } => {
                            self.replay(&stream, committed, checkpoint, Some(id))
                                .await?;
                        }
                        Operation::Skip { position } => {
                            self.skip(position, committed, checkpoint, Some(id)).await?;
                        }
                    }
                }
                Err(reason) => {
                    warn!(request = %id, reason = %reason, "refusing a request");
                    let mut batch = StateBatch::new();
                    settle_into(&mut batch, id, &Reply::Failed(reason));
                    self.commit(committed, checkpoint, &mut batch).await?;
                }
            }
        }
        let mut batch = StateBatch::new();
        for w in control::prune_replies(&*self.store, &self.name).await? {
            batch.insert(w.key, w.value);
        }
        self.commit(committed, checkpoint, &mut batch).await?;
        self.leave_parked_state();
        Ok(())
    }

    /// Drops a parked event; with `settle`, settles that request from another process in the
    /// same commit.
    pub(super) async fn skip(
        &mut self,
        position: u64,
        committed: &mut Committed,
        checkpoint: u64,
        settle: Option<Uuid>,
    ) -> Result<bool, Fault> {
        let parked = parked_in_store(&*self.store, &self.name).await?;
        let Some(entry) = parked.iter().find(|p| p.position == position) else {
            if let Some(id) = settle {
                let mut batch = StateBatch::new();
                settle_into(&mut batch, id, &Reply::Skipped(false));
                self.commit(committed, checkpoint, &mut batch).await?;
            }
            return Ok(false);
        };
        let mut batch = StateBatch::new();
        if let Some(id) = settle {
            settle_into(&mut batch, id, &Reply::Skipped(true));
        }
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
        self.status.metrics().skipped.increment(1);
        info!(position, stream = %entry.stream_id, "parked event skipped");
        self.commit(committed, checkpoint, &mut batch).await?;
        Ok(true)
    }

    /// Handles a parked stream again; with `settle`, settles that request from another process
    /// in the commit that records the replay.
    pub(super) async fn replay(
        &mut self,
        stream: &str,
        committed: &mut Committed,
        checkpoint: u64,
        settle: Option<Uuid>,
    ) -> Result<ReplayOutcome, Fault> {
        let entries: Vec<ParkedEvent> = parked_in_store(&*self.store, &self.name)
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
                self.status
                    .update(|s| s.parked = s.parked.saturating_sub(1));
                continue;
            };
            let attempt = {
                let partition = self.partition_of(stream);
                self.worker(partition)
                    .attempt(&event, &batch, None, false)
                    .await
            };
            let reason = match attempt {
                Attempt::Handled(writes) => {
                    merge(&mut batch, writes);
                    batch.insert(parked_key(entry.position), None);
                    outcome.handled += 1;
                    self.status.update(|s| {
                        s.events_handled += 1;
                        s.parked = s.parked.saturating_sub(1);
                    });
                    self.status.metrics().handled.increment(1);
                    continue;
                }
                Attempt::Failed(failure) => describe(event.position, &event.event_type, &failure),
                Attempt::Panicked(message) => {
                    // Panics are not parked: commit what was handled, keep the request so that
                    // the replay goes on after the restart, and restart as for any panic.
                    batch.insert(replay_key(stream), Some(Vec::new()));
                    if let Some(id) = settle {
                        let reply = Reply::Failed(format!(
                            "the handler panicked at position {}; the replay goes on after the \
                             restart",
                            event.position
                        ));
                        settle_into(&mut batch, id, &reply);
                    }
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
        if let Some(id) = settle {
            settle_into(&mut batch, id, &Reply::replayed(&outcome));
        }
        self.commit(committed, checkpoint, &mut batch).await?;
        Ok(outcome)
    }
}

/// What a fault says, for a reply or a log line.
pub(super) fn fault_message(fault: &Fault) -> String {
    match fault {
        Fault::Panicked { message, .. } => message.clone(),
        Fault::Unavailable(reason) | Fault::Fatal(reason) | Fault::LeaseLost(reason) => {
            reason.clone()
        }
    }
}

/// Adds the writes that settle request `id` with `reply` to `batch`.
fn settle_into(batch: &mut StateBatch, id: Uuid, reply: &Reply) {
    for w in control::settle(id, reply) {
        batch.insert(w.key, w.value);
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
