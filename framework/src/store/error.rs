//! The one error type of the store layer.

use std::path::PathBuf;

use super::ExpectedVersion;

/// The error an engine or a codec reported, kept as the [`source`](std::error::Error::source) of
/// a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A `Result` whose error is a [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything that can go wrong in an event store.
///
/// Each variant's documentation says how a caller should react to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The stream was not at the version the append expected: someone else appended first.
    ///
    /// Nothing was written. Reload the stream (or the aggregate), decide again, and retry with the
    /// new version; this is the optimistic concurrency check doing its job.
    #[error("wrong expected version for stream {stream:?}: expected {expected}, actual {actual}")]
    WrongExpectedVersion {
        /// The stream the append was for.
        stream: String,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append was checked (0: the stream has no events).
        actual: u64,
    },

    /// A checkpoint commit expected a different stored checkpoint: another instance of the same
    /// consumer moved it. Nothing was written.
    ///
    /// Stop this instance (it is a zombie) or reload the checkpoint and state, then go on.
    #[error("checkpoint {name:?} conflict: expected {expected:?}, found {actual:?}")]
    CheckpointConflict {
        /// The consumer's name.
        name: String,
        /// The checkpoint the commit expected.
        expected: Option<u64>,
        /// The checkpoint found.
        actual: Option<u64>,
    },

    /// A stored record failed its checksum, was cut short, or does not decode.
    ///
    /// The store did not skip it and did not guess. Stop and run `verify` to see the extent of the
    /// damage; restore the store from a backup or a replica. Reads before `position` still work.
    #[error("damaged record at position {position}: {reason}")]
    Damaged {
        /// The global position of the damaged record (for a damaged stream-index entry, the
        /// position it pointed at, or 0 when that is unknown).
        position: u64,
        /// What was found wrong.
        reason: String,
    },

    /// A stored value other than an event (index entry, checkpoint, snapshot, metadata) is damaged.
    ///
    /// Handle as [`StoreError::Damaged`]: nothing was guessed; run `verify`.
    #[error("damaged {what}: {reason}")]
    DamagedMetadata {
        /// Which value (for example `checkpoint "billing"`).
        what: String,
        /// What was found wrong.
        reason: String,
    },

    /// Another process has the store open. Only one process may open a store at a time.
    ///
    /// Stop the other process, or talk to it instead of opening the files directly.
    #[error("the store at {path} is in use by another process")]
    InUse {
        /// The store's directory.
        path: PathBuf,
    },

    /// The store's directory, or a file in it, cannot be used as it is: the path is a file or
    /// its parent is not a directory, the process may not create or write files there (a
    /// read-only directory, another user's store), or a file the store writes is a symbolic link
    /// (the store never writes through a link out of its directory). Nothing was written.
    ///
    /// Fix the path or its permissions (the message says which and what is wrong), then open
    /// again.
    #[error("cannot use {path} for the store: {reason}")]
    BadPath {
        /// The directory or file in question.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The files were written by a format this version of tidings does not read.
    ///
    /// Upgrade tidings, or migrate the store with the version that wrote it (`export`/`import`).
    #[error("unsupported storage format {found} at {path} (this build reads format {supported})")]
    UnsupportedFormat {
        /// The store's directory.
        path: PathBuf,
        /// The format found on disk.
        found: u32,
        /// The format this build reads and writes.
        supported: u32,
    },

    /// The request itself is invalid (empty append, empty or oversized stream id, ...).
    ///
    /// A programming error on the caller's side: fix the request. Nothing was written.
    #[error("invalid request: {0}")]
    InvalidInput(String),

    /// An import was refused: the events do not continue the store's log exactly (a position
    /// other than head + 1, a gap, a stream version out of sequence, a timestamp going down, a
    /// category that does not match the stream id). Nothing of the import was written.
    ///
    /// Import into an empty store, in position order, the events exactly as exported.
    #[error("import refused at position {position}: {reason}")]
    ImportRejected {
        /// The position of the first event that does not fit (as given in the import).
        position: u64,
        /// Why it does not fit.
        reason: String,
    },

    /// The backend does not implement this operation (an optional one, such as listing).
    ///
    /// Use a backend that does, or do without the operation.
    #[error("{0} is not supported by this event store backend")]
    Unsupported(&'static str),

    /// An I/O error from the file system or from the storage engine.
    ///
    /// The outcome of a write that fails this way is unknown (as with any database): after a
    /// failed commit the store refuses further writes ([`StoreError::Failed`]); reopen it, then
    /// read to learn what was stored.
    ///
    /// Displayed as the I/O error itself (transparent), so an error chain prints it once.
    #[error(transparent)]
    Io(#[from] std::io::Error),

    /// The storage engine reported an error that is not plain I/O.
    ///
    /// Treat as [`StoreError::Io`].
    /// Its message says what failed; the engine's own error, when there is one, is its
    /// [`source`](std::error::Error::source) (print the whole chain to see both).
    #[error("storage engine error: {message}")]
    Engine {
        /// What failed.
        message: String,
        /// The engine's error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// A value could not be encoded or decoded by the codec.
    ///
    /// For data read from disk this comes as [`StoreError::Damaged`]; this variant is for values
    /// handed in by the caller (for example a snapshot too large to encode).
    /// Its message says which value; the codec's own error is its
    /// [`source`](std::error::Error::source).
    #[error("codec error: {message}")]
    Codec {
        /// Which value could not be encoded or decoded.
        message: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },

    /// An earlier write failed, so this store handle refuses further writes.
    ///
    /// After a failed fsync the state of the page cache is unknown (see "fsyncgate"): reopen the
    /// store, which recovers to what is on disk. With the embedded store (sled) reopen it in a
    /// new process: after a failed write this process keeps sled's handle, and its lock on the
    /// data file, until it exits, because sled's flush when the handle is dropped can block
    /// forever after a write error (docs/decisions.md, 37).
    #[error("the store failed earlier and refuses writes until reopened: {0}")]
    Failed(String),

    /// The database server could not be reached, or the connection to it was lost (a server
    /// restart, a terminated backend, a network failure). Only server backends return it.
    ///
    /// Transient: retry later. The outcome of an append that gets this is unknown (the commit may
    /// have reached the server before the connection dropped): read the stream before deciding
    /// again, or retry with the same event ids and an exact expected version.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),

    /// A fenced commit was refused: its lease is no longer held by that generation (another
    /// holder took it) or has expired. Nothing was written.
    ///
    /// Stop acting for the lease: take it again (which gives a new generation and reloads the
    /// checkpoint) or wait as a standby.
    #[error("the lease {name:?} of generation {generation} is no longer held")]
    Fenced {
        /// The lease's name.
        name: String,
        /// The generation the commit showed.
        generation: u64,
    },

    /// The store was closed (or its writer stopped) while the request was in flight.
    ///
    /// The outcome of an append that gets this is unknown: reopen and read.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// A [`StoreError::Engine`]: `message` says what failed, `source` is the engine's error.
    pub fn engine(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Engine {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A [`StoreError::Engine`] without an engine error to carry (the message says it all).
    pub fn engine_message(message: impl Into<String>) -> Self {
        StoreError::Engine {
            message: message.into(),
            source: None,
        }
    }

    /// A [`StoreError::Codec`]: `message` says which value, `source` is the codec's error.
    ///
    /// ```
    /// use tidings::store::StoreError;
    /// let bad = serde_json::from_slice::<u64>(b"x").unwrap_err();
    /// let e = StoreError::codec("the total", bad);
    /// assert_eq!(e.to_string(), "codec error: the total");
    /// assert!(std::error::Error::source(&e).is_some());
    /// ```
    pub fn codec(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Codec {
            message: message.into(),
            source: source.into(),
        }
    }

    /// Whether the error is transient: the same request may succeed later without any change
    /// (today only [`StoreError::Unavailable`]). Subscriptions retry such errors from their
    /// checkpoint instead of failing.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl StoreError {
    /// The same error, saying that it concerns the store at `path` (for errors whose message
    /// does not name it already).
    pub(crate) fn naming(self, path: &std::path::Path) -> Self {
        match self {
            StoreError::DamagedMetadata { what, reason } => StoreError::DamagedMetadata {
                what: format!("{what} of the store at {}", path.display()),
                reason,
            },
            StoreError::Engine { message, source } => StoreError::Engine {
                message: format!("{message} (store at {})", path.display()),
                source,
            },
            other => other,
        }
    }
}

/// What to do about damage that sled found in its own files.
const ENGINE_DAMAGE_ADVICE: &str = "restore the store from a backup (an export); `export \
                                    --from` of a damaged store salvages what still reads";

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => StoreError::Io(io),
            // Damage that sled's own checks found: the store's damage error, not an engine
            // failure, so that callers (and the CLI's exit code 3) treat it as damage.
            sled::Error::Corruption { at, .. } => StoreError::DamagedMetadata {
                what: "storage engine files".into(),
                reason: format!(
                    "the storage engine (sled) found corrupted data {}; {ENGINE_DAMAGE_ADVICE}",
                    match at {
                        Some(sled::DiskPtr::Inline(offset)) => {
                            format!("in its data file `db` at offset {offset}")
                        }
                        Some(sled::DiskPtr::Blob(offset, blob)) => format!(
                            "in the blob file `blobs/{blob}` (referenced at offset {offset} of \
                             its data file `db`)"
                        ),
                        None => "in its configuration file `conf` or its data file `db`".into(),
                    }
                ),
            },
            // sled's words for a configuration file that is not UTF-8: "created using a sled
            // version earlier than 0.29". tidings never used such a version: it is damage.
            sled::Error::Unsupported(why) if why.contains("0.29") => StoreError::DamagedMetadata {
                what: "storage engine configuration file `conf`".into(),
                reason: format!(
                    "it does not parse (not UTF-8): it is damaged (sled says it may have been \
                     created by a sled version earlier than 0.29, which no tidings store is); \
                     {ENGINE_DAMAGE_ADVICE}"
                ),
            },
            other => StoreError::engine("sled", other),
        }
    }
}

/// The message of `error` and of each of its sources, joined by `": "`: for the places that
/// keep an error as text (a subscription's failure reason, a copy for several waiters).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}
