//! Domain events: the Rust types an application records, and how they become stored bytes.
//!
//! A domain event type says which event type names it is recorded as, and encodes to a JSON
//! payload (see `docs/decisions.md`: JSON keeps payloads readable by tools and tolerant of added
//! fields). Old payloads are brought up to date by [`DomainEvent::upcast`].

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::{EventData, RecordedEvent};

/// A payload that does not decode as the event type it claims to be.
///
/// Never skipped: a handler or aggregate that meets it stops with this error, which names the
/// position and the type so that an operator can find the event.
#[derive(Debug, thiserror::Error)]
#[error("event at position {position} of type {event_type:?} (schema {schema_version}) does not decode: {reason}")]
pub struct EventDecodeError {
    /// The event's global position.
    pub position: u64,
    /// The event's type name.
    pub event_type: String,
    /// The schema version it was written with.
    pub schema_version: u32,
    /// What went wrong.
    pub reason: String,
}

/// Why [`DomainEvent::upcast`] could not bring a payload up to date: the event cannot be
/// decoded, and is reported as an [`EventDecodeError`] naming its position (never skipped).
///
/// ```
/// use tidings::UpcastError;
/// let e = UpcastError::new("schema 1 of OrderPlaced had no currency");
/// assert_eq!(e.to_string(), "schema 1 of OrderPlaced had no currency");
/// let bad = serde_json::from_str::<u64>("x").unwrap_err();
/// let e = UpcastError::with_source("the old amount", bad);
/// assert!(std::error::Error::source(&e).is_some());
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UpcastError {
    message: String,
    #[source]
    source: Option<crate::store::BoxError>,
}

impl UpcastError {
    /// An upcast failure that `message` explains.
    pub fn new(message: impl Into<String>) -> Self {
        UpcastError {
            message: message.into(),
            source: None,
        }
    }

    /// An upcast failure that `message` explains, caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<crate::store::BoxError>,
    ) -> Self {
        UpcastError {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// An event type of the domain: a struct (one event type) or an enum (one event type per
/// variant), serialized with serde.
///
/// Derive it with `#[derive(DomainEvent)]` or implement it by hand:
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::DomainEvent;
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// enum OrderEvent {
///     OrderPlaced { order_id: String, cents: u64 },
///     OrderCancelled { order_id: String },
/// }
///
/// impl DomainEvent for OrderEvent {
///     const EVENT_TYPES: &'static [&'static str] = &["OrderPlaced", "OrderCancelled"];
///     fn event_type(&self) -> &'static str {
///         match self {
///             OrderEvent::OrderPlaced { .. } => "OrderPlaced",
///             OrderEvent::OrderCancelled { .. } => "OrderCancelled",
///         }
///     }
/// }
///
/// let placed = OrderEvent::OrderPlaced { order_id: "o-1".into(), cents: 1250 };
/// let data = placed.to_event_data().unwrap();
/// assert_eq!(data.event_type, "OrderPlaced");
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Every event type name this Rust type can be recorded as. Event type names must be unique
    /// within a store: handlers and filters match on them.
    const EVENT_TYPES: &'static [&'static str];

    /// The event type name of this value (one of [`EVENT_TYPES`](DomainEvent::EVENT_TYPES)).
    fn event_type(&self) -> &'static str;

    /// The schema version this build writes. Raise it when the payload's shape changes, and
    /// teach [`upcast`](DomainEvent::upcast) to read the older shapes.
    fn event_version(&self) -> u32 {
        1
    }

    /// Turns a payload written with an older (or newer) schema version into one that decodes as
    /// the current shape. The default accepts any version unchanged.
    fn upcast(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, UpcastError> {
        let _ = (event_type, schema_version);
        Ok(payload)
    }

    /// Encodes the event for an append.
    fn to_event_data(&self) -> Result<EventData, serde_json::Error> {
        let payload = serde_json::to_vec(self)?;
        Ok(EventData::new(self.event_type(), payload).with_schema_version(self.event_version()))
    }

    /// Decodes a recorded event of one of this type's event types.
    fn from_recorded(event: &RecordedEvent) -> Result<Self, EventDecodeError> {
        let error = |reason: String| EventDecodeError {
            position: event.position,
            event_type: event.event_type.to_string(),
            schema_version: event.schema_version,
            reason,
        };
        if !Self::EVENT_TYPES.contains(&event.event_type.as_str()) {
            return Err(error(format!(
                "not one of the types of {}",
                std::any::type_name::<Self>()
            )));
        }
        // Fast path: a payload of the current schema decodes directly.
        if let Ok(decoded) = serde_json::from_slice::<Self>(&event.payload) {
            if decoded.event_version() == event.schema_version
                && decoded.event_type() == event.event_type
            {
                return Ok(decoded);
            }
        }
        let value: serde_json::Value =
            serde_json::from_slice(&event.payload).map_err(|e| error(e.to_string()))?;
        let value = Self::upcast(&event.event_type, event.schema_version, value)
            .map_err(|e| error(format!("upcast failed: {}", crate::store::error_chain(&e))))?;
        let decoded: Self = serde_json::from_value(value).map_err(|e| error(e.to_string()))?;
        if decoded.event_type() != event.event_type {
            return Err(error(format!(
                "payload decodes as {:?}",
                decoded.event_type()
            )));
        }
        Ok(decoded)
    }
}
