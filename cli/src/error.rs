//! The CLI's errors and exit codes.

use std::path::PathBuf;

use tidings::store::StoreError;
use tidings::subscription::ControlError;

/// The command did what was asked.
pub const EXIT_OK: u8 = 0;
/// The command failed (the message says why).
pub const EXIT_ERROR: u8 = 1;
/// The command line is invalid.
pub const EXIT_USAGE: u8 = 2;
/// Damage was found: by `verify`, or a read met a damaged record.
pub const EXIT_DAMAGED: u8 = 3;
/// Another process has the store open.
pub const EXIT_IN_USE: u8 = 4;
/// The store, subscription, stream or parked event named does not exist.
pub const EXIT_NOT_FOUND: u8 = 5;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The store failed (damaged, in use, I/O...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A subscription operation failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// No store at the path (commands other than `import` never create one).
    #[error("no tidings store at {0} (for `import` into a new store, the directory may be missing or empty)")]
    NoStore(PathBuf),
    /// No `--store` and no `TIDINGS_STORE`.
    #[error("no store given: pass --store DIR or set TIDINGS_STORE")]
    NoStoreGiven,
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request cannot be carried out as given.
    #[error("{0}")]
    Invalid(String),
    /// An import line is not what `export` writes, or does not fit the store.
    #[error("{file}:{line}: {reason}")]
    BadImport {
        /// The input.
        file: String,
        /// The line number (from 1).
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file or the terminal failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Store(e) | CliError::Control(ControlError::Store(e)) => match e {
                StoreError::Damaged { .. } | StoreError::DamagedMetadata { .. } => EXIT_DAMAGED,
                StoreError::InUse { .. } => EXIT_IN_USE,
                _ => EXIT_ERROR,
            },
            CliError::NoStore(_) | CliError::NotFound(_) => EXIT_NOT_FOUND,
            CliError::NoStoreGiven => EXIT_USAGE,
            _ => EXIT_ERROR,
        }
    }
}
