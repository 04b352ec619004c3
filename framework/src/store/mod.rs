//! The event store: a durable, ordered log of events, grouped into streams.
//!
//! [`EventStore`] is the port every backend implements; [`SledEventStore`] is the embedded
//! default. Nothing in the trait names a backend type, so that other backends (a server database,
//! a distributed log) can implement it and pass the same conformance suite.

mod codec;
mod error;
mod head;
mod lease;
// Format 2's segment log (decision 54), not yet used by the store. It calls Linux's fallocate,
// SEEK_DATA and fadvise through rustix; until it is wired in (and given fallbacks for other
// systems), it is built on Linux only, so that tidings keeps building wherever sled does.
mod log;
#[cfg(feature = "postgres")]
mod postgres;
mod shared;
mod sled;
mod spans;
mod text;
mod types;

pub(crate) use self::error::chain as error_chain;
pub use self::error::{BoxError, Result, StoreError};
pub use self::head::HeadWatch;
pub use self::lease::{Lease, LeaseAttempt, LeaseHolder, LeaseInfo};
#[cfg(feature = "postgres")]
pub use self::postgres::{
    validate_schema as validate_postgres_schema, PostgresConfig, PostgresEventStore,
    DEFAULT_SCHEMA, MAX_SCHEMA_LEN, SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION,
};
pub use self::shared::IntoEventStore;
pub use self::sled::{SledConfig, SledEventStore};
pub use self::text::Text;
pub use self::types::{
    category_of, metadata_bytes, state_entry_bytes, state_page_is_full, stream_page_is_full,
    AppendResult, CheckpointInfo, EventData, ExpectedVersion, Filter, Metadata, ReadBatch,
    RecordedEvent, Snapshot, StateWrite, StreamInfo, VerifyReport, MAX_APPEND_BYTES,
    MAX_EVENT_TYPE_LEN, MAX_METADATA_KEY_LEN, MAX_METADATA_LEN, MAX_PAYLOAD_LEN, MAX_SNAPSHOT_LEN,
    MAX_STATE_KEY_LEN, MAX_STREAM_ID_LEN, READ_PAGE_BYTES,
};
/// The type of [`RecordedEvent::payload`], re-exported so that applications need not depend on
/// `bytes` to name it.
pub use bytes::Bytes;

use std::time::Duration;

use async_trait::async_trait;

