//! The envelope a command travels in: its id and where it came from.

use uuid::Uuid;

use crate::store::{Metadata, RecordedEvent};
use crate::trace::{self, TraceContextError};

/// A command with its id and metadata.
///
/// The **command id** makes a command idempotent: an aggregate that already recorded events for
/// this id answers with the original outcome instead of deciding again (see
/// `docs/aggregates.md`, "Idempotence"). Give a retried request the same id; give a new request a
/// new one.
///
/// The events a command records carry `causation_id = command_id`,
/// `correlation_id = self.correlation_id` (or the command id when there is none) and the
/// envelope's `metadata`, so that one original request can be followed through every service it
/// reaches; a W3C trace context ([`with_trace_context`](Self::with_trace_context)) travels in
/// that metadata.
///
/// ```
/// use tidings::aggregate::CommandEnvelope;
/// use uuid::Uuid;
///
/// // A fresh request from a user.
/// let fresh = CommandEnvelope::new("deposit 10");
/// // A client retry that must not be executed twice.
/// let retried = CommandEnvelope::with_id(fresh.command_id, "deposit 10");
/// assert_eq!(fresh.command_id, retried.command_id);
/// # let _ = Uuid::nil();
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandEnvelope<C> {
    /// The command's id: the key of idempotence.
    pub command_id: Uuid,
    /// The id of the original request this command belongs to, if known.
    pub correlation_id: Option<Uuid>,
    /// The id of the event (or command) that caused this command, if any. Traced, not stored:
    /// the recorded events' causation id is the command id.
    pub causation_id: Option<Uuid>,
    /// Headers the recorded events carry ([`Metadata`]: tenant, user, W3C trace context...);
    /// checked by the store when they are appended.
    pub metadata: Metadata,
    /// The command itself.
    pub command: C,
}

impl<C> CommandEnvelope<C> {
    /// A new command with a fresh UUIDv7 id and no metadata.
    pub fn new(command: C) -> Self {
        CommandEnvelope::with_id(Uuid::now_v7(), command)
    }

    /// A command with the given id (for example one a client sent with its request, so that
    /// a retry of the request is recognised).
    pub fn with_id(command_id: Uuid, command: C) -> Self {
        CommandEnvelope {
            command_id,
            correlation_id: None,
            causation_id: None,
            metadata: Metadata::new(),
            command,
        }
    }

    /// A command sent in reaction to `event`, with an id derived from the event's id and `name`
    /// (a UUIDv5), so that reacting to the same event again, after a redelivery, sends the same
    /// command id and is answered from history (with the first answer, an acceptance or a
    /// refusal) instead of being decided twice.
    ///
    /// `name` tells apart the different commands one event causes (for example
    /// `"charge-payment"` and `"reserve-stock"`). The correlation id is the event's (or the
    /// event's id when it has none); the causation id is the event's id; the event's W3C trace
    /// context (`traceparent`, `tracestate`: [`trace::TRACE_CONTEXT_KEYS`]) is copied to the
    /// command's metadata, and so to the events it records. Other metadata is not copied
    /// (add it with [`with_metadata`](Self::with_metadata)).
    pub fn caused_by(event: &RecordedEvent, name: &str, command: C) -> Self {
        CommandEnvelope {
            command_id: Uuid::new_v5(&event.event_id, name.as_bytes()),
            correlation_id: Some(event.correlation_id.unwrap_or(event.event_id)),
            causation_id: Some(event.event_id),
            metadata: trace::context_of(&event.metadata),
            command,
        }
    }

    /// Sets one metadata header, which the recorded events carry.
    #[must_use]
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the W3C trace context ([`crate::trace`]): `traceparent`, checked for its format,
    /// and `tracestate` when given (removed when `None`). The `command` span records the
    /// `traceparent`, and the recorded events carry both.
    ///
    /// ```
    /// use tidings::aggregate::CommandEnvelope;
    /// let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    /// let command = CommandEnvelope::new("deposit 10").with_trace_context(traceparent, None)?;
    /// assert_eq!(command.traceparent(), Some(traceparent));
    /// # Ok::<(), tidings::trace::TraceContextError>(())
    /// ```
    pub fn with_trace_context(
        mut self,
        traceparent: &str,
        tracestate: Option<&str>,
    ) -> Result<Self, TraceContextError> {
        trace::set(&mut self.metadata, traceparent, tracestate)?;
        Ok(self)
    }

