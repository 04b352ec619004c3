//! The values that travel through an [`EventStore`](super::EventStore).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

use super::Text;

/// The longest stream id accepted, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 512;
/// The longest event type name accepted, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 256;
/// The longest metadata key accepted, in bytes (keys are also non-empty and hold no control
/// characters).
pub const MAX_METADATA_KEY_LEN: usize = 256;

/// The most bytes one event's metadata may hold, keys and values added up ([`metadata_bytes`]):
/// 64 KiB, headers rather than a second payload (HTTP servers and NATS allow less).
pub const MAX_METADATA_LEN: usize = 64 * 1024;

/// An event's metadata: string headers (tenant, user, W3C trace context, ...) beside its
/// payload, as HTTP and NATS headers.
///
/// Keys are 1 to [`MAX_METADATA_KEY_LEN`] bytes, values any length; neither holds a control
/// character (so that every header can travel as an HTTP or NATS header and as JSON). The map's
/// bytes ([`metadata_bytes`]) are at most [`MAX_METADATA_LEN`] and count with the payload toward
/// [`MAX_PAYLOAD_LEN`], an append's [`MAX_APPEND_BYTES`] and a page's [`READ_PAGE_BYTES`].
/// Stores check this at append and import ([`StoreError::InvalidInput`](super::StoreError)).
pub type Metadata = BTreeMap<String, String>;

/// The bytes a metadata map counts for in the store's limits: its keys and values.
pub fn metadata_bytes(metadata: &Metadata) -> usize {
    metadata.iter().map(|(k, v)| k.len() + v.len()).sum()
}
/// The largest payload accepted for one event, in bytes (like Kafka's `message.max.bytes`).
pub const MAX_PAYLOAD_LEN: usize = 8 * 1024 * 1024;
/// The largest snapshot payload accepted, in bytes: a snapshot is read whole when its aggregate
/// loads, so its size bounds the memory of a load.
pub const MAX_SNAPSHOT_LEN: usize = 16 * 1024 * 1024;
/// The most bytes one append (or one [`import`](super::EventStore::import) call) may carry: its
/// events' payloads and type names added up, checked before anything is written. Four events of
/// the largest size; a bigger write is split into several appends (or import batches).
pub const MAX_APPEND_BYTES: usize = 32 * 1024 * 1024;
/// The byte budget of one page of a read ([`read_all`](super::EventStore::read_all),
/// [`read_stream`](super::EventStore::read_stream),
/// [`scan_state`](super::EventStore::scan_state)): a page ends at the first event (or state
/// entry) that brings its bytes ([`RecordedEvent::page_bytes`], [`state_entry_bytes`]) to this
/// budget or beyond, whatever `max_count` says. A page therefore holds less than
/// `READ_PAGE_BYTES` plus one event, and always at least one, so that paging makes progress.
pub const READ_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Whether a page returned by [`read_stream`](super::EventStore::read_stream) with `max_count`
/// may be followed by more events: it is full in count, or its bytes reached
/// [`READ_PAGE_BYTES`]. A page that is not full is the end of the stream.
pub fn stream_page_is_full(page: &[RecordedEvent], max_count: usize) -> bool {
    page_is_full(
        page.len(),
        page.iter().map(RecordedEvent::page_bytes).sum(),
        max_count,
    )
}

/// Whether a page of `events` events holding `bytes` ([`RecordedEvent::page_bytes`] added up)
/// is full for a read of `max_count`: the rule every read stops its page by.
pub(crate) fn page_is_full(events: usize, bytes: usize, max_count: usize) -> bool {
    events >= max_count || bytes >= READ_PAGE_BYTES
}

/// What an event of these fields counts for in a page's byte budget (see
/// [`RecordedEvent::page_bytes`]).
pub(crate) fn event_page_bytes(
    stream_id: &str,
    category: &str,
    event_type: &str,
    payload: &[u8],
    metadata: &Metadata,
) -> usize {
    payload.len() + stream_id.len() + category.len() + event_type.len() + metadata_bytes(metadata)
}

/// What a state entry counts for in a page's byte budget: its key and its value.
pub fn state_entry_bytes(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len()
}

