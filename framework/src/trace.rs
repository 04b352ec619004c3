//! W3C Trace Context on events and commands: the `traceparent` and `tracestate` headers
//! (<https://www.w3.org/TR/trace-context/>), carried in an event's metadata
//! ([`Metadata`]) and a command's envelope.
//!
//! tidings does not depend on OpenTelemetry: it carries the headers, checks `traceparent`'s
//! format, copies the trace context from an event to the commands built from it
//! ([`CommandEnvelope::caused_by`](crate::aggregate::CommandEnvelope::caused_by)), and records
//! `traceparent` as a field of its `command` and `event` spans, where a tracing or
//! OpenTelemetry layer of the application can pick it up to link its spans.
//!
//! ```
//! use tidings::store::EventData;
//! use tidings::trace::TRACEPARENT;
//!
//! let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! let event = EventData::new("OrderPlaced", b"{}".to_vec())
//!     .with_trace_context(traceparent, Some("vendor=abc"))?;
//! assert_eq!(event.metadata[TRACEPARENT], traceparent);
//! assert_eq!(event.traceparent(), Some(traceparent));
//! assert!(EventData::new("OrderPlaced", b"{}".to_vec())
//!     .with_trace_context("not a traceparent", None)
//!     .is_err());
//! # Ok::<(), tidings::trace::TraceContextError>(())
//! ```

use crate::store::Metadata;

/// The metadata key of the W3C `traceparent` header: `version-traceid-parentid-flags`.
pub const TRACEPARENT: &str = "traceparent";
/// The metadata key of the W3C `tracestate` header: vendor-specific trace data.
pub const TRACESTATE: &str = "tracestate";
/// The keys that make up the trace context, copied from an event to the commands it causes.
pub const TRACE_CONTEXT_KEYS: [&str; 2] = [TRACEPARENT, TRACESTATE];
/// The longest `tracestate` accepted, in bytes (W3C: 32 members of at most 256 characters and
/// their separators; vendors must pass on at least 512).
pub const MAX_TRACESTATE_LEN: usize = 8192;

/// A trace context that does not have the W3C format: nothing was set.
///
/// A programming or input error: pass the headers as received, or leave them out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceContextError {
    /// The `traceparent` is not `version-traceid-parentid-flags` in lowercase hex, or its trace
    /// id or parent id is all zeros, or its version is `ff`.
    #[error("invalid traceparent {value:?}: {reason}")]
    Traceparent {
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `tracestate` holds a character outside printable ASCII, or is longer than
    /// [`MAX_TRACESTATE_LEN`].
    #[error("invalid tracestate: {reason}")]
    Tracestate {
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Checks that `value` is a W3C `traceparent`: two hex digits of version (not `ff`), 32 of
/// trace id, 16 of parent id and 2 of flags, lowercase, separated by `-`, the ids not all
/// zeros. Version `00` is exactly that long; a later version may carry more after a `-`.
///
/// ```
/// use tidings::trace::validate_traceparent;
/// assert!(validate_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_ok());
/// assert!(validate_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_err());
/// assert!(validate_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_err());
/// ```
pub fn validate_traceparent(value: &str) -> Result<(), TraceContextError> {
    let fail = |reason| {
        Err(TraceContextError::Traceparent {
            value: value.chars().take(80).collect(),
            reason,
        })
    };
    let bytes = value.as_bytes();
    if bytes.len() < 55 {
        return fail("shorter than 55 characters");
    }
    let hex = |range: std::ops::Range<usize>| {
        bytes[range]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return fail("fields are not separated by '-' at 2, 35 and 52");
    }
    if !(hex(0..2) && hex(3..35) && hex(36..52) && hex(53..55)) {
        return fail("a field is not lowercase hex");
    }
    let version = &value[0..2];
    if version == "ff" {
        return fail("version ff is invalid");
    }
    if version == "00" && bytes.len() != 55 {
        return fail("version 00 is exactly 55 characters");
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        return fail("a later version's extra fields must follow a '-'");
    }
    if bytes[3..35].iter().all(|&b| b == b'0') {
        return fail("the trace id is all zeros");
    }
    if bytes[36..52].iter().all(|&b| b == b'0') {
        return fail("the parent id is all zeros");
    }
    Ok(())
}

/// Checks a `tracestate`: printable ASCII, at most [`MAX_TRACESTATE_LEN`] bytes. Its list
/// structure is left to the vendors that read it.
pub fn validate_tracestate(value: &str) -> Result<(), TraceContextError> {
    if value.len() > MAX_TRACESTATE_LEN {
        return Err(TraceContextError::Tracestate {
            reason: "longer than 8192 bytes",
        });
    }
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(TraceContextError::Tracestate {
            reason: "holds a character outside printable ASCII",
        });
    }
    Ok(())
}

/// Checks both headers and writes them into `metadata`: `traceparent`, and `tracestate` when
/// given (removed when not, so the two always belong together).
pub(crate) fn set(
    metadata: &mut Metadata,
    traceparent: &str,
    tracestate: Option<&str>,
) -> Result<(), TraceContextError> {
    validate_traceparent(traceparent)?;
    if let Some(state) = tracestate {
        validate_tracestate(state)?;
    }
    metadata.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    match tracestate {
        Some(state) => metadata.insert(TRACESTATE.to_owned(), state.to_owned()),
        None => metadata.remove(TRACESTATE),
    };
    Ok(())
}

/// The trace context headers of `metadata`, to copy to what it causes.
pub(crate) fn context_of(metadata: &Metadata) -> Metadata {
    TRACE_CONTEXT_KEYS
        .iter()
        .filter_map(|&k| metadata.get_key_value(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparents_are_checked_as_w3c_says() {
        assert!(validate_traceparent(GOOD).is_ok());
        assert!(validate_traceparent(&format!("01{}-extra", &GOOD[2..])).is_ok());
        for bad in [
            "",
            &GOOD[..54],
            &format!("{GOOD}0"),
            &format!("{GOOD}-more"),
            &GOOD.replace('-', "_"),
            &GOOD.to_uppercase(),
            &format!("ff{}", &GOOD[2..]),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            &format!("01{}x", &GOOD[2..]),
        ] {
            assert!(
                matches!(
                    validate_traceparent(bad),
                    Err(TraceContextError::Traceparent { .. })
                ),
                "{bad:?} passed"
            );
        }
    }

    #[test]
    fn set_writes_both_headers_or_neither() {
        let mut m = Metadata::new();
        set(&mut m, GOOD, Some("a=1")).unwrap();
        assert_eq!(m[TRACESTATE], "a=1");
        assert!(set(&mut m, "bad", None).is_err());
        assert_eq!(m[TRACEPARENT], GOOD);
        assert!(set(&mut m, GOOD, Some("tab\there")).is_err());
        set(&mut m, GOOD, None).unwrap();
        assert!(!m.contains_key(TRACESTATE));
        m.insert("tenant".into(), "acme".into());
        assert_eq!(context_of(&m).len(), 1);
    }
}
