//! What a subscription reports about itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use serde::{Deserialize, Serialize};

use super::distributed::Partition;
use crate::metrics::SubscriptionMetrics;
use crate::store::LeaseInfo;

/// The lifecycle state of a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SubscriptionState {
    /// Started, reading its checkpoint.
    Starting,
    /// Reading events behind the durable head.
    CatchingUp,
    /// At the durable head, waiting for new events.
    Live,
    /// Running (catching up or live) with parked events that wait for a replay or a skip:
    /// `parked` and `parked_streams` say how many, `lag` how far behind it is.
    Parked,
    /// Stopped on request; its checkpoint is saved.
    Stopped,
    /// Stopped by an error it cannot get past (the message says which event and why).
    Failed(String),
    /// Waiting for the store, which is unreachable for now (a database server restart, a lost
    /// connection; the message says what the store reported). It retries from its checkpoint
    /// with a growing pause and goes on where it was once the store answers: nothing is skipped.
    Unavailable(String),
    /// Waiting as a standby: another process holds the subscription's lease (`holder` says
    /// which, and since when). It takes over within the lease's time-to-live when the holder
    /// stops, dies or loses its connection to the store.
    Standby,
}

/// A snapshot of a subscription's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SubscriptionStatus {
    /// The subscription's name.
    pub name: String,
    /// Its lifecycle state.
    pub state: SubscriptionState,
    /// The last committed checkpoint (every event up to it is handled and saved).
    pub checkpoint: u64,
    /// The last position handled (may be ahead of the checkpoint until the next commit).
    pub handled_up_to: u64,
    /// The durable head of the store when last seen.
    pub head: u64,
    /// Events handled, in total: carried over from the status record in the store when it
    /// starts. Events handled again after a crash (those after the last checkpoint) count again.
    pub events_handled: u64,
    /// How many times a handler panic restarted it from its checkpoint, in total.
    pub restarts: u64,
    /// How many times a failed event was retried, in total.
    #[serde(default)]
    pub retries: u64,
    /// How many events are parked now (durable: counted from the store at start).
    #[serde(default)]
    pub parked: u64,
    /// How many streams are parked now.
    #[serde(default)]
    pub parked_streams: u64,
    /// How many partitions (handlers working concurrently, by stream) it runs with.
    #[serde(default = "one")]
    pub partitions: u64,
    /// Set for one partition of a distributed subscription
    /// ([`Subscriptions::start_distributed`](super::Subscriptions::start_distributed)): which
    /// one, among how many. It handles only the events of the streams that
    /// [`partition_of`](super::partition_of) maps to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_of: Option<Partition>,
    /// Who runs the subscription, when the store has leases (PostgreSQL): this process's lease
    /// while it holds it, the holder's while it waits as a standby. `None` on a store without
    /// leases (the embedded store is open in one process only).
    #[serde(default)]
    pub holder: Option<LeaseInfo>,
    /// Set when the record is a broker inbox's (a JetStream consumer whose messages become
    /// events, feature `nats`), not a subscription's: where it is in the broker's stream. Its
    /// `events_handled` counts messages applied, `retries` failed attempts, `parked` parked
    /// messages (their `position` is the broker stream's sequence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<InboxProgress>,
}

/// Where a broker inbox is in the broker's stream, as its status record says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InboxProgress {
    /// The broker's stream (a JetStream stream) the inbox consumes.
    pub broker_stream: String,
    /// The broker stream's sequence of the last message the inbox applied, recognised as a
    /// duplicate or parked (0 before the first).
    pub last_sequence: u64,
    /// Messages of the broker's stream the inbox has not acknowledged yet (not delivered, or
    /// delivered and waiting for a retry), when last asked: its lag. `None` until known.
    pub pending: Option<u64>,
    /// Messages recognised as applied before (a redelivery or a republish), in total.
    pub duplicates: u64,
    /// The last failure (a handler error or a store error), if the last attempt failed.
    pub last_error: Option<String>,
}

impl InboxProgress {
    /// The progress of an inbox consuming `broker_stream`, before its first message.
    pub fn new(broker_stream: impl Into<String>) -> Self {
        InboxProgress {
            broker_stream: broker_stream.into(),
            ..Default::default()
        }
    }
}

fn one() -> u64 {
    1
}

impl SubscriptionStatus {
    /// How far behind the head the subscription is, in positions.
    ///
    /// For a broker inbox (it reads no log) it is the broker's count of messages it has not
    /// acknowledged yet, when known ([`InboxProgress::pending`]).
    pub fn lag(&self) -> u64 {
        match &self.inbox {
            Some(inbox) => inbox.pending.unwrap_or(0),
            None => self.head.saturating_sub(self.handled_up_to),
        }
    }
}

