//! The subscription loop: catch up from the checkpoint, follow the durable head, commit.
//!
//! There is no separate "live" channel: the loop always reads the log by position, up to the
//! durable head, and when it reaches the head it waits for the head to move. So the switch from
//! catching up to live cannot skip or repeat an event however appends race it (the failure mode
//! of push-based designs, commanded/eventstore#327).

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::join_all;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, info_span, warn, Instrument};
use uuid::Uuid;

use super::control::{self, Operation, Reply, Request};
use super::failure::RESERVED_PREFIX;
use super::failure::{
    encode_parked, parked_in_store, parked_key, parked_stream_key, parked_streams_in_store,
    replay_key, replay_requests_in_store, status_write, subscription_status_from_store,
    ControlError, FailurePolicy, ParkedEvent, ReplayOutcome,
};
use super::handler::{drain, merge, EventContext, EventHandler, HandlerFailure, StateBatch};
use super::status::{StatusCell, SubscriptionState, SubscriptionStatus};
use super::{StartFrom, SubscriptionConfig};
use crate::panic::panic_message;
use crate::store::{
    EventStore, Filter, HeadWatch, Lease, LeaseAttempt, LeaseHolder, LeaseInfo, RecordedEvent,
    StoreError,
};

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
    /// Handled: its state writes.
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
    /// The store is unreachable for now (a database restart, a lost connection): retry from
    /// the checkpoint until it answers again, however long that takes.
    Unavailable(String),
    /// Something the subscription cannot get past.
    Fatal(String),
    /// This loop's lease is gone (another process took it, or it could not be renewed in
    /// time): back to standby, without committing anything more.
    LeaseLost(String),
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Self {
        if let StoreError::Fenced { generation, .. } = e {
            return Fault::LeaseLost(format!(
                "a commit was fenced: the lease moved past generation {generation}"
            ));
        }
        if e.is_transient() {
            Fault::Unavailable(crate::store::error_chain(&e))
        } else {
            Fault::Fatal(format!("store error: {}", crate::store::error_chain(&e)))
        }
    }
}

/// The longest pause between attempts to reach an unavailable store.
const MAX_UNAVAILABLE_BACKOFF: Duration = Duration::from_secs(5);

/// The first pause before a handler whose store was unavailable tries its event again.
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(100);

/// Whether a handler failed only because the store was unreachable for now: a transient
/// [`StoreError`] from its state, or returned by the handler itself (from a store read); or
/// because something else it needs is, as it says with [`Unavailable`](super::Unavailable).
pub(crate) fn is_transient(failure: &HandlerFailure) -> bool {
    match failure {
        HandlerFailure::Store(e) => e.is_transient(),
        HandlerFailure::Handler(e) => {
            e.is::<super::Unavailable>()
                || e.downcast_ref::<StoreError>()
                    .is_some_and(StoreError::is_transient)
        }
        _ => false,
    }
}

/// Whether retrying cannot help: an event that does not decode, or a handler's
/// [`Refused`](super::Refused).
pub(crate) fn is_final(failure: &HandlerFailure) -> bool {
    match failure {
        HandlerFailure::Decode(_) => true,
        HandlerFailure::Handler(e) => e.is::<super::Refused>(),
        _ => false,
    }
}

pub(crate) struct Runner<H: EventHandler> {
    /// The subscription's name: where its checkpoint, state and lease are kept.
    pub name: super::SubscriptionName,
    /// One handler per partition (one for an unpartitioned subscription); the events of a
    /// stream always go to the same one.
    pub handlers: Vec<H>,
    pub store: Arc<dyn EventStore>,
    pub config: SubscriptionConfig,
    pub status: StatusCell,
    pub stop: watch::Receiver<bool>,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub commands_open: bool,
    /// Streams with parked events (loaded from the store at each run).
    pub parked_streams: BTreeSet<String>,
    /// Held for the whole life of the loop: operations on the stopped subscription's stored
    /// checkpoint take it too, so they never interleave with a loop that is starting.
    pub guard: Arc<tokio::sync::Mutex<()>>,
    /// The handler state this run committed lately, so that reading it back does not go to the
    /// store (the store holds the same values: only this run writes the subscription's state
    /// while it runs, operations on a stopped one wait for it). Cleared at each run's start and
    /// when it outgrows [`CACHE_ENTRIES`].
    pub cache: StateBatch,
    /// Pages still to handle one event at a time after a round found a key shared by
    /// partitions (so that a projection with such keys does not handle every page twice).
    pub serial_pages: u32,
    /// This loop as a lease holder (its own instance id: each started subscription is one
    /// holder).
    pub holder: LeaseHolder,
    /// The lease while this loop holds it; `None` on a store without leases.
    pub lease: Option<Lease>,
    /// While a run holds the lease: set (with the reason) by the task that renews it when it
    /// is lost.
    pub lost: Option<watch::Receiver<Option<String>>>,
}

/// How waiting for the lease ended.
enum Taken {
    /// The lease is this loop's (or the store has no leases): run.
    Held,
    /// A stop was requested while waiting.
    Stopped,
    /// The store refused the lease for good (the message says why).
    Failed(String),
}

/// Pages handled one event at a time after a round found a key shared by partitions.
const SERIAL_PAGES_AFTER_CONFLICT: u32 = 16;

/// The most entries [`Runner::cache`] keeps.
const CACHE_ENTRIES: usize = 16 * 1024;

