//! One actix actor per live aggregate instance.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakAddr;
use tracing::Instrument;

use super::load::{execute, guard, load};
use super::messages::{Execute, Idle, Passivate, Query};
use super::registry::{Counters, RegistryActor};
use super::{Aggregate, AggregateConfig, AggregateError, Loaded};
use crate::store::EventStore;

/// An aggregate instance. Its state is loaded on the first message (and again after anything
/// that makes it untrustworthy); every message that touches the state runs to completion before
/// the next one starts (`AtomicResponse`), so commands to one aggregate are strictly serialized.
///
/// Started under an actix [`Supervisor`]: when user code panics the actor stops, and the
/// supervisor restarts it with the same mailbox, so queued commands are not lost.
pub(crate) struct AggregateActor<A: Aggregate> {
    id: String,
    generation: u64,
    store: Arc<dyn EventStore>,
    config: Arc<AggregateConfig>,
    loaded: Option<Box<Loaded<A>>>,
    registry: WeakAddr<RegistryActor<A>>,
    counters: Arc<Counters>,
    last_active: Instant,
    idle_reported: bool,
    /// Set when user code panicked; the restart that follows is counted.
    panicked: bool,
    /// Set when the instance was told to stop (idle, evicted, on request, registry shut down):
    /// the registry no longer routes to it. Were it restarted by its supervisor (a caller still
    /// held its address and sent it a command), it answers what it is sent and stops again as
    /// soon as no address is left, instead of living on, unregistered, until its idle timeout.
    passivated: bool,
}

/// How often a passivated instance that was restarted looks whether any address is left.
const LINGER_CHECK: Duration = Duration::from_millis(20);

impl<A: Aggregate> AggregateActor<A> {
    pub(crate) fn new(
        id: String,
        generation: u64,
        store: Arc<dyn EventStore>,
        config: Arc<AggregateConfig>,
        registry: WeakAddr<RegistryActor<A>>,
        counters: Arc<Counters>,
    ) -> Self {
        counters.live.fetch_add(1, Ordering::Relaxed);
        crate::metrics::aggregate_live(A::CATEGORY, 1.0);
        AggregateActor {
            id,
            generation,
            store,
            config,
            loaded: None,
            registry,
            counters,
            last_active: Instant::now(),
            idle_reported: false,
            panicked: false,
            passivated: false,
        }
    }

    fn touch(&mut self) {
        self.last_active = Instant::now();
        self.idle_reported = false;
    }

    fn check_idle(&mut self, ctx: &mut Context<Self>, timeout: Duration) {
        if self.idle_reported || self.last_active.elapsed() < timeout {
            return;
        }
        self.idle_reported = true;
        match self.registry.upgrade() {
            Some(registry) => registry.do_send(Idle {
                id: self.id.clone(),
                generation: self.generation,
                addr: ctx.address(),
            }),
            None => ctx.stop(),
        }
    }
}

impl<A: Aggregate> Drop for AggregateActor<A> {
    fn drop(&mut self) {
        self.counters.live.fetch_sub(1, Ordering::Relaxed);
        crate::metrics::aggregate_live(A::CATEGORY, -1.0);
    }
}

impl<A: Aggregate> Actor for AggregateActor<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.passivated {
            // Restarted only to answer holders of its address (see `passivated`); the interval
            // runs between messages, never during a command (a command waits atomically).
            ctx.run_interval(LINGER_CHECK, |_, ctx| {
                if !ctx.connected() {
                    ctx.stop();
                }
            });
            return;
        }
        if let Some(timeout) = self.config.idle_timeout {
            // Stopped between `timeout` and 1.25 × `timeout` after the last message; a coarse
            // timer keeps thousands of idle instances cheap.
            let period = (timeout / 4).clamp(Duration::from_millis(5), Duration::from_secs(60));
            ctx.run_interval(period, move |act, ctx| act.check_idle(ctx, timeout));
        }
    }
}

impl<A: Aggregate> Supervised for AggregateActor<A> {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Whatever stopped the actor, its next message starts from the store.
        self.loaded = None;
        if std::mem::take(&mut self.panicked) {
            self.counters.restarts.fetch_add(1, Ordering::Relaxed);
        }
        self.touch();
    }
}

impl<A: Aggregate> Handler<Execute<A>> for AggregateActor<A> {
    type Result = AtomicResponse<Self, Result<super::CommandOutcome, AggregateError<A::Error>>>;

    fn handle(&mut self, msg: Execute<A>, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let span = tracing::info_span!(
            "command",
            aggregate = A::CATEGORY,
            id = %self.id,
            command_id = %msg.envelope.command_id,
            correlation_id = %msg.envelope.effective_correlation_id(),
            causation_id = msg.envelope.causation_id.map(tracing::field::display),
            traceparent = msg.envelope.traceparent(),
        );
        let mut slot = self.loaded.take();
        let store = self.store.clone();
        let config = self.config.clone();
        let id = self.id.clone();
        let work = async move {
            let result =
                execute(&mut slot, &*store, &config, &id, msg.envelope, msg.remember).await;
            (slot, result)
        }
        .instrument(span);
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |(slot, result), act, ctx| {
                act.loaded = slot;
                act.touch();
                if let Err(AggregateError::Panicked { .. }) = &result {
                    // Restart through the supervisor: fresh state from the store.
                    act.panicked = true;
                    ctx.stop();
                }
                result
            },
        )))
    }
}

impl<A: Aggregate, R: Send + 'static> Handler<Query<A, R>> for AggregateActor<A> {
    type Result = AtomicResponse<Self, Result<R, AggregateError<A::Error>>>;

    fn handle(&mut self, msg: Query<A, R>, _ctx: &mut Self::Context) -> Self::Result {
        self.touch();
        let mut slot = self.loaded.take();
        let store = self.store.clone();
        let config = self.config.clone();
        let id = self.id.clone();
        let work = async move {
            let result = match &slot {
                Some(_) => {
                    crate::metrics::aggregate_state_hit(A::CATEGORY);
                    Ok(())
                }
                None => load::<A>(&*store, &id, &config).await.map(|l| {
                    slot = Some(Box::new(l));
                }),
            };
            let result = result.and_then(|()| {
                let loaded = slot.as_ref().expect("loaded above");
                let f = msg.f;
                guard(&loaded.stream, || f(&loaded.state, loaded.version))
            });
            (slot, result)
        };
        AtomicResponse::new(Box::pin(work.into_actor(self).map(
            |(slot, result), act, _ctx| {
                act.loaded = slot;
                act.touch();
                result
            },
        )))
    }
}

impl<A: Aggregate> Handler<Passivate> for AggregateActor<A> {
    type Result = ();

    fn handle(&mut self, _msg: Passivate, ctx: &mut Self::Context) {
        self.passivated = true;
        ctx.stop();
    }
}
