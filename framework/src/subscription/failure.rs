//! Failure handling: the failure policy, ordered parking, reset, and the status kept in the store.
//!
//! Parked events and the status record live in the subscription's own state namespace, under
//! keys that start with [`RESERVED_PREFIX`] (so that they cannot collide with a handler's keys and
//! are kept when a reset clears the handler's state). They are written with the same fenced
//! `commit_checkpoint` as the checkpoint, so parking an event and moving the checkpoint past it
//! are one atomic step.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::status::SubscriptionStatus;
use crate::store::{state_page_is_full, EventStore, Filter, Lease, StateWrite, StoreError};

/// What a subscription does when a handler fails on an event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Stop at the event, `Failed`, with the checkpoint just before it (the default).
    #[default]
    Stop,
    /// Retry the event with exponential backoff and jitter; after `max_retries` retries, park it
    /// together with every later event of its stream, and go on with the other streams.
    /// An event that does not decode is parked at once (retrying cannot help).
    RetryThenPark {
        /// Retries after the first attempt.
        max_retries: u32,
        /// The pause before the first retry; doubled for each next one.
        initial_backoff: Duration,
        /// The longest pause.
        max_backoff: Duration,
    },
}

impl FailurePolicy {
    /// `RetryThenPark` with `max_retries`, backoff from `initial_backoff` up to `max_backoff`.
    pub fn retry_then_park(
        max_retries: u32,
        initial_backoff: Duration,
        max_backoff: Duration,
    ) -> Self {
        FailurePolicy::RetryThenPark {
            max_retries,
            initial_backoff,
            max_backoff,
        }
    }

    /// The pause before retry number `retry` (0 for the first): exponential, at most
    /// `max_backoff`, with "equal jitter" (half fixed, half random) so that many subscriptions
    /// failing together do not retry in step.
    pub(crate) fn backoff(&self, retry: u32, seed: u64) -> Duration {
        let FailurePolicy::RetryThenPark {
            initial_backoff,
            max_backoff,
            ..
        } = self
        else {
            return Duration::ZERO;
        };
        let exp = initial_backoff.saturating_mul(1u32 << retry.min(20));
        let base = exp.min(*max_backoff);
        let half = base / 2;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        let random = splitmix(seed ^ nanos);
        let span = half.as_nanos() as u64;
        let jitter = if span == 0 { 0 } else { random % (span + 1) };
        half + Duration::from_nanos(jitter)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// An event that a subscription parked: it failed (or its stream was parked before it) and waits
/// to be replayed or skipped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ParkedEvent {
    /// The event's global position.
    pub position: u64,
    /// Its stream.
    pub stream_id: String,
    /// Its type.
    pub event_type: String,
    /// Why it is parked: the handler's error, or that an earlier event of its stream is parked.
    pub reason: String,
    /// When it was parked.
    pub parked_at: SystemTime,
}

/// What a replay of a parked stream did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayOutcome {
    /// Parked events handled (and removed from the parked list), in order.
    pub handled: u64,
    /// Events of the stream still parked (the first of them failed again); 0 when the stream is
    /// no longer parked.
    pub still_parked: u64,
    /// True when the subscription was stopped: the replay is recorded and runs when it starts.
    pub deferred: bool,
}

/// Where [`Subscriptions::reset`](super::Subscriptions::reset) moves a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// Before the first event: everything is handled again.
    Beginning,
    /// To the durable head: only events appended from now on are handled.
    End,
    /// The next event handled is the first at or after this position.
    Position(u64),
    /// The next event handled is the first recorded at or after this time.
    Timestamp(SystemTime),
}