/// What to do after one event of the sequential loop.
enum Flow {
    /// The event is handled (or parked): the checkpoint moved to it.
    Next,
    /// A stop was requested while it was being retried: it is not handled.
    Stopped,
}

impl<H: EventHandler> Runner<H> {
    /// Runs until stopped or failed; restarts after handler panics.
    pub async fn run(mut self) {
        let span = info_span!("subscription", name = %self.name);
        async move {
            let _guard = self.guard.clone().lock_owned().await;
            loop {
                match self.take_lease().await {
                    Taken::Held => {}
                    Taken::Stopped => {
                        self.status.update(|s| s.state = SubscriptionState::Stopped);
                        return;
                    }
                    Taken::Failed(reason) => {
                        error!(reason = %reason, "subscription failed");
                        self.status
                            .update(|s| s.state = SubscriptionState::Failed(reason));
                        return;
                    }
                }
                match self.run_holding().await {
                    None => {
                        self.release_lease().await;
                        return;
                    }
                    Some(reason) => {
                        warn!(reason = %reason, "lost the subscription's lease; standing by");
                        self.lease = None;
                        self.status.update(|s| {
                            s.state = SubscriptionState::Standby;
                            s.holder = None;
                        });
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Waits as a standby until this loop holds the subscription's lease (at once on a store
    /// without leases). Operations sent to a standby are refused: the holder applies them.
    async fn take_lease(&mut self) -> Taken {
        let ttl = self.config.lease_ttl;
        // A standby asks again ten times per time-to-live: it takes over at most a tenth of
        // it after the lease expires.
        let pause = ttl / 10;
        let mut unavailable = 0u32;
        let mut reported: Option<u64> = None;
        loop {
            if self.stop_requested() {
                return Taken::Stopped;
            }
            match self
                .store
                .acquire_lease(&self.name, &self.holder, ttl)
                .await
            {
                Ok(LeaseAttempt::Acquired(lease)) => {
                    info!(
                        generation = lease.generation,
                        "took the subscription's lease"
                    );
                    let info = LeaseInfo {
                        name: lease.name.clone(),
                        generation: lease.generation,
                        holder: lease.holder.clone(),
                        acquired_micros: lease.acquired_micros,
                        expires_micros: lease
                            .acquired_micros
                            .saturating_add(u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX)),
                        held: true,
                    };
                    self.status.update(|s| {
                        s.state = SubscriptionState::Starting;
                        s.holder = Some(info);
                    });
                    self.lease = Some(lease);
                    return Taken::Held;
                }
                Ok(LeaseAttempt::HeldBy(info)) => {
                    unavailable = 0;
                    if reported != Some(info.generation) {
                        info!(
                            holder = %info.holder,
                            generation = info.generation,
                            "another process runs the subscription; standing by"
                        );
                        reported = Some(info.generation);
                    }
                    let holder = info.holder.to_string();
                    self.status.update(|s| {
                        s.state = SubscriptionState::Standby;
                        s.holder = Some(info);
                    });
                    while let Ok(command) = self.commands.try_recv() {
                        refuse(command, &holder);
                    }
                    if self.sleep_or_stop(pause).await {
                        return Taken::Stopped;
                    }
                }
                Err(StoreError::Unsupported(_)) => {
                    self.lease = None;
                    return Taken::Held;
                }
                Err(e) if e.is_transient() => {
                    if self.wait_for_store(&mut unavailable, &e.to_string()).await {
                        return Taken::Stopped;
                    }
                }
                Err(e) => return Taken::Failed(format!("could not take the lease: {e}")),
            }
        }
    }

    /// Gives the lease up (so that a standby takes over at once), if this loop holds one.
    async fn release_lease(&mut self) {
        if let Some(lease) = self.lease.take() {
            if let Err(e) = self.store.release_lease(&lease).await {
                warn!(error = %e, "could not give the lease up; a standby takes over when it expires");
            }
        }
    }

    /// Runs while holding the lease (or on a store without leases). Returns `None` when the
    /// subscription stopped or failed, and why when the lease was lost.
    async fn run_holding(&mut self) -> Option<String> {
        {
            // Attempts in a row that found the store unavailable (reset by a run that starts).
            let mut unavailable = 0u32;
            loop {
                match self.restore_counters().await {
                    Ok(()) => break,
                    Err(e) if e.is_transient() => {
                        if self.wait_for_store(&mut unavailable, &e.to_string()).await {
                            self.status.update(|s| s.state = SubscriptionState::Stopped);
                            return None;
                        }
                    }
                    Err(e) => {
                        let reason = format!("store error: {e}");
                        error!(reason = %reason, "subscription failed");
                        self.status
                            .update(|s| s.state = SubscriptionState::Failed(reason));
                        return None;
                    }
                }
            }
            // Panics restarted in this process: the limit and the backoff go by these (the
            // total in the status carries over from earlier processes).
            let mut restarts = 0u64;
            loop {
                let outcome = self.run_once_held().await;
                if !matches!(outcome, Err(Fault::Unavailable(_))) {
                    unavailable = 0;
                }
                match outcome {
                    Err(Fault::LeaseLost(reason)) => return Some(reason),
                    Err(Fault::Unavailable(reason)) => {
                        if self.wait_for_store(&mut unavailable, &reason).await {
                            self.status.update(|s| s.state = SubscriptionState::Stopped);
                            info!("subscription stopped while the store was unavailable");
                            return None;
                        }
                    }
                    Ok(()) => {
                        self.status.update(|s| s.state = SubscriptionState::Stopped);
                        info!("subscription stopped");
                        return None;
                    }
                    Err(Fault::Panicked { position, message }) => {
                        restarts += 1;
                        self.status.update(|s| s.restarts += 1);
                        self.status.metrics().restarts.increment(1);
                        error!(position, restarts, panic = %message, "handler panicked; restarting from the checkpoint");
                        if restarts > self.config.max_restarts {
                            let reason = format!(
                                "handler panicked at position {position} ({message}); gave up after {} restarts",
                                self.config.max_restarts
                            );
                            let state = SubscriptionState::Failed(reason);
                            self.record_final(state.clone()).await;
                            self.status.update(|s| s.state = state);
                            return None;
                        }
                        let backoff = self.config.restart_backoff * restarts.min(10) as u32;
                        if self.sleep_or_stop(backoff).await {
                            self.record_final(SubscriptionState::Stopped).await;
                            self.status.update(|s| s.state = SubscriptionState::Stopped);
                            return None;
                        }
                    }
                    Err(Fault::Fatal(reason)) => {
                        error!(reason = %reason, "subscription failed");
                        self.status
                            .update(|s| s.state = SubscriptionState::Failed(reason));
                        return None;
                    }
                }
            }
        }
    }

    /// One run of the loop while a task beside it renews the lease. When the lease is lost
    /// (a renewal finds it taken, or none succeeded for two thirds of its time-to-live, before
    /// it may expire), the loop stops at its next page or wait with [`Fault::LeaseLost`],
    /// committing nothing more; one that does not stop within a third of the time-to-live (a
    /// page of slow events) is dropped where it is. Commits are fenced as well, so a loop that
    /// has not noticed yet cannot commit after a takeover.
    async fn run_once_held(&mut self) -> Result<(), Fault> {
        let Some(lease) = self.lease.clone() else {
            return self.run_once().await;
        };
        let ttl = self.config.lease_ttl;
        // After a wait for the store, the lease may have expired meanwhile: renewed first, or
        // found taken (an expired lease that nobody took is renewed).
        let sent = tokio::time::Instant::now();
        if !self.store.renew_lease(&lease, ttl).await? {
            return Err(Fault::LeaseLost("another process took the lease".into()));
        }
        let (lost_tx, lost_rx) = watch::channel(None::<String>);
        self.lost = Some(lost_rx.clone());
        let keeper = actix::spawn(keep_lease(
            self.store.clone(),
            lease,
            ttl,
            sent,
            lost_tx,
            self.status.clone(),
        ));
        let outcome = tokio::select! {
            outcome = self.run_once() => outcome,
            reason = backstop(lost_rx, ttl / 3) => Err(Fault::LeaseLost(reason)),
        };
        keeper.abort();
        self.lost = None;
        outcome
    }

    /// Why the lease was lost, once the renewing task said so.
    fn lease_lost(&self) -> Option<String> {
        self.lost.as_ref().and_then(|l| l.borrow().clone())
    }

    /// Reports the store unavailable and waits before the next attempt (a growing pause, up to
    /// [`MAX_UNAVAILABLE_BACKOFF`]); returns true if a stop was requested meanwhile. What was
    /// handled after the last commit is handled again from the checkpoint, as after a restart.
    async fn wait_for_store(&mut self, attempts: &mut u32, reason: &str) -> bool {
        *attempts = attempts.saturating_add(1);
        if *attempts == 1 || attempts.is_power_of_two() {
            warn!(reason = %reason, attempts = *attempts, "the store is unavailable; retrying from the checkpoint");
        }
        let reason = reason.to_owned();
        self.status
            .update(|s| s.state = SubscriptionState::Unavailable(reason));
        // At least UNAVAILABLE_PAUSE per attempt, however small the restart backoff: a server
        // that is down must not be asked again in a tight loop.
        let backoff = self
            .config
            .restart_backoff
            .max(UNAVAILABLE_PAUSE)
            .saturating_mul(*attempts)
            .min(MAX_UNAVAILABLE_BACKOFF);
        self.sleep_or_stop(backoff).await
    }

    /// Carries the counters of the last status record over (handled events, retries and
    /// restarts are totals, not per process).
    async fn restore_counters(&self) -> Result<(), StoreError> {
        let stored = match subscription_status_from_store(&*self.store, &self.name).await {
            Ok(stored) => stored,
            // The record is advisory (written by a newer version, say): start the totals anew.
            Err(e @ StoreError::Codec { .. }) => {
                let reason = crate::store::error_chain(&e);
                warn!(%reason, "the stored status record does not decode; totals start at 0");
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(stored) = stored {
            self.status.update(|s| {
                s.events_handled = stored.events_handled;
                s.retries = stored.retries;
                s.restarts = stored.restarts;
            });
        }
        Ok(())
    }

    /// Writes the status record at this instance's last committed checkpoint (fenced by it, so
    /// that a zombie instance cannot overwrite the status of a newer one), for a run that ended
    /// without a commit of its own. Best effort: the status in memory is the authority.
    async fn record_final(&self, state: SubscriptionState) {
        let mut status = self.status.get();
        status.state = state;
        let current = status.checkpoint;
        let record = status_write(&status);
        if let Err(e) = self
            .commit_to_store(Some(current), current, vec![record])
            .await
        {
            warn!(error = %e, "could not record the final status");
        }
    }

    /// Commits the checkpoint and state writes: fenced by the lease while this loop holds one.
    async fn commit_to_store(
        &self,
        expected: Option<u64>,
        position: u64,
        writes: Vec<crate::store::StateWrite>,
    ) -> Result<(), StoreError> {
        match &self.lease {
            Some(lease) => {
                self.store
                    .commit_checkpoint_fenced(lease, &self.name, expected, position, writes)
                    .await
            }
            None => {
                self.store
                    .commit_checkpoint(&self.name, expected, position, writes)
                    .await
            }
        }
    }

    /// Sleeps, or returns true early if a stop is requested.
    async fn sleep_or_stop(&mut self, duration: Duration) -> bool {
        sleep_or_stop(&mut self.stop, duration).await
    }

    fn stop_requested(&self) -> bool {
        *self.stop.borrow()
    }

    /// The partition (handler) of a stream's events.
    fn partition_of(&self, stream: &str) -> usize {
        partition_of(stream, self.handlers.len())
    }

    /// Loads the checkpoint, parked streams and deferred replays: the start of every run.
    /// Returns the checkpoint and the last commit.
    async fn begin(&mut self) -> Result<(u64, Committed), Fault> {
        let name = self.name.clone();
        let name = name.as_str();
        self.cache.clear();
        let stored = self.store.load_checkpoint(name).await?;
        let checkpoint = match stored {
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
            s.state = running_state(s, false);
        });
        if stored.is_none() && checkpoint <= head {
            // Record where a new subscription starts, so that a restart before the first event
            // does not recompute `End` and skip what was appended meanwhile. (A start position
            // beyond the head is recorded once the head gets there: the store refuses a
            // checkpoint past its head, and a restart computes the same position again.)
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
        info!(
            checkpoint,
            partitions = self.handlers.len(),
            "subscription started"
        );
        Ok((checkpoint, committed))
    }

    /// One run from the stored checkpoint. `Ok` means stopped on request.
    ///
    /// Page by page: with one handler the events are handled one at a time (see
    /// [`sequential`](Self::sequential)); with several, a page is a round over the partitions
    /// (see [`round`](Self::round)). At the head it waits for the head to move.
    async fn run_once(&mut self) -> Result<(), Fault> {
        let (mut checkpoint, mut committed) = self.begin().await?;
        let filter = H::filter();
        let mut heads = self.store.watch_head();
        let mut pending = StateBatch::new();
        let mut uncommitted = 0u64;
        // When requests from other processes were last looked for (only while holding a lease:
        // without one, no other process can reach the subscription).
        let mut requests_seen: Option<Instant> = None;

        loop {
            if let Some(reason) = self.lease_lost() {
                return Err(Fault::LeaseLost(reason));
            }
            if self.stop_requested() {
                return self
                    .commit_stopped(&mut committed, checkpoint, &mut pending)
                    .await;
            }
            while let Ok(command) = self.commands.try_recv() {
                self.apply(command, &mut committed, checkpoint, &mut pending)
                    .await?;
            }
            if self.lease.is_some() && requests_seen.is_none_or(|t| t.elapsed() >= control::POLL) {
                self.apply_requests(&mut committed, checkpoint, &mut pending)
                    .await?;
                requests_seen = Some(Instant::now());
            }
            let page = self
                .store
                .read_all(checkpoint + 1, self.config.batch_size, &filter)
                .await?;
            // The page's first event is the oldest not handled yet (none: caught up).
            self.status
                .metrics()
                .oldest_unhandled(page.events.first().map(|e| e.timestamp_micros));
            let end = if self.handlers.len() > 1 && self.serial_pages == 0 {
                let (end, settled) = self
                    .round(&page.events, &mut committed, &mut checkpoint, &mut pending)
                    .await?;
                uncommitted += end.handled;
                if end.stopped || settled == page.events.len() {
                    end
                } else {
                    // A stale read: the rest of the page one event at a time.
                    self.sequential(
                        &page.events[settled..],
                        &mut committed,
                        &mut checkpoint,
                        &mut pending,
                        &mut uncommitted,
                    )
                    .await?
                }
            } else {
                self.serial_pages = self.serial_pages.saturating_sub(1);
                self.sequential(
                    &page.events,
                    &mut committed,
                    &mut checkpoint,
                    &mut pending,
                    &mut uncommitted,
                )
                .await?
            };
            if end.stopped {
                continue;
            }
            // Every position before next_position has been examined, the filtered-out ones too.
            checkpoint = checkpoint.max(page.next_position - 1);
            self.status.update(|s| {
                s.head = page.head;
                s.handled_up_to = checkpoint;
            });
            if uncommitted >= self.config.commit_every
                || committed.at.elapsed() >= self.config.commit_interval
            {
                self.commit(&mut committed, checkpoint, &mut pending)
                    .await?;
                uncommitted = 0;
            }
            if !page.is_end() {
                continue;
            }
            self.status.metrics().oldest_unhandled(None);
            self.wait_at_head(
                &mut heads,
                &mut committed,
                checkpoint,
                &mut pending,
                &mut uncommitted,
            )
            .await?;
        }
    }

    /// Handles one page one event at a time, applying commands between events and committing
    /// every `commit_every` events or `commit_interval`.
    async fn sequential(
        &mut self,
        events: &[RecordedEvent],
        committed: &mut Committed,
        checkpoint: &mut u64,
        pending: &mut StateBatch,
        uncommitted: &mut u64,
    ) -> Result<RoundEnd, Fault> {
        let mut end = RoundEnd::default();
        for event in events {
            if self.stop_requested() {
                end.stopped = true;
                return Ok(end);
            }
            while let Ok(command) = self.commands.try_recv() {
                self.apply(command, committed, *checkpoint, pending).await?;
            }
            let partition = self.partition_of(&event.stream_id);
            match self
                .step(event, partition, committed, checkpoint, pending)
                .await?
            {
                Flow::Next => {
                    *uncommitted += 1;
                    end.handled += 1;
                }
                Flow::Stopped => {
                    end.stopped = true;
                    return Ok(end);
                }
            }
            if *uncommitted >= self.config.commit_every
                || committed.at.elapsed() >= self.config.commit_interval
            {
                self.commit(committed, *checkpoint, pending).await?;
                *uncommitted = 0;
            }
        }
        Ok(end)
    }

    /// Commits on a stop request. The status cell says "stopped" only once this commit is done
    /// (whoever waits for the stop relies on the checkpoint being saved); the record says it now.
    async fn commit_stopped(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
    ) -> Result<(), Fault> {
        let state = Some(SubscriptionState::Stopped);
        self.commit_forced(committed, checkpoint, pending, state)
            .await
    }

    /// At the head: waits for more events, a command or a stop, committing what is pending
    /// when its time comes.
    async fn wait_at_head(
        &mut self,
        heads: &mut HeadWatch,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
        uncommitted: &mut u64,
    ) -> Result<(), Fault> {
        self.status.update(|s| s.state = running_state(s, true));
        loop {
            let deadline = committed.at + self.config.commit_interval;
            let dirty = checkpoint != committed.position || !pending.is_empty();
            let open = self.commands_open;
            let mut lost = self.lost.clone();
            let lease_lost = async move {
                match lost.as_mut() {
                    Some(lost) => {
                        let _ = lost.wait_for(Option::is_some).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Back to the loop, which sees the lease lost.
                _ = lease_lost => {}
                changed = heads.changed() => {
                    if changed.is_err() {
                        warn!("the store closed; stopping");
                        self.commit(committed, checkpoint, pending).await.ok();
                        return Err(Fault::Fatal("the store was closed".into()));
                    }
                }
                _ = self.stop.changed() => {}
                command = self.commands.recv(), if open => {
                    match command {
                        Some(command) => {
                            self.apply(command, committed, checkpoint, pending).await?;
                        }
                        None => self.commands_open = false,
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()), if dirty => {
                    self.commit(committed, checkpoint, pending).await?;
                    *uncommitted = 0;
                }
                // Requests from other processes, looked for here without reading the log again.
                _ = tokio::time::sleep(control::POLL), if self.lease.is_some() => {
                    self.apply_requests(committed, checkpoint, pending).await?;
                    continue;
                }
            }
            break;
        }
        if heads.current() > checkpoint {
            self.status.update(|s| s.state = running_state(s, false));
        }
        Ok(())
    }

    /// Handles (or parks) one event with the handler of `partition`, moving `checkpoint` to it.
    /// A panic, or a failure under `FailurePolicy::Stop`, commits the progress before the event
    /// and ends the run.
    async fn step(
        &mut self,
        event: &RecordedEvent,
        partition: usize,
        committed: &mut Committed,
        checkpoint: &mut u64,
        pending: &mut StateBatch,
    ) -> Result<Flow, Fault> {
        let position = event.position;
        if self.parked_streams.contains(&event.stream_id) {
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
                self.status.update(|s| {
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

    /// Commits the progress before a failing event with the `Failed` state, and returns the
    /// fault that ends the run.
    async fn fail_at(
        &mut self,
        committed: &mut Committed,
        checkpoint: u64,
        pending: &mut StateBatch,
        reason: String,
    ) -> Fault {
        let state = Some(SubscriptionState::Failed(reason.clone()));
        match self
            .commit_forced(committed, checkpoint, pending, state)
            .await
        {
            Ok(()) => Fault::Fatal(reason),
            Err(fault) => fault,
        }
    }

    /// Parks an event whose handling failed, with every later event of its stream.
    fn park_failed(&mut self, event: &RecordedEvent, reason: &str, pending: &mut StateBatch) {
        error!(position = event.position, stream = %event.stream_id, reason = %reason, "event parked with the rest of its stream");
        park(pending, event, reason);
        self.parked_streams.insert(event.stream_id.clone());
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
    async fn park_behind(
        &mut self,
        event: &RecordedEvent,
        pending: &mut StateBatch,
    ) -> Result<(), Fault> {
        let key = parked_key(event.position);
        if !pending.contains_key(&key) && self.store.load_state(&self.name, &key).await?.is_none() {
            park(pending, event, "an earlier event of its stream is parked");
            self.status.update(|s| s.parked += 1);
            self.status.metrics().parked.increment(1);
        }
        debug!(position = event.position, stream = %event.stream_id, "parked behind its stream");
        Ok(())
    }

    /// The handler of `partition`, with what it needs to handle events.
    fn worker(&mut self, partition: usize) -> Worker<'_, H> {
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

    /// Handles one page over the partitions, as a round.
    ///
    /// Each round hands every partition its events of the page, in order, and runs the
    /// partitions concurrently; then the results are taken in position order up to the first
    /// event that is not handled (a stop, a panic, a failure under `Stop`). The checkpoint never
    /// passes an event that is not handled, and only the state writes of events at or before
    /// the checkpoint are committed with it: exactly-once state stays exactly-once.
    ///
    /// Returns what it did and how many of `events` it settled: fewer than all (and not
    /// stopped) after a stale read, the rest to be handled one at a time.
    async fn round(
        &mut self,
        events: &[RecordedEvent],
        committed: &mut Committed,
        checkpoint: &mut u64,
        pending: &mut StateBatch,
    ) -> Result<(RoundEnd, usize), Fault> {
        let n = self.handlers.len();
        let mut queues: Vec<Vec<&RecordedEvent>> = vec![Vec::new(); n];
        for event in events {
            queues[partition_of(&event.stream_id, n)].push(event);
        }
        // The first position that must not be handled in this round (a panic or a failure
        // under `Stop` before it): the partitions stop there, and nothing after it counts.
        let halt = AtomicU64::new(u64::MAX);
        let seen = Mutex::new(Accesses::new());
        let results: Vec<Vec<(u64, Outcome)>> = {
            let store = &*self.store;
            let name: &str = &self.name;
            let policy = &self.config.failure_policy;
            let status = &self.status;
            let cache = &self.cache;
            let parked = &self.parked_streams;
            let generation = self.lease.as_ref().map(|l| l.generation);
            let shared: &StateBatch = pending;
            let (halt, seen) = (&halt, &seen);
            let lanes = self.handlers.iter_mut().zip(queues).enumerate().map(
                |(partition, (handler, queue))| {
                    let worker = Worker {
                        name,
                        handler,
                        store,
                        policy,
                        status,
                        cache,
                        stop: self.stop.clone(),
                        reads: Vec::new(),
                        generation,
                    };
                    lane(worker, partition, queue, shared, parked, halt, seen)
                },
            );
            join_all(lanes).await
        };
        let mut outcomes: BTreeMap<u64, Outcome> = results.into_iter().flatten().collect();
        // A stale read (a key an earlier event of another partition wrote in this round): from
        // that event on, the lanes' results are dropped and the caller handles the rest of the
        // page one event at a time.
        let redo_from = shared_key_conflict(events, &outcomes, n);
        if let Some(position) = redo_from {
            warn!(
                position,
                "state keys shared by streams of different partitions: handling the rest of the \
                 page and the next {SERIAL_PAGES_AFTER_CONFLICT} one event at a time (give each \
                 stream its own keys to keep the partitions parallel)"
            );
            self.serial_pages = SERIAL_PAGES_AFTER_CONFLICT;
        }
        let mut end = RoundEnd::default();
        for (settled, event) in events.iter().enumerate() {
            let position = event.position;
            if redo_from.is_some_and(|from| position >= from) {
                return Ok((end, settled));
            }
            match outcomes.remove(&position).map(|o| o.kind) {
                Some(OutcomeKind::Handled(writes)) => {
                    merge(pending, writes);
                    self.status.update(|s| s.events_handled += 1);
                    self.status.metrics().handled.increment(1);
                }
                Some(OutcomeKind::Behind) => self.park_behind(event, pending).await?,
                Some(OutcomeKind::Parked(reason)) => self.park_failed(event, &reason, pending),
                Some(OutcomeKind::Failed(reason)) => {
                    *checkpoint = position - 1;
                    return Err(self.fail_at(committed, *checkpoint, pending, reason).await);
                }
                Some(OutcomeKind::Panicked(message)) => {
                    *checkpoint = position - 1;
                    self.commit(committed, *checkpoint, pending).await?;
                    return Err(Fault::Panicked { position, message });
                }
                None => {
                    // Not handled: a stop came first.
                    *checkpoint = position - 1;
                    end.stopped = true;
                    return Ok((end, settled));
                }
            }
            *checkpoint = position;
            end.handled += 1;
            self.status.update(|s| s.handled_up_to = position);
        }
        Ok((end, events.len()))
    }
}

/// What handling one page did.
#[derive(Default)]
struct RoundEnd {
    /// Events handled or parked.
    handled: u64,
    /// A stop came before the end of the page.
    stopped: bool,
}

/// The result of one event in a partition's lane, with the state keys it read (in every
/// attempt: a stale read can also make an event fail).
struct Outcome {
    kind: OutcomeKind,
    reads: Vec<Vec<u8>>,
}

enum OutcomeKind {
    /// Handled: its state writes.
    Handled(StateBatch),
    /// An earlier event of its stream is parked.
    Behind,
    /// It failed and is parked (with the rest of its stream), for this reason.
    Parked(String),
    /// It failed under `FailurePolicy::Stop`, for this reason.
    Failed(String),
    /// The handler panicked.
    Panicked(String),
}

/// One access to a state key by an event of a round.
#[derive(Clone, Copy)]
struct Access {
    partition: usize,
    position: u64,
    wrote: bool,
}

/// Accesses to state keys in a round, by key.
type Accesses = BTreeMap<Vec<u8>, Vec<Access>>;

/// One partition's share of a round: its events in order, until a stop or the halt position.
///
/// After each event it records the keys the event touched in `seen` (shared by the lanes, which
/// run on one task), and lowers `halt` to the first stale read they reveal, so that the lanes
/// stop early: from there the round is handled one event at a time.
async fn lane<H: EventHandler>(
    mut worker: Worker<'_, H>,
    partition: usize,
    queue: Vec<&RecordedEvent>,
    pending: &StateBatch,
    parked: &BTreeSet<String>,
    halt: &AtomicU64,
    seen: &Mutex<Accesses>,
) -> Vec<(u64, Outcome)> {
    let mut out = Vec::with_capacity(queue.len());
    let mut round = StateBatch::new();
    let mut newly_parked: BTreeSet<&str> = BTreeSet::new();
    for event in queue {
        let position = event.position;
        if *worker.stop.borrow() || position >= halt.load(Ordering::SeqCst) {
            break;
        }
        if parked.contains(&event.stream_id) || newly_parked.contains(event.stream_id.as_str()) {
            let outcome = Outcome {
                kind: OutcomeKind::Behind,
                reads: Vec::new(),
            };
            out.push((position, outcome));
            continue;
        }
        let attempt = worker.attempt(event, pending, Some(&round), true).await;
        let reads = std::mem::take(&mut worker.reads);
        let (kind, last) = match attempt {
            Attempt::Handled(writes) => {
                round.extend(writes.iter().map(|(k, v)| (k.clone(), v.clone())));
                (OutcomeKind::Handled(writes), false)
            }
            Attempt::Failed(failure) => {
                let reason = describe(position, &event.event_type, &failure);
                if *worker.policy == FailurePolicy::Stop {
                    halt.fetch_min(position, Ordering::SeqCst);
                    (OutcomeKind::Failed(reason), true)
                } else {
                    newly_parked.insert(&event.stream_id);
                    (OutcomeKind::Parked(reason), false)
                }
            }
            Attempt::Panicked(message) => {
                halt.fetch_min(position, Ordering::SeqCst);
                (OutcomeKind::Panicked(message), true)
            }
            Attempt::Stopped => break,
        };
        let outcome = Outcome { kind, reads };
        {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            let mut keys = Vec::new();
            for (key, wrote) in outcome.touched() {
                let access = Access {
                    partition,
                    position,
                    wrote,
                };
                seen.entry(key.to_vec()).or_default().push(access);
                keys.push(key);
            }
            if let Some(stale) = keys.iter().filter_map(|k| first_stale(&seen[*k])).min() {
                halt.fetch_min(stale, Ordering::SeqCst);
            }
        }
        out.push((position, outcome));
        if last {
            break;
        }
    }
    out
}

impl Outcome {
    /// The keys this event touched, and whether it wrote each.
    fn touched(&self) -> impl Iterator<Item = (&[u8], bool)> {
        let writes = match &self.kind {
            OutcomeKind::Handled(writes) => Some(writes.keys().map(|k| (k.as_slice(), true))),
            _ => None,
        };
        writes
            .into_iter()
            .flatten()
            .chain(self.reads.iter().map(|k| (k.as_slice(), false)))
    }
}

/// The first stale read among the accesses to one key: a read by an event that an earlier event
/// of ANOTHER partition wrote the key before (one worker would have shown it that write; the
/// round did not). Reads of a key written only later, or only by the reader's own partition
/// (whose earlier writes it sees), are what one worker sees too; so are blind writes (the
/// writes are merged in position order).
fn first_stale(accesses: &[Access]) -> Option<u64> {
    let mut first_write: BTreeMap<usize, u64> = BTreeMap::new();
    for a in accesses.iter().filter(|a| a.wrote) {
        let first = first_write.entry(a.partition).or_insert(a.position);
        *first = (*first).min(a.position);
    }
    accesses
        .iter()
        .filter(|r| !r.wrote)
        .filter(|r| {
            first_write
                .iter()
                .any(|(partition, written)| *partition != r.partition && *written < r.position)
        })
        .map(|r| r.position)
        .min()
}

/// The first position whose event read a state key stale (see [`first_stale`]), if any: that
/// event and every later one are handled again, one at a time. Reads of events that failed or
/// panicked count too: a stale read may be why.
fn shared_key_conflict(
    events: &[RecordedEvent],
    outcomes: &BTreeMap<u64, Outcome>,
    partitions: usize,
) -> Option<u64> {
    let mut accesses = Accesses::new();
    for event in events {
        let Some(outcome) = outcomes.get(&event.position) else {
            continue;
        };
        let partition = partition_of(&event.stream_id, partitions);
        for (key, wrote) in outcome.touched() {
            accesses.entry(key.to_vec()).or_default().push(Access {
                partition,
                position: event.position,
                wrote,
            });
        }
    }
    accesses.values().filter_map(|a| first_stale(a)).min()
}

/// The partition of a stream's events among `partitions`: FNV-1a of its id, so it is the same
/// in every run and process.
pub(crate) fn partition_of(stream: &str, partitions: usize) -> usize {
    if partitions <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in stream.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % partitions as u64) as usize
}

/// The state of a running subscription: `Parked` while it has parked events, else `Live` at
/// the head and `CatchingUp` behind it.
fn running_state(status: &SubscriptionStatus, at_head: bool) -> SubscriptionState {
    if status.parked > 0 {
        SubscriptionState::Parked
    } else if at_head {
        SubscriptionState::Live
    } else {
        SubscriptionState::CatchingUp
    }
}

/// Sleeps, or returns true early if a stop is requested.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = stop.changed() => true,
    }
}

/// A handler with what it needs to handle events: one per partition.
struct Worker<'a, H> {
    /// The subscription's name.
    name: &'a str,
    handler: &'a mut H,
    store: &'a dyn EventStore,
    policy: &'a FailurePolicy,
    status: &'a StatusCell,
    /// Values this run committed lately (see [`Runner::cache`]).
    cache: &'a StateBatch,
    stop: watch::Receiver<bool>,
    /// With `track_reads`: the keys read by the attempts so far (the caller takes them).
    reads: Vec<Vec<u8>>,
    /// The generation of the lease the loop holds (the fencing token), if any.
    generation: Option<u64>,
}

impl<H: EventHandler> Worker<'_, H> {
    /// Handles one event, retrying a failure as the failure policy says. `round` is the
    /// partition's uncommitted writes of this round (newer than `pending`); with `track_reads`
    /// the keys the handler read are returned.
    async fn attempt(
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
            );
            let outcome = AssertUnwindSafe(self.handler.dispatch(event, &mut ctx))
                .catch_unwind()
                .instrument(span)
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

impl<H: EventHandler> Runner<H> {
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
    fn leave_parked_state(&self) {
        self.status.update(|s| {
            if s.state == SubscriptionState::Parked && s.parked == 0 {
                s.state = running_state(s, s.handled_up_to >= s.head);
            }
        });
    }

    /// Applies the requests other processes recorded for this subscription (see
    /// [`control`]): each in the commit that settles it, so once.
    async fn apply_requests(
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
    async fn skip(
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
    async fn replay(
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
        if committed.expected.is_none() && checkpoint > self.store.head() && pending.is_empty() {
            // A new subscription that starts beyond the head (`StartFrom::Position`): nothing
            // to record until the head reaches its start.
            committed.at = Instant::now();
            return Ok(());
        }
        let mut status = self.status.get();
        status.checkpoint = checkpoint;
        if let Some(state) = state {
            status.state = state;
        }
        let record = status_write(&status);
        pending.insert(record.key, record.value);
        let writes = drain(pending);
        let cached: Vec<(Vec<u8>, Option<Vec<u8>>)> = writes
            .iter()
            .filter(|w| !w.key.starts_with(RESERVED_PREFIX))
            .map(|w| (w.key.clone(), w.value.clone()))
            .collect();
        match self
            .commit_to_store(committed.expected, checkpoint, writes)
            .await
        {
            Ok(()) => {
                if self.cache.len() + cached.len() > CACHE_ENTRIES {
                    self.cache.clear();
                }
                self.cache.extend(cached);
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

/// Refuses an operation sent to a standby: the process that holds the lease applies it.
fn refuse(command: Command, holder: &str) {
    let error = || ControlError::Standby(holder.to_owned());
    match command {
        Command::Replay { reply, .. } => drop(reply.send(Err(error()))),
        Command::Skip { reply, .. } => drop(reply.send(Err(error()))),
        Command::Flush { reply } => drop(reply.send(Err(error()))),
    }
}

/// Renews `lease` every third of `ttl` until it is lost, then says why through `lost`. Lost
/// means: a renewal found it taken, or none succeeded for two thirds of `ttl`, counted from
/// when the last good one was sent (`confirmed`), so before the store's deadline can pass. The
/// status's lease shows the deadline of the last renewal.
async fn keep_lease(
    store: Arc<dyn EventStore>,
    lease: Lease,
    ttl: Duration,
    mut confirmed: tokio::time::Instant,
    lost: watch::Sender<Option<String>>,
    status: StatusCell,
) {
    let every = ttl / 3;
    let mut next = confirmed + every;
    loop {
        let deadline = confirmed + ttl * 2 / 3;
        tokio::time::sleep_until(next.min(deadline)).await;
        if tokio::time::Instant::now() >= deadline {
            let _ = lost.send(Some(format!(
                "could not renew the lease for {:?} (it may expire)",
                confirmed.elapsed()
            )));
            return;
        }
        let sent = tokio::time::Instant::now();
        next = sent + every;
        match tokio::time::timeout_at(deadline, store.renew_lease(&lease, ttl)).await {
            Ok(Ok(true)) => {
                confirmed = sent;
                let until = SystemTime::now() + ttl;
                status.update(|s| {
                    if let Some(holder) = s.holder.as_mut() {
                        holder.expires_micros = until
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_micros() as u64)
                            .unwrap_or(0);
                    }
                });
            }
            Ok(Ok(false)) => {
                let _ = lost.send(Some("another process took the lease".into()));
                return;
            }
            Ok(Err(e)) => debug!(error = %e, "could not renew the lease"),
            Err(_) => debug!("renewing the lease timed out"),
        }
    }
}

/// Once `lost` says the lease is gone, waits `grace` (for the loop to stop by itself), then
/// returns why.
async fn backstop(mut lost: watch::Receiver<Option<String>>, grace: Duration) -> String {
    let reason = match lost.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        // The renewing task is gone (aborted with the run): never.
        Err(_) => std::future::pending().await,
    };
    tokio::time::sleep(grace).await;
    reason
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
