//! The segment log's errors, and how they become the store's.

use std::io;
use std::path::PathBuf;

use crate::store::StoreError;

/// A `Result` whose error is a [`LogError`].
pub(crate) type LogResult<T> = std::result::Result<T, LogError>;

/// Everything that can go wrong in the segment log. Each variant says how the store handles it;
/// `From<LogError> for StoreError` maps them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum LogError {
    /// A record failed its checks (header or body checksum, an unexpected position, a frame that
    /// runs past its segment, missing records at a segment's end). Records before and after it
    /// are not affected: resume a scan at the next record's address.
    ///
    /// The store reports it as [`StoreError::Damaged`] naming the position; nothing is skipped.
    #[error(
        "damaged log record at position {position} (segment {file}, offset {offset}): {reason}"
    )]
    Damaged {
        /// The position the record holds (or should hold, when its header is unreadable).
        position: u64,
        /// The segment file.
        file: PathBuf,
        /// The record's offset in the file.
        offset: u64,
        /// What was found wrong.
        reason: String,
    },

    /// A segment file cannot be used as a segment: wrong magic or format, a header that fails its
    /// checksum, a size other than its header says, a name other than its first position, a gap
    /// in the segments' sequence numbers. Nothing was changed.
    ///
    /// The store reports it as [`StoreError::DamagedMetadata`]: restore from a backup.
    #[error("log segment {path}: {reason}")]
    BadSegment {
        /// The segment file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A path in the log's directory is not what the log writes: a symbolic link, not a regular
    /// file, a name the log does not own. Left alone.
    ///
    /// The store reports it as [`StoreError::BadPath`]: the operator moves it away.
    #[error("cannot use {path} for the event log: {reason}")]
    BadPath {
        /// The path in question.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The request is invalid (an empty group, positions that do not continue the log, a record
    /// larger than a segment, an address outside the log). Nothing was written.
    ///
    /// A programming error of the store: [`StoreError::InvalidInput`].
    #[error("invalid log request: {0}")]
    Invalid(String),

    /// An earlier write or fsync failed, so the log refuses further writes until it is reopened
    /// (which recovers to what is on disk).
    ///
    /// [`StoreError::Failed`].
    #[error("the event log failed earlier and refuses writes until reopened: {0}")]
    Failed(String),

    /// An I/O error, with what was being done and on which file.
    ///
    /// [`StoreError::Io`] with the same [`io::ErrorKind`] (so a full disk is still told apart).
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done (`"write to"`, `"fsync"`, ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS's error.
        #[source]
        source: io::Error,
    },
}

impl LogError {
    /// A [`LogError::Io`] doing `what` on `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LogError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}

impl From<LogError> for StoreError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Damaged {
                position,
                file,
                offset,
                reason,
            } => StoreError::Damaged {
                position,
                reason: format!("{reason} (log segment {}, offset {offset})", file.display()),
            },
            LogError::BadSegment { path, reason } => StoreError::DamagedMetadata {
                what: format!("log segment {}", path.display()),
                reason,
            },
            LogError::BadPath { path, reason } => StoreError::BadPath { path, reason },
            LogError::Invalid(why) => StoreError::InvalidInput(why),
            LogError::Failed(why) => StoreError::Failed(why),
            LogError::Io { what, path, source } => {
                let kind = source.kind();
                StoreError::Io(io::Error::new(kind, LogError::Io { what, path, source }))
            }
        }
    }
}
