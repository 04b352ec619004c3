//! How driver and pool errors become [`StoreError`]s.

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::store::StoreError;

/// Whether `code` says the server or the connection went away (class 08, the shutdown and
/// start-up codes of class 57P, and the server ending a session left idle inside a transaction:
/// a paused process resumes to find its connection gone).
fn connection_lost(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
}

/// Whether `code` says the request may succeed when tried again later, unchanged: the server
/// is short of resources (class 53: too many connections, disk full, out of memory), the
/// request was cancelled (a statement timeout, an operator's `pg_cancel_backend`), it lost to
/// another transaction (serialization failure, deadlock, a lock not available), or the server
/// is read-only (a standby, or a primary being failed over).
fn retryable(code: &SqlState) -> bool {
    code.code().starts_with("53")
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
}

/// A driver error: [`StoreError::Unavailable`] when the connection is gone, the server is
/// shutting down or starting, or the error says that trying again later may succeed
/// ([`retryable`]); [`StoreError::Engine`] otherwise (with the server's message).
pub fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() || e.code().is_some_and(|c| connection_lost(c) || retryable(c)) {
        return StoreError::Unavailable(crate::store::error_chain(&e));
    }
    if let Some(db) = e.as_db_error() {
        let message = format!("postgres {}", db.code().code());
        return StoreError::engine(message, e);
    }
    // No server error and not closed: I/O or protocol trouble on the way to the server.
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if io {
        StoreError::Unavailable(crate::store::error_chain(&e))
    } else {
        StoreError::engine("postgres", e)
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
