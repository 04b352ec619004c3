//! Durable subscriptions: handlers that remember their checkpoint, catch up on what they missed,
//! then follow the log live.
//!
//! A handler is a type with `#[derive(EventHandler)]` and one [`HandleEvent<E>`] impl per event type it
//! lists. [`Subscriptions`] runs each handler as an actix actor under its name; stopping and
//! starting one by name is how a service "goes down" and "comes back".
//!
//! Delivery is at-least-once for effects outside the store (after a crash, events after the last
//! checkpoint are handled again), and exactly-once for state the handler keeps through
//! [`EventContext`] (committed atomically with the checkpoint). See `docs/subscriptions.md`.

mod actor;
mod control;
mod distributed;
mod failure;
mod handler;
mod name;
mod runner;
mod status;
pub mod testing;
mod wait;

use std::time::Duration;

pub use self::actor::{
    GetStatus, StartError, Stop, SubscriptionActor, SubscriptionHandle, Subscriptions,
};
pub use self::distributed::{
    partition_name, partition_of, DistributedConfig, DistributedHandle, Partition, MAX_MEMBERS,
    MAX_PARTITIONS,
};
#[cfg(feature = "nats")]
pub(crate) use self::failure::{
    encode_parked, parked_key, parked_message_key, replay_key, replay_requests_in_store,
    status_write,
};
pub use self::failure::{
    parked_in_store, subscription_status_from_store, ControlError, FailurePolicy, ParkedEvent,
    ReplayOutcome, ResetPreview, ResetTo, RESERVED_PREFIX,
};
pub use self::handler::{
    EventContext, EventHandler, HandleEvent, HandlerError, HandlerFailure, Refused, StartFrom,
    Unavailable,
};
pub use self::name::{SubscriptionName, SubscriptionNameError, MAX_SUBSCRIPTION_NAME_LEN};
#[cfg(feature = "nats")]
pub(crate) use self::status::initial as status_cell_default;
pub use self::status::{InboxProgress, SubscriptionState, SubscriptionStatus};
pub use self::wait::{position_of, Among, WaitError};

/// Settings of one subscription.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SubscriptionConfig {
    /// The name to run the subscription under, instead of its handler's
    /// [`EventHandler::NAME`]: the same handler type runs as several subscriptions, each with
    /// its own checkpoint, state, status, parked events and lease. Default `None` (the
    /// handler's name).
    pub name: Option<SubscriptionName>,
    /// Events read per page. A subscription holds at most two pages in memory: the one it
    /// handles and the next, read meanwhile. Default 256.
    pub batch_size: usize,
    /// Commit the checkpoint after this many handled events. Default 1 000.
    ///
    /// Each commit is a durable write (an fsync). While catching up, the loop goes on handling
    /// the next events while the store writes a commit (at most one commit in flight; the
    /// status shows a checkpoint once it is stored). This also bounds what a crash makes an
    /// at-least-once handler see again: what was handled since the commit before the one in
    /// flight, so up to twice this many events (a partitioned subscription commits at the end
    /// of a page: up to twice `commit_every + batch_size - 1`), or twice `commit_interval` of
    /// them; and what an exactly-once projection holds uncommitted in memory (its pending
    /// writes and those of the commit in flight).
    pub commit_every: u64,
    /// ...or after this long, whichever comes first. Default 500 ms.
    pub commit_interval: Duration,
    /// How many handler panics are restarted before the subscription fails. Default 10.
    pub max_restarts: u64,
    /// Pause before a restart, times the number of restarts so far (at most 10×). Default 100 ms.
    pub restart_backoff: Duration,
    /// What a handler error does: stop (the default) or retry, then park the event's stream.
    pub failure_policy: FailurePolicy,
    /// How long the subscription's lease lasts unless renewed, on a store with leases
    /// (PostgreSQL), where any number of processes may start the same subscription and one
    /// runs it. The holder renews every third of it; a standby takes over at most this long
    /// after the holder died or lost the store (at once when it stops). Default 5 s.
    pub lease_ttl: Duration,
}

impl Default for SubscriptionConfig {
    fn default() -> Self {
        SubscriptionConfig {
            name: None,
            batch_size: 256,
            commit_every: 1000,
            commit_interval: Duration::from_millis(500),
            max_restarts: 10,
            restart_backoff: Duration::from_millis(100),
            failure_policy: FailurePolicy::Stop,
            lease_ttl: Duration::from_secs(5),
        }
    }
}

impl SubscriptionConfig {
    /// Runs the subscription under `name` instead of its handler's [`EventHandler::NAME`].
    ///
    /// ```
    /// use tidings::subscription::{SubscriptionConfig, SubscriptionName};
    /// // Rebuild the totals side by side with the running `totals`, then switch over.
    /// let config = SubscriptionConfig::default().name(SubscriptionName::new("totals-v2")?);
    /// assert_eq!(config.name.unwrap(), "totals-v2");
    /// # Ok::<(), tidings::subscription::SubscriptionNameError>(())
    /// ```
    #[must_use]
    pub fn name(mut self, name: SubscriptionName) -> Self {
        self.name = Some(name);
        self
    }

    /// Sets the page size.
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events.max(1);
        self
    }

    /// Sets how many events are handled between checkpoint commits.
    #[must_use]
    pub fn commit_every(mut self, events: u64) -> Self {
        self.commit_every = events.max(1);
        self
    }

    /// Sets the longest time between checkpoint commits.
    #[must_use]
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Sets how many panics are restarted.
    #[must_use]
    pub fn max_restarts(mut self, restarts: u64) -> Self {
        self.max_restarts = restarts;
        self
    }

    /// Sets the pause before a restart.
    #[must_use]
    pub fn restart_backoff(mut self, backoff: Duration) -> Self {
        self.restart_backoff = backoff;
        self
    }

    /// Sets what a handler error does.
    #[must_use]
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Sets how long the lease lasts unless renewed (at least 30 ms).
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(30));
        self
    }
}

/// The guide's examples are compiled (and run, each on a temporary store) as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/subscriptions.md")]
pub struct SubscriptionsGuide;
