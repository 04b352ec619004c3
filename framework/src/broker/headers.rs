//! The header names a relay puts on each message (and an inbox reads back).

/// JetStream's de-duplication header: the event id (a UUID, hyphenated).
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The event's global position in the log.
pub const POSITION: &str = "Tidings-Position";
/// The event's stream id.
pub const STREAM: &str = "Tidings-Stream";
/// The event's version within its stream.
pub const STREAM_VERSION: &str = "Tidings-Stream-Version";
/// The stream's category.
pub const CATEGORY: &str = "Tidings-Category";
/// The event's type name.
pub const EVENT_TYPE: &str = "Tidings-Event-Type";
/// The version of the payload's schema.
pub const SCHEMA_VERSION: &str = "Tidings-Schema-Version";
/// The correlation id, when the event has one.
pub const CORRELATION_ID: &str = "Tidings-Correlation-Id";
/// The causation id, when the event has one.
pub const CAUSATION_ID: &str = "Tidings-Causation-Id";
/// When the store committed the event, in microseconds since the Unix epoch.
pub const TIMESTAMP: &str = "Tidings-Timestamp-Micros";
/// The name of the relay that published the message.
pub const RELAY: &str = "Tidings-Relay";
