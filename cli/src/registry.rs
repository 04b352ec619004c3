//! The event types an application registers, so that payloads print as decoded JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use tidings::store::RecordedEvent;
use tidings::DomainEvent;

type Decoder = Arc<dyn Fn(&RecordedEvent) -> Result<serde_json::Value, String> + Send + Sync>;

/// The application's event types, by event type name.
///
/// The plain `tidings` binary has an empty registry: it prints a payload as JSON when its bytes
/// are JSON (as [`DomainEvent`] writes them), else as base64. An application that embeds the CLI
/// registers its [`DomainEvent`] types, so that payloads are decoded (and upcast) by the same
/// code the application uses, and a payload that no longer decodes is shown as such.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings::DomainEvent;
/// use tidings_cli::Registry;
///
/// #[derive(Serialize, Deserialize, DomainEvent)]
/// enum OrderEvent {
///     OrderPlaced { cents: u64 },
///     OrderCancelled,
/// }
///
/// let registry = Registry::new().register::<OrderEvent>();
/// assert!(registry.knows("OrderPlaced"));
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    decoders: BTreeMap<String, Decoder>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers every event type of `E`. A type name registered twice keeps the last decoder.
    #[must_use]
    pub fn register<E: DomainEvent>(mut self) -> Self {
        for name in E::EVENT_TYPES {
            let decoder: Decoder = Arc::new(|event| {
                let decoded = E::from_recorded(event).map_err(|e| e.reason)?;
                serde_json::to_value(&decoded).map_err(|e| e.to_string())
            });
            self.decoders.insert((*name).to_owned(), decoder);
        }
        self
    }

    /// Whether a decoder is registered for `event_type`.
    pub fn knows(&self, event_type: &str) -> bool {
        self.decoders.contains_key(event_type)
    }

    /// The registered event type names, in order.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.decoders.keys().map(String::as_str)
    }

    /// Decodes `event` with its registered type: `None` if its type is not registered, else the
    /// decoded value or why it does not decode. The framework's own records (a remembered
    /// refusal, `$tidings.CommandRefused`, and a remembered empty acceptance) are JSON and always
    /// decode.
    pub fn decode(&self, event: &RecordedEvent) -> Option<Result<serde_json::Value, String>> {
        if tidings::aggregate::is_framework_record(&event.event_type) {
            return Some(serde_json::from_slice(&event.payload).map_err(|e| e.to_string()));
        }
        self.decoders
            .get(event.event_type.as_str())
            .map(|d| d(event))
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("event_types", &self.decoders.keys().collect::<Vec<_>>())
            .finish()
    }
}
