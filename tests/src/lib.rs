//! Cross-crate tests for tidings: the backend conformance suite, and helpers shared by the
//! integration, concurrency and crash tests under `tests/tests/`.