/// Why an operation on a subscription's parked events or checkpoint failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The store failed (or another instance moved the checkpoint meanwhile).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The subscription's loop is not running in this process (it stopped or failed, or its
    /// actor is gone): nothing was done. [`SubscriptionHandle`](super::SubscriptionHandle)'s
    /// operations go through the running loop only; those of
    /// [`Subscriptions`](super::Subscriptions) work on a stopped subscription too.
    #[error("subscription {0:?} is not running here")]
    NotRunning(String),
    /// The operation needs the subscription stopped (a reset).
    #[error("subscription {0:?} is running: stop it first")]
    Running(String),
    /// The running subscription failed while applying the operation.
    #[error("subscription failed while applying the operation: {0}")]
    Failed(String),
    /// This process runs the subscription as a standby: another process holds its lease (the
    /// message names it) and applies operations.
    #[error("this process is a standby; the subscription runs in {0}")]
    Standby(String),
    /// The operation needs the subscription stopped, and it runs in another process (which
    /// holds its lease).
    #[error("subscription {name:?} runs in {holder}: stop it there first")]
    RunningElsewhere {
        /// The subscription.
        name: String,
        /// The process that runs it.
        holder: String,
    },
    /// The process that runs the subscription did not answer in time. The request stays
    /// recorded in the store: the holder applies it (or the next holder, when it takes over).
    #[error(
        "the process that runs the subscription ({holder}) did not answer yet; request {request} \
         stays queued and is applied when it gets to it"
    )]
    Queued {
        /// The process that holds the subscription's lease.
        holder: String,
        /// The request's id.
        request: String,
    },
}

/// Keys of the framework's own entries in a subscription's state.
pub const RESERVED_PREFIX: &[u8] = b"\0tidings/";
const PARKED: &[u8] = b"\0tidings/parked/";
const PARKED_STREAMS: &[u8] = b"\0tidings/parked-streams/";
const REPLAY: &[u8] = b"\0tidings/replay/";
/// A broker inbox's parked message (subject, headers, payload), beside its [`ParkedEvent`].
const PARKED_MESSAGE: &[u8] = b"\0tidings/parked-message/";
pub(crate) const STATUS: &[u8] = b"\0tidings/status";

/// The state write that records `status` under [`STATUS`].
pub(crate) fn status_write(status: &SubscriptionStatus) -> StateWrite {
    StateWrite {
        key: STATUS.to_vec(),
        value: Some(serde_json::to_vec(status).expect("a status encodes")),
    }
}

pub(crate) fn parked_key(position: u64) -> Vec<u8> {
    let mut k = PARKED.to_vec();
    k.extend_from_slice(format!("{position:020}").as_bytes());
    k
}

/// The key of the message a broker inbox parked at `position` (its broker stream sequence).
pub(crate) fn parked_message_key(position: u64) -> Vec<u8> {
    let mut k = PARKED_MESSAGE.to_vec();
    k.extend_from_slice(format!("{position:020}").as_bytes());
    k
}

pub(crate) fn parked_stream_key(stream: &str) -> Vec<u8> {
    let mut k = PARKED_STREAMS.to_vec();
    k.extend_from_slice(stream.as_bytes());
    k
}

pub(crate) fn replay_key(stream: &str) -> Vec<u8> {
    let mut k = REPLAY.to_vec();
    k.extend_from_slice(stream.as_bytes());
    k
}

pub(crate) fn encode_parked(p: &ParkedEvent) -> Vec<u8> {
    serde_json::to_vec(p).expect("a parked event encodes")
}

const PAGE: usize = 1024;

/// Every state entry under `prefix`, page by page.
async fn scan_all(
    store: &dyn EventStore,
    name: &str,
    prefix: &[u8],
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    let mut from = prefix.to_vec();
    loop {
        let page = store.scan_state(name, prefix, &from, PAGE).await?;
        let full = state_page_is_full(&page, PAGE);
        if let Some((last, _)) = page.last() {
            from = last.clone();
            from.push(0);
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// The committed parked events of subscription `name`, in position order.
pub async fn parked_in_store(
    store: &dyn EventStore,
    name: &str,
) -> Result<Vec<ParkedEvent>, StoreError> {
    scan_all(store, name, PARKED)
        .await?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice(&v).map_err(|e| StoreError::codec("parked event record", e))
        })
        .collect()
}

/// The committed parked streams of subscription `name`.
pub(crate) async fn parked_streams_in_store(
    store: &dyn EventStore,
    name: &str,
) -> Result<BTreeSet<String>, StoreError> {
    Ok(scan_all(store, name, PARKED_STREAMS)
        .await?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[PARKED_STREAMS.len()..]).into_owned())
        .collect())
}

/// Streams whose replay was requested while the subscription was stopped.
pub(crate) async fn replay_requests_in_store(
    store: &dyn EventStore,
    name: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(scan_all(store, name, REPLAY)
        .await?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[REPLAY.len()..]).into_owned())
        .collect())
}

/// The status a subscription last committed to the store (readable from another process), or
/// `None` if it never committed one.
pub async fn subscription_status_from_store(
    store: &dyn EventStore,
    name: &str,
) -> Result<Option<SubscriptionStatus>, StoreError> {
    match store.load_state(name, STATUS).await? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::codec("subscription status record", e)),
        None => Ok(None),
    }
}

