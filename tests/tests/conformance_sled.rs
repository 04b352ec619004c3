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

/// Every event in a log chunk of its own, every request committed alone, no stream-head cache:
/// each read crosses chunk boundaries and the writer reads every stream's version from the index.
mod one_event_per_chunk {
    use super::*;

    tidings_tests::conformance_suite!(|| fresh_store(|c| c
        .chunk_target_bytes(1)
        .max_group(1)
        .stream_cache_capacity(0)));
}

/// Chunks of up to 256 KiB holding hundreds of events, and a stream-head cache of one entry that
/// is cleared on almost every commit.
mod big_chunks {
    use super::*;

    tidings_tests::conformance_suite!(|| fresh_store(|c| c
        .chunk_target_bytes(256 * 1024)
        .stream_cache_capacity(1)));
}
