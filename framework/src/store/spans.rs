//! The tracing spans of the stores (issue 17): one per append, per read and per commit group,
//! at `DEBUG`, named `tidings.append`, `tidings.read_stream`, `tidings.read_all` and
//! `tidings.commit`, with the fields listed in docs/metrics.md ("Tracing"). Both backends make them
//! here, so that their names and fields never differ. With no subscriber interested, a span
//! costs one check of its call site's cached interest.

use tracing::field::Empty;
use tracing::Span;

use super::{AppendResult, Result};

/// The span of one append: its stream and event count now, its positions or its error when
/// answered ([`appended`]).
pub(crate) fn append(backend: &'static str, stream: &str, events: usize) -> Span {
    tracing::debug_span!(
        "tidings.append",
        backend,
        stream,
        events,
        first_position = Empty,
        last_position = Empty,
        error = Empty,
    )
}

/// Records an append's answer on its span.
pub(crate) fn appended(span: &Span, result: &Result<AppendResult>) {
    match result {
        Ok(r) => {
            span.record("first_position", r.first_position);
            span.record("last_position", r.last_position);
        }
        Err(e) => {
            span.record("error", tracing::field::display(e));
        }
    }
}

/// The span of one page of a stream; [`returned`] records its size.
pub(crate) fn read_stream(backend: &'static str, stream: &str, from_version: u64) -> Span {
    tracing::debug_span!(
        "tidings.read_stream",
        backend,
        stream,
        from_version,
        events = Empty
    )
}

/// The span of one page of the log; [`returned`] records its size.
pub(crate) fn read_all(backend: &'static str, from_position: u64) -> Span {
    tracing::debug_span!("tidings.read_all", backend, from_position, events = Empty)
}

/// Records how many events a read returned.
pub(crate) fn returned(span: &Span, events: usize) {
    span.record("events", events);
}

/// The span of one commit group: the requests it holds now; the appends and events it
/// committed and (sled) the microseconds of its flush and fsync when they are known.
pub(crate) fn commit(backend: &'static str, requests: usize) -> Span {
    tracing::debug_span!(
        "tidings.commit",
        backend,
        requests,
        appends = Empty,
        events = Empty,
        fsync_micros = Empty,
    )
}