/// Commits `writes` at the stored checkpoint of a stopped subscription (fenced by it, and by
/// `lease` when the operation holds the subscription's lease).
async fn commit_at_current(
    store: &dyn EventStore,
    name: &str,
    lease: Option<&Lease>,
    mut writes: Vec<StateWrite>,
    new_checkpoint: Option<u64>,
    parked_after: Option<(u64, u64)>,
) -> Result<(), StoreError> {
    let current = store.load_checkpoint(name).await?;
    let position = new_checkpoint.or(current).unwrap_or(0);
    if let Some(mut status) = subscription_status_from_store(store, name).await? {
        status.checkpoint = position;
        status.handled_up_to = position;
        status.head = store.head();
        let (parked, streams) = match parked_after {
            Some(counts) => counts,
            None => (
                parked_in_store(store, name).await?.len() as u64,
                parked_streams_in_store(store, name).await?.len() as u64,
            ),
        };
        status.parked = parked;
        status.parked_streams = streams;
        writes.push(status_write(&status));
    }
    commit_fenced(store, lease, name, current, position, writes).await
}

/// Commits a subscription's checkpoint with `writes` through `store`, fenced by `lease` if
/// there is one.
pub(crate) async fn commit_fenced(
    store: &dyn EventStore,
    lease: Option<&Lease>,
    name: &str,
    expected: Option<u64>,
    position: u64,
    writes: Vec<StateWrite>,
) -> Result<(), StoreError> {
    match lease {
        Some(lease) => {
            store
                .commit_checkpoint_fenced(lease, name, expected, position, writes)
                .await
        }
        None => {
            store
                .commit_checkpoint(name, expected, position, writes)
                .await
        }
    }
}

/// Drops one parked event of a stopped subscription. The stream stays parked while it has parked
/// events left. Returns false if no event is parked at `position`.
pub(crate) async fn skip_in_store(
    store: &dyn EventStore,
    name: &str,
    lease: Option<&Lease>,
    position: u64,
) -> Result<bool, StoreError> {
    let parked = parked_in_store(store, name).await?;
    let Some(entry) = parked.iter().find(|p| p.position == position) else {
        return Ok(false);
    };
    let mut writes = vec![
        StateWrite {
            key: parked_key(position),
            value: None,
        },
        // A broker inbox keeps the parked message itself beside the entry.
        StateWrite {
            key: parked_message_key(position),
            value: None,
        },
    ];
    let mut streams = parked_streams_in_store(store, name).await?;
    if !parked
        .iter()
        .any(|p| p.stream_id == entry.stream_id && p.position != position)
    {
        writes.push(StateWrite {
            key: parked_stream_key(&entry.stream_id),
            value: None,
        });
        streams.remove(&entry.stream_id);
    }
    let counts = (parked.len() as u64 - 1, streams.len() as u64);
    commit_at_current(store, name, lease, writes, None, Some(counts)).await?;
    Ok(true)
}

/// Records that `stream`'s parked events are to be replayed when the subscription next starts.
pub(crate) async fn request_replay_in_store(
    store: &dyn EventStore,
    name: &str,
    lease: Option<&Lease>,
    stream: &str,
) -> Result<u64, StoreError> {
    let waiting = parked_in_store(store, name)
        .await?
        .iter()
        .filter(|p| p.stream_id == stream)
        .count() as u64;
    if waiting == 0 {
        return Ok(0);
    }
    let writes = vec![StateWrite {
        key: replay_key(stream),
        value: Some(Vec::new()),
    }];
    commit_at_current(store, name, lease, writes, None, None).await?;
    Ok(waiting)
}

/// What a reset would do, worked out without changing anything: see
/// [`Subscriptions::reset_preview`](super::Subscriptions::reset_preview).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResetPreview {
    /// The checkpoint now.
    pub previous_checkpoint: u64,
    /// The checkpoint the reset would set: the subscription's first event after it is the
    /// first at a position above it.
    pub checkpoint: u64,
    /// The durable head when the preview was made.
    pub head: u64,
    /// Entries of the handler's state the reset would delete (0 without `clear_state`; parked
    /// events and the framework's own records are never deleted).
    pub state_entries_deleted: u64,
}

