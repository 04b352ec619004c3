//! The subscription loop: catch up from the checkpoint, follow the durable head, commit.
//!
//! There is no separate "live" channel: the loop always reads the log by position, up to the
//! durable head, and when it reaches the head it waits for the head to move. So the switch from
//! catching up to live cannot skip or repeat an event however appends race it (the failure mode
//! of push-based designs, commanded/eventstore#327).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::watch;
use tracing::{debug, error, info, info_span, warn, Instrument};

use super::handler::{drain, merge, EventContext, EventHandler, HandlerFailure, StateBatch};
use super::status::{StatusCell, SubscriptionState};
use super::{StartFrom, SubscriptionConfig};
use crate::panic::panic_message;
use crate::store::{EventStore, StoreError};

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
                            self.status.update(|s| s.state = SubscriptionState::Failed(reason));
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
        self.status.update(|s| {
            s.checkpoint = checkpoint;
            s.handled_up_to = checkpoint;
            s.state = SubscriptionState::CatchingUp;
        });
        if stored.is_none() {
            // Record where a new subscription starts, so that a restart before the first event
            // does not recompute `End` and skip what was appended meanwhile.
            let mut nothing = StateBatch::new();
            self.commit(&mut committed, checkpoint, &mut nothing)
                .await?;
        }
        info!(checkpoint, "subscription started");
        let filter = H::filter();
        let mut heads = self.store.watch_head();
        let mut pending = StateBatch::new();
        let mut uncommitted = 0u64;

        loop {
            if self.stop_requested() {
                self.commit(&mut committed, checkpoint, &mut pending)
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
                let position = event.position;
                let mut ctx = EventContext {
                    name,
                    event,
                    store: &*self.store,
                    pending: &pending,
                    writes: StateBatch::new(),
                };
                let span = info_span!(
                    "event",
                    position,
                    stream = %event.stream_id,
                    event_type = %event.event_type
                );
                let outcome = AssertUnwindSafe(self.handler.dispatch(event, &mut ctx))
                    .catch_unwind()
                    .instrument(span)
                    .await;
                let writes = std::mem::take(&mut ctx.writes);
                match outcome {
                    Ok(Ok(())) => {
                        merge(&mut pending, writes);
                        checkpoint = position;
                        uncommitted += 1;
                        self.status.update(|s| {
                            s.handled_up_to = position;
                            s.events_handled += 1;
                        });
                    }
                    Ok(Err(failure)) => {
                        // Save the progress before the failing event (every earlier position
                        // was handled or filtered out), then stop at it.
                        checkpoint = position - 1;
                        self.commit(&mut committed, checkpoint, &mut pending)
                            .await?;
                        return Err(Fault::Fatal(describe(
                            position,
                            &event.event_type,
                            &failure,
                        )));
                    }
                    Err(panic) => {
                        checkpoint = position - 1;
                        self.commit(&mut committed, checkpoint, &mut pending)
                            .await?;
                        return Err(Fault::Panicked {
                            position,
                            message: panic_message(&*panic),
                        });
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
            let dirty = checkpoint != committed.position;
            tokio::select! {
                changed = heads.changed() => {
                    if changed.is_err() {
                        warn!("the store closed; stopping");
                        self.commit(&mut committed, checkpoint, &mut pending).await.ok();
                        return Err(Fault::Fatal("the store was closed".into()));
                    }
                }
                _ = self.stop.changed() => {}
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
