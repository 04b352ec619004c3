//! The subscription loop: catch up from the checkpoint, follow the durable head, commit.
//!
//! There is no separate "live" channel: the loop always reads the log by position, up to the
//! durable head, and when it reaches the head it waits for the head to move. So the switch from
//! catching up to live cannot skip or repeat an event however appends race it (the failure mode
//! of push-based designs, commanded/eventstore#327).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

mod commit;
mod lease;
mod operations;
mod round;
mod step;
mod supervise;
mod worker;

use self::commit::Committed;
use self::round::{partition_of, RoundEnd};
use self::step::Flow;
use super::control;
use super::distributed::Partition;
use super::failure::{
    parked_in_store, parked_streams_in_store, replay_requests_in_store, ControlError, ReplayOutcome,
};
use super::handler::{EventHandler, HandlerFailure, StateBatch};
use super::status::{StatusCell, SubscriptionState, SubscriptionStatus};
use super::{StartFrom, SubscriptionConfig};
use crate::store::{
    EventStore, Filter, HeadWatch, Lease, LeaseHolder, ReadBatch, RecordedEvent, StoreError,
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
    /// Set for one partition of a distributed subscription: the loop handles only the events
    /// of its streams (the others count as filtered out).
    pub partition: Option<Partition>,
    /// A commit sent and not answered yet (see [`Runner::commit_pipelined`]).
    pub in_flight: Option<commit::InFlight>,
}

/// The most entries [`Runner::cache`] keeps.
const CACHE_ENTRIES: usize = 16 * 1024;

impl<H: EventHandler> Runner<H> {
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
        let mut ahead = ReadAhead::default();

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
            // A page read ahead that failed is read again here: its error may be a moment
            // old, and this read says whether it still holds.
            let mut page = match ahead.take_if_at(checkpoint + 1).await {
                Some(page) => page,
                None => {
                    self.store
                        .read_all(checkpoint + 1, self.config.batch_size, &filter)
                        .await?
                }
            };
            if !page.is_end() {
                // The next page is read while this one is handled (on another thread with the
                // embedded store, on another connection with a server).
                ahead.start(
                    &self.store,
                    page.next_position,
                    self.config.batch_size,
                    &filter,
                );
            }
            if let Some(partition) = self.partition {
                // The other partitions' events are examined and passed, as filtered out.
                page.events.retain(|e| partition.owns(&e.stream_id));
            }
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
                // A page read ahead may say an older head than the status has seen since.
                s.head = s.head.max(page.head);
                s.handled_up_to = checkpoint;
            });
            if uncommitted >= self.config.commit_every
                || committed.at.elapsed() >= self.config.commit_interval
            {
                self.commit_pipelined(&mut committed, checkpoint, &mut pending)
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
                self.commit_pipelined(committed, *checkpoint, pending)
                    .await?;
                *uncommitted = 0;
            }
        }
        Ok(end)
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
        // At the head there is time to wait for the last commit: the status shows it.
        self.settle().await?;
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
}

/// The next page, read while the loop handles the current one. Used only if the loop asks for
/// the position it was started at (a command that moved the checkpoint makes it read again);
/// dropped with the run, it stops reading.
#[derive(Default)]
struct ReadAhead {
    next: Option<(u64, tokio::task::JoinHandle<Result<ReadBatch, StoreError>>)>,
}

impl ReadAhead {
    /// Starts reading the page at `from`.
    fn start(&mut self, store: &Arc<dyn EventStore>, from: u64, max_count: usize, filter: &Filter) {
        let (store, filter) = (store.clone(), filter.clone());
        let task = tokio::spawn(async move { store.read_all(from, max_count, &filter).await });
        if let Some((_, old)) = self.next.replace((from, task)) {
            old.abort();
        }
    }

    /// The page read ahead, if it starts at `from` and was read (else it is dropped, and the
    /// caller reads the page itself).
    async fn take_if_at(&mut self, from: u64) -> Option<ReadBatch> {
        let (at, task) = self.next.take()?;
        if at != from {
            task.abort();
            return None;
        }
        match task.await {
            Ok(Ok(page)) => Some(page),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, from, "a page read ahead failed; reading it again");
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, from, "a page read ahead did not finish; reading it again");
                None
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some((_, task)) = self.next.take() {
            task.abort();
        }
    }
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
