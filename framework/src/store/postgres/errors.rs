//! How driver and pool errors become [`StoreError`]s.

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// Whether `code` says the server or the connection went away (class 08, and the shutdown and
/// start-up codes of class 57P).
fn connection_lost(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
}

/// A driver error: [`StoreError::Unavailable`] when the connection is gone or the server is
/// shutting down or starting, [`StoreError::Engine`] otherwise (with the server's message).
pub fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() || e.code().is_some_and(connection_lost) {
        return StoreError::Unavailable(e.to_string());
    }
    if let Some(db) = e.as_db_error() {
        return StoreError::Engine(format!("postgres {}: {}", db.code().code(), db.message()));
    }
    // No server error and not closed: I/O or protocol trouble on the way to the server.
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if io {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Engine(format!("postgres: {e}"))
    }
}

/// A pool error: no connection could be had (timeout, refused, closed pool) is
/// [`StoreError::Unavailable`].
pub fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Closed => StoreError::Closed,
        other => StoreError::Unavailable(format!("no database connection: {other}")),
    }
}
