//! The backend conformance suite against [`PostgresEventStore`], each case in a fresh schema of
//! the test server (dropped afterwards): with the default settings, and with a pool of one
//! connection, a filtered-read window of 100 positions and a slow poll, so that paging, waiting
//! for visibility and head tracking cannot lean on generous settings.
//!
//! Needs the server of [`tidings_tests::pg`]; without it each case skips loudly (or fails when
//! `TIDINGS_REQUIRE_POSTGRES=1`).

use std::time::Duration;

use tidings::store::{PostgresConfig, PostgresEventStore};
use tidings_tests::pg::Schema;

/// A fresh store in a schema of its own, with `config` applied.
fn fresh_store(
    test: &str,
    config: impl FnOnce(PostgresConfig) -> PostgresConfig,
) -> Option<(PostgresEventStore, Schema)> {
    let schema = Schema::fresh(test)?;
    let store = schema.open(config);
    Some((store, schema))
}

/// The default settings (a small pool, to leave the server's connections to parallel tests).
mod default_settings {
    use super::*;

    tidings_tests::conformance_suite!(
        if_available || fresh_store("conformance_postgres", |c| c.pool_size(4))
    );
}

/// One connection for every request, filtered reads that examine 100 positions at most, and a
/// head poll of 5 s: appends must wake readers through notifications and their own wait.
mod one_connection_small_window {
    use super::*;

    tidings_tests::conformance_suite!(
        if_available
            || fresh_store("conformance_postgres", |c| c
                .pool_size(1)
                .scan_window(100)
                .poll_interval(Duration::from_secs(5)))
    );
}