/// The status of subscription `name` before it starts.
pub(crate) fn initial(name: &str) -> SubscriptionStatus {
    SubscriptionStatus {
        name: name.to_owned(),
        state: SubscriptionState::Starting,
        checkpoint: 0,
        handled_up_to: 0,
        head: 0,
        events_handled: 0,
        restarts: 0,
        retries: 0,
        parked: 0,
        parked_streams: 0,
        partitions: 1,
        partition_of: None,
        holder: None,
        inbox: None,
    }
}

/// A status shared between the running subscription and whoever watches it: updates wake the
/// watchers (see [`watch`](Self::watch)), so waiting for progress never polls.
///
/// The progress of each event is recorded quietly ([`update_quietly`](Self::update_quietly))
/// and published by the next update, by [`publish`](Self::publish) at the end of each page and
/// before the loop waits (a handler that is not ready when first polled, a commit, a store read),
/// and at the latest [`QUIET_FOR`] after the last publication: a fast catch-up wakes its
/// watchers about once per page rather than once per event, and a watcher waits on progress the
/// loop has made at most until the event in hand is handled (and at least `QUIET_FOR` passed).
///
/// It also holds the subscription's metric handles: every update sets the lag and checkpoint
/// gauges from the status, so that they never disagree with it.
#[derive(Clone, Debug)]
pub(crate) struct StatusCell(
    Arc<watch::Sender<SubscriptionStatus>>,
    Arc<SubscriptionMetrics>,
    /// Quiet updates not published yet, and when the last publication was.
    Arc<Quiet>,
);

/// Progress recorded quietly is published at the latest this long after the last publication
/// (when the next event's progress is recorded).
pub(crate) const QUIET_FOR: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub(crate) struct Quiet {
    /// Whether a quiet update has not been published yet.
    pending: AtomicBool,
    /// When the watchers were last woken, in microseconds since `since`.
    woken: AtomicU64,
    since: Instant,
}

impl Quiet {
    fn now(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

impl StatusCell {
    pub fn new(name: &str) -> Self {
        let (sender, _) = watch::channel(initial(name));
        StatusCell(
            Arc::new(sender),
            Arc::new(SubscriptionMetrics::new(name)),
            Arc::new(Quiet {
                pending: AtomicBool::new(false),
                woken: AtomicU64::new(0),
                since: Instant::now(),
            }),
        )
    }

    /// The subscription's metric handles.
    pub fn metrics(&self) -> &SubscriptionMetrics {
        &self.1
    }

    pub fn get(&self) -> SubscriptionStatus {
        self.0.borrow().clone()
    }

    /// Changes the status and wakes its watchers (publishing quiet updates before it too).
    pub fn update(&self, f: impl FnOnce(&mut SubscriptionStatus)) {
        self.2.pending.store(false, Ordering::Relaxed);
        self.0.send_modify(|s| {
            f(s);
            self.1.progress(s.lag(), s.checkpoint);
        });
        self.2.woken.store(self.2.now(), Ordering::Relaxed);
    }

    /// Changes the status without waking its watchers (unless [`QUIET_FOR`] passed since they
    /// were last woken): [`get`](Self::get) shows the change at once, watchers are woken by the
    /// next [`update`](Self::update) or [`publish`](Self::publish).
    pub fn update_quietly(&self, f: impl FnOnce(&mut SubscriptionStatus)) {
        self.0.send_if_modified(|s| {
            f(s);
            self.1.progress(s.lag(), s.checkpoint);
            false
        });
        self.2.pending.store(true, Ordering::Relaxed);
        let quiet_for = self
            .2
            .now()
            .saturating_sub(self.2.woken.load(Ordering::Relaxed));
        if quiet_for >= QUIET_FOR.as_micros() as u64 {
            self.publish();
        }
    }

    /// Wakes the watchers if a quiet update has not been published yet.
    pub fn publish(&self) {
        if self.2.pending.swap(false, Ordering::Relaxed) {
            self.0.send_modify(|_| {});
            self.2.woken.store(self.2.now(), Ordering::Relaxed);
        }
    }

    /// A receiver woken by later updates and publications (quiet updates wake it only when published).
    pub fn watch(&self) -> watch::Receiver<SubscriptionStatus> {
        self.0.subscribe()
    }
}
