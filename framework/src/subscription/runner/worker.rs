//! A handler with what it needs to handle one event: retries, backoff and the wait for an
//! unavailable store.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tokio::sync::watch;
use tracing::{info_span, warn, Instrument};

use super::{
    is_final, is_transient, sleep_or_stop, Attempt, Runner, MAX_UNAVAILABLE_BACKOFF,
    UNAVAILABLE_PAUSE,
};
use crate::panic::panic_message;
use crate::store::{EventStore, RecordedEvent};
use crate::subscription::failure::FailurePolicy;
use crate::subscription::handler::{EventContext, EventHandler, HandlerFailure, StateBatch};
use crate::subscription::status::StatusCell;

impl<H: EventHandler> Runner<H> {
    /// The handler of `partition`, with what it needs to handle events.
    pub(super) fn worker(&mut self, partition: usize) -> Worker<'_, H> {
        Worker {
            name: &self.name,
            handler: &mut self.handlers[partition],
            store: &*self.store,
            policy: &self.config.failure_policy,
            status: &self.status,
            cache: &self.cache,
            stop: self.stop.clone(),
            reads: Vec::new(),
            generation: self.lease.as_ref().map(|l| l.generation),
        }
    }
}

/// A handler with what it needs to handle events: one per partition.
pub(super) struct Worker<'a, H> {
    /// The subscription's name.
    pub name: &'a str,
    pub handler: &'a mut H,
    pub store: &'a dyn EventStore,
    pub policy: &'a FailurePolicy,
    pub status: &'a StatusCell,
    /// Values this run committed lately (see [`Runner::cache`]).
    pub cache: &'a StateBatch,
    pub stop: watch::Receiver<bool>,
    /// With `track_reads`: the keys read by the attempts so far (the caller takes them).
    pub reads: Vec<Vec<u8>>,
    /// The generation of the lease the loop holds (the fencing token), if any.
    pub generation: Option<u64>,
}

impl<H: EventHandler> Worker<'_, H> {
    /// Handles one event, retrying a failure as the failure policy says. `round` is the
    /// partition's uncommitted writes of this round (newer than `pending`); with `track_reads`
    /// the keys the handler read are returned.
    pub(super) async fn attempt(
        &mut self,
        event: &RecordedEvent,
        pending: &StateBatch,
        round: Option<&StateBatch>,
        track_reads: bool,
    ) -> Attempt {
        let mut retry = 0u32;
        let mut unavailable = 0u32;
        loop {
            let mut ctx = EventContext {
                name: self.name,
                event,
                store: self.store,
                pending,
                round,
                committed: self.cache,
                writes: StateBatch::new(),
                reads: track_reads.then(Default::default),
                reserved: None,
                fencing_token: self.generation,
                recording: None,
            };
            let span = info_span!(
                "event",
                position = event.position,
                stream = %event.stream_id,
                event_type = %event.event_type,
                event_id = %event.event_id,
                correlation_id = event.correlation_id.map(tracing::field::display),
                causation_id = event.causation_id.map(tracing::field::display),
                traceparent = event.traceparent(),
            );
            let status = self.status;
            let handling = AssertUnwindSafe(self.handler.dispatch(event, &mut ctx))
                .catch_unwind()
                .instrument(span);
            // A handler that does not finish at once makes the loop wait: the progress
            // recorded quietly before it is published first.
            let outcome = BeforeWaiting {
                future: std::pin::pin!(handling),
                on_pending: Some(|| status.publish()),
            }
            .await;
            let writes = std::mem::take(&mut ctx.writes);
            if let Some(reads) = ctx.reads.take() {
                self.reads
                    .extend(reads.into_inner().unwrap_or_else(|p| p.into_inner()));
            }
            let failure = match (outcome, ctx.reserved.take()) {
                (Err(panic), _) => return Attempt::Panicked(panic_message(&*panic)),
                (Ok(Ok(())), Some(key)) | (Ok(Err(_)), Some(key)) => {
                    // Not retried: the same code writes the same key again.
                    return Attempt::Failed(HandlerFailure::ReservedKey(
                        String::from_utf8_lossy(&key).into_owned(),
                    ));
                }
                (Ok(Ok(())), None) => return Attempt::Handled(writes),
                (Ok(Err(failure)), None) => failure,
            };
            if is_transient(&failure) {
                // The store (or a broker, a service) is unreachable, not the event at fault: wait
                // for it as long as it takes (never park or skip for it), with a growing pause.
                unavailable = unavailable.saturating_add(1);
                let pause = UNAVAILABLE_PAUSE
                    .saturating_mul(unavailable)
                    .min(MAX_UNAVAILABLE_BACKOFF);
                if unavailable == 1 || unavailable.is_power_of_two() {
                    warn!(position = event.position, attempts = unavailable, ?pause, error = %failure, "the store (or a service the handler needs) is unavailable; retrying the event");
                }
                // Meanwhile the log goes on: the status shows the lag growing.
                let head = self.store.head();
                self.status.update(|s| s.head = s.head.max(head));
                if sleep_or_stop(&mut self.stop, pause).await {
                    return Attempt::Stopped;
                }
                continue;
            }
            let max_retries = match self.policy {
                FailurePolicy::RetryThenPark { max_retries, .. } => *max_retries,
                FailurePolicy::Stop => 0,
            };
            if retry >= max_retries || is_final(&failure) {
                return Attempt::Failed(failure);
            }
            let seed = event.position ^ (event.event_id.as_u128() as u64);
            let pause = self.policy.backoff(retry, seed);
            retry += 1;
            warn!(position = event.position, retry, ?pause, error = %failure, "handler failed; retrying");
            self.status.update(|s| s.retries += 1);
            self.status.metrics().retries.increment(1);
            if sleep_or_stop(&mut self.stop, pause).await {
                return Attempt::Stopped;
            }
        }
    }
}