/// Whether a page returned by [`scan_state`](super::EventStore::scan_state) with `max_count`
/// may be followed by more entries: it is full in count, or its bytes reached
/// [`READ_PAGE_BYTES`]. A page that is not full is the end of the scan.
pub fn state_page_is_full(page: &[(Vec<u8>, Vec<u8>)], max_count: usize) -> bool {
    page.len() >= max_count
        || page
            .iter()
            .map(|(k, v)| state_entry_bytes(k, v))
            .sum::<usize>()
            >= READ_PAGE_BYTES
}

/// What an append expects the stream's version to be (optimistic concurrency).
///
/// Stream versions count events: a stream with no events is at version 0, its first event has
/// version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream must be at exactly this version (0 means the same as `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn accepts(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// An event to append: what the caller knows before the store assigns a position.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventData {
    /// A unique id for the event (a UUIDv7 unless the caller sets one).
    pub event_id: Uuid,
    /// The event's type name, for example `"OrderPlaced"`. Filters and handlers match on it.
    pub event_type: String,
    /// The version of the payload's schema, so that upcasters can tell old payloads apart.
    pub schema_version: u32,
    /// The id that ties together everything caused by one original request.
    pub correlation_id: Option<Uuid>,
    /// The id of the command or event that caused this event.
    pub causation_id: Option<Uuid>,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// String headers that travel with the event (see [`Metadata`]); empty by default.
    pub metadata: Metadata,
}

impl EventData {
    /// A new event of `event_type` with schema version 1 and a fresh UUIDv7 id.
    pub fn new(event_type: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        EventData {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            correlation_id: None,
            causation_id: None,
            payload: payload.into(),
            metadata: Metadata::new(),
        }
    }

    /// Sets one metadata header (replacing the key's value if it was set). The store checks
    /// keys and sizes at append ([`Metadata`]).
    ///
    /// ```
    /// use tidings::store::EventData;
    /// let event = EventData::new("OrderPlaced", b"{}".to_vec()).with_metadata("tenant", "acme");
    /// assert_eq!(event.metadata["tenant"], "acme");
    /// ```
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Adds every header of `metadata` (replacing keys already set).
    #[must_use]
    pub fn with_metadata_map(mut self, metadata: Metadata) -> Self {
        self.metadata.extend(metadata);
        self
    }

    /// Sets the W3C trace context headers ([`crate::trace`]): `traceparent`, checked for its
    /// format, and `tracestate` when given (removed when `None`). Fails, changing nothing, when
    /// either does not have the W3C format.
    pub fn with_trace_context(
        mut self,
        traceparent: &str,
        tracestate: Option<&str>,
    ) -> Result<Self, crate::trace::TraceContextError> {
        crate::trace::set(&mut self.metadata, traceparent, tracestate)?;
        Ok(self)
    }

    /// The W3C `traceparent` header, if the event carries one.
    pub fn traceparent(&self) -> Option<&str> {
        self.metadata
            .get(crate::trace::TRACEPARENT)
            .map(String::as_str)
    }

    /// Sets the event id (for example one derived from a command id, for idempotence).
    #[must_use]
    pub fn with_event_id(mut self, id: Uuid) -> Self {
        self.event_id = id;
        self
    }

    /// Sets the schema version.
    #[must_use]
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }
}