/// A durable, ordered event log with optimistic concurrency.
///
/// Every event has a global **position** (from 1, increasing in the order readers see events)
/// and a **version** within its stream (gap-free, from 1). An append is acknowledged only when it
/// is durable, and readers never see an event before it is durable: positions above
/// [`head`](EventStore::head) are invisible, and no event ever appears at or below a position a
/// reader has passed, so a checkpoint that is one position never skips an event.
///
/// What every backend promises, and the conformance suite checks: positions are gap-free as
/// long as no write fails midway. The embedded store keeps them gap-free always; a server
/// backend may leave a gap where a transaction took positions and then failed (docs/guarantees.md).
///
/// Reads are paged: a read returns at most `max_count` events and ends early once its events
/// hold [`READ_PAGE_BYTES`] (always at least one event), so that reading a log of any size, or
/// of the largest events, never holds more than a bounded amount in memory. Writes are bounded
/// too: one append carries at most [`MAX_APPEND_BYTES`].
///
/// ```
/// use tidings::store::{EventData, EventStore, ExpectedVersion, Filter, SledEventStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = SledEventStore::open(dir.path())?;
///
/// let placed = EventData::new("OrderPlaced", br#"{"total":42}"#.to_vec());
/// let result = store.append("order-1", ExpectedVersion::NoStream, vec![placed]).await?;
/// assert_eq!((result.first_position, result.stream_version), (1, 1));
///
/// // A second writer that still believes the stream is new is refused.
/// let late = EventData::new("OrderPlaced", b"{}".to_vec());
/// assert!(store.append("order-1", ExpectedVersion::NoStream, vec![late]).await.is_err());
///
/// let history = store.read_stream("order-1", 1, 100).await?;
/// assert_eq!(history[0].event_type, "OrderPlaced");
///
/// let page = store.read_all(1, 100, &Filter::all().categories(["order"])).await?;
/// assert_eq!(page.events.len(), 1);
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if the stream is at the `expected` version, atomically: all
    /// of them or none. Returns once the events are durable.
    ///
    /// Fails with [`StoreError::WrongExpectedVersion`] (nothing written) when the check fails,
    /// and with [`StoreError::InvalidInput`] (nothing written) when a name or payload is beyond
    /// its limit or the events carry more than [`MAX_APPEND_BYTES`] together.
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult>;

    /// Reads up to `max_count` events of `stream`, starting at version `from_version` (1 is the
    /// first event), in version order. An unknown stream reads as empty.
    ///
    /// The page also ends at the event that brings its bytes to [`READ_PAGE_BYTES`], so a page
    /// shorter than `max_count` is the end of the stream only if it is not
    /// [full](stream_page_is_full).
    async fn read_stream(
        &self,
        stream: &str,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// The durable version of `stream` (0 when it has no events).
    async fn stream_version(&self, stream: &str) -> Result<u64>;

    /// Reads the global log from `from_position` (inclusive), returning at most `max_count`
    /// events that pass `filter`. A page ends at `max_count` matches, at the match that brings
    /// its bytes to [`READ_PAGE_BYTES`], at the durable head, or after the backend has examined
    /// a bounded number of events; `next_position` says where to go on.
    async fn read_all(
        &self,
        from_position: u64,
        max_count: usize,
        filter: &Filter,
    ) -> Result<ReadBatch>;

    /// The durable head: the position of the last durable event (0 for an empty store).
    fn head(&self) -> u64;

    /// A watch on the durable head, woken each time more events become durable.
    fn watch_head(&self) -> HeadWatch;

    /// Durably stores the position a named consumer has processed up to, unconditionally.
    ///
    /// For consumers that keep no state in the store. A subscription's checkpoint goes through
    /// [`commit_checkpoint`](EventStore::commit_checkpoint), which is fenced and carries state;
    /// moving such a checkpoint with this method would replay events onto state that already
    /// includes them.
    ///
    /// A checkpoint past the head fails with [`StoreError::InvalidInput`] (nothing written): a
    /// checkpoint is a position its consumer has processed.
    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()>;

    /// The position last saved under `name`, if any.
    async fn load_checkpoint(&self, name: &str) -> Result<Option<u64>>;

    /// Durably and atomically stores the checkpoint `position` of consumer `name` together with
    /// changes to that consumer's state, if the stored checkpoint is `expected` (`None`: no
    /// checkpoint yet). This is what makes a projection exactly-once: its state and the position
    /// it reflects can never disagree, and a zombie instance cannot overwrite a newer one.
    ///
    /// Fails with [`StoreError::CheckpointConflict`] (nothing written) when the check fails, and
    /// with [`StoreError::InvalidInput`] (nothing written) when it would move the checkpoint past
    /// the head; a commit that leaves the checkpoint where it is (`expected == Some(position)`)
    /// may record state even if that checkpoint is above the head (stored before this rule, or a
    /// log cut back after damage).
    async fn commit_checkpoint(
        &self,
        name: &str,
        expected: Option<u64>,
        position: u64,
        state: Vec<StateWrite>,
    ) -> Result<()>;

    /// One value of consumer `name`'s state.
    async fn load_state(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Up to `max_count` entries of consumer `name`'s state whose keys start with `prefix` and
    /// are at or after `from_key`, in key order (a page: call again from the last key plus a
    /// zero byte). The page also ends at the entry that brings its bytes to [`READ_PAGE_BYTES`]:
    /// it is the last page when it is not [full](state_page_is_full).
    async fn scan_state(
        &self,
        name: &str,
        prefix: &[u8],
        from_key: &[u8],
        max_count: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// Durably stores a snapshot for `stream`, replacing any earlier one.
    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<()>;

    /// The latest snapshot of `stream`, if any.
    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>>;

    /// Scans the whole store: every record's checksum and every index entry. Damage is reported
    /// in the [`VerifyReport`], not as an error; errors are for failures to scan at all.
    async fn verify(&self) -> Result<VerifyReport>;

    /// Lists up to `limit` streams that have durable events, with their versions, in a stable
    /// order defined by the backend; `after` continues a listing after the last stream id of the
    /// previous page (`None` starts from the beginning). A page shorter than `limit` is the end.
    ///
    /// Optional: the default fails with [`StoreError::Unsupported`].
    async fn list_streams(&self, after: Option<&str>, limit: usize) -> Result<Vec<StreamInfo>> {
        let _ = (after, limit);
        Err(StoreError::Unsupported("list_streams"))
    }

    /// Lists up to `limit` stored checkpoints (subscriptions and other consumers) in name order,
    /// after the name `after` (`None` starts from the beginning). A page shorter than `limit` is
    /// the end.
    ///
    /// Optional: the default fails with [`StoreError::Unsupported`].
    async fn list_checkpoints(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CheckpointInfo>> {
        let _ = (after, limit);
        Err(StoreError::Unsupported("list_checkpoints"))
    }

    /// Appends events exactly as recorded elsewhere (a backup, another backend): same positions,
    /// stream versions, ids, timestamps and payloads. The first event must be at `head() + 1`, the
    /// rest must follow without a gap, each stream's versions must continue its current version,
    /// timestamps must not go down nor be more than [`MAX_IMPORT_AHEAD`] after this machine's
    /// clock, and each category must be the stream id's. Atomic and durable
    /// like an append; returns the new head.
    ///
    /// Fails with [`StoreError::ImportRejected`] (nothing written) when the events do not fit,
    /// and [`StoreError::InvalidInput`] for what an append would refuse. Optional: the default
    /// fails with [`StoreError::Unsupported`].
    async fn import(&self, events: Vec<RecordedEvent>) -> Result<u64> {
        let _ = events;
        Err(StoreError::Unsupported("import"))
    }

    /// Takes the lease `name` for `holder` for `ttl`, if it is free, expired, or already
    /// `holder`'s; each time it is taken its generation goes up. Otherwise says who holds it.
    ///
    /// Leases make a subscription run once across processes (see [`Lease`]). Optional: the
    /// default fails with [`StoreError::Unsupported`]; a store that only one process can open
    /// (the embedded one) needs none.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &LeaseHolder,
        ttl: Duration,
    ) -> Result<LeaseAttempt> {
        let _ = (name, holder, ttl);
        Err(StoreError::Unsupported("leases"))
    }

    /// Extends a held lease to `ttl` from now. `Ok(false)`: the lease is lost (another holder
    /// took it); an expired lease that nobody took is renewed.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let _ = (lease, ttl);
        Err(StoreError::Unsupported("leases"))
    }

    /// Gives a held lease up: it expires now, so a standby takes it at once. Nothing happens
    /// if it was lost already.
    async fn release_lease(&self, lease: &Lease) -> Result<()> {
        let _ = lease;
        Err(StoreError::Unsupported("leases"))
    }

    /// The stored lease `name` (held or expired), if it was ever taken.
    async fn load_lease(&self, name: &str) -> Result<Option<LeaseInfo>> {
        let _ = name;
        Err(StoreError::Unsupported("leases"))
    }

    /// The stored leases whose names start with `prefix` (held or expired, see
    /// [`LeaseInfo::held`]), in name order (by bytes), at most `limit` of them.
    ///
    /// How a distributed subscription finds the processes that run it (their member leases).
    /// Optional, like the other lease methods: the default fails with
    /// [`StoreError::Unsupported`].
    async fn list_leases(&self, prefix: &str, limit: usize) -> Result<Vec<LeaseInfo>> {
        let _ = (prefix, limit);
        Err(StoreError::Unsupported("leases"))
    }

    /// [`commit_checkpoint`](EventStore::commit_checkpoint), only while `lease` is held: same
    /// generation, not expired. Otherwise fails with [`StoreError::Fenced`] and writes nothing.
    /// A new holder's first commit waits for a commit of the old holder that is in flight, so
    /// the two never interleave.
    async fn commit_checkpoint_fenced(
        &self,
        lease: &Lease,
        name: &str,
        expected: Option<u64>,
        position: u64,
        state: Vec<StateWrite>,
    ) -> Result<()> {
        let _ = (lease, name, expected, position, state);
        Err(StoreError::Unsupported("leases"))
    }
}

/// Refuses a snapshot larger than [`MAX_SNAPSHOT_LEN`] with [`StoreError::InvalidInput`].
pub(crate) fn validate_snapshot(snapshot: &Snapshot) -> Result<()> {
    if snapshot.payload.len() > MAX_SNAPSHOT_LEN {
        return Err(StoreError::InvalidInput(format!(
            "snapshot of {} bytes exceeds the limit of {MAX_SNAPSHOT_LEN}",
            snapshot.payload.len()
        )));
    }
    Ok(())
}

/// Checks a stream id or consumer name: 1 to [`MAX_STREAM_ID_LEN`] bytes.
pub(crate) fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_STREAM_ID_LEN {
        return Err(StoreError::InvalidInput(format!(
            "{what} must be 1 to {MAX_STREAM_ID_LEN} bytes, got {}",
            name.len()
        )));
    }
    Ok(())
}