    /// The W3C `traceparent` header, if the command carries one.
    pub fn traceparent(&self) -> Option<&str> {
        self.metadata.get(trace::TRACEPARENT).map(String::as_str)
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn correlated_with(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = Some(correlation_id);
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn caused_by_id(mut self, causation_id: Uuid) -> Self {
        self.causation_id = Some(causation_id);
        self
    }

    /// The same envelope (id, correlation, causation, metadata) around another command: for a router
    /// that turns one command type into the command of the aggregate that takes it (a process
    /// manager's commands, see `tidings::process`).
    ///
    /// ```
    /// use tidings::aggregate::CommandEnvelope;
    /// let routed = CommandEnvelope::new(("account-1", 10u64));
    /// let deposit = routed.clone().map(|(_, cents)| cents);
    /// assert_eq!((deposit.command_id, deposit.command), (routed.command_id, 10));
    /// ```
    pub fn map<D>(self, f: impl FnOnce(C) -> D) -> CommandEnvelope<D> {
        CommandEnvelope {
            command_id: self.command_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            metadata: self.metadata,
            command: f(self.command),
        }
    }

    /// The correlation id the recorded events get: the envelope's, or the command id.
    pub fn effective_correlation_id(&self) -> Uuid {
        self.correlation_id.unwrap_or(self.command_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(correlation: Option<Uuid>) -> RecordedEvent {
        RecordedEvent {
            position: 7,
            stream_id: "order-1".into(),
            stream_version: 1,
            category: "order".into(),
            event_type: "OrderPlaced".into(),
            schema_version: 1,
            event_id: Uuid::now_v7(),
            correlation_id: correlation,
            causation_id: None,
            timestamp_micros: 0,
            payload: Default::default(),
            metadata: Default::default(),
        }
    }

    #[test]
    fn caused_by_is_deterministic_per_event_and_name() {
        let e = event(None);
        let a = CommandEnvelope::caused_by(&e, "charge", ());
        let b = CommandEnvelope::caused_by(&e, "charge", ());
        let c = CommandEnvelope::caused_by(&e, "reserve", ());
        assert_eq!(a.command_id, b.command_id);
        assert_ne!(a.command_id, c.command_id);
        assert_ne!(
            a.command_id,
            CommandEnvelope::caused_by(&event(None), "charge", ()).command_id
        );
        assert_eq!(a.correlation_id, Some(e.event_id));
        assert_eq!(a.causation_id, Some(e.event_id));
        let corr = Uuid::now_v7();
        assert_eq!(
            CommandEnvelope::caused_by(&event(Some(corr)), "x", ()).correlation_id,
            Some(corr)
        );
    }

    #[test]
    fn caused_by_copies_the_trace_context_and_nothing_else() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut e = event(None);
        e.metadata.insert("traceparent".into(), traceparent.into());
        e.metadata.insert("tracestate".into(), "v=1".into());
        e.metadata.insert("tenant".into(), "acme".into());
        let c = CommandEnvelope::caused_by(&e, "x", ());
        assert_eq!(c.traceparent(), Some(traceparent));
        assert_eq!(c.metadata.len(), 2);
        assert_eq!(c.metadata["tracestate"], "v=1");
        let routed = c.with_metadata("tenant", "acme").map(|()| 1);
        assert_eq!(routed.metadata.len(), 3);
        assert!(CommandEnvelope::new(())
            .with_trace_context("00-x", None)
            .is_err());
    }

    #[test]
    fn the_correlation_id_defaults_to_the_command_id() {
        let c = CommandEnvelope::new(());
        assert_eq!(c.effective_correlation_id(), c.command_id);
        let corr = Uuid::now_v7();
        assert_eq!(c.correlated_with(corr).effective_correlation_id(), corr);
    }
}
