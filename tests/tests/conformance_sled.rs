//! The backend conformance suite against the embedded [`SledEventStore`], each case on a fresh
//! store in its own temporary directory, with the default settings and with two settings that
//! push the log layout to its extremes.

use tempfile::TempDir;
use tidings::store::{SledConfig, SledEventStore};

/// A fresh, empty store opened with `config` applied, and the directory that holds its files
/// (deleted when dropped).
fn fresh_store(config: impl FnOnce(SledConfig) -> SledConfig) -> (SledEventStore, TempDir) {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let store = config(SledConfig::new(dir.path()))
        .open()
        .expect("open a sled store");
    (store, dir)
}

/// The default settings.
mod default_settings {
    use super::*;

    tidings_tests::conformance_suite!(|| fresh_store(|c| c));
}

/// Every request committed alone, no stream-head cache, and the smallest read buffer: the
/// writer reads every stream's version from the index, and reads of the log go window by window
/// (a large event is read on its own).
mod one_request_per_group {
    use super::*;

    tidings_tests::conformance_suite!(|| fresh_store(|c| c
        .max_group(1)
        .read_buffer_bytes(4096)
        .stream_cache_capacity(0)));
}

/// Segments just large enough for the largest append (33 MiB: many rollovers in the suite), and
/// a stream-head cache of one entry that is cleared on almost every commit.
mod small_segments {
    use super::*;

    tidings_tests::conformance_suite!(|| fresh_store(|c| c
        .segment_bytes(33 << 20)
        .stream_cache_capacity(1)));
}