/// Checks a checkpoint commit's names and keys.
pub(crate) fn validate_commit(name: &str, state: &[StateWrite]) -> Result<()> {
    validate_name("consumer name", name)?;
    for w in state {
        if w.key.len() > MAX_STATE_KEY_LEN {
            return Err(StoreError::InvalidInput(format!(
                "state key of {} bytes exceeds the limit of {MAX_STATE_KEY_LEN}",
                w.key.len()
            )));
        }
        if w.value.as_ref().is_some_and(|v| v.len() > MAX_PAYLOAD_LEN) {
            return Err(StoreError::InvalidInput(format!(
                "state value exceeds the limit of {MAX_PAYLOAD_LEN} bytes"
            )));
        }
    }
    Ok(())
}

/// How far after this machine's clock an imported timestamp may be (clock skew between the
/// machine that exported and this one): 24 hours.
pub const MAX_IMPORT_AHEAD: Duration = Duration::from_secs(24 * 3600);

/// Checks the parts of an import that do not depend on the store's state: valid names, types
/// and payloads, contiguous positions, versions from 1, categories that match the stream ids,
/// timestamps that do not go down.
pub(crate) fn validate_import(events: &[RecordedEvent]) -> Result<()> {
    let Some(first) = events.first() else {
        return Err(StoreError::InvalidInput("import has no events".into()));
    };
    let total: usize = events
        .iter()
        .map(|e| e.payload.len() + e.event_type.len() + metadata_bytes(&e.metadata))
        .sum();
    if total > MAX_APPEND_BYTES {
        return Err(StoreError::InvalidInput(format!(
            "import of {} events carries {total} bytes, beyond the limit of {MAX_APPEND_BYTES} \
             for one call: import them in several batches",
            events.len()
        )));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let latest = now.saturating_add(MAX_IMPORT_AHEAD.as_micros() as u64);
    let mut previous: Option<&RecordedEvent> = None;
    for (i, e) in events.iter().enumerate() {
        let reject = |reason: String| StoreError::ImportRejected {
            position: e.position,
            reason,
        };
        validate_name("stream id", &e.stream_id)?;
        validate_event(&e.event_type, e.payload.len(), &e.metadata)?;
        if e.position != first.position + i as u64 {
            return Err(reject(format!(
                "expected position {} (positions must follow each other)",
                first.position + i as u64
            )));
        }
        if e.stream_version == 0 {
            return Err(reject("stream versions start at 1".into()));
        }
        if e.category != category_of(&e.stream_id) {
            return Err(reject(format!(
                "category {:?} is not the category of stream {:?}",
                e.category, e.stream_id
            )));
        }
        // Timestamps never go down with position, so one far in the future would pin the
        // timestamp of every later append to it.
        if e.timestamp_micros > latest {
            return Err(reject(format!(
                "timestamp {} is more than {} hours after this machine's clock ({now}): later \
                 appends would all be stamped with it",
                e.timestamp_micros,
                MAX_IMPORT_AHEAD.as_secs() / 3600
            )));
        }
        if let Some(p) = previous {
            if e.timestamp_micros < p.timestamp_micros {
                return Err(reject(format!(
                    "timestamp {} is before the previous event's {}",
                    e.timestamp_micros, p.timestamp_micros
                )));
            }
        }
        previous = Some(e);
    }
    Ok(())
}

fn validate_event(event_type: &str, payload_len: usize, metadata: &Metadata) -> Result<()> {
    if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_LEN {
        return Err(StoreError::InvalidInput(format!(
            "event type must be 1 to {MAX_EVENT_TYPE_LEN} bytes, got {event_type:?}"
        )));
    }
    let metadata_len = validate_metadata(metadata)?;
    if payload_len + metadata_len > MAX_PAYLOAD_LEN {
        return Err(StoreError::InvalidInput(format!(
            "payload of {payload_len} bytes and metadata of {metadata_len} bytes exceed the \
             limit of {MAX_PAYLOAD_LEN} for one event"
        )));
    }
    Ok(())
}

/// Checks an event's metadata ([`Metadata`]) and returns its bytes.
pub(crate) fn validate_metadata(metadata: &Metadata) -> Result<usize> {
    for (key, value) in metadata {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_LEN {
            return Err(StoreError::InvalidInput(format!(
                "metadata key must be 1 to {MAX_METADATA_KEY_LEN} bytes, got {} bytes",
                key.len()
            )));
        }
        if key.chars().any(char::is_control) {
            return Err(StoreError::InvalidInput(format!(
                "metadata key {key:?} holds a control character"
            )));
        }
        if value.chars().any(char::is_control) {
            return Err(StoreError::InvalidInput(format!(
                "metadata value of key {key:?} holds a control character"
            )));
        }
    }
    let bytes = metadata_bytes(metadata);
    if bytes > MAX_METADATA_LEN {
        return Err(StoreError::InvalidInput(format!(
            "metadata of {bytes} bytes exceeds the limit of {MAX_METADATA_LEN}"
        )));
    }
    Ok(bytes)
}

/// Checks the parts of an append request that do not depend on the store's state.
pub(crate) fn validate_append(stream: &str, events: &[EventData]) -> Result<()> {
    validate_name("stream id", stream)?;
    if events.is_empty() {
        return Err(StoreError::InvalidInput(format!(
            "append to {stream:?} has no events"
        )));
    }
    let total: usize = events
        .iter()
        .map(|e| e.payload.len() + e.event_type.len() + metadata_bytes(&e.metadata))
        .sum();
    if total > MAX_APPEND_BYTES {
        return Err(StoreError::InvalidInput(format!(
            "append to {stream:?} carries {total} bytes in {} events, beyond the limit of \
             {MAX_APPEND_BYTES} for one append: split it into several appends",
            events.len()
        )));
    }
    for e in events {
        validate_event(&e.event_type, e.payload.len(), &e.metadata)?;
    }
    Ok(())
}
