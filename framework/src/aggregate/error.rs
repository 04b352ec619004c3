//! The errors of the aggregate layer and the outcome of a command.

use uuid::Uuid;

use crate::event::EventDecodeError;
use crate::store::StoreError;

/// A `Result` of a command sent to an aggregate whose own error type is `E`.
pub type CommandResult<T, E> = std::result::Result<T, AggregateError<E>>;

/// Why a command to an aggregate did not succeed.
///
/// `E` is the aggregate's own error type ([`Aggregate::Error`](super::Aggregate::Error)). Each
/// variant's documentation says how a caller should react.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError<E> {
    /// The aggregate's business rules refused the command (`handle` returned an error), now or
    /// when a command with the same id was sent before.
    ///
    /// A command sent with [`execute`](super::AggregateRegistry::execute) (an id the caller
    /// chose) is remembered as refused: sending the same id again, while the refusal is in the
    /// idempotence window, answers with this same refusal without deciding again, whatever
    /// changed since. To decide again, send a new command id. No domain event was recorded.
    #[error("command rejected: {0}")]
    Rejected(E),

    /// The command id was refused before, but the remembered refusal no longer decodes as the
    /// aggregate's `Error` type (its shape changed since). The command is **not** decided again.
    ///
    /// `message` is the refusal as it was displayed when it was recorded. Send a new command id
    /// to decide again.
    #[error("command {command_id} was rejected before ({message}); the recorded refusal does not decode: {reason}")]
    RejectedBefore {
        /// The command's id.
        command_id: Uuid,
        /// The refusal's text when it was recorded.
        message: String,
        /// Why the recorded refusal does not decode.
        reason: String,
    },

    /// The stream kept moving under the aggregate: every attempt to append met a newer version
    /// (writes from outside this registry, or from another process).
    ///
    /// Nothing was recorded for this command. Retrying later with the same command id is safe.
    #[error("stream {stream:?} kept changing: gave up after {attempts} attempts")]
    Conflict {
        /// The aggregate's stream.
        stream: String,
        /// How many times the command was decided and its append refused.
        attempts: u32,
    },

    /// The event store failed (I/O, damage, closed store, ...).
    ///
    /// For an append that failed this way the outcome is unknown (see [`StoreError`]); the
    /// aggregate reloads from the store before its next command, so retrying with the **same
    /// command id** is safe: if the events were recorded after all, the retry is answered from
    /// history. Other store errors are handled as [`StoreError`] says.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// A recorded event of the stream does not decode as the aggregate's event type.
    ///
    /// The aggregate cannot be loaded until the code or the data is fixed (an upcaster, a schema
    /// version); commands keep failing with this error. Nothing was recorded.
    #[error(transparent)]
    Decode(#[from] EventDecodeError),

    /// An event the aggregate produced does not encode (its `Serialize` failed).
    ///
    /// A programming error in the event type; nothing was recorded.
    #[error("event {event_type:?} does not encode: {reason}")]
    Encode {
        /// The event's type name.
        event_type: String,
        /// The encoder's message.
        reason: String,
    },

    /// The aggregate id is not usable (empty, too long), or the aggregate's `CATEGORY` is not a valid
    /// category.
    ///
    /// A programming error on the caller's side; nothing was recorded.
    #[error("invalid aggregate id: {0}")]
    InvalidId(String),

    /// The registry or the aggregate's actor is gone (the actix system is stopping, or the
    /// registry was shut down), so the command could not be delivered or answered.
    ///
    /// The outcome is unknown. Retrying with the same command id once a registry runs is safe.
    #[error("the aggregate registry is not running")]
    Unavailable,

    /// The aggregate's own code (`handle` or `apply`) panicked.
    ///
    /// Nothing was recorded for this command; the aggregate's actor was restarted and the next
    /// command rebuilds its state from the store. A bug to fix; retrying gives the same panic if
    /// the state and the command are the same.
    #[error("the aggregate {stream:?} panicked: {message}")]
    Panicked {
        /// The aggregate's stream.
        stream: String,
        /// The panic message, if it was a string.
        message: String,
    },
}

impl<E> AggregateError<E> {
    /// The aggregate's own rejection, if that is what this error is.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            AggregateError::Rejected(e) => Some(e),
            _ => None,
        }
    }
}

/// The `Error` of an aggregate that never refuses a command: it has no values.
///
/// `std::convert::Infallible` cannot be used there, since refusals are remembered as JSON and
/// serde does not implement its traits for it; this type is the same, with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum NeverRejected {}

impl std::fmt::Display for NeverRejected {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {}
    }
}

impl std::error::Error for NeverRejected {}

/// The events a command recorded: a contiguous range of its stream and of the global log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Recorded {
    /// The stream version of the command's first event.
    pub first_version: u64,
    /// The stream version of the command's last event.
    pub last_version: u64,
    /// The global position of the command's first event.
    pub first_position: u64,
    /// The global position of the command's last event.
    pub last_position: u64,
}

impl Recorded {
    /// How many events the command recorded.
    pub fn event_count(&self) -> u64 {
        self.last_version - self.first_version + 1
    }
}

/// What a command accepted by an aggregate did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandOutcome {
    /// The command's id.
    pub command_id: Uuid,
    /// The events the command recorded, or `None` when it was accepted but decided that nothing
    /// happens (`handle` returned no events). A command sent with an id the caller chose is
    /// remembered either way: sending it again answers with this outcome.
    pub recorded: Option<Recorded>,
    /// `true` when the command id had been handled before and this is the original outcome,
    /// answered from history: nothing was decided or recorded this time.
    pub duplicate: bool,
}

impl CommandOutcome {
    /// How many events the command recorded (0 when none).
    pub fn event_count(&self) -> u64 {
        self.recorded.map_or(0, |r| r.event_count())
    }

    /// The aggregate's stream version after the command's events, if it recorded any.
    pub fn last_version(&self) -> Option<u64> {
        self.recorded.map(|r| r.last_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each message of an error and of its sources, outermost first.
    fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
        std::iter::successors(Some(e), |e| e.source())
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_store_error_keeps_its_source_and_is_printed_once_in_a_chain() {
        let io = std::io::Error::other("disk on fire");
        let e: AggregateError<std::convert::Infallible> =
            StoreError::engine("a read failed", io).into();
        assert_eq!(
            chain(&e),
            ["storage engine error: a read failed", "disk on fire"]
        );
        let bad = serde_json::from_slice::<u64>(b"x").unwrap_err();
        let codec = StoreError::codec("the total", bad);
        let text = chain(&codec);
        assert_eq!(text[0], "codec error: the total");
        assert!(text[1].contains("expected value"), "{text:?}");
    }
}
