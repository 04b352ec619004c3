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
/// Another process has the store open, or (on a store that processes share) the subscription
/// may be running in another process.
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
    /// No store in the PostgreSQL schema (commands other than `import` never create one).
    #[error(
        "no tidings store in schema {schema:?} at {server} (for `import` into a new store, the \
         schema may be missing or empty; --schema names another)"
    )]
    NoPostgresStore {
        /// The server (password hidden).
        server: String,
        /// The schema.
        schema: String,
    },
    /// No `--store` and no `TIDINGS_STORE`.
    #[error("no store given: pass --store DIR or --store postgres://..., or set TIDINGS_STORE")]
    NoStoreGiven,
    /// The options do not go together (a usage error).
    #[error("{0}")]
    Usage(String),
    /// The PostgreSQL server cannot be reached (or refused the connection): check the URL, the
    /// server and the network.
    #[error("cannot connect to PostgreSQL at {server}: {reason}")]
    Connect {
        /// The server (password hidden).
        server: String,
        /// What the driver reported.
        reason: String,
    },
    /// On a store that processes share, the subscription's last recorded state says it runs:
    /// it may be running in another process, whose loop would not see a change (and fails at
    /// its next commit if its checkpoint moved). Stop it there, or pass `--force` if no process
    /// runs it any more.
    #[error(
        "subscription {name:?} last recorded the state `{state}`: it may be running in another \
         process that shares this store, whose loop would not see the change (and fails at its \
         next commit if its checkpoint moved). Stop it there first, or pass --force if no \
         process runs it any more"
    )]
    MaybeRunning {
        /// The subscription.
        name: String,
        /// Its last recorded state.
        state: String,
    },
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
    /// Reading or writing a file or the terminal failed (displayed as the I/O error itself).
    #[error(transparent)]
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
            CliError::NoStore(_) | CliError::NoPostgresStore { .. } | CliError::NotFound(_) => {
                EXIT_NOT_FOUND
            }
            CliError::NoStoreGiven | CliError::Usage(_) => EXIT_USAGE,
            CliError::MaybeRunning { .. }
            | CliError::Control(ControlError::RunningElsewhere { .. })
            | CliError::Control(ControlError::Running(_)) => EXIT_IN_USE,
            _ => EXIT_ERROR,
        }
    }
}