impl ResetPreview {
    /// Positions the subscription would handle again (when the checkpoint moves back).
    pub fn handled_again(&self) -> u64 {
        self.previous_checkpoint.saturating_sub(self.checkpoint)
    }

    /// Positions it would never handle (when the checkpoint moves forward).
    pub fn skipped(&self) -> u64 {
        self.checkpoint.saturating_sub(self.previous_checkpoint)
    }
}

/// The checkpoint a reset `to` sets, against the durable `head`.
async fn reset_checkpoint(
    store: &dyn EventStore,
    to: ResetTo,
    head: u64,
) -> Result<u64, StoreError> {
    Ok(match to {
        ResetTo::Beginning => 0,
        ResetTo::End => head,
        ResetTo::Position(p) => p.saturating_sub(1).min(head),
        ResetTo::Timestamp(t) => {
            let micros = t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0);
            first_at_or_after(store, micros, head).await? - 1
        }
    })
}

/// The deletions of the handler's state (every key outside [`RESERVED_PREFIX`]).
async fn clear_state_writes(
    store: &dyn EventStore,
    name: &str,
) -> Result<Vec<StateWrite>, StoreError> {
    Ok(scan_all(store, name, b"")
        .await?
        .into_iter()
        .filter(|(key, _)| !key.starts_with(RESERVED_PREFIX))
        .map(|(key, _)| StateWrite { key, value: None })
        .collect())
}

/// What [`reset_in_store`] would do, from the stored checkpoint (`None` if there is none).
pub(crate) async fn preview_reset_in_store(
    store: &dyn EventStore,
    name: &str,
    to: ResetTo,
    clear_state: bool,
) -> Result<Option<ResetPreview>, StoreError> {
    let Some(previous_checkpoint) = store.load_checkpoint(name).await? else {
        return Ok(None);
    };
    let head = store.head();
    let checkpoint = reset_checkpoint(store, to, head).await?;
    let state_entries_deleted = if clear_state {
        clear_state_writes(store, name).await?.len() as u64
    } else {
        0
    };
    Ok(Some(ResetPreview {
        previous_checkpoint,
        checkpoint,
        head,
        state_entries_deleted,
    }))
}

/// Moves a stopped subscription's checkpoint; with `clear_state`, deletes the handler's state
/// (not the parked events or the status) in the same commit. Returns the new checkpoint.
pub(crate) async fn reset_in_store(
    store: &dyn EventStore,
    name: &str,
    lease: Option<&Lease>,
    to: ResetTo,
    clear_state: bool,
) -> Result<u64, StoreError> {
    let head = store.head();
    let checkpoint = reset_checkpoint(store, to, head).await?;
    let writes = if clear_state {
        clear_state_writes(store, name).await?
    } else {
        Vec::new()
    };
    commit_at_current(store, name, lease, writes, Some(checkpoint), None).await?;
    Ok(checkpoint)
}

/// The first position whose event was recorded at or after `micros` (head + 1 if none): a
/// binary search, since positions are in commit order.
async fn first_at_or_after(
    store: &dyn EventStore,
    micros: u64,
    head: u64,
) -> Result<u64, StoreError> {
    let (mut lo, mut hi) = (1u64, head + 1);
    let all = Filter::all();
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let page = store.read_all(mid, 1, &all).await?;
        match page.events.first() {
            Some(e) if e.timestamp_micros >= micros => hi = mid,
            Some(e) => lo = e.position.max(mid) + 1,
            None => hi = mid,
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_half_of_it_random() {
        let policy = FailurePolicy::retry_then_park(
            10,
            Duration::from_millis(10),
            Duration::from_millis(300),
        );
        for retry in 0..12 {
            let base = (Duration::from_millis(10) * (1 << retry)).min(Duration::from_millis(300));
            for seed in 0..50 {
                let pause = policy.backoff(retry, seed);
                assert!(pause >= base / 2 && pause <= base, "{retry}: {pause:?}");
            }
        }
        assert_eq!(FailurePolicy::Stop.backoff(3, 1), Duration::ZERO);
    }

    #[test]
    fn parked_keys_sort_by_position() {
        assert!(parked_key(9) < parked_key(10));
        assert!(parked_key(99_999) < parked_key(100_000));
        assert!(parked_key(1).starts_with(RESERVED_PREFIX));
        assert!(!parked_message_key(1).starts_with(PARKED));
        assert!(!parked_message_key(1).starts_with(PARKED_STREAMS));
    }
}
