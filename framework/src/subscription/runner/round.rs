//! Partitioned rounds: one page handed to the partitions, run concurrently, the results taken
//! in position order up to the first event that is not handled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use futures_util::future::join_all;
use tracing::warn;

use super::commit::Committed;
use super::step::describe;
use super::worker::Worker;
use super::{Attempt, Fault, Runner};
use crate::store::RecordedEvent;
use crate::subscription::failure::FailurePolicy;
use crate::subscription::handler::{merge, EventHandler, StateBatch};

impl<H: EventHandler> Runner<H> {
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
    pub(super) async fn round(
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
                    self.status.update_quietly(|s| s.events_handled += 1);
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
            // Published at the end of the page, or before the loop next waits.
            self.status.update_quietly(|s| s.handled_up_to = position);
        }
        Ok((end, events.len()))
    }
}

/// Pages handled one event at a time after a round found a key shared by partitions.
const SERIAL_PAGES_AFTER_CONFLICT: u32 = 16;

/// What handling one page did.
#[derive(Default)]
pub(super) struct RoundEnd {
    /// Events handled or parked.
    pub handled: u64,
    /// A stop came before the end of the page.
    pub stopped: bool,
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
        if parked.contains(event.stream_id.as_str())
            || newly_parked.contains(event.stream_id.as_str())
        {
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

/// The partition (handler) of a stream's events among `partitions` (see
/// [`partition_of`](crate::subscription::partition_of)).
pub(crate) fn partition_of(stream: &str, partitions: usize) -> usize {
    crate::subscription::partition_of(stream, u32::try_from(partitions).unwrap_or(u32::MAX))
        as usize
}