/// An event as the store recorded it.
///
/// Its strings ([`Text`]) and payload ([`Bytes`]) are immutable and cheap to clone: a read
/// hands out slices of two buffers per page (strings, payloads) rather than allocating for each
/// field of each event. Keeping one event therefore keeps its page's bytes (less than
/// [`READ_PAGE_BYTES`] plus one event); to keep a few events out of many pages for long, keep
/// [`detached`](Self::detached) copies.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordedEvent {
    /// The event's place in the global log: starting at 1, increasing in the order every reader
    /// sees the events (a global read never returns a position below one it returned before).
    /// Gap-free on the embedded store; on PostgreSQL a write that fails after taking its
    /// positions (a server crash mid-commit) leaves a gap (docs/guarantees.md, P4).
    pub position: u64,
    /// The stream the event belongs to.
    pub stream_id: Text,
    /// The event's version within its stream: gap-free, starting at 1.
    pub stream_version: u64,
    /// The stream's category: the part of the stream id before the first `-` (see [`category_of`]).
    pub category: Text,
    /// The event's type name.
    pub event_type: Text,
    /// The version of the payload's schema.
    pub schema_version: u32,
    /// The event's unique id.
    pub event_id: Uuid,
    /// The correlation id given at append.
    pub correlation_id: Option<Uuid>,
    /// The causation id given at append.
    pub causation_id: Option<Uuid>,
    /// When the store committed the event, in microseconds since the Unix epoch.
    pub timestamp_micros: u64,
    /// The encoded event.
    pub payload: Bytes,
    /// The metadata given at append (empty for events appended without any, and for every
    /// event written before metadata existed).
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// The event a store records for `data` at global position `position`, as version
    /// `stream_version` of stream `stream_id`: its category is the stream's ([`category_of`]),
    /// its timestamp now. Stores make their own; this is for tests of handlers and for tools
    /// that rebuild recorded events (an import).
    ///
    /// ```
    /// use tidings::store::{EventData, RecordedEvent};
    /// let event = RecordedEvent::new(7, "order-42", 3, EventData::new("OrderPlaced", b"{}".to_vec()))
    ///     .with_timestamp_micros(1_700_000_000_000_000);
    /// assert_eq!((event.position, event.category.as_str(), event.stream_version), (7, "order", 3));
    /// ```
    pub fn new(
        position: u64,
        stream_id: impl Into<String>,
        stream_version: u64,
        data: EventData,
    ) -> Self {
        let stream_id = Text::from(stream_id.into());
        RecordedEvent {
            position,
            category: stream_id.slice(0..category_of(&stream_id).len()),
            stream_id,
            stream_version,
            event_type: data.event_type.into(),
            schema_version: data.schema_version,
            event_id: data.event_id,
            correlation_id: data.correlation_id,
            causation_id: data.causation_id,
            timestamp_micros: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            payload: data.payload.into(),
            metadata: data.metadata,
        }
    }

    /// A copy whose strings and payload share no buffer with other events (see the type's
    /// documentation): what to keep when only a few events of many reads are kept for long.
    #[must_use]
    pub fn detached(&self) -> Self {
        RecordedEvent {
            stream_id: self.stream_id.detached(),
            category: self.category.detached(),
            event_type: self.event_type.detached(),
            payload: Bytes::copy_from_slice(&self.payload),
            metadata: self.metadata.clone(),
            ..*self
        }
    }

    /// Sets when the store committed it, in microseconds since the Unix epoch.
    #[must_use]
    pub fn with_timestamp_micros(mut self, micros: u64) -> Self {
        self.timestamp_micros = micros;
        self
    }

    /// Sets its category (by default the stream's, as stores record it).
    #[must_use]
    pub fn with_category(mut self, category: impl Into<String>) -> Self {
        self.category = Text::from(category.into());
        self
    }

    /// Sets its metadata (for tests of handlers and for tools that rebuild recorded events).
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The W3C `traceparent` header the event was appended with, if any ([`crate::trace`]).
    pub fn traceparent(&self) -> Option<&str> {
        self.metadata
            .get(crate::trace::TRACEPARENT)
            .map(String::as_str)
    }

    /// The W3C `tracestate` header the event was appended with, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.metadata
            .get(crate::trace::TRACESTATE)
            .map(String::as_str)
    }

    /// When the store committed the event.
    pub fn timestamp(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.timestamp_micros)
    }

    /// What the event counts for in a page's byte budget ([`READ_PAGE_BYTES`]): its payload,
    /// stream id, category, type name and metadata ([`metadata_bytes`]).
    pub fn page_bytes(&self) -> usize {
        event_page_bytes(
            &self.stream_id,
            &self.category,
            &self.event_type,
            &self.payload,
            &self.metadata,
        )
    }
}

/// The category of a stream: the part of its id before the first `-`, or the whole id.
///
/// `"order-42"` is in category `"order"`; aggregates use their type as the category.
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

/// One stream as listed by [`EventStore::list_streams`](super::EventStore::list_streams).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The stream's id.
    pub stream_id: String,
    /// Its category (see [`category_of`]).
    pub category: String,
    /// Its durable version: the number of its events, and the version of the last one.
    pub version: u64,
    /// The global position of its last durable event.
    pub last_position: u64,
}

impl StreamInfo {
    /// Stream `stream_id` (its category derived) at `version`, its last event at
    /// `last_position`: for an [`EventStore`](super::EventStore) implemented outside tidings.
    pub fn new(stream_id: impl Into<String>, version: u64, last_position: u64) -> Self {
        let stream_id = stream_id.into();
        StreamInfo {
            category: category_of(&stream_id).to_owned(),
            stream_id,
            version,
            last_position,
        }
    }
}

