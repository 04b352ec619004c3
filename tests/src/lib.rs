//! Cross-crate tests for tidings: the backend conformance suite, and helpers shared by the
//! integration, concurrency and crash tests under `tests/tests/`.

/// The conformance suite every [`EventStore`](tidings::store::EventStore) backend must pass,
/// written once and generic over the backend; run it with [`conformance_suite!`].
pub mod conformance;

pub mod domain;
pub mod nats;
pub mod pg;
pub mod support;
pub mod transfer;
