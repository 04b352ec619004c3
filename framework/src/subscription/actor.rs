//! The subscription actor and the registry that starts and stops subscriptions by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tokio::sync::watch;

use super::handler::EventHandler;
use super::runner::Runner;
use super::status::{StatusCell, SubscriptionState, SubscriptionStatus};
use super::SubscriptionConfig;
use crate::store::EventStore;

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
    name: &'static str,
    stop: watch::Sender<bool>,
    status: StatusCell,
}

impl SubscriptionHandle {
    /// The subscription's name.
    pub fn name(&self) -> &'static str {
        self.name
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

    /// Waits until it has stopped or failed.
    pub async fn finished(&self) -> SubscriptionStatus {
        loop {
            if self.is_finished() {
                return self.status.get();
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Waits until it has handled every event up to `position` (or stopped or failed).
    pub async fn caught_up_to(&self, position: u64) -> SubscriptionStatus {
        loop {
            let status = self.status.get();
            if status.handled_up_to >= position || self.is_finished() {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

/// Starts, stops and reports on the subscriptions of one store, by name.
///
/// Must be used inside an actix `System` (each subscription is an actor on the current arbiter).
#[derive(Clone)]
pub struct Subscriptions {
    store: Arc<dyn EventStore>,
    running: Arc<Mutex<HashMap<&'static str, SubscriptionHandle>>>,
}

/// Why a subscription could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A subscription of that name is already running in this registry: stop it first.
    #[error("subscription {0:?} is already running")]
    AlreadyRunning(&'static str),
}

impl Subscriptions {
    /// A registry over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Subscriptions {
            store,
            running: Arc::default(),
        }
    }

    /// Starts `handler` with the default settings.
    pub fn start<H: EventHandler>(&self, handler: H) -> Result<SubscriptionHandle, StartError> {
        self.start_with(handler, SubscriptionConfig::default())
    }

    /// Starts `handler` with `config`: it resumes from its checkpoint (or its `StartFrom` the
    /// first time), catches up, then follows the log live.
    pub fn start_with<H: EventHandler>(
        &self,
        handler: H,
        config: SubscriptionConfig,
    ) -> Result<SubscriptionHandle, StartError> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.get(H::NAME).is_some_and(|h| !h.is_finished()) {
            return Err(StartError::AlreadyRunning(H::NAME));
        }
        let (stop, stop_rx) = watch::channel(false);
        let status = StatusCell::new(H::NAME);
        let runner = Runner {
            handler,
            store: self.store.clone(),
            config,
            status: status.clone(),
            stop: stop_rx,
        };
        SubscriptionActor {
            runner: Some(Box::new(runner)),
            stop: stop.clone(),
            status: status.clone(),
        }
        .start();
        let handle = SubscriptionHandle {
            name: H::NAME,
            stop,
            status,
        };
        running.insert(H::NAME, handle.clone());
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

    /// Stops every subscription and waits for each.
    pub async fn stop_all(&self) {
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