/// A consumer's stored checkpoint, as listed by
/// [`EventStore::list_checkpoints`](super::EventStore::list_checkpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointInfo {
    /// The consumer's (subscription's) name.
    pub name: String,
    /// The position it has processed up to.
    pub position: u64,
}

impl CheckpointInfo {
    /// Consumer `name`'s checkpoint at `position`: for an [`EventStore`](super::EventStore)
    /// implemented outside tidings.
    pub fn new(name: impl Into<String>, position: u64) -> Self {
        CheckpointInfo {
            name: name.into(),
            position,
        }
    }
}

/// What an append was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppendResult {
    /// The global position of the first appended event.
    pub first_position: u64,
    /// The global position of the last appended event.
    pub last_position: u64,
    /// The stream's version after the append (the version of its last event).
    pub stream_version: u64,
}

impl AppendResult {
    /// An append whose events took positions `first_position..=last_position` and left the
    /// stream at `stream_version`: for an [`EventStore`](super::EventStore) implemented outside
    /// tidings, and for tests.
    pub fn new(first_position: u64, last_position: u64, stream_version: u64) -> Self {
        AppendResult {
            first_position,
            last_position,
            stream_version,
        }
    }
}

/// Which events a global read returns. The default matches every event.
///
/// An event matches when its category is in `categories` (or `categories` is `None`) and its type
/// is in `event_types` (or `event_types` is `None`). The store checks the filter before it copies
/// a payload, so filtered-out events cost no payload decoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The categories to keep, or `None` for all.
    pub categories: Option<Vec<String>>,
    /// The event types to keep, or `None` for all.
    pub event_types: Option<Vec<String>>,
}

impl Filter {
    /// A filter that keeps every event.
    pub fn all() -> Self {
        Filter::default()
    }

    /// Keeps only events of these categories.
    #[must_use]
    pub fn categories<I, S>(mut self, categories: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.categories = Some(categories.into_iter().map(Into::into).collect());
        self
    }

    /// Keeps only events of these types.
    #[must_use]
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Whether an event of this category and type passes the filter.
    pub fn matches(&self, category: &str, event_type: &str) -> bool {
        self.categories
            .as_ref()
            .is_none_or(|c| c.iter().any(|x| x == category))
            && self
                .event_types
                .as_ref()
                .is_none_or(|t| t.iter().any(|x| x == event_type))
    }

    /// Whether the filter keeps every event.
    pub fn is_all(&self) -> bool {
        self.categories.is_none() && self.event_types.is_none()
    }
}

/// One page of the global log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadBatch {
    /// The matching events, in position order.
    pub events: Vec<RecordedEvent>,
    /// Where the next read should start. Every position before it has been looked at, including
    /// events the filter left out, so a filtered page may be empty without being the end.
    pub next_position: u64,
    /// The durable head when the page was read.
    pub head: u64,
}

impl ReadBatch {
    /// A page of `events`, the next read starting at `next_position`, read at durable head
    /// `head`: for an [`EventStore`](super::EventStore) implemented outside tidings.
    pub fn new(events: Vec<RecordedEvent>, next_position: u64, head: u64) -> Self {
        ReadBatch {
            events,
            next_position,
            head,
        }
    }

    /// Whether the page reached the durable head (nothing more to read for now).
    pub fn is_end(&self) -> bool {
        self.next_position > self.head
    }
}

/// A snapshot of an aggregate's state at a stream version.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The stream version the state includes (every event up to and including it).
    pub stream_version: u64,
    /// The version of the state's schema.
    pub schema_version: u32,
    /// The encoded state.
    pub payload: Vec<u8>,
}

/// What [`EventStore::verify`](super::EventStore::verify) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// How many event records were read and checked.
    pub events_checked: u64,
    /// How many stream-index entries were checked against the records they point at.
    pub index_entries_checked: u64,
    /// The durable head that was verified up to.
    pub head: u64,
    /// Every problem found, in the order found.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether the store is free of damage.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One change to a consumer's state, committed together with its checkpoint by
/// [`EventStore::commit_checkpoint`](super::EventStore::commit_checkpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateWrite {
    /// The key, within the consumer's own namespace.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
}

/// The longest state key accepted, in bytes.
pub const MAX_STATE_KEY_LEN: usize = 1024;
