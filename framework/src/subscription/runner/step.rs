//! One event of the sequential loop: handled, parked behind its stream, or parked after it
//! failed.

use std::time::SystemTime;

use tracing::{debug, error};

use super::commit::Committed;
use super::{Attempt, Fault, Runner};
use crate::store::RecordedEvent;
use crate::subscription::failure::{
    encode_parked, parked_key, parked_stream_key, FailurePolicy, ParkedEvent,
};
use crate::subscription::handler::{merge, EventHandler, HandlerFailure, StateBatch};
use crate::subscription::status::SubscriptionState;

impl<H: EventHandler> Runner<H> {
    /// Handles (or parks) one event with the handler of `partition`, moving `checkpoint` to it.
    /// A panic, or a failure under `FailurePolicy::Stop`, commits the progress before the event
    /// and ends the run.
    pub(super) async fn step(
        &mut self,
        event: &RecordedEvent,
        partition: usize,
        committed: &mut Committed,
        checkpoint: &mut u64,
        pending: &mut StateBatch,
    ) -> Result<Flow, Fault> {
        let position = event.position;
        if self.parked_streams.contains(event.stream_id.as_str()) {
            self.park_behind(event, pending).await?;
            *checkpoint = position;
            self.status.update(|s| s.handled_up_to = position);
            return Ok(Flow::Next);
        }
        let attempt = {
            let mut worker = self.worker(partition);
            worker.attempt(event, pending, None, false).await
        };
        match attempt {
            Attempt::Handled(writes) => {
                merge(pending, writes);
                *checkpoint = position;
                // Published at the end of the page, or before the loop next waits.
                self.status.update_quietly(|s| {
                    s.handled_up_to = position;
                    s.events_handled += 1;
                });
                self.status.metrics().handled.increment(1);
                Ok(Flow::Next)
            }
            Attempt::Failed(failure) => {
                let reason = describe(position, &event.event_type, &failure);
                if self.config.failure_policy == FailurePolicy::Stop {
                    // Save the progress before the failing event (every earlier position was
                    // handled or filtered out), then stop at it.
                    *checkpoint = position - 1;
                    return Err(self.fail_at(committed, *checkpoint, pending, reason).await);
                }
                self.park_failed(event, &reason, pending);
                *checkpoint = position;
                self.status.update(|s| s.handled_up_to = position);
                Ok(Flow::Next)
            }
            Attempt::Panicked(message) => {
                *checkpoint = position - 1;
                self.commit(committed, *checkpoint, pending).await?;
                Err(Fault::Panicked { position, message })
            }
            Attempt::Stopped => {
                *checkpoint = position - 1;
                Ok(Flow::Stopped)
            }
        }
    }

    /// Parks an event whose handling failed, with every later event of its stream.
    pub(super) fn park_failed(
        &mut self,
        event: &RecordedEvent,
        reason: &str,
        pending: &mut StateBatch,
    ) {
        error!(position = event.position, stream = %event.stream_id, reason = %reason, "event parked with the rest of its stream");
        park(pending, event, reason);
        self.parked_streams.insert(event.stream_id.to_string());
        self.status.update(|s| {
            s.handled_up_to = event.position;
            s.parked += 1;
            s.parked_streams += 1;
            s.state = SubscriptionState::Parked;
        });
        self.status.metrics().parked.increment(1);
    }

    /// An earlier event of this stream is parked: this one waits behind it, in order, recorded
    /// as parked so that the checkpoint can move past it. (After a reset it may be parked
    /// already: its record and reason are kept.)
    pub(super) async fn park_behind(
        &mut self,
        event: &RecordedEvent,
        pending: &mut StateBatch,
    ) -> Result<(), Fault> {
        let key = parked_key(event.position);
        // The read below may wait: what the loop did before is published first.
        self.status.publish();
        if !pending.contains_key(&key) && self.store.load_state(&self.name, &key).await?.is_none() {
            park(pending, event, "an earlier event of its stream is parked");
            self.status.update(|s| s.parked += 1);
            self.status.metrics().parked.increment(1);
        }
        debug!(position = event.position, stream = %event.stream_id, "parked behind its stream");
        Ok(())
    }
}

/// What to do after one event of the sequential loop.
pub(super) enum Flow {
    /// The event is handled (or parked): the checkpoint moved to it.
    Next,
    /// A stop was requested while it was being retried: it is not handled.
    Stopped,
}

pub(super) fn describe(position: u64, event_type: &str, failure: &HandlerFailure) -> String {
    format!("event at position {position} ({event_type}): {failure}")
}

/// Records `event` as parked in the pending batch (committed with the checkpoint).
pub(super) fn park(pending: &mut StateBatch, event: &RecordedEvent, reason: &str) {
    let parked = ParkedEvent {
        position: event.position,
        stream_id: event.stream_id.to_string(),
        event_type: event.event_type.to_string(),
        reason: reason.to_owned(),
        parked_at: SystemTime::now(),
    };
    pending.insert(parked_key(event.position), Some(encode_parked(&parked)));
    pending.insert(parked_stream_key(&event.stream_id), Some(Vec::new()));
}