/// `future`, calling `on_pending` the first time it is not ready when polled (before the task
/// waits for it).
struct BeforeWaiting<'a, F, P> {
    future: Pin<&'a mut F>,
    on_pending: Option<P>,
}

impl<F: Future, P: FnOnce() + Unpin> Future for BeforeWaiting<'_, F, P> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let polled = this.future.as_mut().poll(cx);
        if polled.is_pending() {
            if let Some(on_pending) = this.on_pending.take() {
                on_pending();
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::Arc;
    use std::time::Duration;

    use async_trait::async_trait;
    use tokio::sync::Notify;

    use crate::store::{EventData, ExpectedVersion, SledEventStore};
    use crate::subscription::{SubscriptionConfig, Subscriptions};

    /// Waits at event 3 until the gate opens.
    struct Gated(Arc<Notify>);

    #[async_trait]
    impl EventHandler for Gated {
        const NAME: &'static str = "gated";

        fn event_types() -> Vec<&'static str> {
            vec!["E"]
        }

        async fn dispatch(
            &mut self,
            event: &RecordedEvent,
            _ctx: &mut EventContext<'_>,
        ) -> Result<(), HandlerFailure> {
            if event.position == 3 {
                self.0.notified().await;
            }
            Ok(())
        }
    }

    #[test]
    fn the_progress_before_a_handler_that_waits_is_published_while_it_waits() {
        // Events 1 and 2 are recorded quietly; no commit is due and the page (of 3) has not
        // ended: only the handler of event 3 not being ready publishes them.
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledEventStore::open(dir.path()).unwrap());
        actix::System::new().block_on(async move {
            let events = (0..3)
                .map(|_| EventData::new("E", b"{}".to_vec()))
                .collect();
            store
                .append("s-1", ExpectedVersion::NoStream, events)
                .await
                .unwrap();
            let gate = Arc::new(Notify::new());
            let subscriptions = Subscriptions::new(store.clone());
            let config = SubscriptionConfig::default()
                .commit_every(1000)
                .commit_interval(Duration::from_secs(3600));
            let handle = subscriptions
                .start_with(Gated(gate.clone()), config)
                .unwrap();
            let mut updates = handle.watch();
            let seen = tokio::time::timeout(
                Duration::from_secs(60),
                updates.wait_for(|s| s.handled_up_to >= 2),
            )
            .await;
            let handled = seen
                .expect("events 1 and 2 published while the handler of 3 waits")
                .unwrap()
                .handled_up_to;
            assert_eq!(handled, 2);
            gate.notify_one();
            handle
                .wait_until_handled(3, Duration::from_secs(60))
                .await
                .unwrap();
            subscriptions.stop_all().await;
        });
    }

    #[tokio::test]
    async fn before_waiting_calls_back_once_when_the_future_waits_and_never_when_it_is_ready() {
        let calls = Cell::new(0);
        let ready = BeforeWaiting {
            future: std::pin::pin!(async { 1 }),
            on_pending: Some(|| calls.set(calls.get() + 1)),
        }
        .await;
        assert_eq!((ready, calls.get()), (1, 0));
        let waited = BeforeWaiting {
            future: std::pin::pin!(async {
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                2
            }),
            on_pending: Some(|| calls.set(calls.get() + 1)),
        }
        .await;
        assert_eq!((waited, calls.get()), (2, 1));
    }
}
